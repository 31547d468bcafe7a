//! Authorization server metadata (RFC 8414) and OpenID Connect discovery: the token endpoint
//! and the client authentication methods of an issuer, fetched once per process and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Request, StatusCode};
use serde::Deserialize;

use super::endpoint::Send1;
use crate::error::ConfigError;

/// What the crate uses of an authorization server's metadata.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// The issuer identifier.
    pub issuer: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The client authentication methods of the token endpoint (RFC 8414: `client_secret_basic`
    /// when absent).
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// The grant types the server supports, if it says.
    #[serde(default)]
    pub grant_types_supported: Option<Vec<String>>,
    /// Whether the server puts `iss` into authorization responses (RFC 9207); when it says so,
    /// a response without it is refused.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

impl Metadata {
    /// The client authentication methods, with RFC 8414's default.
    pub fn auth_methods(&self) -> Vec<String> {
        self.token_endpoint_auth_methods_supported.clone().unwrap_or_else(|| vec!["client_secret_basic".into()])
    }
}

fn cache() -> &'static Mutex<HashMap<String, Arc<Metadata>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Metadata>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The two well-known URLs of an issuer: RFC 8414 inserts the well-known segment before the
/// issuer's path; OpenID Connect appends it.
fn well_known(issuer: &str) -> Result<[String; 2], ConfigError> {
    let uri: http::Uri = issuer.parse().map_err(|_| ConfigError::new(format!("invalid issuer URL {issuer:?}")))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(ConfigError::new(format!("invalid issuer URL {issuer:?}: it needs a scheme and a host")));
    };
    if uri.query().is_some() {
        return Err(ConfigError::new(format!("invalid issuer URL {issuer:?}: an issuer has no query")));
    }
    let path = uri.path().trim_end_matches('/');
    Ok([
        format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}"),
        format!("{scheme}://{authority}{path}/.well-known/openid-configuration"),
    ])
}

pub(crate) async fn metadata(
    issuer: &str,
    transport: &Arc<dyn Send1>,
    timeout: Duration,
) -> Result<Arc<Metadata>, ConfigError> {
    if let Some(found) = cache().lock().unwrap_or_else(|p| p.into_inner()).get(issuer) {
        return Ok(Arc::clone(found));
    }
    let mut failures = Vec::new();
    for url in well_known(issuer)? {
        let req = match Request::get(&url).header("accept", "application/json").body(Vec::new()) {
            Ok(req) => req,
            Err(_) => continue,
        };
        let res = match tokio::time::timeout(timeout, transport.send(req)).await {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                failures.push(format!("{url}: {e}"));
                continue;
            }
            Err(_) => {
                failures.push(format!("{url}: no answer within {} s", timeout.as_secs_f32()));
                continue;
            }
        };
        if res.status() != StatusCode::OK {
            failures.push(format!("{url}: status {}", res.status().as_u16()));
            continue;
        }
        let metadata: Metadata = serde_json::from_slice(res.body())
            .map_err(|e| ConfigError::new(format!("the metadata at {url} is not valid ({e})")))?;
        if metadata.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(ConfigError::new(format!(
                "the metadata at {url} names the issuer {:?}, not {issuer:?} (RFC 8414 §3.3: refused)",
                metadata.issuer
            )));
        }
        let metadata = Arc::new(metadata);
        cache().lock().unwrap_or_else(|p| p.into_inner()).insert(issuer.to_owned(), Arc::clone(&metadata));
        tracing::debug!(issuer, token_endpoint = %metadata.token_endpoint, "authorization server metadata fetched");
        return Ok(metadata);
    }
    Err(ConfigError::new(format!("no authorization server metadata for {issuer}: {}", failures.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_for_issuers_with_and_without_a_path() {
        assert_eq!(
            well_known("https://idp.example").unwrap(),
            [
                "https://idp.example/.well-known/oauth-authorization-server",
                "https://idp.example/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            well_known("https://idp.example/tenant/").unwrap(),
            [
                "https://idp.example/.well-known/oauth-authorization-server/tenant",
                "https://idp.example/tenant/.well-known/openid-configuration"
            ]
        );
        assert!(well_known("idp.example").is_err());
        assert!(well_known("https://idp.example/?x=1").is_err());
    }
}
