//! The token endpoint: requests built and answers parsed by the well-kept `oauth2` crate, sent
//! through a tower service the user gives (adapted to `oauth2::AsyncHttpClient`), with a
//! timeout, a cap on the answer's size, no redirects, and typed errors (RFC 6749 §5.2).
//!
//! Written here: only the adapter (the `oauth2` crate has none for tower services), a token
//! response type lenient where servers are (`expires_in` as a string, `refresh_in`, another token
//! field), and the classification of failures into permanent and transient.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use oauth2::basic::{BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse};
use oauth2::{
    AccessToken, AsyncHttpClient, AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, HttpRequest,
    HttpResponse, RefreshToken, RequestTokenError, ResourceOwnerPassword, ResourceOwnerUsername, Scope,
    StandardRevocableToken, TokenUrl,
};
use serde::{Deserialize, Serialize};
use tower_service::Service;

use crate::error::BoxError;
use crate::secret::Secret;

/// The most bytes of a token endpoint's answer read.
const MAX_ANSWER: usize = 1024 * 1024;
/// The most bytes of a failed answer quoted in an error.
const EXCERPT: usize = 200;

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the id and secret form-urlencoded first
    /// (RFC 6749 §2.3.1). The default.
    #[default]
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the request body.
    Post,
    /// No client secret: a public client sends its `client_id` in the body.
    None,
    /// `private_key_jwt` (RFC 7523 §2.2): a JWT signed with the client's private key, fresh for
    /// every token request. Set the key with
    /// [`ProviderBuilder::private_key_jwt`](super::ProviderBuilder::private_key_jwt).
    PrivateKeyJwt,
}

/// The signature algorithms of `private_key_jwt` assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (an RSA key).
    Rs256,
    /// ECDSA on P-256 with SHA-256 (an EC key).
    Es256,
}

/// A private key for `private_key_jwt`, from PEM. Signing is the `jsonwebtoken` crate's.
#[derive(Clone)]
pub struct PrivateKey {
    key: jsonwebtoken::EncodingKey,
    alg: JwtAlgorithm,
    kid: Option<String>,
}

impl PrivateKey {
    /// A key from PEM text (PKCS#1 or PKCS#8 for RSA, SEC1 or PKCS#8 for EC).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::ConfigError) naming the algorithm when the PEM is not such a
    /// private key (the key itself is never quoted).
    pub fn from_pem(pem: &[u8], alg: JwtAlgorithm) -> Result<Self, crate::ConfigError> {
        let key = match alg {
            JwtAlgorithm::Rs256 => jsonwebtoken::EncodingKey::from_rsa_pem(pem),
            JwtAlgorithm::Es256 => jsonwebtoken::EncodingKey::from_ec_pem(pem),
        }
        .map_err(|e| {
            crate::ConfigError::new(format!("the private key is not a PEM {alg:?} private key ({:?})", e.kind()))
        })?;
        Ok(PrivateKey { key, alg, kid: None })
    }

    /// The `kid` header of the assertions (the key's id at the server).
    pub fn key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// What signs the assertions of one client.
#[derive(Debug, Clone)]
pub(crate) struct Assertion {
    pub(crate) key: PrivateKey,
    /// The `aud` claim: the server's issuer identifier (the RFC 7523 update), or what was set.
    pub(crate) audience: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

impl Assertion {
    /// A fresh assertion: `iss` = `sub` = the client id, a random `jti`, valid for 60 s.
    fn sign(&self, client_id: &str) -> Result<String, TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| TokenError::config("the system clock is before 1970"))?
            .as_secs();
        let jti: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
        let claims = Claims { iss: client_id, sub: client_id, aud: &self.audience, jti, iat: now, exp: now + 60 };
        let mut header = jsonwebtoken::Header::new(match self.key.alg {
            JwtAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            JwtAlgorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        });
        header.kid = self.key.kid.clone();
        jsonwebtoken::encode(&header, &claims, &self.key.key)
            .map_err(|e| TokenError::config(format!("the client assertion could not be signed ({:?})", e.kind())))
    }
}

