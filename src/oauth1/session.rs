//! The three-legged dance (RFC 5849 §2), requests-oauthlib's `OAuth1Session` counterpart:
//! a temporary (request) token, the user's authorisation, the access token.
//!
//! ```text
//! fetch_request_token(client, REQUEST_TOKEN_URL, callback)  POST, signed with oauth_callback
//! authorization_url(AUTHORIZE_URL, &request_token)          the user approves there
//! parse_authorization_response(redirect, &request_token)    oauth_token checked, the verifier
//! fetch_access_token(client, ACCESS_TOKEN_URL, &request_token, verifier)
//! signer(&access_token)                                      an OAuth1Builder for the API
//! ```
//!
//! With the `oauth2-browser` feature, [`OAuth1Session::authorize`] runs the whole dance
//! through the user's browser ([`Browser`](crate::oauth2::Browser)) and the interactive OAuth2
//! grants' loopback listener (127.0.0.1 only, pages HTML-escaped, 404 for stray requests); the
//! callback's `oauth_token` must be the request token's (compared in constant time), as OAuth2's
//! `state`. Without a browser, show the user [`authorization_url`](OAuth1Session::authorization_url)
//! with callback `oob` and take the verifier (PIN) they type.
//!
//! Token requests go through a tower service you give (a hyper-util client, without this
//! crate's layer), taking `Request<Full<Bytes>>`.

use std::fmt;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower_service::Service;

use super::signature::form_decode;
use super::{OAuth1, OAuth1Builder};
use crate::authenticator::{AuthRequest, Authenticator, BodyView};
use crate::error::{BoxError, ConfigError};
use crate::secret::Secret;

/// The most bytes of a token endpoint's answer read.
const ANSWER_LIMIT: usize = 64 * 1024;

/// A temporary credential (request token) from the request-token step.
#[derive(Clone)]
pub struct RequestToken {
    /// `oauth_token`, shown to the user's browser.
    pub token: String,
    secret: Secret,
}

impl RequestToken {
    /// A request token you got elsewhere (kept between the steps of a web application).
    pub fn new(token: impl Into<String>, secret: impl Into<String>) -> Self {
        RequestToken { token: token.into(), secret: Secret::new(secret.into()) }
    }

    /// `oauth_token_secret`. Never print it.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

impl fmt::Debug for RequestToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestToken").field("token", &self.token).field("secret", &self.secret).finish()
    }
}

/// The token credentials (access token) the dance ends with, and the other fields of the
/// answer (`user_id`, `screen_name`…).
#[derive(Clone)]
pub struct AccessToken {
    /// `oauth_token`.
    pub token: String,
    secret: Secret,
    /// The answer's other fields, decoded, in order.
    pub extra: Vec<(String, String)>,
}

impl AccessToken {
    /// `oauth_token_secret`. Never print it.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &self.token)
            .field("secret", &self.secret)
            .field("extra", &self.extra)
            .finish()
    }
}

/// Why a step of the dance failed. Never holds a secret.
#[derive(Debug)]
#[non_exhaustive]
pub enum DanceError {
    /// The configuration (a URL, the RSA key).
    Config(ConfigError),
    /// The request could not be signed.
    Sign(crate::Error),
    /// The token request could not be sent, or its answer read.
    Transport(BoxError),
    /// The token endpoint answered with this status (the body's first bytes, as given).
    Status {
        /// The status.
        status: http::StatusCode,
        /// The start of the answer, which the server wrote.
        body: String,
    },
    /// The answer lacks `oauth_token` or `oauth_token_secret`.
    Malformed,
    /// The request-token answer lacks `oauth_callback_confirmed=true` (RFC 5849 §2.1).
    CallbackNotConfirmed,
    /// The authorisation came back for another request token, or without one (refused).
    TokenMismatch,
    /// The authorisation came back without `oauth_verifier` (the user refused, or the server
    /// said why: the answer's fields, as given).
    NoVerifier(String),
    /// The loopback listener could not be set up.
    Listen(String),
    /// The user did not come back in time.
    Timeout(std::time::Duration),
}

