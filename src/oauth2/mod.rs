//! OAuth2 for services (feature `oauth2`): a token provider refreshed in the background and
//! shared lock-free, and the [`OAuth2`] scheme that puts its token on every request.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_auth::AuthLayer;
//! use tower_auth::oauth2::TokenProvider;
//! # let idp = tower::service_fn(|req: http::Request<Full<Bytes>>| async move {
//! #     assert_eq!(req.uri(), "https://idp.example/token");
//! #     let body = r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600}"#;
//! #     Ok::<_, std::convert::Infallible>(
//! #         http::Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(body))).unwrap())
//! # });
//! # let api = tower::service_fn(|req: http::Request<tower_auth::ReplayBody<Full<Bytes>>>| async move {
//! #     assert_eq!(req.headers()["authorization"], "Bearer at-1");
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
//! # });
//!
//! // Token requests go through a client you give (usually the same hyper-util client, without
//! // the auth layer and without a redirect follower).
//! let provider = TokenProvider::client_credentials("https://idp.example/token", "svc-a", "s3cret")
//!     .scope("orders:read")
//!     .build(idp)?;
//! let svc = ServiceBuilder::new().layer(AuthLayer::oauth2(provider.clone())).service(api);
//! let res = svc.oneshot(http::Request::get("https://api.example/orders").body(Full::new(Bytes::new()))?).await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(provider.stats().token_requests(), 1);
//! # Ok(()) }
//! ```
//!
//! # How the token is shared
//!
//! - The current token sits in an `arc-swap` slot: a request reads it without a lock, and goes
//!   at once while the token is usable.
//! - One background task fetches: N callers waiting at a cold start, or at expiry, cause one
//!   token request (single flight). It replaces the token *before* it expires — at the earlier of
//!   the early expiry (default 30 s before, as requests_auth; 0 is honoured) and a fraction of the
//!   lifetime (default 0.8), minus random jitter, or the server's `refresh_in` — so requests do
//!   not wait for refreshes.
//! - A failed refresh never takes away a usable token: requests keep it while the task retries
//!   with exponential backoff and jitter (honouring `Retry-After`). Requests fail with a typed
//!   error only when no usable token is left. Permanent errors (`invalid_client`,
//!   `invalid_grant`, `unauthorized_client`, `invalid_scope`) stop the retries; transient ones
//!   (5xx, 429, timeouts, connection errors) are retried until the server is back.
//! - A `401` from the resource server (any challenge but `insufficient_scope`), or a gRPC
//!   `grpc-status: 16`, invalidates exactly the token that request carried (compare, then swap:
//!   50 rejections of one token cause one token request); the request is sent again once when
//!   the scheme replays ([`OAuth2`], the default), and the next call gets a new token in front of
//!   a tonic `Channel` ([`OAuth2::once`]). A `403` never invalidates.
//! - The task ends when the last handle ([`TokenProvider`], or a layer holding it) is dropped.
//!   Time is tokio's: tests run on a paused clock.
//! - With a [store](ProviderBuilder::store), tokens outlive the provider or are shared beyond
//!   it: [`MemoryStore`] (the providers of one process), `FileStore` (a JSON file, across
//!   restarts and processes of one machine), `RedisStore` (feature `redis`: N replicas of a
//!   service, one token request per renewal for all of them, through a lease in Redis).
//!
//! # Grants
//!
//! Client credentials ([`TokenProvider::client_credentials`]) with `client_secret_basic` (the
//! default; id and secret form-urlencoded first, as RFC 6749 §2.3.1 says), `client_secret_post`
//! or none ([`ClientAuth`]); resource owner password ([`TokenProvider::password`], legacy); a
//! refresh token ([`TokenProvider::refresh_token`]). A refresh token the server returns is used
//! for the next token (one writer: a rotated refresh token is never used twice); a password grant
//! whose refresh token is refused logs in again. Scopes, `audience`, `resource` (RFC 8707,
//! repeatable) and extra parameters are sent as given. `private_key_jwt`
//! ([`ProviderBuilder::private_key_jwt`]) and discovery ([`ProviderBuilder::discover`]) are
//! built in.
//!
//! For people rather than services (feature `oauth2-browser`): the authorization code grant with
//! PKCE through the user's browser and a loopback listener
//! (`TokenProvider::authorization_code`), the implicit grant (`TokenProvider::implicit`,
//! discouraged), and the device grant ([`TokenProvider::device_code`], any feature). They run in
//! the provider's one task, so a burst of requests asks the user once; [`presets`] has Okta,
//! Microsoft Entra ID and WakaTime. `testing::idp::FakeIdp`, `testing::BrowserMock` and
//! `testing::token` test all of it without a real server.
//!
//! # Written here, and why
//!
//! The token requests are the `oauth2` crate's. Written here: the provider (no crate shares a
//! token lock-free with single-flight background refresh: requests_auth, yup-oauth2, gcp_auth and
//! golang.org/x/oauth2 make N requests or queue behind one lock), the adapter from a tower service
//! to `oauth2::AsyncHttpClient`, and a token answer type lenient where servers are (`expires_in`
//! as a string, `refresh_in`, another token field).
//!
//! # Security
//!
//! No token, secret or refresh token appears in `Debug`, `Display`, an error or a log line.
//! The header is marked sensitive; a caller's own `Authorization` header wins.

