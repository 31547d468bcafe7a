//! [`ReplayBody`]: the request body of schemes that may send a request twice.
//!
//! The caller's body is read once, by whichever copy is sent first; the chunks read are kept as
//! reference-counted [`Bytes`] (no copy for `Bytes`-backed bodies) up to a limit, so that a
//! second copy can send them again and then go on reading where the first stopped (a server may
//! answer `401` before it has read the whole body). A body known to be empty is not buffered at
//! all and costs no allocation.
//!
//! Past the limit, the kept chunks are dropped and the body can no longer be replayed: the engine
//! then hands the challenge response back to the caller unchanged, with a `tracing` warning,
//! rather than resending a truncated body.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// The default limit of buffered request body bytes kept for a retry: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// A request body that can be sent again, up to a limit of buffered bytes.
///
/// Made by the engine for schemes of [`Replay`](crate::Replay) mode; the wrapped service sees
/// `Request<ReplayBody<B>>`. Its data type is [`Bytes`].
pub struct ReplayBody<B> {
    repr: Repr<B>,
}

enum Repr<B> {
    /// Known empty at the start: nothing to share.
    Empty,
    /// Bytes of the crate's own (a scheme's own request): sent as they are, replayable.
    Bytes(Option<Bytes>),
    Shared {
        shared: Arc<Mutex<Shared<B>>>,
        pos: usize,
        trailers_sent: bool,
    },
}

struct Shared<B> {
    /// The caller's body, until it has been read to the end.
    inner: Option<Pin<Box<B>>>,
    /// Data chunks read so far (all of them unless `overflow`).
    chunks: Vec<Bytes>,
    /// Number of data chunks read from `inner` so far.
    seen: usize,
    /// Bytes kept in `chunks`.
    buffered: usize,
    limit: usize,
    /// More than `limit` bytes were read: `chunks` was emptied and replay is impossible.
    overflow: bool,
    trailers: Option<HeaderMap>,
    /// `inner` ended (or failed).
    done: bool,
    /// The caller's body failed: replay is impossible.
    failed: bool,
    hint: SizeHint,
}

impl<B> ReplayBody<B>
where
    B: Body + Send + 'static,
{
    /// Wraps `body`, keeping at most `limit` bytes for a replay.
    pub fn new(body: B, limit: usize) -> Self {
        if body.is_end_stream() {
            return ReplayBody { repr: Repr::Empty };
        }
        let hint = body.size_hint();
        let shared = Shared {
            inner: Some(Box::pin(body)),
            chunks: Vec::new(),
            seen: 0,
            buffered: 0,
            limit,
            overflow: false,
            trailers: None,
            done: false,
            failed: false,
            hint,
        };
        ReplayBody { repr: Repr::Shared { shared: Arc::new(Mutex::new(shared)), pos: 0, trailers_sent: false } }
    }
}

impl<B> ReplayBody<B> {
    /// A body of known bytes, whatever the caller's body type `B` (a scheme's own request).
    pub fn from_bytes(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            return ReplayBody { repr: Repr::Empty };
        }
        ReplayBody { repr: Repr::Bytes(Some(bytes)) }
    }

    /// A copy that sends the body again from its start.
    pub(crate) fn clone_for_replay(&self) -> Self {
        match &self.repr {
            Repr::Empty => ReplayBody { repr: Repr::Empty },
            Repr::Bytes(b) => ReplayBody { repr: Repr::Bytes(b.clone()) },
            Repr::Shared { shared, .. } => {
                ReplayBody { repr: Repr::Shared { shared: Arc::clone(shared), pos: 0, trailers_sent: false } }
            }
        }
    }

    /// Whether a copy made now could send the whole body again.
    pub fn is_replayable(&self) -> bool {
        match &self.repr {
            Repr::Empty | Repr::Bytes(_) => true,
            Repr::Shared { shared, .. } => {
                let s = lock(shared);
                !s.overflow && !s.failed
            }
        }
    }

    /// Whether the body is known to be empty.
    pub fn is_empty_body(&self) -> bool {
        matches!(self.repr, Repr::Empty)
    }

    /// The whole body, if it has been read to the end and kept (clones of refcounted chunks).
    pub(crate) fn buffered(&self) -> Option<Vec<Bytes>> {
        match &self.repr {
            Repr::Empty => Some(Vec::new()),
            Repr::Bytes(b) => Some(b.iter().cloned().collect()),
            Repr::Shared { shared, .. } => {
                let s = lock(shared);
                (s.done && !s.overflow && !s.failed).then(|| s.chunks.clone())
            }
        }
    }
}

