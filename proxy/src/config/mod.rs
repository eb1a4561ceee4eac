//! Listener configuration: what the operator writes (TOML or `--proxy LISTEN=UPSTREAM`).
//!
//! Invariant: every field has a default that fits a small host, unknown keys are errors, and
//! [`ListenerConfig::validate`] runs before any port is bound, so the serving code never sees
//! a zero timeout, a ratio outside 0..=1 or an attempt count of zero.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod check;
pub mod duration;
pub(crate) mod jwks_url;
pub(crate) mod outbound;
pub(crate) mod spec;
pub(crate) mod upstream;

pub use outbound::{
    Balance, BreakerConfig, EjectionConfig, ForwardProxyConfig, OutboundConfig, OutboundTimeouts,
};
pub(crate) use upstream::host_of;

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
    #[serde(default = "defaults::hold_timeout", with = "crate::config::duration")]
    pub hold_timeout: Duration,
    /// Retry policy and budget.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Size and concurrency limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How long in-flight requests may run once draining has begun.
    #[serde(default = "defaults::drain_timeout", with = "crate::config::duration")]
    pub drain_timeout: Duration,
    /// TLS termination (and mTLS); absent: cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// TLS origination to the app (tandem is the TLS client); absent: cleartext to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// Authentication of requests (JWT, API key or basic); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Per-client rate limit; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Keep the case of HTTP/1 header names as the client and the app wrote them (both
    /// directions). Off by default, as in Envoy and HAProxy: names are case-insensitive
    /// (RFC 9110 §5.1) and HTTP/2 clients send them lowercase anyway. On for a legacy app or
    /// client that matches names case-sensitively, at the cost of a second header map per
    /// request and per response.
    #[serde(default)]
    pub preserve_header_case: bool,
    /// How many proxies in front of this listener are trusted to write `X-Forwarded-*`
    /// (Envoy's `xff_num_trusted_hops`). 0: the client's `X-Forwarded-For`, `-Proto` and
    /// `-Host` are replaced by tandem's own values. N: the last N entries of the client's
    /// `X-Forwarded-For` (those the trusted proxies appended) are kept and the peer appended;
    /// the peer's `X-Forwarded-Proto` and `-Host` are kept.
    #[serde(default)]
    pub trusted_hops: u32,
    /// Forward an HTTP/1.1 `CONNECT` to the app and, when it answers 2xx, join the client's
    /// and the app's connections (as for a WebSocket's 101). Off by default: tandem fronts one
    /// app and is not a forward proxy, so `CONNECT` is answered 405 with `Allow`. `http`
    /// listeners only; an HTTP/2 `CONNECT` is always 405.
    #[serde(default)]
    pub allow_connect: bool,
}

/// TLS termination on the listener. The files are read at bind time, polled every
/// `reload_interval` and re-read on [`crate::Serving::reload_tls`]; a bad new file keeps the old.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are checked for change (Vault agent, Nomad templates rotate in place).
    #[serde(
        default = "defaults::reload_interval",
        with = "crate::config::duration"
    )]
    pub reload_interval: Duration,
    /// Client certificates (mTLS); absent: none asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthConfig>,
}

/// TLS from tandem to the app: the app's certificate is verified against `ca_file` (there is
/// no way to skip verification), and `cert_file`/`key_file` are presented for mTLS.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of the CAs the app's certificate must chain to (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Name sent in SNI and checked against the app's certificate; default: the host part
    /// of `upstream` (an IP address is checked against the certificate's IP SANs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM client certificate chain presented to the app (mTLS); needs `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// How often the files are checked for new contents (a renewed client certificate or CA
    /// bundle is used for the next connections; a bad new file keeps the old ones).
    #[serde(
        with = "crate::config::duration",
        default = "defaults::reload_interval"
    )]
    pub reload_interval: Duration,
}

/// mTLS: every client presents a certificate that chains to `ca`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: PathBuf,
    /// SANs allowed to connect (`dns:name`, `uri:spiffe://td/ns/x/sa/y`, or a bare value
    /// matched against both); empty: any certificate from `ca`.
    #[serde(default)]
    pub allowed_sans: Vec<String>,
    /// Header carrying the verified identity to the app (Envoy's format:
    /// `Hash=..;Subject="..";URI=..;DNS=..`). Any copy sent by a client is removed first.
    #[serde(default = "defaults::identity_header")]
    pub identity_header: String,
}

/// Request authentication: exactly one of `jwt`, `api_key`, `basic`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Path prefixes that need no credentials (segment-wise: `/health` covers `/health/x`,
    /// not `/healthz`).
    #[serde(default)]
    pub exempt_paths: Vec<String>,
    /// Bearer JWTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Static API keys in a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyConfig>,
    /// HTTP basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuthConfig>,
}

