//! httpx's custom authentication flows, all of them, on the one engine: a [`Flow`] scheme reads
//! a response body (`requires_response_body`) and sends a request of its own through the same
//! client (`yield self.build_refresh_request()`) before the caller's request is sent again.
//!
//! The scheme below is httpx's documented refresh example ("Customizing authentication",
//! `MyCustomAuth`), ported: it sends `X-Authentication: <access token>`; on a `401` whose body
//! says the token expired, it posts its refresh token to the refresh endpoint, takes the new
//! tokens from the answer, and the caller's request (body included) goes again. Real sockets: a
//! hyper-util client and an axum server on 127.0.0.1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_auth::engine::Flow;
use tower_auth::testing::TestServer;
use tower_auth::{Action, AuthLayer, AuthRequest, Authenticator, Authorize, NoWait, ReplayBody};

const X_AUTH: HeaderName = HeaderName::from_static("x-authentication");

/// httpx's `MyCustomAuth`.
struct Refreshing {
    /// (access token, refresh token)
    tokens: Mutex<(String, String)>,
    refresh_url: Uri,
}

impl Authenticator for Refreshing {
    type Mode = Flow;
    type Error = std::convert::Infallible;
    type State = ();
    type Wait = NoWait<std::convert::Infallible>;

    fn authorize(&self, req: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Self::Error> {
        // request.headers["X-Authentication"] = self.access_token
        let access = self.tokens.lock().unwrap().0.clone();
        if let Ok(value) = HeaderValue::try_from(access) {
            req.set_credential(&X_AUTH, &value);
        }
        Ok(Authorize::Done)
    }

    fn on_response(&self, _: &Parts, res: &http::response::Parts, _: &mut ()) -> Action {
        // requires_response_body = True, for the 401s it looks at.
        if res.status == StatusCode::UNAUTHORIZED { Action::ReadBody } else { Action::Done }
    }

    fn on_response_body(&self, _: &Parts, _: &http::response::Parts, body: &Bytes, _: &mut ()) -> Action {
        // if response.status_code == 401: refresh_response = yield self.build_refresh_request()
        if body.as_ref() == br#"{"error":"token_expired"}"# { Action::SendOwn } else { Action::Done }
    }

    fn own_request(&self, _: &Parts, _: &mut ()) -> Option<Request<Bytes>> {
        // build_refresh_request
        let refresh = self.tokens.lock().unwrap().1.clone();
        Request::post(self.refresh_url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Bytes::from(format!("grant_type=refresh_token&refresh_token={refresh}")))
            .ok()
    }

    fn on_own_response(&self, _: &Parts, res: &http::response::Parts, body: &Bytes, _: &mut ()) -> Action {
        // self.update_tokens(refresh_response); then `yield request` again.
        if res.status != StatusCode::OK {
            return Action::Done; // the refresh's answer goes to the caller, as in httpx
        }
        let text = std::str::from_utf8(body).unwrap_or_default();
        let field = |name: &str| text.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
        match (field("access_token"), field("refresh_token")) {
            (Some(access), Some(refresh)) => {
                *self.tokens.lock().unwrap() = (access.to_owned(), refresh.to_owned());
                Action::Retry
            }
            _ => Action::Done,
        }
    }
}

/// The resource server and its token endpoint.
#[derive(Default)]
struct Server {
    /// (valid access token, valid refresh token, generation)
    tokens: Mutex<(String, String, u32)>,
    data_calls: AtomicUsize,
    refresh_calls: AtomicUsize,
    /// What `/data` answers an unknown token with.
    reject_body: Mutex<String>,
    /// `/refresh` always hands out tokens that `/data` then refuses.
    refresh_useless: std::sync::atomic::AtomicBool,
}

async fn data(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    s.data_calls.fetch_add(1, Ordering::SeqCst);
    let sent = headers.get("x-authentication").and_then(|v| v.to_str().ok()).unwrap_or("");
    if sent != s.tokens.lock().unwrap().0 {
        return (StatusCode::UNAUTHORIZED, s.reject_body.lock().unwrap().clone());
    }
    (StatusCode::OK, format!("data for {sent}: {}", String::from_utf8_lossy(&body)))
}

async fn refresh(State(s): State<Arc<Server>>, body: String) -> (StatusCode, String) {
    s.refresh_calls.fetch_add(1, Ordering::SeqCst);
    let mut tokens = s.tokens.lock().unwrap();
    if body != format!("grant_type=refresh_token&refresh_token={}", tokens.1) {
        return (StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#.to_owned());
    }
    tokens.2 += 1;
    let issued = (format!("access-{}", tokens.2), format!("refresh-{}", tokens.2));
    if !s.refresh_useless.load(Ordering::SeqCst) {
        tokens.0 = issued.0.clone();
    }
    tokens.1 = issued.1.clone();
    (StatusCode::OK, format!("access_token={}&refresh_token={}", issued.0, issued.1))
}

async fn start(state: Arc<Server>) -> TestServer {
    *state.tokens.lock().unwrap() = ("access-0".into(), "refresh-0".into(), 0);
    if state.reject_body.lock().unwrap().is_empty() {
        *state.reject_body.lock().unwrap() = r#"{"error":"token_expired"}"#.into();
    }
    let app = axum::Router::new().route("/data", post(data)).route("/refresh", post(refresh)).with_state(state);
    TestServer::start(app).await.unwrap()
}

type Svc =
    tower_auth::Auth<Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody<Full<Bytes>>>, Refreshing>;

fn client(server: &TestServer, access: &str, refresh: &str, limit: usize) -> Svc {
    let scheme = Refreshing {
        tokens: Mutex::new((access.into(), refresh.into())),
        refresh_url: server.url("/refresh").parse().unwrap(),
    };
    ServiceBuilder::new()
        .layer(AuthLayer::new(scheme).body_limit(limit))
        .service(Client::builder(TokioExecutor::new()).build_http())
}

async fn post_data(svc: &Svc, server: &TestServer, body: &'static str) -> (StatusCode, String) {
    let req = Request::post(server.url("/data")).body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.status();
    (status, String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
}

#[tokio::test]
async fn an_expired_token_is_refreshed_through_the_same_client_and_the_request_sent_again() {
    let state = Arc::new(Server::default());
    let server = start(state.clone()).await;
    // The client's access token is stale; its refresh token is good.
    let svc = client(&server, "access-stale", "refresh-0", 64 * 1024);

    let (status, body) = post_data(&svc, &server, "payload-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "data for access-1: payload-1", "the same body, replayed, with the new token");
    assert_eq!(state.data_calls.load(Ordering::SeqCst), 2);
    assert_eq!(state.refresh_calls.load(Ordering::SeqCst), 1);

    // The new tokens stay: the next request goes once.
    let (status, body) = post_data(&svc, &server, "payload-2").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "data for access-1: payload-2"));
    assert_eq!(state.data_calls.load(Ordering::SeqCst), 3);
    assert_eq!(state.refresh_calls.load(Ordering::SeqCst), 1);

    // The server rotates: the access token expires again, and the rotated refresh token is used.
    *state.tokens.lock().unwrap() = ("access-x".into(), "refresh-1".into(), 1);
    let (status, body) = post_data(&svc, &server, "payload-3").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "data for access-2: payload-3"));
    assert_eq!(state.refresh_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_the_scheme_read_reaches_the_caller_byte_for_byte() {
    let state = Arc::new(Server::default());
    *state.reject_body.lock().unwrap() = r#"{"error":"insufficient_scope","detail":"read:data"}"#.into();
    let server = start(state.clone()).await;
    let svc = client(&server, "access-stale", "refresh-0", 64 * 1024);
    let (status, body) = post_data(&svc, &server, "p").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, r#"{"error":"insufficient_scope","detail":"read:data"}"#);
    assert_eq!(state.data_calls.load(Ordering::SeqCst), 1);
    assert_eq!(state.refresh_calls.load(Ordering::SeqCst), 0, "not a token_expired body: no refresh");
}

#[tokio::test]
async fn a_failed_refresh_hands_its_answer_to_the_caller() {
    let state = Arc::new(Server::default());
    let server = start(state.clone()).await;
    let svc = client(&server, "access-stale", "refresh-revoked", 64 * 1024);
    let (status, body) = post_data(&svc, &server, "p").await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#));
    assert_eq!(state.data_calls.load(Ordering::SeqCst), 1);
    assert_eq!(state.refresh_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_not_shown_and_the_caller_gets_all_of_it() {
    let state = Arc::new(Server::default());
    let long = format!(r#"{{"error":"token_expired","pad":"{}"}}"#, "x".repeat(10_000));
    *state.reject_body.lock().unwrap() = long.clone();
    let server = start(state.clone()).await;
    let svc = client(&server, "access-stale", "refresh-0", 1024);
    let (status, body) = post_data(&svc, &server, "p").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, long, "bytes read for the scheme, then the rest");
    assert_eq!(state.refresh_calls.load(Ordering::SeqCst), 0, "a partial body is never shown to the scheme");
}

#[tokio::test]
async fn own_requests_count_towards_the_exchange_cap() {
    let state = Arc::new(Server::default());
    state.refresh_useless.store(true, Ordering::SeqCst);
    let server = start(state.clone()).await;
    let svc = client(&server, "access-stale", "refresh-0", 64 * 1024);
    let (status, body) = post_data(&svc, &server, "p").await;
    // data (401), refresh, data (401), refresh: MAX_EXCHANGES = 4; the last answer goes back.
    assert_eq!(tower_auth::MAX_EXCHANGES, 4);
    assert_eq!(state.data_calls.load(Ordering::SeqCst), 2);
    assert_eq!(state.refresh_calls.load(Ordering::SeqCst), 2);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "access_token=access-2&refresh_token=refresh-2");
}

#[tokio::test]
async fn schemes_of_other_modes_cannot_read_bodies_or_send_their_own() {
    // A Replay scheme that asks for the body and an own request gets neither: the caller's
    // response comes back as is, with its original body type.
    struct Greedy(AtomicUsize);
    impl Authenticator for Greedy {
        type Mode = tower_auth::Replay;
        type Error = std::convert::Infallible;
        type State = ();
        type Wait = NoWait<std::convert::Infallible>;
        fn authorize(&self, _: &mut AuthRequest<'_>, _: &mut ()) -> Result<Authorize<Self::Wait>, Self::Error> {
            Ok(Authorize::Done)
        }
        fn on_response(&self, _: &Parts, _: &http::response::Parts, _: &mut ()) -> Action {
            self.0.fetch_add(1, Ordering::SeqCst);
            Action::SendOwn
        }
        fn own_request(&self, _: &Parts, _: &mut ()) -> Option<Request<Bytes>> {
            panic!("never asked: Replay schemes send no requests of their own")
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |_: Request<ReplayBody<String>>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, std::convert::Infallible>(http::Response::new("as is".to_owned())) }
    });
    let scheme = Arc::new(Greedy(AtomicUsize::new(0)));
    let svc = ServiceBuilder::new().layer(AuthLayer::from_arc(scheme.clone())).service(inner);
    let res: http::Response<String> = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.into_body(), "as is");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(scheme.0.load(Ordering::SeqCst), 1);
}