mod browser;
mod discovery;
mod endpoint;
#[cfg(unix)]
mod file_store;
#[cfg(feature = "oauth2-browser")]
pub(crate) mod interactive;
pub mod presets;

/// The wall clock that moves with tokio's clock (for the `testing` helpers).
#[cfg(feature = "testing")]
pub(crate) fn wall_now_for_tests() -> std::time::SystemTime {
    store::wall_now()
}
mod provider;
#[cfg(feature = "redis")]
mod redis_store;
mod store;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, StatusCode};

pub use self::browser::{Browser, PrintUrl, SystemBrowser};
pub use self::discovery::Metadata;
use self::endpoint::{Assertion, Endpoint, Params};
pub use self::endpoint::{
    ClientAuth, DeviceFlow, DeviceInstructions, DevicePrompt, Grant, JwtAlgorithm, PrivateKey, TokenClient, TokenError,
    Transport,
};
#[cfg(unix)]
pub use self::file_store::{FileStore, FileStoreError};
#[cfg(feature = "oauth2-browser")]
pub use self::interactive::{CodeFlow, DisplaySettings, RedirectHost};
use self::provider::Timing;
pub use self::provider::{ProviderStats, Token, TokenProvider};
#[cfg(feature = "redis")]
pub use self::redis_store::{RedisStore, RedisStoreBuilder, RedisStoreError};
pub use self::store::{CacheKey, Lease, MemoryStore, StoreFuture, StoredToken, TokenStore};
use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize};
use crate::combine::BoxWait;
use crate::engine::{BodyMode, Once, Replay};
use crate::error::{ConfigError, Error};
use crate::layer::AuthLayer;
use crate::secret::Secret;

/// What the implicit grant asks for (`response_type`).
#[cfg(feature = "oauth2-browser")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImplicitResponse {
    /// `token`: an access token.
    AccessToken,
    /// `id_token`: an OpenID Connect id_token, sent as the token.
    IdToken,
    /// `id_token token`: both; the access token is sent.
    IdTokenAndAccessToken,
}

/// Builds a [`TokenProvider`]: made by [`TokenProvider::client_credentials`],
/// [`TokenProvider::password`] and [`TokenProvider::refresh_token`].
#[derive(Debug)]
pub struct ProviderBuilder {
    url: String,
    client_id: String,
    secret: Option<Secret>,
    auth: ClientAuth,
    auth_set: bool,
    private_key: Option<PrivateKey>,
    assertion_audience: Option<String>,
    issuer: Option<String>,
    #[cfg(feature = "oauth2-browser")]
    flow: Option<interactive::CodeFlow>,
    #[cfg(feature = "oauth2-browser")]
    implicit: bool,
    grant: Grant,
    params: Params,
    timing: Timing,
    timeout: Duration,
    store: Option<Arc<dyn TokenStore>>,
}

impl std::fmt::Debug for dyn TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenStore")
    }
}

