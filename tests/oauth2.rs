//! The OAuth2 token provider and scheme on tokio's paused clock: single flight, background
//! refresh, failures and backoff, invalidation after rejections, the task's end. The token
//! endpoint here is an in-process tower service whose answers each test scripts (the real
//! servers are in `tests/oauth2_idp.rs` and the Glewlwyd peer tests).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_auth::oauth2::{ClientAuth, OAuth2, TokenProvider};
use tower_auth::{AuthLayer, ReplayBody};

/// One scripted answer of the token endpoint.
#[derive(Clone)]
enum Answer {
    /// A token `at-<n>` with this `expires_in` JSON value (and a refresh token `rt-<n>` if asked).
    Token {
        expires_in: serde_json::Value,
        refresh: bool,
    },
    Status(u16, &'static str),
    Error(u16, &'static str),
    /// 429 with `Retry-After: N`.
    TooMany(u64),
}

/// What the token endpoint was sent: its `Authorization` header and its body.
type Seen = (Option<String>, String);

/// A token endpoint: answers from a script (the last answer repeats), counts requests, records
/// what it was sent, and takes `delay` to answer.
#[derive(Clone, Default)]
struct Endpoint {
    script: Arc<Mutex<VecDeque<Answer>>>,
    last: Arc<Mutex<Option<Answer>>>,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    delay: Arc<Mutex<Duration>>,
}

impl Endpoint {
    fn new(answers: impl IntoIterator<Item = Answer>) -> Self {
        let e = Endpoint::default();
        e.script.lock().unwrap().extend(answers);
        e
    }
    fn queue(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().extend(answers);
    }
    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    fn delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }
}

fn token(expires_in: u64) -> Answer {
    Answer::Token { expires_in: expires_in.into(), refresh: false }
}

impl Service<Request<Full<Bytes>>> for Endpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let n = this.requests.fetch_add(1, Ordering::SeqCst) + 1;
            let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
            let body = String::from_utf8(req.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
            this.seen.lock().unwrap().push((auth, body));
            let delay = *this.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            let answer = {
                let mut script = this.script.lock().unwrap();
                let mut last = this.last.lock().unwrap();
                if let Some(next) = script.pop_front() {
                    *last = Some(next);
                }
                last.clone().unwrap_or(token(3600))
            };
            let json = |status: u16, body: String| {
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            };
            Ok(match answer {
                Answer::Token { expires_in, refresh } => {
                    let mut v = serde_json::json!({"access_token": format!("at-{n}"), "token_type": "Bearer", "expires_in": expires_in});
                    if expires_in.is_null() {
                        v.as_object_mut().unwrap().remove("expires_in");
                    }
                    if refresh {
                        v["refresh_token"] = format!("rt-{n}").into();
                    }
                    json(200, v.to_string())
                }
                Answer::Error(status, error) => json(
                    status,
                    serde_json::json!({"error": error, "error_description": format!("{error} said the server")})
                        .to_string(),
                ),
                Answer::TooMany(seconds) => Response::builder()
                    .status(429)
                    .header("retry-after", seconds.to_string())
                    .body(Full::new(Bytes::from_static(b"slow down")))
                    .unwrap(),
                Answer::Status(status, body) => Response::builder()
                    .status(status)
                    .header("content-type", "text/html")
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap(),
            })
        })
    }
}

/// A resource server that accepts the tokens in `valid` and answers 401 otherwise; records the
/// tokens it saw.
#[derive(Clone, Default)]
struct Api {
    valid: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
    insufficient_scope: Arc<std::sync::atomic::AtomicBool>,
}

