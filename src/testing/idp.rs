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
//! | `POST /token` | the token endpoint (RFC 6749): grants `client_credentials`, `password`, `refresh_token`, `authorization_code` (with PKCE, RFC 7636) and `urn:ietf:params:oauth:grant-type:device_code` (RFC 8628); client authentication `client_secret_basic`, `client_secret_post`, `private_key_jwt` (the assertion is recorded, its signature is not checked), `none` for public clients |
//! | `GET /authorize` | the authorization endpoint (RFC 6749 §4.1, RFC 7636, RFC 9207): checks the request and answers `302` to the loopback `redirect_uri` with a code (or an error), as set by [`IdpHandle::set_authorize_outcome`] |
//! | `POST /device_authorization` | the device authorization endpoint (RFC 8628 §3.1); the user's decision is the test's: [`IdpHandle::approve_device`], [`IdpHandle::deny_device`] |
//! | `GET /device` | the verification page the device grant points to (a page that says so; nothing is decided there) |
//! | `GET /.well-known/oauth-authorization-server` | RFC 8414 metadata |
//! | `GET /.well-known/openid-configuration` | OpenID Connect discovery (the same document) |
//! | `GET /jwks` | an empty key set (the discovery document points to it) |
//! | `GET`, `POST /resource` | a protected resource: `200` with the access token as its body when `Authorization: Bearer <token>` names an issued, unexpired, unrevoked token; else `401` with `WWW-Authenticate: Bearer …, error="invalid_token"`; `403` `insufficient_scope` when [`IdpHandle::set_required_scope`] asks for a scope the token lacks |
//!
//! Access tokens are `at-1`, `at-2`, …, refresh tokens `rt-1`, `rt-2`, …, authorization codes
//! `code-1`, …, device codes `dc-1`, … (unique per provider). When the scope of an authorization
//! code or device grant has `openid`, the answer has an `id_token` signed with HS256 and
//! [`ID_TOKEN_KEY`]. Expiry is judged with tokio's clock ([`tokio::time::Instant`]) and delays use
//! [`tokio::time::sleep`], so tests with a paused clock (`#[tokio::test(start_paused = true)]`,
//! `tokio::time::advance`) run without waiting.
//!
//! With no client registered ([`IdpHandle::add_client`], [`IdpHandle::add_jwt_client`],
//! [`IdpHandle::add_public_client`]) any
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
/// `grant_type` of the device authorization grant (RFC 8628 §3.4).
pub const DEVICE_CODE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The HS256 key the fake signs its id_tokens with (a fixed test key, not a secret).
pub const ID_TOKEN_KEY: &[u8] = b"tower-auth fake identity provider id_token key";

