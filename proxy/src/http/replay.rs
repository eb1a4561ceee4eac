//! Request bodies kept for replay: a body up to `max_replay_body_bytes` is read whole before
//! the first attempt so a retry can send it again; a larger one streams and gets one attempt.
//!
//! Invariant: a body is buffered only up to the replay limit plus one frame, never more; the
//! body size limit (413) is enforced here while the body streams (the limits layer refuses a
//! declared Content-Length before). A request with `Expect: 100-continue` is never pre-read,
//! so the body is only asked for once the app is being sent the request.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, LengthLimitError, Limited};

use crate::cause::Cause;

/// Boxed error of bodies sent to the app.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests sent to the app.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request body ready to send: replayable bytes, or a one-shot stream.
pub enum Prepared {
    /// Read whole; every attempt sends these bytes.
    Replayable(Bytes),
    /// Too large, of unknown end, or awaiting 100-continue: one attempt only.
    Streaming(UpstreamBody),
}

// === impl Prepared ===

impl Prepared {
    /// Reads the body as far as the replay limit allows.
    pub async fn read<B>(
        body: B,
        headers: &HeaderMap,
        replay_limit: usize,
        max_body: Option<u64>,
    ) -> Result<Self, Cause>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Ok(Prepared::Replayable(Bytes::new()));
        }
        // A declared length over `max_body` was refused by the limits layer already.
        let content_length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let limited: UpstreamBody = match max_body {
            Some(max) => {
                Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).boxed_unsync()
            }
            None => body.map_err(Into::into).boxed_unsync(),
        };
        let expect_continue = headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let too_big = content_length.is_some_and(|len| len > replay_limit as u64);
        if expect_continue || too_big {
            return Ok(Prepared::Streaming(limited));
        }
        Self::buffer(limited, replay_limit).await
    }

    async fn buffer(mut body: UpstreamBody, replay_limit: usize) -> Result<Self, Cause> {
        let mut buf = BytesMut::new();
        loop {
            match body.frame().await {
                None => return Ok(Prepared::Replayable(buf.freeze())),
                Some(Err(e)) => return Err(body_error_cause(e.as_ref())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        buf.extend_from_slice(&data);
                        if buf.len() > replay_limit {
                            let prefix = Frame::data(buf.freeze());
                            return Ok(Prepared::Streaming(
                                Prefixed::new(prefix, body).boxed_unsync(),
                            ));
                        }
                    }
                    // Trailers: stop buffering, send what we have followed by them.
                    Err(trailers) => {
                        let mut p = Prefixed::new(Frame::data(buf.freeze()), body);
                        p.prefix.push_back(trailers);
                        return Ok(Prepared::Streaming(p.boxed_unsync()));
                    }
                },
            }
        }
    }

    /// Whether another attempt can send this body again.
    pub fn is_replayable(&self) -> bool {
        matches!(self, Prepared::Replayable(_))
    }

    /// The body for the next attempt; a stream is handed out once, then empty.
    pub fn take_body(&mut self) -> UpstreamBody {
        match self {
            Prepared::Replayable(b) if b.is_empty() => {
                Empty::new().map_err(|n| match n {}).boxed_unsync()
            }
            Prepared::Replayable(b) => Full::new(b.clone()).map_err(|n| match n {}).boxed_unsync(),
            Prepared::Streaming(s) => {
                std::mem::replace(s, Empty::new().map_err(|n| match n {}).boxed_unsync())
            }
        }
    }
}

/// 413 when the error is the body limit, else a broken client body.
pub fn body_error_cause(e: &(dyn std::error::Error + 'static)) -> Cause {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<LengthLimitError>() {
            return Cause::BodyTooLarge;
        }
        cur = err.source();
    }
    Cause::ClientBody
}

/// Frames already read, then the rest of the body.
struct Prefixed {
    prefix: VecDeque<Frame<Bytes>>,
    rest: UpstreamBody,
}

impl Prefixed {
    fn new(first: Frame<Bytes>, rest: UpstreamBody) -> Self {
        Self {
            prefix: VecDeque::from([first]),
            rest,
        }
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .prefix
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}