impl TokenProvider {
    /// Client credentials (RFC 6749 §4.4), authenticated with `client_secret_basic` unless
    /// [`client_auth`](ProviderBuilder::client_auth) says otherwise.
    pub fn client_credentials(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl AsRef<str>,
    ) -> ProviderBuilder {
        ProviderBuilder::new(token_url.into(), client_id.into(), Some(client_secret.as_ref()), Grant::ClientCredentials)
    }

    /// Resource owner password credentials (RFC 6749 §4.3). **Legacy**: RFC 9700 says not to
    /// use this grant; it is here for existing servers that require it. Give the client secret
    /// with [`client_secret`](ProviderBuilder::client_secret) for a confidential client.
    pub fn password(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        user: impl Into<String>,
        password: impl AsRef<str>,
    ) -> ProviderBuilder {
        let grant = Grant::Password { user: user.into(), password: Secret::new(password.as_ref()) };
        let mut builder = ProviderBuilder::new(token_url.into(), client_id.into(), None, grant);
        builder.auth = ClientAuth::None;
        builder
    }

    /// The authorization code grant with PKCE for native applications (RFC 6749 §4.1, RFC 7636,
    /// RFC 8252; feature `oauth2-browser`): the user authorises in their browser, which comes
    /// back to a loopback listener on 127.0.0.1 (port 5000 unless
    /// [`redirect_port`](ProviderBuilder::redirect_port) says otherwise). A public client by
    /// default; give [`client_secret`](ProviderBuilder::client_secret) for a confidential one
    /// (it goes to the token endpoint only, never into the browser URL).
    #[cfg(feature = "oauth2-browser")]
    pub fn authorization_code(
        authorization_url: impl Into<String>,
        token_url: impl Into<String>,
        client_id: impl Into<String>,
    ) -> ProviderBuilder {
        let flow = interactive::CodeFlow::new(authorization_url.into(), Arc::new(SystemBrowser));
        let mut builder = ProviderBuilder::new(token_url.into(), client_id.into(), None, Grant::ClientCredentials);
        builder.auth = ClientAuth::None;
        builder.flow = Some(flow);
        // A request waits for the user (the flow has its own timeout, 60 s by default).
        builder.timing.wait_timeout = Duration::from_secs(180);
        builder
    }

    /// The implicit grant (RFC 6749 §4.2, OpenID Connect): the token comes back through the
    /// browser, in the URL fragment (a page of the listener posts it back) or by `form_post`.
    /// **Discouraged** by RFC 9700 (tokens in the browser's history, no refresh token): here
    /// because existing servers require it. Each new token asks the user again, when a request
    /// needs it (never in the background). A `nonce` is sent and an id_token checked against it
    /// (`nonce`, `aud`, `exp`). Feature `oauth2-browser`.
    #[cfg(feature = "oauth2-browser")]
    pub fn implicit(
        authorization_url: impl Into<String>,
        client_id: impl Into<String>,
        response: ImplicitResponse,
    ) -> ProviderBuilder {
        let auth_url = authorization_url.into();
        let mut flow = interactive::CodeFlow::new(auth_url.clone(), Arc::new(SystemBrowser));
        flow.response_type = match response {
            ImplicitResponse::AccessToken => "token",
            ImplicitResponse::IdToken => "id_token",
            ImplicitResponse::IdTokenAndAccessToken => "id_token token",
        }
        .into();
        let mut builder = ProviderBuilder::new(auth_url, client_id.into(), None, Grant::ClientCredentials);
        builder.auth = ClientAuth::None;
        builder.implicit = true;
        if response == ImplicitResponse::IdToken {
            builder.params.token_field = "id_token".into();
        }
        builder.flow = Some(flow);
        builder.timing.wait_timeout = Duration::from_secs(180);
        builder
    }

    /// The device authorization grant (RFC 8628), for machines without a browser: the user is
    /// shown a URL and a code (on stderr unless [`device_prompt`](ProviderBuilder::device_prompt)
    /// says otherwise), and the token endpoint is polled at the server's interval
    /// (`authorization_pending`, `slow_down`: 5 s more for this and later polls; `expired_token`
    /// and `access_denied` end the attempt with a typed error). A public client by default.
    pub fn device_code(
        device_authorization_url: impl Into<String>,
        token_url: impl Into<String>,
        client_id: impl Into<String>,
    ) -> ProviderBuilder {
        let grant = Grant::DeviceCode(Arc::new(endpoint::DeviceFlow::new(device_authorization_url.into())));
        let mut builder = ProviderBuilder::new(token_url.into(), client_id.into(), None, grant);
        builder.auth = ClientAuth::None;
        // A request waits for the user, at most as long as device codes usually live.
        builder.timing.wait_timeout = Duration::from_secs(30 * 60);
        builder
    }

