//! Just enough HTTP/1.1 for the example app: read one request head and a `Content-Length`
//! body, write one response. Keep-alive is supported because proxies pool connections.
//!
//! Invariant: every read is bounded (head size, header count, body size), so a client cannot
//! make the app buffer without limit; a violation becomes an error response, never a panic.

use std::io::{self, BufRead, Read, Write};

/// Longest request head (request line plus headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers accepted in one request.
pub const MAX_HEADERS: usize = 100;
/// Largest request body accepted (by `/echo`).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// The W3C `traceparent` header, when sent (logged, so an instrumented app's trace id
    /// shows up in its logs).
    pub traceparent: Option<String>,
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection before sending a request: the normal end of keep-alive.
    Closed,
    /// The read timed out with no request in progress.
    Idle,
    /// A malformed or oversized request: answer with this status and close.
    Bad(u16, &'static str),
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadError::Idle,
            _ => ReadError::Io(e),
        }
    }
}

/// Reads one request head and body from `reader`.
pub fn read_request(reader: &mut impl BufRead) -> Result<Request, ReadError> {
    let mut head_bytes = 0usize;
    let request_line = read_line(reader, &mut head_bytes)?.ok_or(ReadError::Closed)?;
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(505, "only HTTP/1.x is supported"));
    }
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length = 0usize;
    let mut traceparent = None;
    for _ in 0..=MAX_HEADERS {
        let line = read_line(reader, &mut head_bytes)?.ok_or(ReadError::Bad(
            400,
            "connection closed inside the request head",
        ))?;
        if line.is_empty() {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), q.to_string()),
                None => (target.to_string(), String::new()),
            };
            if content_length > MAX_BODY_BYTES {
                return Err(ReadError::Bad(413, "request body too large"));
            }
            let mut body = vec![0u8; content_length];
            reader.read_exact(&mut body).map_err(ReadError::Io)?;
            return Ok(Request {
                method: method.to_string(),
                path,
                query,
                body,
                keep_alive,
                traceparent,
            });
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad(400, "malformed header line"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = value
                    .parse()
                    .map_err(|_| ReadError::Bad(400, "invalid content-length"))?;
            }
            "traceparent" => traceparent = Some(value.to_string()),
            "transfer-encoding" => {
                return Err(ReadError::Bad(411, "chunked bodies are not supported"));
            }
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            _ => {}
        }
    }
    Err(ReadError::Bad(431, "too many headers"))
}

/// One CRLF- or LF-terminated line without its terminator; `None` on a clean EOF before any byte.
fn read_line(reader: &mut impl BufRead, used: &mut usize) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let limit = (MAX_HEAD_BYTES - *used) as u64 + 1;
    let n = reader.take(limit).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    *used += n;
    if *used > MAX_HEAD_BYTES || buf.last() != Some(&b'\n') {
        return Err(ReadError::Bad(431, "request head too large or truncated"));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ReadError::Bad(400, "request head is not UTF-8"))
}

/// Writes a complete response with a `text/plain` body.
pub fn write_response(
    out: &mut impl Write,
    status: u16,
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: {}\r\n\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The value of `key` in a query string like `ms=200&x=1`.
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn parse(raw: &str) -> Result<Request, ReadError> {
        read_request(&mut BufReader::new(raw.as_bytes()))
    }

    #[test]
    fn parses_a_post_with_body_and_query() {
        let req = parse("POST /echo?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            .expect("valid request");
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/echo");
        assert_eq!(req.query, "x=1");
        assert_eq!(req.body, b"hello");
        assert!(req.keep_alive);
    }

    #[test]
    fn http10_and_connection_close_do_not_keep_alive() {
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").expect("valid").keep_alive);
        let req = parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").expect("valid");
        assert!(!req.keep_alive);
    }

    #[test]
    fn rejects_oversized_heads_and_bodies() {
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(matches!(parse(&huge), Err(ReadError::Bad(431, _))));
        let big_body = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert!(matches!(parse(&big_body), Err(ReadError::Bad(413, _))));
        assert!(matches!(parse(""), Err(ReadError::Closed)));
    }

    #[test]
    fn query_param_finds_the_key() {
        assert_eq!(query_param("a=1&ms=250", "ms"), Some("250"));
        assert_eq!(query_param("a=1", "ms"), None);
    }
}
