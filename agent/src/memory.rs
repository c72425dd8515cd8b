//! Keeping the heap small: few `malloc` arenas, no per-thread caches, large
//! buffers mapped on their own, and freed heap handed back to the operating
//! system when the agent goes idle.
//!
//! glibc's `malloc` keeps what a burst freed, in three places, so after a
//! backlog drains the agent would sit far above its idle RSS:
//! - arenas: threads get their own (up to eight per core). [`tune_malloc`]
//!   caps them at [`ARENAS`] before any thread starts;
//! - per-thread caches (tcache): up to seven free chunks of each small size
//!   per thread, which `malloc_trim` cannot reach and which pin partly used
//!   pages. They can only be turned off when the process starts
//!   (`GLIBC_TUNABLES`), so [`without_thread_caches`] re-executes the agent
//!   once with `glibc.malloc.tcache_count=0`;
//! - the heap's top: buffers of [`MMAP_THRESHOLD`] or more (read buffers,
//!   encoded batches) get their own mappings, returned whole when freed,
//!   instead of growing and fragmenting the heap.
//!
//! And once the reading counters and the memory budget's activity (caches
//! filled or evicted, connection buffers taken or freed) stop moving for one
//! check interval after they moved, the agent asks `malloc` to return its free pages
//! (`malloc_trim`). Measured with a full-rate burst of line protocol (a
//! Python sender, ~300 k lines/s for 6 s), RSS 5 s after it: 11.2 MiB with
//! the arena cap alone, 8.8 MiB with all of the above; live heap then is
//! ~0.4 MiB. Other C libraries and allocators manage this on their own;
//! there all of this does nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::AgentMetrics;

/// How often the counters are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Decides when to trim: after activity, at the first check that sees none.
#[derive(Debug, Default)]
pub struct IdleTrim {
    last: Option<u64>,
    moved: bool,
}

impl IdleTrim {
    /// Feeds the activity counter's current value; true when the heap should
    /// be trimmed now (it moved since the last trim, and not since the last
    /// check).
    pub fn observe(&mut self, count: u64) -> bool {
        let still = self.last == Some(count);
        if !still && self.last.is_some() {
            self.moved = true;
        }
        self.last = Some(count);
        if still && self.moved {
            self.moved = false;
            return true;
        }
        false
    }
}

/// `malloc` arenas the agent uses: its runtime has one worker per core, and
/// more arenas only hold more freed memory.
pub const ARENAS: i32 = 2;

/// Allocations of this many bytes or more get their own mapping.
pub const MMAP_THRESHOLD: i32 = 64 * 1024;

/// The glibc tunable that turns the per-thread caches off.
pub const NO_THREAD_CACHES: &str = "glibc.malloc.tcache_count=0";

/// Caps glibc's `malloc` arenas at [`ARENAS`] and maps allocations of
/// [`MMAP_THRESHOLD`] or more on their own; call it first thing in `main`,
/// before any thread exists. True if both were set.
pub fn tune_malloc() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets one of glibc's malloc parameters; it
        // takes no pointers.
        #[allow(unsafe_code)]
        let set = unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        };
        set
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Set (to the process id) in the environment of the re-executed agent: a
/// process that finds its own pid there has been re-executed already and
/// never does it again, even when `GLIBC_TUNABLES` did not survive the exec
/// (glibc drops it for setuid programs; a wrapper may clear it).
pub const REEXEC_MARKER: &str = "FERRY_AGENT_REEXECUTED";

/// The `GLIBC_TUNABLES` value to re-execute with, or `None` when there is
/// nothing to do: this process (`pid`) was re-executed already (`marker`,
/// the value of [`REEXEC_MARKER`]), or `current` already says what the
/// per-thread caches should be (ours, or an operator's own choice, which is
/// kept).
pub fn reexec_tunables(current: Option<&str>, marker: Option<&str>, pid: u32) -> Option<String> {
    if marker.is_some_and(|m| m == pid.to_string()) {
        return None;
    }
    tunables_with_no_thread_caches(current)
}

/// The `GLIBC_TUNABLES` value with the per-thread caches off, or `None` when
/// `current` already says what they should be.
pub fn tunables_with_no_thread_caches(current: Option<&str>) -> Option<String> {
    match current {
        Some(v) if v.contains("glibc.malloc.tcache_count") => None,
        Some(v) if !v.is_empty() => Some(format!("{v}:{NO_THREAD_CACHES}")),
        _ => Some(NO_THREAD_CACHES.to_owned()),
    }
}

