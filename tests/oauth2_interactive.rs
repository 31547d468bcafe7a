//! The authorization code grant with PKCE: the loopback listener, the checks on the callback
//! (state, error, issuer), PKCE and the OIDC nonce, one authorisation for a burst of requests,
//! refresh without the browser and back to it after `invalid_grant`. The "browser" here is a test
//! double that reads the authorization URL and calls the listener itself; the token endpoint is
//! an in-process service that checks the PKCE verifier against the challenge it was shown.
#![cfg(feature = "oauth2-browser")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Digest as _;
use tower::{ServiceBuilder, ServiceExt};
use tower_auth::AuthLayer;
use tower_auth::oauth2::{Browser, TokenProvider};

fn query(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned();
            (k.to_owned(), v)
        })
        .collect()
}

/// What the test browser does when asked to open an authorization URL.
#[derive(Clone, Copy, PartialEq)]
enum Reply {
    Approve,
    WrongState,
    Deny,
    Never,
    StrayFirst,
}

/// A browser that reads the authorization URL and calls the listener as the server would
/// redirect: records every URL and the pages the listener answered.
#[derive(Clone)]
struct TestBrowser {
    reply: Arc<Mutex<Reply>>,
    opened: Arc<Mutex<Vec<String>>>,
    pages: Arc<Mutex<Vec<(u16, String)>>>,
    /// The code the "server" hands out; the token endpoint expects it with this URL's challenge.
    challenges: Arc<Mutex<HashMap<String, (String, String)>>>,
    /// The address "localhost" resolves to for this browser (`[::1]`, `127.0.0.1`).
    localhost_is: Arc<Mutex<Option<&'static str>>>,
}

impl TestBrowser {
    fn new(reply: Reply) -> Self {
        TestBrowser {
            reply: Arc::new(Mutex::new(reply)),
            opened: Default::default(),
            pages: Default::default(),
            challenges: Default::default(),
            localhost_is: Default::default(),
        }
    }
    fn opened(&self) -> usize {
        self.opened.lock().unwrap().len()
    }
    /// The pages the listener answered, once there are `n` (the browser task records them after
    /// the flow has its answer).
    async fn pages(&self, n: usize) -> Vec<(u16, String)> {
        for _ in 0..400 {
            if self.pages.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.pages.lock().unwrap().clone()
    }
}

impl Browser for TestBrowser {
    fn open(&self, url: &str) -> Result<(), tower_auth::BoxError> {
        self.opened.lock().unwrap().push(url.to_owned());
        let q = query(url);
        let reply = *self.reply.lock().unwrap();
        if reply == Reply::Never {
            return Ok(());
        }
        let code = format!("code-{}", self.opened());
        self.challenges
            .lock()
            .unwrap()
            .insert(code.clone(), (q["code_challenge"].clone(), q.get("nonce").cloned().unwrap_or_default()));
        let mut redirect = q["redirect_uri"].clone();
        if let Some(address) = *self.localhost_is.lock().unwrap() {
            redirect = redirect.replace("//localhost:", &format!("//{address}:"));
        }
        let state = q["state"].clone();
        let pages = self.pages.clone();
        tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let get = |url: String| {
                let client = client.clone();
                async move {
                    let res = client.request(Request::get(url).body(Full::default()).unwrap()).await.unwrap();
                    let status = res.status().as_u16();
                    (status, String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
                }
            };
            if reply == Reply::StrayFirst {
                let origin = redirect.split('/').take(3).collect::<Vec<_>>().join("/");
                let stray = get(format!("{origin}/favicon.ico")).await;
                pages.lock().unwrap().push(stray);
            }
            let target = match reply {
                Reply::Approve | Reply::StrayFirst => format!("{redirect}?code={code}&state={state}"),
                Reply::WrongState => format!("{redirect}?code={code}&state=not-yours"),
                Reply::Deny => format!(
                    "{redirect}?error=access_denied&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E&state={state}"
                ),
                Reply::Never => unreachable!(),
            };
            let page = get(target).await;
            pages.lock().unwrap().push(page);
        });
        Ok(())
    }
}