impl<B> ReplayBody<B>
where
    B: Body,
    B::Data: Buf,
{
    /// Reads the rest of the caller's body into the buffer, up to the limit. Ready when the body
    /// has ended, overflowed the limit or failed.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), B::Error>> {
        let Repr::Shared { shared, .. } = &self.repr else {
            return Poll::Ready(Ok(()));
        };
        let mut s = lock(shared);
        while !s.done && !s.overflow {
            match ready!(s.poll_inner(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => {}
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<B> Shared<B>
where
    B: Body,
    B::Data: Buf,
{
    /// Polls the caller's body once and records what it gives.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            self.done = true;
            return Poll::Ready(None);
        };
        let frame = match ready!(inner.as_mut().poll_frame(cx)) {
            None => {
                self.done = true;
                self.inner = None;
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                self.done = true;
                self.failed = true;
                self.inner = None;
                return Poll::Ready(Some(Err(e)));
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let bytes = data.copy_to_bytes(data.remaining());
                self.seen += 1;
                if !self.overflow {
                    self.buffered += bytes.len();
                    if self.buffered > self.limit {
                        tracing::debug!(
                            limit = self.limit,
                            "request body exceeds the replay limit; it will not be replayed"
                        );
                        self.overflow = true;
                        self.chunks = Vec::new();
                    } else {
                        self.chunks.push(bytes.clone());
                    }
                }
                Frame::data(bytes)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    self.trailers = Some(trailers.clone());
                    Frame::trailers(trailers)
                }
                // Neither data nor trailers: unknown frame kinds are dropped.
                Err(_) => return Poll::Ready(Some(Ok(Frame::data(Bytes::new())))),
            },
        };
        if self.inner.as_ref().is_some_and(|b| b.is_end_stream()) {
            self.done = true;
            self.inner = None;
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // A panic while holding the lock cannot leave `Shared` inconsistent in a way that matters
    // more than the panic itself; keep serving.
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let (shared, pos, trailers_sent) = match &mut this.repr {
            Repr::Empty => return Poll::Ready(None),
            Repr::Bytes(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Repr::Shared { shared, pos, trailers_sent } => (shared, pos, trailers_sent),
        };
        let mut s = lock(shared);
        if *pos < s.seen {
            if s.overflow || s.failed {
                // Only a replay copy can be behind, and the engine makes none once the body has
                // overflowed; end rather than send a truncated body.
                return Poll::Ready(None);
            }
            let chunk = s.chunks[*pos].clone();
            *pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if s.done {
            if !*trailers_sent {
                *trailers_sent = true;
                if let Some(trailers) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        }
        let polled = ready!(s.poll_inner(cx));
        if let Some(Ok(frame)) = &polled {
            if frame.is_data() {
                *pos += 1;
            } else {
                *trailers_sent = true;
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.repr {
            Repr::Empty => true,
            Repr::Bytes(b) => b.is_none(),
            Repr::Shared { shared, pos, trailers_sent } => {
                let s = lock(shared);
                s.done && *pos >= s.seen && (*trailers_sent || s.trailers.is_none())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.repr {
            Repr::Empty => SizeHint::with_exact(0),
            Repr::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Repr::Shared { shared, .. } => lock(shared).hint,
        }
    }
}

/// An empty body, made from `B`'s own default. tower-http's `FollowRedirect` needs `Default`
/// request bodies, so this lets it sit below a layer whose scheme replays (the router, Digest).
impl<B> Default for ReplayBody<B>
where
    B: http_body::Body + Default + Send + 'static,
{
    fn default() -> Self {
        ReplayBody::new(B::default(), 0)
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Empty => f.write_str("ReplayBody(empty)"),
            Repr::Bytes(b) => write!(f, "ReplayBody({} bytes)", b.as_ref().map_or(0, Bytes::len)),
            Repr::Shared { shared, pos, .. } => {
                let s = lock(shared);
                f.debug_struct("ReplayBody")
                    .field("position", pos)
                    .field("chunks_read", &s.seen)
                    .field("buffered_bytes", &s.buffered)
                    .field("limit", &s.limit)
                    .field("replayable", &!(s.overflow || s.failed))
                    .finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    async fn collect<B: Body<Data = Bytes>>(b: B) -> Vec<u8>
    where
        B::Error: fmt::Debug,
    {
        b.collect().await.unwrap().to_bytes().to_vec()
    }

    /// A body that yields the given chunks one by one, with no size hint.
    struct Chunks(std::collections::VecDeque<&'static str>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))))
        }
    }

    fn stream(chunks: &[&'static str]) -> Chunks {
        Chunks(chunks.iter().copied().collect())
    }

    #[tokio::test]
    async fn empty_body_is_not_shared() {
        let body = ReplayBody::new(http_body_util::Empty::<Bytes>::new(), 10);
        assert!(body.is_empty_body());
        assert!(body.is_end_stream());
        assert!(body.clone_for_replay().is_replayable());
    }

    #[tokio::test]
    async fn full_body_replays_identically() {
        let body = ReplayBody::new(Full::new(Bytes::from_static(b"hello")), 10);
        let again = body.clone_for_replay();
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(collect(body).await, b"hello");
        assert!(again.is_replayable());
        assert_eq!(again.size_hint().exact(), Some(5));
        assert_eq!(collect(again).await, b"hello");
    }

    #[tokio::test]
    async fn replay_continues_where_the_first_copy_stopped() {
        let mut first = ReplayBody::new(stream(&["ab", "cd", "ef"]), 100);
        let second = first.clone_for_replay();
        // The first copy reads one chunk, then is dropped (the server answered early).
        let f = std::future::poll_fn(|cx| Pin::new(&mut first).poll_frame(cx)).await;
        assert_eq!(f.unwrap().unwrap().into_data().unwrap(), "ab");
        drop(first);
        assert!(second.is_replayable());
        assert_eq!(collect(second).await, b"abcdef");
    }

    #[tokio::test]
    async fn over_the_limit_is_not_replayable_but_streams_whole() {
        let body = ReplayBody::new(stream(&["aaaa", "bbbb", "cccc"]), 6);
        let again = body.clone_for_replay();
        assert_eq!(collect(body).await, b"aaaabbbbcccc");
        assert!(!again.is_replayable());
        assert_eq!(again.buffered(), None);
    }

    #[tokio::test]
    async fn fill_buffers_the_whole_body() {
        let mut body = ReplayBody::new(stream(&["x", "y"]), 10);
        std::future::poll_fn(|cx| body.poll_fill(cx)).await.unwrap();
        assert_eq!(body.buffered().unwrap(), vec![Bytes::from("x"), Bytes::from("y")]);
        assert_eq!(collect(body.clone_for_replay()).await, b"xy");
    }
}

pin_project_lite::pin_project! {
    /// The response body a caller gets from a layer whose scheme is of
    /// [`Flow`](crate::engine::Flow) mode: the wrapped service's body as it is, or the bytes a
    /// scheme read (then whatever was not read, past the layer's limit), then the trailers. Its
    /// data type is [`Bytes`]; its error type is [`BoxError`](crate::BoxError), so that an error met
    /// while a scheme read the body reaches the caller after the bytes read before it.
    pub struct ResponseBody<R> {
        #[pin]
        kind: Kind<R>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<R> {
        Inner { #[pin] body: R },
        Buffered {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
            rest: Option<Pin<Box<R>>>,
            error: Option<crate::BoxError>,
        },
    }
}

impl<R> ResponseBody<R> {
    /// The wrapped service's body, untouched.
    pub fn new(body: R) -> Self {
        ResponseBody { kind: Kind::Inner { body } }
    }

    /// Bytes already read, then the rest of the body if it was not read to the end, else the
    /// trailers.
    pub(crate) fn buffered(
        data: Bytes,
        trailers: Option<HeaderMap>,
        rest: Option<Pin<Box<R>>>,
        error: Option<crate::BoxError>,
    ) -> Self {
        let data = (!data.is_empty()).then_some(data);
        ResponseBody { kind: Kind::Buffered { data, trailers, rest, error } }
    }
}

impl<R> Body for ResponseBody<R>
where
    R: Body,
    R::Data: Buf,
    R::Error: Into<crate::BoxError>,
{
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        fn convert<D: Buf, E: Into<crate::BoxError>>(
            frame: Result<Frame<D>, E>,
        ) -> Result<Frame<Bytes>, crate::BoxError> {
            frame.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining()))).map_err(Into::into)
        }
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map(|f| f.map(convert)),
            KindProj::Buffered { data, trailers, rest, error } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                if let Some(body) = rest.as_mut() {
                    return body.as_mut().poll_frame(cx).map(|f| f.map(convert));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Buffered { data, trailers, rest, error } => {
                data.is_none()
                    && error.is_none()
                    && trailers.is_none()
                    && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Buffered { data, rest: None, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Buffered { .. } => SizeHint::default(),
        }
    }
}

impl<R> fmt::Debug for ResponseBody<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody(..)"),
            Kind::Buffered { data, rest, .. } => f
                .debug_struct("ResponseBody")
                .field("buffered_bytes", &data.as_ref().map_or(0, Bytes::len))
                .field("rest", &rest.is_some())
                .finish(),
        }
    }
}
