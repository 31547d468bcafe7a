//! Real peers for the integration tests: Apache httpd (Debian `apache2`) as a
//! server, Glewlwyd (Debian `glewlwyd`) as an OAuth2 / OpenID Connect
//! authorization server, and Debian's `curl` as a client. Std only.
//!
//! Include it from an integration test with
//! `#[path = "support/peers.rs"] mod peers;` (or from `tests/support/mod.rs`).
//!
//! Apache is taken from the `TOWER_AUTH_APACHE_*` env vars when they are set
//! (`.ci/run` starts and stops it itself and sets them); the tests then start
//! and stop nothing. Otherwise, on first use in a test process,
//! `tests/peers/apache.sh acquire target/peers/apache PID` starts one (or
//! reuses a live one) and registers the process as a user, and a watcher
//! (`apache.sh release-on-eof …`, in its own process group) waits for the
//! process to exit, however it exits, and then releases it: the last test
//! process out stops the Apache the tests started. An Apache started by hand
//! with `tests/peers/apache.sh start target/peers/apache` is reused and left
//! running (stop it with `tests/peers/apache.sh stop target/peers/apache`).
//! What it serves (paths, realms, users `alice`/`s3cret` and `bob`/`hunter2`)
//! is described at the top of `tests/peers/apache.sh`.
//!
//! The oauthlib OAuth 1.0a verifier works the same way with `tests/peers/oauthlib.sh`,
//! `target/peers/oauthlib` and `TOWER_AUTH_OAUTHLIB_URL`.
//!
//! Redis (Debian `redis-server`) works the same way with `tests/peers/redis.sh`,
//! `target/peers/redis` and the `TOWER_AUTH_REDIS_*` env vars; [`redis_server`] gives the
//! binary to tests that run a private instance they stop and start.
//!
//! Glewlwyd works the same way with `tests/peers/glewlwyd.sh`,
//! `target/peers/glewlwyd` and the `TOWER_AUTH_GLEWLWYD_*` env vars (all of
//! them or none); what it is configured with (clients, user, scope, token
//! lifetimes) and what it answers, errors included, is described at the top of
//! `tests/peers/glewlwyd.sh`.
//!
//! When a peer cannot be had, the functions return `None` after writing
//! `SKIPPED <test>: <reason>` straight to the process's stderr, which libtest
//! does not capture (it captures `print!`/`eprint!` only), so `cargo test`
//! shows it; except under CI (`CI` set, non-empty, not `false` or `0`), where
//! they panic with the reason and how to fix it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Env var holding the Apache origin URL (`http://127.0.0.1:PORT`).
#[allow(dead_code, unreachable_pub)]
pub const APACHE_URL_VAR: &str = "TOWER_AUTH_APACHE_URL";
/// Env var holding the URL of the forward proxy that wants Basic proxy auth.
#[allow(dead_code, unreachable_pub)]
pub const APACHE_PROXY_BASIC_URL_VAR: &str = "TOWER_AUTH_APACHE_PROXY_BASIC_URL";
/// Env var holding the URL of the forward proxy that wants Digest proxy auth.
#[allow(dead_code, unreachable_pub)]
pub const APACHE_PROXY_DIGEST_URL_VAR: &str = "TOWER_AUTH_APACHE_PROXY_DIGEST_URL";

/// A running Apache peer. URLs have no trailing slash.
#[allow(dead_code, unreachable_pub)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apache {
    /// Origin server, e.g. `http://127.0.0.1:41234` (paths `/public/…`,
    /// `/basic/…`, `/digest/…`, `/digest-stale/…`, `/digest-nc/…`,
    /// `/digest-post/echo`, `/basic-post/echo`).
    pub url: String,
    /// Forward proxy requiring Basic proxy auth (realm `proxy-basic`).
    pub proxy_basic_url: String,
    /// Forward proxy requiring Digest proxy auth (realm `proxy-digest`).
    pub proxy_digest_url: String,
}

/// The Apache peer: from the `TOWER_AUTH_APACHE_*` env vars if set, otherwise
/// acquired (once per process) with `tests/peers/apache.sh acquire
/// target/peers/apache PID` and released when the process exits.
///
/// Returns `None` (after writing `SKIPPED {test}: {reason}` to stderr) when
/// Apache cannot be had; panics instead when running under CI.
#[allow(dead_code, unreachable_pub)]
pub fn apache() -> Option<&'static Apache> {
    static APACHE: OnceLock<Result<Apache, String>> = OnceLock::new();
    match APACHE.get_or_init(find_apache) {
        Ok(apache) => Some(apache),
        Err(reason) => unavailable(reason),
    }
}

/// Path of Debian's `curl` (the `curl` found on `PATH`, checked by running
/// `curl --version`).
///
/// Returns `None` (after writing `SKIPPED {test}: {reason}` to stderr) when
/// there is none; panics instead when running under CI.
#[allow(dead_code, unreachable_pub)]
pub fn curl() -> Option<PathBuf> {
    static CURL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match CURL.get_or_init(find_curl) {
        Ok(path) => Some(path.clone()),
        Err(reason) => unavailable(reason),
    }
}

/// The env vars printed by `tests/peers/glewlwyd.sh start`, in order.
#[allow(dead_code, unreachable_pub)]
pub const GLEWLWYD_VARS: [&str; 18] = [
    "TOWER_AUTH_GLEWLWYD_URL",
    "TOWER_AUTH_GLEWLWYD_ISSUER",
    "TOWER_AUTH_GLEWLWYD_DISCOVERY_URL",
    "TOWER_AUTH_GLEWLWYD_TOKEN_URL",
    "TOWER_AUTH_GLEWLWYD_TOKEN_LIFETIME",
    "TOWER_AUTH_GLEWLWYD_SHORT_ISSUER",
    "TOWER_AUTH_GLEWLWYD_SHORT_TOKEN_URL",
    "TOWER_AUTH_GLEWLWYD_SHORT_TOKEN_LIFETIME",
    "TOWER_AUTH_GLEWLWYD_CLIENT_ID",
    "TOWER_AUTH_GLEWLWYD_CLIENT_SECRET",
    "TOWER_AUTH_GLEWLWYD_ODD_CLIENT_ID",
    "TOWER_AUTH_GLEWLWYD_ODD_CLIENT_SECRET",
    "TOWER_AUTH_GLEWLWYD_SCOPE",
    "TOWER_AUTH_GLEWLWYD_USERNAME",
    "TOWER_AUTH_GLEWLWYD_PASSWORD",
    "TOWER_AUTH_GLEWLWYD_AUTH_URL",
    "TOWER_AUTH_GLEWLWYD_PUBLIC_CLIENT_ID",
    "TOWER_AUTH_GLEWLWYD_REDIRECT_PORTS",
];

