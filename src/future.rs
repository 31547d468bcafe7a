//! [`ResponseFuture`]: authorise, send, and (for schemes that answer challenges) retry.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize, BodyMode, BodyView, ErrorMode};
use crate::body::ReplayBody;
use crate::error::BoxError;
use crate::layer::{MAX_EXCHANGES, ModeBody};

/// How many times one request may wait for credentials before it is sent without them.
const MAX_WAITS: u32 = 3;
/// The most bytes of a challenge response body read (and dropped) so that the connection can
/// be reused; a larger body is dropped unread.
const DRAIN_LIMIT: usize = 64 * 1024;

type ErrorOut<A, S, B> =
    <<A as Authenticator>::Error as ErrorMode>::Out<<S as Service<Request<ModeBody<A, B>>>>::Error>;

pin_project! {
    /// The future of [`Auth`](crate::Auth): authorises the request (waiting for credentials if
    /// the scheme must), sends it, and lets the scheme answer a challenge by sending it again.
    pub struct ResponseFuture<S, A, B, ResB>
    where
        S: Service<Request<ModeBody<A, B>>>,
        A: Authenticator,
    {
        #[pin]
        state: State<S::Future, A::Wait, ResB, A::Error>,
        ctx: Option<Box<Ctx<S, A, B>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, W, ResB, E> {
        Called { #[pin] fut: F },
        Authorizing,
        Waiting { #[pin] wait: W },
        Filling,
        Ready,
        Draining { #[pin] body: ResB, read: usize },
        Failed { err: Option<E> },
        Done,
    }
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
    waits: u32,
    body_requested: bool,
}

impl<S, A, B, ResB> ResponseFuture<S, A, B, ResB>
where
    S: Service<Request<ModeBody<A, B>>>,
    A: Authenticator,
    B: Body,
{
    pub(crate) fn called(fut: S::Future) -> Self {
        ResponseFuture { state: State::Called { fut }, ctx: None }
    }

    pub(crate) fn failed(err: A::Error) -> Self {
        ResponseFuture { state: State::Failed { err: Some(err) }, ctx: None }
    }

    pub(crate) fn waiting(
        svc: S,
        auth: Arc<A>,
        parts: Parts,
        body: ModeBody<A, B>,
        replay: Option<ReplayBody<B>>,
        state: A::State,
        wait: A::Wait,
    ) -> Self {
        let mut ctx = Ctx::new(svc, auth, parts, body, replay, false);
        ctx.state = state;
        ctx.waits = 1;
        ResponseFuture { state: State::Waiting { wait }, ctx: Some(Box::new(ctx)) }
    }

    pub(crate) fn start(
        svc: S,
        auth: Arc<A>,
        parts: Parts,
        body: ModeBody<A, B>,
        replay: Option<ReplayBody<B>>,
    ) -> Self {
        let empty = replay.as_ref().is_some_and(ReplayBody::is_empty_body);
        let ctx = Ctx::new(svc, auth, parts, body, replay, empty);
        ResponseFuture { state: State::Authorizing, ctx: Some(Box::new(ctx)) }
    }
}

impl<S, A: Authenticator, B> Ctx<S, A, B> {
    fn new(
        svc: S,
        auth: Arc<A>,
        original: Parts,
        body: ModeBody<A, B>,
        replay: Option<ReplayBody<B>>,
        body_empty: bool,
    ) -> Self {
        Ctx {
            svc,
            auth,
            original,
            state: A::State::default(),
            replay,
            body_empty,
            next_body: Some(body),
            pending: None,
            attempt: 0,
            waits: 0,
            body_requested: false,
        }
    }
}

/// Whether the response was produced by another origin than the request's: tower-http's
/// `FollowRedirect` below this layer records the final URI in the response. A challenge from
/// there is not ours to answer (credentials go only to the origin they were configured for).
#[cfg(feature = "tower-http")]
fn answered_elsewhere(req: &Parts, res: &http::response::Parts) -> bool {
    use crate::origin::Origin;
    res.extensions
        .get::<tower_http::follow_redirect::RequestUri>()
        .is_some_and(|last| last.0 != req.uri && Origin::from_uri(&last.0) != Origin::from_uri(&req.uri))
}

#[cfg(not(feature = "tower-http"))]
fn answered_elsewhere(_: &Parts, _: &http::response::Parts) -> bool {
    false
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
    S: Service<Request<ModeBody<A, B>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    A: Authenticator,
    B: Body,
    B::Data: Buf,
    ResB: Body,
{
    type Output = Result<Response<ResB>, ErrorOut<A, S, B>>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            let next = match this.state.project() {
                StateProj::Called { fut } => {
                    let res = match ready!(fut.poll(cx)) {
                        Ok(res) => res,
                        Err(err) => return Poll::Ready(Err(A::Error::inner(err))),
                    };
                    let Some(ctx) = this.ctx.as_deref_mut() else {
                        return Poll::Ready(Ok(res));
                    };
                    if !<A::Mode as BodyMode>::REPLAY {
                        return Poll::Ready(Ok(res));
                    }
                    let (parts, body) = res.into_parts();
                    if answered_elsewhere(&ctx.original, &parts) {
                        tracing::debug!(
                            status = %parts.status,
                            "the response comes from another origin than the request's (a redirect was followed below this layer); its challenge is not answered"
                        );
                        return Poll::Ready(Ok(Response::from_parts(parts, body)));
                    }
                    if ctx.auth.on_response(&ctx.original, &parts, &mut ctx.state) == Action::Done {
                        return Poll::Ready(Ok(Response::from_parts(parts, body)));
                    }
                    if ctx.attempt + 1 >= MAX_EXCHANGES {
                        tracing::warn!(
                            status = %parts.status,
                            exchanges = MAX_EXCHANGES,
                            "the authentication scheme asked for another exchange past the limit; the response is returned as is"
                        );
                        return Poll::Ready(Ok(Response::from_parts(parts, body)));
                    }
                    let next = ctx.replay.as_ref().filter(|r| r.is_replayable()).and_then(A::Mode::again);
                    let Some(next) = next else {
                        tracing::warn!(
                            status = %parts.status,
                            "the request body is larger than the layer's replay limit (AuthLayer::body_limit), so the request cannot be sent again; the challenge response is returned as is"
                        );
                        return Poll::Ready(Ok(Response::from_parts(parts, body)));
                    };
                    ctx.next_body = Some(next);
                    ctx.attempt += 1;
                    State::Draining { body, read: 0 }
                }
                StateProj::Draining { mut body, read } => {
                    // Read a small challenge body to its end so the connection can be reused.
                    while !body.is_end_stream() && *read <= DRAIN_LIMIT {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => *read += frame.data_ref().map_or(0, |d| d.remaining()),
                            _ => break,
                        }
                    }
                    State::Authorizing
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
                    let decision =
                        ctx.auth.authorize(&mut AuthRequest::new(&mut parts, view, ctx.attempt), &mut ctx.state);
                    match decision {
                        Ok(Authorize::Done) => {
                            ctx.pending = Some(parts);
                            State::Ready
                        }
                        Ok(Authorize::NeedBody) if !ctx.body_requested && !ctx.body_empty && ctx.replay.is_some() => {
                            ctx.body_requested = true;
                            State::Filling
                        }
                        Ok(Authorize::NeedBody) => {
                            tracing::debug!(
                                "the scheme asked for the request body, which is not available; sending as authorised"
                            );
                            ctx.pending = Some(parts);
                            State::Ready
                        }
                        Ok(Authorize::Wait(wait)) if ctx.waits < MAX_WAITS => {
                            ctx.waits += 1;
                            State::Waiting { wait }
                        }
                        Ok(Authorize::Wait(_)) => {
                            tracing::warn!(
                                "credentials were still not ready after {MAX_WAITS} waits; sending without them"
                            );
                            ctx.pending = Some(parts);
                            State::Ready
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
                    let parts = ctx.pending.take().expect("authorised head set before Ready");
                    let body = ctx.next_body.take().expect("body set before Ready");
                    State::Called { fut: ctx.svc.call(Request::from_parts(parts, body)) }
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
            State::Failed { .. } => "failed",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempt", &self.ctx.as_ref().map(|c| c.attempt))
            .finish()
    }
}
