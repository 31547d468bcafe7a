//! Digest, Guess and proxy Digest against the `testing` verifier over real sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::{any, get};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_auth::digest::{Algorithm, Qop};
use tower_auth::testing::{DigestCheck, RequireLayer, Stats, TestServer};
use tower_auth::{AuthLayer, Digest};

/// A route that echoes the credentials it received and the request body.
async fn echo(headers: HeaderMap, body: Bytes) -> String {
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    format!("{}|{}|{}", h("authorization"), h("proxy-authorization"), String::from_utf8_lossy(&body))
}

async fn serve(check: DigestCheck) -> (TestServer, Stats) {
    let require = RequireLayer::new(check);
    let stats = require.stats();
    let app = Router::new().route("/{*path}", any(echo).layer(require));
    (TestServer::start(app).await.unwrap(), stats)
}

type Svc = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    http::Response<hyper::body::Incoming>,
    hyper_util::client::legacy::Error,
>;

fn client(layer: AuthLayer<Digest>) -> Svc {
    let client = Client::builder(TokioExecutor::new()).build_http();
    tower::util::BoxCloneService::new(ServiceBuilder::new().layer(layer).service(client))
}

async fn send(svc: &Svc, method: &str, url: &str, body: &'static str) -> (StatusCode, String) {
    send_owned(svc.clone(), method.to_owned(), url.to_owned(), body).await
}

