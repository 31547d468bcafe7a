//! A fake OAuth2 identity provider: a token endpoint, its metadata and a protected resource,
//! programmable from the test that runs it.
//!
//! [`FakeIdp`] covers what a real authorization server cannot do on demand: very short token
//! lifetimes, `expires_in` in odd shapes, `500`s, `429`s with `Retry-After`, requests that hang,
//! bodies that are not JSON, RFC 6749 §5.2 errors, refresh token rotation and reuse, revoked
//! tokens, and exact counts of token requests (with a way to wait for the N-th one without
//! sleeping). It serves, on `127.0.0.1` on a free port:
//!
//! | path | what |
//! |---|---|
//! | `POST /token` | the token endpoint (RFC 6749): grants `client_credentials`, `password`, `refresh_token`; client authentication `client_secret_basic`, `client_secret_post`, `private_key_jwt` (the assertion is recorded, its signature is not checked) |
//! | `GET /.well-known/oauth-authorization-server` | RFC 8414 metadata |
//! | `GET /.well-known/openid-configuration` | OpenID Connect discovery (the same document) |
//! | `GET /jwks` | an empty key set (the discovery document points to it) |
//! | `GET`, `POST /resource` | a protected resource: `200` with the access token as its body when `Authorization: Bearer <token>` names an issued, unexpired, unrevoked token; else `401` with `WWW-Authenticate: Bearer …, error="invalid_token"`; `403` `insufficient_scope` when [`IdpHandle::set_required_scope`] asks for a scope the token lacks |
//!
//! Access tokens are `at-1`, `at-2`, …, refresh tokens `rt-1`, `rt-2`, … (unique per
//! provider). Expiry is judged with tokio's clock ([`tokio::time::Instant`]) and delays use
//! [`tokio::time::sleep`], so tests with a paused clock (`#[tokio::test(start_paused = true)]`,
//! `tokio::time::advance`) run without waiting.
//!
//! With no client registered ([`IdpHandle::add_client`], [`IdpHandle::add_jwt_client`]) any
//! client is accepted, authenticated or not; with no user registered ([`IdpHandle::add_user`])
//! any user name and password are. Register some to have them checked.
//!
//! Secrets (client secrets, passwords, assertions, tokens in the records) are held as
//! [`Secret`]s: nothing here prints or logs them, and `Debug` shows client ids and user names
//! only.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower_auth::testing::idp::{FakeIdp, Fault, Grant};
//!
//! let idp = FakeIdp::start().await?;
//! idp.add_client("my client", "s3cret");
//! idp.fail_next(1, Fault::ServerError);
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let token_request = || {
//!     http::Request::post(idp.token_url())
//!         .header("content-type", "application/x-www-form-urlencoded")
//!         .body(Full::from("grant_type=client_credentials&client_id=my+client&client_secret=s3cret"))
//! };
//! assert_eq!(client.request(token_request()?).await?.status(), 500);
//! let res = client.request(token_request()?).await?;
//! assert_eq!(res.status(), 200);
//! let body: serde_json::Value = serde_json::from_slice(&res.into_body().collect().await?.to_bytes())?;
//! assert_eq!(body["access_token"], "at-1");
//! assert_eq!(body["expires_in"], 3600);
//!
//! idp.wait_for_token_requests(2).await; // returns at once: both were seen
//! assert_eq!(idp.token_requests_for(&Grant::ClientCredentials), 2);
//! assert_eq!(idp.requests()[1].client_auth.method(), "client_secret_post");
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use base64::Engine as _;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Stats, TestServer, constant_time_eq};
use crate::secret::Secret;

/// The realm of the challenges the fake sends.
const REALM: &str = "fake-idp";
/// `client_assertion_type` of RFC 7523 §2.2.
pub const JWT_BEARER_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Bodies of token requests larger than this are refused.
const BODY_LIMIT: usize = 64 * 1024;

/// A grant type, as sent in `grant_type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// `client_credentials` (RFC 6749 §4.4).
    ClientCredentials,
    /// `password` (RFC 6749 §4.3).
    Password,
    /// `refresh_token` (RFC 6749 §6).
    RefreshToken,
    /// Anything else (answered `unsupported_grant_type`); empty when `grant_type` was missing
    /// (answered `invalid_request`).
    Other(String),
}

impl Grant {
    /// The `grant_type` value.
    pub fn as_str(&self) -> &str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::Password => "password",
            Grant::RefreshToken => "refresh_token",
            Grant::Other(other) => other,
        }
    }

    fn parse(value: &str) -> Self {
        match value {
            "client_credentials" => Grant::ClientCredentials,
            "password" => Grant::Password,
            "refresh_token" => Grant::RefreshToken,
            other => Grant::Other(other.to_owned()),
        }
    }
}

