//! The tour: every scheme of tower-auth against an embedded server that verifies it.
//!
//! ```text
//! cargo run --example tour
//! ```
//!
//! It starts an axum server on 127.0.0.1 (a free port) whose routes each require one scheme,
//! sends requests through hyper-util's client wrapped in the layers, and prints one row per
//! case: the scheme, the status expected and received, and the round trips the server counted.
//! It exits with status 1 if any row fails.

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_auth::testing::{RequireLayer, Stats, TestServer};
use tower_auth::{AllOf, ApiKey, AuthLayer, Bearer, HeaderCredential};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Row {
    scheme: &'static str,
    route: &'static str,
    expected: StatusCode,
    expected_trips: u64,
    actual: Result<StatusCode, String>,
    trips: u64,
}

/// Sends one request through `layer` to `route` and records the outcome as a row.
macro_rules! case {
    ($rows:ident, $server:ident, $stats:expr, $scheme:expr, $route:expr, $layer:expr, $expected:expr, $trips:expr) => {{
        let stats: &Stats = $stats;
        stats.reset();
        let client = Client::builder(TokioExecutor::new()).build_http();
        let svc = ServiceBuilder::new().layer($layer).service(client);
        let req = Request::post($server.url($route)).body(Full::new(Bytes::from_static(b"tour body"))).unwrap();
        let actual = match svc.oneshot(req).await {
            Ok(res) => {
                let status = res.status();
                let _ = res.into_body().collect().await;
                Ok(status)
            }
            Err(err) => Err(err.to_string()),
        };
        $rows.push(Row {
            scheme: $scheme,
            route: $route,
            expected: $expected,
            expected_trips: $trips,
            actual,
            trips: stats.requests(),
        });
    }};
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let basic = RequireLayer::basic("tour", "alice", "s3cret");
    let bearer = RequireLayer::bearer("tour", "t0ken");
    let key = RequireLayer::api_key_header("x-api-key", "k3y");
    let key_query = RequireLayer::api_key_query("api_key", "k3y q");
    let both_key = RequireLayer::api_key_header("x-api-key", "k3y");
    let both_bearer = RequireLayer::bearer("tour", "t0ken");
    let custom = RequireLayer::api_key_header("private-token", "glpat-1");

    let ok = || async { "ok" };
    let app = Router::new()
        .route("/basic", post(ok).route_layer(basic.clone()))
        .route("/bearer", post(ok).route_layer(bearer.clone()))
        .route("/api-key", post(ok).route_layer(key.clone()))
        .route("/api-key-query", post(ok).route_layer(key_query.clone()))
        .route("/all-of", post(ok).route_layer(both_key.clone()).route_layer(both_bearer.clone()))
        .route("/custom", post(ok).route_layer(custom.clone()))
        .route("/health", get(ok));
    let server = TestServer::start(app).await?;

    let mut rows = Vec::new();
    case!(rows, server, &basic.stats(), "Basic", "/basic", AuthLayer::basic("alice", "s3cret")?, StatusCode::OK, 1);
    case!(
        rows,
        server,
        &basic.stats(),
        "Basic, wrong password",
        "/basic",
        AuthLayer::basic("alice", "nope")?,
        StatusCode::UNAUTHORIZED,
        1
    );
    case!(
        rows,
        server,
        &basic.stats(),
        "none (closure adds nothing)",
        "/basic",
        AuthLayer::from_fn(|_| {}),
        StatusCode::UNAUTHORIZED,
        1
    );
    case!(rows, server, &bearer.stats(), "Bearer", "/bearer", AuthLayer::bearer("t0ken")?, StatusCode::OK, 1);
    case!(rows, server, &key.stats(), "API key (header)", "/api-key", AuthLayer::api_key("k3y")?, StatusCode::OK, 1);
    case!(
        rows,
        server,
        &key_query.stats(),
        "API key (query)",
        "/api-key-query",
        AuthLayer::api_key_query("k3y q")?,
        StatusCode::OK,
        1
    );
    case!(
        rows,
        server,
        &both_bearer.stats(),
        "API key + Bearer (AllOf)",
        "/all-of",
        AuthLayer::new(AllOf::new(ApiKey::header("k3y")?, Bearer::new("t0ken")?)),
        StatusCode::OK,
        1
    );
    case!(
        rows,
        server,
        &custom.stats(),
        "custom header",
        "/custom",
        AuthLayer::new(HeaderCredential::new("Private-Token", "glpat-1")?),
        StatusCode::OK,
        1
    );

    let mut failed = 0;
    println!("{:<30} {:<16} {:>8} {:>8} {:>11}  result", "scheme", "route", "expected", "actual", "round trips");
    for row in &rows {
        let actual = match &row.actual {
            Ok(s) => s.as_u16().to_string(),
            Err(e) => format!("error: {e}"),
        };
        let pass = row.actual.as_ref().is_ok_and(|s| *s == row.expected) && row.trips == row.expected_trips;
        failed += usize::from(!pass);
        println!(
            "{:<30} {:<16} {:>8} {:>8} {:>5} (exp {})  {}",
            row.scheme,
            row.route,
            row.expected.as_u16(),
            actual,
            row.trips,
            row.expected_trips,
            if pass { "ok" } else { "FAIL" }
        );
    }
    println!("{} rows, {} failed", rows.len(), failed);
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
