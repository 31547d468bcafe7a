//! HTTP Digest authentication ([RFC 7616](https://www.rfc-editor.org/rfc/rfc7616), compatible
//! with RFC 2617 and RFC 2069), Guess (Basic or Digest, whichever the server asks for), and
//! both towards proxies (`407`, `Proxy-Authorization`).
//!
//! The first request to an origin goes without credentials; the server's `401` challenge is
//! answered once. The challenge's protection space (origin and realm) is then cached, shared by
//! every clone of the service on every task and thread, and later requests are sent
//! pre-authorised with the next nonce count: `N` requests cost `N + 1` round trips. H(A1) is
//! computed once per protection space.
//!
//! - Algorithms: MD5, SHA-256, SHA-512-256, their `-sess` variants, and the non-standard `SHA`
//!   and `SHA-512`. Among several Digest challenges the strongest wins; Digest is never
//!   downgraded to Basic.
//! - qop `auth` (preferred when offered), `auth-int` (the body is buffered and hashed, up to
//!   the layer's body limit), or none.
//! - `opaque` echoed, `userhash`, `username*` (RFC 8187) for user names that are not ASCII.
//! - `stale=true` is answered with the new nonce (one extra exchange), not as a failure;
//!   `Authentication-Info: nextnonce` is honoured and `rspauth` checked (a mismatch is logged).
//! - A wrong password costs exactly two round trips: the second `401` goes back to the caller.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_auth::AuthLayer;
//! # use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
//! # let calls = Arc::new(AtomicUsize::new(0));
//! # let seen = calls.clone();
//! # let client = tower::service_fn(move |req: http::Request<tower_auth::ReplayBody<String>>| {
//! #     let n = seen.fetch_add(1, Ordering::SeqCst);
//! #     async move {
//! #         let res = match req.headers().get("authorization") {
//! #             None => http::Response::builder().status(401)
//! #                 .header("www-authenticate", r#"Digest realm="api", nonce="abc", qop="auth", algorithm=SHA-256"#),
//! #             Some(v) => {
//! #                 let v = v.to_str().unwrap();
//! #                 assert!(v.starts_with(r#"Digest username="alice", realm="api", nonce="abc", uri="/x""#), "{v}");
//! #                 assert!(v.contains(if n == 1 { "nc=00000001" } else { "nc=00000002" }), "{v}");
//! #                 http::Response::builder()
//! #             }
//! #         };
//! #         Ok::<_, std::convert::Infallible>(res.body(String::new()).unwrap())
//! #     }
//! # });
//!
//! let svc = ServiceBuilder::new().layer(AuthLayer::digest("alice", "s3cret")?).service(client);
//! let res = svc.clone().oneshot(http::Request::get("http://127.0.0.1/x").body(String::new())?).await?;
//! assert_eq!(res.status(), 200); // 401, then answered: two round trips
//! let res = svc.oneshot(http::Request::get("http://127.0.0.1/x").body(String::new())?).await?;
//! assert_eq!(res.status(), 200); // pre-authorised: one round trip
//! # assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # Ok(()) }
//! ```
//!
//! # Concurrency: one nonce, many requests
//!
//! Servers differ in what they accept from concurrent requests counting on one nonce. A
//! *lenient* server (Apache httpd by default, most others) only refuses a count it has seen; a
//! *strict* one (Apache with `AuthDigestNcCheck On`) wants each nonce's counts to *arrive* in
//! increasing order, which requests in flight together cannot promise: a later count can
//! overtake an earlier one. Apache also counts per `opaque` (one "client" entry per opaque in a
//! small shared-memory table, the oldest forgotten when it fills up), and answers a refused
//! request with a new nonce but the *same* opaque, its count reset. This module holds under both,
//! per protection space, without knowing beforehand which kind of server it talks to:
//!
//! - **First request: single flight.** The first request to an origin goes alone, without
//!   credentials, and takes the challenge; the requests that arrive meanwhile wait for its answer
//!   (a gate per origin) and then go pre-authorised. `N` concurrent requests to a new origin cost
//!   `N + 1` round trips, not `N + c`. A first request dropped before its answer opens its gate
//!   as cancelled: the next request takes its place; each request waits for at most one gate.
//! - **Probation.** A new protection space shares one nonce (atomic count), but at most
//!   4 requests count on it at once (permits, handed over first come, first served). Each
//!   success of a request that overlapped others on the nonce (another was in flight with it)
//!   is evidence that the server does not care about arrival order; after 64 of them the space
//!   is *shared*: no limit, one atomic count per request, the fast path for lenient servers.
//! - **Detection of a strict server.** A pre-authorised request refused (`401` without
//!   `stale=true`) while others counted on the same nonce, in a space whose credentials have
//!   worked before (so not a wrong password), means counts may have arrived out of order: the
//!   space switches to *leased* mode at once. The refused request goes again with a nonce of its
//!   own; if that nonce is refused too, counts were not the cause and the space goes back to
//!   probation. A sequential client never overlaps, so it never switches and never pays for it.
//! - **Leased mode: a bounded pool.** Each nonce (with its opaque) is leased to one request at a
//!   time, from a pool of at most [`DEFAULT_NONCES_PER_SPACE`] (4) nonces per space
//!   ([`Digest::nonces_per_space`]): few enough that Apache's client table keeps them all. With
//!   none free and room in the pool, a request goes without credentials: the challenge brings a
//!   new nonce and a new opaque (a new client to the server), which joins the pool leased to it.
//!   With the pool full, requests wait in a queue and a released nonce is handed directly to the
//!   first waiter (no barging), so its counts reach the server in order. A refused request whose
//!   challenge repeats its opaque goes again with a pooled nonce, never with that opaque, which
//!   others may still be counting on.
//! - **Leases always come back.** The lease (or permit, or place in a queue, or gate) lives in
//!   the request's [`DigestState`], as a guard: given back when the response is seen; dropped
//!   with the state (request cancelled, service error, retry refused by the engine), a leased
//!   nonce is *retired* (whether the server saw its count is unknown) and its place goes to the
//!   next waiter, which fetches a new nonce.
//!
//! Waits are bounded without a timer. A wait ([`DigestWait`], std only: a `Mutex`-guarded queue
//! of wakers) ends when another request's exchange on the same origin ends: the gate's first
//! request, or a lease holder, handing over in order. So a request waits at most for the
//! requests queued ahead of it divided by the pool size, each bounded by the server's response
//! time (bound those with a timeout layer above this one, which also bounds the wait). A request
//! waits for a gate at most once and for a nonce at most 8 times; with the queue full (1024) or
//! its waits used up, it does not wait: it goes without credentials and answers the challenge
//! with a nonce of its own (outside the pool if it is full). Credentials are never sent on a nonce
//! that another request is using in leased mode, and never sent wrong.
//!
//! Figures (tests/digest_concurrency.rs, Apache 2.4 with `AuthDigestNcCheck On`): every request
//! succeeds at 2, 8 and 32 concurrent requests, with about `N + 4` to `N + 8` round trips;
//! without nc checking, `N + 1` at any concurrency. A wrong password costs two round trips per
//! request, concurrently too. No request is retried more than the engine's
//! [`MAX_EXCHANGES`](crate::MAX_EXCHANGES) allows, and no rule here loops: a refusal is answered
//! at most once, a stale nonce at most once.
//!
//! # Security
//!
//! Digest with MD5 is weak by today's standards but does not send the password; prefer SHA-256
//! where the server offers it (the strongest offered is chosen automatically). Guess sends Basic
//! only when the server offers no Digest challenge.

