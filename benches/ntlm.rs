//! NTLM through the connection-bound client (`ntlm::WindowsAuth`): what it costs.
//!
//! 1. **Client CPU against Python** (printed before criterion; needs the NTLM peer and a Python
//!    with requests-ntlm, see BENCHMARKS.md): this process's CPU time
//!    (`CLOCK_PROCESS_CPUTIME_ID`, every thread) for N requests to the pyspnego peer
//!    (`tests/peers/ntlm.sh`), next to `benches/python/ntlm_client.py` (requests + requests-ntlm,
//!    pyspnego underneath) doing the same, measured by `time.process_time()` in that process.
//!    Two cases: a new connection and NTLM handshake per request (`fresh`), and one connection
//!    authenticated once and reused (`session`). The client runs on a current-thread runtime, so
//!    the figure is the client's work only (the server is another process).
//! 2. **In process (criterion)**: 200 sequential GETs on an authenticated keep-alive connection
//!    through `WindowsAuth`, next to hyper-util's legacy client on a plain keep-alive connection
//!    to the same server (`/open`, no authentication): the per-request cost of the client's own
//!    pool. And one request on a fresh connection with its whole NTLM handshake (two legs), next
//!    to one on a fresh plain connection; the server (hyper, `sspi`'s acceptor) runs in the same
//!    process, so this one includes the server's share.
//!
//! ```text
//! bash tests/peers/ntlm.sh start target/peers/ntlm      # prints TOWER_AUTH_NTLM_URL=...
//! python3 -m venv target/bench-venv && target/bench-venv/bin/pip install requests-ntlm==1.3.0
//! TOWER_AUTH_NTLM_URL=http://127.0.0.1:PORT TOWER_AUTH_BENCH_PYTHON=target/bench-venv/bin/python \
//!     cargo bench --bench ntlm -- --warm-up-time 1 --measurement-time 3
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt;
use tower_auth::ntlm::WindowsAuth;
use tower_auth::testing::ntlm::{Accepted, NtlmAcceptor};

const USER: &str = r"TOWERAUTH\alice";
const PASS: &str = "Passw0rd!";
/// Requests per iteration of the pooled variants.
const N: u64 = 200;

type Win = WindowsAuth<Empty<Bytes>>;

fn client() -> Win {
    WindowsAuth::ntlm(USER, PASS).max_connections(1).build().unwrap()
}

/// One GET through `client`, its body read; panics unless `200`.
async fn get(client: &Win, uri: &Uri) {
    let res = client.clone().oneshot(Request::get(uri.clone()).body(Empty::new()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
}

/// Client CPU per request, this crate against Python's requests-ntlm, on the NTLM peer.
fn against_python() {
    let (Ok(base), Ok(python)) = (std::env::var("TOWER_AUTH_NTLM_URL"), std::env::var("TOWER_AUTH_BENCH_PYTHON"))
    else {
        println!(
            "against Python: skipped (set TOWER_AUTH_NTLM_URL from tests/peers/ntlm.sh and TOWER_AUTH_BENCH_PYTHON \
             to a python with requests-ntlm: see BENCHMARKS.md)"
        );
        return;
    };
    let url = format!("{}/bench", base.trim_end_matches('/'));
    let uri: Uri = url.parse().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python/ntlm_client.py");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (mode, n) in [("fresh", 200u32), ("session", 1000)] {
        let before = rt.block_on(peer_handshakes(&base));
        let out = std::process::Command::new(&python).args([script, &url, &n.to_string(), mode]).output().unwrap();
        let python_handshakes = rt.block_on(peer_handshakes(&base)) - before;
        let expected = if mode == "fresh" { u64::from(n) + 5 } else { 1 };
        assert_eq!(python_handshakes, expected, "requests-ntlm's handshakes, seen by the peer");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let py: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        // `fresh`: one client whose idle connections expire at once, so every request opens a
        // connection and runs the handshake (Python: one session, closed after each request).
        let mut builder = WindowsAuth::ntlm(USER, PASS).max_connections(1);
        if mode == "fresh" {
            builder = builder.idle_timeout(Duration::ZERO);
        }
        let client: Win = builder.build().unwrap();
        let rust = rt.block_on(async {
            for _ in 0..5 {
                get(&client, &uri).await;
            }
            let start = cpu_time::ProcessTime::now();
            for _ in 0..n {
                get(&client, &uri).await;
            }
            start.elapsed().as_secs_f64()
        });
        let s = client.stats();
        let expected = if mode == "fresh" { u64::from(n) + 5 } else { 1 };
        assert_eq!((s.connections, s.handshakes), (expected, expected), "{s:?}");
        if mode == "session" {
            // hyper-util's client without authentication, on the peer's `/open/` (the same
            // server, keep-alive): what a request costs this process without the
            // connection-bound client.
            let bare: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let open: Uri = format!("{}/open/bench", base.trim_end_matches('/')).parse().unwrap();
            let cpu = rt.block_on(async {
                let once = || async {
                    let res = bare.get(open.clone()).await.unwrap();
                    assert_eq!(res.status(), 200);
                    res.into_body().collect().await.unwrap();
                };
                for _ in 0..5 {
                    once().await;
                }
                let start = cpu_time::ProcessTime::now();
                for _ in 0..n {
                    once().await;
                }
                start.elapsed().as_secs_f64()
            });
            println!(
                "hyper-util without authentication, keep-alive ({n} requests): {:.1} µs CPU/request \
                 (tower-auth's authenticated connection: {:.2}x that)",
                cpu * 1e6 / f64::from(n),
                rust / cpu
            );
        }
        println!(
            "against Python, {mode} ({n} requests): tower-auth {:.1} µs CPU/request, requests-ntlm {:.1} µs CPU/request: \
             {:.1}x less",
            rust * 1e6 / f64::from(n),
            py * 1e6 / f64::from(n),
            py / rust
        );
    }
}

/// The handshakes the NTLM peer has accepted so far (its `/stats`).
async fn peer_handshakes(base: &str) -> u64 {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let res = client.get(format!("{}/stats", base.trim_end_matches('/')).parse().unwrap()).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
    stats["handshakes"].as_u64().unwrap()
}

/// An in-process server: `/open` needs nothing, every other path NTLM on the connection.
fn start_server(rt: &tokio::runtime::Runtime) -> SocketAddr {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::new(Mutex::new((NtlmAcceptor::new(USER, PASS), false)));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(&req, &state)) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        addr
    })
}

