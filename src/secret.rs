//! Secret holders and sensitive header values.
//!
//! A [`Secret`] keeps a credential (password, token, API key) whose [`Debug`](std::fmt::Debug)
//! output is `Secret([redacted])` and which has no `Display`, so it cannot reach a log line or an
//! error message by accident. Header values built from secrets are marked
//! [sensitive](http::HeaderValue::set_sensitive), which tells HTTP/2 encoders not to index them
//! and tells tower-http's `Trace` and similar layers to redact them.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

use crate::error::ConfigError;

/// A credential whose `Debug` output is redacted and which has no `Display`.
///
/// Cloning is cheap (reference counted).
///
/// ```
/// use tower_auth::Secret;
///
/// let password = Secret::new("s3cret");
/// assert_eq!(format!("{password:?}"), "Secret([redacted])");
/// assert_eq!(password.expose(), "s3cret");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Arc::from(value.into()))
    }

    /// The credential itself. Call this only where the value must be used (to build a header,
    /// to hash it), never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

/// Builds a header value marked sensitive from a string that holds a credential.
///
/// `what` names the credential in the error ("bearer token", "API key"); the value itself is
/// never part of the error, only the position of the first byte that is not allowed.
///
/// # Errors
///
/// A [`ConfigError`] if the value is empty or holds a byte that is not allowed in a header value
/// (control characters, including CR and LF).
///
/// ```
/// let value = tower_auth::sensitive_header_value("Bearer abc", "bearer token").unwrap();
/// assert!(value.is_sensitive());
/// let err = tower_auth::sensitive_header_value("Bearer a\nb", "bearer token").unwrap_err();
/// assert!(err.to_string().contains("byte 8"));
/// assert!(!err.to_string().contains("a\nb"));
/// ```
pub fn sensitive_header_value(value: &str, what: &'static str) -> Result<HeaderValue, ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::empty(what));
    }
    if let Some(pos) = value.bytes().position(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ConfigError::bad_byte(what, pos));
    }
    let mut header = HeaderValue::from_str(value).map_err(|_| ConfigError::bad_byte(what, 0))?;
    header.set_sensitive(true);
    Ok(header)
}
