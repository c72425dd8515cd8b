//! On-device tumbling windows: per channel, count, sum, min, max, first and
//! last of the samples whose scheduled instant falls in `[start, start + len)`.
//!
//! **Invariant:** a window is reported only if it holds at least one sample
//! (`count > 0`), and its statistics are folded in sample order with `f32`
//! arithmetic, so anyone who replays the same samples through [`Accumulator`]
//! gets the same bits (the emulated board's tests rely on it).

use ferry_proto::link::{MAX_CHANNELS, MAX_REPORT_WINDOWS, WindowReport};

/// Running statistics of one channel in one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accumulator {
    /// Samples so far (> 0).
    pub count: u32,
    /// Sum, folded in sample order.
    pub sum: f32,
    /// Smallest sample.
    pub min: f32,
    /// Largest sample.
    pub max: f32,
    /// First sample.
    pub first: f32,
    /// Last sample.
    pub last: f32,
}

impl Accumulator {
    /// Statistics of a single sample.
    pub fn new(value: f32) -> Self {
        Self {
            count: 1,
            sum: value,
            min: value,
            max: value,
            first: value,
            last: value,
        }
    }

    /// Folds in the next sample.
    pub fn add(&mut self, value: f32) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.last = value;
    }

    /// The wire form of this window.
    pub fn report(&self, channel: u8, start_ms: u64, len_ms: u32) -> WindowReport {
        WindowReport {
            channel,
            start_ms,
            len_ms,
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            first: self.first,
            last: self.last,
        }
    }
}

/// The closed windows of one boundary, one per channel that had samples.
pub type ClosedWindows = heapless::Vec<WindowReport, MAX_REPORT_WINDOWS>;

/// The current window of every channel; all channels share one grid.
#[derive(Debug, Clone)]
pub struct Windows {
    start_ms: u64,
    len_ms: u32,
    channels: [Option<Accumulator>; MAX_CHANNELS],
}

impl Windows {
    /// Empty windows `[start_ms, start_ms + len_ms)`.
    pub const fn new(start_ms: u64, len_ms: u32) -> Self {
        Self {
            start_ms,
            len_ms,
            channels: [None; MAX_CHANNELS],
        }
    }

    /// Start of the current window.
    pub fn start_ms(&self) -> u64 {
        self.start_ms
    }

    /// Length of the current window.
    pub fn len_ms(&self) -> u32 {
        self.len_ms
    }

    /// End (exclusive) of the current window.
    pub fn end_ms(&self) -> u64 {
        self.start_ms + u64::from(self.len_ms)
    }

    /// Adds a sample of `channel` (must be `< MAX_CHANNELS`) to the current window.
    pub fn add(&mut self, channel: u8, value: f32) {
        match &mut self.channels[usize::from(channel)] {
            Some(acc) => acc.add(value),
            slot @ None => *slot = Some(Accumulator::new(value)),
        }
    }

    /// Closes the current window and opens `[end, end + next_len_ms)`.
    /// Returns the windows that had samples, by channel.
    pub fn close(&mut self, next_len_ms: u32) -> ClosedWindows {
        let mut out = ClosedWindows::new();
        for (channel, slot) in self.channels.iter_mut().enumerate() {
            if let Some(acc) = slot.take() {
                // MAX_REPORT_WINDOWS >= MAX_CHANNELS: never full.
                let _ = out.push(acc.report(channel as u8, self.start_ms, self.len_ms));
            }
        }
        self.start_ms = self.end_ms();
        self.len_ms = next_len_ms;
        out
    }
}

const _: () = assert!(MAX_REPORT_WINDOWS >= MAX_CHANNELS);
