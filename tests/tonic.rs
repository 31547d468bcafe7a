//! tower-auth in front of a real tonic `Channel`, against a real tonic server on 127.0.0.1.
//!
//! Each test starts a tonic server in-process (HTTP/2, `tonic::transport::Server`) whose one
//! unary method sits behind a tonic interceptor (`InterceptedService`): the interceptor records
//! the credentials of every request it sees and rejects any but the expected one with
//! `Status::unauthenticated`, as a real gRPC service does. The client is a
//! `tonic::transport::Channel` wrapped in tower-auth layers and driven by `tonic::client::Grpc`,
//! with a hand-written codec (no protoc, no codegen).
//!
//! What the tests show:
//!
//! - Bearer and API-key layers in front of a `Channel` (whose request body type is fixed to
//!   `tonic::body::Body`): the right credential reaches the handler; a wrong one and none are
//!   rejected with `UNAUTHENTICATED`.
//! - A router (`AuthLayer::route()`) of such routes keeps the `Channel`'s body type; a request
//!   for an origin with no route (another host, or a `Grpc` client made without an origin, whose
//!   URIs carry only a path) leaves with no credentials and is rejected.
//! - A scheme that keeps the body type observes the server's rejection (a trailers-only response
//!   with `grpc-status: 16`), moves to its next token (compare-and-swap on the token it sent, so
//!   concurrent rejections of one token move it once), and never sends the rejected token again.
//! - The caller's own `authorization` metadata wins over the layer's (a boxed Bearer and a boxed
//!   router, both keeping the body type).
//! - `examples/tonic_client.rs` runs, prints what is expected and exits 0.
//!
//! Every server is stopped (graceful shutdown, awaited) at the end of its test.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use http::HeaderValue;
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tower::{Service, ServiceBuilder};
use tower_auth::{Action, AuthLayer, AuthRequest, Authenticator, Authorize, Bearer, NoWait, Once};

/// The one gRPC method of the test server: it answers with the credential that reached it.
const WHOAMI: &str = "/tower_auth.test.Echo/Whoami";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// A codec for UTF-8 strings: the message is the string's bytes (no protobuf needed).

#[derive(Debug, Clone, Copy, Default)]
struct Utf8;

impl Codec for Utf8 {
    type Encode = String;
    type Decode = String;
    type Encoder = Utf8;
    type Decoder = Utf8;
    fn encoder(&mut self) -> Utf8 {
        Utf8
    }
    fn decoder(&mut self) -> Utf8 {
        Utf8
    }
}

impl Encoder for Utf8 {
    type Item = String;
    type Error = Status;
    fn encode(&mut self, item: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for Utf8 {
    type Item = String;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<String>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        String::from_utf8(bytes.to_vec()).map(Some).map_err(|_| Status::internal("message is not UTF-8"))
    }
}

// ---------------------------------------------------------------------------------------------
// The server: a hand-written service (what tonic's codegen would write) behind an interceptor.

/// The credentials one request carried, as the server's interceptor saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// Every `authorization` value, joined by `,` (two values would show as two).
    authorization: Option<String>,
    /// Every `x-api-key` value, joined by `,`.
    api_key: Option<String>,
}

fn carried(authorization: Option<&str>, api_key: Option<&str>) -> Seen {
    Seen { authorization: authorization.map(str::to_owned), api_key: api_key.map(str::to_owned) }
}

fn all_values(metadata: &tonic::metadata::MetadataMap, key: &str) -> Option<String> {
    let values: Vec<&str> = metadata.get_all(key).iter().map(|v| v.to_str().unwrap_or("<not ascii>")).collect();
    if values.is_empty() { None } else { Some(values.join(",")) }
}

/// The service: `Whoami` answers with the value of the header the server checks.
#[derive(Clone)]
struct Echo {
    header: &'static str,
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != WHOAMI {
            return Box::pin(std::future::ready(Ok(Status::unimplemented(req.uri().path().to_owned()).into_http())));
        }
        let header = self.header;
        let whoami = tower::service_fn(move |req: tonic::Request<String>| async move {
            let credential = all_values(req.metadata(), header).unwrap_or_default();
            Ok::<_, Status>(tonic::Response::new(credential))
        });
        Box::pin(async move { Ok(tonic::server::Grpc::new(Utf8).unary(whoami, req).await) })
    }
}