/// How a token request authenticated its client, as received (before any check).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientAuth {
    /// No client authentication; `client_id` in the body, if any (a public client).
    None {
        /// The `client_id` parameter.
        client_id: Option<String>,
    },
    /// `client_secret_basic`: `Authorization: Basic`, id and secret form-urlencoded before the
    /// Basic encoding (RFC 6749 §2.3.1). The id here is decoded.
    Basic {
        /// The client id, decoded.
        client_id: String,
    },
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    Post {
        /// The `client_id` parameter.
        client_id: String,
    },
    /// `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and a
    /// `client_assertion` (RFC 7523 §2.2; `private_key_jwt` or `client_secret_jwt`). The
    /// signature is not checked.
    JwtBearer {
        /// The `client_id` parameter, else the assertion's `sub` claim.
        client_id: Option<String>,
        /// The assertion as received.
        assertion: Secret,
        /// The assertion's JOSE header, when it decodes as JSON.
        header: Option<Value>,
        /// The assertion's claims, when they decode as JSON.
        claims: Option<Value>,
    },
    /// Client authentication that could not be read: a `Basic` header that does not decode,
    /// more than one method at once, an unknown assertion type, a secret without an id.
    Malformed {
        /// What was wrong (never the secret).
        reason: String,
    },
}

impl ClientAuth {
    /// The method's name as in `token_endpoint_auth_methods_supported` (`none`,
    /// `client_secret_basic`, `client_secret_post`, `private_key_jwt`), or `malformed`.
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::None { .. } => "none",
            ClientAuth::Basic { .. } => "client_secret_basic",
            ClientAuth::Post { .. } => "client_secret_post",
            ClientAuth::JwtBearer { .. } => "private_key_jwt",
            ClientAuth::Malformed { .. } => "malformed",
        }
    }

    /// The client id, when the request named one.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            ClientAuth::None { client_id } | ClientAuth::JwtBearer { client_id, .. } => client_id.as_deref(),
            ClientAuth::Basic { client_id } | ClientAuth::Post { client_id } => Some(client_id),
            ClientAuth::Malformed { .. } => None,
        }
    }
}

/// One token request as the fake received it (recorded before any fault or check).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TokenRequest {
    /// `grant_type`.
    pub grant: Grant,
    /// How the client authenticated.
    pub client_auth: ClientAuth,
    /// `scope`, as sent.
    pub scope: Option<String>,
    /// `audience` parameters, in order.
    pub audience: Vec<String>,
    /// `resource` parameters (RFC 8707, repeatable), in order.
    pub resources: Vec<String>,
    /// `username` (password grant).
    pub username: Option<String>,
    /// `refresh_token` (refresh grant).
    pub refresh_token: Option<Secret>,
    /// Every other body parameter, in order.
    pub extra: Vec<(String, String)>,
    /// The request's `Content-Type`.
    pub content_type: Option<String>,
    /// When the request was received, on tokio's clock.
    pub received_at: Instant,
}

impl TokenRequest {
    /// The requested scopes, split on spaces.
    pub fn scopes(&self) -> Vec<&str> {
        self.scope.as_deref().map(|s| s.split_whitespace().collect()).unwrap_or_default()
    }

    /// The value of an extra parameter.
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extra.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An RFC 6749 §5.2 error answer: `{"error": …, "error_description": …, "error_uri": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    status: StatusCode,
    error: String,
    description: Option<String>,
    uri: Option<String>,
}

impl OAuthError {
    /// An error with this code; status `401` for `invalid_client` (with `WWW-Authenticate:
    /// Basic`), `400` for the others.
    pub fn new(error: &str) -> Self {
        let status = if error == "invalid_client" { StatusCode::UNAUTHORIZED } else { StatusCode::BAD_REQUEST };
        OAuthError { status, error: error.to_owned(), description: None, uri: None }
    }
    /// `invalid_client` (`401`).
    pub fn invalid_client() -> Self {
        OAuthError::new("invalid_client")
    }
    /// `invalid_grant` (`400`).
    pub fn invalid_grant() -> Self {
        OAuthError::new("invalid_grant")
    }
    /// `unauthorized_client` (`400`).
    pub fn unauthorized_client() -> Self {
        OAuthError::new("unauthorized_client")
    }
    /// `invalid_scope` (`400`).
    pub fn invalid_scope() -> Self {
        OAuthError::new("invalid_scope")
    }
    /// `invalid_request` (`400`).
    pub fn invalid_request() -> Self {
        OAuthError::new("invalid_request")
    }
    /// `unsupported_grant_type` (`400`).
    pub fn unsupported_grant_type() -> Self {
        OAuthError::new("unsupported_grant_type")
    }
    /// Adds `error_description`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
    /// Adds `error_uri`.
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = Some(uri.into());
        self
    }
    /// Answers with this status instead.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
    /// The error code.
    pub fn error(&self) -> &str {
        &self.error
    }

    fn into_response(self) -> Response<Body> {
        let mut body = Map::new();
        body.insert("error".into(), Value::from(self.error));
        if let Some(description) = self.description {
            body.insert("error_description".into(), Value::from(description));
        }
        if let Some(uri) = self.uri {
            body.insert("error_uri".into(), Value::from(uri));
        }
        let mut res = json_response(self.status, &Value::Object(body));
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(WWW_AUTHENTICATE, basic_challenge());
        }
        res
    }
}

