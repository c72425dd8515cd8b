//! One batch inside the writer's transaction: the agent's journal epoch
//! and dedupe ranges checked (a duplicate is acknowledged, not stored
//! again), new series named, chunks, aggregates and health records stored,
//! refused readings counted by reason, and the agent's record updated.

use ferry_proto::session::reason;
use redb::{ReadableTable, WriteTransaction};

use super::*;
use crate::store::dedupe::{self, DEDUPE, EpochRecord};
use crate::store::{
    AGGREGATES, HEALTH, REFUSED, SERIES, SERIES_BY_KEY, STAGED, StoreError, bundle, chunk, corrupt,
};
use ferry_proto::session::Refused;

pub(super) fn apply_one(
    txn: &WriteTransaction,
    state: &mut WriterState,
    b: &PreparedBatch,
    max_series: u64,
    now_ns: i64,
) -> Result<Applied, StoreError> {
    let agent = &*b.agent;
    let mut rec = load_agent(txn, agent)?;
    // A refusal for good, counted (`count_refusal`) or answered.
    let mut refusal: Option<(u16, String)> = None;
    if rec.revoked {
        let why = (reason::INVALID, format!("agent {agent} is revoked"));
        if !b.count_refusal {
            return Ok(rejected(why));
        }
        refusal = Some(why);
    }
    let (epoch, seq) = (b.epoch, b.seq);
    let mut ranges = txn.open_table(DEDUPE)?;
    if dedupe::contains(&ranges, agent, epoch, seq)? {
        return Ok(Applied::Duplicate);
    }
    let mut erec = match dedupe::load_epoch(txn, agent, epoch)? {
        Some(e) => e,
        None => {
            if rec.epochs >= state.dedupe.max_epochs {
                return Ok(too_many_epochs(agent, rec.epochs));
            }
            rec.epochs += 1;
            EpochRecord {
                first_seen_ns: now_ns,
                ..EpochRecord::default()
            }
        }
    };
    // A batch naming dropped batches may close gaps: it gets twice the
    // room, so an agent shipping oldest first always gets through.
    let carries_drops = b.health.iter().any(|h| h.batch != 0);
    let bound = if carries_drops {
        state.dedupe.max_ranges.saturating_mul(2)
    } else {
        state.dedupe.max_ranges
    };
    if refusal.is_none()
        && erec.ranges >= bound
        && dedupe::would_open_range(&ranges, agent, epoch, seq)?
    {
        let why = (
            reason::DEDUPE_FULL,
            format!(
                "epoch {epoch:016x} of agent {agent} has {} unresolved gaps, the limit: \
                 resend batch {seq} after the batches before it",
                erec.ranges
            ),
        );
        if !b.count_refusal {
            return Ok(rejected(why));
        }
        refusal = Some(why);
    }
    // Counted refusal: every reading refused under its code, no series
    // named, the rest (health, the sequence, the agent's record) as usual.
    let refuse_code = refusal.as_ref().map(|r| r.0);

    // Series ids. Series new to the store past its limit are refused, with
    // their readings (counted per device); the rest of the batch is stored.
    let mut room = max_series.saturating_sub(state.dict.len() as u64);
    let mut ids: Vec<Option<u64>> = Vec::with_capacity(b.series.len());
    if refuse_code.is_some() {
        ids.resize(b.series.len(), None);
    } else {
        let mut series = txn.open_table(SERIES)?;
        let mut by_key = txn.open_table(SERIES_BY_KEY)?;
        for key in &b.series {
            let id = match state.dict.get(key) {
                Some(&id) => Some(id),
                None if room == 0 => None,
                None => {
                    room -= 1;
                    state.next_series += 1;
                    let id = state.next_series;
                    series.insert(id, key.as_slice())?;
                    by_key.insert(key.as_slice(), id)?;
                    state.dict.insert(key.clone(), id);
                    state.pending.push(key.clone());
                    Some(id)
                }
            };
            ids.push(id);
        }
    }
    // Refusals: at ingest, and here for series past the limit.
    let mut refused: Vec<(u32, u16, u64)> = b.refused.clone();
    let mut stored_readings = 0u64;
    {
        // One staged bundle per bucket the batch touches: its chunks of that
        // bucket, by series id (docs/storage.md, "Staged bundles").
        let mut per_bucket: std::collections::BTreeMap<i64, Vec<(u64, &[u8])>> =
            std::collections::BTreeMap::new();
        for c in &b.chunks {
            match ids[c.series as usize] {
                Some(id) => {
                    per_bucket
                        .entry(c.bucket)
                        .or_default()
                        .push((id, c.bytes.as_slice()));
                    stored_readings += c.readings;
                }
                None => refused.push((
                    c.series,
                    refuse_code.unwrap_or(reason::SERIES_LIMIT),
                    c.readings,
                )),
            }
        }
        let mut staged = txn.open_table(STAGED)?;
        for (bucket, mut pieces) in per_bucket {
            pieces.sort_by_key(|p| p.0); // stable: a series' pieces keep their order
            let row = bundle::encode(&pieces);
            let id = state.next_chunk_id();
            staged.insert((bucket, id), row.as_slice())?;
            state.add_bytes(row.len() as u64);
        }
    }
    let mut aggregate_series: Vec<u64> = Vec::new();
    if !b.aggregates.is_empty() {
        let mut aggs = txn.open_table(AGGREGATES)?;
        for a in &b.aggregates {
            let Some(id) = ids[a.series as usize] else {
                refused.push((
                    a.series,
                    refuse_code.unwrap_or(reason::SERIES_LIMIT),
                    a.count,
                ));
                continue;
            };
            aggregate_series.push(id);
            rec.window_readings = rec.window_readings.saturating_add(a.count);
            let key = (id, a.start_ns, a.len_ns);
            let merged = match aggs.get(key)? {
                Some(old) => {
                    let mut acc = chunk::decode_aggregate(old.value()).map_err(corrupt)?;
                    chunk::merge_aggregate(&mut acc, a);
                    acc
                }
                None => a.clone(),
            };
            aggs.insert(key, chunk::encode_aggregate(&merged).as_slice())?;
        }
    }
    if !b.health.is_empty() {
        // Records naming a batch the agent dropped (kinds 1 and 6) count
        // only if this store never resolved that batch: stored means only
        // its ack was lost (docs/protocol.md, HealthRecord). Decided for
        // every named batch before any is resolved below.
        let mut named: std::collections::BTreeMap<u64, bool> = Default::default();
        for h in &b.health {
            if h.batch != 0 && !named.contains_key(&h.batch) {
                named.insert(h.batch, dedupe::contains(&ranges, agent, epoch, h.batch)?);
            }
        }
        let mut health = txn.open_table(HEALTH)?;
        for h in &b.health {
            // A zero count only names a dropped batch (it held no readings).
            if named.get(&h.batch) == Some(&true) || h.count == 0 {
                continue;
            }
            let key = (agent, h.source.as_str(), h.kind);
            let total = health
                .get(key)?
                .map_or(0, |v| v.value())
                .saturating_add(h.count);
            health.insert(key, total)?;
            if ferry_proto::health::is_dropped(h.kind) {
                rec.dropped = rec.dropped.saturating_add(h.count);
            }
        }
        // A dropped batch counted now is resolved: a stale copy of it
        // arriving later is a duplicate, never stored *and* counted.
        for (&dropped, &resolved) in &named {
            if !resolved {
                let delta = dedupe::insert(&mut ranges, agent, epoch, dropped)?;
                dedupe::adjust(&mut erec.ranges, delta);
            }
        }
    }
    let delta = dedupe::insert(&mut ranges, agent, epoch, seq)?;
    dedupe::adjust(&mut erec.ranges, delta);
    if b.resolved_below > erec.resolved_below {
        let delta = dedupe::resolve_below(&mut ranges, agent, epoch, b.resolved_below)?;
        dedupe::adjust(&mut erec.ranges, delta);
        erec.resolved_below = b.resolved_below;
    }
    drop(ranges);

    let by_reason = record_refused(txn, agent, &b.devices, &refused)?;
    let refused_total: u64 = by_reason.iter().map(|r| r.readings).sum();
    if refusal.is_none() {
        erec.batches += 1;
        erec.readings += stored_readings;
        erec.last_stored_ns = now_ns;
    }
    dedupe::save_epoch(txn, agent, epoch, &erec)?;
    if rec.first_seen_ns == 0 {
        rec.first_seen_ns = now_ns;
    }
    rec.last_seen_ns = now_ns;
    rec.last_addr.clone_from(&b.remote);
    if refusal.is_none() {
        rec.batches += 1;
        rec.readings += stored_readings;
    }
    rec.refused = rec.refused.saturating_add(refused_total);
    if epoch == rec.epoch {
        rec.last_seq = Some(rec.last_seq.map_or(seq, |s| s.max(seq)));
    }
    save_agent(txn, &rec)?;
    if let Some((code, why)) = refusal {
        return Ok(Applied::Rejected {
            code,
            reason: format!("{why} (its {refused_total} readings counted as refused)"),
        });
    }
    if state.log_events {
        // The event log entry commits with the batch: it exists iff the
        // batch is stored (docs/alerts.md).
        aggregate_series.sort_unstable();
        aggregate_series.dedup();
        let entry = crate::fanout::LogEntry {
            agent: b.agent.to_string(),
            stored_ns: now_ns,
            chunks: b
                .chunks
                .iter()
                .filter_map(|c| Some((ids[c.series as usize]?, c.bytes.clone())))
                .collect(),
            aggregate_series,
            aggregates: b
                .aggregates
                .iter()
                .filter_map(|a| Some((ids[a.series as usize]?, a.clone())))
                .collect(),
        };
        state.next_event += 1;
        crate::store::append_log(txn, state.next_event, &entry)?;
    }
    Ok(Applied::Stored {
        readings: stored_readings,
        refused: by_reason,
    })
}

