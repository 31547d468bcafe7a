//! HTTP Basic authentication ([RFC 7617](https://www.rfc-editor.org/rfc/rfc7617)).
//!
//! `Authorization: Basic base64(user-id ":" password)`, with the user id and password encoded as
//! UTF-8 (the RFC's `charset="UTF-8"`). The header value is computed once, at construction.
//!
//! # Security
//!
//! Basic sends the password in the clear (base64 is not encryption). Over plain `http://` the
//! layer logs one `tracing` warning per scheme instance; use HTTPS, or Digest where the server
//! offers it.

use std::fmt;

use base64::Engine as _;
use http::header::{AUTHORIZATION, HeaderName, PROXY_AUTHORIZATION};

use crate::authenticator::{AuthRequest, Credential, PlainHttpWarning};
use crate::error::ConfigError;
use crate::header::HeaderCredential;
use crate::layer::AuthLayer;
use crate::secret::sensitive_header_value;

/// Basic credentials (RFC 7617), sent pre-emptively on every request.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{AuthLayer, Basic};
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     // RFC 7617 §2 example
/// #     assert_eq!(req.headers()["authorization"], "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// let basic = Basic::new("Aladdin", "open sesame")?;
/// assert_eq!(format!("{basic:?}"), r#"Basic { user: "Aladdin", password: [redacted] }"#);
/// let svc = ServiceBuilder::new().layer(AuthLayer::new(basic)).service(client);
/// svc.oneshot(http::Request::get("https://example.com/").body(String::new())?).await?;
/// # Ok(()) }
/// ```
pub struct Basic {
    user: String,
    header: HeaderCredential,
    plain_http: PlainHttpWarning,
}

impl Basic {
    /// Basic credentials for `Authorization`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the user id contains `:` (RFC 7617 §2 forbids it) or a control
    /// character, or the password contains a control character.
    pub fn new(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Basic::with_header(AUTHORIZATION, user.into(), password.as_ref())
    }

    /// Basic credentials for a proxy, sent as `Proxy-Authorization`.
    ///
    /// # Errors
    ///
    /// As [`Basic::new`].
    pub fn proxy(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Basic::with_header(PROXY_AUTHORIZATION, user.into(), password.as_ref())
    }

    fn with_header(name: HeaderName, user: String, password: &str) -> Result<Self, ConfigError> {
        check_text(&user, "Basic user id")?;
        if let Some(pos) = user.find(':') {
            return Err(ConfigError::new(format!(
                "invalid Basic user id: it contains ':' (RFC 7617 forbids it), at byte {pos}"
            )));
        }
        check_text(password, "Basic password")?;
        let value = basic_value(user.as_bytes(), password.as_bytes())?;
        Ok(Basic { user, header: HeaderCredential::from_value(name, value), plain_http: PlainHttpWarning::default() })
    }

    /// The user id.
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// Rejects control characters (they would let a credential smuggle bytes into a header or a
/// hash input) without echoing the credential.
/// `Basic base64(user:password)` (RFC 7617), marked sensitive: the one place Basic is encoded.
/// The pair is bytes: a user info decoded from a URL need not be UTF-8.
pub(crate) fn basic_value(user: &[u8], password: &[u8]) -> Result<http::HeaderValue, ConfigError> {
    let mut token = String::with_capacity(6 + (user.len() + password.len() + 1).div_ceil(3) * 4);
    token.push_str("Basic ");
    let mut pair = Vec::with_capacity(user.len() + 1 + password.len());
    pair.extend_from_slice(user);
    pair.push(b':');
    pair.extend_from_slice(password);
    base64::engine::general_purpose::STANDARD.encode_string(&pair, &mut token);
    sensitive_header_value(&token, "Basic credentials")
}

pub(crate) fn check_text(value: &str, what: &'static str) -> Result<(), ConfigError> {
    match value.bytes().position(|b| b < 0x20 || b == 0x7f) {
        Some(pos) => Err(ConfigError::bad_byte(what, pos)),
        None => Ok(()),
    }
}

impl fmt::Debug for Basic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Basic").field("user", &self.user).field("password", &format_args!("[redacted]")).finish()
    }
}

impl Credential for Basic {
    #[inline]
    fn apply(&self, req: &mut AuthRequest<'_>) {
        self.plain_http.check(req.uri(), "Basic credentials");
        self.header.apply(req);
    }
}

impl Basic {
    /// Sets the header without this instance's plain-http warning: for a scheme that holds many
    /// `Basic`s and warns once for all of them (netrc).
    pub(crate) fn apply_unwarned(&self, req: &mut AuthRequest<'_>) {
        self.header.apply(req);
    }
}

impl AuthLayer<Basic> {
    /// A layer that sends Basic credentials (RFC 7617) with every request.
    ///
    /// # Errors
    ///
    /// As [`Basic::new`].
    pub fn basic(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Ok(AuthLayer::new(Basic::new(user, password)?))
    }

    /// A layer that sends Basic credentials to an HTTP proxy as `Proxy-Authorization`.
    ///
    /// # Errors
    ///
    /// As [`Basic::new`].
    pub fn proxy_basic(user: impl Into<String>, password: impl AsRef<str>) -> Result<Self, ConfigError> {
        Ok(AuthLayer::new(Basic::proxy(user, password)?))
    }
}

#[cfg(test)]
impl Basic {
    pub(crate) fn value_for_test(&self) -> &str {
        self.header.value_for_test()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7617_examples() {
        let b = Basic::new("Aladdin", "open sesame").unwrap();
        assert_eq!(b.header.value_for_test(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        // §2.1: UTF-8 user id and password ("test" / "123£").
        let b = Basic::new("test", "123\u{a3}").unwrap();
        assert_eq!(b.header.value_for_test(), "Basic dGVzdDoxMjPCow==");
    }

    #[test]
    fn colon_in_user_is_rejected_and_colon_in_password_is_fine() {
        assert!(Basic::new("a:b", "x").unwrap_err().to_string().contains("':'"));
        assert!(Basic::new("ab", "x:y").is_ok());
    }

    #[test]
    fn control_characters_are_rejected_without_echo() {
        let err = Basic::new("alice", "se\ncret").unwrap_err().to_string();
        assert!(err.contains("Basic password") && err.contains("byte 2"), "{err}");
        assert!(!err.contains("se\ncret"));
    }

    #[test]
    fn empty_password_is_allowed() {
        assert!(Basic::new("alice", "").is_ok());
    }
}
