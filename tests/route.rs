//! Routing by origin: exactness, unknown origins, runtime changes under load, per-origin Digest
//! state, netrc, credentials in URLs. In-process services where the point is the routing
//! decision, `TestServer`s and `RequireLayer` verifiers on `127.0.0.1` where it is the wire.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_auth::route::Router;
use tower_auth::testing::{DigestCheck, RequireLayer, TestServer};
use tower_auth::{
    Action, ApiKey, AuthLayer, AuthRequest, Authenticator, Authorize, Basic, Bearer, Digest, NetrcAuth, NoWait, Replay,
    ReplayBody, UrlCredentials,
};

/// What an in-process "server" saw: the URI and the credential headers.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    authorization: Option<String>,
    api_key: Option<String>,
}

type Recorded = Arc<Mutex<Vec<Seen>>>;

/// A service that records what it receives and answers `200`.
fn recorder<B: Send + 'static>(
    log: Recorded,
) -> impl Service<Request<B>, Response = Response<String>, Error = Infallible, Future = impl Send> + Clone {
    tower::service_fn(move |req: Request<B>| {
        let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        log.lock().unwrap().push(Seen {
            uri: req.uri().to_string(),
            authorization: h("authorization"),
            api_key: h("x-api-key"),
        });
        std::future::ready(Ok(Response::new(String::new())))
    })
}

async fn send<S>(svc: &S, uri: &str) -> StatusCode
where
    S: Service<Request<String>, Response = Response<String>> + Clone,
    S::Error: std::fmt::Debug,
{
    svc.clone().oneshot(Request::get(uri).body(String::new()).unwrap()).await.unwrap().status()
}

fn last(log: &Recorded) -> Seen {
    log.lock().unwrap().last().cloned().unwrap()
}

#[tokio::test]
async fn routing_is_exact() {
    let log = Recorded::default();
    let layer = AuthLayer::route()
        .replaying()
        .origin("https://api.example", Bearer::new("api").unwrap())
        .unwrap()
        .origin("http://[::1]:8080", ApiKey::header("v6").unwrap())
        .unwrap()
        .origin("http://127.0.0.1:3000/", Basic::new("u", "p").unwrap())
        .unwrap()
        .origin("https://Bücher.example", Bearer::new("idn").unwrap())
        .unwrap()
        .build();
    let svc = ServiceBuilder::new().layer(layer).service(recorder::<ReplayBody<String>>(log.clone()));

    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        // Default ports, case, trailing path and query.
        ("https://api.example/x?y=1", Some("Bearer api"), None),
        ("https://API.Example:443/x", Some("Bearer api"), None),
        ("HTTPS://api.example", Some("Bearer api"), None),
        // Another port, scheme, host, subdomain, suffix: other origins.
        ("https://api.example:8443/", None, None),
        ("http://api.example/", None, None),
        ("https://sub.api.example/", None, None),
        ("https://api.example.evil.net/", None, None),
        ("https://xapi.example/", None, None),
        // User info is not the host.
        ("https://api.example:@evil.example/", None, None),
        ("https://api.example@evil.example/", None, None),
        // IPv6 literals compare as addresses.
        ("http://[::1]:8080/", None, Some("v6")),
        ("http://[0:0:0:0:0:0:0:1]:8080/", None, Some("v6")),
        ("http://[::1]:8081/", None, None),
        ("http://[::1]/", None, None),
        ("http://[::2]:8080/", None, None),
        // IPv4 and `localhost` are different hosts; the trailing `/` of the config is fine.
        ("http://127.0.0.1:3000/a", Some("Basic dTpw"), None),
        ("http://localhost:3000/a", None, None),
        ("http://127.0.0.1:3001/a", None, None),
        ("https://127.0.0.1:3000/a", None, None),
        // Internationalised names, in their ASCII form on the wire.
        ("https://xn--bcher-kva.example/", Some("Bearer idn"), None),
        ("https://XN--BCHER-KVA.example:443/", Some("Bearer idn"), None),
        // No origin at all.
        ("/relative", None, None),
    ];
    for (uri, authorization, api_key) in cases {
        assert_eq!(send(&svc, uri).await, 200);
        let seen = last(&log);
        assert_eq!(seen.authorization.as_deref(), *authorization, "{uri}");
        assert_eq!(seen.api_key.as_deref(), *api_key, "{uri}");
    }
}

