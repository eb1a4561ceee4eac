//! The app's exits, as the supervisor reports them, and the requests in flight at each one:
//! what query-of-death protection needs.
//!
//! A request that was being handled when the app died may be what killed it. Replaying it to
//! the next instance hides a crash from the client, but replaying it again would let one bad
//! request crash the app once per attempt. So each attempt that reached the app stays
//! registered here until the request moves on, and the supervisor bumps the exit epoch (and
//! reads the registered requests, for its exit log) the moment it reaps the app. The retry
//! loop compares epochs: an exit during (or right after) an attempt counts against
//! `retry.max_replays_after_app_exit`.
//!
//! Invariant: the supervisor calls [`AppExits::app_exited`] before it marks the proxy not
//! ready, so a request woken by the next instance's readiness always sees the new epoch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Method, Uri};

/// Shared between the supervisor (one writer) and every listener's requests. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct AppExits {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Exits of the app so far.
    epoch: AtomicU64,
    next_key: AtomicU64,
    in_flight: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
}

/// A request that was in flight to the app when it exited (for the supervisor's exit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// The request id tandem sent to the app (`x-request-id`); empty when there was none.
    pub request_id: String,
    /// The request's method.
    pub method: String,
    /// The request's path (no query: it may hold secrets).
    pub path: String,
}

/// One attempt registered as in flight; deregisters when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    exits: AppExits,
    key: u64,
    /// The epoch when the attempt began.
    pub epoch: u64,
}

// === impl AppExits ===

impl AppExits {
    /// No exit yet, nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// The supervisor reaped the app: bumps the epoch and returns what was in flight.
    pub fn app_exited(&self) -> Vec<InFlight> {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        let map = match self.inner.in_flight.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out: Vec<(u64, InFlight)> = map
            .iter()
            .map(|(k, e)| {
                (
                    *k,
                    InFlight {
                        request_id: e
                            .request_id
                            .as_ref()
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string(),
                        method: e.method.to_string(),
                        path: e.uri.path().to_string(),
                    },
                )
            })
            .collect();
        out.sort_by_key(|(k, _)| *k);
        out.into_iter().map(|(_, f)| f).collect()
    }

    /// Exits of the app so far.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Registers an attempt about to be sent to the app.
    pub(crate) fn register(
        &self,
        method: &Method,
        uri: &Uri,
        request_id: Option<&HeaderValue>,
    ) -> Registered {
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            method: method.clone(),
            uri: uri.clone(),
            request_id: request_id.cloned(),
        };
        // An exit between reading the epoch and the insert is reported without this attempt,
        // which had not been sent yet: right either way.
        let epoch = self.epoch();
        if let Ok(mut map) = self.inner.in_flight.lock() {
            map.insert(key, entry);
        }
        Registered {
            exits: self.clone(),
            key,
            epoch,
        }
    }
}

// === impl Registered ===

impl Registered {
    /// Whether the app exited since this attempt began.
    pub fn app_exited_since(&self) -> bool {
        self.exits.epoch() != self.epoch
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut map) = self.exits.inner.in_flight.lock() {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reports_what_is_registered_and_bumps_the_epoch() {
        let exits = AppExits::new();
        let id = HeaderValue::from_static("req-1");
        let a = exits.register(
            &Method::GET,
            &Uri::from_static("/crash?x=secret"),
            Some(&id),
        );
        let b = exits.register(&Method::POST, &Uri::from_static("/ok"), None);
        drop(b);
        assert!(!a.app_exited_since());
        let seen = exits.app_exited();
        assert_eq!(
            seen,
            vec![InFlight {
                request_id: "req-1".into(),
                method: "GET".into(),
                path: "/crash".into()
            }]
        );
        assert!(a.app_exited_since());
        drop(a);
        assert!(exits.app_exited().is_empty());
        assert_eq!(exits.epoch(), 2);
    }
}
