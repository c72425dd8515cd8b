//! A connection's hello exchange, sans-IO: the deadline by which the agent
//! must have opened its control stream and sent a whole first frame on it
//! (`quic.hello_timeout` from the handshake; docs/protocol.md, Streams: a
//! stream opened with a Hello that never completes is closed at the same
//! deadline), and what the first frame on it comes to (a `Hello` this collector speaks, or the refusal to answer).
//! The session's tokio code ([`super::session`]) accepts the stream, reads
//! the frame, reads the clock and sleeps until [`Handshake::poll_timeout`].

use std::time::Duration;

use ferry_proto::codec;
use ferry_proto::session::{Hello, PROTOCOL_VERSION, reason};
use ferry_proto::stream::{FrameHeader, FrameType};

use crate::ingest::{BadInput, Rejection};

/// The reason a connection without a Hello in time is closed with.
pub(super) const NO_HELLO: &str = "no hello in time";

/// What the first frame on the control stream came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HelloRead {
    /// A Hello this collector speaks.
    Hello(Hello),
    /// Refused: answer an `ErrorMsg` and close the connection.
    Refused(Rejection),
    /// The stream ended before a whole frame.
    Ended,
}

/// One connection's hello exchange (module docs).
#[derive(Debug)]
pub(super) struct Handshake {
    deadline: i64,
    /// The first frame was read (or the stream ended): no deadline.
    read: bool,
}

impl Handshake {
    /// The handshake ended at `now`; the agent has `hello_timeout`.
    pub(super) fn new(now: i64, hello_timeout: Duration) -> Self {
        Self {
            deadline: ferry_clock::after(now, hello_timeout),
            read: false,
        }
    }

    /// When to give up waiting for the control stream and its first frame;
    /// `None` once that frame is read.
    pub(super) fn poll_timeout(&self) -> Option<i64> {
        (!self.read).then_some(self.deadline)
    }

    /// The wait of [`Handshake::poll_timeout`] ended at `now`: true when the
    /// connection is to be closed ([`NO_HELLO`]), false when it is early
    /// (a wall clock that went back) and the wait goes on.
    pub(super) fn handle_timeout(&mut self, now: i64) -> bool {
        !self.read && now >= self.deadline
    }

    /// The first frame on the control stream, as read (`Ok(None)`: the
    /// stream ended; `Err`: a header refused).
    pub(super) fn handle_frame(
        &mut self,
        frame: Result<Option<(FrameHeader, Vec<u8>)>, Rejection>,
    ) -> HelloRead {
        self.read = true;
        let (header, body) = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return HelloRead::Ended,
            Err(r) => return HelloRead::Refused(r),
        };
        match hello_of(header, &body) {
            Ok(h) => HelloRead::Hello(h),
            Err(r) => HelloRead::Refused(r),
        }
    }
}

