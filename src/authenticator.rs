//! The scheme trait every authenticator implements, and the pieces of its signature.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Uri};

use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderValue;
use http::header::{HeaderName, PROXY_AUTHORIZATION};

pub(crate) use crate::engine::mode::{BodyMode, ErrorMode, Once};

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
///   passed through unchanged and nothing is buffered) or [`Replay`](crate::Replay) (the engine wraps the body in
///   a [`ReplayBody`](crate::ReplayBody) so the request can be sent again);
/// - [`Error`](Authenticator::Error): [`Infallible`] (the layer keeps the wrapped service's error
///   type) or [`Error`](crate::Error) (the scheme can fail, for example fetching a token);
/// - [`Wait`](Authenticator::Wait): the future returned when credentials are not ready yet
///   ([`NoWait`] for schemes that never wait).
///
/// # A custom scheme
///
/// A scheme that only adds credentials (never waits, never fails, never retries) implements the
/// small [`Credential`] trait and gets [`Authenticator`] from a blanket impl. Here a header
/// computed from the method and path, set with [`AuthRequest::set_credential`] so that the
/// crate's rules apply (the caller's own header wins, the value is marked sensitive):
///
/// ```
/// use http::{HeaderName, HeaderValue};
/// use tower_auth::{AuthRequest, Credential};
///
/// struct Signed { key_id: &'static str }
///
/// impl Credential for Signed {
///     fn apply(&self, req: &mut AuthRequest<'_>) {
///         let line = format!("{} {} {}", self.key_id, req.method(), req.uri().path());
///         if let Ok(value) = HeaderValue::try_from(line) {
///             req.set_credential(&HeaderName::from_static("x-signature"), &value);
///         }
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
    /// [`Once`] if the scheme never asks for a retry, [`Replay`](crate::Replay) if it may.
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

    /// Whether a scheme of [`Once`] mode wants to see responses through
    /// [`on_response`](Authenticator::on_response) (a token source that must learn its token
    /// was rejected: `401`, or gRPC's `grpc-status: 16`). [`Replay`](crate::Replay) schemes always see them.
    /// The default, `false`, keeps the engine's fast path: nothing is kept per request.
    #[inline]
    fn observes_responses(&self) -> bool {
        false
    }

    /// Whether [`on_response`](Authenticator::on_response) of a [`Once`] scheme that observes
    /// responses reads the request's headers or extensions. `false` spares the engine a copy of
    /// every request head (the OAuth2 scheme keeps what it needs in its state): `req` then holds
    /// the method, URI and version only. The default, `true`, shows the whole head.
    #[inline]
    fn needs_request_head(&self) -> bool {
        true
    }

    /// Whether the scheme authenticates a *connection* rather than a request (NTLM, Negotiate):
    /// its legs must travel on one connection. The `CONNECT` loop of
    /// [`ProxyConnector`](crate::connect::ProxyConnector) then fails with a typed error when the
    /// proxy closes the connection mid-handshake, instead of sending the next leg on a new
    /// connection (where it could only fail). The default is `false`.
    fn connection_bound(&self) -> bool {
        false
    }

    /// Looks at a response; [`Action::Retry`] sends the request again, authorised anew.
    ///
    /// `req` is the request as the caller made it, before this scheme added anything. Called
    /// for every response of a [`Replay`](crate::Replay) scheme, and of a [`Once`] scheme whose
    /// [`observes_responses`](Authenticator::observes_responses) is `true`; the engine honours
    /// [`Action::Retry`] only for [`Replay`](crate::Replay) schemes (a [`Once`] scheme cannot resend the
    /// caller's body). [`credentials_rejected`] tells a rejection apart from other answers. The
    /// default answers [`Action::Done`].
    fn on_response(&self, req: &Parts, res: &http::response::Parts, state: &mut Self::State) -> Action {
        let _ = (req, res, state);
        Action::Done
    }

    /// The response body a [`Flow`](crate::engine::Flow) scheme asked for with
    /// [`Action::ReadBody`] (httpx's `requires_response_body`), read whole up to the layer's
    /// [`body_limit`](crate::AuthLayer::body_limit). The caller receives the same bytes. A body
    /// over the limit is not shown: the response goes to the caller as it is, unread bytes
    /// included. The default answers [`Action::Done`].
    fn on_response_body(
        &self,
        req: &Parts,
        res: &http::response::Parts,
        body: &Bytes,
        state: &mut Self::State,
    ) -> Action {
        let _ = (req, res, body, state);
        Action::Done
    }

    /// The request of its own a [`Flow`](crate::engine::Flow) scheme sends through the wrapped
    /// service after answering [`Action::SendOwn`] (httpx's `yield self.build_refresh_request()`):
    /// a token refresh, a login. It is sent as it is (not authorised by the scheme); its whole
    /// response goes to [`on_own_response`](Authenticator::on_own_response). `None` returns the
    /// response at hand to the caller. The default is `None`.
    fn own_request(&self, req: &Parts, state: &mut Self::State) -> Option<http::Request<Bytes>> {
        let _ = (req, state);
        None
    }

    /// The response to the scheme's own request, its body read whole (up to the layer's limit).
    /// [`Action::Retry`] (the default) sends the caller's request again, authorised anew;
    /// [`Action::Done`] hands this response to the caller (as httpx returns a flow's last
    /// response); another [`Action::SendOwn`] sends one more request of its own. Every request
    /// counts towards [`MAX_EXCHANGES`](crate::MAX_EXCHANGES).
    fn on_own_response(
        &self,
        req: &Parts,
        res: &http::response::Parts,
        body: &Bytes,
        state: &mut Self::State,
    ) -> Action {
        let _ = (req, res, body, state);
        Action::Retry
    }
}

