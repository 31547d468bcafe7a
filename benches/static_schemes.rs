//! The per-request cost of the static schemes, against tower-http's `AddAuthorization`.
//!
//! Each variant wraps a no-op service that answers `Response<Empty<Bytes>>` at once (not
//! `Response<()>`: `Auth` wants a response body type that implements `Body`, even for schemes
//! that never read it). One iteration is `poll_ready` + `call` + one `poll` of the future (it is
//! ready at once), driven with a no-op waker, no runtime. The request is built in
//! `iter_batched`'s setup, and the no-op service keeps it aside to be freed in a later setup, the
//! same for every variant: what is timed is the layer's own work, not building or freeing a
//! request (which costs more than any of the layers).
//!
//! Before criterion runs, two tables are printed: heap allocations per call, measured with a
//! counting global allocator over the same loop, and ns/call measured round-robin over all the
//! variants (robust to load from other processes that changes while criterion runs one variant
//! after another).
//!
//! ```text
//! cargo bench --bench static_schemes -- --warm-up-time 1 --measurement-time 3
//! ```

use std::alloc::System;
use std::cell::RefCell;
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion};
use http::{Request, Response};
use http_body_util::Empty;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service};
use tower_auth::{AllOf, ApiKey, AuthLayer, Bearer, HeaderCredential};
use tower_http::auth::AddAuthorizationLayer;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Body = Empty<Bytes>;

thread_local! {
    /// Where [`Noop`] puts the requests it receives, so that freeing them is not timed: the sink
    /// is emptied outside the timed loops (in `iter_batched`'s setup, or after a block).
    static SINK: RefCell<Vec<Request<Body>>> = const { RefCell::new(Vec::new()) };
}

/// A service that is always ready and answers at once, keeping the request in [`SINK`].
#[derive(Debug, Clone, Copy)]
struct Noop;

impl Service<Request<Body>> for Noop {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        SINK.with_borrow_mut(|sink| sink.push(req));
        ready(Ok(Response::new(Empty::new())))
    }
}

/// Frees the requests [`Noop`] kept, keeping the sink's capacity.
fn empty_sink() {
    SINK.with_borrow_mut(Vec::clear);
}

/// The request every variant sends: a typical API call with two headers of its own.
fn request() -> Request<Body> {
    Request::get("https://api.example.com/v1/items?limit=5")
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .body(Empty::new())
        .unwrap()
}

/// `poll_ready`, `call` and one `poll`, which must finish it.
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
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(res) => res.unwrap(),
        Poll::Pending => panic!("the future did not finish on its first poll"),
    }
}

/// Calls the generic function `$f` with leading arguments `$arg`s, then each variant's name and
/// service (each variant is a different service type).
macro_rules! for_each_variant {
    ($f:ident($($arg:expr),*)) => {{
        $f($($arg,)* "bare", Noop);
        // tower-http
        $f($($arg,)* "tower_http_basic", AddAuthorizationLayer::basic("alice", "s3cret").layer(Noop));
        $f($($arg,)* "tower_http_bearer", AddAuthorizationLayer::bearer("t0ken-abc").layer(Noop));
        // tower-auth
        $f($($arg,)* "auth_basic", AuthLayer::basic("alice", "s3cret").unwrap().layer(Noop));
        $f($($arg,)* "auth_bearer", AuthLayer::bearer("t0ken-abc").unwrap().layer(Noop));
        $f($($arg,)* "auth_api_key", AuthLayer::api_key("k3y-abc").unwrap().layer(Noop));
        $f($($arg,)* "auth_api_key_query", AuthLayer::api_key_query("k3y-abc").unwrap().layer(Noop));
        let private_token = HeaderCredential::new("Private-Token", "glpat-123").unwrap();
        $f($($arg,)* "auth_header_credential", AuthLayer::new(private_token).layer(Noop));
        let both = AllOf::new(ApiKey::header("k3y-abc").unwrap(), Bearer::new("t0ken-abc").unwrap());
        $f($($arg,)* "auth_all_of_api_key_bearer", AuthLayer::new(both).layer(Noop));
    }};
}

/// Checks that the variant did authenticate the request (a typo in a variant would otherwise
/// benchmark nothing).
fn check(name: &str, sent: &Request<Body>) {
    let h = sent.headers();
    let authenticated = h.contains_key("authorization")
        || h.contains_key("x-api-key")
        || h.contains_key("private-token")
        || sent.uri().query().is_some_and(|q| q.contains("api_key="));
    assert_eq!(authenticated, name != "bare", "{name}: {sent:?}");
}