    /// Tokens from a refresh token obtained elsewhere (RFC 6749 §6).
    pub fn refresh_token(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        refresh_token: impl AsRef<str>,
    ) -> ProviderBuilder {
        let grant = Grant::RefreshToken(Secret::new(refresh_token.as_ref()));
        let mut builder = ProviderBuilder::new(token_url.into(), client_id.into(), None, grant);
        builder.auth = ClientAuth::None;
        builder
    }
}

impl ProviderBuilder {
    /// Finds the token endpoint in the authorization server's metadata and builds: the URL
    /// given to the constructor is then the **issuer** (`https://idp.example`, or with a path for
    /// a tenant). RFC 8414's `/.well-known/oauth-authorization-server` is tried first, then OpenID
    /// Connect's `/.well-known/openid-configuration`; the metadata's `issuer` must be that issuer
    /// exactly (RFC 8414 §3.3). Metadata is fetched once per issuer and process, through
    /// `service`, and cached. The client authentication method, unless set, is the first the
    /// server supports of `private_key_jwt` (with a key), `client_secret_basic` and
    /// `client_secret_post` (with a secret).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming what failed: the metadata could not be fetched or parsed, names
    /// another issuer, or supports none of the configured methods.
    pub async fn discover(mut self, service: impl TokenClient) -> Result<TokenProvider, ConfigError> {
        let issuer = self.url.clone();
        let metadata = discovery::metadata(&issuer, &service.clone().into_transport().0, self.timeout).await?;
        self.url = metadata.token_endpoint.clone();
        self.issuer = Some(metadata.issuer.clone());
        #[cfg(feature = "oauth2-browser")]
        if let (true, Some(flow)) = (metadata.authorization_response_iss_parameter_supported, &mut self.flow) {
            flow.require_iss = true;
        }
        let methods = metadata.auth_methods();
        let supported = |m: &str| methods.iter().any(|s| s == m);
        if !self.auth_set {
            self.auth = if self.private_key.is_some() && supported("private_key_jwt") {
                ClientAuth::PrivateKeyJwt
            } else if self.secret.is_some() && supported("client_secret_basic") {
                ClientAuth::Basic
            } else if self.secret.is_some() && supported("client_secret_post") {
                ClientAuth::Post
            } else if self.secret.is_none() && self.private_key.is_none() {
                ClientAuth::None
            } else {
                return Err(ConfigError::new(format!(
                    "the authorization server {issuer} supports none of the configured client authentication methods (it lists {methods:?})"
                )));
            };
        }
        self.build(service)
    }

    fn new(url: String, client_id: String, secret: Option<&str>, grant: Grant) -> Self {
        ProviderBuilder {
            url,
            client_id,
            secret: secret.map(Secret::new),
            auth: ClientAuth::Basic,
            auth_set: false,
            private_key: None,
            assertion_audience: None,
            issuer: None,
            #[cfg(feature = "oauth2-browser")]
            flow: None,
            #[cfg(feature = "oauth2-browser")]
            implicit: false,
            grant,
            params: Params { token_field: "access_token".into(), ..Params::default() },
            timing: Timing {
                early_expiry: Duration::from_secs(30),
                refresh_fraction: 0.8,
                default_lifetime: Duration::from_secs(3600),
                wait_timeout: Duration::from_secs(60),
                header_name: http::header::AUTHORIZATION,
                template: "Bearer {token}".into(),
            },
            timeout: Duration::from_secs(60),
            store: None,
        }
    }

    /// The client secret of a confidential client (authenticated with `client_secret_basic`
    /// unless [`client_auth`](ProviderBuilder::client_auth) says otherwise).
    pub fn client_secret(mut self, secret: impl AsRef<str>) -> Self {
        self.secret = Some(Secret::new(secret.as_ref()));
        if self.auth == ClientAuth::None {
            self.auth = ClientAuth::Basic;
        }
        self
    }

