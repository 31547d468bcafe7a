//! `fetch` over HTTPS (issue 10), run as a program: a local rustls origin with a CA made at test
//! time (`--cacert`), an unknown CA and a wrong name refused with rustls's typed errors, `-k`
//! with its warning, HTTP/2 by ALPN; HTTPS through an authenticating proxy (`-x`, `-U`,
//! `--proxy-basic`, `--proxy-digest`, `--proxy-anyauth`), CONNECT exchanges counted in
//! `round_trips`; proxies from the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`,
//! `NO_PROXY`, lower- and upper-case, user info as proxy credentials), set in the child process
//! only; `--noproxy`.

mod support;

use axum::Router;
use axum::response::IntoResponse;
use http::HeaderMap;
use tower_auth::testing::proxy::{Misbehaviour, TestProxy};
use tower_auth::testing::{BasicCheck, DigestCheck};

use support::https::{Origin, Run};

const PASS: &str = "pr0xy-pw-never-printed";

async fn fetch(args: &[&str], env: &[(&str, &str)]) -> Run {
    support::https::fetch(args, env).await
}

async fn origin(names: &[&str]) -> Origin {
    Origin::start(names).await
}

async fn digest_proxy() -> TestProxy {
    TestProxy::builder().check(DigestCheck::new("corp").user("alice", PASS).proxy(true)).start().await.unwrap()
}

