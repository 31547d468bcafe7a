//! 200 sequential GET requests through hyper-util's client to a local server, with and without
//! the Basic layer: what authentication costs next to a real (loopback) exchange.
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
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
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

    paired(&rt, &client, &basic, &uri);

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
    group.finish();
}

/// Times both variants back to back for a number of rounds and prints the median ratio of
/// throughputs (basic / bare): less sensitive to load that changes over seconds than two
/// separate criterion runs.
fn paired(
    rt: &tokio::runtime::Runtime,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    basic: &AuthLayer<tower_auth::Basic>,
    uri: &Uri,
) {
    const ROUNDS: usize = 101;
    let time = |basic_first: bool| -> (Duration, Duration) {
        rt.block_on(async {
            let mut bare_svc = client.clone();
            let mut basic_svc = basic.layer(client.clone());
            let mut bare = Duration::ZERO;
            let mut auth = Duration::ZERO;
            for i in 0..2 {
                if (i == 0) == basic_first {
                    let t = Instant::now();
                    run(&mut basic_svc, uri).await;
                    auth = t.elapsed();
                } else {
                    let t = Instant::now();
                    run(&mut bare_svc, uri).await;
                    bare = t.elapsed();
                }
            }
            (bare, auth)
        })
    };
    // Warm up the connection and both paths.
    time(false);
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|round| {
            let (bare, auth) = time(round % 2 == 0);
            bare.as_secs_f64() / auth.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ROUNDS / 2];
    println!(
        "paired rounds: {ROUNDS} x ({N} bare + {N} basic) requests; throughput ratio basic/bare: median {median:.3} \
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