/// The grant a provider uses to obtain tokens.
#[derive(Clone)]
pub enum Grant {
    /// Client credentials (RFC 6749 §4.4): the service acts on its own behalf.
    ClientCredentials,
    /// Resource owner password credentials (RFC 6749 §4.3). **Legacy**: RFC 9700 says not to use
    /// it; supported because existing servers require it.
    Password {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
    /// A refresh token obtained elsewhere (RFC 6749 §6).
    RefreshToken(Secret),
    /// The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636), through the user's
    /// browser and a loopback listener (feature `oauth2-browser`). Made by
    /// [`TokenProvider::authorization_code`](super::TokenProvider::authorization_code).
    #[cfg(feature = "oauth2-browser")]
    AuthorizationCode(Arc<super::interactive::CodeFlow>),
    /// The implicit grant (RFC 6749 §4.2; OpenID Connect `id_token` and `id_token token`):
    /// discouraged by RFC 9700, here because existing servers require it (feature
    /// `oauth2-browser`). Made by [`TokenProvider::implicit`](super::TokenProvider::implicit).
    #[cfg(feature = "oauth2-browser")]
    Implicit(Arc<super::interactive::CodeFlow>),
    /// The device authorization grant (RFC 8628) for machines without a browser: the user is
    /// shown a URL and a code, and the token endpoint is polled at the server's interval. Made by
    /// [`TokenProvider::device_code`](super::TokenProvider::device_code).
    DeviceCode(Arc<DeviceFlow>),
}

/// How the user is told where to go and which code to enter in a device authorization.
pub type DevicePrompt = dyn Fn(&DeviceInstructions) + Send + Sync;

/// What the user must do to authorise a device: visit `verification_uri` and enter `user_code`
/// (or visit `verification_uri_complete`, which holds the code).
#[derive(Debug, Clone)]
pub struct DeviceInstructions {
    /// Where to go.
    pub verification_uri: String,
    /// The same with the code in it, when the server gives one.
    pub verification_uri_complete: Option<String>,
    /// The code to enter.
    pub user_code: String,
    /// How long the code is valid.
    pub expires_in: Duration,
}

/// The configuration of a device authorization flow.
#[derive(Clone)]
pub struct DeviceFlow {
    pub(crate) device_url: String,
    pub(crate) prompt: Arc<DevicePrompt>,
}

impl fmt::Debug for DeviceFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceFlow").field("device_url", &self.device_url).finish_non_exhaustive()
    }
}

impl DeviceFlow {
    pub(crate) fn new(device_url: String) -> Self {
        let prompt: Arc<DevicePrompt> = Arc::new(|i: &DeviceInstructions| match &i.verification_uri_complete {
            Some(complete) => eprintln!(
                "To authorise this device, open {complete}\n(or open {} and enter the code {})",
                i.verification_uri, i.user_code
            ),
            None => {
                eprintln!("To authorise this device, open {} and enter the code {}", i.verification_uri, i.user_code)
            }
        });
        DeviceFlow { device_url, prompt }
    }
}

impl Grant {
    /// The `grant_type` name.
    pub fn name(&self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::Password { .. } => "password",
            Grant::RefreshToken(_) => "refresh_token",
            #[cfg(feature = "oauth2-browser")]
            Grant::AuthorizationCode(_) => "authorization_code",
            #[cfg(feature = "oauth2-browser")]
            Grant::Implicit(_) => "implicit",
            Grant::DeviceCode(_) => "urn:ietf:params:oauth:grant-type:device_code",
        }
    }

    /// Whether obtaining a token involves the user (then failures are not retried by
    /// themselves, and a refused refresh token leads back to the user).
    pub(crate) fn is_interactive(&self) -> bool {
        #[cfg(feature = "oauth2-browser")]
        if let Grant::AuthorizationCode(_) | Grant::Implicit(_) = self {
            return true;
        }
        matches!(self, Grant::DeviceCode(_))
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::ClientCredentials => f.write_str("ClientCredentials"),
            Grant::Password { user, .. } => {
                f.debug_struct("Password").field("user", user).field("password", &"[redacted]").finish()
            }
            Grant::RefreshToken(_) => f.write_str("RefreshToken([redacted])"),
            #[cfg(feature = "oauth2-browser")]
            Grant::AuthorizationCode(flow) => f.debug_tuple("AuthorizationCode").field(flow).finish(),
            #[cfg(feature = "oauth2-browser")]
            Grant::Implicit(flow) => f.debug_tuple("Implicit").field(flow).finish(),
            Grant::DeviceCode(flow) => f.debug_tuple("DeviceCode").field(flow).finish(),
        }
    }
}

