//! One batch stream: read the Batch frame, check it against the session's
//! terms and the agent's rate, and answer with an Ack (stored, duplicate,
//! rejected) or, before the sequence is known, an ErrorMsg. Standalone
//! mode commits through the writer; cluster mode publishes to the log.

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_proto::codec;
use ferry_proto::session::{Ack, reason};
use ferry_proto::stream::{FrameType, compression, write_frame};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::oneshot;

use super::Shared;
use super::session::{SessionTerms, send_error};
use crate::ingest::{self, BadInput, Rejection};
use crate::store::Applied;
use crate::writer::Command;

/// How a batch stream is answered: an Ack for a batch whose sequence was
/// read, an ErrorMsg for a frame that could not be read as a batch.
enum Answer {
    Ack(Ack),
    Error(u16, String),
}

pub(super) async fn batch_stream(
    shared: Arc<Shared>,
    agent: Arc<str>,
    terms: Arc<SessionTerms>,
    remote: SocketAddr,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let Some(answer) = batch_answer(&shared, &agent, &terms, remote, &mut recv).await else {
        // No ack can be given (stream reset, connection lost, or the writer
        // dropped the reply): the agent resends.
        let _ = send.reset(VarInt::from_u32(0));
        return;
    };
    let _ = recv.stop(VarInt::from_u32(0));
    let ack = match answer {
        Answer::Ack(ack) => ack,
        Answer::Error(code, message) => {
            send_error(&mut send, code, &message).await;
            return;
        }
    };
    let mut frame = Vec::new();
    write_frame(
        &mut frame,
        FrameType::Ack,
        compression::NONE,
        &codec::to_vec(&ack).unwrap_or_default(),
    );
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

async fn batch_answer(
    shared: &Shared,
    agent: &Arc<str>,
    terms: &SessionTerms,
    remote: SocketAddr,
    recv: &mut RecvStream,
) -> Option<Answer> {
    let limits = &shared.config.limits;
    let reject = |seq: u64, r: Rejection| {
        shared.metrics.bad(
            r.kind,
            &format_args!("agent {agent} ({remote}) batch {seq}: {}", r.reason),
        );
        shared.metrics.batch("rejected", r.code, 0);
        Some(Answer::Ack(Ack::rejected(seq, r.code, r.reason)))
    };
    // Before the sequence is known, refusals are ErrorMsg frames: the
    // agent applies them to the batch it sent on this stream.
    let refuse = |r: Rejection| {
        shared.metrics.bad(
            r.kind,
            &format_args!("agent {agent} ({remote}) batch stream: {}", r.reason),
        );
        shared.metrics.batch("rejected", r.code, 0);
        Some(Answer::Error(r.code, r.reason))
    };
    // A Batch frame, or revision 4's Definitions and CompactBatch frames,
    // resolved into the batch they stand for (series_ids.rs).
    let batch = match crate::series_ids::read_batch(
        recv,
        limits.max_frame_bytes,
        terms.compression,
        &terms.ids,
        &shared.metrics,
    )
    .await?
    {
        Ok(b) => b,
        Err((None, r)) => return refuse(r),
        Err((Some(seq), r)) => return reject(seq, r),
    };
    let now = crate::now_ns();
    let readings = batch.reading_count() as u64;
    let admitted = shared
        .rate
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(agent, readings, now);
    if !admitted {
        return reject(
            batch.seq,
            Rejection {
                kind: BadInput::RateLimited,
                code: reason::RATE_LIMITED,
                reason: format!(
                    "agent is over its rate of {} readings per second",
                    limits.agent_readings_per_sec
                ),
            },
        );
    }
    let mut prepared = match ingest::prepare(agent, &remote.to_string(), &batch, limits, now) {
        Ok(p) => p,
        Err(r) => return reject(batch.seq, r),
    };
    if prepared.epoch == 0 {
        prepared.epoch = terms.epoch;
    }
    let seq = batch.seq;
    if let Some(log) = &shared.log {
        return Some(Answer::Ack(
            publish_batch(shared, log, agent, remote, batch, &prepared, now).await,
        ));
    }
    // A `backpressure` subscriber past its lag budget holds ingest here;
    // the agent keeps the batch on disk meanwhile.
    if shared.bus.wait_for_room().await {
        shared.metrics.backpressure_waits.inc();
    }
    let (tx, rx) = oneshot::channel();
    if shared
        .writer
        .send(Command::Batch {
            batch: prepared,
            reply: tx,
        })
        .await
        .is_err()
    {
        shared.metrics.batch("rejected", reason::SHUTTING_DOWN, 0);
        return Some(Answer::Ack(Ack::rejected(
            seq,
            reason::SHUTTING_DOWN,
            "the collector is shutting down",
        )));
    }
    let ack = match rx.await.ok()? {
        Ok(Applied::Stored { readings, refused }) => {
            shared.metrics.batch("stored", 0, readings);
            shared.metrics.refused(&refused);
            if !refused.is_empty() {
                let n: u64 = refused.iter().map(|r| r.readings).sum();
                shared.metrics.bad(
                    BadInput::RefusedReadings,
                    &format_args!(
                        "agent {agent} ({remote}) batch {seq}: {n} readings refused ({})",
                        refused
                            .iter()
                            .map(|r| format!("{} {}", r.readings, reason::name(r.code)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            Ack::stored_refusing(seq, refused)
        }
        Ok(Applied::Duplicate) => {
            shared.metrics.batch("duplicate", 0, readings);
            Ack::duplicate(seq)
        }
        Ok(Applied::Rejected { code, reason }) => {
            return reject(
                seq,
                Rejection {
                    kind: if code == reason::DEDUPE_FULL {
                        BadInput::DedupeFull
                    } else {
                        BadInput::InvalidBatch
                    },
                    code,
                    reason,
                },
            );
        }
        Err(e) => {
            shared.metrics.batch("rejected", reason::STORAGE, 0);
            Ack::rejected(seq, reason::STORAGE, format!("commit failed: {e}"))
        }
    };
    Some(Answer::Ack(ack))
}

/// Cluster mode: the validated batch goes to the log; the agent's ack says
/// stored once the log has acked it durable (the workers store it), with
/// the readings refused here.
async fn publish_batch(
    shared: &Shared,
    log: &Arc<dyn crate::cluster::Log>,
    agent: &Arc<str>,
    remote: SocketAddr,
    mut batch: ferry_proto::batch::Batch,
    prepared: &crate::store::PreparedBatch,
    now: i64,
) -> Ack {
    let seq = batch.seq;
    batch.epoch = prepared.epoch;
    let readings = prepared.readings;
    let mut by_reason = std::collections::BTreeMap::<u16, u64>::new();
    for &(_, code, n) in &prepared.refused {
        *by_reason.entry(code).or_default() += n;
    }
    let refused: Vec<ferry_proto::session::Refused> = by_reason
        .into_iter()
        .map(|(code, readings)| ferry_proto::session::Refused { code, readings })
        .collect();
    let record = crate::cluster::Record {
        agent: agent.to_string(),
        remote: remote.to_string(),
        now_ns: now,
        body: crate::cluster::RecordBody::Batch(batch),
    };
    match crate::cluster::publish(log, &shared.metrics, &record).await {
        Ok(_) => {
            shared.metrics.batch("stored", 0, readings);
            shared.metrics.refused(&refused);
            Ack::stored_refusing(seq, refused)
        }
        Err(e) => {
            shared.metrics.batch("rejected", reason::STORAGE, 0);
            Ack::rejected(
                seq,
                reason::STORAGE,
                format!("the log did not take it: {e}"),
            )
        }
    }
}
