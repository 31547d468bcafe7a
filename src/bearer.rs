//! Bearer tokens ([RFC 6750](https://www.rfc-editor.org/rfc/rfc6750) §2.1): a static token sent
//! as `Authorization: Bearer <token>`.
//!
//! For tokens that expire and must be fetched and refreshed, use the OAuth2 token provider
//! (planned) instead: it shares the current token lock-free and refreshes it in the background.

use std::fmt;

use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};

use crate::authenticator::{AuthRequest, Credential};
use crate::error::ConfigError;
use crate::header::HeaderCredential;
use crate::layer::AuthLayer;
use crate::secret::sensitive_header_value;

/// A static bearer token.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::AuthLayer;
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     assert_eq!(req.headers()["authorization"], "Bearer mF_9.B5f-4.1JqM");
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// let svc = ServiceBuilder::new().layer(AuthLayer::bearer("mF_9.B5f-4.1JqM")?).service(client);
/// svc.oneshot(http::Request::get("https://api.example/").body(String::new())?).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bearer {
    header: HeaderCredential,
}

impl Bearer {
    /// A bearer token for `Authorization`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the token is empty or holds a byte not allowed in a header. (RFC 6750
    /// restricts tokens to `b64token` characters; servers accept more in practice, so only what
    /// would break the header is refused.)
    pub fn new(token: impl AsRef<str>) -> Result<Self, ConfigError> {
        Bearer::build(AUTHORIZATION, token.as_ref())
    }

    /// A bearer token for a proxy, sent as `Proxy-Authorization`.
    ///
    /// # Errors
    ///
    /// As [`Bearer::new`].
    pub fn proxy(token: impl AsRef<str>) -> Result<Self, ConfigError> {
        Bearer::build(PROXY_AUTHORIZATION, token.as_ref())
    }

    fn build(name: http::HeaderName, token: &str) -> Result<Self, ConfigError> {
        if token.trim().is_empty() {
            return Err(ConfigError::empty("bearer token"));
        }
        let value = sensitive_header_value(&format!("Bearer {token}"), "bearer token")
            .map_err(|_| ConfigError::bad_byte("bearer token", first_bad_byte(token)))?;
        Ok(Bearer { header: HeaderCredential::from_value(name, value) })
    }
}

fn first_bad_byte(value: &str) -> usize {
    value.bytes().position(|b| (b < 0x20 && b != b'\t') || b == 0x7f).unwrap_or(0)
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bearer").field("token", &format_args!("[redacted]")).finish()
    }
}

impl Credential for Bearer {
    #[inline]
    fn apply(&self, req: &mut AuthRequest<'_>) {
        self.header.apply(req);
    }
}

impl AuthLayer<Bearer> {
    /// A layer that sends a static bearer token with every request.
    ///
    /// # Errors
    ///
    /// As [`Bearer::new`].
    pub fn bearer(token: impl AsRef<str>) -> Result<Self, ConfigError> {
        Ok(AuthLayer::new(Bearer::new(token)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tokens_are_config_errors_naming_the_position() {
        assert_eq!(Bearer::new("").unwrap_err().to_string(), "invalid bearer token: it is empty");
        assert!(Bearer::new("   ").is_err());
        let err = Bearer::new("abc\r\nX-Evil: 1").unwrap_err().to_string();
        assert!(err.contains("byte 3"), "{err}");
        assert!(!err.contains("X-Evil"));
    }
}