/// What a server accepts, given the values of its credential header.
type Accepts = Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>;

/// A tonic server on 127.0.0.1 that accepts only `header: accepted`.
struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(header: &'static str, accepted: &'static str) -> TestServer {
        TestServer::start_with(header, Arc::new(move |credential: Option<&str>| credential == Some(accepted))).await
    }

    /// A server whose interceptor accepts what `accepts` says of the `header` values.
    async fn start_with(header: &'static str, accepts: Accepts) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let check = move |req: tonic::Request<()>| {
            let metadata = req.metadata();
            let credential = all_values(metadata, header);
            log.lock().unwrap().push(Seen {
                authorization: all_values(metadata, "authorization"),
                api_key: all_values(metadata, "x-api-key"),
            });
            if accepts(credential.as_deref()) { Ok(req) } else { Err(Status::unauthenticated("wrong credentials")) }
        };
        let svc = InterceptedService::new(Echo { header }, check);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // The listener is bound before the task starts: connections made meanwhile queue.
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(Server::builder().serve_with_incoming_shutdown(svc, incoming, async {
            let _ = stopped.await;
        }));
        TestServer { addr, seen, stop, task }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.origin()).unwrap().connect().await.unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops the server and waits until it has stopped.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The client side.

/// Calls `Whoami` through `svc` with a client whose requests are for `origin` (`None`: a client
/// made with `Grpc::new`, whose request URIs carry only the path).
async fn whoami<S, B>(svc: S, origin: Option<&str>, request: tonic::Request<String>) -> Result<String, Status>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut grpc = match origin {
        Some(origin) => tonic::client::Grpc::with_origin(svc, origin.parse().unwrap()),
        None => tonic::client::Grpc::new(svc),
    };
    grpc.ready().await.map_err(|e| Status::unknown(format!("not ready: {}", e.into())))?;
    let res = grpc.unary(request, PathAndQuery::from_static(WHOAMI), Utf8).await?;
    Ok(res.into_inner())
}

fn hello() -> tonic::Request<String> {
    tonic::Request::new("hello".to_owned())
}

