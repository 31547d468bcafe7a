//! OAuth2 (issue 8, "Benches"): the token read path per request next to the static `Bearer`
//! layer, the stampedes at a cold start and at expiry, the latency added while the token is
//! refreshed in the background, and the memory per cached token.
//!
//! Everything runs in `main` (harness = false), tables first, then criterion:
//!
//! 1. **Stampede** (asserted): 1,000 concurrent requests through `AuthLayer::oauth2` at a cold
//!    start (multi-thread runtime, real clock, token endpoint taking 200 ms), and 1,000 at expiry
//!    (a token of 1 s left to expire while its runtime was not running, so that no refresh had
//!    started: then 1,000 requests spawned at once) → one token request each.
//! 2. **Memory**: retained bytes per provider holding a token, 10,000 providers; retained bytes
//!    per `MemoryStore` entry, 10,000 entries.
//! 3. **Read path**: heap allocations per call, and ns per call round-robin over the variants
//!    (`bare`, `auth_bearer`, `oauth2_once`, `oauth2_replay`, `provider_current`), with a token
//!    already in the slot, over the no-op inner service of benches/static_schemes.rs, driven
//!    without a runtime (`poll_ready` + `call` + one `poll`).
//! 4. **Latency while refreshing**: a real-time loop of requests through `AuthLayer::oauth2` to
//!    an in-process service that answers at once, p50/p99/max per phase: no refresh (token of
//!    one hour), then tokens of 2 s with an early expiry of 0.5 s refreshed in the background
//!    through a token endpoint that takes 200 ms (tokio's `sleep`).
//! 5. Criterion: the read-path variants.
//!
//! ```text
//! cargo bench --bench oauth2
//! OAUTH2_ONLY=oauth2_once valgrind --tool=callgrind target/release/deps/oauth2-<hash> --bench
//! ```

use std::alloc::System;
use std::cell::RefCell;
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion};
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, ServiceExt};
use tower_auth::oauth2::{CacheKey, MemoryStore, OAuth2, StoreFuture, StoredToken, Token, TokenProvider, TokenStore};
use tower_auth::{AuthLayer, ReplayBody};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Body = Empty<Bytes>;

/// The token the read-path variants send (the static `Bearer` variant sends the same).
const TOKEN: &str = "t0ken-abc";

// ---------------------------------------------------------------------------------------------
// The token endpoint
// ---------------------------------------------------------------------------------------------

/// An in-process token endpoint (the idea of tests/oauth2.rs): answers a token with the given
/// `expires_in` after `delay` (tokio's `sleep`, real time unless the runtime's clock is paused),
/// counts requests, and says while a request is in flight.
#[derive(Clone)]
struct Idp {
    token: Arc<str>,
    expires_in: Arc<Mutex<u64>>,
    delay: Duration,
    requests: Arc<AtomicUsize>,
    in_flight: Arc<AtomicBool>,
}

impl Idp {
    fn new(token: &str, expires_in: u64, delay: Duration) -> Self {
        Idp {
            token: token.into(),
            expires_in: Arc::new(Mutex::new(expires_in)),
            delay,
            requests: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Service<Request<Full<Bytes>>> for Idp {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.requests.fetch_add(1, Ordering::SeqCst);
            this.in_flight.store(true, Ordering::SeqCst);
            if !this.delay.is_zero() {
                tokio::time::sleep(this.delay).await;
            }
            this.in_flight.store(false, Ordering::SeqCst);
            let expires_in = *this.expires_in.lock().unwrap();
            let body =
                format!(r#"{{"access_token":"{}","token_type":"Bearer","expires_in":{expires_in}}}"#, this.token);
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap())
        })
    }
}

