//! OAuth1 signing against oauthlib's server endpoints (Debian `python3-oauthlib` 3.2.2,
//! `SignatureOnlyEndpoint` and `ResourceEndpoint` behind `tests/peers/oauthlib_verifier.py`),
//! a verifier nobody here wrote. Every signature method × GET with a query, POST with a form
//! body, PUT with a JSON body and its body hash (checked by the front end); header, query and
//! body placement; awkward parameters; and wrong secrets, which must be refused.
//!
//! The verifier is started by tests/peers/oauthlib.sh (see tests/support/peers.rs): these tests
//! skip with a printed reason outside CI when it cannot be had, and fail in CI.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::peers::oauthlib;
use tower::{ServiceBuilder, ServiceExt};
use tower_auth::oauth1::{OAuth1, Placement, SignatureMethod};
use tower_auth::{AuthLayer, ReplayBody};

const KEY: &str = "tower-consumer-key-0001";
const SECRET: &str = "consumer-s3cret/+&=~\u{e9}";
const TOKEN: &str = "tower-access-token-0001";
const TOKEN_SECRET: &str = "access-s3cret&/+ %";
const RSA_KEY: &str = include_str!("data/test-rsa-key.pem");
/// The verifier's second consumer and token, whose secrets need no percent-encoding: oauthlib
/// 3.2.2 percent-decodes `oauth_*` values from the query or a form body twice, so a PLAINTEXT
/// signature (the encoded secrets themselves) placed there verifies only with such secrets.
/// (The odd secrets are checked there by our own `OAuth1Check`, which decodes once, as RFC 5849
/// §3.4.1.3.1 says: see `plaintext_with_reserved_secrets_in_query_and_body` in tests/oauth1.rs.)
const PLAIN: [&str; 4] =
    ["tower-consumer-key-0002", "consumer-secret-0002", "tower-access-token-0002", "access-secret-0002"];

fn scheme(method: SignatureMethod, three_legged: bool) -> tower_auth::oauth1::OAuth1Builder {
    scheme_for(method, three_legged, Placement::Header)
}

/// The scheme for `method`, with the second consumer for PLAINTEXT outside the header.
fn scheme_for(method: SignatureMethod, three_legged: bool, placement: Placement) -> tower_auth::oauth1::OAuth1Builder {
    let [key, secret, token, token_secret] = match (method, placement) {
        (SignatureMethod::Plaintext, Placement::Query | Placement::Body) => PLAIN,
        _ => [KEY, SECRET, TOKEN, TOKEN_SECRET],
    };
    let mut b = OAuth1::builder(key, secret).method(method).placement(placement);
    if method.is_rsa() {
        b = b.rsa_key_pem(RSA_KEY);
    }
    if three_legged {
        b = b.token(token, token_secret);
    }
    b
}

