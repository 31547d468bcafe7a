//! The connection-bound client (`ntlm::WindowsAuth`) against an in-process HTTP/1.1 server whose
//! NTLM acceptor is `sspi`'s own (server side): the legs on one connection, empty bodies on
//! intermediate legs and the real body on the last, `401` bodies drained, a connection asked to
//! authenticate again, the pool's bound and idle timeout, and hostile servers (a connection
//! closed mid-handshake, garbage and truncated challenges, no NTLM offered, `401` forever): typed
//! errors, never a panic, never a loop, the failed connection never pooled.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sspi::SecurityStatus;
use tokio::net::TcpListener;
use tower_auth::ntlm::WindowsAuth;
use tower_auth::testing::ntlm::{Accepted, NtlmAcceptor};

mod support;

use support::windows::{Win, send};

const USER: &str = r"TOWERAUTH\alice";
const PASS: &str = "Passw0rd!";

/// What one leg looked like to the server.
#[derive(Debug, Clone)]
struct Leg {
    conn: usize,
    message: u8,
    content_length: Option<String>,
    body_len: usize,
}

#[derive(Default)]
struct Seen {
    legs: Mutex<Vec<Leg>>,
    connections: AtomicUsize,
    /// Connections the client closed.
    closed: AtomicUsize,
    authenticated: AtomicU64,
}

/// Per connection: the acceptor in progress, and whether the connection is authenticated.
struct Conn {
    ntlm: NtlmAcceptor,
    authenticated: bool,
    reauth_done: bool,
    no: usize,
}

fn challenge(token: Option<&[u8]>) -> Response<Full<Bytes>> {
    let value = match token {
        Some(t) => format!("NTLM {}", STANDARD.encode(t)),
        None => "NTLM".to_owned(),
    };
    Response::builder()
        .status(401)
        .header("www-authenticate", value)
        .body(Full::new(Bytes::from_static(b"a body the client must drain before the next leg")))
        .unwrap()
}

/// Runs `sspi`'s acceptor (`testing::ntlm::NtlmAcceptor`) on one token.
fn accept(conn: &mut Conn, token: &[u8]) -> Result<(SecurityStatus, Vec<u8>), sspi::Error> {
    Ok(match conn.ntlm.accept(token)? {
        Accepted::Challenge(out) => (SecurityStatus::ContinueNeeded, out),
        Accepted::Authenticated => (SecurityStatus::Ok, Vec::new()),
    })
}

async fn handle(req: Request<Incoming>, conn: Arc<Mutex<Conn>>, seen: Arc<Seen>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let content_length = req.headers().get("content-length").map(|v| v.to_str().unwrap().to_owned());
    let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut c = conn.lock().unwrap();
    if path.starts_with("/open") {
        // Needs no authentication: ignores the Authorization header.
        return Response::new(Full::new(Bytes::from(format!("open conn={} len={}", c.no, body.len()))));
    }
    if path.starts_with("/public") && auth.is_none() {
        return Response::new(Full::new(Bytes::from_static(b"public")));
    }
    if path.starts_with("/basic-only") {
        return Response::builder()
            .status(401)
            .header("www-authenticate", "Basic realm=\"x\"")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if path.starts_with("/reauth") && c.authenticated && !c.reauth_done && auth.is_none() {
        // The server forgets the connection's authentication once (as IIS may after a while).
        c.authenticated = false;
        c.reauth_done = true;
        return challenge(None);
    }
    if c.authenticated && !path.starts_with("/forever") {
        let text = format!("conn={} len={} body={}", c.no, body.len(), String::from_utf8_lossy(&body));
        return Response::new(Full::new(Bytes::from(text)));
    }
    let Some(token) = auth.as_deref().and_then(|a| a.strip_prefix("NTLM ")).and_then(|t| STANDARD.decode(t).ok())
    else {
        return challenge(None);
    };
    seen.legs.lock().unwrap().push(Leg {
        conn: c.no,
        message: token.get(8).copied().unwrap_or(0),
        content_length,
        body_len: body.len(),
    });
    if let Some(seed) = path.strip_prefix("/garbage/") {
        let seed: u64 = seed.parse().unwrap();
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let len = (seed % 120) as usize;
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 33) as u8
            })
            .collect();
        if seed % 2 == 0 && bytes.len() >= 12 {
            bytes[..12].copy_from_slice(b"NTLMSSP\0\x02\0\0\0");
        }
        return challenge(Some(&bytes));
    }
    match accept(&mut c, &token) {
        Ok((SecurityStatus::ContinueNeeded, out)) => {
            if path.starts_with("/close-mid") {
                let mut res = challenge(Some(&out));
                res.headers_mut().insert("connection", "close".parse().unwrap());
                return res;
            }
            if path.starts_with("/truncated") {
                return challenge(Some(&out[..out.len().min(30)]));
            }
            challenge(Some(&out))
        }
        Ok(_) if path.starts_with("/forever") => challenge(None),
        Ok(_) => {
            c.authenticated = true;
            seen.authenticated.fetch_add(1, Ordering::Relaxed);
            let text = format!("conn={} len={} body={}", c.no, body.len(), String::from_utf8_lossy(&body));
            Response::new(Full::new(Bytes::from(text)))
        }
        Err(_) => challenge(None),
    }
}

