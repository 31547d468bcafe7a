//! NTLM and Negotiate (NTLM inside SPNEGO) against a real acceptor (issue 11): pyspnego behind
//! an HTTP/1.1 front end that keeps connections authenticated like IIS
//! (`tests/peers/ntlm_server.py`, started by `tests/peers/ntlm.sh`; SKIPPED outside CI when it
//! cannot be had, an error under CI). The connection-bound client (`ntlm::WindowsAuth`), the
//! proxy (plain http on the client's own connections, `CONNECT` through `ProxyConnector` with
//! `ConnectAuth`), `fetch --ntlm`, and `curl --ntlm` as a cross-check of the set-up.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_auth::connect::{Proxies, Proxy, ProxyConnector};
use tower_auth::ntlm::{ConnectAuth, Credentials, Mechanism, WindowsAuth};

use support::https::{Origin, fetch};
use support::peers::{self, Ntlm};
use support::windows::{Win, send};

const USER: &str = r"TOWERAUTH\alice";
const UPN: &str = "alice@towerauth.test";
const PASS: &str = "Passw0rd!";

fn peer() -> Option<&'static Ntlm> {
    peers::ntlm()
}

#[tokio::test]
async fn ntlm_get_with_domain_user_authenticates_the_connection_once() {
    let Some(p) = peer() else { return };
    let client: Win = WindowsAuth::ntlm(USER, PASS).build().unwrap();
    let (status, body) = send(&client, "GET", &format!("{}/hello", p.url), "").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r"user=TOWERAUTH\alice"), "{body}");
    let s = client.stats();
    assert_eq!((s.connections, s.handshakes, s.round_trips, s.reused), (1, 1, 2, 0), "{s:?}");
    // The next request reuses the authenticated connection: one round trip, no handshake.
    let (status, _) = send(&client, "GET", &format!("{}/again", p.url), "").await.unwrap();
    assert_eq!(status, 200);
    let s = client.stats();
    assert_eq!((s.connections, s.handshakes, s.round_trips, s.reused), (1, 1, 3, 1), "{s:?}");
}

#[tokio::test]
async fn upn_and_plain_user_names() {
    let Some(p) = peer() else { return };
    for (user, pass, seen) in [(UPN, PASS, "user=alice@towerauth.test"), ("bob", "hunter2", "user=bob ")] {
        let client: Win = WindowsAuth::ntlm(user, pass).build().unwrap();
        let (status, body) = send(&client, "GET", &format!("{}/who", p.url), "").await.unwrap();
        assert_eq!(status, 200, "{user}: {body}");
        assert!(body.contains(seen), "{user}: {body}");
    }
}

#[tokio::test]
async fn wrong_password_or_domain_is_a_typed_error_and_the_connection_is_closed() {
    let Some(p) = peer() else { return };
    for (user, pass) in [(USER, "wrong-password"), (r"OTHERDOM\alice", PASS), ("nobody", "xyzzy-9")] {
        let client: Win = WindowsAuth::ntlm(user, pass).build().unwrap();
        let err = send(&client, "GET", &format!("{}/x", p.url), "").await.unwrap_err();
        assert!(err.is_rejected(), "{user}: {err:?}");
        assert_eq!(err.legs(), 2, "{err}");
        assert_eq!(err.status(), Some(http::StatusCode::UNAUTHORIZED));
        let text = format!("{err} {err:?} {client:?}");
        assert!(!text.contains(pass), "password leaked: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(client.idle_connections(), 0, "a failed connection was pooled");
        let s = client.stats();
        assert_eq!((s.handshakes, s.failed_handshakes), (0, 1), "{s:?}");
    }
}

#[tokio::test]
async fn post_body_goes_on_the_last_leg() {
    let Some(p) = peer() else { return };
    let client: Win = WindowsAuth::ntlm(USER, PASS).build().unwrap();
    let (status, body) = send(&client, "POST", &format!("{}/post", p.url), "a=1&b=two").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("POST /post"), "{body}");
    assert!(body.contains("len=9 body=a=1&b=two"), "{body}");
    // And on the authenticated connection, in one request.
    let (_, body) = send(&client, "PUT", &format!("{}/put", p.url), "second").await.unwrap();
    assert!(body.contains("len=6 body=second"), "{body}");
    assert_eq!(client.stats().round_trips, 3);
}

