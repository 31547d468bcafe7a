//! Negotiate with the ticket of the Kerberos credential cache (`kinit`; feature `gssapi`: the
//! system's MIT Kerberos through `libgssapi`), against the Kerberos peer (`tests/peers/kerberos.sh`:
//! an MIT KDC and Apache with mod_auth_gssapi; SKIPPED outside CI when missing, an error under
//! CI), and the server's final token checked by both backends (this one and `sspi`'s).
//!
//! The credential cache is chosen by `KRB5CCNAME`, which the system library reads from the
//! process environment. Changing this process's environment is unsafe with threads, so each
//! library test that needs a cache runs again in a child process of this test binary, made with
//! the cache of its own `kinit` in its environment (`in_child`); `fetch` runs as a child anyway.
// Without the feature only the `sspi` test runs; the cache helpers stay unused.
#![cfg_attr(not(feature = "gssapi"), allow(dead_code, unused_imports))]

mod support;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_auth::ntlm::WindowsAuth;

use support::https::fetch;
use support::peers::{self, Kerberos};
use support::windows::{Win, send_full as send};

const PRINCIPAL: &str = "alice@TOWERAUTH.TEST";
const PASS: &str = "Passw0rd!";

fn peer() -> Option<&'static Kerberos> {
    peers::kerberos()
}

/// A credential cache in `dir` with alice's ticket (lifetime `lifetime`, e.g. `"3s"`, if given).
fn kinit(p: &Kerberos, dir: &std::path::Path, lifetime: Option<&str>) -> String {
    let ccache = format!("FILE:{}/cc", dir.display());
    p.kinit(&ccache, lifetime);
    ccache
}

/// `test` again in a child process with `KRB5CCNAME=ccache` (see `Kerberos::rerun_in_child`):
/// `true` in the child (run the body), `false` in the parent once the child passed.
fn in_child(test: &str, p: &Kerberos, ccache: &str) -> bool {
    p.rerun_in_child(test, &[("KRB5CCNAME", ccache)])
}

#[cfg(feature = "gssapi")]
fn from_cache(max_connections: usize) -> Win {
    WindowsAuth::builder()
        .origin(tower_auth::ntlm::Mechanism::Negotiate, tower_auth::ntlm::Credentials::from_cache())
        .max_connections(max_connections)
        .build()
        .unwrap()
}

#[cfg(feature = "gssapi")]
#[tokio::test]
async fn a_ticket_from_the_credential_cache_authenticates_a_pool_of_connections() {
    let Some(p) = peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ccache = if peers::in_kerberos_child() { String::new() } else { kinit(p, dir.path(), None) };
    if !in_child("a_ticket_from_the_credential_cache_authenticates_a_pool_of_connections", p, &ccache) {
        return;
    }
    let client = from_cache(4);
    let url = format!("{}/negotiate/hello.txt", p.url);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move { send(&client, "GET", &url, "").await }));
    }
    for task in tasks {
        let (status, headers, body) = task.await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (200, "hello kerberos\n"));
        assert_eq!(headers["x-remote-user"], PRINCIPAL);
    }
    let s = client.stats();
    // One leg per request: the AP-REQ goes with the first request of each connection, the
    // server's AP-REP (its final token) verified; then the connection stays authenticated.
    assert_eq!(s.round_trips, 40, "{s:?}");
    assert!(s.handshakes >= 1 && s.handshakes <= 4, "{s:?}");
    assert_eq!(s.handshakes + s.reused, 40, "{s:?}");
    assert_eq!(s.failed_handshakes, 0, "{s:?}");
    println!("credential cache, 40 requests over at most 4 connections: {s:?}");
}

