//! The engine with in-process services: body types, retries, replay limits, waiting, errors.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_auth::{
    Action, AllOf, ApiKey, AuthLayer, AuthRequest, Authenticator, Authorize, Basic, Bearer, BodyView, Error, FirstOf,
    NoWait, Once, Replay, ReplayBody,
};

/// A body type of our own, standing in for tonic's: the service below accepts nothing else.
#[derive(Debug, Default)]
struct OnlyBody(Option<Bytes>);

impl Body for OnlyBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
}

#[derive(Clone)]
struct OnlyOneBodyType;

impl Service<Request<OnlyBody>> for OnlyOneBodyType {
    type Response = Response<String>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Response<String>, std::io::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<OnlyBody>) -> Self::Future {
        let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        std::future::ready(Ok(Response::new(auth)))
    }
}

#[tokio::test]
async fn static_schemes_keep_the_body_type_and_the_error_type() {
    // Compiles only if the request body type is passed through unchanged, and the error type
    // is the inner service's own (std::io::Error here).
    let svc = ServiceBuilder::new().layer(AuthLayer::bearer("tok").unwrap()).service(OnlyOneBodyType);
    let res: Result<Response<String>, std::io::Error> = svc.oneshot(Request::new(OnlyBody::default())).await;
    assert_eq!(res.unwrap().into_body(), "Bearer tok");
}

#[tokio::test]
async fn caller_set_authorization_wins_and_headers_are_sensitive() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let inner = tower::service_fn(move |req: Request<Empty<Bytes>>| {
        let v = req.headers()["authorization"].clone();
        s.lock().unwrap().push(v);
        async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
    });
    let svc = ServiceBuilder::new().layer(AuthLayer::basic("alice", "pw").unwrap()).service(inner);
    let mut req = Request::new(Empty::new());
    req.headers_mut().insert("authorization", HeaderValue::from_static("Token mine"));
    svc.clone().oneshot(req).await.unwrap();
    svc.oneshot(Request::new(Empty::new())).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], "Token mine");
    assert_eq!(seen[1], "Basic YWxpY2U6cHc=");
    assert!(seen[1].is_sensitive());
}

/// A challenge scheme for tests: sends `x-try: N`, retries on 401 while N < max.
struct Retrier {
    max: u32,
}

impl Authenticator for Retrier {
    type Mode = Replay;
    type Error = Infallible;
    type State = u32;
    type Wait = NoWait<Infallible>;
    fn authorize(&self, req: &mut AuthRequest<'_>, n: &mut u32) -> Result<Authorize<Self::Wait>, Infallible> {
        req.headers_mut().insert("x-try", HeaderValue::from(*n));
        Ok(Authorize::Done)
    }
    fn on_response(&self, _: &http::request::Parts, res: &http::response::Parts, n: &mut u32) -> Action {
        if res.status == StatusCode::UNAUTHORIZED && *n < self.max {
            *n += 1;
            Action::Retry
        } else {
            Action::Done
        }
    }
}

/// A server that answers 401 until it sees `x-try: accept_at`, recording every body it reads.
fn challenging_server(
    accept_at: u32,
    bodies: Arc<Mutex<Vec<Bytes>>>,
) -> impl Service<Request<ReplayBody<Full<Bytes>>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
        let bodies = bodies.clone();
        async move {
            let n: u32 = req.headers()["x-try"].to_str().unwrap().parse().unwrap();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            bodies.lock().unwrap().push(body);
            let status = if n >= accept_at { 200 } else { 401 };
            Ok::<_, Infallible>(
                Response::builder().status(status).body(Full::new(Bytes::from_static(b"challenge body"))).unwrap(),
            )
        }
    })
}

#[tokio::test]
async fn retry_replays_the_same_body() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let svc =
        ServiceBuilder::new().layer(AuthLayer::new(Retrier { max: 1 })).service(challenging_server(1, bodies.clone()));
    let res =
        svc.oneshot(Request::post("http://h/").body(Full::new(Bytes::from_static(b"payload"))).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(*bodies.lock().unwrap(), vec![Bytes::from_static(b"payload"); 2]);
}

