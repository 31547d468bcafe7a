//! OAuth 1.0a request signing ([RFC 5849](https://www.rfc-editor.org/rfc/rfc5849)), the
//! counterpart of requests-oauthlib's `OAuth1`: every request is signed with the consumer's
//! credentials (and the token's, three-legged), for the APIs that still use it (Twitter/X v1.1,
//! Garmin, Trello, E*TRADE, Jira/Bitbucket Server, Magento, NetSuite, WooCommerce).
//!
//! - Methods: `HMAC-SHA1`, `HMAC-SHA256`, `HMAC-SHA512`, `RSA-SHA1`, `RSA-SHA256`,
//!   `RSA-SHA512` (a PEM RSA private key, PKCS#1 or PKCS#8) and `PLAINTEXT`
//!   ([`SignatureMethod`]).
//! - What is signed (§3.4.1): the method, the base string URI (scheme and host lower-cased,
//!   default port dropped), the query's parameters, an `application/x-www-form-urlencoded`
//!   body's parameters, and the `oauth_*` parameters: a fresh alphanumeric nonce per request
//!   ([`OAuth1Builder::nonce_length`]), the timestamp from a clock you may inject
//!   ([`OAuth1Builder::clock`]), `oauth_callback` and `oauth_verifier` for the token exchange.
//! - `oauth_body_hash` (the body hash extension) for bodies that are not forms
//!   ([`OAuth1Builder::body_hash`]): SHA-1, SHA-256 or SHA-512, as the signature method.
//! - Where the parameters go ([`Placement`]): the `Authorization: OAuth …` header (the default,
//!   with `realm`), the query, or the form body.
//! - The three-legged dance (request token, authorisation, access token): [`OAuth1Session`],
//!   through the user's browser and a loopback listener with the `oauth2-browser` feature.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_auth::AuthLayer;
//! use tower_auth::oauth1::{OAuth1, SignatureMethod};
//! # let client = tower::service_fn(|req: http::Request<tower_auth::ReplayBody<String>>| async move {
//! #     let check = tower_auth::testing::OAuth1Check::new("my-app-key", "my-app-secret")
//! #         .token("user-token", "user-token-secret");
//! #     let (parts, body) = req.into_parts();
//! #     use http_body_util::BodyExt;
//! #     let body = body.collect().await.unwrap().to_bytes();
//! #     check.verify(&parts, &body).unwrap();
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! # });
//!
//! let oauth1 = OAuth1::builder("my-app-key", "my-app-secret")
//!     .token("user-token", "user-token-secret")
//!     .method(SignatureMethod::HmacSha256)
//!     .build()?;
//! let svc = ServiceBuilder::new().layer(AuthLayer::new(oauth1)).service(client);
//! let req = http::Request::post("https://api.example/1.1/statuses/update.json?include_entities=true")
//!     .header("content-type", "application/x-www-form-urlencoded")
//!     .body("status=Hello%20Ladies%20%2b%20Gentlemen".to_string())?;
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), 200);
//! # Ok(()) }
//! ```
//!
//! # Body and mode
//!
//! Form parameters, the body hash and parameters put into the body need the request body:
//! [`OAuth1`] (of [`Replay`] mode) has the engine buffer it, up to the layer's
//! [`body_limit`](crate::AuthLayer::body_limit), and the wrapped service receives a
//! [`ReplayBody`](crate::ReplayBody). OAuth1 never retries. When your requests never need the
//! body (GET, bodies that are not forms, no body hash), [`OAuth1Builder::build_once`] makes an
//! `OAuth1<Once>`, which keeps the caller's body type (a tonic `Channel`…); a request that would
//! need the body then fails with a typed error instead of leaving with a wrong signature.
//!
//! # Errors
//!
//! Signing fails closed: the request is not sent and the caller gets an [`Error`] whose
//! [`source`](std::error::Error::source) is a [`SignError`]: a body larger than the limit
//! ([`Error::is_body`]), parameters for the body on a body that is not a form, a URI that is not
//! absolute.
//!
//! # Security
//!
//! The consumer secret, the token secret and the RSA key are never printed (`Debug` says
//! `[redacted]`), logged or put in an error; the `Authorization` header is marked sensitive. As
//! everywhere in the crate, a request that already carries an `Authorization` header keeps it.
//! `PLAINTEXT` sends the secrets themselves: use it over TLS only (over plain `http://` a
//! warning is logged, once per scheme).
//!
//! # What is hand-written, and why
//!
//! The percent-encoding (§3.6), the parameters' normalisation and the signature base string
//! (§3.4.1) are written here (a few dozen lines, tested against RFC 5849's and Twitter's
//! examples and against `oauthlib`'s server): the Rust crates that do it (`oauth1-request`,
//! `oauth-client`) lack HMAC-SHA256/512, the body hash or RSA, and sign their own request
//! types rather than a request a layer sees. The cryptography comes from `hmac`, `sha1`, `sha2`
//! and `rsa`.

