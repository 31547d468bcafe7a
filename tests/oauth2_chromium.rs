//! The interactive grants end to end against real peers: Glewlwyd (Debian's OAuth2 / OpenID
//! Connect server, `tests/peers/glewlwyd.sh`) as the authorization server, and Debian's Chromium,
//! headless, driven by puppeteer-core (`tests/peers/chromium/login.cjs`) as the user's browser:
//! it signs in on Glewlwyd's login page, grants the consent, and follows the redirect to the
//! crate's loopback listener. The protected resource is Glewlwyd's own userinfo endpoint, which
//! answers 200 only for an access token it issued and that is still valid.
//!
//! Glewlwyd compares `redirect_uri` exactly, so the tests listen on the fixed ports registered by
//! the peer script (`redirect_port` and `fallback_ports`: tests running at the same time take the
//! next free one).
#![cfg(feature = "oauth2-browser")]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_auth::oauth2::{Browser, ClientAuth, FileStore, ImplicitResponse, ProviderBuilder, TokenProvider};
use tower_auth::{AuthLayer, BoxError};

use support::Counting;
use support::peers::{Chromium, Glewlwyd};

fn peers() -> Option<(&'static Glewlwyd, &'static Chromium)> {
    Some((support::peers::glewlwyd()?, support::peers::chromium()?))
}

/// The user at a real browser: each `open` starts `login.cjs` (a fresh headless Chromium and
/// profile) on the URL and returns at once, as a system browser would.
#[derive(Clone)]
struct HeadlessChromium {
    chromium: &'static Chromium,
    user: String,
    password: String,
    /// How long `login.cjs` tries before giving up (`LOGIN_TIMEOUT_MS`).
    timeout_ms: u64,
    opened: Arc<AtomicUsize>,
    runs: Arc<Mutex<Vec<Child>>>,
}