#[tokio::test]
async fn second_401_goes_back_unchanged_after_exactly_two_exchanges() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let svc =
        ServiceBuilder::new().layer(AuthLayer::new(Retrier { max: 1 })).service(challenging_server(9, bodies.clone()));
    let res = svc.oneshot(Request::post("http://h/").body(Full::new(Bytes::from_static(b"x"))).unwrap()).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "challenge body");
    assert_eq!(bodies.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn engine_caps_exchanges_whatever_the_scheme_asks() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(Retrier { max: 100 }))
        .service(challenging_server(1000, bodies.clone()));
    let res = svc.oneshot(Request::get("http://h/").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(bodies.lock().unwrap().len() as u32, tower_auth::MAX_EXCHANGES);
}

#[tokio::test]
async fn body_over_the_limit_returns_the_challenge_unchanged() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(Retrier { max: 1 }).body_limit(4))
        .service(challenging_server(1, bodies.clone()));
    let res = svc
        .oneshot(Request::post("http://h/").body(Full::new(Bytes::from_static(b"too long"))).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "never resent with a truncated body");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "challenge body", "challenge body untouched");
    assert_eq!(*bodies.lock().unwrap(), vec![Bytes::from_static(b"too long")]);
}

/// A scheme whose credentials arrive later (like an OAuth2 token being fetched), and which can fail.
struct Later {
    token: Arc<Mutex<Option<&'static str>>>,
    fetches: Arc<AtomicUsize>,
    fail: bool,
}

impl Authenticator for Later {
    type Mode = Once;
    type Error = Error;
    type State = ();
    type Wait = Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send>>;
    fn authorize(&self, req: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Error> {
        if let Some(t) = *self.token.lock().unwrap() {
            req.headers_mut().insert("authorization", HeaderValue::from_static(t));
            return Ok(Authorize::Done);
        }
        let (token, fetches, fail) = (self.token.clone(), self.fetches.clone(), self.fail);
        Ok(Authorize::Wait(Box::pin(async move {
            tokio::task::yield_now().await;
            fetches.fetch_add(1, Ordering::SeqCst);
            if fail {
                return Err(Error::scheme("token endpoint answered 503"));
            }
            *token.lock().unwrap() = Some("Bearer fetched");
            Ok(())
        })))
    }
}

#[tokio::test]
async fn waiting_scheme_sends_after_credentials_arrive() {
    let later = Later { token: Default::default(), fetches: Default::default(), fail: false };
    let fetches = later.fetches.clone();
    let svc = ServiceBuilder::new().layer(AuthLayer::new(later)).service(OnlyOneBodyType);
    let res = svc.clone().oneshot(Request::new(OnlyBody::default())).await.unwrap();
    assert_eq!(res.into_body(), "Bearer fetched");
    let res = svc.oneshot(Request::new(OnlyBody::default())).await.unwrap();
    assert_eq!(res.into_body(), "Bearer fetched");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn failing_scheme_gives_a_typed_error() {
    let later = Later { token: Default::default(), fetches: Default::default(), fail: true };
    let svc = ServiceBuilder::new().layer(AuthLayer::new(later)).service(OnlyOneBodyType);
    let err: Error = svc.oneshot(Request::new(OnlyBody::default())).await.unwrap_err();
    assert!(err.is_scheme());
    // Display names what happened; the cause is the source, printed once by error reports.
    assert_eq!(err.to_string(), "the authentication scheme could not produce credentials");
    let source = std::error::Error::source(&err).expect("the cause is kept");
    assert!(source.to_string().contains("503"), "{source}");
    assert!(!err.to_string().contains("503"), "the cause is not repeated in Display: {err}");
}

#[tokio::test]
async fn inner_errors_are_wrapped_when_the_scheme_can_fail() {
    let later = Later { token: Arc::new(Mutex::new(Some("Bearer x"))), fetches: Default::default(), fail: false };
    let inner = tower::service_fn(|_: Request<Empty<Bytes>>| async {
        Err::<Response<Empty<Bytes>>, _>(std::io::Error::other("connection refused"))
    });
    let err = ServiceBuilder::new()
        .layer(AuthLayer::new(later))
        .service(inner)
        .oneshot(Request::new(Empty::new()))
        .await
        .unwrap_err();
    assert!(err.is_inner());
    assert!(std::error::Error::source(&err).unwrap().to_string().contains("connection refused"));
}

/// A scheme that wants to hash the body before sending (Digest auth-int does).
struct Hashing;

impl Authenticator for Hashing {
    type Mode = Replay;
    type Error = Infallible;
    type State = ();
    type Wait = NoWait<Infallible>;
    fn authorize(&self, req: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Infallible> {
        match req.body() {
            BodyView::Unavailable => Ok(Authorize::NeedBody),
            BodyView::Empty => {
                req.headers_mut().insert("x-len", HeaderValue::from(0));
                Ok(Authorize::Done)
            }
            BodyView::Buffered(chunks) => {
                let len: usize = chunks.iter().map(Bytes::len).sum();
                req.headers_mut().insert("x-len", HeaderValue::from(len));
                Ok(Authorize::Done)
            }
        }
    }
}

#[tokio::test]
async fn need_body_buffers_before_sending() {
    let inner = tower::service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
        let len = req.headers()["x-len"].to_str().unwrap().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(format!("{len}:{}", body.len())))
    });
    let svc = ServiceBuilder::new().layer(AuthLayer::new(Hashing)).service(inner);
    let res = svc.clone().oneshot(Request::new(Full::new(Bytes::from_static(b"12345")))).await.unwrap();
    assert_eq!(res.into_body(), "5:5");
    let res = svc.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
    assert_eq!(res.into_body(), "0:0");
}

