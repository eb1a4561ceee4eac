//! Listener configuration: what the operator writes (TOML or `--proxy LISTEN=UPSTREAM`).
//!
//! Invariant: every field has a default that fits a small host, unknown keys are errors, and
//! [`ListenerConfig::validate`] runs before any port is bound, so the serving code never sees
//! a zero timeout, a ratio outside 0..=1 or an attempt count of zero.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The protocol a listener speaks, declared in config and never sniffed: sniffing stalls on
/// server-speaks-first protocols (linkerd2#5922).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 on both sides, upgrades (WebSocket) passed through.
    #[default]
    Http,
    /// HTTP/2 with prior knowledge (cleartext) on both sides, e.g. gRPC.
    H2c,
    /// Raw bytes: accept, connect, copy both ways.
    Tcp,
}

/// One inbound listener in front of one app port.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in metrics labels and access-log records; defaults to the listen port.
    #[serde(default)]
    pub name: String,
    /// Address tandem listens on.
    pub listen: SocketAddr,
    /// The app's address (host:port; a name is resolved on each new connection).
    pub upstream: String,
    /// Declared protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Timeouts, each mapped to its own status and log cause.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// How long a request waits for the app to become ready before a 503.
    #[serde(default = "defaults::hold_timeout", with = "humantime_serde")]
    pub hold_timeout: Duration,
    /// Retry policy and budget.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Size and concurrency limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How long in-flight requests may run once draining has begun.
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

/// Timeouts. Each one has a distinct cause in logs and metrics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Time for a client to send a full request head (slowloris guard), counted from the
    /// connection's start or the first byte of the next request, not while keep-alive idles.
    /// Past it the connection is closed. HTTP/1 only.
    #[serde(with = "humantime_serde")]
    pub header_read: Duration,
    /// Time to establish a TCP connection to the app.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Time for one attempt to get response headers from the app.
    #[serde(with = "humantime_serde")]
    pub per_try: Duration,
    /// Time for the whole request (holds, attempts, backoff) to get response headers.
    #[serde(with = "humantime_serde")]
    pub request: Duration,
    /// A client keep-alive connection with no request in flight is closed after this long.
    /// HTTP only: a TCP-mode connection is never cut for idling (database pools idle).
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Pooled connections to the app are dropped after this long unused. Keep it below the
    /// app's own keep-alive timeout, or reused connections die mid-request (istio#55138).
    #[serde(with = "humantime_serde")]
    pub pool_idle: Duration,
}

/// When and how often a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request, the first included (1 disables retries).
    pub max_attempts: u32,
    /// First backoff; each next one doubles, with full jitter.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Largest backoff.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Retries allowed as a fraction of recent requests (linkerd: 0.2).
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the traffic (linkerd: 10).
    pub budget_min_per_second: u32,
    /// How long a request counts towards the budget.
    #[serde(with = "humantime_serde")]
    pub budget_ttl: Duration,
    /// Request bodies up to this size are kept for replay; larger ones get one attempt.
    pub max_replay_body_bytes: usize,
    /// Retry a POST carrying an `Idempotency-Key` header as if it were idempotent.
    pub retry_post_with_idempotency_key: bool,
    /// Retry any method on a retryable status or reset (unsafe for most apps).
    pub retry_non_idempotent: bool,
}

/// Limits. Each one, when hit, answers with its own status and counts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests in flight on this listener; past it, 503 (shed).
    pub max_concurrent: usize,
    /// Total size of request header names and values; past it, 431.
    pub max_header_bytes: usize,
    /// Number of request headers; past it, 431.
    pub max_header_count: usize,
    /// Request body size; past it, 413. `None`: unlimited.
    pub max_body_bytes: Option<u64>,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn hold_timeout() -> Duration {
        Duration::from_secs(10)
    }

    pub(super) fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

// === impl ListenerConfig ===

