//! Which failed attempts may be tried again.
//!
//! Invariant: a request whose bytes may have reached the app is retried only when repeating it
//! is safe: an idempotent method (RFC 9110 §9.2.2), a POST with `Idempotency-Key` (if
//! configured), or everything when the operator said so. A failed connect never reached the
//! app, so it is always safe. Budget and attempt limits are checked by the caller.

use http::{HeaderMap, Method, StatusCode};

use crate::cause::Cause;
use crate::config::RetryConfig;

/// What one attempt ended with, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The app answered with this status.
    Status(StatusCode),
    /// The attempt failed with this cause.
    Failed(Cause),
}

/// Whether the retry may be taken, and whether it draws on the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Do not retry.
    Stop,
    /// Retry without drawing on the budget: nothing reached the app.
    Free,
    /// Retry if the budget allows.
    Budgeted,
}

/// Whether a request may be sent twice.
pub fn is_safe_to_repeat(method: &Method, headers: &HeaderMap, cfg: &RetryConfig) -> bool {
    if cfg.retry_non_idempotent {
        return true;
    }
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    idempotent
        || (cfg.retry_post_with_idempotency_key
            && *method == Method::POST
            && headers.contains_key("idempotency-key"))
}

/// Classifies an attempt's outcome.
pub fn verdict(outcome: Outcome, safe_to_repeat: bool) -> Verdict {
    match outcome {
        Outcome::Failed(Cause::ConnectFailed | Cause::ConnectTimeout) => Verdict::Free,
        Outcome::Failed(Cause::UpstreamReset | Cause::PerTryTimeout) if safe_to_repeat => {
            Verdict::Budgeted
        }
        Outcome::Status(s)
            if safe_to_repeat
                && matches!(
                    s,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) =>
        {
            Verdict::Budgeted
        }
        _ => Verdict::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety() {
        let cfg = RetryConfig::default();
        let none = HeaderMap::new();
        let mut key = HeaderMap::new();
        key.insert("idempotency-key", http::HeaderValue::from_static("k1"));
        assert!(is_safe_to_repeat(&Method::GET, &none, &cfg));
        assert!(is_safe_to_repeat(&Method::PUT, &none, &cfg));
        assert!(!is_safe_to_repeat(&Method::POST, &none, &cfg));
        assert!(is_safe_to_repeat(&Method::POST, &key, &cfg));
        assert!(!is_safe_to_repeat(&Method::PATCH, &key, &cfg));
        let off = RetryConfig {
            retry_post_with_idempotency_key: false,
            ..RetryConfig::default()
        };
        assert!(!is_safe_to_repeat(&Method::POST, &key, &off));
    }

    #[test]
    fn verdicts() {
        let s = |c| Outcome::Status(StatusCode::from_u16(c).expect("status"));
        assert_eq!(
            verdict(Outcome::Failed(Cause::ConnectFailed), false),
            Verdict::Free
        );
        assert_eq!(
            verdict(Outcome::Failed(Cause::UpstreamReset), false),
            Verdict::Stop
        );
        assert_eq!(
            verdict(Outcome::Failed(Cause::UpstreamReset), true),
            Verdict::Budgeted
        );
        assert_eq!(verdict(s(503), true), Verdict::Budgeted);
        assert_eq!(verdict(s(503), false), Verdict::Stop);
        assert_eq!(verdict(s(500), true), Verdict::Stop);
        assert_eq!(verdict(s(200), true), Verdict::Stop);
    }
}