/// A failure the token endpoint answers with instead of its normal answer (see
/// [`IdpHandle::fail_next`]). The request is still counted and recorded.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Fault {
    /// `500 Internal Server Error`, a plain-text body.
    ServerError,
    /// `429 Too Many Requests` with `Retry-After: <seconds>`.
    TooManyRequests {
        /// The `Retry-After` value, in seconds.
        retry_after: u64,
    },
    /// Never answers (until [`IdpHandle::release_hung`] or the provider is dropped; then `503`).
    Hang,
    /// Answers normally after this delay ([`tokio::time::sleep`]).
    Delay(Duration),
    /// `200` with `Content-Type: application/json` and a body that is not JSON.
    Garbage,
    /// `200` with an HTML page (a captive portal, a proxy's login page).
    Html,
    /// `200` with JSON that has no `access_token`.
    MissingAccessToken,
    /// An RFC 6749 §5.2 error.
    Error(OAuthError),
    /// Any status, content type and body.
    Raw {
        /// The status.
        status: StatusCode,
        /// The `Content-Type`.
        content_type: String,
        /// The body.
        body: String,
    },
}

/// How `expires_in` is sent in token responses. The token's real lifetime (what
/// `/resource` judges) is always the one set by [`IdpHandle::set_lifetime`].
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum ExpiresIn {
    /// A JSON number of seconds (the default).
    #[default]
    Number,
    /// A JSON string of the number of seconds (`"3600"`), as some servers send.
    String,
    /// No `expires_in`.
    Omit,
    /// This value as is: a negative number, an absurd one, `null`, a word.
    Value(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Access,
    Refresh,
}

#[derive(Debug)]
struct Issued {
    kind: Kind,
    client_id: Option<String>,
    scopes: Vec<String>,
    expires_at: Option<Instant>,
    revoked: bool,
    /// A rotated refresh token, already exchanged.
    used: bool,
}

struct Config {
    clients: Vec<(String, Secret)>,
    jwt_clients: Vec<String>,
    users: Vec<(String, Secret)>,
    lifetime: Duration,
    expires_in: ExpiresIn,
    refresh_in: Option<u64>,
    token_type: String,
    response_fields: Map<String, Value>,
    refresh_tokens: bool,
    refresh_on_client_credentials: bool,
    rotation: bool,
    delay: Duration,
    allowed_scopes: Option<Vec<String>>,
    required_scope: Option<String>,
    auth_methods: Vec<String>,
    metadata_fields: Map<String, Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            clients: Vec::new(),
            jwt_clients: Vec::new(),
            users: Vec::new(),
            lifetime: Duration::from_secs(3600),
            expires_in: ExpiresIn::Number,
            refresh_in: None,
            token_type: "Bearer".to_owned(),
            response_fields: Map::new(),
            refresh_tokens: true,
            refresh_on_client_credentials: false,
            rotation: false,
            delay: Duration::ZERO,
            allowed_scopes: None,
            required_scope: None,
            auth_methods: ["client_secret_basic", "client_secret_post", "private_key_jwt"].map(String::from).to_vec(),
            metadata_fields: Map::new(),
        }
    }
}

#[derive(Default)]
struct IdpState {
    config: Config,
    faults: VecDeque<Fault>,
    sticky: Option<Fault>,
    tokens: HashMap<String, Issued>,
    next_access: u64,
    next_refresh: u64,
    records: Vec<TokenRequest>,
    per_grant: HashMap<Grant, u64>,
    presented: Vec<Secret>,
}

struct Shared {
    base: String,
    state: Mutex<IdpState>,
    /// Token requests seen.
    seen: watch::Sender<u64>,
    /// Bumped to release hung requests.
    release: watch::Sender<u64>,
    resource: Stats,
    metadata: AtomicU64,
}

/// The fake identity provider: serves until dropped. Dereferences to its [`IdpHandle`], which
/// programs it and reads what it saw.
pub struct FakeIdp {
    server: TestServer,
    handle: IdpHandle,
}

impl FakeIdp {
    /// Starts a provider on `127.0.0.1:0`: tokens live an hour, `expires_in` is a number,
    /// password grants get a refresh token (not rotated), any client and user are accepted.
    ///
    /// # Errors
    ///
    /// If no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            base: format!("http://{addr}"),
            state: Mutex::new(IdpState { next_access: 1, next_refresh: 1, ..IdpState::default() }),
            seen: watch::Sender::new(0),
            release: watch::Sender::new(0),
            resource: Stats::default(),
            metadata: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/token", post(token))
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/.well-known/openid-configuration", get(metadata))
            .route("/jwks", get(jwks))
            .route("/resource", get(resource).post(resource))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::error!(%err, "fake identity provider stopped");
            }
        });
        Ok(FakeIdp { server: TestServer { addr, task }, handle: IdpHandle { shared } })
    }

    /// A handle to program the provider and read what it saw, for other tasks (cloning shares).
    pub fn handle(&self) -> IdpHandle {
        self.handle.clone()
    }

    /// The address served.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }
}

impl Deref for FakeIdp {
    type Target = IdpHandle;
    fn deref(&self) -> &IdpHandle {
        &self.handle
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.handle.release_hung();
    }
}

impl fmt::Debug for FakeIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeIdp").field("addr", &self.server.addr()).field("handle", &self.handle).finish()
    }
}