#[tokio::test]
async fn all_of_sends_both_first_of_sends_one() {
    let inner = tower::service_fn(|req: Request<Empty<Bytes>>| async move {
        let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        Ok::<_, Infallible>(Response::new(format!("{}|{}", h("x-api-key"), h("authorization"))))
    });
    let both = AllOf::new(ApiKey::header("k").unwrap(), Bearer::new("t").unwrap());
    let res = ServiceBuilder::new().layer(AuthLayer::new(both)).service(inner).oneshot(Request::new(Empty::new()));
    assert_eq!(res.await.unwrap().into_body(), "k|Bearer t");
    let one = FirstOf::new(ApiKey::header("k").unwrap(), Bearer::new("t").unwrap());
    let res = ServiceBuilder::new().layer(AuthLayer::new(one)).service(inner).oneshot(Request::new(Empty::new()));
    assert_eq!(res.await.unwrap().into_body(), "k|");
}

#[tokio::test]
async fn query_api_key_keeps_the_rest_of_the_uri() {
    let inner = tower::service_fn(|req: Request<Empty<Bytes>>| async move {
        Ok::<_, Infallible>(Response::new(req.uri().to_string()))
    });
    let svc = ServiceBuilder::new().layer(AuthLayer::api_key_query("s e/c").unwrap()).service(inner);
    let req = Request::get("https://h.example:8443/a%20b/c?x=%41&y&api_key=old#frag").body(Empty::new()).unwrap();
    let uri = svc.oneshot(req).await.unwrap().into_body();
    assert_eq!(uri, "https://h.example:8443/a%20b/c?x=%41&y&api_key=s%20e%2Fc");
}

fn netrc_auth(password: &str) -> tower_auth::NetrcAuth {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netrc");
    std::fs::write(&path, format!("machine h login u password {password}\n")).unwrap();
    tower_auth::NetrcAuth::from_path(&path).unwrap()
}

