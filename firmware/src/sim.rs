//! Simulated sensors for the emulated board (and for tests): an SHT4x and a
//! TMP102 that answer the real drivers over the embedded-hal [`I2c`] trait,
//! with readings that are a deterministic function of time.
//!
//! # The waveforms
//! Every quantity is a triangle wave, integer-valued in milli-units, turned
//! into the part's raw register value with round-to-nearest; the drivers then
//! convert the raw value as they would on real hardware. `tri(t, P, lo, hi)`
//! rises linearly from `lo` at `t ≡ 0 (mod P)` to `hi` at `P/2` and falls back
//! (integer division, `t` in ms):
//!
//! ```text
//! tri(t, P, lo, hi) = lo + (hi-lo)·φ/(P/2)          φ = t mod P < P/2
//!                   = hi - (hi-lo)·(φ-P/2)/(P/2)    otherwise
//!
//! SHT4x temperature  m°C  = tri(t, 60 000, 20 000, 30 000)
//!       S_T               = round((m°C + 45 000) · 65535 / 175 000)
//! SHT4x humidity     m%RH = tri(t, 90 000, 40 000, 60 000)
//!       S_RH              = round((m%RH + 6 000) · 65535 / 125 000)
//! TMP102 temperature m°C  = tri(t, 45 000, 15 000, 25 000)
//!       counts            = round(m°C · 16 / 1000)          (0.0625 °C each)
//! ```
//!
//! `t` is the sample's *scheduled* instant in ms since boot ([`Simulated`]
//! sets it before each read), so a slow or jittery emulator still produces
//! the same samples. [`sample`] gives the value a channel reports, and
//! [`expected_windows`] the windows the emulated board must report: the
//! host tests and the end-to-end tests compute their expectations with them.

use core::cell::Cell;

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};
use ferry_proto::link::LinkConfig;

use crate::drivers::{sht4x, tmp102};
use crate::sensor::{Quantity, ReadError, Sensor};
use crate::window::{Accumulator, ClosedWindows};

/// The simulated time a read sees: the scheduled instant of the sample, ms.
pub type SimClock = Cell<u64>;

/// Sensors of the emulated board, in channel order: the SHT4x (channels 0
/// temperature and 1 humidity) read every base period, and the TMP102
/// (channel 2) every second base period.
pub const EMULATED_EVERY: [u32; 2] = [1, 2];

/// Serial number the simulated SHT4x reports.
pub const SIM_SHT4X_SERIAL: u32 = 0x5EED_F00D;

/// Triangle wave, see the module docs.
pub const fn tri(t_ms: u64, period_ms: u64, lo: i64, hi: i64) -> i64 {
    let half = period_ms / 2;
    let phase = t_ms % period_ms;
    if phase < half {
        lo + (hi - lo) * phase as i64 / half as i64
    } else {
        hi - (hi - lo) * (phase - half) as i64 / half as i64
    }
}

/// SHT4x temperature word at `t_ms`.
pub const fn sht4x_temperature_raw(t_ms: u64) -> u16 {
    let milli = tri(t_ms, 60_000, 20_000, 30_000);
    (((milli + 45_000) * 65_535 + 87_500) / 175_000) as u16
}

/// SHT4x humidity word at `t_ms`.
pub const fn sht4x_humidity_raw(t_ms: u64) -> u16 {
    let milli = tri(t_ms, 90_000, 40_000, 60_000);
    (((milli + 6_000) * 65_535 + 62_500) / 125_000) as u16
}

/// TMP102 temperature counts at `t_ms`.
pub const fn tmp102_counts(t_ms: u64) -> i16 {
    let milli = tri(t_ms, 45_000, 15_000, 25_000);
    ((milli * 16 + 500) / 1_000) as i16
}

/// The value emulated-board `channel` reports for a sample at `t_ms`.
pub fn sample(channel: u8, t_ms: u64) -> Option<f32> {
    match channel {
        0 => Some(sht4x::temperature_celsius(sht4x_temperature_raw(t_ms))),
        1 => Some(sht4x::humidity_percent(sht4x_humidity_raw(t_ms))),
        2 => Some(tmp102::Temperature(tmp102_counts(t_ms)).celsius()),
        _ => None,
    }
}

/// The windows the emulated board reports for the window starting at
/// `start_ms` under `config`, whose schedule began at `epoch_ms` (boot, or
/// the boundary where `config` took effect); `start_ms - epoch_ms` is a
/// multiple of `config.window_ms`.
pub fn expected_windows(epoch_ms: u64, config: LinkConfig, start_ms: u64) -> ClosedWindows {
    let end_ms = start_ms + u64::from(config.window_ms);
    let mut out = ClosedWindows::new();
    let mut channel = 0u8;
    for (every, channels) in EMULATED_EVERY.into_iter().zip([2u8, 1]) {
        let period = u64::from(config.sample_period_ms) * u64::from(every);
        let first = epoch_ms + (start_ms - epoch_ms).div_ceil(period) * period;
        for c in channel..channel + channels {
            let mut acc: Option<Accumulator> = None;
            let mut t = first;
            while t < end_ms {
                let v = sample(c, t).unwrap_or(f32::NAN);
                match &mut acc {
                    Some(a) => a.add(v),
                    None => acc = Some(Accumulator::new(v)),
                }
                t += period;
            }
            if let Some(a) = acc {
                let _ = out.push(a.report(c, start_ms, config.window_ms));
            }
        }
        channel += channels;
    }
    out
}

/// A simulated sensor: sets the shared [`SimClock`] to each sample's
/// scheduled instant (plus an offset), then reads through the real driver.
#[derive(Debug)]
pub struct Simulated<'a, S> {
    clock: &'a SimClock,
    sensor: S,
    offset_ms: u64,
}

