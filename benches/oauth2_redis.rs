//! `oauth2::RedisStore` (issue 13, "Bench"): a fleet of replicas sharing one Redis, and the
//! latency of a token read from Redis when the replica's memory does not have it yet.
//!
//! Runs against a private `redis-server` (Debian's, from `PATH`) that it starts on a free port and
//! stops at the end; without one it prints `SKIPPED: …` and exits 0. The token endpoint is the
//! crate's `FakeIdp`, in process, answering after 20 ms.
//!
//! 1. **Fleet stampede** (asserted): 8 replicas (8 providers, each with its own `RedisStore` and
//!    connection, as 8 processes would have) × 100 concurrent callers, at a cold start (Redis
//!    empty), then at expiry (every replica's token dropped at the same instant, as when the
//!    shared token expired or was rejected everywhere) → token requests for the fleet: 1 each.
//! 2. **Read latency** (criterion): `token()` of a replica whose memory is empty while Redis
//!    has the token (a new provider sharing the store's connection: its task starts, reads
//!    `GET` + `PTTL`, decodes and installs), plain and encrypted (AES-256-GCM); next to the same
//!    with a `MemoryStore` (the cost of a replica's start without Redis), and `token()` from
//!    memory (the every-request path).
//!
//! ```text
//! cargo bench --features redis --bench oauth2_redis
//! ```

use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_auth::oauth2::{MemoryStore, RedisStore, TokenProvider, TokenStore};
use tower_auth::testing::idp::FakeIdp;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A private redis-server, killed when dropped.
struct Redis {
    child: Child,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Result<Redis, String> {
    let port = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?.local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--logfile", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("no redis-server ({e}); `apt-get install redis-server`"))?;
    let redis = Redis { child, url: format!("redis://127.0.0.1:{port}") };
    for _ in 0..200 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let mut buf = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                return Ok(redis);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("redis-server did not answer PING".into())
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn replica(idp: &FakeIdp, store: impl TokenStore) -> TokenProvider {
    TokenProvider::client_credentials(idp.token_url(), "svc", "s3cret")
        .timeout(Duration::from_secs(5))
        .store(store)
        .build(client())
        .unwrap()
}

fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url).prefix(prefix).lease_ttl(Duration::from_secs(10)).build().unwrap()
}

/// 100 concurrent `token()` calls on each replica; returns how long the last one took.
async fn stampede(fleet: &[TokenProvider]) -> Duration {
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for p in fleet {
        for _ in 0..100 {
            let p = p.clone();
            calls.spawn(async move { p.token().await.map(|_| ()) });
        }
    }
    while let Some(joined) = calls.join_next().await {
        joined.unwrap().unwrap();
    }
    started.elapsed()
}

fn print_fleet(rt: &tokio::runtime::Runtime, url: &str) {
    rt.block_on(async {
        let idp = FakeIdp::start().await.unwrap();
        idp.set_delay(Duration::from_millis(20));
        let fleet: Vec<TokenProvider> = (0..8).map(|_| replica(&idp, store(url, "bench-fleet"))).collect();
        let cold = stampede(&fleet).await;
        let cold_requests = idp.token_requests();
        // At expiry: no replica has a usable token, all at the same instant.
        for p in &fleet {
            let token = p.current().unwrap();
            p.invalidate(&token);
        }
        let expiry = stampede(&fleet).await;
        let expiry_requests = idp.token_requests() - cold_requests;
        println!("fleet of 8 replicas x 100 concurrent callers, token endpoint 20 ms:");
        println!("  cold start : token requests for the fleet {cold_requests}, all 800 served in {cold:.1?}");
        println!("  at expiry  : token requests for the fleet {expiry_requests}, all 800 served in {expiry:.1?}");
        assert_eq!((cold_requests, expiry_requests), (1, 1), "the fleet must make one token request each time");
    });
}

fn bench_reads(c: &mut Criterion, rt: &tokio::runtime::Runtime, url: &str) {
    let idp = rt.block_on(FakeIdp::start()).unwrap();
    let plain = store(url, "bench-read");
    let sealed = RedisStore::builder(url).prefix("bench-read-sealed").encryption_key([9; 32]).build().unwrap();
    let memory = MemoryStore::new();
    // Each store gets the token once (written by the provider's task right after).
    rt.block_on(async {
        for p in [replica(&idp, plain.clone()), replica(&idp, sealed.clone()), replica(&idp, memory.clone())] {
            p.token().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let warm = replica(&idp, memory.clone());
    rt.block_on(warm.token()).unwrap();
    let before = idp.token_requests();

    let mut g = c.benchmark_group("oauth2_redis_token_read");
    g.bench_function("from_memory", |b| b.to_async(rt).iter(|| async { black_box(warm.token().await.unwrap()) }));
    g.bench_function("new_replica_memory_store", |b| {
        b.to_async(rt).iter(|| async { black_box(replica(&idp, memory.clone()).token().await.unwrap()) })
    });
    g.bench_function("new_replica_from_redis", |b| {
        b.to_async(rt).iter(|| async { black_box(replica(&idp, plain.clone()).token().await.unwrap()) })
    });
    g.bench_function("new_replica_from_redis_encrypted", |b| {
        b.to_async(rt).iter(|| async { black_box(replica(&idp, sealed.clone()).token().await.unwrap()) })
    });
    g.finish();
    assert_eq!(idp.token_requests(), before, "every read came from a store");
}

fn main() {
    let redis = match start_redis() {
        Ok(redis) => redis,
        Err(reason) => {
            println!("SKIPPED oauth2_redis bench: {reason}");
            return;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    print_fleet(&rt, &redis.url);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_reads(&mut c, &rt, &redis.url);
    c.final_summary();
}