mod session;
pub(crate) mod signature;

#[cfg(feature = "oauth2-browser")]
pub use session::Endpoints;
pub use session::{AccessToken, DanceError, OAuth1Session, RequestToken};
pub use signature::{SignatureMethod, percent_encode};

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Uri};
use rand::Rng as _;

use self::signature::RsaSigner;
use crate::authenticator::{AuthRequest, Authenticator, Authorize, BodyView, NoWait, PlainHttpWarning};
use crate::engine::{BodyMode, Once, Replay};
use crate::error::{ConfigError, Error};
use crate::secret::Secret;

/// The default length of `oauth_nonce`: 32 alphanumeric characters (as Twitter's examples).
pub const DEFAULT_NONCE_LENGTH: usize = 32;

/// Where the `oauth_*` parameters go (RFC 5849 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// The `Authorization: OAuth …` header (§3.5.1), with `realm` if set. The default.
    #[default]
    Header,
    /// The query (§3.5.3).
    Query,
    /// The `application/x-www-form-urlencoded` body (§3.5.2): the body is replaced by itself
    /// plus the parameters, so the scheme must replay ([`OAuth1`], not `OAuth1<Once>`). A
    /// request without a body gets one (and the form `Content-Type`); a body of another type
    /// is an error.
    Body,
}

impl std::str::FromStr for Placement {
    type Err = ConfigError;

    /// `header`, `query` or `body`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "header" => Ok(Placement::Header),
            "query" => Ok(Placement::Query),
            "body" => Ok(Placement::Body),
            _ => Err(ConfigError::new(format!("unknown OAuth1 parameter placement {s:?} (header, query, body)"))),
        }
    }
}

/// Why a request could not be signed; the [`source`](std::error::Error::source) of the
/// [`Error`] the caller gets. It never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignError {
    /// The body had to be signed (form parameters, body hash, parameters into the body) but could
    /// not be read whole: larger than the layer's [`body_limit`](crate::AuthLayer::body_limit),
    /// failing, or (for `OAuth1<Once>`) not buffered at all. Nothing was sent.
    BodyUnavailable {
        /// Whether the scheme is of [`Once`] mode, which never buffers the body.
        once: bool,
    },
    /// [`Placement::Body`] on a request whose body is not `application/x-www-form-urlencoded`.
    NotAForm,
    /// The request URI is not absolute (`http://host/…`): there is no base string URI.
    RelativeUri,
    /// The parameters made a URI or header that is not valid.
    Render,
    /// The RSA signature failed.
    Rsa,
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignError::BodyUnavailable { once: false } => {
                "OAuth1: the request body must be signed but could not be read whole (larger than the layer's body_limit, or it failed); the request was not sent"
            }
            SignError::BodyUnavailable { once: true } => {
                "OAuth1: the request body must be signed (a form, or a body hash) but this OAuth1<Once> scheme does not buffer bodies (use OAuth1, of Replay mode); the request was not sent"
            }
            SignError::NotAForm => {
                "OAuth1: parameters go into the body, but the body is not application/x-www-form-urlencoded"
            }
            SignError::RelativeUri => "OAuth1: the request URI is not absolute (scheme and host are signed)",
            SignError::Render => "OAuth1: the signed parameters do not make a valid URI or header",
            SignError::Rsa => "OAuth1: the RSA signature failed",
        })
    }
}