/// A running Glewlwyd peer (OAuth2 / OpenID Connect server, two OIDC plugin
/// instances). URLs have no trailing slash. See the top of
/// `tests/peers/glewlwyd.sh` for what each request answers.
#[allow(dead_code, unreachable_pub)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glewlwyd {
    /// Server root, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Issuer of the `oidc` instance (`{url}/api/oidc`); metadata at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// `{issuer}/.well-known/openid-configuration`.
    pub discovery_url: String,
    /// Token endpoint of the `oidc` instance (`{issuer}/token`).
    pub token_url: String,
    /// Access token lifetime of the `oidc` instance, in seconds (60).
    pub token_lifetime: u64,
    /// Issuer of the `oidc-short` instance (`{url}/api/oidc-short`).
    pub short_issuer: String,
    /// Token endpoint of the `oidc-short` instance.
    pub short_token_url: String,
    /// Access token lifetime of the `oidc-short` instance, in seconds (5).
    pub short_token_lifetime: u64,
    /// Confidential client allowed client_credentials, password and
    /// refresh_token, with client_secret_basic and client_secret_post.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// Confidential client (client_credentials only) whose secret needs
    /// form-urlencoding (`s3:cr+t/%&=x`).
    pub odd_client_id: String,
    /// Its secret.
    pub odd_client_secret: String,
    /// The scope both clients and the user have (`scope1`).
    pub scope: String,
    /// User for the password grant.
    pub username: String,
    /// Its password.
    pub password: String,
    /// Authorization endpoint of the `oidc` instance (`{issuer}/auth`): code (PKCE S256
    /// allowed), implicit `token` and `id_token`; login and consent pages of Glewlwyd's web app.
    pub auth_url: String,
    /// Public client (no secret): code, refresh_token, token, id_token; scopes `scope1` and
    /// `openid`.
    pub public_client_id: String,
    /// The loopback ports whose `http://127.0.0.1:PORT/` is registered as a redirect URI of both
    /// `client_id` and `public_client_id` (Glewlwyd compares redirect URIs exactly).
    pub redirect_ports: Vec<u16>,
}

/// The Glewlwyd peer: from the `TOWER_AUTH_GLEWLWYD_*` env vars if set,
/// otherwise acquired (once per process) with `tests/peers/glewlwyd.sh acquire
/// target/peers/glewlwyd PID` and released when the process exits.
///
/// Returns `None` (after writing `SKIPPED {test}: {reason}` to stderr) when
/// Glewlwyd cannot be had; panics instead when running under CI.
#[allow(dead_code, unreachable_pub)]
pub fn glewlwyd() -> Option<&'static Glewlwyd> {
    static GLEWLWYD: OnceLock<Result<Glewlwyd, String>> = OnceLock::new();
    match GLEWLWYD.get_or_init(find_glewlwyd) {
        Ok(glewlwyd) => Some(glewlwyd),
        Err(reason) => unavailable(reason),
    }
}

#[allow(dead_code)]
fn find_glewlwyd() -> Result<Glewlwyd, String> {
    let from_env: Vec<(&str, Option<String>)> =
        GLEWLWYD_VARS.iter().map(|name| (*name, std::env::var(name).ok().filter(|v| !v.trim().is_empty()))).collect();
    let set = from_env.iter().filter(|(_, value)| value.is_some()).count();
    if set == GLEWLWYD_VARS.len() {
        let text: String = from_env
            .iter()
            .map(|(name, value)| format!("{name}={}\n", value.as_deref().unwrap_or_default().trim()))
            .collect();
        return parse_glewlwyd_env(&text)
            .map_err(|e| format!("Glewlwyd peer unavailable: bad TOWER_AUTH_GLEWLWYD_* env var: {e}"));
    }
    if set > 0 {
        let missing: Vec<&str> = from_env.iter().filter(|(_, value)| value.is_none()).map(|(name, _)| *name).collect();
        return Err(format!(
            "Glewlwyd peer unavailable: the TOWER_AUTH_GLEWLWYD_* env vars must be set together \
             (missing: {}); set all of them (e.g. `export $(cat target/peers/glewlwyd/env)`) or none",
            missing.join(", ")
        ));
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = "tests/peers/glewlwyd.sh";
    let dir = "target/peers/glewlwyd";
    let fix = format!(
        "to fix: install Glewlwyd (`apt-get install glewlwyd dbconfig-sqlite3 curl`), then check \
         `{script} start {dir}` by hand in {manifest}, or set the TOWER_AUTH_GLEWLWYD_* env vars to \
         a running instance",
        manifest = manifest_dir.display(),
    );
    let (pid, stdout, stderr) = acquire("Glewlwyd", manifest_dir, script, dir, &fix)?;
    // The lines hold secrets: on a parse error, name the keys, not the values.
    parse_glewlwyd_env(&stdout).map_err(|e| {
        let keys: Vec<&str> = stdout.lines().map(|l| l.split_once('=').map_or(l, |(k, _)| k)).collect();
        format!(
            "Glewlwyd peer unavailable: `{script} acquire {dir} {pid}` printed unexpected output ({e}); \
             keys: {keys:?}\nstderr:\n{stderr}{fix}"
        )
    })
}

/// Parses the `KEY=VALUE` lines printed by `glewlwyd.sh start`.
#[allow(dead_code)]
fn parse_glewlwyd_env(text: &str) -> Result<Glewlwyd, String> {
    let mut values: [Option<String>; 18] = Default::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').ok_or_else(|| "a line is not KEY=VALUE".to_owned())?;
        let index = GLEWLWYD_VARS.iter().position(|name| *name == key).ok_or_else(|| format!("unknown key {key:?}"))?;
        if key.ends_with("_URL") || key.ends_with("_ISSUER") {
            if !value.starts_with("http://127.0.0.1:") {
                return Err(format!("{key} is not an http://127.0.0.1: URL: {value:?}"));
            }
            values[index] = Some(trim_url(value));
        } else {
            values[index] = Some(value.to_owned());
        }
    }
    let mut take = |name: &str| -> Result<String, String> {
        let index = GLEWLWYD_VARS.iter().position(|n| *n == name).expect("a known name");
        values[index].take().ok_or_else(|| format!("{name} missing"))
    };
    let seconds = |name: &str, value: String| -> Result<u64, String> {
        value.parse().map_err(|_| format!("{name} is not a number of seconds: {value:?}"))
    };
    Ok(Glewlwyd {
        url: take("TOWER_AUTH_GLEWLWYD_URL")?,
        issuer: take("TOWER_AUTH_GLEWLWYD_ISSUER")?,
        discovery_url: take("TOWER_AUTH_GLEWLWYD_DISCOVERY_URL")?,
        token_url: take("TOWER_AUTH_GLEWLWYD_TOKEN_URL")?,
        token_lifetime: seconds("TOWER_AUTH_GLEWLWYD_TOKEN_LIFETIME", take("TOWER_AUTH_GLEWLWYD_TOKEN_LIFETIME")?)?,
        short_issuer: take("TOWER_AUTH_GLEWLWYD_SHORT_ISSUER")?,
        short_token_url: take("TOWER_AUTH_GLEWLWYD_SHORT_TOKEN_URL")?,
        short_token_lifetime: seconds(
            "TOWER_AUTH_GLEWLWYD_SHORT_TOKEN_LIFETIME",
            take("TOWER_AUTH_GLEWLWYD_SHORT_TOKEN_LIFETIME")?,
        )?,
        client_id: take("TOWER_AUTH_GLEWLWYD_CLIENT_ID")?,
        client_secret: take("TOWER_AUTH_GLEWLWYD_CLIENT_SECRET")?,
        odd_client_id: take("TOWER_AUTH_GLEWLWYD_ODD_CLIENT_ID")?,
        odd_client_secret: take("TOWER_AUTH_GLEWLWYD_ODD_CLIENT_SECRET")?,
        scope: take("TOWER_AUTH_GLEWLWYD_SCOPE")?,
        username: take("TOWER_AUTH_GLEWLWYD_USERNAME")?,
        password: take("TOWER_AUTH_GLEWLWYD_PASSWORD")?,
        auth_url: take("TOWER_AUTH_GLEWLWYD_AUTH_URL")?,
        public_client_id: take("TOWER_AUTH_GLEWLWYD_PUBLIC_CLIENT_ID")?,
        redirect_ports: {
            let ports = take("TOWER_AUTH_GLEWLWYD_REDIRECT_PORTS")?;
            ports
                .split(',')
                .map(|p| p.trim().parse::<u16>().map_err(|_| format!("bad redirect port in {ports:?}")))
                .collect::<Result<Vec<u16>, String>>()?
        },
    })
}

