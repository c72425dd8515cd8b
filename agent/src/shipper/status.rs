//! The agent's status report ([`AgentStatus`]): its backlog and its devices,
//! sent on the control stream every `Welcome.status_interval_ms` so the
//! collector's agents table and fleet page show them.

use ferry_proto::session::{AgentStatus, DeviceStatus, MAX_STATUS_DEVICES, MAX_STATUS_TEXT};
use ferry_proto::stream::{FrameType, compression, write_frame};

use crate::journal::JournalStats;
use crate::sources::device::DeviceInfo;

/// The report at `now_ns`: backlog from the journal's counters, and the
/// devices heard from most recently (at most [`MAX_STATUS_DEVICES`]; ids
/// and firmware strings cut to [`MAX_STATUS_TEXT`] bytes on a character
/// boundary).
pub fn report(now_ns: i64, stats: &JournalStats, devices: &[(String, DeviceInfo)]) -> AgentStatus {
    let mut newest: Vec<&(String, DeviceInfo)> = devices.iter().collect();
    newest.sort_by(|a, b| {
        b.1.last_seen_ns
            .cmp(&a.1.last_seen_ns)
            .then_with(|| a.0.cmp(&b.0))
    });
    newest.truncate(MAX_STATUS_DEVICES);
    newest.sort_by(|a, b| a.0.cmp(&b.0));
    AgentStatus {
        sent_ns: now_ns,
        backlog_readings: stats.outbox_readings.saturating_add(stats.pending_readings),
        backlog_batches: stats.outbox_batches,
        journal_bytes: stats.bytes,
        journal_budget_bytes: stats.budget_bytes,
        oldest_unacked_ns: stats.oldest_unacked_ns.unwrap_or(0),
        devices: newest
            .into_iter()
            .map(|(id, info)| DeviceStatus {
                device: cut(id),
                firmware: cut(&info.firmware),
                link_version: info.link_version,
                connected: info.links > 0,
                last_seen_ns: info.last_seen_ns,
            })
            .collect(),
    }
}

/// The frame that carries `status`.
pub fn frame(status: &AgentStatus) -> Vec<u8> {
    let body = ferry_proto::codec::to_vec(status).unwrap_or_default();
    let mut frame = Vec::with_capacity(body.len() + ferry_proto::stream::HEADER_LEN);
    write_frame(&mut frame, FrameType::Status, compression::NONE, &body);
    frame
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_STATUS_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::stream::{FrameHeader, Parsed};

    fn info(firmware: &str, links: u32, seen: i64) -> DeviceInfo {
        DeviceInfo {
            firmware: firmware.into(),
            link_version: 1,
            links,
            last_seen_ns: seen,
        }
    }

    #[test]
    fn the_report_carries_the_backlog_and_the_devices() {
        let stats = JournalStats {
            bytes: 4096,
            budget_bytes: 1 << 20,
            pending_readings: 7,
            outbox_batches: 3,
            outbox_readings: 300,
            oldest_unacked_ns: Some(1_000),
            ..JournalStats::default()
        };
        let devices = vec![
            ("b2".to_owned(), info("ferry-fw 0.2.0", 0, 20)),
            ("a1".to_owned(), info("ferry-fw 0.1.0", 1, 10)),
        ];
        let r = report(5_000, &stats, &devices);
        assert_eq!(
            (
                r.sent_ns,
                r.backlog_readings,
                r.backlog_batches,
                r.oldest_unacked_ns
            ),
            (5_000, 307, 3, 1_000)
        );
        assert_eq!((r.journal_bytes, r.journal_budget_bytes), (4096, 1 << 20));
        let listed: Vec<_> = r
            .devices
            .iter()
            .map(|d| (d.device.as_str(), d.firmware.as_str(), d.connected))
            .collect();
        assert_eq!(
            listed,
            [
                ("a1", "ferry-fw 0.1.0", true),
                ("b2", "ferry-fw 0.2.0", false)
            ]
        );
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn an_empty_journal_reports_no_backlog() {
        let r = report(1, &JournalStats::default(), &[]);
        assert_eq!((r.backlog_readings, r.oldest_unacked_ns), (0, 0));
        assert!(r.devices.is_empty());
    }

    #[test]
    fn the_most_recently_heard_devices_fit_the_limit() {
        let devices: Vec<_> = (0..MAX_STATUS_DEVICES as i64 + 5)
            .map(|i| (format!("{i:08x}"), info("fw", 0, i)))
            .collect();
        let r = report(0, &JournalStats::default(), &devices);
        assert_eq!(r.devices.len(), MAX_STATUS_DEVICES);
        // The five heard from least recently (0..5) are left out.
        assert_eq!(r.devices[0].device, "00000005");
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(40); // 80 bytes
        let r = report(
            0,
            &JournalStats::default(),
            &[("d".into(), info(&long, 1, 0))],
        );
        assert_eq!(r.devices[0].firmware, "é".repeat(32));
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn the_frame_decodes_back() {
        let r = report(
            9,
            &JournalStats::default(),
            &[("d".into(), info("fw", 1, 3))],
        );
        let bytes = frame(&r);
        let Ok(Parsed::Frame { header, body, .. }) = ferry_proto::stream::parse(&bytes, 1 << 20)
        else {
            panic!("not one whole frame");
        };
        let header: FrameHeader = header;
        assert_eq!(header.frame_type, FrameType::Status);
        let back: AgentStatus = ferry_proto::codec::from_bytes("AgentStatus", body).unwrap();
        assert_eq!(back, r);
    }
}
