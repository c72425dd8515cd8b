//! The device link: messages between Ferry firmware and its gateway agent,
//! carried in [`crate::serial`] frames.
//!
//! Every type here is bounded and allocation-free (`heapless`), so firmware
//! without a heap encodes and decodes them, and a gateway decoding them cannot
//! be made to allocate more than these bounds.
//!
//! # Protocol (docs/protocol.md, "Device link")
//! - At boot, and whenever the gateway sends [`Downlink::HelloRequest`], the
//!   device sends [`Uplink::Hello`] with its unique id, a boot number and its
//!   channel catalogue.
//! - Each closed window goes into a [`Report`] with a device sequence number
//!   (per boot, starting at 1). The device keeps unacknowledged reports and
//!   resends them until the gateway answers [`Downlink::Ack`] with `up_to` at
//!   or past their sequence. The gateway acks only after the report is in its
//!   journal, and discards reports with `(boot, seq)` it has already journaled.
//! - [`Uplink::Heartbeat`] carries uptime and the count of reports the device
//!   dropped because its retry buffer was full.
//! - **Time**: a device has no wall clock, only a monotonic one per
//!   power-up (its *boot id*, `power_up`). The gateway answers every hello
//!   and heartbeat with [`Downlink::TimeSync`] (its wall clock at the
//!   device's uptime); a report's [`ReportTime`] then places its windows:
//!   `wall = wall_at_zero_ms + start_ms`, marked when the device took them
//!   before it was re-synced after a reboot (`BEFORE_SYNC`), or when it could
//!   only estimate (`ESTIMATED`: a power-up that ended before any sync).

use core::fmt;

use crate::{wire_enum, wire_struct};

/// Device-link protocol version, sent in [`DeviceHello::link_version`].
/// Version 2 added device time sync (`power_up`, [`ReportTime`],
/// [`TimeSync`]).
pub const LINK_VERSION: u8 = 2;
/// Most bytes in a device id.
pub const MAX_DEVICE_ID: usize = 16;
/// Most channels a device declares.
pub const MAX_CHANNELS: usize = 8;
/// Most windows in one [`Report`].
pub const MAX_REPORT_WINDOWS: usize = 8;

/// A device's unique id: the chip's factory id on real boards (e.g. 12 bytes
/// on STM32, 8 on nRF52), configured on emulated ones. Encoded as MessagePack
/// `bin`; shown as lowercase hex.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DeviceId(pub heapless::Vec<u8, MAX_DEVICE_ID>);

impl DeviceId {
    /// An id from raw bytes; `None` if longer than [`MAX_DEVICE_ID`] or empty.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() {
            return None;
        }
        heapless::Vec::from_slice(bytes).ok().map(Self)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl serde::Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DeviceId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a device id of 1 to {MAX_DEVICE_ID} bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<DeviceId, E> {
                DeviceId::from_bytes(v).ok_or_else(|| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

wire_struct! {
    /// One measured quantity of one sensor: becomes one series at the gateway,
    /// `<quantity>{device=<id>,sensor=<sensor>,unit=<unit>}`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Channel {
        /// Channel number used in [`WindowReport::channel`].
        pub id: u8,
        /// Sensor part, e.g. `sht4x`.
        pub sensor: heapless::String<16>,
        /// Measured quantity, e.g. `temperature` (a metric name).
        pub quantity: heapless::String<24>,
        /// UCUM unit code, e.g. `Cel`, `%`, `hPa`.
        pub unit: heapless::String<8>,
    }
}

wire_struct! {
    /// Sent at boot and on request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DeviceHello {
        /// [`LINK_VERSION`] of the firmware.
        pub link_version: u8,
        /// The device's unique id.
        pub device_id: DeviceId,
        /// Boot number: differs between boots, so `(boot, seq)` is unique. A
        /// device that journals its reports keeps it across power losses as
        /// its journal's epoch (docs/protocol.md, "Devices that journal").
        pub boot: u32,
        /// Firmware name and version, e.g. `ferry-fw 0.1.0`.
        pub firmware: heapless::String<24>,
        /// Milliseconds since this power-up (the clock `power_up` names).
        pub uptime_ms: u64,
        /// The sensor catalogue.
        pub channels: heapless::Vec<Channel, MAX_CHANNELS>,
        /// The device's boot id: which power-up `uptime_ms` counts in. A
        /// device that does not journal uses its `boot`; one that journals
        /// counts its power-ups (its `boot` is an epoch that outlives them).
        pub power_up: u32,
    }
}