#[track_caller]
fn assert_unauthenticated(res: Result<String, Status>) {
    match res {
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert_eq!(status.message(), "wrong credentials");
        }
        Ok(reply) => panic!("expected UNAUTHENTICATED, the server answered {reply:?}"),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bearer_in_front_of_a_channel() {
    let server = TestServer::start("authorization", "Bearer t0ken").await;
    let channel = server.channel().await;
    let origin = server.origin();

    let svc = ServiceBuilder::new().layer(AuthLayer::bearer("t0ken").unwrap()).service(channel.clone());
    assert_eq!(whoami(svc.clone(), Some(&origin), hello()).await.unwrap(), "Bearer t0ken");
    // The `Channel` sets the origin itself: a client made without one gets the token too.
    assert_eq!(whoami(svc, None, hello()).await.unwrap(), "Bearer t0ken");

    let wrong = ServiceBuilder::new().layer(AuthLayer::bearer("nope").unwrap()).service(channel.clone());
    assert_unauthenticated(whoami(wrong, Some(&origin), hello()).await);
    assert_unauthenticated(whoami(channel, Some(&origin), hello()).await);

    assert_eq!(
        server.seen(),
        [
            carried(Some("Bearer t0ken"), None),
            carried(Some("Bearer t0ken"), None),
            carried(Some("Bearer nope"), None),
            carried(None, None),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn api_key_header_in_front_of_a_channel() {
    let server = TestServer::start("x-api-key", "k-42").await;
    let channel = server.channel().await;
    let origin = server.origin();

    let svc = ServiceBuilder::new().layer(AuthLayer::api_key("k-42").unwrap()).service(channel.clone());
    assert_eq!(whoami(svc, Some(&origin), hello()).await.unwrap(), "k-42");

    let wrong = ServiceBuilder::new().layer(AuthLayer::api_key("k-7").unwrap()).service(channel.clone());
    assert_unauthenticated(whoami(wrong, Some(&origin), hello()).await);
    // A bearer token is not an API key.
    let bearer = ServiceBuilder::new().layer(AuthLayer::bearer("k-42").unwrap()).service(channel);
    assert_unauthenticated(whoami(bearer, Some(&origin), hello()).await);

    assert_eq!(
        server.seen(),
        [carried(None, Some("k-42")), carried(None, Some("k-7")), carried(Some("Bearer k-42"), None)]
    );
    server.stop().await;
}

/// Holds only if `S` takes the `Channel`'s own request body type.
fn takes_tonic_body<S: Service<http::Request<tonic::body::Body>>>(svc: S) -> S {
    svc
}

#[tokio::test]
async fn a_router_keeps_the_channel_body_type_and_sends_nothing_to_other_origins() {
    let server = TestServer::start("authorization", "Bearer routed").await;
    let channel = server.channel().await;
    let origin = server.origin();

    let layer = AuthLayer::route().origin(&origin, Bearer::new("routed").unwrap()).unwrap().build();
    let svc = takes_tonic_body(ServiceBuilder::new().layer(layer).service(channel));

    // The route's origin: the token goes.
    assert_eq!(whoami(svc.clone(), Some(&origin), hello()).await.unwrap(), "Bearer routed");
    // Another origin (the `Channel` still sends it to its endpoint, our server): nothing goes.
    let other = format!("http://localhost:{}", server.addr.port());
    assert_unauthenticated(whoami(svc.clone(), Some(&other), hello()).await);
    // A client made with `Grpc::new` sends path-only URIs: no origin, no route, nothing goes.
    // (Give a routed client its origin with `Grpc::with_origin`.)
    assert_unauthenticated(whoami(svc, None, hello()).await);

    assert_eq!(server.seen(), [carried(Some("Bearer routed"), None), carried(None, None), carried(None, None)]);
    server.stop().await;
}

/// A token source with a list of tokens: when the server rejects the token a request carried, it
/// moves to the next one (compare-and-swap on the index that request sent, so any number of
/// rejections of one token move it once). It keeps the body type (`Once`) and observes responses.
struct Rotating {
    tokens: &'static [&'static str],
    current: AtomicUsize,
    observed: AtomicUsize,
    rejected: AtomicUsize,
}

impl Rotating {
    fn new(tokens: &'static [&'static str]) -> Self {
        Rotating { tokens, current: AtomicUsize::new(0), observed: AtomicUsize::new(0), rejected: AtomicUsize::new(0) }
    }
}

impl Authenticator for Rotating {
    type Mode = Once;
    type Error = Infallible;
    type State = usize; // the index of the token this request carries
    type Wait = NoWait<Infallible>;

    fn authorize(&self, req: &mut AuthRequest<'_>, sent: &mut usize) -> Result<Authorize<Self::Wait>, Infallible> {
        *sent = self.current.load(Ordering::SeqCst);
        if let Some(token) = self.tokens.get(*sent) {
            req.set_credential(&http::header::AUTHORIZATION, &HeaderValue::from_static(token));
        }
        Ok(Authorize::Done)
    }

    fn observes_responses(&self) -> bool {
        true
    }

    fn on_response(&self, _: &http::request::Parts, res: &http::response::Parts, sent: &mut usize) -> Action {
        self.observed.fetch_add(1, Ordering::SeqCst);
        if tower_auth::credentials_rejected(res) {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            let _ = self.current.compare_exchange(*sent, *sent + 1, Ordering::SeqCst, Ordering::SeqCst);
        }
        Action::Done
    }
}

#[tokio::test]
async fn a_scheme_observes_the_servers_rejection_and_moves_to_its_next_token() {
    let server = TestServer::start("authorization", "Bearer fresh").await;
    let channel = server.channel().await;
    let origin = server.origin();
    let scheme = Arc::new(Rotating::new(&["Bearer stale", "Bearer fresh", "Bearer spare"]));
    let svc = takes_tonic_body(ServiceBuilder::new().layer(AuthLayer::from_arc(scheme.clone())).service(channel));

    // 1. The stale token: the interceptor's trailers-only UNAUTHENTICATED, seen by the scheme.
    assert_unauthenticated(whoami(svc.clone(), Some(&origin), hello()).await);
    assert_eq!(scheme.observed.load(Ordering::SeqCst), 1);
    assert_eq!(scheme.rejected.load(Ordering::SeqCst), 1, "grpc-status 16 is a rejection");
    assert_eq!(scheme.current.load(Ordering::SeqCst), 1);

    // 2. The next call carries the next token and succeeds; so does the one after.
    assert_eq!(whoami(svc.clone(), Some(&origin), hello()).await.unwrap(), "Bearer fresh");
    assert_eq!(whoami(svc, Some(&origin), hello()).await.unwrap(), "Bearer fresh");
    assert_eq!(scheme.observed.load(Ordering::SeqCst), 3, "every response is shown");
    assert_eq!(scheme.rejected.load(Ordering::SeqCst), 1, "a success is not a rejection");
    assert_eq!(scheme.current.load(Ordering::SeqCst), 1);

    let seen = server.seen();
    assert_eq!(
        seen,
        [carried(Some("Bearer stale"), None), carried(Some("Bearer fresh"), None), carried(Some("Bearer fresh"), None)]
    );
    let stale = seen.iter().filter(|s| s.authorization.as_deref() == Some("Bearer stale")).count();
    assert_eq!(stale, 1, "the rejected token is never sent again");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_rejections_of_one_token_move_the_scheme_once() {
    let server = TestServer::start("authorization", "Bearer fresh").await;
    let channel = server.channel().await;
    let origin = server.origin();
    let scheme = Arc::new(Rotating::new(&["Bearer stale", "Bearer fresh", "Bearer spare"]));
    let svc = ServiceBuilder::new().layer(AuthLayer::from_arc(scheme.clone())).service(channel);

    // Four calls in one task: `join!` polls each once before any of them sees its response, and
    // each is authorised in `call`, so all four carry the stale token and are rejected.
    let call = || whoami(svc.clone(), Some(&origin), hello());
    let (a, b, c, d) = tokio::join!(call(), call(), call(), call());
    for res in [a, b, c, d] {
        assert_unauthenticated(res);
    }
    assert_eq!(scheme.observed.load(Ordering::SeqCst), 4);
    assert_eq!(scheme.rejected.load(Ordering::SeqCst), 4);
    assert_eq!(scheme.current.load(Ordering::SeqCst), 1, "four rejections of one token move it once");

    assert_eq!(whoami(svc, Some(&origin), hello()).await.unwrap(), "Bearer fresh");
    let seen = server.seen();
    assert_eq!(seen.len(), 5);
    assert!(seen[..4].iter().all(|s| *s == carried(Some("Bearer stale"), None)), "{seen:?}");
    assert_eq!(seen[4], carried(Some("Bearer fresh"), None));
    server.stop().await;
}

#[tokio::test]
async fn the_callers_own_authorization_metadata_wins() {
    let server = TestServer::start("authorization", "Bearer caller").await;
    let channel = server.channel().await;
    let origin = server.origin();

    for (name, layer) in [
        ("bearer", AuthLayer::new(tower_auth::BoxAuthenticator::once(Bearer::new("layer").unwrap()))),
        (
            "router",
            AuthLayer::new(tower_auth::BoxAuthenticator::once(
                AuthLayer::route().origin(&origin, Bearer::new("layer").unwrap()).unwrap().into_router(),
            )),
        ),
    ] {
        let svc = ServiceBuilder::new().layer(layer).service(channel.clone());
        let mut request = hello();
        request.metadata_mut().insert("authorization", "Bearer caller".parse().unwrap());
        assert_eq!(whoami(svc.clone(), Some(&origin), request).await.unwrap(), "Bearer caller", "{name}");
        // Without the caller's metadata, the layer's token goes (and is rejected here).
        assert_unauthenticated(whoami(svc, Some(&origin), hello()).await);
    }

    assert_eq!(
        server.seen(),
        [
            carried(Some("Bearer caller"), None),
            carried(Some("Bearer layer"), None),
            carried(Some("Bearer caller"), None),
            carried(Some("Bearer layer"), None),
        ]
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The example, run as a user runs it.

/// `target/<profile>/examples/tonic_client`, built if missing or older than its sources (`cargo
/// test` builds the examples; `cargo test --test tonic` alone does not).
fn example_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|p| p.parent()).expect("test binary in target/<profile>/deps");
    let bin = profile_dir.join("examples").join(format!("tonic_client{}", std::env::consts::EXE_SUFFIX));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut sources = vec![root.join("examples/tonic_client.rs"), root.join("Cargo.toml"), root.join("Cargo.lock")];
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { dirs.push(path) } else { sources.push(path) }
        }
    }
    let newest = sources.iter().filter_map(|p| modified(p)).max();
    if modified(&bin).is_some_and(|built| newest.is_some_and(|src| src <= built)) {
        return bin;
    }
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "--example", "tonic_client", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", profile_dir.parent().expect("target dir"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build --example tonic_client");
    assert!(status.success() && bin.exists(), "could not build {}", bin.display());
    bin
}

