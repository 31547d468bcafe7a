//! The scheme trait every authenticator implements, and the pieces of its signature.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Uri};

use crate::body::ReplayBody;
use crate::error::{BoxError, Error};

/// An authentication scheme, driven by the engine ([`Auth`](crate::Auth)); implement it for your own.
///
/// An [`Authenticator`] is a small state machine with no I/O of its own. The engine
/// ([`Auth`](crate::Auth)) asks it to [`authorize`](Authenticator::authorize) each outgoing
/// request (add a header, a query parameter…), sends the request, and, for schemes that answer
/// challenges, shows it the response through [`on_response`](Authenticator::on_response), which
/// may ask for another exchange with new credentials. That is `httpx.Auth.auth_flow` without
/// generators, and `requests.auth.AuthBase.__call__` when nothing is retried.
///
/// Three associated types choose what the engine does around the scheme, at compile time:
///
/// - [`Mode`](Authenticator::Mode): [`Once`] (the scheme never retries: the request body type is
///   passed through unchanged and nothing is buffered) or [`Replay`] (the engine wraps the body in
///   a [`ReplayBody`](crate::ReplayBody) so the request can be sent again);
/// - [`Error`](Authenticator::Error): [`Infallible`] (the layer keeps the wrapped service's error
///   type) or [`Error`](crate::Error) (the scheme can fail, for example fetching a token);
/// - [`Wait`](Authenticator::Wait): the future returned when credentials are not ready yet
///   ([`NoWait`] for schemes that never wait).
///
/// # A custom scheme
///
/// A scheme that signs each request with a header computed from the method and path:
///
/// ```
/// use std::convert::Infallible;
/// use http::HeaderValue;
/// use tower_auth::{Action, AuthRequest, Authenticator, Authorize, NoWait, Once};
///
/// struct Signed { key_id: &'static str }
///
/// impl Authenticator for Signed {
///     type Mode = Once;
///     type Error = Infallible;
///     type State = ();
///     type Wait = NoWait<Infallible>;
///
///     fn authorize(&self, req: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Infallible> {
///         let line = format!("{} {} {}", self.key_id, req.method(), req.uri().path());
///         let mut value = HeaderValue::try_from(line).expect("ASCII");
///         value.set_sensitive(true);
///         req.headers_mut().insert("x-signature", value);
///         Ok(Authorize::Done)
///     }
/// }
/// # let _ = tower_auth::AuthLayer::new(Signed { key_id: "k1" });
/// ```
///
/// # A scheme with several extra exchanges
///
/// A scheme may answer more than one response per request (like an `httpx` `auth_flow` that
/// yields several times, or NTLM's three legs). Per-request progress lives in
/// [`State`](Authenticator::State). Here a server wants a first token, answers `401` with a
/// `x-step: 2` header, wants a second token, and so on; the scheme follows until the server is
/// satisfied. The engine stops after [`MAX_EXCHANGES`](crate::MAX_EXCHANGES) in any case.
///
/// ```
/// use std::convert::Infallible;
/// use http::{HeaderValue, StatusCode};
/// use tower_auth::{Action, AuthRequest, Authenticator, Authorize, NoWait, Replay};
///
/// struct Stepwise;
///
/// impl Authenticator for Stepwise {
///     type Mode = Replay;
///     type Error = Infallible;
///     type State = u32; // the step the server asked for
///     type Wait = NoWait<Infallible>;
///
///     fn authorize(&self, req: &mut AuthRequest<'_>, step: &mut u32) -> Result<Authorize<Self::Wait>, Infallible> {
///         let value = HeaderValue::from_str(&format!("step-{}", *step)).unwrap();
///         req.headers_mut().insert("x-token", value);
///         Ok(Authorize::Done)
///     }
///
///     fn on_response(&self, _: &http::request::Parts, res: &http::response::Parts, step: &mut u32) -> Action {
///         match res.headers.get("x-step").and_then(|v| v.to_str().ok()?.parse().ok()) {
///             Some(next) if res.status == StatusCode::UNAUTHORIZED && next > *step => {
///                 *step = next;
///                 Action::Retry
///             }
///             _ => Action::Done,
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{AuthLayer, ReplayBody};
///
/// // The server wants step-0, then step-1, then step-2.
/// let server = tower::service_fn(|req: http::Request<ReplayBody<String>>| async move {
///     let step: u32 = req.headers()["x-token"].to_str().unwrap()[5..].parse().unwrap();
///     let res = if step < 2 {
///         http::Response::builder().status(401).header("x-step", (step + 1).to_string()).body(String::new())
///     } else {
///         http::Response::builder().body("welcome".to_string())
///     };
///     Ok::<_, Infallible>(res.unwrap())
/// });
/// let svc = ServiceBuilder::new().layer(AuthLayer::new(Stepwise)).service(server);
/// let res = svc.oneshot(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(res.into_body(), "welcome");
/// # }
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// [`Once`] if the scheme never asks for a retry, [`Replay`] if it may.
    type Mode: BodyMode;
    /// [`Infallible`] if the scheme never fails, [`Error`](crate::Error) if it can.
    type Error: ErrorMode;
    /// Progress of one request across its exchanges; `()` for most schemes.
    type State: Default + Send + 'static;
    /// The future to wait on when credentials are not ready yet; [`NoWait`] if never.
    type Wait: Future<Output = Result<(), Self::Error>> + Send + 'static;

    /// Adds credentials to the request about to be sent.
    ///
    /// Return [`Authorize::Done`] once the request carries what it needs (or nothing, for a
    /// request this scheme does not cover), [`Authorize::Wait`] to have the engine wait and then
    /// call `authorize` again (a token being fetched), or [`Authorize::NeedBody`] to have the
    /// engine buffer the whole request body (within the layer's limit) and call again with
    /// [`AuthRequest::body`] filled in (Digest `auth-int`).
    ///
    /// # Errors
    ///
    /// An error ends the request: the caller gets it instead of a response.
    fn authorize(
        &self,
        req: &mut AuthRequest<'_>,
        state: &mut Self::State,
    ) -> Result<Authorize<Self::Wait>, Self::Error>;

    /// Whether this scheme has credentials for this request at all (its origin, its host in a
    /// netrc file…). [`FirstOf`](crate::FirstOf) uses the first scheme that applies. The default
    /// is `true`.
    fn applies_to(&self, req: &Parts) -> bool {
        let _ = req;
        true
    }

    /// Looks at a response; [`Action::Retry`] sends the request again, authorised anew.
    ///
    /// `req` is the request as the caller made it, before this scheme added anything. Only
    /// called for [`Replay`] schemes. The default answers [`Action::Done`].
    fn on_response(&self, req: &Parts, res: &http::response::Parts, state: &mut Self::State) -> Action {
        let _ = (req, res, state);
        Action::Done
    }
}

