//! [`ResponseFuture`]: authorise, send, and (for schemes that answer challenges) retry.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::ReplayBody;
use super::error::BoxError;
use super::mode::{BodyMode, ErrorMode};
use super::{MAX_EXCHANGES, ModeBody, ResponseUriFn};
use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize, BodyView};
/// The most bytes of a challenge response body read (and dropped) so that the connection can
/// be reused; a larger body is dropped unread.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The response body type the caller gets.
type ResOut<A, ResB> = <<A as Authenticator>::Mode as BodyMode>::ResBody<ResB>;

type ErrorOut<A, S, B> =
    <<A as Authenticator>::Error as ErrorMode>::Out<<S as Service<Request<ModeBody<A, B>>>>::Error>;

pin_project! {
    /// The future of [`Auth`](crate::Auth): authorises the request (waiting for credentials if
    /// the scheme must), sends it, shows the response to the scheme if it looks at responses, and
    /// lets a scheme that replays answer a challenge by sending the request again.
    ///
    /// The steps, one [`State`] each:
    ///
    /// ```text
    ///            ┌──────────── Waiting (scheme's future; inner readiness released) ◄─┐
    ///            ▼                                                                  │ Wait
    /// start ─► Authorizing ──Done──► Ready (poll_ready of the inner service) ─► Called ──► response
    ///            │   ▲                                                          │  (shown to the scheme)
    ///   NeedBody │   │                                                          │ Retry (Replay only,
    ///            ▼   │                                                          ▼  at most MAX_EXCHANGES)
    ///          Filling (buffer the body)                         Draining (read the challenge body) ─► Authorizing
    /// ```
    ///
    /// A [`Flow`](crate::engine::Flow) scheme may also have a response body read (`Reading`,
    /// then `on_response_body`), and send a request of its own (`Draining`, `Ready`, `Called`,
    /// `Reading`, then `on_own_response`) before the caller's request is sent again.
    ///
    /// Schemes that neither wait nor look at responses take the fast path: `call` authorises in
    /// place and the future is the inner service's future, with nothing kept per request.
    pub struct ResponseFuture<S, A, B, ResB>
    where
        S: Service<Request<ModeBody<A, B>>>,
        A: Authenticator,
    {
        #[pin]
        state: State<S::Future, A::Wait, ResB, A::Error>,
        ctx: Option<Box<Ctx<S, A, B>>>,
        observer: Option<Box<Observer<A>>>,
    }
}

