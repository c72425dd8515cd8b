//! SHT4x driver against embedded-hal-mock transaction lists.

use embedded_hal::i2c::ErrorKind;
use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as Delay};
use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as I2c};
use ferry_firmware::drivers::sht4x::{self, Error, Measurement, Precision, Sht4x, crc8};

const ADDR: u8 = 0x44;

/// Datasheet example word and its CRC.
#[test]
fn crc8_matches_the_datasheet_example() {
    assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    assert_eq!(crc8(&[0x00, 0x00]), 0x81);
}

#[test]
fn measures_high_precision_and_waits_for_the_conversion() {
    // S_T = 0x6666 (26407 → 25.52 °C), S_RH = 0x8000 (32768 → 56.5 %RH).
    let t = [0x66, 0x66];
    let rh = [0x80, 0x00];
    let i2c = I2cMock::new(&[
        I2c::write(ADDR, vec![0xFD]),
        I2c::read(ADDR, vec![t[0], t[1], crc8(&t), rh[0], rh[1], crc8(&rh)]),
    ]);
    let delay = CheckedDelay::new(&[Delay::delay_us(8_300)]);
    let mut sensor = Sht4x::new(i2c, delay);
    let m = sensor.measure().unwrap();
    assert_eq!(
        m,
        Measurement {
            temperature_raw: 0x6666,
            humidity_raw: 0x8000
        }
    );
    assert_eq!(m.temperature_celsius(), -45.0 + 175.0 * 26214.0 / 65535.0);
    assert_eq!(m.humidity_percent(), -6.0 + 125.0 * 32768.0 / 65535.0);
    let (mut i2c, mut delay) = sensor.destroy();
    i2c.done();
    delay.done();
}

#[test]
fn low_precision_uses_its_command_and_shorter_wait() {
    let w = [0x00, 0x00];
    let i2c = I2cMock::new(&[
        I2c::write(ADDR, vec![0xE0]),
        I2c::read(ADDR, vec![0, 0, crc8(&w), 0, 0, crc8(&w)]),
    ]);
    let delay = CheckedDelay::new(&[Delay::delay_us(1_700)]);
    let mut sensor = Sht4x::new(i2c, delay);
    sensor.set_precision(Precision::Low);
    let m = sensor.measure().unwrap();
    assert_eq!(m.temperature_celsius(), -45.0);
    // Raw 0 is -6 %RH before clamping.
    assert_eq!(m.humidity_percent(), 0.0);
    let (mut i2c, mut delay) = sensor.destroy();
    i2c.done();
    delay.done();
}

#[test]
fn humidity_is_clamped_to_100() {
    assert_eq!(sht4x::humidity_percent(0xFFFF), 100.0);
    assert_eq!(sht4x::temperature_celsius(0xFFFF), 130.0);
}

#[test]
fn bad_temperature_crc_is_an_error() {
    let i2c = I2cMock::new(&[
        I2c::write(ADDR, vec![0xFD]),
        I2c::read(ADDR, vec![0xBE, 0xEF, 0x93, 0xBE, 0xEF, 0x92]),
    ]);
    let mut sensor = Sht4x::new(i2c, NoopDelay::new());
    assert_eq!(sensor.measure(), Err(Error::Crc));
    sensor.destroy().0.done();
}

#[test]
fn bad_humidity_crc_is_an_error() {
    let i2c = I2cMock::new(&[
        I2c::write(ADDR, vec![0xFD]),
        I2c::read(ADDR, vec![0xBE, 0xEF, 0x92, 0xBE, 0xEE, 0x92]),
    ]);
    let mut sensor = Sht4x::new(i2c, NoopDelay::new());
    assert_eq!(sensor.measure(), Err(Error::Crc));
    sensor.destroy().0.done();
}

#[test]
fn nack_on_command_is_a_bus_error_and_nothing_is_read() {
    let i2c = I2cMock::new(&[I2c::write(ADDR, vec![0xFD]).with_error(ErrorKind::Other)]);
    let mut sensor = Sht4x::new(i2c, NoopDelay::new());
    assert_eq!(sensor.measure(), Err(Error::Comm(ErrorKind::Other)));
    sensor.destroy().0.done();
}

#[test]
fn bus_error_on_read_is_reported() {
    let i2c = I2cMock::new(&[
        I2c::write(ADDR, vec![0xFD]),
        I2c::read(ADDR, vec![0; 6]).with_error(ErrorKind::ArbitrationLoss),
    ]);
    let mut sensor = Sht4x::new(i2c, NoopDelay::new());
    assert_eq!(
        sensor.measure(),
        Err(Error::Comm(ErrorKind::ArbitrationLoss))
    );
    sensor.destroy().0.done();
}

#[test]
fn serial_number_and_soft_reset_at_another_address() {
    let hi = [0x12, 0x34];
    let lo = [0x56, 0x78];
    let i2c = I2cMock::new(&[
        I2c::write(0x45, vec![0x89]),
        I2c::read(0x45, vec![hi[0], hi[1], crc8(&hi), lo[0], lo[1], crc8(&lo)]),
        I2c::write(0x45, vec![0x94]),
    ]);
    let delay = CheckedDelay::new(&[Delay::delay_us(10), Delay::delay_us(1_000)]);
    let mut sensor = Sht4x::with_address(i2c, delay, 0x45);
    assert_eq!(sensor.serial_number(), Ok(0x1234_5678));
    assert_eq!(sensor.soft_reset(), Ok(()));
    let (mut i2c, mut delay) = sensor.destroy();
    i2c.done();
    delay.done();
}
