//! Ask a running tandem's admin port one question: `tandem status` and `tandem health`; or
//! ask it to act: `tandem reload` (a POST, with the admin token).
//!
//! They must work in `FROM scratch` images with no curl, and answer quickly or count as
//! failed (a `HEALTHCHECK` runs them): one GET through [`crate::http_get`] (bounded in time
//! and size) on a single-threaded runtime that lives for this one call.
use std::net::SocketAddr;
use std::time::Duration;

use crate::http_get::{self, Get, GetError, Method, Read};

/// Bound on the whole exchange: a health check must answer quickly or count as failed.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on an action: a reload reads files and binds ports (the admin port waits 30 s).
const ACTION_TIMEOUT: Duration = Duration::from_secs(35);
/// Bound on the response read: `/status` is small.
const MAX_RESPONSE: u64 = 1 << 20;

/// Why the question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// `--admin` is not an address.
    #[error("admin address {0:?} is not IP:PORT")]
    Address(String),
    /// The one-call runtime could not start.
    #[error("cannot start a runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The GET failed (refused, timed out, a bad response).
    #[error(transparent)]
    Get(#[from] GetError),
}

/// GET `path` from `addr`; returns the status code and body.
pub fn get(addr: &str, path: &str) -> Result<(u16, String), AskError> {
    ask(addr, path, Method::Get, None, TIMEOUT)
}

/// GET `path` on `addr` with `token` as a bearer token (an admin port with `token_file`).
pub fn get_with_token(
    addr: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), AskError> {
    ask(addr, path, Method::Get, token, TIMEOUT)
}

/// POST (no body) to `path` on `addr`, with `token` as a bearer token; returns the status
/// code and body.
pub fn post(addr: &str, path: &str, token: Option<&str>) -> Result<(u16, String), AskError> {
    ask(addr, path, Method::Post, token, ACTION_TIMEOUT)
}

fn ask(
    addr: &str,
    path: &str,
    method: Method,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), AskError> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|_| AskError::Address(addr.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AskError::Runtime)?;
    let host = sock.ip().to_string();
    let req = Get {
        host: &host,
        port: sock.port(),
        path,
        user_agent: "tandem-cli",
        timeout,
    };
    let r = runtime.block_on(http_get::send(
        req,
        method,
        bearer,
        Read::Body(MAX_RESPONSE),
    ))?;
    Ok((r.status, r.body))
}
