//! [`Proxy`] (one proxy, its URL and credentials) and [`Proxies`] (which proxy for which target:
//! explicit, or from `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY`).

use std::fmt;
use std::sync::Arc;

use http::Uri;
use hyper_util::client::proxy::matcher::Matcher;
use percent_encoding::percent_decode_str;

use crate::combine::BoxAuthenticator;
use crate::error::ConfigError;
use crate::secret::Secret;
use crate::{Authenticator, Basic, engine::FitsIn};

/// How a proxy's credentials answer it (curl's `--proxy-basic`, `--proxy-digest`,
/// `--proxy-anyauth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyAuth {
    /// Basic, sent pre-emptively on every `CONNECT` (curl's and requests' default).
    Basic,
    /// Digest, answering the proxy's `407` (RFC 7616); later tunnels are pre-authorised.
    #[cfg(feature = "digest")]
    Digest,
    /// Digest if the proxy offers it, else Basic, answering the `407`.
    #[cfg(feature = "digest")]
    Guess,
}

/// One HTTP proxy: `http://host:port` or `https://host:port` (TLS to the proxy itself, feature
/// `tls`), and the scheme that answers it on `CONNECT`.
///
/// User info in the URL (`http://user:pass@proxy:3128`, percent-encoded or not) becomes the
/// proxy's credentials, sent as Basic by default ([`Proxy::auth`] to change), on `CONNECT`
/// requests only; it never appears in errors, logs or `Debug`.
///
/// ```
/// use tower_auth::connect::Proxy;
///
/// let proxy = Proxy::parse("http://alice:p%40ss@proxy.corp:3128")?;
/// assert_eq!(proxy.to_string(), "http://proxy.corp:3128");
/// assert!(proxy.has_credentials());
/// assert!(!format!("{proxy:?}").contains("p@ss"));
/// # Ok::<_, tower_auth::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Proxy {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    user: Option<(String, Secret)>,
    pub(crate) scheme: Option<BoxAuthenticator>,
}