#[cfg(feature = "gssapi")]
#[tokio::test]
async fn no_ticket_in_the_credential_cache_is_a_typed_error() {
    let Some(p) = peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A cache that does not exist.
    let ccache = format!("FILE:{}/none", dir.path().display());
    if !in_child("no_ticket_in_the_credential_cache_is_a_typed_error", p, &ccache) {
        return;
    }
    let client = from_cache(2);
    let err = send(&client, "GET", &format!("{}/negotiate/hello.txt", p.url), "").await.unwrap_err();
    assert!(err.is_credentials(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("kinit") && text.contains("No Kerberos credentials available"), "{text}");
    assert_eq!(client.stats().round_trips, 0, "nothing was sent");
    assert_eq!(client.idle_connections(), 0);
}

#[cfg(feature = "gssapi")]
#[tokio::test]
async fn an_expired_ticket_is_a_typed_error() {
    let Some(p) = peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ccache = if peers::in_kerberos_child() {
        String::new()
    } else {
        // Well past its end: MIT compares whole seconds.
        let cc = kinit(p, dir.path(), Some("1s"));
        std::thread::sleep(std::time::Duration::from_millis(3000));
        cc
    };
    if !in_child("an_expired_ticket_is_a_typed_error", p, &ccache) {
        return;
    }
    let client = from_cache(2);
    let err = send(&client, "GET", &format!("{}/negotiate/hello.txt", p.url), "").await.unwrap_err();
    assert!(err.is_credentials(), "{err:?}");
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(client.stats().round_trips, 0);
}

#[cfg(feature = "gssapi")]
#[tokio::test]
async fn fetch_negotiate_with_the_credential_cache() {
    let Some(p) = peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ccache = kinit(p, dir.path(), None);
    let url = format!("{}/negotiate/hello.txt", p.url);
    let env = [("KRB5_CONFIG", p.krb5_config.as_str()), ("KRB5CCNAME", ccache.as_str())];
    let run = fetch(&["--negotiate", "-u", ":", "-n", "100", "-c", "8", &url], &env).await;
    run.assert(0, "200:100", 100, PASS);
    let line = run.stderr.lines().find(|l| l.starts_with("windows-auth ")).unwrap();
    let handshakes: u64 = line.split(' ').find_map(|kv| kv.strip_prefix("handshakes=")).unwrap().parse().unwrap();
    assert!((1..=8).contains(&handshakes), "{line}");
    eprintln!("fetch --negotiate -u : -n 100 -c 8: {line}; {}", run.stderr.lines().last().unwrap());
    // Without a ticket: a typed error, nothing sent.
    let none = format!("FILE:{}/none", dir.path().display());
    let env = [("KRB5_CONFIG", p.krb5_config.as_str()), ("KRB5CCNAME", none.as_str())];
    let run = fetch(&["--negotiate", "-u", ":", &url], &env).await;
    run.assert(1, "err:1", 0, PASS);
    assert!(run.stderr.contains("kinit"), "{}", run.stderr);
}

/// A relay to Apache that alters one character of the server's final Negotiate token (the
/// `WWW-Authenticate` of its `200`, the AP-REP): as an attacker between client and server
/// would. Its URL keeps the host name `localhost` (the service principal).
async fn tampering_relay(upstream: &str) -> String {
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream_addr = format!("127.0.0.1:{}", upstream.rsplit(':').next().unwrap());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream_addr).await else { return };
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                // Responses: headers altered, bodies (Content-Length) passed on.
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 8192];
                    let Ok(n) = sr.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        let body: Vec<u8> = buf[end + 4..end + 4 + len].to_vec();
                        buf.drain(..end + 4 + len);
                        let head = if head.starts_with("HTTP/1.1 200") { tamper(&head) } else { head };
                        if cw.write_all(head.as_bytes()).await.is_err() || cw.write_all(&body).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://localhost:{port}")
}