/// Env var holding the oauthlib OAuth 1.0a verifier's URL (`http://127.0.0.1:PORT`).
#[allow(dead_code, unreachable_pub)]
pub const OAUTHLIB_URL_VAR: &str = "TOWER_AUTH_OAUTHLIB_URL";

/// The oauthlib OAuth 1.0a verifier (`tests/peers/oauthlib_verifier.py`, Debian's
/// `python3-oauthlib` behind a small `http.server` front end): its URL, from
/// `TOWER_AUTH_OAUTHLIB_URL` if set, otherwise acquired (once per process) with
/// `tests/peers/oauthlib.sh acquire target/peers/oauthlib PID` and released when the process
/// exits. What it serves and the credentials it knows are described at the top of
/// `tests/peers/oauthlib_verifier.py`.
///
/// Returns `None` (after writing `SKIPPED {test}: {reason}` to stderr) when it cannot be had;
/// panics instead when running under CI.
#[allow(dead_code, unreachable_pub)]
pub fn oauthlib() -> Option<&'static str> {
    static OAUTHLIB: OnceLock<Result<String, String>> = OnceLock::new();
    match OAUTHLIB.get_or_init(find_oauthlib) {
        Ok(url) => Some(url),
        Err(reason) => unavailable(reason),
    }
}

#[allow(dead_code)]
fn find_oauthlib() -> Result<String, String> {
    if let Some(url) = std::env::var(OAUTHLIB_URL_VAR).ok().filter(|v| !v.trim().is_empty()) {
        return Ok(trim_url(&url));
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = "tests/peers/oauthlib.sh";
    let dir = "target/peers/oauthlib";
    let fix = format!(
        "to fix: `apt-get install python3-oauthlib python3-jwt python3-cryptography`, then check \
         `{script} start {dir}` by hand in {manifest}, or set {OAUTHLIB_URL_VAR} to a running instance",
        manifest = manifest_dir.display(),
    );
    let (_, stdout, _) = acquire("oauthlib", manifest_dir, script, dir, &fix)?;
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("TOWER_AUTH_OAUTHLIB_URL="))
        .filter(|url| url.starts_with("http://127.0.0.1:"))
        .map(trim_url)
        .ok_or_else(|| format!("oauthlib peer unavailable: `{script} acquire` printed {stdout:?}; {fix}"))
}

/// Env vars printed by `tests/peers/redis.sh start`: the URL of the default user and the URL of
/// the ACL user `tower` (password in the URL, keys and channels under `tower-acl:` only).
#[allow(dead_code, unreachable_pub)]
pub const REDIS_VARS: [&str; 2] = ["TOWER_AUTH_REDIS_URL", "TOWER_AUTH_REDIS_ACL_URL"];

/// A running Redis peer (Debian's `redis-server`, no persistence, 127.0.0.1).
#[allow(dead_code, unreachable_pub)]
#[derive(Clone, PartialEq, Eq)]
pub struct Redis {
    /// `redis://127.0.0.1:PORT` (the default user, no password).
    pub url: String,
    /// `redis://tower:PASSWORD@127.0.0.1:PORT`: an ACL user limited to `tower-acl:*`.
    pub acl_url: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.url).field("acl_url", &"[redacted]").finish()
    }
}