/// A Hello from a frame: the right type, nothing trailing, our protocol.
fn hello_of(header: FrameHeader, body: &[u8]) -> Result<Hello, Rejection> {
    if header.frame_type != FrameType::Hello {
        return Err(Rejection {
            kind: BadInput::UnexpectedFrame,
            code: reason::UNEXPECTED,
            reason: format!("expected a Hello frame first, got {:?}", header.frame_type),
        });
    }
    let hello = match codec::from_bytes_prefix::<Hello>("Hello", body) {
        Ok((hello, used)) if used == body.len() => hello,
        Ok((_, used)) => {
            return Err(Rejection {
                kind: BadInput::MalformedMessage,
                code: reason::TRAILING_BYTES,
                reason: codec::trailing_bytes("Hello", body.len() - used, used).to_string(),
            });
        }
        Err(e) => {
            return Err(Rejection {
                kind: BadInput::MalformedMessage,
                code: reason::MALFORMED,
                reason: e.to_string(),
            });
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(Rejection {
            kind: BadInput::UnsupportedVersion,
            code: reason::UNSUPPORTED,
            reason: format!(
                "protocol version {} is not supported; this collector speaks {PROTOCOL_VERSION}",
                hello.protocol
            ),
        });
    }
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_clock::{Clock, ManualClock, SEC};
    use ferry_proto::stream::compression;

    const T0: i64 = 1_700_000_000 * SEC;

    fn hello(protocol: u16) -> Hello {
        Hello {
            protocol,
            agent_version: "test-agent 0".into(),
            compression: vec![compression::ZSTD],
            epoch: 7,
            resolved_below: 0,
        }
    }

    fn frame(t: FrameType, body: Vec<u8>) -> Result<Option<(FrameHeader, Vec<u8>)>, Rejection> {
        let header = FrameHeader {
            frame_type: t,
            compression: compression::NONE,
            len: body.len() as u32,
        };
        Ok(Some((header, body)))
    }

    #[test]
    fn a_connection_without_its_control_stream_is_closed_at_the_hello_timeout() {
        let clock = ManualClock::new(T0);
        let mut h = Handshake::new(clock.now_ns(), Duration::from_secs(10));
        assert_eq!(h.poll_timeout(), Some(T0 + 10 * SEC));
        clock.set(T0 + 10 * SEC - 1);
        assert!(
            !h.handle_timeout(clock.now_ns()),
            "a clock gone back: wait on"
        );
        assert_eq!(h.poll_timeout(), Some(T0 + 10 * SEC), "the same deadline");
        clock.set(T0 + 10 * SEC);
        assert!(h.handle_timeout(clock.now_ns()));
        assert_eq!(NO_HELLO, "no hello in time");
    }

    #[test]
    fn an_opened_control_stream_without_a_whole_hello_is_closed_at_the_same_deadline() {
        let clock = ManualClock::new(T0);
        let mut h = Handshake::new(clock.now_ns(), Duration::from_secs(10));
        clock.advance(Duration::from_secs(9));
        assert_eq!(h.poll_timeout(), Some(T0 + 10 * SEC));
        clock.advance(Duration::from_secs(1));
        assert!(h.handle_timeout(clock.now_ns()));
    }

    #[test]
    fn a_read_hello_has_no_deadline() {
        let clock = ManualClock::new(T0);
        let mut h = Handshake::new(clock.now_ns(), Duration::from_secs(10));
        clock.advance(Duration::from_secs(9));
        assert_eq!(h.handle_frame(Ok(None)), HelloRead::Ended);
        assert_eq!(h.poll_timeout(), None);
        clock.advance(Duration::from_secs(3600));
        assert!(!h.handle_timeout(clock.now_ns()));
        let mut h = Handshake::new(clock.now_ns(), Duration::from_secs(10));
        assert_eq!(
            h.handle_frame(frame(
                FrameType::Hello,
                codec::to_vec(&hello(PROTOCOL_VERSION)).unwrap()
            )),
            HelloRead::Hello(hello(PROTOCOL_VERSION))
        );
    }

    #[test]
    fn the_first_frame_must_be_a_whole_hello_of_this_protocol() {
        let mut h = Handshake::new(T0, Duration::from_secs(10));
        let refused = |r: HelloRead| match r {
            HelloRead::Refused(r) => (r.kind, r.code, r.reason),
            other => panic!("{other:?}"),
        };
        let (kind, code, why) = refused(h.handle_frame(frame(FrameType::Batch, vec![])));
        assert_eq!(
            (kind, code),
            (BadInput::UnexpectedFrame, reason::UNEXPECTED)
        );
        assert_eq!(why, "expected a Hello frame first, got Batch");
        let mut body = codec::to_vec(&hello(PROTOCOL_VERSION)).unwrap();
        body.push(0xc0);
        let (kind, code, _) = refused(h.handle_frame(frame(FrameType::Hello, body)));
        assert_eq!(
            (kind, code),
            (BadInput::MalformedMessage, reason::TRAILING_BYTES)
        );
        let (kind, code, _) = refused(h.handle_frame(frame(FrameType::Hello, vec![0xc1])));
        assert_eq!(
            (kind, code),
            (BadInput::MalformedMessage, reason::MALFORMED)
        );
        let old = codec::to_vec(&hello(PROTOCOL_VERSION + 1)).unwrap();
        let (kind, code, why) = refused(h.handle_frame(frame(FrameType::Hello, old)));
        assert_eq!(
            (kind, code),
            (BadInput::UnsupportedVersion, reason::UNSUPPORTED)
        );
        assert_eq!(
            why,
            format!(
                "protocol version {} is not supported; this collector speaks {PROTOCOL_VERSION}",
                PROTOCOL_VERSION + 1
            )
        );
        assert_eq!(h.handle_frame(Ok(None)), HelloRead::Ended);
        let header = Rejection::new(BadInput::Oversized, reason::TOO_LARGE, "big");
        assert_eq!(
            h.handle_frame(Err(header.clone())),
            HelloRead::Refused(header)
        );
    }
}
