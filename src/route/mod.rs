//! Routing credentials by origin: one layer, a scheme per upstream, nothing for anyone else.
//!
//! [`AuthLayer::route`] starts a [`RouteBuilder`]; each [`origin`](RouteBuilder::origin) gets its
//! own scheme, of any type (static, Digest, Guess, your own). The [`Router`] it builds picks the
//! scheme for each request by the *origin* of the request URI — scheme, host and port, as in
//! [RFC 6454] — and a request to an origin nobody configured goes out **untouched**.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_auth::{ApiKey, AuthLayer, Basic, Digest};
//! # let client = tower::service_fn(|req: http::Request<tower_auth::ReplayBody<String>>| async move {
//! #     let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
//! #     match (req.uri().scheme_str().unwrap(), req.uri().host().unwrap().to_ascii_lowercase().as_str()) {
//! #         ("https", "api.github.com") => assert_eq!(auth.as_deref(), Some("Basic bWU6dDBrZW4=")),
//! #         ("https", "gitlab.example") => assert_eq!(req.headers()["private-token"], "glpat-1"),
//! #         _ => assert!(auth.is_none() && req.headers().get("private-token").is_none()),
//! #     }
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! # });
//!
//! let auth = AuthLayer::route()
//!     .origin("https://api.github.com", Basic::new("me", "t0ken")?)?
//!     .origin("https://gitlab.example", ApiKey::header_named("Private-Token", "glpat-1")?)?
//!     .origin("https://intranet.example:8443", Digest::new("alice", "s3cret")?)?
//!     .build();
//! let svc = ServiceBuilder::new().layer(auth).service(client);
//!
//! let get = |uri: &str| http::Request::get(uri).body(String::new());
//! svc.clone().oneshot(get("https://API.GitHub.com:443/user")?).await?; // Basic
//! svc.clone().oneshot(get("https://gitlab.example/api/v4/projects")?).await?; // Private-Token
//! svc.clone().oneshot(get("http://api.github.com/user")?).await?; // another origin: nothing
//! svc.oneshot(get("https://api.github.com:@evil.example/")?).await?; // the host is evil.example: nothing
//! # Ok(()) }
//! ```
//!
//! # Body type
//!
//! A router whose routes never retry (Basic, Bearer, API keys, headers, netrc) is a
//! [`Router<Once>`](Router): it passes the caller's request body through unchanged and fits in
//! front of a tonic `Channel`. A route that answers challenges (Digest, Guess, your own
//! [`Replay`] scheme) makes the builder's router a `Router<Replay>`, whose wrapped service
//! receives [`ReplayBody<B>`](crate::ReplayBody) (above, the Digest route does that). The builder
//! picks the mode from the routes it is given; [`RouteBuilder::replaying`] picks `Replay` up
//! front (to add such routes at run time, or in a loop).
//!
//! A tonic client in front of a router is made with `Grpc::with_origin(svc, origin)`: one made
//! with `Grpc::new` sends requests whose URI is a path only (the `Channel` fills in the host
//! below the layers), which no route matches, so they go without credentials
//! (`examples/tonic_client.rs`, `tests/tonic.rs`).
//!
//! # How a request is routed
//!
//! 1. **Exact origin** ([`RouteBuilder::origin`]): scheme and host compared ignoring case,
//!    default ports filled in (`https://a.example` is `https://a.example:443`), IPv6 literals
//!    compared as addresses, internationalised names in their punycode form (see
//!    [`Origin`]). Another port, another scheme or another host is another origin. The lookup
//!    hashes the URI's borrowed parts ([`key_of_uri`](origin::key_of_uri)) and confirms
//!    the hit exactly: it neither allocates nor locks, and costs the same for 1 or 10,000
//!    origins.
//! 2. **Subdomain patterns** ([`RouteBuilder::pattern`], `https://*.example.com`): the most
//!    specific (longest) matching pattern wins. A pattern never matches the bare domain.
//! 3. **netrc** ([`RouteBuilder::netrc_fallback`], opt-in): the request's host has an entry in the
//!    netrc file.
//! 4. **Default** ([`RouteBuilder::default`], opt-in): every other request, whatever its origin.
//!    Think twice: this sends credentials to any host a redirect or a user-supplied URL names.
//!
//! Without a default, a request that matches nothing is passed on unchanged.
//!
//! Each [`origin`](RouteBuilder::origin) call owns its scheme instance, so per-scheme state
//! (Digest nonces and nonce counts, learnt protection spaces) is never shared between origins.
//! The route that served a request is kept in the request's [`RouteState`], so the response (a
//! `401` challenge) goes back to the same scheme instance, even if the table changed meanwhile.
//!
//! # Changing routes at run time
//!
//! The table lives behind an [`arc_swap::ArcSwap`]: requests read it without locking, and
//! [`Router::insert`], [`Router::remove`] and friends swap in a new table (copy on write: a change
//! costs a copy of the table, a lookup never waits). Requests in flight finish with the scheme
//! they started with. Get the handle with [`AuthLayer::router`] (or build the [`Router`] with
//! [`RouteBuilder::into_router`] and share it in an [`Arc`]).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_auth::{AuthLayer, Bearer};
//!
//! let layer = AuthLayer::route().origin("https://a.example", Bearer::new("one")?)?.build();
//! let router = layer.router().clone(); // an Arc<Router>, to keep next to the service
//! router.insert("https://b.example", Bearer::new("two")?)?;
//! assert!(router.remove("https://a.example")?);
//! assert_eq!(router.origins().len(), 1);
//! # Ok(()) }
//! ```
//!
//! # Redirects
//!
//! **Put tower-http's `FollowRedirectLayer` *outside* (above) the router.** Then every hop of a
//! redirect chain comes back through the router as a new request and is routed on its own URI:
//! a hop to an origin nobody configured carries no credentials of any scheme (headers, API keys
//! in the query, Digest answers, `Proxy-Authorization`), and a challenge from it is not answered.
//! The recommended stack:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_auth::{ApiKey, AuthLayer, Basic};
//! use tower_http::follow_redirect::FollowRedirectLayer;
//! use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
//! # type Body = http_body_util::Empty<bytes::Bytes>;
//! # // The "network": a.example redirects to b.example, which must see no credentials.
//! # let client = tower::service_fn(|req: http::Request<Body>| async move {
//! #     let res = match req.uri().host().unwrap() {
//! #         "a.example" => {
//! #             assert_eq!(req.headers()["authorization"], "Basic YWxpY2U6czNjcmV0");
//! #             http::Response::builder().status(302).header("location", "https://b.example/landing")
//! #         }
//! #         _ => {
//! #             assert!(req.headers().get("authorization").is_none());
//! #             assert!(req.headers().get("x-api-key").is_none());
//! #             http::Response::builder()
//! #         }
//! #     };
//! #     Ok::<_, std::convert::Infallible>(res.body(String::new()).unwrap())
//! # });
//!
//! let auth = AuthLayer::route()
//!     .origin("https://a.example", Basic::new("alice", "s3cret")?)?
//!     .origin("https://c.example", ApiKey::header("k-123")?)?
//!     .build();
//! let svc = ServiceBuilder::new()
//!     .layer(FollowRedirectLayer::new()) // 1. outermost: every hop re-enters the stack below
//!     .layer(auth) //                       2. credentials for this hop's origin, if configured
//!     .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION, PROXY_AUTHORIZATION])) // 3.
//!     // (then Trace, Timeout… and the client: a hyper-util `Client`, a tonic `Channel`…)
//!     .service(client);
//!
//! let res = svc.oneshot(http::Request::get("https://a.example/start").body(Body::new())?).await?;
//! assert_eq!(res.status(), 200); // b.example answered, and saw no credentials
//! # Ok(()) }
//! ```
//!
//! **With `FollowRedirectLayer` *inside* (below) the router**, the router authorises only the
//! first request; every later hop is made by tower-http from a copy of that request's headers,
//! credentials included, and the router never sees it. What is then sent to another origin
//! depends on tower-http's redirect policy alone:
//!
//! | credential | default policy (`FilterCredentials`) | `FilterCredentials::new().remove_all()` |
//! |---|---|---|
//! | `Authorization` (Basic, Bearer, Digest, Guess) | removed on cross-origin hops | removed |
//! | `Proxy-Authorization` | removed on cross-origin hops | removed |
//! | any other header (`X-API-Key`, `Private-Token`…) | **sent to the other origin** | removed (with every other header) |
//! | API key in the query | not carried (the next URI is the `Location`) | not carried |
//!
//! and the `401` the other origin answers comes back to the router as if the first origin had
//! sent it. No scheme answers a challenge from another origin than the request's: tower-http
//! records the URI a response came from in the response extension
//! `tower_http::follow_redirect::RequestUri`, and the engine reads it (feature `tower-http`, on
//! by default) for every layer, the router's included. For another redirect follower, tell the
//! router where it records that URI with [`RouteBuilder::response_uri`] (shown here with
//! tower-http's, which is what the engine already does):
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_auth::{AuthLayer, Digest};
//! use tower_http::follow_redirect::RequestUri;
//!
//! let auth = AuthLayer::route()
//!     .origin("https://a.example", Digest::new("alice", "s3cret")?)?
//!     .response_uri(|res| res.extensions.get::<RequestUri>().map(|uri| &uri.0))
//!     .build();
//! # Ok(()) }
//! ```
//!
//! So if redirects must be followed below the router (a client that follows them itself, for
//! instance), use a policy that strips every header on cross-origin hops
//! (`Limited::default().and(FilterCredentials::new().remove_all())`) or does not follow them
//! (`SameOrigin`).
//!
//! What the crate's redirect tests check, for every scheme and for hops to the same origin,
//! another host, another port, `https` → `http` and `http` → `https`, is in `tests/redirects.rs`.
//!
//! # Security
//!
//! - Credentials go only to the origins they were configured for; a pattern or a default is an
//!   explicit opt-in to more.
//! - The host is the URI's host, never its user info: `https://api.github.com:@evil.example/` is
//!   routed as `https://evil.example`. To turn user info into credentials and remove it from the
//!   URI, put [`UrlCredentials`](crate::UrlCredentials) above the router.
//! - A caller's explicit `Authorization` header wins over any route (each built-in scheme
//!   leaves an existing header alone).
//!
//! [RFC 6454]: https://www.rfc-editor.org/rfc/rfc6454

