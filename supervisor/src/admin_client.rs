//! The smallest HTTP client that can ask a running tandem's admin port one question.
//!
//! Used by `tandem status` and `tandem health`, which must work in `FROM scratch` images with
//! no curl: blocking std sockets, one HTTP/1.0 GET, bounded time and size, no runtime.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// Bound on the whole exchange: a health check must answer quickly or count as failed.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the response read: `/status` is small.
const MAX_RESPONSE: u64 = 1 << 20;

/// GET `path` from `addr`; returns the status code and body.
pub fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|_| format!("admin address {addr:?} is not IP:PORT"))?;
    let mut stream = TcpStream::connect_timeout(&sock, TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).ok();
    stream.set_write_timeout(Some(TIMEOUT)).ok();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: tandem-cli\r\n\r\n"
    )
    .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| format!("no answer from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed response from {addr}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            format!(
                "malformed status line from {addr}: {:?}",
                head.lines().next().unwrap_or("")
            )
        })?;
    Ok((code, body.to_string()))
}
