//! The collector, in this process on its own tokio runtime, and what it
//! counts as stored or lost.

use std::net::SocketAddr;
use std::path::Path;

use prometheus_client::metrics::counter::Counter;

pub struct Collector {
    pub stored: Counter,
    pub handle: ferry_collector::Handle,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<Result<(), ferry_collector::Error>>,
}

/// Readings counted as not stored, by the collector.
#[derive(Debug, Default)]
pub struct Losses {
    /// Agents' drop reports and the collector's refusals: (what, readings).
    pub dropped: Vec<(String, u64)>,
    /// Batches the collector rejected (their readings reach `dropped` with
    /// the agent's next health report).
    pub rejected_batches: u64,
}

impl Losses {
    pub fn readings(&self) -> u64 {
        self.dropped.iter().map(|d| d.1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.readings() == 0 && self.rejected_batches == 0
    }

    pub fn describe(&self) -> String {
        let rows: Vec<String> = self
            .dropped
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        format!(
            "{} readings dropped or refused [{}], {} batches rejected",
            self.readings(),
            rows.join("; "),
            self.rejected_batches
        )
    }
}

impl Collector {
    /// Starts a collector on `dir/collector` (created on first use),
    /// listening for QUIC on `quic`.
    pub async fn start(dir: &Path, quic: SocketAddr) -> Self {
        let data = dir.join("collector");
        if !data.exists() {
            ferry_collector::init(&ferry_collector::InitOptions::new(&data))
                .expect("collector init");
        }
        let mut config = ferry_collector::Config::for_data_dir(&data);
        config.quic.listen = quic;
        let collector = ferry_collector::Collector::bind(config)
            .await
            .expect("collector bind");
        let handle = collector.handle();
        let stored = handle
            .metrics()
            .readings
            .get_or_create(&[("outcome", "stored")])
            .clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(collector.run(async {
            let _ = stopped.await;
        }));
        Self {
            stored,
            handle,
            stop,
            task,
        }
    }

    pub fn stored(&self) -> u64 {
        self.stored.get()
    }

    /// What the collector counts as not stored: durable drop totals from
    /// the store and the rejected-batch counter.
    pub fn losses(&self) -> Losses {
        let rows = ferry_collector::admin::drop_rows(self.handle.store())
            .expect("reading the collector's drop totals");
        let dropped = rows
            .into_iter()
            .filter(|r| r.readings > 0)
            .map(|r| {
                (
                    format!(
                        "{} (agent {}, origin {:?}, counted by {})",
                        r.reason, r.agent, r.device, r.counted_by
                    ),
                    r.readings,
                )
            })
            .collect();
        let text = self.handle.metrics().render();
        let rejected_batches = text
            .lines()
            .filter(|l| {
                l.starts_with("ferry_collector_batches_total{")
                    && l.contains("outcome=\"rejected\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum::<f64>() as u64;
        Losses {
            dropped,
            rejected_batches,
        }
    }

    pub fn assert_no_losses(&self, what: &str) {
        let losses = self.losses();
        if !losses.is_empty() {
            panic!("e2e: FAILED: {what}: {}", losses.describe());
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        drop(self.handle);
        self.task
            .await
            .expect("collector task")
            .expect("collector run");
    }
}
