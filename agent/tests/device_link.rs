//! The device link in one process: `ferry-firmware`'s real [`Node`] (sampler,
//! windows, retry ring, link) on deterministic sensors talks to
//! [`run_link`] over an in-memory duplex stream, and a writer task answers
//! the intake — a fake one, or the real redb [`Journal`].
//!
//! **Synchronisation without sleeps:** the runtime is single-threaded with
//! tokio's clock paused. The only timer anywhere is the device's
//! `settle()` wait, and a paused clock advances to it only when every task
//! (the link, the writer) is blocked — i.e. exactly when the gateway has
//! finished answering. Device time is the node's own `u64` milliseconds,
//! stepped by the test; the gateway's clock follows it.
//! The TCP and serial drivers are tested with request/response exchanges
//! over real sockets and a pseudo-terminal.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_agent::intake::{Intake, Submission};
use ferry_agent::journal::{CommitReport, Journal, JournalConfig, Work};
use ferry_agent::sources::device::{
    DeviceLinkConfig, DeviceRegistry, DeviceSource, LinkEnd, run_link, run_serial, run_tcp_client,
    run_tcp_listener,
};
use ferry_agent::window::Partial;
use ferry_firmware::link::{Event, LinkTimers, TX_BUFFER};
use ferry_firmware::node::Node;
use ferry_firmware::sensor::{Quantity, ReadError, SHT4X_QUANTITIES, Sensor, TMP102_QUANTITIES};
use ferry_firmware::sim::{self, EMULATED_EVERY};
use ferry_proto::batch::Batch;
use ferry_proto::codec;
use ferry_proto::health;
use ferry_proto::link::{
    Channel, DeviceHello, DeviceId, Downlink, LINK_VERSION, LinkAck, LinkConfig, Report,
    ReportTime, Uplink, WindowReport, time_quality,
};
use ferry_proto::serial::{self, Deframer, MAX_SERIAL_FRAME};
use ferry_proto::series::SeriesKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// The gateway's wall clock when the device booted.
const T0: i64 = 1_700_000_000_000_000_000;
const MS: i64 = 1_000_000;
const BOOT: u32 = 11;
const ID: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];
const HEX: &str = "deadbeef";
const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 100,
    window_ms: 1_000,
};
const TIMERS: LinkTimers = LinkTimers {
    resend_after_ms: 1_000,
    heartbeat_every_ms: 1_000,
    hello_every_ms: 1_000,
};

/// A sensor whose readings are the emulated board's waveforms
/// (`sim::sample`), so `sim::expected_windows` predicts its windows.
struct Wave {
    quantities: &'static [Quantity],
    first_channel: u8,
}

impl Sensor for Wave {
    fn quantities(&self) -> &'static [Quantity] {
        self.quantities
    }

    fn read(&mut self, at_ms: u64, out: &mut [f32]) -> Result<(), ReadError> {
        for (i, v) in out.iter_mut().enumerate() {
            *v = sim::sample(self.first_channel + i as u8, at_ms).ok_or(ReadError::Bus)?;
        }
        Ok(())
    }
}

/// The device: a real node, stepped in simulated milliseconds.
struct Device<const N: usize> {
    node: Node<N, 3>,
    sht: Wave,
    tmp: Wave,
    now_ms: u64,
    clock: Arc<AtomicI64>,
    events: Vec<Event>,
}

impl<const N: usize> Device<N> {
    fn new(clock: Arc<AtomicI64>) -> Self {
        let sht = Wave {
            quantities: SHT4X_QUANTITIES,
            first_channel: 0,
        };
        let tmp = Wave {
            quantities: TMP102_QUANTITIES,
            first_channel: 2,
        };
        let node = Node::new(
            0,
            DeviceId::from_bytes(&ID).unwrap(),
            BOOT,
            CONFIG,
            TIMERS,
            &[&sht, &tmp],
            &EMULATED_EVERY,
        )
        .unwrap();
        clock.store(T0, Ordering::SeqCst);
        Self {
            node,
            sht,
            tmp,
            now_ms: 0,
            clock,
            events: Vec::new(),
        }
    }

    fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.clock.store(T0 + now_ms as i64 * MS, Ordering::SeqCst);
        self.node.poll(now_ms, &mut [&mut self.sht, &mut self.tmp]);
    }

    /// Sends every due frame to `io`, or into the void when offline.
    async fn transmit(&mut self, io: Option<&mut DuplexStream>) {
        let mut buf = [0u8; TX_BUFFER];
        let mut out = Vec::new();
        while let Some(n) = self.node.poll_transmit(self.now_ms, &mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        if let Some(io) = io {
            io.write_all(&out).await.unwrap();
        }
    }

    /// Answers the gateway until it has nothing more to say (see the module
    /// docs: the paused clock reaches the timer only when all are idle).
    async fn settle(&mut self, io: &mut DuplexStream) {
        let mut buf = [0u8; 1024];
        loop {
            self.transmit(Some(io)).await;
            tokio::select! {
                biased;
                n = io.read(&mut buf) => {
                    let n = n.unwrap();
                    assert!(n > 0, "the gateway closed the link");
                    for &b in &buf[..n] {
                        if let Some(e) = self.node.handle_rx(self.now_ms, b) {
                            self.events.push(e);
                        }
                    }
                }
                () = tokio::time::sleep(std::time::Duration::from_millis(1)) => return,
            }
        }
    }

    /// Steps to `to_ms` in 10 ms steps, talking to the gateway after each.
    async fn run(&mut self, to_ms: u64, mut io: Option<&mut DuplexStream>) {
        while self.now_ms < to_ms {
            self.tick(self.now_ms + 10);
            match io.as_deref_mut() {
                Some(io) => self.settle(io).await,
                None => self.transmit(None).await,
            }
        }
    }
}

/// A writer that answers every report `true`, keeping what it was given.
fn fake_writer(mut rx: mpsc::Receiver<Submission>) -> Arc<Mutex<Vec<Work>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let keep = log.clone();
    tokio::spawn(async move {
        while let Some(s) = rx.recv().await {
            let report = CommitReport {
                reports: vec![true; s.work.reports.len()],
                wrote: true,
                ..CommitReport::default()
            };
            keep.lock().unwrap().push(s.work);
            let _ = s.done.send(Ok(report));
        }
    });
    log
}

/// A writer committing to a real journal, one commit per submission.
fn journal_writer(
    mut rx: mpsc::Receiver<Submission>,
    journal: Arc<Mutex<Journal>>,
    clock: Arc<AtomicI64>,
) {
    tokio::spawn(async move {
        while let Some(s) = rx.recv().await {
            let now = clock.load(Ordering::SeqCst);
            let result = journal.lock().unwrap().commit(s.work, now);
            let _ = s.done.send(
                result.map_err(|e| ferry_agent::intake::SubmitError::Storage(e.to_string()).into()),
            );
        }
    });
}

fn series(channel: u8) -> SeriesKey {
    let (sensor, quantity, unit) = match channel {
        0 => ("sht4x", "temperature", "Cel"),
        1 => ("sht4x", "relative_humidity", "%"),
        _ => ("tmp102", "temperature", "Cel"),
    };
    SeriesKey::new(
        quantity,
        [("device", HEX), ("sensor", sensor), ("unit", unit)],
    )
    .unwrap()
}

/// What the gateway must make of a device window: offset T0 (the hello's
/// uptime matches the clock), f32 widened exactly.
fn partial(w: &WindowReport) -> (SeriesKey, Partial) {
    let start = T0 + w.start_ms as i64 * MS;
    let len = u64::from(w.len_ms) * 1_000_000;
    let p = Partial {
        start_ns: start,
        len_ns: len,
        count: u64::from(w.count),
        sum: f64::from(w.sum),
        min: f64::from(w.min),
        max: f64::from(w.max),
        first_ts: start,
        first: f64::from(w.first),
        last_ts: start + len as i64 - 1,
        last: f64::from(w.last),
        sketch: None,
    };
    (series(w.channel), p)
}

fn expected(starts: impl IntoIterator<Item = u64>) -> Vec<(SeriesKey, Partial)> {
    starts
        .into_iter()
        .flat_map(|s| {
            sim::expected_windows(0, CONFIG, s)
                .into_iter()
                .collect::<Vec<_>>()
        })
        .map(|w| partial(&w))
        .collect()
}

fn source(
    config: DeviceLinkConfig,
    intake: Intake,
    registry: DeviceRegistry,
    clock: &Arc<AtomicI64>,
) -> DeviceSource {
    DeviceSource::new(config, intake, registry).with_clock(Arc::new(Shared(clock.clone())))
}

/// The test's clock, as the source reads it.
struct Shared(Arc<AtomicI64>);

