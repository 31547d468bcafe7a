//! The router: lookup and per-request cost with 1, 100 and 10,000 origins, heap allocations
//! per operation, and memory per configured origin.
//!
//! The routers here have Bearer routes only, so they are `Router<Once>`: the engine's fast path
//! (the caller's body passes through, no copy of the request head, no per-request context).
//!
//! - `lookup/N`: [`Authenticator::applies_to`] on a `Router` with N origins, for one configured
//!   origin: the lock-free table load, the URI's origin key, the hash lookup, the exact
//!   comparison. `lookup_rotating/N` cycles through up to 1,024 different configured origins
//!   (cache misses included).
//! - `authorize/N`: lookup and [`Authenticator::authorize`] with a fresh per-request state (what
//!   the router adds to a request, without the engine around it); `authorize/bearer` is the
//!   Bearer scheme alone.
//! - `call/N`: the whole layer, `poll_ready` + `call` + one `poll` of `Auth<Noop, Router<Once>>`
//!   with a Bearer token per origin: lookup, authorise (one header insert) and the engine,
//!   driven with a no-op waker; the request is built and freed outside the timing (`Noop` keeps
//!   it aside, as in benches/static_schemes.rs). `call/boxed_bearer` is the same engine and
//!   erased scheme without routing ([`BoxAuthenticator::once`]), `call/bearer` the plain static
//!   scheme: `call/N - call/boxed_bearer` is what routing adds.
//! - `origin_map/N`: the bare [`OriginMap::get_for_uri`] the router uses, for comparison.
//! - `insert/N` (criterion only): a runtime [`Router::insert`] + [`Router::remove`] (copy on
//!   write of the table).
//!
//! Hosts are `host00000.example` … `host09999.example`: all of one length, since the cost of
//! hashing and comparing a host depends on its length (not on the number of origins).
//!
//! Before criterion runs, three tables are printed: the memory per configured origin (a counting
//! global allocator over 10,000 `RouteBuilder::origin` calls), heap allocations per operation of
//! every variant above but `insert/N` (tests/alloc_free.rs asserts the zeros), and ns per
//! operation measured round-robin over all variants.
//!
//! ```text
//! cargo bench --bench router -- --warm-up-time 1 --measurement-time 3
//! ROUTER_ONLY=lookup/10000 valgrind --tool=callgrind target/release/deps/router-<hash> --bench
//! ```

use std::alloc::System;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use criterion::{BatchSize, Criterion};
use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::Empty;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service};
use tower_auth::route::Router;
use tower_auth::route::origin::{Origin, OriginMap};
use tower_auth::{AuthLayer, AuthRequest, Authenticator, Authorize, Bearer, BodyView, BoxAuthenticator};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Body = Empty<Bytes>;

thread_local! {
    /// Where [`Noop`] puts the requests it receives, so that freeing them is not timed (as in
    /// benches/static_schemes.rs): emptied outside the timed loops.
    static SINK: std::cell::RefCell<Vec<Request<Body>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Frees the requests [`Noop`] kept, keeping the sink's capacity.
fn empty_sink() {
    SINK.with_borrow_mut(Vec::clear);
}

/// Always ready, answers at once; checks that the request is authorised and keeps it in
/// [`SINK`].
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
        assert!(req.headers().contains_key("authorization"), "not authorised: {}", req.uri());
        SINK.with_borrow_mut(|sink| sink.push(req));
        ready(Ok(Response::new(Body::new())))
    }
}

fn drive<S>(svc: &mut S, req: Request<Body>) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    match pin!(svc.call(req)).poll(&mut cx) {
        Poll::Ready(res) => res.unwrap(),
        Poll::Pending => panic!("not finished on its first poll"),
    }
}

fn origin(i: usize) -> String {
    format!("https://host{i:05}.example")
}

fn router(n: usize) -> AuthLayer<Router<tower_auth::Once>> {
    let mut builder = AuthLayer::route();
    for i in 0..n {
        builder = builder.origin(&origin(i), Bearer::new(format!("token-{i}")).unwrap()).unwrap();
    }
    builder.build()
}