impl Api {
    fn accept(&self, token: &str) {
        self.valid.lock().unwrap().push(format!("Bearer {token}"));
    }
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
    fn answer(&self, auth: Option<String>) -> Response<Full<Bytes>> {
        let auth = auth.unwrap_or_default();
        self.seen.lock().unwrap().push(auth.clone());
        if self.insufficient_scope.load(Ordering::SeqCst) {
            return Response::builder()
                .status(401)
                .header("www-authenticate", r#"Bearer error="insufficient_scope", scope="admin""#)
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        if self.valid.lock().unwrap().contains(&auth) {
            Response::new(Full::new(Bytes::from(auth)))
        } else {
            Response::builder()
                .status(401)
                .header("www-authenticate", r#"Bearer error="invalid_token""#)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    }
}

fn provider(endpoint: &Endpoint) -> TokenProvider {
    TokenProvider::client_credentials("https://idp.test/token", "svc", "s3cret").build(endpoint.clone()).unwrap()
}

fn client(
    provider: &TokenProvider,
    api: &Api,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = tower_auth::Error, Future: Send>
+ Clone
+ Send
+ 'static {
    let api = api.clone();
    ServiceBuilder::new().layer(AuthLayer::oauth2(provider.clone())).service(tower::service_fn(
        move |req: Request<ReplayBody<Full<Bytes>>>| {
            let api = api.clone();
            async move {
                // The resource server takes a moment: concurrent requests are all in flight.
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, Infallible>(
                    api.answer(req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned())),
                )
            }
        },
    ))
}

fn get() -> Request<Full<Bytes>> {
    Request::get("https://api.test/orders").body(Full::default()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_thousand_callers_at_a_cold_start_cause_one_token_request() {
    let endpoint = Endpoint::new([token(3600)]);
    endpoint.delay(Duration::from_millis(200));
    let api = Api::default();
    api.accept("at-1");
    let p = provider(&endpoint);
    let svc = client(&p, &api);
    let calls: Vec<_> = (0..1000).map(|_| tokio::spawn(svc.clone().oneshot(get()))).collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(endpoint.count(), 1);
    assert_eq!(p.stats().token_requests(), 1);
    assert_eq!(api.seen().len(), 1000);
}

#[tokio::test(start_paused = true)]
async fn the_token_is_replaced_in_the_background_before_it_expires_and_requests_never_wait() {
    let endpoint = Endpoint::new([token(60)]);
    endpoint.delay(Duration::from_millis(200));
    let api = Api::default();
    for t in ["at-1", "at-2", "at-3", "at-4"] {
        api.accept(t);
    }
    let p = provider(&endpoint);
    let svc = client(&p, &api);
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(endpoint.count(), 1);
    // Early expiry 30 s (at most half the lifetime): usable for 30 s; replaced from 24 s (a
    // fifth of the usable time kept for the token request, which takes 200 ms here), minus up to
    // 2.4 s of jitter. Requests every 100 ms for 80 s never wait for a token.
    for _ in 0..800 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = tokio::time::Instant::now();
        let res = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(started.elapsed(), Duration::from_millis(10), "a request waited for a token (the API takes 10 ms)");
    }
    assert_eq!(endpoint.count(), 4, "replaced at about 22-24 s, 43-48 s and 65-72 s");
    let seen = api.seen();
    assert!(seen.contains(&"Bearer at-2".to_owned()) && seen.contains(&"Bearer at-3".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_usable_token_and_the_provider_recovers_by_itself() {
    let endpoint = Endpoint::new([token(100)]);
    let api = Api::default();
    api.accept("at-1");
    // Usable for 70 s (100 - 30), replaced from 45-50 s (half the lifetime, minus jitter).
    let p = TokenProvider::client_credentials("https://idp.test/token", "svc", "s3cret")
        .refresh_fraction(0.5)
        .build(endpoint.clone())
        .unwrap();
    let svc = client(&p, &api);
    svc.clone().oneshot(get()).await.unwrap();
    // From now on the endpoint fails (503 HTML), for a while.
    endpoint.queue([Answer::Status(503, "<html>down</html>")]);
    tokio::time::sleep(Duration::from_secs(65)).await;
    assert!(p.stats().failures() >= 1);
    assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 200, "the usable token is still served");
    // Past its usable time, with the endpoint still down: a typed error, nothing sent.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent_before = api.seen().len();
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert!(err.is_scheme(), "{err:?}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("503") && cause.contains("<html>down</html>"), "{cause}");
    assert_eq!(api.seen().len(), sent_before, "no request left without its token");
    // The server comes back: the background task gets a token without being asked again.
    endpoint.queue([token(100)]);
    api.accept(&format!("at-{}", endpoint.count() + 1));
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(p.current().is_some(), "recovered in the background");
    assert_eq!(svc.oneshot(get()).await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_with_jitter_and_permanent_errors_stop_the_retries() {
    let endpoint = Endpoint::new([Answer::Status(500, "boom")]);
    let p = provider(&endpoint);
    let api = Api::default();
    let svc = client(&p, &api);
    assert!(svc.clone().oneshot(get()).await.unwrap_err().is_scheme());
    // Transient: retried in the background, with growing waits (0.5 s doubling, capped at 60 s).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let in_30s = endpoint.count();
    assert!((4..=8).contains(&in_30s), "{in_30s} token requests in 30 s");
    // Permanent: the server says the client is unknown; retries stop.
    endpoint.queue([Answer::Error(401, "invalid_client")]);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let after = endpoint.count();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(endpoint.count(), after, "no retries after invalid_client");
    // A request now fails at once with the server's error (within the hold-off), or makes one
    // new attempt after it.
    let err = svc.oneshot(get()).await.unwrap_err();
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("invalid_client") && !cause.contains("s3cret"), "{cause}");
    assert!(endpoint.count() <= after + 1);
}

#[tokio::test(start_paused = true)]
async fn fifty_rejections_of_one_token_cause_one_token_request_and_each_request_is_sent_again_once() {
    let endpoint = Endpoint::new([token(3600), token(3600)]);
    endpoint.delay(Duration::from_millis(50));
    let api = Api::default();
    api.accept("at-1");
    let p = provider(&endpoint);
    let svc = client(&p, &api);
    svc.clone().oneshot(get()).await.unwrap();
    // The resource server revokes at-1 and accepts at-2.
    api.valid.lock().unwrap().clear();
    api.accept("at-2");
    let calls: Vec<_> = (0..50).map(|_| tokio::spawn(svc.clone().oneshot(get()))).collect();
    for call in calls {
        let res = call.await.unwrap().unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "Bearer at-2");
    }
    assert_eq!(endpoint.count(), 2, "one new token for fifty rejections");
    assert_eq!(p.stats().invalidations(), 1);
    let seen = api.seen();
    assert_eq!(seen.iter().filter(|s| *s == "Bearer at-1").count(), 51, "each rejected request went once with at-1");
    assert_eq!(seen.iter().filter(|s| *s == "Bearer at-2").count(), 50, "and once more with at-2");
    // The rejected token is never sent again.
    svc.oneshot(get()).await.unwrap();
    assert_eq!(api.seen().last().unwrap(), "Bearer at-2");
}

#[tokio::test(start_paused = true)]
async fn insufficient_scope_does_not_invalidate() {
    let endpoint = Endpoint::new([token(3600)]);
    let api = Api::default();
    api.accept("at-1");
    let p = provider(&endpoint);
    let svc = client(&p, &api);
    svc.clone().oneshot(get()).await.unwrap();
    api.insufficient_scope.store(true, Ordering::SeqCst);
    assert_eq!(svc.oneshot(get()).await.unwrap().status(), 401);
    assert_eq!(endpoint.count(), 1);
    assert_eq!(p.stats().invalidations(), 0);
    assert!(p.current().is_some());
}

#[tokio::test(start_paused = true)]
async fn in_front_of_a_service_that_keeps_its_body_type_grpc_16_invalidates_and_the_next_call_has_a_new_token() {
    let endpoint = Endpoint::new([token(3600), token(3600)]);
    let p = provider(&endpoint);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    // A service that takes `Full<Bytes>` only (as tonic's Channel takes its own body type).
    let grpc = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
        s.lock().unwrap().push(auth.clone());
        let status = if auth == "Bearer at-1" { "16" } else { "0" };
        async move {
            Ok::<_, Infallible>(
                Response::builder().header("grpc-status", status).body(Full::<Bytes>::default()).unwrap(),
            )
        }
    });
    let svc = ServiceBuilder::new().layer(AuthLayer::new(OAuth2::once(p.clone()))).service(grpc);
    let first = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(first.headers()["grpc-status"], "16");
    let second = svc.oneshot(get()).await.unwrap();
    assert_eq!(second.headers()["grpc-status"], "0");
    assert_eq!(*seen.lock().unwrap(), ["Bearer at-1", "Bearer at-2"], "no replay; the next call has the new token");
    assert_eq!(endpoint.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_background_task_ends_with_the_last_handle() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let endpoint = Endpoint::new([token(3600)]);
    let p = provider(&endpoint);
    let api = Api::default();
    api.accept("at-1");
    let svc = client(&p, &api);
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(metrics.num_alive_tasks(), 1, "the refresher runs");
    drop(svc);
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), 1, "a handle is left: it keeps running");
    drop(p);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.num_alive_tasks(), 0, "no task left behind");
}

#[tokio::test(start_paused = true)]
async fn client_secret_basic_encodes_id_and_secret_first_and_post_sends_them_in_the_body() {
    let endpoint = Endpoint::new([token(3600)]);
    let p = TokenProvider::client_credentials("https://idp.test/token", "my client", "s3:cr+t/%&= x")
        .scope("a b")
        .scope("c")
        .audience("https://api.test")
        .resource("https://r1.test")
        .resource("https://r2.test")
        .build(endpoint.clone())
        .unwrap();
    p.token().await.unwrap();
    let (auth, body) = endpoint.seen.lock().unwrap()[0].clone();
    let b64 = auth.unwrap().strip_prefix("Basic ").unwrap().to_owned();
    let pair = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
    assert_eq!(pair, "my+client:s3%3Acr%2Bt%2F%25%26%3D+x", "RFC 6749 §2.3.1: form-urlencoded, then Basic");
    assert!(body.contains("grant_type=client_credentials"), "{body}");
    assert!(body.contains("scope=a+b+c"), "{body}");
    assert!(body.contains("audience=https%3A%2F%2Fapi.test"), "{body}");
    assert!(body.contains("resource=https%3A%2F%2Fr1.test&resource=https%3A%2F%2Fr2.test"), "{body}");
    assert!(!body.contains("client_secret"), "{body}");

    let endpoint = Endpoint::new([token(3600)]);
    let p = TokenProvider::client_credentials("https://idp.test/token", "svc", "pw")
        .client_auth(ClientAuth::Post)
        .build(endpoint.clone())
        .unwrap();
    p.token().await.unwrap();
    let (auth, body) = endpoint.seen.lock().unwrap()[0].clone();
    assert!(auth.is_none());
    assert!(body.contains("client_id=svc") && body.contains("client_secret=pw"), "{body}");
}

#[tokio::test(start_paused = true)]
async fn lifetimes_as_strings_missing_negative_or_absurd_are_handled() {
    for (expires_in, usable_for) in [
        (serde_json::json!("120"), 90u64),
        (serde_json::Value::Null, 3570), // default lifetime: one hour
        (serde_json::json!(-5), 0),      // clamped to 1 s; early expiry at most half of it
        (serde_json::json!(10_000_000_000u64), 366 * 24 * 3600 - 30),
    ] {
        let endpoint = Endpoint::new([Answer::Token { expires_in: expires_in.clone(), refresh: false }]);
        let p = provider(&endpoint);
        let token = p.token().await.unwrap();
        let left = token.expires_at().saturating_duration_since(tokio::time::Instant::now());
        let usable = (0..).map(Duration::from_secs).find(|d| !token.is_usable(tokio::time::Instant::now() + *d));
        assert!(left.as_secs() >= usable_for, "{expires_in}: {left:?}");
        assert!(usable.unwrap().as_secs() <= usable_for + 1, "{expires_in}: usable {usable:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn answers_that_are_not_tokens_are_typed_errors_without_secrets() {
    for (answer, expect) in [
        (Answer::Status(200, "<html>login</html>"), "not an OAuth2 token response"),
        (Answer::Status(502, "<html>bad gateway</html>"), "502"),
        (Answer::Error(400, "invalid_scope"), "invalid_scope"),
    ] {
        let endpoint = Endpoint::new([answer]);
        let p = provider(&endpoint);
        let err = p.token().await.unwrap_err();
        let text = format!("{err} / {:?} / {}", err, std::error::Error::source(&err).unwrap());
        assert!(text.contains(expect), "{text}");
        assert!(!text.contains("s3cret") && !text.contains("at-"), "{text}");
    }
    // A 200 JSON without the token field.
    let endpoint = Endpoint::new([Answer::Token { expires_in: 60.into(), refresh: false }]);
    let p = TokenProvider::client_credentials("https://idp.test/token", "svc", "s3cret")
        .token_field("id_token")
        .build(endpoint)
        .unwrap();
    let err = p.token().await.unwrap_err();
    assert!(std::error::Error::source(&err).unwrap().to_string().contains("no `id_token` field"));
}

#[tokio::test(start_paused = true)]
async fn a_password_grant_refreshes_with_the_newest_refresh_token_and_logs_in_again_when_it_is_refused() {
    let refresh = |expires: u64| Answer::Token { expires_in: expires.into(), refresh: true };
    let endpoint =
        Endpoint::new([refresh(60), refresh(60), refresh(60), Answer::Error(400, "invalid_grant"), refresh(60)]);
    let p = TokenProvider::password("https://idp.test/token", "app", "alice", "pa55")
        .client_secret("app-secret")
        .build(endpoint.clone())
        .unwrap();
    p.token().await.unwrap(); // password → at-1, rt-1
    tokio::time::sleep(Duration::from_secs(31)).await; // refresh with rt-1 → rt-2
    tokio::time::sleep(Duration::from_secs(31)).await; // refresh with rt-2 → rt-3
    tokio::time::sleep(Duration::from_secs(31)).await; // rt-3 refused → password again
    let seen: Vec<String> = endpoint.seen.lock().unwrap().iter().map(|(_, b)| b.clone()).collect();
    assert!(seen[0].contains("grant_type=password") && seen[0].contains("username=alice"), "{}", seen[0]);
    assert!(seen[1].contains("grant_type=refresh_token") && seen[1].contains("refresh_token=rt-1"), "{}", seen[1]);
    assert!(seen[2].contains("refresh_token=rt-2"), "{}", seen[2]);
    assert!(seen[3].contains("refresh_token=rt-3"), "{}", seen[3]);
    assert!(seen[4].contains("grant_type=password"), "{}", seen[4]);
    let refresh_tokens: Vec<&str> =
        seen.iter().filter_map(|b| b.split('&').find_map(|kv| kv.strip_prefix("refresh_token="))).collect();
    let mut unique = refresh_tokens.clone();
    unique.dedup();
    assert_eq!(refresh_tokens, unique, "no refresh token used twice");
    assert!(p.current().is_some());
}

#[tokio::test(start_paused = true)]
async fn the_callers_own_authorization_wins_and_no_token_is_fetched() {
    let endpoint = Endpoint::new([token(3600)]);
    let p = provider(&endpoint);
    let api = Api::default();
    api.valid.lock().unwrap().push("Bearer mine".into());
    let svc = client(&p, &api);
    let mut req = get();
    req.headers_mut().insert("authorization", "Bearer mine".parse().unwrap());
    assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
    assert_eq!(endpoint.count(), 0);
    assert_eq!(api.seen(), ["Bearer mine"]);
}

#[tokio::test(start_paused = true)]
async fn a_slow_token_endpoint_is_bounded_by_the_wait_timeout() {
    let endpoint = Endpoint::new([token(3600)]);
    endpoint.delay(Duration::from_secs(3600));
    let p = TokenProvider::client_credentials("https://idp.test/token", "svc", "s3cret")
        .wait_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build(endpoint.clone())
        .unwrap();
    let api = Api::default();
    let svc = client(&p, &api);
    let started = tokio::time::Instant::now();
    let err = svc.oneshot(get()).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert!(api.seen().is_empty());
    // The token request itself gives up at its own timeout.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(p.stats().failures() >= 1);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test(start_paused = true)]
async fn no_token_secret_or_password_in_trace_logs_debug_or_errors() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let refresh = |expires: u64| Answer::Token { expires_in: expires.into(), refresh: true };
    let endpoint = Endpoint::new([
        refresh(60),
        Answer::Status(500, "<html>oops</html>"),
        refresh(60),
        Answer::Error(400, "invalid_grant"),
        refresh(60),
    ]);
    let p = TokenProvider::password("https://idp.test/token", "app", "alice", "pa55-w0rd")
        .client_secret("cl1ent-s3cret")
        .build(endpoint.clone())
        .unwrap();
    let api = Api::default();
    for n in 1..=6 {
        api.accept(&format!("at-{n}"));
    }
    let svc = client(&p, &api);
    svc.clone().oneshot(get()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await; // refreshes, a failure, invalid_grant, a new login
    api.valid.lock().unwrap().clear(); // every token rejected: invalidation, then a new token
    let _ = svc.clone().oneshot(get()).await;
    let debug = format!("{p:?} {:?} {:?}", p.current(), OAuth2::new(p.clone()));
    let error = {
        let bad = Endpoint::new([Answer::Error(401, "invalid_client")]);
        let p = TokenProvider::client_credentials("https://idp.test/token", "svc", "cl1ent-s3cret").build(bad).unwrap();
        let e = p.token().await.unwrap_err();
        format!("{e} {e:?} {}", std::error::Error::source(&e).unwrap())
    };
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("token request failed"), "the logs say what happened: {logs}");
    let basic = base64::engine::general_purpose::STANDARD.encode("app:cl1ent-s3cret");
    for (what, text) in [("logs", &logs), ("Debug", &debug), ("errors", &error)] {
        for secret in ["pa55-w0rd", "cl1ent-s3cret", "at-1", "at-2", "rt-1", "rt-3", basic.as_str()] {
            assert!(!text.contains(secret), "{secret:?} in the {what}: {text}");
        }
    }
}

/// A store shared by "replicas" (providers in one test), with a lease: a `MemoryStore` behind an
/// async mutex held from `lease` until the lease is given back.
#[derive(Clone, Default)]
struct LeasedStore {
    inner: tower_auth::oauth2::MemoryStore,
    lock: Arc<tokio::sync::Mutex<()>>,
    leases: Arc<AtomicUsize>,
}

impl tower_auth::oauth2::TokenStore for LeasedStore {
    fn load<'a>(
        &'a self,
        key: &'a tower_auth::oauth2::CacheKey,
    ) -> tower_auth::oauth2::StoreFuture<'a, Option<tower_auth::oauth2::StoredToken>> {
        self.inner.load(key)
    }
    fn save<'a>(
        &'a self,
        key: &'a tower_auth::oauth2::CacheKey,
        token: &'a tower_auth::oauth2::StoredToken,
    ) -> tower_auth::oauth2::StoreFuture<'a, ()> {
        self.inner.save(key, token)
    }
    fn lease<'a>(
        &'a self,
        _: &'a tower_auth::oauth2::CacheKey,
    ) -> tower_auth::oauth2::StoreFuture<'a, tower_auth::oauth2::Lease> {
        Box::pin(async move {
            let guard = Arc::clone(&self.lock).lock_owned().await;
            self.leases.fetch_add(1, Ordering::SeqCst);
            Ok(tower_auth::oauth2::Lease::new(move || {
                drop(guard);
                Box::pin(std::future::ready(Ok(())))
            }))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn replicas_sharing_a_leased_store_make_one_token_request_per_expiry() {
    let endpoint = Endpoint::new([token(60)]);
    endpoint.delay(Duration::from_millis(200));
    let store = LeasedStore::default();
    let replicas: Vec<TokenProvider> = (0..4)
        .map(|_| {
            TokenProvider::client_credentials("https://idp.test/token", "svc", "s3cret")
                .store(store.clone())
                .build(endpoint.clone())
                .unwrap()
        })
        .collect();
    // Cold start: every replica wants a token at once; one requests it, the others find it in
    // the store after taking the lease.
    let tokens: Vec<_> = futures_join_all(replicas.iter().map(|p| p.token())).await;
    let first = tokens[0].as_ref().unwrap().header_value().clone();
    for t in &tokens {
        assert_eq!(t.as_ref().unwrap().header_value(), &first);
    }
    assert_eq!(endpoint.count(), 1, "one token request for four replicas");
    // Through two more expiries, in the background: one request each time.
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(endpoint.count(), 1 + 4, "one per replacement: the 60 s token is replaced at about 22-24 s");
    // Every replica holds a usable token: the newest, or the one before it until its own
    // replacement time comes (then it takes the newest from the store instead of requesting).
    let current: std::collections::HashSet<_> =
        replicas.iter().map(|p| p.current().expect("a usable token").header_value().clone()).collect();
    assert!(current.len() <= 2, "{} tokens in use", current.len());
    assert!(store.leases.load(Ordering::SeqCst) >= 4);
}

/// `join_all` without the futures crate: polls every future until all are done.
async fn futures_join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut handles: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in out.iter_mut().zip(handles.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|v| v.unwrap()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_429_is_retried_after_its_retry_after_and_not_before() {
    let endpoint = Endpoint::new([Answer::TooMany(20), token(3600)]);
    let p = provider(&endpoint);
    let err = p.token().await.unwrap_err();
    let cause = std::error::Error::source(&err).unwrap();
    let token_error = cause.downcast_ref::<tower_auth::oauth2::TokenError>().unwrap();
    assert_eq!(token_error.status(), Some(http::StatusCode::TOO_MANY_REQUESTS));
    assert!(!token_error.is_permanent());
    assert_eq!(token_error.retry_after(), Some(Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_secs(19)).await;
    assert_eq!(endpoint.count(), 1, "nothing before Retry-After");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(endpoint.count(), 2, "retried in the background after it");
    assert!(p.current().is_some());
}

#[tokio::test(start_paused = true)]
async fn the_testing_token_mock_and_create_token() {
    use tower_auth::testing::token::{TEST_JWT_KEY, TokenMock, create_token};
    // A custom token per request, replaced in the background like any other.
    let mock = TokenMock::custom(|n| format!("mock-{n}")).lifetime(Duration::from_secs(60));
    let p = mock.provider();
    assert_eq!(p.token().await.unwrap().header_value(), "Bearer mock-1");
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(p.current().unwrap().header_value(), "Bearer mock-2");
    assert_eq!(mock.requests(), 2);
    // A JWT whose `exp` the provider reads when the answer has no `expires_in`.
    let jwt = create_token(Duration::from_secs(120));
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &jwt,
        &jsonwebtoken::DecodingKey::from_secret(TEST_JWT_KEY),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .unwrap()
    .claims;
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 120);
}
