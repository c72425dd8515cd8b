//! What a commit takes ([`Work`]) and what it did ([`CommitReport`]).

use alloc::string::String;
use alloc::vec::Vec;

use ferry_proto::batch::Reading;
use ferry_proto::series::SeriesKey;

use crate::window::Partial;

/// Readings of one series from one origin.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesReadings {
    /// The series.
    pub series: SeriesKey,
    /// Device id or source name, for loss accounting.
    pub origin: String,
    /// The readings.
    pub readings: Vec<Reading>,
}

/// A device report: windows computed on a device, journaled at most once.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReport {
    /// Device id (hex).
    pub device: String,
    /// Boot number from the device's hello.
    pub boot: u32,
    /// Report sequence.
    pub seq: u32,
    /// Reports of this boot at or below `floor` will never come (the device
    /// dropped them and counts them itself): from its latest heartbeat,
    /// `next_seq − queued − 1`; 0 when unknown.
    pub floor: u32,
    /// Wall-clock minus device time (ns) used for `windows`. The first one
    /// journaled for a boot is kept (see [`Journal::device_offsets`](super::Journal::device_offsets)) so a
    /// restarted agent maps the rest of the boot identically.
    pub offset_ns: i64,
    /// Closed windows, already in wall-clock time.
    pub windows: Vec<(SeriesKey, Partial)>,
}

/// A source's record in the journal: `(key, value)` ([`Work::marks`]).
pub type Mark = (Vec<u8>, Vec<u8>);

/// Everything one group commit applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Work {
    /// Readings from sources.
    pub readings: Vec<SeriesReadings>,
    /// Device reports.
    pub reports: Vec<DeviceReport>,
    /// Health increments `(origin, kind, count)`.
    pub health: Vec<(String, u16, u64)>,
    /// Devices' own drop totals `(device, boot, dropped since boot)` from
    /// their heartbeats. The journal counts only the increase over the total
    /// it has recorded for that boot, so a total sent twice (an agent
    /// restart, a resent heartbeat) is counted once.
    pub device_dropped: Vec<(String, u32, u32)>,
    /// Collector answers `(seq, delivered)`: `true` for stored/duplicate,
    /// `false` for a permanent rejection.
    pub acks: Vec<(u64, bool)>,
    /// Sources' own records `(key, value)`, written to the `source_marks`
    /// table in the same transaction as the readings (a later value
    /// replaces an earlier one), so that what a source remembers about its
    /// input is durable exactly when that input is: the MQTT source keeps
    /// the packet ids of committed messages there to recognise
    /// redeliveries. Keys start with the source kind and name.
    pub marks: Vec<Mark>,
}

impl Work {
    /// True when the commit would change nothing but time-driven state.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
            && self.reports.is_empty()
            && self.health.is_empty()
            && self.acks.is_empty()
            && self.device_dropped.is_empty()
            && self.marks.is_empty()
    }

    /// Readings carried (raw readings plus samples in device windows).
    pub fn reading_count(&self) -> u64 {
        let raw: usize = self.readings.iter().map(|s| s.readings.len()).sum();
        let windows: u64 = self
            .reports
            .iter()
            .flat_map(|r| &r.windows)
            .map(|(_, p)| p.count)
            .sum();
        raw as u64 + windows
    }
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Readings accepted (raw and into windows).
    pub accepted: u64,
    /// Readings dropped as late.
    pub late_dropped: u64,
    /// For each report in [`Work::reports`]: true if journaled now or before
    /// (ack it), false if out of order (do not ack).
    pub reports: Vec<bool>,
    /// Batches sealed.
    pub sealed: Vec<u64>,
    /// Batches dropped to stay within the budget.
    pub dropped_batches: u64,
    /// Readings in those batches.
    pub dropped_readings: u64,
    /// Whether a write transaction was committed.
    pub wrote: bool,
    /// Readings (and window counts) in the batches this commit deleted as
    /// delivered (acked stored or duplicate).
    pub delivered_readings: u64,
}
