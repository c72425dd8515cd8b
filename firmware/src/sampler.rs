//! The sampler: reads each sensor on its own period and folds the samples
//! into tumbling [`Windows`].
//!
//! # Schedule
//! A [`LinkConfig`] gives a base `sample_period_ms` and a `window_ms`. Sensor
//! `i` is read every `every[i] × sample_period_ms`, at the instants
//! `epoch + k · period`; windows are `[epoch + j · window_ms, +window_ms)`.
//! The epoch is the node's start, and moves to the window boundary where a
//! new config takes effect.
//!
//! **Invariants:**
//! - a sample belongs to the window that contains its *scheduled* instant,
//!   whenever the read actually happened (a late loop catches up, in order);
//! - a new config applies at the end of the current window, never inside
//!   one, so every window has one length and one sampling period;
//! - a window is closed only once every sample scheduled inside it was taken.

use ferry_proto::link::{LinkConfig, MAX_CHANNELS};

use crate::sensor::Sensor;
use crate::window::{ClosedWindows, Windows};

/// Most sensors one sampler reads.
pub const MAX_SENSORS: usize = 4;
/// Shortest sample period accepted from a config, ms.
pub const MIN_SAMPLE_PERIOD_MS: u32 = 10;
/// Longest window accepted from a config, ms (one day).
pub const MAX_WINDOW_MS: u32 = 86_400_000;

/// Why a configuration or sensor layout was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// `sample_period_ms` is below [`MIN_SAMPLE_PERIOD_MS`].
    PeriodTooShort,
    /// `window_ms` is shorter than `sample_period_ms` or longer than [`MAX_WINDOW_MS`].
    BadWindow,
    /// More than [`MAX_SENSORS`] sensors or [`MAX_CHANNELS`] channels, a
    /// sensor with a zero period multiple, or `every` not one per sensor.
    BadLayout,
}

/// Checks a config against the sampler's limits.
pub fn validate(config: &LinkConfig) -> Result<(), ConfigError> {
    if config.sample_period_ms < MIN_SAMPLE_PERIOD_MS {
        return Err(ConfigError::PeriodTooShort);
    }
    if config.window_ms < config.sample_period_ms || config.window_ms > MAX_WINDOW_MS {
        return Err(ConfigError::BadWindow);
    }
    Ok(())
}

/// Sampler counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SamplerStats {
    /// Successful sensor reads.
    pub samples: u32,
    /// Sensor reads that failed (bus, CRC, bad data); their instants have no sample.
    pub read_errors: u32,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    every: u32,
    first_channel: u8,
    channels: u8,
    next_due_ms: u64,
}

/// Reads sensors on schedule and closes windows.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: LinkConfig,
    pending: Option<LinkConfig>,
    epoch_ms: u64,
    windows: Windows,
    slots: heapless::Vec<Slot, MAX_SENSORS>,
    stats: SamplerStats,
}

impl Sampler {
    /// A sampler starting at `start_ms` for sensors whose channel counts are
    /// `channels[i]`, read every `every[i]` base periods.
    pub fn new(
        start_ms: u64,
        config: LinkConfig,
        channels: &[u8],
        every: &[u32],
    ) -> Result<Self, ConfigError> {
        validate(&config)?;
        let total: usize = channels.iter().map(|&c| usize::from(c)).sum();
        if channels.len() != every.len()
            || channels.len() > MAX_SENSORS
            || total > MAX_CHANNELS
            || every.contains(&0)
        {
            return Err(ConfigError::BadLayout);
        }
        let mut slots = heapless::Vec::new();
        let mut first_channel = 0u8;
        for (&n, &every) in channels.iter().zip(every) {
            let _ = slots.push(Slot {
                every,
                first_channel,
                channels: n,
                next_due_ms: start_ms,
            });
            first_channel += n;
        }
        Ok(Self {
            config,
            pending: None,
            epoch_ms: start_ms,
            windows: Windows::new(start_ms, config.window_ms),
            slots,
            stats: SamplerStats::default(),
        })
    }

    /// A sampler that carries on a schedule begun at `epoch_ms` from the
    /// window starting at `window_start_ms` (a boundary of that schedule,
    /// `window_start_ms - epoch_ms` a multiple of `config.window_ms`): each
    /// sensor's next read is its first scheduled instant at or after
    /// `window_start_ms`, exactly as if the sampler had never stopped. This is
    /// how a node with a journal resumes after a power loss.
    pub fn resume(
        epoch_ms: u64,
        window_start_ms: u64,
        config: LinkConfig,
        channels: &[u8],
        every: &[u32],
    ) -> Result<Self, ConfigError> {
        if window_start_ms < epoch_ms {
            return Err(ConfigError::BadWindow);
        }
        let mut sampler = Self::new(window_start_ms, config, channels, every)?;
        sampler.epoch_ms = epoch_ms;
        let base = u64::from(config.sample_period_ms);
        for slot in &mut sampler.slots {
            let period = base * u64::from(slot.every);
            slot.next_due_ms = epoch_ms + (window_start_ms - epoch_ms).div_ceil(period) * period;
        }
        Ok(sampler)
    }

    /// The config in force.
    pub fn config(&self) -> LinkConfig {
        self.config
    }

    /// A config waiting for the current window to end.
    pub fn pending_config(&self) -> Option<LinkConfig> {
        self.pending
    }

    /// Where the current schedule started.
    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    /// The current window's start.
    pub fn window_start_ms(&self) -> u64 {
        self.windows.start_ms()
    }

    /// Counters.
    pub fn stats(&self) -> SamplerStats {
        self.stats
    }

    /// Schedules `config` for the end of the current window (replacing any
    /// config still waiting). A config equal to the one in force cancels a
    /// waiting one.
    pub fn apply_config(&mut self, config: LinkConfig) -> Result<(), ConfigError> {
        validate(&config)?;
        self.pending = (config != self.config).then_some(config);
        Ok(())
    }

    /// The next instant `poll` has work: a sample or a window end.
    pub fn next_due_ms(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.next_due_ms)
            .fold(self.windows.end_ms(), u64::min)
    }

    /// Takes every sample due by `now_ms` (in schedule order per sensor) and
    /// returns the windows of the next boundary reached, if any had samples.
    /// Call again until `None`: a late caller gets one boundary per call.
    /// `sensors` must be the sensors given to [`Sampler::new`], in order.
    pub fn poll(&mut self, now_ms: u64, sensors: &mut [&mut dyn Sensor]) -> Option<ClosedWindows> {
        loop {
            let end = self.windows.end_ms();
            let horizon = now_ms.min(end - 1);
            let base = u64::from(self.config.sample_period_ms);
            for (slot, sensor) in self.slots.iter_mut().zip(sensors.iter_mut()) {
                while slot.next_due_ms <= horizon {
                    let mut values = [0f32; MAX_CHANNELS];
                    let values = &mut values[..usize::from(slot.channels)];
                    match sensor.read(slot.next_due_ms, values) {
                        Ok(()) => {
                            self.stats.samples += 1;
                            for (k, &v) in values.iter().enumerate() {
                                self.windows.add(slot.first_channel + k as u8, v);
                            }
                        }
                        Err(_) => self.stats.read_errors += 1,
                    }
                    slot.next_due_ms += base * u64::from(slot.every);
                }
            }
            if now_ms < end {
                return None;
            }
            if let Some(config) = self.pending.take() {
                self.config = config;
                self.epoch_ms = end;
                for slot in &mut self.slots {
                    slot.next_due_ms = end;
                }
            }
            let closed = self.windows.close(self.config.window_ms);
            if !closed.is_empty() {
                return Some(closed);
            }
        }
    }
}
