//! Server-side verifiers and a loopback test server, for your tests and ours.
//!
//! A [`RequireLayer`] wraps an axum route (or any service taking `Request<axum::body::Body>`)
//! and lets through only requests whose credentials check out; others get `401` with the
//! scheme's challenge. Every verifier counts the requests it sees in its [`Stats`], which is how
//! the tour counts round trips. [`TestServer`] serves a router on `127.0.0.1` on a free port.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{routing::get, Router};
//! use tower_auth::testing::{RequireLayer, TestServer};
//!
//! let require = RequireLayer::basic("realm", "alice", "s3cret");
//! let stats = require.stats();
//! let app = Router::new().route("/", get(|| async { "hello" })).route_layer(require);
//! let server = TestServer::start(app).await?;
//! assert!(server.url("/").starts_with("http://127.0.0.1:"));
//! assert_eq!(stats.requests(), 0);
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::secret::Secret;

#[cfg(feature = "oauth2")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth2")))]
pub mod browser;
mod digest;
#[cfg(feature = "oauth2")]
pub use browser::{BrowserMock, ScriptedReply};
pub use digest::DigestCheck;
#[cfg(feature = "oauth1")]
mod oauth1;
#[cfg(feature = "oauth1")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth1")))]
pub use oauth1::OAuth1Check;
pub mod idp;
#[cfg(feature = "oauth2")]
pub mod token;
pub use idp::FakeIdp;
#[cfg(feature = "ntlm")]
#[cfg_attr(docsrs, doc(cfg(feature = "ntlm")))]
pub mod ntlm;
#[cfg(feature = "testing-tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing-tls")))]
pub mod proxy;
#[cfg(feature = "testing-tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing-tls")))]
pub mod tls;

/// What a [`Check`] decided about a request.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The credentials are good: the request goes on to the route.
    Pass,
    /// The credentials are good, and the response gets these headers (e.g.
    /// `Authentication-Info`).
    PassWith {
        /// Headers added to the route's response.
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// The request is answered with this status (usually `401`) and these headers (the
    /// challenge).
    Reject {
        /// The status to answer with.
        status: StatusCode,
        /// Headers of the answer, e.g. `WWW-Authenticate`.
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

impl Verdict {
    /// A `401` with one `WWW-Authenticate` challenge.
    pub fn challenge(value: impl AsRef<str>) -> Self {
        let headers = HeaderValue::from_str(value.as_ref()).map(|v| vec![(WWW_AUTHENTICATE, v)]).unwrap_or_default();
        Verdict::Reject { status: StatusCode::UNAUTHORIZED, headers }
    }
}

/// A server-side credential check. Implement it for schemes of your own.
pub trait Check: Send + Sync + 'static {
    /// Checks a request whose body has been read whole into `body`.
    fn check(&self, req: &Parts, body: &Bytes) -> Verdict;
}

/// Counts of what a verifier saw. Cloning shares the counts.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
}

impl Stats {
    /// Requests seen (accepted and rejected): the round trips of the clients.
    pub fn requests(&self) -> u64 {
        self.0.requests.load(Ordering::SeqCst)
    }
    /// Requests let through.
    pub fn accepted(&self) -> u64 {
        self.0.accepted.load(Ordering::SeqCst)
    }
    /// Requests answered with a rejection.
    pub fn rejected(&self) -> u64 {
        self.0.rejected.load(Ordering::SeqCst)
    }
    /// Sets every count back to zero.
    pub fn reset(&self) {
        self.0.requests.store(0, Ordering::SeqCst);
        self.0.accepted.store(0, Ordering::SeqCst);
        self.0.rejected.store(0, Ordering::SeqCst);
    }
}

/// A layer that lets through only requests that pass a [`Check`].
pub struct RequireLayer<C> {
    check: Arc<C>,
    stats: Stats,
}

impl<C> Clone for RequireLayer<C> {
    fn clone(&self) -> Self {
        RequireLayer { check: Arc::clone(&self.check), stats: self.stats.clone() }
    }
}

impl<C: fmt::Debug> fmt::Debug for RequireLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireLayer").field("check", &self.check).field("stats", &self.stats).finish()
    }
}