/// What [`Authenticator::authorize`] asks of the engine.
#[derive(Debug)]
pub enum Authorize<W> {
    /// The request is ready to be sent.
    Done,
    /// Wait for this future, then call `authorize` again on a fresh copy of the caller's
    /// request (return `Wait` before changing the request). The engine waits as long as the
    /// future takes and never sends the request without what the scheme decides: bound the
    /// wait in the future itself (a scheme's timeout, failing with
    /// [`Error::timeout`](crate::Error::timeout)). While waiting, the request holds no readiness
    /// of the wrapped service.
    Wait(W),
    /// Buffer the request body, then call `authorize` again with [`AuthRequest::body`] set.
    NeedBody,
}

/// What [`Authenticator::on_response`] (and its body and own-request siblings) asks of the
/// engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hand the response to the caller.
    Done,
    /// Send the request again, calling `authorize` first ([`Replay`](crate::Replay) and
    /// [`Flow`](crate::engine::Flow) schemes).
    Retry,
    /// Read the response body and show it to
    /// [`on_response_body`](Authenticator::on_response_body) ([`Flow`](crate::engine::Flow)
    /// schemes).
    ReadBody,
    /// Send the scheme's [`own_request`](Authenticator::own_request) through the wrapped service,
    /// then show its response to [`on_own_response`](Authenticator::on_own_response)
    /// ([`Flow`](crate::engine::Flow) schemes).
    SendOwn,
}

impl Action {
    /// The stronger of two answers, for combined schemes: `SendOwn` > `ReadBody` > `Retry` >
    /// `Done`.
    pub fn max(self, other: Action) -> Action {
        fn rank(a: Action) -> u8 {
            match a {
                Action::Done => 0,
                Action::Retry => 1,
                Action::ReadBody => 2,
                Action::SendOwn => 3,
            }
        }
        if rank(other) > rank(self) { other } else { self }
    }
}

/// The [`Authenticator::Wait`] type of schemes that never wait.
pub type NoWait<E> = std::future::Ready<Result<(), E>>;

