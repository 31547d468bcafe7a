//! The pre-authorised Digest path: one request through the Digest layer, once the protection
//! space is known (no 401), against Basic in the same run, around an in-process service that
//! answers at once. `cargo bench --bench digest`
//!
//! The figure includes the engine's per-request work for retrying schemes (a copy of the
//! request head kept for a possible retry, the replay handle) and the header computation
//! (H(A2), the response hash, formatting); H(A1) is computed once per protection space.
//!
//! "authorize only" is the header itself: `Digest::authorize` on a copy of a request head, with
//! a fresh `DigestState` dropped after each call as the engine does (so the nonce permit or
//! lease a request takes is given back inside the timed loop), next to `Basic::authorize` on
//! the same copy. Target: at most 1 µs for MD5 and SHA-256.
//!
//! `DIGEST_ONLY=md5|sha256|basic` skips criterion and runs that "authorize only" variant
//! 10,000 times on request heads built beforehand, inside `digest::authorize_all`: under
//! `valgrind --tool=callgrind` its inclusive count divided by 10,000 is the header's
//! instructions per request (see BENCHMARKS.md).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group};
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Service, ServiceBuilder};
use tower_auth::digest::Algorithm;
use tower_auth::digest::DigestState;
use tower_auth::{AuthLayer, AuthRequest, Authenticator, Basic, BodyView, Digest, ReplayBody};

/// Polls a future that completes without waiting (every service here answers at once).
fn ready<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("bench services answer at once"),
    }
}

/// Answers 401 with a Digest challenge until it sees credentials, then 200. Checks nothing
/// else: the figure is the client's cost.
fn server(
    algorithm: Algorithm,
) -> impl Service<Request<ReplayBody<Empty<Bytes>>>, Response = Response<Empty<Bytes>>, Error = Infallible, Future: Send>
+ Clone {
    let challenge = format!(
        r#"Digest realm="bench", nonce="0123456789abcdef", qop="auth", opaque="xyz", algorithm={}"#,
        algorithm.name()
    );
    tower::service_fn(move |req: Request<ReplayBody<Empty<Bytes>>>| {
        let res = if req.headers().contains_key("authorization") {
            Response::new(Empty::new())
        } else {
            Response::builder().status(401).header("www-authenticate", challenge.as_str()).body(Empty::new()).unwrap()
        };
        std::future::ready(Ok::<_, Infallible>(res))
    })
}

fn request() -> Request<Empty<Bytes>> {
    Request::get("http://127.0.0.1:8080/api/v1/items?page=2").body(Empty::new()).unwrap()
}

/// The pre-authorised request through Digest (MD5, SHA-256, SHA-512-256) and through Basic.
fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pre-authorised request");
    for algorithm in [Algorithm::Md5, Algorithm::Sha256, Algorithm::Sha512_256] {
        let mut svc = ServiceBuilder::new()
            .layer(AuthLayer::new(Digest::new("alice", "s3cret").unwrap()))
            .service(server(algorithm));
        let res = ready(svc.call(request())).unwrap(); // learn the protection space
        assert_eq!(res.status(), 200);
        group.bench_function(format!("digest {}", algorithm.name()), |b| {
            b.iter(|| ready(svc.call(request())).unwrap());
        });
    }
    let mut basic =
        ServiceBuilder::new().layer(AuthLayer::basic("alice", "s3cret").unwrap()).service(tower::service_fn(
            |_: Request<Empty<Bytes>>| std::future::ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))),
        ));
    group.bench_function("basic", |b| b.iter(|| ready(basic.call(request())).unwrap()));
    group.finish();

    // The header computation alone: Digest::authorize on a request head, space already known.
    let mut group = c.benchmark_group("authorize only");
    let template = request().into_parts().0;
    for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
        let digest = Arc::new(Digest::new("alice", "s3cret").unwrap());
        let mut svc = ServiceBuilder::new().layer(AuthLayer::from_arc(Arc::clone(&digest))).service(server(algorithm));
        assert_eq!(ready(svc.call(request())).unwrap().status(), 200);
        let authorize = |parts: &mut http::request::Parts| {
            let mut state = DigestState::default();
            digest.authorize(&mut AuthRequest::new(parts, BodyView::Empty, 0), &mut state).unwrap();
            // `state` is dropped here, as the engine drops it after the response.
        };
        let mut parts = clone_head(&template);
        authorize(&mut parts);
        assert!(parts.headers.contains_key("authorization"), "pre-authorised");
        group.bench_function(format!("digest {}", algorithm.name()), |b| {
            b.iter_batched_ref(|| clone_head(&template), authorize, BatchSize::SmallInput)
        });
    }
    let basic = Basic::new("alice", "s3cret").unwrap();
    group.bench_function("basic", |b| {
        b.iter_batched_ref(
            || clone_head(&template),
            |parts| basic.authorize(&mut AuthRequest::new(parts, BodyView::Empty, 0), &mut ()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn clone_head(p: &http::request::Parts) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = p.method.clone();
    parts.uri = p.uri.clone();
    parts.headers = p.headers.clone();
    parts
}

/// Runs `authorize` on every head. Never inlined: its inclusive instruction count under
/// callgrind is the header computation alone (the heads are built and freed outside).
#[inline(never)]
fn authorize_all(heads: &mut [http::request::Parts], mut authorize: impl FnMut(&mut http::request::Parts)) {
    for parts in heads {
        authorize(std::hint::black_box(parts));
    }
}

/// `DIGEST_ONLY`: one "authorize only" variant, `CALLS` times, for callgrind.
fn count_only(only: &str) {
    const CALLS: usize = 10_000;
    let template = request().into_parts().0;
    let mut heads: Vec<_> = (0..CALLS).map(|_| clone_head(&template)).collect();
    let algorithm = match only {
        "md5" => Algorithm::Md5,
        "sha256" => Algorithm::Sha256,
        "basic" => {
            let basic = Basic::new("alice", "s3cret").unwrap();
            authorize_all(&mut heads, |parts| {
                basic.authorize(&mut AuthRequest::new(parts, BodyView::Empty, 0), &mut ()).unwrap();
            });
            assert!(heads.iter().all(|p| p.headers.contains_key("authorization")));
            return;
        }
        other => panic!("DIGEST_ONLY={other:?}: md5, sha256 or basic"),
    };
    let digest = Arc::new(Digest::new("alice", "s3cret").unwrap());
    let mut svc = ServiceBuilder::new().layer(AuthLayer::from_arc(Arc::clone(&digest))).service(server(algorithm));
    assert_eq!(ready(svc.call(request())).unwrap().status(), 200);
    authorize_all(&mut heads, |parts| {
        let mut state = DigestState::default();
        digest.authorize(&mut AuthRequest::new(parts, BodyView::Empty, 0), &mut state).unwrap();
    });
    assert!(heads.iter().all(|p| p.headers.contains_key("authorization")), "pre-authorised");
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(only) = std::env::var("DIGEST_ONLY") {
        count_only(&only);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