impl<'a, S: Sensor> Simulated<'a, S> {
    /// Wraps `sensor`, whose simulated bus reads `clock`: the waveforms at
    /// the sample's scheduled instant.
    pub fn new(clock: &'a SimClock, sensor: S) -> Self {
        Self::with_offset(clock, sensor, 0)
    }

    /// Like [`Simulated::new`], with the waveforms at `offset_ms` + the
    /// scheduled instant: a board whose uptime 0 is at true time
    /// `offset_ms` reads the waveforms of true time (the emulated journal
    /// board, so that a power-loss test can check where windows are placed).
    pub fn with_offset(clock: &'a SimClock, sensor: S, offset_ms: u64) -> Self {
        Self {
            clock,
            sensor,
            offset_ms,
        }
    }
}

impl<S: Sensor> Sensor for Simulated<'_, S> {
    fn quantities(&self) -> &'static [Quantity] {
        self.sensor.quantities()
    }

    fn read(&mut self, at_ms: u64, out: &mut [f32]) -> Result<(), ReadError> {
        self.clock.set(self.offset_ms + at_ms);
        self.sensor.read(at_ms, out)
    }
}

fn nack_address() -> ErrorKind {
    ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
}

/// An SHT4x at [`sht4x::DEFAULT_ADDRESS`] on its own simulated bus.
#[derive(Debug)]
pub struct SimSht4xBus<'a> {
    clock: &'a SimClock,
    /// Words ready to be read after the last command.
    ready: Option<[u16; 2]>,
}

impl<'a> SimSht4xBus<'a> {
    /// A bus whose sensor reads the time from `clock`.
    pub fn new(clock: &'a SimClock) -> Self {
        Self { clock, ready: None }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        let t = self.clock.get();
        self.ready = match bytes {
            [sht4x::CMD_MEASURE_HIGH | sht4x::CMD_MEASURE_MEDIUM | sht4x::CMD_MEASURE_LOW] => {
                Some([sht4x_temperature_raw(t), sht4x_humidity_raw(t)])
            }
            [sht4x::CMD_SERIAL_NUMBER] => {
                Some([(SIM_SHT4X_SERIAL >> 16) as u16, SIM_SHT4X_SERIAL as u16])
            }
            [sht4x::CMD_SOFT_RESET] => None,
            _ => return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data)),
        };
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ErrorKind> {
        // The part NACKs its read header when it has nothing to say.
        let words = self.ready.take().ok_or_else(nack_address)?;
        let mut bytes = [0u8; 6];
        for (i, w) in words.iter().enumerate() {
            let [hi, lo] = w.to_be_bytes();
            bytes[3 * i] = hi;
            bytes[3 * i + 1] = lo;
            bytes[3 * i + 2] = sht4x::crc8(&[hi, lo]);
        }
        for (dst, src) in buf
            .iter_mut()
            .zip(bytes.iter().chain(core::iter::repeat(&0xFF)))
        {
            *dst = *src;
        }
        Ok(())
    }
}

impl ErrorType for SimSht4xBus<'_> {
    type Error = ErrorKind;
}

impl I2c for SimSht4xBus<'_> {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != sht4x::DEFAULT_ADDRESS {
            return Err(nack_address());
        }
        for op in operations {
            match op {
                Operation::Write(bytes) => self.write(bytes)?,
                Operation::Read(buf) => self.read(buf)?,
            }
        }
        Ok(())
    }
}

/// A TMP102 at [`tmp102::DEFAULT_ADDRESS`] on its own simulated bus.
#[derive(Debug)]
pub struct SimTmp102Bus<'a> {
    clock: &'a SimClock,
    pointer: u8,
    config: u16,
    limits: [u16; 2],
}

impl<'a> SimTmp102Bus<'a> {
    /// A bus whose sensor reads the time from `clock`.
    pub fn new(clock: &'a SimClock) -> Self {
        Self {
            clock,
            pointer: tmp102::REG_TEMPERATURE,
            config: tmp102::POWER_UP_CONFIG,
            // Power-up T_LOW 75 °C and T_HIGH 80 °C.
            limits: [0x4B00, 0x5000],
        }
    }

    fn register(&self) -> u16 {
        match self.pointer {
            tmp102::REG_TEMPERATURE => u16::from_be_bytes(tmp102::encode_temperature(
                tmp102::Temperature(tmp102_counts(self.clock.get())),
            )),
            tmp102::REG_CONFIG => self.config,
            p => self.limits[usize::from(p - 2)],
        }
    }
}

impl ErrorType for SimTmp102Bus<'_> {
    type Error = ErrorKind;
}

impl I2c for SimTmp102Bus<'_> {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != tmp102::DEFAULT_ADDRESS {
            return Err(nack_address());
        }
        for op in operations {
            match op {
                Operation::Write([]) => {}
                Operation::Write([pointer, value @ ..]) => {
                    if *pointer > 3 {
                        return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data));
                    }
                    self.pointer = *pointer;
                    if let [hi, lo] = value {
                        let v = u16::from_be_bytes([*hi, *lo]);
                        match self.pointer {
                            tmp102::REG_TEMPERATURE => {}
                            tmp102::REG_CONFIG => self.config = v,
                            p => self.limits[usize::from(p - 2)] = v,
                        }
                    }
                }
                Operation::Read(buf) => {
                    let bytes = self.register().to_be_bytes();
                    for (dst, src) in buf.iter_mut().zip(bytes.iter().cycle()) {
                        *dst = *src;
                    }
                }
            }
        }
        Ok(())
    }
}
