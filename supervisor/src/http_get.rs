//! The smallest HTTP/1 client: one GET on a fresh connection, for the HTTP probe (is the app
//! healthy?) and for `tandem status` / `tandem health` (ask a running tandem's admin port);
//! or one POST without a body, with a bearer token, for `tandem reload`.
//!
//! The one thing to know before changing it: everything is bounded, because the far side may
//! be a hung or hostile app. The whole exchange has one deadline, the response head has a
//! size limit and the body is read up to a limit; the request says `Connection: close`, so
//! the server ends the body by closing and no keep-alive connection is left per check. Not a
//! general client: no TLS, no redirects, no chunked bodies (the admin port sends whole ones;
//! the probe reads the status line only).
use std::io;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on the status line: a server that sends more without a newline is not HTTP.
pub const MAX_STATUS_LINE_BYTES: usize = 1024;

/// One GET request.
#[derive(Debug, Clone, Copy)]
pub struct Get<'a> {
    /// A host name or IP address (an IPv6 one without brackets).
    pub host: &'a str,
    pub port: u16,
    /// The request target, `/healthz`.
    pub path: &'a str,
    /// Who asks (`tandem-probe`, `tandem-cli`): the app's access log shows it.
    pub user_agent: &'a str,
    /// Bound on the whole exchange, connecting included.
    pub timeout: Duration,
}

/// The request's method: a GET, or a POST without a body (an admin action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// How much of the response to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// The status line only (a probe needs no more).
    Status,
    /// The whole response, at most this many bytes (more is cut off).
    Body(u64),
}

/// The response: its status code and (with [`Read::Body`]) its body, lossy UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Why a GET gave no response; `addr` is `host:port` (`[v6]:port`).
#[derive(Debug, Error)]
pub enum GetError {
    /// The exchange did not finish within [`Get::timeout`].
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// No TCP connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    /// The connection broke while talking HTTP.
    #[error("HTTP exchange with {addr} failed: {source}")]
    Io { addr: String, source: io::Error },
    /// Not an HTTP response.
    #[error("invalid HTTP response from {addr}: {reason}")]
    BadResponse { addr: String, reason: &'static str },
}

/// Send `req` and read what `read` asks for, all within `req.timeout`.
pub async fn get(req: Get<'_>, read: Read) -> Result<Response, GetError> {
    send(req, Method::Get, None, read).await
}

/// [`get`] with another method, and `Authorization: Bearer <bearer>` when given.
pub async fn send(
    req: Get<'_>,
    method: Method,
    bearer: Option<&str>,
    read: Read,
) -> Result<Response, GetError> {
    tokio::time::timeout(req.timeout, exchange(req, method, bearer, read))
        .await
        .unwrap_or(Err(GetError::Timeout(req.timeout)))
}

/// `host:port`, with brackets around an IPv6 address.
pub fn display_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn exchange(
    req: Get<'_>,
    method: Method,
    bearer: Option<&str>,
    read: Read,
) -> Result<Response, GetError> {
    let addr = display_addr(req.host, req.port);
    let mut stream = TcpStream::connect((req.host, req.port))
        .await
        .map_err(|source| GetError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let io_err = |source| GetError::Io {
        addr: addr.clone(),
        source,
    };
    let bad = |reason| GetError::BadResponse {
        addr: addr.clone(),
        reason,
    };
    let (verb, length) = match method {
        Method::Get => ("GET", ""),
        Method::Post => ("POST", "Content-Length: 0\r\n"),
    };
    let auth = bearer.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{verb} {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {}\r\nAccept: */*\r\n{auth}{length}Connection: close\r\n\r\n",
        req.path, req.user_agent
    );
    stream.write_all(request.as_bytes()).await.map_err(io_err)?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') {
        if head.len() >= MAX_STATUS_LINE_BYTES {
            return Err(bad("no status line in the first 1 KiB"));
        }
        let n = stream.read(&mut buf).await.map_err(io_err)?;
        if n == 0 {
            return Err(bad("connection closed before the status line"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = parse_status_line(&head).ok_or_else(|| bad("malformed status line"))?;
    let Read::Body(max) = read else {
        return Ok(Response {
            status,
            body: String::new(),
        });
    };
    let mut raw = head;
    // The reads for the status line may have taken more than `max` already.
    raw.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    let left = max.saturating_sub(raw.len() as u64);
    (&mut stream)
        .take(left)
        .read_to_end(&mut raw)
        .await
        .map_err(io_err)?;
    let text = String::from_utf8_lossy(&raw);
    let (_, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of the response head"))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 302\r\n"), Some(302));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK\r\n"), None);
    }

    /// A server that answers one request with `response` and closes.
    async fn serve_once(response: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response).await;
            }
        });
        port
    }

    fn req(port: u16) -> Get<'static> {
        Get {
            host: "127.0.0.1",
            port,
            path: "/status",
            user_agent: "tandem-test",
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn reads_the_body_up_to_the_limit() {
        let port = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world").await;
        let r = get(req(port), Read::Body(1 << 20)).await.expect("answer");
        assert_eq!((r.status, r.body.as_str()), (200, "hello world"));
        let port = serve_once(b"HTTP/1.1 200 OK\r\n\r\nhello world").await;
        let r = get(req(port), Read::Body(24)).await.expect("answer");
        assert_eq!(r.body, "hello");
    }

    #[tokio::test]
    async fn bad_answers_and_silence_are_errors() {
        let port = serve_once(b"SSH-2.0-OpenSSH\r\n").await;
        let e = get(req(port), Read::Status).await.expect_err("not HTTP");
        assert!(matches!(e, GetError::BadResponse { .. }), "{e}");
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut r = req(silent.local_addr().expect("addr").port());
        r.timeout = Duration::from_millis(100);
        let e = get(r, Read::Status).await.expect_err("silent");
        assert!(matches!(e, GetError::Timeout(_)), "{e}");
    }
}
