//! What each uplink message does to a [`GatewayLink`]: a hello opens (or
//! refreshes) the session, a report becomes journal work, a heartbeat moves
//! the floor and the device's drops.

use super::*;

impl GatewayLink {
    pub(super) fn handle_hello(&mut self, now_ns: i64, h: DeviceHello) {
        let hex = h.device_id.to_string();
        if h.link_version != LINK_VERSION {
            DeviceStats::inc(&self.stats.bad_hellos);
            self.warn(now_ns, WarnKind::Hello, || {
                format!(
                    "device {hex}: link version {} is not supported (this agent speaks {LINK_VERSION})",
                    h.link_version
                )
            });
            return;
        }
        DeviceStats::inc(&self.stats.hellos);
        let mut series = BTreeMap::new();
        for c in &h.channels {
            let key = SeriesKey::new(
                c.quantity.as_str(),
                [
                    ("device", hex.as_str()),
                    ("sensor", c.sensor.as_str()),
                    ("unit", c.unit.as_str()),
                ],
            );
            match key {
                Ok(key) if !series.contains_key(&c.id) => {
                    series.insert(c.id, key);
                }
                Ok(_) => {
                    DeviceStats::inc(&self.stats.bad_channels);
                    self.warn(now_ns, WarnKind::Hello, || {
                        format!("device {hex}: channel {} declared twice; first kept", c.id)
                    });
                }
                Err(e) => {
                    DeviceStats::inc(&self.stats.bad_channels);
                    self.warn(now_ns, WarnKind::Hello, || {
                        format!(
                            "device {hex}: channel {} cannot name a series ({e}); its windows are refused",
                            c.id
                        )
                    });
                }
            }
        }
        let same = self
            .session
            .as_ref()
            .is_some_and(|s| s.hex == hex && s.boot == h.boot);
        if !same {
            if let Some(old) = &self.session {
                self.registry.link_down(&old.hex);
            }
            self.registry.link_up(
                &hex,
                h.firmware.as_str(),
                h.link_version,
                now_ns,
                self.config.max_devices,
            );
        }
        if same {
            // A repeated hello (after a HelloRequest, or before our ack got
            // through): keep what this link knows, refresh the catalogue.
            if let Some(s) = &mut self.session {
                s.series = series;
            }
        } else {
            let mark = self.registry.get(&hex);
            let known = mark.filter(|m| m.boot == h.boot);
            let uptime_ns = i64::try_from(h.uptime_ms)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000);
            // In whole ms, as the TimeSync answering this hello tells the
            // device: the registry's offset is the zero the device's
            // reports will carry.
            let now_ms_ns = now_ns.div_euclid(1_000_000).saturating_mul(1_000_000);
            let offset_ns = known
                .and_then(|m| m.offset_ns)
                .unwrap_or_else(|| now_ms_ns.saturating_sub(uptime_ns));
            let session = Session {
                hex: hex.clone(),
                boot: h.boot,
                series,
                acked: known.map_or(0, |m| m.journaled),
                floor: 0,
                dropped_seen: 0,
                dropped_forwarded: known.map_or(0, |m| m.dropped_forwarded),
            };
            if !mark.is_some_and(|m| m.said_hello) {
                DeviceStats::inc(&self.stats.devices_seen);
            }
            tracing::info!(
                source = %self.config.name,
                device = %hex,
                boot = h.boot,
                firmware = %h.firmware,
                channels = session.series.len(),
                acked = session.acked,
                "device said hello"
            );
            self.registry.put(
                &hex,
                DeviceMark {
                    boot: h.boot,
                    journaled: session.acked,
                    dropped_forwarded: session.dropped_forwarded,
                    offset_ns: Some(offset_ns),
                    said_hello: true,
                },
                self.config.max_devices,
            );
            self.session = Some(session);
        }
        let acked = self.session.as_ref().map_or(0, |s| s.acked);
        self.queue_ack(LinkAck {
            boot: h.boot,
            up_to: acked,
        });
        self.queue_time_sync(now_ns, h.power_up, h.uptime_ms);
        if let Some(config) = self.config.push_config {
            self.transmit.retain(|m| !matches!(m, Downlink::Config(_)));
            self.transmit.push_back(Downlink::Config(config));
        }
    }

    pub(super) fn handle_report(&mut self, now_ns: i64, r: Report) {
        let Some(s) = &self.session else {
            DeviceStats::inc(&self.stats.before_hello);
            self.request_hello(now_ns);
            return;
        };
        if r.seq <= s.acked {
            DeviceStats::inc(&self.stats.reports_duplicate);
            let ack = LinkAck {
                boot: s.boot,
                up_to: s.acked,
            };
            self.queue_ack(ack);
            return;
        }
        let id = (s.hex.clone(), s.boot, r.seq);
        let committing = self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.reports.contains(&id));
        if committing || self.pending.contains_key(&id) {
            // A resend of a report on its way to the journal: the ack after
            // that commit covers it.
            DeviceStats::inc(&self.stats.reports_duplicate);
            return;
        }
        let windows = match map_windows(s, &r) {
            Ok(w) => w,
            Err(why) => {
                DeviceStats::inc(&self.stats.reports_rejected);
                let (hex, boot) = (s.hex.clone(), s.boot);
                self.warn(now_ns, WarnKind::Report, || {
                    format!("device {hex} boot {boot}: report {} refused: {why}", r.seq)
                });
                return;
            }
        };
        if self.pending.len() >= self.config.max_pending_reports {
            DeviceStats::inc(&self.stats.reports_overflow);
            return;
        }
        if r.time.quality == time_quality::ESTIMATED {
            DeviceStats::inc(&self.stats.reports_time_estimated);
        }
        let report = DeviceReport {
            device: s.hex.clone(),
            boot: s.boot,
            seq: r.seq,
            floor: s.floor,
            offset_ns: ms_to_ns_signed(r.time.wall_at_zero_ms),
            windows,
        };
        self.pending.insert(id, report);
    }

    pub(super) fn handle_heartbeat(&mut self, now_ns: i64, h: Heartbeat) {
        let Some(s) = &mut self.session else {
            DeviceStats::inc(&self.stats.before_hello);
            self.request_hello(now_ns);
            return;
        };
        DeviceStats::inc(&self.stats.heartbeats);
        let (power_up, uptime_ms) = (h.power_up, h.uptime_ms);
        let floor = h
            .next_seq
            .saturating_sub(u32::from(h.queued))
            .saturating_sub(1);
        s.floor = s.floor.max(floor);
        s.dropped_seen = s.dropped_seen.max(h.dropped);
        if s.dropped_seen > s.dropped_forwarded {
            self.health_due = true;
        }
        self.queue_time_sync(now_ns, power_up, uptime_ms);
    }
}

