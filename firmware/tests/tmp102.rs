//! TMP102 driver against embedded-hal-mock transaction lists.

use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as I2c};
use ferry_firmware::drivers::tmp102::{
    ConversionRate, Error, Temperature, Tmp102, decode_temperature, encode_temperature,
};

const ADDR: u8 = 0x48;

/// Datasheet table 7.5 (12-bit) and 7.6 (13-bit) examples.
#[test]
fn decodes_the_datasheet_table() {
    let cases: &[(u8, u8, i16, f32)] = &[
        (0x7F, 0xF0, 2047, 127.9375),
        (0x64, 0x00, 1600, 100.0),
        (0x19, 0x00, 400, 25.0),
        (0x00, 0x40, 4, 0.25),
        (0x00, 0x00, 0, 0.0),
        (0xFF, 0xC0, -4, -0.25),
        (0xE7, 0x00, -400, -25.0),
        (0xC9, 0x00, -880, -55.0),
        // Extended mode: 150 °C = 0x960 counts, EM flag in bit 0.
        (0x4B, 0x01, 2400, 150.0),
        // Extended mode: -0.0625 °C.
        (0xFF, 0xF9, -1, -0.0625),
    ];
    for &(msb, lsb, counts, celsius) in cases {
        let t = decode_temperature(msb, lsb).unwrap();
        assert_eq!(t, Temperature(counts), "{msb:02x} {lsb:02x}");
        assert_eq!(t.celsius(), celsius);
    }
    assert_eq!(encode_temperature(Temperature(-880)), [0xC9, 0x00]);
}

#[test]
fn reads_the_temperature_register() {
    let mut i2c = I2cMock::new(&[I2c::write_read(ADDR, vec![0x00], vec![0x19, 0x10])]);
    let mut sensor = Tmp102::new(i2c.clone());
    assert_eq!(sensor.temperature(), Ok(Temperature(401)));
    i2c.done();
}

#[test]
fn reserved_bits_set_are_invalid_data() {
    // An absent part on a bus with pull-ups reads 0xFF 0xFF.
    let mut i2c = I2cMock::new(&[
        I2c::write_read(ADDR, vec![0x00], vec![0xFF, 0xFF]),
        I2c::write_read(ADDR, vec![0x00], vec![0x19, 0x08]),
    ]);
    let mut sensor = Tmp102::new(i2c.clone());
    assert_eq!(sensor.temperature(), Err(Error::InvalidData));
    assert_eq!(sensor.temperature(), Err(Error::InvalidData));
    i2c.done();
}

#[test]
fn bus_errors_are_reported() {
    let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
    let mut i2c = I2cMock::new(&[
        I2c::write_read(ADDR, vec![0x00], vec![0, 0]).with_error(nack),
        I2c::write_read(0x49, vec![0x01], vec![0, 0]).with_error(ErrorKind::Bus),
    ]);
    let mut sensor = Tmp102::new(i2c.clone());
    assert_eq!(sensor.temperature(), Err(Error::Comm(nack)));
    let mut other = Tmp102::with_address(i2c.clone(), 0x49);
    assert_eq!(other.config(), Err(Error::Comm(ErrorKind::Bus)));
    i2c.done();
}

#[test]
fn configure_keeps_other_bits() {
    let mut i2c = I2cMock::new(&[
        I2c::write_read(ADDR, vec![0x01], vec![0x60, 0xA0]),
        // 8 Hz (CR = 11) and extended mode: 0x60E0 | 0x10.
        I2c::write(ADDR, vec![0x01, 0x60, 0xF0]),
        I2c::write_read(ADDR, vec![0x01], vec![0x61, 0xF0]),
        // Back to 1 Hz (CR = 01), normal mode; the fault-queue bit 0x0100 stays.
        I2c::write(ADDR, vec![0x01, 0x61, 0x60]),
    ]);
    let mut sensor = Tmp102::new(i2c.clone());
    sensor.configure(ConversionRate::Hz8, true).unwrap();
    sensor.configure(ConversionRate::Hz1, false).unwrap();
    i2c.done();
}

#[test]
fn failed_config_read_writes_nothing() {
    let mut i2c = I2cMock::new(&[
        I2c::write_read(ADDR, vec![0x01], vec![0, 0]).with_error(ErrorKind::Overrun)
    ]);
    let mut sensor = Tmp102::new(i2c.clone());
    assert_eq!(
        sensor.configure(ConversionRate::Hz4, false),
        Err(Error::Comm(ErrorKind::Overrun))
    );
    i2c.done();
}