/// An HTTP/1.1 server on 127.0.0.1 with `sspi`'s NTLM acceptor, per connection.
async fn server() -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let no = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
            let conn = Arc::new(Mutex::new(Conn {
                ntlm: NtlmAcceptor::new(USER, PASS),
                authenticated: false,
                reauth_done: false,
                no,
            }));
            let seen = Arc::clone(&shared);
            let shared_closed = Arc::clone(&shared);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (conn, seen) = (Arc::clone(&conn), Arc::clone(&seen));
                    async move { Ok::<_, Infallible>(handle(req, conn, seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                shared_closed.closed.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn three_legs_on_one_connection_body_on_the_last() {
    let (url, seen) = server().await;
    let client: Win = WindowsAuth::ntlm(USER, PASS).build().unwrap();
    let (status, body) = send(&client, "POST", &format!("{url}/post"), "hello=world").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "conn=1 len=11 body=hello=world"));
    let legs = seen.legs.lock().unwrap().clone();
    assert_eq!(legs.len(), 2, "{legs:?}");
    // Type 1 with an empty body and Content-Length: 0; type 3 with the real body.
    assert_eq!((legs[0].message, legs[0].content_length.as_deref(), legs[0].body_len), (1, Some("0"), 0));
    assert_eq!((legs[1].message, legs[1].content_length.as_deref(), legs[1].body_len), (3, Some("11"), 11));
    assert!(legs.iter().all(|l| l.conn == 1));
    assert_eq!(seen.authenticated.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_wrong_password_fails_closed() {
    let (url, seen) = server().await;
    let client: Win = WindowsAuth::ntlm(USER, "not-the-password").build().unwrap();
    let err = send(&client, "GET", &format!("{url}/x"), "").await.unwrap_err();
    assert!(err.is_rejected(), "{err:?}");
    assert!(!format!("{err}{err:?}").contains("not-the-password"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(seen.authenticated.load(Ordering::Relaxed), 0);
    // The next request opens a new connection (the failed one was closed).
    let _ = send(&client, "GET", &format!("{url}/x"), "").await.unwrap_err();
    assert_eq!(seen.connections.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn an_authenticated_connection_asked_again_reauthenticates_and_replays_the_body() {
    let (url, seen) = server().await;
    let client: Win = WindowsAuth::ntlm(USER, PASS).build().unwrap();
    send(&client, "GET", &format!("{url}/first"), "").await.unwrap();
    let (status, body) = send(&client, "POST", &format!("{url}/reauth"), "replayed").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "conn=1 len=8 body=replayed"));
    assert_eq!(seen.authenticated.load(Ordering::Relaxed), 2);
    assert_eq!(seen.connections.load(Ordering::Relaxed), 1);
    let s = client.stats();
    // first: 2 legs; reauth: the 401 on the pooled connection, then 2 legs.
    assert_eq!((s.handshakes, s.round_trips, s.connections), (2, 5, 1), "{s:?}");
}

#[tokio::test]
async fn a_server_that_needs_nothing_gets_one_leg_and_the_connection_stays_unauthenticated() {
    let (url, seen) = server().await;
    let ntlm: Win = WindowsAuth::ntlm(USER, PASS).build().unwrap();
    let negotiate: Win = WindowsAuth::negotiate(USER, PASS).build().unwrap();
    for client in [&ntlm, &negotiate] {
        // The first leg carries the first token; the server answers without a challenge.
        let (status, body) = send(client, "GET", &format!("{url}/open"), "").await.unwrap();
        assert_eq!((status, body.starts_with("open")), (200, true), "{body}");
        let s = client.stats();
        assert_eq!((s.connections, s.handshakes, s.failed_handshakes, s.round_trips), (1, 0, 0, 1), "{s:?}");
    }
    // The connection is pooled, not authenticated: a challenge on it runs the handshake there.
    let (status, _) = send(&ntlm, "GET", &format!("{url}/private"), "").await.unwrap();
    assert_eq!(status, 200);
    let s = ntlm.stats();
    assert_eq!((s.connections, s.handshakes, s.reused), (1, 1, 1), "{s:?}");
    // This server offers NTLM only: Negotiate says so.
    let err = send(&negotiate, "GET", &format!("{url}/private"), "").await.unwrap_err();
    assert!(err.is_no_scheme(), "{err:?}");
    assert_eq!(seen.connections.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn hostile_servers_give_typed_errors_never_a_panic() {
    let (url, _) = server().await;
    let client: Win = WindowsAuth::ntlm(USER, PASS).build().unwrap();
    let err = send(&client, "GET", &format!("{url}/close-mid"), "").await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    let err = send(&client, "GET", &format!("{url}/truncated"), "").await.unwrap_err();
    assert!(err.is_protocol(), "{err:?}");
    let err = send(&client, "GET", &format!("{url}/basic-only"), "").await.unwrap_err();
    assert!(err.is_no_scheme(), "{err:?}");
    let err = send(&client, "GET", &format!("{url}/forever"), "").await.unwrap_err();
    assert!(err.is_rejected() || err.is_too_many_legs(), "{err:?}");
    // Garbage challenges, with and without a valid signature: an error each time.
    for seed in 0..200u64 {
        let err = send(&client, "GET", &format!("{url}/garbage/{seed}"), "").await.unwrap_err();
        assert!(err.is_protocol() || err.is_rejected(), "seed {seed}: {err:?}");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(client.idle_connections(), 0, "a failed connection was pooled");
    assert_eq!(client.stats().handshakes, 0);
}

#[tokio::test]
async fn the_pool_is_bounded_and_each_connection_handshakes_once() {
    let (url, seen) = server().await;
    let client: Win = WindowsAuth::ntlm(USER, PASS).max_connections(3).build().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move { send(&client, "GET", &format!("{url}/n{i}"), "").await.unwrap() });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().0, 200);
    }
    let s = client.stats();
    let conns = seen.connections.load(Ordering::Relaxed) as u64;
    assert!(conns <= 3, "{conns} connections for a bound of 3");
    assert_eq!(s.connections, conns);
    assert_eq!(s.handshakes, conns);
    assert_eq!(seen.authenticated.load(Ordering::Relaxed), conns);
    assert_eq!(s.reused + s.handshakes, 30);
}

#[tokio::test]
async fn idle_connections_expire() {
    let (url, seen) = server().await;
    let client: Win = WindowsAuth::ntlm(USER, PASS).idle_timeout(Duration::from_millis(100)).build().unwrap();
    send(&client, "GET", &format!("{url}/a"), "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(client.idle_connections(), 1);
    // The reaper closes it after the idle timeout, without waiting for another request.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(client.idle_connections(), 0);
    send(&client, "GET", &format!("{url}/b"), "").await.unwrap();
    assert_eq!(seen.connections.load(Ordering::Relaxed), 2);
    assert_eq!(client.stats().handshakes, 2);
}

#[tokio::test]
async fn requests_the_client_cannot_send() {
    let client: Win = WindowsAuth::ntlm(USER, PASS).build().unwrap();
    let err = send(&client, "GET", "ftp://127.0.0.1/x", "").await.unwrap_err();
    assert!(err.is_request(), "{err:?}");
    let err = send(&client, "GET", "/relative", "").await.unwrap_err();
    assert!(err.is_request(), "{err:?}");
    // Nothing listens on port 9 of 127.0.0.1 (discard): a connect error.
    let err = send(&client, "GET", "http://127.0.0.1:9/x", "").await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let _ = StatusCode::OK;
}

/// A proxy that answers the first `CONNECT` with a real NTLM challenge (from `sspi`'s acceptor)
/// and `Connection: close`: NTLM cannot go on on another connection, so the tunnel must fail
/// with a typed error after one `CONNECT`, not start over on a new connection.
#[tokio::test]
async fn connect_through_a_proxy_that_closes_mid_handshake_fails_typed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower_auth::connect::{Proxies, Proxy, ProxyConnector, ProxyError};
    use tower_auth::ntlm::{ConnectAuth, Credentials, Mechanism};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let token = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Proxy-Authorization: NTLM ")
                        .or_else(|| l.strip_prefix("proxy-authorization: NTLM "))
                })
                .map(|t| STANDARD.decode(t.trim()).unwrap())
                .unwrap_or_default();
            let mut conn =
                Conn { ntlm: NtlmAcceptor::new(USER, PASS), authenticated: false, reauth_done: false, no: 1 };
            let challenge = accept(&mut conn, &token).map(|(_, out)| out).unwrap_or_default();
            let res = format!(
                "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: NTLM {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                STANDARD.encode(challenge)
            );
            let _ = stream.write_all(res.as_bytes()).await;
        }
    });
    let proxy = Proxy::parse(&format!("http://{addr}"))
        .unwrap()
        .auth(ConnectAuth::new(Mechanism::Ntlm, Credentials::new(USER, PASS)));
    let mut connector = ProxyConnector::new(Proxies::all(proxy));
    let err = tower::Service::call(&mut connector, "https://127.0.0.1:1/".parse().unwrap()).await.unwrap_err();
    let err: &ProxyError = &err;
    assert!(err.is_closed(), "{err:?}");
    assert!(err.to_string().contains("connection-bound"), "{err}");
    assert_eq!(connector.connect_exchanges(), 1);
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "no second connection");
}