impl ferry_clock::Clock for Shared {
    fn now_ns(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_real_node_streams_its_exact_windows_and_every_report_is_acked() {
    let clock = Arc::new(AtomicI64::new(T0));
    let (intake, rx) = Intake::channel(4);
    let log = fake_writer(rx);
    let src = source(
        DeviceLinkConfig::default(),
        intake,
        DeviceRegistry::new(),
        &clock,
    );
    let stats = src.stats.clone();
    let (mut dev_io, gw_io) = tokio::io::duplex(64 * 1024);
    let gateway =
        tokio::spawn(async move { run_link(gw_io, &src, std::future::pending::<()>()).await });

    let mut device = Device::<8>::new(clock.clone());
    device.tick(0);
    device.settle(&mut dev_io).await;
    assert_eq!(
        device.events,
        [
            Event::Acked {
                up_to: 0,
                released: 0
            },
            Event::TimeSynced {
                wall_at_zero_ms: T0 / MS
            }
        ],
        "the hello is answered with an ack and the gateway's clock"
    );
    device.run(5_000, Some(&mut dev_io)).await;
    drop(dev_io);
    assert_eq!(gateway.await.unwrap().unwrap(), LinkEnd::Closed);

    let link = device.node.stats().link;
    assert_eq!(
        (link.acked, link.resent, link.dropped, link.bad_frames),
        (5, 0, 0, 0)
    );
    assert_eq!(device.node.link().queued(), 0);
    let works = log.lock().unwrap().clone();
    let reports: Vec<_> = works.iter().flat_map(|w| &w.reports).collect();
    let seqs: Vec<u32> = reports.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "each report once, in order");
    assert!(reports.iter().all(|r| r.device == HEX && r.boot == BOOT));
    let got: Vec<_> = reports.iter().flat_map(|r| r.windows.clone()).collect();
    assert_eq!(got, expected((0..5).map(|k| k * 1_000)));
    assert!(works.iter().all(|w| w.health.is_empty()), "no drops");
    assert_eq!(stats.reports_journaled.load(Ordering::Relaxed), 5);
    assert_eq!(stats.heartbeats.load(Ordering::Relaxed), 5);
    assert_eq!(stats.hellos.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn agent_restart_with_a_real_journal_journals_each_report_once_and_counts_ring_drops() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("journal.redb")).unwrap();
    let journal_config = JournalConfig {
        batch_max_readings: 1, // seal at every commit, to read the batches back
        ..JournalConfig::default()
    };
    let journal = Arc::new(Mutex::new(Journal::open(db, journal_config).unwrap()));
    let clock = Arc::new(AtomicI64::new(T0));
    let mut device = Device::<4>::new(clock.clone());

    // Agent 1: reports 1..=3.
    let (intake, rx) = Intake::channel(4);
    journal_writer(rx, journal.clone(), clock.clone());
    let src = source(
        DeviceLinkConfig::default(),
        intake,
        DeviceRegistry::new(),
        &clock,
    );
    let (mut io, gw_io) = tokio::io::duplex(64 * 1024);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(async move {
        run_link(gw_io, &src, async {
            let _ = stopped.await;
        })
        .await
    });
    device.tick(0);
    device.settle(&mut io).await;
    device.run(3_500, Some(&mut io)).await;
    stop.send(()).unwrap();
    assert_eq!(gateway.await.unwrap().unwrap(), LinkEnd::Shutdown);
    drop(io);
    assert_eq!(
        journal.lock().unwrap().devices().unwrap(),
        [(HEX.to_owned(), BOOT, 3)]
    );

    // The agent is down for 6 s: reports 4..=9 fill the 4-report ring,
    // which drops 4 and 5 (counted in heartbeats).
    device.run(9_500, None).await;
    assert_eq!(
        device.node.link().queued_seqs().collect::<Vec<_>>(),
        [6, 7, 8, 9]
    );
    assert_eq!(device.node.stats().link.dropped, 2);

    // Agent 2 knows only what the journal says.
    let registry = DeviceRegistry::from_journal(journal.lock().unwrap().devices().unwrap());
    let (intake, rx) = Intake::channel(4);
    journal_writer(rx, journal.clone(), clock.clone());
    let src = source(
        DeviceLinkConfig::default(),
        intake,
        registry.clone(),
        &clock,
    );
    let stats = src.stats.clone();
    let (mut io, gw_io) = tokio::io::duplex(64 * 1024);
    let gateway =
        tokio::spawn(async move { run_link(gw_io, &src, std::future::pending::<()>()).await });
    device.events.clear();
    device.run(12_500, Some(&mut io)).await;
    drop(io);
    assert_eq!(gateway.await.unwrap().unwrap(), LinkEnd::Closed);

    assert!(device.events.contains(&Event::HelloRequested));
    assert_eq!(device.node.link().queued(), 0, "everything acked");
    assert_eq!(stats.hello_requests.load(Ordering::Relaxed), 1);
    // Until the first heartbeat after the hello tells the gateway the
    // floor, the journal refuses report 6 (5 is missing) and the full ring
    // keeps dropping its oldest as new windows close.
    let lost = u64::from(device.node.stats().link.dropped);
    assert!(lost >= 2, "{lost}");
    assert_eq!(stats.device_dropped.load(Ordering::Relaxed), lost);
    assert_eq!(registry.get(HEX).unwrap().journaled, 12);
    let mut journal = journal.lock().unwrap();
    assert_eq!(journal.devices().unwrap(), [(HEX.to_owned(), BOOT, 12)]);

    // Read back every batch: each journaled window once, with its values,
    // and the ring's loss as a health record.
    let mut got = Vec::new();
    let mut dropped = 0;
    for (_, bytes) in journal.next_to_send(u64::MAX, false).unwrap() {
        let batch: Batch = codec::from_bytes("Batch", &bytes).unwrap();
        for a in &batch.aggregates {
            got.push((batch.series[a.series as usize].clone(), a.clone()));
        }
        for h in &batch.health {
            assert_eq!(
                (h.source.as_str(), h.kind),
                (HEX, health::DROPPED_DEVICE_RING)
            );
            dropped += h.count;
        }
    }
    // Reports 4 ..= 3 + lost were dropped on the device; the rest arrived.
    let journaled = (1..=12u64).filter(|&seq| !(4..4 + lost).contains(&seq));
    let starts = journaled.map(|seq| (seq - 1) * 1_000);
    // Aggregates with their series index replaced by 0, so batches compare.
    let mut want: Vec<_> = expected(starts)
        .into_iter()
        .map(|(k, p)| (k, p.to_aggregate(0)))
        .collect();
    for (_, a) in &mut got {
        a.series = 0;
    }
    got.sort_by_key(|(k, a)| (a.start_ns, k.clone()));
    want.sort_by_key(|(k, a)| (a.start_ns, k.clone()));
    assert_eq!(got, want);
    assert_eq!(dropped, lost);
}

// ---- drivers over real sockets and a pseudo-terminal ----

fn uplink(msg: &Uplink) -> Vec<u8> {
    let payload = codec::to_vec(msg).unwrap();
    let mut out = [0u8; MAX_SERIAL_FRAME];
    let n = serial::encode_frame(&payload, &mut out).unwrap();
    out[..n].to_vec()
}

fn hello() -> Uplink {
    Uplink::Hello(DeviceHello {
        link_version: LINK_VERSION,
        device_id: DeviceId::from_bytes(&ID).unwrap(),
        boot: BOOT,
        firmware: "script".try_into().unwrap(),
        uptime_ms: 0,
        channels: [Channel {
            id: 0,
            sensor: "sht4x".try_into().unwrap(),
            quantity: "temperature".try_into().unwrap(),
            unit: "Cel".try_into().unwrap(),
        }]
        .into_iter()
        .collect(),
        power_up: BOOT,
    })
}

fn report(seq: u32) -> Uplink {
    Uplink::Report(Report {
        seq,
        windows: [WindowReport {
            channel: 0,
            start_ms: u64::from(seq) * 1_000,
            len_ms: 1_000,
            count: 1,
            sum: 20.5,
            min: 20.5,
            max: 20.5,
            first: 20.5,
            last: 20.5,
        }]
        .into_iter()
        .collect(),
        time: ReportTime {
            power_up: BOOT,
            wall_at_zero_ms: T0 / MS,
            quality: time_quality::SYNCED,
        },
    })
}

/// Reads frames until the next downlink message other than a time sync
/// (the gateway answers every hello with one).
async fn next_downlink<S: AsyncRead + Unpin>(io: &mut S, deframer: &mut Deframer) -> Downlink {
    let mut byte = [0u8; 1];
    loop {
        assert_eq!(io.read(&mut byte).await.unwrap(), 1, "link closed");
        if let Some(frame) = deframer.push(byte[0]) {
            match codec::from_bytes("Downlink", frame.unwrap()).unwrap() {
                Downlink::TimeSync(_) => continue,
                other => return other,
            }
        }
    }
}

/// Plays a device: hello, then report `seq`; checks both acks.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, acked_before: u32, seq: u32) {
    let mut d = Deframer::new();
    io.write_all(&uplink(&hello())).await.unwrap();
    assert_eq!(
        next_downlink(io, &mut d).await,
        Downlink::Ack(LinkAck {
            boot: BOOT,
            up_to: acked_before
        })
    );
    io.write_all(&uplink(&report(seq))).await.unwrap();
    assert_eq!(
        next_downlink(io, &mut d).await,
        Downlink::Ack(LinkAck {
            boot: BOOT,
            up_to: seq
        })
    );
}