    /// How the client authenticates to the token endpoint.
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self.auth_set = true;
        self
    }

    /// Authenticates with `private_key_jwt` (RFC 7523): a fresh JWT signed with `key` for each
    /// token request (`iss` = `sub` = the client id, a random `jti`, `iat`, `exp` 60 s later, the
    /// key's `kid`), with `aud` the server's issuer (set by [`issuer`](ProviderBuilder::issuer) or
    /// discovery; the token URL when neither is known), or
    /// [`assertion_audience`](ProviderBuilder::assertion_audience).
    pub fn private_key_jwt(mut self, key: PrivateKey) -> Self {
        self.private_key = Some(key);
        self.auth = ClientAuth::PrivateKeyJwt;
        self.auth_set = true;
        self
    }

    /// How a device authorization's URL and code are shown to the user (default: printed on
    /// stderr).
    pub fn device_prompt(mut self, prompt: impl Fn(&DeviceInstructions) + Send + Sync + 'static) -> Self {
        if let Grant::DeviceCode(flow) = &self.grant {
            let mut flow = DeviceFlow::clone(flow);
            flow.prompt = Arc::new(prompt);
            self.grant = Grant::DeviceCode(Arc::new(flow));
        }
        self
    }

    /// How the authorization URL is shown to the user (default: [`SystemBrowser`]).
    #[cfg(feature = "oauth2-browser")]
    pub fn browser(mut self, browser: impl Browser) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.browser = Arc::new(browser);
        }
        self
    }

    /// The loopback port of the redirect listener (default 5000; 0 for any free port).
    #[cfg(feature = "oauth2-browser")]
    pub fn redirect_port(mut self, port: u16) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.ports = vec![port];
        }
        self
    }

    /// Ports tried in turn when the redirect port is taken.
    #[cfg(feature = "oauth2-browser")]
    pub fn fallback_ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.ports.extend(ports);
        }
        self
    }

    /// Which loopback address the listener binds and its redirect URI names (default
    /// [`RedirectHost::Ipv4`], `http://127.0.0.1:PORT/`; [`RedirectHost::Localhost`] for servers
    /// that register only `http://localhost…`, binding 127.0.0.1 and ::1). The counterpart of
    /// requests_auth's `redirect_uri_domain`, limited to loopback addresses.
    #[cfg(feature = "oauth2-browser")]
    pub fn redirect_host(mut self, host: RedirectHost) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.host = host;
        }
        self
    }

    /// Refuse authorization responses without `iss` (RFC 9207 §2.4), for a server known to send
    /// it. [`discover`](ProviderBuilder::discover) sets this when the metadata says
    /// `authorization_response_iss_parameter_supported`; the `iss` is compared with the
    /// [`issuer`](ProviderBuilder::issuer) (or the discovered one).
    #[cfg(feature = "oauth2-browser")]
    pub fn require_iss(mut self) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.require_iss = true;
        }
        self
    }

    /// The pages the browser is left on (display times, templates): see [`DisplaySettings`].
    #[cfg(feature = "oauth2-browser")]
    pub fn display(mut self, display: DisplaySettings) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.display = display;
        }
        self
    }

    /// The path of the redirect URI (default `/`).
    #[cfg(feature = "oauth2-browser")]
    pub fn redirect_path(mut self, path: impl Into<String>) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.path = path.into();
        }
        self
    }

    /// How long the listener waits for the browser to come back (default 60 s).
    #[cfg(feature = "oauth2-browser")]
    pub fn authorization_timeout(mut self, timeout: Duration) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.timeout = timeout;
        }
        self
    }

    /// Adds a parameter to the authorization URL (the browser's), not to token requests (use
    /// [`param`](ProviderBuilder::param) for those).
    #[cfg(feature = "oauth2-browser")]
    pub fn auth_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.auth_params.push((name.into(), value.into()));
        }
        self
    }

    /// The implicit grant's answer by `response_mode=form_post` (the server's page posts it to
    /// the listener) instead of the URL fragment.
    #[cfg(feature = "oauth2-browser")]
    pub fn form_post(mut self) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.form_post = true;
        }
        self
    }

    /// PKCE with the `plain` method, for servers that support no other (S256 is the default,
    /// and what RFC 7636 asks of clients that can).
    #[cfg(feature = "oauth2-browser")]
    pub fn pkce_plain(mut self) -> Self {
        if let Some(flow) = &mut self.flow {
            flow.pkce = interactive::Pkce::Plain;
        }
        self
    }

    /// The `aud` claim of `private_key_jwt` assertions, when it must not be the issuer.
    pub fn assertion_audience(mut self, audience: impl Into<String>) -> Self {
        self.assertion_audience = Some(audience.into());
        self
    }

    /// The authorization server's issuer identifier (the default `aud` of `private_key_jwt`
    /// assertions; discovery sets it).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Adds a scope (repeatable; a space-separated list is split).
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        self.params.scopes.extend(scope.as_ref().split_whitespace().map(str::to_owned));
        self
    }

    /// The `audience` parameter.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.params.audience = Some(audience.into());
        self
    }

    /// Adds a `resource` parameter (RFC 8707; repeatable).
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.params.resources.push(resource.into());
        self
    }

    /// Adds any other body parameter to token requests.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.extra.push((name.into(), value.into()));
        self
    }

    /// How long before expiry a token stops being sent (default 30 s; 0 honoured; at most half
    /// the token's lifetime).
    pub fn early_expiry(mut self, early: Duration) -> Self {
        self.timing.early_expiry = early;
        self
    }

    /// The fraction of a token's lifetime after which it is replaced in the background, if
    /// that comes before the early expiry (default 0.8).
    pub fn refresh_fraction(mut self, fraction: f64) -> Self {
        self.timing.refresh_fraction = fraction.clamp(0.05, 1.0);
        self
    }

    /// The lifetime assumed when the server sends no `expires_in` and the token is not a JWT
    /// with an `exp` claim (default one hour).
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.timing.default_lifetime = lifetime;
        self
    }

    /// The most a token request may take (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most a request waits for a token before failing with [`Error::is_timeout`]
    /// (default 60 s).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.timing.wait_timeout = timeout;
        self
    }

    /// The header and its value template (default `Authorization` and `Bearer {token}`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the name is not a header name or the template has no `{token}`.
    pub fn header(mut self, name: &str, template: &str) -> Result<Self, ConfigError> {
        self.timing.header_name = HeaderName::try_from(name)
            .map_err(|_| ConfigError::new(format!("invalid header name {name:?}: not an HTTP token")))?;
        if !template.contains("{token}") {
            return Err(ConfigError::new("the header template must contain {token}"));
        }
        self.timing.template = template.to_owned();
        Ok(self)
    }

    /// The field of the token answer sent as the token (default `access_token`; `id_token`
    /// for servers that want it, as requests_auth's `token_field_name`).
    pub fn token_field(mut self, field: impl Into<String>) -> Self {
        self.params.token_field = field.into();
        self
    }

    /// Keeps tokens in `store` too (shared by providers of the same configuration, across
    /// restarts, or across a fleet, depending on the store).
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The provider, sending token requests through `service` (a hyper-util client, without
    /// the auth layer and without a redirect follower: redirects are not followed).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a token URL that is not a URL, or a missing client secret.
    #[cfg_attr(not(feature = "oauth2-browser"), allow(unused_mut))]
    pub fn build(mut self, service: impl TokenClient) -> Result<TokenProvider, ConfigError> {
        let audience =
            self.assertion_audience.clone().or_else(|| self.issuer.clone()).unwrap_or_else(|| self.url.clone());
        let assertion = self.private_key.clone().map(|key| Assertion { key, audience });
        #[cfg(feature = "oauth2-browser")]
        if let Some(mut flow) = self.flow.take() {
            flow.issuer = self.issuer.clone();
            self.grant =
                if self.implicit { Grant::Implicit(Arc::new(flow)) } else { Grant::AuthorizationCode(Arc::new(flow)) };
        }
        let endpoint = Endpoint::new(
            &self.url,
            &self.client_id,
            self.secret.as_ref(),
            self.auth,
            assertion,
            service.into_transport(),
            self.timeout,
        )
        .map_err(|e| ConfigError::new(e.to_string()))?;
        Ok(TokenProvider::new(endpoint, self.grant, self.params, self.timing, self.store))
    }
}