async fn send_owned(svc: Svc, method: String, url: String, body: &'static str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method.as_str())
        .uri(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status();
    (status, String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned())
}

#[tokio::test]
async fn n_sequential_requests_cost_n_plus_one_round_trips() {
    let (server, stats) = serve(DigestCheck::new("r").user("alice", "s3cret")).await;
    let svc = client(AuthLayer::digest("alice", "s3cret").unwrap());
    for i in 0..20 {
        let (status, body) = send(&svc, "GET", &server.url("/a"), "").await;
        assert_eq!(status, 200, "request {i}");
        assert!(body.contains(&format!("nc={:08x}", i + 1)), "{body}");
    }
    assert_eq!(stats.requests(), 21);
}

#[tokio::test]
async fn every_algorithm_and_qop_is_accepted() {
    for algorithm in Algorithm::ALL {
        for qop in [Qop::Auth, Qop::AuthInt, Qop::None] {
            if algorithm.is_session() && qop == Qop::None {
                continue; // -sess needs a cnonce, which is only sent with a qop (RFC 2617 §3.2.2)
            }
            let (server, stats) =
                serve(DigestCheck::new("r").user("alice", "s3cret").algorithms(&[algorithm]).qop(&[qop])).await;
            let svc = client(AuthLayer::digest("alice", "s3cret").unwrap());
            for _ in 0..3 {
                let (status, body) = send(&svc, "POST", &server.url("/p?q=1"), "the body").await;
                assert_eq!(status, 200, "{algorithm:?} {qop:?}");
                assert!(body.ends_with("|the body"), "{body}");
                assert!(body.contains(&format!("algorithm={}", algorithm.name())), "{body}");
            }
            assert_eq!(stats.requests(), 4, "{algorithm:?} {qop:?}");
        }
    }
}

#[tokio::test]
async fn strongest_algorithm_wins() {
    let offered = [Algorithm::Md5, Algorithm::Sha256, Algorithm::Sha512_256, Algorithm::Sha1];
    let (server, _) = serve(DigestCheck::new("r").user("alice", "s3cret").algorithms(&offered)).await;
    let svc = client(AuthLayer::digest("alice", "s3cret").unwrap());
    let (status, body) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!(status, 200);
    assert!(body.contains("algorithm=SHA-512-256"), "{body}");
}

#[tokio::test]
async fn wrong_password_costs_exactly_two_round_trips() {
    let (server, stats) = serve(DigestCheck::new("r").user("alice", "s3cret")).await;
    let svc = client(AuthLayer::digest("alice", "wrong").unwrap());
    let (status, _) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!(status, 401);
    assert_eq!(stats.requests(), 2);
    // Pre-authorised with the cached (wrong) space: still two.
    stats.reset();
    let (status, _) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!(status, 401);
    assert_eq!(stats.requests(), 2);
}

#[tokio::test]
async fn stale_nonces_are_answered_without_failing() {
    let (server, stats) = serve(DigestCheck::new("r").user("alice", "s3cret").stale_after(3)).await;
    let svc = client(AuthLayer::digest("alice", "s3cret").unwrap());
    for _ in 0..10 {
        assert_eq!(send(&svc, "GET", &server.url("/a"), "").await.0, 200);
    }
    // 1 initial challenge + 10 requests + one stale retry for every 3 uses (after 3, 6, 9).
    assert_eq!(stats.requests(), 1 + 10 + 3);
}

#[tokio::test]
async fn nextnonce_is_honoured() {
    let (server, stats) = serve(DigestCheck::new("r").user("alice", "s3cret").stale_after(1).next_nonce(true)).await;
    let svc = client(AuthLayer::digest("alice", "s3cret").unwrap());
    for _ in 0..10 {
        assert_eq!(send(&svc, "GET", &server.url("/a"), "").await.0, 200);
    }
    assert_eq!(stats.requests(), 11, "each request used the nextnonce of the previous one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_use_distinct_nonce_counts() {
    // The verifier rejects a nonce count it has seen: every 200 proves a distinct count.
    let (server, stats) = serve(DigestCheck::new("r").user("alice", "s3cret")).await;
    let svc = client(AuthLayer::digest("alice", "s3cret").unwrap());
    assert_eq!(send(&svc, "GET", &server.url("/prime"), "").await.0, 200);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (svc, url) = (svc.clone(), server.url(&format!("/c/{i}")));
        tasks.spawn(async move { send_owned(svc, "GET".into(), url, "").await.0 });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(stats.requests(), 2 + 64);
}

#[tokio::test]
async fn userhash_and_non_ascii_user_names() {
    let (server, _) =
        serve(DigestCheck::new("r").user("J\u{e4}s\u{f8}n Doe", "pw").userhash(true).algorithms(&[Algorithm::Sha256]))
            .await;
    let svc = client(AuthLayer::digest("J\u{e4}s\u{f8}n Doe", "pw").unwrap());
    let (status, body) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!(status, 200);
    let hashed = Algorithm::Sha256.hash(&["J\u{e4}s\u{f8}n Doe".as_bytes(), b"r"]);
    assert!(body.contains(&format!("username=\"{hashed}\", userhash=true")), "{body}");

    let (server, _) = serve(DigestCheck::new("r").user("J\u{e4}s\u{f8}n Doe", "pw")).await;
    let (status, body) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!(status, 200);
    assert!(body.contains("username*=UTF-8''J%C3%A4s%C3%B8n%20Doe"), "{body}");
}

#[tokio::test]
async fn quoted_values_are_escaped() {
    let (server, _) = serve(DigestCheck::new("r \"quoted\" \\ realm").user("al\"ice", "pw")).await;
    let svc = client(AuthLayer::digest("al\"ice", "pw").unwrap());
    let (status, body) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"username="al\"ice", realm="r \"quoted\" \\ realm""#), "{body}");
}

async fn basic_or_both(offer_digest: bool) -> (TestServer, Stats) {
    let basic = RequireLayer::basic("b", "alice", "s3cret");
    let stats = basic.stats();
    let mut app = Router::new().route("/basic", get(echo).route_layer(basic));
    if offer_digest {
        // A route that offers Basic and Digest: digest is checked, Basic is also challenged.
        let digest = RequireLayer::new(DigestCheck::new("d").user("alice", "s3cret"));
        let stats = digest.stats();
        app = app.route(
            "/both",
            get(echo).route_layer(digest).layer(axum::middleware::map_response(
                |mut res: axum::response::Response| async {
                    if res.status() == 401 {
                        res.headers_mut().append("www-authenticate", "Basic realm=\"d\"".parse().unwrap());
                    }
                    res
                },
            )),
        );
        return (TestServer::start(app).await.unwrap(), stats);
    }
    (TestServer::start(app).await.unwrap(), stats)
}

#[tokio::test]
async fn guess_picks_basic_or_digest_and_remembers() {
    let (server, stats) = basic_or_both(false).await;
    let svc = client(AuthLayer::guess("alice", "s3cret").unwrap());
    for _ in 0..3 {
        let (status, body) = send(&svc, "GET", &server.url("/basic"), "").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("Basic "), "{body}");
    }
    assert_eq!(stats.requests(), 4);

    let (server, stats) = basic_or_both(true).await;
    let svc = client(AuthLayer::guess("alice", "s3cret").unwrap());
    for _ in 0..3 {
        let (status, body) = send(&svc, "GET", &server.url("/both"), "").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("Digest "), "Digest preferred over Basic: {body}");
    }
    assert_eq!(stats.requests(), 4);
}