#[test]
fn no_secret_in_debug_or_errors() {
    let secrets = ["s3cretpw", "tok3nvalue", "ap1keyvalue"];
    let debug = [
        format!("{:?}", Basic::new("alice", secrets[0]).unwrap()),
        format!("{:?}", AuthLayer::basic("alice", secrets[0]).unwrap()),
        format!("{:?}", Basic::proxy("alice", secrets[0]).unwrap()),
        format!("{:?}", Bearer::new(secrets[1]).unwrap()),
        format!("{:?}", AuthLayer::bearer(secrets[1]).unwrap()),
        format!("{:?}", ApiKey::header(secrets[2]).unwrap()),
        format!("{:?}", ApiKey::query(secrets[2]).unwrap()),
        format!("{:?}", tower_auth::HeaderCredential::new("x-token", secrets[1]).unwrap()),
        format!("{:?}", tower_auth::Secret::new(secrets[0])),
        format!("{:?}", AllOf::new(Bearer::new(secrets[1]).unwrap(), ApiKey::query(secrets[2]).unwrap())),
        format!("{:?}", FirstOf::new(Basic::new("u", secrets[0]).unwrap(), ApiKey::header(secrets[2]).unwrap())),
        format!("{:?}", tower_auth::Digest::new("alice", secrets[0]).unwrap()),
        format!("{:?}", AuthLayer::guess("alice", secrets[0]).unwrap()),
        format!("{:?}", AuthLayer::proxy_digest("alice", secrets[0]).unwrap()),
        format!("{:?}", tower_auth::BoxAuthenticator::new(Bearer::new(secrets[1]).unwrap())),
        format!(
            "{:?}",
            AuthLayer::route()
                .origin("https://a.example", Basic::new("u", secrets[0]).unwrap())
                .unwrap()
                .origin("https://b.example", tower_auth::Digest::new("u", secrets[0]).unwrap())
                .unwrap()
                .default(ApiKey::query(secrets[2]).unwrap())
                .build()
        ),
        format!("{:?}", tower_auth::UrlCredentials::new()),
        format!("{:?}", netrc_auth(secrets[0])),
        format!(
            "{:?}",
            tower_auth::netrc::Netrc::parse(&format!("machine h login u password {}", secrets[0])).unwrap()
        ),
        format!("{:?}", tower_auth::testing::RequireLayer::basic("r", "u", secrets[0])),
        format!("{:?}", tower_auth::testing::RequireLayer::bearer("r", secrets[1])),
        format!("{:?}", tower_auth::testing::RequireLayer::digest("r", "u", secrets[0])),
    ];
    let errors = [
        Basic::new("a:b", secrets[0]).unwrap_err().to_string(),
        Basic::new("alice", format!("{}\n", secrets[0])).unwrap_err().to_string(),
        Bearer::new(format!("{}\r\n", secrets[1])).unwrap_err().to_string(),
        ApiKey::header(format!("{}\u{7f}", secrets[2])).unwrap_err().to_string(),
        tower_auth::HeaderCredential::new("x", &format!("\n{}", secrets[1])).unwrap_err().to_string(),
        tower_auth::Digest::new("alice", format!("{}\u{7}", secrets[0])).unwrap_err().to_string(),
        tower_auth::netrc::Netrc::parse(&format!("machine h login u password {} bogus", secrets[0]))
            .unwrap_err()
            .to_string(),
        AuthLayer::route().origin("https://u:pw@a.example", Bearer::new(secrets[1]).unwrap()).unwrap_err().to_string(),
    ];
    for text in debug.iter().chain(errors.iter()) {
        for s in secrets {
            assert!(!text.contains(s), "secret leaked in {text:?}");
        }
    }
    // Types that show a credential field show it redacted; the others (router, boxed schemes,
    // netrc scheme) show no credential at all, which the loop above checks.
    assert!(debug[..14].iter().all(|d| d.contains("redacted")), "{debug:?}");
}