/// The request being authorised: its head, mutable, and its body when the engine has it.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    parts: &'a mut Parts,
    body: BodyView<'a>,
    attempt: u32,
    /// Whether the engine can send a replacement body ([`AuthRequest::replace_body`]).
    replaceable: bool,
    /// The body to send instead of the caller's, set by the scheme.
    replacement: Option<Bytes>,
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
        AuthRequest { parts, body, attempt, replaceable: true, replacement: None }
    }

    /// A request whose body the engine can replace only for schemes that replay (their body is
    /// a [`ReplayBody`](crate::ReplayBody), which can carry bytes of the scheme's own).
    pub(crate) fn engine(parts: &'a mut Parts, body: BodyView<'a>, attempt: u32, replaceable: bool) -> Self {
        AuthRequest { parts, body, attempt, replaceable, replacement: None }
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

    /// Sends `body` instead of the caller's body on this exchange (OAuth 1.0a's parameters in
    /// a form body), and sets `Content-Length` to its length. The caller's body must be one the
    /// scheme has read whole ([`BodyView::Buffered`] or [`BodyView::Empty`]): the replacement
    /// usually extends it.
    ///
    /// Only schemes of a replaying mode ([`Replay`](crate::Replay), [`Flow`](crate::engine::Flow))
    /// can replace the body: the wrapped service then receives a
    /// [`ReplayBody`](crate::ReplayBody) holding these bytes. For a [`Once`] scheme (whose
    /// wrapped service takes the caller's own body type) nothing changes and this returns
    /// `false`: the scheme must then fail rather than send a request without what it decided.
    /// A retry authorises the caller's request anew, so the scheme replaces the body again.
    ///
    /// ```
    /// use tower_auth::{AuthRequest, BodyView};
    ///
    /// let (mut parts, ()) = http::Request::post("https://example.com/").body(()).unwrap().into_parts();
    /// let mut req = AuthRequest::new(&mut parts, BodyView::Empty, 0);
    /// assert!(req.replace_body(bytes::Bytes::from_static(b"a=1")));
    /// assert_eq!(req.replaced_body().unwrap(), "a=1");
    /// assert_eq!(parts.headers["content-length"], "3");
    /// ```
    pub fn replace_body(&mut self, body: Bytes) -> bool {
        if !self.replaceable {
            return false;
        }
        self.parts.headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        self.replacement = Some(body);
        true
    }

    /// The body set by [`replace_body`](AuthRequest::replace_body), if any.
    pub fn replaced_body(&self) -> Option<&Bytes> {
        self.replacement.as_ref()
    }

    /// Takes the replacement body (the engine, once the scheme is done).
    pub(crate) fn take_replacement(&mut self) -> Option<Bytes> {
        self.replacement.take()
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

impl<F> Credential for FnAuth<F>
where
    F: Fn(&mut AuthRequest<'_>) + Send + Sync + 'static,
{
    #[inline]
    fn apply(&self, req: &mut AuthRequest<'_>) {
        (self.0)(req);
    }
}

/// The small trait of schemes that only add credentials: they never wait, never fail and never
/// retry (Basic, Bearer, API keys, any fixed header, a closure). A blanket impl makes every
/// `Credential` an [`Authenticator`] of [`Once`] mode: the request body type passes through
/// unchanged and nothing is kept per request.
///
/// Set headers with [`AuthRequest::set_credential`], which applies the crate's rules in one place.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use http::{HeaderName, HeaderValue};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{AuthLayer, AuthRequest, Credential};
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     assert_eq!(req.headers()["x-tenant-key"], "k-42");
/// #     assert!(req.headers()["x-tenant-key"].is_sensitive());
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// struct TenantKey(HeaderValue);
///
/// impl Credential for TenantKey {
///     fn apply(&self, req: &mut AuthRequest<'_>) {
///         req.set_credential(&HeaderName::from_static("x-tenant-key"), &self.0);
///     }
/// }
///
/// let svc = ServiceBuilder::new()
///     .layer(AuthLayer::new(TenantKey(HeaderValue::from_static("k-42"))))
///     .service(client);
/// svc.oneshot(http::Request::new(String::new())).await.unwrap();
/// # }
/// ```
pub trait Credential: Send + Sync + 'static {
    /// Adds the credentials to the request.
    fn apply(&self, req: &mut AuthRequest<'_>);

    /// Whether this credential is for this request at all (see
    /// [`Authenticator::applies_to`]). The default is `true`.
    #[inline]
    fn applies_to(&self, req: &Parts) -> bool {
        let _ = req;
        true
    }
}

impl<C: Credential> Authenticator for C {
    type Mode = Once;
    type Error = Infallible;
    type State = ();
    type Wait = NoWait<Infallible>;

    #[inline]
    fn authorize(&self, req: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Infallible> {
        self.apply(req);
        Ok(Authorize::Done)
    }

    #[inline]
    fn applies_to(&self, req: &Parts) -> bool {
        Credential::applies_to(self, req)
    }
}

impl AuthRequest<'_> {
    /// Sets a credential header with every rule of the crate, the one place they live:
    ///
    /// - a request that already carries `name` keeps it (the caller's explicit credentials win);
    /// - `Proxy-Authorization` goes only with `http://` requests, sent to the proxy in absolute
    ///   form: an `https://` request travels inside a `CONNECT` tunnel, where proxy credentials
    ///   must not go;
    /// - the value sent is marked sensitive (`HeaderValue::set_sensitive`), so HTTP/2 HPACK never
    ///   indexes it and tower-http's tracing shows it as `Sensitive`.
    ///
    /// Returns whether the header was set. Copying a `HeaderValue` does not allocate.
    #[inline]
    pub fn set_credential(&mut self, name: &HeaderName, value: &HeaderValue) -> bool {
        if *name == PROXY_AUTHORIZATION && !proxy_may_see(&self.parts.uri) {
            return false;
        }
        if self.parts.headers.contains_key(name) {
            return false;
        }
        let mut value = value.clone();
        value.set_sensitive(true);
        self.parts.headers.insert(name.clone(), value);
        true
    }
}

/// Whether `Proxy-Authorization` may go with a request to `uri`: not into a tunnel.
#[inline]
pub(crate) fn proxy_may_see(uri: &Uri) -> bool {
    uri.scheme() != Some(&http::uri::Scheme::HTTPS)
}

/// Whether a response says the credentials sent were rejected: `401 Unauthorized`, `407 Proxy
/// Authentication Required`, or a gRPC trailers-only response whose headers carry
/// `grpc-status: 16` (`UNAUTHENTICATED`), as tonic servers answer a missing or wrong token.
///
/// ```
/// let res = http::Response::builder().header("grpc-status", "16").body(()).unwrap();
/// assert!(tower_auth::credentials_rejected(&res.into_parts().0));
/// ```
pub fn credentials_rejected(res: &http::response::Parts) -> bool {
    res.status == http::StatusCode::UNAUTHORIZED
        || res.status == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED
        || grpc_unauthenticated(res)
}

/// gRPC's status header.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether a trailers-only gRPC response says `UNAUTHENTICATED` (16).
#[inline]
pub(crate) fn grpc_unauthenticated(res: &http::response::Parts) -> bool {
    res.headers.get(&GRPC_STATUS).is_some_and(|v| v.as_bytes() == b"16")
}

/// Warns once per scheme instance that credentials readable on the path (Basic) go over plain
/// `http://`. Used by every scheme that sends a password in clear, so the rule and its wording
/// live here only.
#[derive(Debug, Default)]
pub(crate) struct PlainHttpWarning(AtomicBool);

impl PlainHttpWarning {
    /// Logs the warning if `uri` is plain `http://` and this instance has not warned yet.
    #[inline]
    pub(crate) fn check(&self, uri: &Uri, what: &'static str) {
        if uri.scheme() == Some(&http::uri::Scheme::HTTP)
            && !self.0.load(Ordering::Relaxed)
            && !self.0.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "sending {what} over plain http: the password can be read by anyone on the path (warned once)"
            );
        }
    }
}
