//! API keys, in a header (default `X-API-Key`) or in the query string (default `api_key`).
//!
//! A key in the query keeps the rest of the query byte for byte, replaces a parameter of the
//! same name (the first one, dropping later ones), and percent-encodes the key. A key in the
//! query is visible in server logs and proxies; prefer a header where the API allows it.

use std::fmt;

use http::Uri;
use http::uri::PathAndQuery;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::authenticator::{AuthRequest, Credential};
use crate::error::ConfigError;
use crate::header::HeaderCredential;
use crate::layer::AuthLayer;
use crate::secret::Secret;

/// Characters left as they are in a query component: RFC 3986 `unreserved`.
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The default header of [`ApiKey::header`].
pub const DEFAULT_API_KEY_HEADER: &str = "X-API-Key";
/// The default query parameter of [`ApiKey::query`].
pub const DEFAULT_API_KEY_PARAM: &str = "api_key";

/// An API key, in a header or in the query string.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{ApiKey, AuthLayer};
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     assert_eq!(req.uri(), "https://api.example/v1/items?limit=5&key=k%2By%20z");
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// let key = ApiKey::query_named("key", "k+y z")?;
/// let svc = ServiceBuilder::new().layer(AuthLayer::new(key)).service(client);
/// let req = http::Request::get("https://api.example/v1/items?limit=5&key=old").body(String::new())?;
/// svc.oneshot(req).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ApiKey {
    place: Place,
}

#[derive(Clone)]
enum Place {
    Header(HeaderCredential),
    Query { name: String, encoded: Secret },
}

impl ApiKey {
    /// A key in the `X-API-Key` header.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the key is empty or holds a byte not allowed in a header.
    pub fn header(key: impl AsRef<str>) -> Result<Self, ConfigError> {
        ApiKey::header_named(DEFAULT_API_KEY_HEADER, key)
    }

    /// A key in a header of your choice.
    ///
    /// # Errors
    ///
    /// As [`ApiKey::header`], or if `name` is not a valid header name.
    pub fn header_named(name: &str, key: impl AsRef<str>) -> Result<Self, ConfigError> {
        let key = key.as_ref();
        if key.is_empty() {
            return Err(ConfigError::empty("API key"));
        }
        let header = HeaderCredential::new(name, key)
            .map_err(|e| ConfigError::new(e.to_string().replace("header credential", "API key")))?;
        Ok(ApiKey { place: Place::Header(header) })
    }

    /// A key in the `api_key` query parameter.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the key is empty.
    pub fn query(key: impl AsRef<str>) -> Result<Self, ConfigError> {
        ApiKey::query_named(DEFAULT_API_KEY_PARAM, key)
    }

    /// A key in a query parameter of your choice.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the name or the key is empty.
    pub fn query_named(name: &str, key: impl AsRef<str>) -> Result<Self, ConfigError> {
        if name.is_empty() {
            return Err(ConfigError::empty("API key parameter name"));
        }
        if key.as_ref().is_empty() {
            return Err(ConfigError::empty("API key"));
        }
        let encoded = Secret::new(utf8_percent_encode(key.as_ref(), QUERY_COMPONENT).to_string());
        Ok(ApiKey { place: Place::Query { name: name.to_owned(), encoded } })
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.place {
            Place::Header(h) => f
                .debug_struct("ApiKey")
                .field("header", &h.name().as_str())
                .field("key", &format_args!("[redacted]"))
                .finish(),
            Place::Query { name, .. } => {
                f.debug_struct("ApiKey").field("query", name).field("key", &format_args!("[redacted]")).finish()
            }
        }
    }
}

impl Credential for ApiKey {
    #[inline]
    fn apply(&self, req: &mut AuthRequest<'_>) {
        match &self.place {
            Place::Header(header) => header.apply(req),
            Place::Query { name, encoded } => {
                if let Some(uri) = with_query_param(req.uri(), name, encoded.expose()) {
                    *req.uri_mut() = uri;
                } else {
                    tracing::warn!(param = %name, "could not add the API key to the request URI; sent without it");
                }
            }
        }
    }
}