#[tokio::test]
async fn proxy_credentials_never_go_into_a_tunnel() {
    let inner = tower::service_fn(|req: Request<Empty<Bytes>>| async move {
        Ok::<_, Infallible>(Response::new(req.headers().contains_key("proxy-authorization").to_string()))
    });
    let svc = ServiceBuilder::new().layer(AuthLayer::proxy_basic("alice", "pw").unwrap()).service(inner);
    let sent = |uri: &'static str| svc.clone().oneshot(Request::get(uri).body(Empty::new()).unwrap());
    assert_eq!(sent("http://origin.example/").await.unwrap().into_body(), "true", "absolute-form through the proxy");
    assert_eq!(sent("https://origin.example/").await.unwrap().into_body(), "false", "https goes through a tunnel");
    let inner = tower::service_fn(|req: Request<ReplayBody<Empty<Bytes>>>| async move {
        let res = Response::builder().status(407).header("proxy-authenticate", r#"Digest realm="p", nonce="n""#);
        Ok::<_, Infallible>(res.body(req.headers().contains_key("proxy-authorization").to_string()).unwrap())
    });
    let svc = ServiceBuilder::new().layer(AuthLayer::proxy_digest("alice", "pw").unwrap()).service(inner);
    let res = svc.oneshot(Request::get("https://origin.example/").body(Empty::new()).unwrap()).await.unwrap();
    assert_eq!(res.into_body(), "false");
}

// ---------------------------------------------------------------------------------------------
// Engine v2: responses observed by every scheme, waits that fail closed, readiness released.

/// A token source that keeps the caller's body type (never replays) and learns from responses:
/// a rejected token (`401`, or gRPC's `grpc-status: 16`) is dropped and the next one used.
struct Rotating {
    tokens: &'static [&'static str],
    current: AtomicUsize,
    observed: AtomicUsize,
}

impl Authenticator for Rotating {
    type Mode = Once;
    type Error = Infallible;
    type State = usize; // the index of the token this request carries
    type Wait = NoWait<Infallible>;

    fn authorize(&self, req: &mut AuthRequest<'_>, sent: &mut usize) -> Result<Authorize<Self::Wait>, Infallible> {
        *sent = self.current.load(Ordering::SeqCst);
        let value = HeaderValue::from_static(self.tokens[*sent % self.tokens.len()]);
        req.set_credential(&http::header::AUTHORIZATION, &value);
        Ok(Authorize::Done)
    }

    fn observes_responses(&self) -> bool {
        true
    }

    fn on_response(&self, _: &http::request::Parts, res: &http::response::Parts, sent: &mut usize) -> Action {
        self.observed.fetch_add(1, Ordering::SeqCst);
        if tower_auth::credentials_rejected(res) {
            // Compare, then swap: only the token this request carried is invalidated.
            let _ = self.current.compare_exchange(*sent, *sent + 1, Ordering::SeqCst, Ordering::SeqCst);
        }
        Action::Retry // ignored: the scheme cannot replay; the caller gets the response
    }
}

/// Accepts only `OnlyBody` (as tonic's `Channel` accepts only its own body type); rejects
/// "Bearer old" with 401 on `/http` and with a trailers-only gRPC answer elsewhere.
#[derive(Clone)]
struct Picky(Arc<AtomicUsize>);

impl Service<Request<OnlyBody>> for Picky {
    type Response = Response<String>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Response<String>, std::io::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<OnlyBody>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let mut res = Response::new(auth.clone());
        if auth != "Bearer new" {
            if req.uri().path() == "/http" {
                *res.status_mut() = StatusCode::UNAUTHORIZED;
            } else {
                res.headers_mut().insert("grpc-status", HeaderValue::from_static("16"));
            }
        }
        std::future::ready(Ok(res))
    }
}

#[tokio::test]
async fn a_scheme_that_keeps_the_body_type_observes_rejections_and_never_replays() {
    for path in ["/http", "/grpc.Service/Method"] {
        let calls = Arc::new(AtomicUsize::new(0));
        let scheme = Arc::new(Rotating {
            tokens: &["Bearer old", "Bearer new"],
            current: AtomicUsize::new(0),
            observed: AtomicUsize::new(0),
        });
        let svc = ServiceBuilder::new().layer(AuthLayer::from_arc(scheme.clone())).service(Picky(calls.clone()));
        // Compiles only because the body type passes through: `Picky` takes `OnlyBody` only.
        let first = svc.clone().oneshot(Request::get(path).body(OnlyBody::default()).unwrap()).await.unwrap();
        assert_eq!(first.body(), "Bearer old");
        assert!(tower_auth::credentials_rejected(&first.into_parts().0), "{path}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{path}: a scheme that cannot replay is never retried");
        let second = svc.oneshot(Request::get(path).body(OnlyBody::default()).unwrap()).await.unwrap();
        assert_eq!(second.status(), 200, "{path}");
        assert_eq!(second.body(), "Bearer new", "{path}: the rejected token is not sent again");
        assert!(second.headers().get("grpc-status").is_none());
        assert_eq!(scheme.observed.load(Ordering::SeqCst), 2, "{path}: every response is shown");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{path}");
    }
}