/// The Redis peer: from the `TOWER_AUTH_REDIS_*` env vars if set (both), otherwise acquired
/// (once per process) with `tests/peers/redis.sh acquire target/peers/redis PID` and released
/// when the process exits.
///
/// Returns `None` (after writing `SKIPPED {test}: {reason}` to stderr) when Redis cannot be had;
/// panics instead when running under CI.
#[allow(dead_code, unreachable_pub)]
pub fn redis() -> Option<&'static Redis> {
    static REDIS: OnceLock<Result<Redis, String>> = OnceLock::new();
    match REDIS.get_or_init(find_redis) {
        Ok(redis) => Some(redis),
        Err(reason) => unavailable(reason),
    }
}

/// Debian's `redis-server` binary, for tests that start (and stop, and start again) a private
/// instance of their own; `None` (after a `SKIPPED` line; a panic under CI) when there is none.
#[allow(dead_code, unreachable_pub)]
pub fn redis_server() -> Option<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        which("redis-server").ok_or_else(|| {
            "Redis peer unavailable: no `redis-server` on PATH; to fix: `apt-get install redis-server`".to_owned()
        })
    });
    match found {
        Ok(path) => Some(path.clone()),
        Err(reason) => unavailable(reason),
    }
}

#[allow(dead_code)]
fn parse_redis_env(text: &str) -> Result<Redis, String> {
    let (mut url, mut acl_url) = (None, None);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').ok_or_else(|| "a line is not KEY=VALUE".to_owned())?;
        if !value.starts_with("redis://") {
            return Err(format!("{key} is not a redis:// URL"));
        }
        match key {
            "TOWER_AUTH_REDIS_URL" => url = Some(value.to_owned()),
            "TOWER_AUTH_REDIS_ACL_URL" => acl_url = Some(value.to_owned()),
            _ => return Err(format!("unknown key {key:?}")),
        }
    }
    Ok(Redis {
        url: url.ok_or("TOWER_AUTH_REDIS_URL missing")?,
        acl_url: acl_url.ok_or("TOWER_AUTH_REDIS_ACL_URL missing")?,
    })
}

#[allow(dead_code)]
fn find_redis() -> Result<Redis, String> {
    let from_env: Vec<Option<String>> =
        REDIS_VARS.iter().map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty())).collect();
    match from_env.iter().filter(|v| v.is_some()).count() {
        2 => {
            let text: String = REDIS_VARS
                .iter()
                .zip(&from_env)
                .map(|(n, v)| format!("{n}={}\n", v.as_deref().unwrap_or("")))
                .collect();
            return parse_redis_env(&text)
                .map_err(|e| format!("Redis peer unavailable: bad TOWER_AUTH_REDIS_* env var: {e}"));
        }
        1 => {
            return Err(
                "Redis peer unavailable: set TOWER_AUTH_REDIS_URL and TOWER_AUTH_REDIS_ACL_URL together, or neither"
                    .into(),
            );
        }
        _ => {}
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = "tests/peers/redis.sh";
    let dir = "target/peers/redis";
    let fix = format!(
        "to fix: `apt-get install redis-server`, then check `{script} start {dir}` by hand in {}",
        manifest_dir.display()
    );
    let pid = std::process::id().to_string();
    release_at_exit(manifest_dir, script, dir, &pid)
        .map_err(|e| format!("Redis peer unavailable: cannot run `bash {script} release-on-eof`: {e}; {fix}"))?;
    let output = Command::new("bash")
        .args([script, "acquire", dir, &pid])
        .current_dir(manifest_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("Redis peer unavailable: cannot run `bash {script}`: {e}; {fix}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "Redis peer unavailable: `{script} acquire {dir} {pid}` failed ({}):\n{}{fix}",
            output.status,
            with_newline(stderr.trim_end())
        ));
    }
    // The ACL URL holds a password: on a parse error, no values.
    parse_redis_env(&stdout)
        .map_err(|e| format!("Redis peer unavailable: `{script} acquire` printed unexpected output ({e}); {fix}"))
}

/// Env var holding the `node_modules` directory with puppeteer-core, printed by
/// `tests/peers/chromium.sh install DIR`.
#[allow(dead_code, unreachable_pub)]
pub const CHROMIUM_NODE_PATH_VAR: &str = "TOWER_AUTH_CHROMIUM_NODE_PATH";

/// Headless Chromium driven by puppeteer-core (`tests/peers/chromium/login.cjs`).
#[allow(dead_code, unreachable_pub)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chromium {
    /// The `node_modules` directory holding puppeteer-core (for `NODE_PATH`).
    pub node_path: PathBuf,
    /// `tests/peers/chromium/login.cjs`, absolute.
    pub login_script: PathBuf,
}

/// Headless Chromium with puppeteer-core: from `TOWER_AUTH_CHROMIUM_NODE_PATH` if set, otherwise
/// installed (once per process, idempotent) with `tests/peers/chromium.sh install
/// target/peers/chromium`.
///
/// Returns `None` (after writing `SKIPPED {test}: {reason}` to stderr) when it cannot be had;
/// panics instead when running under CI.
#[allow(dead_code, unreachable_pub)]
pub fn chromium() -> Option<&'static Chromium> {
    static CHROMIUM: OnceLock<Result<Chromium, String>> = OnceLock::new();
    match CHROMIUM.get_or_init(find_chromium) {
        Ok(chromium) => Some(chromium),
        Err(reason) => unavailable(reason),
    }
}

#[allow(dead_code)]
fn find_chromium() -> Result<Chromium, String> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let login_script = manifest_dir.join("tests/peers/chromium/login.cjs");
    let check = |node_path: PathBuf| -> Result<Chromium, String> {
        if node_path.join("puppeteer-core/package.json").is_file() {
            Ok(Chromium { node_path, login_script: login_script.clone() })
        } else {
            Err(format!("Chromium peer unavailable: no puppeteer-core in {}", node_path.display()))
        }
    };
    if let Some(dir) = std::env::var_os(CHROMIUM_NODE_PATH_VAR).filter(|v| !v.is_empty()) {
        return check(PathBuf::from(dir));
    }
    let script = "tests/peers/chromium.sh";
    let dir = "target/peers/chromium";
    let fix = format!(
        "to fix: `apt-get install chromium` and Node.js with npm, then check `bash {script} install {dir}` \
         by hand in {}",
        manifest_dir.display()
    );
    let output = Command::new("bash")
        .args([script, "install", dir])
        .current_dir(manifest_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("Chromium peer unavailable: cannot run `bash {script}`: {e}; {fix}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "Chromium peer unavailable: `{script} install {dir}` failed ({}):\n{}{fix}",
            output.status,
            with_newline(String::from_utf8_lossy(&output.stderr).trim_end()),
        ));
    }
    let line = stdout.lines().find_map(|l| l.strip_prefix(&format!("{CHROMIUM_NODE_PATH_VAR}=")));
    check(PathBuf::from(line.ok_or_else(|| format!("`{script}` printed no {CHROMIUM_NODE_PATH_VAR}= line"))?))
}