#[tokio::test]
async fn negotiate_with_ntlm_inside_spnego() {
    let Some(p) = peer() else { return };
    let client: Win = WindowsAuth::negotiate(USER, PASS).build().unwrap();
    // The body goes with the token that answers the challenge (NTLM's authenticate message);
    // the server's final SPNEGO token (its mechListMIC) is verified.
    let (status, body) = send(&client, "POST", &format!("{}/negotiate", p.url), "spnego body").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r"user=TOWERAUTH\alice len=11 body=spnego body"), "{body}");
    assert_eq!(client.stats().handshakes, 1);
    let client: Win = WindowsAuth::negotiate(USER, "bad").build().unwrap();
    let err = send(&client, "GET", &format!("{}/negotiate", p.url), "").await.unwrap_err();
    assert!(err.is_rejected(), "{err:?}");
}

#[tokio::test]
async fn hundred_requests_over_eight_concurrent_handshake_once_per_connection() {
    let Some(p) = peer() else { return };
    let client: Win = WindowsAuth::ntlm(USER, PASS).max_connections(8).build().unwrap();
    let url = format!("{}/load", p.url);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            for _ in 0..(100 / 8 + 1) {
                let (status, _) = send(&client, "GET", &url, "").await.unwrap();
                assert_eq!(status, 200);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let s = client.stats();
    let requests = 8 * (100 / 8 + 1);
    assert!(s.connections <= 8 && s.connections >= 1, "{s:?}");
    assert_eq!(s.handshakes, s.connections, "one handshake per connection: {s:?}");
    assert_eq!(s.failed_handshakes, 0);
    assert_eq!(s.reused + s.handshakes, requests, "{s:?}");
    assert_eq!(s.round_trips, requests + s.handshakes, "{s:?}");
}

#[tokio::test]
async fn hostile_servers_give_typed_errors() {
    let Some(p) = peer() else { return };
    let client: Win = WindowsAuth::ntlm(USER, PASS).build().unwrap();
    let err = send(&client, "GET", &format!("{}/drop/x", p.url), "").await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    let err = send(&client, "GET", &format!("{}/forever/x", p.url), "").await.unwrap_err();
    assert!(err.is_rejected() || err.is_too_many_legs(), "{err:?}");
    assert!(err.legs() <= tower_auth::ntlm::MAX_LEGS);
    for path in ["truncated", "badoffset"] {
        let err = send(&client, "GET", &format!("{}/{path}/x", p.url), "").await.unwrap_err();
        assert!(err.is_protocol(), "{path}: {err:?}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(client.stats().failed_handshakes, 4);
}

#[tokio::test]
async fn ntlm_to_the_proxy_for_plain_http() {
    let Some(p) = peer() else { return };
    let proxy = Proxy::parse(&p.proxy_url).unwrap();
    let client: Win = WindowsAuth::builder()
        .proxies(Proxies::all(proxy))
        .proxy_auth(Mechanism::Ntlm, Credentials::new(USER, PASS))
        .build()
        .unwrap();
    for _ in 0..3 {
        let (status, body) = send(&client, "GET", &format!("{}/open/through", p.url), "").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "open\n"));
    }
    let s = client.stats();
    assert_eq!((s.connections, s.handshakes, s.round_trips), (1, 1, 4), "{s:?}");
    // Wrong password: the proxy refuses.
    let client: Win = WindowsAuth::builder()
        .proxies(Proxies::all(Proxy::parse(&p.proxy_url).unwrap()))
        .proxy_auth(Mechanism::Ntlm, Credentials::new(USER, "nope"))
        .build()
        .unwrap();
    let err = send(&client, "GET", &format!("{}/open/x", p.url), "").await.unwrap_err();
    assert!(err.is_rejected(), "{err:?}");
    assert_eq!(err.status(), Some(http::StatusCode::PROXY_AUTHENTICATION_REQUIRED));
}

#[tokio::test]
async fn ntlm_on_connect_through_the_proxy() {
    let Some(p) = peer() else { return };
    let origin = Origin::local().await;
    let proxy =
        Proxy::parse(&p.proxy_url).unwrap().auth(ConnectAuth::new(Mechanism::Ntlm, Credentials::new(USER, PASS)));
    let connector = ProxyConnector::new(Proxies::all(proxy));
    let client =
        Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(origin.tls().https(connector.clone()).unwrap());
    let res = client.get(origin.url().parse().unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("authorization=-"), "{body:?}");
    // Type 1 -> 407 with type 2 -> type 3 -> 200, on one connection.
    assert_eq!(connector.connect_exchanges(), 2);
    origin.assert_no_leak();
    // A wrong password: a typed ProxyError, no loop.
    let proxy =
        Proxy::parse(&p.proxy_url).unwrap().auth(ConnectAuth::new(Mechanism::Ntlm, Credentials::new(USER, "no")));
    let connector = ProxyConnector::new(Proxies::all(proxy));
    let client =
        Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(origin.tls().https(connector.clone()).unwrap());
    let err = client.get(origin.url().parse().unwrap()).await.unwrap_err();
    let proxy_err = tower_auth::connect::ProxyError::find(&err).unwrap_or_else(|| panic!("{err:?}"));
    assert!(proxy_err.is_auth_required(), "{proxy_err:?}");
    assert_eq!(connector.connect_exchanges(), 2);
}

#[tokio::test]
async fn windows_auth_over_a_connect_tunnel_with_proxy_ntlm() {
    let Some(p) = peer() else { return };
    let origin = Origin::local().await;
    let client: Win = WindowsAuth::builder()
        .proxies(Proxies::all(Proxy::parse(&p.proxy_url).unwrap()))
        .proxy_auth(Mechanism::Ntlm, Credentials::new(USER, PASS))
        .tls(origin.tls())
        .build()
        .unwrap();
    let (status, body) = send(&client, "GET", &origin.url(), "").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("HTTP/1.1"), "HTTP/1.1 only: {body}");
    assert_eq!(client.connect_exchanges(), 2);
    origin.assert_no_leak();
}

