//! HTTPS through an authenticating proxy (issue 10): `ProxyConnector` opens a `CONNECT` tunnel,
//! answers the proxy's `407` with the crate's own schemes (Basic pre-emptively, Digest and Guess
//! answering the challenge, on the same connection or a new one), then TLS to the origin inside
//! the tunnel, where the origin's credentials travel. And every way a proxy can go wrong: a
//! typed `ProxyError` naming the proxy, never the password, no retry loop.
//!
//! The proxy is the crate's `testing::proxy::TestProxy`; the origin a `TlsServer` with a
//! certificate made at run time. Everything on 127.0.0.1, each test bounded.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_auth::connect::tls::{Roots, TlsConfig};
use tower_auth::connect::{Proxies, Proxy, ProxyConnector, ProxyError};
use tower_auth::testing::proxy::{Misbehaviour, TestProxy};
use tower_auth::testing::tls::TestPki;
use tower_auth::testing::{BasicCheck, DigestCheck};
use tower_auth::{AuthLayer, Basic, Digest};

mod support;
use support::https::Origin;

const PASS: &str = "proxy-s3cret-never-printed";
const BOUND: Duration = Duration::from_secs(20);

async fn origin() -> Origin {
    Origin::local().await
}

async fn origin_for(names: &[&str]) -> Origin {
    Origin::start(names).await
}

fn tls(o: &Origin) -> TlsConfig {
    o.tls()
}

type Https = Client<hyper_rustls::HttpsConnector<ProxyConnector>, Empty<Bytes>>;

fn https_client(o: &Origin, proxy: Proxy) -> (Https, ProxyConnector) {
    let connector = ProxyConnector::new(Proxies::all(proxy));
    let https = tls(o).https(connector.clone()).unwrap();
    (Client::builder(TokioExecutor::new()).build(https), connector)
}

