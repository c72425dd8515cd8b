//! A whole sensor node, sans-IO: the [`Sampler`] feeding the [`Link`], a
//! [`Deframer`] for the downlink, and configs from the gateway applied to the
//! sampler. A board's main loop is:
//!
//! ```text
//! loop {
//!     now = clock
//!     for byte received: node.handle_rx(now, byte)
//!     node.poll(now, &mut sensors)
//!     while let Some(n) = node.poll_transmit(now, &mut buf): uart.write(&buf[..n])
//!     sleep until an interrupt (or node.next_due_ms())
//! }
//! ```

use ferry_proto::link::{Channel, DeviceId, LinkConfig, MAX_REPORT_WINDOWS};
use ferry_proto::serial::Deframer;

use crate::link::{Event, Identity, Link, LinkStats, LinkTimers};
use crate::sampler::{ConfigError, Sampler, SamplerStats};
use crate::sensor::Sensor;

/// Firmware name and version sent in the hello.
pub const FIRMWARE: &str = concat!("ferry-fw ", env!("CARGO_PKG_VERSION"));

/// Node counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeStats {
    /// Sampler counters.
    pub sampler: SamplerStats,
    /// Link counters.
    pub link: LinkStats,
    /// Configs refused as out of range.
    pub configs_rejected: u32,
}

/// Sampler and link of one device, with a ring of `N` reports of at most
/// `W` windows.
#[derive(Debug)]
pub struct Node<const N: usize, const W: usize = MAX_REPORT_WINDOWS> {
    sampler: Sampler,
    link: Link<N, W>,
    deframer: Deframer,
    configs_rejected: u32,
}

impl<const N: usize, const W: usize> Node<N, W> {
    /// A node starting at `now_ms`. `every[i]` is how many base sample
    /// periods lie between reads of `sensors[i]`; channel ids follow the
    /// sensors' quantities in order.
    pub fn new(
        now_ms: u64,
        device_id: DeviceId,
        boot: u32,
        config: LinkConfig,
        timers: LinkTimers,
        sensors: &[&dyn Sensor],
        every: &[u32],
    ) -> Result<Self, ConfigError> {
        let mut channels = heapless::Vec::new();
        let mut counts = heapless::Vec::<u8, { crate::sampler::MAX_SENSORS }>::new();
        for sensor in sensors {
            let qs = sensor.quantities();
            counts
                .push(qs.len() as u8)
                .map_err(|_| ConfigError::BadLayout)?;
            for q in qs {
                let channel = Channel {
                    id: channels.len() as u8,
                    sensor: short(q.sensor)?,
                    quantity: short(q.quantity)?,
                    unit: short(q.unit)?,
                };
                channels.push(channel).map_err(|_| ConfigError::BadLayout)?;
            }
        }
        let sampler = Sampler::new(now_ms, config, &counts, every)?;
        let identity = Identity {
            device_id,
            boot,
            firmware: heapless::String::try_from(FIRMWARE).unwrap_or_default(),
            channels,
        };
        Ok(Self {
            sampler,
            link: Link::new(now_ms, identity, timers),
            deframer: Deframer::new(),
            configs_rejected: 0,
        })
    }

    /// Feeds one received byte; returns what a completed frame did.
    pub fn handle_rx(&mut self, now_ms: u64, byte: u8) -> Option<Event> {
        let event = match self.deframer.push(byte)? {
            Ok(payload) => self.link.handle_payload(now_ms, payload),
            Err(_) => self.link.handle_bad_frame(),
        };
        if let Event::Config(config) = event
            && self.sampler.apply_config(config).is_err()
        {
            self.configs_rejected += 1;
        }
        Some(event)
    }

    /// Samples what is due and queues the reports of closed windows.
    pub fn poll(&mut self, now_ms: u64, sensors: &mut [&mut dyn Sensor]) {
        while let Some(windows) = self.sampler.poll(now_ms, sensors) {
            self.link.push_report(&windows);
        }
    }

    /// The next frame to send, written to `out` (at least
    /// [`crate::link::TX_BUFFER`] bytes).
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut [u8]) -> Option<usize> {
        self.link.poll_transmit(now_ms, out)
    }

    /// The next instant `poll` or `poll_transmit` has work.
    pub fn next_due_ms(&self) -> u64 {
        self.sampler.next_due_ms().min(self.link.next_due_ms())
    }

    /// The sampler.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The link.
    pub fn link(&self) -> &Link<N, W> {
        &self.link
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            sampler: self.sampler.stats(),
            link: self.link.stats(),
            configs_rejected: self.configs_rejected,
        }
    }
}

fn short<const L: usize>(s: &str) -> Result<heapless::String<L>, ConfigError> {
    heapless::String::try_from(s).map_err(|_| ConfigError::BadLayout)
}