/// The OAuth2 scheme: the provider's token on every request, a rejected token invalidated.
///
/// `OAuth2` (mode [`Replay`]) sends a request rejected with `401` again once with a new token;
/// [`OAuth2::once`] (mode [`Once`]) keeps the caller's body type (tonic's `Channel`) and lets the
/// next call carry the new token.
pub struct OAuth2<M = Replay> {
    provider: TokenProvider,
    mode: PhantomData<fn() -> M>,
}

impl<M> Clone for OAuth2<M> {
    fn clone(&self) -> Self {
        OAuth2 { provider: self.provider.clone(), mode: PhantomData }
    }
}

impl<M> std::fmt::Debug for OAuth2<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2").field("provider", &self.provider).finish()
    }
}

impl OAuth2 {
    /// The scheme over `provider`; a request rejected with `401` goes again once.
    pub fn new(provider: TokenProvider) -> Self {
        OAuth2 { provider, mode: PhantomData }
    }
}

impl OAuth2<Once> {
    /// The scheme over `provider`, keeping the caller's body type (in front of a tonic
    /// `Channel`): a rejection invalidates the token, and the next call carries a new one.
    pub fn once(provider: TokenProvider) -> Self {
        OAuth2 { provider, mode: PhantomData }
    }
}

impl<M> OAuth2<M> {
    /// The provider.
    pub fn provider(&self) -> &TokenProvider {
        &self.provider
    }
}