impl Proxy {
    /// Parses a proxy URL as curl and requests take it: `[http://|https://][user[:pass]@]host[:port][/]`.
    /// No scheme means `http://`; the port defaults to 80 (`http`) or 443 (`https`). User info
    /// is split at the last `@` (so a password may hold a raw `@`) and percent-decoded.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for another scheme (`socks5://`…), a missing host, a bad port, or
    /// credentials Basic cannot carry; the message shows the URL with its user info redacted.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let shown = redact_userinfo(url);
        let bad = |why: &str| ConfigError::new(format!("invalid proxy URL {shown:?}: {why}"));
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("http".to_owned(), url),
        };
        let https = match scheme.as_str() {
            "http" => false,
            "https" => true,
            other => return Err(bad(&format!("unsupported proxy scheme {other:?} (http or https)"))),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if !rest[end..].trim_start_matches('/').is_empty() {
            return Err(bad("a proxy URL has no path"));
        }
        let authority = &rest[..end];
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let parsed: Uri = format!("http://{hostport}/").parse().map_err(|_| bad("expected [user:pass@]host[:port]"))?;
        let host = parsed.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = match parsed.port_u16() {
            Some(p) => p,
            // `http::Uri` takes any digits as a port and then has none: say so.
            None if hostport.rsplit_once(']').map_or(hostport, |(_, r)| r).contains(':') => {
                return Err(bad("invalid port"));
            }
            None if https => 443,
            None => 80,
        };
        let user = match userinfo {
            None => None,
            Some(info) => {
                let (u, p) = info.split_once(':').unwrap_or((info, ""));
                let decode = |s: &str, what: &str| {
                    percent_decode_str(s)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| bad(&format!("{what} is not UTF-8")))
                };
                Some((decode(u, "the user name")?, Secret::new(decode(p, "the password")?)))
            }
        };
        let mut proxy = Proxy { https, host, port, user, scheme: None };
        if proxy.user.is_some() {
            proxy = proxy.answer_with(ProxyAuth::Basic)?;
        }
        Ok(proxy)
    }

    /// Answers the proxy with this scheme, built from the URL's user info (no user info: no
    /// change).
    ///
    /// # Errors
    ///
    /// As the scheme's constructor ([`Basic::proxy`], [`Digest::proxy`](crate::Digest::proxy),
    /// [`Digest::proxy_guess`](crate::Digest::proxy_guess)).
    pub fn answer_with(mut self, how: ProxyAuth) -> Result<Self, ConfigError> {
        let Some((user, password)) = &self.user else { return Ok(self) };
        let (user, password) = (user.clone(), password.expose());
        self.scheme = Some(match how {
            ProxyAuth::Basic => BoxAuthenticator::new(Basic::proxy(user, password)?),
            #[cfg(feature = "digest")]
            ProxyAuth::Digest => BoxAuthenticator::new(crate::Digest::proxy(user, password)?),
            #[cfg(feature = "digest")]
            ProxyAuth::Guess => BoxAuthenticator::new(crate::Digest::proxy_guess(user, password)?),
        });
        Ok(self)
    }

    /// Answers the proxy's `CONNECT` with this scheme: a proxy scheme such as [`Basic::proxy`],
    /// [`Digest::proxy`](crate::Digest::proxy) or [`Digest::proxy_guess`](crate::Digest::proxy_guess),
    /// or a [`BoxAuthenticator`] shared with an [`AuthLayer`](crate::AuthLayer) so that both use
    /// one Digest state. It replaces credentials from the URL.
    pub fn auth<A>(mut self, scheme: A) -> Self
    where
        A: Authenticator,
        A::Mode: FitsIn<crate::Replay>,
    {
        self.scheme = Some(BoxAuthenticator::new(scheme));
        self
    }

    /// The scheme that answers this proxy, if any: give a clone to an
    /// [`AuthLayer`](crate::AuthLayer) for plain-`http://` targets, which go to the proxy in
    /// absolute form (the layer then answers their `407`, with the same state).
    pub fn scheme(&self) -> Option<BoxAuthenticator> {
        self.scheme.clone()
    }

    /// The user name and password of the URL's user info, if any (decoded).
    pub fn credentials(&self) -> Option<(&str, &Secret)> {
        self.user.as_ref().map(|(u, p)| (u.as_str(), p))
    }

    /// Whether the proxy has credentials (from its URL or [`Proxy::auth`]).
    pub fn has_credentials(&self) -> bool {
        self.scheme.is_some()
    }

    /// Whether this is an HTTPS proxy (TLS to the proxy itself).
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// `host:port` of the proxy, as the TCP connection is made.
    pub(crate) fn uri(&self) -> Uri {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("http://{host}:{}/", self.port).parse().unwrap_or_else(|_| Uri::from_static("http://invalid/"))
    }
}

/// The proxy a `CONNECT` request goes to, in that request's extensions: a scheme answering the
/// proxy's `407` reads it to know whom it talks to (Negotiate's service name is `HTTP/` and the
/// proxy's host, not the target's).
///
/// ```
/// use tower_auth::connect::ViaProxy;
///
/// fn service_name(req: &http::request::Parts) -> Option<String> {
///     req.extensions.get::<ViaProxy>().map(|via| format!("HTTP/{}", via.host()))
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViaProxy {
    host: String,
    port: u16,
}

impl ViaProxy {
    pub(crate) fn new(proxy: &Proxy) -> Self {
        ViaProxy { host: proxy.host.clone(), port: proxy.port }
    }

    /// The proxy's host name or address (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.to_string())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("scheme", &self.scheme)
            .finish()
    }
}

/// A URL as given, with any `user:pass@` replaced by `[redacted]@`, for messages and logs.
///
/// ```
/// assert_eq!(
///     tower_auth::connect::redact_userinfo("http://alice:s3cret@proxy:3128/"),
///     "http://[redacted]@proxy:3128/"
/// );
/// ```
pub fn redact_userinfo(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, raw),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let redacted = match rest[..end].rfind('@') {
        Some(at) => format!("[redacted]@{}", &rest[at + 1..]),
        None => rest.to_owned(),
    };
    match scheme {
        Some(s) => format!("{s}://{redacted}"),
        None => redacted,
    }
}