/// A grant type, as sent in `grant_type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// `client_credentials` (RFC 6749 §4.4).
    ClientCredentials,
    /// `password` (RFC 6749 §4.3).
    Password,
    /// `refresh_token` (RFC 6749 §6).
    RefreshToken,
    /// `authorization_code` (RFC 6749 §4.1.3).
    AuthorizationCode,
    /// `urn:ietf:params:oauth:grant-type:device_code` (RFC 8628 §3.4).
    DeviceCode,
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
            Grant::AuthorizationCode => "authorization_code",
            Grant::DeviceCode => DEVICE_CODE_GRANT_TYPE,
            Grant::Other(other) => other,
        }
    }

    fn parse(value: &str) -> Self {
        match value {
            "client_credentials" => Grant::ClientCredentials,
            "password" => Grant::Password,
            "refresh_token" => Grant::RefreshToken,
            "authorization_code" => Grant::AuthorizationCode,
            DEVICE_CODE_GRANT_TYPE => Grant::DeviceCode,
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
    /// `code` (authorization code grant).
    pub code: Option<Secret>,
    /// `redirect_uri` (authorization code grant).
    pub redirect_uri: Option<String>,
    /// `code_verifier` (authorization code grant with PKCE); see
    /// [`has_code_verifier`](Self::has_code_verifier).
    pub code_verifier: Option<Secret>,
    /// `device_code` (device grant).
    pub device_code: Option<Secret>,
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

    /// Whether the request carried a PKCE `code_verifier`.
    pub fn has_code_verifier(&self) -> bool {
        self.code_verifier.is_some()
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

/// What `GET /authorize` answers a valid request with (see
/// [`IdpHandle::set_authorize_outcome`]). Requests that are not valid get their error whatever
/// the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuthorizeOutcome {
    /// The user approves: `302` to `redirect_uri?code=…&state=…` (the default).
    #[default]
    Approve,
    /// The user refuses: `302` to `redirect_uri?error=access_denied&error_description=…&state=…`.
    Deny,
    /// A code, with a `state` that is not the one sent (a forged or mixed-up response).
    WrongState,
    /// A code, with an `iss` that is not this provider's (a mix-up attack, RFC 9207), sent even
    /// when [`IdpHandle::set_send_iss`] is off.
    WrongIss,
    /// A code without `state`.
    NoState,
    /// Never answers (until [`IdpHandle::release_hung`] or the provider is dropped; then `503`):
    /// a user who never comes back.
    Hang,
}

/// One `GET /authorize` as the fake received it (recorded before any check). `Debug` shows the
/// client, the redirect URI, the scope, the PKCE method and the parameter names, not the values
/// of the others (a misplaced `client_secret` would be one).
#[derive(Clone)]
#[non_exhaustive]
pub struct AuthorizeRequest {
    /// Every query parameter, decoded, in order (repeats included).
    pub params: Vec<(String, String)>,
    /// `response_type`.
    pub response_type: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `redirect_uri`.
    pub redirect_uri: Option<String>,
    /// `state`.
    pub state: Option<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `nonce` (OpenID Connect).
    pub nonce: Option<String>,
    /// `code_challenge` (RFC 7636).
    pub code_challenge: Option<String>,
    /// `code_challenge_method` as sent (absent means `plain`, RFC 7636 §4.3).
    pub code_challenge_method: Option<String>,
    /// When the request was received, on tokio's clock.
    pub received_at: Instant,
}

impl AuthorizeRequest {
    fn new(params: Vec<(String, String)>) -> Self {
        let first = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        AuthorizeRequest {
            response_type: first("response_type"),
            client_id: first("client_id"),
            redirect_uri: first("redirect_uri"),
            state: first("state"),
            scope: first("scope"),
            nonce: first("nonce"),
            code_challenge: first("code_challenge"),
            code_challenge_method: first("code_challenge_method"),
            received_at: Instant::now(),
            params,
        }
    }

    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether the query had this parameter (e.g. `client_secret`, which must never be there).
    pub fn has(&self, name: &str) -> bool {
        self.params.iter().any(|(n, _)| n == name)
    }

    /// The requested scopes, split on spaces.
    pub fn scopes(&self) -> Vec<&str> {
        self.scope.as_deref().map(|s| s.split_whitespace().collect()).unwrap_or_default()
    }
}

impl fmt::Debug for AuthorizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.params.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("AuthorizeRequest")
            .field("response_type", &self.response_type)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("scope", &self.scope)
            .field("code_challenge_method", &self.code_challenge_method)
            .field("params", &names)
            .finish_non_exhaustive()
    }
}

/// One `POST /device_authorization` as the fake received it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeviceAuthorizationRequest {
    /// How the client authenticated (public clients send only `client_id`).
    pub client_auth: ClientAuth,
    /// `scope`, as sent.
    pub scope: Option<String>,
    /// The user code given out, when the request was granted: what
    /// [`IdpHandle::approve_device`] and [`IdpHandle::deny_device`] take.
    pub user_code: Option<String>,
    /// When the request was received, on tokio's clock.
    pub received_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Access,
    Refresh,
}