/// Programs a [`FakeIdp`] and reads what it saw. Cloning shares the provider.
#[derive(Clone)]
pub struct IdpHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for IdpHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        let clients: Vec<&str> = state.config.clients.iter().map(|(id, _)| id.as_str()).collect();
        let users: Vec<&str> = state.config.users.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("IdpHandle")
            .field("issuer", &self.shared.base)
            .field("clients", &clients)
            .field("jwt_clients", &state.config.jwt_clients)
            .field("users", &users)
            .field("token_requests", &*self.shared.seen.borrow())
            .field("pending_faults", &state.faults.len())
            .finish_non_exhaustive()
    }
}

impl IdpHandle {
    fn state(&self) -> MutexGuard<'_, IdpState> {
        lock(&self.shared)
    }

    fn configure(&self, f: impl FnOnce(&mut Config)) {
        f(&mut self.state().config);
    }

    // ---- addresses ----

    /// The issuer identifier: `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> &str {
        &self.shared.base
    }

    /// The token endpoint: `http://127.0.0.1:PORT/token`.
    pub fn token_url(&self) -> String {
        self.url("/token")
    }

    /// The protected resource: `http://127.0.0.1:PORT/resource`.
    pub fn resource_url(&self) -> String {
        self.url("/resource")
    }

    /// The RFC 8414 metadata: `…/.well-known/oauth-authorization-server`.
    pub fn metadata_url(&self) -> String {
        self.url("/.well-known/oauth-authorization-server")
    }

    /// The OpenID Connect discovery document: `…/.well-known/openid-configuration`.
    pub fn openid_configuration_url(&self) -> String {
        self.url("/.well-known/openid-configuration")
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.shared.base, path)
    }

    // ---- clients, users, tokens ----

    /// Registers a confidential client (`client_secret_basic` or `client_secret_post`). Once a
    /// client is registered, unknown clients and wrong secrets get `401 invalid_client`.
    pub fn add_client(&self, client_id: &str, secret: &str) {
        self.configure(|c| c.clients.push((client_id.to_owned(), Secret::new(secret))));
    }

    /// Registers a client that authenticates with a JWT assertion (`private_key_jwt`); any
    /// assertion naming it (`client_id`, else the `sub` claim) is accepted: the signature is not
    /// checked, the assertion is recorded in [`TokenRequest::client_auth`].
    pub fn add_jwt_client(&self, client_id: &str) {
        self.configure(|c| c.jwt_clients.push(client_id.to_owned()));
    }

    /// Registers a resource owner for the password grant. Once a user is registered, unknown
    /// users and wrong passwords get `400 invalid_grant`.
    pub fn add_user(&self, username: &str, password: &str) {
        self.configure(|c| c.users.push((username.to_owned(), Secret::new(password))));
    }

    /// The lifetime of access tokens issued from now on (default an hour): what `/resource`
    /// judges, and the `expires_in` sent (see [`set_expires_in`](Self::set_expires_in)).
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.configure(|c| c.lifetime = lifetime);
    }

    /// How `expires_in` is sent (default a number).
    pub fn set_expires_in(&self, expires_in: ExpiresIn) {
        self.configure(|c| c.expires_in = expires_in);
    }

    /// Adds `refresh_in: <seconds>` to token responses (a hint some servers send), or stops.
    pub fn set_refresh_in(&self, seconds: Option<u64>) {
        self.configure(|c| c.refresh_in = seconds);
    }

    /// The `token_type` sent (default `Bearer`).
    pub fn set_token_type(&self, token_type: &str) {
        self.configure(|c| c.token_type = token_type.to_owned());
    }

    /// Adds a field to every successful token response (e.g. `id_token`), or replaces one the
    /// fake sends (`access_token`, `expires_in`, …); `Value::Null` removes it.
    pub fn set_response_field(&self, name: &str, value: Value) {
        self.configure(|c| {
            c.response_fields.insert(name.to_owned(), value);
        });
    }

    /// Whether password grants get a refresh token (default yes).
    pub fn set_refresh_tokens(&self, issue: bool) {
        self.configure(|c| c.refresh_tokens = issue);
    }

    /// Whether client credentials grants get a refresh token too (default no, as RFC 6749 §4.4.3
    /// recommends).
    pub fn set_refresh_on_client_credentials(&self, issue: bool) {
        self.configure(|c| c.refresh_on_client_credentials = issue);
    }

    /// Refresh token rotation (default off): each refresh answers a new refresh token and
    /// invalidates the one used, whose reuse then gets `invalid_grant`. Without rotation the
    /// response to a refresh has no `refresh_token` and the old one stays good.
    pub fn set_rotation(&self, rotate: bool) {
        self.configure(|c| c.rotation = rotate);
    }

    /// Delays every token response by this much ([`tokio::time::sleep`]; default none).
    pub fn set_delay(&self, delay: Duration) {
        self.configure(|c| c.delay = delay);
    }

    /// Scopes that may be requested (others get `invalid_scope`), or any (`None`, the default).
    pub fn set_allowed_scopes(&self, scopes: Option<&[&str]>) {
        self.configure(|c| c.allowed_scopes = scopes.map(|s| s.iter().map(|s| (*s).to_owned()).collect()));
    }

    /// A scope `/resource` requires: a valid token without it gets `403` with `WWW-Authenticate:
    /// Bearer …, error="insufficient_scope"`. `None` (the default) requires none.
    pub fn set_required_scope(&self, scope: Option<&str>) {
        self.configure(|c| c.required_scope = scope.map(str::to_owned));
    }

    /// The client authentication methods advertised in the metadata and accepted by the token
    /// endpoint (default `client_secret_basic`, `client_secret_post`, `private_key_jwt`); a
    /// request using another gets `401 invalid_client`.
    pub fn set_auth_methods(&self, methods: &[&str]) {
        self.configure(|c| c.auth_methods = methods.iter().map(|m| (*m).to_owned()).collect());
    }

    /// Sets a field of the metadata documents (e.g. a wrong `issuer`); `Value::Null` removes it.
    pub fn set_metadata_field(&self, name: &str, value: Value) {
        self.configure(|c| {
            c.metadata_fields.insert(name.to_owned(), value);
        });
    }

    /// Revokes an access or refresh token: `/resource` and the refresh grant refuse it from now
    /// on. Returns whether the token was issued by this provider.
    pub fn revoke(&self, token: &str) -> bool {
        match self.state().tokens.get_mut(token) {
            Some(issued) => {
                issued.revoked = true;
                true
            }
            None => false,
        }
    }

    /// Whether a token was issued here and is still good (not expired on tokio's clock, not
    /// revoked, not a rotated-out refresh token).
    pub fn is_active(&self, token: &str) -> bool {
        self.state().tokens.get(token).is_some_and(|issued| active(issued, Instant::now()))
    }

    // ---- faults ----

    /// The next `n` token requests are answered with `fault` (after faults already queued).
    pub fn fail_next(&self, n: usize, fault: Fault) {
        self.state().faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Every token request is answered with `fault` once the queued ones are used, until
    /// [`clear_faults`](Self::clear_faults).
    pub fn fail_always(&self, fault: Fault) {
        self.state().sticky = Some(fault);
    }

    /// Removes queued faults and the [`fail_always`](Self::fail_always) one: the endpoint
    /// answers normally again. Requests already hung stay hung (see
    /// [`release_hung`](Self::release_hung)).
    pub fn clear_faults(&self) {
        let mut state = self.state();
        state.faults.clear();
        state.sticky = None;
    }

    /// Answers every request hung by [`Fault::Hang`] so far with `503`.
    pub fn release_hung(&self) {
        self.shared.release.send_modify(|generation| *generation += 1);
    }

    // ---- what was seen ----

    /// Token requests received (every `POST /token`, faulted or not).
    pub fn token_requests(&self) -> u64 {
        *self.shared.seen.borrow()
    }

    /// Token requests received with this grant type.
    pub fn token_requests_for(&self, grant: &Grant) -> u64 {
        self.state().per_grant.get(grant).copied().unwrap_or(0)
    }

    /// Waits until at least `n` token requests have been received (no polling, no sleep).
    pub async fn wait_for_token_requests(&self, n: u64) {
        let mut seen = self.shared.seen.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = seen.wait_for(|count| *count >= n).await;
    }

    /// Every token request received, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state().records.clone()
    }

    /// The last token request received.
    pub fn last_request(&self) -> Option<TokenRequest> {
        self.state().records.last().cloned()
    }

    /// Counts of `/resource` requests (accepted: answered `200`; rejected: `401` or `403`).
    pub fn resource_stats(&self) -> Stats {
        self.shared.resource.clone()
    }

    /// The bearer tokens presented to `/resource`, in order.
    pub fn resource_tokens(&self) -> Vec<Secret> {
        self.state().presented.clone()
    }

    /// Requests for the metadata documents (both paths).
    pub fn metadata_requests(&self) -> u64 {
        self.shared.metadata.load(Ordering::SeqCst)
    }

    /// Sets every count back to zero and forgets the records (issued tokens stay good).
    pub fn reset_counts(&self) {
        let mut state = self.state();
        state.records.clear();
        state.per_grant.clear();
        state.presented.clear();
        self.shared.seen.send_replace(0);
        self.shared.resource.reset();
        self.shared.metadata.store(0, Ordering::SeqCst);
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, IdpState> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn active(issued: &Issued, now: Instant) -> bool {
    !issued.revoked && !issued.used && issued.expires_at.is_none_or(|at| now < at)
}

// ---- HTTP ----

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut res = Response::new(Body::from(value.to_string()));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

fn text_response(status: StatusCode, content_type: &str, body: impl Into<Body>) -> Response<Body> {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        res.headers_mut().insert(CONTENT_TYPE, value);
    }
    res
}

