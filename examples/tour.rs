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
use tower_auth::digest::{Algorithm, Qop};
use tower_auth::testing::{DigestCheck, OAuth1Check, RequireLayer, Stats, TestServer};
use tower_auth::{AllOf, ApiKey, AuthLayer, Basic, Bearer, HeaderCredential};
use tower_http::follow_redirect::FollowRedirectLayer;

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
    ($rows:ident, $server:ident, $stats:expr, $scheme:expr, $route:expr, $layer:expr, $expected:expr, $trips:expr) => {
        case!($rows, $server, $stats, $scheme, $route, $layer, $expected, $trips, 1, 0)
    };
    ($rows:ident, $server:ident, $stats:expr, $scheme:expr, $route:expr, $layer:expr, $expected:expr, $trips:expr, $times:expr, $pause_ms:expr) => {{
        let stats: &Stats = $stats;
        stats.reset();
        let client = Client::builder(TokioExecutor::new()).build_http();
        let svc = ServiceBuilder::new().layer($layer).service(client);
        let mut actual = Err("not sent".to_string());
        for i in 0..$times {
            if i > 0 && $pause_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis($pause_ms)).await;
            }
            let req = Request::post($server.url($route)).body(Full::new(Bytes::from_static(b"tour body"))).unwrap();
            actual = match svc.clone().oneshot(req).await {
                Ok(res) => {
                    let status = res.status();
                    let _ = res.into_body().collect().await;
                    Ok(status)
                }
                Err(err) => Err(err.to_string()),
            };
        }
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
    let digest_check = |algorithms: &[Algorithm], qop: Qop| {
        RequireLayer::new(DigestCheck::new("tour").user("alice", "s3cret").algorithms(algorithms).qop(&[qop]))
    };
    let md5 = digest_check(&[Algorithm::Md5], Qop::Auth);
    let sha256 = digest_check(&[Algorithm::Sha256, Algorithm::Md5], Qop::Auth);
    let sha512 = digest_check(&[Algorithm::Sha512_256, Algorithm::Sha256, Algorithm::Md5], Qop::Auth);
    let auth_int = digest_check(&[Algorithm::Sha256], Qop::AuthInt);
    let stale = RequireLayer::new(DigestCheck::new("tour").user("alice", "s3cret").stale_after(2));
    let oauth1 = RequireLayer::new(OAuth1Check::new("tour-app", "app-s3cret").token("tour-user", "user-s3cret"));

    let ok = || async { "ok" };
    let app = Router::new()
        .route("/basic", post(ok).route_layer(basic.clone()))
        .route("/bearer", post(ok).route_layer(bearer.clone()))
        .route("/api-key", post(ok).route_layer(key.clone()))
        .route("/api-key-query", post(ok).route_layer(key_query.clone()))
        .route("/all-of", post(ok).route_layer(both_key.clone()).route_layer(both_bearer.clone()))
        .route("/custom", post(ok).route_layer(custom.clone()))
        .route("/digest-md5", post(ok).route_layer(md5.clone()))
        .route("/digest-sha256", post(ok).route_layer(sha256.clone()))
        .route("/digest-sha512-256", post(ok).route_layer(sha512.clone()))
        .route("/digest-auth-int", post(ok).route_layer(auth_int.clone()))
        .route("/digest-stale", post(ok).route_layer(stale.clone()))
        .route("/oauth1", post(ok).route_layer(oauth1.clone()))
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
    let oauth1_signer = tower_auth::oauth1::OAuth1::builder("tour-app", "app-s3cret")
        .token("tour-user", "user-s3cret")
        .method(tower_auth::oauth1::SignatureMethod::HmacSha256)
        .body_hash(true)
        .build()?;
    case!(
        rows,
        server,
        &oauth1.stats(),
        "OAuth1 HMAC-SHA256, body hash",
        "/oauth1",
        AuthLayer::new(oauth1_signer),
        StatusCode::OK,
        1
    );
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

    let digest = || AuthLayer::digest("alice", "s3cret");
    case!(rows, server, &md5.stats(), "Digest MD5", "/digest-md5", digest()?, StatusCode::OK, 2);
    case!(rows, server, &md5.stats(), "Digest MD5, 5 requests", "/digest-md5", digest()?, StatusCode::OK, 6, 5, 0);
    case!(
        rows,
        server,
        &md5.stats(),
        "Digest, wrong password",
        "/digest-md5",
        AuthLayer::digest("alice", "nope")?,
        StatusCode::UNAUTHORIZED,
        2
    );
    case!(rows, server, &sha256.stats(), "Digest SHA-256 (over MD5)", "/digest-sha256", digest()?, StatusCode::OK, 2);
    case!(rows, server, &sha512.stats(), "Digest SHA-512-256", "/digest-sha512-256", digest()?, StatusCode::OK, 2);
    case!(
        rows,
        server,
        &auth_int.stats(),
        "Digest auth-int, POST body",
        "/digest-auth-int",
        digest()?,
        StatusCode::OK,
        2
    );
    case!(rows, server, &stale.stats(), "Digest, stale nonce x2", "/digest-stale", digest()?, StatusCode::OK, 6, 4, 0);
    case!(
        rows,
        server,
        &basic.stats(),
        "Guess -> Basic",
        "/basic",
        AuthLayer::guess("alice", "s3cret")?,
        StatusCode::OK,
        2
    );
    case!(
        rows,
        server,
        &md5.stats(),
        "Guess -> Digest",
        "/digest-md5",
        AuthLayer::guess("alice", "s3cret")?,
        StatusCode::OK,
        2
    );

    // Two origins behind one router: A wants Basic, B wants a bearer token. A redirects to B;
    // FollowRedirect sits outside the router, so the hop to B is routed anew and carries B's
    // credentials, never A's. B answers 400 if A's credentials ever reach it.
    let origin_b_stats = RequireLayer::bearer("b", "b-t0ken");
    let b_app = Router::new().route(
        "/show",
        get(|headers: http::HeaderMap| async move {
            let leaked = headers.get_all("authorization").iter().any(|v| v.as_bytes().starts_with(b"Basic"));
            if leaked { StatusCode::BAD_REQUEST } else { StatusCode::OK }
        })
        .route_layer(origin_b_stats.clone()),
    );
    let origin_b = TestServer::start(b_app).await?;
    let to_b = origin_b.url("/show");
    let a_basic = RequireLayer::basic("a", "alice", "s3cret");
    let a_app = Router::new().route("/hello", get(ok).route_layer(a_basic.clone())).route(
        "/to-b",
        get(move || async move { (StatusCode::FOUND, [("location", to_b)]) }).route_layer(a_basic.clone()),
    );
    let origin_a = TestServer::start(a_app).await?;
    let router = || -> Result<AuthLayer<tower_auth::route::Router<tower_auth::Once>>, BoxError> {
        Ok(AuthLayer::route()
            .origin(&origin_a.url(""), Basic::new("alice", "s3cret")?)?
            .origin(&origin_b.url(""), Bearer::new("b-t0ken")?)?
            .build())
    };
    for (scheme, url, stats, trips) in [
        ("Router -> origin A (Basic)", origin_a.url("/hello"), a_basic.stats(), 1),
        ("Router -> origin B (Bearer)", origin_b.url("/show"), origin_b_stats.stats(), 1),
    ] {
        stats.reset();
        let svc = ServiceBuilder::new().layer(router()?).service(Client::builder(TokioExecutor::new()).build_http());
        let actual = match svc.oneshot(Request::get(url).body(Full::<Bytes>::default())?).await {
            Ok(res) => Ok(res.status()),
            Err(err) => Err(err.to_string()),
        };
        rows.push(Row {
            scheme,
            route: "(router)",
            expected: StatusCode::OK,
            expected_trips: trips,
            actual,
            trips: stats.requests(),
        });
    }
    a_basic.stats().reset();
    origin_b_stats.stats().reset();
    let svc = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(router()?)
        .service(Client::builder(TokioExecutor::new()).build_http());
    let actual = match svc.oneshot(Request::get(origin_a.url("/to-b")).body(Full::<Bytes>::default())?).await {
        Ok(res) => Ok(res.status()),
        Err(err) => Err(err.to_string()),
    };
    rows.push(Row {
        scheme: "Redirect A -> B, no A creds at B",
        route: "/to-b -> /show",
        expected: StatusCode::OK,
        expected_trips: 2,
        actual,
        trips: a_basic.stats().requests() + origin_b_stats.stats().requests(),
    });

    // OAuth2 client credentials against the embedded identity provider: tokens last 4 s (sent
    // for 2 s, replaced in the background from 1.44-1.6 s) while a request leaves every 100 ms
    // for 2.2 s: every request carries a usable token, and a second token arrives without any
    // request waiting for it (a third would come at 2.9 s at the earliest).
    let idp = tower_auth::testing::idp::FakeIdp::start().await?;
    idp.add_client("tour-service", "tour-s3cret");
    idp.set_lifetime(std::time::Duration::from_secs(4));
    let provider =
        tower_auth::oauth2::TokenProvider::client_credentials(idp.token_url(), "tour-service", "tour-s3cret")
            .scope("orders:read")
            .build(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())?;
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::oauth2(provider.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http());
    let mut statuses = Vec::new();
    let run = std::time::Instant::now();
    while run.elapsed() < std::time::Duration::from_millis(2200) {
        let res = svc.clone().oneshot(Request::get(idp.resource_url()).body(Full::<Bytes>::default())?).await;
        statuses.push(res.map(|r| r.status()).map_err(|e| e.to_string()));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let sent = statuses.len() as u64;
    let first_not_ok = statuses.into_iter().find(|s| !matches!(s, Ok(StatusCode::OK)));
    rows.push(Row {
        scheme: "OAuth2 client credentials, 2.2 s",
        route: "(fake IdP) /resource",
        expected: StatusCode::OK,
        expected_trips: sent,
        actual: first_not_ok.unwrap_or(Ok(StatusCode::OK)),
        trips: idp.resource_stats().requests(),
    });
    rows.push(Row {
        scheme: "OAuth2, new token in background",
        route: "(fake IdP) /token",
        expected: StatusCode::OK,
        expected_trips: 2,
        // The new token was asked for before the first one stopped being sent (2 s).
        actual: match idp.requests().as_slice() {
            [first, second, ..]
                if second.received_at.duration_since(first.received_at) < std::time::Duration::from_secs(2) =>
            {
                Ok(StatusCode::OK)
            }
            [_, _, ..] => Err("the new token came after the first stopped being sent".into()),
            _ => Ok(StatusCode::OK), // the count column shows the missing token request
        },
        trips: idp.token_requests(),
    });

    // Interactive OAuth2 against the embedded identity provider: authorization code with PKCE
    // (the browser mock follows the authorization URL to the loopback listener), and the device
    // grant (the "user" approves the code shown).
    let idp = tower_auth::testing::idp::FakeIdp::start().await?;
    idp.add_public_client("tour-app");
    idp.set_require_pkce(true);
    let browser = tower_auth::testing::BrowserMock::new();
    let provider =
        tower_auth::oauth2::TokenProvider::authorization_code(idp.authorize_url(), idp.token_url(), "tour-app")
            .browser(browser.clone())
            .redirect_port(0)
            .scope("openid")
            .build(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())?;
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::oauth2(provider))
        .service(Client::builder(TokioExecutor::new()).build_http());
    let mut actual = Ok(StatusCode::OK);
    for _ in 0..3 {
        match svc.clone().oneshot(Request::get(idp.resource_url()).body(Full::<Bytes>::default())?).await {
            Ok(res) if res.status() == StatusCode::OK => {}
            Ok(res) => actual = Ok(res.status()),
            Err(e) => actual = Err(e.to_string()),
        }
    }
    rows.push(Row {
        scheme: "OAuth2 auth code + PKCE, 3 req",
        route: "(fake IdP) browser",
        expected: StatusCode::OK,
        expected_trips: 1,
        actual,
        trips: browser.opened().len() as u64,
    });

    let idp = tower_auth::testing::idp::FakeIdp::start().await?;
    idp.set_device_interval(1);
    let user = idp.handle();
    let provider =
        tower_auth::oauth2::TokenProvider::device_code(idp.device_authorization_url(), idp.token_url(), "tour-tv")
            .device_prompt(move |shown| {
                let (user, code) = (user.clone(), shown.user_code.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    user.approve_device(&code);
                });
            })
            .build(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())?;
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::oauth2(provider))
        .service(Client::builder(TokioExecutor::new()).build_http());
    let actual = match svc.oneshot(Request::get(idp.resource_url()).body(Full::<Bytes>::default())?).await {
        Ok(res) => Ok(res.status()),
        Err(e) => Err(e.to_string()),
    };
    rows.push(Row {
        scheme: "OAuth2 device code",
        route: "(fake IdP) /resource",
        expected: StatusCode::OK,
        expected_trips: 1,
        actual,
        trips: idp.resource_stats().requests(),
    });

    // HTTPS: an embedded TLS server with a certificate made at run time, HTTP/2 by ALPN; then
    // the same through an embedded proxy that wants Digest on CONNECT (3 requests, 5 round trips:
    // the CONNECT, its 407, the answer, then the 3 requests in the reused tunnel).
    https_rows(&mut rows).await?;

    // NTLM, bound to its connection: an embedded server with `sspi`'s acceptor (the password
    // checked for real) that keeps a connection authenticated, as IIS does. 3 requests: the
    // handshake's 2 legs on one connection, then 2 requests on it (4 round trips).
    ntlm_row(&mut rows).await?;

    let mut failed = 0;
    println!("{:<34} {:<20} {:>8} {:>8} {:>11}  result", "scheme", "route", "expected", "actual", "round trips");
    for row in &rows {
        let actual = match &row.actual {
            Ok(s) => s.as_u16().to_string(),
            Err(e) => format!("error: {e}"),
        };
        let pass = row.actual.as_ref().is_ok_and(|s| *s == row.expected) && row.trips == row.expected_trips;
        failed += usize::from(!pass);
        println!(
            "{:<34} {:<20} {:>8} {:>8} {:>5} (exp {})  {}",
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

/// The HTTPS rows: direct, and through a proxy answering its Digest challenge on CONNECT.
async fn https_rows(rows: &mut Vec<Row>) -> Result<(), BoxError> {
    use tower_auth::connect::tls::{Roots, TlsConfig};
    use tower_auth::connect::{Proxies, Proxy, ProxyConnector};
    use tower_auth::testing::proxy::TestProxy;
    use tower_auth::testing::tls::{TestPki, TlsServer};

    let pki = TestPki::new(&["127.0.0.1"])?;
    let bearer = RequireLayer::bearer("tour", "t0ken");
    let stats = bearer.stats();
    let server =
        TlsServer::start(&pki, Router::new().route("/tls", get(|| async { "over TLS" })).route_layer(bearer)).await?;
    let tls = TlsConfig::new().roots(Roots::None).add_ca_pem(pki.ca_pem().as_bytes())?;
    let proxy = TestProxy::builder().check(DigestCheck::new("corp").user("alice", "pr0xy").proxy(true)).start().await?;
    let cases = [
        ("HTTPS (rustls, HTTP/2 by ALPN)", "/tls", Proxies::none(), 1, 1),
        (
            "HTTPS via proxy, Digest on CONNECT",
            "/tls, 3 req",
            Proxies::all(Proxy::parse(&proxy.url())?.auth(tower_auth::Digest::proxy("alice", "pr0xy")?)),
            3,
            5,
        ),
    ];
    for (scheme, route, proxies, times, expected_trips) in cases {
        stats.reset();
        let connector = ProxyConnector::new(proxies);
        let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(tls.https(connector.clone())?);
        let svc = ServiceBuilder::new().layer(AuthLayer::bearer("t0ken")?).service(client);
        let mut actual = Err("not sent".to_string());
        for _ in 0..times {
            actual = match svc.clone().oneshot(Request::get(server.url("/tls")).body(Full::default())?).await {
                Ok(res) if res.version() != http::Version::HTTP_2 => Err(format!("{:?}, not HTTP/2", res.version())),
                Ok(res) => Ok(res.status()),
                Err(err) => Err(err.to_string()),
            };
        }
        // Round trips: the CONNECT exchanges with the proxy, then the requests the server saw.
        let trips = connector.connect_exchanges() + stats.requests();
        rows.push(Row { scheme, route, expected: StatusCode::OK, expected_trips, actual, trips });
    }
    Ok(())
}

/// The NTLM row: `ntlm::WindowsAuth`, its own pooled connection authenticated once.
async fn ntlm_row(rows: &mut Vec<Row>) -> Result<(), BoxError> {
    use tower_auth::ntlm::WindowsAuth;
    use tower_auth::testing::ntlm::NtlmServer;

    let server = NtlmServer::start(r"TOUR\alice", "s3cret").await?;
    let client = WindowsAuth::ntlm(r"TOUR\alice", "s3cret").build::<Full<Bytes>>()?;
    let mut actual = Err("not sent".to_string());
    for _ in 0..3 {
        let req = Request::post(server.url("/ntlm")).body(Full::new(Bytes::from_static(b"tour body")))?;
        actual = match client.clone().oneshot(req).await {
            Ok(res) => {
                let status = res.status();
                // Read to its end, the body gives the connection back to the client's pool.
                res.into_body().collect().await?;
                Ok(status)
            }
            Err(err) => Err(err.to_string()),
        };
    }
    let trips = server.requests();
    rows.push(Row {
        scheme: "NTLM (connection-bound)",
        route: "/ntlm, 3 req",
        expected: StatusCode::OK,
        expected_trips: 4,
        actual,
        trips,
    });
    Ok(())
}