/// True when the `CI` env var is set, non-empty and not `false`/`0`.
#[allow(dead_code)]
fn in_ci() -> bool {
    match std::env::var("CI") {
        Ok(value) => {
            let value = value.trim();
            !value.is_empty() && value != "0" && !value.eq_ignore_ascii_case("false")
        }
        Err(_) => false,
    }
}

#[allow(dead_code)]
fn unavailable<T>(reason: &str) -> Option<T> {
    if in_ci() {
        panic!("{reason}\n(CI is set, so a missing peer is an error rather than a skip)");
    }
    report_skip(reason);
    None
}

/// Writes `SKIPPED {test}: {reason}` where `cargo test` shows it. libtest
/// captures what `print!`/`eprint!` write during a test and shows it only if
/// the test fails; a write to the `std::io::stderr()` handle itself is not
/// captured. The test is named by its thread, which libtest names after it.
/// The reason's further lines (e.g. the script's output) are written once.
#[allow(dead_code)]
fn report_skip(reason: &str) {
    static DETAILED: AtomicBool = AtomicBool::new(false);
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("a peer test");
    let (first, rest) = reason.split_once('\n').unwrap_or((reason, ""));
    let mut text = format!("SKIPPED {test}: {first}\n");
    if !rest.trim().is_empty() && !DETAILED.swap(true, Ordering::Relaxed) {
        for line in rest.lines() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[allow(dead_code)]
fn find_apache() -> Result<Apache, String> {
    if let Some(apache) = apache_from_env()? {
        return Ok(apache);
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = "tests/peers/apache.sh";
    let dir = "target/peers/apache";
    let fix = format!(
        "to fix: install Apache (`apt-get install apache2 apache2-utils`), then check \
         `{script} start {dir}` by hand in {manifest}, or set {APACHE_URL_VAR}, \
         {APACHE_PROXY_BASIC_URL_VAR} and {APACHE_PROXY_DIGEST_URL_VAR} to a running instance",
        manifest = manifest_dir.display(),
    );
    let (pid, stdout, stderr) = acquire("Apache", manifest_dir, script, dir, &fix)?;
    parse_env_lines(&stdout).map_err(|e| {
        format!(
            "Apache peer unavailable: `{script} acquire {dir} {pid}` printed unexpected output ({e}):\n\
             stdout:\n{stdout}stderr:\n{stderr}{fix}"
        )
    })
}

/// Runs `SCRIPT acquire DIR PID` for this process, after starting the watcher that releases
/// the peer when the process exits: this process's id, and the script's stdout and stderr.
/// An error names the peer and says how to fix it.
#[allow(dead_code)]
fn acquire(
    peer: &str,
    manifest_dir: &Path,
    script: &str,
    dir: &str,
    fix: &str,
) -> Result<(String, String, String), String> {
    let pid = std::process::id().to_string();
    // The watcher first, so that whatever `acquire` registers is released even if this process
    // dies while `acquire` runs.
    release_at_exit(manifest_dir, script, dir, &pid)
        .map_err(|e| format!("{peer} peer unavailable: cannot run `bash {script} release-on-eof`: {e}; {fix}"))?;
    let output = Command::new("bash")
        .arg(script)
        .arg("acquire")
        .arg(dir)
        .arg(&pid)
        .current_dir(manifest_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{peer} peer unavailable: cannot run `bash {script}`: {e}; {fix}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(format!(
            "{peer} peer unavailable: `{script} acquire {dir} {pid}` failed ({status}):\n{stderr}{fix}",
            status = output.status,
            stderr = with_newline(stderr.trim_end()),
        ));
    }
    Ok((pid, stdout, stderr))
}

/// Starts `apache.sh release-on-eof DIR PID` with its stdin a pipe whose
/// write end only this process holds (std opens pipes close-on-exec, so no
/// other child inherits it), kept in a static that is never dropped: the
/// kernel closes it when the process exits, normally, by a panic, by `exit` or
/// by a signal, and the watcher then releases the peer (Apache or Glewlwyd). The watcher gets its
/// own process group, so a Ctrl-C that stops the tests does not stop it, and
/// writes to `DIR/release.log`, not to the terminal after the tests are done.
#[allow(dead_code)]
fn release_at_exit(manifest_dir: &Path, script: &str, dir: &str, pid: &str) -> std::io::Result<()> {
    // One pipe per peer script (Apache, Glewlwyd), all kept until the process exits.
    static RELEASE_PIPES: Mutex<Vec<ChildStdin>> = Mutex::new(Vec::new());
    let peer_dir = manifest_dir.join(dir);
    std::fs::create_dir_all(&peer_dir)?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(peer_dir.join("release.log"))?;
    let mut command = Command::new("bash");
    command
        .arg(script)
        .arg("release-on-eof")
        .arg(dir)
        .arg(pid)
        .current_dir(manifest_dir)
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log);
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn()?;
    let pipe = child.stdin.take().expect("stdin is piped");
    // `child` is dropped without waiting: the watcher outlives this process.
    RELEASE_PIPES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(pipe);
    Ok(())
}

#[allow(dead_code)]
fn with_newline(text: &str) -> String {
    if text.is_empty() { String::new() } else { format!("{text}\n") }
}

/// `Ok(None)` when none of the env vars is set; an error when only some are.
#[allow(dead_code)]
fn apache_from_env() -> Result<Option<Apache>, String> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let url = get(APACHE_URL_VAR);
    let proxy_basic_url = get(APACHE_PROXY_BASIC_URL_VAR);
    let proxy_digest_url = get(APACHE_PROXY_DIGEST_URL_VAR);
    match (url, proxy_basic_url, proxy_digest_url) {
        (None, None, None) => Ok(None),
        (Some(url), Some(proxy_basic_url), Some(proxy_digest_url)) => Ok(Some(Apache {
            url: trim_url(&url),
            proxy_basic_url: trim_url(&proxy_basic_url),
            proxy_digest_url: trim_url(&proxy_digest_url),
        })),
        _ => Err(format!(
            "Apache peer unavailable: {APACHE_URL_VAR}, {APACHE_PROXY_BASIC_URL_VAR} and \
             {APACHE_PROXY_DIGEST_URL_VAR} must be set together (some are missing); set all \
             three (e.g. `export $(cat target/peers/apache/env)`) or none"
        )),
    }
}

#[allow(dead_code)]
fn trim_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

/// Parses the `KEY=VALUE` lines printed by `apache.sh start`.
#[allow(dead_code)]
fn parse_env_lines(text: &str) -> Result<Apache, String> {
    let (mut url, mut proxy_basic_url, mut proxy_digest_url) = (None, None, None);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').ok_or_else(|| format!("not a KEY=VALUE line: {line:?}"))?;
        let slot = match key {
            APACHE_URL_VAR => &mut url,
            APACHE_PROXY_BASIC_URL_VAR => &mut proxy_basic_url,
            APACHE_PROXY_DIGEST_URL_VAR => &mut proxy_digest_url,
            _ => return Err(format!("unknown key {key:?}")),
        };
        if !value.starts_with("http://") {
            return Err(format!("{key} is not an http:// URL: {value:?}"));
        }
        *slot = Some(trim_url(value));
    }
    let missing = |name: &str| format!("{name} missing");
    Ok(Apache {
        url: url.ok_or_else(|| missing(APACHE_URL_VAR))?,
        proxy_basic_url: proxy_basic_url.ok_or_else(|| missing(APACHE_PROXY_BASIC_URL_VAR))?,
        proxy_digest_url: proxy_digest_url.ok_or_else(|| missing(APACHE_PROXY_DIGEST_URL_VAR))?,
    })
}