impl std::error::Error for SignError {}

/// The clock giving `oauth_timestamp`, in seconds since the Unix epoch.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What is signed with, shared by the clones of a scheme.
struct Signer {
    method: SignatureMethod,
    consumer_key: String,
    /// `encode(consumer_secret)&encode(token_secret)` (HMAC and PLAINTEXT).
    key: Secret,
    rsa: Option<RsaSigner>,
    token: Option<String>,
    realm: Option<String>,
    callback: Option<String>,
    verifier: Option<Secret>,
    placement: Placement,
    body_hash: bool,
    nonce_length: usize,
    clock: Clock,
    /// PLAINTEXT over plain `http://` sends the secrets in clear: warned once.
    plain_http: PlainHttpWarning,
}

/// OAuth 1.0a request signing, a scheme for [`AuthLayer`](crate::AuthLayer). Made by
/// [`OAuth1::builder`]; see the [module](self) documentation.
///
/// `M` is the [body mode](crate::engine::BodyMode): [`Replay`] (the default) buffers the body
/// when it must be signed; [`Once`] ([`OAuth1Builder::build_once`]) never does.
pub struct OAuth1<M = Replay> {
    signer: Arc<Signer>,
    mode: PhantomData<fn() -> M>,
}

impl<M> Clone for OAuth1<M> {
    fn clone(&self) -> Self {
        OAuth1 { signer: Arc::clone(&self.signer), mode: PhantomData }
    }
}

impl<M> fmt::Debug for OAuth1<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.signer;
        f.debug_struct("OAuth1")
            .field("method", &s.method)
            .field("consumer_key", &s.consumer_key)
            .field("secrets", &"[redacted]")
            .field("token", &s.token.as_ref().map(|_| "[set]"))
            .field("realm", &s.realm)
            .field("placement", &s.placement)
            .field("body_hash", &s.body_hash)
            .finish()
    }
}

impl OAuth1 {
    /// Starts a scheme for this consumer (client) key and secret. For the RSA methods the
    /// secret is not used (give `""`) and the key comes from [`OAuth1Builder::rsa_key_pem`].
    pub fn builder(consumer_key: impl Into<String>, consumer_secret: impl Into<String>) -> OAuth1Builder {
        OAuth1Builder {
            consumer_key: consumer_key.into(),
            consumer_secret: Secret::new(consumer_secret.into()),
            token: None,
            method: SignatureMethod::HmacSha1,
            rsa_pem: None,
            realm: None,
            callback: None,
            verifier: None,
            placement: Placement::Header,
            body_hash: false,
            nonce_length: DEFAULT_NONCE_LENGTH,
            clock: None,
        }
    }
}

impl<M> OAuth1<M> {
    /// The signature method.
    pub fn method(&self) -> SignatureMethod {
        self.signer.method
    }

    /// Where the parameters go.
    pub fn placement(&self) -> Placement {
        self.signer.placement
    }
}

/// Builds an [`OAuth1`] scheme; made by [`OAuth1::builder`].
#[derive(Clone)]
pub struct OAuth1Builder {
    consumer_key: String,
    consumer_secret: Secret,
    token: Option<(String, Secret)>,
    method: SignatureMethod,
    rsa_pem: Option<Secret>,
    realm: Option<String>,
    callback: Option<String>,
    verifier: Option<Secret>,
    placement: Placement,
    body_hash: bool,
    nonce_length: usize,
    clock: Option<Clock>,
}

