//! The `fetch` example as a command-line program: exit codes, the summary line, usage errors,
//! and that no secret reaches standard error.
//!
//! The binary is `target/<profile>/examples/fetch`, built if missing or stale (see
//! `tests/support/example.rs`).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::{any, get};
use base64::Engine as _;
use tower_auth::digest::Algorithm;
use tower_auth::testing::{DigestCheck, RequireLayer};

const USER: &str = "alice";
const PASS: &str = "s3cret-pw";
const TOKEN: &str = "t0ken-abc123";
const KEY: &str = "k3y-value-xyz";
const QKEY: &str = "q-secret-789";

// ---------------------------------------------------------------------------------------------
// The server: one for the whole test binary, on its own thread.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Shared {
    /// Requests seen per `/alt/{id}`.
    alternate: Mutex<HashMap<String, usize>>,
    /// (in flight, most in flight) per `/slow/{id}`.
    slow: Mutex<HashMap<String, (usize, usize)>>,
}

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app()).await.unwrap();
            });
        });
        rx.recv().unwrap()
    })
}

fn app() -> Router {
    Router::new()
        .route("/basic", get(basic))
        .route("/bearer", get(bearer))
        .route("/key", get(key))
        .route("/query", get(query))
        .route("/both", get(both))
        .route("/echo", any(echo))
        .route("/alt/{id}", get(alternate))
        .route("/slow/{id}", get(slow))
        .route("/max/{id}", get(max_in_flight))
        .route("/to-basic", get(|| async { (StatusCode::FOUND, [("location", "/basic")]) }))
        .route(
            "/to-other-origin",
            get(|| async {
                // Same port, other host: another origin.
                (StatusCode::FOUND, [("location", format!("http://localhost:{}/show-auth", server().port()))])
            }),
        )
        .route(
            "/show-auth",
            get(|headers: HeaderMap| async move {
                let h = |n: &str| headers.get(n).map_or("-", |v| v.to_str().unwrap_or("?")).to_owned();
                format!("authorization={} x-api-key={}", h("authorization"), h("x-api-key"))
            }),
        )
        .route(
            "/basic-challenge",
            get(|| async { "hello basic" }).route_layer(RequireLayer::basic("fetch", USER, PASS)),
        )
        .route(
            "/digest",
            get(|| async { "hello digest" }).route_layer(RequireLayer::new(
                DigestCheck::new("fetch").user(USER, PASS).algorithms(&[Algorithm::Sha256]),
            )),
        )
        .route(
            "/proxied",
            get(|| async { "through the proxy" })
                .route_layer(RequireLayer::new(DigestCheck::new("proxy").user(USER, PASS).proxy(true))),
        )
        .with_state(Arc::new(Shared::default()))
}

fn basic_value() -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}")))
}

fn header_is(headers: &HeaderMap, name: &str, want: &str) -> bool {
    headers.get(name).is_some_and(|v| v == want)
}

fn gate(ok: bool, body: &'static str) -> (StatusCode, &'static str) {
    if ok { (StatusCode::OK, body) } else { (StatusCode::UNAUTHORIZED, "denied") }
}

async fn basic(headers: HeaderMap) -> (StatusCode, &'static str) {
    gate(header_is(&headers, "authorization", &basic_value()), "hello alice")
}

async fn bearer(headers: HeaderMap) -> (StatusCode, &'static str) {
    gate(header_is(&headers, "authorization", &format!("Bearer {TOKEN}")), "hello bearer")
}

async fn key(headers: HeaderMap) -> (StatusCode, &'static str) {
    gate(header_is(&headers, "x-api-key", KEY), "hello key")
}

async fn query(uri: Uri) -> (StatusCode, &'static str) {
    let q = uri.query().unwrap_or("");
    let pairs: Vec<&str> = q.split('&').collect();
    gate(pairs.contains(&format!("api_key={QKEY}").as_str()) && pairs.contains(&"x=1"), "hello query")
}

async fn both(headers: HeaderMap) -> (StatusCode, &'static str) {
    let ok = header_is(&headers, "x-api-key", KEY) && header_is(&headers, "authorization", &format!("Bearer {TOKEN}"));
    gate(ok, "hello both")
}

async fn echo(method: Method, headers: HeaderMap, body: Bytes) -> String {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("-");
    let extra = headers.get("x-extra").and_then(|v| v.to_str().ok()).unwrap_or("-");
    format!("{method} {ct} {extra} {}", String::from_utf8_lossy(&body))
}

