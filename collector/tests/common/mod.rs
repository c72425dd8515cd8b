//! Test support: a collector in a temporary directory and a small QUIC
//! agent client built on ferry-proto.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_collector::admin::Admin;
use ferry_collector::{Bundle, Collector, Config, EnrollOptions, Handle, InitOptions};
use ferry_proto::batch::{Batch, Reading, ReadingBlock};
use ferry_proto::codec;
use ferry_proto::series::SeriesKey;
use ferry_proto::session::{ALPN, Ack, ErrorMsg, Hello, PROTOCOL_VERSION, Welcome, compression};
use ferry_proto::stream::{self, FrameHeader, FrameType, HEADER_LEN};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A data directory with a CA.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ferry_collector::init(&InitOptions::new(&data)).unwrap();
        Self { dir, data }
    }

    pub fn enroll(&self, id: &str) -> Bundle {
        ferry_collector::enroll(
            &self.data,
            id,
            &self.dir.path().join(format!("bundle-{id}")),
        )
        .unwrap()
    }

    pub fn enroll_with(&self, id: &str, valid_days: i64) -> Bundle {
        let mut opts =
            EnrollOptions::new(&self.data, id, self.dir.path().join(format!("bundle-{id}")));
        opts.valid_days = valid_days;
        ferry_collector::enroll_with(&opts).unwrap()
    }

    pub fn config(&self) -> Config {
        Config::for_data_dir(&self.data)
    }

    pub async fn start(&self) -> Running {
        Running::start(self.config()).await
    }
}

/// A collector running in a task.
pub struct Running {
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ferry_collector::Error>>>,
}

impl Running {
    pub async fn start(config: Config) -> Self {
        let collector = Collector::bind(config).await.unwrap();
        let (quic, http, handle) = (
            collector.quic_addr(),
            collector.http_addr(),
            collector.handle(),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(collector.run(async {
            let _ = stopped.await;
        }));
        Self {
            quic,
            http,
            handle,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn admin(&self) -> Admin {
        Admin::Remote(self.http)
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// A minimal agent: connects with a bundle, says hello, sends batches.
pub struct Agent {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> quinn::ClientConfig {
    let tls = ferry_collector::pki::client_tls(ca, cert, key).unwrap();
    assert_eq!(tls.alpn_protocols, vec![ALPN.to_vec()]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

pub fn frame(t: FrameType, compression: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    stream::write_frame(&mut out, t, compression, body);
    out
}

/// Reads one frame from a stream; `Err` carries the read error.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
) -> Result<(FrameHeader, Vec<u8>), quinn::ReadExactError> {
    let mut head = [0u8; HEADER_LEN];
    recv.read_exact(&mut head).await?;
    let header = FrameHeader::parse(&head, u32::MAX).unwrap();
    let mut body = vec![0u8; header.len as usize];
    recv.read_exact(&mut body).await?;
    Ok((header, body))
}

pub fn hello(protocol: u16) -> Hello {
    Hello {
        protocol,
        agent_version: "test-agent 0".into(),
        compression: vec![compression::ZSTD, compression::NONE],
    }
}

/// What the collector answered to a hello.
#[derive(Debug)]
pub enum HelloReply {
    Welcome(Welcome),
    Error(ErrorMsg),
}

impl Agent {
    /// Connects; the handshake future's error is returned as is.
    pub async fn connect_with(
        addr: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<Self, quinn::ConnectionError> {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(addr, "localhost").unwrap().await?;
        Ok(Self { endpoint, conn })
    }

    pub async fn connect(addr: SocketAddr, b: &Bundle) -> Result<Self, quinn::ConnectionError> {
        Self::connect_with(addr, client_config(&b.ca, &b.cert, &b.key)).await
    }

    /// Connects and completes the hello exchange.
    pub async fn session(addr: SocketAddr, b: &Bundle) -> (Self, Welcome) {
        let agent = Self::connect(addr, b).await.unwrap();
        match agent.hello(hello(PROTOCOL_VERSION)).await.unwrap() {
            HelloReply::Welcome(w) => (agent, w),
            HelloReply::Error(e) => panic!("hello refused: {e:?}"),
        }
    }

    pub async fn hello(&self, h: Hello) -> Result<HelloReply, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&frame(FrameType::Hello, 0, &codec::to_vec(&h).unwrap()))
            .await
            .map_err(|e| e.to_string())?;
        send.finish().unwrap();
        let (header, body) = read_frame(&mut recv).await.map_err(|e| e.to_string())?;
        match header.frame_type {
            FrameType::Welcome => Ok(HelloReply::Welcome(
                codec::from_bytes("Welcome", &body).unwrap(),
            )),
            FrameType::Error => Ok(HelloReply::Error(
                codec::from_bytes("ErrorMsg", &body).unwrap(),
            )),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Sends raw stream bytes on a new stream and reads the ack.
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<Ack, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(bytes).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        let (header, body) = read_frame(&mut recv).await.map_err(|e| e.to_string())?;
        assert_eq!(header.frame_type, FrameType::Ack);
        Ok(codec::from_bytes("Ack", &body).unwrap())
    }

    pub async fn send(&self, batch: &Batch) -> Result<Ack, String> {
        self.send_raw(&frame(FrameType::Batch, 0, &codec::to_vec(batch).unwrap()))
            .await
    }

    pub async fn send_zstd(&self, batch: &Batch) -> Result<Ack, String> {
        let body = zstd_compress(&codec::to_vec(batch).unwrap());
        self.send_raw(&frame(FrameType::Batch, compression::ZSTD, &body))
            .await
    }
}

pub fn zstd_compress(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// A whole-second "now" so that expected values print exactly.
pub fn base_ns() -> i64 {
    let now = ferry_collector::now_ns();
    now - now % 1_000_000_000 - 600_000_000_000
}

/// A batch with `per_series` readings of each series `metric{dev=...}`, one
/// second apart from `t0`, values `v0 + i * 0.25`.
pub fn batch(seq: u64, t0: i64, devices: &[&str], per_series: usize) -> Batch {
    let mut b = Batch {
        seq,
        created_ns: t0,
        ..Batch::default()
    };
    for (i, dev) in devices.iter().enumerate() {
        b.series
            .push(SeriesKey::new("temperature", [("dev", *dev)]).unwrap());
        let readings: Vec<Reading> = (0..per_series)
            .map(|j| Reading {
                ts_ns: t0 + j as i64 * 1_000_000_000,
                value: 20.0 + i as f64 + j as f64 * 0.25,
            })
            .collect();
        b.blocks.push(ReadingBlock::encode(i as u32, &readings));
    }
    b
}