#[tokio::test]
async fn fetch_ntlm_hundred_requests_eight_concurrent() {
    let Some(p) = peer() else { return };
    let url = format!("{}/fetch", p.url);
    let run = fetch(&["--ntlm", "-u", &format!("{USER}:{PASS}"), "-n", "100", "-c", "8", &url], &[]).await;
    let s = run.summary();
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(s["ok"], "100", "{run:?}");
    let line = run.stderr.lines().find(|l| l.starts_with("windows-auth ")).unwrap_or_else(|| panic!("{run:?}"));
    let field = |k: &str| -> u64 {
        line.split(' ').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')).unwrap().parse().unwrap()
    };
    let (connections, handshakes) = (field("connections"), field("handshakes"));
    assert!((1..=8).contains(&connections) && handshakes == connections, "{line}");
    assert_eq!(s["round_trips"], (100 + handshakes).to_string(), "{run:?}");
    assert!(!run.stderr.contains(PASS), "{run:?}");
    eprintln!("fetch --ntlm -n 100 -c 8: {line}; {}", run.stderr.lines().last().unwrap());

    let run = fetch(&["--ntlm", "-u", &format!("{USER}:wrong"), &url], &[]).await;
    run.assert(1, "err:1", 2, "wrong");
}

#[tokio::test]
async fn fetch_proxy_ntlm_for_plain_http() {
    let Some(p) = peer() else { return };
    let url = format!("{}/open/via-proxy", p.url);
    let run = fetch(&["-x", &p.proxy_url, "--proxy-ntlm", "-U", &format!("{USER}:{PASS}"), "-n", "3", &url], &[]).await;
    run.assert(0, "200:3", 4, PASS);
}