fn ms_to_ns_signed(ms: i64) -> i64 {
    ms.saturating_mul(1_000_000)
}

/// Why a report's windows are refused (the whole report is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum WindowError {
    /// A channel the hello did not declare.
    #[error("channel {0} is not in the device's hello catalogue")]
    UnknownChannel(u8),
    /// An empty window.
    #[error(
        "window of channel {channel} has count {count} and length {len_ms} ms (both must be > 0)"
    )]
    Empty {
        /// The window's channel.
        channel: u8,
        /// Its reading count.
        count: u32,
        /// Its length.
        len_ms: u32,
    },
}

/// The windows of a report in wall-clock time (its clock's zero plus each
/// window's start on that clock), or why they are refused.
pub(super) fn map_windows(
    s: &Session,
    r: &Report,
) -> Result<Vec<(SeriesKey, Partial)>, WindowError> {
    let zero_ns = ms_to_ns_signed(r.time.wall_at_zero_ms);
    r.windows
        .iter()
        .map(|w| {
            let series = s
                .series
                .get(&w.channel)
                .ok_or(WindowError::UnknownChannel(w.channel))?;
            if w.count == 0 || w.len_ms == 0 {
                return Err(WindowError::Empty {
                    channel: w.channel,
                    count: w.count,
                    len_ms: w.len_ms,
                });
            }
            let start_ns = zero_ns.saturating_add(ms_to_ns(w.start_ms));
            let len_ns = u64::from(w.len_ms) * 1_000_000;
            let partial = Partial {
                start_ns,
                len_ns,
                count: u64::from(w.count),
                sum: f64::from(w.sum),
                min: f64::from(w.min),
                max: f64::from(w.max),
                first_ts: start_ns,
                first: f64::from(w.first),
                last_ts: start_ns.saturating_add_unsigned(len_ns - 1),
                last: f64::from(w.last),
                sketch: None,
            };
            Ok((series.clone(), partial))
        })
        .collect()
}