/// A typical API request to origin `i`, with two headers of its own (as in
/// benches/static_schemes.rs): its header map exists already. Into a request without headers,
/// the first insert allocates the `HeaderMap`'s own storage (2 allocations, 656 bytes, whatever
/// the layer: tower-http's `AddAuthorization` too).
fn request(i: usize) -> Request<Body> {
    Request::get(format!("https://host{i:05}.example/v1/items?page=2"))
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .body(Body::new())
        .unwrap()
}

fn parts(i: usize) -> Parts {
    request(i).into_parts().0
}

/// One `authorize` with fresh per-request state, then the header taken out again (for the next
/// call to insert it anew).
#[inline]
fn authorize_once<A: Authenticator>(auth: &A, parts: &mut Parts) {
    let mut state = A::State::default();
    let done = auth.authorize(&mut AuthRequest::new(black_box(parts), BodyView::Empty, 0), &mut state);
    assert!(matches!(done, Ok(Authorize::Done)));
    black_box(parts.headers.remove(AUTHORIZATION));
    drop(black_box(state));
}

fn print_memory() {
    const N: usize = 10_000;
    let origins: Vec<String> = (0..N).map(origin).collect();

    let region = Region::new(GLOBAL);
    let schemes: Vec<Bearer> = (0..N).map(|i| Bearer::new(format!("token-{i}")).unwrap()).collect();
    let scheme_stats = region.change();

    let region = Region::new(GLOBAL);
    let mut builder = AuthLayer::route();
    for (origin, scheme) in origins.iter().zip(schemes) {
        builder = builder.origin(origin, scheme).unwrap();
    }
    let layer = builder.build();
    let stats = region.change();
    let net = stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated;
    println!("memory per configured origin ({N} origins, `https://hostNNNNN.example`, a Bearer token each):");
    println!(
        "  RouteBuilder::origin + build: {:.1} bytes allocated per insert ({:.2} allocations), {:.1} bytes retained per origin",
        stats.bytes_allocated as f64 / N as f64,
        stats.allocations as f64 / N as f64,
        net as f64 / N as f64
    );
    println!(
        "  the Bearer scheme itself (not included above): {:.1} bytes per scheme",
        scheme_stats.bytes_allocated as f64 / N as f64
    );
    println!();
    black_box(layer);
}

/// Every measurement in blocks of `CALLS`, round-robin over `ROUNDS` rounds, median ns per
/// operation: load from other processes that changes over seconds is spread over all variants
/// alike (criterion times one after the other).
const CALLS: usize = 2_000;
const ROUNDS: usize = 60;

/// One measurement: `prepare` (untimed: builds requests, empties the response buffer), then the
/// `CALLS` timed operations, run inside [`timed`].
struct Block {
    prepare: Box<dyn FnMut()>,
    run: Box<dyn FnMut()>,
}

/// Times `run` and returns ns per operation. Never inlined: under callgrind its inclusive
/// instruction count is the timed work alone (`ROUTER_ONLY`, see [`main`]).
#[inline(never)]
fn timed(run: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    run();
    start.elapsed().as_secs_f64() * 1e9 / CALLS as f64
}

/// A block of `CALLS` operations of `op` (no setup).
fn op_block(mut op: impl FnMut() + 'static) -> Block {
    Block {
        prepare: Box::new(|| {}),
        run: Box::new(move || {
            for _ in 0..CALLS {
                op();
            }
        }),
    }
}