pub(crate) mod algorithm;
mod pool;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::Waker;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

pub use self::algorithm::{Algorithm, Qop};
use self::algorithm::{Exchange, ha1_base, session_ha1};
pub use self::pool::DigestWait;
use self::pool::{Gate, Grant, PERMIT, Pool, ProbeGuard, Take, WaitCell};
use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize, BodyView, PlainHttpWarning, proxy_may_see};
use crate::basic::check_text;
use crate::challenge::{self, Challenge, push_quoted};
use crate::engine::Replay;
use crate::error::ConfigError;
use crate::layer::AuthLayer;
use crate::route::origin::{OriginKey, key_of_uri};
use crate::secret::Secret;

/// RFC 8187 `attr-char`: what `username*` leaves unencoded.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// Nonces one protection space may use at once in leased mode, unless
/// [`Digest::nonces_per_space`] says otherwise.
pub const DEFAULT_NONCES_PER_SPACE: usize = 4;
/// Requests that may count on a space's shared nonce at once while it is on probation.
const PROBATION_WINDOW: usize = 4;
/// Successes of requests that overlapped others on the shared nonce after which a space on
/// probation is taken to be lenient (no count checking): no window any more.
const CONFIRM_OVERLAPS: u32 = 64;

/// [`DigestSpace::mode`]: a new space, whose server is not known to check counts or not.
const PROBATION: u8 = 0;
/// [`DigestSpace::mode`]: the server does not check the order of counts; one shared nonce.
const SHARED: u8 = 1;
/// [`DigestSpace::mode`]: the server checks counts as they arrive; nonces are leased.
const LEASED: u8 = 2;

/// How many times one request may wait for a nonce of its protection space; past that it asks
/// for a nonce of its own.
const MAX_LEASE_WAITS: u32 = 8;
/// Origins whose first request gets a gate; past this many, first requests to new origins go
/// without one (no single flight), so the table stays bounded.
const MAX_GATED_ORIGINS: usize = 10_000;

/// Whom the credentials are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The origin server: `401`, `WWW-Authenticate`, `Authorization`.
    Origin,
    /// An HTTP proxy: `407`, `Proxy-Authenticate`, `Proxy-Authorization`.
    Proxy,
}

impl Target {
    fn status(self) -> StatusCode {
        match self {
            Target::Origin => StatusCode::UNAUTHORIZED,
            Target::Proxy => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        }
    }
    fn challenge_header(self) -> HeaderName {
        match self {
            Target::Origin => WWW_AUTHENTICATE,
            Target::Proxy => PROXY_AUTHENTICATE,
        }
    }
    fn credentials_header(self) -> HeaderName {
        match self {
            Target::Origin => AUTHORIZATION,
            Target::Proxy => PROXY_AUTHORIZATION,
        }
    }
    fn info_header(self) -> &'static str {
        match self {
            Target::Origin => "authentication-info",
            Target::Proxy => "proxy-authentication-info",
        }
    }
}

type CnonceFn = dyn Fn() -> String + Send + Sync;

/// Digest credentials (and, in Guess mode, Basic ones), with the protection spaces learnt from
/// challenges. See the [module documentation](self).
pub struct Digest {
    user: String,
    password: Secret,
    target: Target,
    /// Guess mode: answer a Basic challenge when no Digest challenge is offered.
    allow_basic: bool,
    origins: RwLock<HashMap<Option<OriginKey>, OriginEntry>>,
    cnonce: Option<Arc<CnonceFn>>,
    plain_http: PlainHttpWarning,
    nonces_per_space: usize,
}

/// What is known of one origin (or of the proxy).
#[derive(Default)]
struct OriginEntry {
    /// Its protection spaces, most recent first.
    spaces: Vec<Arc<Space>>,
    /// The gate of its first request: closed while that request is in flight.
    gate: Option<Arc<Gate>>,
}

/// A protection space: realm and scheme parameters for one origin (or the proxy).
struct Space {
    realm: String,
    kind: SpaceKind,
}

enum SpaceKind {
    Basic(HeaderValue),
    Digest(DigestSpace),
}

struct DigestSpace {
    algorithm: Algorithm,
    qop: Qop,
    userhash: bool,
    /// `, realm="…"`, quoted once.
    realm_param: String,
    /// `username="…"` (or `username*=…`, plus `userhash=true`), rendered once.
    username: String,
    /// H(user:realm:password): derived from the password, never printed.
    ha1: String,
    /// Shared mode: the nonce every request counts on.
    shared: RwLock<Arc<NonceState>>,
    /// [`PROBATION`] (the shared nonce, at most [`PROBATION_WINDOW`] requests at once),
    /// [`SHARED`] (the shared nonce, no limit) or [`LEASED`] (the server checks that each nonce's
    /// counts arrive in order, so each nonce of `pool` is used by one request at a time).
    mode: AtomicU8,
    /// Probation: successes of requests that overlapped others on the shared nonce.
    confirmations: AtomicU32,
    /// A request has succeeded with these credentials: a later refusal is not a wrong password.
    proven: AtomicBool,
    pool: Mutex<Pool>,
    /// The most nonces in `pool`.
    cap: usize,
}

