//! Datagrams the kernel dropped on the agent's UDP sockets.
//!
//! A UDP sender cannot be slowed: when the agent reads slower than a burst
//! arrives, the socket's receive buffer fills and the kernel drops what does
//! not fit, before Ferry sees a byte. Linux counts those drops per socket in
//! the last column of `/proc/net/udp` (and `udp6`), on the line whose inode
//! is the socket's. [`KernelDrops`] turns successive readings of that
//! counter into increments, which the agent journals as health kind
//! [`ferry_proto::health::DROPPED_KERNEL`] for the source's name, so the
//! loss reaches the collector.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::health;
use tokio::sync::watch;

use crate::intake::Intake;
use crate::journal::Work;
use crate::metrics::AgentMetrics;

/// How often the counters are read.
pub const POLL: Duration = Duration::from_secs(1);

/// The `drops` column of the line of socket `inode` in a
/// `/proc/net/udp`-format `table`; `None` when the socket is not in it.
pub fn drops_of(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retr uid timeout inode ref ptr drops
        let ino: u64 = cols.get(9)?.parse().ok()?;
        (ino == inode).then(|| cols.get(12)?.parse().ok())?
    })
}

/// Increments of a socket's drop counter.
#[derive(Debug, Default)]
pub struct KernelDrops {
    last: Option<u64>,
}

impl KernelDrops {
    /// The counter read now (`None`: not readable); returns what it rose
    /// by since the previous reading. The first reading counts from 0: a
    /// socket the agent just bound has dropped nothing of anyone's before.
    pub fn observe(&mut self, counter: Option<u64>) -> u64 {
        let Some(now) = counter else { return 0 };
        let before = self.last.replace(now).unwrap_or(0);
        now.saturating_sub(before)
    }
}

/// The inode of a socket (`fstat`), the key of its `/proc/net/udp` line.
pub fn socket_inode(socket: &impl AsRawFd) -> std::io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: the descriptor is open for the socket's lifetime and `st` is
    // writable memory of the struct's size.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::fstat(socket.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0: it filled the struct.
    #[allow(unsafe_code)]
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Ok(st.st_ino as u64)
}

fn read_counter(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|p| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| drops_of(&t, inode))
    })
}

/// Reads the drop counter of socket `inode` every [`POLL`] until `stop`,
/// journaling each rise as health kind 9 for `source`.
pub async fn watch_socket(
    inode: u64,
    source: String,
    intake: Intake,
    metrics: Arc<AgentMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut drops = KernelDrops::default();
    let mut owed = 0u64;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let rose = drops.observe(read_counter(inode));
        if rose > 0 {
            metrics.guard.udp_kernel_drops.add(rose);
            tracing::warn!(source = %source, datagrams = rose,
                "the kernel dropped datagrams: the UDP receive buffer was full");
        }
        owed += rose;
        if owed == 0 {
            continue;
        }
        let work = Work {
            health: vec![(source.clone(), health::DROPPED_KERNEL, owed)],
            ..Work::default()
        };
        // Refused (a full disk, shutdown): owed, and tried again next time.
        if intake.submit(work).await.is_ok() {
            owed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 424242 2 0000000000000000 17
  124: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 1000 2 0000000000000000 0
";

    #[test]
    fn the_drops_column_of_the_sockets_line_is_read_by_inode() {
        assert_eq!(drops_of(TABLE, 424242), Some(17));
        assert_eq!(drops_of(TABLE, 1000), Some(0));
        assert_eq!(drops_of(TABLE, 5), None);
        assert_eq!(drops_of("header only\n", 5), None);
    }

    #[test]
    fn rises_of_the_counter_are_counted_once() {
        let mut d = KernelDrops::default();
        assert_eq!(d.observe(Some(3)), 3, "from 0 at bind");
        assert_eq!(d.observe(Some(3)), 0);
        assert_eq!(d.observe(None), 0, "unreadable: nothing");
        assert_eq!(d.observe(Some(10)), 7);
    }

    #[test]
    fn a_real_socket_is_found_in_proc_net_udp() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = socket_inode(&s).unwrap();
        assert_eq!(read_counter(inode), Some(0));
    }
}
