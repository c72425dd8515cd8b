//! Storage: redb on NOR flash.
mod layout;
mod nor;
pub mod sim_flash;

pub use nor::{Config, Error, FtlStats, Geometry, NorBackend};