pin_project! {
    /// One step of [`ResponseFuture`].
    #[project = StateProj]
    enum State<F, W, ResB, E> {
        // The inner service's future.
        Called { #[pin] fut: F },
        // Asking the scheme for credentials.
        Authorizing,
        // Waiting for the scheme's credentials (a token being fetched, a nonce being leased).
        Waiting { #[pin] wait: W },
        // Buffering the request body for a scheme that hashes it.
        Filling,
        // Waiting for the inner service to be ready, just before sending.
        Ready,
        // Reading a challenge response's body so the connection can be reused.
        Draining { #[pin] body: ResB, read: usize },
        // Reading a response body whole for a Flow scheme (boxed: what is not read may go back
        // to the caller).
        Reading { body: Option<Pin<Box<ResB>>> },
        // The scheme failed before anything was sent.
        Failed { err: Option<E> },
        Done,
    }
}

/// What a scheme that observes responses but never replays needs to see its response: the
/// request as the caller made it and the scheme's per-request state.
struct Observer<A: Authenticator> {
    auth: Arc<A>,
    original: Parts,
    state: A::State,
    response_uri: Option<ResponseUriFn>,
}

/// Everything kept across the exchanges of one request; absent on the fast path.
struct Ctx<S, A: Authenticator, B> {
    svc: S,
    auth: Arc<A>,
    /// The request as the caller made it; each attempt authorises a copy.
    original: Parts,
    state: A::State,
    replay: Option<ReplayBody<B>>,
    body_empty: bool,
    /// The body for the next send.
    next_body: Option<ModeBody<A, B>>,
    /// The authorised head for the next send, waiting for the service to be ready.
    pending: Option<Parts>,
    attempt: u32,
    body_requested: bool,
    /// Whether the scheme sees responses (it replays, or it observes them).
    observes: bool,
    response_uri: Option<ResponseUriFn>,
    /// The most response body bytes read for a Flow scheme.
    limit: usize,
    /// A Flow scheme's own request, to send next.
    own: Option<Request<ModeBody<A, B>>>,
    /// The response being sent or read answers the scheme's own request.
    in_own: bool,
    /// What follows `Draining`: another exchange of the caller's request, or the scheme's own.
    drain_then_own: bool,
    /// The response head whose body is being read, and what was read of it.
    held: Option<Held>,
}

/// A response whose body is being read for a Flow scheme.
struct Held {
    parts: http::response::Parts,
    chunks: Vec<Bytes>,
    size: usize,
    trailers: Option<HeaderMap>,
}

impl Held {
    fn new(parts: http::response::Parts) -> Self {
        Held { parts, chunks: Vec::new(), size: 0, trailers: None }
    }

    /// The bytes read, in one piece (no copy for a single chunk).
    fn data(&mut self) -> Bytes {
        match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = Vec::with_capacity(self.size);
                for chunk in self.chunks.drain(..) {
                    all.extend_from_slice(&chunk);
                }
                Bytes::from(all)
            }
        }
    }
}

impl<S, A, B, ResB> ResponseFuture<S, A, B, ResB>
where
    S: Service<Request<ModeBody<A, B>>>,
    A: Authenticator,
    B: Body,
{
    /// The fast path: the request was authorised in `call` and sent; nothing else to do.
    #[inline]
    pub(crate) fn called(fut: S::Future) -> Self {
        ResponseFuture { state: State::Called { fut }, ctx: None, observer: None }
    }

    /// Sent, and the response is to be shown to a scheme that observes responses.
    pub(crate) fn observed(
        fut: S::Future,
        auth: Arc<A>,
        original: Parts,
        state: A::State,
        response_uri: Option<ResponseUriFn>,
    ) -> Self {
        let observer = Observer { auth, original, state, response_uri };
        ResponseFuture { state: State::Called { fut }, ctx: None, observer: Some(Box::new(observer)) }
    }

    pub(crate) fn failed(err: A::Error) -> Self {
        ResponseFuture { state: State::Failed { err: Some(err) }, ctx: None, observer: None }
    }

    /// The full state machine, from [`State::Authorizing`] (or [`State::Waiting`] when `call`
    /// already asked the scheme and it must wait).
    pub(crate) fn start(setup: Setup<S, A, B>, wait: Option<A::Wait>) -> Self {
        let Setup { svc, auth, original, body, replay, state, response_uri, limit } = setup;
        let body_empty = replay.as_ref().is_some_and(ReplayBody::is_empty_body);
        let observes = <A::Mode as BodyMode>::REPLAY || auth.observes_responses();
        let ctx = Ctx {
            svc,
            auth,
            original,
            state,
            replay,
            body_empty,
            next_body: Some(body),
            pending: None,
            attempt: 0,
            body_requested: false,
            observes,
            response_uri,
            limit,
            own: None,
            in_own: false,
            drain_then_own: false,
            held: None,
        };
        let state = match wait {
            Some(wait) => State::Waiting { wait },
            None => State::Authorizing,
        };
        ResponseFuture { state, ctx: Some(Box::new(ctx)), observer: None }
    }
}

/// What [`ResponseFuture::start`] needs.
pub(crate) struct Setup<S, A: Authenticator, B> {
    pub(crate) svc: S,
    pub(crate) auth: Arc<A>,
    pub(crate) original: Parts,
    pub(crate) body: ModeBody<A, B>,
    pub(crate) replay: Option<ReplayBody<B>>,
    pub(crate) state: A::State,
    pub(crate) response_uri: Option<ResponseUriFn>,
    pub(crate) limit: usize,
}

/// Whether the response was produced by another origin than the request's: a redirect
/// follower below this layer records where the response came from (tower-http's
/// `FollowRedirect` in the `RequestUri` extension, read by default). A challenge from there is
/// not ours to answer, nor a rejection ours to learn from: credentials go only to the origin
/// they were configured for. The one place this rule lives.
fn answered_elsewhere(response_uri: Option<ResponseUriFn>, req: &Parts, res: &http::response::Parts) -> bool {
    let Some(last) = response_uri.and_then(|f| f(res)) else {
        return false;
    };
    if *last == req.uri {
        return false;
    }
    let elsewhere = crate::route::origin::Origin::from_uri(last) != crate::route::origin::Origin::from_uri(&req.uri);
    if elsewhere {
        tracing::debug!(
            status = %res.status,
            "the response comes from another origin than the request's (a redirect was followed below this layer); it is not shown to the scheme"
        );
    }
    elsewhere
}

/// Shows a response to a scheme; what it asks, within what its mode allows.
fn shown<A: Authenticator>(
    auth: &A,
    response_uri: Option<ResponseUriFn>,
    original: &Parts,
    res: &http::response::Parts,
    state: &mut A::State,
) -> Action {
    if answered_elsewhere(response_uri, original, res) {
        return Action::Done;
    }
    allowed::<A>(auth.on_response(original, res, state), res)
}

/// What the engine does of a scheme's answer: a `Once` scheme never replays, only a `Flow`
/// scheme reads bodies or sends requests of its own.
fn allowed<A: Authenticator>(action: Action, res: &http::response::Parts) -> Action {
    let ok = match action {
        Action::Done => true,
        Action::Retry => <A::Mode as BodyMode>::REPLAY,
        Action::ReadBody | Action::SendOwn => <A::Mode as BodyMode>::FLOW,
    };
    if ok {
        return action;
    }
    tracing::debug!(
        status = %res.status,
        ?action,
        "the scheme asked for more than its mode allows (Once: no retry; Replay: no body, no own request); the response is returned"
    );
    Action::Done
}

impl<S: Clone, A: Authenticator, B> Ctx<S, A, B> {
    /// Prepares another exchange of the caller's request; `false` if it cannot be sent again
    /// (the exchange cap, a body over the replay limit).
    fn again(&mut self, status: http::StatusCode) -> bool {
        if self.attempt + 1 >= MAX_EXCHANGES {
            tracing::warn!(
                %status,
                exchanges = MAX_EXCHANGES,
                "the authentication scheme asked for another exchange past the limit; the response is returned as is"
            );
            return false;
        }
        let next = self.replay.as_ref().filter(|r| r.is_replayable()).and_then(A::Mode::again);
        let Some(next) = next else {
            tracing::warn!(
                %status,
                "the request body is larger than the layer's replay limit (AuthLayer::body_limit), so the request cannot be sent again; the response is returned as is"
            );
            return false;
        };
        self.next_body = Some(next);
        self.attempt += 1;
        self.drain_then_own = false;
        true
    }

    /// Prepares the scheme's own request; `false` if there is none (or no room for it).
    fn own(&mut self, status: http::StatusCode) -> bool {
        if self.attempt + 1 >= MAX_EXCHANGES {
            tracing::warn!(
                %status,
                exchanges = MAX_EXCHANGES,
                "the authentication scheme asked to send a request of its own past the limit; the response is returned as is"
            );
            return false;
        }
        let Some(req) = self.auth.own_request(&self.original, &mut self.state).and_then(A::Mode::own) else {
            tracing::debug!(%status, "the scheme asked to send a request of its own and gave none");
            return false;
        };
        self.own = Some(req);
        self.attempt += 1;
        self.drain_then_own = true;
        true
    }
}

/// The method, URI and version of a request head, without its headers and extensions (no
/// allocation: the URI's bytes are shared).
pub(crate) fn bare_parts(p: &Parts) -> Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = p.method.clone();
    parts.uri = p.uri.clone();
    parts.version = p.version;
    parts
}

