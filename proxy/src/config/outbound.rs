//! Outbound services: what the app calls, by name, through a local listener tandem serves
//! (`[[outbound]]`, one table per service).
//!
//! Invariant: a config that passes [`OutboundConfig::validate`] names exactly one source of
//! endpoints, listens on a socket address, and has no zero timeout, attempt count or limit;
//! the serving code relies on it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Protocol, RetryConfig, UpstreamTlsConfig};
use crate::error::ConfigError;

/// One service the app calls.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// The service's name: metrics and span labels, the `TANDEM_OUTBOUND_<NAME>` variable.
    pub name: String,
    /// Where the app connects (`127.0.0.1:9001`); loopback unless you mean to share it.
    pub listen: String,
    /// `http` (HTTP/1.1 both sides), `h2c` (HTTP/2 prior knowledge both sides, gRPC) or `tcp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Fixed endpoints, `ip:port` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// A name whose A/AAAA records are the endpoints, with the port they listen on
    /// (`payments.service.consul:8080`); re-resolved on the records' TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// A name whose SRV records are the endpoints (`payments.service.consul`, as Consul's and
    /// Nomad's DNS serve them); re-resolved on the records' TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    /// A Nomad Connect upstream: the endpoint is `NOMAD_UPSTREAM_ADDR_<name>` from tandem's
    /// environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nomad_upstream: Option<String>,
    /// The DNS server for `dns`/`srv` (`127.0.0.1:8600` for a local Consul agent); default:
    /// the nameservers of `/etc/resolv.conf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// Re-resolve no sooner than this after an answer, even when its TTL is shorter (Consul
    /// answers with TTL 0 by default).
    #[serde(
        with = "crate::config::duration",
        default = "defaults::dns_min_refresh"
    )]
    pub dns_min_refresh: Duration,
    /// Re-resolve at least this often, even when the TTL is longer.
    #[serde(
        with = "crate::config::duration",
        default = "defaults::dns_max_refresh"
    )]
    pub dns_max_refresh: Duration,
    /// `Host` (HTTP/1.1) or `:authority` (h2c) sent to the endpoints; default: the
    /// endpoint's `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// TLS (and mTLS) to the endpoints: `ca_file` (required), `server_name` (default: the
    /// `authority`'s host, else the `dns`/`srv` name, else the first endpoint's address),
    /// `cert_file`/`key_file`, `reload_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// How an endpoint is chosen for each request or connection.
    #[serde(default)]
    pub balance: Balance,
    /// When an endpoint is taken out of the rotation.
    #[serde(default)]
    pub ejection: EjectionConfig,
    /// Limits past which requests fail fast (503 `breaker_open`).
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Time limits of the calls.
    #[serde(default)]
    pub timeouts: OutboundTimeouts,
    /// Retries, each on another endpoint when there is one (same keys as a listener's;
    /// `max_replays_after_app_exit` does not apply).
    #[serde(default)]
    pub retry: RetryConfig,
    /// gRPC: retry a call answered `RESOURCE_EXHAUSTED` (8) as well as `UNAVAILABLE` (14).
    /// Off by default: the server may be shedding load on purpose.
    #[serde(default)]
    pub retry_grpc_resource_exhausted: bool,
    /// Once the app has exited: time for the calls still in flight to finish.
    #[serde(with = "crate::config::duration", default = "defaults::drain_timeout")]
    pub drain_timeout: Duration,
}

/// A forward-proxy listener for apps that honour `HTTP_PROXY`: a request for
/// `http://payments/...` goes to the outbound service named `payments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardProxyConfig {
    /// Where the app's HTTP client connects (`127.0.0.1:9000`).
    pub listen: String,
}

impl ForwardProxyConfig {
    /// The listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| ConfigError::Invalid {
            listener: "outbound_proxy".into(),
            key: "listen",
            reason: format!("{:?} is not ip:port (e.g. 127.0.0.1:9000)", self.listen),
        })
    }
}