/// What [`Authenticator::authorize`] asks of the engine.
#[derive(Debug)]
pub enum Authorize<W> {
    /// The request is ready to be sent.
    Done,
    /// Wait for this future, then call `authorize` again.
    Wait(W),
    /// Buffer the request body, then call `authorize` again with [`AuthRequest::body`] set.
    NeedBody,
}

/// What [`Authenticator::on_response`] asks of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hand the response to the caller.
    Done,
    /// Send the request again, calling `authorize` first.
    Retry,
}

/// The [`Authenticator::Wait`] type of schemes that never wait.
pub type NoWait<E> = std::future::Ready<Result<(), E>>;

/// The request being authorised: its head, mutable, and its body when the engine has it.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    parts: &'a mut Parts,
    body: BodyView<'a>,
    attempt: u32,
}

/// The request body as a scheme can see it.
#[derive(Debug, Clone, Copy)]
pub enum BodyView<'a> {
    /// The body is known to be empty.
    Empty,
    /// The whole body, as buffered chunks.
    Buffered(&'a [Bytes]),
    /// The body is not available (not buffered yet, or larger than the layer's limit).
    Unavailable,
}

impl<'a> AuthRequest<'a> {
    /// A request to authorise. The engine makes these; make one yourself to test a scheme
    /// without a service around it.
    ///
    /// ```
    /// use tower_auth::{AuthRequest, Authenticator, Basic, BodyView};
    ///
    /// let (mut parts, ()) = http::Request::get("https://example.com/").body(()).unwrap().into_parts();
    /// let basic = Basic::new("alice", "s3cret").unwrap();
    /// basic.authorize(&mut AuthRequest::new(&mut parts, BodyView::Empty, 0), &mut ()).unwrap();
    /// assert_eq!(parts.headers["authorization"], "Basic YWxpY2U6czNjcmV0");
    /// ```
    pub fn new(parts: &'a mut Parts, body: BodyView<'a>, attempt: u32) -> Self {
        AuthRequest { parts, body, attempt }
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    /// The request URI.
    pub fn uri(&self) -> &Uri {
        &self.parts.uri
    }

    /// The request URI, to change (an API key in the query).
    pub fn uri_mut(&mut self) -> &mut Uri {
        &mut self.parts.uri
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The request headers, to add credentials.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.parts.headers
    }

    /// The whole request head.
    pub fn parts(&self) -> &Parts {
        self.parts
    }

    /// The whole request head, to change.
    pub fn parts_mut(&mut self) -> &mut Parts {
        self.parts
    }

    /// The request body, as far as the engine has it.
    pub fn body(&self) -> BodyView<'a> {
        self.body
    }

    /// 0 for the first exchange, 1 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Once {}
    impl Sealed for super::Replay {}
    impl Sealed for std::convert::Infallible {}
    impl Sealed for crate::Error {}
}