/// A block of `CALLS` whole service calls to origin `i`: the requests are built in `prepare`;
/// the responses, and the requests `Noop` keeps, are freed in the next `prepare`.
fn call_block<S>(svc: S, i: usize) -> Block
where
    S: Service<Request<Body>, Response = Response<Body>> + 'static,
    S::Error: std::fmt::Debug,
{
    use std::cell::RefCell;
    use std::rc::Rc;
    let requests: Rc<RefCell<Vec<Request<Body>>>> = Rc::new(RefCell::new(Vec::with_capacity(CALLS)));
    let responses: Rc<RefCell<Vec<Response<Body>>>> = Rc::new(RefCell::new(Vec::with_capacity(CALLS)));
    let (req2, res2) = (Rc::clone(&requests), Rc::clone(&responses));
    let svc = RefCell::new(svc);
    Block {
        prepare: Box::new(move || {
            res2.borrow_mut().clear();
            empty_sink();
            req2.borrow_mut().extend((0..CALLS).map(|_| request(i)));
        }),
        run: Box::new(move || {
            let (mut svc, mut responses) = (svc.borrow_mut(), responses.borrow_mut());
            for req in requests.borrow_mut().drain(..) {
                responses.push(drive(&mut *svc, req));
            }
        }),
    }
}

/// Every variant, named; with `only`, that variant alone (the routers of other sizes are not
/// built: building 10,000 routes takes seconds, minutes under valgrind).
fn blocks(only: Option<&str>) -> Vec<(String, Block)> {
    let mut blocks: Vec<(String, Block)> = Vec::new();
    for n in [1, 100, 10_000] {
        if only.is_some_and(|only| !only.ends_with(&format!("/{n}"))) {
            continue;
        }
        let layer = router(n);
        let router = layer.router().clone();
        let hit = parts(n / 2);
        let map: OriginMap<usize> = (0..n).map(|i| (origin(i).parse::<Origin>().unwrap(), i)).collect();
        let uri = hit.uri.clone();
        blocks.push((
            format!("origin_map/{n}"),
            op_block(move || {
                black_box(map.get_for_uri(black_box(&uri)));
            }),
        ));
        let r = router.clone();
        blocks.push((
            format!("lookup/{n}"),
            op_block(move || {
                black_box(r.applies_to(black_box(&hit)));
            }),
        ));
        let (r, mut p) = (router.clone(), parts(n / 2));
        blocks.push((format!("authorize/{n}"), op_block(move || authorize_once(&*r, &mut p))));
        let rotating: Vec<Parts> = (0..n.min(1024)).map(|i| parts(i * (n / n.min(1024)))).collect();
        let mut k = 0;
        blocks.push((
            format!("lookup_rotating/{n}"),
            op_block(move || {
                k = (k + 1) % rotating.len();
                black_box(router.applies_to(black_box(&rotating[k])));
            }),
        ));
        blocks.push((format!("call/{n}"), call_block(layer.layer(Noop), n / 2)));
    }
    let (bearer, mut p) = (Bearer::new("t").unwrap(), parts(0));
    blocks.push(("authorize/bearer".to_owned(), op_block(move || authorize_once(&bearer, &mut p))));
    let boxed = AuthLayer::new(BoxAuthenticator::once(Bearer::new("t").unwrap())).layer(Noop);
    blocks.push(("call/boxed_bearer".to_owned(), call_block(boxed, 0)));
    let plain = AuthLayer::new(Bearer::new("t").unwrap()).layer(Noop);
    blocks.push(("call/bearer".to_owned(), call_block(plain, 0)));
    blocks
}

/// Heap allocations per operation of every variant but `insert/*`: `CALLS` operations after
/// one warm-up block, counted by the global allocator between `prepare` and the end of `run`.
fn print_allocations() {
    println!("heap allocations per operation ({CALLS} operations after a warm-up block):");
    println!("  {:<28} {:>12} {:>12}", "variant", "allocs/op", "bytes/op");
    for (name, mut block) in blocks(None) {
        (block.prepare)();
        (block.run)();
        (block.prepare)();
        let region = Region::new(GLOBAL);
        (block.run)();
        let change = region.change();
        println!(
            "  {name:<28} {:>12.3} {:>12.1}",
            change.allocations as f64 / CALLS as f64,
            change.bytes_allocated as f64 / CALLS as f64
        );
    }
    println!();
}