/// Load balancing over a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Power of two choices over peak-EWMA latency times requests in flight (linkerd's and
    /// Finagle's default): a slow endpoint gets less traffic as soon as it is slow.
    #[default]
    PeakEwma,
    /// Power of two choices over requests in flight (Envoy's `LEAST_REQUEST`).
    LeastRequests,
}

/// Outlier ejection, as Envoy's `outlier_detection` (consecutive gateway failures).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EjectionConfig {
    /// Consecutive failures (connect failed or timed out, reset, a 5xx status, a gRPC
    /// `UNAVAILABLE`) that eject an endpoint; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one of the same endpoint doubles it.
    #[serde(with = "crate::config::duration")]
    pub base_time: Duration,
    /// The longest ejection.
    #[serde(with = "crate::config::duration")]
    pub max_time: Duration,
    /// At most this share of the endpoints (percent) is ejected at once; at least one can be.
    pub max_percent: u8,
}

/// Circuit breaking, as Envoy's `circuit_breakers` thresholds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Requests (HTTP) or connections (TCP) in flight to the service at once.
    pub max_requests: usize,
    /// Requests allowed to wait for a place when `max_requests` are in flight; past it they
    /// fail at once.
    pub max_pending: usize,
}

/// Time limits of outbound calls.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundTimeouts {
    /// Time to establish a TCP connection to an endpoint.
    #[serde(with = "crate::config::duration")]
    pub connect: Duration,
    /// Time for one attempt to get response headers.
    #[serde(with = "crate::config::duration")]
    pub per_try: Duration,
    /// Time for the whole call (waiting for a place, attempts, back-off) to get response
    /// headers; a gRPC request's shorter `grpc-timeout` wins.
    #[serde(with = "crate::config::duration")]
    pub request: Duration,
    /// Pooled connections to an endpoint are closed after this long unused.
    #[serde(with = "crate::config::duration")]
    pub pool_idle: Duration,
    /// A TCP connection with no byte either way for this long is closed.
    #[serde(with = "crate::config::duration")]
    pub tcp_idle: Duration,
}

mod defaults {
    use std::time::Duration;

    pub fn dns_min_refresh() -> Duration {
        Duration::from_secs(1)
    }
    pub fn dns_max_refresh() -> Duration {
        Duration::from_secs(30)
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_time: Duration::from_secs(30),
            max_time: Duration::from_secs(300),
            max_percent: 50,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            max_requests: 1024,
            max_pending: 1024,
        }
    }
}

impl Default for OutboundTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            per_try: Duration::from_secs(15),
            request: Duration::from_secs(30),
            pool_idle: Duration::from_secs(20),
            tcp_idle: Duration::from_secs(3600),
        }
    }
}

/// Where a service's endpoints come from (exactly one source per service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Fixed addresses.
    Static(Vec<SocketAddr>),
    /// A/AAAA records of a name, with the port.
    Dns { name: String, port: u16 },
    /// SRV records of a name.
    Srv(String),
}

// === impl OutboundConfig ===

