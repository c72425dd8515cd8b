//! The sampler's view of a sensor: a fixed list of channels and one `read`
//! that fills them, whatever the part and the bus.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use crate::drivers::{sht4x, tmp102};

/// One measured quantity of a sensor (becomes a [`ferry_proto::link::Channel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    /// Sensor part, e.g. `sht4x`.
    pub sensor: &'static str,
    /// Metric name, e.g. `temperature`.
    pub quantity: &'static str,
    /// UCUM unit, e.g. `Cel`.
    pub unit: &'static str,
}

/// Why a sensor read produced no sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The bus failed.
    Bus,
    /// The data failed its CRC.
    Crc,
    /// The data is impossible for the part.
    InvalidData,
}

/// A sensor the sampler reads.
pub trait Sensor {
    /// What [`Sensor::read`] measures, in order.
    fn quantities(&self) -> &'static [Quantity];

    /// Measures now; `at_ms` is the scheduled instant of this sample (device
    /// time). `out` has one slot per quantity.
    fn read(&mut self, at_ms: u64, out: &mut [f32]) -> Result<(), ReadError>;
}

/// SHT4x quantities: temperature, then relative humidity.
pub const SHT4X_QUANTITIES: &[Quantity] = &[
    Quantity {
        sensor: "sht4x",
        quantity: "temperature",
        unit: "Cel",
    },
    Quantity {
        sensor: "sht4x",
        quantity: "relative_humidity",
        unit: "%",
    },
];

/// TMP102 quantity: temperature.
pub const TMP102_QUANTITIES: &[Quantity] = &[Quantity {
    sensor: "tmp102",
    quantity: "temperature",
    unit: "Cel",
}];

impl<I2C: I2c, D: DelayNs> Sensor for sht4x::Sht4x<I2C, D> {
    fn quantities(&self) -> &'static [Quantity] {
        SHT4X_QUANTITIES
    }

    fn read(&mut self, _at_ms: u64, out: &mut [f32]) -> Result<(), ReadError> {
        let m = self.measure().map_err(|e| match e {
            sht4x::Error::Comm(_) => ReadError::Bus,
            sht4x::Error::Crc => ReadError::Crc,
        })?;
        out[0] = m.temperature_celsius();
        out[1] = m.humidity_percent();
        Ok(())
    }
}

impl<I2C: I2c> Sensor for tmp102::Tmp102<I2C> {
    fn quantities(&self) -> &'static [Quantity] {
        TMP102_QUANTITIES
    }

    fn read(&mut self, _at_ms: u64, out: &mut [f32]) -> Result<(), ReadError> {
        let t = self.temperature().map_err(|e| match e {
            tmp102::Error::Comm(_) => ReadError::Bus,
            tmp102::Error::InvalidData => ReadError::InvalidData,
        })?;
        out[0] = t.celsius();
        Ok(())
    }
}
