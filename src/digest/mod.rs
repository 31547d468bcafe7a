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
//! # Security
//!
//! Digest with MD5 is weak by today's standards but does not send the password; prefer SHA-256
//! where the server offers it (the strongest offered is chosen automatically). Guess sends Basic
//! only when the server offers no Digest challenge.

pub(crate) mod algorithm;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

pub use self::algorithm::{Algorithm, Qop};
use self::algorithm::{Exchange, ha1_base, session_ha1};
use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize, BodyView, NoWait, Replay};
use crate::basic::check_text;
use crate::challenge::{self, Challenge, push_quoted};
use crate::error::ConfigError;
use crate::header::proxy_may_see;
use crate::layer::AuthLayer;
use crate::origin::{OriginKey, key_of_uri};
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
    spaces: RwLock<HashMap<Option<OriginKey>, Vec<Arc<Space>>>>,
    cnonce: Option<Arc<CnonceFn>>,
    warned_plain_http: AtomicBool,
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
    opaque: Option<String>,
    /// `, realm="…"` and `, opaque="…"` (or nothing), quoted once.
    realm_param: String,
    opaque_param: String,
    /// `username="…"` (or `username*=…`, plus `userhash=true`), rendered once.
    username: String,
    /// H(user:realm:password): derived from the password, never printed.
    ha1: String,
    nonce: RwLock<Arc<NonceState>>,
}

struct NonceState {
    nonce: String,
    /// `, nonce="…"`, quoted once.
    param: String,
    nc: AtomicU32,
    /// For `-sess` algorithms: the cnonce and session H(A1) fixed for this nonce.
    session: Option<(String, String)>,
}

/// What one request sent, to check `rspauth` and apply `nextnonce`.
struct Sent {
    space: Arc<Space>,
    nonce: Arc<NonceState>,
    nc: u32,
    cnonce: Cnonce,
    uri: String,
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

/// Progress of one request through [`Digest`].
#[derive(Default)]
pub struct DigestState {
    /// A challenge received during this request has been answered.
    answered: bool,
    /// A `stale=true` challenge has been answered.
    stale_answered: bool,
    sent: Option<Sent>,
}

impl fmt::Debug for DigestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestState")
            .field("answered", &self.answered)
            .field("stale_answered", &self.stale_answered)
            .field("sent_nc", &self.sent.as_ref().map(|s| s.nc))
            .finish()
    }
}

/// A challenge chosen to be answered.
enum Chosen<'a> {
    Basic { realm: &'a str },
    Digest { challenge: &'a Challenge, realm: &'a str, nonce: &'a str, algorithm: Algorithm, qop: Qop, stale: bool },
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
            spaces: RwLock::new(HashMap::new()),
            cnonce: None,
            warned_plain_http: AtomicBool::new(false),
        })
    }

    /// Replaces the client nonce generator (by default 128 bits from a CSPRNG, hex-encoded).
    /// Meant for tests and RFC example vectors; a predictable cnonce weakens Digest.
    pub fn with_cnonce(mut self, cnonce: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.cnonce = Some(Arc::new(cnonce));
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

    /// The most recent protection space for this request.
    fn current_space(&self, uri: &http::Uri) -> Option<Arc<Space>> {
        let key = self.space_key(uri)?;
        let spaces = self.spaces.read().unwrap_or_else(|p| p.into_inner());
        spaces.get(&key)?.first().cloned()
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

    /// Records a chosen challenge as the current protection space of this request's origin.
    fn install(&self, uri: &http::Uri, chosen: &Chosen<'_>) -> Option<Arc<Space>> {
        let key = self.space_key(uri)?;
        let mut spaces = self.spaces.write().unwrap_or_else(|p| p.into_inner());
        let list = spaces.entry(key).or_default();
        let (realm, is_basic) = match chosen {
            Chosen::Basic { realm } => (*realm, true),
            Chosen::Digest { realm, .. } => (*realm, false),
        };
        let found = list.iter().position(|s| s.realm == realm && matches!(s.kind, SpaceKind::Basic(_)) == is_basic);
        let space = match (found, chosen) {
            (Some(i), Chosen::Digest { challenge, nonce, algorithm, qop, .. }) => {
                let space = list.remove(i);
                let same_params = match &space.kind {
                    SpaceKind::Digest(d) => {
                        d.algorithm == *algorithm && d.qop == *qop && d.opaque.as_deref() == challenge.param("opaque")
                    }
                    SpaceKind::Basic(_) => false,
                };
                if same_params {
                    if let SpaceKind::Digest(d) = &space.kind {
                        d.set_nonce(nonce, || self.new_cnonce());
                    }
                    space
                } else {
                    Arc::new(self.new_space(chosen)?)
                }
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
                let token = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    self.user,
                    self.password.expose()
                ));
                let mut value = HeaderValue::try_from(format!("Basic {token}")).ok()?;
                value.set_sensitive(true);
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
                let opaque = challenge.param("opaque").map(str::to_owned);
                let mut realm_param = String::from(", realm=");
                push_quoted(&mut realm_param, realm);
                let opaque_param = opaque.as_deref().map_or_else(String::new, |o| {
                    let mut p = String::from(", opaque=");
                    push_quoted(&mut p, o);
                    p
                });
                let space = DigestSpace {
                    algorithm: *algorithm,
                    qop: *qop,
                    opaque,
                    realm_param,
                    opaque_param,
                    username: if userhash { format!("{username}, userhash=true") } else { username },
                    nonce: RwLock::new(Arc::new(NonceState::new(*algorithm, &ha1, nonce, || self.new_cnonce()))),
                    ha1,
                };
                Some(Space { realm: (*realm).to_owned(), kind: SpaceKind::Digest(space) })
            }
        }
    }

    /// The `Authorization` value for one request in a Digest space.
    fn digest_header(
        &self,
        space: &Arc<Space>,
        d: &DigestSpace,
        req: &AuthRequest<'_>,
        body_hash: Option<&str>,
    ) -> Option<(HeaderValue, Sent)> {
        let nonce = Arc::clone(&d.nonce.read().unwrap_or_else(|p| p.into_inner()));
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
        out.push_str(&d.opaque_param);
        let mut value = HeaderValue::try_from(out).ok()?;
        value.set_sensitive(true);
        Some((value, Sent { space: Arc::clone(space), nonce, nc, cnonce, uri }))
    }

    /// Checks `rspauth` and applies `nextnonce` from an Authentication-Info header.
    fn authentication_info(&self, res: &http::response::Parts, sent: &Sent) {
        let Some(value) = res.headers.get(self.target.info_header()) else { return };
        let Ok(params) = challenge::parse_params(value.as_bytes()) else {
            tracing::debug!("malformed Authentication-Info header ignored");
            return;
        };
        let SpaceKind::Digest(d) = &sent.space.kind else { return };
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
            d.set_nonce(next, || self.new_cnonce());
        }
    }
}

