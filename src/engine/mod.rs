//! The engine every scheme runs on: [`AuthLayer`] and [`Auth`], the one [`ResponseFuture`], the
//! [`ReplayBody`] that lets a request be sent again, the compile-time modes of a scheme, and the
//! errors.
//!
//! | piece | what it does |
//! |---|---|
//! | [`AuthLayer`], [`Auth`] | the layer and its service; `call` authorises in place on the fast path |
//! | [`ResponseFuture`] | waits, sends, shows the response to the scheme, replays (its steps are documented there) |
//! | [`ReplayBody`] | the caller's body, kept (up to [`AuthLayer::body_limit`]) so it can be sent again |
//! | [`BodyMode`] ([`Once`], [`Replay`], [`Flow`]) | whether the wrapped service gets the caller's body type or [`ReplayBody`], and whether the caller gets the wrapped service's response body or a [`ResponseBody`] |
//! | [`ResponseBody`] | the response body of [`Flow`] schemes: the bytes a scheme read, then the rest |
//! | [`ErrorMode`] ([`Infallible`](std::convert::Infallible), [`Error`]) | whether the layer keeps the wrapped service's error type |
//! | [`JoinMode`], [`JoinError`], [`FitsIn`] | how modes combine in [`AllOf`](crate::AllOf), routers and boxes |

pub(crate) mod body;
pub(crate) mod error;
mod future;
pub(crate) mod mode;

pub use body::{DEFAULT_BODY_LIMIT, ReplayBody, ResponseBody};
pub use error::{BoxError, ConfigError, Error};
pub use future::ResponseFuture;
pub use mode::{BodyMode, ErrorMode, FitsIn, Flow, JoinError, JoinMode, Once, Replay};

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use self::future::Setup;
use crate::authenticator::{AuthRequest, Authenticator, Authorize, BodyView, FnAuth};

/// The request body type the wrapped service receives from [`Auth<S, A>`] for a caller's body
/// `B`: `B` itself for schemes that never retry, [`ReplayBody<B>`](crate::ReplayBody) otherwise.
pub type ModeBody<A, B> = <<A as Authenticator>::Mode as BodyMode>::Body<B>;

/// The response body type the caller gets from [`Auth<S, A>`] for the wrapped service's body
/// `R`: `R` itself, or [`ResponseBody<R>`] for schemes of [`Flow`] mode.
pub type ModeResBody<A, R> = <<A as Authenticator>::Mode as BodyMode>::ResBody<R>;

/// The most exchanges the engine makes for one request, whatever the scheme asks: the first
/// one and at most three retries. Built-in schemes use at most three (a challenge, then a
/// `stale=true` nonce).
pub const MAX_EXCHANGES: u32 = 4;

/// Where a redirect follower below the layer records the URI a response came from: a function
/// from the response head to that URI. See [`AuthLayer::response_uri`].
pub type ResponseUriFn = for<'a> fn(&'a http::response::Parts) -> Option<&'a http::Uri>;

/// tower-http's `FollowRedirect` records the last URI in the `RequestUri` extension.
#[cfg(feature = "tower-http")]
fn tower_http_request_uri(res: &http::response::Parts) -> Option<&http::Uri> {
    res.extensions.get::<tower_http::follow_redirect::RequestUri>().map(|uri| &uri.0)
}

#[cfg(feature = "tower-http")]
const DEFAULT_RESPONSE_URI: Option<ResponseUriFn> = Some(tower_http_request_uri);
#[cfg(not(feature = "tower-http"))]
const DEFAULT_RESPONSE_URI: Option<ResponseUriFn> = None;

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
    response_uri: Option<ResponseUriFn>,
}

impl<A> AuthLayer<A> {
    /// A layer for any scheme, built-in or your own.
    pub fn new(auth: A) -> Self {
        AuthLayer::from_arc(Arc::new(auth))
    }

    /// A layer for a scheme that is already shared.
    pub fn from_arc(auth: Arc<A>) -> Self {
        AuthLayer { auth, body_limit: DEFAULT_BODY_LIMIT, response_uri: DEFAULT_RESPONSE_URI }
    }

