//! Sensor drivers, generic over the embedded-hal 1.0 [`I2c`](embedded_hal::i2c::I2c)
//! and [`DelayNs`](embedded_hal::delay::DelayNs) traits.
//!
//! Each driver owns its bus, returns `Error<CommE> { Comm(CommE), ... }` and
//! knows nothing of sampling or windows: [`crate::sensor`] adapts them.

pub mod sht4x;
pub mod tmp102;