/// 401 for the 1st, 3rd, 5th... request of each id, 200 for the others.
async fn alternate(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> StatusCode {
    let mut map = s.alternate.lock().unwrap();
    let n = map.entry(id).or_default();
    *n += 1;
    if *n % 2 == 1 { StatusCode::UNAUTHORIZED } else { StatusCode::OK }
}

async fn slow(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> &'static str {
    {
        let mut map = s.slow.lock().unwrap();
        let (now, max) = map.entry(id.clone()).or_default();
        *now += 1;
        *max = (*max).max(*now);
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    s.slow.lock().unwrap().get_mut(&id).unwrap().0 -= 1;
    "slow"
}

async fn max_in_flight(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> String {
    s.slow.lock().unwrap().get(&id).map_or(0, |(_, max)| *max).to_string()
}

fn url(path: &str) -> String {
    format!("http://{}{path}", server())
}

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

fn fetch_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| support::example::example_bin("fetch"))
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The fields of the summary line, which must be the last line of stderr, and the only one.
    fn summary(&self) -> HashMap<String, String> {
        let last = self.stderr.lines().last().unwrap_or_else(|| panic!("empty stderr: {self:?}"));
        assert!(last.starts_with("summary "), "last stderr line is not the summary: {self:?}");
        assert_eq!(self.stderr.matches("summary ").count(), 1, "{self:?}");
        let fields: HashMap<String, String> = last["summary ".len()..]
            .split(' ')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad field {kv:?} in {last:?}"));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let keys = ["requests", "ok", "statuses", "round_trips", "token_requests", "elapsed_ms"];
        let order: Vec<&str> = last["summary ".len()..].split(' ').map(|kv| kv.split('=').next().unwrap()).collect();
        assert_eq!(order, keys, "summary fields and their order: {last:?}");
        for counter in ["requests", "ok", "round_trips", "token_requests", "elapsed_ms"] {
            assert!(fields[counter].parse::<u64>().is_ok(), "{counter} is not a count: {last:?}");
        }
        fields
    }

    /// Checks requests, ok, statuses, round_trips and token_requests.
    ///
    /// `token_requests` counts requests to a token endpoint, which the OAuth2 provider sends
    /// through its own client (`CountLayer::token_endpoint` in examples/fetch.rs), apart from the
    /// round trips. None of the schemes of these cases fetches tokens, so it is 0 here;
    /// tests/fetch_oauth2.rs checks non-zero figures against the identity provider's own count.
    fn assert_summary(&self, requests: usize, ok: usize, statuses: &str, round_trips: usize) {
        let s = self.summary();
        assert_eq!(s["requests"], requests.to_string(), "{self:?}");
        assert_eq!(s["ok"], ok.to_string(), "{self:?}");
        assert_eq!(s["statuses"], statuses, "{self:?}");
        assert_eq!(s["round_trips"], round_trips.to_string(), "{self:?}");
        assert_eq!(s["token_requests"], "0", "{self:?}");
    }

    /// A usage error: status 2, one line on stderr naming the problem, nothing else.
    fn assert_usage_error(&self, fragment: &str) {
        assert_eq!(self.code, 2, "{self:?}");
        assert_eq!(self.stderr.lines().count(), 1, "exactly one line: {self:?}");
        assert!(self.stderr.starts_with("fetch: "), "{self:?}");
        assert!(self.stderr.contains(fragment), "expected {fragment:?} in {self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
    }
}

fn fetch(args: &[&str]) -> Run {
    let out = Command::new(fetch_bin()).args(args).output().expect("run fetch");
    Run {
        code: out.status.code().expect("fetch exited normally"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn assert_no_secret(text: &str) {
    let basic_b64 = basic_value()["Basic ".len()..].to_owned();
    for secret in [PASS, TOKEN, KEY, QKEY, basic_b64.as_str()] {
        assert!(!text.contains(secret), "secret {secret:?} leaked: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

#[test]
fn basic_with_the_right_password_succeeds_and_prints_the_body() {
    let run = fetch(&["-u", &format!("{USER}:{PASS}"), &url("/basic")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "hello alice");
    run.assert_summary(1, 1, "200:1", 1);
}

#[test]
fn digest_answers_the_challenge_once_then_reuses_the_nonce() {
    let run = fetch(&["--digest", "-u", &format!("{USER}:{PASS}"), "-n", "5", &url("/digest")]);
    assert_eq!(run.code, 0, "{run:?}");
    run.assert_summary(5, 5, "200:5", 6);
    let run = fetch(&["--digest", "-u", &format!("{USER}:wrong"), &url("/digest")]);
    assert_eq!(run.code, 1, "{run:?}");
    run.assert_summary(1, 0, "401:1", 2);
}

#[test]
fn anyauth_picks_basic_when_only_basic_is_offered() {
    let run = fetch(&["--anyauth", "-u", &format!("{USER}:{PASS}"), "-n", "3", &url("/basic-challenge")]);
    assert_eq!(run.code, 0, "{run:?}");
    run.assert_summary(3, 3, "200:3", 4);
}

#[test]
fn proxy_digest_through_a_forward_proxy() {
    // The test server plays the proxy: requests reach it in absolute form with Proxy-Authorization.
    let proxy = format!("http://{}", server());
    let run = fetch(&["-x", &proxy, "-U", &format!("{USER}:{PASS}"), "--proxy-digest", "-n", "4", &url("/proxied")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "");
    run.assert_summary(4, 4, "200:4", 5);
}

#[test]
fn auth_for_sends_credentials_to_their_origin_only() {
    let here = format!("http://127.0.0.1:{}", server().port());
    let run = fetch(&["--auth-for", &format!("{here}=bearer:{TOKEN}"), &url("/bearer")]);
    assert_eq!(run.code, 0, "{run:?}");
    // localhost is another origin: nothing is sent there.
    let elsewhere = format!("http://localhost:{}/show-auth", server().port());
    let run = fetch(&["--auth-for", &format!("{here}=bearer:{TOKEN}"), &elsewhere]);
    assert_eq!(run.stdout, "authorization=- x-api-key=-", "{run:?}");
    // Several origins, several schemes.
    let run = fetch(&[
        "--auth-for",
        &format!("http://localhost:{}=basic:{USER}:{PASS}", server().port()),
        "--auth-for",
        &format!("{here}=api-key:X-API-Key:{KEY}"),
        &url("/key"),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn netrc_file_supplies_credentials_for_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netrc");
    std::fs::write(&path, format!("machine 127.0.0.1 login {USER} password {PASS}\n")).unwrap();
    // As curl wants it (tower-auth warns about a netrc with passwords readable by others).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let run = fetch(&["--netrc-file", path.to_str().unwrap(), &url("/basic")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "hello alice");
    let run = fetch(&["--netrc-file", "/nonexistent/netrc", &url("/basic")]);
    run.assert_usage_error("fetch: --netrc-file: ");
    assert!(run.stderr.contains("/nonexistent/netrc"), "{run:?}");
}

#[test]
fn location_follows_redirects_and_credentials_stay_home() {
    let run = fetch(&["-L", "-u", &format!("{USER}:{PASS}"), &url("/to-basic")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "hello alice");
    run.assert_summary(1, 1, "200:1", 2);
    // Without -L the redirect is the answer.
    let run = fetch(&["-u", &format!("{USER}:{PASS}"), &url("/to-basic")]);
    run.assert_summary(1, 0, "302:1", 1);
    // To another origin: the credentials bound to this one do not follow.
    let here = format!("http://127.0.0.1:{}", server().port());
    let run = fetch(&[
        "-L",
        "--auth-for",
        &format!("{here}=basic:{USER}:{PASS}"),
        "--auth-for",
        &format!("{here}=api-key:X-API-Key:{KEY}"),
        &url("/to-other-origin"),
    ]);
    assert_eq!(run.code, 2, "one origin, one scheme: {run:?}");
    let run = fetch(&["-L", "--auth-for", &format!("{here}=basic:{USER}:{PASS}"), &url("/to-other-origin")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "authorization=- x-api-key=-");
}

#[test]
fn basic_with_a_wrong_password_exits_1() {
    let run = fetch(&["--user", &format!("{USER}:wrong"), &url("/basic")]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "denied");
    run.assert_summary(1, 0, "401:1", 1);
}

#[test]
fn no_credentials_sends_none() {
    let run = fetch(&[&url("/basic")]);
    assert_eq!(run.code, 1, "{run:?}");
    run.assert_summary(1, 0, "401:1", 1);
}

#[test]
fn bearer_with_equals_form() {
    let run = fetch(&[&format!("--bearer={TOKEN}"), &url("/bearer")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "hello bearer");
    run.assert_summary(1, 1, "200:1", 1);
}

#[test]
fn api_key_in_a_header() {
    let run = fetch(&["--api-key", &format!("X-API-Key:{KEY}"), &url("/key")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "hello key");
    run.assert_summary(1, 1, "200:1", 1);
}

#[test]
fn api_key_in_the_query_keeps_the_rest_of_the_query() {
    let run = fetch(&["--api-key-query", &format!("api_key={QKEY}"), &url("/query?x=1")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "hello query");
    run.assert_summary(1, 1, "200:1", 1);
}

#[test]
fn api_key_and_bearer_combine() {
    let both = fetch(&["--api-key", &format!("X-API-Key:{KEY}"), "--bearer", TOKEN, &url("/both")]);
    assert_eq!(both.code, 0, "{both:?}");
    assert_eq!(both.stdout, "hello both");
    both.assert_summary(1, 1, "200:1", 1);

    let only_bearer = fetch(&["--bearer", TOKEN, &url("/both")]);
    assert_eq!(only_bearer.code, 1, "{only_bearer:?}");
    only_bearer.assert_summary(1, 0, "401:1", 1);
}

#[test]
fn method_body_and_headers_are_sent() {
    let run = fetch(&["-X", "PUT", "-d", "hello", "-H", "Content-Type: text/plain", "-H", "X-Extra: 1", &url("/echo")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "PUT text/plain 1 hello");

    // -d alone means POST, form-encoded, like curl.
    let run = fetch(&["--data=a=1", &url("/echo")]);
    assert_eq!(run.stdout, "POST application/x-www-form-urlencoded - a=1", "{run:?}");

    let run = fetch(&[&url("/echo")]);
    assert_eq!(run.stdout, "GET - - ", "{run:?}");
}

#[test]
fn twenty_requests_at_most_four_in_flight() {
    let id = "twenty";
    let run = fetch(&["-u", &format!("{USER}:{PASS}"), "-n", "20", "-c", "4", &url(&format!("/slow/{id}"))]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.is_empty(), "the body is printed only when N is 1: {run:?}");
    run.assert_summary(20, 20, "200:20", 20);

    let max = fetch(&[&url(&format!("/max/{id}"))]);
    let max: usize = max.stdout.parse().unwrap();
    assert!((2..=4).contains(&max), "at most 4 in flight, and some concurrency: {max}");
}

#[test]
fn sequential_by_default() {
    let id = "sequential";
    let run = fetch(&["--count=5", &url(&format!("/slow/{id}"))]);
    run.assert_summary(5, 5, "200:5", 5);
    assert_eq!(fetch(&[&url(&format!("/max/{id}"))]).stdout, "1");
}

#[test]
fn mixed_statuses_are_sorted_and_exit_1() {
    let run = fetch(&["-n", "6", "-c", "2", &url("/alt/mixed")]);
    assert_eq!(run.code, 1, "{run:?}");
    run.assert_summary(6, 3, "200:3,401:3", 6);
}

#[test]
fn transport_errors_are_counted_as_err() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let run = fetch(&["-n", "2", &format!("http://127.0.0.1:{port}/")]);
    assert_eq!(run.code, 1, "{run:?}");
    run.assert_summary(2, 0, "err:2", 2);
    assert!(run.stderr.contains("fetch: request failed:"), "{run:?}");
}

#[test]
fn usage_errors_name_the_option_and_exit_2() {
    let u = url("/basic");
    let cases: &[(&[&str], &str)] = &[
        (&["-u", "alice", &u], "fetch: --user: expected USER:PASS"),
        (&["-U", "alice:x", &u], "fetch: --proxy-user: needs --proxy"),
        (&["--auth-for", "nonsense", &u], "fetch: --auth-for: expected ORIGIN=SCHEME:CREDENTIALS"),
        (&["--auth-for", "http://h/path=bearer:t", &u], "fetch: --auth-for: invalid origin"),
        (&["--auth-for", "http://h=foo:bar", &u], "unknown scheme \"foo\""),
        (&["--auth-for", "http://h=basic:nocolon", &u], "basic expects USER:PASS"),
        (&["-x", "ftp://proxy", &u], "fetch: --proxy: invalid proxy"),
        (&["--digest", "-u", "al\nice:x", &u], "fetch: --user: invalid Digest user name"),
        (&["--user"], "fetch: --user: missing value"),
        (&["-n", "0", &u], "fetch: --count: expected a positive integer, got \"0\""),
        (&["--count", "-3", &u], "fetch: --count: expected a positive integer"),
        (&["-c", "x", &u], "fetch: --concurrency: expected a positive integer, got \"x\""),
        (&[], "fetch: missing URL"),
        (&["--frobnicate", &u], "fetch: unknown option --frobnicate"),
        (&["ht!tp://"], "fetch: invalid URL \"ht!tp://\": "),
        (&["ftp://example.com/"], "unsupported scheme \"ftp\""),
        (&[&u, &u], "more than one URL"),
        (&["--api-key", "X-API-Key:", &u], "fetch: --api-key: invalid API key: it is empty"),
        (&["--api-key", "nocolon", &u], "fetch: --api-key: expected NAME:VALUE"),
        (&["--api-key-query", "novalue", &u], "fetch: --api-key-query: expected NAME=VALUE"),
        (&["--api-key-query", "api_key=", &u], "fetch: --api-key-query: invalid API key: it is empty"),
        (&["--bearer", "", &u], "fetch: --bearer: invalid bearer token: it is empty"),
        (&["-u", "al:ice", "--bearer", TOKEN, &u], "cannot be combined with --user"),
        (&["-H", "NoColon", &u], "fetch: --header: expected 'Name: value'"),
        (&["-X", "GE T", &u], "fetch: --request: invalid method"),
    ];
    for (args, fragment) in cases {
        let run = fetch(args);
        run.assert_usage_error(fragment);
    }
}

#[test]
fn usage_errors_never_echo_a_secret() {
    let u = url("/basic");
    let cases: &[(&[&str], &str)] = &[
        (&["-u", &format!("{USER}:{PASS}\u{1}"), &u], "--user: invalid Basic password"),
        (&["--bearer", &format!("{TOKEN}\r\nX-Evil: 1"), &u], "--bearer: invalid bearer token"),
        (&["--api-key", &format!("X-API-Key:{KEY}\n"), &u], "--api-key: invalid API key"),
        (&[&format!("--pasword={PASS}"), &u], "unknown option --pasword"),
        (&["-H", &format!("Authorization: Bearer {TOKEN}\u{7f}"), &u], "invalid value for header \"Authorization\""),
    ];
    for (args, fragment) in cases {
        let run = fetch(args);
        run.assert_usage_error(fragment);
        assert_no_secret(&run.stderr);
    }
}

#[test]
fn verbose_logs_each_exchange_without_secrets() {
    let run = fetch(&[
        "-v",
        "-n",
        "3",
        "-u",
        &format!("{USER}:{PASS}"),
        "--api-key",
        &format!("X-API-Key:{KEY}"),
        "--api-key-query",
        &format!("api_key={QKEY}"),
        &url("/basic?x=1"),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    run.assert_summary(3, 3, "200:3", 3);
    assert_no_secret(&run.stderr);
    let exchanges: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("> ")).collect();
    assert_eq!(exchanges.len(), 3, "{run:?}");
    for line in exchanges {
        assert!(line.starts_with(&format!("> GET {}", url("/basic?x=1&api_key=[redacted]"))), "{line}");
        assert!(line.contains("auth=Basic [redacted]"), "{line}");
        assert!(line.contains("x-api-key=[redacted]"), "{line}");
        assert!(line.ends_with("< 200 OK"), "{line}");
    }

    // A bearer token, and one given by hand with -H, are redacted as well.
    let run = fetch(&["-v", "--bearer", TOKEN, &url("/bearer")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("auth=Bearer [redacted]"), "{run:?}");
    assert_no_secret(&run.stderr);
    let run = fetch(&["-v", "-H", &format!("Authorization: Bearer {TOKEN}"), &url("/bearer")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("auth=Bearer [redacted]"), "{run:?}");
    assert_no_secret(&run.stderr);
}

#[test]
fn help_exits_0() {
    let run = fetch(&["--help"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("usage: fetch"), "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
}

#[test]
fn the_crates_log_lines_reach_stderr_without_secrets() {
    // Without -v: the crate's warnings (Basic over plain http), before the summary.
    let run = fetch(&["-u", &format!("{USER}:{PASS}"), &url("/basic")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("sending Basic credentials over plain http"), "{run:?}");
    assert_eq!(run.stderr.matches("plain http").count(), 1, "warned once: {run:?}");
    assert!(!run.stderr.contains('\u{1b}'), "no colour codes when stderr is not a terminal: {run:?}");
    run.assert_summary(1, 1, "200:1", 1);
    assert_no_secret(&run.stderr);
    // With -v: the crate's debug lines too (Digest's choices), still without a secret.
    let run = fetch(&["-v", "--digest", "-u", &format!("{USER}:{PASS}"), "-n", "2", &url("/digest")]);
    assert_eq!(run.code, 0, "{run:?}");
    run.assert_summary(2, 2, "200:2", 3);
    assert_no_secret(&run.stderr);
    // RUST_LOG overrides: nothing from the crate.
    let out = Command::new(fetch_bin())
        .args(["-u", &format!("{USER}:{PASS}"), &url("/basic")])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("plain http"), "{stderr}");
}