fn shutdown_pair() -> (tokio::sync::watch::Sender<bool>, impl Future<Output = ()>) {
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    (tx, async move {
        let _ = rx.wait_for(|s| *s).await;
    })
}

#[tokio::test]
async fn tcp_client_reconnects_to_the_board_socket() {
    let clock = Arc::new(AtomicI64::new(T0));
    let (intake, rx) = Intake::channel(4);
    let log = fake_writer(rx);
    let registry = DeviceRegistry::new();
    let config = DeviceLinkConfig {
        reconnect_min_ms: 10,
        ..DeviceLinkConfig::default()
    };
    let src = source(config, intake, registry, &clock);
    let stats = src.stats.clone();
    // The "board" is the server (QEMU server=on).
    let board = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = board.local_addr().unwrap();
    let (stop, shutdown) = shutdown_pair();
    let client = tokio::spawn(async move { run_tcp_client(addr, &src, shutdown).await });

    let (mut s, _) = board.accept().await.unwrap();
    exchange(&mut s, 0, 1).await;
    drop(s); // the board's socket drops; the agent reconnects
    let (mut s, _) = board.accept().await.unwrap();
    // The new link knows what the journal holds of this boot.
    exchange(&mut s, 1, 2).await;
    stop.send(true).unwrap();
    client.await.unwrap().unwrap();
    assert_eq!(stats.connections.load(Ordering::Relaxed), 2);
    let seqs: Vec<u32> = log
        .lock()
        .unwrap()
        .iter()
        .flat_map(|w| &w.reports)
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [1, 2]);
}

