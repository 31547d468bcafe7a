//! [`UrlCredentials`]: credentials in request URLs turned into Basic, user info removed.

use std::fmt;

use http::Uri;
use http::header::AUTHORIZATION;
use http::uri::Authority;
use percent_encoding::percent_decode_str;

use crate::authenticator::{AuthRequest, Credential, PlainHttpWarning};
use crate::layer::AuthLayer;

/// Credentials in request URLs: `http://user:password@host/` turned into Basic, and the user
/// info always removed from the URI (opt-in).
///
/// Credentials in a URL are a convenience of command lines and configuration files
/// (`DATABASE_URL`-style settings, curl's `-u`-less habit). They must not travel as they are:
/// user info in a request URI can end up in logs, in a proxy's request line, or be taken for the
/// host by a careless parser (`http://example.com:@evil.com/` is a request to `evil.com`).
/// This scheme, for every request:
///
/// 1. removes the user info from the URI, whatever it holds (also an empty user, or a user info
///    that is not used);
/// 2. if the user name is not empty, sends `Authorization: Basic` with the percent-decoded user
///    name and password (a missing password is an empty one, as in requests and httpx), unless
///    the request already has an `Authorization` header.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_auth::{AuthLayer, UrlCredentials};
/// # let client = tower::service_fn(|req: http::Request<String>| async move {
/// #     assert_eq!(req.uri(), "https://api.example/v1");
/// #     assert_eq!(req.headers()["authorization"], "Basic YWxpY2U6cEBzcw=="); // alice:p@ss
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
///
/// let svc = ServiceBuilder::new().layer(AuthLayer::new(UrlCredentials::new())).service(client);
/// let req = http::Request::get("https://alice:p%40ss@api.example/v1").body(String::new())?;
/// svc.oneshot(req).await?;
/// # Ok(()) }
/// ```
///
/// With a [`Router`](crate::route::Router), put this layer *above* it: the router then sees a
/// URI without user info and the caller's credentials as an explicit `Authorization` header,
/// which wins over any route.
///
/// # Security
///
/// The credentials go to the host the URI names, whichever it is; only use URLs you trust.
/// Basic over plain `http://` logs a warning once. A user name with `:` (Basic forbids it) or
/// a control character, once decoded, is not sent (a warning is logged); the user info is
/// removed anyway.
#[derive(Default)]
pub struct UrlCredentials {
    plain_http: PlainHttpWarning,
}

impl UrlCredentials {
    /// The scheme.
    pub fn new() -> Self {
        UrlCredentials::default()
    }
}

impl fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UrlCredentials")
    }
}

/// `uri` without its user info, and the raw user info (`None` if it had none).
fn split_user_info(uri: &Uri) -> Option<(Uri, &str)> {
    let authority = uri.authority()?.as_str();
    let (user_info, host_port) = authority.rsplit_once('@')?;
    let stripped = Authority::try_from(host_port).ok().and_then(|authority| {
        let mut parts = uri.clone().into_parts();
        parts.authority = Some(authority);
        Uri::from_parts(parts).ok()
    });
    // The rest of a valid authority is a valid authority; should it ever not be, the request
    // loses its authority altogether (and the client refuses it) rather than keep user info.
    let stripped = stripped.unwrap_or_else(|| {
        tracing::error!("could not remove the user info from the request URI; its authority is removed");
        uri.path_and_query().map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()))
    });
    Some((stripped, user_info))
}

/// The Basic header value for a percent-encoded user info, if it can be sent.
fn basic_value(user_info: &str) -> Result<Option<http::HeaderValue>, &'static str> {
    let (user, password) = user_info.split_once(':').unwrap_or((user_info, ""));
    let user: Vec<u8> = percent_decode_str(user).collect();
    if user.is_empty() {
        return Ok(None);
    }
    let password: Vec<u8> = percent_decode_str(password).collect();
    if user.contains(&b':') {
        return Err("the user name contains ':' (Basic forbids it)");
    }
    if user.iter().chain(&password).any(|&b| b < 0x20 || b == 0x7f) {
        return Err("the user name or password contains a control character");
    }
    crate::basic::basic_value(&user, &password).map(Some).map_err(|_| "the credentials are not a header value")
}