/// Why a token could not be had. Never holds a secret: the server's `error`, `error_description`
/// and `error_uri`, a status, a bounded excerpt of an answer that was not a token (never of a
/// `200` answer, which may hold one), or the transport's error.
#[derive(Debug, Clone)]
pub struct TokenError {
    kind: TokenErrorKind,
}

#[derive(Debug, Clone)]
enum TokenErrorKind {
    /// RFC 6749 §5.2.
    Server {
        status: Option<StatusCode>,
        error: String,
        description: Option<String>,
        uri: Option<String>,
    },
    /// Not an OAuth2 answer.
    Unexpected {
        status: Option<StatusCode>,
        excerpt: String,
        retry_after: Option<Duration>,
    },
    /// A `200` answer without the token field.
    MissingToken {
        field: String,
    },
    Transport(Arc<str>),
    Timeout(Duration),
    Config(String),
    /// The user's authorisation failed (denied, a wrong state or issuer, no answer in time, a
    /// device code that expired) or its id_token was refused.
    Authorization(String),
}

impl TokenError {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        TokenError { kind: TokenErrorKind::Config(message.into()) }
    }

    /// The server's OAuth2 `error` code, if it sent one (`invalid_client`, `invalid_grant`…).
    pub fn oauth2_error(&self) -> Option<&str> {
        match &self.kind {
            TokenErrorKind::Server { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The HTTP status of the token endpoint's answer, if there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.kind {
            TokenErrorKind::Server { status, .. } | TokenErrorKind::Unexpected { status, .. } => *status,
            _ => None,
        }
    }

    /// Whether the token endpoint refused a refresh token: `invalid_grant` (RFC 6749 §5.2), or a
    /// bare `400` without an OAuth2 body, which some servers (Glewlwyd) give a revoked refresh
    /// token. The provider then authorises again with its grant (the browser, a password).
    pub(crate) fn refresh_token_refused(&self) -> bool {
        match &self.kind {
            TokenErrorKind::Server { error, .. } => error == "invalid_grant",
            TokenErrorKind::Unexpected { status, .. } => *status == Some(StatusCode::BAD_REQUEST),
            _ => false,
        }
    }

    /// Whether retrying cannot help until the configuration changes: `invalid_client`,
    /// `invalid_grant`, `unauthorized_client`, `invalid_scope`, `unsupported_grant_type`, or a
    /// configuration mistake. Everything else (5xx, 429, timeouts, connection errors, answers
    /// that are not OAuth2) is transient and retried with backoff.
    pub fn is_permanent(&self) -> bool {
        match &self.kind {
            TokenErrorKind::Server { error, .. } => matches!(
                error.as_str(),
                "invalid_client" | "invalid_grant" | "unauthorized_client" | "invalid_scope" | "unsupported_grant_type"
            ),
            TokenErrorKind::Config(_) | TokenErrorKind::Authorization(_) => true,
            // A client error without an OAuth2 body (some servers answer a bad client with a
            // bare 401 or 403): retrying the same request cannot help. 408 and 429 can.
            TokenErrorKind::Unexpected { status: Some(status), .. } => {
                status.is_client_error()
                    && *status != StatusCode::REQUEST_TIMEOUT
                    && *status != StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// Whether the server may have refused the client's credentials (an OAuth2
    /// `invalid_client`, or a bare 400/401/403).
    fn may_be_client_auth(&self) -> bool {
        match &self.kind {
            TokenErrorKind::Server { error, .. } => error == "invalid_client" || error == "unauthorized_client",
            TokenErrorKind::Unexpected { status: Some(s), .. } => {
                *s == StatusCode::UNAUTHORIZED || *s == StatusCode::FORBIDDEN || *s == StatusCode::BAD_REQUEST
            }
            _ => false,
        }
    }

    /// A server's `Retry-After` (on a 429 or 503), when it sent one in seconds.
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            TokenErrorKind::Unexpected { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TokenErrorKind::Server { status, error, description, uri } => {
                write!(f, "the token endpoint refused")?;
                if let Some(status) = status {
                    write!(f, " ({})", status.as_u16())?;
                }
                write!(f, ": {error}")?;
                if let Some(d) = description {
                    write!(f, ": {d}")?;
                }
                if let Some(u) = uri {
                    write!(f, " (see {u})")?;
                }
                Ok(())
            }
            TokenErrorKind::Unexpected { status, excerpt, .. } => {
                write!(f, "the token endpoint's answer is not an OAuth2 token response")?;
                if let Some(status) = status {
                    write!(f, " (status {})", status.as_u16())?;
                }
                if !excerpt.is_empty() {
                    write!(f, ": {excerpt:?}")?;
                }
                Ok(())
            }
            TokenErrorKind::MissingToken { field } => {
                write!(f, "the token endpoint's answer has no `{field}` field")
            }
            TokenErrorKind::Transport(e) => write!(f, "the token request failed: {e}"),
            TokenErrorKind::Timeout(d) => write!(f, "the token endpoint did not answer within {} s", d.as_secs_f32()),
            TokenErrorKind::Config(m) => f.write_str(m),
            TokenErrorKind::Authorization(m) => write!(f, "the authorization failed: {m}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// `token_type`, whatever the server calls it (some omit it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct AnyTokenType(String);

impl oauth2::TokenType for AnyTokenType {}

/// A token answer as servers really send them.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct TokenAnswer {
    #[serde(default = "no_token")]
    access_token: AccessToken,
    #[serde(default)]
    token_type: AnyTokenType,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
    #[serde(default)]
    refresh_in: Option<serde_json::Value>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

fn no_token() -> AccessToken {
    AccessToken::new(String::new())
}

impl fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("token_type", &self.token_type.0)
            .field("expires_in", &self.expires_in)
            .field("refresh_in", &self.refresh_in)
            .field("fields", &self.extra.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Seconds from a JSON number or a numeric string; `None` if absent or not a number.
fn seconds(value: Option<&serde_json::Value>) -> Option<i64> {
    match value? {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    }
}

impl oauth2::TokenResponse for TokenAnswer {
    type TokenType = AnyTokenType;
    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &AnyTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        seconds(self.expires_in.as_ref()).and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        None
    }
}

/// What a successful token request gave.
pub(crate) struct Issued {
    pub(crate) token: Secret,
    /// `expires_in` as sent (seconds; may be absent, negative or absurd).
    pub(crate) expires_in: Option<i64>,
    pub(crate) refresh_in: Option<i64>,
    pub(crate) refresh_token: Option<Secret>,
}

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The tower service token requests go through, erased.
pub(crate) trait Send1: Send + Sync + 'static {
    fn send(&self, req: Request<Vec<u8>>) -> BoxFuture<Result<Response<Vec<u8>>, BoxError>>;
}

struct ServiceTransport<S>(S);

impl<S, RB> Send1 for ServiceTransport<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    fn send(&self, req: Request<Vec<u8>>) -> BoxFuture<Result<Response<Vec<u8>>, BoxError>> {
        let mut svc = self.0.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await.map_err(Into::into)?;
            let res = svc.call(req.map(|b| Full::new(Bytes::from(b)))).await.map_err(Into::into)?;
            let (parts, body) = res.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok(Response::from_parts(parts, body.to_vec()))
        })
    }
}

/// A tower service that token (and metadata) requests can go through: any `Clone` service from
/// `Request<Full<Bytes>>` to `Response<B>` whose futures are `Send` — a hyper-util
/// `Client<_, Full<Bytes>>`, usually without the auth layer and without a redirect follower.
/// Implemented for every such service; the bounds live here once.
pub trait TokenClient: Clone + Send + Sync + 'static {
    /// The service, erased for the provider.
    #[doc(hidden)]
    fn into_transport(self) -> Transport;
}

/// A [`TokenClient`], erased.
#[doc(hidden)]
#[derive(Clone)]
pub struct Transport(pub(crate) Arc<dyn Send1>);

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Transport")
    }
}