#[allow(dead_code)]
fn find_curl() -> Result<PathBuf, String> {
    let fix = "to fix: `apt-get install curl`";
    let path = which("curl").ok_or_else(|| format!("curl peer unavailable: no `curl` on PATH; {fix}"))?;
    let output = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("curl peer unavailable: cannot run `{} --version`: {e}; {fix}", path.display()))?;
    let version = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !version.starts_with("curl ") {
        return Err(format!(
            "curl peer unavailable: `{} --version` failed ({}): {}{}; {fix}",
            path.display(),
            output.status,
            version.trim(),
            String::from_utf8_lossy(&output.stderr).trim(),
        ));
    }
    Ok(path)
}

/// First executable file called `name` in `PATH`.
#[allow(dead_code)]
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

#[allow(dead_code)]
fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// Env var holding the URL of the Squid proxy that wants Basic proxy auth.
#[allow(dead_code, unreachable_pub)]
pub const SQUID_BASIC_URL_VAR: &str = "TOWER_AUTH_SQUID_BASIC_URL";
/// Env var holding the URL of the Squid proxy that wants Digest proxy auth.
#[allow(dead_code, unreachable_pub)]
pub const SQUID_DIGEST_URL_VAR: &str = "TOWER_AUTH_SQUID_DIGEST_URL";

/// Two running Squid proxies (Debian `squid`), `http://127.0.0.1:PORT`, no trailing slash; users
/// `alice`/`s3cret` and `bob`/`hunter2`; CONNECT allowed to 127.0.0.1 only. See the top of
/// `tests/peers/squid.sh`.
#[allow(dead_code, unreachable_pub)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Squid {
    /// Proxy auth Basic (realm `squid-basic`).
    pub basic_url: String,
    /// Proxy auth Digest, MD5, qop auth (realm `squid-digest`).
    pub digest_url: String,
}

/// The Squid peer: from the `TOWER_AUTH_SQUID_*` env vars if set (both), otherwise acquired (once
/// per process) with `tests/peers/squid.sh acquire target/peers/squid PID` and released when the
/// process exits, as [`apache`] does.
///
/// Returns `None` (after writing `SKIPPED {test}: {reason}` to stderr) when Squid cannot be had;
/// panics instead when running under CI.
#[allow(dead_code, unreachable_pub)]
pub fn squid() -> Option<&'static Squid> {
    static SQUID: OnceLock<Result<Squid, String>> = OnceLock::new();
    match SQUID.get_or_init(find_squid) {
        Ok(squid) => Some(squid),
        Err(reason) => unavailable(reason),
    }
}

#[allow(dead_code)]
fn parse_squid_env(text: &str) -> Result<Squid, String> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .filter(|v| v.starts_with("http://127.0.0.1:"))
            .map(trim_url)
            .ok_or_else(|| format!("{key} missing or not an http://127.0.0.1: URL"))
    };
    Ok(Squid { basic_url: get(SQUID_BASIC_URL_VAR)?, digest_url: get(SQUID_DIGEST_URL_VAR)? })
}

#[allow(dead_code)]
fn find_squid() -> Result<Squid, String> {
    let vars: Vec<String> = [SQUID_BASIC_URL_VAR, SQUID_DIGEST_URL_VAR]
        .iter()
        .filter_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()).map(|v| format!("{name}={v}")))
        .collect();
    match vars.len() {
        2 => return parse_squid_env(&vars.join("\n")).map_err(|e| format!("Squid peer unavailable: {e}")),
        1 => {
            return Err(format!(
                "Squid peer unavailable: {SQUID_BASIC_URL_VAR} and {SQUID_DIGEST_URL_VAR} must be set together"
            ));
        }
        _ => {}
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = "tests/peers/squid.sh";
    let dir = "target/peers/squid";
    let fix = format!(
        "to fix: install Squid (`apt-get install squid apache2-utils`), then check `{script} start {dir}` \
         by hand in {manifest}, or set {SQUID_BASIC_URL_VAR} and {SQUID_DIGEST_URL_VAR}",
        manifest = manifest_dir.display(),
    );
    let pid = std::process::id().to_string();
    release_at_exit(manifest_dir, script, dir, &pid)
        .map_err(|e| format!("Squid peer unavailable: cannot run `bash {script} release-on-eof`: {e}; {fix}"))?;
    let output = Command::new("bash")
        .args([script, "acquire", dir, &pid])
        .current_dir(manifest_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("Squid peer unavailable: cannot run `bash {script}`: {e}; {fix}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "Squid peer unavailable: `{script} acquire {dir} {pid}` failed ({status}):\n{stderr}{fix}",
            status = output.status,
            stderr = with_newline(stderr.trim_end()),
        ));
    }
    parse_squid_env(&stdout)
        .map_err(|e| format!("Squid peer unavailable: {e}\nstdout:\n{stdout}stderr:\n{stderr}{fix}"))
}