/// JWT validation. Keys come from a JWKS file (re-read when it changes) or a JWKS URL
/// (fetched, cached, refreshed; refetched on an unknown `kid` at most once per
/// `min_refetch_interval`). Exactly one of `jwks_file`, `jwks_url`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// JWKS (RFC 7517) file: RSA, EC P-256, OKP Ed25519 and `oct` (HS256) keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL (`http://` or `https://`; `user:password@` in it is sent as basic auth and
    /// never printed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM CA bundle for an `https` `jwks_url`; default: the system bundle (`SSL_CERT_FILE`,
    /// else `/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_file: Option<PathBuf>,
    /// How often `jwks_file` is checked for change.
    #[serde(
        default = "defaults::reload_interval",
        with = "crate::config::duration"
    )]
    pub reload_interval: Duration,
    /// How often `jwks_url` is fetched again; a `Cache-Control: max-age` from the server
    /// shortens it (never below `min_refetch_interval`).
    #[serde(default = "defaults::jwks_refresh", with = "crate::config::duration")]
    pub refresh_interval: Duration,
    /// Fetches of `jwks_url` (unknown `kid`, failed refresh) start at most this often.
    #[serde(
        default = "defaults::jwks_min_refetch",
        with = "crate::config::duration"
    )]
    pub min_refetch_interval: Duration,
    /// Bound on one fetch of `jwks_url` (connect, TLS, response).
    #[serde(
        default = "defaults::jwks_fetch_timeout",
        with = "crate::config::duration"
    )]
    pub fetch_timeout: Duration,
    /// Accepted `iss` values; empty: not checked.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted `aud` values (any one); empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "defaults::leeway", with = "crate::config::duration")]
    pub leeway: Duration,
    /// Claims a valid token must carry, else 403.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claims forwarded to the app: claim name -> header name. Client copies are removed.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

/// Static API keys: the client sends the key in `header`; the file holds SHA-256 hashes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Header carrying the key.
    #[serde(default = "defaults::api_key_header")]
    pub header: String,
    /// One key per line as `sha256:<hex>` (or `name sha256:<hex>`); `#` starts a comment.
    pub keys_file: PathBuf,
}

/// HTTP basic auth against a file of hashed passwords.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// One `user:sha256:<hex>` per line; `#` starts a comment.
    pub users_file: PathBuf,
}

/// Token bucket per client.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size: the burst a client may send at once.
    pub burst: u32,
    /// `client_ip` (the TCP peer, never X-Forwarded-For) or `claim:<name>` (from the JWT;
    /// requests without it fall back to the client IP).
    #[serde(default = "defaults::rate_key")]
    pub key: String,
    /// Clients tracked at once; past it, full buckets are forgotten first.
    #[serde(default = "defaults::max_clients")]
    pub max_clients: usize,
}

/// Timeouts. Each one has a distinct cause in logs and metrics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Time for a client to send a full request head (slowloris guard), counted from the
    /// connection's start or the first byte of the next request, not while keep-alive idles.
    /// Past it the connection is closed. HTTP/2 (`h2c`, or TLS with ALPN `h2`): time for the
    /// connection preface and the first frame after it.
    #[serde(with = "crate::config::duration")]
    pub header_read: Duration,
    /// Time to establish a TCP connection to the app.
    #[serde(with = "crate::config::duration")]
    pub connect: Duration,
    /// Time for one attempt to get response headers from the app.
    #[serde(with = "crate::config::duration")]
    pub per_try: Duration,
    /// Time for the whole request (holds, attempts, backoff) to get response headers.
    #[serde(with = "crate::config::duration")]
    pub request: Duration,
    /// A client keep-alive connection with no request in flight is closed after this long.
    /// HTTP only (TCP mode: `tcp_idle`).
    #[serde(with = "crate::config::duration")]
    pub idle: Duration,
    /// Connections to the app (pooled, or bound to an HTTP/1.1 client connection) are not
    /// used again after this long unused. Keep it below the app's own keep-alive timeout, or
    /// reused connections die mid-request (istio#55138).
    #[serde(with = "crate::config::duration")]
    pub pool_idle: Duration,
    /// A write to the client that makes no progress for this long (the client stopped
    /// reading: its socket buffer is full, or an HTTP/2 stream's window stays closed) closes
    /// the connection, and with it the app's connection (counted as `write_timeout`). HTTP
    /// listeners, upgrades included.
    #[serde(with = "crate::config::duration")]
    pub write: Duration,
    /// A TCP-mode connection with no byte in either direction for this long is closed.
    #[serde(with = "crate::config::duration")]
    pub tcp_idle: Duration,
}

