//! The router: lookup and per-request cost with 1, 100 and 10,000 origins, and memory per
//! configured origin.
//!
//! - `lookup/N`: [`Authenticator::applies_to`] on a `Router` with N origins, for one configured
//!   origin: the lock-free table load, the URI's origin key, the hash lookup, the exact
//!   comparison. `lookup_rotating/N` cycles through up to 1,024 different configured origins
//!   (cache misses included).
//! - `authorize/N`: lookup and [`Authenticator::authorize`] with a fresh per-request state (what
//!   the router adds to a request, without the engine around it); `authorize/bearer` is the
//!   Bearer scheme alone.
//! - `call/N`: the whole layer, `poll_ready` + `call` + one `poll` of `Auth<Noop, Router>` with a
//!   Bearer token per origin: lookup, authorise (one header insert) and the engine of a
//!   replaying scheme (the router's mode), driven with a no-op waker. `call/boxed_bearer` is the
//!   same engine and scheme without routing ([`BoxAuthenticator`]), `call/bearer` the plain
//!   static scheme: `call/N - call/boxed_bearer` is what routing adds.
//! - `origin_map/N`: the bare [`OriginMap::get_for_uri`] the router uses, for comparison.
//! - `insert/N`: a runtime [`Router::insert`] + [`Router::remove`] (copy on write of the table).
//!
//! Hosts are `host00000.example` … `host09999.example`: all of one length, since the cost of
//! hashing and comparing a host depends on its length (not on the number of origins).
//!
//! Before criterion runs, the memory per configured origin is printed, measured with a counting
//! global allocator over 10,000 `RouteBuilder::origin` calls.
//!
//! ```text
//! cargo bench --bench router -- --warm-up-time 1 --measurement-time 3
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

/// Always ready, answers at once.
#[derive(Debug, Clone, Copy)]
struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        assert!(req.headers().contains_key("authorization"), "not authorised: {}", req.uri());
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

fn request(i: usize) -> Request<Body> {
    Request::get(format!("https://host{i:05}.example/v1/items?page=2")).body(Body::new()).unwrap()
}

fn parts(i: usize) -> Parts {
    Request::get(format!("https://host{i:05}.example/v1/items?page=2")).body(()).unwrap().into_parts().0
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
type Block = Box<dyn FnMut() -> f64>;

/// A block of `CALLS` whole service calls to origin `i` (requests built outside the timing).
fn call_block<S>(mut svc: S, i: usize) -> Block
where
    S: Service<Request<Body>, Response = Response<Body>> + 'static,
    S::Error: std::fmt::Debug,
{
    let mut requests: Vec<Request<Body>> = Vec::with_capacity(CALLS);
    let mut responses: Vec<Response<Body>> = Vec::with_capacity(CALLS);
    Box::new(move || {
        requests.extend((0..CALLS).map(|_| request(i)));
        let start = Instant::now();
        for req in requests.drain(..) {
            responses.push(drive(&mut svc, req));
        }
        let ns = start.elapsed().as_secs_f64() * 1e9 / CALLS as f64;
        responses.clear();
        ns
    })
}

fn print_interleaved() {
    let time = |mut f: Box<dyn FnMut()>| -> Block {
        Box::new(move || {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e9 / CALLS as f64
        })
    };
    let mut blocks: Vec<(String, Block)> = Vec::new();
    for n in [1, 100, 10_000] {
        let layer = router(n);
        let router = layer.router().clone();
        let hit = parts(n / 2);
        let map: OriginMap<usize> = (0..n).map(|i| (origin(i).parse::<Origin>().unwrap(), i)).collect();
        let uri = hit.uri.clone();
        blocks.push((
            format!("origin_map/{n}"),
            time(Box::new(move || {
                for _ in 0..CALLS {
                    black_box(map.get_for_uri(black_box(&uri)));
                }
            })),
        ));
        let r = router.clone();
        blocks.push((
            format!("lookup/{n}"),
            time(Box::new(move || {
                for _ in 0..CALLS {
                    black_box(r.applies_to(black_box(&hit)));
                }
            })),
        ));
        let (r, mut p) = (router.clone(), parts(n / 2));
        blocks.push((
            format!("authorize/{n}"),
            time(Box::new(move || {
                for _ in 0..CALLS {
                    authorize_once(&*r, &mut p);
                }
            })),
        ));
        let rotating: Vec<Parts> = (0..n.min(1024)).map(|i| parts(i * (n / n.min(1024)))).collect();
        blocks.push((
            format!("lookup_rotating/{n}"),
            time(Box::new(move || {
                for i in 0..CALLS {
                    black_box(router.applies_to(black_box(&rotating[i % rotating.len()])));
                }
            })),
        ));
        blocks.push((format!("call/{n}"), call_block(layer.layer(Noop), n / 2)));
    }
    let (bearer, mut p) = (Bearer::new("t").unwrap(), parts(0));
    blocks.push((
        "authorize/bearer".to_owned(),
        time(Box::new(move || {
            for _ in 0..CALLS {
                authorize_once(&bearer, &mut p);
            }
        })),
    ));
    let boxed = AuthLayer::new(BoxAuthenticator::new(Bearer::new("t").unwrap())).layer(Noop);
    blocks.push(("call/boxed_bearer".to_owned(), call_block(boxed, 0)));
    let plain = AuthLayer::new(Bearer::new("t").unwrap()).layer(Noop);
    blocks.push(("call/bearer".to_owned(), call_block(plain, 0)));
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); blocks.len()];
    for round in 0..=ROUNDS {
        for ((_, block), samples) in blocks.iter_mut().zip(&mut samples) {
            let ns = block();
            if round > 0 {
                samples.push(ns);
            }
        }
    }
    println!("interleaved: {ROUNDS} rounds x {CALLS} operations, median ns per operation:");
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
            b.iter_batched(|| request(target), |req| drive(&mut svc, req), BatchSize::SmallInput)
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
    let mut boxed = AuthLayer::new(BoxAuthenticator::new(Bearer::new("token-0").unwrap())).layer(Noop);
    group.bench_function("call/boxed_bearer", |b| {
        b.iter_batched(|| request(0), |req| drive(&mut boxed, req), BatchSize::SmallInput)
    });
    let mut plain = AuthLayer::new(Bearer::new("token-0").unwrap()).layer(Noop);
    group.bench_function("call/bearer", |b| {
        b.iter_batched(|| request(0), |req| drive(&mut plain, req), BatchSize::SmallInput)
    });
    group.finish();
}

fn main() {
    print_memory();
    print_interleaved();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