wire_struct! {
    /// One closed window of one channel, in device time.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct WindowReport {
        /// Channel id from the hello.
        pub channel: u8,
        /// Window start, ms since the power-up its report's [`ReportTime`]
        /// names.
        pub start_ms: u64,
        /// Window length, ms.
        pub len_ms: u32,
        /// Samples in the window (> 0).
        pub count: u32,
        /// Sum of samples.
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
}

/// How a device knew the wall-clock time of a report ([`ReportTime::quality`]).
pub mod time_quality {
    /// Taken after the device's clock was synced in that power-up.
    pub const SYNCED: u8 = 0;
    /// Taken after a reboot, before the power-up's first sync; placed with
    /// that sync (exact: the monotonic clock ran on between the two).
    pub const BEFORE_SYNC: u8 = 1;
    /// The power-up ended before any sync: placed by the device's estimate
    /// (right after the previous power-up's last window, or right before
    /// the next power-up's start), off by however long the power was off.
    pub const ESTIMATED: u8 = 2;
}

wire_struct! {
    /// Where a report's windows lie in wall-clock time.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ReportTime {
        /// The power-up (boot id) whose clock the windows' `start_ms` count.
        pub power_up: u32,
        /// Wall-clock time (Unix ms) of that clock's zero.
        pub wall_at_zero_ms: i64,
        /// [`time_quality`]: synced, before the sync, or estimated.
        pub quality: u8,
    }
}

wire_struct! {
    /// Closed windows under one device sequence number.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Report {
        /// Per-boot sequence, from 1, +1 per report.
        pub seq: u32,
        /// The windows.
        pub windows: heapless::Vec<WindowReport, MAX_REPORT_WINDOWS>,
        /// Their clock and its wall-clock time.
        pub time: ReportTime,
    }
}

wire_struct! {
    /// Periodic liveness and loss accounting.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Heartbeat {
        /// Milliseconds since boot.
        pub uptime_ms: u64,
        /// Reports dropped since boot because the retry buffer was full.
        pub dropped: u32,
        /// Reports waiting for an ack.
        pub queued: u16,
        /// Sequence the next report will get.
        pub next_seq: u32,
        /// The power-up `uptime_ms` counts in (as in the hello).
        pub power_up: u32,
    }
}

wire_enum! {
    /// Device to gateway.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Uplink {
        /// Identity and catalogue.
        0 => Hello(DeviceHello),
        /// Closed windows.
        1 => Report(Report),
        /// Liveness.
        2 => Heartbeat(Heartbeat),
    }
}

wire_struct! {
    /// Everything up to and including `up_to` of boot `boot` is journaled.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct LinkAck {
        /// The boot the sequence belongs to.
        pub boot: u32,
        /// Highest acknowledged sequence (cumulative).
        pub up_to: u32,
    }
}

wire_struct! {
    /// Settings the gateway pushes to the device.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct LinkConfig {
        /// Sensor sampling period, ms (≥ 10).
        pub sample_period_ms: u32,
        /// Window length, ms (≥ sample period).
        pub window_ms: u32,
    }
}

wire_struct! {
    /// The gateway's clock when a hello or heartbeat arrived: "at your
    /// `uptime_ms` of `power_up`, it was `wall_ms`". The device takes
    /// `wall_ms − uptime_ms` as its clock's zero (early by the message's
    /// transit time: milliseconds on a serial link).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TimeSync {
        /// The power-up the hello or heartbeat named.
        pub power_up: u32,
        /// Its `uptime_ms`, echoed.
        pub uptime_ms: u64,
        /// The gateway's wall clock when it arrived, Unix ms.
        pub wall_ms: i64,
    }
}

wire_enum! {
    /// Gateway to device.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Downlink {
        /// Cumulative acknowledgement.
        0 => Ack(LinkAck),
        /// New settings.
        1 => Config(LinkConfig),
        /// Ask the device to send its hello again (the gateway restarted).
        2 => HelloRequest(()),
        /// The gateway's wall clock, for the device's clock.
        3 => TimeSync(TimeSync),
    }
}
