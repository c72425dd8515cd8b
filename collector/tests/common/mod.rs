//! Test support: a collector in a temporary directory and a small QUIC
//! agent client built on ferry-proto.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_collector::admin::{Admin, Remote};
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
        tokens()
            .lock()
            .unwrap()
            .insert(http, handle.admin_token().as_str().to_owned());
        Self {
            quic,
            http,
            handle,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The CLI's view of it, with the local admin credential.
    pub fn admin(&self) -> Admin {
        Admin::Remote(Remote::new(self.http, Some(self.handle.admin_token())))
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

/// The journal epoch test agents say hello with.
pub const EPOCH: u64 = 0x0123_4567_89ab_cdef;

pub fn hello(protocol: u16) -> Hello {
    hello_epoch(protocol, EPOCH)
}

pub fn hello_epoch(protocol: u16, epoch: u64) -> Hello {
    Hello {
        protocol,
        agent_version: "test-agent 0".into(),
        compression: vec![compression::ZSTD, compression::NONE],
        epoch,
        resolved_below: 0,
    }
}

/// What the collector answered on a batch stream.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Ack(Ack),
    Error(ErrorMsg),
}

impl Answer {
    /// An ErrorMsg answer.
    pub fn error(code: u16, message: &str) -> Self {
        Answer::Error(ErrorMsg {
            code,
            message: message.into(),
        })
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
        Self::session_with(addr, b, hello(PROTOCOL_VERSION)).await
    }

    /// Connects and completes the hello exchange with `h`.
    pub async fn session_with(addr: SocketAddr, b: &Bundle, h: Hello) -> (Self, Welcome) {
        let agent = Self::connect(addr, b).await.unwrap();
        match agent.hello(h).await.unwrap() {
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
        match self.send_raw_answer(bytes).await? {
            Answer::Ack(ack) => Ok(ack),
            Answer::Error(e) => panic!("an ErrorMsg where an Ack was expected: {e:?}"),
        }
    }

    /// Sends raw stream bytes on a new stream and reads the answer: an Ack,
    /// or an ErrorMsg for a frame the collector could not read as a batch.
    pub async fn send_raw_answer(&self, bytes: &[u8]) -> Result<Answer, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(bytes).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        let (header, body) = read_frame(&mut recv).await.map_err(|e| e.to_string())?;
        match header.frame_type {
            FrameType::Ack => Ok(Answer::Ack(codec::from_bytes("Ack", &body).unwrap())),
            FrameType::Error => Ok(Answer::Error(codec::from_bytes("ErrorMsg", &body).unwrap())),
            other => panic!("{other:?} frame on a batch stream"),
        }
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

/// A webhook receiver on 127.0.0.1:0: records every POSTed JSON body and
/// answers with `status` (200 unless changed).
pub struct Receiver {
    pub addr: SocketAddr,
    pub bodies: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    pub status: Arc<std::sync::atomic::AtomicU16>,
    task: JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let task = {
            let (bodies, status) = (bodies.clone(), status.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = listener.accept().await else {
                        return;
                    };
                    let (bodies, status) = (bodies.clone(), status.clone());
                    tokio::spawn(async move {
                        let mut raw = Vec::new();
                        let mut buf = [0u8; 4096];
                        let body = loop {
                            let n = s.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            raw.extend_from_slice(&buf[..n]);
                            let text = String::from_utf8_lossy(&raw).to_string();
                            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                                let len: usize = head
                                    .lines()
                                    .find_map(|l| {
                                        l.to_ascii_lowercase()
                                            .strip_prefix("content-length:")
                                            .map(|v| v.trim().parse().unwrap())
                                    })
                                    .unwrap_or(0);
                                if body.len() >= len {
                                    assert!(head.starts_with("POST /alerts HTTP/1.1"), "{head}");
                                    break body[..len].to_owned();
                                }
                            }
                        };
                        bodies
                            .lock()
                            .unwrap()
                            .push(serde_json::from_str(&body).unwrap());
                        let code = status.load(std::sync::atomic::Ordering::SeqCst);
                        let _ = s
                            .write_all(
                                format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                    .as_bytes(),
                            )
                            .await;
                    });
                }
            })
        };
        Self {
            addr,
            bodies,
            status,
            task,
        }
    }

    pub fn received(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `cond` until it holds (the bound only turns a hang into a failure).
pub async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..3_000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// A batch of one series `metric{tags}` with readings one second apart
/// from `t0`.
pub fn series_batch(seq: u64, key: SeriesKey, t0: i64, values: &[f64]) -> Batch {
    let readings: Vec<Reading> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| Reading {
            ts_ns: t0 + i as i64 * 1_000_000_000,
            value: v,
        })
        .collect();
    Batch {
        seq,
        created_ns: t0,
        series: vec![key],
        blocks: vec![ReadingBlock::encode(0, &readings)],
        ..Batch::default()
    }
}

/// The local admin credential of each collector started here, by HTTP
/// address: the helpers below send it, as the CLI does.
fn tokens() -> &'static std::sync::Mutex<std::collections::HashMap<SocketAddr, String>> {
    static TOKENS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<SocketAddr, String>>,
    > = std::sync::OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

/// `Authorization: Bearer …\r\n` with the admin credential of the
/// collector at `addr`, if it was started here; else nothing.
pub fn authorization(addr: SocketAddr) -> String {
    tokens()
        .lock()
        .unwrap()
        .get(&addr)
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default()
}

/// GET `path` over HTTP/1.0 with the collector's admin credential; the
/// body of a 200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = authorization(addr);
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{head}");
    body.to_owned()
}
