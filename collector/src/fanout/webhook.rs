//! The webhook sink's HTTP client: one `POST` per event over plain
//! HTTP/1.1 (`Connection: close`), a timeout per attempt, retries with
//! doubling backoff, dead-lettering after `max_attempts` or at once on a
//! permanent refusal (4xx other than 408 and 429).

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::rules::WebhookSink;

/// How one event's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// A 2xx answer.
    Delivered {
        /// Attempts it took.
        attempts: u32,
    },
    /// Given up on.
    DeadLetter {
        /// Why the last attempt failed.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The collector is stopping (or the sink is reconfigured): not
    /// delivered, not given up on.
    Stopped,
}

/// One attempt: the HTTP status, or why there was none.
async fn post(sink: &WebhookSink, body: &[u8]) -> Result<u16, String> {
    let attempt = async {
        let mut s = TcpStream::connect(&sink.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", sink.authority))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferry-collector\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            sink.path,
            sink.authority,
            body.len()
        );
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| format!("sending: {e}"))?;
        s.write_all(body)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        // The status line is all we need; read what the server sends until
        // it closes, up to 64 KiB.
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading: {e}"))?;
            if n == 0 || raw.len() > 65_536 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&raw);
        let line = text.lines().next().unwrap_or("");
        line.split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|_| line.starts_with("HTTP/1."))
            .ok_or_else(|| format!("no HTTP status line in the answer ({line:?})"))
    };
    tokio::time::timeout(sink.timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {:?}", sink.timeout))?
}

/// Delivers `body`, retrying; `on_retry` is called before each retry.
pub(crate) async fn deliver(
    sink: &WebhookSink,
    body: &[u8],
    stop: &mut watch::Receiver<bool>,
    mut on_retry: impl FnMut(u32, &str),
) -> Delivery {
    let mut backoff = sink.backoff_min;
    let mut attempts = 0;
    loop {
        if *stop.borrow() {
            return Delivery::Stopped;
        }
        attempts += 1;
        let reason = tokio::select! {
            r = post(sink, body) => match r {
                Ok(code) if (200..300).contains(&code) => return Delivery::Delivered { attempts },
                Ok(code) if (400..500).contains(&code) && code != 408 && code != 429 => {
                    return Delivery::DeadLetter {
                        reason: format!("refused with HTTP {code}"),
                        attempts,
                    };
                }
                Ok(code) => format!("HTTP {code}"),
                Err(e) => e,
            },
            _ = crate::stopped(stop) => return Delivery::Stopped,
        };
        if attempts >= sink.raw.max_attempts {
            return Delivery::DeadLetter { reason, attempts };
        }
        on_retry(attempts, &reason);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::stopped(stop) => return Delivery::Stopped,
        }
        backoff = (backoff * 2)
            .min(sink.backoff_max)
            .max(Duration::from_millis(1));
    }
}