/// Per request: the token sent (to invalidate exactly it) and whether it was sent again.
#[derive(Debug, Default)]
pub struct OAuth2State {
    sent: Option<Arc<Token>>,
    retried: bool,
}

/// Whether a challenge says the token lacks a scope (`403`-like, not a bad token).
fn insufficient_scope(res: &http::response::Parts) -> bool {
    crate::challenge::parse_headers(&res.headers, http::header::WWW_AUTHENTICATE).iter().any(|c| {
        c.is_scheme("Bearer") && c.param("error").is_some_and(|e| e.eq_ignore_ascii_case("insufficient_scope"))
    })
}

/// Modes the OAuth2 scheme runs in.
pub trait OAuth2Mode: BodyMode {}
impl OAuth2Mode for Once {}
impl OAuth2Mode for Replay {}

impl<M: OAuth2Mode> Authenticator for OAuth2<M> {
    type Mode = M;
    type Error = Error;
    type State = OAuth2State;
    type Wait = BoxWait;

    #[inline]
    fn authorize(&self, req: &mut AuthRequest<'_>, state: &mut OAuth2State) -> Result<Authorize<BoxWait>, Error> {
        match self.provider.current() {
            Some(token) => {
                if req.set_credential(self.provider.header_name(), token.header_value()) {
                    state.sent = Some(token);
                }
                Ok(Authorize::Done)
            }
            None if req.headers().contains_key(self.provider.header_name()) => Ok(Authorize::Done),
            None => {
                let provider = self.provider.clone();
                Ok(Authorize::Wait(Box::pin(async move { provider.token().await.map(drop) })))
            }
        }
    }

    #[inline]
    fn observes_responses(&self) -> bool {
        true
    }

    #[inline]
    fn needs_request_head(&self) -> bool {
        false // the token sent is in the state
    }

    fn on_response(&self, _: &Parts, res: &http::response::Parts, state: &mut OAuth2State) -> Action {
        let rejected = res.status == StatusCode::UNAUTHORIZED || crate::authenticator::grpc_unauthenticated(res);
        if !rejected || insufficient_scope(res) {
            return Action::Done;
        }
        let Some(sent) = state.sent.take() else {
            return Action::Done; // the caller's own header, or none: not ours to judge
        };
        self.provider.invalidate(&sent);
        if M::REPLAY && !state.retried {
            state.retried = true;
            return Action::Retry;
        }
        Action::Done
    }
}

impl AuthLayer<OAuth2> {
    /// A layer that sends `provider`'s token with every request, and sends a request rejected
    /// with `401` again once with a new token.
    pub fn oauth2(provider: TokenProvider) -> Self {
        AuthLayer::new(OAuth2::new(provider))
    }
}
