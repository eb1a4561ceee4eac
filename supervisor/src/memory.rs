//! Giving memory back after a crowd of connections leaves.
//!
//! glibc's allocator keeps what tandem frees in its per-thread arenas: after 10,000 idle
//! connections closed, tandem's RSS stayed at the 130 MB they had taken (issue 19, bug 5).
//! `malloc_trim(0)` returns the free pages to the system (down to ~30 MB in that case). It is
//! called from a blocking thread, at most once per period, and only after at least
//! `CROWD` connections closed since the last call, so a steady load never pays for it.
#![allow(unsafe_code)]

use std::time::Duration;

/// Connections that must have closed since the last trim before the next one.
const CROWD: u64 = 1_000;
/// How often the closed-connection count is looked at.
const PERIOD: Duration = Duration::from_secs(2);

/// Starts the trimmer task (a no-op where the allocator is not glibc's).
pub fn spawn_trimmer() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    tokio::spawn(async {
        let mut last = tandem_proxy::closed_connections();
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = tandem_proxy::closed_connections();
            if now.saturating_sub(last) >= CROWD {
                last = now;
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    });
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