/// The token endpoint: exchanges codes (checking PKCE and the redirect URI), refreshes, and can
/// put an id_token with the authorization's nonce (or another) in its answer.
#[derive(Clone)]
struct TokenEndpoint {
    browser: TestBrowser,
    requests: Arc<Mutex<Vec<HashMap<String, String>>>>,
    refusing_refresh: Arc<std::sync::atomic::AtomicBool>,
    /// The refusal is a bare `400` without an OAuth2 body (Glewlwyd refuses a revoked refresh
    /// token so), not `invalid_grant`.
    bare_refusal: Arc<std::sync::atomic::AtomicBool>,
    wrong_nonce: Arc<std::sync::atomic::AtomicBool>,
    n: Arc<AtomicUsize>,
    expires_in: Arc<AtomicUsize>,
    /// How many code exchanges still get a 500.
    failing_exchanges: Arc<AtomicUsize>,
}

impl TokenEndpoint {
    fn new(browser: &TestBrowser) -> Self {
        TokenEndpoint {
            browser: browser.clone(),
            requests: Default::default(),
            refusing_refresh: Default::default(),
            bare_refusal: Default::default(),
            wrong_nonce: Default::default(),
            n: Default::default(),
            expires_in: Arc::new(AtomicUsize::new(60)),
            failing_exchanges: Default::default(),
        }
    }
    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl tower::Service<Request<Full<Bytes>>> for TokenEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let body = String::from_utf8(req.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
            let form = query(&format!("?{body}"));
            this.requests.lock().unwrap().push(form.clone());
            let n = this.n.fetch_add(1, Ordering::SeqCst) + 1;
            let json = |status: u16, v: serde_json::Value| {
                Ok(Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(v.to_string())))
                    .unwrap())
            };
            let mut answer = serde_json::json!({
                "access_token": format!("at-{n}"), "token_type": "Bearer",
                "expires_in": this.expires_in.load(Ordering::SeqCst), "refresh_token": format!("rt-{n}")
            });
            match form.get("grant_type").map(String::as_str) {
                Some("authorization_code")
                    if this
                        .failing_exchanges
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok() =>
                {
                    Ok(Response::builder().status(500).body(Full::new(Bytes::from("database is locked"))).unwrap())
                }
                Some("authorization_code") => {
                    let Some((challenge, nonce)) = this.browser.challenges.lock().unwrap().get(&form["code"]).cloned()
                    else {
                        return json(400, serde_json::json!({"error": "invalid_grant"}));
                    };
                    let digest = sha2::Sha256::digest(form["code_verifier"].as_bytes());
                    if base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest) != challenge {
                        return json(400, serde_json::json!({"error": "invalid_grant", "error_description": "PKCE"}));
                    }
                    if !nonce.is_empty() {
                        let nonce = if this.wrong_nonce.load(Ordering::SeqCst) { "other".to_owned() } else { nonce };
                        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                        let claims = serde_json::json!({"iss": "https://idp.test", "aud": "app", "sub": "alice", "nonce": nonce, "iat": now, "exp": now + 300});
                        let b64 = |v: &serde_json::Value| {
                            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
                        };
                        answer["id_token"] =
                            format!("{}.{}.sig", b64(&serde_json::json!({"alg": "none"})), b64(&claims)).into();
                    }
                    json(200, answer)
                }
                Some("refresh_token") if this.refusing_refresh.load(Ordering::SeqCst) => {
                    if this.bare_refusal.load(Ordering::SeqCst) {
                        return Ok(Response::builder().status(400).body(Full::new(Bytes::new())).unwrap());
                    }
                    json(400, serde_json::json!({"error": "invalid_grant"}))
                }
                Some("refresh_token") => json(200, answer),
                _ => json(400, serde_json::json!({"error": "unsupported_grant_type"})),
            }
        })
    }
}

fn provider(browser: &TestBrowser) -> tower_auth::oauth2::ProviderBuilder {
    TokenProvider::authorization_code("https://idp.test/authorize?audience=api", "https://idp.test/token", "app")
        .browser(browser.clone())
        .redirect_port(0)
        .redirect_path("/cb")
        .authorization_timeout(Duration::from_secs(3))
        .wait_timeout(Duration::from_secs(5))
        .scope("orders:read")
}