fn basic_challenge() -> HeaderValue {
    HeaderValue::from_static("Basic realm=\"fake-idp\", charset=\"UTF-8\"")
}

/// `application/x-www-form-urlencoded` decoding of one name or value.
fn form_decode(raw: &[u8]) -> String {
    let plus_as_space: Vec<u8> = raw.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
    percent_encoding::percent_decode(&plus_as_space).decode_utf8_lossy().into_owned()
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(eq) => (form_decode(&pair[..eq]), form_decode(&pair[eq + 1..])),
            None => (form_decode(pair), String::new()),
        })
        .collect()
}

/// The id and secret of `Authorization: Basic`, each form-urlencoded (RFC 6749 §2.3.1).
fn basic_credentials(value: &HeaderValue) -> Result<Option<(String, Secret)>, String> {
    let Ok(value) = value.to_str() else { return Err("Authorization is not ASCII".into()) };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| "Basic credentials are not base64".to_owned())?;
    let colon = decoded.iter().position(|b| *b == b':').ok_or("Basic credentials without ':'")?;
    Ok(Some((form_decode(&decoded[..colon]), Secret::new(form_decode(&decoded[colon + 1..])))))
}

fn jwt_part(part: Option<&str>) -> Option<Value> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    serde_json::from_slice(&engine.decode(part?).ok()?).ok()
}