/// Env var holding the NTLM peer's server URL (`http://127.0.0.1:PORT`).
#[allow(dead_code, unreachable_pub)]
pub const NTLM_URL_VAR: &str = "TOWER_AUTH_NTLM_URL";
/// Env var holding the NTLM peer's proxy URL (`http://127.0.0.1:PORT`).
#[allow(dead_code, unreachable_pub)]
pub const NTLM_PROXY_URL_VAR: &str = "TOWER_AUTH_NTLM_PROXY_URL";

/// The NTLM peer (`tests/peers/ntlm_server.py`: pyspnego's acceptor behind an HTTP/1.1 front end
/// that keeps connections authenticated, as IIS does). URLs have no trailing slash; users and
/// paths are described at the top of `tests/peers/ntlm_server.py`.
#[allow(dead_code, unreachable_pub)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ntlm {
    /// The server (401 / `WWW-Authenticate: NTLM`, `Negotiate`).
    pub url: String,
    /// The proxy (407 / `Proxy-Authenticate`), forwarding plain http, tunnelling to 127.0.0.1.
    pub proxy_url: String,
    /// The server over HTTPS with Extended Protection required (channel binding),
    /// `https://localhost:PORT`.
    pub https_url: String,
    /// The same, expecting another certificate's channel binding: every handshake fails.
    pub https_badcbt_url: String,
    /// The CA of the HTTPS certificate (PEM file).
    pub ca: String,
}

/// The NTLM peer: from the `TOWER_AUTH_NTLM_*` env vars if set (both), otherwise acquired (once
/// per process) with `tests/peers/ntlm.sh acquire target/peers/ntlm PID` and released when the
/// process exits, as [`apache`] does.
///
/// Returns `None` (after writing `SKIPPED {test}: {reason}` to stderr) when it cannot be had;
/// panics instead when running under CI.
#[allow(dead_code, unreachable_pub)]
pub fn ntlm() -> Option<&'static Ntlm> {
    static NTLM: OnceLock<Result<Ntlm, String>> = OnceLock::new();
    match NTLM.get_or_init(find_ntlm) {
        Ok(peer) => Some(peer),
        Err(reason) => unavailable(reason),
    }
}

#[allow(dead_code)]
fn parse_ntlm_env(text: &str) -> Result<Ntlm, String> {
    let get = |key: &str, prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .filter(|v| v.starts_with(prefix))
            .map(trim_url)
            .ok_or_else(|| format!("{key} missing or not starting with {prefix}"))
    };
    Ok(Ntlm {
        url: get(NTLM_URL_VAR, "http://127.0.0.1:")?,
        proxy_url: get(NTLM_PROXY_URL_VAR, "http://127.0.0.1:")?,
        https_url: get("TOWER_AUTH_NTLM_HTTPS_URL", "https://localhost:")?,
        https_badcbt_url: get("TOWER_AUTH_NTLM_HTTPS_BADCBT_URL", "https://localhost:")?,
        ca: get("TOWER_AUTH_NTLM_CA", "/")?,
    })
}

#[allow(dead_code)]
fn find_ntlm() -> Result<Ntlm, String> {
    let vars: Vec<String> = [
        NTLM_URL_VAR,
        NTLM_PROXY_URL_VAR,
        "TOWER_AUTH_NTLM_HTTPS_URL",
        "TOWER_AUTH_NTLM_HTTPS_BADCBT_URL",
        "TOWER_AUTH_NTLM_CA",
    ]
    .iter()
    .filter_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()).map(|v| format!("{name}={v}")))
    .collect();
    match vars.len() {
        5 => return parse_ntlm_env(&vars.join("\n")).map_err(|e| format!("NTLM peer unavailable: {e}")),
        1..=4 => return Err("NTLM peer unavailable: set all the TOWER_AUTH_NTLM_* variables or none".into()),
        _ => {}
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = "tests/peers/ntlm.sh";
    let dir = "target/peers/ntlm";
    let fix = format!(
        "to fix: `apt-get install python3-venv` (pyspnego comes from PyPI into {dir}/venv), then check \
         `{script} start {dir}` by hand in {manifest}, or set {NTLM_URL_VAR} and {NTLM_PROXY_URL_VAR}",
        manifest = manifest_dir.display(),
    );
    let (_, stdout, _) = acquire("NTLM", manifest_dir, script, dir, &fix)?;
    parse_ntlm_env(&stdout)
        .map_err(|e| format!("NTLM peer unavailable: `{script} acquire` printed {stdout:?}: {e}; {fix}"))
}

/// Env vars of the Kerberos peer: Apache's URL (`http://localhost:PORT`), the KDC
/// (`tcp://127.0.0.1:PORT`), the realm's `krb5.conf`, the Negotiate Squid's URL
/// (`http://localhost:PORT`), the two channel-binding HTTPS URLs and their CA.
#[allow(dead_code, unreachable_pub)]
pub const KERBEROS_VARS: [&str; 7] = [
    "TOWER_AUTH_KERBEROS_URL",
    "TOWER_AUTH_KERBEROS_KDC",
    "TOWER_AUTH_KERBEROS_KRB5_CONFIG",
    "TOWER_AUTH_KERBEROS_PROXY_URL",
    "TOWER_AUTH_KERBEROS_HTTPS_URL",
    "TOWER_AUTH_KERBEROS_HTTPS_BADCBT_URL",
    "TOWER_AUTH_KERBEROS_CA",
];