#[tokio::test]
async fn authorization_code_with_pkce_one_tab_for_fifty_requests() {
    let browser = TestBrowser::new(Reply::Approve);
    let endpoint = TokenEndpoint::new(&browser);
    let p = provider(&browser)
        .client_secret("app-s3cret")
        .auth_param("prompt", "consent")
        .param("token_extra", "1")
        .build(endpoint.clone())
        .unwrap();
    let api = tower::service_fn(|req: Request<tower_auth::ReplayBody<Full<Bytes>>>| async move {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
            req.headers()["authorization"].to_str().unwrap().to_owned(),
        ))))
    });
    let svc = ServiceBuilder::new().layer(AuthLayer::oauth2(p.clone())).service(api);
    let calls: Vec<_> = (0..50)
        .map(|_| tokio::spawn(svc.clone().oneshot(Request::get("https://api.test/").body(Full::default()).unwrap())))
        .collect();
    for call in calls {
        let res = call.await.unwrap().unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "Bearer at-1");
    }
    assert_eq!(browser.opened(), 1, "one browser tab for fifty requests");
    assert_eq!(endpoint.count(), 1, "one token request");
    // The browser URL: PKCE S256, state, the redirect URI it listens on, the auth parameter, and
    // never the client secret.
    let url = browser.opened.lock().unwrap()[0].clone();
    let q = query(&url);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "app");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "orders:read");
    assert_eq!(q["prompt"], "consent");
    assert_eq!(q["audience"], "api", "the authorization URL's own query is kept");
    assert!(q["redirect_uri"].starts_with("http://127.0.0.1:") && q["redirect_uri"].ends_with("/cb"), "{url}");
    assert_eq!(q["state"].len(), 32);
    assert!(!url.contains("s3cret") && !url.contains("token_extra"), "{url}");
    // The token request: the code, the verifier, the same redirect URI, the token parameter.
    let form = endpoint.requests.lock().unwrap()[0].clone();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["redirect_uri"], q["redirect_uri"]);
    assert!(form["code_verifier"].len() >= 43);
    assert_eq!(form["token_extra"], "1");
    // The listener answered a success page, and freed its port.
    let page = browser.pages(1).await[0].clone();
    assert_eq!(page.0, 200);
    assert!(page.1.contains("Authentication succeeded"));
    let port: u16 = q["redirect_uri"].trim_start_matches("http://127.0.0.1:").trim_end_matches("/cb").parse().unwrap();
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the listener's port is free again");
}

/// Waits (real time, bounded) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test]
async fn refresh_without_the_browser_and_back_to_it_after_invalid_grant() {
    back_to_the_browser_after_a_refused_refresh(false).await;
}

/// A refresh refused with a bare `400` (no OAuth2 body: Glewlwyd's answer to a revoked refresh
/// token) sends the user back to the browser too.
#[tokio::test]
async fn refresh_without_the_browser_and_back_to_it_after_a_bare_400() {
    back_to_the_browser_after_a_refused_refresh(true).await;
}

async fn back_to_the_browser_after_a_refused_refresh(bare: bool) {
    let browser = TestBrowser::new(Reply::Approve);
    let endpoint = TokenEndpoint::new(&browser);
    endpoint.bare_refusal.store(bare, Ordering::SeqCst);
    endpoint.expires_in.store(2, Ordering::SeqCst); // replaced in the background from about 0.7 s
    let p = provider(&browser).build(endpoint.clone()).unwrap();
    p.token().await.unwrap();
    eventually("a refresh", || endpoint.count() >= 2).await;
    assert_eq!(browser.opened(), 1, "refreshed without the browser");
    assert_eq!(endpoint.requests.lock().unwrap()[1]["grant_type"], "refresh_token");
    assert_eq!(endpoint.requests.lock().unwrap()[1]["refresh_token"], "rt-1");
    endpoint.refusing_refresh.store(true, Ordering::SeqCst);
    eventually("the browser again", || browser.opened() >= 2).await;
    eventually("a new token", || {
        endpoint.requests.lock().unwrap().iter().filter(|f| f["grant_type"] == "authorization_code").count() == 2
    })
    .await;
    assert!(p.current().is_some());
}

