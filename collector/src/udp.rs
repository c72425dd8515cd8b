//! The endpoint's UDP socket, wrapped to count datagrams that cannot be
//! QUIC. quinn drops them silently; operators should see a flood.
//!
//! A QUIC packet has the "fixed bit" (0x40) of its first byte set unless
//! the receiver advertised `grease_quic_bit`, which this endpoint does not
//! (see `lib.rs`), so a clear bit marks garbage.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::ingest::BadInput;
use crate::metrics::Metrics;

/// Counts garbage datagrams, then hands everything to quinn.
pub struct CountingSocket {
    // Field order matters: `inner` (the OS socket) drops before `closed`
    // reports it, so whoever waits on `_closed` may bind the port again.
    inner: Arc<dyn AsyncUdpSocket>,
    metrics: Arc<Metrics>,
    _closed: ClosedSignal,
}

/// Fires its channel when dropped.
struct ClosedSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for ClosedSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl CountingSocket {
    /// Wraps `inner`; `closed` fires once the socket is closed (when quinn
    /// drops its last reference).
    pub fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        metrics: Arc<Metrics>,
        closed: tokio::sync::oneshot::Sender<()>,
    ) -> Self {
        Self {
            inner,
            metrics,
            _closed: ClosedSignal(Some(closed)),
        }
    }
}

impl fmt::Debug for CountingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        for (buf, m) in bufs.iter().zip(meta.iter()).take(n) {
            let stride = m.stride.max(1);
            let data = &buf[..m.len.min(buf.len())];
            for segment in data.chunks(stride) {
                if segment.first().is_none_or(|b| b & 0x40 == 0) {
                    self.metrics.bad(
                        BadInput::GarbageDatagram,
                        &format_args!(
                            "{} byte datagram from {} is not QUIC",
                            segment.len(),
                            m.addr
                        ),
                    );
                }
            }
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
