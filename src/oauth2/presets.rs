//! Provider presets: thin constructors over the generic grants, with each provider's endpoints and
//! default scopes (as requests_auth's `Okta*`, `AzureActiveDirectory*` and `WakaTime*` classes).
//!
//! ```
//! use tower_auth::oauth2::presets::Okta;
//!
//! let okta = Okta::new("dev-123.okta.com");
//! assert_eq!(okta.token_url(), "https://dev-123.okta.com/oauth2/default/v1/token");
//! let builder = okta.client_credentials("svc", "s3cret", "orders:read");
//! # let _ = builder;
//! ```

#[cfg(feature = "oauth2-browser")]
use super::ImplicitResponse;
use super::{ClientAuth, ProviderBuilder, TokenProvider};

/// Okta: an org's authorization server (`default` unless
/// [`authorization_server`](Okta::authorization_server) names another).
#[derive(Debug, Clone)]
pub struct Okta {
    instance: String,
    server: String,
}

impl Okta {
    /// The Okta org `instance` (`dev-123.okta.com`), its `default` authorization server.
    pub fn new(instance: impl Into<String>) -> Self {
        Okta {
            instance: instance.into().trim_end_matches('/').trim_start_matches("https://").to_owned(),
            server: "default".into(),
        }
    }

    /// Another authorization server of the org (its id, e.g. `aus1a2b3c4`).
    pub fn authorization_server(mut self, id: impl Into<String>) -> Self {
        self.server = id.into();
        self
    }

    fn base(&self) -> String {
        format!("https://{}/oauth2/{}/v1", self.instance, self.server)
    }

    /// The authorization endpoint.
    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.base())
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base())
    }

    /// The issuer (for discovery and `iss` checks).
    pub fn issuer(&self) -> String {
        format!("https://{}/oauth2/{}", self.instance, self.server)
    }

    /// Client credentials; Okta wants a custom scope.
    pub fn client_credentials(&self, client_id: &str, client_secret: &str, scope: &str) -> ProviderBuilder {
        TokenProvider::client_credentials(self.token_url(), client_id, client_secret).scope(scope).issuer(self.issuer())
    }

    /// Resource owner password (legacy), scope `openid` as requests_auth.
    pub fn password(&self, client_id: &str, user: &str, password: &str) -> ProviderBuilder {
        TokenProvider::password(self.token_url(), client_id, user, password).scope("openid").issuer(self.issuer())
    }

    /// Authorization code with PKCE, scope `openid` as requests_auth (feature `oauth2-browser`).
    #[cfg(feature = "oauth2-browser")]
    pub fn authorization_code(&self, client_id: &str) -> ProviderBuilder {
        TokenProvider::authorization_code(self.authorize_url(), self.token_url(), client_id)
            .scope("openid")
            .issuer(self.issuer())
    }

    /// Implicit grant for an access token (discouraged, RFC 9700; for apps Okta configured that
    /// way), scopes `openid profile email` as requests_auth (feature `oauth2-browser`).
    #[cfg(feature = "oauth2-browser")]
    pub fn implicit(&self, client_id: &str) -> ProviderBuilder {
        TokenProvider::implicit(self.authorize_url(), client_id, ImplicitResponse::AccessToken)
            .scope("openid profile email")
            .issuer(self.issuer())
    }

    /// Implicit grant for an id_token, sent as the token (its nonce, audience and expiry
    /// checked), scopes `openid profile email` (feature `oauth2-browser`).
    #[cfg(feature = "oauth2-browser")]
    pub fn implicit_id_token(&self, client_id: &str) -> ProviderBuilder {
        TokenProvider::implicit(self.authorize_url(), client_id, ImplicitResponse::IdToken)
            .scope("openid profile email")
            .issuer(self.issuer())
    }
}

/// Microsoft Entra ID (Azure AD), v2 endpoints of a tenant (`common`, `organizations`, a domain or
/// a tenant id).
#[derive(Debug, Clone)]
pub struct EntraId {
    tenant: String,
}

impl EntraId {
    /// The tenant's endpoints.
    pub fn new(tenant: impl Into<String>) -> Self {
        EntraId { tenant: tenant.into() }
    }

    /// The authorization endpoint (v2).
    pub fn authorize_url(&self) -> String {
        format!("https://login.microsoftonline.com/{}/oauth2/v2.0/authorize", self.tenant)
    }

    /// The token endpoint (v2).
    pub fn token_url(&self) -> String {
        format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", self.tenant)
    }

    /// The issuer of the tenant's v2 tokens.
    pub fn issuer(&self) -> String {
        format!("https://login.microsoftonline.com/{}/v2.0", self.tenant)
    }

    /// Client credentials for `resource` (Entra's scope is the resource's `/.default`, e.g.
    /// `https://graph.microsoft.com/.default`). Entra accepts the secret in the body.
    pub fn client_credentials(&self, client_id: &str, client_secret: &str, resource_scope: &str) -> ProviderBuilder {
        TokenProvider::client_credentials(self.token_url(), client_id, client_secret)
            .client_auth(ClientAuth::Post)
            .scope(resource_scope)
    }

    /// Authorization code with PKCE (feature `oauth2-browser`), scopes `openid` and
    /// `offline_access` (a refresh token, so the browser is not needed again).
    #[cfg(feature = "oauth2-browser")]
    pub fn authorization_code(&self, client_id: &str) -> ProviderBuilder {
        TokenProvider::authorization_code(self.authorize_url(), self.token_url(), client_id)
            .scope("openid offline_access")
    }

    /// Implicit grant for an access token (discouraged, RFC 9700; for app registrations that
    /// allow it), scope `openid` (feature `oauth2-browser`).
    #[cfg(feature = "oauth2-browser")]
    pub fn implicit(&self, client_id: &str) -> ProviderBuilder {
        TokenProvider::implicit(self.authorize_url(), client_id, ImplicitResponse::AccessToken).scope("openid")
    }

    /// Implicit grant for an id_token, sent as the token (its nonce, audience and expiry checked),
    /// scope `openid` (feature `oauth2-browser`).
    #[cfg(feature = "oauth2-browser")]
    pub fn implicit_id_token(&self, client_id: &str) -> ProviderBuilder {
        TokenProvider::implicit(self.authorize_url(), client_id, ImplicitResponse::IdToken).scope("openid")
    }
}

/// WakaTime's OAuth2 endpoints.
#[derive(Debug, Clone, Copy, Default)]
pub struct WakaTime;

impl WakaTime {
    /// The authorization endpoint.
    pub const AUTHORIZE_URL: &'static str = "https://wakatime.com/oauth/authorize";
    /// The token endpoint.
    pub const TOKEN_URL: &'static str = "https://wakatime.com/oauth/token";

    /// Authorization code (feature `oauth2-browser`): WakaTime's apps are confidential (a
    /// secret, sent in the body) and take comma-separated scopes (`email,read_stats`).
    #[cfg(feature = "oauth2-browser")]
    pub fn authorization_code(client_id: &str, client_secret: &str, scopes: &[&str]) -> ProviderBuilder {
        TokenProvider::authorization_code(Self::AUTHORIZE_URL, Self::TOKEN_URL, client_id)
            .client_secret(client_secret)
            .client_auth(ClientAuth::Post)
            .scope(scopes.join(","))
    }
}