impl NonceState {
    fn new(algorithm: Algorithm, ha1: &str, nonce: &str, cnonce: impl FnOnce() -> String) -> Self {
        let session = algorithm.is_session().then(|| {
            let cnonce = cnonce();
            let sess = session_ha1(algorithm, ha1, nonce, &cnonce);
            (cnonce, sess)
        });
        let mut param = String::from(", nonce=");
        push_quoted(&mut param, nonce);
        NonceState { nonce: nonce.to_owned(), param, nc: AtomicU32::new(0), session }
    }
}

impl DigestSpace {
    /// Starts a new nonce (count back to zero), unless it is the current one: requests racing
    /// on the same challenge keep counting on the same nonce.
    fn set_nonce(&self, nonce: &str, cnonce: impl FnOnce() -> String) {
        let mut slot = self.nonce.write().unwrap_or_else(|p| p.into_inner());
        if slot.nonce != nonce {
            *slot = Arc::new(NonceState::new(self.algorithm, &self.ha1, nonce, cnonce));
        }
    }
}

/// The `uri` parameter: the request-target as sent (RFC 7616 §3.4): origin-form to origins,
/// absolute-form to proxies.
fn request_target(uri: &http::Uri, target: Target) -> String {
    match target {
        Target::Proxy if uri.scheme().is_some() => uri.to_string(),
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
            .finish_non_exhaustive()
    }
}

impl Authenticator for Digest {
    type Mode = Replay;
    type Error = std::convert::Infallible;
    type State = DigestState;
    type Wait = NoWait<std::convert::Infallible>;

    fn authorize(
        &self,
        req: &mut AuthRequest<'_>,
        state: &mut DigestState,
    ) -> Result<Authorize<Self::Wait>, std::convert::Infallible> {
        let header = self.target.credentials_header();
        if req.headers().contains_key(&header) || (self.target == Target::Proxy && !proxy_may_see(req.uri())) {
            return Ok(Authorize::Done);
        }
        let Some(space) = self.current_space(req.uri()) else {
            return Ok(Authorize::Done);
        };
        match &space.kind {
            SpaceKind::Basic(value) => {
                if req.uri().scheme() == Some(&http::uri::Scheme::HTTP)
                    && !self.warned_plain_http.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(user = %self.user, "answering a Basic challenge over plain http (Guess): the password can be read on the path (warned once)");
                }
                req.headers_mut().insert(header, value.clone());
            }
            SpaceKind::Digest(d) => {
                let body_hash = match (d.qop, req.body()) {
                    (Qop::AuthInt, BodyView::Empty) => Some(d.algorithm.hash(&[b""])),
                    (Qop::AuthInt, BodyView::Buffered(chunks)) => Some(hash_body(d.algorithm, chunks)),
                    (Qop::AuthInt, BodyView::Unavailable) => return Ok(Authorize::NeedBody),
                    _ => None,
                };
                if let Some((value, sent)) = self.digest_header(&space, d, req, body_hash.as_deref()) {
                    req.headers_mut().insert(header, value);
                    state.sent = Some(sent);
                }
            }
        }
        Ok(Authorize::Done)
    }

    fn on_response(&self, req: &http::request::Parts, res: &http::response::Parts, state: &mut DigestState) -> Action {
        if res.status != self.target.status() {
            if res.status.is_success()
                && let Some(sent) = &state.sent
            {
                self.authentication_info(res, sent);
            }
            return Action::Done;
        }
        if req.headers.contains_key(self.target.credentials_header()) {
            return Action::Done; // the caller's own credentials: not ours to retry
        }
        let challenges = challenge::parse_headers(&res.headers, self.target.challenge_header());
        let Some(chosen) = self.choose(&challenges) else {
            tracing::debug!(status = %res.status, "no challenge this scheme can answer");
            return Action::Done;
        };
        let stale = matches!(chosen, Chosen::Digest { stale: true, .. });
        let retry = if !state.answered {
            state.answered = true;
            true
        } else if stale && state.sent.is_some() && !state.stale_answered {
            state.stale_answered = true;
            true
        } else {
            false
        };
        if !retry {
            return Action::Done; // wrong credentials: the second challenge goes to the caller
        }
        state.sent = None;
        match self.install(&req.uri, &chosen) {
            Some(_) => Action::Retry,
            None => Action::Done,
        }
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