#[tokio::test]
async fn patterns_and_default() {
    let log = Recorded::default();
    let layer = AuthLayer::route()
        .replaying()
        .origin("https://exact.example.com", Bearer::new("exact").unwrap())
        .unwrap()
        .pattern("https://*.example.com", Bearer::new("wild").unwrap())
        .unwrap()
        .pattern("https://*.eu.example.com", Bearer::new("eu").unwrap())
        .unwrap()
        .build();
    let svc = ServiceBuilder::new().layer(layer.clone()).service(recorder::<ReplayBody<String>>(log.clone()));
    for (uri, expected) in [
        ("https://exact.example.com/", Some("Bearer exact")),
        ("https://a.example.com/", Some("Bearer wild")),
        ("https://a.b.example.com/", Some("Bearer wild")),
        ("https://x.eu.example.com/", Some("Bearer eu")),
        ("https://example.com/", None),
        ("https://evilexample.com/", None),
        ("http://a.example.com/", None),
        ("https://a.example.com:8443/", None),
    ] {
        send(&svc, uri).await;
        assert_eq!(last(&log).authorization.as_deref(), expected, "{uri}");
    }
    // A default catches the rest, at run time too.
    layer.router().set_default(Bearer::new("fallback").unwrap());
    send(&svc, "http://anything.example/").await;
    assert_eq!(last(&log).authorization.as_deref(), Some("Bearer fallback"));
    layer.router().clear_default();
    send(&svc, "http://anything.example/").await;
    assert_eq!(last(&log).authorization, None);
}

#[tokio::test]
async fn explicit_authorization_wins() {
    let log = Recorded::default();
    let layer =
        AuthLayer::route().replaying().origin("https://a.example", Basic::new("u", "p").unwrap()).unwrap().build();
    let svc = ServiceBuilder::new().layer(layer).service(recorder::<ReplayBody<String>>(log.clone()));
    let mut req = Request::get("https://a.example/").body(String::new()).unwrap();
    req.headers_mut().insert(AUTHORIZATION, HeaderValue::from_static("Token mine"));
    svc.oneshot(req).await.unwrap();
    assert_eq!(last(&log).authorization.as_deref(), Some("Token mine"));
}

// ---------------------------------------------------------------------------
// Real sockets
// ---------------------------------------------------------------------------

type ClientBody = Empty<Bytes>;

fn http_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody<ClientBody>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A server that echoes the credential headers it received, unprotected.
async fn echo_server() -> TestServer {
    async fn echo(headers: HeaderMap) -> String {
        let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        format!("{}|{}", h("authorization"), h("x-api-key"))
    }
    TestServer::start(axum::Router::new().route("/{*path}", get(echo))).await.unwrap()
}

async fn get_body<S>(svc: &S, url: &str) -> (StatusCode, String)
where
    S: Service<Request<ClientBody>, Response = Response<hyper::body::Incoming>> + Clone,
    S::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(Request::get(url).body(Empty::new()).unwrap()).await.unwrap();
    let status = res.status();
    (status, String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned())
}

