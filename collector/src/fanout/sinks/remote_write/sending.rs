//! Sending one request, sans-IO: what an answer means (delivered, refused
//! for good, or retried), bisecting a refused request down to the refused
//! samples alone ([`super::halves`]), counting, and which refused samples
//! are logged one by one: the first [`LOG_EACH`] of a request, the rest in
//! one line with the count and the last reason when it is done. The
//! count is per request, not per time, so no clock is involved.
//! [`super::send`] moves the bytes and waits the retries out.

use super::{TimeSeries, count, describe, halves};

/// Refused samples of one request logged one by one.
pub(super) const LOG_EACH: u64 = 5;

/// What an answer to the piece in flight came to.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Answer {
    /// Delivered (2xx).
    Delivered,
    /// Refused for good (another 4xx), more than one sample: split in
    /// halves, both to send.
    Split,
    /// One sample refused for good: counted; logged when `log` is there.
    Refused {
        /// What to log, for the first [`LOG_EACH`] of a request.
        log: Option<Refusal>,
    },
    /// A transient failure (5xx, 408, 429): send the same piece again
    /// after the retry delay.
    Retry,
}

/// A refused sample, as logged.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Refusal {
    /// The series, as `name{label="value",…}`.
    pub series: String,
    /// The sample's timestamp (ms).
    pub timestamp_ms: i64,
    /// Its value.
    pub value: f64,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Done {
    /// Samples delivered.
    pub delivered: u64,
    /// Samples refused for good.
    pub refused: u64,
    /// The closing line past [`LOG_EACH`]: how many more refused samples
    /// were not logged one by one, and the last one's reason.
    pub unlogged: Option<(u64, String)>,
}

/// One request being sent: the pieces still to send, the next one last.
#[derive(Debug)]
pub(super) struct Sending {
    todo: Vec<Vec<TimeSeries>>,
    delivered: u64,
    refused: u64,
    last_reason: String,
}

impl Sending {
    /// Sending `req`.
    pub(super) fn new(req: Vec<TimeSeries>) -> Self {
        Self {
            todo: vec![req],
            delivered: 0,
            refused: 0,
            last_reason: String::new(),
        }
    }

    /// The piece to send next; `None` once the request is done.
    pub(super) fn poll_piece(&self) -> Option<&[TimeSeries]> {
        self.todo.last().map(Vec::as_slice)
    }

    /// The server answered the piece of [`Sending::poll_piece`] with
    /// `status` and `body`.
    pub(super) fn handle_answer(&mut self, status: u16, body: &str) -> Answer {
        let permanent = (400..500).contains(&status) && status != 429 && status != 408;
        if !(200..300).contains(&status) && !permanent {
            return Answer::Retry;
        }
        let Some(piece) = self.todo.pop() else {
            return Answer::Retry;
        };
        if (200..300).contains(&status) {
            self.delivered += count(&piece);
            return Answer::Delivered;
        }
        if count(&piece) != 1 {
            if let Some((first, second)) = halves(piece) {
                self.todo.push(second);
                self.todo.push(first);
            }
            return Answer::Split;
        }
        self.refused += 1;
        self.last_reason = body.trim().to_owned();
        let log = (self.refused <= LOG_EACH).then(|| {
            let ts = &piece[0];
            Refusal {
                series: describe(ts),
                timestamp_ms: ts.samples[0].timestamp,
                value: ts.samples[0].value,
            }
        });
        Answer::Refused { log }
    }

    /// Counts and the closing log line.
    pub(super) fn finish(self) -> Done {
        Done {
            delivered: self.delivered,
            refused: self.refused,
            unlogged: (self.refused > LOG_EACH)
                .then(|| (self.refused - LOG_EACH, self.last_reason)),
        }
    }
}