#[test]
fn the_example_runs_and_finds_no_mismatch() {
    let out = std::process::Command::new(example_bin()).output().expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("tonic server on http://127.0.0.1:"), "{stdout}");
    assert_eq!(
        lines.collect::<Vec<_>>(),
        [
            r#"router, the route's origin: OK, the server saw authorization: "Bearer fresh""#,
            "router, another origin (no route, no token): Unauthenticated: no token",
            "token list, first call (stale token): Unauthenticated: wrong token",
            r#"token list, second call (next token): OK, the server saw authorization: "Bearer fresh""#,
            "token list moved to token #1 after observing the rejection",
            "server stopped; 0 mismatch(es)",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// OAuth2 in front of a Channel: the token provider of the crate, tokens from the fake identity
// provider; the server accepts the tokens the identity provider says are active.

#[tokio::test]
async fn oauth2_in_front_of_a_channel_a_revoked_token_is_replaced_on_the_next_call() {
    use tower_auth::oauth2::{OAuth2, TokenProvider};
    use tower_auth::testing::idp::FakeIdp;

    let idp = FakeIdp::start().await.unwrap();
    idp.add_client("svc", "s3cret");
    let active = idp.handle();
    let server = TestServer::start_with(
        "authorization",
        Arc::new(move |credential: Option<&str>| {
            credential.and_then(|c| c.strip_prefix("Bearer ")).is_some_and(|t| active.is_active(t))
        }),
    )
    .await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let provider = TokenProvider::client_credentials(idp.token_url(), "svc", "s3cret").build(http).unwrap();
    // `OAuth2::once`: keeps the Channel's body type; a rejection invalidates the token.
    let svc = takes_tonic_body(
        ServiceBuilder::new().layer(AuthLayer::new(OAuth2::once(provider.clone()))).service(server.channel().await),
    );
    let origin = server.origin();

    let first = whoami(svc.clone(), Some(&origin), hello()).await.unwrap();
    assert!(first.starts_with("Bearer "), "{first}");
    assert_eq!(whoami(svc.clone(), Some(&origin), hello()).await.unwrap(), first, "the same token, no new request");
    assert_eq!(idp.token_requests(), 1);

    // The identity provider revokes it: the server answers UNAUTHENTICATED (grpc-status 16),
    // the scheme invalidates that token, and the next call carries a new one.
    assert!(idp.revoke(first.trim_start_matches("Bearer ")));
    assert_unauthenticated(whoami(svc.clone(), Some(&origin), hello()).await);
    let next = whoami(svc, Some(&origin), hello()).await.unwrap();
    assert_ne!(next, first);
    assert_eq!(idp.token_requests(), 2);
    assert_eq!(provider.stats().invalidations(), 1);
    let sent: Vec<Option<String>> = server.seen().into_iter().map(|s| s.authorization).collect();
    assert_eq!(
        sent.iter().filter(|a| a.as_deref() == Some(first.as_str())).count(),
        3,
        "the revoked token: sent until rejected, never after"
    );
    server.stop().await;
}