async fn basic_proxy() -> TestProxy {
    TestProxy::builder().check(BasicCheck::new("corp").user("alice", PASS).proxy(true)).start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_directly_with_cacert_over_http2() {
    let o = origin(&["localhost", "127.0.0.1"]).await;
    let run = fetch(&["--cacert", o.ca(), "-u", "bob:origin-pw", &o.url()], &[]).await;
    run.assert(0, "200:1", 1, PASS);
    assert_eq!(run.stdout, "HTTP/2.0 authorization=Basic Ym9iOm9yaWdpbi1wdw==", "HTTP/2 by ALPN: {run:?}");
    assert!(!run.stderr.contains("plain http"), "no plain-http warning over TLS: {run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ca_and_wrong_name_are_refused_with_typed_errors() {
    let o = origin(&["localhost", "127.0.0.1"]).await;
    let run = fetch(&[&o.url()], &[]).await;
    run.assert(1, "err:1", 1, PASS);
    assert!(run.stderr.contains("invalid peer certificate: UnknownIssuer"), "{run:?}");
    let o = origin(&["localhost"]).await;
    let run = fetch(&["--cacert", o.ca(), &o.url()], &[]).await;
    run.assert(1, "err:1", 1, PASS);
    assert!(run.stderr.contains("invalid peer certificate: certificate not valid for name \"127.0.0.1\""), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn insecure_accepts_any_certificate_with_a_loud_warning() {
    let o = origin(&["localhost"]).await;
    let run = fetch(&["-k", &o.url()], &[]).await;
    run.assert(0, "200:1", 1, PASS);
    assert!(run.stderr.contains("fetch: warning: --insecure"), "{run:?}");
    assert!(run.stderr.contains("verification is OFF"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_for_cacert_and_proxy_urls() {
    let missing = fetch(&["--cacert", "/nonexistent/ca.pem", "https://127.0.0.1/"], &[]).await;
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.starts_with("fetch: --cacert: cannot read"), "{missing:?}");
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "hello").unwrap();
    let run = fetch(&["--cacert", not_pem.path().to_str().unwrap(), "https://127.0.0.1/"], &[]).await;
    assert!(run.stderr.starts_with("fetch: --cacert: invalid CA bundle"), "{run:?}");
    let run = fetch(&["-x", &format!("socks5://alice:{PASS}@127.0.0.1:1"), "https://127.0.0.1/"], &[]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--proxy: invalid proxy URL \"socks5://[redacted]@127.0.0.1:1\""), "{run:?}");
    assert!(!run.stderr.contains(PASS));
    let run = fetch(&["https://127.0.0.1/"], &[("HTTPS_PROXY", &format!("ftp://alice:{PASS}@proxy"))]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("HTTPS_PROXY: invalid proxy URL"), "{run:?}");
    assert!(!run.stderr.contains(PASS), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_through_a_proxy_with_basic_on_connect() {
    let o = origin(&["localhost", "127.0.0.1"]).await;
    let proxy = basic_proxy().await;
    let user = format!("alice:{PASS}");
    let run = fetch(&["--cacert", o.ca(), "-x", &proxy.url(), "-U", &user, "-n", "3", &o.url()], &[]).await;
    // One CONNECT (Basic pre-emptively), then 3 requests in the tunnel.
    run.assert(0, "200:3", 4, PASS);
    assert_eq!((proxy.connects(), proxy.with_credentials()), (1, 1));
    o.assert_no_leak();
}

#[tokio::test(flavor = "multi_thread")]
async fn https_through_a_proxy_with_digest_and_anyauth_on_connect() {
    let o = origin(&["localhost", "127.0.0.1"]).await;
    let user = format!("alice:{PASS}");
    for mode in ["--proxy-digest", "--proxy-anyauth"] {
        let proxy = digest_proxy().await;
        let run = fetch(&["--cacert", o.ca(), "-x", &proxy.url(), "-U", &user, mode, "-n", "3", &o.url()], &[]).await;
        // CONNECT, 407, CONNECT with Digest: 2 exchanges, then 3 requests in the tunnel.
        run.assert(0, "200:3", 5, PASS);
        assert_eq!(proxy.connects(), 2, "{mode}");
        // Concurrent requests: more tunnels, each pre-authorised (one CONNECT each).
        let proxy = digest_proxy().await;
        let run =
            fetch(&["--cacert", o.ca(), "-x", &proxy.url(), "-U", &user, mode, "-n", "6", "-c", "3", &o.url()], &[])
                .await;
        let tunnels = proxy.tunnels();
        assert_eq!(proxy.connects(), tunnels + 1, "one 407 in all, then one CONNECT per tunnel: {run:?}");
        run.assert(0, "200:6", 6 + tunnels + 1, PASS);
    }
    o.assert_no_leak();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_proxy_password_and_a_refusing_proxy_are_typed_errors() {
    let o = origin(&["localhost", "127.0.0.1"]).await;
    let proxy = digest_proxy().await;
    let run =
        fetch(&["--cacert", o.ca(), "-x", &proxy.url(), "-U", "alice:wrong", "--proxy-digest", &o.url()], &[]).await;
    // One request counted by the layer, two CONNECTs by the connector.
    run.assert(1, "err:1", 3, PASS);
    let expected = format!(
        "proxy authentication failed at {} (CONNECT {}, status 407, after 2 exchanges)",
        proxy.url(),
        o.server.addr()
    );
    assert!(run.stderr.contains(&expected), "{run:?}");
    let refusing =
        TestProxy::builder().misbehave(Misbehaviour::Refuse(http::StatusCode::FORBIDDEN)).start().await.unwrap();
    let run = fetch(&["--cacert", o.ca(), "-x", &refusing.url(), &o.url()], &[]).await;
    run.assert(1, "err:1", 2, PASS);
    assert!(run.stderr.contains(&format!("tunnel refused by proxy {}", refusing.url())), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_proxies_upper_and_lower_case_with_user_info() {
    let o = origin(&["localhost", "127.0.0.1"]).await;
    for var in ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        let proxy = basic_proxy().await;
        // `@` raw and as %40 in the password: split at the last `@`, decoded.
        let with_at = TestProxy::builder()
            .check(BasicCheck::new("corp").user("alice", "p@ss@word").proxy(true))
            .start()
            .await
            .unwrap();
        let url = format!("http://alice:p%40ss@word@{}", with_at.addr());
        let run = fetch(&["--cacert", o.ca(), &o.url()], &[(var, &url)]).await;
        run.assert(0, "200:1", 2, PASS);
        assert_eq!(with_at.connects(), 1, "{var}: {run:?}");
        let url = format!("http://alice:{PASS}@{}", proxy.addr());
        let run = fetch(&["--cacert", o.ca(), &o.url()], &[(var, &url)]).await;
        run.assert(0, "200:1", 2, PASS);
        assert_eq!((proxy.connects(), proxy.with_credentials()), (1, 1), "{var}");
        // The URL's user info answered with Digest when asked.
        let dproxy = digest_proxy().await;
        let url = format!("http://alice:{PASS}@{}", dproxy.addr());
        let run = fetch(&["--cacert", o.ca(), "--proxy-digest", &o.url()], &[(var, &url)]).await;
        run.assert(0, "200:1", 3, PASS);
    }
    o.assert_no_leak();
}

#[tokio::test(flavor = "multi_thread")]
async fn http_proxy_for_plain_http_targets_in_absolute_form() {
    let proxy = basic_proxy().await;
    let url = format!("http://alice:{PASS}@{}", proxy.addr());
    for var in ["HTTP_PROXY", "http_proxy"] {
        let run = fetch(&["http://internal.example/x"], &[(var, &url)]).await;
        run.assert(0, "200:1", 1, PASS);
        assert_eq!(run.stdout, "proxied GET http://internal.example/x", "{run:?}");
    }
    assert_eq!((proxy.connects(), proxy.with_credentials()), (0, 2));
    // CGI: upper-case HTTP_PROXY is ignored (httpoxy), as curl does.
    let run = fetch(&["http://127.0.0.1:9/x"], &[("HTTP_PROXY", &url), ("REQUEST_METHOD", "GET")]).await;
    assert_eq!(run.code, 1, "went direct (nothing listens on port 9): {run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_proxy_and_noproxy_send_targets_direct_without_proxy_credentials() {
    let o = origin(&["localhost", "127.0.0.1"]).await;
    let proxy = basic_proxy().await;
    let port = o.server.addr().port();
    let env_url = format!("http://alice:{PASS}@{}", proxy.addr());
    let localhost = format!("https://localhost:{port}/");
    let cases: &[(&str, &str, &str, bool)] = &[
        ("NO_PROXY", "127.0.0.1", "", false),
        ("no_proxy", "example.com, 127.0.0.0/8", "", false),
        ("NO_PROXY", "*", "", false),
        ("NO_PROXY", &format!("127.0.0.1:{port}"), "", false),
        ("NO_PROXY", "127.0.0.1:1", "", true),
        ("NO_PROXY", ".localhost", "localhost", false),
        ("NO_PROXY", "other.example", "", true),
    ];
    for (var, list, host, proxied) in cases {
        let before = proxy.connects();
        let url = if host.is_empty() { o.url() } else { localhost.clone() };
        let run = fetch(&["--cacert", o.ca(), &url], &[("HTTPS_PROXY", &env_url), (var, list)]).await;
        run.assert(0, "200:1", if *proxied { 2 } else { 1 }, PASS);
        assert_eq!(proxy.connects() - before, u64::from(*proxied), "{var}={list}: {run:?}");
    }
    // --noproxy '*' wins over the environment; --noproxy LIST over NO_PROXY.
    let before = proxy.connects();
    let run = fetch(&["--cacert", o.ca(), "--noproxy", "*", &o.url()], &[("HTTPS_PROXY", &env_url)]).await;
    run.assert(0, "200:1", 1, PASS);
    let run =
        fetch(&["--cacert", o.ca(), "--noproxy", "127.0.0.1", &o.url()], &[("ALL_PROXY", &env_url), ("NO_PROXY", "x")])
            .await;
    run.assert(0, "200:1", 1, PASS);
    assert_eq!(proxy.connects(), before);
    o.assert_no_leak();
    // A plain-http URL that bypasses the proxy gets no Proxy-Authorization either.
    let direct = support_echo().await;
    let run = fetch(
        &["-U", &format!("alice:{PASS}"), &direct.url("/")],
        &[("HTTP_PROXY", &env_url), ("NO_PROXY", "127.0.0.1")],
    )
    .await;
    run.assert(0, "200:1", 1, PASS);
    assert_eq!(run.stdout, "proxy-authorization=-", "{run:?}");
}

/// A plain-http server that echoes whether it saw Proxy-Authorization.
async fn support_echo() -> tower_auth::testing::TestServer {
    let app = Router::new().route(
        "/",
        axum::routing::get(|headers: HeaderMap| async move {
            format!("proxy-authorization={}", if headers.contains_key("proxy-authorization") { "SENT" } else { "-" })
        }),
    );
    tower_auth::testing::TestServer::start(app).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_proxy_verified_with_the_same_cacert() {
    let o = origin(&["localhost", "127.0.0.1"]).await;
    // The proxy's certificate from the same CA as the origin's, so one --cacert serves both.
    let proxy = TestProxy::builder()
        .check(DigestCheck::new("corp").user("alice", PASS).proxy(true))
        .tls(&o.pki)
        .unwrap()
        .start()
        .await
        .unwrap();
    let user = format!("alice:{PASS}");
    let run = fetch(&["--cacert", o.ca(), "-x", &proxy.url(), "-U", &user, "--proxy-digest", &o.url()], &[]).await;
    run.assert(0, "200:1", 3, PASS);
    let run = fetch(&["-x", &proxy.url(), "-U", &user, "--proxy-digest", &o.url()], &[]).await;
    run.assert(1, "err:1", 1, PASS);
    assert!(run.stderr.contains(&format!("cannot connect to proxy {}", proxy.url())), "{run:?}");
    o.assert_no_leak();
}

/// `-L`: a plain-http URL through the proxy redirects to a host in `--noproxy`: the second hop
/// goes direct, without the proxy's credentials (they apply only to requests the connector
/// sends to the proxy: `connect::ThroughProxy`).
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_a_host_that_bypasses_the_proxy_gets_no_proxy_credentials() {
    let direct = support_echo().await;
    let landing = direct.url("/");
    // A forward proxy that wants Basic (no check of the value here: the test is about where it
    // goes) and answers the proxied request itself with a redirect to the direct host.
    let app = Router::new().route(
        "/start",
        axum::routing::get(move |headers: HeaderMap| {
            let landing = landing.clone();
            async move {
                if headers.contains_key("proxy-authorization") {
                    return (http::StatusCode::FOUND, [("location", landing)]).into_response();
                }
                let mut res = http::StatusCode::PROXY_AUTHENTICATION_REQUIRED.into_response();
                for challenge in ["Basic realm=\"p\"", "Digest realm=\"p\", nonce=\"n0nce\", qop=\"auth\""] {
                    res.headers_mut().append("proxy-authenticate", http::HeaderValue::from_static(challenge));
                }
                res
            }
        }),
    );
    let proxy = tower_auth::testing::TestServer::start(app).await.unwrap();
    for mode in ["--proxy-basic", "--proxy-digest", "--proxy-anyauth"] {
        let args = [
            "-x",
            &proxy.url(""),
            "-U",
            &format!("alice:{PASS}"),
            mode,
            "--noproxy",
            "127.0.0.1",
            "-L",
            "http://internal.example/start",
        ];
        let run = fetch(&args, &[]).await;
        assert_eq!(run.code, 0, "{mode}: {run:?}");
        assert_eq!(run.stdout, "proxy-authorization=-", "{mode}: {run:?}");
    }
}