#[tokio::test]
async fn digest_never_downgrades_to_basic() {
    let (server, stats) = basic_or_both(false).await;
    let svc = client(AuthLayer::digest("alice", "s3cret").unwrap());
    let (status, _) = send(&svc, "GET", &server.url("/basic"), "").await;
    assert_eq!(status, 401);
    assert_eq!(stats.requests(), 1);
}

#[tokio::test]
async fn proxy_digest_answers_407_with_proxy_authorization_only() {
    let (server, stats) = serve(DigestCheck::new("p").user("alice", "s3cret").proxy(true)).await;
    let svc = client(AuthLayer::proxy_digest("alice", "s3cret").unwrap());
    for _ in 0..3 {
        let (status, body) = send(&svc, "GET", &server.url("/a"), "").await;
        assert_eq!(status, 200);
        let (authorization, proxy) = body.split_once('|').unwrap();
        assert_eq!(authorization, "", "no Authorization to the origin");
        assert!(proxy.starts_with("Digest "), "{body}");
    }
    assert_eq!(stats.requests(), 4);
}

#[tokio::test]
async fn hostile_challenges_are_skipped_and_the_401_returned() {
    // (challenge, round trips the server must see): 1 = not answered.
    let hostile: Vec<(String, usize)> = vec![
        ("Digest realm=\"unterminated".into(), 1),
        ("Digest nonce=\"n\"".into(), 1),                               // no realm
        ("Digest realm=\"r\"".into(), 1),                               // no nonce
        ("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-3".into(), 1), // unknown algorithm
        ("Digest realm=\"r\", nonce=\"n\", qop=\"weird\"".into(), 1),
        ("Basic realm=\"r\"".into(), 1), // never downgraded
        (",,,,,,".into(), 1),
        // Well-formed, only long (hyper refuses 1 MB; the parser's own tests cover that): it is
        // answered once, like any challenge, and the second 401 goes back to the caller.
        (format!("Digest realm=\"{}\", nonce=\"n\"", "x".repeat(100 << 10)), 2),
    ];
    for (h, expected_trips) in hostile {
        let shown = h.chars().take(60).collect::<String>();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = hits.clone();
        let app = Router::new().route(
            "/",
            get(move || {
                seen.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                async move { (StatusCode::UNAUTHORIZED, [("www-authenticate", h)], "no") }
            }),
        );
        let server = TestServer::start(app).await.unwrap();
        let svc = client(AuthLayer::digest("alice", "s3cret").unwrap());
        let (status, body) = send(&svc, "GET", &server.url("/"), "").await;
        assert_eq!((status, body.as_str()), (StatusCode::UNAUTHORIZED, "no"), "{shown}");
        // An answered bogus challenge would show as a second request.
        assert_eq!(hits.load(Ordering::SeqCst), expected_trips, "round trips for {shown:?}");
    }
}