fn provider(idp: &Idp, client_id: &str) -> TokenProvider {
    TokenProvider::client_credentials("https://idp.example/token", client_id, "s3cret").build(idp.clone()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Inner services
// ---------------------------------------------------------------------------------------------

thread_local! {
    /// Where [`Noop`] puts the requests it receives (as in benches/static_schemes.rs), so that
    /// freeing them is not timed; one sink per body type (`Once` passes the caller's body,
    /// `Replay` a `ReplayBody`).
    static SINK: RefCell<Vec<Request<Body>>> = const { RefCell::new(Vec::new()) };
    static REPLAY_SINK: RefCell<Vec<Request<ReplayBody<Body>>>> = const { RefCell::new(Vec::new()) };
}

/// A request body type [`Noop`] can keep aside.
trait Kept: Sized + 'static {
    fn keep(req: Request<Self>);
}

impl Kept for Body {
    fn keep(req: Request<Self>) {
        SINK.with_borrow_mut(|sink| sink.push(req));
    }
}

impl Kept for ReplayBody<Body> {
    fn keep(req: Request<Self>) {
        REPLAY_SINK.with_borrow_mut(|sink| sink.push(req));
    }
}

/// Frees the requests [`Noop`] kept, keeping the sinks' capacity.
fn empty_sinks() {
    SINK.with_borrow_mut(Vec::clear);
    REPLAY_SINK.with_borrow_mut(Vec::clear);
}

/// The no-op service of benches/static_schemes.rs: always ready, answers at once, keeps the
/// request aside.
#[derive(Debug, Clone, Copy)]
struct Noop;

impl<B: Kept> Service<Request<B>> for Noop {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        B::keep(req);
        ready(Ok(Response::new(Empty::new())))
    }
}

/// For the runtime parts (stampedes, latency): answers at once, checks that the request carries
/// a token, drops it.
#[derive(Debug, Clone, Copy)]
struct Fast;

impl<B> Service<Request<B>> for Fast {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        assert!(req.headers().contains_key(AUTHORIZATION), "a request went without a token");
        ready(Ok(Response::new(Empty::new())))
    }
}

/// The request of benches/static_schemes.rs: a typical API call with two headers of its own.
fn request() -> Request<Body> {
    Request::get("https://api.example.com/v1/items?limit=5")
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .body(Empty::new())
        .unwrap()
}

/// `poll_ready`, `call` and one `poll`, which must finish it (no runtime, no-op waker).
#[inline]
fn drive<S>(svc: &mut S, req: Request<Body>) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("not ready: {other:?}"),
    }
    match pin!(svc.call(req)).poll(&mut cx) {
        Poll::Ready(res) => res.unwrap(),
        Poll::Pending => panic!("the future did not finish on its first poll"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Stampedes
// ---------------------------------------------------------------------------------------------

const STAMPEDE: usize = 1_000;

/// Sends `STAMPEDE` requests at once (spawned tasks) through `svc`; returns the latest arrival
/// (time from the first spawn to the last task's call) and the time until all were answered.
async fn stampede<S>(svc: S) -> (Duration, Duration)
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..STAMPEDE)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let arrived = start.elapsed();
                let res = svc.oneshot(request()).await.unwrap();
                assert_eq!(res.status(), 200);
                arrived
            })
        })
        .collect();
    let mut latest = Duration::ZERO;
    for task in tasks {
        latest = latest.max(task.await.unwrap());
    }
    (latest, start.elapsed())
}

fn print_stampedes() {
    const DELAY: Duration = Duration::from_millis(200);
    println!("stampede: {STAMPEDE} concurrent requests through AuthLayer::oauth2, token endpoint taking 200 ms:");

    // Cold start: no token yet; 2 worker threads, real clock.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let idp = Idp::new(TOKEN, 3600, DELAY);
    let p = provider(&idp, "svc");
    let svc = AuthLayer::oauth2(p.clone()).layer(Fast);
    let (arrival, took) = rt.block_on(stampede(svc));
    let cold = p.stats().token_requests();
    assert_eq!(cold, 1, "cold start: {cold} token requests for {STAMPEDE} requests");
    assert_eq!(idp.count(), 1);
    println!(
        "  cold start: {cold} token request ({STAMPEDE} requests, all sent within {:.1} ms; all answered after {:.0} ms)",
        arrival.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3
    );
    drop(rt);

    // At expiry: a token of 1 s (early expiry 0), obtained on a current-thread runtime that
    // then does not run while the token expires (the background task cannot refresh it), then
    // 1,000 requests spawned at once: every one of them finds the token expired.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let idp = Idp::new(TOKEN, 1, DELAY);
    let p = TokenProvider::client_credentials("https://idp.example/token", "svc", "s3cret")
        .early_expiry(Duration::ZERO)
        .build(idp.clone())
        .unwrap();
    rt.block_on(p.token()).unwrap();
    assert_eq!(p.stats().token_requests(), 1);
    std::thread::sleep(Duration::from_millis(1_050));
    assert!(p.current().is_none(), "the token should have expired");
    let svc = AuthLayer::oauth2(p.clone()).layer(Fast);
    let (arrival, took) = rt.block_on(stampede(svc));
    let at_expiry = p.stats().token_requests() - 1;
    assert_eq!(at_expiry, 1, "at expiry: {at_expiry} token requests for {STAMPEDE} requests");
    assert_eq!(idp.count(), 2);
    println!(
        "  at expiry:  {at_expiry} token request ({STAMPEDE} requests, all sent within {:.1} ms; all answered after {:.0} ms)",
        arrival.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3
    );
    println!();
}