/// Which proxy, if any, each target goes through: one for `http://` targets, one for `https://`
/// targets, and a `NO_PROXY` list of targets that go direct.
///
/// The `NO_PROXY` rules are hyper-util's [`Matcher`]'s (curl's: comma-separated host names, a
/// leading dot or none matching subdomains too, IP addresses and CIDR ranges, `*` for every
/// host), plus entries with a port (`host:port`, `[::1]:8080`), matched here because the
/// matcher ignores ports: such an entry bypasses the proxy for that port only, as requests does.
///
/// ```
/// use tower_auth::connect::{Proxies, Proxy};
///
/// let proxy = Proxy::parse("http://proxy.corp:3128")?;
/// let proxies = Proxies::all(proxy).no_proxy(".internal, localhost, 10.0.0.0/8, api.corp:8443");
/// assert!(proxies.proxy_for(&"https://example.com/".parse().unwrap()).is_some());
/// assert!(proxies.proxy_for(&"https://git.internal/".parse().unwrap()).is_none());
/// assert!(proxies.proxy_for(&"http://10.1.2.3/".parse().unwrap()).is_none());
/// assert!(proxies.proxy_for(&"https://api.corp:8443/".parse().unwrap()).is_none());
/// assert!(proxies.proxy_for(&"https://api.corp/".parse().unwrap()).is_some());
/// # Ok::<_, tower_auth::ConfigError>(())
/// ```
#[derive(Clone, Default)]
pub struct Proxies {
    http: Option<Arc<Proxy>>,
    https: Option<Arc<Proxy>>,
    no: Option<Arc<NoProxy>>,
}

/// The `NO_PROXY` list: hyper-util's matcher for entries without a port, and entries with one.
struct NoProxy {
    matcher: Matcher,
    with_port: Vec<(String, u16)>,
    /// `*`: every target goes direct (the matcher applies `*` to host names only, not to IP
    /// addresses).
    everything: bool,
}

impl Proxies {
    /// No proxy: every target direct.
    pub fn none() -> Self {
        Proxies::default()
    }

    /// One proxy for every target.
    pub fn all(proxy: Proxy) -> Self {
        let proxy = Arc::new(proxy);
        Proxies { http: Some(Arc::clone(&proxy)), https: Some(proxy), no: None }
    }

    /// The proxy for `http://` targets.
    pub fn http(mut self, proxy: Option<Proxy>) -> Self {
        self.http = proxy.map(Arc::new);
        self
    }

    /// The proxy for `https://` targets.
    pub fn https(mut self, proxy: Option<Proxy>) -> Self {
        self.https = proxy.map(Arc::new);
        self
    }