#[tokio::test]
async fn two_origins_two_schemes_and_an_unknown_one_over_sockets() {
    let basic = RequireLayer::basic("a", "alice", "s3cret");
    let bearer = RequireLayer::bearer("b", "tok-b");
    let (basic_stats, bearer_stats) = (basic.stats(), bearer.stats());
    let a = TestServer::start(axum::Router::new().route("/", get(|| async { "a" })).route_layer(basic)).await.unwrap();
    let b = TestServer::start(axum::Router::new().route("/", get(|| async { "b" })).route_layer(bearer)).await.unwrap();
    let unknown = echo_server().await;

    let layer = AuthLayer::route()
        .replaying()
        .origin(&a.url(""), Basic::new("alice", "s3cret").unwrap())
        .unwrap()
        .origin(&b.url(""), Bearer::new("tok-b").unwrap())
        .unwrap()
        .build();
    let svc = ServiceBuilder::new().layer(layer).service(http_client());
    assert_eq!(get_body(&svc, &a.url("/")).await, (StatusCode::OK, "a".into()));
    assert_eq!(get_body(&svc, &b.url("/")).await, (StatusCode::OK, "b".into()));
    // Same host, another port: nothing.
    assert_eq!(get_body(&svc, &unknown.url("/x")).await, (StatusCode::OK, "|".into()));
    // `localhost` is another host than `127.0.0.1`, even on A's port.
    let (status, _) = get_body(&svc, &format!("http://localhost:{}/", a.addr().port())).await;
    assert_eq!(status, 401);
    assert_eq!((basic_stats.accepted(), basic_stats.rejected()), (1, 1));
    assert_eq!((bearer_stats.accepted(), bearer_stats.rejected()), (1, 0));
}

#[tokio::test]
async fn digest_state_is_kept_per_origin() {
    // Two servers, same realm and user: nonces must not cross.
    let check_a = RequireLayer::new(DigestCheck::new("shared").user("alice", "s3cret"));
    let check_b = RequireLayer::new(DigestCheck::new("shared").user("alice", "s3cret"));
    let (stats_a, stats_b) = (check_a.stats(), check_b.stats());
    let (nonces_a, nonces_b) = (check_a.check().clone(), check_b.check().clone());
    let a = TestServer::start(axum::Router::new().route("/{*p}", get(|| async { "a" })).route_layer(check_a))
        .await
        .unwrap();
    let b = TestServer::start(axum::Router::new().route("/{*p}", get(|| async { "b" })).route_layer(check_b))
        .await
        .unwrap();

    let layer = AuthLayer::route()
        .replaying()
        .origin(&a.url(""), Digest::new("alice", "s3cret").unwrap())
        .unwrap()
        .origin(&b.url(""), Digest::new("alice", "s3cret").unwrap())
        .unwrap()
        .build();
    let svc = ServiceBuilder::new().layer(layer).service(http_client());
    for i in 0..5 {
        assert_eq!(get_body(&svc, &a.url(&format!("/{i}"))).await.0, 200);
        assert_eq!(get_body(&svc, &b.url(&format!("/{i}"))).await.0, 200);
    }
    // N requests cost N + 1 round trips at each origin: one challenge each, then pre-authorised
    // with that origin's own nonce.
    assert_eq!((stats_a.requests(), stats_a.rejected()), (6, 1));
    assert_eq!((stats_b.requests(), stats_b.rejected()), (6, 1));
    assert_eq!((nonces_a.nonces_issued(), nonces_b.nonces_issued()), (1, 1));
}