/// A server that answers every request with `status` and this challenge (a fresh nonce each
/// time, so that `stale=true` is believable), counting the requests and the ones that carried
/// credentials.
async fn always_challenging(status: StatusCode, challenge: &'static str) -> (TestServer, Arc<[AtomicUsize; 2]>) {
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let seen = counts.clone();
    let (challenge_header, credentials_header) = if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        ("proxy-authenticate", "proxy-authorization")
    } else {
        ("www-authenticate", "authorization")
    };
    let app = Router::new().route(
        "/{*path}",
        any(move |headers: HeaderMap| {
            let n = seen[0].fetch_add(1, Ordering::SeqCst);
            if headers.contains_key(credentials_header) {
                seen[1].fetch_add(1, Ordering::SeqCst);
            }
            async move { (status, [(challenge_header, format!("{challenge}, nonce=\"n{n}\""))], "no") }
        }),
    );
    (TestServer::start(app).await.unwrap(), counts)
}

#[tokio::test]
async fn always_stale_server_sees_a_challenge_an_answer_and_one_stale_retry() {
    // src/digest/mod.rs: the first challenge is answered, then a `stale=true` challenge to a
    // request that carried our credentials is answered once more; a second stale challenge goes
    // back to the caller. The engine's own cap (`MAX_EXCHANGES`, 4) is higher: the scheme stops
    // first.
    let (server, counts) =
        always_challenging(StatusCode::UNAUTHORIZED, "Digest realm=\"r\", qop=\"auth\", stale=true").await;
    let svc = client(AuthLayer::digest("alice", "s3cret").unwrap());
    let (status, body) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!((status, body.as_str()), (StatusCode::UNAUTHORIZED, "no"));
    assert_eq!(counts[0].load(Ordering::SeqCst), 3, "challenge + answer + one stale retry");
    assert_eq!(counts[1].load(Ordering::SeqCst), 2, "the answer and the stale retry carried credentials");

    // The protection space is cached now: the next request goes pre-authorised, its stale 401 is
    // answered (first challenge of that request), and the stale 401 to that answer once more.
    let (status, _) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(counts[0].load(Ordering::SeqCst), 3 + 3);
    assert_eq!(counts[1].load(Ordering::SeqCst), 2 + 3, "all three carried credentials");
}