// ---------------------------------------------------------------------------------------------
// 2. Memory
// ---------------------------------------------------------------------------------------------

/// A store that records what it is given (to copy it into a fresh [`MemoryStore`] while
/// measuring) and forwards to a [`MemoryStore`].
#[derive(Clone, Default)]
struct Recording {
    inner: MemoryStore,
    saved: Arc<Mutex<Vec<(CacheKey, StoredToken)>>>,
}

impl TokenStore for Recording {
    fn load<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<StoredToken>> {
        self.inner.load(key)
    }

    fn save<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken) -> StoreFuture<'a, ()> {
        self.saved.lock().unwrap().push((key.clone(), token.clone()));
        self.inner.save(key, token)
    }
}

/// Bytes allocated and not freed since `region` began.
fn retained(region: &Region<'_, System>) -> isize {
    let s = region.change();
    s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated
}

fn print_memory() {
    const N: usize = 10_000;
    // A realistic opaque token length (a JWT would be 800 to 1,200 bytes; the header value
    // grows with it).
    let token = "a".repeat(40);
    println!("memory per cached token ({N} entries, a {}-byte opaque token):", token.len());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let idp = Idp::new(&token, 3600, Duration::ZERO);
    let ids: Vec<String> = (0..N).map(|i| format!("svc-{i:05}")).collect();

    // Providers, each holding its token.
    let region = Region::new(GLOBAL);
    let providers: Vec<TokenProvider> = ids.iter().map(|id| provider(&idp, id)).collect();
    let built = retained(&region);
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for p in &providers {
            p.token().await.unwrap();
        }
    });
    let with_token = retained(&region);
    assert_eq!(idp.count(), N);
    println!(
        "  TokenProvider: {:.0} bytes per provider built (handle, endpoint, options), +{:.0} bytes once it holds its token (the token, its background task, channels): {:.0} bytes per provider with a token",
        built as f64 / N as f64,
        with_token as f64 / N as f64,
        (built + with_token) as f64 / N as f64
    );
    println!(
        "  of which the token itself: Arc<Token> {} bytes (size_of::<Token>() {} + 2 counts) + its header value `Bearer <token>` {} bytes",
        std::mem::size_of::<Token>() + 16,
        std::mem::size_of::<Token>(),
        "Bearer ".len() + token.len()
    );
    drop(providers);

    // MemoryStore entries: 10,000 providers of different client ids save into one store; the
    // entries are then copied into a fresh store, measured.
    let store = Recording::default();
    let providers: Vec<TokenProvider> = ids
        .iter()
        .map(|id| {
            TokenProvider::client_credentials("https://idp.example/token", id, "s3cret")
                .store(store.clone())
                .build(idp.clone())
                .unwrap()
        })
        .collect();
    rt.block_on(async {
        for p in &providers {
            p.token().await.unwrap();
        }
    });
    assert_eq!(store.inner.len(), N);
    let saved = std::mem::take(&mut *store.saved.lock().unwrap());
    let fresh = MemoryStore::new();
    let mut cx = Context::from_waker(Waker::noop());
    let region = Region::new(GLOBAL);
    for (key, token) in &saved {
        assert!(matches!(fresh.save(key, token).as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    }
    let entries = retained(&region);
    assert_eq!(fresh.len(), N);
    println!(
        "  MemoryStore: {:.0} bytes per entry (key: 64 hex digits; access token; expiry; the map's slack at {N} entries included)",
        entries as f64 / N as f64
    );
    println!();
    drop(providers);
    drop(rt);
}

// ---------------------------------------------------------------------------------------------
// 3. Read path
// ---------------------------------------------------------------------------------------------

/// A provider holding a token of one hour, its runtime kept (the background task sleeps on it,
/// not driven while the read path is measured).
fn warm_provider() -> (tokio::runtime::Runtime, TokenProvider) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let idp = Idp::new(TOKEN, 3600, Duration::ZERO);
    let p = provider(&idp, "svc");
    rt.block_on(p.token()).unwrap();
    assert_eq!(p.stats().token_requests(), 1);
    (rt, p)
}

