//! tandem's own HTTP/1.1 exchange on the app connection bound to a client connection (see
//! `bound`), for the common request: HTTP/1.1, no upgrade, a body of known length up to
//! [`MAX_BODY`] (most are empty). The request head and body go out in one write; the answer's
//! head is parsed once (httparse) into a buffer kept by the connection, and its body is
//! handed on as slices of that buffer, as nginx's and Pingora's HTTP/1 code does. No
//! connection task, no dispatch channel, no encoder state machine between the request and
//! the socket: that was hyper's client, half of the user-space CPU of a proxied request.
//!
//! Invariant: a connection goes back to its parking place only when its answer ended cleanly
//! on a keep-alive exchange with nothing unread after it; any error, early drop, framing
//! doubt (`Transfer-Encoding` with `Content-Length`, a close-delimited body) or stray byte
//! closes it. The app is parsed as hyper's client would: a malformed or oversized head (over
//! [`READ_MAX`] bytes or [`MAX_HEADERS`] fields) fails the attempt (502), informational (1xx)
//! answers are skipped, and the body's framing follows RFC 9112 §6.3.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::replay::{BoxError, UpstreamBody};

/// The largest request body this path sends; a larger one (or one of unknown length) goes
/// through hyper's client.
pub(crate) const MAX_BODY: u64 = 64 * 1024;
/// The most of the app's answer held at once: a head must fit (as in the pooled client).
pub(crate) const READ_MAX: usize = 64 * 1024;
/// Header fields of an answer's head, as hyper's limit.
const MAX_HEADERS: usize = 100;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// What a read asks the socket for at least.
const READ_CHUNK: usize = 8 * 1024;

/// Where an idle connection waits for the next request of its client connection.
pub(crate) type Park = Arc<Mutex<Option<Box<Conn>>>>;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("app connection: {0}")]
    Io(#[from] io::Error),
    #[error("the app closed the connection before its answer ended")]
    Closed,
    #[error("the app's answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("the app's response head is over {READ_MAX} bytes")]
    HeadTooLarge,
    #[error("request body: {0}")]
    Body(BoxError),
}

/// One connection to the app, plain TCP. Boxed once for its life: a response body holding it
/// stays small, and a response is moved through every step of the stack.
pub(crate) struct Conn {
    io: TcpStream,
    /// When its last answer's head came (its last use).
    used: Instant,
    /// The app's bytes not yet handed on.
    buf: BytesMut,
    /// The request being written (head and body), kept for the next.
    wbuf: Vec<u8>,
}

/// Whether `req` can take this path (else hyper's client takes it).
pub(crate) fn eligible(req: &Request<UpstreamBody>) -> bool {
    let Some(len) = req.body().size_hint().exact().filter(|n| *n <= MAX_BODY) else {
        return false;
    };
    if req.version() != Version::HTTP_11 || req.method() == Method::CONNECT {
        return false;
    }
    // one pass over the fields, no lookup per name
    let mut length = None;
    for (name, value) in req.headers() {
        if name == TRANSFER_ENCODING
            || name == EXPECT
            || (name == CONTENT_LENGTH && add_length(value.as_bytes(), &mut length).is_err())
        {
            return false;
        }
    }
    length.is_none_or(|n| n == len)
}

// === impl Conn ===

impl Conn {
    pub fn new(io: TcpStream) -> Box<Self> {
        Box::new(Self {
            io,
            used: Instant::now(),
            buf: BytesMut::new(),
            wbuf: Vec::new(),
        })
    }

    /// When its last answer's head came.
    pub fn used(&self) -> Instant {
        self.used
    }