impl fmt::Display for DanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DanceError::Config(e) => write!(f, "OAuth1 dance: {e}"),
            DanceError::Sign(e) => write!(f, "OAuth1 dance: {e}"),
            DanceError::Transport(e) => write!(f, "OAuth1 dance: the token request failed: {e}"),
            DanceError::Status { status, body } => {
                write!(f, "OAuth1 dance: the token endpoint answered {status}: {body}")
            }
            DanceError::Malformed => f.write_str("OAuth1 dance: the answer has no oauth_token or oauth_token_secret"),
            DanceError::CallbackNotConfirmed => {
                f.write_str("OAuth1 dance: the request-token answer lacks oauth_callback_confirmed=true")
            }
            DanceError::TokenMismatch => {
                f.write_str("OAuth1 dance: the authorisation came back for another request token (refused)")
            }
            DanceError::NoVerifier(fields) => {
                write!(f, "OAuth1 dance: the authorisation came back without oauth_verifier ({fields})")
            }
            DanceError::Listen(e) => write!(f, "OAuth1 dance: {e}"),
            DanceError::Timeout(d) => {
                write!(f, "OAuth1 dance: no authorisation within {} s (the browser never came back)", d.as_secs())
            }
        }
    }
}

impl std::error::Error for DanceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DanceError::Config(e) => Some(e),
            DanceError::Sign(e) => Some(e),
            DanceError::Transport(e) => Some(&**e),
            _ => None,
        }
    }
}

/// The consumer's side of the three-legged dance (RFC 5849 §2), requests-oauthlib's
/// `OAuth1Session`: a temporary (request) token, the user's authorisation, the access token.
///
/// ```text
/// fetch_request_token(client, REQUEST_TOKEN_URL, callback)  POST, signed with oauth_callback
/// authorization_url(AUTHORIZE_URL, &request_token)          the user approves there
/// parse_authorization_response(redirect, &request_token)    oauth_token checked, the verifier
/// fetch_access_token(client, ACCESS_TOKEN_URL, &request_token, verifier)
/// signer(&access_token)                                      an OAuth1Builder for the API
/// ```
///
/// With the `oauth2-browser` feature, `authorize` runs the whole dance through the user's
/// browser ([`Browser`](crate::oauth2::Browser)) and the interactive OAuth2 grants' loopback
/// listener (127.0.0.1 only, pages HTML-escaped, 404 for stray requests); the callback's
/// `oauth_token` must be the request token's (compared in constant time), as OAuth2's `state`.
/// Without a browser, show the user [`authorization_url`](OAuth1Session::authorization_url)
/// with callback `oob` and take the verifier (PIN) they type, as below.
///
/// Token requests go through a tower service you give (a hyper-util client, without this
/// crate's layer), taking `Request<Full<Bytes>>`.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower_auth::oauth1::OAuth1Session;
///
/// let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<bytes::Bytes>>();
/// let session = OAuth1Session::new(tower_auth::oauth1::OAuth1::builder("app-key", "app-secret"));
/// let request = session.fetch_request_token(client.clone(), "https://api.example/oauth/request_token", "oob").await?;
/// println!("Open {} and type the PIN:", session.authorization_url("https://api.example/oauth/authorize", &request)?);
/// let mut pin = String::new();
/// std::io::stdin().read_line(&mut pin)?;
/// let access = session.fetch_access_token(client, "https://api.example/oauth/access_token", &request, pin.trim()).await?;
/// let oauth1 = session.signer(&access).build()?; // for AuthLayer::new
/// # let _ = oauth1; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct OAuth1Session {
    consumer: OAuth1Builder,
}

impl OAuth1Session {
    /// A session for the consumer of this builder: its key, secret, method and RSA key sign
    /// every step (its token, callback and verifier are set by the steps).
    pub fn new(consumer: OAuth1Builder) -> Self {
        OAuth1Session { consumer }
    }

    /// A builder signing as this consumer (no token yet).
    fn consumer(&self) -> OAuth1Builder {
        self.consumer.clone()
    }

