//! Digest under concurrency: strict servers (nonce counts checked as they arrive: Apache httpd's
//! `AuthDigestNcCheck On`, and the `testing` verifier's `nc_check`) get every request through
//! with at most 1.1 × N round trips; lenient servers get N + 1 round trips at any concurrency
//! (the origin's first request takes the challenge, the others wait for it). Round trips are
//! counted by a service below the auth layer.
//!
//! The Apache tests skip with a printed reason outside CI when Apache is not installed (see
//! tests/support/peers.rs), and fail in CI.

#[path = "support/peers.rs"]
mod peers;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_auth::testing::{DigestCheck, RequireLayer, TestServer};
use tower_auth::{AuthLayer, ReplayBody};

/// Counts the exchanges that leave the auth layer.
#[derive(Clone)]
struct Counting<S> {
    inner: S,
    count: Arc<AtomicUsize>,
}

impl<S: Service<R>, R> Service<R> for Counting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: R) -> S::Future {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.inner.call(req)
    }
}

/// What a run of `n` requests, `c` at a time, got.
#[derive(Debug)]
struct Run {
    ok: usize,
    statuses: Vec<StatusCode>,
    round_trips: usize,
}

/// Sends `n` GETs to `url` through one Digest layer (`user:password`), at most `c` in flight.
async fn run(url: &str, user: &str, password: &str, n: usize, c: usize) -> Run {
    let count = Arc::new(AtomicUsize::new(0));
    let client = Counting { inner: Client::builder(TokioExecutor::new()).build_http(), count: count.clone() };
    let svc = ServiceBuilder::new().layer(AuthLayer::digest(user, password).unwrap()).service(client);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..c {
        let (svc, next, url) = (svc.clone(), next.clone(), url.to_owned());
        workers.spawn(async move {
            let mut statuses = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let req = Request::get(url.as_str()).body(Full::<Bytes>::default()).unwrap();
                let res = svc.clone().oneshot(req).await.unwrap();
                statuses.push(res.status());
                res.into_body().collect().await.unwrap();
            }
            statuses
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = workers.join_next().await {
        statuses.extend(done.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    Run { ok, statuses, round_trips: count.load(Ordering::SeqCst) }
}

fn assert_strict(what: &str, run: &Run, n: usize) {
    println!("{what}: ok={} of {n}, round_trips={}", run.ok, run.round_trips);
    assert_eq!(run.ok, n, "{what}: every request succeeds; statuses {:?}", run.statuses);
    assert!(
        run.round_trips * 10 <= n * 11,
        "{what}: {} round trips for {n} requests (at most 1.1 × N)",
        run.round_trips
    );
}

async fn strict_apache(n: usize, c: usize) {
    let Some(apache) = peers::apache() else { return };
    let url = format!("{}/digest-nc/hello.txt", apache.url);
    let run = run(&url, "alice", "s3cret", n, c).await;
    assert_strict(&format!("Apache AuthDigestNcCheck On, -n {n} -c {c}"), &run, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_apache_concurrency_2() {
    strict_apache(200, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_apache_concurrency_8() {
    strict_apache(200, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_apache_concurrency_32() {
    strict_apache(400, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_apache_concurrency_8_costs_n_plus_one() {
    let Some(apache) = peers::apache() else { return };
    let url = format!("{}/digest/hello.txt", apache.url);
    let run = run(&url, "alice", "s3cret", 200, 8).await;
    println!("Apache without nc check, -n 200 -c 8: ok={}, round_trips={}", run.ok, run.round_trips);
    assert_eq!(run.ok, 200, "{:?}", run.statuses);
    assert_eq!(run.round_trips, 201, "the first request takes the challenge, the others wait for it");
}

async fn verifier(check: DigestCheck) -> (TestServer, tower_auth::testing::Stats) {
    let require = RequireLayer::new(check);
    let stats = require.stats();
    let app = Router::new().route("/{*path}", get(|| async { "ok" }).layer(require));
    (TestServer::start(app).await.unwrap(), stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_verifier_concurrency_8_costs_n_plus_one() {
    // The verifier refuses a repeated count: every 200 proves distinct counts.
    let (server, stats) = verifier(DigestCheck::new("r").user("alice", "s3cret")).await;
    let run = run(&server.url("/a"), "alice", "s3cret", 200, 8).await;
    assert_eq!(run.ok, 200, "{:?}", run.statuses);
    assert_eq!(run.round_trips, 201);
    assert_eq!(stats.requests(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_verifier_concurrency_8_and_32() {
    for (n, c) in [(200, 8), (400, 32)] {
        let (server, _) = verifier(DigestCheck::new("r").user("alice", "s3cret").nc_check(true)).await;
        let run = run(&server.url("/a"), "alice", "s3cret", n, c).await;
        assert_strict(&format!("verifier with nc_check, -n {n} -c {c}"), &run, n);
    }
}

#[tokio::test]
async fn strict_verifier_sequential_costs_n_plus_one() {
    let (server, _) = verifier(DigestCheck::new("r").user("alice", "s3cret").nc_check(true)).await;
    let run = run(&server.url("/a"), "alice", "s3cret", 50, 1).await;
    assert_eq!((run.ok, run.round_trips), (50, 51));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_costs_two_round_trips_per_request_concurrently() {
    for strict in [false, true] {
        let (server, _) = verifier(DigestCheck::new("r").user("alice", "s3cret").nc_check(strict)).await;
        let run = run(&server.url("/a"), "alice", "wrong", 32, 8).await;
        assert!(run.statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{:?}", run.statuses);
        assert_eq!(run.round_trips, 64, "nc_check {strict}: exactly 2 round trips each");
    }
}

type MockFuture = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// An in-process server whose first exchange never answers; the others challenge requests
/// without credentials and accept any Digest credentials.
fn hanging_first(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<ReplayBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = MockFuture,
> + Clone {
    let seen = calls;
    tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| -> MockFuture {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            return Box::pin(std::future::pending());
        }
        let res = if req.headers().contains_key("authorization") {
            Response::new(Full::default())
        } else {
            Response::builder()
                .status(401)
                .header("www-authenticate", r#"Digest realm="r", nonce="n1", qop="auth", opaque="o""#)
                .body(Full::default())
                .unwrap()
        };
        Box::pin(async move { Ok(res) })
    })
}

#[tokio::test]
async fn a_dropped_first_request_lets_the_waiting_ones_go() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = hanging_first(calls.clone());
    let svc = ServiceBuilder::new().layer(AuthLayer::digest("alice", "s3cret").unwrap()).service(server);
    let get = || Request::get("http://127.0.0.1:9/x").body(Full::<Bytes>::default()).unwrap();
    // The first request to the origin hangs; the second waits for its answer.
    let first = tokio::spawn(tokio::time::timeout(Duration::from_millis(200), svc.clone().oneshot(get())));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = tokio::spawn(svc.clone().oneshot(get()));
    assert!(first.await.unwrap().is_err(), "the first request hangs and is dropped by its timeout");
    // Dropped, it opens its gate: the waiting request goes, takes the challenge, and succeeds.
    let res = tokio::time::timeout(Duration::from_secs(5), second).await.expect("not stuck").unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the hanging one, then a challenge and its answer");
}
