//! HTTPS through real Squid proxies (issue 10): `CONNECT` answered with Basic (pre-emptively)
//! and with Digest (the `407` answered, later tunnels pre-authorised), TLS to a local origin
//! inside the tunnel, by the library and by `fetch`; `curl` through the same proxies as a
//! cross-check. Squid is started by `tests/peers/squid.sh` (see `tests/support/peers.rs`):
//! SKIPPED outside CI when missing, an error under CI.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_auth::connect::{Proxies, Proxy, ProxyConnector, ProxyError};
use tower_auth::{AuthLayer, Basic, Digest};

use support::https::Origin;
use support::peers::{self, Squid};

const USER: &str = "alice";
const PASS: &str = "s3cret";

/// The tests of this file take turns on the shared Squid: Squid's Digest nonces and its cache of
/// authenticated users are shared by every client, so a test counting round trips, or sending a
/// wrong password, would otherwise see another test's traffic (a stale nonce, one more `407`; and
/// once a wrong-password CONNECT let through while another test's right one was in flight).
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn squid() -> Option<(&'static Squid, tokio::sync::MutexGuard<'static, ()>)> {
    let turn = TURNS.lock().await;
    Some((peers::squid()?, turn))
}

type Https = Client<hyper_rustls::HttpsConnector<ProxyConnector>, Empty<Bytes>>;

fn https_client(o: &Origin, proxy: Proxy) -> (Https, ProxyConnector) {
    let connector = ProxyConnector::new(Proxies::all(proxy));
    (Client::builder(TokioExecutor::new()).build(o.tls().https(connector.clone()).unwrap()), connector)
}