/// A scheme whose credentials need several waits before they are ready, or never come in time.
struct Slow {
    waits_needed: usize,
    waited: Arc<AtomicUsize>,
    give_up_after: Option<std::time::Duration>,
}

impl Authenticator for Slow {
    type Mode = Once;
    type Error = Error;
    type State = ();
    type Wait = Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send>>;

    fn authorize(&self, req: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Error> {
        if let Some(limit) = self.give_up_after {
            // A credential source that never answers, bounded by the scheme's own timeout.
            return Ok(Authorize::Wait(Box::pin(async move {
                match tokio::time::timeout(limit, std::future::pending::<()>()).await {
                    Ok(()) => Ok(()),
                    Err(elapsed) => Err(Error::timeout(elapsed)),
                }
            })));
        }
        if self.waited.load(Ordering::SeqCst) < self.waits_needed {
            let waited = self.waited.clone();
            return Ok(Authorize::Wait(Box::pin(async move {
                tokio::task::yield_now().await;
                waited.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })));
        }
        req.headers_mut().insert("authorization", HeaderValue::from_static("Bearer finally"));
        Ok(Authorize::Done)
    }
}

#[tokio::test]
async fn waits_are_not_counted_the_request_leaves_only_with_its_credentials() {
    // Ten waits (the old engine gave up after three and sent the request naked).
    let waited = Arc::new(AtomicUsize::new(0));
    let scheme = Slow { waits_needed: 10, waited: waited.clone(), give_up_after: None };
    let svc = ServiceBuilder::new().layer(AuthLayer::new(scheme)).service(OnlyOneBodyType);
    let res = svc.oneshot(Request::new(OnlyBody::default())).await.unwrap();
    assert_eq!(res.into_body(), "Bearer finally");
    assert_eq!(waited.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_times_out_fails_closed_with_a_typed_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let scheme =
        Slow { waits_needed: 0, waited: Default::default(), give_up_after: Some(std::time::Duration::from_secs(30)) };
    let svc = ServiceBuilder::new().layer(AuthLayer::new(scheme)).service(Picky(calls.clone()));
    let started = tokio::time::Instant::now();
    let err = svc.oneshot(Request::new(OnlyBody::default())).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.to_string(), "credentials were not ready in time; the request was not sent");
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(30), "bounded by the scheme's own timeout");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");
}

/// Waits, for requests to `/slow`, until `gate` opens; other requests go at once.
struct Gated<M> {
    gate: Arc<tokio::sync::Notify>,
    mode: std::marker::PhantomData<M>,
}

impl<M: tower_auth::engine::BodyMode> Authenticator for Gated<M> {
    type Mode = M;
    type Error = Infallible;
    type State = bool;
    type Wait = Pin<Box<dyn std::future::Future<Output = Result<(), Infallible>> + Send>>;

    fn authorize(&self, req: &mut AuthRequest<'_>, waited: &mut bool) -> Result<Authorize<Self::Wait>, Infallible> {
        if req.uri().path() == "/slow" && !*waited {
            *waited = true;
            let gate = self.gate.clone();
            return Ok(Authorize::Wait(Box::pin(async move {
                gate.notified().await;
                Ok(())
            })));
        }
        req.headers_mut().insert("authorization", HeaderValue::from_static("Bearer t"));
        Ok(Authorize::Done)
    }
}

