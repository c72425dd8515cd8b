//! The webhook sink's HTTP client: one `POST` per event over plain
//! HTTP/1.1 (`Connection: close`), a timeout per attempt, retries with
//! doubling backoff, dead-lettering after `max_attempts` or at once on a
//! permanent refusal (4xx other than 408 and 429).

use std::time::Duration;

use ferry_clock::Backoff;
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

/// Why an attempt got no HTTP status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    /// The TCP connection failed.
    #[error("connecting to {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing the request failed.
    #[error("sending: {0}")]
    Send(#[source] std::io::Error),
    /// Reading the answer failed.
    #[error("reading: {0}")]
    Read(#[source] std::io::Error),
    /// The answer did not start with an HTTP status line (its first line).
    #[error("no HTTP status line in the answer ({0:?})")]
    NoStatus(String),
    /// No answer within the sink's `timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One attempt: the HTTP status, or why there was none.
async fn post(sink: &WebhookSink, body: &[u8]) -> Result<u16, PostError> {
    let attempt = async {
        let mut s = TcpStream::connect(&sink.authority)
            .await
            .map_err(|source| PostError::Connect {
                authority: sink.authority.clone(),
                source,
            })?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferry-collector\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            sink.path,
            sink.authority,
            body.len()
        );
        s.write_all(head.as_bytes())
            .await
            .map_err(PostError::Send)?;
        s.write_all(body).await.map_err(PostError::Send)?;
        // The status line is all we need; read what the server sends until
        // it closes, up to 64 KiB.
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.map_err(PostError::Read)?;
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
            .ok_or_else(|| PostError::NoStatus(line.to_owned()))
    };
    tokio::time::timeout(sink.timeout, attempt)
        .await
        .map_err(|_| PostError::Timeout(sink.timeout))?
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Done: delivered or given up on.
    Done(Delivery),
    /// Try again after this pause; the reason the attempt failed.
    Retry {
        /// The pause.
        after: Duration,
        /// Why the attempt failed.
        reason: String,
    },
}

/// One event's delivery attempts, sans-IO: what each attempt's result
/// means (2xx delivered; 4xx other than 408 and 429 a permanent refusal;
/// anything else retried with doubling pauses until `max_attempts`).
#[derive(Debug, Clone)]
pub(crate) struct Attempts {
    max_attempts: u32,
    made: u32,
    backoff: Backoff,
}

impl Attempts {
    pub(crate) fn new(sink: &WebhookSink) -> Self {
        Self {
            max_attempts: sink.raw.max_attempts,
            made: 0,
            backoff: Backoff::new(
                sink.backoff_min.max(Duration::from_millis(1)),
                sink.backoff_max,
            ),
        }
    }

    /// An attempt ended with an HTTP status, or with no answer (`Err`).
    pub(crate) fn handle_result(&mut self, result: Result<u16, PostError>) -> Next {
        self.made += 1;
        let attempts = self.made;
        let reason = match result {
            Ok(code) if (200..300).contains(&code) => {
                return Next::Done(Delivery::Delivered { attempts });
            }
            Ok(code) if (400..500).contains(&code) && code != 408 && code != 429 => {
                return Next::Done(Delivery::DeadLetter {
                    reason: format!("refused with HTTP {code}"),
                    attempts,
                });
            }
            Ok(code) => format!("HTTP {code}"),
            Err(e) => e.to_string(),
        };
        if attempts >= self.max_attempts {
            return Next::Done(Delivery::DeadLetter { reason, attempts });
        }
        Next::Retry {
            after: self.backoff.next_delay(),
            reason,
        }
    }

    /// Attempts made.
    pub(crate) fn made(&self) -> u32 {
        self.made
    }
}

/// Delivers `body`, retrying; `on_retry` is called before each retry.
pub(crate) async fn deliver(
    sink: &WebhookSink,
    body: &[u8],
    stop: &mut watch::Receiver<bool>,
    mut on_retry: impl FnMut(u32, &str),
) -> Delivery {
    let mut attempts = Attempts::new(sink);
    loop {
        if *stop.borrow() {
            return Delivery::Stopped;
        }
        let result = tokio::select! {
            r = post(sink, body) => r,
            _ = crate::stopped(stop) => return Delivery::Stopped,
        };
        let (after, reason) = match attempts.handle_result(result) {
            Next::Done(d) => return d,
            Next::Retry { after, reason } => (after, reason),
        };
        on_retry(attempts.made(), &reason);
        tokio::select! {
            _ = tokio::time::sleep(after) => {}
            _ = crate::stopped(stop) => return Delivery::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn attempts(max: u32) -> Attempts {
        Attempts {
            max_attempts: max,
            made: 0,
            backoff: Backoff::new(100 * MS, 300 * MS),
        }
    }

    #[test]
    fn failures_are_retried_with_doubling_pauses_then_dead_lettered() {
        let mut a = attempts(4);
        let mut pauses = Vec::new();
        for result in [Err(PostError::Timeout(MS)), Ok(503), Ok(429)] {
            match a.handle_result(result) {
                Next::Retry { after, .. } => pauses.push(after),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pauses, [100 * MS, 200 * MS, 300 * MS], "doubling, capped");
        assert_eq!(
            a.handle_result(Ok(500)),
            Next::Done(Delivery::DeadLetter {
                reason: "HTTP 500".into(),
                attempts: 4
            })
        );
    }

    #[test]
    fn success_and_permanent_refusals_end_at_once() {
        let mut a = attempts(5);
        assert!(
            matches!(a.handle_result(Ok(408)), Next::Retry { .. }),
            "timeout: retried"
        );
        assert_eq!(
            a.handle_result(Ok(204)),
            Next::Done(Delivery::Delivered { attempts: 2 })
        );
        let mut a = attempts(5);
        assert_eq!(
            a.handle_result(Ok(404)),
            Next::Done(Delivery::DeadLetter {
                reason: "refused with HTTP 404".into(),
                attempts: 1
            })
        );
    }
}