    /// Whether an idle connection can take a request: the app did not close it and sent
    /// nothing unasked. No system call unless the socket was reported readable since.
    pub fn is_reusable(&self) -> bool {
        let mut probe = [0u8; 1];
        self.buf.is_empty()
            && matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// The socket, for hyper's client to take over (an idle connection only).
    pub fn into_io(self) -> TcpStream {
        self.io
    }

    /// Writes `req` (origin form, Host set) and reads the answer's head. The body reads on
    /// from this connection, which [`AppBody`] owns until it ends.
    pub async fn exchange(
        mut self: Box<Self>,
        req: Request<UpstreamBody>,
        park: &Park,
    ) -> Result<Response<AppBody>, Error> {
        let head_request = req.method() == Method::HEAD;
        self.write(req).await?;
        let (resp, framing, keep_alive) = self.read_head(head_request).await?;
        self.used = Instant::now();
        let body = AppBody {
            conn: Some(self),
            framing,
            keep_alive,
            park: park.clone(),
        };
        let mut resp = resp.map(|()| body);
        if resp.body().framing.is_done() {
            resp.body_mut().finish();
        }
        Ok(resp)
    }

    async fn write(&mut self, req: Request<UpstreamBody>) -> Result<(), Error> {
        let (parts, mut body) = req.into_parts();
        let len = body.size_hint().exact().unwrap_or(0);
        let w = &mut self.wbuf;
        w.clear();
        w.extend_from_slice(parts.method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        w.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        // hyper's client writes a length for a body that has one, and none for an empty body
        if len > 0 && !parts.headers.contains_key(CONTENT_LENGTH) {
            w.extend_from_slice(b"content-length: ");
            w.extend_from_slice(itoa_u64(len, &mut [0u8; 20]));
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"\r\n");
        let head_len = w.len();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(Error::Body)?.into_data() {
                w.extend_from_slice(&data);
                if (w.len() - head_len) as u64 > len {
                    return Err(Error::Body("request body longer than its length".into()));
                }
            }
        }
        if ((w.len() - head_len) as u64) < len {
            return Err(Error::Body("request body shorter than its length".into()));
        }
        self.io.write_all(&self.wbuf).await?;
        Ok(())
    }

    /// The answer's head (1xx skipped), its body's framing, and whether the connection can
    /// be used again after it.
    async fn read_head(&mut self, head_request: bool) -> Result<Answer, Error> {
        loop {
            if let Some(n) = head_end(&self.buf) {
                // parsed once, in place: the fields' values are slices of it
                match parse_head(self.buf.split_to(n).freeze(), head_request)? {
                    // 100 Continue, 103 Early Hints: not the answer
                    None => continue,
                    Some(answer) => return Ok(answer),
                }
            }
            if self.buf.len() >= READ_MAX {
                return Err(Error::HeadTooLarge);
            }
            self.buf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(Error::Closed);
            }
        }
    }
}

/// Where the head in `buf` ends (after its empty line), if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1..) {
        Some([b'\n', ..]) => Some(i + 2),
        Some([b'\r', b'\n', ..]) => Some(i + 3),
        _ => None,
    })
}

/// An answer's head, its body's framing, and whether the connection can be used again after it.
type Answer = (Response<()>, Framing, bool);