/// Heap allocations (and bytes) per call, over `CALLS` calls after one warm-up call.
fn allocations<S>(name: &str, mut svc: S) -> (f64, f64)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    const CALLS: usize = 10_000;
    drive(&mut svc, request());
    check(name, &SINK.with_borrow_mut(|sink| sink.pop().unwrap()));
    SINK.with_borrow_mut(|sink| sink.reserve(CALLS));
    let requests: Vec<Request<Body>> = (0..CALLS).map(|_| request()).collect();
    let region = Region::new(GLOBAL);
    for req in requests {
        drop(black_box(drive(&mut svc, req)));
    }
    let change = region.change();
    empty_sink();
    (change.allocations as f64 / CALLS as f64, change.bytes_allocated as f64 / CALLS as f64)
}

fn print_allocations<S>(name: &str, svc: S)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    let (allocs, bytes) = allocations(name, svc);
    println!("{name:<28} {allocs:>12.2} {bytes:>12.1}");
}

fn print_allocation_table() {
    println!("heap allocations per call (poll_ready + call + poll; request built outside):");
    println!("{:<28} {:>12} {:>12}", "variant", "allocs/call", "bytes/call");
    for_each_variant!(print_allocations());
    println!();
}

/// One variant's timed block: sends every request of the first vector, pushing the responses
/// into the second (reserved: no allocation), and returns the time it took.
type Block = Box<dyn FnMut(&mut Vec<Request<Body>>, &mut Vec<Response<Body>>) -> Duration>;

fn push_block<S>(blocks: &mut Vec<(&'static str, Block)>, name: &'static str, mut svc: S)
where
    S: Service<Request<Body>, Response = Response<Body>> + 'static,
    S::Error: Debug,
{
    let block: Block = Box::new(move |requests, responses| {
        let start = Instant::now();
        for req in requests.drain(..) {
            responses.push(drive(&mut svc, req));
        }
        start.elapsed()
    });
    blocks.push((name, block));
}

/// Times every variant in blocks of `CALLS` calls, round-robin for `rounds` rounds, and prints
/// each one's median ns/call. Criterion times one variant after the other, so load from other
/// processes that changes over seconds shows up as a difference between variants; here it is
/// spread over all of them alike.
///
/// `only` keeps one variant: with `STATIC_SCHEMES_ONLY=<variant>` the bench runs just this loop
/// for that variant, to count its instructions under `valgrind --tool=callgrind` (see
/// BENCHMARKS.md), which the load of other processes does not change.
fn print_interleaved_table(rounds: usize, only: Option<&str>) {
    const CALLS: usize = 1_000;
    let mut blocks = Vec::new();
    for_each_variant!(push_block(&mut blocks));
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
            let took = block(&mut requests, &mut responses);
            responses.clear();
            empty_sink();
            if round > 0 {
                // Round 0 warms up.
                samples.push(took.as_secs_f64() * 1e9 / CALLS as f64);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    let of = |name: &str| blocks.iter().position(|(n, _)| *n == name).map(|i| medians[i]);
    println!("interleaved: {rounds} rounds x {CALLS} calls per variant, median ns/call:");
    println!("{:<28} {:>10} {:>16}", "variant", "ns/call", "vs tower-http");
    for ((name, _), ns) in blocks.iter().zip(&medians) {
        let baseline = match *name {
            "auth_basic" => of("tower_http_basic"),
            "auth_bearer" | "auth_api_key" | "auth_header_credential" => of("tower_http_bearer"),
            _ => None,
        };
        let ratio = baseline.map_or(String::new(), |b| format!("{:.3}", ns / b));
        println!("{name:<28} {ns:>10.1} {ratio:>16}");
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
                empty_sink();
                request()
            },
            |req| drive(&mut svc, req),
            BatchSize::SmallInput,
        )
    });
}

fn bench_static_schemes(c: &mut Criterion) {
    let mut group = c.benchmark_group("static_schemes");
    for_each_variant!(bench_one(&mut group));
    group.finish();
}

fn main() {
    if let Ok(only) = std::env::var("STATIC_SCHEMES_ONLY") {
        print_interleaved_table(10, Some(&only));
        return;
    }
    print_allocation_table();
    print_interleaved_table(300, None);
    let mut c = Criterion::default().configure_from_args();
    bench_static_schemes(&mut c);
    c.final_summary();
}
