//! Giving memory back after a crowd of connections leaves.
//!
//! glibc's allocator keeps what tandem frees in its per-thread arenas: after 10,000 idle
//! connections closed, tandem's RSS stayed at the 130 MB they had taken (issue 19, bug 5).
//! `malloc_trim(0)` returns the free pages to the system (down to ~30 MB in that case). It is
//! called from a blocking thread, at most once per period, and only after at least `CROWD`
//! connections closed since the last call, or when the allocator holds `GROWTH` more free
//! memory than its low point since the last call (a few busy connections can leave that much:
//! 32 HTTP/2 connections with 10 streams each left 5.6 MB), so a steady load never pays for it.
#![allow(unsafe_code)]

use std::time::Duration;

/// Connections that must have closed since the last trim before the next one.
const CROWD: u64 = 1_000;
/// Free memory the allocator may gather above its low point before it is given back.
const GROWTH: usize = 4 << 20;
/// How often the closed-connection count and the allocator's free memory are looked at.
const PERIOD: Duration = Duration::from_secs(2);

/// Starts the trimmer task (a no-op where the allocator is not glibc's).
pub fn spawn_trimmer() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    tokio::spawn(async {
        let mut last = tandem_proxy::closed_connections();
        // The least free memory seen since the last trim: what load took back from it was
        // touched again, so what it gives back on top of that is what a trim would return.
        let mut low = held_free();
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = tandem_proxy::closed_connections();
            let free = held_free();
            low = low.min(free);
            if due(now.saturating_sub(last), free, low) {
                last = now;
                let _ = tokio::task::spawn_blocking(trim).await;
                // Trimmed pages stay counted as free chunks: the next trim waits for new growth.
                low = held_free();
            }
        }
    });
}

/// Whether to trim now: `closed` connections closed since the last trim, the allocator holds
/// `free` bytes free, and held `low` at the least since then.
fn due(closed: u64, free: usize, low: usize) -> bool {
    closed >= CROWD || free > low.saturating_add(GROWTH)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers and
    // is safe to call from any thread at any time.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released, "memory given back to the system");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Bytes the allocator holds free, in all its arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn held_free() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's own statistics (taking each arena's lock);
    // it takes no pointers and is safe to call from any thread.
    unsafe { libc::mallinfo2() }.fordblks
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn held_free() -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_a_crowd_or_a_growth_of_free_memory_only() {
        // a steady load: few connections closed, free memory moving around its low point
        assert!(!due(10, 3 << 20, 1 << 20));
        assert!(!due(CROWD - 1, (1 << 20) + GROWTH, 1 << 20));
        // a crowd of connections left
        assert!(due(CROWD, 0, 0));
        // a few busy connections left more free memory than GROWTH above the low point
        assert!(due(0, (1 << 20) + GROWTH + 1, 1 << 20));
        // after a trim the low point is the (still counted) trimmed memory: no trim again
        assert!(!due(0, 9 << 20, 9 << 20));
    }
}