/// The answer in `head` (a whole head); None for an informational (1xx) answer.
fn parse_head(head: Bytes, head_request: bool) -> Result<Option<Answer>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut fields);
    match r.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Error::Malformed("head")),
        Err(e) => return Err(Error::Malformed(parse_error(e))),
    }
    let status = r
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        // a 101 is refused: no upgrade is asked on this path
        .filter(|s| *s != StatusCode::SWITCHING_PROTOCOLS)
        .ok_or(Error::Malformed("status"))?;
    if status.is_informational() {
        return Ok(None);
    }
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // the fields that frame the body, noted on the one pass that builds the map
    let (mut te, mut length) = (None::<&[u8]>, None);
    let (mut close, mut keep_alive_token) = (false, false);
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    for f in r.headers.iter() {
        let name =
            HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Error::Malformed("name"))?;
        if name == TRANSFER_ENCODING {
            te = Some(f.value);
        } else if name == CONTENT_LENGTH {
            add_length(f.value, &mut length)?;
        } else if name == CONNECTION {
            for t in f.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive_token |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        let value = HeaderValue::from_maybe_shared(head.slice_ref(f.value))
            .map_err(|_| Error::Malformed("value"))?;
        headers.append(name, value);
    }
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    // hyper's client keeps a reason phrase that is not the status's usual one
    if let Some(reason) = r.reason.filter(|r| Some(*r) != status.canonical_reason()) {
        if let Ok(p) = hyper::ext::ReasonPhrase::try_from(head.slice_ref(reason.as_bytes())) {
            resp.extensions_mut().insert(p);
        }
    }
    // the last coding of the last Transfer-Encoding field
    let chunked = te
        .and_then(|v| v.rsplit(|b| *b == b',').next())
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    let framing =
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Length(0)
        } else if te.is_some() {
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Close
            }
        } else {
            match length {
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
    let keep_alive = match version {
        Version::HTTP_11 => !close,
        _ => keep_alive_token,
    } && !matches!(framing, Framing::Close)
        && !(te.is_some() && length.is_some());
    *resp.headers_mut() = headers;
    Ok(Some((resp, framing, keep_alive)))
}

/// The app's answer body, read from the connection that carried it; the connection is parked
/// for the next request when the body ends cleanly.
pub(crate) struct AppBody {
    /// None once the body ended (the connection parked or closed).
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep_alive: bool,
    park: Park,
}

enum Framing {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(Chunk),
    /// Until the app closes the connection.
    Close,
    Done,
}

enum Chunk {
    Size,
    /// Bytes left of the current chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer fields after the last chunk, then the final CRLF.
    Trailers,
}

/// What the buffered bytes give.
enum Step {
    Frame(Frame<Bytes>),
    End,
    NeedMore,
}

// === impl Framing ===

impl Framing {
    fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }

    /// Decodes what `buf` holds.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        loop {
            return Ok(match self {
                Framing::Done | Framing::Length(0) => {
                    *self = Framing::Done;
                    Step::End
                }
                Framing::Length(left) => match take(buf, left) {
                    Some(data) => Step::Frame(Frame::data(data)),
                    None => Step::NeedMore,
                },
                Framing::Close if buf.is_empty() => Step::NeedMore,
                Framing::Close => Step::Frame(Frame::data(buf.split().freeze())),
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        buf.advance(n);
                        *self = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => Step::NeedMore,
                    _ => return Err(Error::Malformed("chunk size")),
                },
                Framing::Chunked(Chunk::Data(left)) => match take(buf, left) {
                    Some(data) => {
                        if *left == 0 {
                            *self = Framing::Chunked(Chunk::DataEnd);
                        }
                        Step::Frame(Frame::data(data))
                    }
                    None => Step::NeedMore,
                },
                Framing::Chunked(Chunk::DataEnd) if buf.len() < 2 => Step::NeedMore,
                Framing::Chunked(Chunk::DataEnd) => {
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Malformed("chunk end"));
                    }
                    buf.advance(2);
                    *self = Framing::Chunked(Chunk::Size);
                    continue;
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((n, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for f in fields.iter() {
                                let name = HeaderName::from_bytes(f.name.as_bytes());
                                let value = HeaderValue::from_bytes(f.value);
                                if let (Ok(name), Ok(value)) = (name, value) {
                                    trailers.append(name, value);
                                }
                            }
                            buf.advance(n);
                            *self = Framing::Done;
                            if trailers.is_empty() {
                                Step::End
                            } else {
                                Step::Frame(Frame::trailers(trailers))
                            }
                        }
                        Ok(httparse::Status::Partial) => Step::NeedMore,
                        Err(e) => return Err(Error::Malformed(parse_error(e))),
                    }
                }
            });
        }
    }
}

/// Up to `left` bytes of `buf`, none if it is empty.
fn take(buf: &mut BytesMut, left: &mut u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

// === impl AppBody ===

impl AppBody {
    /// The body ended: the connection is parked if it can serve another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                *self.park.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
            }
        }
    }

    /// Waits until the first bytes of a `Content-Length` body are buffered, without handing
    /// any on: an app that dies between its head and its body fails the exchange here, while
    /// nothing has gone to the client and the request can still be sent again. Returns at
    /// once for any other body (chunked or close-delimited ones may stream: their first bytes
    /// can be long in coming) and when bytes are already there (the common case: head and
    /// body came in one read).
    pub async fn prime(&mut self) -> Result<(), Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if !matches!(self.framing, Framing::Length(n) if n > 0) || !conn.buf.is_empty() {
            return Ok(());
        }
        conn.buf.reserve(READ_CHUNK);
        let read = conn.io.read_buf(&mut conn.buf).await;
        match read {
            Ok(0) => Err(Error::Closed),
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
        .inspect_err(|_| {
            self.framing = Framing::Done;
            self.conn = None;
        })
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.step(&mut conn.buf) {
                Err(e) => return this.fail(e),
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::Frame(frame)) => {
                    if this.framing.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::NeedMore) => {}
            }
            let want = match this.framing {
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    usize::try_from(left)
                        .unwrap_or(READ_MAX)
                        .clamp(READ_CHUNK, READ_MAX)
                }
                _ => READ_CHUNK,
            };
            if conn.buf.len() >= READ_MAX {
                return this.fail(Error::Malformed("trailers over the read limit"));
            }
            conn.buf.reserve(want);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            )) {
                Err(e) => return this.fail(e.into()),
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    this.framing = Framing::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::Closed),
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Adds a `Content-Length` field's value (a list of equal lengths) to `found`: every length
/// met must be the same.
fn add_length(value: &[u8], found: &mut Option<u64>) -> Result<(), Error> {
    for part in value.split(|b| *b == b',') {
        let n = parse_length(part).ok_or(Error::Malformed("content-length"))?;
        if found.is_some_and(|f| f != n) {
            return Err(Error::Malformed("content-length"));
        }
        *found = Some(n);
    }
    Ok(())
}