    /// Sets the most request body bytes kept to replay a request after a challenge (default
    /// [`DEFAULT_BODY_LIMIT`], 64 KiB). A larger body is sent once; if it meets a challenge, the
    /// challenge response is handed back unchanged. Schemes that never retry ignore it.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Tells the engine where a redirect follower *below* this layer records the URI a
    /// response came from, so that a response from another origin than the request's is never
    /// shown to the scheme (its challenge is not answered, its rejection not learnt from). With
    /// the `tower-http` feature (on by default) the engine reads tower-http's
    /// `FollowRedirect` extension `RequestUri` already; set this for another follower.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_auth::{AuthLayer, Digest};
    ///
    /// #[derive(Clone)]
    /// struct LastUri(http::Uri); // what your follower stores in the response's extensions
    ///
    /// let layer = AuthLayer::new(Digest::new("alice", "s3cret")?)
    ///     .response_uri(|res| res.extensions.get::<LastUri>().map(|last| &last.0));
    /// # Ok(()) }
    /// ```
    pub fn response_uri(mut self, response_uri: ResponseUriFn) -> Self {
        self.response_uri = Some(response_uri);
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
        AuthLayer { auth: Arc::clone(&self.auth), body_limit: self.body_limit, response_uri: self.response_uri }
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
        Auth { inner, auth: Arc::clone(&self.auth), body_limit: self.body_limit, response_uri: self.response_uri }
    }
}

/// A service that authenticates requests with the scheme `A` before handing them to `S`.
///
/// Made by [`AuthLayer`]. For schemes of [`Once`] mode the request body type is
/// passed through unchanged; for [`Replay`] schemes `S` receives
/// [`ReplayBody<B>`](crate::ReplayBody). For schemes that cannot fail the error type is `S`'s
/// own; otherwise it is [`Error`].
pub struct Auth<S, A> {
    inner: S,
    auth: Arc<A>,
    body_limit: usize,
    response_uri: Option<ResponseUriFn>,
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
        Auth {
            inner: self.inner.clone(),
            auth: Arc::clone(&self.auth),
            body_limit: self.body_limit,
            response_uri: self.response_uri,
        }
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
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ModeResBody<A, ResB>>;
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
            // Fast path: authorise in place and send.
            let mut state = A::State::default();
            let observes = self.auth.observes_responses();
            // A scheme that looks at responses sees the request as the caller made it.
            let original = match observes {
                false => None,
                true if self.auth.needs_request_head() => Some(future::clone_parts(&parts)),
                true => Some(future::bare_parts(&parts)),
            };
            let view = if body.is_end_stream() { BodyView::Empty } else { BodyView::Unavailable };
            match self.auth.authorize(&mut AuthRequest::engine(&mut parts, view, 0, false), &mut state) {
                Ok(Authorize::Done) | Ok(Authorize::NeedBody) => {
                    let (body, _) = A::Mode::first(body, 0);
                    let fut = self.inner.call(Request::from_parts(parts, body));
                    return match original {
                        None => ResponseFuture::called(fut),
                        Some(original) => {
                            ResponseFuture::observed(fut, Arc::clone(&self.auth), original, state, self.response_uri)
                        }
                    };
                }
                Ok(Authorize::Wait(wait)) => {
                    let (body, replay) = A::Mode::first(body, 0);
                    // A scheme that waits leaves the request as it found it (see
                    // `Authorize::Wait`); it authorises a copy of it after the wait.
                    let original = original.unwrap_or(parts);
                    // Waiting holds no readiness of the inner service (a `Buffer` slot, a
                    // `ConcurrencyLimit` permit): the service made ready for this call is
                    // dropped, and a fresh handle is made ready just before sending.
                    let ready = take_ready(&mut self.inner);
                    let svc = ready.clone();
                    drop(ready);
                    let setup = Setup {
                        svc,
                        auth: Arc::clone(&self.auth),
                        original,
                        body,
                        replay,
                        state,
                        response_uri: self.response_uri,
                        limit: self.body_limit,
                    };
                    return ResponseFuture::start(setup, Some(wait));
                }
                Err(err) => return ResponseFuture::failed(err),
            }
        }
        let (body, replay) = A::Mode::first(body, self.body_limit);
        let setup = Setup {
            svc: take_ready(&mut self.inner),
            auth: Arc::clone(&self.auth),
            original: parts,
            body,
            replay,
            state: A::State::default(),
            response_uri: self.response_uri,
            limit: self.body_limit,
        };
        ResponseFuture::start(setup, None)
    }
}

/// Takes the service that `poll_ready` made ready, leaving a clone in its place (the pattern of
/// tower-http's `AsyncRequireAuthorization`).
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