impl ListenerConfig {
    /// A listener with every optional field at its default.
    pub fn new(listen: SocketAddr, upstream: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            name: String::new(),
            listen,
            upstream: upstream.into(),
            protocol,
            timeouts: TimeoutConfig::default(),
            hold_timeout: defaults::hold_timeout(),
            retry: RetryConfig::default(),
            limits: LimitsConfig::default(),
            drain_timeout: defaults::drain_timeout(),
        }
    }

    /// The name in metrics and logs: the configured one, else `port-<listen port>`.
    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            format!("port-{}", self.listen.port())
        } else {
            self.name.clone()
        }
    }

    /// Checks every value once, before binding; errors name the listener and the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = self.display_name();
        let bad = |key: &'static str, reason: String| ConfigError::Invalid {
            listener: name.clone(),
            key,
            reason,
        };
        crate::spec::check_upstream(&self.upstream).map_err(|e| bad("upstream", e.to_string()))?;
        let t = &self.timeouts;
        for (key, d) in [
            ("timeouts.header_read", t.header_read),
            ("timeouts.connect", t.connect),
            ("timeouts.per_try", t.per_try),
            ("timeouts.request", t.request),
            ("timeouts.idle", t.idle),
            ("timeouts.pool_idle", t.pool_idle),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be greater than zero".into()));
            }
        }
        if self.hold_timeout >= t.request {
            // Otherwise a held request times out as 504 before it can be answered 503.
            return Err(bad(
                "hold_timeout",
                "must be shorter than timeouts.request".into(),
            ));
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(bad("retry.max_attempts", "must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&r.budget_ratio) || r.budget_ratio.is_nan() {
            return Err(bad("retry.budget_ratio", "must be between 0 and 1".into()));
        }
        if r.budget_ttl < Duration::from_secs(1) || r.budget_ttl > Duration::from_secs(60) {
            return Err(bad("retry.budget_ttl", "must be between 1s and 60s".into()));
        }
        if r.backoff_base > r.backoff_max {
            return Err(bad(
                "retry.backoff_base",
                "must not exceed retry.backoff_max".into(),
            ));
        }
        let l = &self.limits;
        if l.max_concurrent == 0 {
            return Err(bad("limits.max_concurrent", "must be at least 1".into()));
        }
        if l.max_header_count == 0 || l.max_header_bytes == 0 {
            return Err(bad(
                "limits.max_header_bytes",
                "header limits must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

// === impl TimeoutConfig ===

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            connect: Duration::from_secs(1),
            per_try: Duration::from_secs(15),
            request: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            // Below the 5 s keep-alive of Node and most app servers.
            pool_idle: Duration::from_secs(4),
        }
    }
}

// === impl RetryConfig ===

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            budget_ttl: Duration::from_secs(10),
            max_replay_body_bytes: 64 * 1024,
            retry_post_with_idempotency_key: true,
            retry_non_idempotent: false,
        }
    }
}

// === impl LimitsConfig ===

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 1024,
            max_header_bytes: 32 * 1024,
            max_header_count: 100,
            max_body_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        listener: Vec<ListenerConfig>,
    }

    #[test]
    fn toml_with_defaults_and_durations() {
        let f: File = toml::from_str(
            r#"
            [[listener]]
            name = "web"
            listen = "0.0.0.0:8080"
            upstream = "127.0.0.1:3000"
            protocol = "h2c"
            hold_timeout = "2s"
            [listener.timeouts]
            per_try = "250ms"
            [listener.retry]
            max_attempts = 5
            "#,
        )
        .expect("valid config");
        let l = &f.listener[0];
        assert_eq!(l.protocol, Protocol::H2c);
        assert_eq!(l.hold_timeout, Duration::from_secs(2));
        assert_eq!(l.timeouts.per_try, Duration::from_millis(250));
        assert_eq!(l.timeouts.connect, Duration::from_secs(1));
        assert_eq!(l.retry.max_attempts, 5);
        assert!(l.validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let r: Result<File, _> = toml::from_str(
            r#"
            [[listener]]
            listen = "0.0.0.0:8080"
            upstream = "127.0.0.1:3000"
            retries = 3
            "#,
        );
        assert!(r.is_err());
    }

    #[test]
    fn validate_names_the_key() {
        let mut l = ListenerConfig::new(
            "127.0.0.1:8080".parse().expect("addr"),
            "127.0.0.1:3000",
            Protocol::Http,
        );
        l.retry.budget_ratio = 1.5;
        let e = l.validate().expect_err("ratio out of range").to_string();
        assert!(
            e.contains("retry.budget_ratio") && e.contains("port-8080"),
            "{e}"
        );
        l.retry.budget_ratio = 0.2;
        l.hold_timeout = l.timeouts.request;
        let e = l
            .validate()
            .expect_err("hold not below request")
            .to_string();
        assert!(e.contains("hold_timeout"), "{e}");
    }
}