/// A token request, parsed: the record, the secrets it carried, and what makes it unreadable.
struct Incoming {
    record: TokenRequest,
    client_secret: Option<Secret>,
    password: Option<Secret>,
    problem: Option<OAuthError>,
}

fn parse_token_request(headers: &HeaderMap, body: &[u8]) -> Incoming {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut problem = None;
    let form = content_type.as_deref().is_some_and(|ct| {
        ct.split(';').next().is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    if !form {
        problem = Some(OAuthError::invalid_request().description("the body must be application/x-www-form-urlencoded"));
    }
    let params = parse_form(body);
    let mut single: HashMap<&str, &str> = HashMap::new();
    let (mut audience, mut resources, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    for (name, value) in &params {
        match name.as_str() {
            "audience" => audience.push(value.clone()),
            "resource" => resources.push(value.clone()),
            "grant_type"
            | "scope"
            | "username"
            | "password"
            | "refresh_token"
            | "client_id"
            | "client_secret"
            | "client_assertion_type"
            | "client_assertion" => {
                if single.insert(name, value).is_some() && problem.is_none() {
                    problem = Some(OAuthError::invalid_request().description(format!("parameter {name} repeated")));
                }
            }
            _ => extra.push((name.clone(), value.clone())),
        }
    }
    let param = |name: &str| single.get(name).map(|v| (*v).to_owned());
    let grant = Grant::parse(single.get("grant_type").copied().unwrap_or(""));
    if grant == Grant::Other(String::new()) && problem.is_none() {
        problem = Some(OAuthError::invalid_request().description("grant_type is missing"));
    }

    // Client authentication: at most one method (RFC 6749 §2.3).
    let basic = match headers.get(AUTHORIZATION).map(basic_credentials) {
        Some(Ok(found)) => found,
        Some(Err(reason)) => {
            let client_auth = ClientAuth::Malformed { reason: reason.clone() };
            problem.get_or_insert(OAuthError::invalid_client().description(reason));
            return incoming(grant, client_auth, &param, audience, resources, extra, content_type, None, problem);
        }
        None => None,
    };
    let post_secret = param("client_secret");
    let assertion_type = param("client_assertion_type");
    let methods =
        usize::from(basic.is_some()) + usize::from(post_secret.is_some()) + usize::from(assertion_type.is_some());
    let (client_auth, client_secret) = if methods > 1 {
        let reason = "more than one client authentication method".to_owned();
        problem.get_or_insert(OAuthError::invalid_request().description(reason.clone()));
        (ClientAuth::Malformed { reason }, None)
    } else if let Some((client_id, secret)) = basic {
        (ClientAuth::Basic { client_id }, Some(secret))
    } else if let Some(secret) = post_secret {
        match param("client_id") {
            Some(client_id) => (ClientAuth::Post { client_id }, Some(Secret::new(secret))),
            None => {
                let reason = "client_secret without client_id".to_owned();
                problem.get_or_insert(OAuthError::invalid_client().description(reason.clone()));
                (ClientAuth::Malformed { reason }, None)
            }
        }
    } else if let Some(assertion_type) = assertion_type {
        match param("client_assertion") {
            Some(assertion) if assertion_type == JWT_BEARER_ASSERTION_TYPE => {
                let mut parts = assertion.split('.');
                let header = jwt_part(parts.next());
                let claims = jwt_part(parts.next());
                let client_id = param("client_id")
                    .or_else(|| claims.as_ref().and_then(|c| c.get("sub")).and_then(Value::as_str).map(str::to_owned));
                (ClientAuth::JwtBearer { client_id, assertion: Secret::new(assertion), header, claims }, None)
            }
            Some(_) => {
                let reason = format!("unknown client_assertion_type {assertion_type}");
                problem.get_or_insert(OAuthError::invalid_client().description(reason.clone()));
                (ClientAuth::Malformed { reason }, None)
            }
            None => {
                let reason = "client_assertion_type without client_assertion".to_owned();
                problem.get_or_insert(OAuthError::invalid_request().description(reason.clone()));
                (ClientAuth::Malformed { reason }, None)
            }
        }
    } else {
        (ClientAuth::None { client_id: param("client_id") }, None)
    };
    incoming(grant, client_auth, &param, audience, resources, extra, content_type, client_secret, problem)
}

#[allow(clippy::too_many_arguments)]
fn incoming(
    grant: Grant,
    client_auth: ClientAuth,
    param: &dyn Fn(&str) -> Option<String>,
    audience: Vec<String>,
    resources: Vec<String>,
    extra: Vec<(String, String)>,
    content_type: Option<String>,
    client_secret: Option<Secret>,
    problem: Option<OAuthError>,
) -> Incoming {
    Incoming {
        record: TokenRequest {
            grant,
            client_auth,
            scope: param("scope"),
            audience,
            resources,
            username: param("username"),
            refresh_token: param("refresh_token").map(Secret::new),
            extra,
            content_type,
            received_at: Instant::now(),
        },
        client_secret,
        password: param("password").map(Secret::new),
        problem,
    }
}

async fn token(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(body) => body,
        Err(_) => return OAuthError::invalid_request().description("body unreadable or over 64 KiB").into_response(),
    };
    let incoming = parse_token_request(&parts.headers, &body);
    let (fault, delay) = {
        let mut state = lock(&shared);
        *state.per_grant.entry(incoming.record.grant.clone()).or_default() += 1;
        state.records.push(incoming.record.clone());
        let fault = state.faults.pop_front().or_else(|| state.sticky.clone());
        (fault, state.config.delay)
    };
    shared.seen.send_modify(|count| *count += 1);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        None => {}
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Hang) => {
            let mut release = shared.release.subscribe();
            let generation = *release.borrow_and_update();
            let _ = release.wait_for(|g| *g != generation).await;
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "released");
        }
        Some(fault) => return fault_response(fault),
    }
    let mut state = lock(&shared);
    match grant_token(&mut state, incoming) {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(err) => err.into_response(),
    }
}