impl<S, RB> TokenClient for S
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    fn into_transport(self) -> Transport {
        Transport(Arc::new(ServiceTransport(self)))
    }
}

/// The token endpoint of one client configuration.
pub(crate) struct Endpoint {
    client: OAuthClient,
    /// For `client_secret_basic` with an id or secret that form-urlencoding changes: the same
    /// client with `client_secret_post`, for servers that do not decode Basic credentials as
    /// RFC 6749 §2.3.1 says (Glewlwyd 2.7 among them). Used once Basic was refused.
    post_fallback: Option<OAuthClient>,
    use_post: std::sync::atomic::AtomicBool,
    assertion: Option<Assertion>,
    transport: Arc<dyn Send1>,
    timeout: Duration,
    pub(crate) url: String,
    pub(crate) client_id: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// What the provider asks of the endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params {
    pub(crate) scopes: Vec<String>,
    pub(crate) audience: Option<String>,
    pub(crate) resources: Vec<String>,
    pub(crate) extra: Vec<(String, String)>,
    pub(crate) token_field: String,
}

/// The adapter `oauth2` calls, recording what its errors lose: the status and `Retry-After`.
struct Call<'a> {
    endpoint: &'a Endpoint,
    seen: Mutex<Option<(StatusCode, Option<Duration>)>>,
}

