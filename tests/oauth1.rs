//! OAuth1 through the engine, against our own verifier (`testing::OAuth1Check`) on a real
//! socket: the body buffered when it must be signed, parameters put into the body, the
//! `Once` mode's fail-closed errors, and no secret in logs, `Debug` or errors.

mod support;

use axum::Router;
use axum::routing::any;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_auth::oauth1::{OAuth1, Placement, SignError, SignatureMethod};
use tower_auth::testing::{OAuth1Check, RequireLayer, TestServer};
use tower_auth::{AuthLayer, ReplayBody};

const KEY: &str = "app-key-0001";
const SECRET: &str = "consumer-s3cret/+&=~\u{e9}";
const TOKEN: &str = "user-token-0001";
const TOKEN_SECRET: &str = "token-s3cret&/+ %";

/// A server that accepts OAuth1 requests signed by `KEY`/`TOKEN` and echoes the body it got.
async fn server() -> (TestServer, tower_auth::testing::Stats) {
    let require = RequireLayer::new(OAuth1Check::new(KEY, SECRET).token(TOKEN, TOKEN_SECRET));
    let stats = require.stats();
    let app = Router::new().route("/{*path}", any(|body: Bytes| async move { body })).route_layer(require);
    (TestServer::start(app).await.unwrap(), stats)
}

fn oauth(method: SignatureMethod) -> tower_auth::oauth1::OAuth1Builder {
    OAuth1::builder(KEY, SECRET).token(TOKEN, TOKEN_SECRET).method(method)
}