async fn waiting_holds_no_permit<M, B>(body: fn() -> B)
where
    M: tower_auth::engine::BodyMode,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
    tower_auth::Auth<
        tower::limit::ConcurrencyLimit<
            tower::util::BoxCloneSyncService<Request<M::Body<B>>, Response<String>, Infallible>,
        >,
        Gated<M>,
    >: Service<Request<B>, Response = Response<String>, Error = Infallible> + Clone + Send + 'static,
    <tower_auth::Auth<
        tower::limit::ConcurrencyLimit<
            tower::util::BoxCloneSyncService<Request<M::Body<B>>, Response<String>, Infallible>,
        >,
        Gated<M>,
    > as Service<Request<B>>>::Future: Send,
    M::Body<B>: Send + 'static,
{
    let gate = Arc::new(tokio::sync::Notify::new());
    let inner = tower::util::BoxCloneSyncService::new(tower::service_fn(|req: Request<M::Body<B>>| async move {
        Ok::<_, Infallible>(Response::new(format!("{} {:?}", req.uri().path(), req.headers().get("authorization"))))
    }));
    let limited = tower::limit::ConcurrencyLimit::new(inner, 1);
    let mut svc = ServiceBuilder::new()
        .layer(AuthLayer::new(Gated::<M> { gate: gate.clone(), mode: std::marker::PhantomData }))
        .service(limited);

    // The slow request takes the only permit in poll_ready, then waits for its credentials.
    svc.ready().await.unwrap();
    let slow = tokio::spawn(svc.call(Request::get("/slow").body(body()).unwrap()));
    tokio::task::yield_now().await;
    assert!(!slow.is_finished());

    // Meanwhile another request gets the permit and its answer.
    let quick = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        svc.clone().oneshot(Request::get("/quick").body(body()).unwrap()).await
    })
    .await
    .expect("a waiting request must not hold the ConcurrencyLimit permit")
    .unwrap();
    assert_eq!(quick.into_body(), r#"/quick Some("Bearer t")"#);
    assert!(!slow.is_finished());

    // The credentials arrive: the slow request takes the permit again and leaves with them.
    gate.notify_one();
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.into_body(), r#"/slow Some("Bearer t")"#);
}

#[tokio::test]
async fn a_waiting_request_releases_the_inner_readiness_once_mode() {
    waiting_holds_no_permit::<Once, OnlyBody>(OnlyBody::default).await;
}

#[tokio::test]
async fn a_waiting_request_releases_the_inner_readiness_replay_mode() {
    waiting_holds_no_permit::<Replay, Full<Bytes>>(|| Full::new(Bytes::from_static(b"body"))).await;
}

#[tokio::test]
async fn routers_and_boxes_of_schemes_that_never_replay_keep_the_body_type() {
    use tower_auth::BoxAuthenticator;
    // Compiles only because `OnlyOneBodyType` receives the caller's `OnlyBody`.
    let router = AuthLayer::route()
        .origin("https://a.example", Bearer::new("a").unwrap())
        .unwrap()
        .origin("https://b.example", Basic::new("u", "p").unwrap())
        .unwrap()
        .pattern("https://*.c.example", ApiKey::header_named("authorization", "key-c").unwrap())
        .unwrap()
        .build();
    let svc = ServiceBuilder::new().layer(router).service(OnlyOneBodyType);
    let get = |uri: &str| Request::get(uri).body(OnlyBody::default()).unwrap();
    assert_eq!(svc.clone().oneshot(get("https://a.example/")).await.unwrap().into_body(), "Bearer a");
    assert_eq!(svc.clone().oneshot(get("https://b.example/")).await.unwrap().into_body(), "Basic dTpw");
    assert_eq!(svc.clone().oneshot(get("https://x.c.example/")).await.unwrap().into_body(), "key-c");
    assert_eq!(svc.oneshot(get("https://elsewhere.example/")).await.unwrap().into_body(), "");

    let boxed = BoxAuthenticator::once(Bearer::new("boxed").unwrap());
    let svc = ServiceBuilder::new().layer(AuthLayer::new(boxed)).service(OnlyOneBodyType);
    assert_eq!(svc.oneshot(Request::new(OnlyBody::default())).await.unwrap().into_body(), "Bearer boxed");
}

/// Records what `on_response` was shown of the request.
struct HeadProbe {
    needs_head: bool,
    seen: Mutex<Vec<(String, usize)>>,
}