/// A copy of a request head (`Parts` is not `Clone`; its fields are).
pub(crate) fn clone_parts(p: &Parts) -> Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = p.method.clone();
    parts.uri = p.uri.clone();
    parts.version = p.version;
    parts.headers = p.headers.clone();
    parts.extensions = p.extensions.clone();
    parts
}

impl<S, A, B, ResB> Future for ResponseFuture<S, A, B, ResB>
where
    S: Service<Request<ModeBody<A, B>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    A: Authenticator,
    B: Body,
    B::Data: Buf,
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<ResOut<A, ResB>>, ErrorOut<A, S, B>>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let done = |parts, body| Poll::Ready(Ok(A::Mode::response(Response::from_parts(parts, body))));
        loop {
            let this = self.as_mut().project();
            let next = match this.state.project() {
                StateProj::Called { fut } => {
                    let res = match ready!(fut.poll(cx)) {
                        Ok(res) => res,
                        Err(err) => return Poll::Ready(Err(A::Error::inner(err))),
                    };
                    if let Some(obs) = this.observer.as_deref_mut() {
                        let (parts, body) = res.into_parts();
                        shown(&*obs.auth, obs.response_uri, &obs.original, &parts, &mut obs.state);
                        return done(parts, body);
                    }
                    let Some(ctx) = this.ctx.as_deref_mut().filter(|ctx| ctx.observes) else {
                        return Poll::Ready(Ok(A::Mode::response(res)));
                    };
                    let (parts, body) = res.into_parts();
                    if ctx.in_own {
                        // The answer to the scheme's own request: read whole, then shown.
                        ctx.held = Some(Held::new(parts));
                        State::Reading { body: Some(Box::pin(body)) }
                    } else {
                        match shown(&*ctx.auth, ctx.response_uri, &ctx.original, &parts, &mut ctx.state) {
                            Action::Done => return done(parts, body),
                            Action::Retry if ctx.again(parts.status) => State::Draining { body, read: 0 },
                            Action::SendOwn if ctx.own(parts.status) => State::Draining { body, read: 0 },
                            Action::ReadBody => {
                                ctx.held = Some(Held::new(parts));
                                State::Reading { body: Some(Box::pin(body)) }
                            }
                            Action::Retry | Action::SendOwn => return done(parts, body),
                        }
                    }
                }
                StateProj::Draining { mut body, read } => {
                    // Read a small challenge body to its end so the connection can be reused.
                    while !body.is_end_stream() && *read <= DRAIN_LIMIT {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => *read += frame.data_ref().map_or(0, |d| d.remaining()),
                            _ => break,
                        }
                    }
                    match this.ctx.as_deref() {
                        Some(ctx) if ctx.drain_then_own => State::Ready,
                        _ => State::Authorizing,
                    }
                }
                StateProj::Reading { body } => {
                    let ctx = this.ctx.as_deref_mut().expect("reading without context");
                    let held = ctx.held.as_mut().expect("reading without a response head");
                    let mut failed = None;
                    let mut overflow = false;
                    if let Some(inner) = body.as_mut() {
                        loop {
                            match ready!(inner.as_mut().poll_frame(cx)) {
                                None => break,
                                Some(Err(err)) => {
                                    failed = Some(err.into());
                                    break;
                                }
                                Some(Ok(frame)) => match frame.into_data() {
                                    Ok(mut data) => {
                                        let chunk = data.copy_to_bytes(data.remaining());
                                        held.size += chunk.len();
                                        held.chunks.push(chunk);
                                        if held.size > ctx.limit {
                                            overflow = true;
                                            break;
                                        }
                                    }
                                    Err(frame) => {
                                        if let Ok(trailers) = frame.into_trailers() {
                                            held.trailers = Some(trailers);
                                        }
                                    }
                                },
                            }
                        }
                    }
                    let mut held = ctx.held.take().expect("held above");
                    let data = held.data();
                    if failed.is_some() || overflow {
                        // Not whole: the scheme is not shown it; the caller gets every byte read,
                        // then the rest (or the error).
                        tracing::warn!(
                            status = %held.parts.status,
                            read = held.size,
                            limit = ctx.limit,
                            "the response body could not be read whole for the scheme (over the layer's body limit, or it failed); it is returned as is"
                        );
                        let rest = if overflow { body.take() } else { None };
                        return Poll::Ready(Ok(A::Mode::buffered(held.parts, data, held.trailers, rest, failed)));
                    }
                    let own = std::mem::take(&mut ctx.in_own);
                    let action = if own {
                        ctx.auth.on_own_response(&ctx.original, &held.parts, &data, &mut ctx.state)
                    } else {
                        ctx.auth.on_response_body(&ctx.original, &held.parts, &data, &mut ctx.state)
                    };
                    let status = held.parts.status;
                    match allowed::<A>(action, &held.parts) {
                        Action::Retry if ctx.again(status) => State::Authorizing,
                        Action::SendOwn if ctx.own(status) => State::Ready,
                        _ => {
                            return Poll::Ready(Ok(A::Mode::buffered(held.parts, data, held.trailers, None, None)));
                        }
                    }
                }
                StateProj::Authorizing => {
                    let ctx = this.ctx.as_deref_mut().expect("authorizing without context");
                    let mut parts = clone_parts(&ctx.original);
                    let buffered =
                        if ctx.body_requested { ctx.replay.as_ref().and_then(ReplayBody::buffered) } else { None };
                    let view = match &buffered {
                        _ if ctx.body_empty => BodyView::Empty,
                        Some(chunks) => BodyView::Buffered(chunks),
                        None => BodyView::Unavailable,
                    };
                    let mut req = AuthRequest::engine(&mut parts, view, ctx.attempt, <A::Mode as BodyMode>::REPLAY);
                    let decision = ctx.auth.authorize(&mut req, &mut ctx.state);
                    let replacement = req.take_replacement();
                    match decision {
                        Ok(Authorize::Done) => {
                            // A body of the scheme's own replaces the caller's on this exchange.
                            if let Some(body) = replacement.and_then(A::Mode::replaced) {
                                ctx.next_body = Some(body);
                            }
                            ctx.pending = Some(parts);
                            State::Ready
                        }
                        Ok(Authorize::NeedBody) if !ctx.body_requested && !ctx.body_empty && ctx.replay.is_some() => {
                            ctx.body_requested = true;
                            // Reading the caller's body may take a while: no readiness held.
                            ctx.svc = ctx.svc.clone();
                            State::Filling
                        }
                        Ok(Authorize::NeedBody) => {
                            tracing::debug!(
                                "the scheme asked for the request body, which is not available; sending as authorised"
                            );
                            ctx.pending = Some(parts);
                            State::Ready
                        }
                        Ok(Authorize::Wait(wait)) => {
                            // Fail closed: the request waits for what its scheme decides, for as
                            // long as the scheme's own future says (its timeout), and never
                            // leaves without it. Meanwhile it holds no readiness of the inner
                            // service (a `Buffer` slot, a `ConcurrencyLimit` permit): the
                            // service made ready for this call is dropped for a fresh handle,
                            // made ready again in `Ready`.
                            ctx.svc = ctx.svc.clone();
                            State::Waiting { wait }
                        }
                        Err(err) => return Poll::Ready(Err(err.scheme())),
                    }
                }
                StateProj::Waiting { wait } => match ready!(wait.poll(cx)) {
                    Ok(()) => State::Authorizing,
                    Err(err) => return Poll::Ready(Err(err.scheme())),
                },
                StateProj::Filling => {
                    let ctx = this.ctx.as_deref_mut().expect("filling without context");
                    if let Some(replay) = ctx.replay.as_mut() {
                        // A body error is kept by the replay body and surfaces when the wrapped
                        // service reads it, so nothing truncated is ever sent.
                        let _ = ready!(replay.poll_fill(cx));
                    }
                    State::Authorizing
                }
                StateProj::Ready => {
                    let ctx = this.ctx.as_deref_mut().expect("ready without context");
                    if let Err(err) = ready!(ctx.svc.poll_ready(cx)) {
                        return Poll::Ready(Err(A::Error::inner(err)));
                    }
                    if let Some(own) = ctx.own.take() {
                        ctx.in_own = true;
                        ctx.drain_then_own = false;
                        State::Called { fut: ctx.svc.call(own) }
                    } else {
                        let parts = ctx.pending.take().expect("authorised head set before Ready");
                        let body = ctx.next_body.take().expect("body set before Ready");
                        State::Called { fut: ctx.svc.call(Request::from_parts(parts, body)) }
                    }
                }
                StateProj::Failed { err } => {
                    let err = err.take().expect("polled after completion");
                    self.as_mut().project().state.set(State::Done);
                    return Poll::Ready(Err(err.scheme()));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, A, B, ResB> fmt::Debug for ResponseFuture<S, A, B, ResB>
where
    S: Service<Request<ModeBody<A, B>>>,
    A: Authenticator,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Authorizing => "authorizing",
            State::Waiting { .. } => "waiting",
            State::Filling => "filling",
            State::Ready => "ready",
            State::Draining { .. } => "draining",
            State::Reading { .. } => "reading",
            State::Failed { .. } => "failed",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempt", &self.ctx.as_ref().map(|c| c.attempt))
            .field("observed", &self.observer.is_some())
            .finish()
    }
}