/// When and how often a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request, the first included (1 disables retries).
    pub max_attempts: u32,
    /// First backoff; each next one doubles, with full jitter.
    #[serde(with = "crate::config::duration")]
    pub backoff_base: Duration,
    /// Largest backoff.
    #[serde(with = "crate::config::duration")]
    pub backoff_max: Duration,
    /// Retries allowed as a fraction of recent requests (linkerd: 0.2).
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the traffic (linkerd: 10).
    pub budget_min_per_second: u32,
    /// How long a request counts towards the budget.
    #[serde(with = "crate::config::duration")]
    pub budget_ttl: Duration,
    /// Request bodies up to this size are kept for replay; larger ones get one attempt.
    pub max_replay_body_bytes: usize,
    /// Retry a POST carrying an `Idempotency-Key` header as if it were idempotent.
    pub retry_post_with_idempotency_key: bool,
    /// Retry any method on a retryable status or reset (unsafe for most apps).
    pub retry_non_idempotent: bool,
    /// How often a request that was in flight when the app exited is sent again to the next
    /// instance (if it may be retried at all); at the next exit it gets a 502
    /// (`poison_request`): one bad request must not crash the app once per attempt. 0: never
    /// replayed after an app exit.
    pub max_replays_after_app_exit: u32,
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
    /// Client connections open at once on this listener; past it, a new connection is
    /// accepted and closed at once (counted in `tandem_proxy_connections_overflow_total`).
    /// `None`: derived from the fd limit, `(RLIMIT_NOFILE soft - 64) / (2 × listeners)`, so
    /// tandem always keeps fds to respawn the app and answer its admin port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn hold_timeout() -> Duration {
        Duration::from_secs(10)
    }

    pub(super) fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }

    pub(super) fn reload_interval() -> Duration {
        Duration::from_secs(5)
    }

    pub(super) fn jwks_refresh() -> Duration {
        Duration::from_secs(300)
    }

    pub(super) fn jwks_min_refetch() -> Duration {
        Duration::from_secs(30)
    }

    pub(super) fn jwks_fetch_timeout() -> Duration {
        Duration::from_secs(5)
    }

    pub(super) fn leeway() -> Duration {
        Duration::from_secs(30)
    }

    pub(super) fn identity_header() -> String {
        "x-forwarded-client-cert".into()
    }

    pub(super) fn api_key_header() -> String {
        "x-api-key".into()
    }

    pub(super) fn rate_key() -> String {
        "client_ip".into()
    }

    pub(super) fn max_clients() -> usize {
        10_000
    }
}

// === impl ListenerConfig ===

/// A listener's config with what binding parsed out of it, so nothing downstream parses it
/// again (or falls back when it cannot).
#[derive(Debug, Clone)]
pub struct CheckedListener {
    /// The config as written.
    pub cfg: ListenerConfig,
    /// `upstream`, parsed ([`ListenerConfig::upstream_authority`]).
    pub upstream: http::uri::Authority,
}

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
            tls: None,
            upstream_tls: None,
            auth: None,
            rate_limit: None,
            preserve_header_case: false,
            trusted_hops: 0,
            allow_connect: false,
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
}

// === impl JwtConfig ===

impl JwtConfig {
    /// Keys from a JWKS file, every other field at its default.
    pub fn from_file(jwks_file: impl Into<PathBuf>) -> Self {
        Self {
            jwks_file: Some(jwks_file.into()),
            ..Self::from_url_or_file()
        }
    }

    /// Keys from a JWKS URL, every other field at its default.
    pub fn from_url(jwks_url: impl Into<String>) -> Self {
        Self {
            jwks_url: Some(jwks_url.into()),
            ..Self::from_url_or_file()
        }
    }

    fn from_url_or_file() -> Self {
        Self {
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            reload_interval: defaults::reload_interval(),
            refresh_interval: defaults::jwks_refresh(),
            min_refetch_interval: defaults::jwks_min_refetch(),
            fetch_timeout: defaults::jwks_fetch_timeout(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: defaults::leeway(),
            required_claims: Vec::new(),
            forward_claims: BTreeMap::new(),
        }
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
            write: Duration::from_secs(60),
            // Database pools keep connections idle for long; an hour still frees what a
            // vanished client left open.
            tcp_idle: Duration::from_secs(3600),
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
            max_replays_after_app_exit: 1,
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
            max_connections: None,
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
    fn the_upstream_is_parsed_once_and_never_replaced() {
        let l = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), "app:3000", Protocol::Http);
        assert_eq!(l.upstream_authority().unwrap().as_str(), "app:3000");
        for bad in ["", "app", "http://app:3000", "app:0", "a b:80"] {
            let l = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), bad, Protocol::Http);
            let e = l.upstream_authority().unwrap_err().to_string();
            assert!(e.contains("upstream"), "{bad:?}: {e}");
        }
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
        l.hold_timeout = defaults::hold_timeout();
        l.allow_connect = true;
        assert!(l.validate().is_ok());
        l.protocol = Protocol::H2c;
        let e = l.validate().expect_err("no tunnel on h2c").to_string();
        assert!(e.contains("allow_connect"), "{e}");
    }
}
