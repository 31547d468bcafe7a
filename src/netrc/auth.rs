//! [`NetrcAuth`]: Basic credentials from a netrc file (opt-in).

use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::path::{Path, PathBuf};

use http::request::Parts;

use crate::authenticator::{AuthRequest, Credential, PlainHttpWarning};
use crate::basic::Basic;
use crate::error::ConfigError;
use crate::layer::AuthLayer;
use crate::netrc::{Netrc, NetrcEntry, NetrcError};

/// Basic credentials from a netrc file, for the hosts it names (opt-in).
///
/// The file is read once, when the scheme is made, and each entry's `Authorization: Basic`
/// value is computed then (marked sensitive). For every request the scheme looks up the
/// request's host — [`Uri::host`](http::Uri::host), never the user info, so
/// `http://example.com:@evil.com/` is a request to `evil.com` — and sends that entry's `login`
/// and `password`. The syntax and the lookup rules (first `machine` wins, `default` only when no
/// machine matches, wherever it stands) are those of [`netrc`](crate::netrc).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::io::Write;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{AuthLayer, NetrcAuth};
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
/// #     match req.uri().host() {
/// #         Some("api.example.com") => assert_eq!(auth.as_deref(), Some("Basic YWxpY2U6czNjcmV0")),
/// #         _ => assert_eq!(auth, None),
/// #     }
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// let mut file = tempfile::NamedTempFile::new()?;
/// writeln!(file, "machine api.example.com login alice password s3cret")?;
///
/// let netrc = NetrcAuth::from_path(file.path())?; // or NetrcAuth::from_default_location()?
/// let svc = ServiceBuilder::new().layer(AuthLayer::new(netrc)).service(client);
/// svc.clone().oneshot(http::Request::get("https://api.example.com/me").body(String::new())?).await?;
/// // Not in the file (the user info is not the host): nothing is added.
/// svc.oneshot(http::Request::get("https://api.example.com:@evil.example/").body(String::new())?).await?;
/// # Ok(()) }
/// ```
///
/// Behind a [`Router`](crate::route::Router), [`RouteBuilder::netrc_fallback`] uses the file for
/// origins that have no route of their own.
///
/// [`RouteBuilder::netrc_fallback`]: crate::route::RouteBuilder::netrc_fallback
///
/// # Security
///
/// - Nothing reads a netrc file unless asked to (this type, or `netrc_fallback`).
/// - An entry applies to its host on *every* scheme and port, as in curl: a netrc file is
///   coarser than origins. Basic over plain `http://` logs a warning once.
/// - An entry without a password sends nothing (as httpx's `NetRCAuth`).
/// - A request that already has an `Authorization` header keeps it.
///
/// `Debug` shows the file, hosts and logins, never a password.
pub struct NetrcAuth {
    /// Lower-case host name → credentials (`None` for an entry without a password).
    machines: HashMap<Box<str>, Option<Basic>>,
    default: Option<Basic>,
    path: Option<PathBuf>,
    /// One warning for the whole file, whichever entries are used.
    plain_http: PlainHttpWarning,
}

impl NetrcAuth {
    /// Reads the netrc file at `path`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file if it cannot be read, and the line and column of a
    /// syntax error; or naming the entry whose login or password cannot be sent as Basic (a
    /// `:` in the login, a control character).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        NetrcAuth::from_netrc(&Netrc::from_path(path).map_err(config_error)?)
    }

    /// Reads the netrc file from its default location: `$NETRC` if set, else `~/.netrc`, else
    /// `~/_netrc` (see [`Netrc::from_default_location`]). Without such a file the scheme has no
    /// entries and adds nothing ([`is_empty`](Self::is_empty)).
    ///
    /// # Errors
    ///
    /// As [`from_path`](Self::from_path), if the file exists but cannot be read or used.
    pub fn from_default_location() -> Result<Self, ConfigError> {
        match Netrc::from_default_location().map_err(config_error)? {
            Some(netrc) => NetrcAuth::from_netrc(&netrc),
            None => {
                tracing::debug!("no netrc file found; netrc credentials are not used");
                Ok(NetrcAuth::from_parts(HashMap::new(), None, None))
            }
        }
    }

    /// The credentials of a parsed [`Netrc`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the entry (machine name, never a credential) whose login holds a
    /// `:` (Basic forbids it) or whose login or password holds a control character.
    pub fn from_netrc(netrc: &Netrc) -> Result<Self, ConfigError> {
        let file = || netrc.path().map(|p| format!(" in {}", p.display())).unwrap_or_default();
        let mut machines = HashMap::new();
        for (machine, entry) in netrc.machines() {
            let key: Box<str> = machine.to_ascii_lowercase().into();
            if machines.contains_key(&key) {
                continue; // the first entry for a host wins
            }
            let creds = credentials(entry).map_err(|e| {
                ConfigError::new(format!("netrc entry for machine {machine:?}{} cannot be used: {e}", file()))
            })?;
            machines.insert(key, creds);
        }
        let default = match netrc.default_entry() {
            Some(entry) => credentials(entry)
                .map_err(|e| ConfigError::new(format!("netrc `default` entry{} cannot be used: {e}", file())))?,
            None => None,
        };
        Ok(NetrcAuth::from_parts(machines, default, netrc.path().map(Path::to_path_buf)))
    }

    fn from_parts(machines: HashMap<Box<str>, Option<Basic>>, default: Option<Basic>, path: Option<PathBuf>) -> Self {
        NetrcAuth { machines, default, path, plain_http: PlainHttpWarning::default() }
    }

    /// Whether no host has credentials (no file, or a file without passwords).
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.machines.values().all(Option::is_none)
    }

    /// The file the credentials were read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The credentials for the host of this request, if any.
    fn lookup(&self, req: &Parts) -> Option<&Basic> {
        let host = req.uri.host()?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() {
            return None;
        }
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        match self.machines.get(&*host) {
            Some(machine) => machine.as_ref(),
            None => self.default.as_ref(),
        }
    }
}