pub mod origin;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
#[cfg(test)]
use http::Uri;
use http::request::Parts;

use self::origin::OriginMap;
#[cfg(test)]
use self::origin::key_of_uri;
pub use self::origin::{Origin, OriginPattern};
use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize};
use crate::combine::{BoxAuthenticator, BoxState, BoxWait};
use crate::engine::{BodyMode, FitsIn, Flow, JoinMode, Once, Replay, ResponseUriFn};
use crate::error::{ConfigError, Error};
use crate::layer::AuthLayer;
use crate::netrc::NetrcAuth;

/// Credentials by origin: an [`Authenticator`] that hands each request to the scheme configured
/// for its origin. See the [module documentation](self).
///
/// Built by [`AuthLayer::route`]; changed at run time through [`AuthLayer::router`].
///
/// `M` is the router's body mode: a router whose routes all never retry (Basic, Bearer, API
/// keys, headers, netrc) is a `Router<Once>` and passes the caller's request body through
/// unchanged, so it fits in front of a tonic `Channel`; a route that answers challenges (Digest,
/// Guess) makes it a `Router<Replay>` (the default), whose wrapped service receives
/// [`ReplayBody`](crate::ReplayBody). The builder picks the mode from the routes it is given.
pub struct Router<M = Replay> {
    table: ArcSwap<Table>,
    /// Whether some route looks at responses (kept up to date on every change).
    observes: AtomicBool,
    mode: PhantomData<fn() -> M>,
}

