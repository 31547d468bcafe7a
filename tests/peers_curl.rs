//! Debian's curl, a client nobody here wrote, against our `testing` verifiers: if curl's Basic,
//! API key, Digest and --anyauth requests are accepted, the verifiers speak the real protocol.

mod support;

use axum::Router;
use axum::routing::any;
use std::process::Command;
use support::peers::curl;
use tower_auth::digest::Algorithm;
use tower_auth::testing::{DigestCheck, RequireLayer, TestServer};

/// Runs curl with `args` and returns (HTTP status, body).
async fn run_curl(args: Vec<String>) -> (u16, String) {
    let curl = curl().expect("checked by the caller");
    tokio::task::spawn_blocking(move || {
        let out = Command::new(curl)
            .args(["--silent", "--show-error", "--noproxy", "*", "--write-out", "\n%{http_code}"])
            .args(&args)
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_against_our_verifiers() {
    if curl().is_none() {
        return;
    }
    let basic = RequireLayer::basic("b", "alice", "s3cret");
    let key = RequireLayer::api_key_header("x-api-key", "k3y");
    let key_query = RequireLayer::api_key_query("api_key", "k 3/y");
    let bearer = RequireLayer::bearer("b", "t0k");
    let md5 = RequireLayer::new(DigestCheck::new("d").user("alice", "s3cret"));
    let sha = RequireLayer::new(DigestCheck::new("d").user("alice", "s3cret").algorithms(&[Algorithm::Sha256]));
    let sha_both = RequireLayer::new(
        DigestCheck::new("d").user("alice", "s3cret").algorithms(&[Algorithm::Sha256, Algorithm::Md5]),
    );
    let ok = || async { "ok" };
    let app = Router::new()
        .route("/basic", any(ok).layer(basic.clone()))
        .route("/key", any(ok).layer(key.clone()))
        .route("/key-query", any(ok).layer(key_query.clone()))
        .route("/bearer", any(ok).layer(bearer.clone()))
        .route("/md5", any(ok).layer(md5.clone()))
        .route("/sha", any(ok).layer(sha.clone()))
        .route("/sha-both", any(ok).layer(sha_both.clone()));
    let server = TestServer::start(app).await.unwrap();
    let url = |p: &str| server.url(p);

    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        ("basic", args(&["--basic", "-u", "alice:s3cret", &url("/basic")]), 200),
        ("basic wrong", args(&["--basic", "-u", "alice:nope", &url("/basic")]), 401),
        ("anyauth basic", args(&["--anyauth", "-u", "alice:s3cret", &url("/basic")]), 200),
        ("api key", args(&["-H", "X-API-Key: k3y", &url("/key")]), 200),
        ("api key wrong", args(&["-H", "X-API-Key: nope", &url("/key")]), 401),
        ("api key query", args(&[&url("/key-query?x=1&api_key=k%203%2Fy")]), 200),
        ("bearer", args(&["--oauth2-bearer", "t0k", &url("/bearer")]), 200),
        ("digest md5", args(&["--digest", "-u", "alice:s3cret", &url("/md5?q=1")]), 200),
        ("digest md5 POST", args(&["--digest", "-u", "alice:s3cret", "-d", "a=1", &url("/md5")]), 200),
        ("digest wrong", args(&["--digest", "-u", "alice:nope", &url("/md5")]), 401),
        ("digest sha-256", args(&["--digest", "-u", "alice:s3cret", &url("/sha")]), 200),
        ("digest sha-256 or md5", args(&["--digest", "-u", "alice:s3cret", &url("/sha-both")]), 200),
        ("anyauth digest", args(&["--anyauth", "-u", "alice:s3cret", &url("/md5")]), 200),
    ];
    let mut failures = Vec::new();
    for (name, args, expected) in cases {
        let (status, body) = run_curl(args).await;
        println!("curl {name:<24} expected {expected} got {status}");
        if status != expected {
            failures.push(format!("{name}: expected {expected}, got {status} ({body})"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Every 200 above is one accepted request, on the route it names.
    let accepted = [
        ("basic", basic.stats().accepted(), 2),         // basic, anyauth basic
        ("key", key.stats().accepted(), 1),             // api key
        ("key-query", key_query.stats().accepted(), 1), // api key query
        ("bearer", bearer.stats().accepted(), 1),       // bearer
        ("md5", md5.stats().accepted(), 3),             // digest md5, digest md5 POST, anyauth digest
        ("sha", sha.stats().accepted(), 1),             // digest sha-256
        ("sha-both", sha_both.stats().accepted(), 1),   // digest sha-256 or md5
    ];
    for (route, got, expected) in accepted {
        assert_eq!(got, expected, "requests accepted on /{route}");
    }
}
