//! `fetch` with OAuth2: its options against the crate's fake identity provider (run in this
//! process, on its own thread), the `token_requests` figure of the summary line, and errors that
//! end with exit 1 and one line without the secret.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tower_auth::testing::idp::{self, IdpHandle, OAuthError};

/// A fresh fake identity provider on its own thread (each test configures its own).
fn idp() -> IdpHandle {
    support::idp_on_thread()
}

fn fetch_bin() -> &'static std::path::PathBuf {
    static BIN: OnceLock<std::path::PathBuf> = OnceLock::new();
    BIN.get_or_init(|| support::example::example_bin("fetch"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn summary(&self) -> HashMap<String, String> {
        support::fetch_summary(&self.stderr)
    }
}

fn fetch(args: &[&str]) -> Run {
    let out = Command::new(fetch_bin()).args(args).env("RUST_LOG", "off").output().unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[test]
fn client_credentials_one_token_for_forty_requests_at_concurrency_eight() {
    let idp = idp();
    idp.add_client("svc", "s3cret");
    let run = fetch(&[
        "--oauth2-token-url",
        &idp.token_url(),
        "--client-id",
        "svc",
        "--client-secret",
        "s3cret",
        "--scope",
        "orders:read",
        "-n",
        "40",
        "-c",
        "8",
        &idp.resource_url(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = run.summary();
    assert_eq!((s["ok"].as_str(), s["round_trips"].as_str()), ("40", "40"), "{}", run.stderr);
    assert_eq!(s["token_requests"], "1", "{}", run.stderr);
    assert_eq!(idp.token_requests(), 1);
    assert_eq!(idp.last_request().unwrap().scope.as_deref(), Some("orders:read"));
    assert!(!run.stderr.contains("s3cret") && !run.stdout.contains("s3cret"));
}

#[test]
fn a_rate_limited_run_spans_token_expiries_and_counts_every_token_request() {
    let idp = idp();
    idp.add_client("svc", "s3cret");
    idp.set_lifetime(Duration::from_secs(2));
    // 10 requests at 4 per second take about 2.5 s: tokens of 2 s (usable 1 s, replaced in the
    // background at about 1 s) are renewed during the run.
    let run = fetch(&[
        "--oauth2-token-url",
        &idp.token_url(),
        "--client-id",
        "svc",
        "--client-secret",
        "s3cret",
        "--rate",
        "4",
        "-n",
        "10",
        "-c",
        "2",
        &idp.resource_url(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = run.summary();
    assert_eq!(s["ok"], "10", "{}", run.stderr);
    let token_requests: u64 = s["token_requests"].parse().unwrap();
    assert!(token_requests >= 2, "{}", run.stderr);
    // The summary counts the token requests fetch sent; one replacement may still be on its way
    // to the identity provider when the run ends and fetch exits.
    let received = idp.token_requests();
    assert!(received == token_requests || received + 1 == token_requests, "sent {token_requests}, received {received}");
    assert!(s["elapsed_ms"].parse::<u64>().unwrap() >= 2000, "{}", run.stderr);
}

#[test]
fn discovery_private_key_jwt_and_password_grants() {
    let idp = idp();
    idp.add_jwt_client("svc-jwt");
    let run = fetch(&[
        "--oauth2-issuer",
        idp.issuer(),
        "--client-id",
        "svc-jwt",
        "--token-auth",
        "private-key-jwt",
        "--private-key",
        "tests/data/test-ec-key.pem",
        "--key-id",
        "k-7",
        &idp.resource_url(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let req = idp.last_request().unwrap();
    let idp::ClientAuth::JwtBearer { header, claims, .. } = req.client_auth else { panic!("{:?}", req.client_auth) };
    assert_eq!(header.unwrap()["kid"], "k-7");
    assert_eq!(claims.unwrap()["aud"], idp.issuer());
    assert_eq!(idp.metadata_requests(), 1);

    let idp2 = self::idp();
    idp2.add_client("app", "app-secret");
    idp2.add_user("alice", "pa55");
    let run = fetch(&[
        "--oauth2-token-url",
        &idp2.token_url(),
        "--grant",
        "password",
        "--client-id",
        "app",
        "--client-secret",
        "app-secret",
        "-u",
        "alice:pa55",
        &idp2.resource_url(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let req = idp2.last_request().unwrap();
    assert_eq!(req.grant, idp::Grant::Password);
    assert_eq!(req.username.as_deref(), Some("alice"));
    assert!(!run.stderr.contains("pa55"));
}

#[test]
fn a_token_endpoint_error_is_exit_1_and_one_line_without_the_secret() {
    let idp = idp();
    idp.add_client("svc", "right");
    idp.fail_always(idp::Fault::Error(OAuthError::invalid_client().description("Client authentication failed")));
    let run = fetch(&[
        "--oauth2-token-url",
        &idp.token_url(),
        "--client-id",
        "svc",
        "--client-secret",
        "wrong-s3cret",
        "-n",
        "3",
        &idp.resource_url(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one error line, then the summary: {}", run.stderr);
    assert!(lines[0].starts_with("fetch: request failed:"), "{}", lines[0]);
    assert!(lines[0].contains("invalid_client") && lines[0].contains("Client authentication failed"), "{}", lines[0]);
    assert!(!run.stderr.contains("wrong-s3cret"));
    let s = run.summary();
    assert_eq!(s["statuses"], "err:3");
    assert_eq!(s["round_trips"], "0", "no request left without its token");
    assert_eq!(s["token_requests"], "1", "a permanent error is not retried");
}

#[test]
fn oauth2_usage_errors() {
    for (args, expect) in [
        (vec!["--client-id", "x", "http://127.0.0.1:9/"], "exactly one of --oauth2-token-url and --oauth2-issuer"),
        (vec!["--oauth2-token-url", "http://127.0.0.1:9/t", "http://127.0.0.1:9/"], "need --client-id"),
        (
            vec![
                "--oauth2-token-url",
                "http://127.0.0.1:9/t",
                "--client-id",
                "x",
                "--grant",
                "password",
                "http://127.0.0.1:9/",
            ],
            "needs --user",
        ),
        (vec!["--private-key", "tests/data/not-a-key.pem", "http://127.0.0.1:9/"], "not a PEM RSA or EC"),
        (vec!["--token-auth", "magic", "http://127.0.0.1:9/"], "expected basic, post"),
    ] {
        let run = fetch(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expect), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn a_token_cache_file_lets_the_next_run_skip_the_token_request() {
    let idp = idp();
    idp.add_client("svc", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tokens.json");
    let args = |n: &'static str| {
        vec![
            "--oauth2-token-url".to_owned(),
            idp.token_url(),
            "--client-id".into(),
            "svc".into(),
            "--client-secret".into(),
            "s3cret".into(),
            "--token-cache".into(),
            cache.display().to_string(),
            "-n".into(),
            n.into(),
            idp.resource_url(),
        ]
    };
    let first = fetch(&args("3").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.summary()["token_requests"], "1");
    let second = fetch(&args("3").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.summary()["token_requests"], "0", "the token came from the cache file");
    assert_eq!(idp.token_requests(), 1);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!std::fs::read_to_string(&cache).unwrap().contains("s3cret"));
}

#[test]
fn authorization_code_through_the_system_browser_seam_and_device_code() {
    // The "browser" is curl, through the `BROWSER` variable the webbrowser crate honours: a
    // script that follows the fake identity provider's redirect to fetch's loopback listener.
    let idp = idp();
    idp.add_public_client("cli-app");
    let dir = tempfile::tempdir().unwrap();
    let browser = dir.path().join("browser.sh");
    std::fs::write(&browser, "#!/bin/sh\ncurl -s -L -o /dev/null \"$1\" >/dev/null 2>&1 &\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(fetch_bin())
        .args([
            "--oauth2-auth-code",
            &idp.authorize_url(),
            "--oauth2-token-url",
            &idp.token_url(),
            "--client-id",
            "cli-app",
            "--pkce",
            "--redirect-port",
            "0",
            "--scope",
            "orders:read",
            "-n",
            "3",
            &idp.resource_url(),
        ])
        .env("BROWSER", &browser)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.lines().last().unwrap().contains("ok=3"), "{stderr}");
    let authorize = idp.authorize_requests();
    assert_eq!(authorize.len(), 1, "one authorisation for three requests");
    assert_eq!(idp.token_requests_for(&idp::Grant::AuthorizationCode), 1);

    // Device code: fetch shows the URL and code; the "user" approves from here.
    let idp = self::idp();
    let approver = idp.clone();
    let watcher = std::thread::spawn(move || {
        for _ in 0..500 {
            if let Some(code) = approver.device_authorizations().first().and_then(|d| d.user_code.clone()) {
                assert!(approver.approve_device(&code));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("fetch never asked for a device code");
    });
    idp.set_device_interval(1);
    let run = fetch(&[
        "--oauth2-device",
        &idp.device_authorization_url(),
        "--oauth2-token-url",
        &idp.token_url(),
        "--client-id",
        "tv-app",
        &idp.resource_url(),
    ]);
    watcher.join().unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("enter the code"), "the user was shown the code: {}", run.stderr);
}