/// A route's scheme, kept in the widest box; the router's mode `M` is checked when a route is
/// added (`A::Mode: FitsIn<M>`), so a lookup hands it out as a `BoxAuthenticator<M>` for free,
/// and a builder changes mode without copying its table.
type Entry = BoxAuthenticator<Flow>;

/// The routes. Copied on write, read lock-free.
#[derive(Clone, Default)]
struct Table {
    exact: OriginMap<Entry>,
    /// Most specific (longest suffix) first.
    patterns: Vec<(OriginPattern, Entry)>,
    netrc: Option<Entry>,
    default: Option<Entry>,
}

impl Table {
    fn observes(&self) -> bool {
        self.exact.iter().any(|(_, s)| s.sees_responses())
            || self.patterns.iter().any(|(_, s)| s.sees_responses())
            || self.netrc.iter().chain(&self.default).any(BoxAuthenticator::sees_responses)
    }

    #[inline]
    fn find(&self, req: &Parts) -> Option<&Entry> {
        if let Some(scheme) = self.exact.get_for_uri(&req.uri) {
            return Some(scheme);
        }
        if let Some((_, scheme)) = self.patterns.iter().find(|(p, _)| p.matches_uri(&req.uri)) {
            return Some(scheme);
        }
        if let Some(netrc) = &self.netrc
            && netrc.applies_to(req)
        {
            return Some(netrc);
        }
        self.default.as_ref()
    }