/// `uri` with `name=value` set in its query: the first parameter whose decoded name is `name`
/// is replaced in place and later ones dropped, or the pair is appended. Every other byte of
/// the query is kept. `value` must be percent-encoded already.
pub(crate) fn with_query_param(uri: &Uri, name: &str, value: &str) -> Option<Uri> {
    let path = uri.path();
    let query = uri.query().filter(|q| !q.is_empty());
    let mut out = String::with_capacity(path.len() + query.map_or(0, str::len) + name.len() + value.len() + 3);
    out.push_str(path);
    out.push('?');
    let mut replaced = false;
    let mut first = true;
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        let raw_name = pair.split_once('=').map_or(pair, |(n, _)| n);
        let same = if raw_name.contains(['%', '+']) {
            percent_decode_str(&raw_name.replace('+', " ")).decode_utf8().is_ok_and(|n| n == name)
        } else {
            raw_name == name
        };
        if same && replaced {
            continue;
        }
        if !first {
            out.push('&');
        }
        first = false;
        if same {
            replaced = true;
            push_pair(&mut out, name, value);
        } else {
            out.push_str(pair);
        }
    }
    if !replaced {
        if !first {
            out.push('&');
        }
        push_pair(&mut out, name, value);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(out).ok()?);
    Uri::from_parts(parts).ok()
}

fn push_pair(out: &mut String, name: &str, value: &str) {
    out.extend(utf8_percent_encode(name, QUERY_COMPONENT));
    out.push('=');
    out.push_str(value);
}

impl AuthLayer<ApiKey> {
    /// A layer that sends an API key in the `X-API-Key` header.
    ///
    /// # Errors
    ///
    /// As [`ApiKey::header`].
    pub fn api_key(key: impl AsRef<str>) -> Result<Self, ConfigError> {
        Ok(AuthLayer::new(ApiKey::header(key)?))
    }

    /// A layer that sends an API key in the `api_key` query parameter.
    ///
    /// # Errors
    ///
    /// As [`ApiKey::query`].
    pub fn api_key_query(key: impl AsRef<str>) -> Result<Self, ConfigError> {
        Ok(AuthLayer::new(ApiKey::query(key)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(uri: &str, name: &str, value: &str) -> String {
        with_query_param(&uri.parse().unwrap(), name, value).unwrap().to_string()
    }

    #[test]
    fn query_is_preserved_byte_for_byte() {
        assert_eq!(set("http://h/p", "api_key", "K"), "http://h/p?api_key=K");
        assert_eq!(set("http://h/p?", "api_key", "K"), "http://h/p?api_key=K");
        assert_eq!(set("http://h/p?a=%7e&b=c+d&&e", "api_key", "K"), "http://h/p?a=%7e&b=c+d&&e&api_key=K");
        assert_eq!(set("http://h:81/?x=1", "k", "v"), "http://h:81/?x=1&k=v");
    }

    #[test]
    fn same_name_is_replaced_in_place_and_duplicates_dropped() {
        assert_eq!(set("http://h/?api_key=old&x=1&api%5Fkey=old2", "api_key", "new"), "http://h/?api_key=new&x=1");
        assert_eq!(set("http://h/?api_key&x=1", "api_key", "new"), "http://h/?api_key=new&x=1");
    }

    #[test]
    fn key_is_percent_encoded() {
        let key = ApiKey::query("a&b=c d/é").unwrap();
        let Place::Query { encoded, .. } = &key.place else { panic!() };
        assert_eq!(encoded.expose(), "a%26b%3Dc%20d%2F%C3%A9");
    }

    #[test]
    fn empty_keys_and_bad_bytes_are_config_errors() {
        assert_eq!(ApiKey::header("").unwrap_err().to_string(), "invalid API key: it is empty");
        assert_eq!(ApiKey::query("").unwrap_err().to_string(), "invalid API key: it is empty");
        let err = ApiKey::header("ab\ncd").unwrap_err().to_string();
        assert!(err.contains("API key") && err.contains("byte 2"), "{err}");
        assert!(ApiKey::header_named("bad name", "k").unwrap_err().to_string().contains("invalid header name"));
        assert!(format!("{:?}", ApiKey::query("sekrit").unwrap()).contains("redacted"));
        assert!(!format!("{:?}", ApiKey::query("sekrit").unwrap()).contains("sekrit"));
    }
}