    /// Targets that go direct, as in `NO_PROXY` (replaces an earlier list; empty: none).
    pub fn no_proxy(mut self, list: &str) -> Self {
        let mut plain = Vec::new();
        let mut with_port = Vec::new();
        let mut everything = false;
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            everything |= entry == "*";
            match split_port(entry) {
                Some((host, port)) => with_port.push((host.to_ascii_lowercase(), port)),
                None => plain.push(entry),
            }
        }
        // The matcher decides only whether a target bypasses: it is given a placeholder proxy
        // (never connected to) so that `intercept` answers for every target.
        let matcher = Matcher::builder().all("http://no-proxy.invalid".to_owned()).no(plain.join(",")).build();
        self.no = Some(Arc::new(NoProxy { matcher, with_port, everything }));
        self
    }

    /// The proxies of the environment, as curl and requests read it: `http_proxy` (only the
    /// lower-case name, as curl, when `REQUEST_METHOD` says this is a CGI script, so that a
    /// request's `Proxy:` header cannot choose the proxy: "httpoxy"), `https_proxy`,
    /// `all_proxy` (for targets without their own) and `no_proxy`, lower-case first, then
    /// upper-case. Each value is a URL as [`Proxy::parse`] takes it; user info becomes that
    /// proxy's credentials (Basic; [`Proxies::answer_with`] to change).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the variable (never its user info) if a proxy URL is invalid.
    pub fn from_env() -> Result<Self, ConfigError> {
        Proxies::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`Proxies::from_env`], reading variables through `get` (for tests and for
    /// configuration read elsewhere).
    ///
    /// # Errors
    ///
    /// As [`Proxies::from_env`].
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let cgi = get("REQUEST_METHOD").is_some();
        let first = |names: &[&'static str]| {
            names.iter().find_map(|n| get(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
        };
        let parse = |found: Option<(&str, String)>| -> Result<Option<Proxy>, ConfigError> {
            found
                .map(|(name, value)| Proxy::parse(value.trim()).map_err(|e| ConfigError::new(format!("{name}: {e}"))))
                .transpose()
        };
        let http_names: &[&str] = if cgi { &["http_proxy"] } else { &["http_proxy", "HTTP_PROXY"] };
        let all = parse(first(&["all_proxy", "ALL_PROXY"]))?;
        let http = parse(first(http_names))?.or_else(|| all.clone());
        let https = parse(first(&["https_proxy", "HTTPS_PROXY"]))?.or(all);
        let proxies = Proxies::none().http(http).https(https);
        Ok(match first(&["no_proxy", "NO_PROXY"]) {
            Some((_, list)) => proxies.no_proxy(&list),
            None => proxies,
        })
    }

    /// Answers every proxy that has user info with this scheme (see [`Proxy::answer_with`]).
    ///
    /// # Errors
    ///
    /// As [`Proxy::answer_with`].
    pub fn answer_with(self, how: ProxyAuth) -> Result<Self, ConfigError> {
        self.map(|p| p.answer_with(how))
    }

    /// Answers every proxy with this one scheme (one state: a Digest nonce learnt from one
    /// tunnel pre-authorises the next), replacing credentials from the URLs.
    pub fn auth<A>(self, scheme: A) -> Self
    where
        A: Authenticator,
        A::Mode: FitsIn<crate::Replay>,
    {
        let scheme = BoxAuthenticator::new(scheme);
        let Ok(proxies) = self.map::<std::convert::Infallible>(|p| Ok(p.auth(scheme.clone())));
        proxies
    }

    fn map<E>(mut self, f: impl Fn(Proxy) -> Result<Proxy, E>) -> Result<Self, E> {
        let same = matches!((&self.http, &self.https), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
        if let Some(p) = self.http.take() {
            self.http = Some(Arc::new(f(Proxy::clone(&p))?));
        }
        self.https = match self.https.take() {
            Some(_) if same => self.http.clone(),
            Some(p) => Some(Arc::new(f(Proxy::clone(&p))?)),
            None => None,
        };
        Ok(self)
    }

    /// Whether any proxy is configured.
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }

    /// The proxy a request to `target` goes through, or `None` to go direct (no proxy for its
    /// scheme, or `NO_PROXY` lists it).
    pub fn proxy_for(&self, target: &Uri) -> Option<&Proxy> {
        let proxy = match target.scheme_str() {
            Some("https") => self.https.as_deref()?,
            Some("http") => self.http.as_deref()?,
            _ => return None,
        };
        if let Some(no) = &self.no {
            if no.everything {
                return None;
            }
            let host = target.host()?;
            let port = target.port_u16().unwrap_or(if target.scheme_str() == Some("https") { 443 } else { 80 });
            let bare = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
            if no.with_port.iter().any(|(h, p)| *p == port && domain_matches(h, &bare)) {
                return None;
            }
            no.matcher.intercept(target)?;
        }
        Some(proxy)
    }
}

impl fmt::Debug for Proxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxies")
            .field("http", &self.http)
            .field("https", &self.https)
            .field("no_proxy", &self.no.as_ref().map(|n| &n.matcher))
            .finish()
    }
}

/// `host:port` or `[v6]:port` (a bare IPv6 address or CIDR range has no port).
fn split_port(entry: &str) -> Option<(&str, u16)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host, port.parse().ok()?));
    }
    let (host, port) = entry.rsplit_once(':')?;
    if host.contains(':') {
        return None; // an IPv6 address without brackets
    }
    Some((host, port.parse().ok()?))
}