impl Credential for UrlCredentials {
    /// Whether the request URI has user info.
    fn applies_to(&self, req: &http::request::Parts) -> bool {
        req.uri.authority().is_some_and(|a| a.as_str().contains('@'))
    }

    fn apply(&self, req: &mut AuthRequest<'_>) {
        let Some((stripped, user_info)) = split_user_info(req.uri()) else {
            return;
        };
        let value = if req.headers().contains_key(AUTHORIZATION) { Ok(None) } else { basic_value(user_info) };
        *req.uri_mut() = stripped;
        match value {
            Ok(Some(value)) => {
                self.plain_http.check(req.uri(), "Basic credentials from the URL");
                req.set_credential(&AUTHORIZATION, &value);
            }
            Ok(None) => {}
            Err(why) => tracing::warn!("credentials in the request URL not sent: {why}; the user info was removed"),
        }
    }
}

impl AuthLayer<UrlCredentials> {
    /// A layer that turns user info in request URIs into Basic credentials and removes it from
    /// the URI ([`UrlCredentials`]).
    pub fn url_credentials() -> Self {
        AuthLayer::new(UrlCredentials::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Authenticator;

    fn run(uri: &str, explicit: Option<&'static str>) -> (String, Option<String>) {
        let mut req = http::Request::get(uri).body(()).unwrap();
        if let Some(v) = explicit {
            req.headers_mut().insert(AUTHORIZATION, http::HeaderValue::from_static(v));
        }
        let (mut parts, ()) = req.into_parts();
        let mut r = AuthRequest::new(&mut parts, crate::BodyView::Empty, 0);
        UrlCredentials::new().authorize(&mut r, &mut ()).unwrap();
        let auth = parts.headers.get(AUTHORIZATION).map(|v| {
            assert!(v.is_sensitive() || explicit.is_some());
            v.to_str().unwrap().to_owned()
        });
        (parts.uri.to_string(), auth)
    }

    #[test]
    fn user_info_becomes_basic_and_is_removed() {
        assert_eq!(
            run("http://alice:s3cret@h.example:8080/p?q=1", None),
            ("http://h.example:8080/p?q=1".into(), Some("Basic YWxpY2U6czNjcmV0".into()))
        );
        // Percent-decoded: "a@b" / "p:c".
        assert_eq!(run("https://a%40b:p%3Ac@h.example/", None).1.as_deref(), Some("Basic YUBiOnA6Yw=="));
        // No password: an empty one.
        assert_eq!(run("https://alice@h.example/", None).1.as_deref(), Some("Basic YWxpY2U6"));
        assert_eq!(run("http://u:p@[::1]:8080/", None).0, "http://[::1]:8080/");
    }

    #[test]
    fn user_info_is_always_removed() {
        for (uri, expected) in [
            ("http://:pw@h.example/", "http://h.example/"),
            ("http://@h.example/", "http://h.example/"),
            ("http://:@h.example:81/x", "http://h.example:81/x"),
            ("http://a%3Ab:pw@h.example/", "http://h.example/"),
            ("http://a%0Ab:pw@h.example/", "http://h.example/"),
            ("http://example.com:@evil.com/", "http://evil.com/"),
            ("http://u@v@h.example/", "http://h.example/"),
        ] {
            let (sent, auth) = run(uri, None);
            assert_eq!(sent, expected, "{uri}");
            let expected_auth = match uri {
                "http://u@v@h.example/" => Some("Basic dUB2Og=="), // "u@v:"
                "http://example.com:@evil.com/" => Some("Basic ZXhhbXBsZS5jb206"), // "example.com:", to evil.com
                _ => None,
            };
            assert_eq!(auth.as_deref(), expected_auth, "{uri}");
        }
        // An explicit header wins; the user info still goes.
        assert_eq!(
            run("http://u:p@h.example/", Some("Bearer mine")),
            ("http://h.example/".into(), Some("Bearer mine".into()))
        );
        // Nothing to do.
        assert_eq!(run("http://h.example/", None), ("http://h.example/".into(), None));
    }
}