/// Pools of origins with no connection left are forgotten when a new origin comes: a client
/// that talks to many origins over time keeps only the live ones.
#[tokio::test]
async fn pools_without_connections_are_forgotten() {
    let client: Win = WindowsAuth::ntlm(USER, PASS).idle_timeout(Duration::from_millis(50)).build().unwrap();
    let mut urls = Vec::new();
    for _ in 0..3 {
        let (url, _) = server().await;
        send(&client, "GET", &format!("{url}/a"), "").await.unwrap();
        urls.push(url);
    }
    assert_eq!(client.pools(), 3);
    // The reaper closes the idle connections; the pools stay until a new origin comes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(client.pools(), 3);
    let (url, _) = server().await;
    send(&client, "GET", &format!("{url}/a"), "").await.unwrap();
    assert_eq!(client.pools(), 1, "only the new origin's pool is left");
    // A pool with a live connection is kept.
    let (other, _) = server().await;
    send(&client, "GET", &format!("{other}/a"), "").await.unwrap();
    assert_eq!(client.pools(), 2);
}

/// A proxy that accepts the first `CONNECT` (SPNEGO's first token) with `200` and a final
/// Negotiate token that cannot verify: the tunnel is refused with a typed error, never used.
#[tokio::test]
async fn connect_with_a_final_token_that_does_not_verify_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower_auth::connect::{Proxies, Proxy, ProxyConnector, ProxyError};
    use tower_auth::ntlm::{ConnectAuth, Credentials, Mechanism};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let saw_token = Arc::new(AtomicUsize::new(0));
    let saw = Arc::clone(&saw_token);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            if head.contains("proxy-authorization: negotiate ") {
                saw.fetch_add(1, Ordering::Relaxed);
            }
            let garbage = STANDARD.encode([0xa1, 0x05, 0x30, 0x03, 0x0a, 0x01, 0x07]);
            let res = format!("HTTP/1.1 200 Connection established\r\nProxy-Authenticate: Negotiate {garbage}\r\n\r\n");
            let _ = stream.write_all(res.as_bytes()).await;
        }
    });
    // No KDC answers on port 9: SPNEGO's first token carries NTLM.
    let scheme = ConnectAuth::new(Mechanism::Negotiate, Credentials::new(USER, PASS)).kdc("tcp://127.0.0.1:9");
    let proxy = Proxy::parse(&format!("http://{addr}")).unwrap().auth(scheme);
    let mut connector = ProxyConnector::new(Proxies::all(proxy));
    let err = tower::Service::call(&mut connector, "https://127.0.0.1:1/".parse().unwrap()).await.unwrap_err();
    let err: &ProxyError = &err;
    assert!(err.is_protocol(), "{err:?}");
    assert!(err.to_string().contains("mutual authentication"), "{err}");
    assert!(!err.to_string().contains(PASS));
    assert_eq!(saw_token.load(Ordering::Relaxed), 1);
    assert_eq!(connector.connect_exchanges(), 1);
}

/// Dropping the client closes its idle connections at once (an idle connection holds its pool,
/// which must not keep them open until the idle timeout).
#[tokio::test]
async fn dropping_the_client_closes_its_connections() {
    let (url, seen) = server().await;
    let client: Win = WindowsAuth::ntlm(USER, PASS).build().unwrap();
    send(&client, "GET", &format!("{url}/a"), "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(client.idle_connections(), 1);
    assert_eq!(seen.closed.load(Ordering::Relaxed), 0);
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.closed.load(Ordering::Relaxed), 1, "the idle connection was closed");
}