impl fmt::Debug for OAuth1Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth1Builder")
            .field("consumer_key", &self.consumer_key)
            .field("method", &self.method)
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}

impl OAuth1Builder {
    /// The token and its secret (three-legged: the access token, or the request token while
    /// exchanging it). Without it, requests are signed by the consumer alone (two-legged).
    pub fn token(mut self, token: impl Into<String>, token_secret: impl Into<String>) -> Self {
        self.token = Some((token.into(), Secret::new(token_secret.into())));
        self
    }

    /// The signature method (default `HMAC-SHA1`).
    pub fn method(mut self, method: SignatureMethod) -> Self {
        self.method = method;
        self
    }

    /// The RSA private key of the RSA methods, PEM: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`), unencrypted. Read by [`build`](OAuth1Builder::build).
    pub fn rsa_key_pem(mut self, pem: impl Into<String>) -> Self {
        self.rsa_pem = Some(Secret::new(pem.into()));
        self
    }

    /// The `realm` of the `Authorization` header (not signed; header placement only).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = Some(realm.into());
        self
    }

    /// `oauth_callback`, for the request-token step (`oob` for out of band).
    pub fn callback(mut self, callback: impl Into<String>) -> Self {
        self.callback = Some(callback.into());
        self
    }

    /// `oauth_verifier`, for the access-token step.
    pub fn verifier(mut self, verifier: impl Into<String>) -> Self {
        self.verifier = Some(Secret::new(verifier.into()));
        self
    }

    /// Where the parameters go (default [`Placement::Header`]).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Adds `oauth_body_hash` to requests whose body is not a form (the body hash extension;
    /// forms are signed through their parameters instead). The hash is SHA-1 for the SHA-1
    /// methods and PLAINTEXT, SHA-256 or SHA-512 for the others. Default off.
    pub fn body_hash(mut self, on: bool) -> Self {
        self.body_hash = on;
        self
    }

    /// The length of `oauth_nonce`, alphanumeric characters (default
    /// [`DEFAULT_NONCE_LENGTH`]; 8 to 128).
    pub fn nonce_length(mut self, length: usize) -> Self {
        self.nonce_length = length;
        self
    }

    /// The clock of `oauth_timestamp`, seconds since the Unix epoch (default: the system
    /// clock). For tests, and for hosts whose clock is off from the server's.
    pub fn clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The scheme, of [`Replay`] mode: it buffers the body when the body must be signed.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an empty consumer key, an RSA method without a valid PEM RSA
    /// private key, a realm or callback with a control character or `"`, a nonce length out of
    /// 8..=128. The message never quotes a secret.
    pub fn build(self) -> Result<OAuth1, ConfigError> {
        self.build_mode()
    }

    /// The scheme, of [`Once`] mode: the caller's body type is kept and never buffered; a
    /// request whose body would have to be signed fails with [`SignError::BodyUnavailable`].
    ///
    /// # Errors
    ///
    /// As [`build`](OAuth1Builder::build), and [`Placement::Body`] (which replaces the body).
    pub fn build_once(self) -> Result<OAuth1<Once>, ConfigError> {
        if self.placement == Placement::Body {
            return Err(ConfigError::new(
                "OAuth1 parameters in the body need a scheme that replaces the body: use build(), not build_once()",
            ));
        }
        self.build_mode()
    }

    fn build_mode<M>(self) -> Result<OAuth1<M>, ConfigError> {
        if self.consumer_key.is_empty() {
            return Err(ConfigError::empty("OAuth1 consumer key"));
        }
        if !(8..=128).contains(&self.nonce_length) {
            return Err(ConfigError::new("invalid OAuth1 nonce length: it must be 8 to 128"));
        }
        for (what, value) in [("OAuth1 realm", &self.realm), ("OAuth1 callback", &self.callback)] {
            if let Some(pos) = value.as_deref().and_then(|v| v.bytes().position(|b| b < 0x20 || b == 0x7f || b == b'"'))
            {
                return Err(ConfigError::new(format!(
                    "invalid {what}: it contains a control character or '\"' at byte {pos}"
                )));
            }
        }
        let rsa = match (self.method.is_rsa(), &self.rsa_pem) {
            (true, Some(pem)) => Some(RsaSigner::from_pem(pem.expose(), self.method)?),
            (true, None) => {
                return Err(ConfigError::new(format!("OAuth1 {} needs an RSA private key (rsa_key_pem)", self.method)));
            }
            (false, _) => None,
        };
        let (token, token_secret) = match self.token {
            Some((token, secret)) => (Some(token), secret),
            None => (None, Secret::new("")),
        };
        let key = Secret::new(signature::signing_key(self.consumer_secret.expose(), token_secret.expose()));
        let clock = self
            .clock
            .unwrap_or_else(|| Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())));
        let signer = Signer {
            method: self.method,
            consumer_key: self.consumer_key,
            key,
            rsa,
            token,
            realm: self.realm,
            callback: self.callback,
            verifier: self.verifier,
            placement: self.placement,
            body_hash: self.body_hash,
            nonce_length: self.nonce_length,
            clock,
            plain_http: PlainHttpWarning::default(),
        };
        Ok(OAuth1 { signer: Arc::new(signer), mode: PhantomData })
    }
}