fn fault_response(fault: Fault) -> Response<Body> {
    match fault {
        Fault::ServerError => text_response(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "internal server error"),
        Fault::TooManyRequests { retry_after } => {
            let mut res = text_response(StatusCode::TOO_MANY_REQUESTS, "text/plain", "slow down");
            res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
            res
        }
        Fault::Garbage => {
            text_response(StatusCode::OK, "application/json", "{\"access_token\": \"at-x\", \"expires_in\": 36")
        }
        Fault::Html => text_response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><p>Please sign in.</p></body></html>\n",
        ),
        Fault::MissingAccessToken => {
            json_response(StatusCode::OK, &json!({"token_type": "Bearer", "expires_in": 3600}))
        }
        Fault::Error(err) => err.into_response(),
        Fault::Raw { status, content_type, body } => text_response(status, &content_type, body),
        // Handled by the caller.
        Fault::Delay(_) | Fault::Hang => text_response(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", ""),
    }
}

/// Authenticates the client; returns its id.
fn authenticate(config: &Config, auth: &ClientAuth, secret: Option<&Secret>) -> Result<Option<String>, OAuthError> {
    let method = auth.method();
    if method != "none" && !config.auth_methods.iter().any(|m| m == method) {
        return Err(OAuthError::invalid_client().description(format!("{method} is not accepted here")));
    }
    let open = config.clients.is_empty() && config.jwt_clients.is_empty();
    let id = auth.client_id().map(str::to_owned);
    if open {
        return Ok(id);
    }
    let ok = match auth {
        ClientAuth::Basic { client_id } | ClientAuth::Post { client_id } => {
            let sent = secret.map(Secret::expose).unwrap_or("");
            config
                .clients
                .iter()
                .any(|(id, s)| id == client_id && constant_time_eq(s.expose().as_bytes(), sent.as_bytes()))
        }
        ClientAuth::JwtBearer { client_id: Some(client_id), .. } => config.jwt_clients.iter().any(|id| id == client_id),
        _ => false,
    };
    if ok { Ok(id) } else { Err(OAuthError::invalid_client().description("client authentication failed")) }
}