#[tokio::test]
async fn tcp_listener_serves_boards_that_connect() {
    let clock = Arc::new(AtomicI64::new(T0));
    let (intake, rx) = Intake::channel(4);
    let _log = fake_writer(rx);
    let src = source(
        DeviceLinkConfig::default(),
        intake,
        DeviceRegistry::new(),
        &clock,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, shutdown) = shutdown_pair();
    let server = tokio::spawn(async move { run_tcp_listener(listener, &src, shutdown).await });
    let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(&mut a, 0, 1).await;
    let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(&mut b, 1, 2).await; // a second connection of the same device
    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
    // Shut down: the links are closed.
    let mut rest = Vec::new();
    assert_eq!(a.read_to_end(&mut rest).await.unwrap(), 0);
}

#[tokio::test]
async fn serial_port_link_on_a_pseudo_terminal() {
    use tokio_serial::SerialPort as _;
    let clock = Arc::new(AtomicI64::new(T0));
    let (intake, rx) = Intake::channel(4);
    let _log = fake_writer(rx);
    let src = source(
        DeviceLinkConfig::default(),
        intake,
        DeviceRegistry::new(),
        &clock,
    );
    let (mut master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let path = slave.name().expect("the pty has a name");
    // Kept open so that bytes written before the agent opens the port wait
    // in the terminal's input queue (only the agent reads it).
    let _slave = slave;
    let (stop, shutdown) = shutdown_pair();
    let port = tokio::spawn(async move { run_serial(&path, 115_200, &src, shutdown).await });
    exchange(&mut master, 0, 1).await;
    stop.send(true).unwrap();
    port.await.unwrap().unwrap();
}

/// The wall clock as paused tokio time: the link's deadlines and its timer
/// move together.
struct TokioClock(tokio::time::Instant);

impl ferry_clock::Clock for TokioClock {
    fn now_ns(&self) -> i64 {
        T0 + self.0.elapsed().as_nanos() as i64
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_silent_link_is_closed_after_its_idle_timeout_and_counted() {
    let (intake, _rx) = Intake::channel(4);
    let config = DeviceLinkConfig {
        idle_timeout_ms: 60_000,
        ..DeviceLinkConfig::default()
    };
    let start = tokio::time::Instant::now();
    let src = DeviceSource::new(config, intake, DeviceRegistry::new())
        .with_clock(Arc::new(TokioClock(start)));
    let stats = src.stats.clone();
    let (mut dev_io, gw_io) = tokio::io::duplex(1024);
    // One byte (a frame delimiter) 30 s in: the minute starts again there.
    let device = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        dev_io.write_all(&[0]).await.unwrap();
        dev_io
    });
    let end = run_link(gw_io, &src, std::future::pending::<()>())
        .await
        .unwrap();
    assert_eq!(end, LinkEnd::Idle);
    assert_eq!(start.elapsed(), std::time::Duration::from_secs(90));
    assert_eq!(stats.idle_timeouts.load(Ordering::Relaxed), 1);
    drop(device.await.unwrap());
}