async fn get(client: &Https, url: &str) -> Result<String, hyper_util::client::legacy::Error> {
    let res = client.get(url.parse().unwrap()).await?;
    assert_eq!(res.status(), 200);
    Ok(String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn library_basic_on_connect_through_squid() {
    let Some((squid, _turn)) = squid().await else { return };
    let o = Origin::local().await;
    let (client, connector) =
        https_client(&o, Proxy::parse(&squid.basic_url).unwrap().auth(Basic::proxy(USER, PASS).unwrap()));
    assert_eq!(get(&client, &o.server.url("/")).await.unwrap(), "HTTP/2.0 authorization=-");
    assert_eq!(connector.connect_exchanges(), 1, "Basic goes with the first CONNECT");
    o.assert_no_leak();
}

#[tokio::test(flavor = "multi_thread")]
async fn library_digest_on_connect_through_squid_then_pre_authorised() {
    let Some((squid, _turn)) = squid().await else { return };
    let o = Origin::local().await;
    let proxy = Proxy::parse(&squid.digest_url).unwrap().auth(Digest::proxy(USER, PASS).unwrap());
    let (first, c1) = https_client(&o, proxy.clone());
    // The origin's own credentials travel inside TLS, through the tunnel.
    let svc = ServiceBuilder::new().layer(AuthLayer::bearer("origin-t0ken").unwrap()).service(first);
    let req = http::Request::get(o.server.url("/")).body(Empty::<Bytes>::new()).unwrap();
    let body = svc.oneshot(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "HTTP/2.0 authorization=Bearer origin-t0ken");
    assert_eq!(c1.connect_exchanges(), 2, "407, then the answer");
    // Same scheme (same Digest state), new tunnels: pre-authorised, one CONNECT each.
    for _ in 0..3 {
        let (next, c) = https_client(&o, proxy.clone());
        get(&next, &o.server.url("/")).await.unwrap();
        assert_eq!(c.connect_exchanges(), 1);
    }
    o.assert_no_leak();
}

#[tokio::test(flavor = "multi_thread")]
async fn library_wrong_password_is_a_typed_error_after_two_connects() {
    let Some((squid, _turn)) = squid().await else { return };
    let o = Origin::local().await;
    let (client, connector) =
        https_client(&o, Proxy::parse(&squid.digest_url).unwrap().auth(Digest::proxy(USER, "wrong-pw").unwrap()));
    let err = get(&client, &o.server.url("/")).await.unwrap_err();
    let e = ProxyError::find(&err).unwrap();
    assert!(e.is_auth_required(), "{e:?}");
    assert_eq!((e.exchanges(), connector.connect_exchanges()), (2, 2));
    assert_eq!(e.proxy(), squid.digest_url);
    assert!(!format!("{e} {e:?} {err:?}").contains("wrong-pw"));
    let (client, _) =
        https_client(&o, Proxy::parse(&squid.basic_url).unwrap().auth(Basic::proxy(USER, "wrong-pw").unwrap()));
    let err = get(&client, &o.server.url("/")).await.unwrap_err();
    let e = ProxyError::find(&err).unwrap();
    assert!(e.to_string().contains("the proxy refused the credentials"), "{e}");
    assert_eq!(e.exchanges(), 1);
}

// ---------------------------------------------------------------------------------------------
// fetch and curl
// ---------------------------------------------------------------------------------------------

/// Runs fetch; returns its exit code, its summary's fields and its stderr.
async fn fetch(args: &[&str], env: &[(&str, &str)]) -> (i32, HashMap<String, String>, String) {
    let run = support::https::fetch(args, env).await;
    (run.code, run.summary(), run.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_through_squid_basic_and_digest_on_connect() {
    let Some((squid, _turn)) = squid().await else { return };
    let o = Origin::local().await;
    let url = o.server.url("/");
    let user = format!("{USER}:{PASS}");
    // Basic: one CONNECT, then 5 requests in the tunnel.
    let (code, s, err) = fetch(&["--cacert", o.ca(), "-x", &squid.basic_url, "-U", &user, "-n", "5", &url], &[]).await;
    assert_eq!((code, s["statuses"].as_str(), s["round_trips"].as_str()), (0, "200:5", "6"), "{err}");
    // Digest: 407 then the answer, then 5 requests in the tunnel.
    let (code, s, err) =
        fetch(&["--cacert", o.ca(), "-x", &squid.digest_url, "-U", &user, "--proxy-digest", "-n", "5", &url], &[])
            .await;
    assert_eq!((code, s["statuses"].as_str(), s["round_trips"].as_str()), (0, "200:5", "7"), "{err}");
    // anyauth against both.
    for proxy in [&squid.basic_url, &squid.digest_url] {
        let (code, s, err) = fetch(&["--cacert", o.ca(), "-x", proxy, "-U", &user, "--proxy-anyauth", &url], &[]).await;
        assert_eq!((code, s["statuses"].as_str(), s["round_trips"].as_str()), (0, "200:1", "3"), "{proxy}: {err}");
    }
    // Several tunnels at once (-c 4): one 407 in all, the others pre-authorised.
    let (code, s, err) = fetch(
        &["--cacert", o.ca(), "-x", &squid.digest_url, "-U", &user, "--proxy-digest", "-n", "20", "-c", "4", &url],
        &[],
    )
    .await;
    assert_eq!((code, s["statuses"].as_str()), (0, "200:20"), "{err}");
    let trips: u64 = s["round_trips"].parse().unwrap();
    assert!((20 + 2..=20 + 5).contains(&trips), "at most 4 tunnels, one 407: {trips}");
    o.assert_no_leak();
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_through_squid_from_the_environment() {
    let Some((squid, _turn)) = squid().await else { return };
    let o = Origin::local().await;
    let url = o.server.url("/");
    let with_user = |base: &str| base.replacen("http://", &format!("http://{USER}:{PASS}@"), 1);
    let (code, s, err) = fetch(&["--cacert", o.ca(), &url], &[("HTTPS_PROXY", &with_user(&squid.basic_url))]).await;
    assert_eq!((code, s["round_trips"].as_str()), (0, "2"), "{err}");
    let (code, s, err) =
        fetch(&["--cacert", o.ca(), "--proxy-digest", &url], &[("https_proxy", &with_user(&squid.digest_url))]).await;
    assert_eq!((code, s["round_trips"].as_str()), (0, "3"), "{err}");
    assert!(!err.contains(PASS));
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_cross_check_through_the_same_squid() {
    let Some((squid, _turn)) = squid().await else { return };
    let Some(curl) = peers::curl() else { return };
    let o = Origin::local().await;
    let url = o.server.url("/");
    let user = format!("{USER}:{PASS}");
    for (proxy, mode) in [
        (&squid.basic_url, "--proxy-basic"),
        (&squid.digest_url, "--proxy-digest"),
        (&squid.digest_url, "--proxy-anyauth"),
    ] {
        let args = ["-sS", "--http1.1", mode, "-U", &user, "-x", proxy, "--cacert", o.ca(), &url];
        let r = support::https::run(curl.clone(), &args, &[]).await;
        let (code, stdout, stderr) = (r.code, r.stdout, r.stderr);
        assert_eq!((code, stdout.as_str()), (0, "HTTP/1.1 authorization=-"), "curl {mode}: {stderr}");
    }
    // A wrong password: curl gives up on the 407 too.
    let args = ["-sS", "--proxy-digest", "-U", "alice:wrong", "-x", &squid.digest_url, "--cacert", o.ca(), &url];
    let r = support::https::run(curl.clone(), &args, &[]).await;
    let (code, stderr) = (r.code, r.stderr);
    assert_ne!(code, 0);
    assert!(stderr.contains("407"), "{stderr}");
    o.assert_no_leak();
}