impl<C: Check> RequireLayer<C> {
    /// A layer for any check.
    pub fn new(check: C) -> Self {
        RequireLayer { check: Arc::new(check), stats: Stats::default() }
    }

    /// The counts of this layer (shared with the services it makes).
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// The check.
    pub fn check(&self) -> &Arc<C> {
        &self.check
    }
}

impl RequireLayer<BasicCheck> {
    /// Requires Basic credentials `user:password`; challenges with `Basic realm="…",
    /// charset="UTF-8"`.
    pub fn basic(realm: &str, user: &str, password: &str) -> Self {
        RequireLayer::new(BasicCheck::new(realm).user(user, password))
    }
}

impl RequireLayer<TokenCheck> {
    /// Requires `Authorization: Bearer <token>`; challenges with `Bearer realm="…"`.
    pub fn bearer(realm: &str, token: &str) -> Self {
        RequireLayer::new(TokenCheck::bearer(realm, token))
    }

    /// Requires the header `name: key`.
    pub fn api_key_header(name: &str, key: &str) -> Self {
        RequireLayer::new(TokenCheck::header(name, key))
    }

    /// Requires the query parameter `name=key` (percent-decoded).
    pub fn api_key_query(name: &str, key: &str) -> Self {
        RequireLayer::new(TokenCheck::query(name, key))
    }
}

impl<S, C> Layer<S> for RequireLayer<C> {
    type Service = Require<S, C>;
    fn layer(&self, inner: S) -> Require<S, C> {
        Require { inner, check: Arc::clone(&self.check), stats: self.stats.clone() }
    }
}

/// The service of a [`RequireLayer`].
pub struct Require<S, C> {
    inner: S,
    check: Arc<C>,
    stats: Stats,
}

impl<S: Clone, C> Clone for Require<S, C> {
    fn clone(&self) -> Self {
        Require { inner: self.inner.clone(), check: Arc::clone(&self.check), stats: self.stats.clone() }
    }
}

impl<S, C> fmt::Debug for Require<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Require").field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl<S, C> Service<Request<Body>> for Require<S, C>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    C: Check,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (check, stats) = (Arc::clone(&self.check), self.stats.clone());
        Box::pin(async move {
            stats.0.requests.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return Ok(status_only(StatusCode::BAD_REQUEST)),
            };
            match check.check(&parts, &body) {
                Verdict::Pass => {
                    stats.0.accepted.fetch_add(1, Ordering::SeqCst);
                    inner.call(Request::from_parts(parts, Body::from(body))).await
                }
                Verdict::PassWith { headers } => {
                    stats.0.accepted.fetch_add(1, Ordering::SeqCst);
                    let mut res = inner.call(Request::from_parts(parts, Body::from(body))).await?;
                    for (name, value) in headers {
                        res.headers_mut().append(name, value);
                    }
                    Ok(res)
                }
                Verdict::Reject { status, headers } => {
                    stats.0.rejected.fetch_add(1, Ordering::SeqCst);
                    let mut res = status_only(status);
                    for (name, value) in headers {
                        res.headers_mut().append(name, value);
                    }
                    Ok(res)
                }
            }
        })
    }
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Body::from(status.canonical_reason().unwrap_or("").to_owned()));
    *res.status_mut() = status;
    res
}

/// Compares without an early exit on the first differing byte.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks Basic credentials (RFC 7617) against a list of users.
pub struct BasicCheck {
    realm: String,
    users: Vec<(String, Secret)>,
    proxy: bool,
}

impl BasicCheck {
    /// A check with no users yet, challenging with this realm.
    pub fn new(realm: &str) -> Self {
        BasicCheck { realm: realm.to_owned(), users: Vec::new(), proxy: false }
    }

    /// Adds a user.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.users.push((user.to_owned(), Secret::new(password)));
        self
    }

    /// Acts as a proxy: `407`, `Proxy-Authenticate`, `Proxy-Authorization`.
    pub fn proxy(mut self, on: bool) -> Self {
        self.proxy = on;
        self
    }
}