    fn insert_pattern(&mut self, pattern: OriginPattern, scheme: Entry) -> bool {
        if let Some(slot) = self.patterns.iter_mut().find(|(p, _)| *p == pattern) {
            slot.1 = scheme;
            return true;
        }
        let at = self.patterns.partition_point(|(p, _)| p.suffix().len() >= pattern.suffix().len());
        self.patterns.insert(at, (pattern, scheme));
        false
    }

    fn remove_pattern(&mut self, pattern: &OriginPattern) -> bool {
        let before = self.patterns.len();
        self.patterns.retain(|(p, _)| p != pattern);
        self.patterns.len() != before
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut origins: Vec<_> = self.exact.iter().collect();
        origins.sort_by_key(|(o, _)| o.to_string());
        f.debug_struct("Routes")
            .field("origins", &origins.into_iter().collect::<Vec<_>>())
            .field("patterns", &self.patterns)
            .field("netrc", &self.netrc.is_some())
            .field("default", &self.default)
            .finish()
    }
}

/// The per-request state of a [`Router`]: the route that served the request, and that
/// scheme's own state.
pub struct RouteState<M = Replay> {
    route: Option<BoxAuthenticator<M>>,
    inner: BoxState,
}

impl<M> Default for RouteState<M> {
    fn default() -> Self {
        RouteState { route: None, inner: BoxState::default() }
    }
}

impl<M> fmt::Debug for RouteState<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteState").field("route", &self.route).field("state", &self.inner).finish()
    }
}

fn parse_origin(origin: &str) -> Result<Origin, ConfigError> {
    Origin::parse(origin).map_err(|e| ConfigError::new(e.to_string()))
}

fn parse_pattern(pattern: &str) -> Result<OriginPattern, ConfigError> {
    OriginPattern::parse(pattern).map_err(|e| ConfigError::new(e.to_string()))
}

/// Whether two URIs have the same origin. Allocates only when both have the same origin key
/// and differ (a redirect within one origin).
#[cfg(test)]
fn same_origin(a: &Uri, b: &Uri) -> bool {
    if a == b {
        return true;
    }
    match (key_of_uri(a), key_of_uri(b)) {
        (Some(x), Some(y)) if x == y => {
            let (a, b) = (Origin::from_uri(a), Origin::from_uri(b));
            a.is_some() && a == b
        }
        _ => false,
    }
}

impl Router {
    /// A builder; the same as [`AuthLayer::route`] without the layer. It starts as a builder of
    /// a `Router<Once>` and becomes one of a `Router<Replay>` when a route that replays is added.
    pub fn builder() -> RouteBuilder<Once> {
        RouteBuilder { table: Table::default(), response_uri: None, mode: PhantomData }
    }
}

impl<M: BodyMode> Router<M> {
    fn from_table(table: Table) -> Self {
        let observes = AtomicBool::new(table.observes());
        Router { table: ArcSwap::from_pointee(table), observes, mode: PhantomData }
    }

    /// Swaps in a changed copy of the table; returns what `change` returned.
    fn change<T: Default>(&self, mut change: impl FnMut(&mut Table) -> T) -> T {
        let mut out = T::default();
        self.table.rcu(|table| {
            let mut table = Table::clone(table);
            out = change(&mut table);
            table
        });
        self.observes.store(self.table.load().observes(), Ordering::Relaxed);
        out
    }

    /// Routes requests to `origin` to `scheme` from now on, replacing the route `origin` had.
    /// Returns whether it had one. Requests already in flight keep the scheme they started with.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `origin` is not a valid origin (as [`RouteBuilder::origin`]); the
    /// routes are then unchanged.
    pub fn insert<A>(&self, origin: &str, scheme: A) -> Result<bool, ConfigError>
    where
        A: Authenticator,
        A::Mode: FitsIn<M>,
    {
        let origin = parse_origin(origin)?;
        let scheme = Entry::erase(scheme);
        Ok(self.change(|table| table.exact.insert(origin.clone(), scheme.clone()).is_some()))
    }

    /// Stops routing requests to `origin`; returns whether it had a route.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `origin` is not a valid origin.
    pub fn remove(&self, origin: &str) -> Result<bool, ConfigError> {
        let origin = parse_origin(origin)?;
        if !self.table.load().exact.contains(&origin) {
            return Ok(false);
        }
        Ok(self.change(|table| table.exact.remove(&origin).is_some()))
    }

