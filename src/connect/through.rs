//! [`ThroughProxy`]: a proxy scheme kept to the requests that go through a proxy.

use bytes::Bytes;
use http::request::Parts;

use super::Proxies;
use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize};

/// A proxy scheme ([`Basic::proxy`](crate::Basic::proxy), [`Digest::proxy`](crate::Digest::proxy),
/// ...) that applies only to the plain-`http` requests that [`Proxies`] sends through a proxy.
///
/// A layer's proxy scheme sees every request: without this, a plain-`http` request that goes
/// direct (its host in `NO_PROXY`, or the target of a redirect followed above the layer) would
/// carry `Proxy-Authorization` to that origin. With the same [`Proxies`] as the connector's, the
/// scheme applies exactly where the connector sends the request to the proxy in absolute form.
/// (`https` requests never carry it: their proxy credentials go on the `CONNECT`, answered by
/// [`Proxy::auth`](super::Proxy::auth).)
///
/// ```
/// use tower_auth::Basic;
/// use tower_auth::connect::{Proxies, Proxy, ThroughProxy};
/// use tower_auth::{AuthRequest, Authenticator, BodyView};
///
/// let proxies = Proxies::all(Proxy::parse("http://proxy.corp:3128")?).no_proxy("intranet.corp");
/// let scheme = ThroughProxy::new(Basic::proxy("alice", "s3cret")?, proxies);
/// for (url, expected) in [("http://example.com/", true), ("http://intranet.corp/", false)] {
///     let (mut parts, ()) = http::Request::get(url).body(()).unwrap().into_parts();
///     scheme.authorize(&mut AuthRequest::new(&mut parts, BodyView::Empty, 0), &mut ()).unwrap();
///     assert_eq!(parts.headers.contains_key("proxy-authorization"), expected);
/// }
/// # Ok::<_, tower_auth::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ThroughProxy<A> {
    inner: A,
    proxies: Proxies,
}

impl<A> ThroughProxy<A> {
    /// `inner` for the plain-`http` requests `proxies` sends through a proxy only.
    pub fn new(inner: A, proxies: Proxies) -> Self {
        ThroughProxy { inner, proxies }
    }

    /// Whether `req` goes to a proxy in absolute form.
    fn proxied(&self, req: &Parts) -> bool {
        req.uri.scheme_str() == Some("http") && self.proxies.proxy_for(&req.uri).is_some()
    }
}

impl<A: Authenticator> Authenticator for ThroughProxy<A> {
    type Mode = A::Mode;
    type Error = A::Error;
    type State = A::State;
    type Wait = A::Wait;

    fn authorize(&self, req: &mut AuthRequest<'_>, state: &mut A::State) -> Result<Authorize<A::Wait>, A::Error> {
        if !self.proxied(req.parts()) {
            return Ok(Authorize::Done);
        }
        self.inner.authorize(req, state)
    }

    fn applies_to(&self, req: &Parts) -> bool {
        self.proxied(req) && self.inner.applies_to(req)
    }

    fn observes_responses(&self) -> bool {
        self.inner.observes_responses()
    }

    fn needs_request_head(&self) -> bool {
        self.inner.needs_request_head()
    }

    fn connection_bound(&self) -> bool {
        self.inner.connection_bound()
    }

    fn on_response(&self, req: &Parts, res: &http::response::Parts, state: &mut A::State) -> Action {
        if !self.proxied(req) {
            return Action::Done;
        }
        self.inner.on_response(req, res, state)
    }

    fn on_response_body(&self, req: &Parts, res: &http::response::Parts, body: &Bytes, state: &mut A::State) -> Action {
        self.inner.on_response_body(req, res, body, state)
    }

    fn own_request(&self, req: &Parts, state: &mut A::State) -> Option<http::Request<Bytes>> {
        self.inner.own_request(req, state)
    }

    fn on_own_response(&self, req: &Parts, res: &http::response::Parts, body: &Bytes, state: &mut A::State) -> Action {
        self.inner.on_own_response(req, res, body, state)
    }
}
