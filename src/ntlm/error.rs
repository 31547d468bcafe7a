//! [`Error`]: what went wrong on a connection-bound request, naming the origin or proxy, never a
//! credential.

use std::fmt;

use http::StatusCode;

use crate::BoxError;

/// A failure of a [`WindowsAuth`](super::WindowsAuth) request: which origin or proxy, what
/// happened ([`is_*`](Error::is_rejected) queries), how many legs were sent, the cause as
/// [`source`](std::error::Error::source). It never holds a password, a hash or a token.
pub struct Error {
    kind: Kind,
    peer: String,
    detail: String,
    status: Option<StatusCode>,
    legs: u32,
    source: Option<BoxError>,
    /// Refused after `sspi`'s Kerberos AP-REQ with channel bindings (see `WindowsAuth`'s
    /// fallback without them).
    kerberos_bindings_refused: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No connection could be made (TCP, TLS, the proxy's tunnel).
    Connect,
    /// The peer closed the connection (mid-handshake, or before answering).
    Closed,
    /// The peer's challenge could not be used: malformed, truncated, offsets outside it, a
    /// final token that does not verify.
    Protocol,
    /// The peer refused the credentials (a challenge again after the last leg).
    Rejected,
    /// The peer asked for authentication but offered no scheme this client is configured for.
    NoScheme,
    /// The handshake went on longer than any scheme needs (a peer answering 401 forever).
    TooManyLegs,
    /// The credentials could not be turned into a token (a configuration mistake, no Kerberos
    /// ticket, no KDC reachable, clock skew).
    Credentials,
    /// The request body could not be read or replayed.
    Body,
    /// The request is not one this client can send (no host, an unsupported scheme).
    Request,
}

impl Error {
    pub(crate) fn new(kind: Kind, peer: impl Into<String>, detail: impl Into<String>) -> Self {
        Error {
            kind,
            peer: peer.into(),
            detail: detail.into(),
            status: None,
            legs: 0,
            source: None,
            kerberos_bindings_refused: false,
        }
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub(crate) fn with_legs(mut self, legs: u32) -> Self {
        self.legs = legs;
        self
    }

    pub(crate) fn with_kerberos_bindings_refused(mut self, refused: bool) -> Self {
        self.kerberos_bindings_refused = refused;
        self
    }

    pub(crate) fn kerberos_bindings_refused(&self) -> bool {
        self.kerberos_bindings_refused
    }

    pub(crate) fn with_hint(mut self, hint: &str) -> Self {
        self.detail = if self.detail.is_empty() { hint.to_owned() } else { format!("{}; {hint}", self.detail) };
        self
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The origin (`http://host:port`) or proxy the failure concerns.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The last status received, if any.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// Requests sent on the connection for this handshake before it failed.
    pub fn legs(&self) -> u32 {
        self.legs
    }

    /// No connection could be made (TCP, TLS, a proxy's `CONNECT`).
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// The peer closed the connection, for example in the middle of the handshake.
    pub fn is_closed(&self) -> bool {
        self.kind == Kind::Closed
    }

    /// The peer's challenge was malformed (truncated, offsets outside the message) or its final
    /// token did not verify.
    pub fn is_protocol(&self) -> bool {
        self.kind == Kind::Protocol
    }

    /// The peer refused the credentials: a wrong password, user or domain.
    pub fn is_rejected(&self) -> bool {
        self.kind == Kind::Rejected
    }

    /// The peer wants authentication but offered no scheme configured here.
    pub fn is_no_scheme(&self) -> bool {
        self.kind == Kind::NoScheme
    }

    /// The peer kept asking for more legs than the scheme has (no loop: the request failed).
    pub fn is_too_many_legs(&self) -> bool {
        self.kind == Kind::TooManyLegs
    }

    /// The credentials could not produce a token (no ticket, no KDC, clock skew…).
    pub fn is_credentials(&self) -> bool {
        self.kind == Kind::Credentials
    }

    /// The request body could not be read or sent again.
    pub fn is_body(&self) -> bool {
        self.kind == Kind::Body
    }

    /// The request cannot be sent by this client (no host in its URI, a scheme other than
    /// `http`/`https`).
    pub fn is_request(&self) -> bool {
        self.kind == Kind::Request
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Connect => "could not connect to",
            Kind::Closed => "connection closed by",
            Kind::Protocol => "unusable authentication message from",
            Kind::Rejected => "credentials refused by",
            Kind::NoScheme => "no usable authentication scheme offered by",
            Kind::TooManyLegs => "authentication did not end with",
            Kind::Credentials => "no credentials could be made for",
            Kind::Body => "request body failed for",
            Kind::Request => "cannot send the request to",
        };
        write!(f, "{what} {}", self.peer)?;
        if let Some(status) = self.status {
            write!(f, " ({status})")?;
        }
        if self.legs > 0 {
            write!(f, " after {} leg{}", self.legs, if self.legs == 1 { "" } else { "s" })?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ntlm::Error")
            .field("kind", &self.kind)
            .field("peer", &self.peer)
            .field("detail", &self.detail)
            .field("status", &self.status)
            .field("legs", &self.legs)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}