/// Calls the generic function `$f` with leading arguments `$arg`s, then each variant's name and
/// service (each variant is a different service type).
macro_rules! for_each_variant {
    ($p:expr, $f:ident($($arg:expr),*)) => {{
        $f($($arg,)* "bare", Noop);
        $f($($arg,)* "auth_bearer", AuthLayer::bearer(TOKEN).unwrap().layer(Noop));
        $f($($arg,)* "oauth2_once", AuthLayer::new(OAuth2::once($p.clone())).layer(Noop));
        $f($($arg,)* "oauth2_replay", AuthLayer::oauth2($p.clone()).layer(Noop));
    }};
}

/// Checks that the variant did put the token on the request.
fn check(name: &str) {
    let sent = SINK
        .with_borrow_mut(Vec::pop)
        .or_else(|| REPLAY_SINK.with_borrow_mut(Vec::pop).map(|r| r.map(|_| Body::new())));
    let sent = sent.expect("the request reached the inner service");
    let header = sent.headers().get(AUTHORIZATION);
    if name == "bare" {
        assert!(header.is_none());
    } else {
        assert_eq!(header.unwrap(), &format!("Bearer {TOKEN}")[..], "{name}");
    }
}

/// Heap allocations (and bytes) per call, over `CALLS` calls after one warm-up call.
fn print_allocations<S>(name: &str, mut svc: S)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    const CALLS: usize = 10_000;
    drive(&mut svc, request());
    check(name);
    empty_sinks();
    SINK.with_borrow_mut(|sink| sink.reserve(CALLS));
    REPLAY_SINK.with_borrow_mut(|sink| sink.reserve(CALLS));
    let requests: Vec<Request<Body>> = (0..CALLS).map(|_| request()).collect();
    let mut responses = Vec::with_capacity(CALLS);
    let region = Region::new(GLOBAL);
    for req in requests {
        responses.push(drive(&mut svc, req));
    }
    let change = region.change();
    drop(responses);
    empty_sinks();
    println!(
        "  {name:<20} {:>12.2} {:>12.1}",
        change.allocations as f64 / CALLS as f64,
        change.bytes_allocated as f64 / CALLS as f64
    );
}

/// What the engine's response observation costs a `Once` scheme per request: a copy of the
/// request head (`clone_parts`: method, URI, headers, extensions), measured apart.
fn print_head_copy() {
    const CALLS: usize = 10_000;
    let heads: Vec<http::request::Parts> = (0..CALLS).map(|_| request().into_parts().0).collect();
    let mut copies = Vec::with_capacity(CALLS);
    let region = Region::new(GLOBAL);
    for p in &heads {
        let (mut c, ()) = Request::new(()).into_parts();
        c.method = p.method.clone();
        c.uri = p.uri.clone();
        c.version = p.version;
        c.headers = p.headers.clone();
        c.extensions = p.extensions.clone();
        copies.push(c);
    }
    let change = region.change();
    println!(
        "  {:<20} {:>12.2} {:>12.1}   (a copy of the request head, as the engine keeps for a scheme that observes responses)",
        "head copy alone",
        change.allocations as f64 / CALLS as f64,
        change.bytes_allocated as f64 / CALLS as f64
    );
}

fn print_allocation_table(p: &TokenProvider) {
    println!(
        "read path, heap allocations per call (token in the slot; poll_ready + call + poll; request built outside):"
    );
    println!("  {:<20} {:>12} {:>12}", "variant", "allocs/call", "bytes/call");
    for_each_variant!(p, print_allocations());
    print_head_copy();
    println!();
}

/// Calls per block of the interleaved table (and of the callgrind mode).
const CALLS: usize = 1_000;

/// One variant's block: sends every request of the first vector, pushing the responses into the
/// second (reserved: no allocation).
type Block = Box<dyn FnMut(&mut Vec<Request<Body>>, &mut Vec<Response<Body>>)>;