#[tokio::test]
async fn always_stale_proxy_sees_the_same_number_of_exchanges() {
    let (server, counts) =
        always_challenging(StatusCode::PROXY_AUTHENTICATION_REQUIRED, "Digest realm=\"p\", qop=\"auth\", stale=true")
            .await;
    let svc = client(AuthLayer::proxy_digest("alice", "s3cret").unwrap());
    let (status, _) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!(status, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    assert_eq!(counts[0].load(Ordering::SeqCst), 3);
    assert_eq!(counts[1].load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn guess_answering_basic_with_a_wrong_password_costs_exactly_two_round_trips() {
    let (server, stats) = basic_or_both(false).await;
    let svc = client(AuthLayer::guess("alice", "wrong").unwrap());
    let (status, _) = send(&svc, "GET", &server.url("/basic"), "").await;
    assert_eq!(status, 401);
    assert_eq!((stats.requests(), stats.rejected()), (2, 2), "the challenge, then one Basic answer");
    // Basic is remembered for the origin: the next request is sent with it at once; its 401 is
    // that request's first challenge, answered once more: still two, never more.
    stats.reset();
    let (status, _) = send(&svc, "GET", &server.url("/basic"), "").await;
    assert_eq!(status, 401);
    assert_eq!((stats.requests(), stats.rejected()), (2, 2));
}

#[tokio::test]
async fn proxy_digest_with_a_wrong_password_costs_exactly_two_round_trips() {
    let (server, stats) = serve(DigestCheck::new("p").user("alice", "s3cret").proxy(true)).await;
    let svc = client(AuthLayer::proxy_digest("alice", "wrong").unwrap());
    let (status, _) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!(status, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    assert_eq!((stats.requests(), stats.rejected()), (2, 2));
    // Pre-authorised with the cached (wrong) space: still two (the 407 may carry a new nonce).
    stats.reset();
    let (status, _) = send(&svc, "GET", &server.url("/a"), "").await;
    assert_eq!(status, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    assert_eq!(stats.requests(), 2);
}

/// An unprotected origin that echoes the credential headers it receives.
async fn open_echo() -> TestServer {
    TestServer::start(Router::new().route("/{*path}", any(echo))).await.unwrap()
}

#[tokio::test]
async fn a_learned_protection_space_is_not_sent_to_another_origin() {
    // One layer, no router, two origins on the same host (127.0.0.1, two ports). A protects
    // itself with Digest; B is open and echoes what it receives.
    let (a, a_stats) = serve(DigestCheck::new("r").user("alice", "s3cret")).await;
    let b = open_echo().await;
    for layer in [AuthLayer::digest("alice", "s3cret").unwrap(), AuthLayer::guess("alice", "s3cret").unwrap()] {
        a_stats.reset();
        let svc = client(layer);
        for _ in 0..2 {
            assert_eq!(send(&svc, "GET", &a.url("/x"), "").await.0, 200);
        }
        assert_eq!(a_stats.requests(), 3, "A's space was learned: the second request went pre-authorised");
        for path in ["/x", "/y"] {
            let (status, body) = send(&svc, "GET", &b.url(path), "").await;
            assert_eq!(status, 200);
            assert_eq!(body, "||", "B received A's credentials on {path}");
        }
    }
}

#[tokio::test]
async fn a_learned_basic_space_is_not_sent_to_another_origin() {
    // Guess learns Basic for A; B (same host, another port) must not get it.
    let (a, a_stats) = basic_or_both(false).await;
    let b = open_echo().await;
    let svc = client(AuthLayer::guess("alice", "s3cret").unwrap());
    for _ in 0..2 {
        assert_eq!(send(&svc, "GET", &a.url("/basic"), "").await.0, 200);
    }
    assert_eq!(a_stats.requests(), 3);
    let (status, body) = send(&svc, "GET", &b.url("/basic"), "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "||"));
}

#[tokio::test]
async fn auth_int_body_over_the_limit_returns_the_challenge() {
    let (server, stats) = serve(DigestCheck::new("r").user("alice", "s3cret").qop(&[Qop::AuthInt])).await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut svc =
        ServiceBuilder::new().layer(AuthLayer::digest("alice", "s3cret").unwrap().body_limit(4)).service(client);
    let req = Request::post(server.url("/a")).body(Full::new(Bytes::from_static(b"0123456789"))).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(stats.requests(), 1);
}

#[tokio::test]
async fn challenge_from_another_origin_after_a_redirect_is_not_answered() {
    // B challenges for Digest; A redirects to B. The follower sits *below* the auth layer, so the
    // layer sees B's 401 as the answer to a request for A: it must not answer it.
    let (b, b_stats) = serve(DigestCheck::new("b").user("alice", "s3cret")).await;
    let to_b = b.url("/x");
    let a = TestServer::start(Router::new().route(
        "/go",
        get(move || {
            let to_b = to_b.clone();
            async move { (StatusCode::FOUND, [("location", to_b)]) }
        }),
    ))
    .await
    .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::digest("alice", "s3cret").unwrap())
        .layer(tower_http::follow_redirect::FollowRedirectLayer::new())
        .service(client);
    let res = svc.oneshot(Request::get(a.url("/go")).body(Full::<Bytes>::default()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(b_stats.requests(), 1, "B's challenge was not answered with our credentials");
    // The same challenge from A's own origin is answered.
    let (same, same_stats) = serve(DigestCheck::new("b").user("alice", "s3cret")).await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::digest("alice", "s3cret").unwrap())
        .layer(tower_http::follow_redirect::FollowRedirectLayer::new())
        .service(client);
    let res = svc.oneshot(Request::get(same.url("/y")).body(Full::<Bytes>::default()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(same_stats.requests(), 2);
}