// ---------------------------------------------------------------------------
// Runtime changes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_insert_and_remove_under_concurrent_requests() {
    let log = Recorded::default();
    let layer =
        AuthLayer::route().replaying().origin("https://a.example", Bearer::new("a-0").unwrap()).unwrap().build();
    let router = layer.router().clone();
    let svc = ServiceBuilder::new().layer(layer).service(recorder::<ReplayBody<String>>(log.clone()));

    // A writer thread changes the routes as fast as it can while eight tasks send requests.
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (router, stop, changes) = (router.clone(), stop.clone(), changes.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                router.insert("https://a.example", Bearer::new(format!("a-{i}")).unwrap()).unwrap();
                router.insert("https://b.example", Bearer::new(format!("b-{i}")).unwrap()).unwrap();
                router.remove("https://b.example").unwrap();
                changes.fetch_add(3, Ordering::Relaxed);
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..300 {
                let host = if (t + i) % 2 == 0 { "a.example" } else { "b.example" };
                let req = Request::get(format!("https://{host}/{i}")).body(String::new()).unwrap();
                svc.clone().oneshot(req).await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let seen = log.lock().unwrap();
    assert_eq!(seen.len(), 8 * 300);
    let (mut b_with, mut b_without) = (0, 0);
    for s in seen.iter() {
        let auth = s.authorization.as_deref();
        if s.uri.starts_with("https://a.example/") {
            // A is always configured: always some A token, never B's.
            assert!(auth.is_some_and(|v| v.starts_with("Bearer a-")), "{s:?}");
        } else {
            assert!(auth.is_none_or(|v| v.starts_with("Bearer b-")), "{s:?}");
            if auth.is_some() { b_with += 1 } else { b_without += 1 }
        }
    }
    println!(
        "{} route changes during {} requests; B routed {b_with} times, unrouted {b_without} times",
        changes.load(Ordering::Relaxed),
        seen.len()
    );
    assert!(changes.load(Ordering::Relaxed) >= 30, "the writer hardly ran");
    assert_eq!(router.origins().len(), 1);
}

/// A scheme that tags requests with its name and answers one `401`.
struct Tagged(&'static str);

impl Authenticator for Tagged {
    type Mode = Replay;
    type Error = Infallible;
    type State = ();
    type Wait = NoWait<Infallible>;

    fn authorize(&self, req: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Infallible> {
        req.headers_mut().insert("x-tag", HeaderValue::from_static(self.0));
        Ok(Authorize::Done)
    }

    fn on_response(&self, _: &http::request::Parts, res: &http::response::Parts, _: &mut ()) -> Action {
        if res.status == StatusCode::UNAUTHORIZED { Action::Retry } else { Action::Done }
    }
}

#[tokio::test]
async fn a_request_in_flight_keeps_its_scheme_when_the_route_changes() {
    let layer = AuthLayer::route().replaying().origin("https://a.example", Tagged("old")).unwrap().build();
    let router: Arc<Router> = layer.router().clone();
    let tags = Arc::new(Mutex::new(Vec::new()));
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let inner = {
        let tags = tags.clone();
        tower::service_fn(move |req: Request<ReplayBody<String>>| {
            let tag = req.headers()["x-tag"].to_str().unwrap().to_owned();
            let first = {
                let mut tags = tags.lock().unwrap();
                tags.push(tag);
                tags.len() == 1
            };
            let mut gate = gate_rx.clone();
            async move {
                let mut res = Response::new(String::new());
                if first {
                    // Hold the first exchange until the route has changed, then challenge.
                    gate.wait_for(|open| *open).await.unwrap();
                    *res.status_mut() = StatusCode::UNAUTHORIZED;
                }
                Ok::<_, Infallible>(res)
            }
        })
    };
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let in_flight = tokio::spawn(svc.clone().oneshot(Request::get("https://a.example/").body(String::new()).unwrap()));
    while tags.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(router.insert("https://a.example", Tagged("new")).unwrap());
    gate_tx.send(true).unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 200);
    // The retry of the request in flight went through the scheme it started with.
    svc.oneshot(Request::get("https://a.example/").body(String::new()).unwrap()).await.unwrap();
    assert_eq!(*tags.lock().unwrap(), ["old", "old", "new"]);
}

// ---------------------------------------------------------------------------
// netrc
// ---------------------------------------------------------------------------

fn netrc_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[tokio::test]
async fn netrc_fallback_over_sockets() {
    let require = RequireLayer::basic("n", "alice", "s3cret");
    let a = TestServer::start(axum::Router::new().route("/", get(|| async { "netrc" })).route_layer(require))
        .await
        .unwrap();
    let explicit = echo_server().await;
    let file =
        netrc_file("machine 127.0.0.1 login alice password s3cret\nmachine example.com login eve password nope\n");

    let layer = AuthLayer::route()
        .replaying()
        .origin(&explicit.url(""), Bearer::new("explicit").unwrap())
        .unwrap()
        .netrc(NetrcAuth::from_path(file.path()).unwrap())
        .build();
    let svc = ServiceBuilder::new().layer(layer).service(http_client());
    // Not configured explicitly, in the netrc file: Basic from the file.
    assert_eq!(get_body(&svc, &a.url("/")).await, (StatusCode::OK, "netrc".into()));
    // Configured explicitly (same host): the explicit route wins.
    assert_eq!(get_body(&svc, &explicit.url("/x")).await.1, "Bearer explicit|");
}

#[tokio::test]
async fn netrc_lookup_is_by_host_only() {
    let log = Recorded::default();
    let file = netrc_file("machine example.com login alice password s3cret\n");
    let layer = AuthLayer::route().replaying().netrc(NetrcAuth::from_path(file.path()).unwrap()).build();
    let svc = ServiceBuilder::new().layer(layer).service(recorder::<ReplayBody<String>>(log.clone()));
    send(&svc, "http://example.com/").await;
    assert_eq!(last(&log).authorization.as_deref(), Some("Basic YWxpY2U6czNjcmV0"));
    send(&svc, "https://EXAMPLE.com:8443/").await;
    assert_eq!(last(&log).authorization.as_deref(), Some("Basic YWxpY2U6czNjcmV0"));
    for uri in [
        "http://example.com:@evil.com/",
        "http://example.com@evil.com/",
        "http://evil.com/?example.com",
        "http://www.example.com/",
    ] {
        send(&svc, uri).await;
        assert_eq!(last(&log).authorization, None, "{uri}");
    }
    // An explicit header is never overridden.
    let mut req = Request::get("http://example.com/").body(String::new()).unwrap();
    req.headers_mut().insert(AUTHORIZATION, HeaderValue::from_static("Bearer mine"));
    svc.clone().oneshot(req).await.unwrap();
    assert_eq!(last(&log).authorization.as_deref(), Some("Bearer mine"));
}

#[test]
fn netrc_errors_name_the_file_and_position() {
    let file = netrc_file("machine a.example\n  login alice\n  password s3cret\n  frobnicate x\n");
    let err = NetrcAuth::from_path(file.path()).unwrap_err().to_string();
    assert!(err.contains(&file.path().display().to_string()), "{err}");
    assert!(err.contains("line 4, column 3"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let err = NetrcAuth::from_path("/nonexistent/netrc").unwrap_err().to_string();
    assert!(err.contains("/nonexistent/netrc"), "{err}");
}

// ---------------------------------------------------------------------------
// Credentials in the URL
// ---------------------------------------------------------------------------

#[tokio::test]
async fn url_credentials_are_sent_as_basic_and_stripped() {
    // In process: the URI that leaves has no user info.
    let log = Recorded::default();
    let svc = ServiceBuilder::new().layer(AuthLayer::url_credentials()).service(recorder::<String>(log.clone()));
    send(&svc, "http://alice:s%33cret@h.example:8080/x?y").await;
    let seen = last(&log);
    assert_eq!(seen.uri, "http://h.example:8080/x?y");
    assert_eq!(seen.authorization.as_deref(), Some("Basic YWxpY2U6czNjcmV0"));
    send(&svc, "http://:only-password@h.example/").await;
    assert_eq!((last(&log).uri.as_str(), last(&log).authorization), ("http://h.example/", None));

    // Over a socket, above a router: the server checks the Basic credentials, and the router
    // sees the URI without user info.
    let require = RequireLayer::basic("u", "alice", "s3cret");
    let stats = require.stats();
    let a =
        TestServer::start(axum::Router::new().route("/", get(|| async { "url" })).route_layer(require)).await.unwrap();
    let router = AuthLayer::route().replaying().origin(&a.url(""), Bearer::new("unused").unwrap()).unwrap().build();
    let svc = ServiceBuilder::new().layer(AuthLayer::new(UrlCredentials::new())).layer(router).service(http_client());
    let url = format!("http://alice:s3cret@127.0.0.1:{}/", a.addr().port());
    assert_eq!(get_body(&svc, &url).await, (StatusCode::OK, "url".into()));
    assert_eq!(stats.accepted(), 1);
}