impl fmt::Debug for BasicCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|(u, _)| u.as_str()).collect();
        f.debug_struct("BasicCheck").field("realm", &self.realm).field("users", &users).finish()
    }
}

impl Check for BasicCheck {
    fn check(&self, req: &Parts, _: &Bytes) -> Verdict {
        let challenge = || {
            let value = format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm);
            match (self.proxy, HeaderValue::try_from(value.as_str())) {
                (true, Ok(v)) => Verdict::Reject {
                    status: StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    headers: vec![(http::header::PROXY_AUTHENTICATE, v)],
                },
                _ => Verdict::challenge(value),
            }
        };
        let header = if self.proxy { http::header::PROXY_AUTHORIZATION } else { AUTHORIZATION };
        let Some(value) = req.headers.get(header).and_then(|v| v.to_str().ok()) else {
            return challenge();
        };
        let Some((scheme, token)) = value.split_once(' ') else { return challenge() };
        if !scheme.eq_ignore_ascii_case("basic") {
            return challenge();
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(token.trim()) else { return challenge() };
        let Ok(decoded) = String::from_utf8(decoded) else { return challenge() };
        let Some((user, password)) = decoded.split_once(':') else { return challenge() };
        let ok =
            self.users.iter().any(|(u, p)| u == user && constant_time_eq(p.expose().as_bytes(), password.as_bytes()));
        if ok { Verdict::Pass } else { challenge() }
    }
}

/// Checks a token: a bearer token, an API key header or an API key query parameter.
pub struct TokenCheck {
    place: TokenPlace,
    token: Secret,
}

#[derive(Debug)]
enum TokenPlace {
    Bearer { realm: String },
    Header(HeaderName),
    Query(String),
}

impl TokenCheck {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1); the challenge carries `error="invalid_token"`
    /// when a wrong token was sent (§3.1).
    pub fn bearer(realm: &str, token: &str) -> Self {
        TokenCheck { place: TokenPlace::Bearer { realm: realm.to_owned() }, token: Secret::new(token) }
    }

    /// `name: token`. Panics if `name` is not a valid header name (test configuration).
    pub fn header(name: &str, token: &str) -> Self {
        let name = HeaderName::try_from(name).expect("valid header name");
        TokenCheck { place: TokenPlace::Header(name), token: Secret::new(token) }
    }

    /// `?name=token` in the query, percent-decoded.
    pub fn query(name: &str, token: &str) -> Self {
        TokenCheck { place: TokenPlace::Query(name.to_owned()), token: Secret::new(token) }
    }
}

impl fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCheck").field("place", &self.place).field("token", &self.token).finish()
    }
}

impl Check for TokenCheck {
    fn check(&self, req: &Parts, _: &Bytes) -> Verdict {
        let expected = self.token.expose().as_bytes();
        match &self.place {
            TokenPlace::Bearer { realm } => {
                let sent = req.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
                });
                match sent {
                    Some(token) if constant_time_eq(token.as_bytes(), expected) => Verdict::Pass,
                    Some(_) => Verdict::challenge(format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")),
                    None => Verdict::challenge(format!("Bearer realm=\"{realm}\"")),
                }
            }
            TokenPlace::Header(name) => match req.headers.get(name) {
                Some(v) if constant_time_eq(v.as_bytes(), expected) => Verdict::Pass,
                _ => Verdict::Reject { status: StatusCode::UNAUTHORIZED, headers: Vec::new() },
            },
            TokenPlace::Query(name) => {
                let found = req.uri.query().into_iter().flat_map(|q| q.split('&')).any(|pair| {
                    let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
                    decode(n) == *name && constant_time_eq(decode(v).as_bytes(), expected)
                });
                if found {
                    Verdict::Pass
                } else {
                    Verdict::Reject { status: StatusCode::UNAUTHORIZED, headers: Vec::new() }
                }
            }
        }
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// An axum router served on `127.0.0.1` on a free port, until dropped.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Serves `router` on `127.0.0.1:0`.
    ///
    /// # Errors
    ///
    /// If no port can be bound.
    pub async fn start(router: axum::Router) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::error!(%err, "test server stopped");
            }
        });
        Ok(TestServer { addr, task })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