fn rejected((code, reason): (u16, String)) -> Applied {
    Applied::Rejected { code, reason }
}

fn too_many_epochs(agent: &str, epochs: u64) -> Applied {
    Applied::Rejected {
        code: reason::DEDUPE_FULL,
        reason: format!(
            "agent {agent} has {epochs} journal epochs, the limit (limits.max_epochs_per_agent)"
        ),
    }
}

/// Adds refusals to the `refused` table by `(device, reason)`; returns the
/// totals by reason, codes ascending.
fn record_refused(
    txn: &WriteTransaction,
    agent: &str,
    devices: &[String],
    refused: &[(u32, u16, u64)],
) -> Result<Vec<Refused>, StoreError> {
    if refused.is_empty() {
        return Ok(Vec::new());
    }
    let mut per: std::collections::BTreeMap<(&str, u16), u64> = Default::default();
    for &(series, code, n) in refused {
        let device = devices.get(series as usize).map_or("", String::as_str);
        *per.entry((device, code)).or_default() += n;
    }
    let mut table = txn.open_table(REFUSED)?;
    let mut by_reason: std::collections::BTreeMap<u16, u64> = Default::default();
    for ((device, code), n) in per {
        if n == 0 {
            continue;
        }
        let key = (agent, device, code);
        let total = table.get(key)?.map_or(0, |v| v.value()).saturating_add(n);
        table.insert(key, total)?;
        *by_reason.entry(code).or_default() += n;
    }
    Ok(by_reason
        .into_iter()
        .map(|(code, readings)| Refused { code, readings })
        .collect())
}