/// The Kerberos peer (`tests/peers/kerberos.sh`): MIT Kerberos with the realm `TOWERAUTH.TEST`
/// (user `alice`, password `Passw0rd!`), Apache with mod_auth_gssapi protecting
/// `/negotiate/`, Squid asking for Negotiate (Kerberos) proxy auth, and MIT's acceptor over HTTPS
/// with channel binding required (`tests/peers/kerberos_cbt.py`).
#[allow(dead_code, unreachable_pub)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kerberos {
    /// Apache, `http://localhost:PORT` (the service principal is `HTTP/localhost`).
    pub url: String,
    /// The KDC, `tcp://127.0.0.1:PORT`.
    pub kdc: String,
    /// The realm's `krb5.conf` (for `KRB5_CONFIG`).
    pub krb5_config: String,
    /// Squid wanting `Proxy-Authorization: Negotiate` (Kerberos, `negotiate_kerberos_auth`),
    /// `http://localhost:PORT` (its service principal is `HTTP/localhost`); forwards and tunnels
    /// to 127.0.0.1 and localhost only.
    pub proxy_url: String,
    /// Negotiate (Kerberos) over HTTPS with channel binding required, `https://localhost:PORT`:
    /// any path but `/health` answers `hello cbt user=U len=N`; a refusal is a `401` with the
    /// reason in `X-Refused` (`bad-bindings`, `not-channel-bound`, `gss-error`).
    pub https_url: String,
    /// The same, expecting another certificate's binding: every channel-bound context fails.
    pub https_badcbt_url: String,
    /// The CA of both HTTPS certificates (PEM file).
    pub ca: String,
}

/// Set in a test binary re-run by [`Kerberos::rerun_in_child`].
#[allow(dead_code)]
const KERBEROS_CHILD_VAR: &str = "TOWER_AUTH_KERBEROS_TEST_CHILD";

/// Whether this process is a test binary re-run by [`Kerberos::rerun_in_child`].
#[allow(dead_code, unreachable_pub)]
pub fn in_kerberos_child() -> bool {
    std::env::var_os(KERBEROS_CHILD_VAR).is_some()
}

#[allow(dead_code, unreachable_pub)]
impl Kerberos {
    /// For a test that needs environment variables the system's Kerberos reads (`KRB5_CONFIG`,
    /// `KRB5CCNAME`), which a test cannot set in its own process (`std::env::set_var` is unsafe
    /// with threads, and the crate forbids unsafe code). In the parent: runs `test` again in a
    /// child process of this test binary with the peer's variables, `KRB5_CONFIG` and `env` set,
    /// asserts that it ran there and passed, and returns `false`. In that child: returns `true`
    /// (the caller runs the test's body).
    pub fn rerun_in_child(&self, test: &str, env: &[(&str, &str)]) -> bool {
        if in_kerberos_child() {
            return true;
        }
        let out = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(KERBEROS_CHILD_VAR, "1")
            .env("KRB5_CONFIG", &self.krb5_config)
            .envs(KERBEROS_VARS.iter().zip([
                &self.url,
                &self.kdc,
                &self.krb5_config,
                &self.proxy_url,
                &self.https_url,
                &self.https_badcbt_url,
                &self.ca,
            ]))
            .envs(env.iter().copied())
            .output()
            .expect("re-run the test binary");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprint!("{stderr}");
        assert!(out.status.success(), "{test} failed in its child process:\n{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "{test} did not run in its child process:\n{stdout}");
        false
    }

    /// `kinit alice@TOWERAUTH.TEST` into the credential cache `ccache` (`FILE:path`) with the
    /// realm's `krb5.conf` (Debian krb5-user), for a ticket lasting `lifetime` (`"2s"`) if given.
    pub fn kinit(&self, ccache: &str, lifetime: Option<&str>) {
        let mut cmd = Command::new("kinit");
        if let Some(l) = lifetime {
            cmd.args(["-l", l]);
        }
        let mut child = cmd
            .arg("alice@TOWERAUTH.TEST")
            .env("KRB5_CONFIG", &self.krb5_config)
            .env("KRB5CCNAME", ccache)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("kinit (Debian krb5-user)");
        writeln!(child.stdin.take().expect("stdin"), "Passw0rd!").expect("the password to kinit");
        assert!(child.wait().expect("kinit").success(), "kinit failed");
    }
}

/// The Kerberos peer: from the `TOWER_AUTH_KERBEROS_*` env vars if set (all seven), otherwise
/// acquired (once per process) with `tests/peers/kerberos.sh acquire target/peers/kerberos PID`
/// and released when the process exits, as [`apache`] does.
///
/// Returns `None` (after writing `SKIPPED {test}: {reason}` to stderr) when it cannot be had;
/// panics instead when running under CI.
#[allow(dead_code, unreachable_pub)]
pub fn kerberos() -> Option<&'static Kerberos> {
    static KERBEROS: OnceLock<Result<Kerberos, String>> = OnceLock::new();
    match KERBEROS.get_or_init(find_kerberos) {
        Ok(peer) => Some(peer),
        Err(reason) => unavailable(reason),
    }
}

#[allow(dead_code)]
fn parse_kerberos_env(text: &str) -> Result<Kerberos, String> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{key} missing"))
    };
    Ok(Kerberos {
        url: trim_url(&get(KERBEROS_VARS[0])?),
        kdc: get(KERBEROS_VARS[1])?,
        krb5_config: get(KERBEROS_VARS[2])?,
        proxy_url: trim_url(&get(KERBEROS_VARS[3])?),
        https_url: trim_url(&get(KERBEROS_VARS[4])?),
        https_badcbt_url: trim_url(&get(KERBEROS_VARS[5])?),
        ca: get(KERBEROS_VARS[6])?,
    })
}

#[allow(dead_code)]
fn find_kerberos() -> Result<Kerberos, String> {
    let vars: Vec<String> = KERBEROS_VARS
        .iter()
        .filter_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()).map(|v| format!("{name}={v}")))
        .collect();
    match vars.len() {
        7 => return parse_kerberos_env(&vars.join("\n")).map_err(|e| format!("Kerberos peer unavailable: {e}")),
        1..=6 => return Err(format!("Kerberos peer unavailable: set all of {KERBEROS_VARS:?} or none")),
        _ => {}
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = "tests/peers/kerberos.sh";
    let dir = "target/peers/kerberos";
    let fix = format!(
        "to fix: `apt-get install krb5-kdc krb5-admin-server krb5-user libapache2-mod-auth-gssapi apache2 squid \
         python3-gssapi openssl`, then \
         check `{script} start {dir}` by hand in {manifest}, or set {KERBEROS_VARS:?}",
        manifest = manifest_dir.display(),
    );
    let (_, stdout, _) = acquire("Kerberos", manifest_dir, script, dir, &fix)?;
    parse_kerberos_env(&stdout)
        .map_err(|e| format!("Kerberos peer unavailable: `{script} acquire` printed {stdout:?}: {e}; {fix}"))
}