    /// The builder of the scheme for API requests with the access token (set the placement,
    /// body hash… then [`build`](OAuth1Builder::build)).
    pub fn signer(&self, access: &AccessToken) -> OAuth1Builder {
        self.consumer().token(access.token.clone(), access.secret.expose())
    }

    /// Step 1 (RFC 5849 §2.1): a request token, from a POST signed by the consumer with
    /// `oauth_callback` (`oob` when the user will type a verifier).
    ///
    /// # Errors
    ///
    /// A [`DanceError`]: the endpoint's status, a malformed answer, no
    /// `oauth_callback_confirmed=true`.
    pub async fn fetch_request_token<S, RB>(
        &self,
        client: S,
        url: &str,
        callback: &str,
    ) -> Result<RequestToken, DanceError>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        let signer = self.consumer().callback(callback).build().map_err(DanceError::Config)?;
        let fields = post(client, url, &signer).await?;
        if !fields.iter().any(|(k, v)| k == "oauth_callback_confirmed" && v == "true") {
            return Err(DanceError::CallbackNotConfirmed);
        }
        let (token, secret, _) = token_fields(fields)?;
        Ok(RequestToken { token, secret: Secret::new(secret) })
    }

    /// Step 2 (§2.2): where to send the user: `authorize_url` with `oauth_token`.
    ///
    /// # Errors
    ///
    /// A [`DanceError::Config`] if `authorize_url` is not a URL.
    pub fn authorization_url(&self, authorize_url: &str, token: &RequestToken) -> Result<String, DanceError> {
        let uri: http::Uri = authorize_url
            .parse()
            .map_err(|_| DanceError::Config(ConfigError::new("invalid OAuth1 authorization URL")))?;
        let sep = if uri.query().is_some() { '&' } else { '?' };
        Ok(format!("{authorize_url}{sep}oauth_token={}", super::percent_encode(&token.token)))
    }

    /// Step 2's answer: the verifier from the callback URL (or its query) the provider sent the
    /// user to, after checking that its `oauth_token` is `token`'s.
    ///
    /// # Errors
    ///
    /// [`DanceError::TokenMismatch`] for another token (or none), [`DanceError::NoVerifier`].
    pub fn parse_authorization_response(&self, redirect: &str, token: &RequestToken) -> Result<String, DanceError> {
        let query = redirect.split_once('?').map_or(redirect, |(_, q)| q);
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        let fields: Vec<(String, String)> = form_decode(query.as_bytes())
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
            .collect();
        verifier_of(&fields, token)
    }

    /// Step 3 (§2.3): the access token, from a POST signed by the consumer and the request
    /// token with `oauth_verifier`.
    ///
    /// # Errors
    ///
    /// A [`DanceError`]: the endpoint's status (a wrong or reused verifier), a malformed answer.
    pub async fn fetch_access_token<S, RB>(
        &self,
        client: S,
        url: &str,
        token: &RequestToken,
        verifier: &str,
    ) -> Result<AccessToken, DanceError>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        let signer = self
            .consumer()
            .token(token.token.clone(), token.secret.expose())
            .verifier(verifier)
            .build()
            .map_err(DanceError::Config)?;
        let fields = post(client, url, &signer).await?;
        let (token, secret, extra) = token_fields(fields)?;
        Ok(AccessToken { token, secret: Secret::new(secret), extra })
    }
}

/// The verifier of a callback's fields, if its `oauth_token` is `token`'s.
fn verifier_of(fields: &[(String, String)], token: &RequestToken) -> Result<String, DanceError> {
    let got = fields.iter().find(|(k, _)| k == "oauth_token").map(|(_, v)| v.as_str());
    if !got.is_some_and(|t| same(t, &token.token)) {
        return Err(DanceError::TokenMismatch);
    }
    match fields.iter().find(|(k, _)| k == "oauth_verifier") {
        Some((_, v)) if !v.is_empty() => Ok(v.clone()),
        _ => {
            let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            Err(DanceError::NoVerifier(format!("fields: {}", names.join(", "))))
        }
    }
}