    /// Routes requests whose origin matches `pattern` (`https://*.example.com`) to `scheme`,
    /// replacing the pattern's previous route; returns whether it had one.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `pattern` is not a valid pattern (as [`RouteBuilder::pattern`]).
    pub fn insert_pattern<A>(&self, pattern: &str, scheme: A) -> Result<bool, ConfigError>
    where
        A: Authenticator,
        A::Mode: FitsIn<M>,
    {
        let pattern = parse_pattern(pattern)?;
        let scheme = Entry::erase(scheme);
        Ok(self.change(|table| table.insert_pattern(pattern.clone(), scheme.clone())))
    }

    /// Removes a pattern route; returns whether it existed.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `pattern` is not a valid pattern.
    pub fn remove_pattern(&self, pattern: &str) -> Result<bool, ConfigError> {
        let pattern = parse_pattern(pattern)?;
        Ok(self.change(|table| table.remove_pattern(&pattern)))
    }

    /// Sets the scheme for requests no other route matches (see [`RouteBuilder::default`]).
    pub fn set_default<A>(&self, scheme: A)
    where
        A: Authenticator,
        A::Mode: FitsIn<M>,
    {
        let scheme = Entry::erase(scheme);
        self.change(|table| table.default = Some(scheme.clone()));
    }

    /// Removes the default route: requests no other route matches go out untouched.
    pub fn clear_default(&self) {
        self.change(|table| table.default = None);
    }

    /// The configured origins (exact routes), sorted by their text.
    pub fn origins(&self) -> Vec<Origin> {
        let mut origins: Vec<Origin> = self.table.load().exact.iter().map(|(o, _)| o.clone()).collect();
        origins.sort_by_cached_key(ToString::to_string);
        origins
    }

    /// The configured patterns, most specific first.
    pub fn patterns(&self) -> Vec<OriginPattern> {
        self.table.load().patterns.iter().map(|(p, _)| p.clone()).collect()
    }
}

impl<M> fmt::Debug for Router<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router").field("routes", &**self.table.load()).finish()
    }
}

impl<M: BodyMode> Authenticator for Router<M> {
    type Mode = M;
    type Error = Error;
    type State = RouteState<M>;
    type Wait = BoxWait;

    #[inline]
    fn observes_responses(&self) -> bool {
        self.observes.load(Ordering::Relaxed)
    }

    /// Whether some route serves this request, and its scheme applies to it.
    fn applies_to(&self, req: &Parts) -> bool {
        self.table.load().find(req).is_some_and(|scheme| scheme.applies_to(req))
    }

    #[inline]
    fn authorize(&self, req: &mut AuthRequest<'_>, state: &mut RouteState<M>) -> Result<Authorize<BoxWait>, Error> {
        if state.route.is_none() {
            state.route = self.table.load().find(req.parts()).cloned().map(BoxAuthenticator::retag);
        }
        match &state.route {
            Some(scheme) => scheme.authorize(req, &mut state.inner),
            None => Ok(Authorize::Done),
        }
    }

    fn on_response(&self, req: &Parts, res: &http::response::Parts, state: &mut RouteState<M>) -> Action {
        // The engine has checked that the response comes from the request's origin.
        match &state.route {
            Some(scheme) => scheme.on_response(req, res, &mut state.inner),
            None => Action::Done,
        }
    }

    fn on_response_body(
        &self,
        req: &Parts,
        res: &http::response::Parts,
        body: &bytes::Bytes,
        state: &mut RouteState<M>,
    ) -> Action {
        match &state.route {
            Some(scheme) => scheme.on_response_body(req, res, body, &mut state.inner),
            None => Action::Done,
        }
    }

    fn own_request(&self, req: &Parts, state: &mut RouteState<M>) -> Option<http::Request<bytes::Bytes>> {
        state.route.as_ref()?.own_request(req, &mut state.inner)
    }

    fn on_own_response(
        &self,
        req: &Parts,
        res: &http::response::Parts,
        body: &bytes::Bytes,
        state: &mut RouteState<M>,
    ) -> Action {
        match &state.route {
            Some(scheme) => scheme.on_own_response(req, res, body, &mut state.inner),
            None => Action::Done,
        }
    }
}

/// Builds a [`Router`]; made by [`AuthLayer::route`]. See the [module documentation](self).
pub struct RouteBuilder<M = Once> {
    table: Table,
    response_uri: Option<ResponseUriFn>,
    mode: PhantomData<fn() -> M>,
}

impl<M> fmt::Debug for RouteBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteBuilder")
            .field("routes", &self.table)
            .field("response_uri", &self.response_uri.is_some())
            .finish()
    }
}