fn push_block<S>(blocks: &mut Vec<(&'static str, Block)>, name: &'static str, mut svc: S)
where
    S: Service<Request<Body>, Response = Response<Body>> + 'static,
    S::Error: Debug,
{
    let block: Block = Box::new(move |requests, responses| {
        for req in requests.drain(..) {
            responses.push(drive(&mut svc, req));
        }
    });
    blocks.push((name, block));
}

/// Runs a block and returns ns per call. Never inlined: under callgrind its inclusive
/// instruction count is the timed work alone (`OAUTH2_ONLY`, see [`main`]).
#[inline(never)]
fn timed(block: &mut Block, requests: &mut Vec<Request<Body>>, responses: &mut Vec<Response<Body>>) -> f64 {
    let start = Instant::now();
    block(requests, responses);
    start.elapsed().as_secs_f64() * 1e9 / CALLS as f64
}

/// Times every variant in blocks of `CALLS` calls, round-robin for `rounds` rounds (after a
/// warm-up round), and prints each one's median ns/call. With `only`, that variant alone.
fn print_interleaved_table(p: &TokenProvider, rounds: usize, only: Option<&str>) {
    let mut blocks = Vec::new();
    for_each_variant!(p, push_block(&mut blocks));
    let current = p.clone();
    blocks.push((
        "provider_current",
        // The requests are left to be freed outside the timing.
        Box::new(move |requests: &mut Vec<Request<Body>>, _: &mut Vec<Response<Body>>| {
            for _ in 0..requests.len() {
                black_box(current.current());
            }
        }),
    ));
    if let Some(only) = only {
        blocks.retain(|(name, _)| *name == only);
        assert!(!blocks.is_empty(), "no variant named {only:?}");
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); blocks.len()];
    let mut requests = Vec::with_capacity(CALLS);
    let mut responses = Vec::with_capacity(CALLS);
    for round in 0..=rounds {
        for ((_, block), samples) in blocks.iter_mut().zip(&mut samples) {
            requests.extend((0..CALLS).map(|_| request()));
            let ns = timed(block, &mut requests, &mut responses);
            requests.clear();
            responses.clear();
            empty_sinks();
            if round > 0 {
                samples.push(ns);
            }
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    let bearer = blocks.iter().position(|(n, _)| *n == "auth_bearer").map(|i| medians[i]);
    println!("read path, interleaved: {rounds} rounds x {CALLS} calls per variant, median ns/call:");
    println!("  {:<20} {:>10} {:>12}", "variant", "ns/call", "vs Bearer");
    for ((name, _), ns) in blocks.iter().zip(&medians) {
        let ratio = match bearer {
            Some(b) if name.starts_with("oauth2") => format!("{:.3}", ns / b),
            _ => String::new(),
        };
        println!("  {name:<20} {ns:>10.1} {ratio:>12}");
    }
    println!();
}

fn bench_one<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut svc: S)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    group.bench_function(name, |b| {
        b.iter_batched(
            || {
                empty_sinks();
                request()
            },
            |req| drive(&mut svc, req),
            BatchSize::SmallInput,
        )
    });
}