impl HeadlessChromium {
    fn new(chromium: &'static Chromium, glewlwyd: &Glewlwyd) -> Self {
        HeadlessChromium {
            chromium,
            user: glewlwyd.username.clone(),
            password: glewlwyd.password.clone(),
            timeout_ms: 30_000,
            opened: Arc::default(),
            runs: Arc::default(),
        }
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// Waits for every run and returns what each printed last (`{"ok":…,"title":…,"steps":…}`).
    async fn results(&self) -> Vec<serde_json::Value> {
        let runs: Vec<Child> = std::mem::take(&mut *self.runs.lock().unwrap());
        tokio::task::spawn_blocking(move || {
            runs.into_iter()
                .map(|child| {
                    let out = child.wait_with_output().expect("login.cjs ran");
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    let last = stdout.lines().last().unwrap_or_default();
                    serde_json::from_str(last).unwrap_or_else(|_| {
                        panic!("login.cjs printed no result: {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
                    })
                })
                .collect()
        })
        .await
        .unwrap()
    }
}

impl Browser for HeadlessChromium {
    fn open(&self, url: &str) -> Result<(), BoxError> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        let child = Command::new("node")
            .arg(&self.chromium.login_script)
            .arg(url)
            .env("NODE_PATH", &self.chromium.node_path)
            .env("LOGIN_USER", &self.user)
            .env("LOGIN_PASSWORD", &self.password)
            .env("LOGIN_TIMEOUT_MS", self.timeout_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        self.runs.lock().unwrap().push(child);
        Ok(())
    }
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The token client, counting the token endpoint requests.
fn token_client() -> (Counting<Http>, Arc<AtomicUsize>) {
    Counting::new(http())
}

fn on_registered_ports(builder: ProviderBuilder, glewlwyd: &Glewlwyd) -> ProviderBuilder {
    builder
        .redirect_port(glewlwyd.redirect_ports[0])
        .fallback_ports(glewlwyd.redirect_ports[1..].iter().copied())
        .authorization_timeout(Duration::from_secs(60))
}

/// `n` concurrent GETs of Glewlwyd's userinfo through the layer; their statuses.
async fn userinfo_burst(provider: &TokenProvider, glewlwyd: &Glewlwyd, n: usize) -> Vec<StatusCode> {
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::oauth2(provider.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<tower_auth::ReplayBody<Full<Bytes>>>());
    let url = format!("{}/userinfo", glewlwyd.issuer);
    let calls = (0..n).map(|_| {
        let (svc, url) = (svc.clone(), url.clone());
        tokio::spawn(async move {
            let res = svc.oneshot(Request::get(url).body(Full::default()).unwrap()).await.expect("sent");
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            if status == StatusCode::OK {
                let info: serde_json::Value = serde_json::from_slice(&body).expect("userinfo JSON");
                assert!(info["sub"].is_string(), "{info}");
            }
            status
        })
    });
    let mut statuses = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        statuses.push(call.await.unwrap());
    }
    statuses
}

fn assert_reached_listener(result: &serde_json::Value, title: &str) {
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["title"], title, "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_with_pkce_fifty_requests_one_tab_one_token_request_then_the_file_cache_skips_the_browser() {
    let Some((glewlwyd, chromium)) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("tokens.json")).unwrap();
    let browser = HeadlessChromium::new(chromium, glewlwyd);
    let (client, token_requests) = token_client();
    let provider = on_registered_ports(
        TokenProvider::authorization_code(&glewlwyd.auth_url, &glewlwyd.token_url, &glewlwyd.client_id)
            .client_secret(&glewlwyd.client_secret)
            .scope(&glewlwyd.scope)
            .browser(browser.clone())
            .store(store.clone()),
        glewlwyd,
    )
    .build(client)
    .unwrap();

    let started = Instant::now();
    let statuses = userinfo_burst(&provider, glewlwyd, 50).await;
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert_eq!(browser.opened(), 1, "one tab for 50 requests");
    assert_eq!(token_requests.load(Ordering::SeqCst), 1, "one code exchange for 50 requests");
    let results = browser.results().await;
    assert_reached_listener(&results[0], "Authentication succeeded");
    eprintln!(
        "code+PKCE, Glewlwyd + headless Chromium: 50 concurrent requests -> {} tab(s), {} token request(s), \
         50 x 200 from userinfo in {:.2} s (browser steps {}, {} ms)",
        browser.opened(),
        token_requests.load(Ordering::SeqCst),
        elapsed.as_secs_f64(),
        results[0]["steps"],
        results[0]["ms"],
    );

    // The next run (a new provider on the same cache file) needs no browser: the token is still
    // valid; and its refresh token is kept for later.
    let stored = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
    assert!(stored.contains("refresh_token"), "the refresh token is cached");
    let browser2 = HeadlessChromium::new(chromium, glewlwyd);
    let (client2, token_requests2) = token_client();
    let provider2 = on_registered_ports(
        TokenProvider::authorization_code(&glewlwyd.auth_url, &glewlwyd.token_url, &glewlwyd.client_id)
            .client_secret(&glewlwyd.client_secret)
            .scope(&glewlwyd.scope)
            .browser(browser2.clone())
            .store(store),
        glewlwyd,
    )
    .build(client2)
    .unwrap();
    assert_eq!(userinfo_burst(&provider2, glewlwyd, 3).await, vec![StatusCode::OK; 3]);
    assert_eq!(browser2.opened(), 0, "no browser on the second run");
    assert_eq!(token_requests2.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_client_with_openid_the_real_id_token_carries_our_nonce() {
    let Some((glewlwyd, chromium)) = peers() else { return };
    let browser = HeadlessChromium::new(chromium, glewlwyd);
    let (client, token_requests) = token_client();
    let provider = on_registered_ports(
        TokenProvider::authorization_code(&glewlwyd.auth_url, &glewlwyd.token_url, &glewlwyd.public_client_id)
            .client_auth(ClientAuth::None)
            .scope(format!("openid {}", glewlwyd.scope))
            .issuer(&glewlwyd.issuer)
            .browser(browser.clone()),
        glewlwyd,
    )
    .build(client)
    .unwrap();
    // A provider that checks the nonce fails the whole flow when Glewlwyd's id_token lacks it,
    // so a 200 here means the id_token carried this authorisation's nonce, audience and expiry.
    assert_eq!(userinfo_burst(&provider, glewlwyd, 5).await, vec![StatusCode::OK; 5]);
    assert_eq!((browser.opened(), token_requests.load(Ordering::SeqCst)), (1, 1));
    assert_reached_listener(&browser.results().await[0], "Authentication succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_access_token_comes_back_through_the_fragment_page() {
    let Some((glewlwyd, chromium)) = peers() else { return };
    let browser = HeadlessChromium::new(chromium, glewlwyd);
    let (client, token_requests) = token_client();
    let provider = on_registered_ports(
        TokenProvider::implicit(&glewlwyd.auth_url, &glewlwyd.public_client_id, ImplicitResponse::AccessToken)
            .scope(&glewlwyd.scope)
            .browser(browser.clone()),
        glewlwyd,
    )
    .build(client)
    .unwrap();
    assert_eq!(userinfo_burst(&provider, glewlwyd, 10).await, vec![StatusCode::OK; 10]);
    assert_eq!(browser.opened(), 1);
    assert_eq!(token_requests.load(Ordering::SeqCst), 0, "the implicit grant has no token request");
    assert_reached_listener(&browser.results().await[0], "Authentication succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_id_token_and_token_checks_the_real_id_token() {
    let Some((glewlwyd, chromium)) = peers() else { return };
    let browser = HeadlessChromium::new(chromium, glewlwyd);
    let provider = on_registered_ports(
        TokenProvider::implicit(
            &glewlwyd.auth_url,
            &glewlwyd.public_client_id,
            ImplicitResponse::IdTokenAndAccessToken,
        )
        .scope(format!("openid {}", glewlwyd.scope))
        .browser(browser.clone()),
        glewlwyd,
    )
    .build(http())
    .unwrap();
    assert_eq!(userinfo_burst(&provider, glewlwyd, 2).await, vec![StatusCode::OK; 2]);
    assert_eq!(browser.opened(), 1);
    assert_reached_listener(&browser.results().await[0], "Authentication succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_cannot_sign_in_is_a_typed_timeout_never_a_token() {
    let Some((glewlwyd, chromium)) = peers() else { return };
    let mut browser = HeadlessChromium::new(chromium, glewlwyd);
    browser.password = "not-the-password".into();
    browser.timeout_ms = 8_000;
    let (client, token_requests) = token_client();
    let provider = TokenProvider::authorization_code(&glewlwyd.auth_url, &glewlwyd.token_url, &glewlwyd.client_id)
        .client_secret(&glewlwyd.client_secret)
        .scope(&glewlwyd.scope)
        .browser(browser.clone())
        .redirect_port(glewlwyd.redirect_ports[0])
        .fallback_ports(glewlwyd.redirect_ports[1..].iter().copied())
        .authorization_timeout(Duration::from_secs(6))
        .build(client)
        .unwrap();
    let err = provider.token().await.expect_err("nobody signed in");
    let text = format!("{err}: {}", std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default());
    assert!(text.contains("no authorization response within 6 s"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
    assert_eq!(token_requests.load(Ordering::SeqCst), 0);
    let result = &browser.results().await[0];
    assert_eq!(result["ok"], false, "the driver never reached the listener: {result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_expired_token_is_refreshed_by_glewlwyd_without_the_browser() {
    let Some((glewlwyd, chromium)) = peers() else { return };
    // The `oidc-short` instance: access tokens last 5 s.
    let auth_url = format!("{}/auth", glewlwyd.short_issuer);
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("tokens.json")).unwrap();
    let provider = |browser: &HeadlessChromium, client: Counting<Http>| {
        on_registered_ports(
            TokenProvider::authorization_code(&auth_url, &glewlwyd.short_token_url, &glewlwyd.client_id)
                .client_secret(&glewlwyd.client_secret)
                .scope(&glewlwyd.scope)
                .browser(browser.clone())
                .store(store.clone()),
            glewlwyd,
        )
        .build(client)
        .unwrap()
    };
    let browser = HeadlessChromium::new(chromium, glewlwyd);
    let (client, token_requests) = token_client();
    {
        let first = provider(&browser, client);
        first.token().await.unwrap();
    } // the process ends
    assert_eq!((browser.opened(), token_requests.load(Ordering::SeqCst)), (1, 1));
    assert_reached_listener(&browser.results().await[0], "Authentication succeeded");
    tokio::time::sleep(Duration::from_secs(glewlwyd.short_token_lifetime) + Duration::from_millis(500)).await;

    let browser2 = HeadlessChromium::new(chromium, glewlwyd);
    let (client2, token_requests2) = token_client();
    let second = provider(&browser2, client2);
    // userinfo of the instance that issued the token.
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::oauth2(second.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<tower_auth::ReplayBody<Full<Bytes>>>());
    let res = svc
        .oneshot(Request::get(format!("{}/userinfo", glewlwyd.short_issuer)).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(browser2.opened(), 0, "the cached refresh token was used, not the browser");
    assert_eq!(token_requests2.load(Ordering::SeqCst), 1, "one refresh_token request");
}

/// `fetch --oauth2-auth-code` with the system browser: the `webbrowser` crate runs what `BROWSER`
/// names, here the same headless Chromium driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_opens_the_browser_named_by_browser_and_fifty_requests_share_one_token() {
    let Some((glewlwyd, chromium)) = peers() else { return };
    let fetch = support::example::example_bin("fetch");
    let browser = format!("env NODE_PATH={} node {}", chromium.node_path.display(), chromium.login_script.display());
    // The registered ports, last first (the other tests start with the first).
    let ports: Vec<String> = glewlwyd.redirect_ports.iter().rev().map(u16::to_string).collect();
    let ports = ports.join(",");
    let args = [
        "--oauth2-auth-code",
        &glewlwyd.auth_url,
        "--oauth2-token-url",
        &glewlwyd.token_url,
        "--client-id",
        &glewlwyd.client_id,
        "--client-secret",
        &glewlwyd.client_secret,
        "--scope",
        &glewlwyd.scope,
        "--redirect-port",
        &ports,
        "-n",
        "50",
        "-c",
        "50",
        &format!("{}/userinfo", glewlwyd.issuer),
    ];
    let out = tokio::process::Command::new(fetch).args(args).env("BROWSER", browser).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stderr.lines().last().unwrap_or_default();
    assert!(out.status.success(), "{stderr}");
    assert!(summary.starts_with("summary requests=50 ok=50 statuses=200:50 "), "{summary}");
    assert!(summary.contains(" token_requests=1 "), "one code exchange for 50 requests: {summary}");
    assert!(!stderr.contains(&glewlwyd.client_secret), "{stderr}");
    eprintln!("fetch through Chromium: {summary}");
}