/// curl's domain rule: `example.com` and `.example.com` match the host and its subdomains.
fn domain_matches(entry: &str, host: &str) -> bool {
    let entry = entry.trim_start_matches('.');
    host == entry || host.strip_suffix(entry).is_some_and(|rest| rest.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Proxies {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Proxies::from_lookup(move |n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())).unwrap()
    }

    fn via(p: &Proxies, url: &str) -> Option<String> {
        p.proxy_for(&url.parse().unwrap()).map(ToString::to_string)
    }

    #[test]
    fn parses_user_info_at_last_at_sign_and_percent_decodes() {
        let p = Proxy::parse("http://al%40ice:p@ss@proxy:3128").unwrap();
        assert_eq!(p.user.as_ref().unwrap().0, "al@ice");
        assert_eq!(p.user.as_ref().unwrap().1.expose(), "p@ss");
        assert_eq!(p.to_string(), "http://proxy:3128");
        let p = Proxy::parse("alice:p%40ss@proxy").unwrap();
        assert_eq!(p.user.as_ref().unwrap().1.expose(), "p@ss");
        assert_eq!(p.port, 80);
        assert_eq!(Proxy::parse("https://[::1]").unwrap().to_string(), "https://[::1]:443");
    }

    #[test]
    fn bad_urls_never_show_the_password() {
        for bad in
            ["socks5://u:hunter2@h:1", "http://u:hunter2@:3128", "http://u:hunter2@h:99999", "http://u:hunter2@h/x"]
        {
            let err = Proxy::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("[redacted]@"), "{err}");
        }
    }

    #[test]
    fn environment_lower_case_first_all_proxy_fallback() {
        let p =
            env(&[("HTTPS_PROXY", "http://upper:1"), ("https_proxy", "http://lower:2"), ("ALL_PROXY", "http://all:3")]);
        assert_eq!(via(&p, "https://x/").as_deref(), Some("http://lower:2"));
        assert_eq!(via(&p, "http://x/").as_deref(), Some("http://all:3"));
        let p = env(&[("HTTP_PROXY", "http://upper:1")]);
        assert_eq!(via(&p, "http://x/").as_deref(), Some("http://upper:1"));
        assert_eq!(via(&p, "https://x/"), None);
    }

    #[test]
    fn cgi_ignores_upper_case_http_proxy() {
        let p = env(&[("REQUEST_METHOD", "GET"), ("HTTP_PROXY", "http://evil:1")]);
        assert_eq!(via(&p, "http://x/"), None);
        let p = env(&[("REQUEST_METHOD", "GET"), ("http_proxy", "http://mine:1")]);
        assert_eq!(via(&p, "http://x/").as_deref(), Some("http://mine:1"));
    }

    #[test]
    fn no_proxy_entries() {
        let p = env(&[
            ("ALL_PROXY", "http://p:1"),
            ("no_proxy", ".example.com, localhost, 10.0.0.0/8, api.test:8443, [::1]:9"),
        ]);
        assert_eq!(via(&p, "https://www.example.com/"), None);
        assert_eq!(via(&p, "https://example.com/"), None);
        assert!(via(&p, "https://notexample.com/").is_some());
        assert_eq!(via(&p, "http://localhost:8080/"), None);
        assert_eq!(via(&p, "http://10.9.8.7/"), None);
        assert_eq!(via(&p, "https://api.test:8443/"), None);
        assert!(via(&p, "https://api.test/").is_some());
        assert_eq!(via(&p, "http://[::1]:9/"), None);
        assert!(via(&p, "http://[::1]:10/").is_some());
        let p = env(&[("ALL_PROXY", "http://p:1"), ("NO_PROXY", "*")]);
        assert_eq!(via(&p, "https://anything/"), None);
        assert_eq!(via(&p, "https://127.0.0.1/"), None);
    }

    #[test]
    fn env_error_names_the_variable_not_the_password() {
        let err = Proxies::from_lookup(|n| (n == "HTTPS_PROXY").then(|| "ftp://u:hunter2@h".to_owned())).unwrap_err();
        let err = err.to_string();
        assert!(err.starts_with("HTTPS_PROXY: "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