fn answer<T>(req: &Request<T>, state: &Mutex<(NtlmAcceptor, bool)>) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap();
    if req.uri().path() == "/open" || state.1 {
        return Response::new(Full::new(Bytes::from_static(b"ok")));
    }
    let challenge = |token: Option<Vec<u8>>| {
        let value = token.map_or_else(|| "NTLM".to_owned(), |t| format!("NTLM {}", STANDARD.encode(t)));
        Response::builder().status(401).header("www-authenticate", value).body(Full::new(Bytes::new())).unwrap()
    };
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok()?.strip_prefix("NTLM "))
        .and_then(|t| STANDARD.decode(t).ok());
    let Some(token) = token else { return challenge(None) };
    match state.0.accept(&token) {
        Ok(Accepted::Challenge(out)) => challenge(Some(out)),
        Ok(Accepted::Authenticated) => {
            state.1 = true;
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
        Err(_) => challenge(None),
    }
}

fn in_process(c: &mut Criterion) {
    // One thread for client and server: the same scheduling for every variant (a multi-thread
    // runtime made the pooled figures bimodal, by where the connection tasks landed).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr = start_server(&rt);
    let open: Uri = format!("http://{addr}/open").parse().unwrap();
    let auth: Uri = format!("http://{addr}/auth").parse().unwrap();
    let bare: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let win = client();
    rt.block_on(get(&win, &auth));
    assert_eq!(win.stats().handshakes, 1);

    let mut group = c.benchmark_group("ntlm_pooled");
    group.throughput(Throughput::Elements(N));
    group.bench_function("hyper_util_bare", |b| {
        b.to_async(&rt).iter(|| async {
            for _ in 0..N {
                let res = bare.get(open.clone()).await.unwrap();
                assert_eq!(res.status(), 200);
                res.into_body().collect().await.unwrap();
            }
        });
    });
    group.bench_function("windows_auth_authenticated", |b| {
        b.to_async(&rt).iter(|| async {
            for _ in 0..N {
                get(&win, &auth).await;
            }
        });
    });
    group.finish();
    assert_eq!(win.stats().handshakes, 1, "every pooled request reused the authenticated connection");

    let mut group = c.benchmark_group("ntlm_fresh_connection");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hyper_util_bare", |b| {
        b.to_async(&rt).iter(|| async {
            let fresh: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let res = fresh.get(open.clone()).await.unwrap();
            res.into_body().collect().await.unwrap();
        });
    });
    group.bench_function("windows_auth_ntlm_handshake", |b| {
        b.to_async(&rt).iter(|| async { get(&client(), &auth).await });
    });
    group.finish();
}

fn main() {
    against_python();
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(3));
    in_process(&mut c);
    c.final_summary();
}
