//! A tonic client with tower-auth layers in front of its `Channel`.
//!
//! Self-contained: it starts a tonic server on `127.0.0.1:0` (a hand-written unary service,
//! `Whoami`, behind a tonic interceptor that accepts only `authorization: Bearer fresh` and
//! answers anything else with `UNAUTHENTICATED`), then calls it through a
//! `tonic::transport::Channel` wrapped in tower-auth layers:
//!
//! 1. a router (`AuthLayer::route()`) with a Bearer route for the server's origin: the token
//!    goes with requests for that origin, and nothing goes with a request for another origin;
//! 2. a token source of your own that keeps the `Channel`'s body type and observes responses: it
//!    learns from the server's rejection (`grpc-status: 16`, checked with
//!    `tower_auth::credentials_rejected`) that its token is stale, and the next call carries the
//!    next token.
//!
//! No protoc, no codegen: the messages are UTF-8 strings with a hand-written codec.
//!
//! ```text
//! cargo run --example tonic_client
//! ```
//!
//! It prints each call and what came back, and exits non-zero if anything differs from what is
//! expected.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use http::HeaderValue;
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Status};
use tower::{Service, ServiceBuilder};
use tower_auth::{Action, AuthLayer, AuthRequest, Authenticator, Authorize, Bearer, NoWait, Once};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WHOAMI: &str = "/example.Echo/Whoami";

/// Messages are UTF-8 strings; the codec writes and reads their bytes.
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

/// The server's service: `Whoami` answers with the `authorization` metadata it received.
#[derive(Clone)]
struct Echo;

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
        let whoami = tower::service_fn(|req: tonic::Request<String>| async move {
            let auth = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
            Ok::<_, Status>(tonic::Response::new(auth.to_owned()))
        });
        Box::pin(async move { Ok(tonic::server::Grpc::new(Utf8).unary(whoami, req).await) })
    }
}

/// The server's interceptor: only `Bearer fresh` gets in.
fn check_token(req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    match req.metadata().get("authorization") {
        Some(token) if token == "Bearer fresh" => Ok(req),
        Some(_) => Err(Status::unauthenticated("wrong token")),
        None => Err(Status::unauthenticated("no token")),
    }
}

/// A token source of your own: a list of tokens, moving to the next when the server rejects the
/// one a request carried. It never retries (`Once`), so the `Channel` keeps its body type; it
/// observes responses to learn of rejections.
struct TokenList {
    tokens: &'static [&'static str],
    current: AtomicUsize,
}

impl Authenticator for TokenList {
    type Mode = Once;
    type Error = Infallible;
    type State = usize; // the index of the token this request carries
    type Wait = NoWait<Infallible>;

    fn authorize(&self, req: &mut AuthRequest<'_>, sent: &mut usize) -> Result<Authorize<Self::Wait>, Infallible> {
        *sent = self.current.load(Ordering::Acquire);
        if let Some(token) = self.tokens.get(*sent) {
            req.set_credential(&http::header::AUTHORIZATION, &HeaderValue::from_static(token));
        }
        Ok(Authorize::Done)
    }

    fn observes_responses(&self) -> bool {
        true
    }

    fn on_response(&self, _: &http::request::Parts, res: &http::response::Parts, sent: &mut usize) -> Action {
        if tower_auth::credentials_rejected(res) {
            // Only the token this request carried is given up, however many requests report it.
            let _ = self.current.compare_exchange(*sent, *sent + 1, Ordering::AcqRel, Ordering::Acquire);
        }
        Action::Done
    }
}

/// Calls `Whoami` through `svc` as a client for `origin`.
async fn whoami<S, B>(svc: S, origin: &str) -> Result<String, Status>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let origin = origin.parse().map_err(|_| Status::invalid_argument("bad origin"))?;
    // `with_origin`: the request URIs carry the origin, which a router routes on (a client made
    // with `Grpc::new` sends the path only, and the `Channel` fills in its endpoint later).
    let mut grpc = tonic::client::Grpc::with_origin(svc, origin);
    grpc.ready().await.map_err(|e| Status::unavailable(e.into().to_string()))?;
    let res = grpc.unary(tonic::Request::new("hello".to_owned()), PathAndQuery::from_static(WHOAMI), Utf8).await?;
    Ok(res.into_inner())
}

/// Prints one call's outcome and whether it is the expected one.
fn report(what: &str, got: &Result<String, Status>, want: Result<&str, (Code, &str)>, failures: &mut u32) {
    let shown = match got {
        Ok(reply) => format!("OK, the server saw authorization: {reply:?}"),
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    };
    let ok = match (got, want) {
        (Ok(reply), Ok(want)) => reply == want,
        (Err(status), Err((code, message))) => status.code() == code && status.message() == message,
        _ => false,
    };
    if ok {
        println!("{what}: {shown}");
    } else {
        *failures += 1;
        println!("{what}: {shown} (MISMATCH: expected {want:?})");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<ExitCode, BoxError> {
    // The server, on 127.0.0.1 only; the listener is bound before anything connects.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let origin = format!("http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::builder().serve_with_incoming_shutdown(
        InterceptedService::new(Echo, check_token),
        tonic::transport::server::TcpIncoming::from(listener),
        async {
            let _ = stopped.await;
        },
    ));
    println!("tonic server on {origin}");

    let channel = Endpoint::from_shared(origin.clone())?.connect().await?;
    let mut failures = 0;

    // 1. A router in front of the Channel: the Bearer token goes to its origin only.
    let routes = AuthLayer::route().origin(&origin, Bearer::new("fresh")?)?.build();
    let routed = ServiceBuilder::new().layer(routes).service(channel.clone());
    report("router, the route's origin", &whoami(routed.clone(), &origin).await, Ok("Bearer fresh"), &mut failures);
    let other = format!("http://localhost:{}", addr.port());
    report(
        "router, another origin (no route, no token)",
        &whoami(routed, &other).await,
        Err((Code::Unauthenticated, "no token")),
        &mut failures,
    );

    // 2. A token source that learns from the server's rejection.
    let tokens = Arc::new(TokenList { tokens: &["Bearer stale", "Bearer fresh"], current: AtomicUsize::new(0) });
    let svc = ServiceBuilder::new().layer(AuthLayer::from_arc(tokens.clone())).service(channel);
    report(
        "token list, first call (stale token)",
        &whoami(svc.clone(), &origin).await,
        Err((Code::Unauthenticated, "wrong token")),
        &mut failures,
    );
    report("token list, second call (next token)", &whoami(svc, &origin).await, Ok("Bearer fresh"), &mut failures);
    let current = tokens.current.load(Ordering::Acquire);
    if current == 1 {
        println!("token list moved to token #{current} after observing the rejection");
    } else {
        failures += 1;
        println!("token list is at token #{current} (MISMATCH: expected 1)");
    }

    let _ = stop.send(());
    server.await??;
    println!("server stopped; {failures} mismatch(es)");
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