/// Re-executes this process (same program, arguments and pid) with the
/// per-thread caches off, unless `GLIBC_TUNABLES` already sets them; call
/// it first thing in `main`. Returns only when no re-execution happened:
/// already set, not glibc, or `exec` failed (the agent then runs with the
/// caches, and a larger RSS after bursts).
pub fn without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let current = std::env::var_os("GLIBC_TUNABLES");
        let marker = std::env::var_os(REEXEC_MARKER);
        let pid = std::process::id();
        let Some(value) = reexec_tunables(
            current.as_ref().map(|v| v.to_string_lossy()).as_deref(),
            marker.as_ref().map(|v| v.to_string_lossy()).as_deref(),
            pid,
        ) else {
            return;
        };
        let mut args = std::env::args_os();
        let Some(arg0) = args.next() else { return };
        let error = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", value)
            .env(REEXEC_MARKER, pid.to_string())
            .exec();
        eprintln!("ferry-agent: running with malloc's thread caches (re-exec failed: {error})");
    }
}

/// Returns free heap pages to the OS; true if any were released.
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas under their
        // locks; it takes no pointers and is safe to call from any thread.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Checks the reading counters and the memory budget's activity every
/// [`CHECK_EVERY`] and releases free heap when the agent went idle, until
/// `stopped`.
pub async fn trim_when_idle(metrics: Arc<AgentMetrics>, mut stopped: watch::Receiver<bool>) {
    let mut idle = IdleTrim::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = async { stopped.wait_for(|s| *s).await.is_err() } => return,
            _ = tick.tick() => {
                // The budget's charges and releases too: caches evicted
                // or connections closed while no reading moves.
                let budget = metrics.memory.get().map_or(0, |b| b.activity());
                let count = metrics.readings_in.get() + metrics.readings_out.get() + budget;
                if idle.observe(count) {
                    let released = tokio::task::spawn_blocking(release_free_heap)
                        .await
                        .unwrap_or(false);
                    tracing::debug!(released, "idle: free heap returned to the OS");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_caches_are_turned_off_unless_already_set() {
        assert_eq!(
            tunables_with_no_thread_caches(None).as_deref(),
            Some("glibc.malloc.tcache_count=0")
        );
        assert_eq!(
            tunables_with_no_thread_caches(Some("")).as_deref(),
            Some("glibc.malloc.tcache_count=0")
        );
        assert_eq!(
            tunables_with_no_thread_caches(Some("glibc.malloc.check=0")).as_deref(),
            Some("glibc.malloc.check=0:glibc.malloc.tcache_count=0")
        );
        // Ours (after the re-exec) or an operator's: kept, no loop.
        assert_eq!(
            tunables_with_no_thread_caches(Some("glibc.malloc.tcache_count=0")),
            None
        );
        assert_eq!(
            tunables_with_no_thread_caches(Some("glibc.malloc.tcache_count=7:x=1")),
            None
        );
    }

    #[test]
    fn a_re_executed_agent_never_re_executes_again() {
        // The exec keeps the pid: the marker names this process.
        assert_eq!(reexec_tunables(None, Some("42"), 42), None);
        // Even when GLIBC_TUNABLES was dropped on the way.
        assert_eq!(reexec_tunables(Some(""), Some("42"), 42), None);
        // Another process's marker (an agent started by an agent): ignored.
        assert_eq!(
            reexec_tunables(None, Some("41"), 42).as_deref(),
            Some(NO_THREAD_CACHES)
        );
        assert_eq!(
            reexec_tunables(None, None, 42).as_deref(),
            Some(NO_THREAD_CACHES)
        );
    }

    #[test]
    fn trims_once_after_activity_stops() {
        let mut idle = IdleTrim::default();
        // Idle from the start: nothing to give back.
        assert!(!idle.observe(0));
        assert!(!idle.observe(0));
        // Busy for two checks, then still: one trim.
        assert!(!idle.observe(10));
        assert!(!idle.observe(25));
        assert!(idle.observe(25));
        assert!(!idle.observe(25));
        assert!(!idle.observe(25));
        // Busy again: trimmed again once it stops.
        assert!(!idle.observe(26));
        assert!(idle.observe(26));
    }
}
