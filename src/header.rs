//! Static credentials in a header: the core of Basic, Bearer, API keys and custom headers.

use std::fmt;

use http::HeaderValue;
use http::header::HeaderName;

use crate::authenticator::{AuthRequest, Credential};
use crate::error::ConfigError;
use crate::secret::sensitive_header_value;

/// A header whose value is computed once and inserted into every request that does not carry
/// that header already: a caller's own value wins.
///
/// Use it for schemes that are a fixed header (`X-Auth-Token`, `Private-Token`,
/// `Authorization: Token abc`…). The value is marked sensitive; `Debug` shows the header name
/// only.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{AuthLayer, HeaderCredential};
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     assert_eq!(req.headers()["private-token"], "glpat-123");
/// #     assert!(req.headers()["private-token"].is_sensitive());
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// let token = HeaderCredential::new("Private-Token", "glpat-123")?;
/// assert_eq!(format!("{token:?}"), r#"HeaderCredential { name: "private-token", value: [redacted] }"#);
/// let svc = ServiceBuilder::new().layer(AuthLayer::new(token)).service(client);
/// svc.oneshot(http::Request::new(String::new())).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HeaderCredential {
    name: HeaderName,
    value: HeaderValue,
}

impl HeaderCredential {
    /// A credential sent as `name: value`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `name` is not a valid header name, or `value` is empty or holds a
    /// byte not allowed in a header value.
    pub fn new(name: &str, value: &str) -> Result<Self, ConfigError> {
        let name = HeaderName::try_from(name)
            .map_err(|_| ConfigError::new(format!("invalid header name {name:?}: not an HTTP token")))?;
        let value = sensitive_header_value(value, "header credential")?;
        Ok(HeaderCredential { name, value })
    }

    /// A credential from a header value you built; it is marked sensitive here.
    pub fn from_value(name: HeaderName, mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        HeaderCredential { name, value }
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// Sets the header with [`AuthRequest::set_credential`]'s rules: a caller's own header of
    /// that name wins, and `Proxy-Authorization` never goes into a `CONNECT` tunnel.
    #[inline]
    pub(crate) fn apply(&self, req: &mut AuthRequest<'_>) {
        req.set_credential(&self.name, &self.value);
    }
}

impl fmt::Debug for HeaderCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderCredential")
            .field("name", &self.name.as_str())
            .field("value", &format_args!("[redacted]"))
            .finish()
    }
}

impl Credential for HeaderCredential {
    #[inline]
    fn apply(&self, req: &mut AuthRequest<'_>) {
        HeaderCredential::apply(self, req);
    }
}

#[cfg(test)]
impl HeaderCredential {
    pub(crate) fn value_for_test(&self) -> &str {
        self.value.to_str().unwrap()
    }
}
