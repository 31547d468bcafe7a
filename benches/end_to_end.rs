//! 200 sequential GET requests through hyper-util's client to a local server: bare, with the
//! Basic layer, and with the Digest layer (pre-authorised after the first challenge): what
//! authentication costs next to a real (loopback) exchange.
//!
//! The server (axum, on 127.0.0.1) checks nothing and answers `200 ok`. Both variants share one
//! client (so one keep-alive connection pool) and sit in the same criterion group with the same
//! throughput, so their ratio can be read off directly.
//!
//! Criterion runs one variant after the other; on a shared machine the load can change between
//! them. So before criterion, the bench also prints a paired measurement: rounds that time both
//! variants back to back (alternating which goes first), and the median of their ratios.
//!
//! ```text
//! cargo bench --bench end_to_end -- --warm-up-time 1 --measurement-time 3
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_auth::AuthLayer;

/// Requests per iteration.
const N: u64 = 200;

type Body = Empty<Bytes>;

/// Starts the server on the runtime; returns its address.
fn start_server(rt: &tokio::runtime::Runtime) -> SocketAddr {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // `/digest` challenges until it sees Digest credentials (it does not check them: the
        // figure is the client's cost), so after the first exchange every request is pre-authorised.
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" })).route(
            "/digest",
            axum::routing::get(|headers: http::HeaderMap| async move {
                let authorised = headers.get("authorization").is_some_and(|v| v.as_bytes().starts_with(b"Digest "));
                if authorised {
                    (http::StatusCode::OK, [("x-bench", "ok")], "ok")
                } else {
                    (
                        http::StatusCode::UNAUTHORIZED,
                        [(
                            "www-authenticate",
                            r#"Digest realm="bench", nonce="abcdef0123456789", qop="auth", algorithm=MD5"#,
                        )],
                        "",
                    )
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    })
}

/// Sends `N` GET requests one after the other, reading each body to the end.
async fn run<S>(svc: &mut S, uri: &Uri)
where
    S: Service<Request<Body>, Response = Response<Incoming>>,
    S::Error: Into<BoxError>,
{
    for _ in 0..N {
        let req = Request::get(uri.clone()).body(Empty::new()).unwrap();
        let res = svc.ready().await.map_err(Into::into).unwrap().call(req).await.map_err(Into::into).unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }
}

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let addr = start_server(&rt);
    let uri: Uri = format!("http://{addr}/").parse().unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let basic = AuthLayer::basic("alice", "s3cret").unwrap();
    let digest_uri: Uri = format!("http://{addr}/digest").parse().unwrap();
    let digest = AuthLayer::digest("alice", "s3cret").unwrap();
    let digest_client = Client::builder(TokioExecutor::new()).build_http::<tower_auth::ReplayBody<Body>>();

    paired(&rt, "basic/bare", || (client.clone(), uri.clone()), || (basic.layer(client.clone()), uri.clone()));
    paired(
        &rt,
        "digest/basic",
        || (basic.layer(client.clone()), uri.clone()),
        || (digest.layer(digest_client.clone()), digest_uri.clone()),
    );

    let mut group = c.benchmark_group("end_to_end");
    group.throughput(Throughput::Elements(N));
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = client.clone();
            let uri = uri.clone();
            async move { run(&mut svc, &uri).await }
        })
    });
    group.bench_function("basic", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = basic.layer(client.clone());
            let uri = uri.clone();
            async move { run(&mut svc, &uri).await }
        })
    });
    group.bench_function("digest", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = digest.layer(digest_client.clone());
            let uri = digest_uri.clone();
            async move { run(&mut svc, &uri).await }
        })
    });
    group.finish();
}

/// Times both variants back to back for a number of rounds and prints the median ratio of
/// throughputs (basic / bare): less sensitive to load that changes over seconds than two
/// separate criterion runs.
fn paired<A, B, SA, SB>(rt: &tokio::runtime::Runtime, label: &str, first: A, second: B)
where
    A: Fn() -> (SA, Uri),
    B: Fn() -> (SB, Uri),
    SA: Service<Request<Body>, Response = Response<Incoming>>,
    SA::Error: Into<BoxError>,
    SB: Service<Request<Body>, Response = Response<Incoming>>,
    SB::Error: Into<BoxError>,
{
    const ROUNDS: usize = 101;
    let time = |second_first: bool| -> (Duration, Duration) {
        rt.block_on(async {
            let (mut a_svc, a_uri) = first();
            let (mut b_svc, b_uri) = second();
            let mut a = Duration::ZERO;
            let mut b = Duration::ZERO;
            for i in 0..2 {
                if (i == 0) == second_first {
                    let t = Instant::now();
                    run(&mut b_svc, &b_uri).await;
                    b = t.elapsed();
                } else {
                    let t = Instant::now();
                    run(&mut a_svc, &a_uri).await;
                    a = t.elapsed();
                }
            }
            (a, b)
        })
    };
    // Warm up the connections and both paths.
    time(false);
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|round| {
            let (a, b) = time(round % 2 == 0);
            a.as_secs_f64() / b.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ROUNDS / 2];
    println!(
        "paired rounds: {ROUNDS} x 2 x {N} requests; throughput ratio {label}: median {median:.3} \
         (quartiles {:.3}..{:.3})\n",
        ratios[ROUNDS / 4],
        ratios[3 * ROUNDS / 4]
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    end_to_end(&mut c);
    c.final_summary();
}