async fn fetch(client: &Https, url: &str) -> Result<(StatusCode, String), hyper_util::client::legacy::Error> {
    let res = client.get(url.parse().unwrap()).await?;
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn proxy_error(err: &hyper_util::client::legacy::Error) -> &ProxyError {
    ProxyError::find(err).unwrap_or_else(|| panic!("no ProxyError in {err:?}"))
}

fn no_secret(text: &str) {
    assert!(!text.contains(PASS), "password leaked: {text}");
}

#[tokio::test]
async fn basic_on_connect_pre_emptively_then_tls_inside_the_tunnel() {
    tokio::time::timeout(BOUND, async {
        let o = origin().await;
        let proxy =
            TestProxy::builder().check(BasicCheck::new("corp").user("alice", PASS).proxy(true)).start().await.unwrap();
        let (client, connector) =
            https_client(&o, Proxy::parse(&proxy.url()).unwrap().auth(Basic::proxy("alice", PASS).unwrap()));
        let (status, body) = fetch(&client, &o.server.url("/")).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "HTTP/2.0 authorization=-", "HTTP/2 by ALPN inside the tunnel");
        assert_eq!(connector.connect_exchanges(), 1, "Basic is sent with the first CONNECT");
        assert_eq!((proxy.connects(), proxy.tunnels(), proxy.with_credentials()), (1, 1, 1));
        o.assert_no_leak();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn digest_on_connect_answers_407_on_the_same_connection_then_pre_authorises() {
    tokio::time::timeout(BOUND, async {
        let o = origin().await;
        let proxy =
            TestProxy::builder().check(DigestCheck::new("corp").user("alice", PASS).proxy(true)).start().await.unwrap();
        let scheme = Proxy::parse(&proxy.url()).unwrap().auth(Digest::proxy("alice", PASS).unwrap());
        let (client, connector) = https_client(&o, scheme.clone());
        let (status, _) = fetch(&client, &o.server.url("/")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(connector.connect_exchanges(), 2, "challenge, answer");
        assert_eq!(proxy.connections(), 1, "the answer went on the same connection");
        // A second client sharing the scheme (and so its Digest state): one CONNECT.
        let (client2, connector2) = https_client(&o, scheme);
        let (status, _) = fetch(&client2, &o.server.url("/")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(connector2.connect_exchanges(), 1, "pre-authorised with the nonce already known");
        assert_eq!(proxy.tunnels(), 2);
        o.assert_no_leak();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_407_with_connection_close_is_answered_on_a_new_connection() {
    tokio::time::timeout(BOUND, async {
        let o = origin().await;
        let proxy = TestProxy::builder()
            .check(DigestCheck::new("corp").user("alice", PASS).proxy(true))
            .close_after_challenge(true)
            .start()
            .await
            .unwrap();
        let (client, connector) =
            https_client(&o, Proxy::parse(&proxy.url()).unwrap().auth(Digest::proxy_guess("alice", PASS).unwrap()));
        let (status, _) = fetch(&client, &o.server.url("/")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(connector.connect_exchanges(), 2);
        assert_eq!(proxy.connections(), 2, "a new connection for the answer");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn origin_credentials_travel_inside_tls_and_proxy_credentials_stay_with_the_proxy() {
    tokio::time::timeout(BOUND, async {
        let o = origin().await;
        let proxy =
            TestProxy::builder().check(DigestCheck::new("corp").user("alice", PASS).proxy(true)).start().await.unwrap();
        let (client, _) =
            https_client(&o, Proxy::parse(&proxy.url()).unwrap().auth(Digest::proxy("alice", PASS).unwrap()));
        // The origin's layer, and a proxy layer too: it must not add Proxy-Authorization to an
        // https:// request (it travels inside the tunnel).
        let svc = ServiceBuilder::new()
            .layer(AuthLayer::bearer("origin-t0ken").unwrap())
            .layer(AuthLayer::proxy_basic("alice", PASS).unwrap())
            .service(client);
        let req = http::Request::get(o.server.url("/")).body(Empty::<Bytes>::new()).unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "HTTP/2.0 authorization=Bearer origin-t0ken");
        o.assert_no_leak();
        assert_eq!(proxy.requests(), proxy.connects(), "the proxy saw CONNECTs only, never the request in clear");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn credentials_from_the_proxy_url_with_at_signs() {
    tokio::time::timeout(BOUND, async {
        let o = origin().await;
        let proxy = TestProxy::builder()
            .check(BasicCheck::new("corp").user("al@ice", "p@ss:w%rd").proxy(true))
            .start()
            .await
            .unwrap();
        let url = format!("http://al%40ice:p@ss:w%25rd@{}", proxy.addr());
        let (client, _) = https_client(&o, Proxy::parse(&url).unwrap());
        let (status, _) = fetch(&client, &o.server.url("/")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    })
    .await
    .unwrap();
}

/// The error of a request through a proxy that misbehaves, with the number of CONNECTs sent.
async fn failure(
    builder: tower_auth::testing::proxy::TestProxyBuilder,
    scheme: Option<Digest>,
) -> (String, u64, TestProxy) {
    let o = origin().await;
    let proxy = builder.start().await.unwrap();
    let mut p = Proxy::parse(&proxy.url()).unwrap();
    if let Some(s) = scheme {
        p = p.auth(s);
    }
    let (client, connector) = https_client(&o, p);
    let err = fetch(&client, &o.server.url("/")).await.unwrap_err();
    let e = proxy_error(&err);
    assert_eq!(e.proxy(), proxy.url());
    assert_eq!(e.target(), o.server.addr().to_string());
    let text = format!("{e} / {e:?} / {err:?}");
    no_secret(&text);
    assert_eq!(u64::from(e.exchanges()), connector.connect_exchanges());
    (format!("{e}"), connector.connect_exchanges(), proxy)
}

#[tokio::test]
async fn a_proxy_that_answers_407_forever_is_given_up_on() {
    tokio::time::timeout(BOUND, async {
        let check = DigestCheck::new("corp").user("alice", PASS).proxy(true);
        let b = TestProxy::builder().check(check).misbehave(Misbehaviour::ChallengeForever);
        let (msg, n, _) = failure(b, Some(Digest::proxy("alice", PASS).unwrap())).await;
        assert!(msg.starts_with("proxy authentication failed at http://127.0.0.1:"), "{msg}");
        assert!(msg.contains("status 407"), "{msg}");
        assert!(n <= u64::from(tower_auth::MAX_EXCHANGES), "bounded: {n}");
        assert_eq!(n, 2, "one answer to the challenge, then the refusal is final: {msg}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn wrong_password_no_credentials_and_malformed_challenges_are_typed() {
    tokio::time::timeout(BOUND, async {
        let check = || DigestCheck::new("corp").user("alice", "other").proxy(true);
        let (msg, n, _) =
            failure(TestProxy::builder().check(check()), Some(Digest::proxy("alice", PASS).unwrap())).await;
        assert!(msg.contains("the proxy refused the credentials"), "{msg}");
        assert_eq!(n, 2);
        let (msg, n, _) = failure(TestProxy::builder().check(check()), None).await;
        assert!(msg.contains("none were given"), "{msg}");
        assert_eq!(n, 1);
        let b = TestProxy::builder().misbehave(Misbehaviour::MalformedChallenge);
        let (msg, n, _) = failure(b, Some(Digest::proxy("alice", PASS).unwrap())).await;
        assert!(msg.contains("malformed Proxy-Authenticate"), "{msg}");
        assert_eq!(n, 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn connect_refused_with_403_or_502() {
    tokio::time::timeout(BOUND, async {
        for status in [StatusCode::FORBIDDEN, StatusCode::BAD_GATEWAY] {
            let b = TestProxy::builder().misbehave(Misbehaviour::Refuse(status));
            let (msg, n, _) = failure(b, None).await;
            assert!(msg.starts_with("tunnel refused by proxy http://127.0.0.1:"), "{msg}");
            assert!(msg.contains(&format!("status {}", status.as_u16())), "{msg}");
            assert_eq!(n, 1);
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_proxy_that_closes_mid_handshake() {
    tokio::time::timeout(BOUND, async {
        let b = TestProxy::builder().misbehave(Misbehaviour::CloseMidHandshake);
        let (msg, n, proxy) = failure(b, Some(Digest::proxy("alice", PASS).unwrap())).await;
        assert!(msg.starts_with("connection closed by proxy http://127.0.0.1:"), "{msg}");
        assert_eq!((n, proxy.connections()), (1, 1), "no retry: {msg}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_unreachable_proxy_is_a_connect_error() {
    tokio::time::timeout(BOUND, async {
        let o = origin().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (client, _) = https_client(&o, Proxy::parse(&format!("http://u:{PASS}@127.0.0.1:{port}")).unwrap());
        let err = fetch(&client, &o.server.url("/")).await.unwrap_err();
        let e = proxy_error(&err);
        assert!(e.is_connect(), "{e:?}");
        assert_eq!(e.proxy(), format!("http://127.0.0.1:{port}"));
        no_secret(&format!("{e} {e:?} {err:?}"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_origin_certificate_from_an_unknown_ca_or_for_another_name_fails_inside_the_tunnel() {
    tokio::time::timeout(BOUND, async {
        let o = origin().await;
        let proxy = TestProxy::builder().start().await.unwrap();
        // Trusts another CA.
        let other = TestPki::new(&["localhost"]).unwrap();
        let tls = TlsConfig::new().roots(Roots::None).add_ca_pem(other.ca_pem().as_bytes()).unwrap();
        let connector = ProxyConnector::new(Proxies::all(Proxy::parse(&proxy.url()).unwrap()));
        let client: Https = Client::builder(TokioExecutor::new()).build(tls.https(connector).unwrap());
        let err = fetch(&client, &o.server.url("/")).await.unwrap_err();
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
        // The right CA, a certificate for another name (localhost only, asked for 127.0.0.1).
        let o = origin_for(&["localhost"]).await;
        let connector = ProxyConnector::new(Proxies::all(Proxy::parse(&proxy.url()).unwrap()));
        let client: Https = Client::builder(TokioExecutor::new()).build(self::tls(&o).https(connector).unwrap());
        let url = o.server.url("/");
        let err = fetch(&client, &url).await.unwrap_err();
        assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn plain_http_targets_go_in_absolute_form_with_the_layer_answering() {
    tokio::time::timeout(BOUND, async {
        let proxy =
            TestProxy::builder().check(DigestCheck::new("corp").user("alice", PASS).proxy(true)).start().await.unwrap();
        let connector = ProxyConnector::new(Proxies::all(Proxy::parse(&proxy.url()).unwrap()));
        let client =
            Client::builder(TokioExecutor::new()).build::<_, tower_auth::ReplayBody<Empty<Bytes>>>(connector.clone());
        let svc = ServiceBuilder::new().layer(AuthLayer::proxy_digest("alice", PASS).unwrap()).service(client);
        let req = http::Request::get("http://internal.example/x").body(Empty::<Bytes>::new()).unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "proxied GET http://internal.example/x");
        assert_eq!(connector.connect_exchanges(), 0);
        assert_eq!(proxy.connects(), 0);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_https_proxy_with_digest_on_connect_tls_inside_tls() {
    tokio::time::timeout(BOUND, async {
        let o = origin().await;
        let proxy_pki = TestPki::new(&["127.0.0.1"]).unwrap();
        let proxy = TestProxy::builder()
            .check(DigestCheck::new("corp").user("alice", PASS).proxy(true))
            .tls(&proxy_pki)
            .unwrap()
            .start()
            .await
            .unwrap();
        assert!(proxy.url().starts_with("https://"));
        let scheme = Proxy::parse(&proxy.url()).unwrap().auth(Digest::proxy("alice", PASS).unwrap());
        assert!(scheme.is_https());
        let proxy_tls = TlsConfig::new().roots(Roots::None).add_ca_pem(proxy_pki.ca_pem().as_bytes()).unwrap();
        let connector = ProxyConnector::new(Proxies::all(scheme.clone())).proxy_tls(proxy_tls.client_config().unwrap());
        let client: Https = Client::builder(TokioExecutor::new()).build(tls(&o).https(connector.clone()).unwrap());
        let (status, body) = fetch(&client, &o.server.url("/")).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "HTTP/2.0 authorization=-"));
        assert_eq!(connector.connect_exchanges(), 2);
        o.assert_no_leak();
        // Not trusting the proxy's CA: a connect error naming the proxy.
        let connector = ProxyConnector::new(Proxies::all(scheme)).proxy_tls(tls(&o).client_config().unwrap());
        let client: Https = Client::builder(TokioExecutor::new()).build(tls(&o).https(connector).unwrap());
        let err = fetch(&client, &o.server.url("/")).await.unwrap_err();
        let e = proxy_error(&err);
        assert!(e.is_connect(), "{e:?}");
        assert!(e.to_string().contains("TLS handshake with the proxy failed"), "{e}");
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    })
    .await
    .unwrap();
}
