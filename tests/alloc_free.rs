//! The allocation figures the docs state, asserted: no heap allocation on the header paths of the
//! static schemes (Basic, Bearer, API key in a header) through the whole layer, and none in a
//! router lookup or a routed Bearer request, at 1 and 10,000 origins.
//!
//! A counting global allocator (`stats_alloc`) counts every thread of this test binary, so the
//! file holds a single `#[test]`: nothing else runs while it measures (libtest's main thread
//! only waits). Each figure is counted over `CALLS` operations after a warm-up operation
//! (first-use work such as `arc_swap`'s per-thread debt slot or `tracing`'s callsite
//! registration is not per request). The first check proves that the counter sees an
//! allocation, so that the zeros below can fail.

use std::alloc::System;
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::Empty;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service};
use tower_auth::route::Router;
use tower_auth::{AuthLayer, AuthRequest, Authenticator, Authorize, Bearer, BodyView, Once};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Body = Empty<Bytes>;

/// Operations counted per figure.
const CALLS: usize = 1_000;

/// Always ready, answers at once; keeps the request head it received in [`SENT`] (reserved
/// beforehand), so that the test can check what was sent and freeing it is not counted.
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
        SENT.with_borrow_mut(|sent| sent.push(req.into_parts().0));
        ready(Ok(Response::new(Body::new())))
    }
}

thread_local! {
    /// The request heads [`Noop`] received (capacity reserved before counting).
    static SENT: std::cell::RefCell<Vec<Parts>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A typical API request: two headers of its own, so its header map exists already (inserting
/// into an empty `HeaderMap` allocates the map itself, whatever the layer).
fn request(uri: &str) -> Request<Body> {
    Request::get(uri).header("accept", "application/json").header("user-agent", "test/1.0").body(Body::new()).unwrap()
}

/// `poll_ready`, `call` and one `poll`, which must finish it.
fn drive<S>(svc: &mut S, req: Request<Body>) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    match pin!(svc.call(req)).poll(&mut cx) {
        Poll::Ready(res) => res.unwrap(),
        Poll::Pending => panic!("not finished on its first poll"),
    }
}

/// Allocations (count, bytes) made by `CALLS` runs of `op`, after one warm-up run. `setup`
/// builds each run's input outside the counted region; the outputs are dropped outside it too.
fn count<I, O>(mut setup: impl FnMut() -> I, mut op: impl FnMut(I) -> O) -> (usize, usize) {
    drop(op(setup()));
    let inputs: Vec<I> = (0..CALLS).map(|_| setup()).collect();
    let mut outputs: Vec<O> = Vec::with_capacity(CALLS);
    SENT.with_borrow_mut(|sent| {
        sent.clear();
        sent.reserve(CALLS + 1);
    });
    let region = Region::new(GLOBAL);
    for input in inputs {
        outputs.push(op(black_box(input)));
    }
    let change = region.change();
    drop(outputs);
    (change.allocations, change.bytes_allocated)
}

/// Sends `CALLS` requests through `svc` and returns the allocations; checks that every request
/// left with `header`.
fn count_calls<S>(mut svc: S, uri: &str, header: &str) -> (usize, usize)
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Debug,
{
    let counted = count(|| request(uri), |req| drive(&mut svc, req));
    let sent = SENT.with_borrow_mut(std::mem::take);
    assert_eq!(sent.len(), CALLS);
    assert!(sent.iter().all(|p| p.headers.contains_key(header)), "a request left without {header}");
    counted
}

fn origin(i: usize) -> String {
    format!("https://host{i:05}.example")
}

fn router(n: usize) -> AuthLayer<Router<Once>> {
    let mut builder = AuthLayer::route();
    for i in 0..n {
        builder = builder.origin(&origin(i), Bearer::new(format!("token-{i}")).unwrap()).unwrap();
    }
    builder.build()
}

fn parts(uri: &str) -> Parts {
    request(uri).into_parts().0
}

/// Router lookup + Bearer authorize, what the router adds to a request, with a fresh
/// per-request state each time.
fn lookup_and_authorize(router: &Router<Once>, mut parts: Parts) -> Parts {
    assert!(router.applies_to(&parts));
    let mut state = <Router<Once> as Authenticator>::State::default();
    let done = router.authorize(&mut AuthRequest::new(&mut parts, BodyView::Empty, 0), &mut state);
    assert!(matches!(done, Ok(Authorize::Done)));
    drop(state);
    parts
}

#[test]
fn no_allocation_on_header_paths_and_router_lookups() {
    // The counter sees allocations: one `Box` per operation counts as exactly one.
    let (allocs, bytes) = count(|| (), |()| black_box(Box::new(7_u64)));
    assert_eq!((allocs, bytes), (CALLS, CALLS * 8), "the counting allocator does not count");

    let mut failures = Vec::new();
    let mut check = |what: &str, (allocs, bytes): (usize, usize)| {
        if allocs != 0 {
            failures.push(format!("{what}: {allocs} allocations ({bytes} bytes) over {CALLS} operations"));
        }
    };

    // The static schemes, through the whole layer.
    let uri = "https://api.example.com/v1/items?limit=5";
    check(
        "Basic layer call",
        count_calls(AuthLayer::basic("alice", "s3cret").unwrap().layer(Noop), uri, "authorization"),
    );
    check("Bearer layer call", count_calls(AuthLayer::bearer("t0ken-abc").unwrap().layer(Noop), uri, "authorization"));
    check(
        "ApiKey (header) layer call",
        count_calls(AuthLayer::api_key("k3y-abc").unwrap().layer(Noop), uri, "x-api-key"),
    );

    for n in [1, 10_000] {
        let layer = router(n);
        let hit = origin(n / 2) + "/v1/items?page=2";

        // The lookup alone.
        let r = layer.router().clone();
        let probe = parts(&hit);
        check(&format!("Router<Once> lookup, {n} origins"), count(|| (), |()| r.applies_to(black_box(&probe))));

        // Lookup + Bearer authorize, fresh state per request.
        let counted = count(|| parts(&hit), |p| lookup_and_authorize(&r, p));
        check(&format!("Router<Once> lookup + Bearer authorize, {n} origins"), counted);

        // A miss (no route for the origin) allocates nothing either.
        let miss = parts("https://elsewhere.example/");
        check(&format!("Router<Once> lookup miss, {n} origins"), count(|| (), |()| r.applies_to(black_box(&miss))));

        // The routed Bearer request through the whole layer.
        check(&format!("Router<Once> layer call, {n} origins"), count_calls(layer.layer(Noop), &hit, "authorization"));
    }

    assert!(failures.is_empty(), "allocations on paths documented as allocation-free:\n{}", failures.join("\n"));
}