/// Decimal digits (spaces around allowed), no sign, no overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "header name",
        httparse::Error::HeaderValue => "header value",
        httparse::Error::NewLine => "new line",
        httparse::Error::Status => "status",
        httparse::Error::Token => "token",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "version",
    }
}

/// `n` in decimal, into `out`.
fn itoa_u64(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// An app that answers each request it reads with the next of `answers` (as raw bytes),
    /// and returns what it read.
    async fn app(
        answers: Vec<&'static [u8]>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut seen = Vec::new();
            for a in answers {
                let mut buf = [0u8; 4096];
                // one request per read is enough for these small heads
                let n = s.read(&mut buf).await.expect("read");
                seen.extend_from_slice(&buf[..n]);
                s.write_all(a).await.expect("write");
            }
            seen
        });
        (addr, task)
    }

    fn get(method: Method, body: &'static str) -> Request<UpstreamBody> {
        let mut r = Request::new(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *r.method_mut() = method;
        *r.uri_mut() = Uri::from_static("/a?b=c");
        r.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("app"));
        r
    }

    use http::Uri;

    async fn conn(addr: std::net::SocketAddr) -> Box<Conn> {
        Conn::new(TcpStream::connect(addr).await.expect("connect"))
    }

    /// `method` sent on a fresh connection to `addr`, parked in `park` afterwards.
    async fn ask(
        addr: std::net::SocketAddr,
        method: Method,
        park: &Park,
    ) -> Result<Response<AppBody>, Error> {
        conn(addr).await.exchange(get(method, ""), park).await
    }

    async fn collect(resp: Response<AppBody>) -> Result<(Bytes, Option<HeaderMap>), BoxError> {
        let c = resp.into_body().collect().await?;
        let trailers = c.trailers().cloned();
        Ok((c.to_bytes(), trailers))
    }

    #[tokio::test]
    async fn writes_one_head_and_parks_the_connection_after_a_length_body() {
        let (addr, app) = app(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            b"HTTP/1.1 201 Made Up\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let park = Park::default();
        let resp = conn(addr)
            .await
            .exchange(get(Method::POST, "xy"), &park)
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        assert!(
            park.lock().expect("lock").is_none(),
            "parked before its body ended"
        );
        assert_eq!(collect(resp).await.expect("body").0, "hello");
        let c = park.lock().expect("lock").take().expect("parked");
        assert!(c.is_reusable());
        let resp = c
            .exchange(get(Method::GET, ""), &park)
            .await
            .expect("answer");
        assert_eq!(resp.status(), 201);
        assert_eq!(
            resp.extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|p| p.as_bytes()),
            Some(&b"Made Up"[..])
        );
        assert!(resp.body().is_end_stream());
        assert!(
            park.lock().expect("lock").is_some(),
            "an empty body parks at once"
        );
        let seen = app.await.expect("app");
        assert_eq!(
            String::from_utf8_lossy(&seen),
            "POST /a?b=c HTTP/1.1\r\nhost: app\r\ncontent-length: 2\r\n\r\nxy\
             GET /a?b=c HTTP/1.1\r\nhost: app\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn chunked_with_trailers_after_an_informational_answer() {
        let (addr, _app) = app(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n",
        ])
        .await;
        let park = Park::default();
        let resp = ask(addr, Method::GET, &park).await.expect("answer");
        assert_eq!(resp.status(), 200);
        let (body, trailers) = collect(resp).await.expect("body");
        assert_eq!(body, "hello world");
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        assert!(park.lock().expect("lock").is_some());
    }

    #[tokio::test]
    async fn a_close_delimited_body_reads_to_the_end_and_is_not_parked() {
        let (addr, app) = app(vec![b"HTTP/1.0 200 OK\r\nserver: x\r\n\r\nall of it"]).await;
        let park = Park::default();
        let resp = ask(addr, Method::GET, &park).await.expect("answer");
        assert_eq!(resp.version(), Version::HTTP_10);
        let body = resp.into_body();
        // the app closes once it has answered
        drop(app.await);
        let got = body.collect().await.expect("body").to_bytes();
        assert_eq!(got, "all of it");
        assert!(park.lock().expect("lock").is_none());
    }

    #[tokio::test]
    async fn bare_line_feeds_end_lines_too() {
        let (addr, _app) = app(vec![b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok"]).await;
        let park = Park::default();
        let resp = ask(addr, Method::GET, &park).await.expect("answer");
        assert_eq!(collect(resp).await.expect("body").0, "ok");
    }

    #[tokio::test]
    async fn head_answers_have_no_body_whatever_their_length() {
        let (addr, _app) = app(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"]).await;
        let park = Park::default();
        let resp = ask(addr, Method::HEAD, &park).await.expect("answer");
        assert!(resp.body().is_end_stream());
        assert_eq!(resp.headers()["content-length"], "1000");
        assert!(park.lock().expect("lock").is_some());
    }

    #[tokio::test]
    async fn malformed_answers_fail_the_exchange() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            let (addr, _app) = app(vec![bad]).await;
            let got = ask(addr, Method::GET, &Park::default()).await;
            assert!(
                matches!(got, Err(Error::Malformed(_))),
                "{}: {:?}",
                String::from_utf8_lossy(bad),
                got.map(|r| r.status())
            );
        }
        let (addr, _app) = app(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ])
        .await;
        let resp = ask(addr, Method::GET, &Park::default())
            .await
            .expect("head");
        assert!(
            collect(resp).await.is_err(),
            "a bad chunk size is a body error"
        );
    }

    #[tokio::test]
    async fn an_app_that_closes_mid_body_is_an_error_and_not_parked() {
        let (addr, app) = app(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"]).await;
        let park = Park::default();
        let resp = ask(addr, Method::GET, &park).await.expect("head");
        drop(app.await);
        assert!(collect(resp).await.is_err());
        assert!(park.lock().expect("lock").is_none());
    }

    #[tokio::test]
    async fn priming_fails_when_the_app_closes_after_its_head_and_keeps_the_bytes_otherwise() {
        // head, then the app is gone: the exchange fails at priming, nothing handed on
        let (addr, task) = app(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"]).await;
        let park = Park::default();
        let mut resp = ask(addr, Method::GET, &park).await.expect("head");
        drop(task.await);
        assert!(matches!(resp.body_mut().prime().await, Err(Error::Closed)));
        assert!(resp.body().is_end_stream());
        assert!(park.lock().expect("lock").is_none());
        // head and body: priming reads nothing away, the whole body follows
        let (addr, task) = app(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]).await;
        let mut resp = ask(addr, Method::GET, &park).await.expect("head");
        resp.body_mut().prime().await.expect("primed");
        resp.body_mut().prime().await.expect("primed again");
        assert_eq!(
            collect(resp).await.expect("body").0,
            Bytes::from_static(b"hello")
        );
        drop(task.await);
        // an empty body: nothing to wait for
        let (addr, task) = app(vec![b"HTTP/1.1 204 No Content\r\n\r\n"]).await;
        let mut resp = ask(addr, Method::GET, &park).await.expect("head");
        resp.body_mut().prime().await.expect("nothing to prime");
        drop(task.await);
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_not_reusable() {
        let (addr, app) = app(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]).await;
        let park = Park::default();
        ask(addr, Method::GET, &park).await.expect("head");
        drop(app.await);
        let c = park.lock().expect("lock").take().expect("parked");
        // the app's FIN arrives in its own time
        let mut reusable = true;
        for _ in 0..100 {
            reusable = c.is_reusable();
            if !reusable {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!reusable);
    }

    #[test]
    fn eligibility() {
        assert!(eligible(&get(Method::GET, "")));
        assert!(eligible(&get(Method::POST, "body")));
        let mut r = get(Method::POST, "body");
        r.headers_mut()
            .insert(EXPECT, HeaderValue::from_static("100-continue"));
        assert!(!eligible(&r));
        let mut r = get(Method::POST, "body");
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert!(!eligible(&r), "a length that is not the body's");
        let mut r = get(Method::GET, "");
        *r.version_mut() = Version::HTTP_10;
        assert!(!eligible(&r));
    }
}