/// Equality that takes the same time wherever the first difference is.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `oauth_token`, `oauth_token_secret` and the rest.
#[allow(clippy::type_complexity)]
fn token_fields(fields: Vec<(String, String)>) -> Result<(String, String, Vec<(String, String)>), DanceError> {
    let (mut token, mut secret, mut extra) = (None, None, Vec::new());
    for (k, v) in fields {
        match k.as_str() {
            "oauth_token" => token = Some(v),
            "oauth_token_secret" => secret = Some(v),
            "oauth_callback_confirmed" => {}
            _ => extra.push((k, v)),
        }
    }
    match (token, secret) {
        (Some(t), Some(s)) if !t.is_empty() => Ok((t, s, extra)),
        _ => Err(DanceError::Malformed),
    }
}

/// POSTs an empty body signed by `signer` to `url`; the answer's form fields.
async fn post<S, RB>(mut client: S, url: &str, signer: &OAuth1) -> Result<Vec<(String, String)>, DanceError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body,
    RB::Error: Into<BoxError>,
{
    let (mut parts, ()) = Request::post(url)
        .body(())
        .map_err(|_| DanceError::Config(ConfigError::new("invalid OAuth1 token endpoint URL")))?
        .into_parts();
    signer.authorize(&mut AuthRequest::new(&mut parts, BodyView::Empty, 0), &mut false).map_err(DanceError::Sign)?;
    std::future::poll_fn(|cx| client.poll_ready(cx)).await.map_err(|e| DanceError::Transport(e.into()))?;
    let res = client
        .call(Request::from_parts(parts, Full::new(Bytes::new())))
        .await
        .map_err(|e| DanceError::Transport(e.into()))?;
    let status = res.status();
    let body = http_body_util::Limited::new(res.into_body(), ANSWER_LIMIT)
        .collect()
        .await
        .map_err(DanceError::Transport)?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(DanceError::Status { status, body: text });
    }
    Ok(form_decode(&body)
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
        .collect())
}

#[cfg(feature = "oauth2-browser")]
mod browser {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::{Query, State};
    use axum::response::Html;
    use http::StatusCode;
    use tokio::sync::oneshot;

    use super::*;
    use crate::oauth2::Browser;
    use crate::oauth2::RedirectHost;
    use crate::oauth2::interactive::{bind, page, serve, show_and_wait};

    /// The URLs and listener settings of [`OAuth1Session::authorize`].
    #[derive(Debug, Clone)]
    pub struct Endpoints {
        /// The request-token endpoint (POST).
        pub request_token_url: String,
        /// Where the user approves (`oauth_token` is added).
        pub authorize_url: String,
        /// The access-token endpoint (POST).
        pub access_token_url: String,
        /// The loopback listener's port (0: any free port).
        pub port: u16,
        /// How long to wait for the user.
        pub timeout: Duration,
    }

    impl Endpoints {
        /// The three endpoints; the listener on any free port, waiting 5 minutes.
        pub fn new(
            request_token_url: impl Into<String>,
            authorize_url: impl Into<String>,
            access_token_url: impl Into<String>,
        ) -> Self {
            Endpoints {
                request_token_url: request_token_url.into(),
                authorize_url: authorize_url.into(),
                access_token_url: access_token_url.into(),
                port: 0,
                timeout: Duration::from_secs(300),
            }
        }
    }

    type Outcome = Result<String, DanceError>;

    struct Waiting {
        token: RequestToken,
        done: Mutex<Option<oneshot::Sender<Outcome>>>,
    }

