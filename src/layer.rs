//! [`AuthLayer`] and [`Auth`]: the one engine every scheme runs on.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::authenticator::{AuthRequest, Authenticator, Authorize, BodyMode, BodyView, ErrorMode, FnAuth};
use crate::body::DEFAULT_BODY_LIMIT;
use crate::error::BoxError;
use crate::future::ResponseFuture;

/// The request body type the wrapped service receives from [`Auth<S, A>`] for a caller's body
/// `B`: `B` itself for schemes that never retry, [`ReplayBody<B>`](crate::ReplayBody) otherwise.
pub type ModeBody<A, B> = <<A as Authenticator>::Mode as BodyMode>::Body<B>;

/// The most exchanges the engine makes for one request, whatever the scheme asks: the first
/// one and at most three retries. Built-in schemes use at most three (a challenge, then a
/// `stale=true` nonce).
pub const MAX_EXCHANGES: u32 = 4;

/// A [`Layer`] that authenticates every request with the scheme `A`.
///
/// The scheme is shared (behind an [`Arc`]) by every service the layer makes and by their
/// clones, so state such as Digest nonces or OAuth2 tokens is shared too.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::AuthLayer;
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     assert_eq!(req.headers()["authorization"], "Basic YWxpY2U6czNjcmV0");
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// let svc = ServiceBuilder::new()
///     .layer(AuthLayer::basic("alice", "s3cret")?)
///     .service(client);
/// let res = svc.oneshot(http::Request::get("https://api.example/").body(String::new())?).await?;
/// assert_eq!(res.status(), 200);
/// # Ok(()) }
/// ```
pub struct AuthLayer<A> {
    auth: Arc<A>,
    body_limit: usize,
}

impl<A> AuthLayer<A> {
    /// A layer for any scheme, built-in or your own.
    pub fn new(auth: A) -> Self {
        AuthLayer::from_arc(Arc::new(auth))
    }

    /// A layer for a scheme that is already shared.
    pub fn from_arc(auth: Arc<A>) -> Self {
        AuthLayer { auth, body_limit: DEFAULT_BODY_LIMIT }
    }

    /// Sets the most request body bytes kept to replay a request after a challenge (default
    /// [`DEFAULT_BODY_LIMIT`], 64 KiB). A larger body is sent once; if it meets a challenge, the
    /// challenge response is handed back unchanged. Schemes that never retry ignore it.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The scheme.
    pub fn authenticator(&self) -> &Arc<A> {
        &self.auth
    }
}

impl<F> AuthLayer<FnAuth<F>>
where
    F: Fn(&mut AuthRequest<'_>) + Send + Sync + 'static,
{
    /// A layer whose scheme is a closure called on every request (it never retries).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_auth::AuthLayer;
    /// # let client = tower::service_fn(|req: http::Request<String>| async move {
    /// #     assert_eq!(req.headers()["x-tenant"], "blue");
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// # });
    ///
    /// let svc = ServiceBuilder::new()
    ///     .layer(AuthLayer::from_fn(|req| {
    ///         req.headers_mut().insert("x-tenant", http::HeaderValue::from_static("blue"));
    ///     }))
    ///     .service(client);
    /// svc.oneshot(http::Request::new(String::new())).await.unwrap();
    /// # }
    /// ```
    pub fn from_fn(f: F) -> Self {
        AuthLayer::new(FnAuth(f))
    }
}

impl<A> Clone for AuthLayer<A> {
    fn clone(&self) -> Self {
        AuthLayer { auth: Arc::clone(&self.auth), body_limit: self.body_limit }
    }
}

impl<A: fmt::Debug> fmt::Debug for AuthLayer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer").field("auth", &self.auth).field("body_limit", &self.body_limit).finish()
    }
}

impl<S, A> Layer<S> for AuthLayer<A> {
    type Service = Auth<S, A>;

    fn layer(&self, inner: S) -> Auth<S, A> {
        Auth { inner, auth: Arc::clone(&self.auth), body_limit: self.body_limit }
    }
}

/// A service that authenticates requests with the scheme `A` before handing them to `S`.
///
/// Made by [`AuthLayer`]. For schemes of [`Once`](crate::Once) mode the request body type is
/// passed through unchanged; for [`Replay`](crate::Replay) schemes `S` receives
/// [`ReplayBody<B>`](crate::ReplayBody). For schemes that cannot fail the error type is `S`'s
/// own; otherwise it is [`Error`](crate::Error).
pub struct Auth<S, A> {
    inner: S,
    auth: Arc<A>,
    body_limit: usize,
}

impl<S, A> Auth<S, A> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The scheme.
    pub fn authenticator(&self) -> &Arc<A> {
        &self.auth
    }
}

impl<S: Clone, A> Clone for Auth<S, A> {
    fn clone(&self) -> Self {
        Auth { inner: self.inner.clone(), auth: Arc::clone(&self.auth), body_limit: self.body_limit }
    }
}

impl<S: fmt::Debug, A: fmt::Debug> fmt::Debug for Auth<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").field("inner", &self.inner).field("auth", &self.auth).finish()
    }
}

impl<S, A, B, ResB> Service<Request<B>> for Auth<S, A>
where
    A: Authenticator,
    B: Body + Send + 'static,
    B::Data: Buf,
    S: Service<Request<ModeBody<A, B>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ResB: Body,
{
    type Response = Response<ResB>;
    type Error = <A::Error as ErrorMode>::Out<S::Error>;
    type Future = ResponseFuture<S, A, B, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(A::Error::inner)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        if !<A::Mode as BodyMode>::REPLAY {
            // Fast path: authorise in place and send; no state kept past this call.
            let mut state = A::State::default();
            let view = if body.is_end_stream() { BodyView::Empty } else { BodyView::Unavailable };
            match self.auth.authorize(&mut AuthRequest::new(&mut parts, view, 0), &mut state) {
                Ok(Authorize::Done) | Ok(Authorize::NeedBody) => {
                    let (body, _) = A::Mode::first(body, 0);
                    return ResponseFuture::called(self.inner.call(Request::from_parts(parts, body)));
                }
                Ok(Authorize::Wait(wait)) => {
                    let svc = take_ready(&mut self.inner);
                    let (body, _) = A::Mode::first(body, 0);
                    return ResponseFuture::waiting(svc, Arc::clone(&self.auth), parts, body, None, state, wait);
                }
                Err(err) => return ResponseFuture::failed(err),
            }
        }
        let svc = take_ready(&mut self.inner);
        let (body, replay) = A::Mode::first(body, self.body_limit);
        ResponseFuture::start(svc, Arc::clone(&self.auth), parts, body, replay)
    }
}

/// Takes the service that `poll_ready` made ready, leaving a clone in its place (the pattern of
/// tower-http's `AsyncRequireAuthorization`).
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