/// Whether a `Content-Type` is `application/x-www-form-urlencoded` (parameters ignored).
fn is_form(value: Option<&HeaderValue>) -> bool {
    value.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    })
}

/// The whole body, in one piece (no copy for a single chunk).
fn joined(chunks: &[Bytes]) -> Bytes {
    match chunks {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => Bytes::from(many.concat()),
    }
}

/// A fresh alphanumeric nonce.
fn nonce(length: usize) -> String {
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(length).map(char::from).collect()
}

impl Signer {
    /// Signs the request in place. `body` is the whole body if the engine has it.
    fn sign(&self, req: &mut AuthRequest<'_>, body: Option<Bytes>, once: bool) -> Result<(), Error> {
        let form = is_form(req.headers().get(CONTENT_TYPE));
        let has_body = !matches!(req.body(), BodyView::Empty);
        let needs_body = (has_body && (form || self.body_hash)) || self.placement == Placement::Body;
        let body = match body {
            Some(body) => body,
            None if !needs_body => Bytes::new(),
            None => return Err(Error::body(SignError::BodyUnavailable { once })),
        };
        if self.placement == Placement::Body && !form {
            if !body.is_empty() || req.headers().contains_key(CONTENT_TYPE) {
                return Err(Error::scheme(SignError::NotAForm));
            }
            req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        }
        let form = form || self.placement == Placement::Body;
        if self.method == SignatureMethod::Plaintext {
            self.plain_http.check(req.uri(), "OAuth1 PLAINTEXT signatures (the consumer and token secrets themselves)");
        }

        // The protocol parameters (§3.4.1.3.1), oauth_signature excepted.
        let mut oauth: Vec<(&'static str, String)> = Vec::with_capacity(9);
        oauth.push(("oauth_consumer_key", self.consumer_key.clone()));
        oauth.push(("oauth_nonce", nonce(self.nonce_length)));
        oauth.push(("oauth_signature_method", self.method.name().to_owned()));
        oauth.push(("oauth_timestamp", (self.clock)().to_string()));
        oauth.push(("oauth_version", "1.0".to_owned()));
        if let Some(token) = &self.token {
            oauth.push(("oauth_token", token.clone()));
        }
        if let Some(callback) = &self.callback {
            oauth.push(("oauth_callback", callback.clone()));
        }
        if let Some(verifier) = &self.verifier {
            oauth.push(("oauth_verifier", verifier.expose().to_owned()));
        }
        if self.body_hash && !form {
            oauth.push(("oauth_body_hash", self.method.body_hash(std::slice::from_ref(&body))));
        }

        let base_uri = signature::base_uri(req.uri()).ok_or_else(|| Error::scheme(SignError::RelativeUri))?;
        let mut params = req.uri().query().map(|q| signature::form_decode(q.as_bytes())).unwrap_or_default();
        if form {
            params.extend(signature::form_decode(&body));
        }
        let normalized = signature::normalize(
            params
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .chain(oauth.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))),
        );
        let base = signature::base_string(req.method().as_str(), &base_uri, &normalized);
        let sig = signature::sign(self.method, self.key.expose(), self.rsa.as_ref(), &base)
            .map_err(|_| Error::scheme(SignError::Rsa))?;
        oauth.push(("oauth_signature", sig));
        tracing::trace!(method = %self.method, placement = ?self.placement, "OAuth1: request signed");