async fn send(oauth: OAuth1, req: Request<Full<Bytes>>) -> Result<(StatusCode, String), tower_auth::Error> {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let svc = ServiceBuilder::new().layer(AuthLayer::new(oauth)).service(client);
    let res = svc.oneshot(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn form(url: String, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn hmac_and_plaintext_in_every_placement_through_the_engine() {
    let (server, stats) = server().await;
    let methods = [
        SignatureMethod::HmacSha1,
        SignatureMethod::HmacSha256,
        SignatureMethod::HmacSha512,
        SignatureMethod::Plaintext,
    ];
    for method in methods {
        for placement in [Placement::Header, Placement::Query, Placement::Body] {
            let url = server.url("/a%20b/c?q=a+b&q=a%20b&e=&r=%2B%26");
            let o = oauth(method).placement(placement).build().unwrap();
            let (status, body) = send(o, form(url.clone(), "x=%E2%98%83&x=&y=1+2")).await.unwrap();
            assert_eq!(status, 200, "{method} {placement:?} form");
            if placement == Placement::Body {
                assert!(body.starts_with("x=%E2%98%83&x=&y=1+2&oauth_consumer_key="), "{body}");
            } else {
                assert_eq!(body, "x=%E2%98%83&x=&y=1+2");
            }
            let o = oauth(method).placement(placement).build().unwrap();
            let get = Request::get(url.clone()).body(Full::default()).unwrap();
            assert_eq!(send(o, get).await.unwrap().0, 200, "{method} {placement:?} get");
            if placement != Placement::Body {
                let o = oauth(method).placement(placement).body_hash(true).build().unwrap();
                let put = Request::put(url)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(b"{\"a\":[1,2]}")))
                    .unwrap();
                assert_eq!(send(o, put).await.unwrap(), (StatusCode::OK, "{\"a\":[1,2]}".to_owned()));
            }
        }
    }
    assert_eq!(stats.rejected(), 0);
}

/// PLAINTEXT's signature is the encoded secrets: in the query or a form body it is encoded
/// once more and decoded once by the server (oauthlib 3.2.2 decodes it twice, see
/// tests/peers_oauthlib.rs, so it is checked here).
#[tokio::test]
async fn plaintext_with_reserved_secrets_in_query_and_body() {
    let (server, stats) = server().await;
    for placement in [Placement::Query, Placement::Body] {
        let o = oauth(SignatureMethod::Plaintext).placement(placement).build().unwrap();
        let (status, _) = send(o, form(server.url("/p"), "a=1")).await.unwrap();
        assert_eq!(status, 200, "{placement:?}");
    }
    assert_eq!(stats.accepted(), 2);
}

#[tokio::test]
async fn wrong_secrets_are_refused_by_the_check() {
    let (server, stats) = server().await;
    let wrong = OAuth1::builder(KEY, "nope").token(TOKEN, TOKEN_SECRET).build().unwrap();
    assert_eq!(send(wrong, form(server.url("/w"), "a=1")).await.unwrap().0, 401);
    let wrong = OAuth1::builder(KEY, SECRET).token(TOKEN, "nope").method(SignatureMethod::HmacSha256).build().unwrap();
    let get = Request::get(server.url("/w?x=1")).body(Full::default()).unwrap();
    assert_eq!(send(wrong, get).await.unwrap().0, 401);
    assert_eq!(stats.rejected(), 2);
}

#[tokio::test]
async fn body_over_the_limit_is_a_typed_error_and_nothing_is_sent() {
    let (server, stats) = server().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    for body_hash in [false, true] {
        let o = oauth(SignatureMethod::HmacSha1).body_hash(body_hash).build().unwrap();
        let svc = ServiceBuilder::new().layer(AuthLayer::new(o).body_limit(8)).service(client.clone());
        let ct = if body_hash { "application/json" } else { "application/x-www-form-urlencoded" };
        let req = Request::post(server.url("/big"))
            .header("content-type", ct)
            .body(Full::new(Bytes::from("a=0123456789abcdef")))
            .unwrap();
        let err = svc.oneshot(req).await.unwrap_err();
        assert!(err.is_body());
        let source = std::error::Error::source(&err).unwrap().downcast_ref::<SignError>().cloned();
        assert_eq!(source, Some(SignError::BodyUnavailable { once: false }));
    }
    assert_eq!(stats.requests(), 0, "nothing was sent");
}

/// `OAuth1<Once>` keeps the caller's body type; requests that need the body fail, unsent.
#[tokio::test]
async fn once_mode_keeps_the_body_type_and_fails_closed() {
    let (server, stats) = server().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let o = oauth(SignatureMethod::HmacSha256).build_once().unwrap();
    let svc = ServiceBuilder::new().layer(AuthLayer::new(o)).service(client);
    let get = Request::get(server.url("/once?q=1")).body(Full::default()).unwrap();
    assert_eq!(svc.clone().oneshot(get).await.unwrap().status(), 200);
    let json = Request::put(server.url("/once"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(svc.clone().oneshot(json).await.unwrap().status(), 200);
    let err = svc.oneshot(form(server.url("/once"), "a=1")).await.unwrap_err();
    assert!(err.is_body());
    assert!(std::error::Error::source(&err).unwrap().to_string().contains("OAuth1<Once>"));
    assert_eq!(stats.requests(), 2);
}

#[tokio::test]
async fn no_secret_in_logs_debug_or_errors() {
    let logs = support::global_logs();
    let (server, _) = server().await;
    let rsa = include_str!("data/test-rsa-key.pem");
    let mut texts = Vec::new();
    for method in SignatureMethod::ALL {
        let mut b = oauth(method).verifier("verifier-s3cret");
        if method.is_rsa() {
            b = b.rsa_key_pem(rsa);
        }
        let o = b.build().unwrap();
        texts.push(format!("{o:?}"));
        let _ = send(o.clone(), form(server.url("/log"), "a=1")).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
        let svc = ServiceBuilder::new().layer(AuthLayer::new(o).body_limit(1)).service(client);
        let err = svc.oneshot(form(server.url("/log"), "a=123")).await.unwrap_err();
        texts.push(format!("{err:?} {err}"));
    }
    let logs = logs.text();
    assert!(logs.contains("OAuth1: request signed") && logs.contains("OAuth1Check: rejected"), "{logs}");
    assert!(
        logs.contains(
            "sending OAuth1 PLAINTEXT signatures (the consumer and token secrets themselves) over plain http"
        )
    );
    let all = texts.join("\n") + &logs;
    for secret in ["s3cret", "BEGIN PRIVATE KEY", "MIIEv"] {
        assert!(!all.contains(secret), "{secret} in {all}");
    }
}
