//! Standing in for systemd: a `NOTIFY_SOCKET` the test owns, and the
//! daemon's stderr read line by line, so tests can order what the daemon
//! told the service manager against what it logged.

use std::io::BufRead;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr};
use std::sync::mpsc;
use std::time::Duration;

/// The longest any single wait may take: it only turns a hang into a
/// failure, nothing is timed against it.
pub const HANG: Duration = Duration::from_secs(120);

/// A unix datagram socket the daemon's `sd_notify` messages arrive on.
pub struct NotifySocket {
    socket: UnixDatagram,
    /// Its path: the daemon's `NOTIFY_SOCKET`.
    pub path: PathBuf,
}

impl NotifySocket {
    /// Binds `dir/notify.sock`.
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Self { socket, path }
    }

    /// The next message (its `KEY=value` lines), waiting for it.
    pub fn recv(&self) -> Vec<String> {
        self.socket.set_read_timeout(Some(HANG)).unwrap();
        self.socket.set_nonblocking(false).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("no sd_notify message from the daemon");
        lines(&buf[..n])
    }

    /// Every message already waiting, without waiting for more.
    pub fn drain(&self) -> Vec<Vec<String>> {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::new();
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(lines(&buf[..n]));
        }
        out
    }
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8(bytes.to_vec())
        .expect("sd_notify messages are text")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `STATUS=running: admin 127.0.0.1:1, influx_tcp 127.0.0.1:2, …` as
/// `(what, address)` pairs.
pub fn status_addresses(message: &[String]) -> Vec<(String, SocketAddr)> {
    let status = message
        .iter()
        .find_map(|l| l.strip_prefix("STATUS=running: "))
        .unwrap_or_else(|| panic!("no STATUS=running: … in {message:?}"));
    status
        .split(", ")
        .map(|part| {
            let (what, addr) = part.rsplit_once(' ').expect("`what address`");
            (what.to_owned(), addr.parse().expect("a socket address"))
        })
        .collect()
}

/// A daemon's stderr, line by line, kept for failure messages.
pub struct LogLines {
    rx: mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl LogLines {
    /// Reads `child`'s piped stderr on a thread.
    pub fn of(child: &mut Child) -> Self {
        let stderr: ChildStderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for the next line containing `needle`; panics with the log if
    /// the daemon exits first.
    pub fn wait_for(&mut self, needle: &str) -> String {
        loop {
            match self.rx.recv_timeout(HANG) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the daemon never logged {needle:?}; its log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}