impl OutboundConfig {
    fn invalid(&self, key: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            listener: format!("outbound {}", self.name),
            key,
            reason: reason.into(),
        }
    }

    /// Checks every key; the error names the service and the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.invalid(
                "name",
                format!("{:?}: give letters, digits, - and _ only", self.name),
            ));
        }
        self.listen_addr()?;
        let sources = usize::from(!self.endpoints.is_empty())
            + usize::from(self.dns.is_some())
            + usize::from(self.srv.is_some())
            + usize::from(self.nomad_upstream.is_some());
        if sources != 1 {
            return Err(self.invalid(
                "endpoints",
                "give exactly one of endpoints, dns, srv or nomad_upstream",
            ));
        }
        self.source_with(|_| None)?;
        if let Some(r) = &self.resolver {
            parse_resolver(r).map_err(|reason| self.invalid("resolver", reason))?;
        }
        if self.dns_min_refresh.is_zero() || self.dns_max_refresh < self.dns_min_refresh {
            return Err(self.invalid(
                "dns_max_refresh",
                "dns_min_refresh must be above zero and dns_max_refresh at least as long",
            ));
        }
        if let Some(a) = &self.authority {
            if a.parse::<http::uri::Authority>().is_err() {
                return Err(self.invalid("authority", format!("{a:?} is not a host[:port]")));
            }
        }
        let e = &self.ejection;
        if e.consecutive_failures > 0 && (e.base_time.is_zero() || e.max_time < e.base_time) {
            return Err(self.invalid(
                "ejection.base_time",
                "must be above zero, and ejection.max_time at least as long",
            ));
        }
        if e.max_percent > 100 {
            return Err(self.invalid("ejection.max_percent", "must be 0-100"));
        }
        if self.breaker.max_requests == 0 {
            return Err(self.invalid("breaker.max_requests", "must be at least 1"));
        }
        let t = &self.timeouts;
        for (key, d) in [
            ("timeouts.connect", t.connect),
            ("timeouts.per_try", t.per_try),
            ("timeouts.request", t.request),
            ("timeouts.pool_idle", t.pool_idle),
            ("timeouts.tcp_idle", t.tcp_idle),
            ("drain_timeout", self.drain_timeout),
        ] {
            if d.is_zero() {
                return Err(self.invalid(key, "must be above zero"));
            }
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(self.invalid("retry.max_attempts", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&r.budget_ratio) {
            return Err(self.invalid("retry.budget_ratio", "must be between 0 and 1"));
        }
        Ok(())
    }

    /// The listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            self.invalid(
                "listen",
                format!("{:?} is not ip:port (e.g. 127.0.0.1:9001)", self.listen),
            )
        })
    }

    /// The endpoints' source; `env` reads `NOMAD_UPSTREAM_ADDR_*`.
    pub(crate) fn source_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Source, ConfigError> {
        if !self.endpoints.is_empty() {
            let addrs = self
                .endpoints
                .iter()
                .map(|e| {
                    e.parse::<SocketAddr>().map_err(|_| {
                        self.invalid(
                            "endpoints",
                            format!("{e:?} is not ip:port (names go in `dns` or `srv`)"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Source::Static(addrs));
        }
        if let Some(d) = &self.dns {
            let bad = || {
                self.invalid(
                    "dns",
                    format!("{d:?}: give name:port, e.g. payments.service.consul:8080"),
                )
            };
            let (name, port) = d.rsplit_once(':').ok_or_else(bad)?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(bad)?;
            if name.is_empty() {
                return Err(bad());
            }
            return Ok(Source::Dns {
                name: name.to_string(),
                port,
            });
        }
        if let Some(s) = &self.srv {
            if s.is_empty() || s.contains(':') {
                return Err(self.invalid(
                    "srv",
                    format!("{s:?}: give a name, e.g. payments.service.consul"),
                ));
            }
            return Ok(Source::Srv(s.clone()));
        }
        if let Some(n) = &self.nomad_upstream {
            let var = format!("NOMAD_UPSTREAM_ADDR_{n}");
            return match env(&var) {
                // Checked without the environment: the variable is read when tandem starts.
                None if n.is_empty() => Err(self.invalid("nomad_upstream", "empty name")),
                None => Ok(Source::Static(Vec::new())),
                Some(v) => v
                    .parse::<SocketAddr>()
                    .map(|a| Source::Static(vec![a]))
                    .map_err(|_| {
                        self.invalid("nomad_upstream", format!("{var}={v:?} is not ip:port"))
                    }),
            };
        }
        Err(self.invalid("endpoints", "no source of endpoints"))
    }

    /// The name the endpoints' certificates are checked against when `tls.server_name` is
    /// not set.
    pub(crate) fn default_server_name(&self) -> String {
        if let Some(a) = &self.authority {
            return crate::config::host_of(a).to_string();
        }
        if let Some(d) = &self.dns {
            return d
                .rsplit_once(':')
                .map_or(d.as_str(), |(n, _)| n)
                .to_string();
        }
        if let Some(s) = &self.srv {
            return s.clone();
        }
        self.endpoints
            .first()
            .map(|e| crate::config::host_of(e).to_string())
            .unwrap_or_else(|| "localhost".to_string())
    }

    /// The endpoints' source as tandem starts: `NOMAD_UPSTREAM_ADDR_*` must be set.
    pub(crate) fn source(&self) -> Result<Source, ConfigError> {
        if let Some(n) = &self.nomad_upstream {
            let var = format!("NOMAD_UPSTREAM_ADDR_{n}");
            if std::env::var_os(&var).is_none() {
                return Err(self.invalid(
                    "nomad_upstream",
                    format!(
                        "{var} is not set (is {n:?} an upstream of this task's Connect sidecar?)"
                    ),
                ));
            }
        }
        self.source_with(|v| std::env::var(v).ok())
    }
}

/// A resolver address: `ip` (port 53) or `ip:port`.
pub(crate) fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not ip or ip:port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<OutboundConfig, String> {
        toml::from_str::<OutboundConfig>(&format!(
            "name = \"payments\"\nlisten = \"127.0.0.1:9001\"\n{extra}"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn one_source_exactly() {
        let ok = cfg("endpoints = [\"127.0.0.1:8001\", \"[::1]:8002\"]").expect("parses");
        ok.validate().expect("valid");
        assert_eq!(
            ok.source().expect("source"),
            Source::Static(vec![
                "127.0.0.1:8001".parse().expect("addr"),
                "[::1]:8002".parse().expect("addr")
            ])
        );
        let none = cfg("").expect("parses");
        assert!(none
            .validate()
            .expect_err("no source")
            .to_string()
            .contains("exactly one of"));
        let two = cfg("endpoints = [\"127.0.0.1:1\"]\nsrv = \"x.service.consul\"").expect("parses");
        assert!(two.validate().is_err());
    }

    #[test]
    fn sources_parse_or_name_the_problem() {
        let dns = cfg("dns = \"payments.service.consul:8080\"").expect("parses");
        assert_eq!(
            dns.source().expect("source"),
            Source::Dns {
                name: "payments.service.consul".into(),
                port: 8080
            }
        );
        for (extra, key) in [
            ("dns = \"payments.service.consul\"", "dns"),
            ("dns = \":80\"", "dns"),
            ("srv = \"x:1\"", "srv"),
            ("endpoints = [\"payments:80\"]", "endpoints"),
            (
                "endpoints = [\"127.0.0.1:1\"]\nresolver = \"nowhere\"",
                "resolver",
            ),
            (
                "endpoints = [\"127.0.0.1:1\"]\nbreaker.max_requests = 0",
                "breaker.max_requests",
            ),
            (
                "endpoints = [\"127.0.0.1:1\"]\ntimeouts.per_try = \"0s\"",
                "timeouts.per_try",
            ),
            (
                "endpoints = [\"127.0.0.1:1\"]\nejection.max_percent = 101",
                "ejection.max_percent",
            ),
        ] {
            let e = cfg(extra).expect("parses").validate().expect_err(extra);
            assert!(e.to_string().contains(key), "{extra}: {e}");
            assert!(e.to_string().contains("outbound payments"), "{e}");
        }
        let bad_listen = OutboundConfig {
            listen: "9001".into(),
            ..cfg("srv = \"a.b\"").expect("parses")
        };
        assert!(bad_listen
            .validate()
            .expect_err("listen")
            .to_string()
            .contains("listen"));
        assert!(
            cfg("endpoints = []\nbogus = 1").is_err(),
            "unknown keys refused"
        );
    }

    #[test]
    fn nomad_upstream_reads_the_variable() {
        let c = cfg("nomad_upstream = \"payments\"").expect("parses");
        c.validate()
            .expect("valid without the variable (read at start)");
        let env =
            |v: &str| (v == "NOMAD_UPSTREAM_ADDR_payments").then(|| "127.0.0.1:21000".to_string());
        assert_eq!(
            c.source_with(env).expect("source"),
            Source::Static(vec!["127.0.0.1:21000".parse().expect("addr")])
        );
        let bad = |_: &str| Some("nope".to_string());
        assert!(c.source_with(bad).is_err());
        assert_eq!(
            parse_resolver("127.0.0.1").expect("ip"),
            "127.0.0.1:53".parse().expect("addr")
        );
    }
}