        match self.placement {
            Placement::Header => {
                let mut value = String::from("OAuth ");
                if let Some(realm) = &self.realm {
                    value.push_str("realm=\"");
                    value.push_str(realm);
                    value.push_str("\", ");
                }
                render(&oauth, ", ", true, &mut value);
                let value = HeaderValue::try_from(value).map_err(|_| Error::scheme(SignError::Render))?;
                req.set_credential(&AUTHORIZATION, &value);
            }
            Placement::Query => {
                let uri = req.uri();
                let mut pq = uri.path().to_owned();
                match uri.query() {
                    Some(q) if !q.is_empty() => {
                        pq.push('?');
                        pq.push_str(q);
                        pq.push('&');
                    }
                    _ => pq.push('?'),
                }
                pq.push_str(&encoded_pairs(&oauth));
                let mut parts = uri.clone().into_parts();
                parts.path_and_query = Some(pq.try_into().map_err(|_| Error::scheme(SignError::Render))?);
                *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Error::scheme(SignError::Render))?;
            }
            Placement::Body => {
                let mut new = Vec::with_capacity(body.len() + 512);
                new.extend_from_slice(&body);
                if !body.is_empty() {
                    new.push(b'&');
                }
                new.extend_from_slice(encoded_pairs(&oauth).as_bytes());
                if !req.replace_body(Bytes::from(new)) {
                    return Err(Error::body(SignError::BodyUnavailable { once: true }));
                }
            }
        }
        Ok(())
    }
}