    async fn callback(
        State(w): State<Arc<Waiting>>,
        Query(q): Query<HashMap<String, String>>,
    ) -> (StatusCode, Html<String>) {
        let fields: Vec<(String, String)> = q.into_iter().collect();
        let outcome = verifier_of(&fields, &w.token);
        let reply = match &outcome {
            Ok(_) => (StatusCode::OK, page("Authorisation succeeded", "You can close this window.")),
            Err(e) => (StatusCode::BAD_REQUEST, page("Authorisation failed", &e.to_string())),
        };
        if let Some(done) = w.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = done.send(outcome);
        }
        reply
    }

    impl OAuth1Session {
        /// The whole dance through the user's browser: the loopback listener (127.0.0.1, the
        /// interactive OAuth2 grants' own) becomes `oauth_callback`, the browser opens the
        /// authorization URL, the callback's `oauth_token` is checked and its verifier
        /// exchanged for the access token. The listener always stops.
        ///
        /// # Errors
        ///
        /// A [`DanceError`] from any step; [`DanceError::Timeout`] if the user never comes back.
        pub async fn authorize<S, RB>(
            &self,
            client: S,
            endpoints: &Endpoints,
            browser: Arc<dyn Browser>,
        ) -> Result<AccessToken, DanceError>
        where
            S: Service<Request<Full<Bytes>>, Response = Response<RB>> + Clone,
            S::Error: Into<BoxError>,
            RB: Body,
            RB::Error: Into<BoxError>,
        {
            let (listeners, port) =
                bind(&[endpoints.port], RedirectHost::Ipv4).await.map_err(|e| DanceError::Listen(e.to_string()))?;
            let callback_url = format!("http://127.0.0.1:{port}/callback");
            let token = self.fetch_request_token(client.clone(), &endpoints.request_token_url, &callback_url).await?;
            let url = self.authorization_url(&endpoints.authorize_url, &token)?;
            let (done, result) = oneshot::channel();
            let waiting = Arc::new(Waiting { token: token.clone(), done: Mutex::new(Some(done)) });
            let app = axum::Router::new()
                .route("/callback", axum::routing::get(callback))
                .fallback(|| async {
                    (StatusCode::NOT_FOUND, page("Not found", "This is an OAuth1 callback listener."))
                })
                .with_state(waiting);
            let listening = serve(listeners, app);
            let outcome = match show_and_wait(browser, &url, endpoints.timeout, result, listening).await {
                Some(Some(outcome)) => outcome,
                Some(None) => Err(DanceError::Listen("the listener stopped".into())),
                None => Err(DanceError::Timeout(endpoints.timeout)),
            };
            let verifier = outcome?;
            self.fetch_access_token(client, &endpoints.access_token_url, &token, &verifier).await
        }
    }
}

#[cfg(feature = "oauth2-browser")]
pub use browser::Endpoints;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_url_and_response() {
        let s = OAuth1Session::new(OAuth1::builder("k", "s"));
        let t = RequestToken::new("req tok", "req-s3cret");
        assert_eq!(
            s.authorization_url("https://a.example/auth", &t).unwrap(),
            "https://a.example/auth?oauth_token=req%20tok"
        );
        assert_eq!(
            s.authorization_url("https://a.example/auth?x=1", &t).unwrap(),
            "https://a.example/auth?x=1&oauth_token=req%20tok"
        );
        let ok = s.parse_authorization_response("http://127.0.0.1:1/cb?oauth_token=req+tok&oauth_verifier=v3r", &t);
        assert_eq!(ok.unwrap(), "v3r");
        let other = s.parse_authorization_response("http://x/cb?oauth_token=other&oauth_verifier=v", &t);
        assert!(matches!(other, Err(DanceError::TokenMismatch)));
        let none = s.parse_authorization_response("oauth_verifier=v", &t);
        assert!(matches!(none, Err(DanceError::TokenMismatch)));
        let denied = s.parse_authorization_response("oauth_token=req%20tok&denied=1", &t);
        assert!(matches!(denied, Err(DanceError::NoVerifier(_))));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn token_answers() {
        let f = |s: &str| -> Vec<(String, String)> {
            form_decode(s.as_bytes())
                .into_iter()
                .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
                .collect()
        };
        let (t, s, extra) = token_fields(f("oauth_token=a&oauth_token_secret=b&user_id=7")).unwrap();
        assert_eq!((t.as_str(), s.as_str()), ("a", "b"));
        assert_eq!(extra, vec![("user_id".to_owned(), "7".to_owned())]);
        assert!(matches!(token_fields(f("oauth_token=a")), Err(DanceError::Malformed)));
        assert!(matches!(token_fields(f("oauth_token=&oauth_token_secret=b")), Err(DanceError::Malformed)));
    }
}
