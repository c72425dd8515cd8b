//! Sources: where readings come from. Each has its own bounded input, its
//! own counters, and hands [`Work`](crate::journal::Work) to the journal
//! through an [`Intake`](crate::intake::Intake).

pub mod conn;
pub mod device;
pub mod influx;
pub mod line;
pub mod mqtt;
pub mod sim;