impl<M: BodyMode> RouteBuilder<M> {
    /// Sends requests to `origin` (`scheme://host[:port]`) with the credentials of `scheme`.
    ///
    /// The origin is normalised as [`Origin::parse`] does: scheme and host lower-cased, default
    /// port filled in, IPv6 literals and internationalised names in canonical form. A trailing
    /// `/` is allowed. The scheme instance belongs to this origin alone.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the problem if `origin` is not an origin: no or another scheme
    /// than `http`, `https`, `ws`, `wss`; user info (`user:pw@`, never echoed); a path, query or
    /// fragment; a bad host or port. Also if `origin` was configured already.
    pub fn origin<A>(self, origin: &str, scheme: A) -> Result<RouteBuilder<Joined<M, A>>, ConfigError>
    where
        A: Authenticator,
        M: JoinMode<A::Mode> + FitsIn<Joined<M, A>>,
        A::Mode: FitsIn<Joined<M, A>>,
    {
        let parsed = parse_origin(origin)?;
        if self.table.exact.contains(&parsed) {
            return Err(ConfigError::new(format!("origin {parsed} is configured twice")));
        }
        let mut next = self.widen();
        next.table.exact.insert(parsed, Entry::erase(scheme));
        Ok(next)
    }

    /// Sends requests to every origin `pattern` matches (`https://*.example.com`: every host
    /// under `example.com`, not `example.com` itself; same scheme and port) with the credentials
    /// of `scheme`, unless an exact [`origin`](Self::origin) matches first. Of several matching
    /// patterns the most specific wins. One scheme instance serves every matching origin
    /// (schemes with per-origin state, such as Digest, keep it per origin anyway).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `pattern` is not `scheme://*.domain[:port]` with a domain of at least
    /// two labels, or was configured already.
    pub fn pattern<A>(self, pattern: &str, scheme: A) -> Result<RouteBuilder<Joined<M, A>>, ConfigError>
    where
        A: Authenticator,
        M: JoinMode<A::Mode> + FitsIn<Joined<M, A>>,
        A::Mode: FitsIn<Joined<M, A>>,
    {
        let parsed = parse_pattern(pattern)?;
        if self.table.patterns.iter().any(|(p, _)| *p == parsed) {
            return Err(ConfigError::new(format!("origin pattern {parsed} is configured twice")));
        }
        let mut next = self.widen();
        next.table.insert_pattern(parsed, Entry::erase(scheme));
        Ok(next)
    }

    /// Sends every request no other route matches with the credentials of `scheme`, whatever
    /// its origin. Without a default, such requests go out untouched, which is the safe choice:
    /// a default sends credentials wherever a redirect or a URL from elsewhere points.
    pub fn default<A>(self, scheme: A) -> RouteBuilder<Joined<M, A>>
    where
        A: Authenticator,
        M: JoinMode<A::Mode> + FitsIn<Joined<M, A>>,
        A::Mode: FitsIn<Joined<M, A>>,
    {
        let mut next = self.widen();
        next.table.default = Some(Entry::erase(scheme));
        next
    }

    /// The same routes in a builder of a router that replays (`Router<Replay>`), so that routes
    /// that answer challenges can be added at run time with [`Router::insert`], or so that the
    /// builder's type stays the same across a loop that adds routes of either kind.
    pub fn replaying(self) -> RouteBuilder<Replay>
    where
        M: FitsIn<Replay>,
    {
        self.widen()
    }

    fn widen<M2: BodyMode>(self) -> RouteBuilder<M2>
    where
        M: FitsIn<M2>,
    {
        RouteBuilder { table: self.table, response_uri: self.response_uri, mode: PhantomData }
    }

    /// Uses the netrc file from its default location (`$NETRC`, else `~/.netrc`, else
    /// `~/_netrc`; see [`NetrcAuth::from_default_location`]) for requests no origin or pattern
    /// matches: Basic credentials for hosts the file names. Nothing is read unless this is
    /// called. Without a file, nothing changes.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file (and line and column) if it exists but cannot be read
    /// or parsed.
    pub fn netrc_fallback(self) -> Result<Self, ConfigError>
    where
        Once: FitsIn<M>,
    {
        Ok(self.netrc(NetrcAuth::from_default_location()?))
    }

    /// Like [`netrc_fallback`](Self::netrc_fallback), with a netrc file loaded by you
    /// ([`NetrcAuth::from_path`]).
    pub fn netrc(mut self, netrc: NetrcAuth) -> Self
    where
        Once: FitsIn<M>,
    {
        self.table.netrc = Some(Entry::erase(netrc));
        self
    }

