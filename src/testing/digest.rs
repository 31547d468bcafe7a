//! A server-side Digest verifier (RFC 7616) for tests: issues nonces, checks nonce counts and
//! rejects replays, can force `stale=true`, and can send `nextnonce`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use bytes::Bytes;
use http::header::{AUTHORIZATION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};
use percent_encoding::percent_decode_str;

use super::{Check, RequireLayer, Verdict, constant_time_eq};
use crate::challenge::{self, push_quoted};
use crate::digest::algorithm::{Exchange, ha1_base, session_ha1};
use crate::digest::{Algorithm, Qop};
use crate::secret::Secret;

/// Checks Digest credentials. Build it with [`DigestCheck::new`] and the setters, then wrap it in
/// [`RequireLayer::new`].
///
/// ```
/// use tower_auth::digest::{Algorithm, Qop};
/// use tower_auth::testing::{DigestCheck, RequireLayer};
///
/// let require = RequireLayer::new(
///     DigestCheck::new("api").user("alice", "s3cret").algorithms(&[Algorithm::Sha256, Algorithm::Md5]).qop(&[Qop::Auth]),
/// );
/// # let _ = require;
/// ```
pub struct DigestCheck {
    realm: String,
    users: Vec<(String, Secret)>,
    algorithms: Vec<Algorithm>,
    qops: Vec<Qop>,
    opaque: Option<String>,
    userhash: bool,
    /// A nonce is good for this many requests, then answered with `stale=true`.
    uses_per_nonce: Option<u32>,
    next_nonce: bool,
    proxy: bool,
    nc_check: bool,
    nonces: Mutex<HashMap<String, NonceRecord>>,
}

#[derive(Debug, Default)]
struct NonceRecord {
    /// Nonce counts seen (a replay is a count seen before).
    seen: std::collections::BTreeSet<u32>,
    /// The highest count accepted (for `nc_check`).
    last: u32,
    uses: u32,
}

impl DigestCheck {
    /// A check for this realm: MD5, qop `auth`, no users yet.
    pub fn new(realm: &str) -> Self {
        DigestCheck {
            realm: realm.to_owned(),
            users: Vec::new(),
            algorithms: vec![Algorithm::Md5],
            qops: vec![Qop::Auth],
            opaque: Some(random_token()),
            userhash: false,
            uses_per_nonce: None,
            next_nonce: false,
            proxy: false,
            nc_check: false,
            nonces: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a user.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.users.push((user.to_owned(), Secret::new(password)));
        self
    }

    /// The algorithms offered, one challenge each, in this order.
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.algorithms = algorithms.to_vec();
        self
    }

    /// The qop values offered; `&[Qop::None]` for an RFC 2069 challenge without qop.
    pub fn qop(mut self, qops: &[Qop]) -> Self {
        self.qops = qops.to_vec();
        self
    }

    /// Offers `userhash=true`.
    pub fn userhash(mut self, on: bool) -> Self {
        self.userhash = on;
        self
    }

    /// Sends no `opaque`.
    pub fn without_opaque(mut self) -> Self {
        self.opaque = None;
        self
    }

    /// Each nonce is accepted for `uses` requests; the next one gets `401` with `stale=true`
    /// and a new nonce.
    pub fn stale_after(mut self, uses: u32) -> Self {
        self.uses_per_nonce = Some(uses);
        self
    }

    /// Answers each accepted request with `Authentication-Info: nextnonce=…` (and `rspauth`).
    pub fn next_nonce(mut self, on: bool) -> Self {
        self.next_nonce = on;
        self
    }

    /// Checks nonce counts as they arrive, as Apache httpd's `AuthDigestNcCheck On` does: a
    /// count not above the last one accepted for its nonce is refused (`401`, a new nonce, not
    /// stale), so concurrent requests counting on one nonce fail when they overtake each other.
    pub fn nc_check(mut self, on: bool) -> Self {
        self.nc_check = on;
        self
    }