/// The Basic credentials of an entry (header value built once, by [`Basic`]); `None` if it has
/// no password.
fn credentials(entry: &NetrcEntry) -> Result<Option<Basic>, ConfigError> {
    let Some(password) = entry.password.as_ref().filter(|p| !p.expose().is_empty()) else {
        return Ok(None);
    };
    Basic::new(entry.login.clone().unwrap_or_default(), password.expose()).map(Some)
}

/// A [`NetrcError`] as a [`ConfigError`]: its message names the file and, for a syntax error,
/// the line and column; an I/O error adds its cause.
fn config_error(err: NetrcError) -> ConfigError {
    match err.source() {
        Some(source) => ConfigError::new(format!("{err}: {source}")),
        None => ConfigError::new(err.to_string()),
    }
}

impl fmt::Debug for NetrcAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut machines: Vec<(&str, Option<&str>)> =
            self.machines.iter().map(|(host, c)| (&**host, c.as_ref().map(Basic::user))).collect();
        machines.sort_unstable();
        f.debug_struct("NetrcAuth")
            .field("path", &self.path)
            .field("machines", &machines)
            .field("default", &self.default.as_ref().map(Basic::user))
            .finish()
    }
}

impl Credential for NetrcAuth {
    /// Whether the request's host has an entry with a password (or the file has a `default`).
    fn applies_to(&self, req: &Parts) -> bool {
        self.lookup(req).is_some()
    }

    fn apply(&self, req: &mut AuthRequest<'_>) {
        // Basic sets the header by the crate's rules; one plain-http warning for the file.
        if let Some(creds) = self.lookup(req.parts()) {
            self.plain_http.check(req.uri(), "Basic credentials from netrc");
            creds.apply_unwarned(req);
        }
    }
}

impl AuthLayer<NetrcAuth> {
    /// A layer that sends Basic credentials from the netrc file at its default location
    /// ([`NetrcAuth::from_default_location`]) to the hosts it names.
    ///
    /// # Errors
    ///
    /// As [`NetrcAuth::from_default_location`].
    pub fn netrc() -> Result<Self, ConfigError> {
        Ok(AuthLayer::new(NetrcAuth::from_default_location()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    fn auth(text: &str) -> NetrcAuth {
        NetrcAuth::from_netrc(&Netrc::parse(text).unwrap()).unwrap()
    }

    fn sent(auth: &NetrcAuth, uri: &str) -> Option<String> {
        auth.lookup(&parts(uri)).map(|c| c.value_for_test().to_owned())
    }

    #[test]
    fn lookup_by_host_only() {
        let a = auth("machine Example.COM login alice password s3cret\nmachine ::1 login six password v6\n");
        assert_eq!(sent(&a, "http://example.com/").as_deref(), Some("Basic YWxpY2U6czNjcmV0"));
        assert_eq!(sent(&a, "https://EXAMPLE.com:8443/x").as_deref(), Some("Basic YWxpY2U6czNjcmV0"));
        assert_eq!(sent(&a, "http://example.com:@evil.com/"), None);
        assert_eq!(sent(&a, "http://alice:pw@evil.com/"), None);
        assert_eq!(sent(&a, "http://sub.example.com/"), None);
        assert_eq!(sent(&a, "/relative"), None);
        assert!(sent(&a, "http://[::1]:8080/").is_some());
        assert!(a.applies_to(&parts("http://example.com/")));
        assert!(!a.applies_to(&parts("http://other.example/")));
    }

    #[test]
    fn default_first_machine_and_missing_passwords() {
        let a = auth(
            "default login anon password guest\n\
             machine a.example login first password pw-one\n\
             machine a.example login second password pw-two\n\
             machine nopw.example login bob\n",
        );
        assert_eq!(sent(&a, "http://a.example/").as_deref(), Some("Basic Zmlyc3Q6cHctb25l"));
        assert_eq!(sent(&a, "http://elsewhere.example/").as_deref(), Some("Basic YW5vbjpndWVzdA=="));
        // A machine entry without a password: nothing (not the default).
        assert_eq!(sent(&a, "http://nopw.example/"), None);
        assert!(!a.is_empty());
        assert!(auth("machine x login y\n").is_empty());
        let dbg = format!("{a:?}");
        assert!(dbg.contains("first") && !dbg.contains("pw-one") && !dbg.contains("guest"), "{dbg}");
    }

    #[test]
    fn unusable_entries_are_config_errors_without_secrets() {
        let err = NetrcAuth::from_netrc(&Netrc::parse("machine a.example login a:b password hunter2\n").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"a.example\"") && err.contains("':'"), "{err}");
        assert!(!err.contains("hunter2"));
        let err = NetrcAuth::from_netrc(&Netrc::parse("default login a password \"x\\ny\"\n").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("default") && err.contains("control"), "{err}");
    }

    #[test]
    fn file_errors_name_path_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netrc");
        std::fs::write(&path, "machine a.example login alice password s3cret\n  bogus\n").unwrap();
        let err = NetrcAuth::from_path(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("line 2, column 3"), "{err}");
        assert!(!err.contains("s3cret"));
        let missing = dir.path().join("missing");
        let err = NetrcAuth::from_path(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot read netrc file") && err.contains("missing"), "{err}");
    }
}
