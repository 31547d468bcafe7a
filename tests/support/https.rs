//! What the HTTPS and proxy tests share (issue 10): a TLS origin that reports what it saw, and
//! `fetch` run as a child process with the proxy variables under the test's control.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use http::HeaderMap;
use tower_auth::connect::tls::{Roots, TlsConfig};
use tower_auth::testing::tls::{TestPki, TlsServer};

/// The variables that choose proxies; removed from every child, then set as a test asks.
pub const PROXY_VARS: [&str; 9] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "REQUEST_METHOD",
];

/// A TLS origin on 127.0.0.1 whose `/` answers `{version:?} authorization={Authorization or -}`
/// and counts the requests that carried `Proxy-Authorization` (there must be none).
pub struct Origin {
    pub server: TlsServer,
    pub pki: TestPki,
    ca: tempfile::NamedTempFile,
    leaked: Arc<AtomicU64>,
}

impl Origin {
    /// A new CA and an origin with a certificate for `names`.
    pub async fn start(names: &[&str]) -> Origin {
        let pki = TestPki::new(names).unwrap();
        let ca = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca.path(), pki.ca_pem()).unwrap();
        let leaked = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&leaked);
        let app = Router::new().route(
            "/",
            axum::routing::get(move |headers: HeaderMap, version: http::Version| {
                let seen = Arc::clone(&seen);
                async move {
                    if headers.contains_key("proxy-authorization") {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                    format!("{version:?} authorization={auth}")
                }
            }),
        );
        Origin { server: TlsServer::start(&pki, app).await.unwrap(), pki, ca, leaked }
    }

    /// For `localhost` and `127.0.0.1`.
    pub async fn local() -> Origin {
        Origin::start(&["localhost", "127.0.0.1"]).await
    }

    /// The CA's PEM file, for `--cacert`.
    pub fn ca(&self) -> &str {
        self.ca.path().to_str().unwrap()
    }

    /// `https://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        self.server.url("/")
    }

    /// Trusts this origin's CA only.
    pub fn tls(&self) -> TlsConfig {
        TlsConfig::new().roots(Roots::None).add_ca_pem(self.pki.ca_pem().as_bytes()).unwrap()
    }

    /// Panics if the origin ever saw `Proxy-Authorization`.
    pub fn assert_no_leak(&self) {
        assert_eq!(self.leaked.load(Ordering::Relaxed), 0, "the origin saw Proxy-Authorization");
    }
}

/// A finished run of `fetch`.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The fields of the summary line (the last line of stderr).
    pub fn summary(&self) -> HashMap<String, String> {
        let last = self.stderr.lines().last().unwrap_or_else(|| panic!("empty stderr: {self:?}"));
        assert!(last.starts_with("summary "), "{self:?}");
        last["summary ".len()..]
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }

    /// Checks the exit code, the statuses and the round trips, and that `secret` is nowhere.
    pub fn assert(&self, code: i32, statuses: &str, round_trips: u64, secret: &str) {
        let s = self.summary();
        assert_eq!(self.code, code, "{self:?}");
        assert_eq!(s["statuses"], statuses, "{self:?}");
        assert_eq!(s["round_trips"], round_trips.to_string(), "{self:?}");
        assert!(!self.stderr.contains(secret) && !self.stdout.contains(secret), "secret leaked: {self:?}");
    }
}

/// Runs `program` with `args`, the proxy variables removed and `env` set, in the child only
/// (changing the test process's environment is unsafe with threads).
pub async fn run(program: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run the program")).await.unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the `fetch` example (built first if needed).
pub async fn fetch(args: &[&str], env: &[(&str, &str)]) -> Run {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    let bin = BIN.get_or_init(|| super::example::example_bin("fetch")).clone();
    run(bin, args, env).await
}
