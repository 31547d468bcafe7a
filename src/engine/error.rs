//! Errors: [`Error`] for failures on the request path, [`ConfigError`] for mistakes in
//! configuration, reported by fallible constructors.

use std::fmt;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure on the request path of a layer that can fail on its own (a token that could not be
/// fetched, a request body that could not be read for a retry), or of the service it wraps.
///
/// Layers whose schemes cannot fail (Basic, Bearer, API keys, Digest) keep the wrapped service's
/// error type instead. The message never contains a credential.
///
/// `Display` says what happened; the cause is [`source`](std::error::Error::source), printed
/// once by error reports that walk the chain (as hyper-util's and reqwest's errors do).
///
/// ```
/// use tower_auth::Error;
///
/// let err = Error::scheme("token endpoint answered 500");
/// assert!(err.is_scheme());
/// assert!(!err.is_inner());
/// assert_eq!(err.to_string(), "the authentication scheme could not produce credentials");
/// assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "token endpoint answered 500");
/// ```
pub struct Error {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Inner,
    Scheme,
    Body,
    Timeout,
}

impl Error {
    /// The wrapped service failed; [`source`](std::error::Error::source) is its error.
    pub fn inner(source: impl Into<BoxError>) -> Self {
        Error { kind: Kind::Inner, source: Some(source.into()) }
    }

    /// The scheme could not produce credentials (for custom schemes: use this for your failures).
    pub fn scheme(source: impl Into<BoxError>) -> Self {
        Error { kind: Kind::Scheme, source: Some(source.into()) }
    }

    /// The request body could not be read to be replayed or hashed.
    pub fn body(source: impl Into<BoxError>) -> Self {
        Error { kind: Kind::Body, source: Some(source.into()) }
    }

    /// Credentials were not ready in time: a scheme's wait gave up (its own timeout). The
    /// request was not sent.
    pub fn timeout(source: impl Into<BoxError>) -> Self {
        Error { kind: Kind::Timeout, source: Some(source.into()) }
    }

    /// Credentials were not ready in time; the request was not sent.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// The wrapped service failed.
    pub fn is_inner(&self) -> bool {
        self.kind == Kind::Inner
    }

    /// The scheme could not produce credentials.
    pub fn is_scheme(&self) -> bool {
        self.kind == Kind::Scheme
    }

    /// Reading the request body failed.
    pub fn is_body(&self) -> bool {
        self.kind == Kind::Body
    }

    /// The underlying error, if any.
    pub fn into_source(self) -> Option<BoxError> {
        self.source
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Inner => "the wrapped service failed",
            Kind::Scheme => "the authentication scheme could not produce credentials",
            Kind::Body => "the request body could not be read for authentication",
            Kind::Timeout => "credentials were not ready in time; the request was not sent",
        };
        f.write_str(what)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// A configuration mistake found by a fallible constructor: an empty key, a byte not allowed in
/// a header, a `:` in a Basic user id, a malformed origin.
///
/// The message names the problem and, for credentials, the position of the bad byte, never the
/// credential itself.
///
/// ```
/// let err = tower_auth::Basic::new("ali:ce", "pw").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid Basic user id: it contains ':' (RFC 7617 forbids it), at byte 3"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    /// A configuration error with this message. The message must not contain a secret.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError { message: message.into() }
    }

    pub(crate) fn empty(what: &str) -> Self {
        ConfigError::new(format!("invalid {what}: it is empty"))
    }

    pub(crate) fn bad_byte(what: &str, pos: usize) -> Self {
        ConfigError::new(format!(
            "invalid {what}: it contains a byte not allowed in an HTTP header (a control character) at byte {pos}"
        ))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
