//! Negotiate with Kerberos against real peers (issue 11): MIT Kerberos (a realm made at
//! start-up) and Apache httpd with mod_auth_gssapi protecting `/negotiate/` (started by
//! `tests/peers/kerberos.sh`; SKIPPED outside CI when missing, an error under CI). Tickets from a
//! password through `sspi`'s Kerberos client (the KDC given to the builder, or found in the
//! realm's `krb5.conf` through `KRB5_CONFIG` by `fetch`), the server's final token verified,
//! connections authenticated once and pooled; `curl --negotiate` with a `kinit` ticket as a
//! cross-check of the set-up.

mod support;

use tower_auth::ntlm::WindowsAuth;

use support::https::fetch;
use support::peers::{self, Kerberos};
use support::windows::{Win, send_full as send};

const USER: &str = r"TOWERAUTH.TEST\alice";
const PASS: &str = "Passw0rd!";

fn peer() -> Option<&'static Kerberos> {
    peers::kerberos()
}

#[tokio::test]
async fn kerberos_ticket_from_a_password_one_leg_mutual_authentication() {
    let Some(p) = peer() else { return };
    for user in [USER, "alice@TOWERAUTH.TEST", "alice@towerauth.test"] {
        let client: Win = WindowsAuth::negotiate(user, PASS).kdc(&p.kdc).kerberos_only().build().unwrap();
        let (status, headers, body) =
            send(&client, "GET", &format!("{}/negotiate/hello.txt", p.url), "").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "hello kerberos\n"), "{user}");
        assert_eq!(headers["x-remote-user"], "alice@TOWERAUTH.TEST");
        // The AP-REQ goes on the first request; the server's AP-REP (its final token) verified.
        let s = client.stats();
        assert_eq!((s.connections, s.handshakes, s.round_trips), (1, 1, 1), "{user}: {s:?}");
        send(&client, "GET", &format!("{}/negotiate/hello.txt", p.url), "").await.unwrap();
        assert_eq!(client.stats().reused, 1);
    }
}

#[tokio::test]
async fn kerberos_wrong_password_no_kdc_unknown_user_are_typed_errors() {
    let Some(p) = peer() else { return };
    let url = format!("{}/negotiate/hello.txt", p.url);
    let client: Win = WindowsAuth::negotiate(USER, "wrong-pass-42").kdc(&p.kdc).kerberos_only().build().unwrap();
    let err = send(&client, "GET", &url, "").await.unwrap_err();
    assert!(err.is_credentials(), "{err:?}");
    assert!(!format!("{err}{err:?}").contains("wrong-pass-42"));
    let client: Win =
        WindowsAuth::negotiate(r"TOWERAUTH.TEST\nobody", PASS).kdc(&p.kdc).kerberos_only().build().unwrap();
    assert!(send(&client, "GET", &url, "").await.unwrap_err().is_credentials());
    // No KDC listens on port 9.
    let client: Win = WindowsAuth::negotiate(USER, PASS).kdc("tcp://127.0.0.1:9").kerberos_only().build().unwrap();
    let err = send(&client, "GET", &url, "").await.unwrap_err();
    assert!(err.is_credentials(), "{err:?}");
    // With the NTLM fallback, the Kerberos-only server refuses: still a typed error, no loop.
    let client: Win = WindowsAuth::negotiate(USER, PASS).kdc("tcp://127.0.0.1:9").build().unwrap();
    let err = send(&client, "GET", &url, "").await.unwrap_err();
    assert!(err.legs() <= tower_auth::ntlm::MAX_LEGS, "{err:?}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(client.idle_connections(), 0);
}

#[tokio::test]
async fn kerberos_post_body_goes_with_the_ap_req() {
    let Some(p) = peer() else { return };
    // Apache serves a static file; a POST to it is answered 405 once authenticated: the point is
    // that the authenticated request carried the body (one leg, no replay).
    let client: Win = WindowsAuth::negotiate(USER, PASS).kdc(&p.kdc).build().unwrap();
    let (status, _, _) = send(&client, "POST", &format!("{}/negotiate/hello.txt", p.url), "x=1").await.unwrap();
    assert_ne!(status, 401);
    assert_eq!(client.stats().round_trips, 1);
}

#[tokio::test]
async fn kerberos_pool_under_concurrency() {
    let Some(p) = peer() else { return };
    let client: Win = WindowsAuth::negotiate(USER, PASS).kdc(&p.kdc).max_connections(4).build().unwrap();
    let url = format!("{}/negotiate/hello.txt", p.url);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move { send(&client, "GET", &url, "").await.unwrap().0 });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let s = client.stats();
    assert!(s.connections <= 4 && s.handshakes == s.connections, "{s:?}");
    assert_eq!(s.reused + s.handshakes, 40);
    assert_eq!(s.round_trips, 40);
}

