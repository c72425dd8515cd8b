//! TI TMP102 digital temperature sensor.
//!
//! Protocol (datasheet SBOS397, section 7.5): a pointer byte selects a 16-bit
//! register (`0` temperature, `1` configuration, `2` T_LOW, `3` T_HIGH),
//! read big-endian. The temperature register is left-justified:
//! - normal mode, 12 bits: `raw = (msb << 4) | (lsb >> 4)`, bit 0 of `lsb` is 0;
//! - extended mode (EM = 1), 13 bits: `raw = (msb << 5) | (lsb >> 3)`, bit 0 of
//!   `lsb` is 1;
//!
//! two's complement, 0.0625 °C per count. The remaining low bits read 0; a
//! reading with them set is refused as [`Error::InvalidData`] (a bus that
//! returns `0xFF` bytes from an absent part ends up there).
//!
//! The part has no CRC; its conversions run continuously (4 Hz by default),
//! so a read returns the latest one without waiting.

use embedded_hal::i2c::I2c;

/// Address with ADD0 tied to GND.
pub const DEFAULT_ADDRESS: u8 = 0x48;
/// Temperature register.
pub const REG_TEMPERATURE: u8 = 0x00;
/// Configuration register.
pub const REG_CONFIG: u8 = 0x01;
/// Configuration after power-up: 4 Hz, comparator mode, normal (12-bit) mode.
pub const POWER_UP_CONFIG: u16 = 0x60A0;

const CONFIG_EM: u16 = 1 << 4;
const CONFIG_CR_SHIFT: u16 = 6;
const CONFIG_CR_MASK: u16 = 0b11 << CONFIG_CR_SHIFT;

/// Driver errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<CommE> {
    /// The I2C bus failed.
    Comm(CommE),
    /// The register holds bits the part never sets.
    InvalidData,
}

/// Continuous conversion rate (CR1:CR0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversionRate {
    /// 0.25 Hz.
    Hz0_25 = 0,
    /// 1 Hz.
    Hz1 = 1,
    /// 4 Hz (power-up default).
    Hz4 = 2,
    /// 8 Hz.
    Hz8 = 3,
}

/// A temperature register value: counts of 0.0625 °C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temperature(pub i16);

impl Temperature {
    /// °C.
    pub fn celsius(self) -> f32 {
        f32::from(self.0) * 0.0625
    }
}

/// Decodes the temperature register bytes.
pub fn decode_temperature(msb: u8, lsb: u8) -> Option<Temperature> {
    let word = u16::from_be_bytes([msb, lsb]);
    if lsb & 1 == 0 {
        // 12-bit: bits 3..0 are zero.
        if word & 0x000F != 0 {
            return None;
        }
        Some(Temperature((word as i16) >> 4))
    } else {
        // 13-bit: bits 2..1 are zero, bit 0 is the EM flag.
        if word & 0x0006 != 0 {
            return None;
        }
        Some(Temperature((word as i16) >> 3))
    }
}

/// Encodes a temperature as the register reads in normal (12-bit) mode.
pub fn encode_temperature(t: Temperature) -> [u8; 2] {
    ((t.0 << 4) as u16).to_be_bytes()
}

/// A TMP102 on an I2C bus.
#[derive(Debug)]
pub struct Tmp102<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Tmp102<I2C> {
    /// A driver at [`DEFAULT_ADDRESS`].
    pub fn new(i2c: I2C) -> Self {
        Self::with_address(i2c, DEFAULT_ADDRESS)
    }

    /// A driver at another address (`0x49..=0x4B`).
    pub fn with_address(i2c: I2C, address: u8) -> Self {
        Self { i2c, address }
    }

    /// The latest conversion.
    pub fn temperature(&mut self) -> Result<Temperature, Error<I2C::Error>> {
        let [msb, lsb] = self.read_register(REG_TEMPERATURE)?;
        decode_temperature(msb, lsb).ok_or(Error::InvalidData)
    }

    /// The configuration register.
    pub fn config(&mut self) -> Result<u16, Error<I2C::Error>> {
        self.read_register(REG_CONFIG).map(u16::from_be_bytes)
    }

    /// Sets the conversion rate and the 13-bit extended mode, keeping the
    /// other configuration bits.
    pub fn configure(
        &mut self,
        rate: ConversionRate,
        extended: bool,
    ) -> Result<(), Error<I2C::Error>> {
        let mut config = self.config()?;
        config = (config & !CONFIG_CR_MASK) | ((rate as u16) << CONFIG_CR_SHIFT);
        if extended {
            config |= CONFIG_EM;
        } else {
            config &= !CONFIG_EM;
        }
        let [hi, lo] = config.to_be_bytes();
        self.i2c
            .write(self.address, &[REG_CONFIG, hi, lo])
            .map_err(Error::Comm)
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.i2c
    }

    fn read_register(&mut self, register: u8) -> Result<[u8; 2], Error<I2C::Error>> {
        let mut buf = [0u8; 2];
        self.i2c
            .write_read(self.address, &[register], &mut buf)
            .map_err(Error::Comm)?;
        Ok(buf)
    }
}