    /// Tells the layer [`build`](RouteBuilder::build) makes where a redirect follower placed
    /// *below* it records the URI a response came from, so that a challenge from another origin
    /// than the request's is not answered (and an `Authentication-Info` from it is not
    /// trusted); the same as [`AuthLayer::response_uri`], where the rule lives for every scheme.
    /// tower-http's `FollowRedirect` is recognised by the engine itself (feature `tower-http`,
    /// on by default); this is for other followers. With tower-http's it reads:
    ///
    /// ```
    /// # let builder = tower_auth::AuthLayer::route();
    /// use tower_http::follow_redirect::RequestUri;
    /// let builder = builder.response_uri(|res| res.extensions.get::<RequestUri>().map(|u| &u.0));
    /// ```
    ///
    /// Not needed with the redirect follower above the router, as recommended in the
    /// [module documentation](self#redirects).
    pub fn response_uri(mut self, response_uri: ResponseUriFn) -> Self {
        self.response_uri = Some(response_uri);
        self
    }

    /// The router, for a layer of your own or to share as an `Arc<Router>`. A
    /// [`response_uri`](RouteBuilder::response_uri) set on the builder belongs to the layer:
    /// set it with [`AuthLayer::response_uri`] on yours.
    pub fn into_router(self) -> Router<M> {
        Router::from_table(self.table)
    }

    /// The layer.
    pub fn build(self) -> AuthLayer<Router<M>> {
        let response_uri = self.response_uri;
        let layer = AuthLayer::new(self.into_router());
        match response_uri {
            Some(f) => layer.response_uri(f),
            None => layer,
        }
    }
}

/// The mode of a router after adding a scheme of type `A` to one of mode `M`.
pub type Joined<M, A> = <M as JoinMode<<A as Authenticator>::Mode>>::Out;

impl AuthLayer<Router> {
    /// Starts a layer that routes credentials by origin. See [`route`](crate::route).
    pub fn route() -> RouteBuilder<Once> {
        Router::builder()
    }
}

impl<M: BodyMode> AuthLayer<Router<M>> {
    /// The router, to change routes while the services made by this layer run.
    pub fn router(&self) -> &Arc<Router<M>> {
        self.authenticator()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::{ApiKey, Basic, Bearer};

    fn parts(uri: &str) -> Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    #[test]
    fn lookup_order_and_exactness() {
        let router = Router::builder()
            .origin("https://a.example", Bearer::new("a").unwrap())
            .unwrap()
            .origin("http://[::1]:8080", Bearer::new("v6").unwrap())
            .unwrap()
            .pattern("https://*.example.com", Bearer::new("wild").unwrap())
            .unwrap()
            .pattern("https://*.deep.example.com", Bearer::new("deeper").unwrap())
            .unwrap()
            .into_router();
        let route = |uri: &str| router.table.load().find(&parts(uri)).map(|s| s.type_name());
        assert!(route("https://A.EXAMPLE:443/x").is_some());
        assert!(route("https://a.example:8443/").is_none());
        assert!(route("http://a.example/").is_none());
        assert!(route("http://[0::1]:8080/").is_some());
        assert!(route("http://[::1]/").is_none());
        assert!(route("https://x.example.com/").is_some());
        assert!(route("https://example.com/").is_none());
        assert!(route("/relative").is_none());
        assert_eq!(router.patterns()[0].to_string(), "https://*.deep.example.com");
        assert_eq!(router.origins().len(), 2);
        assert!(router.applies_to(&parts("https://a.example/")));
        assert!(!router.applies_to(&parts("https://b.example/")));
    }

    #[test]
    fn config_errors_name_the_problem() {
        let err = |origin: &str| Router::builder().origin(origin, Bearer::new("t").unwrap()).unwrap_err().to_string();
        assert!(err("https://a.example/path").contains("path"), "{}", err("https://a.example/path"));
        assert!(err("https://a.example?q").contains("query"));
        assert!(err("https://user:hunter2@a.example").contains("user info"));
        assert!(!err("https://user:hunter2@a.example").contains("hunter2"));
        assert!(err("https://a.example:99999").contains("port"));
        assert!(err("ftp://a.example").contains("scheme"));
        assert!(err("a.example").contains("scheme"));
        let twice = Router::builder()
            .origin("https://a.example", Bearer::new("t").unwrap())
            .unwrap()
            .origin("https://A.example:443/", Bearer::new("t").unwrap())
            .unwrap_err();
        assert_eq!(twice.to_string(), "origin https://a.example is configured twice");
        let bad = Router::builder().pattern("https://*.com", Bearer::new("t").unwrap()).unwrap_err();
        assert!(bad.to_string().contains("wildcard"), "{bad}");
        // A running router refuses a bad origin and keeps its routes.
        let router = Router::builder().origin("https://a.example", Bearer::new("t").unwrap()).unwrap().into_router();
        assert!(router.insert("https://b.example/x", Bearer::new("t").unwrap()).is_err());
        assert!(router.remove("nonsense").is_err());
        assert_eq!(router.origins().len(), 1);
    }

    #[test]
    fn runtime_changes() {
        let router = Router::builder().into_router();
        assert!(!router.insert("https://a.example", Basic::new("u", "p").unwrap()).unwrap());
        assert!(router.insert("https://a.example", ApiKey::header("k").unwrap()).unwrap());
        assert!(!router.insert_pattern("https://*.b.example", Basic::new("u", "p").unwrap()).unwrap());
        assert!(router.applies_to(&parts("https://x.b.example/")));
        assert!(router.remove_pattern("https://*.b.example").unwrap());
        assert!(!router.remove_pattern("https://*.b.example").unwrap());
        assert!(!router.applies_to(&parts("https://zzz.example/")));
        router.set_default(Basic::new("u", "p").unwrap());
        assert!(router.applies_to(&parts("https://zzz.example/")));
        router.clear_default();
        assert!(!router.applies_to(&parts("https://zzz.example/")));
        assert!(router.remove("https://a.example").unwrap());
        assert!(!router.remove("https://a.example").unwrap());
        let dbg = format!("{router:?}");
        assert!(!dbg.contains("dTpw") && !dbg.contains("\"p\""), "{dbg}");
    }

    #[test]
    fn same_origin_rules() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        assert!(same_origin(&u("https://a.example/x"), &u("https://A.example:443/y")));
        assert!(!same_origin(&u("https://a.example/x"), &u("http://a.example/x")));
        assert!(!same_origin(&u("https://a.example/x"), &u("https://a.example:8443/x")));
        assert!(!same_origin(&u("/x"), &u("/y")));
        assert!(same_origin(&u("/x"), &u("/x")));
    }