fn check_scopes(config: &Config, requested: &[String]) -> Result<(), OAuthError> {
    match &config.allowed_scopes {
        Some(allowed) => match requested.iter().find(|s| !allowed.contains(s)) {
            Some(scope) => Err(OAuthError::invalid_scope().description(format!("scope {scope} is not allowed"))),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

fn grant_token(state: &mut IdpState, incoming: Incoming) -> Result<Value, OAuthError> {
    if let Some(problem) = incoming.problem {
        return Err(problem);
    }
    let record = incoming.record;
    let client_id = authenticate(&state.config, &record.client_auth, incoming.client_secret.as_ref())?;
    let requested: Vec<String> = record.scopes().into_iter().map(str::to_owned).collect();
    let now = Instant::now();
    let (scopes, refresh, rotated) = match &record.grant {
        Grant::ClientCredentials => {
            check_scopes(&state.config, &requested)?;
            (requested, state.config.refresh_on_client_credentials, None)
        }
        Grant::Password => {
            let (Some(username), Some(password)) = (&record.username, &incoming.password) else {
                return Err(OAuthError::invalid_request().description("username and password are required"));
            };
            let users = &state.config.users;
            let ok = users.is_empty()
                || users.iter().any(|(u, p)| {
                    u == username && constant_time_eq(p.expose().as_bytes(), password.expose().as_bytes())
                });
            if !ok {
                return Err(OAuthError::invalid_grant().description("wrong user name or password"));
            }
            check_scopes(&state.config, &requested)?;
            (requested, state.config.refresh_tokens, None)
        }
        Grant::RefreshToken => {
            let Some(presented) = &record.refresh_token else {
                return Err(OAuthError::invalid_request().description("refresh_token is required"));
            };
            let issued = state.tokens.get(presented.expose()).filter(|t| t.kind == Kind::Refresh);
            let Some(issued) = issued.filter(|t| active(t, now)) else {
                return Err(OAuthError::invalid_grant().description("refresh token unknown, revoked or already used"));
            };
            if issued.client_id.is_some() && client_id.is_some() && issued.client_id != client_id {
                return Err(OAuthError::invalid_grant().description("refresh token issued to another client"));
            }
            let scopes = if requested.is_empty() {
                issued.scopes.clone()
            } else if let Some(scope) = requested.iter().find(|s| !issued.scopes.contains(s)) {
                return Err(OAuthError::invalid_scope().description(format!("scope {scope} was not granted")));
            } else {
                requested
            };
            let rotate = state.config.rotation;
            (scopes, rotate, rotate.then(|| presented.expose().to_owned()))
        }
        Grant::Other(grant) => {
            return Err(
                OAuthError::unsupported_grant_type().description(format!("grant_type {grant} is not supported"))
            );
        }
    };
    if let Some(old) = rotated {
        if let Some(old) = state.tokens.get_mut(&old) {
            old.used = true;
        }
    }

    let config = &state.config;
    let access = format!("at-{}", state.next_access);
    state.next_access += 1;
    let mut body = Map::new();
    body.insert("access_token".into(), Value::from(access.clone()));
    body.insert("token_type".into(), Value::from(config.token_type.clone()));
    let seconds = config.lifetime.as_secs();
    let expires_in = match &config.expires_in {
        ExpiresIn::Number => Some(Value::from(seconds)),
        ExpiresIn::String => Some(Value::from(seconds.to_string())),
        ExpiresIn::Omit => None,
        ExpiresIn::Value(value) => Some(value.clone()),
    };
    if let Some(expires_in) = expires_in {
        body.insert("expires_in".into(), expires_in);
    }
    if let Some(refresh_in) = config.refresh_in {
        body.insert("refresh_in".into(), Value::from(refresh_in));
    }
    if !scopes.is_empty() {
        body.insert("scope".into(), Value::from(scopes.join(" ")));
    }
    // `None` (never) when the lifetime is too large for the clock.
    let expires_at = now.checked_add(config.lifetime);
    let response_fields = config.response_fields.clone();
    state.tokens.insert(
        access,
        Issued {
            kind: Kind::Access,
            client_id: client_id.clone(),
            scopes: scopes.clone(),
            expires_at,
            revoked: false,
            used: false,
        },
    );
    if refresh {
        let refresh_token = format!("rt-{}", state.next_refresh);
        state.next_refresh += 1;
        body.insert("refresh_token".into(), Value::from(refresh_token.clone()));
        state.tokens.insert(
            refresh_token,
            Issued { kind: Kind::Refresh, client_id, scopes, expires_at: None, revoked: false, used: false },
        );
    }
    for (name, value) in response_fields {
        if value.is_null() {
            body.remove(&name);
        } else {
            body.insert(name, value);
        }
    }
    Ok(Value::Object(body))
}

async fn metadata(State(shared): State<Arc<Shared>>) -> Response<Body> {
    shared.metadata.fetch_add(1, Ordering::SeqCst);
    let base = &shared.base;
    let state = lock(&shared);
    let config = &state.config;
    let mut doc = json!({
        "issuer": base,
        "token_endpoint": format!("{base}/token"),
        "token_endpoint_auth_methods_supported": config.auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "grant_types_supported": ["client_credentials", "password", "refresh_token"],
        "authorization_endpoint": format!("{base}/authorize"),
        "response_types_supported": ["code"],
        "jwks_uri": format!("{base}/jwks"),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    if let (Some(allowed), Some(doc)) = (&config.allowed_scopes, doc.as_object_mut()) {
        doc.insert("scopes_supported".into(), json!(allowed));
    }
    if let Some(doc) = doc.as_object_mut() {
        for (name, value) in &config.metadata_fields {
            if value.is_null() {
                doc.remove(name);
            } else {
                doc.insert(name.clone(), value.clone());
            }
        }
    }
    json_response(StatusCode::OK, &doc)
}

async fn jwks() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"keys": []}))
}

async fn resource(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response<Body> {
    let stats = &shared.resource;
    stats.0.requests.fetch_add(1, Ordering::SeqCst);
    let sent = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
    });
    let reject = |status: StatusCode, challenge: String| {
        stats.0.rejected.fetch_add(1, Ordering::SeqCst);
        let mut res = text_response(status, "text/plain", status.canonical_reason().unwrap_or(""));
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            res.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        res
    };
    // RFC 6750 §3.1: no error code when the request had no credentials.
    let Some(token) = sent else { return reject(StatusCode::UNAUTHORIZED, format!("Bearer realm=\"{REALM}\"")) };
    let mut state = lock(&shared);
    state.presented.push(Secret::new(token.clone()));
    let good = state.tokens.get(&token).filter(|t| t.kind == Kind::Access && active(t, Instant::now()));
    let Some(issued) = good else {
        return reject(
            StatusCode::UNAUTHORIZED,
            format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"unknown, expired or revoked\""
            ),
        );
    };
    if let Some(required) = &state.config.required_scope {
        if !issued.scopes.contains(required) {
            return reject(
                StatusCode::FORBIDDEN,
                format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{required}\""),
            );
        }
    }
    stats.0.accepted.fetch_add(1, Ordering::SeqCst);
    text_response(StatusCode::OK, "text/plain", token)
}
