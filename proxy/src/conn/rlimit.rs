//! The default connection cap of a listener, derived from the process's fd limit.
//!
//! Invariant: the caps of all listeners together leave [`RESERVE`] fds free, so however many
//! clients connect, tandem can still respawn the app (its pipes), answer its admin port and
//! write its logs; an accept past a cap is closed at once instead of failing with EMFILE.

use nix::sys::resource::{getrlimit, Resource};

/// fds kept for everything but client connections: the app's pipes, the admin port and its
/// connections, probes, log sinks, OTLP export, the runtime's own.
pub const RESERVE: u64 = 64;

/// A cap used when the fd limit is unlimited or cannot be read.
const UNLIMITED: usize = 1 << 20;

/// `(soft RLIMIT_NOFILE - RESERVE) / (2 × listeners)`, at least 1: a proxied connection holds
/// two fds, the client's and the app's.
pub fn derived_max_connections(listeners: usize) -> usize {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => cap(soft, listeners),
        Err(_) => UNLIMITED,
    }
}

fn cap(soft: u64, listeners: usize) -> usize {
    let per = soft.saturating_sub(RESERVE) / (2 * listeners.max(1) as u64);
    usize::try_from(per)
        .unwrap_or(UNLIMITED)
        .clamp(1, UNLIMITED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_the_reserve_and_two_fds_per_connection() {
        assert_eq!(cap(1024, 1), 480);
        assert_eq!(cap(256, 2), 48);
        assert_eq!(cap(64, 1), 1);
        assert_eq!(cap(u64::MAX, 1), UNLIMITED);
        assert_eq!(cap(1024, 0), 480);
    }
}