#[tokio::test]
async fn a_wrong_state_a_denial_or_no_answer_are_typed_errors_and_the_listener_stops() {
    for (reply, expect) in [
        (Reply::WrongState, "state is missing or not this request's"),
        (Reply::Deny, "access_denied"),
        (Reply::Never, "no authorization response within 3 s"),
    ] {
        let browser = TestBrowser::new(reply);
        let endpoint = TokenEndpoint::new(&browser);
        let p = provider(&browser).build(endpoint.clone()).unwrap();
        let err = p.token().await.unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains(expect), "{cause}");
        assert_eq!(endpoint.count(), 0, "no code exchanged");
        if reply == Reply::Deny {
            // The page echoes the server's description, escaped.
            let (status, page) = browser.pages(1).await[0].clone();
            assert_eq!(status, 400);
            assert!(page.contains("&lt;script&gt;") && !page.contains("<script>alert"), "{page}");
            // The failure page closes itself after 10 s (the default display time).
            assert!(page.contains("window.close()},10000)"), "{page}");
        }
        // No second authorisation by itself: interactive failures are not retried in the
        // background.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(browser.opened(), 1);
    }
}

#[tokio::test]
async fn a_stray_request_to_the_listener_gets_404_and_the_flow_goes_on() {
    let browser = TestBrowser::new(Reply::StrayFirst);
    let endpoint = TokenEndpoint::new(&browser);
    let p = provider(&browser).build(endpoint.clone()).unwrap();
    p.token().await.unwrap();
    let pages = browser.pages(2).await;
    assert_eq!(pages[0].0, 404);
    assert_eq!(pages[1].0, 200);
}

#[tokio::test]
async fn the_openid_nonce_is_checked_against_the_id_token() {
    let browser = TestBrowser::new(Reply::Approve);
    let endpoint = TokenEndpoint::new(&browser);
    let p = provider(&browser).scope("openid").build(endpoint.clone()).unwrap();
    p.token().await.unwrap();
    assert!(query(&browser.opened.lock().unwrap()[0]).contains_key("nonce"));

    let browser = TestBrowser::new(Reply::Approve);
    let endpoint = TokenEndpoint::new(&browser);
    endpoint.wrong_nonce.store(true, Ordering::SeqCst);
    let p = provider(&browser).scope("openid").build(endpoint.clone()).unwrap();
    let err = p.token().await.unwrap_err();
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("nonce"), "{cause}");
    assert!(p.current().is_none(), "a token whose id_token failed its checks is not used");
}

// ------------------------------------------------------------------ against the fake IdP --

mod fake_idp {
    use super::*;
    use tower_auth::testing::BrowserMock;
    use tower_auth::testing::idp::{AuthorizeOutcome, FakeIdp};

    fn http() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).build_http()
    }

    #[tokio::test]
    async fn the_browser_mock_goes_through_the_fake_idp_and_back_fifty_requests_one_tab() {
        let idp = FakeIdp::start().await.unwrap();
        idp.add_public_client("app");
        idp.set_require_pkce(true);
        idp.set_send_iss(true);
        let browser = BrowserMock::new();
        let p = TokenProvider::authorization_code(idp.authorize_url(), idp.token_url(), "app")
            .browser(browser.clone())
            .redirect_port(0)
            .issuer(idp.issuer())
            .scope("openid orders:read")
            .build(http())
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(AuthLayer::oauth2(p.clone()))
            .service(Client::builder(TokioExecutor::new()).build_http::<tower_auth::ReplayBody<Full<Bytes>>>());
        let calls: Vec<_> = (0..50)
            .map(|_| tokio::spawn(svc.clone().oneshot(Request::get(idp.resource_url()).body(Full::default()).unwrap())))
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap().status(), 200);
        }
        browser.wait_until_done(1).await;
        browser.assert_success();
        assert_eq!(browser.opened().len(), 1, "one tab for fifty requests");
        assert_eq!(idp.token_requests(), 1, "one token request");
        let authorize = idp.last_authorize_request().unwrap();
        assert!(authorize.has("nonce") && authorize.has("code_challenge") && !authorize.has("client_secret"));
        assert!(idp.requests()[0].has_code_verifier());
    }

    #[tokio::test]
    async fn a_wrong_issuer_or_a_denial_fail_with_typed_errors_and_pages_that_say_so() {
        for (outcome, expect) in [(AuthorizeOutcome::WrongIss, "issuer"), (AuthorizeOutcome::Deny, "access_denied")] {
            let idp = FakeIdp::start().await.unwrap();
            idp.add_public_client("app");
            idp.set_send_iss(true);
            idp.set_authorize_outcome(outcome);
            let browser = BrowserMock::new();
            let p = TokenProvider::authorization_code(idp.authorize_url(), idp.token_url(), "app")
                .browser(browser.clone())
                .redirect_port(0)
                .issuer(idp.issuer())
                .build(http())
                .unwrap();
            let err = p.token().await.unwrap_err();
            let cause = std::error::Error::source(&err).unwrap().to_string();
            assert!(cause.contains(expect), "{cause}");
            browser.wait_until_done(1).await;
            browser.assert_failure();
            assert_eq!(idp.token_requests(), 0);
        }
    }

    #[tokio::test]
    async fn a_server_whose_metadata_promises_iss_must_send_it() {
        let idp = FakeIdp::start().await.unwrap();
        idp.add_public_client("app");
        idp.set_send_iss(true); // the metadata says authorization_response_iss_parameter_supported
        let browser = BrowserMock::new();
        let p = TokenProvider::authorization_code(idp.authorize_url(), idp.issuer(), "app")
            .browser(browser.clone())
            .redirect_port(0)
            .discover(http())
            .await
            .unwrap();
        // A response without iss (a mix-up attack's, or a misconfigured server's) is refused.
        idp.set_send_iss(false);
        let err = p.token().await.unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("has no iss"), "{cause}");
        browser.wait_until_done(1).await;
        browser.assert_failure();
        assert_eq!(idp.token_requests(), 0);
    }
}