/// Times every variant round-robin for `rounds` rounds (after one warm-up round) and prints the
/// median ns per operation. With `only`, keeps that variant alone (for callgrind).
fn print_interleaved(rounds: usize, only: Option<&str>) {
    let mut blocks = blocks(only);
    if let Some(only) = only {
        blocks.retain(|(name, _)| name == only);
        assert!(!blocks.is_empty(), "no variant named {only:?}");
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); blocks.len()];
    for round in 0..=rounds {
        for ((_, block), samples) in blocks.iter_mut().zip(&mut samples) {
            (block.prepare)();
            let ns = timed(&mut block.run);
            if round > 0 {
                samples.push(ns);
            }
        }
    }
    println!("interleaved: {rounds} rounds x {CALLS} operations, median ns per operation:");
    for ((name, _), samples) in blocks.iter().zip(&mut samples) {
        samples.sort_by(f64::total_cmp);
        println!("  {name:<28} {:>8.1}", samples[samples.len() / 2]);
    }
    println!();
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("router");
    for n in [1, 100, 10_000] {
        let layer = router(n);
        let target = n / 2;
        let hit = parts(target);
        let router = layer.router().clone();
        assert!(router.applies_to(&hit));
        group.bench_function(format!("lookup/{n}"), |b| b.iter(|| router.applies_to(black_box(&hit))));

        let mut p = parts(target);
        group.bench_function(format!("authorize/{n}"), |b| b.iter(|| authorize_once(&*router, &mut p)));

        let map: OriginMap<usize> = (0..n).map(|i| (origin(i).parse::<Origin>().unwrap(), i)).collect();
        group.bench_function(format!("origin_map/{n}"), |b| b.iter(|| map.get_for_uri(black_box(&hit.uri)).copied()));

        let rotating: Vec<Parts> = (0..n.min(1024)).map(|i| parts(i * (n / n.min(1024)))).collect();
        let mut k = 0;
        group.bench_function(format!("lookup_rotating/{n}"), |b| {
            b.iter(|| {
                k = (k + 1) % rotating.len();
                router.applies_to(black_box(&rotating[k]))
            })
        });

        let mut svc = layer.layer(Noop);
        group.bench_function(format!("call/{n}"), |b| {
            b.iter_batched(
                || {
                    empty_sink();
                    request(target)
                },
                |req| drive(&mut svc, req),
                BatchSize::SmallInput,
            )
        });

        group.bench_function(format!("insert/{n}"), |b| {
            b.iter(|| {
                router.insert("https://new.example", Bearer::new("t").unwrap()).unwrap();
                router.remove("https://new.example").unwrap()
            })
        });
    }
    let (bearer, mut p) = (Bearer::new("token-0").unwrap(), parts(0));
    group.bench_function("authorize/bearer", |b| b.iter(|| authorize_once(&bearer, &mut p)));
    let mut boxed = AuthLayer::new(BoxAuthenticator::once(Bearer::new("token-0").unwrap())).layer(Noop);
    group.bench_function("call/boxed_bearer", |b| {
        b.iter_batched(
            || {
                empty_sink();
                request(0)
            },
            |req| drive(&mut boxed, req),
            BatchSize::SmallInput,
        )
    });
    let mut plain = AuthLayer::new(Bearer::new("token-0").unwrap()).layer(Noop);
    group.bench_function("call/bearer", |b| {
        b.iter_batched(
            || {
                empty_sink();
                request(0)
            },
            |req| drive(&mut plain, req),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// `ROUTER_ONLY=<variant>` runs that variant alone, 11 blocks of `CALLS` operations, and exits:
/// under `valgrind --tool=callgrind` the inclusive count of `router::timed` divided by 22,000 is
/// its instructions per operation (see BENCHMARKS.md).
fn main() {
    if let Ok(only) = std::env::var("ROUTER_ONLY") {
        print_interleaved(10, Some(&only));
        return;
    }
    print_memory();
    print_allocations();
    print_interleaved(ROUNDS, None);
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
