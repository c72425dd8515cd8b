//! What the gateway knows of each device across its connections.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// What the gateway knows of one device, across its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceMark {
    /// The boot the other fields belong to.
    pub boot: u32,
    /// Highest sequence of `boot` known to be in the journal.
    pub journaled: u32,
    /// The device's `dropped` figure already journaled as health.
    pub dropped_forwarded: u32,
    /// Clock offset measured at the first hello of `boot`, ns.
    pub offset_ns: Option<i64>,
    /// Said hello since the agent started.
    pub said_hello: bool,
}

/// What operators see of one device: reported to the collector in the
/// agent's status ([`ferry_proto::session::AgentStatus`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// Firmware name and version from its newest hello.
    pub firmware: String,
    /// Its device-link protocol version.
    pub link_version: u8,
    /// Links to it open now.
    pub links: u32,
    /// When a message from it last arrived, ns since the epoch.
    pub last_seen_ns: i64,
}

/// Per-device marks shared by every link of a source (and the journal's
/// records at start), so a device that reconnects is acked from what the
/// journal holds; and what each device said about itself. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DeviceRegistry {
    marks: Arc<Mutex<BTreeMap<String, DeviceMark>>>,
    infos: Arc<Mutex<BTreeMap<String, DeviceInfo>>>,
}

impl DeviceRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry seeded with the journal's records `(device, boot, seq)`,
    /// as [`Journal::devices`](crate::journal::Journal::devices) returns them.
    pub fn from_journal(records: impl IntoIterator<Item = (String, u32, u32)>) -> Self {
        let marks = records
            .into_iter()
            .map(|(device, boot, seq)| {
                let mark = DeviceMark {
                    boot,
                    journaled: seq,
                    ..DeviceMark::default()
                };
                (device, mark)
            })
            .collect();
        Self {
            marks: Arc::new(Mutex::new(marks)),
            infos: Arc::default(),
        }
    }

    /// The mark of `device` (lowercase hex id).
    pub fn get(&self, device: &str) -> Option<DeviceMark> {
        self.lock().get(device).copied()
    }

    /// Adds the journal's device-time offsets `(device, boot, offset_ns)`,
    /// as [`Journal::device_offsets`](crate::journal::Journal::device_offsets)
    /// returns them: a device that says hello again in the same boot keeps
    /// the offset its earlier windows were mapped with.
    pub fn with_offsets(self, offsets: impl IntoIterator<Item = (String, u32, i64)>) -> Self {
        {
            let mut marks = self.lock();
            for (device, boot, offset) in offsets {
                let mark = marks.entry(device).or_default();
                if mark.boot == boot || (mark.boot == 0 && mark.journaled == 0) {
                    mark.boot = boot;
                    mark.offset_ns = Some(offset);
                }
            }
        }
        self
    }

    /// Devices known.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no device is known.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DeviceMark>> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `mark` unless that would hold more than `max` devices.
    pub(super) fn put(&self, device: &str, mark: DeviceMark, max: usize) {
        let mut marks = self.lock();
        if let Some(m) = marks.get_mut(device) {
            *m = mark;
        } else if marks.len() < max {
            marks.insert(device.to_owned(), mark);
        }
    }

    /// Applies `f` to the mark of `device` if it is of `boot`.
    pub(super) fn update(&self, device: &str, boot: u32, f: impl FnOnce(&mut DeviceMark)) {
        if let Some(m) = self.lock().get_mut(device)
            && m.boot == boot
        {
            f(m);
        }
    }

    fn infos(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DeviceInfo>> {
        self.infos.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A link to `device` opened with a hello: its firmware and link
    /// version. At most `max` devices are kept: past it, the one heard from
    /// least recently with no open link makes room.
    pub(super) fn link_up(
        &self,
        device: &str,
        firmware: &str,
        link_version: u8,
        now_ns: i64,
        max: usize,
    ) {
        let mut infos = self.infos();
        if !infos.contains_key(device) && infos.len() >= max.max(1) {
            let idlest = infos
                .iter()
                .filter(|(_, i)| i.links == 0)
                .min_by_key(|(_, i)| i.last_seen_ns)
                .map(|(d, _)| d.clone());
            match idlest {
                Some(d) => {
                    infos.remove(&d);
                }
                None => return,
            }
        }
        let info = infos.entry(device.to_owned()).or_default();
        info.firmware = firmware.to_owned();
        info.link_version = link_version;
        info.links += 1;
        info.last_seen_ns = info.last_seen_ns.max(now_ns);
    }

    /// A message from `device` arrived.
    pub(super) fn seen(&self, device: &str, now_ns: i64) {
        if let Some(i) = self.infos().get_mut(device) {
            i.last_seen_ns = i.last_seen_ns.max(now_ns);
        }
    }

    /// A link to `device` that had said hello closed.
    pub(super) fn link_down(&self, device: &str) {
        if let Some(i) = self.infos().get_mut(device) {
            i.links = i.links.saturating_sub(1);
        }
    }

    /// Every device that said hello since the agent started, by id.
    pub fn device_infos(&self) -> Vec<(String, DeviceInfo)> {
        self.infos()
            .iter()
            .map(|(d, i)| (d.clone(), i.clone()))
            .collect()
    }
}