#[derive(Debug)]
struct CallError(BoxError);

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for CallError {}

impl<'c> AsyncHttpClient<'c> for Call<'_> {
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, CallError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        let send = self.endpoint.transport.send(request);
        let timeout = self.endpoint.timeout;
        Box::pin(async move {
            let res = match tokio::time::timeout(timeout, send).await {
                Ok(res) => res.map_err(CallError)?,
                Err(_) => return Err(CallError(Box::new(Elapsed(timeout)))),
            };
            let retry_after = res
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((res.status(), retry_after));
            Ok(res)
        })
    }
}

/// The token endpoint as the device grant's polling loop sees it: a 5xx or 429 answer is an
/// error of the connection's kind, so that the `oauth2` crate's loop backs off (it doubles the
/// interval after a failed request, RFC 8628 §3.5) and polls on, instead of ending the attempt
/// on an answer that is not OAuth2. Time-outs and connection errors are already such errors.
struct PollCall<'a>(&'a Call<'a>);

impl<'c> AsyncHttpClient<'c> for PollCall<'_> {
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, CallError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            match self.0.call(request).await {
                Ok(res) if res.status().is_server_error() || res.status() == StatusCode::TOO_MANY_REQUESTS => {
                    tracing::warn!(status = %res.status(), "the token endpoint failed while polling for the device's token; polling on, less often");
                    Err(CallError(format!("the token endpoint answered {}", res.status()).into()))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "polling for the device's token failed; polling on, less often");
                    Err(e)
                }
                ok => ok,
            }
        })
    }
}

#[derive(Debug)]
struct Elapsed(Duration);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no answer within {} s", self.0.as_secs_f32())
    }
}

impl std::error::Error for Elapsed {}