/// Sends `req` through the layer; the status and the verifier's JSON answer.
async fn send(oauth: OAuth1, req: Request<Full<Bytes>>) -> (StatusCode, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let svc = ServiceBuilder::new().layer(AuthLayer::new(oauth)).service(client);
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn get(url: String) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

fn form(method: &str, url: String, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn json(url: String, body: &'static str) -> Request<Full<Bytes>> {
    Request::put(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// The three request shapes, for one method: `(shape, status, answer)`.
async fn shapes(
    base: &str,
    legs: &str,
    method: SignatureMethod,
    placement: Placement,
) -> Vec<(String, StatusCode, Value)> {
    let three = legs == "3legged";
    let mut out = Vec::new();
    let (s, v) =
        send(scheme_for(method, three, placement).build().unwrap(), get(format!("{base}/{legs}/get?q=hello&page=2")))
            .await;
    out.push(("GET+query".to_owned(), s, v));
    let (s, v) = send(
        scheme_for(method, three, placement).build().unwrap(),
        form("POST", format!("{base}/{legs}/post?x=1"), "status=Hello%20Ladies%20%2b%20Gentlemen&a=1"),
    )
    .await;
    out.push(("POST+form".to_owned(), s, v));
    if placement != Placement::Body {
        let (s, v) = send(
            scheme_for(method, three, placement).body_hash(true).build().unwrap(),
            json(format!("{base}/{legs}/bh/put"), "{\"name\":\"t\u{e9}st\",\"n\":[1,2]}"),
        )
        .await;
        out.push(("PUT+json+body_hash".to_owned(), s, v));
    }
    out
}

#[tokio::test]
async fn every_method_on_the_three_request_shapes_header_placement() {
    let Some(base) = oauthlib() else { return };
    for legs in ["2legged", "3legged"] {
        for method in SignatureMethod::ALL {
            for (shape, status, answer) in shapes(base, legs, method, Placement::Header).await {
                eprintln!("oauthlib {legs} {method} header {shape}: {status} accepted={}", answer["accepted"]);
                assert_eq!(status, 200, "{legs} {method} {shape}: {answer}");
                assert_eq!(answer["method"], method.name());
                assert_eq!(answer["body_hash"], shape.starts_with("PUT"), "{shape}");
            }
        }
    }
}

#[tokio::test]
async fn every_method_with_parameters_in_the_query_and_in_the_body() {
    let Some(base) = oauthlib() else { return };
    for placement in [Placement::Query, Placement::Body] {
        for method in SignatureMethod::ALL {
            for (shape, status, answer) in shapes(base, "3legged", method, placement).await {
                eprintln!("oauthlib 3legged {method} {placement:?} {shape}: {status}");
                assert_eq!(status, 200, "{method} {placement:?} {shape}: {answer}");
                assert_eq!(answer["method"], method.name());
            }
        }
    }
    // Body placement: the parameters really are in the body, the query untouched.
    let oauth = scheme(SignatureMethod::HmacSha256, true).placement(Placement::Body).build().unwrap();
    let (status, answer) = send(oauth, form("POST", format!("{base}/3legged/p?x=1"), "a=1")).await;
    assert_eq!(status, 200);
    assert_eq!(answer["query"], "x=1");
    assert!(answer["body"].as_str().unwrap().starts_with("a=1&oauth_consumer_key="), "{answer}");
    // A GET with no body gets a form body of parameters.
    let oauth = scheme(SignatureMethod::HmacSha1, true).placement(Placement::Body).build().unwrap();
    let (status, answer) = send(oauth, form("POST", format!("{base}/3legged/p"), "")).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn awkward_parameters_are_signed_as_oauthlib_reads_them() {
    let Some(base) = oauthlib() else { return };
    for method in [SignatureMethod::HmacSha1, SignatureMethod::RsaSha256, SignatureMethod::Plaintext] {
        // Reserved and non-ASCII characters, repeated names, empty values, `+` and `%20`.
        let url = format!(
            "{base}/3legged/odd%20path/%C3%A9?q=a+b&q=a%20b&r=%2B%26%3D%2F%3F%23&e=&e&%E2%98%83=%F0%9F%A6%80&z=1&a=3&a=1"
        );
        let body = "b=%E2%82%AC+%26+more&b=&b=x&c=%7E%21%2A%27%28%29";
        for placement in [Placement::Header, Placement::Query, Placement::Body] {
            let oauth = scheme_for(method, true, placement).build().unwrap();
            let (status, answer) = send(oauth, form("POST", url.clone(), body)).await;
            assert_eq!(status, 200, "{method} {placement:?}: {answer}");
            let params: Vec<(String, String)> = answer["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_str().unwrap().to_owned()))
                .collect();
            for expected in [
                ("q", "a b"),
                ("r", "+&=/?#"),
                ("e", ""),
                ("\u{2603}", "\u{1f980}"),
                ("b", "\u{20ac} & more"),
                ("b", ""),
            ] {
                assert!(params.iter().any(|(n, v)| n == expected.0 && v == expected.1), "{expected:?} in {params:?}");
            }
            assert_eq!(params.iter().filter(|(n, _)| n == "q").count(), 2);
        }
    }
    // A realm in the header is not signed, and oauthlib accepts it.
    let oauth = scheme(SignatureMethod::HmacSha512, true).realm("Photos & more").build().unwrap();
    let (status, answer) = send(oauth, get(format!("{base}/3legged/realm"))).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn wrong_secrets_keys_and_tokens_are_refused() {
    let Some(base) = oauthlib() else { return };
    let url = || get(format!("{base}/3legged/get?q=1"));
    let wrong = OAuth1::builder(KEY, "not-the-secret").token(TOKEN, TOKEN_SECRET).build().unwrap();
    assert_eq!(send(wrong, url()).await.0, 401);
    let wrong = OAuth1::builder(KEY, SECRET).token(TOKEN, "not-the-token-secret").build().unwrap();
    assert_eq!(send(wrong, url()).await.0, 401);
    let wrong = OAuth1::builder(KEY, SECRET).token(TOKEN, "x").method(SignatureMethod::Plaintext).build().unwrap();
    assert_eq!(send(wrong, url()).await.0, 401);
    let other_key = include_str!("data/test-ec-key.pem");
    assert!(OAuth1::builder(KEY, "").method(SignatureMethod::RsaSha1).rsa_key_pem(other_key).build().is_err());
    let wrong = OAuth1::builder("tower-consumer-key-9999", SECRET).token(TOKEN, TOKEN_SECRET).build().unwrap();
    assert_eq!(send(wrong, url()).await.0, 401);
    // The right credentials, for contrast: the same request is accepted.
    let right = OAuth1::builder(KEY, SECRET).token(TOKEN, TOKEN_SECRET).build().unwrap();
    assert_eq!(send(right, url()).await.0, 200);
    // A body hash that does not match the body is refused by the front end: signed for one
    // body, sent with another (a caller's Authorization header wins, so reuse a signed one).
    let oauth = scheme(SignatureMethod::HmacSha256, true).body_hash(true).build().unwrap();
    let mut parts = http::Request::put(format!("{base}/3legged/bh/put"))
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let signed_for = [Bytes::from_static(b"{\"a\":1}")];
    use tower_auth::{AuthRequest, Authenticator, BodyView};
    oauth.authorize(&mut AuthRequest::new(&mut parts, BodyView::Buffered(&signed_for), 0), &mut true).unwrap();
    let mut req = Request::from_parts(parts, Full::new(Bytes::from_static(b"{\"a\":2}")));
    req.headers_mut().remove("content-length");
    let (status, answer) = send(oauth, req).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["reason"], "wrong oauth_body_hash");
}

#[tokio::test]
async fn a_body_over_the_limit_fails_closed_before_anything_is_sent() {
    let Some(base) = oauthlib() else { return };
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let oauth = scheme(SignatureMethod::HmacSha1, true).build().unwrap();
    let svc = ServiceBuilder::new().layer(AuthLayer::new(oauth).body_limit(16)).service(client);
    let big = "a=".to_owned() + &"x".repeat(100);
    let req = Request::post(format!("{base}/3legged/big"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(big)))
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    assert!(err.is_body(), "{err:?}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("body_limit"), "{source}");
}

/// The three-legged dance against oauthlib's RequestTokenEndpoint, AuthorizationEndpoint (the
/// user approving at once) and AccessTokenEndpoint: the browser mock follows the authorization
/// URL to our loopback listener; the access token then signs requests oauthlib accepts.
#[tokio::test]
async fn three_legged_dance_through_the_browser_mock() {
    use std::sync::Arc;
    use tower_auth::oauth1::{Endpoints, OAuth1Session};
    use tower_auth::testing::BrowserMock;
    let Some(base) = oauthlib() else { return };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let endpoints =
        Endpoints::new(format!("{base}/request_token"), format!("{base}/authorize"), format!("{base}/access_token"));
    for method in [SignatureMethod::HmacSha256, SignatureMethod::RsaSha1, SignatureMethod::Plaintext] {
        let session = OAuth1Session::new(scheme(method, false));
        let browser = BrowserMock::new();
        let access = session.authorize(client.clone(), &endpoints, Arc::new(browser.clone())).await.unwrap();
        browser.assert_success();
        assert_eq!(browser.opened().len(), 1);
        assert!(browser.opened()[0].starts_with(&format!("{base}/authorize?oauth_token=")));
        assert!(!format!("{access:?}").contains(access.secret().expose()));
        // The new access token works, and only with its secret.
        let oauth = session.signer(&access).build().unwrap();
        let (status, answer) = send(oauth, get(format!("{base}/3legged/after-dance?x=1"))).await;
        assert_eq!(status, 200, "{method}: {answer}");
        let wrong = OAuth1::builder(KEY, SECRET).token(access.token.clone(), "not-it").build().unwrap();
        assert_eq!(send(wrong, get(format!("{base}/3legged/after-dance"))).await.0, 401);
    }
}

/// The dance without a browser: callback `oob`, the verifier taken from the provider's page (as
/// a user would type it); a verifier used twice and a callback for another token are refused.
#[tokio::test]
async fn three_legged_dance_out_of_band_and_refusals() {
    use tower_auth::oauth1::{DanceError, OAuth1Session, RequestToken};
    let Some(base) = oauthlib() else { return };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let session = OAuth1Session::new(scheme(SignatureMethod::HmacSha512, false));
    let request = session.fetch_request_token(client.clone(), &format!("{base}/request_token"), "oob").await.unwrap();
    let url = session.authorization_url(&format!("{base}/authorize"), &request).unwrap();
    // oauthlib answers `oob` with the verifier in the page's body (form-encoded).
    let page = client.clone().oneshot(Request::get(url).body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(page.status(), 200);
    let page = String::from_utf8(page.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let verifier = session.parse_authorization_response(&page, &request).unwrap();
    let other = RequestToken::new("some-other-token-000", "x");
    assert!(matches!(session.parse_authorization_response(&page, &other), Err(DanceError::TokenMismatch)));
    let access =
        session.fetch_access_token(client.clone(), &format!("{base}/access_token"), &request, &verifier).await.unwrap();
    let (status, _) = send(session.signer(&access).build().unwrap(), get(format!("{base}/3legged/oob"))).await;
    assert_eq!(status, 200);
    // The request token was spent: the same verifier again is refused.
    let again = session.fetch_access_token(client.clone(), &format!("{base}/access_token"), &request, &verifier).await;
    assert!(matches!(again, Err(DanceError::Status { status, .. }) if status == 401), "{again:?}");
    // A wrong consumer secret is refused at the first step.
    let wrong = OAuth1Session::new(OAuth1::builder(KEY, "nope"));
    let err = wrong.fetch_request_token(client, &format!("{base}/request_token"), "oob").await.unwrap_err();
    assert!(matches!(err, DanceError::Status { .. }), "{err}");
}

/// A browser that follows the provider's redirect but comes back to the listener with another
/// `oauth_token` (a forged callback): the listener answers 400 and the dance fails, typed; a
/// stray request first gets a 404 and does not end the wait.
#[derive(Clone, Default)]
struct ForgingBrowser(std::sync::Arc<std::sync::Mutex<Vec<(u16, String)>>>);

impl ForgingBrowser {
    /// A blocking HTTP/1.1 GET on 127.0.0.1: the status and the whole answer.
    fn get(url: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        (answer[9..12].parse().unwrap(), answer)
    }
}

impl tower_auth::oauth2::Browser for ForgingBrowser {
    fn open(&self, url: &str) -> Result<(), tower_auth::BoxError> {
        let (_, answer) = Self::get(url);
        let location = answer.lines().find_map(|l| l.strip_prefix("Location: ")).unwrap().trim().to_owned();
        let callback = location.split('?').next().unwrap();
        let stray = Self::get(&callback.replace("/callback", "/favicon.ico"));
        let forged = location.replace("oauth_token=", "oauth_token=forged");
        let reply = Self::get(&forged);
        self.0.lock().unwrap().extend([(stray.0, stray.1), (reply.0, reply.1)]);
        Ok(())
    }
}

#[tokio::test]
async fn a_callback_for_another_request_token_is_refused() {
    use tower_auth::oauth1::{DanceError, Endpoints, OAuth1Session};
    let Some(base) = oauthlib() else { return };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let endpoints =
        Endpoints::new(format!("{base}/request_token"), format!("{base}/authorize"), format!("{base}/access_token"));
    let browser = ForgingBrowser::default();
    let err = OAuth1Session::new(OAuth1::builder(KEY, SECRET))
        .authorize(client, &endpoints, std::sync::Arc::new(browser.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, DanceError::TokenMismatch), "{err}");
    let pages = browser.0.lock().unwrap().clone();
    assert_eq!(pages[0].0, 404, "{}", pages[0].1);
    assert_eq!(pages[1].0, 400, "{}", pages[1].1);
    assert!(pages[1].1.contains("another request token"), "{}", pages[1].1);
}