    /// A challenge whose response says it came from another origin is not answered.
    #[cfg(feature = "digest")]
    #[tokio::test]
    async fn challenges_from_another_origin_are_not_answered() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};
        use tower::ServiceExt;

        #[derive(Clone)]
        struct Final(Uri);
        let calls = Arc::new(AtomicU32::new(0));
        let make = |final_uri: &'static str| {
            let calls = calls.clone();
            tower::service_fn(move |req: http::Request<crate::ReplayBody<String>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                let has_auth = req.headers().contains_key("authorization");
                async move {
                    let mut res = http::Response::new(String::new());
                    if !has_auth {
                        *res.status_mut() = http::StatusCode::UNAUTHORIZED;
                        res.headers_mut().insert(
                            "www-authenticate",
                            http::HeaderValue::from_static(r#"Digest realm="r", nonce="n", qop="auth""#),
                        );
                    }
                    res.extensions_mut().insert(Final(final_uri.parse().unwrap()));
                    Ok::<_, Infallible>(res)
                }
            })
        };
        let layer = |hook: bool| {
            let builder =
                AuthLayer::route().origin("https://a.example", crate::Digest::new("u", "p").unwrap()).unwrap();
            let builder =
                if hook { builder.response_uri(|res| res.extensions.get::<Final>().map(|f| &f.0)) } else { builder };
            builder.build()
        };
        let req = || http::Request::get("https://a.example/start").body(String::new()).unwrap();

        // The 401 came from b.example: not answered.
        let svc = tower::ServiceBuilder::new().layer(layer(true)).service(make("https://b.example/next"));
        assert_eq!(svc.oneshot(req()).await.unwrap().status(), 401);
        assert_eq!(calls.swap(0, Ordering::SeqCst), 1);
        // The 401 came from a.example (another path): answered.
        let svc = tower::ServiceBuilder::new().layer(layer(true)).service(make("https://a.example/next"));
        assert_eq!(svc.oneshot(req()).await.unwrap().status(), 200);
        assert_eq!(calls.swap(0, Ordering::SeqCst), 2);
        // Without the hook the router cannot tell.
        let svc = tower::ServiceBuilder::new().layer(layer(false)).service(make("https://b.example/next"));
        assert_eq!(svc.oneshot(req()).await.unwrap().status(), 200);
        assert_eq!(calls.swap(0, Ordering::SeqCst), 2);
    }
}
