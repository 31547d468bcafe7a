//! `fetch --oauth1 …` against oauthlib's verifier (tests/peers/oauthlib_verifier.py): one run
//! per signature method and request shape, the summary line, usage errors, and no secret on
//! standard error even with `-v`.
//!
//! The binary is `target/<profile>/examples/fetch`, built if missing or stale (see
//! `tests/support/example.rs`); the verifier is started as in tests/peers_oauthlib.rs.

mod support;

use std::process::{Command, Output};

use support::example::example_bin;
use support::peers::oauthlib;

const CREDS: &str = "tower-consumer-key-0001:consumer-s3cret/+&=~\u{e9}:tower-access-token-0001:access-s3cret&/+ %";
/// The second consumer, whose secrets need no encoding (PLAINTEXT outside the header, see
/// tests/peers_oauthlib.rs).
const PLAIN_CREDS: &str = "tower-consumer-key-0002:consumer-secret-0002:tower-access-token-0002:access-secret-0002";
const METHODS: [&str; 7] =
    ["HMAC-SHA1", "HMAC-SHA256", "HMAC-SHA512", "RSA-SHA1", "RSA-SHA256", "RSA-SHA512", "PLAINTEXT"];

fn fetch(args: &[&str]) -> Output {
    Command::new(example_bin("fetch")).args(args).output().expect("run fetch")
}

fn summary(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_owned()
}

fn key_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/test-rsa-key.pem").to_owned()
}

#[test]
fn fetch_signs_with_every_method_on_the_three_shapes() {
    let Some(base) = oauthlib() else { return };
    let key = key_path();
    for method in METHODS {
        let mut common = vec!["--oauth1", CREDS, "--oauth1-method", method, "-n", "2"];
        if method.starts_with("RSA") {
            common.extend(["--oauth1-key", key.as_str()]);
        }
        let get_url = format!("{base}/3legged/get?q=a+b&q=a%20b&e=");
        let put_url = format!("{base}/3legged/bh/put");
        let post_url = format!("{base}/3legged/post?x=%C3%A9");
        let shapes: [(&str, Vec<&str>); 3] = [
            ("GET+query", vec![get_url.as_str()]),
            ("POST+form", vec!["-d", "status=Hello%20Ladies%20%2b%20Gentlemen&a=&a=1", post_url.as_str()]),
            (
                "PUT+json+body_hash",
                vec![
                    "-X",
                    "PUT",
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    "{\"a\":\"t\u{e9}st\"}",
                    "--oauth1-body-hash",
                    put_url.as_str(),
                ],
            ),
        ];
        for (shape, args) in shapes {
            let all: Vec<&str> = common.iter().copied().chain(args).collect();
            let out = fetch(&all);
            let line = summary(&out);
            eprintln!("fetch --oauth1-method {method} {shape}: {line}");
            assert!(out.status.success(), "{method} {shape}: {}", String::from_utf8_lossy(&out.stderr));
            assert!(line.starts_with("summary requests=2 ok=2 statuses=200:2 round_trips=2 "), "{line}");
        }
    }
}

#[test]
fn fetch_puts_parameters_in_the_query_or_the_body() {
    let Some(base) = oauthlib() else { return };
    let key = key_path();
    for method in METHODS {
        let creds = if method == "PLAINTEXT" { PLAIN_CREDS } else { CREDS };
        for place in ["query", "body"] {
            let url = format!("{base}/3legged/p?x=1");
            let mut args = vec!["--oauth1", creds, "--oauth1-method", method, "--oauth1-in", place, "-d", "a=1", "-v"];
            if method.starts_with("RSA") {
                args.extend(["--oauth1-key", key.as_str()]);
            }
            args.push(url.as_str());
            let out = fetch(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{method} {place}: {stderr}");
            let body = String::from_utf8_lossy(&out.stdout);
            assert!(body.contains("\"accepted\": true"), "{body}");
            for secret in ["s3cret", "secret-0002"] {
                assert!(!stderr.contains(secret), "{secret} in {stderr}");
            }
        }
    }
}

#[test]
fn fetch_with_a_wrong_secret_exits_1_and_usage_errors_exit_2() {
    let Some(base) = oauthlib() else { return };
    let url = format!("{base}/3legged/get");
    let out = fetch(&["--oauth1", "tower-consumer-key-0001:wrong:tower-access-token-0001:nope-s3cret", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(summary(&out).contains("statuses=401:1"), "{}", summary(&out));

    let bad = |args: &[&str], what: &str| {
        let out = fetch(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(what), "{what} in {stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    };
    bad(&["--oauth1", "only-a-key", &url], "expected CONSUMER_KEY:CONSUMER_SECRET");
    bad(&["--oauth1", "k:s3cret", "--oauth1-method", "HMAC-MD5", &url], "unknown OAuth1 signature method");
    bad(&["--oauth1", "k:s3cret", "--oauth1-method", "RSA-SHA256", &url], "needs an RSA private key");
    let not_a_key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/not-a-key.pem");
    bad(
        &["--oauth1", "k:s3cret", "--oauth1-method", "RSA-SHA1", "--oauth1-key", not_a_key, &url],
        "invalid OAuth1 RSA key",
    );
    bad(&["--oauth1", "k:s3cret", "--oauth1-in", "cookie", &url], "unknown OAuth1 parameter placement");
    bad(&["--oauth1-realm", "r", &url], "need --oauth1");
    bad(&["--oauth1", "k:s3cret", "--bearer", "t0ken", &url], "--oauth1 signs alone");
}