// --------------------------------------------------------------------------- implicit --

mod implicit {
    use super::*;
    use tower_auth::oauth2::ImplicitResponse;

    /// A "server and browser" for the implicit grant: reads the authorization URL and delivers
    /// the answer to the listener in the fragment (GET the page, then post what its script would)
    /// or by form_post.
    #[derive(Clone, Default)]
    struct ImplicitBrowser {
        opened: Arc<Mutex<Vec<String>>>,
        pages: Arc<Mutex<Vec<(u16, String)>>>,
        wrong_nonce: bool,
    }

    impl Browser for ImplicitBrowser {
        fn open(&self, url: &str) -> Result<(), tower_auth::BoxError> {
            self.opened.lock().unwrap().push(url.to_owned());
            let q = query(url);
            let (redirect, state) = (q["redirect_uri"].clone(), q["state"].clone());
            let nonce = if self.wrong_nonce { "other".to_owned() } else { q.get("nonce").cloned().unwrap_or_default() };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            let id_token = format!(
                "{}.{}.sig",
                b64(serde_json::json!({"alg": "none"})),
                b64(serde_json::json!({"aud": q["client_id"], "nonce": nonce, "exp": now + 300, "sub": "alice"}))
            );
            let answer =
                format!("access_token=at-implicit&token_type=Bearer&expires_in=120&id_token={id_token}&state={state}");
            let form_post = q.get("response_mode").is_some_and(|m| m == "form_post");
            let pages = self.pages.clone();
            tokio::spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                if !form_post {
                    // The redirect carries the answer in the fragment: the listener's page.
                    let res =
                        client.request(Request::get(redirect.clone()).body(Full::default()).unwrap()).await.unwrap();
                    let page = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
                    assert!(page.contains("location.hash"), "the fragment page: {page}");
                }
                // What the page's script (or the server's form_post page) sends.
                let req = Request::post(redirect)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(answer)))
                    .unwrap();
                let res = client.request(req).await.unwrap();
                let status = res.status().as_u16();
                let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
                pages.lock().unwrap().push((status, body));
            });
            Ok(())
        }
    }

    fn provider(browser: &ImplicitBrowser, response: ImplicitResponse, form_post: bool) -> TokenProvider {
        let b = TokenProvider::implicit("https://idp.test/authorize", "spa", response)
            .browser(browser.clone())
            .redirect_port(0)
            .authorization_timeout(Duration::from_secs(3));
        let b = if form_post { b.form_post() } else { b };
        b.build(tower::service_fn(|_: Request<Full<Bytes>>| async {
            panic!("the implicit grant makes no token request");
            #[allow(unreachable_code)]
            Ok::<Response<Full<Bytes>>, Infallible>(Response::new(Full::default()))
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn access_token_and_id_token_through_the_fragment_and_by_form_post() {
        for (response, form_post, expected) in [
            (ImplicitResponse::AccessToken, false, "at-implicit"),
            (ImplicitResponse::IdTokenAndAccessToken, true, "at-implicit"),
            (ImplicitResponse::IdToken, false, "eyJ"),
        ] {
            let browser = ImplicitBrowser::default();
            let p = provider(&browser, response, form_post);
            let token = p.token().await.unwrap();
            let value = token.header_value().to_str().unwrap().to_owned();
            assert!(value.starts_with(&format!("Bearer {expected}")), "{response:?}: {value}");
            let url = browser.opened.lock().unwrap()[0].clone();
            let q = query(&url);
            let expected_type = match response {
                ImplicitResponse::AccessToken => "token",
                ImplicitResponse::IdToken => "id_token",
                ImplicitResponse::IdTokenAndAccessToken => "id_token token",
            };
            assert_eq!(q["response_type"], expected_type);
            assert!(q.contains_key("nonce") && q.contains_key("state"));
            assert_eq!(q.get("response_mode").map(String::as_str), form_post.then_some("form_post"));
            // No renewal in the background: the user is asked when a request needs a token.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(browser.opened.lock().unwrap().len(), 1);
        }
    }

    #[tokio::test]
    async fn an_id_token_with_another_nonce_is_refused() {
        let browser = ImplicitBrowser { wrong_nonce: true, ..ImplicitBrowser::default() };
        let p = provider(&browser, ImplicitResponse::IdTokenAndAccessToken, false);
        let err = p.token().await.unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("nonce"), "{cause}");
        assert!(p.current().is_none());
    }
}

#[tokio::test]
async fn localhost_redirects_bind_both_loopback_addresses_and_ipv6_alone_names_it() {
    use tower_auth::oauth2::RedirectHost;
    // `localhost`: the URI says localhost; the browser may resolve it to either address.
    for address in ["[::1]", "127.0.0.1"] {
        let browser = TestBrowser::new(Reply::Approve);
        *browser.localhost_is.lock().unwrap() = Some(address);
        let endpoint = TokenEndpoint::new(&browser);
        let p = provider(&browser).redirect_host(RedirectHost::Localhost).build(endpoint.clone()).unwrap();
        p.token().await.unwrap();
        let q = query(&browser.opened.lock().unwrap()[0]);
        assert!(q["redirect_uri"].starts_with("http://localhost:") && q["redirect_uri"].ends_with("/cb"), "{q:?}");
        assert_eq!(endpoint.requests.lock().unwrap()[0]["redirect_uri"], q["redirect_uri"]);
        assert_eq!(browser.pages(1).await[0].0, 200, "reached through {address}");
        // Both sides are closed afterwards.
        let port: u16 = q["redirect_uri"]["http://localhost:".len()..].trim_end_matches("/cb").parse().unwrap();
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("127.0.0.1 side freed");
        std::net::TcpListener::bind(("::1", port)).expect("::1 side freed");
    }
    // A port whose ::1 side another program holds is not used (that program would get the code).
    let squatter = std::net::TcpListener::bind(("::1", 0)).unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let browser = TestBrowser::new(Reply::Approve);
    *browser.localhost_is.lock().unwrap() = Some("[::1]");
    let endpoint = TokenEndpoint::new(&browser);
    let p = provider(&browser)
        .redirect_host(RedirectHost::Localhost)
        .redirect_port(taken)
        .fallback_ports([0])
        .build(endpoint.clone())
        .unwrap();
    p.token().await.unwrap();
    let q = query(&browser.opened.lock().unwrap()[0]);
    assert!(!q["redirect_uri"].contains(&format!(":{taken}/")), "skipped the squatted port: {q:?}");
    // IPv6 only: the URI names [::1].
    let browser = TestBrowser::new(Reply::Approve);
    let endpoint = TokenEndpoint::new(&browser);
    let p = provider(&browser).redirect_host(RedirectHost::Ipv6).build(endpoint.clone()).unwrap();
    p.token().await.unwrap();
    let q = query(&browser.opened.lock().unwrap()[0]);
    assert!(q["redirect_uri"].starts_with("http://[::1]:"), "{q:?}");
}

#[tokio::test]
async fn display_settings_set_the_pages_and_their_display_times_and_escape_what_they_echo() {
    use tower_auth::oauth2::DisplaySettings;
    // The defaults: the success page closes itself after 2 s.
    let browser = TestBrowser::new(Reply::Approve);
    provider(&browser).build(TokenEndpoint::new(&browser)).unwrap().token().await.unwrap();
    let (_, page) = browser.pages(1).await[0].clone();
    assert!(page.contains("Authentication succeeded") && page.contains("window.close()},2000)"), "{page}");
    // Templates, a success page that stays open, a failure page that closes at once.
    let display = DisplaySettings::default()
        .success_display_time(None)
        .failure_display_time(Some(Duration::from_millis(1)))
        .success_template("<html><body><h2>OK: {title}</h2><p>{message}</p></body></html>")
        .failure_template("<html><body><h2>{title}</h2><pre>{message}</pre><i>{close_after_ms} ms</i></body></html>");
    let browser = TestBrowser::new(Reply::Approve);
    provider(&browser).display(display.clone()).build(TokenEndpoint::new(&browser)).unwrap().token().await.unwrap();
    let (_, page) = browser.pages(1).await[0].clone();
    assert_eq!(
        page,
        "<html><body><h2>OK: Authentication succeeded</h2><p>You can close this window.</p></body></html>"
    );
    let browser = TestBrowser::new(Reply::Deny);
    let p = provider(&browser).display(display).build(TokenEndpoint::new(&browser)).unwrap();
    p.token().await.unwrap_err();
    let (status, page) = browser.pages(1).await[0].clone();
    assert_eq!(status, 400);
    assert!(page.starts_with("<html><body><h2>Authentication failed</h2><pre>"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !page.contains("<script>alert"), "{page}");
    assert!(page.contains("<i>1 ms</i><script>setTimeout(function(){window.close()},1)</script></body>"), "{page}");
}

#[tokio::test]
async fn after_a_restart_an_expired_token_is_refreshed_from_the_file_cache_without_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    let store = tower_auth::oauth2::FileStore::new(dir.path().join("tokens.json")).unwrap();
    let browser = TestBrowser::new(Reply::Approve);
    let endpoint = TokenEndpoint::new(&browser);
    endpoint.expires_in.store(1, Ordering::SeqCst);
    {
        let p = provider(&browser).store(store.clone()).build(endpoint.clone()).unwrap();
        p.token().await.unwrap();
    } // the process ends
    assert_eq!((browser.opened(), endpoint.count()), (1, 1));
    tokio::time::sleep(Duration::from_millis(1500)).await; // the access token has expired
    let later = TestBrowser::new(Reply::Approve);
    let endpoint2 = TokenEndpoint::new(&later);
    let p = provider(&later).store(store).build(endpoint2.clone()).unwrap();
    p.token().await.unwrap();
    assert_eq!(later.opened(), 0, "no browser: the cached refresh token was used");
    let form = endpoint2.requests.lock().unwrap()[0].clone();
    assert_eq!((form["grant_type"].as_str(), form["refresh_token"].as_str()), ("refresh_token", "rt-1"));
}

#[tokio::test]
async fn a_server_error_during_the_code_exchange_is_tried_again_not_the_user() {
    // Once: the second try succeeds, with the same code and verifier; the browser opened once.
    let browser = TestBrowser::new(Reply::Approve);
    let endpoint = TokenEndpoint::new(&browser);
    endpoint.failing_exchanges.store(1, Ordering::SeqCst);
    let p = provider(&browser).build(endpoint.clone()).unwrap();
    p.token().await.expect("the second exchange worked");
    assert_eq!((browser.opened(), endpoint.count()), (1, 2));
    let forms = endpoint.requests.lock().unwrap().clone();
    assert_eq!((&forms[0]["code"], &forms[0]["code_verifier"]), (&forms[1]["code"], &forms[1]["code_verifier"]));
    // Always: three tries, then a typed error (not a loop, not a new tab by itself).
    let browser = TestBrowser::new(Reply::Approve);
    let endpoint = TokenEndpoint::new(&browser);
    endpoint.failing_exchanges.store(10, Ordering::SeqCst);
    let p = provider(&browser).build(endpoint.clone()).unwrap();
    let err = p.token().await.unwrap_err();
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("500"), "{cause}");
    assert_eq!((browser.opened(), endpoint.count()), (1, 3));
}