#[tokio::test]
async fn fetch_negotiate_with_kerberos() {
    let Some(p) = peer() else { return };
    let url = format!("{}/negotiate/hello.txt", p.url);
    let env = [("KRB5_CONFIG", p.krb5_config.as_str())];
    let run = fetch(&["--negotiate", "-u", &format!("{USER}:{PASS}"), "-n", "100", "-c", "8", &url], &env).await;
    run.assert(0, "200:100", 100, PASS);
    let line = run.stderr.lines().find(|l| l.starts_with("windows-auth ")).unwrap();
    eprintln!("fetch --negotiate (Kerberos) -n 100 -c 8: {line}; {}", run.stderr.lines().last().unwrap());
    let run = fetch(&["--negotiate", "-u", &format!("{USER}:bad-pass-7"), &url], &env).await;
    run.assert(1, "err:1", 0, "bad-pass-7");
}

#[tokio::test]
async fn curl_negotiate_cross_check() {
    let Some(p) = peer() else { return };
    let Some(curl) = peers::curl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ccache = format!("FILE:{}/cc", dir.path().display());
    let mut kinit = std::process::Command::new("kinit")
        .arg("alice@TOWERAUTH.TEST")
        .env("KRB5_CONFIG", &p.krb5_config)
        .env("KRB5CCNAME", &ccache)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("kinit (krb5-user)");
    use std::io::Write as _;
    writeln!(kinit.stdin.take().unwrap(), "{PASS}").unwrap();
    assert!(kinit.wait().unwrap().success());
    let out = std::process::Command::new(curl)
        .args(["-sS", "--negotiate", "-u", ":", &format!("{}/negotiate/hello.txt", p.url)])
        .env("KRB5_CONFIG", &p.krb5_config)
        .env("KRB5CCNAME", &ccache)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello kerberos\n", "{}", String::from_utf8_lossy(&out.stderr));
}

fn keytab(p: &Kerberos) -> std::path::PathBuf {
    // kerberos.sh writes alice's keys next to the realm's krb5.conf.
    std::path::Path::new(&p.krb5_config).with_file_name("alice.keytab")
}

#[tokio::test]
async fn kerberos_with_a_keytab_made_by_kadmin() {
    let Some(p) = peer() else { return };
    let url = format!("{}/negotiate/hello.txt", p.url);
    for principal in [None, Some("alice@TOWERAUTH.TEST")] {
        let creds = tower_auth::ntlm::Credentials::from_keytab(principal, keytab(p)).unwrap();
        assert!(!format!("{creds:?}").contains("key: ["), "{creds:?}");
        let client: Win = WindowsAuth::builder()
            .origin(tower_auth::ntlm::Mechanism::Negotiate, creds)
            .kdc(&p.kdc)
            .kerberos_only()
            .build()
            .unwrap();
        let (status, headers, _) = send(&client, "GET", &url, "").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["x-remote-user"], "alice@TOWERAUTH.TEST");
    }
    let err = tower_auth::ntlm::Credentials::from_keytab(Some("bob@TOWERAUTH.TEST"), keytab(p)).unwrap_err();
    assert!(err.to_string().contains("no AES key"), "{err}");
    // fetch: -u : takes the file's first principal.
    let env = [("KRB5_CONFIG", p.krb5_config.as_str())];
    let kt = keytab(p);
    let run = fetch(&["--negotiate", "--keytab", kt.to_str().unwrap(), "-u", ":", &url], &env).await;
    run.assert(0, "200:1", 1, "Passw0rd!");
}

#[tokio::test]
async fn clock_skew_is_a_typed_error() {
    let Some(p) = peer() else { return };
    // kerberos.sh runs a second KDC of the realm 2 h ahead when Debian's faketime is installed.
    let ports =
        std::fs::read_to_string(std::path::Path::new(&p.krb5_config).with_file_name("ports")).unwrap_or_default();
    let Some(port) = ports.lines().find_map(|l| l.strip_prefix("skewed ")) else {
        let reason = "no skewed KDC (install faketime: apt-get install faketime)";
        assert!(std::env::var("CI").map_or(true, |v| v.is_empty() || v == "false" || v == "0"), "{reason}");
        eprintln!("SKIPPED clock_skew_is_a_typed_error: {reason}");
        return;
    };
    let url = format!("{}/negotiate/hello.txt", p.url);
    let kdc = format!("tcp://127.0.0.1:{port}");
    // sspi follows the KDC's clock (the time in its PREAUTH_REQUIRED error), so it gets a ticket;
    // the server, 2 h behind that KDC, finds it not yet valid (mod_auth_gssapi logs "Ticket not
    // yet valid") and refuses: a typed error after the one leg, the connection closed.
    let client: Win = WindowsAuth::negotiate(USER, PASS).kdc(&kdc).kerberos_only().build().unwrap();
    let err = send(&client, "GET", &url, "").await.unwrap_err();
    assert!(err.is_rejected(), "{err:?}");
    assert_eq!(err.legs(), 1, "{err:?}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(client.idle_connections(), 0);
    // With the NTLM fallback, the Kerberos-only server refuses: a typed error, no loop.
    let client: Win = WindowsAuth::negotiate(USER, PASS).kdc(&kdc).build().unwrap();
    let err = send(&client, "GET", &url, "").await.unwrap_err();
    assert!(err.legs() <= tower_auth::ntlm::MAX_LEGS, "{err:?}");
}