/// `name=value&…`, percent-encoded (§3.5.2, §3.5.3).
fn encoded_pairs(pairs: &[(&'static str, String)]) -> String {
    let mut out = String::new();
    render(pairs, "&", false, &mut out);
    out
}

/// Appends the pairs, values percent-encoded (and quoted for the header, §3.5.1), separated by
/// `sep`.
fn render(pairs: &[(&'static str, String)], sep: &str, quoted: bool, out: &mut String) {
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(name);
        out.push_str(if quoted { "=\"" } else { "=" });
        signature::encode_into(value.as_bytes(), out);
        if quoted {
            out.push('"');
        }
    }
}

impl<M: BodyMode> Authenticator for OAuth1<M> {
    type Mode = M;
    type Error = Error;
    /// Whether the body was asked for already.
    type State = bool;
    type Wait = NoWait<Error>;

    fn authorize(&self, req: &mut AuthRequest<'_>, asked: &mut bool) -> Result<Authorize<Self::Wait>, Error> {
        let body = match req.body() {
            BodyView::Empty => Some(Bytes::new()),
            BodyView::Buffered(chunks) => Some(joined(chunks)),
            BodyView::Unavailable => None,
        };
        let s = &*self.signer;
        let needs = body.is_none()
            && (s.placement == Placement::Body || s.body_hash || is_form(req.headers().get(CONTENT_TYPE)));
        if needs && M::REPLAY && !*asked {
            *asked = true;
            return Ok(Authorize::NeedBody);
        }
        s.sign(req, body, !M::REPLAY)?;
        Ok(Authorize::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, content_type: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            b = b.header(CONTENT_TYPE, ct);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn scheme() -> OAuth1Builder {
        OAuth1::builder("key", "secret").clock(|| 1_318_622_958)
    }

    #[test]
    fn header_carries_every_parameter_and_is_sensitive() {
        let oauth = scheme().token("tok", "ts").realm("Photos").build().unwrap();
        let mut p = parts("GET", "https://api.example/x?a=1", None);
        let done = oauth.authorize(&mut AuthRequest::new(&mut p, BodyView::Empty, 0), &mut false).unwrap();
        assert!(matches!(done, Authorize::Done));
        let h = p.headers[AUTHORIZATION].to_str().unwrap();
        assert!(h.starts_with("OAuth realm=\"Photos\", oauth_consumer_key=\"key\", oauth_nonce=\""), "{h}");
        for needle in [
            "oauth_timestamp=\"1318622958\"",
            "oauth_token=\"tok\"",
            "oauth_signature_method=\"HMAC-SHA1\"",
            "oauth_version=\"1.0\"",
            "oauth_signature=\"",
        ] {
            assert!(h.contains(needle), "{needle} in {h}");
        }
        assert!(!h.contains("secret") && !h.contains("ts&"), "{h}");
        assert!(p.headers[AUTHORIZATION].is_sensitive());
    }

    #[test]
    fn nonces_are_fresh_and_of_the_configured_length() {
        let oauth = scheme().nonce_length(12).build().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut p = parts("GET", "https://api.example/", None);
            oauth.authorize(&mut AuthRequest::new(&mut p, BodyView::Empty, 0), &mut false).unwrap();
            let h = p.headers[AUTHORIZATION].to_str().unwrap().to_owned();
            let n = h.split("oauth_nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
            assert_eq!(n.len(), 12);
            assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert!(seen.insert(n));
        }
        assert!(scheme().nonce_length(4).build().is_err());
    }

    #[test]
    fn form_bodies_and_body_hash_ask_for_the_body_then_fail_closed() {
        let oauth = scheme().build().unwrap();
        let mut p = parts("POST", "https://api.example/", Some("application/x-www-form-urlencoded"));
        let mut asked = false;
        let first = oauth.authorize(&mut AuthRequest::new(&mut p, BodyView::Unavailable, 0), &mut asked).unwrap();
        assert!(matches!(first, Authorize::NeedBody));
        // Still unavailable after buffering: over the limit. No signature over nothing.
        let err = oauth.authorize(&mut AuthRequest::new(&mut p, BodyView::Unavailable, 0), &mut asked).unwrap_err();
        assert!(err.is_body(), "{err:?}");
        assert!(!p.headers.contains_key(AUTHORIZATION));
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("body_limit"), "{source}");

        // A JSON body without body hash does not need the body.
        let mut p = parts("PUT", "https://api.example/", Some("application/json"));
        let done = oauth.authorize(&mut AuthRequest::new(&mut p, BodyView::Unavailable, 0), &mut false).unwrap();
        assert!(matches!(done, Authorize::Done));

        // Once mode: a typed error at once, never NeedBody (the fast path would send unsigned).
        let once = scheme().body_hash(true).build_once().unwrap();
        let mut p = parts("PUT", "https://api.example/", Some("application/json"));
        let err = once.authorize(&mut AuthRequest::new(&mut p, BodyView::Unavailable, 0), &mut false).unwrap_err();
        assert!(err.is_body());
        assert!(std::error::Error::source(&err).unwrap().to_string().contains("OAuth1<Once>"));
        assert!(scheme().placement(Placement::Body).build_once().is_err());
    }

    #[test]
    fn body_hash_matches_the_method() {
        let body = [Bytes::from_static(b"{\"a\":1}")];
        for (method, expect_len) in
            [(SignatureMethod::HmacSha1, 28), (SignatureMethod::HmacSha256, 44), (SignatureMethod::HmacSha512, 88)]
        {
            let oauth = scheme().method(method).body_hash(true).build().unwrap();
            let mut p = parts("PUT", "https://api.example/", Some("application/json"));
            oauth.authorize(&mut AuthRequest::new(&mut p, BodyView::Buffered(&body), 0), &mut true).unwrap();
            let h = p.headers[AUTHORIZATION].to_str().unwrap();
            let hash = h.split("oauth_body_hash=\"").nth(1).unwrap().split('"').next().unwrap();
            let hash = percent_encoding::percent_decode_str(hash).decode_utf8().unwrap();
            assert_eq!(hash, method.body_hash(&body));
            assert_eq!(hash.len(), expect_len);
        }
    }

    #[test]
    fn query_and_body_placement() {
        let oauth = scheme().placement(Placement::Query).build().unwrap();
        let mut p = parts("GET", "https://api.example/x?q=a+b", None);
        oauth.authorize(&mut AuthRequest::new(&mut p, BodyView::Empty, 0), &mut false).unwrap();
        let q = p.uri.query().unwrap();
        assert!(q.starts_with("q=a+b&oauth_consumer_key=key&"), "{q}");
        assert!(q.contains("&oauth_signature="));
        assert!(!p.headers.contains_key(AUTHORIZATION));

        let oauth = scheme().placement(Placement::Body).build().unwrap();
        let mut p = parts("POST", "https://api.example/x", Some("application/x-www-form-urlencoded"));
        let body = [Bytes::from_static(b"a=1")];
        let mut req = AuthRequest::new(&mut p, BodyView::Buffered(&body), 0);
        oauth.authorize(&mut req, &mut true).unwrap();
        let new = req.replaced_body().unwrap().clone();
        assert!(new.starts_with(b"a=1&oauth_consumer_key=key&"), "{new:?}");
        assert_eq!(p.headers["content-length"], new.len().to_string().as_str());

        // Body placement on a JSON body: a typed error.
        let mut p = parts("POST", "https://api.example/x", Some("application/json"));
        let body = [Bytes::from_static(b"{}")];
        let err = oauth.authorize(&mut AuthRequest::new(&mut p, BodyView::Buffered(&body), 0), &mut true).unwrap_err();
        assert!(err.is_scheme());
    }

    #[test]
    fn relative_uri_is_a_typed_error_and_callers_header_wins() {
        let oauth = scheme().build().unwrap();
        let mut p = parts("GET", "/relative", None);
        let err = oauth.authorize(&mut AuthRequest::new(&mut p, BodyView::Empty, 0), &mut false).unwrap_err();
        assert_eq!(std::error::Error::source(&err).unwrap().downcast_ref::<SignError>(), Some(&SignError::RelativeUri));

        let mut p = parts("GET", "https://api.example/", None);
        p.headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer mine"));
        oauth.authorize(&mut AuthRequest::new(&mut p, BodyView::Empty, 0), &mut false).unwrap();
        assert_eq!(p.headers[AUTHORIZATION], "Bearer mine");
    }

    #[test]
    fn no_secret_in_debug_or_config_errors() {
        let oauth = OAuth1::builder("key", "consumer-s3cret").token("tok", "token-s3cret").build().unwrap();
        let debug = format!("{oauth:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        let builder =
            OAuth1::builder("key", "consumer-s3cret").rsa_key_pem("-----BEGIN PRIVATE KEY-----\nbad-s3cret\n");
        assert!(!format!("{builder:?}").contains("s3cret"));
        let err = builder.method(SignatureMethod::RsaSha1).build().unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(OAuth1::builder("key", "s").method(SignatureMethod::RsaSha256).build().is_err());
        assert!(OAuth1::builder("", "s").build().is_err());
        assert!(OAuth1::builder("k", "s").realm("a\"b").build().is_err());
    }
}