pub(crate) struct NonceState {
    nonce: String,
    /// `, nonce="…"`, quoted once.
    param: String,
    /// The challenge's `opaque`, and `, opaque="…"` (or nothing), quoted once.
    opaque: Option<String>,
    opaque_param: String,
    /// The last nonce count used.
    nc: AtomicU32,
    /// Shared mode: requests in flight with this nonce.
    inflight: AtomicU32,
    /// For `-sess` algorithms: the cnonce and session H(A1) fixed for this nonce.
    session: Option<(String, String)>,
}

/// What one request sent, to check `rspauth`, apply `nextnonce` and tell why it was refused.
struct Sent {
    space: Arc<Space>,
    nonce: Arc<NonceState>,
    nc: u32,
    cnonce: Cnonce,
    uri: String,
    /// Sent with the shared nonce (and counted in its `inflight`).
    shared: bool,
    /// Another request was in flight with the same shared nonce when this one was sent.
    overlap: bool,
}

impl Sent {
    /// Whether another request counted on the same shared nonce while this one was in flight:
    /// then their counts may have reached the server out of order.
    fn overlapped(&self) -> bool {
        self.shared && (self.overlap || self.nonce.nc.load(Ordering::Relaxed) != self.nc)
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        if self.shared {
            self.nonce.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A client nonce: ours on the stack, or a string (injected, or fixed for `-sess`).
enum Cnonce {
    Hex(algorithm::Hex),
    Owned(String),
}

impl Cnonce {
    fn as_str(&self) -> &str {
        match self {
            Cnonce::Hex(h) => h.as_str(),
            Cnonce::Owned(s) => s,
        }
    }
}

/// A nonce used by one request only: a slot of its space's pool (`id` > 0), or a nonce of its
/// own (`id` 0). Dropped without [`release`](Lease::release) (the request was cancelled or
/// failed, so whether the server saw its count is unknown), the slot is retired.
struct Lease {
    space: Arc<Space>,
    id: u64,
    nonce: Arc<NonceState>,
}

impl Lease {
    fn new(space: &Arc<Space>, grant: Grant) -> Self {
        Lease { space: Arc::clone(space), id: grant.id, nonce: grant.nonce }
    }

    /// Goes on with a new nonce (`stale=true`, a fresh challenge, `nextnonce`).
    fn replace(&mut self, nonce: Arc<NonceState>) {
        if self.id != 0
            && self.id != PERMIT
            && let Some(d) = self.space.digest()
        {
            d.pool().replace(self.id, &nonce);
        }
        self.nonce = nonce;
    }

    fn is_permit(&self) -> bool {
        self.id == PERMIT
    }

    /// The request has its answer: the server saw the count; the nonce goes to the next waiter.
    fn release(mut self) {
        let id = std::mem::take(&mut self.id);
        give_back(&self.space, id, &self.nonce, false);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        give_back(&self.space, self.id, &self.nonce, true);
    }
}

/// Gives a slot or permit back to its pool (`retire`: the slot's count is in doubt).
fn give_back(space: &Space, id: u64, nonce: &Arc<NonceState>, retire: bool) {
    let Some(d) = space.digest() else { return };
    let waker = match id {
        0 => None,
        PERMIT => d.pool().release_permit(d.mode() == PROBATION, nonce),
        id if retire => d.pool().retire(id),
        id => d.pool().release(id),
    };
    wake(waker);
}

/// A place in a pool taken by a request gone to fetch a nonce ([`Take::Grow`]).
struct Growth {
    space: Option<Arc<Space>>,
}

impl Growth {
    fn new(space: &Arc<Space>) -> Self {
        Growth { space: Some(Arc::clone(space)) }
    }

    /// The nonce was fetched (and [`Pool::adopt`] took the place back).
    fn consume(mut self) {
        self.space = None;
    }
}

impl Drop for Growth {
    fn drop(&mut self) {
        if let Some(d) = self.space.as_ref().and_then(|s| s.digest()) {
            let waker = d.pool().cancel_growth();
            wake(waker);
        }
    }
}

/// A queued wait: for a gate (`space` none) or a pool. Dropped, it leaves the queue, and a nonce
/// handed over meanwhile goes to the next waiter.
struct Waiting {
    space: Option<Arc<Space>>,
    cell: Arc<WaitCell>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(grant) = self.cell.cancel()
            && let Some(space) = &self.space
        {
            give_back(space, grant.id, &grant.nonce, false);
        }
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Progress of one request through [`Digest`]. What it holds (a leased nonce, its place as an
/// origin's first request, a place in a queue) is given back when it is dropped, whatever the
/// request's fate.
#[derive(Default)]
pub struct DigestState {
    /// A challenge received during this request has been answered.
    answered: bool,
    /// A `stale=true` challenge has been answered.
    stale_answered: bool,
    sent: Option<Sent>,
    lease: Option<Lease>,
    growth: Option<Growth>,
    probe: Option<ProbeGuard>,
    waiting: Option<Waiting>,
    /// Has waited for its origin's first request (it does so at most once).
    waited_gate: bool,
    /// Times it has waited for a nonce.
    waits: u32,
    /// This request switched its space to leased mode (undone if its own nonce is refused too).
    switched: bool,
    /// Answering a refusal of the shared nonce with a nonce of its own.
    private: bool,
    /// Sent without credentials on purpose, to fetch a nonce of its own: the challenge is
    /// answered even after an earlier refusal.
    fetching: bool,
}

impl fmt::Debug for DigestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestState")
            .field("answered", &self.answered)
            .field("stale_answered", &self.stale_answered)
            .field("sent_nc", &self.sent.as_ref().map(|s| s.nc))
            .field("leased", &self.lease.is_some())
            .field("waiting", &self.waiting.is_some())
            .finish()
    }
}

/// How a request ended, for [`Digest::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    /// The last challenge was not answered (wrong credentials).
    Refused,
    Other,
}

/// A challenge chosen to be answered.
enum Chosen<'a> {
    Basic { realm: &'a str },
    Digest { challenge: &'a Challenge, realm: &'a str, nonce: &'a str, algorithm: Algorithm, qop: Qop, stale: bool },
}

/// What an origin's first contact is.
enum First {
    /// This request is the first: it goes, the others wait for its answer.
    Probe(ProbeGuard),
    /// Another request is first: wait for it.
    Wait(Arc<Gate>),
    /// Go as things are.
    Go,
}

impl Digest {
    /// Digest credentials for origin servers.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the user name or password holds a control character.
    pub fn new(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Digest::build(user.into(), password.as_ref(), Target::Origin, false)
    }

    /// Digest credentials for an HTTP proxy (`407`, `Proxy-Authorization`).
    ///
    /// # Errors
    ///
    /// As [`Digest::new`].
    pub fn proxy(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Digest::build(user.into(), password.as_ref(), Target::Proxy, false)
    }

    /// Guess (curl's `--anyauth`, requests-toolbelt's `GuessAuth`): Digest if the server offers
    /// it, else Basic; the choice is remembered per origin so later requests are pre-authorised.
    ///
    /// # Errors
    ///
    /// As [`Digest::new`], and a `:` in the user name (Basic forbids it).
    pub fn guess(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Digest::build(user.into(), password.as_ref(), Target::Origin, true)
    }

    /// Guess towards an HTTP proxy.
    ///
    /// # Errors
    ///
    /// As [`Digest::guess`].
    pub fn proxy_guess(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Digest::build(user.into(), password.as_ref(), Target::Proxy, true)
    }

    fn build(user: String, password: &str, target: Target, allow_basic: bool) -> Result<Self, ConfigError> {
        check_text(&user, "Digest user name")?;
        check_text(password, "Digest password")?;
        if allow_basic && let Some(pos) = user.find(':') {
            return Err(ConfigError::new(format!(
                "invalid user name for Guess: it contains ':' (Basic forbids it), at byte {pos}"
            )));
        }
        Ok(Digest {
            user,
            password: Secret::new(password),
            target,
            allow_basic,
            origins: RwLock::new(HashMap::new()),
            cnonce: None,
            plain_http: PlainHttpWarning::default(),
            nonces_per_space: DEFAULT_NONCES_PER_SPACE,
        })
    }

    /// Replaces the client nonce generator (by default 128 bits from a CSPRNG, hex-encoded).
    /// Meant for tests and RFC example vectors; a predictable cnonce weakens Digest.
    pub fn with_cnonce(mut self, cnonce: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.cnonce = Some(Arc::new(cnonce));
        self
    }

    /// How many nonces one protection space may use at once once the server is found to check
    /// nonce counts (leased mode, see the [module documentation](self)): each is used by one
    /// request at a time and further requests wait for one. Default
    /// [`DEFAULT_NONCES_PER_SPACE`]; clamped to 1..=64. Apache httpd remembers few Digest
    /// clients by default (`AuthDigestShmemSize`) and forgets the oldest, so keep it small.
    pub fn nonces_per_space(mut self, n: usize) -> Self {
        self.nonces_per_space = n.clamp(1, 64);
        self
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    fn new_cnonce(&self) -> String {
        self.new_cnonce_hex().map_or_else(|f| f(), |h| h.as_str().to_owned())
    }

    /// A fresh cnonce on the stack (128 bits from a CSPRNG), or the injected generator.
    fn new_cnonce_hex(&self) -> Result<algorithm::Hex, &CnonceFn> {
        match &self.cnonce {
            Some(f) => Err(&**f),
            None => Ok(algorithm::Hex::of(&rand::random::<[u8; 16]>())),
        }
    }

    fn space_key(&self, uri: &http::Uri) -> Option<Option<OriginKey>> {
        match self.target {
            Target::Proxy => Some(None),
            Target::Origin => key_of_uri(uri).map(Some),
        }
    }

    fn origins_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Option<OriginKey>, OriginEntry>> {
        self.origins.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn origins_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Option<OriginKey>, OriginEntry>> {
        self.origins.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recent protection space of an origin; its gate if its first request is in
    /// flight; whether this request would be its first.
    fn lookup(&self, key: &Option<OriginKey>) -> (Option<Arc<Space>>, Option<Arc<Gate>>, bool) {
        let origins = self.origins_read();
        match origins.get(key) {
            None => (None, None, true),
            Some(o) => {
                let space = o.spaces.first().cloned();
                let closed = o.gate.as_ref().filter(|g| g.is_closed()).cloned();
                let first = space.is_none() && closed.is_none() && o.gate.as_ref().is_none_or(|g| g.is_cancelled());
                (space, closed, first)
            }
        }
    }

    /// Makes this request the origin's first, unless another has become it meanwhile.
    fn first_contact(&self, key: &Option<OriginKey>) -> First {
        let mut origins = self.origins_write();
        if origins.len() >= MAX_GATED_ORIGINS && !origins.contains_key(key) {
            return First::Go;
        }
        let entry = origins.entry(*key).or_default();
        match &entry.gate {
            Some(gate) if gate.is_closed() => First::Wait(Arc::clone(gate)),
            Some(gate) if !gate.is_cancelled() => First::Go,
            _ if !entry.spaces.is_empty() => First::Go,
            _ => {
                let gate = Arc::new(Gate::new());
                entry.gate = Some(Arc::clone(&gate));
                First::Probe(ProbeGuard::new(gate))
            }
        }
    }

    /// Picks the strongest challenge we can answer.
    fn choose<'a>(&self, challenges: &'a [Challenge]) -> Option<Chosen<'a>> {
        let mut best: Option<Chosen<'a>> = None;
        let mut best_strength = 0;
        for c in challenges.iter().filter(|c| c.is_scheme("Digest")) {
            let (Some(realm), Some(nonce)) = (c.param("realm"), c.param("nonce")) else {
                tracing::debug!("Digest challenge without realm or nonce skipped");
                continue;
            };
            let algorithm = match c.param("algorithm") {
                None => Algorithm::Md5,
                Some(name) => match Algorithm::from_param(name) {
                    Some(a) => a,
                    None => {
                        tracing::debug!(algorithm = name, "Digest challenge with an unknown algorithm skipped");
                        continue;
                    }
                },
            };
            let qop = match c.param("qop") {
                None => Qop::None,
                Some(list) => {
                    let offered: Vec<&str> = list.split(',').map(str::trim).collect();
                    if offered.iter().any(|q| q.eq_ignore_ascii_case("auth")) {
                        Qop::Auth
                    } else if offered.iter().any(|q| q.eq_ignore_ascii_case("auth-int")) {
                        Qop::AuthInt
                    } else {
                        tracing::debug!(qop = list, "Digest challenge with no known qop skipped");
                        continue;
                    }
                }
            };
            if algorithm.strength() > best_strength {
                best_strength = algorithm.strength();
                let stale = c.param("stale").is_some_and(|s| s.eq_ignore_ascii_case("true"));
                best = Some(Chosen::Digest { challenge: c, realm, nonce, algorithm, qop, stale });
            }
        }
        if best.is_none() && self.allow_basic {
            best = challenges
                .iter()
                .find(|c| c.is_scheme("Basic"))
                .map(|c| Chosen::Basic { realm: c.param("realm").unwrap_or("") });
        }
        best
    }

    /// Records a chosen challenge's protection space as the current one of this request's
    /// origin (the same space as before if realm and parameters match). Nonces are the caller's
    /// business.
    fn install(&self, uri: &http::Uri, chosen: &Chosen<'_>) -> Option<Arc<Space>> {
        let key = self.space_key(uri)?;
        let mut origins = self.origins_write();
        let list = &mut origins.entry(key).or_default().spaces;
        let (realm, is_basic) = match chosen {
            Chosen::Basic { realm } => (*realm, true),
            Chosen::Digest { realm, .. } => (*realm, false),
        };
        let found = list.iter().position(|s| s.realm == realm && matches!(s.kind, SpaceKind::Basic(_)) == is_basic);
        let space = match (found, chosen) {
            (Some(i), Chosen::Digest { challenge, algorithm, qop, .. }) => {
                let space = list.remove(i);
                let userhash = challenge.param("userhash").is_some_and(|v| v.eq_ignore_ascii_case("true"));
                let same = space
                    .digest()
                    .is_some_and(|d| d.algorithm == *algorithm && d.qop == *qop && d.userhash == userhash);
                if same { space } else { Arc::new(self.new_space(chosen)?) }
            }
            (Some(i), Chosen::Basic { .. }) => list.remove(i),
            (None, _) => Arc::new(self.new_space(chosen)?),
        };
        list.insert(0, Arc::clone(&space));
        list.truncate(8);
        Some(space)
    }

    fn new_space(&self, chosen: &Chosen<'_>) -> Option<Space> {
        match chosen {
            Chosen::Basic { realm } => {
                let value = crate::basic::basic_value(self.user.as_bytes(), self.password.expose().as_bytes()).ok()?;
                Some(Space { realm: (*realm).to_owned(), kind: SpaceKind::Basic(value) })
            }
            Chosen::Digest { challenge, realm, nonce, algorithm, qop, .. } => {
                let userhash = challenge.param("userhash").is_some_and(|v| v.eq_ignore_ascii_case("true"));
                let mut username = String::new();
                if userhash {
                    username.push_str("username=");
                    push_quoted(&mut username, &algorithm.hash(&[self.user.as_bytes(), realm.as_bytes()]));
                } else if self.user.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    username.push_str("username=");
                    push_quoted(&mut username, &self.user);
                } else {
                    username.push_str("username*=UTF-8''");
                    username.extend(utf8_percent_encode(&self.user, ATTR_CHAR));
                }
                let ha1 = ha1_base(*algorithm, &self.user, realm, self.password.expose());
                let mut realm_param = String::from(", realm=");
                push_quoted(&mut realm_param, realm);
                let first = NonceState::new(*algorithm, &ha1, nonce, challenge.param("opaque"), || self.new_cnonce());
                let space = DigestSpace {
                    algorithm: *algorithm,
                    qop: *qop,
                    userhash,
                    realm_param,
                    username: if userhash { format!("{username}, userhash=true") } else { username },
                    shared: RwLock::new(Arc::new(first)),
                    mode: AtomicU8::new(PROBATION),
                    confirmations: AtomicU32::new(0),
                    proven: AtomicBool::new(false),
                    pool: Mutex::new(Pool::default()),
                    cap: self.nonces_per_space,
                    ha1,
                };
                Some(Space { realm: (*realm).to_owned(), kind: SpaceKind::Digest(space) })
            }
        }
    }

    /// A nonce fresh from a challenge, leased to the request that received it: into its space's
    /// pool if the space is in leased mode (or the request had a place reserved) and there is
    /// room, else its own.
    fn adopt(space: &Arc<Space>, d: &DigestSpace, nonce: Arc<NonceState>, growth: Option<Growth>) -> Lease {
        let reserved = growth.is_some();
        let id = if reserved || d.is_leased() { d.pool().adopt(&nonce, d.cap, reserved) } else { 0 };
        if let Some(growth) = growth {
            growth.consume();
        }
        Lease { space: Arc::clone(space), id, nonce }
    }

    /// The `Authorization` value for one request in a Digest space, with `nonce` (the shared
    /// one if `shared`, else one leased to this request).
    fn digest_header(
        &self,
        space: &Arc<Space>,
        d: &DigestSpace,
        nonce: &Arc<NonceState>,
        shared: bool,
        req: &AuthRequest<'_>,
        body_hash: Option<&str>,
    ) -> Option<(HeaderValue, Sent)> {
        let nc = nonce.nc.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let (cnonce, ha1) = match &nonce.session {
            Some((cnonce, ha1)) => (Cnonce::Owned(cnonce.clone()), ha1.as_str()),
            None if d.qop == Qop::None => (Cnonce::Owned(String::new()), d.ha1.as_str()),
            None => match self.new_cnonce_hex() {
                Ok(hex) => (Cnonce::Hex(hex), d.ha1.as_str()),
                Err(f) => (Cnonce::Owned(f()), d.ha1.as_str()),
            },
        };
        let uri = request_target(req.uri(), self.target);
        let exchange = Exchange {
            algorithm: d.algorithm,
            ha1,
            nonce: &nonce.nonce,
            nc,
            cnonce: cnonce.as_str(),
            qop: d.qop,
            method: req.method().as_str(),
            uri: &uri,
            body_hash,
        };
        let response = exchange.response_hex();
        let mut out = String::with_capacity(256 + uri.len());
        out.push_str("Digest ");
        out.push_str(&d.username);
        out.push_str(&d.realm_param);
        out.push_str(&nonce.param);
        out.push_str(", uri=");
        push_quoted(&mut out, &uri);
        out.push_str(", algorithm=");
        out.push_str(d.algorithm.name());
        out.push_str(", response=\"");
        out.push_str(response.as_str());
        out.push('"');
        if d.qop != Qop::None {
            out.push_str(", qop=");
            out.push_str(d.qop.name());
            out.push_str(", nc=");
            out.push_str(std::str::from_utf8(&algorithm::nc_hex(nc)).unwrap_or("00000000"));
            out.push_str(", cnonce=");
            match &cnonce {
                // Ours: hex digits, nothing to escape.
                Cnonce::Hex(hex) => {
                    out.push('"');
                    out.push_str(hex.as_str());
                    out.push('"');
                }
                Cnonce::Owned(s) => push_quoted(&mut out, s),
            }
        }
        out.push_str(&nonce.opaque_param);
        let mut value = HeaderValue::try_from(out).ok()?;
        value.set_sensitive(true);
        let overlap = shared && nonce.inflight.fetch_add(1, Ordering::Relaxed) > 0;
        let sent = Sent { space: Arc::clone(space), nonce: Arc::clone(nonce), nc, cnonce, uri, shared, overlap };
        Some((value, sent))
    }

    /// Checks `rspauth` and applies `nextnonce` from an Authentication-Info header.
    fn authentication_info(&self, res: &http::response::Parts, sent: &Sent, lease: Option<&mut Lease>) {
        let Some(value) = res.headers.get(self.target.info_header()) else { return };
        let Ok(params) = challenge::parse_params(value.as_bytes()) else {
            tracing::debug!("malformed Authentication-Info header ignored");
            return;
        };
        let Some(d) = sent.space.digest() else { return };
        let get = |name: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        if let Some(rspauth) = get("rspauth") {
            let ha1 = sent.nonce.session.as_ref().map_or(d.ha1.as_str(), |(_, h)| h.as_str());
            let expected = Exchange {
                algorithm: d.algorithm,
                ha1,
                nonce: &sent.nonce.nonce,
                nc: sent.nc,
                cnonce: sent.cnonce.as_str(),
                qop: d.qop,
                method: "",
                uri: &sent.uri,
                body_hash: None,
            }
            .rspauth();
            if d.qop == Qop::Auth && !rspauth.eq_ignore_ascii_case(&expected) {
                tracing::warn!(realm = %sent.space.realm, "Digest rspauth does not match: the server did not prove it knows the password");
            }
        }
        if let Some(next) = get("nextnonce") {
            let opaque = sent.nonce.opaque.as_deref();
            let fresh = Arc::new(NonceState::new(d.algorithm, &d.ha1, next, opaque, || self.new_cnonce()));
            match lease {
                Some(lease) if !lease.is_permit() => lease.replace(fresh),
                _ => d.set_shared(fresh),
            }
        }
    }

    /// The request has its answer: gives back what it holds, and learns from the outcome.
    fn finish(state: &mut DigestState, outcome: Outcome) {
        if let Some(probe) = state.probe.take() {
            probe.finish();
        }
        state.growth = None;
        state.waiting = None;
        state.sent = None;
        let Some(lease) = state.lease.take() else { return };
        if let Some(d) = lease.space.digest() {
            if state.switched {
                if outcome == Outcome::Refused {
                    // A nonce of its own was refused too: not a matter of counts.
                    d.set_mode(PROBATION);
                    tracing::debug!(realm = %lease.space.realm, "Digest: a fresh nonce was refused too; back to sharing nonces");
                } else if outcome == Outcome::Success {
                    tracing::debug!(realm = %lease.space.realm, "Digest: a fresh nonce succeeded right after a refusal of the shared one; the server checks nonce counts");
                }
            }
            if outcome == Outcome::Success && state.private && lease.id == 0 && !d.is_leased() {
                d.set_shared(Arc::clone(&lease.nonce));
            }
        }
        lease.release();
    }
}

impl Space {
    fn digest(&self) -> Option<&DigestSpace> {
        match &self.kind {
            SpaceKind::Digest(d) => Some(d),
            SpaceKind::Basic(_) => None,
        }
    }
}

impl NonceState {
    fn new(
        algorithm: Algorithm,
        ha1: &str,
        nonce: &str,
        opaque: Option<&str>,
        cnonce: impl FnOnce() -> String,
    ) -> Self {
        let session = algorithm.is_session().then(|| {
            let cnonce = cnonce();
            let sess = session_ha1(algorithm, ha1, nonce, &cnonce);
            (cnonce, sess)
        });
        let mut param = String::from(", nonce=");
        push_quoted(&mut param, nonce);
        let opaque_param = opaque.map_or_else(String::new, |o| {
            let mut p = String::from(", opaque=");
            push_quoted(&mut p, o);
            p
        });
        NonceState {
            nonce: nonce.to_owned(),
            param,
            opaque: opaque.map(str::to_owned),
            opaque_param,
            nc: AtomicU32::new(0),
            inflight: AtomicU32::new(0),
            session,
        }
    }
}

impl DigestSpace {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mode(&self) -> u8 {
        self.mode.load(Ordering::Acquire)
    }

    fn is_leased(&self) -> bool {
        self.mode() == LEASED
    }

    /// Changes the mode; the requests waiting go again, in the new mode. Returns the old one.
    fn set_mode(&self, mode: u8) -> u8 {
        let old = self.mode.swap(mode, Ordering::AcqRel);
        if old != mode {
            let wakers = self.pool().kick_all();
            wakers.into_iter().for_each(Waker::wake);
        }
        old
    }

    /// A request that overlapped others on the shared nonce succeeded: after enough of them, a
    /// space on probation is taken to be lenient.
    fn confirm_overlap(&self, realm: &str) {
        if self.mode() == PROBATION
            && self.confirmations.fetch_add(1, Ordering::Relaxed) + 1 >= CONFIRM_OVERLAPS
            && self.mode.compare_exchange(PROBATION, SHARED, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            tracing::debug!(
                realm,
                "Digest: overlapping requests on one nonce keep succeeding; the server does not check the order of nonce counts"
            );
            let wakers = self.pool().kick_all();
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    fn shared(&self) -> Arc<NonceState> {
        Arc::clone(&self.shared.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `fresh` the shared nonce (count from where it is), unless it is the current one:
    /// requests racing on the same challenge keep counting on the same nonce.
    fn set_shared(&self, fresh: Arc<NonceState>) {
        let mut slot = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        if slot.nonce != fresh.nonce || slot.opaque != fresh.opaque {
            *slot = fresh;
        }
    }
}

/// The `uri` parameter: the request-target as sent (RFC 7616 §3.4): origin-form to origins,
/// absolute-form to proxies.
fn request_target(uri: &http::Uri, target: Target) -> String {
    match target {
        Target::Proxy if uri.scheme().is_some() => uri.to_string(),
        // `CONNECT host:port`: the request-target is the authority (as curl and Squid use it).
        Target::Proxy if uri.path_and_query().is_none() && uri.authority().is_some() => uri.to_string(),
        _ => uri.path_and_query().map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
    }
}

fn hash_body(algorithm: Algorithm, chunks: &[Bytes]) -> String {
    if let [one] = chunks {
        return algorithm.hash(&[one]);
    }
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    algorithm.hash(&[&whole])
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Digest")
            .field("user", &self.user)
            .field("password", &self.password)
            .field("target", &self.target)
            .field("guess", &self.allow_basic)
            .field("nonces_per_space", &self.nonces_per_space)
            .finish_non_exhaustive()
    }
}

impl Authenticator for Digest {
    type Mode = Replay;
    type Error = std::convert::Infallible;
    type State = DigestState;
    type Wait = DigestWait;

    fn authorize(
        &self,
        req: &mut AuthRequest<'_>,
        state: &mut DigestState,
    ) -> Result<Authorize<DigestWait>, std::convert::Infallible> {
        let header = self.target.credentials_header();
        if req.headers().contains_key(&header) || (self.target == Target::Proxy && !proxy_may_see(req.uri())) {
            return Ok(Authorize::Done);
        }
        // A wait has ended: take the nonce it brought, if any. Dropping the wait leaves its
        // queue (and gives back a nonce this request does not need).
        if let Some(waiting) = state.waiting.take()
            && state.lease.is_none()
            && let Some(space) = &waiting.space
            && let Some(grant) = waiting.cell.take_grant()
        {
            let lease = Lease::new(space, grant);
            if lease.is_permit() && space.digest().is_none_or(|d| d.mode() != PROBATION) {
                lease.release(); // probation ended meanwhile: go in the new mode
            } else {
                state.lease = Some(lease);
            }
        }
        let Some(key) = self.space_key(req.uri()) else {
            return Ok(Authorize::Done);
        };
        let (mut space, gate, first) = self.lookup(&key);
        if state.probe.is_none() && (gate.is_some() || first) {
            let gate = match gate {
                Some(gate) => Some(gate),
                None => match self.first_contact(&key) {
                    First::Probe(probe) => {
                        state.probe = Some(probe);
                        return Ok(Authorize::Done); // the origin's first request: it takes the challenge
                    }
                    First::Wait(gate) => Some(gate),
                    First::Go => None,
                },
            };
            if let Some(gate) = gate
                && !state.waited_gate
            {
                state.waited_gate = true;
                if let Some(cell) = gate.wait() {
                    state.waiting = Some(Waiting { space: None, cell: Arc::clone(&cell) });
                    return Ok(Authorize::Wait(DigestWait::new(cell)));
                }
            }
            space = self.lookup(&key).0;
        }
        let Some(space) = space else {
            return Ok(Authorize::Done);
        };
        match &space.kind {
            SpaceKind::Basic(value) => {
                self.plain_http.check(req.uri(), "Basic credentials (Guess)");
                req.set_credential(&header, value);
            }
            SpaceKind::Digest(d) => {
                let body_hash = match (d.qop, req.body()) {
                    (Qop::AuthInt, BodyView::Empty) => Some(d.algorithm.hash(&[b""])),
                    (Qop::AuthInt, BodyView::Buffered(chunks)) => Some(hash_body(d.algorithm, chunks)),
                    (Qop::AuthInt, BodyView::Unavailable) => return Ok(Authorize::NeedBody),
                    _ => None,
                };
                let mode = d.mode();
                // The shared nonce as read for a permit just taken (read once per request).
                let mut shared_now = None;
                if state.lease.is_none() && mode != SHARED {
                    let may_wait = state.waits < MAX_LEASE_WAITS;
                    let take = if mode == LEASED {
                        d.pool().take(d.cap, may_wait)
                    } else {
                        d.pool().take_permit(PROBATION_WINDOW, may_wait, &d.shared())
                    };
                    match take {
                        Take::Leased(grant) => {
                            if grant.id == PERMIT {
                                shared_now = Some(Arc::clone(&grant.nonce));
                            }
                            state.lease = Some(Lease::new(&space, grant));
                        }
                        Take::Full if mode != LEASED => {} // probation, waited enough: go without a permit
                        Take::Grow => {
                            // Sent without credentials: the challenge brings a nonce for the pool
                            // (a new opaque, to servers that count per opaque).
                            state.growth = Some(Growth::new(&space));
                            state.fetching = true;
                            return Ok(Authorize::Done);
                        }
                        Take::Wait(cell) => {
                            state.waits += 1;
                            state.waiting = Some(Waiting { space: Some(Arc::clone(&space)), cell: Arc::clone(&cell) });
                            return Ok(Authorize::Wait(DigestWait::new(cell)));
                        }
                        Take::Full => {
                            tracing::debug!(realm = %space.realm, "Digest: every nonce of the protection space is in use and this request has waited enough; it asks for a nonce of its own");
                            state.fetching = true;
                            return Ok(Authorize::Done);
                        }
                    }
                }
                let built = match &state.lease {
                    Some(lease) if !lease.is_permit() => match lease.space.digest() {
                        Some(ld) => {
                            self.digest_header(&lease.space, ld, &lease.nonce, false, req, body_hash.as_deref())
                        }
                        None => None,
                    },
                    _ => {
                        let nonce = shared_now.unwrap_or_else(|| d.shared());
                        self.digest_header(&space, d, &nonce, true, req, body_hash.as_deref())
                    }
                };
                if let Some((value, sent)) = built {
                    req.headers_mut().insert(header, value);
                    state.sent = Some(sent);
                }
            }
        }
        Ok(Authorize::Done)
    }

    fn on_response(&self, req: &http::request::Parts, res: &http::response::Parts, state: &mut DigestState) -> Action {
        state.waiting = None;
        if res.status != self.target.status() {
            let outcome = if res.status.is_success() {
                if let Some(sent) = &state.sent {
                    if let Some(d) = sent.space.digest() {
                        d.proven.store(true, Ordering::Relaxed);
                        if sent.overlapped() {
                            d.confirm_overlap(&sent.space.realm);
                        }
                    }
                    self.authentication_info(res, sent, state.lease.as_mut());
                }
                Outcome::Success
            } else {
                Outcome::Other
            };
            Digest::finish(state, outcome);
            return Action::Done;
        }
        if req.headers.contains_key(self.target.credentials_header()) {
            Digest::finish(state, Outcome::Other);
            return Action::Done; // the caller's own credentials: not ours to retry
        }
        let challenges = challenge::parse_headers(&res.headers, self.target.challenge_header());
        let Some(chosen) = self.choose(&challenges) else {
            tracing::debug!(status = %res.status, "no challenge this scheme can answer");
            Digest::finish(state, Outcome::Other);
            return Action::Done;
        };
        let stale = matches!(chosen, Chosen::Digest { stale: true, .. });
        let fetched = std::mem::take(&mut state.fetching) && state.sent.is_none();
        let retry = if !state.answered {
            state.answered = true;
            true
        } else if fetched {
            true // the challenge this request went to fetch
        } else if stale && state.sent.is_some() && !state.stale_answered {
            state.stale_answered = true;
            true
        } else {
            false
        };
        if !retry {
            Digest::finish(state, Outcome::Refused);
            return Action::Done; // wrong credentials: the second challenge goes to the caller
        }
        let sent = state.sent.take();
        let refused_shared = !stale && sent.as_ref().is_some_and(|s| s.shared);
        let overlapped = sent.as_ref().is_some_and(Sent::overlapped);
        let refused_opaque = sent.as_ref().and_then(|s| s.nonce.opaque.clone());
        drop(sent);
        if let Some(lease) = state.lease.take_if(|l| l.is_permit()) {
            lease.release(); // the permit was for the shared nonce just refused
        }
        let Some(space) = self.install(&req.uri, &chosen) else {
            Digest::finish(state, Outcome::Other);
            return Action::Done;
        };
        let (Chosen::Digest { challenge, nonce, .. }, Some(d)) = (&chosen, space.digest()) else {
            if let Some(lease) = state.lease.take() {
                lease.release();
            }
            return Action::Retry; // Basic (Guess)
        };
        let fresh =
            Arc::new(NonceState::new(d.algorithm, &d.ha1, nonce, challenge.param("opaque"), || self.new_cnonce()));
        if let Some(lease) = state.lease.as_mut()
            && Arc::ptr_eq(&lease.space, &space)
        {
            lease.replace(fresh); // stale or refused: the same slot goes on with the new nonce
            return Action::Retry;
        }
        if let Some(lease) = state.lease.take() {
            lease.release();
        }
        if refused_shared {
            // Refused with the shared nonce, after these credentials have worked: if others
            // counted on it at the same time, their counts may have arrived out of order. Lease
            // nonces from now on, and answer with a nonce of this request's own: if that
            // succeeds, counts were the cause.
            if overlapped && d.proven.load(Ordering::Relaxed) && d.set_mode(LEASED) != LEASED {
                state.switched = true;
                tracing::debug!(realm = %space.realm, "Digest: a pre-authorised request sharing its nonce with others was refused; leasing nonces, one request at a time each");
            }
            let same_opaque = refused_opaque.is_some() && challenge.param("opaque") == refused_opaque.as_deref();
            if same_opaque && d.is_leased() {
                // The new nonce comes with the same opaque, which servers such as Apache httpd
                // count on (and others still use): go again with a nonce of the pool (fetched
                // with an unauthenticated send if the pool has room).
                return Action::Retry;
            }
            state.private = true;
            state.lease = Some(Digest::adopt(&space, d, fresh, state.growth.take()));
        } else if state.growth.is_some() || d.is_leased() {
            state.lease = Some(Digest::adopt(&space, d, fresh, state.growth.take()));
        } else {
            d.set_shared(fresh);
        }
        Action::Retry
    }
}

impl AuthLayer<Digest> {
    /// A layer that answers Digest challenges from origin servers (RFC 7616).
    ///
    /// # Errors
    ///
    /// As [`Digest::new`].
    pub fn digest(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Ok(AuthLayer::new(Digest::new(user, password)?))
    }

    /// A layer that answers Digest challenges from an HTTP proxy (`407`).
    ///
    /// # Errors
    ///
    /// As [`Digest::new`].
    pub fn proxy_digest(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Ok(AuthLayer::new(Digest::proxy(user, password)?))
    }

    /// A layer that answers Digest, or Basic if no Digest challenge is offered (curl's
    /// `--anyauth`).
    ///
    /// # Errors
    ///
    /// As [`Digest::guess`].
    pub fn guess(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Ok(AuthLayer::new(Digest::guess(user, password)?))
    }

    /// Guess towards an HTTP proxy (`407`).
    ///
    /// # Errors
    ///
    /// As [`Digest::guess`].
    pub fn proxy_guess(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Ok(AuthLayer::new(Digest::proxy_guess(user, password)?))
    }
}