fn bench_read_path(c: &mut Criterion, p: &TokenProvider) {
    let mut group = c.benchmark_group("oauth2_read_path");
    for_each_variant!(p, bench_one(&mut group));
    group.bench_function("provider_current", |b| b.iter(|| p.current()));
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Latency while the token is refreshed in the background
// ---------------------------------------------------------------------------------------------

/// Request latencies: 10 ns buckets up to 1 ms, and every slower one kept.
struct Histogram {
    buckets: Vec<u32>,
    slow: Vec<u64>,
    count: u64,
    max: u64,
}

impl Histogram {
    const STEP: u64 = 10;
    const LIMIT: u64 = 1_000_000;

    fn new() -> Self {
        Histogram { buckets: vec![0; (Self::LIMIT / Self::STEP) as usize], slow: Vec::new(), count: 0, max: 0 }
    }

    fn record(&mut self, ns: u64) {
        self.count += 1;
        self.max = self.max.max(ns);
        if ns < Self::LIMIT {
            self.buckets[(ns / Self::STEP) as usize] += 1;
        } else {
            self.slow.push(ns);
        }
    }

    /// The `q` quantile, in ns (to the bucket's upper end).
    fn quantile(&self, q: f64) -> u64 {
        let rank = ((self.count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return (i as u64 + 1) * Self::STEP;
            }
        }
        let mut slow = self.slow.clone();
        slow.sort_unstable();
        slow[(rank - seen - 1) as usize]
    }

    fn over(&self, ns: u64) -> usize {
        self.slow.iter().filter(|&&s| s > ns).count()
    }
}

/// One phase: requests in a loop for `run` through `AuthLayer::oauth2` to [`Fast`], each timed
/// alone (the request is built outside the timing); a request sent while the token endpoint is
/// in flight is also counted in the second histogram.
async fn latency_loop(p: TokenProvider, idp: Idp, run: Duration) -> (Histogram, Histogram, u64) {
    let mut svc = AuthLayer::oauth2(p.clone()).layer(Fast);
    let mut all = Histogram::new();
    let mut during = Histogram::new();
    let before = p.stats().token_requests();
    let end = Instant::now() + run;
    let mut n = 0u32;
    while Instant::now() < end {
        let req = request();
        let refreshing = idp.in_flight.load(Ordering::Relaxed);
        let start = Instant::now();
        let res = ServiceExt::<Request<Body>>::ready(&mut svc).await.unwrap().call(req).await.unwrap();
        let ns = start.elapsed().as_nanos() as u64;
        drop(res);
        all.record(ns);
        if refreshing {
            during.record(ns);
        }
        n += 1;
        if n % 256 == 0 {
            // Let other tasks of this worker run (the loop itself never waits).
            tokio::task::yield_now().await;
        }
    }
    (all, during, p.stats().token_requests() - before)
}

fn print_latency() {
    const RUN: Duration = Duration::from_secs(5);
    const DELAY: Duration = Duration::from_millis(200);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!(
        "latency per request while refreshing (AuthLayer::oauth2 over an in-process service that answers at once; {} s per phase, real clock, 2 worker threads; token endpoint taking 200 ms):",
        RUN.as_secs()
    );
    println!(
        "  {:<46} {:>9} {:>7} {:>7} {:>8} {:>10} {:>9} {:>6} {:>7}",
        "phase", "requests", "p50 ns", "p99 ns", "p99.9 ns", "max µs", "refreshes", ">1 ms", ">50 ms"
    );
    let phases: [(&str, u64, Duration, Option<f64>); 3] = [
        ("no refresh (expires_in 3600)", 3600, Duration::from_secs(30), None),
        ("expires_in 2, early expiry 0.5 s", 2, Duration::from_millis(500), None),
        ("expires_in 2, early expiry 0.5 s, fraction 0.5", 2, Duration::from_millis(500), Some(0.5)),
    ];
    for (name, expires_in, early, fraction) in phases {
        let idp = Idp::new(TOKEN, expires_in, DELAY);
        let mut builder =
            TokenProvider::client_credentials("https://idp.example/token", "svc", "s3cret").early_expiry(early);
        if let Some(f) = fraction {
            builder = builder.refresh_fraction(f);
        }
        let p = builder.build(idp.clone()).unwrap();
        rt.block_on(p.token()).unwrap();
        let (all, during, refreshes) = rt.block_on(rt.spawn(latency_loop(p, idp, RUN))).unwrap();
        let row = |label: &str, h: &Histogram, refreshes: String| {
            if h.count == 0 {
                println!("  {label:<46} {:>9}", 0);
                return;
            }
            println!(
                "  {label:<46} {:>9} {:>7} {:>7} {:>8} {:>10.1} {:>9} {:>6} {:>7}",
                h.count,
                h.quantile(0.5),
                h.quantile(0.99),
                h.quantile(0.999),
                h.max as f64 / 1e3,
                refreshes,
                h.over(1_000_000),
                h.over(50_000_000)
            );
        };
        row(name, &all, refreshes.to_string());
        if fraction.is_some() || expires_in != 3600 {
            row("  of which sent while a refresh was in flight", &during, String::new());
        }
    }
    println!(
        "  (>50 ms: requests that waited for a token; \"in flight\": the token endpoint was answering when the request was sent)"
    );
    println!();
}

// ---------------------------------------------------------------------------------------------

/// `OAUTH2_ONLY=<variant>` runs that variant's read path alone, 11 blocks of 1,000 calls, and
/// exits: under `valgrind --tool=callgrind` the inclusive count of `oauth2::timed` divided by
/// 11,000 is its instructions per call (see BENCHMARKS.md).
fn main() {
    if let Ok(only) = std::env::var("OAUTH2_ONLY") {
        let (_rt, p) = warm_provider();
        print_interleaved_table(&p, 10, Some(&only));
        return;
    }
    print_stampedes();
    print_memory();
    let (rt, p) = warm_provider();
    print_allocation_table(&p);
    print_interleaved_table(&p, 300, None);
    print_latency();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_read_path(&mut c, &p);
    c.final_summary();
    drop(rt);
}