#[tokio::test]
async fn curl_ntlm_cross_check() {
    let Some(p) = peer() else { return };
    let Some(curl) = peers::curl() else { return };
    let out = std::process::Command::new(curl)
        .args(["-sS", "--ntlm", "-u", &format!("{USER}:{PASS}"), &format!("{}/curl", p.url)])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains(r"user=TOWERAUTH\alice"), "{body} {}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(peers::curl().unwrap())
        .args([
            "-sS",
            "-x",
            &p.proxy_url,
            "--proxy-ntlm",
            "-U",
            &format!("{USER}:{PASS}"),
            &format!("{}/open/c", p.url),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "open\n");
}

fn tls_for(p: &Ntlm) -> tower_auth::connect::tls::TlsConfig {
    let pem = std::fs::read(&p.ca).unwrap();
    tower_auth::connect::tls::TlsConfig::new().roots(tower_auth::connect::tls::Roots::None).add_ca_pem(&pem).unwrap()
}

#[tokio::test]
async fn https_with_extended_protection_needs_the_channel_binding() {
    let Some(p) = peer() else { return };
    let client: Win = WindowsAuth::ntlm(USER, PASS).tls(tls_for(p)).build().unwrap();
    // The server checks the tls-server-end-point hash of its certificate in the type 3 message.
    let (status, body) = send(&client, "POST", &format!("{}/cbt", p.https_url), "over tls").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r"user=TOWERAUTH\alice len=8 body=over tls"), "{body}");
    // A server that expects another certificate's binding (a TLS-intercepting box in between)
    // refuses the same credentials.
    let err = send(&client, "GET", &format!("{}/cbt", p.https_badcbt_url), "").await.unwrap_err();
    assert!(err.is_rejected(), "{err:?}");
    // Negotiate (NTLM inside SPNEGO) carries the binding too.
    let client: Win = WindowsAuth::negotiate(USER, PASS).tls(tls_for(p)).build().unwrap();
    let (status, body) = send(&client, "GET", &format!("{}/cbt", p.https_url), "").await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn fetch_ntlm_over_https_and_curl_without_binding() {
    let Some(p) = peer() else { return };
    let url = format!("{}/fetch-tls", p.https_url);
    let run =
        fetch(&["--cacert", &p.ca, "--ntlm", "-u", &format!("{USER}:{PASS}"), "-n", "20", "-c", "4", &url], &[]).await;
    assert_eq!(run.summary()["ok"], "20", "{run:?}");
    // curl sends no channel binding: a server with Extended Protection required refuses it.
    let Some(curl) = peers::curl() else { return };
    let out = std::process::Command::new(curl)
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", &p.ca, "--ntlm", "-u"])
        .arg(format!("{USER}:{PASS}"))
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}

#[tokio::test]
async fn negotiate_to_the_proxy_plain_http_and_connect() {
    let Some(p) = peer() else { return };
    let client: Win = WindowsAuth::builder()
        .proxies(Proxies::all(Proxy::parse(&p.proxy_url).unwrap()))
        .proxy_auth(Mechanism::Negotiate, Credentials::new(USER, PASS))
        .build()
        .unwrap();
    let (status, body) = send(&client, "GET", &format!("{}/open/negotiate", p.url), "").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "open\n"));
    assert_eq!(client.stats().handshakes, 1);
    // CONNECT with Negotiate (NTLM inside SPNEGO) to a TLS origin.
    let origin = Origin::local().await;
    let proxy =
        Proxy::parse(&p.proxy_url).unwrap().auth(ConnectAuth::new(Mechanism::Negotiate, Credentials::new(USER, PASS)));
    let connector = ProxyConnector::new(Proxies::all(proxy));
    let https =
        Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(origin.tls().https(connector.clone()).unwrap());
    let res = https.get(origin.url().parse().unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(connector.connect_exchanges(), 2);
    // fetch --proxy-negotiate.
    let run = fetch(
        &[
            "-x",
            &p.proxy_url,
            "--proxy-negotiate",
            "-U",
            &format!("{USER}:{PASS}"),
            "-n",
            "2",
            &format!("{}/open/f", p.url),
        ],
        &[],
    )
    .await;
    run.assert(0, "200:2", 3, PASS);
}

#[tokio::test]
async fn ntlm_to_the_proxy_and_to_the_origin_inside_the_tunnel() {
    let Some(p) = peer() else { return };
    // CONNECT authenticated with NTLM by the proxy, then NTLM with channel binding to the HTTPS
    // origin inside the tunnel: two handshakes of two kinds on one connection.
    let client: Win = WindowsAuth::ntlm(USER, PASS)
        .proxies(Proxies::all(Proxy::parse(&p.proxy_url).unwrap()))
        .proxy_auth(Mechanism::Ntlm, Credentials::new("bob", "hunter2"))
        .tls(tls_for(p))
        .build()
        .unwrap();
    for _ in 0..3 {
        let (status, body) = send(&client, "GET", &format!("{}/both", p.https_url), "").await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r"user=TOWERAUTH\alice"), "{body}");
    }
    let s = client.stats();
    assert_eq!((s.connections, s.handshakes, s.reused), (1, 1, 2), "{s:?}");
    assert_eq!(client.connect_exchanges(), 2);
}