impl Authenticator for HeadProbe {
    type Mode = Once;
    type Error = Infallible;
    type State = ();
    type Wait = NoWait<Infallible>;
    fn authorize(&self, req: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Infallible> {
        req.set_credential(&http::header::AUTHORIZATION, &HeaderValue::from_static("Bearer x"));
        Ok(Authorize::Done)
    }
    fn observes_responses(&self) -> bool {
        true
    }
    fn needs_request_head(&self) -> bool {
        self.needs_head
    }
    fn on_response(&self, req: &http::request::Parts, _: &http::response::Parts, _: &mut ()) -> Action {
        self.seen.lock().unwrap().push((req.uri.to_string(), req.headers.len()));
        Action::Done
    }
}

#[tokio::test]
async fn an_observing_scheme_that_needs_no_request_head_is_shown_method_and_uri_only() {
    for (needs_head, headers) in [(true, 1), (false, 0)] {
        let probe = Arc::new(HeadProbe { needs_head, seen: Mutex::new(Vec::new()) });
        let svc = ServiceBuilder::new().layer(AuthLayer::from_arc(probe.clone())).service(OnlyOneBodyType);
        let req = Request::get("https://api.example/x?q=1").header("x-caller", "1").body(OnlyBody::default()).unwrap();
        assert_eq!(svc.oneshot(req).await.unwrap().into_body(), "Bearer x");
        // The request as the caller made it (its one header), or its method and URI only.
        assert_eq!(*probe.seen.lock().unwrap(), [("https://api.example/x?q=1".to_owned(), headers)]);
    }
}

/// `AuthRequest::replace_body`: a replaying scheme sends a body of its own (after reading the
/// caller's, asked for with `NeedBody`), with its `Content-Length`; a retry starts again from
/// the caller's body; a `Once` scheme cannot replace it and is told so.
#[tokio::test]
async fn a_replaying_scheme_can_replace_the_body_a_once_scheme_cannot() {
    struct Appends<M>(std::marker::PhantomData<fn() -> M>);
    impl<M: tower_auth::engine::BodyMode> Authenticator for Appends<M> {
        type Mode = M;
        type Error = Infallible;
        type State = ();
        type Wait = NoWait<Infallible>;
        fn authorize(&self, req: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Infallible> {
            let mut body = match req.body() {
                BodyView::Buffered(chunks) => chunks.concat(),
                BodyView::Empty => Vec::new(),
                BodyView::Unavailable if M::REPLAY => return Ok(Authorize::NeedBody),
                BodyView::Unavailable => Vec::new(),
            };
            body.extend_from_slice(format!("&attempt={}", req.attempt()).as_bytes());
            let replaced = req.replace_body(Bytes::from(body));
            req.headers_mut().insert("x-replaced", HeaderValue::from_static(if replaced { "yes" } else { "no" }));
            Ok(Authorize::Done)
        }
        fn on_response(&self, _: &http::request::Parts, res: &http::response::Parts, _: &mut ()) -> Action {
            if res.status == StatusCode::UNAUTHORIZED { Action::Retry } else { Action::Done }
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let inner = tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let first = record.lock().unwrap().is_empty();
            record.lock().unwrap().push((parts.headers["content-length"].clone(), body));
            let status = if first { 401 } else { 200 };
            Ok::<_, Infallible>(Response::builder().status(status).body(String::new()).unwrap())
        }
    });
    let svc = ServiceBuilder::new().layer(AuthLayer::new(Appends::<Replay>(Default::default()))).service(inner);
    let res = svc.oneshot(Request::post("http://x/").body(Full::new(Bytes::from_static(b"a=1"))).unwrap()).await;
    assert_eq!(res.unwrap().status(), 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], (HeaderValue::from_static("13"), Bytes::from_static(b"a=1&attempt=0")));
    assert_eq!(seen[1], (HeaderValue::from_static("13"), Bytes::from_static(b"a=1&attempt=1")));

    let once = tower::service_fn(|req: Request<Full<Bytes>>| async move {
        assert_eq!(req.headers()["x-replaced"], "no");
        assert!(!req.headers().contains_key("content-length"));
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(String::from_utf8(body.to_vec()).unwrap()))
    });
    let svc = ServiceBuilder::new().layer(AuthLayer::new(Appends::<Once>(Default::default()))).service(once);
    let res = svc.oneshot(Request::post("http://x/").body(Full::new(Bytes::from_static(b"a=1"))).unwrap()).await;
    assert_eq!(res.unwrap().into_body(), "a=1");
}