impl Endpoint {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        url: &str,
        client_id: &str,
        secret: Option<&Secret>,
        auth: ClientAuth,
        assertion: Option<Assertion>,
        transport: Transport,
        timeout: Duration,
    ) -> Result<Self, TokenError> {
        let token_url =
            TokenUrl::new(url.to_owned()).map_err(|e| TokenError::config(format!("invalid token URL {url:?}: {e}")))?;
        let mut client = oauth2::Client::new(ClientId::new(client_id.to_owned()))
            .set_token_uri(token_url)
            .set_auth_type(match auth {
                ClientAuth::Basic => AuthType::BasicAuth,
                ClientAuth::Post | ClientAuth::None | ClientAuth::PrivateKeyJwt => AuthType::RequestBody,
            });
        if auth == ClientAuth::PrivateKeyJwt && assertion.is_none() {
            return Err(TokenError::config("private_key_jwt needs a private key (ProviderBuilder::private_key_jwt)"));
        }
        if auth == ClientAuth::Basic || auth == ClientAuth::Post {
            match secret {
                Some(secret) => client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned())),
                None => {
                    return Err(TokenError::config(
                        "client authentication needs a client secret (or choose ClientAuth::None for a public client)",
                    ));
                }
            }
        }
        let changed_by_encoding = |s: &str| form_encoded(s) != s;
        let post_fallback = match (auth, secret) {
            (ClientAuth::Basic, Some(secret))
                if changed_by_encoding(client_id) || changed_by_encoding(secret.expose()) =>
            {
                Some(client.clone().set_auth_type(AuthType::RequestBody))
            }
            _ => None,
        };
        Ok(Endpoint {
            client,
            post_fallback,
            use_post: std::sync::atomic::AtomicBool::new(false),
            assertion: if auth == ClientAuth::PrivateKeyJwt { assertion } else { None },
            transport: transport.0,
            timeout,
            url: url.to_owned(),
            client_id: client_id.to_owned(),
        })
    }

    /// One token request (two when a Basic client authentication that form-urlencoding changes
    /// is refused: then `client_secret_post`, kept if it works).
    pub(crate) async fn request(&self, grant: &Grant, params: &Params) -> Result<Issued, TokenError> {
        #[cfg(feature = "oauth2-browser")]
        if let Grant::Implicit(flow) = grant {
            // No token endpoint: the token comes back through the browser.
            let got = flow
                .implicit(&self.client_id, &params.scopes)
                .await
                .map_err(|e| TokenError { kind: TokenErrorKind::Authorization(e.to_string()) })?;
            let token = got.get(&params.token_field).cloned().unwrap_or_default();
            if token.is_empty() {
                return Err(TokenError { kind: TokenErrorKind::MissingToken { field: params.token_field.clone() } });
            }
            return Ok(Issued {
                token: Secret::new(token),
                expires_in: got.get("expires_in").and_then(|s| s.trim().parse::<f64>().ok()).map(|f| f as i64),
                refresh_in: None,
                refresh_token: None,
            });
        }
        use std::sync::atomic::Ordering;
        let Some(post) = &self.post_fallback else {
            return self.request_with(&self.client, grant, params).await;
        };
        if self.use_post.load(Ordering::Relaxed) {
            return self.request_with(post, grant, params).await;
        }
        match self.request_with(&self.client, grant, params).await {
            Err(e) if e.may_be_client_auth() => {
                let retried = self.request_with(post, grant, params).await;
                if retried.is_ok() {
                    self.use_post.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        token_url = %self.url,
                        "the token endpoint refused client_secret_basic with form-urlencoded credentials (RFC 6749 §2.3.1) and accepted client_secret_post; client_secret_post is used from now on"
                    );
                }
                retried
            }
            other => other,
        }
    }

    async fn request_with(&self, client: &OAuthClient, grant: &Grant, params: &Params) -> Result<Issued, TokenError> {
        let call = Call { endpoint: self, seen: Mutex::new(None) };
        let assertion = match &self.assertion {
            Some(a) => Some(a.sign(&self.client_id)?),
            None => None,
        };
        macro_rules! add_params {
            ($req:expr) => {{
                let mut req = $req;
                for scope in &params.scopes {
                    req = req.add_scope(Scope::new(scope.clone()));
                }
                if let Some(audience) = &params.audience {
                    req = req.add_extra_param("audience", audience.clone());
                }
                for resource in &params.resources {
                    req = req.add_extra_param("resource", resource.clone());
                }
                for (name, value) in &params.extra {
                    req = req.add_extra_param(name.clone(), value.clone());
                }
                if let Some(assertion) = &assertion {
                    req = req
                        .add_extra_param(
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        )
                        .add_extra_param("client_assertion", assertion.clone());
                }
                req.request_async(&call).await
            }};
        }
        let answer = match grant {
            Grant::ClientCredentials => add_params!(client.exchange_client_credentials()),
            Grant::Password { user, password } => {
                let user = ResourceOwnerUsername::new(user.clone());
                let password = ResourceOwnerPassword::new(password.expose().to_owned());
                add_params!(client.exchange_password(&user, &password))
            }
            Grant::RefreshToken(rt) => {
                let rt = RefreshToken::new(rt.expose().to_owned());
                add_params!(client.exchange_refresh_token(&rt))
            }
            #[cfg(feature = "oauth2-browser")]
            Grant::AuthorizationCode(flow) => {
                let granted = flow
                    .authorize(&self.client_id, &params.scopes)
                    .await
                    .map_err(|e| TokenError { kind: TokenErrorKind::Authorization(e.to_string()) })?;
                let redirect = oauth2::RedirectUrl::new(granted.redirect_uri.clone())
                    .map_err(|e| TokenError::config(format!("invalid redirect URI: {e}")))?;
                // The code came from the user: a server error or a lost connection during the
                // exchange is tried twice more (250 ms, then 1 s) before the user is asked again.
                // A code the server did consume is then refused (invalid_grant), never used twice.
                let mut attempt = 0u32;
                let answer = loop {
                    let mut req = client
                        .exchange_code(oauth2::AuthorizationCode::new(granted.code.clone()))
                        .set_pkce_verifier(oauth2::PkceCodeVerifier::new(granted.verifier.secret().clone()))
                        .set_redirect_uri(std::borrow::Cow::Owned(redirect.clone()));
                    for (name, value) in &params.extra {
                        req = req.add_extra_param(name.clone(), value.clone());
                    }
                    // A fresh assertion (its own jti) per attempt.
                    let assertion = match (&self.assertion, attempt) {
                        (Some(a), 1..) => Some(a.sign(&self.client_id)?),
                        _ => assertion.clone(),
                    };
                    if let Some(assertion) = &assertion {
                        req = req
                            .add_extra_param(
                                "client_assertion_type",
                                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                            )
                            .add_extra_param("client_assertion", assertion.clone());
                    }
                    let answer = req.request_async(&call).await;
                    let status = call.seen.lock().unwrap_or_else(|p| p.into_inner()).map(|(s, _)| s);
                    let transient = match &answer {
                        Ok(_) => false,
                        Err(RequestTokenError::Request(_)) => true,
                        Err(_) => status.is_some_and(|s| s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS),
                    };
                    if !transient || attempt == 2 {
                        break answer;
                    }
                    attempt += 1;
                    tracing::warn!(status = ?status, attempt, "exchanging the authorization code failed; trying again");
                    tokio::time::sleep(Duration::from_millis(if attempt == 1 { 250 } else { 1000 })).await;
                    *call.seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
                };
                if let (Ok(answer), Some(nonce)) = (&answer, &granted.nonce) {
                    let id_token = answer.extra.get("id_token").and_then(|v| v.as_str()).unwrap_or_default();
                    super::interactive::check_id_token(id_token, nonce, &self.client_id)
                        .map_err(|e| TokenError { kind: TokenErrorKind::Authorization(e) })?;
                }
                answer
            }
            #[cfg(feature = "oauth2-browser")]
            Grant::Implicit(_) => return Err(TokenError::config("the implicit grant makes no token request")),
            Grant::DeviceCode(flow) => {
                let device_url = oauth2::DeviceAuthorizationUrl::new(flow.device_url.clone())
                    .map_err(|e| TokenError::config(format!("invalid device authorization URL: {e}")))?;
                let device_client = client.clone().set_device_authorization_url(device_url);
                let mut req = device_client.exchange_device_code();
                for scope in &params.scopes {
                    req = req.add_scope(Scope::new(scope.clone()));
                }
                let details: oauth2::StandardDeviceAuthorizationResponse =
                    req.request_async(&call).await.map_err(|e| {
                        let seen = *call.seen.lock().unwrap_or_else(|p| p.into_inner());
                        classify(e, seen.map(|(s, _)| s), None, self.timeout)
                    })?;
                (flow.prompt)(&DeviceInstructions {
                    verification_uri: details.verification_uri().to_string(),
                    verification_uri_complete: details.verification_uri_complete().map(|u| u.secret().clone()),
                    user_code: details.user_code().secret().clone(),
                    expires_in: details.expires_in(),
                });
                tracing::info!(verification_uri = %details.verification_uri().as_str(), "waiting for the user to authorise this device");
                // Failed polls double the interval up to a minute (the crate's default ceiling,
                // 10 s, is below some servers' own interval, which then answer slow_down).
                let polled = device_client
                    .exchange_device_access_token(&details)
                    .set_max_backoff_interval(details.interval().max(Duration::from_secs(60)))
                    .request_async(&PollCall(&call), tokio::time::sleep, None)
                    .await;
                match polled {
                    Ok(answer) => Ok(answer),
                    Err(RequestTokenError::ServerResponse(e)) => {
                        let what = match e.error().as_ref() {
                            "access_denied" => "the user refused the device".to_owned(),
                            "expired_token" => "the device code expired before the user authorised it".to_owned(),
                            other => other.to_owned(),
                        };
                        return Err(TokenError { kind: TokenErrorKind::Authorization(what) });
                    }
                    Err(RequestTokenError::Request(e)) => Err(RequestTokenError::Request(e)),
                    Err(RequestTokenError::Parse(e, body)) => Err(RequestTokenError::Parse(e, body)),
                    Err(RequestTokenError::Other(m)) => Err(RequestTokenError::Other(m)),
                }
            }
        };
        let seen = *call.seen.lock().unwrap_or_else(|p| p.into_inner());
        let status = seen.map(|(s, _)| s);
        let answer = answer.map_err(|e| classify(e, status, seen.and_then(|(_, r)| r), self.timeout))?;
        let token = if params.token_field == "access_token" {
            answer.access_token.secret().clone()
        } else {
            answer.extra.get(&params.token_field).and_then(|v| v.as_str()).unwrap_or_default().to_owned()
        };
        if token.is_empty() {
            return Err(TokenError { kind: TokenErrorKind::MissingToken { field: params.token_field.clone() } });
        }
        if !answer.token_type.0.is_empty() && !answer.token_type.0.eq_ignore_ascii_case("bearer") {
            tracing::debug!(token_type = %answer.token_type.0, "the token endpoint issued a token that is not a Bearer token; sent as configured");
        }
        Ok(Issued {
            token: Secret::new(token),
            expires_in: seconds(answer.expires_in.as_ref()),
            refresh_in: seconds(answer.refresh_in.as_ref()),
            refresh_token: answer.refresh_token.map(|rt| Secret::new(rt.secret().clone())),
        })
    }
}