/// Chooses the request body type the engine gives the wrapped service. Implemented by [`Once`]
/// and [`Replay`] only.
pub trait BodyMode: sealed::Sealed + Send + Sync + 'static {
    /// The body type the wrapped service receives for a caller's body `B`.
    type Body<B>;
    /// Whether schemes of this mode may retry.
    const REPLAY: bool;
    /// Wraps the caller's body for the first exchange; returns the handle that can replay it.
    fn first<B>(body: B, limit: usize) -> (Self::Body<B>, Option<ReplayBody<B>>)
    where
        B: http_body::Body + Send + 'static;
    /// A body for another exchange, if this mode replays.
    fn again<B>(replay: &ReplayBody<B>) -> Option<Self::Body<B>>;
}

/// [`BodyMode`] of schemes that never retry: the body passes through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Once;

/// [`BodyMode`] of schemes that may retry: the body is wrapped in a [`ReplayBody`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Replay;

impl BodyMode for Once {
    type Body<B> = B;
    const REPLAY: bool = false;
    fn first<B>(body: B, _limit: usize) -> (B, Option<ReplayBody<B>>)
    where
        B: http_body::Body + Send + 'static,
    {
        (body, None)
    }
    fn again<B>(_replay: &ReplayBody<B>) -> Option<B> {
        None
    }
}

impl BodyMode for Replay {
    type Body<B> = ReplayBody<B>;
    const REPLAY: bool = true;
    fn first<B>(body: B, limit: usize) -> (ReplayBody<B>, Option<ReplayBody<B>>)
    where
        B: http_body::Body + Send + 'static,
    {
        let body = ReplayBody::new(body, limit);
        let replay = body.clone_for_replay();
        (body, Some(replay))
    }
    fn again<B>(replay: &ReplayBody<B>) -> Option<ReplayBody<B>> {
        Some(replay.clone_for_replay())
    }
}

/// Chooses the error type of the layer. Implemented by [`Infallible`] (the wrapped service's
/// error passes through) and [`Error`](crate::Error) only.
pub trait ErrorMode: sealed::Sealed + fmt::Debug + Send + Sized + 'static {
    /// The layer's error type when the wrapped service fails with `E`.
    type Out<E>;
    /// Wraps the service's error.
    fn inner<E: Into<BoxError>>(err: E) -> Self::Out<E>;
    /// Converts the scheme's own error.
    fn scheme<E>(self) -> Self::Out<E>;
    /// Reports that the request body could not be read.
    fn body<E>(err: BoxError) -> Result<Self::Out<E>, BoxError>;
}

impl ErrorMode for Infallible {
    type Out<E> = E;
    fn inner<E: Into<BoxError>>(err: E) -> E {
        err
    }
    fn scheme<E>(self) -> E {
        match self {}
    }
    fn body<E>(err: BoxError) -> Result<E, BoxError> {
        Err(err)
    }
}

impl ErrorMode for Error {
    type Out<E> = Error;
    fn inner<E: Into<BoxError>>(err: E) -> Error {
        Error::inner(err)
    }
    fn scheme<E>(self) -> Error {
        self
    }
    fn body<E>(err: BoxError) -> Result<Error, BoxError> {
        Ok(Error::body(err))
    }
}

/// The mode of two schemes combined: [`Replay`] if either replays.
pub trait JoinMode<M: BodyMode>: BodyMode {
    /// The combined mode.
    type Out: BodyMode;
}
impl JoinMode<Once> for Once {
    type Out = Once;
}
impl JoinMode<Replay> for Once {
    type Out = Replay;
}
impl JoinMode<Once> for Replay {
    type Out = Replay;
}
impl JoinMode<Replay> for Replay {
    type Out = Replay;
}

/// The error mode of two schemes combined: [`Error`](crate::Error) if either can fail.
pub trait JoinError<E: ErrorMode>: ErrorMode + Sized {
    /// The combined error mode.
    type Out: ErrorMode + From<Self> + From<E>;
}
impl JoinError<Infallible> for Infallible {
    type Out = Infallible;
}
impl JoinError<Error> for Infallible {
    type Out = Error;
}
impl JoinError<Infallible> for Error {
    type Out = Error;
}
impl JoinError<Error> for Error {
    type Out = Error;
}

impl From<Infallible> for Error {
    fn from(never: Infallible) -> Self {
        match never {}
    }
}

/// A scheme made of a closure over the request, for the simple cases (the counterpart of
/// `requests.auth.AuthBase.__call__` and httpx's `FunctionAuth`). Made by
/// [`AuthLayer::from_fn`](crate::AuthLayer::from_fn).
pub struct FnAuth<F>(pub(crate) F);

impl<F> fmt::Debug for FnAuth<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnAuth(..)")
    }
}

impl<F> Authenticator for FnAuth<F>
where
    F: Fn(&mut AuthRequest<'_>) + Send + Sync + 'static,
{
    type Mode = Once;
    type Error = Infallible;
    type State = ();
    type Wait = NoWait<Infallible>;

    fn authorize(&self, req: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Infallible> {
        (self.0)(req);
        Ok(Authorize::Done)
    }
}