    /// Acts as a proxy: `407`, `Proxy-Authenticate`, `Proxy-Authorization`.
    pub fn proxy(mut self, on: bool) -> Self {
        self.proxy = on;
        self
    }

    /// Nonces issued so far.
    pub fn nonces_issued(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NonceRecord>> {
        self.nonces.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn challenge(&self, stale: bool) -> Verdict {
        let nonce = random_token();
        self.lock().insert(nonce.clone(), NonceRecord::default());
        let qop: Vec<&str> = self.qops.iter().filter(|q| **q != Qop::None).map(|q| q.name()).collect();
        let mut headers = Vec::new();
        for algorithm in &self.algorithms {
            let mut c = String::from("Digest realm=");
            push_quoted(&mut c, &self.realm);
            if !qop.is_empty() {
                c.push_str(", qop=");
                push_quoted(&mut c, &qop.join(", "));
            }
            c.push_str(", nonce=");
            push_quoted(&mut c, &nonce);
            if let Some(opaque) = &self.opaque {
                c.push_str(", opaque=");
                push_quoted(&mut c, opaque);
            }
            c.push_str(", algorithm=");
            c.push_str(algorithm.name());
            if self.userhash {
                c.push_str(", userhash=true");
            }
            if stale {
                c.push_str(", stale=true");
            }
            if let Ok(v) = HeaderValue::try_from(c) {
                headers.push((self.challenge_header(), v));
            }
        }
        let status = if self.proxy { StatusCode::PROXY_AUTHENTICATION_REQUIRED } else { StatusCode::UNAUTHORIZED };
        Verdict::Reject { status, headers }
    }

    fn challenge_header(&self) -> HeaderName {
        if self.proxy { PROXY_AUTHENTICATE } else { WWW_AUTHENTICATE }
    }

    fn credentials_header(&self) -> HeaderName {
        if self.proxy { PROXY_AUTHORIZATION } else { AUTHORIZATION }
    }

    /// The user and password named by the credentials (plain, `username*`, or user hash).
    fn find_user(&self, creds: &challenge::Challenge, algorithm: Algorithm) -> Option<&(String, Secret)> {
        let userhash = creds.param("userhash").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if let Some(name) = creds.param("username") {
            return self.users.iter().find(|(u, _)| {
                if userhash { algorithm.hash(&[u.as_bytes(), self.realm.as_bytes()]) == name } else { u == name }
            });
        }
        let encoded = creds.param("username*")?;
        let (charset, rest) = encoded.split_once('\'')?;
        let (_, value) = rest.split_once('\'')?;
        if !charset.eq_ignore_ascii_case("UTF-8") {
            return None;
        }
        let name = percent_decode_str(value).decode_utf8().ok()?;
        self.users.iter().find(|(u, _)| *u == name)
    }
}

impl fmt::Debug for DigestCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|(u, _)| u.as_str()).collect();
        f.debug_struct("DigestCheck")
            .field("realm", &self.realm)
            .field("users", &users)
            .field("algorithms", &self.algorithms)
            .field("qops", &self.qops)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

fn random_token() -> String {
    let bytes: [u8; 18] = rand::random();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

impl Check for DigestCheck {
    fn check(&self, req: &Parts, body: &Bytes) -> Verdict {
        let Some(value) = req.headers.get(self.credentials_header()) else { return self.challenge(false) };
        let Ok(creds) = challenge::parse_credentials(value.as_bytes()) else { return self.challenge(false) };
        if !creds.is_scheme("Digest") || creds.param("realm") != Some(self.realm.as_str()) {
            return self.challenge(false);
        }
        let algorithm = match creds.param("algorithm") {
            None => Algorithm::Md5,
            Some(a) => match Algorithm::from_param(a) {
                Some(a) if self.algorithms.contains(&a) => a,
                _ => return self.challenge(false),
            },
        };
        let qop = match creds.param("qop") {
            None => Qop::None,
            Some(q) if q.eq_ignore_ascii_case("auth") => Qop::Auth,
            Some(q) if q.eq_ignore_ascii_case("auth-int") => Qop::AuthInt,
            Some(_) => return self.challenge(false),
        };
        if !self.qops.contains(&qop) {
            return self.challenge(false);
        }
        let (Some(nonce), Some(uri), Some(response)) =
            (creds.param("nonce"), creds.param("uri"), creds.param("response"))
        else {
            return self.challenge(false);
        };
        if self.opaque.is_some() && creds.param("opaque") != self.opaque.as_deref() {
            return self.challenge(false);
        }
        // The uri parameter must name the request-target (RFC 7616 §3.4.6).
        // To a proxy the request-target is the absolute URI; accept the path too, as Apache does.
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let absolute = format!("http://{host}{target}");
        if uri != target && req.uri != uri && !(self.proxy && uri == absolute) {
            return self.challenge(false);
        }
        let Some((user, password)) = self.find_user(&creds, algorithm) else { return self.challenge(false) };
        let (nc, cnonce) = if qop == Qop::None {
            (0, "")
        } else {
            let Some(nc) = creds.param("nc").and_then(|n| u32::from_str_radix(n, 16).ok()) else {
                return self.challenge(false);
            };
            (nc, creds.param("cnonce").unwrap_or(""))
        };
        let body_hash = (qop == Qop::AuthInt).then(|| algorithm.hash(&[body]));
        let base = ha1_base(algorithm, user, &self.realm, password.expose());
        let ha1 = session_ha1(algorithm, &base, nonce, cnonce);
        let exchange = Exchange {
            algorithm,
            ha1: &ha1,
            nonce,
            nc,
            cnonce,
            qop,
            method: req.method.as_str(),
            uri,
            body_hash: body_hash.as_deref(),
        };
        if !constant_time_eq(exchange.response().as_bytes(), response.as_bytes()) {
            return self.challenge(false);
        }
        // Known nonce, fresh count, not worn out.
        {
            let mut nonces = self.lock();
            let Some(record) = nonces.get_mut(nonce) else {
                drop(nonces);
                return self.challenge(true); // a nonce we do not know (any more): stale
            };
            if qop != Qop::None && !record.seen.insert(nc) {
                drop(nonces);
                tracing::debug!(nc, "Digest nonce count replayed");
                return self.challenge(false);
            }
            if self.nc_check && qop != Qop::None {
                if nc <= record.last {
                    let last = record.last;
                    drop(nonces);
                    tracing::debug!(nc, last, "Digest nonce count not above the last one");
                    return self.challenge(false);
                }
                record.last = nc;
            }
            record.uses += 1;
            if self.uses_per_nonce.is_some_and(|max| record.uses > max) {
                nonces.remove(nonce);
                drop(nonces);
                return self.challenge(true);
            }
        }
        if self.next_nonce {
            let next = random_token();
            self.lock().insert(next.clone(), NonceRecord::default());
            let mut info = String::from("nextnonce=");
            push_quoted(&mut info, &next);
            if qop == Qop::Auth {
                info.push_str(&format!(", qop=auth, rspauth=\"{}\", cnonce=", exchange.rspauth()));
                push_quoted(&mut info, cnonce);
                info.push_str(&format!(", nc={nc:08x}"));
            }
            let name = if self.proxy { "proxy-authentication-info" } else { "authentication-info" };
            if let Ok(v) = HeaderValue::try_from(info) {
                return Verdict::PassWith { headers: vec![(HeaderName::from_static(name), v)] };
            }
        }
        Verdict::Pass
    }
}

impl RequireLayer<DigestCheck> {
    /// Requires Digest credentials `user:password` in `realm` (MD5, qop `auth`).
    pub fn digest(realm: &str, user: &str, password: &str) -> Self {
        RequireLayer::new(DigestCheck::new(realm).user(user, password))
    }
}