/// An error and its causes, each once (a certificate refused deep in a TLS stack included).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// `application/x-www-form-urlencoded` of one value.
fn form_encoded(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, FORM).to_string().replace("%20", "+")
}

/// What form-urlencoding leaves as it is: alphanumerics and `*-._`.
const FORM: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'*').remove(b'-').remove(b'.').remove(b'_');

fn classify(
    err: RequestTokenError<CallError, BasicErrorResponse>,
    status: Option<StatusCode>,
    retry_after: Option<Duration>,
    timeout: Duration,
) -> TokenError {
    let kind = match err {
        RequestTokenError::ServerResponse(e) => TokenErrorKind::Server {
            status,
            error: e.error().as_ref().to_owned(),
            description: e.error_description().cloned(),
            uri: e.error_uri().cloned(),
        },
        RequestTokenError::Request(CallError(e)) if e.is::<Elapsed>() => TokenErrorKind::Timeout(timeout),
        RequestTokenError::Request(CallError(e)) => TokenErrorKind::Transport(Arc::from(chain(&*e))),
        RequestTokenError::Parse(_, body) => {
            // Never quote a 200 answer: it may hold a token.
            let excerpt = if status == Some(StatusCode::OK) {
                String::new()
            } else {
                let text = String::from_utf8_lossy(&body);
                text.chars().take(EXCERPT).collect()
            };
            TokenErrorKind::Unexpected { status, excerpt, retry_after }
        }
        RequestTokenError::Other(message) => {
            TokenErrorKind::Unexpected { status, excerpt: message.chars().take(EXCERPT).collect(), retry_after }
        }
    };
    TokenError { kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_from_numbers_and_strings() {
        use serde_json::json;
        assert_eq!(seconds(Some(&json!(3600))), Some(3600));
        assert_eq!(seconds(Some(&json!("3600"))), Some(3600));
        assert_eq!(seconds(Some(&json!(" 59.9 "))), Some(59));
        assert_eq!(seconds(Some(&json!(-5))), Some(-5));
        assert_eq!(seconds(Some(&json!("soon"))), None);
        assert_eq!(seconds(None), None);
    }

    #[test]
    fn permanent_and_transient_errors() {
        let server = |e: &str| TokenError {
            kind: TokenErrorKind::Server {
                status: Some(StatusCode::BAD_REQUEST),
                error: e.into(),
                description: Some("d".into()),
                uri: None,
            },
        };
        for e in ["invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope"] {
            assert!(server(e).is_permanent(), "{e}");
        }
        assert!(!server("temporarily_unavailable").is_permanent());
        assert!(!TokenError { kind: TokenErrorKind::Timeout(Duration::from_secs(1)) }.is_permanent());
        assert_eq!(server("invalid_client").to_string(), "the token endpoint refused (400): invalid_client: d");
    }
}
