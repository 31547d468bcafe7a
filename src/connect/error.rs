//! [`ProxyError`]: what went wrong between the client and its proxy, typed, naming the proxy and
//! never a credential.

use std::fmt;

use http::StatusCode;

use crate::engine::BoxError;

/// A failure reaching a target through a proxy: the proxy could not be reached, refused the
/// `CONNECT`, kept asking for credentials, answered something malformed, or closed the
/// connection during the handshake.
///
/// `Display` names the proxy (`http://host:port`, never its user info), the target and what
/// happened; the cause, if any, is [`source`](std::error::Error::source). No message ever holds a
/// password. hyper-util's client wraps it: walk the `source()` chain (or
/// [`ProxyError::find`]) to get it back.
///
/// ```
/// use tower_auth::connect::ProxyError;
///
/// let err: Box<dyn std::error::Error + Send + Sync> = "not a proxy error".into();
/// assert!(ProxyError::find(err.as_ref()).is_none());
/// ```
pub struct ProxyError {
    kind: Kind,
    proxy: String,
    target: String,
    status: Option<StatusCode>,
    exchanges: u32,
    detail: String,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// TCP (or TLS) to the proxy failed.
    Connect,
    /// TCP to the target itself failed (no proxy for it).
    Direct,
    /// The proxy answered `407` and the scheme could not (or may no longer) answer it.
    AuthRequired,
    /// The proxy answered `CONNECT` with another non-2xx status (403, 502…).
    Refused,
    /// The connection closed, or broke, during the `CONNECT` handshake.
    Closed,
    /// The proxy's answer was not usable HTTP.
    Protocol,
    /// The proxy scheme could not produce credentials.
    Scheme,
    /// The handshake took longer than the connector's timeout.
    Timeout,
}

impl ProxyError {
    pub(crate) fn new(kind: Kind, proxy: &str, target: &str, detail: impl Into<String>) -> Self {
        ProxyError {
            kind,
            proxy: proxy.to_owned(),
            target: target.to_owned(),
            status: None,
            exchanges: 0,
            detail: detail.into(),
            source: None,
        }
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub(crate) fn with_exchanges(mut self, n: u32) -> Self {
        self.exchanges = n;
        self
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The proxy, as `http://host:port` or `https://host:port` (no user info); empty for a
    /// target reached directly.
    pub fn proxy(&self) -> &str {
        &self.proxy
    }

    /// The target the tunnel was for (`host:port`).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The proxy's status code, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// How many `CONNECT` requests were sent for this tunnel.
    pub fn exchanges(&self) -> u32 {
        self.exchanges
    }

    /// The proxy could not be reached (TCP, DNS, or TLS to an HTTPS proxy), or, for a target
    /// that goes direct ([`proxy`](ProxyError::proxy) is empty), the target itself.
    pub fn is_connect(&self) -> bool {
        matches!(self.kind, Kind::Connect | Kind::Direct)
    }

    /// The proxy wanted credentials that were missing, refused, or asked for too many times
    /// (`407` to the last `CONNECT`), or its `Proxy-Authenticate` had no challenge the scheme
    /// could answer (malformed, or of an unknown scheme).
    pub fn is_auth_required(&self) -> bool {
        self.kind == Kind::AuthRequired
    }

    /// The proxy refused the tunnel with another status (`403`, `502`…): see
    /// [`status`](ProxyError::status).
    pub fn is_refused(&self) -> bool {
        self.kind == Kind::Refused
    }

    /// The proxy closed (or broke) the connection during the handshake.
    pub fn is_closed(&self) -> bool {
        self.kind == Kind::Closed
    }

    /// The proxy's answer was not HTTP this connector understands.
    pub fn is_protocol(&self) -> bool {
        self.kind == Kind::Protocol
    }

    /// The proxy scheme failed to produce credentials.
    pub fn is_scheme(&self) -> bool {
        self.kind == Kind::Scheme
    }

    /// The handshake with the proxy did not finish in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// The first `ProxyError` in an error's `source()` chain (hyper-util's client error wraps
    /// the connector's).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ProxyError> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(found) = e.downcast_ref::<ProxyError>() {
                return Some(found);
            }
            cur = e.source();
        }
        None
    }
}

impl fmt::Debug for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyError")
            .field("kind", &self.kind)
            .field("proxy", &self.proxy)
            .field("target", &self.target)
            .field("status", &self.status)
            .field("exchanges", &self.exchanges)
            .field("detail", &self.detail)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == Kind::Direct {
            return write!(f, "cannot connect to {} (no proxy)", self.target);
        }
        let what = match self.kind {
            Kind::Connect | Kind::Direct => "cannot connect to proxy",
            Kind::AuthRequired => "proxy authentication failed at",
            Kind::Refused => "tunnel refused by proxy",
            Kind::Closed => "connection closed by proxy",
            Kind::Protocol => "bad answer from proxy",
            Kind::Scheme => "no proxy credentials for",
            Kind::Timeout => "timed out talking to proxy",
        };
        write!(f, "{what} {} (CONNECT {}", self.proxy, self.target)?;
        if let Some(status) = self.status {
            write!(f, ", status {}", status.as_u16())?;
        }
        if self.exchanges > 0 {
            write!(f, ", after {} exchange{}", self.exchanges, if self.exchanges == 1 { "" } else { "s" })?;
        }
        write!(f, ")")?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}