/// An authorization code given out by `/authorize`.
struct CodeGrant {
    client_id: Option<String>,
    redirect_uri: String,
    /// `(challenge, method)`.
    challenge: Option<(String, String)>,
    scopes: Vec<String>,
    nonce: Option<String>,
    expires_at: Instant,
    used: bool,
    /// Tokens issued for it, revoked if the code is presented again (RFC 6749 §4.1.2).
    issued: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceStatus {
    Pending,
    Approved,
    Denied,
    /// Tokens issued.
    Done,
}

/// A device authorization given out by `/device_authorization`.
struct DeviceGrant {
    user_code: String,
    client_id: Option<String>,
    scopes: Vec<String>,
    expires_at: Instant,
    /// Seconds between polls, raised by 5 at each `slow_down`.
    interval: u64,
    last_poll: Option<Instant>,
    status: DeviceStatus,
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
    public_clients: Vec<String>,
    require_pkce: bool,
    send_iss: bool,
    authorize_outcome: AuthorizeOutcome,
    code_lifetime: Duration,
    subject: String,
    id_token_claims: Map<String, Value>,
    device_interval: u64,
    device_lifetime: Duration,
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
            public_clients: Vec::new(),
            require_pkce: false,
            send_iss: false,
            authorize_outcome: AuthorizeOutcome::Approve,
            code_lifetime: Duration::from_secs(600),
            subject: "fake-user".to_owned(),
            id_token_claims: Map::new(),
            device_interval: 5,
            device_lifetime: Duration::from_secs(600),
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
    codes: HashMap<String, CodeGrant>,
    next_code: u64,
    authorize_records: Vec<AuthorizeRequest>,
    devices: HashMap<String, DeviceGrant>,
    next_device: u64,
    device_records: Vec<DeviceAuthorizationRequest>,
    /// `slow_down` answers forced on the next device polls.
    forced_slow_downs: u32,
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
    /// `GET /authorize` requests seen.
    authorize_seen: watch::Sender<u64>,
    /// `POST /device_authorization` requests seen.
    device_seen: watch::Sender<u64>,
}

/// The fake identity provider: serves until dropped. Dereferences to its [`IdpHandle`], which
/// programs it and reads what it saw.
pub struct FakeIdp {
    server: TestServer,
    handle: IdpHandle,
}

impl FakeIdp {
    /// Starts a provider on `127.0.0.1:0`: tokens live an hour, `expires_in` is a number,
    /// password, authorization code and device grants get a refresh token (not rotated), any
    /// client and user are accepted, `/authorize` approves, PKCE is optional, codes live ten
    /// minutes, device codes ten minutes with a 5 s polling interval.
    ///
    /// # Errors
    ///
    /// If no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            base: format!("http://{addr}"),
            state: Mutex::new(IdpState {
                next_access: 1,
                next_refresh: 1,
                next_code: 1,
                next_device: 1,
                ..IdpState::default()
            }),
            seen: watch::Sender::new(0),
            release: watch::Sender::new(0),
            resource: Stats::default(),
            metadata: AtomicU64::new(0),
            authorize_seen: watch::Sender::new(0),
            device_seen: watch::Sender::new(0),
        });
        let router = Router::new()
            .route("/token", post(token))
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/.well-known/openid-configuration", get(metadata))
            .route("/jwks", get(jwks))
            .route("/resource", get(resource).post(resource))
            .route("/authorize", get(authorize))
            .route("/device_authorization", post(device_authorization))
            .route("/device", get(device_page))
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
            .field("public_clients", &state.config.public_clients)
            .field("authorize_outcome", &state.config.authorize_outcome)
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

    /// The authorization endpoint: `http://127.0.0.1:PORT/authorize`.
    pub fn authorize_url(&self) -> String {
        self.url("/authorize")
    }

    /// The device authorization endpoint: `http://127.0.0.1:PORT/device_authorization`.
    pub fn device_authorization_url(&self) -> String {
        self.url("/device_authorization")
    }

    /// The device grant's `verification_uri`: `http://127.0.0.1:PORT/device`.
    pub fn verification_url(&self) -> String {
        self.url("/device")
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

    /// Whether password, authorization code and device grants get a refresh token (default
    /// yes).
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

    // ---- interactive grants ----

    /// Registers a public client (no secret: token requests send `client_id` only, RFC 6749
    /// §2.1), as native apps using the authorization code or device grant are. Once any client is
    /// registered, `/authorize` refuses unknown ones.
    pub fn add_public_client(&self, client_id: &str) {
        self.configure(|c| c.public_clients.push(client_id.to_owned()));
    }

    /// Whether `/authorize` requires a `code_challenge` (default no; without one it redirects
    /// `error=invalid_request`).
    pub fn set_require_pkce(&self, require: bool) {
        self.configure(|c| c.require_pkce = require);
    }

    /// Whether authorization responses carry `iss` (RFC 9207; default no). The metadata then says
    /// `authorization_response_iss_parameter_supported: true`.
    pub fn set_send_iss(&self, send: bool) {
        self.configure(|c| c.send_iss = send);
    }

    /// What `/authorize` answers valid requests with from now on (default
    /// [`AuthorizeOutcome::Approve`]).
    pub fn set_authorize_outcome(&self, outcome: AuthorizeOutcome) {
        self.configure(|c| c.authorize_outcome = outcome);
    }

    /// How long authorization codes stay good (default ten minutes, tokio's clock).
    pub fn set_code_lifetime(&self, lifetime: Duration) {
        self.configure(|c| c.code_lifetime = lifetime);
    }

    /// The `sub` of id_tokens (default `fake-user`).
    pub fn set_subject(&self, subject: &str) {
        self.configure(|c| c.subject = subject.to_owned());
    }

    /// Sets a claim of the id_tokens issued from now on, replacing the fake's (a wrong `nonce`,
    /// `aud` or `iss`, an `exp` in the past); `Value::Null` removes it.
    pub fn set_id_token_claim(&self, name: &str, value: Value) {
        self.configure(|c| {
            c.id_token_claims.insert(name.to_owned(), value);
        });
    }

    /// The `interval` of device authorizations given out from now on, in seconds (default 5):
    /// polls closer together than this get `slow_down`.
    pub fn set_device_interval(&self, seconds: u64) {
        self.configure(|c| c.device_interval = seconds);
    }

    /// How long device codes given out from now on stay good (default ten minutes, tokio's
    /// clock); polls after that get `expired_token`.
    pub fn set_device_lifetime(&self, lifetime: Duration) {
        self.configure(|c| c.device_lifetime = lifetime);
    }

    /// The next device poll gets `slow_down` whatever its timing (calls add up). Like every
    /// `slow_down`, it raises that device code's interval by 5 s (RFC 8628 §3.5).
    pub fn force_slow_down(&self) {
        self.state().forced_slow_downs += 1;
    }

    /// The user approves the device authorization with this user code: its next poll gets
    /// tokens. Returns whether the code is known and still waiting.
    pub fn approve_device(&self, user_code: &str) -> bool {
        self.decide_device(user_code, DeviceStatus::Approved)
    }

    /// The user refuses the device authorization with this user code: its next poll gets
    /// `access_denied`. Returns whether the code is known and still waiting.
    pub fn deny_device(&self, user_code: &str) -> bool {
        self.decide_device(user_code, DeviceStatus::Denied)
    }

    fn decide_device(&self, user_code: &str, decision: DeviceStatus) -> bool {
        let mut state = self.state();
        let grant = state.devices.values_mut().find(|g| g.user_code == user_code);
        match grant {
            Some(grant) if grant.status == DeviceStatus::Pending => {
                grant.status = decision;
                true
            }
            _ => false,
        }
    }

    /// Every `GET /authorize` received, in order.
    pub fn authorize_requests(&self) -> Vec<AuthorizeRequest> {
        self.state().authorize_records.clone()
    }

    /// The last `GET /authorize` received.
    pub fn last_authorize_request(&self) -> Option<AuthorizeRequest> {
        self.state().authorize_records.last().cloned()
    }

    /// Waits until at least `n` `GET /authorize` requests have been received.
    pub async fn wait_for_authorize_requests(&self, n: u64) {
        let mut seen = self.shared.authorize_seen.subscribe();
        let _ = seen.wait_for(|count| *count >= n).await;
    }

    /// Every `POST /device_authorization` received, in order.
    pub fn device_authorizations(&self) -> Vec<DeviceAuthorizationRequest> {
        self.state().device_records.clone()
    }

    /// Waits until at least `n` `POST /device_authorization` requests have been received (then
    /// [`device_authorizations`](Self::device_authorizations) has the user code to approve).
    pub async fn wait_for_device_authorizations(&self, n: u64) {
        let mut seen = self.shared.device_seen.subscribe();
        let _ = seen.wait_for(|count| *count >= n).await;
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
        state.authorize_records.clear();
        state.device_records.clear();
        self.shared.seen.send_replace(0);
        self.shared.authorize_seen.send_replace(0);
        self.shared.device_seen.send_replace(0);
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

pub(super) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
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

/// Parses a token request, or (`token_request` false: no `grant_type` expected) a device
/// authorization request.
fn parse_token_request(headers: &HeaderMap, body: &[u8], token_request: bool) -> Incoming {
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
            | "client_assertion"
            | "code"
            | "redirect_uri"
            | "code_verifier"
            | "device_code" => {
                if single.insert(name, value).is_some() && problem.is_none() {
                    problem = Some(OAuthError::invalid_request().description(format!("parameter {name} repeated")));
                }
            }
            _ => extra.push((name.clone(), value.clone())),
        }
    }
    let param = |name: &str| single.get(name).map(|v| (*v).to_owned());
    let grant = Grant::parse(single.get("grant_type").copied().unwrap_or(""));
    if token_request && grant == Grant::Other(String::new()) && problem.is_none() {
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
            code: param("code").map(Secret::new),
            redirect_uri: param("redirect_uri"),
            code_verifier: param("code_verifier").map(Secret::new),
            device_code: param("device_code").map(Secret::new),
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
    let incoming = parse_token_request(&parts.headers, &body, true);
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
    match grant_token(&mut state, &shared.base, incoming) {
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
    let open = config.clients.is_empty() && config.jwt_clients.is_empty() && config.public_clients.is_empty();
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
        ClientAuth::None { client_id: Some(client_id) } => config.public_clients.iter().any(|id| id == client_id),
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

fn grant_token(state: &mut IdpState, base: &str, incoming: Incoming) -> Result<Value, OAuthError> {
    if let Some(problem) = incoming.problem {
        return Err(problem);
    }
    let record = incoming.record;
    let client_id = authenticate(&state.config, &record.client_auth, incoming.client_secret.as_ref())?;
    let requested: Vec<String> = record.scopes().into_iter().map(str::to_owned).collect();
    let now = Instant::now();
    // The id_token's nonce (`Some(None)`: an id_token without nonce), and the code the tokens
    // come from.
    let mut id_token_nonce: Option<Option<String>> = None;
    let mut from_code = None;
    let (scopes, refresh, rotated) = match &record.grant {
        Grant::ClientCredentials => {
            if matches!(record.client_auth, ClientAuth::None { .. }) && !state.config.public_clients.is_empty() {
                return Err(
                    OAuthError::unauthorized_client().description("public clients cannot use client_credentials")
                );
            }
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
        Grant::AuthorizationCode => {
            let grant = redeem_code(state, &record, client_id.as_deref(), now)?;
            if grant.scopes.iter().any(|s| s == "openid") {
                id_token_nonce = Some(grant.nonce);
            }
            from_code = record.code.as_ref().map(|c| c.expose().to_owned());
            (grant.scopes, state.config.refresh_tokens, None)
        }
        Grant::DeviceCode => {
            let scopes = poll_device(state, &record, client_id.as_deref(), now)?;
            if scopes.iter().any(|s| s == "openid") {
                id_token_nonce = Some(None);
            }
            (scopes, state.config.refresh_tokens, None)
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
    if let Some(nonce) = id_token_nonce {
        body.insert("id_token".into(), Value::from(id_token(config, base, client_id.as_deref(), nonce.as_deref())));
    }
    // `None` (never) when the lifetime is too large for the clock.
    let expires_at = now.checked_add(config.lifetime);
    let response_fields = config.response_fields.clone();
    let mut issued_now = vec![access.clone()];
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
        issued_now.push(refresh_token.clone());
        state.tokens.insert(
            refresh_token,
            Issued { kind: Kind::Refresh, client_id, scopes, expires_at: None, revoked: false, used: false },
        );
    }
    if let Some(grant) = from_code.and_then(|code| state.codes.get_mut(&code)) {
        grant.issued = issued_now;
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

/// What a redeemed authorization code grants.
struct Redeemed {
    scopes: Vec<String>,
    nonce: Option<String>,
}

/// Checks an authorization code grant (RFC 6749 §4.1.3, RFC 7636 §4.6). The code is spent by any
/// request that names it, good or not; presenting it again revokes what it gave.
fn redeem_code(
    state: &mut IdpState,
    record: &TokenRequest,
    client_id: Option<&str>,
    now: Instant,
) -> Result<Redeemed, OAuthError> {
    let Some(code) = &record.code else {
        return Err(OAuthError::invalid_request().description("code is required"));
    };
    let Some(grant) = state.codes.get_mut(code.expose()) else {
        return Err(OAuthError::invalid_grant().description("unknown authorization code"));
    };
    if grant.used {
        let issued = std::mem::take(&mut grant.issued);
        for token in issued {
            if let Some(token) = state.tokens.get_mut(&token) {
                token.revoked = true;
            }
        }
        return Err(OAuthError::invalid_grant().description("authorization code already used"));
    }
    grant.used = true;
    if now >= grant.expires_at {
        return Err(OAuthError::invalid_grant().description("authorization code expired"));
    }
    if grant.client_id.as_deref() != client_id {
        return Err(OAuthError::invalid_grant().description("authorization code issued to another client"));
    }
    if record.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
        return Err(OAuthError::invalid_grant().description("redirect_uri differs from the authorization request's"));
    }
    match (&grant.challenge, &record.code_verifier) {
        (Some((challenge, method)), Some(verifier)) => {
            let verifier = verifier.expose();
            if !valid_pkce_string(verifier) {
                return Err(
                    OAuthError::invalid_grant().description("code_verifier is not 43 to 128 unreserved characters")
                );
            }
            let computed = if method == "S256" { s256(verifier) } else { verifier.to_owned() };
            if !constant_time_eq(computed.as_bytes(), challenge.as_bytes()) {
                return Err(OAuthError::invalid_grant().description("code_verifier does not match the code_challenge"));
            }
        }
        (Some(_), None) => return Err(OAuthError::invalid_grant().description("code_verifier is required")),
        (None, Some(_)) => {
            return Err(OAuthError::invalid_grant().description("code_verifier sent but no code_challenge was"));
        }
        (None, None) => {}
    }
    Ok(Redeemed { scopes: grant.scopes.clone(), nonce: grant.nonce.clone() })
}

/// Checks a device code poll (RFC 8628 §3.4, §3.5); returns the scopes granted.
fn poll_device(
    state: &mut IdpState,
    record: &TokenRequest,
    client_id: Option<&str>,
    now: Instant,
) -> Result<Vec<String>, OAuthError> {
    let Some(device_code) = &record.device_code else {
        return Err(OAuthError::invalid_request().description("device_code is required"));
    };
    let Some(grant) = state.devices.get_mut(device_code.expose()) else {
        return Err(OAuthError::invalid_grant().description("unknown device_code"));
    };
    if grant.client_id.as_deref() != client_id {
        return Err(OAuthError::invalid_grant().description("device_code issued to another client"));
    }
    if grant.status == DeviceStatus::Done {
        return Err(OAuthError::invalid_grant().description("device_code already used"));
    }
    if now >= grant.expires_at {
        return Err(OAuthError::new("expired_token").description("the device code has expired"));
    }
    let too_soon = grant.last_poll.is_some_and(|last| now.duration_since(last) < Duration::from_secs(grant.interval));
    grant.last_poll = Some(now);
    if too_soon || state.forced_slow_downs > 0 {
        state.forced_slow_downs = state.forced_slow_downs.saturating_sub(1);
        grant.interval += 5;
        return Err(OAuthError::new("slow_down").description(format!("poll every {} s", grant.interval)));
    }
    match grant.status {
        DeviceStatus::Pending => Err(OAuthError::new("authorization_pending")),
        DeviceStatus::Denied => Err(OAuthError::new("access_denied").description("the user refused")),
        DeviceStatus::Approved | DeviceStatus::Done => {
            grant.status = DeviceStatus::Done;
            Ok(grant.scopes.clone())
        }
    }
}

/// `code_verifier` and `code_challenge` syntax: 43 to 128 of `[A-Za-z0-9-._~]` (RFC 7636 §4.1).
fn valid_pkce_string(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `BASE64URL(SHA256(ASCII(verifier)))` (RFC 7636 §4.2).
fn s256(verifier: &str) -> String {
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// An id_token signed with HS256 and [`ID_TOKEN_KEY`]: `iss`, `aud`, `sub`, `iat`, `exp` (the
/// access token's lifetime, wall clock), `nonce` when the authorization request had one, then
/// the claims set by [`IdpHandle::set_id_token_claim`].
fn id_token(config: &Config, base: &str, client_id: Option<&str>, nonce: Option<&str>) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut claims = Map::new();
    claims.insert("iss".into(), Value::from(base));
    claims.insert("aud".into(), Value::from(client_id.unwrap_or_default()));
    claims.insert("sub".into(), Value::from(config.subject.clone()));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now.saturating_add(config.lifetime.as_secs())));
    if let Some(nonce) = nonce {
        claims.insert("nonce".into(), Value::from(nonce));
    }
    for (name, value) in &config.id_token_claims {
        if value.is_null() {
            claims.remove(name);
        } else {
            claims.insert(name.clone(), value.clone());
        }
    }
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let signing_input =
        format!("{}.{}", b64(header.to_string().as_bytes()), b64(Value::Object(claims).to_string().as_bytes()));
    let signature = hmac_sha256(ID_TOKEN_KEY, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&signature))
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
        "grant_types_supported": [
            "client_credentials",
            "password",
            "refresh_token",
            "authorization_code",
            DEVICE_CODE_GRANT_TYPE,
        ],
        "authorization_endpoint": format!("{base}/authorize"),
        "device_authorization_endpoint": format!("{base}/device_authorization"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256", "plain"],
        "jwks_uri": format!("{base}/jwks"),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["HS256"],
    });
    if config.send_iss {
        if let Some(doc) = doc.as_object_mut() {
            doc.insert("authorization_response_iss_parameter_supported".into(), Value::Bool(true));
        }
    }
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

/// The authorization endpoint (RFC 6749 §4.1.1, §4.1.2): errors about the client or the
/// redirect URI are answered here (`400`, plain text, RFC 6749 §4.1.2.1); others, and the
/// outcome, are redirected to the redirect URI.
async fn authorize(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response<Body> {
    let record = AuthorizeRequest::new(parse_form(req.uri().query().unwrap_or("").as_bytes()));
    let decision = {
        let mut state = lock(&shared);
        state.authorize_records.push(record.clone());
        decide_authorization(&mut state, &shared.base, &record)
    };
    shared.authorize_seen.send_modify(|count| *count += 1);
    match decision {
        Decision::Page(reason) => text_response(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", reason),
        Decision::Redirect(location) => {
            let mut res = text_response(StatusCode::FOUND, "text/plain; charset=utf-8", "");
            match HeaderValue::from_str(&location) {
                Ok(value) => {
                    res.headers_mut().insert(http::header::LOCATION, value);
                    res.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    res
                }
                Err(_) => {
                    text_response(StatusCode::BAD_REQUEST, "text/plain", "redirect_uri is not a valid header value")
                }
            }
        }
        Decision::Hang => {
            let mut release = shared.release.subscribe();
            let generation = *release.borrow_and_update();
            let _ = release.wait_for(|g| *g != generation).await;
            text_response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "released")
        }
    }
}

enum Decision {
    /// Answered here, `400`, with this reason.
    Page(&'static str),
    /// `302` to this URL.
    Redirect(String),
    /// Never answered.
    Hang,
}

fn decide_authorization(state: &mut IdpState, base: &str, record: &AuthorizeRequest) -> Decision {
    let config = &state.config;
    let Some(client_id) = record.client_id.as_deref() else { return Decision::Page("client_id is missing") };
    let open = config.clients.is_empty() && config.jwt_clients.is_empty() && config.public_clients.is_empty();
    let known = config.clients.iter().any(|(id, _)| id == client_id)
        || config.jwt_clients.iter().any(|id| id == client_id)
        || config.public_clients.iter().any(|id| id == client_id);
    if !open && !known {
        return Decision::Page("unknown client_id");
    }
    let Some(redirect_uri) = record.redirect_uri.as_deref() else {
        return Decision::Page("redirect_uri is missing");
    };
    if !is_loopback_redirect(redirect_uri) {
        return Decision::Page(
            "redirect_uri must be http://127.0.0.1:PORT/…, http://[::1]:PORT/… or http://localhost:PORT/…",
        );
    }
    let outcome = config.authorize_outcome;
    let iss = match outcome {
        AuthorizeOutcome::WrongIss => Some("https://wrong-issuer.example"),
        _ => config.send_iss.then_some(base),
    };
    let state_param = record.state.as_deref();
    let error = |error: &str, description: &str| {
        let mut pairs = vec![("error", error), ("error_description", description)];
        pairs.extend(state_param.map(|s| ("state", s)));
        pairs.extend(iss.map(|i| ("iss", i)));
        Decision::Redirect(with_query(redirect_uri, &pairs))
    };

    const SINGLE: [&str; 8] = [
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "scope",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    ];
    if SINGLE.iter().any(|name| record.params.iter().filter(|(n, _)| n == name).count() > 1) {
        return error("invalid_request", "a parameter is repeated");
    }
    if record.response_type.as_deref() != Some("code") {
        return error("unsupported_response_type", "only response_type=code is supported");
    }
    let method = record.code_challenge_method.as_deref().unwrap_or("plain");
    let challenge = match (&record.code_challenge, &record.code_challenge_method) {
        (Some(challenge), _) => {
            if method != "S256" && method != "plain" {
                return error("invalid_request", "code_challenge_method must be S256 or plain");
            }
            if !valid_pkce_string(challenge) {
                return error("invalid_request", "code_challenge is not 43 to 128 unreserved characters");
            }
            Some((challenge.clone(), method.to_owned()))
        }
        (None, Some(_)) => return error("invalid_request", "code_challenge_method without code_challenge"),
        (None, None) if config.require_pkce => return error("invalid_request", "code_challenge is required"),
        (None, None) => None,
    };
    let scopes: Vec<String> = record.scopes().into_iter().map(str::to_owned).collect();
    if let Err(err) = check_scopes(config, &scopes) {
        return error("invalid_scope", err.description.as_deref().unwrap_or("scope not allowed"));
    }
    match outcome {
        AuthorizeOutcome::Hang => return Decision::Hang,
        AuthorizeOutcome::Deny => return error("access_denied", "the user refused the request"),
        _ => {}
    }
    let code = format!("code-{}", state.next_code);
    state.next_code += 1;
    let expires_at = Instant::now() + state.config.code_lifetime;
    state.codes.insert(
        code.clone(),
        CodeGrant {
            client_id: Some(client_id.to_owned()),
            redirect_uri: redirect_uri.to_owned(),
            challenge,
            scopes,
            nonce: record.nonce.clone(),
            expires_at,
            used: false,
            issued: Vec::new(),
        },
    );
    let wrong_state = state_param.map(|s| format!("{s}-not-yours")).unwrap_or_else(|| "not-yours".to_owned());
    let sent_state = match outcome {
        AuthorizeOutcome::NoState => None,
        AuthorizeOutcome::WrongState => Some(wrong_state.as_str()),
        _ => state_param,
    };
    let mut pairs = vec![("code", code.as_str())];
    pairs.extend(sent_state.map(|s| ("state", s)));
    pairs.extend(iss.map(|i| ("iss", i)));
    Decision::Redirect(with_query(redirect_uri, &pairs))
}

/// `http://127.0.0.1:PORT/…`, `http://[::1]:PORT/…` or `http://localhost:PORT/…`, with an
/// explicit port, no user info and no fragment (RFC 8252 §7.3, RFC 6749 §3.1.2).
fn is_loopback_redirect(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://") else { return false };
    if uri.contains('#') {
        return false;
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let Some((host, port)) = authority.rsplit_once(':') else { return false };
    matches!(host, "127.0.0.1" | "[::1]" | "localhost")
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0)
        && uri.parse::<http::Uri>().is_ok()
}

/// `uri` with these parameters appended to its query, percent-encoded.
fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    const COMPONENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let mut out = uri.to_owned();
    if !uri.ends_with(['?', '&']) {
        out.push(if uri.contains('?') { '&' } else { '?' });
    }
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.extend(percent_encoding::utf8_percent_encode(value, COMPONENT));
    }
    out
}

/// The device authorization endpoint (RFC 8628 §3.1, §3.2).
async fn device_authorization(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(body) => body,
        Err(_) => return OAuthError::invalid_request().description("body unreadable or over 64 KiB").into_response(),
    };
    let incoming = parse_token_request(&parts.headers, &body, false);
    let base = &shared.base;
    let answer = {
        let mut state = lock(&shared);
        let mut record = DeviceAuthorizationRequest {
            client_auth: incoming.record.client_auth.clone(),
            scope: incoming.record.scope.clone(),
            user_code: None,
            received_at: Instant::now(),
        };
        let answer = grant_device(&mut state, base, &incoming);
        if let Ok((_, user_code)) = &answer {
            record.user_code = Some(user_code.clone());
        }
        state.device_records.push(record);
        answer
    };
    shared.device_seen.send_modify(|count| *count += 1);
    match answer {
        Ok((body, _)) => json_response(StatusCode::OK, &body),
        Err(err) => err.into_response(),
    }
}

/// Checks a device authorization request and gives out a device code; returns the answer and
/// the user code.
fn grant_device(state: &mut IdpState, base: &str, incoming: &Incoming) -> Result<(Value, String), OAuthError> {
    if let Some(problem) = &incoming.problem {
        return Err(problem.clone());
    }
    let client_id = authenticate(&state.config, &incoming.record.client_auth, incoming.client_secret.as_ref())?;
    let Some(client_id) = client_id else {
        return Err(OAuthError::invalid_request().description("client_id is required"));
    };
    let scopes: Vec<String> = incoming.record.scopes().into_iter().map(str::to_owned).collect();
    check_scopes(&state.config, &scopes)?;
    let n = state.next_device;
    state.next_device += 1;
    let device_code = format!("dc-{n}");
    let user_code = user_code(n);
    let config = &state.config;
    let verification_uri = format!("{base}/device");
    let answer = json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": verification_uri,
        "verification_uri_complete": with_query(&verification_uri, &[("user_code", &user_code)]),
        "expires_in": config.device_lifetime.as_secs(),
        "interval": config.device_interval,
    });
    let grant = DeviceGrant {
        user_code: user_code.clone(),
        client_id: Some(client_id),
        scopes,
        expires_at: Instant::now() + config.device_lifetime,
        interval: config.device_interval,
        last_poll: None,
        status: DeviceStatus::Pending,
    };
    state.devices.insert(device_code, grant);
    Ok((answer, user_code))
}

/// `XXXX-XXXX` from the consonants RFC 8628 §6.1 suggests, unique per `n`.
fn user_code(n: u64) -> String {
    const ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
    // Spread consecutive numbers over the code space: 7919 is prime to 20^8, so this is a
    // bijection for n < 20^8.
    let mut x = (n % 20u64.pow(8) * 7919 + 104_729) % 20u64.pow(8);
    let mut chars = Vec::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            chars.push(b'-');
        }
        chars.push(ALPHABET[(x % 20) as usize]);
        x /= 20;
    }
    String::from_utf8_lossy(&chars).into_owned()
}

/// The verification page: nothing is decided here (the test calls
/// [`IdpHandle::approve_device`] or [`IdpHandle::deny_device`]).
async fn device_page() -> Response<Body> {
    text_response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        "<!DOCTYPE html>\n<html><head><title>Device sign-in</title></head><body><p>Enter the code shown on your device.</p></body></html>\n",
    )
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