/// The head with one base64 character of the `Negotiate` token replaced, three quarters in.
fn tamper(head: &str) -> String {
    head.split("\r\n")
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            if !lower.starts_with("www-authenticate: negotiate ") {
                return line.to_owned();
            }
            let start = "www-authenticate: negotiate ".len();
            let mut bytes = line.as_bytes().to_vec();
            let token_len = bytes.len() - start;
            let at = start + token_len * 3 / 4;
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            String::from_utf8(bytes).unwrap()
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

async fn assert_mutual_authentication_fails(client: &Win, url: &str) {
    let err = send(client, "GET", url, "").await.unwrap_err();
    assert!(err.is_protocol(), "{err:?}");
    assert!(err.to_string().contains("mutual authentication"), "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(client.idle_connections(), 0, "the connection is not kept");
    assert_eq!(client.stats().handshakes, 0);
}

#[tokio::test]
async fn a_final_token_altered_in_transit_fails_the_request_sspi() {
    let Some(p) = peer() else { return };
    let url = format!("{}/negotiate/hello.txt", tampering_relay(&p.url).await);
    let client: Win =
        WindowsAuth::negotiate(r"TOWERAUTH.TEST\alice", PASS).kdc(&p.kdc).kerberos_only().build().unwrap();
    assert_mutual_authentication_fails(&client, &url).await;
    // Straight to Apache, the same client succeeds.
    let (status, _, _) = send(&client, "GET", &format!("{}/negotiate/hello.txt", p.url), "").await.unwrap();
    assert_eq!(status, 200);
}

#[cfg(feature = "gssapi")]
#[tokio::test]
async fn a_final_token_altered_in_transit_fails_the_request_gssapi() {
    let Some(p) = peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ccache = if peers::in_kerberos_child() { String::new() } else { kinit(p, dir.path(), None) };
    if !in_child("a_final_token_altered_in_transit_fails_the_request_gssapi", p, &ccache) {
        return;
    }
    let url = format!("{}/negotiate/hello.txt", tampering_relay(&p.url).await);
    let client = from_cache(2);
    assert_mutual_authentication_fails(&client, &url).await;
    let (status, _, _) = send(&client, "GET", &format!("{}/negotiate/hello.txt", p.url), "").await.unwrap();
    assert_eq!(status, 200);
}

#[cfg(feature = "gssapi")]
fn tls_for(p: &Kerberos) -> tower_auth::connect::tls::TlsConfig {
    let pem = std::fs::read(&p.ca).unwrap();
    tower_auth::connect::tls::TlsConfig::new().roots(tower_auth::connect::tls::Roots::None).add_ca_pem(&pem).unwrap()
}

/// The channel-binding peer's counters (`/stats`, no authentication).
#[cfg(feature = "gssapi")]
async fn cbt_stats(client: &Win, p: &Kerberos) -> serde_json::Value {
    let (status, _, body) = send(client, "GET", &format!("{}/stats", p.https_url), "").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The system's Kerberos binds the AP-REQ to the TLS channel as MIT reads it: MIT's acceptor
/// that requires bindings (tests/peers/kerberos_cbt.py) accepts a channel-bound context, and one
/// that expects another certificate's bindings refuses it for the bindings, with no retry.
#[cfg(feature = "gssapi")]
#[tokio::test]
async fn channel_bound_kerberos_over_https_from_the_credential_cache() {
    let Some(p) = peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ccache = if peers::in_kerberos_child() { String::new() } else { kinit(p, dir.path(), None) };
    if !in_child("channel_bound_kerberos_over_https_from_the_credential_cache", p, &ccache) {
        return;
    }
    let build = || -> Win {
        WindowsAuth::builder()
            .origin(tower_auth::ntlm::Mechanism::Negotiate, tower_auth::ntlm::Credentials::from_cache())
            .tls(tls_for(p))
            .build()
            .unwrap()
    };
    let stats = build();
    let before = cbt_stats(&stats, p).await;
    let client = build();
    let url = format!("{}/cbt", p.https_url);
    let (status, headers, body) = send(&client, "POST", &url, "over tls").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello cbt user=alice@TOWERAUTH.TEST len=8\n"), "{headers:?}");
    let (status, _, _) = send(&client, "GET", &url, "").await.unwrap();
    assert_eq!(status, 200);
    let s = client.stats();
    println!("Kerberos (system GSS-API) over HTTPS with channel binding required: {s:?}");
    assert_eq!((s.connections, s.handshakes, s.round_trips, s.reused, s.failed_handshakes), (1, 1, 2, 1, 0), "{s:?}");
    let after = cbt_stats(&stats, p).await;
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!((delta("handshakes"), delta("not_channel_bound"), delta("bad_bindings")), (1, 0, 0), "{after}");
    // Another certificate's bindings expected: refused for the bindings, one attempt.
    let client = build();
    let err = send(&client, "GET", &format!("{}/cbt", p.https_badcbt_url), "").await.unwrap_err();
    assert!(err.is_rejected(), "{err:?}");
    let s = client.stats();
    assert_eq!((s.round_trips, s.failed_handshakes), (1, 1), "{s:?}");
    let last = cbt_stats(&stats, p).await;
    assert_eq!(last["bad_bindings"].as_u64().unwrap() - after["bad_bindings"].as_u64().unwrap(), 1, "{last}");
}

/// `fetch --proxy-negotiate -U :` through Squid (negotiate_kerberos_auth): the ticket for
/// `HTTP/localhost`, the proxy's name, from the credential cache; with a plain-http target.
#[cfg(feature = "gssapi")]
#[tokio::test]
async fn fetch_proxy_negotiate_with_the_credential_cache() {
    let Some(p) = peer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ccache = kinit(p, dir.path(), None);
    let env = [("KRB5_CONFIG", p.krb5_config.as_str()), ("KRB5CCNAME", ccache.as_str())];
    // The target named by its address: a ticket asked for the target's name would not exist.
    let url = format!("{}/health", p.url.replace("localhost", "127.0.0.1"));
    let args = ["--proxy-negotiate", "-U", ":", "-x", &p.proxy_url, "-n", "20", "-c", "4", &url];
    let run = fetch(&args, &env).await;
    run.assert(0, "200:20", 20, PASS);
    eprintln!("fetch --proxy-negotiate -U : -n 20 -c 4: {}", run.stderr.lines().last().unwrap());
    let none = format!("FILE:{}/none", dir.path().display());
    let env = [("KRB5_CONFIG", p.krb5_config.as_str()), ("KRB5CCNAME", none.as_str())];
    let run = fetch(&["--proxy-negotiate", "-U", ":", "-x", &p.proxy_url, &url], &env).await;
    run.assert(1, "err:1", 0, PASS);
}
