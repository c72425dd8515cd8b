//! Sensirion SHT4x (SHT40/41/43/45) relative humidity and temperature sensor.
//!
//! Protocol (datasheet "SHT4x", version 6.x, section 4): the host writes a
//! one-byte command, waits for the conversion, then reads six bytes
//! `T_msb T_lsb CRC RH_msb RH_lsb CRC`. Each 16-bit word is followed by a
//! CRC-8 (polynomial `0x31`, init `0xFF`, no reflection, no final xor;
//! `crc8(0xBE, 0xEF) == 0x92`). Conversion to physical units:
//!
//! ```text
//! T  = -45 + 175 · S_T  / 65535   [°C]
//! RH =  -6 + 125 · S_RH / 65535   [%RH], clamped to 0..=100
//! ```

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// Default I2C address (SHT40-AD1B and most variants).
pub const DEFAULT_ADDRESS: u8 = 0x44;

/// Measure T and RH, high repeatability (≤ 8.3 ms).
pub const CMD_MEASURE_HIGH: u8 = 0xFD;
/// Measure T and RH, medium repeatability (≤ 4.5 ms).
pub const CMD_MEASURE_MEDIUM: u8 = 0xF6;
/// Measure T and RH, low repeatability (≤ 1.7 ms).
pub const CMD_MEASURE_LOW: u8 = 0xE0;
/// Read the 32-bit serial number.
pub const CMD_SERIAL_NUMBER: u8 = 0x89;
/// Soft reset (≤ 1 ms).
pub const CMD_SOFT_RESET: u8 = 0x94;

/// Driver errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<CommE> {
    /// The I2C bus failed (NACK, arbitration loss, ...).
    Comm(CommE),
    /// A word's CRC-8 did not match: the bytes were corrupted on the bus.
    Crc,
}

/// Measurement repeatability: higher costs a longer conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 0.04 °C / 0.08 %RH repeatability; 8.3 ms.
    #[default]
    High,
    /// 0.07 °C / 0.15 %RH; 4.5 ms.
    Medium,
    /// 0.1 °C / 0.25 %RH; 1.7 ms.
    Low,
}

impl Precision {
    /// The measurement command.
    pub const fn command(self) -> u8 {
        match self {
            Self::High => CMD_MEASURE_HIGH,
            Self::Medium => CMD_MEASURE_MEDIUM,
            Self::Low => CMD_MEASURE_LOW,
        }
    }

    /// Maximum conversion time in µs (datasheet table 4, rounded up).
    pub const fn conversion_us(self) -> u32 {
        match self {
            Self::High => 8_300,
            Self::Medium => 4_500,
            Self::Low => 1_700,
        }
    }
}

/// Raw sensor words of one measurement, CRC-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// `S_T`.
    pub temperature_raw: u16,
    /// `S_RH`.
    pub humidity_raw: u16,
}

impl Measurement {
    /// Temperature in °C.
    pub fn temperature_celsius(&self) -> f32 {
        temperature_celsius(self.temperature_raw)
    }

    /// Relative humidity in %, clamped to 0..=100 as the datasheet advises.
    pub fn humidity_percent(&self) -> f32 {
        humidity_percent(self.humidity_raw)
    }
}

/// `S_T` to °C.
pub fn temperature_celsius(raw: u16) -> f32 {
    -45.0 + 175.0 * f32::from(raw) / 65535.0
}

/// `S_RH` to %RH, clamped to 0..=100.
pub fn humidity_percent(raw: u16) -> f32 {
    (-6.0 + 125.0 * f32::from(raw) / 65535.0).clamp(0.0, 100.0)
}

/// CRC-8 of a word as the SHT4x computes it.
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for &byte in data {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Checks two CRC-protected words `w0 w0 crc w1 w1 crc`.
fn words(buf: &[u8; 6]) -> Option<(u16, u16)> {
    if crc8(&buf[0..2]) != buf[2] || crc8(&buf[3..5]) != buf[5] {
        return None;
    }
    Some((
        u16::from_be_bytes([buf[0], buf[1]]),
        u16::from_be_bytes([buf[3], buf[4]]),
    ))
}

/// An SHT4x on an I2C bus.
#[derive(Debug)]
pub struct Sht4x<I2C, D> {
    i2c: I2C,
    delay: D,
    address: u8,
    precision: Precision,
}

impl<I2C: I2c, D: DelayNs> Sht4x<I2C, D> {
    /// A driver at [`DEFAULT_ADDRESS`], high precision.
    pub fn new(i2c: I2C, delay: D) -> Self {
        Self::with_address(i2c, delay, DEFAULT_ADDRESS)
    }

    /// A driver at another address (`0x45`, `0x46` variants).
    pub fn with_address(i2c: I2C, delay: D, address: u8) -> Self {
        Self {
            i2c,
            delay,
            address,
            precision: Precision::High,
        }
    }

    /// Sets the repeatability of later measurements.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Starts a conversion, waits for it and reads the result.
    pub fn measure(&mut self) -> Result<Measurement, Error<I2C::Error>> {
        let (temperature_raw, humidity_raw) =
            self.command_read(self.precision.command(), self.precision.conversion_us())?;
        Ok(Measurement {
            temperature_raw,
            humidity_raw,
        })
    }

    /// The sensor's 32-bit serial number.
    pub fn serial_number(&mut self) -> Result<u32, Error<I2C::Error>> {
        let (hi, lo) = self.command_read(CMD_SERIAL_NUMBER, 10)?;
        Ok(u32::from(hi) << 16 | u32::from(lo))
    }

    /// Soft reset; waits the 1 ms the sensor needs.
    pub fn soft_reset(&mut self) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[CMD_SOFT_RESET])
            .map_err(Error::Comm)?;
        self.delay.delay_us(1_000);
        Ok(())
    }

    /// Gives the bus and the delay back.
    pub fn destroy(self) -> (I2C, D) {
        (self.i2c, self.delay)
    }

    fn command_read(&mut self, command: u8, wait_us: u32) -> Result<(u16, u16), Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[command])
            .map_err(Error::Comm)?;
        self.delay.delay_us(wait_us);
        let mut buf = [0u8; 6];
        self.i2c.read(self.address, &mut buf).map_err(Error::Comm)?;
        words(&buf).ok_or(Error::Crc)
    }
}
