//! `oauth2::RedisStore` against a real Redis (Debian's `redis-server`, started by
//! `tests/peers/redis.sh`) and the crate's fake identity provider: a fleet of providers makes one
//! token request per renewal, a lease owner that dies mid-request is replaced when its lease
//! expires, Redis stopped mid-run (a private `redis-server` of the test's own) costs no request,
//! rotating refresh tokens are used by one owner at a time, corrupt or foreign values and a lease
//! never given back are worked around, AUTH from the URL with an ACL user, and encryption.

mod support;

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::peers;
use support::redis_server::PrivateRedis;
use tokio::time::Instant;
use tower_auth::oauth2::{ProviderBuilder, RedisStore, RedisStoreBuilder, TokenProvider};
use tower_auth::testing::idp::{FakeIdp, Fault, Grant};

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A prefix of this test's own, so that tests sharing the Redis peer never meet.
fn prefix(test: &str) -> String {
    format!("t-{test}-{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (t.subsec_nanos() ^ std::process::id().rotate_left(16)).wrapping_mul(2654435761)
}

/// Options of a test store: short timeouts, as a test fleet needs.
fn store(url: &str, prefix: &str) -> RedisStoreBuilder {
    RedisStore::builder(url)
        .prefix(prefix)
        .lease_ttl(Duration::from_secs(3))
        .op_timeout(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(100))
        .recheck_interval(Duration::from_millis(300))
}

fn cc(idp: &FakeIdp) -> ProviderBuilder {
    TokenProvider::client_credentials(idp.token_url(), "svc", "s3cret").timeout(Duration::from_secs(2))
}

fn replica(idp: &FakeIdp, store: RedisStoreBuilder) -> TokenProvider {
    cc(idp).store(store.build().unwrap()).build(client()).unwrap()
}

/// A synchronous connection for looking at (and tampering with) what the store wrote.
fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn keys(url: &str, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS").arg(pattern).query(&mut raw(url)).unwrap()
}

async fn wait_for_key(url: &str, pattern: &str) -> String {
    for _ in 0..100 {
        if let Some(k) = keys(url, pattern).pop() {
            return k;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no key {pattern}");
}

/// Log lines of this test (a current-thread runtime: every task logs on the test's thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_eight_makes_one_token_request_at_a_cold_start_and_one_per_renewal() {
    let Some(redis) = peers::redis() else { return };
    let idp = FakeIdp::start().await.unwrap();
    idp.set_lifetime(Duration::from_secs(4));
    idp.set_delay(Duration::from_millis(50));
    let prefix = prefix("fleet");
    let fleet: Vec<TokenProvider> = (0..8).map(|_| replica(&idp, store(&redis.url, &prefix))).collect();

    // 8 replicas x 50 callers at once.
    let mut calls = tokio::task::JoinSet::new();
    for p in &fleet {
        for _ in 0..50 {
            let p = p.clone();
            calls.spawn(async move { p.token().await.map(|t| t.header_value().clone()) });
        }
    }
    let mut headers = std::collections::HashSet::new();
    while let Some(joined) = calls.join_next().await {
        headers.insert(joined.unwrap().unwrap());
    }
    assert_eq!(idp.token_requests(), 1, "the fleet's token requests at a cold start");
    assert_eq!(headers.len(), 1, "every replica sends the same token");
    assert_eq!(fleet.iter().map(|p| p.stats().token_requests()).sum::<u64>(), 1);

    // 9 s of 4 s tokens: each renewal is made once for the fleet (about every 2 s: a token is
    // replaced when half its lifetime is left), never once per replica (8 per renewal).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        for p in &fleet {
            p.token().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewals = idp.token_requests() - 1;
    assert!((3..=7).contains(&renewals), "{renewals} token requests for 9 s of 4 s tokens");
    assert_eq!(fleet.iter().map(|p| p.stats().token_requests()).sum::<u64>(), idp.token_requests());
    // No two replicas asked for the same renewal: requests are never close together.
    let times: Vec<Instant> = idp.requests().iter().map(|r| r.received_at).collect();
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] > Duration::from_millis(500), "two token requests {:?} apart", pair[1] - pair[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_owner_that_dies_mid_request_is_replaced_when_its_lease_expires() {
    let Some(redis) = peers::redis() else { return };
    let idp = FakeIdp::start().await.unwrap();
    let prefix = prefix("owner-dies");
    idp.fail_next(1, Fault::Hang);

    // Replica A, in a runtime of its own (a process): takes the lease, its request hangs, and
    // it dies without giving the lease back.
    let (handle, url, p) = (idp.handle(), redis.url.clone(), prefix.clone());
    let dead = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let a = TokenProvider::client_credentials(handle.token_url(), "svc", "s3cret")
                .timeout(Duration::from_secs(30))
                .store(store(&url, &p).lease_ttl(Duration::from_millis(1500)).build().unwrap())
                .build(client())
                .unwrap();
            tokio::spawn(async move { a.token().await });
            handle.wait_for_token_requests(1).await;
        });
        // The process dies mid-request: its tasks are dropped, the lease is not given back.
        rt.shutdown_background();
    });
    idp.wait_for_token_requests(1).await;
    dead.join().unwrap();
    let lease = keys(&redis.url, &format!("{prefix}:lease:*"));
    assert_eq!(lease.len(), 1, "the dead owner's lease is still there");

    // Replica B waits for the lease (not for its own 30 s timeout), then takes over.
    let b = cc(&idp)
        .store(store(&redis.url, &prefix).lease_ttl(Duration::from_millis(1500)).build().unwrap())
        .build(client())
        .unwrap();
    let started = Instant::now();
    let token = b.token().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(token.header_value(), "Bearer at-1", "the hung request never answered");
    assert_eq!(idp.token_requests(), 2);
    assert!(waited < Duration::from_millis(2500), "waited {waited:?}");
    // B gives the lease back after writing the token (just after `token()` returned).
    for _ in 0..50 {
        if keys(&redis.url, &format!("{prefix}:lease:*")).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("B did not give its lease back");
}

#[tokio::test(flavor = "current_thread")]
async fn redis_stopped_mid_run_costs_no_request_logs_once_and_is_shared_again_when_back() {
    let Some(bin) = peers::redis_server() else { return };
    let logs = Logs::default();
    let _guard = logs.capture();
    let mut private = PrivateRedis::start(bin);
    let url = private.url();
    let idp = FakeIdp::start().await.unwrap();
    idp.set_lifetime(Duration::from_secs(3));
    let prefix = prefix("outage");
    let stores: Vec<RedisStore> = (0..2).map(|_| store(&url, &prefix).build().unwrap()).collect();
    let fleet: Vec<TokenProvider> = stores.iter().map(|s| cc(&idp).store(s.clone()).build(client()).unwrap()).collect();
    for p in &fleet {
        p.token().await.unwrap();
    }
    assert_eq!(idp.token_requests(), 1);

    // Redis dies: 6 s (two lifetimes) of requests, every one served.
    private.down();
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(6) {
        for p in &fleet {
            p.token().await.expect("a token while Redis is down");
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 100);
    assert!(stores.iter().all(|s| !s.is_available()));
    assert_eq!(logs.count("the Redis token store is unavailable"), 2, "one line per replica:\n{}", logs.text());
    assert!(idp.token_requests() >= 3, "each replica fetched on its own");

    // Redis is back (empty: no persistence): the next renewal is written again and shared.
    private.up();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for p in &fleet {
            p.token().await.expect("a token when Redis is back");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stores.iter().all(RedisStore::is_available));
    assert_eq!(logs.count("the Redis token store is back"), 2, "{}", logs.text());
    wait_for_key(&url, &format!("{prefix}:token:*")).await;
    let newcomer = replica(&idp, store(&url, &prefix));
    newcomer.token().await.unwrap();
    assert_eq!(newcomer.stats().token_requests(), 0, "a new replica finds the shared token");
    let text = logs.text();
    assert!((1..=20).all(|n| !text.contains(&format!("at-{n}"))), "a token in the logs:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_refresh_tokens_are_used_by_one_owner_at_a_time_and_never_revoked() {
    let Some(redis) = peers::redis() else { return };
    let idp = FakeIdp::start().await.unwrap();
    idp.set_lifetime(Duration::from_secs(3));
    idp.set_rotation(true);
    let prefix = prefix("rotation");
    let fleet: Vec<TokenProvider> = (0..4)
        .map(|_| {
            TokenProvider::password(idp.token_url(), "svc", "alice", "wonderland")
                .client_secret("s3cret")
                .timeout(Duration::from_secs(2))
                .store(store(&redis.url, &prefix).build().unwrap())
                .build(client())
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        for p in &fleet {
            p.token().await.expect("a token: no refresh token was refused");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One login; every later token came from a refresh with the newest refresh token.
    assert_eq!(idp.token_requests_for(&Grant::Password), 1);
    let refreshes = idp.token_requests_for(&Grant::RefreshToken);
    assert!(refreshes >= 3, "{refreshes}");
    let used: Vec<String> =
        idp.requests().iter().filter_map(|r| r.refresh_token.as_ref().map(|t| t.expose().to_owned())).collect();
    let distinct: std::collections::HashSet<&String> = used.iter().collect();
    assert_eq!(distinct.len(), used.len(), "a refresh token was used twice: {used:?}");
    assert!(fleet.iter().all(|p| p.stats().failures() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_are_not_ours_and_a_lease_never_given_back_are_worked_around() {
    let Some(redis) = peers::redis() else { return };
    let idp = FakeIdp::start().await.unwrap();
    let prefix = prefix("foreign");
    let first = replica(&idp, store(&redis.url, &prefix));
    first.token().await.unwrap();
    let key = wait_for_key(&redis.url, &format!("{prefix}:token:*")).await;
    let lease = key.replace(":token:", ":lease:");
    let mut conn = raw(&redis.url);

    let tamper: [&dyn Fn(&mut redis::Connection); 5] = [
        &|c| redis::cmd("SET").arg(&key).arg("not json at all").exec(c).unwrap(),
        &|c| redis::cmd("SET").arg(&key).arg(r#"{"v":9,"access_token":"x"}"#).arg("PX").arg(60_000).exec(c).unwrap(),
        &|c| redis::cmd("SET").arg(&key).arg(vec![0xff_u8, 0, 0x80, 1]).arg("PX").arg(60_000).exec(c).unwrap(),
        &|c| redis::cmd("SET").arg(&key).arg(r#"{"v":1,"access_token":"forever"}"#).exec(c).unwrap(),
        &|c| {
            redis::cmd("DEL").arg(&key).exec(c).unwrap();
            redis::cmd("HSET").arg(&key).arg("a").arg("b").exec(c).unwrap();
        },
    ];
    for (i, tamper) in tamper.iter().enumerate() {
        tamper(&mut conn);
        let before = idp.token_requests();
        let p = replica(&idp, store(&redis.url, &prefix));
        let token = p.token().await.unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_ne!(token.header_value(), "Bearer forever", "case {i}");
        assert_eq!(idp.token_requests(), before + 1, "case {i}: read as absent, a token requested");
        // Replaced by the next write: a value of ours again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let value: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(doc["v"], 1, "case {i}");
    }

    // A lease someone took and never gives back (no time to live): the waiter gives up after
    // the lease ttl and requests anyway.
    redis::cmd("DEL").arg(&key).exec(&mut conn).unwrap();
    redis::cmd("SET").arg(&lease).arg("someone else").exec(&mut conn).unwrap();
    let p = replica(&idp, store(&redis.url, &prefix).lease_ttl(Duration::from_millis(500)));
    let started = Instant::now();
    p.token().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    let still: String = redis::cmd("GET").arg(&lease).query(&mut conn).unwrap();
    assert_eq!(still, "someone else", "another owner's lease is never deleted");
    redis::cmd("DEL").arg(&lease).exec(&mut conn).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn auth_from_the_url_with_an_acl_user_and_a_wrong_password_never_logged() {
    let Some(redis) = peers::redis() else { return };
    let logs = Logs::default();
    let _guard = logs.capture();
    let idp = FakeIdp::start().await.unwrap();
    // The ACL user may use keys and channels under `tower-acl:` only.
    let prefix = format!("tower-acl:{}", prefix("acl"));
    let a = replica(&idp, store(&redis.acl_url, &prefix));
    let b = replica(&idp, store(&redis.acl_url, &prefix));
    a.token().await.unwrap();
    b.token().await.unwrap();
    assert_eq!(idp.token_requests(), 1, "shared through the ACL user:\n{}", logs.text());
    assert!(!keys(&redis.url, &format!("{prefix}:token:*")).is_empty());

    // A wrong password, and a prefix outside the ACL: Redis refuses, each replica works alone.
    let password = redis.acl_url.split(':').nth(2).unwrap().split('@').next().unwrap().to_owned();
    let wrong = redis.acl_url.replace(&password, "not-the-password");
    let refused = RedisStore::new(&wrong).unwrap();
    assert!(refused.ping().await.unwrap_err().is_unavailable());
    let c = replica(&idp, store(&wrong, &prefix));
    c.token().await.unwrap();
    let d = replica(&idp, store(&redis.acl_url, "outside-the-acl"));
    d.token().await.unwrap();
    assert_eq!(idp.token_requests(), 3);
    let text = logs.text();
    assert!(text.contains("the Redis token store is unavailable"), "{text}");
    assert!(!text.contains(&password) && !text.contains("not-the-password"), "a password in the logs:\n{text}");
    let debug = format!("{:?}", store(&redis.acl_url, &prefix).build().unwrap());
    assert!(!debug.contains(&password), "{debug}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_values_are_not_the_token_and_open_only_with_the_fleets_key() {
    let Some(redis) = peers::redis() else { return };
    let idp = FakeIdp::start().await.unwrap();
    let prefix = prefix("sealed");
    let key = [42u8; 32];
    let a = replica(&idp, store(&redis.url, &prefix).encryption_key(key));
    assert_eq!(a.token().await.unwrap().header_value(), "Bearer at-1");
    let name = wait_for_key(&redis.url, &format!("{prefix}:token:*")).await;
    let value: Vec<u8> = redis::cmd("GET").arg(&name).query(&mut raw(&redis.url)).unwrap();
    let text = String::from_utf8_lossy(&value);
    assert!(!text.contains("at-1"), "the token in clear in Redis: {text}");
    assert!(text.contains("A256GCM"), "{text}");

    // Same key: shared. Another key or none: absent, so a token of its own.
    let b = replica(&idp, store(&redis.url, &prefix).encryption_key(key));
    assert_eq!(b.token().await.unwrap().header_value(), "Bearer at-1");
    assert_eq!(idp.token_requests(), 1);
    let c = replica(&idp, store(&redis.url, &prefix).encryption_key([7u8; 32]));
    assert_eq!(c.token().await.unwrap().header_value(), "Bearer at-2");
    let d = replica(&idp, store(&redis.url, &prefix));
    assert_eq!(d.token().await.unwrap().header_value(), "Bearer at-3");
    assert_eq!(idp.token_requests(), 3);
    let _ = std::io::stderr().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_a_resource_server_rejected_is_never_taken_back_from_the_store() {
    let Some(redis) = peers::redis() else { return };
    let idp = FakeIdp::start().await.unwrap();
    let prefix = prefix("rejected");
    let a = replica(&idp, store(&redis.url, &prefix));
    let b = replica(&idp, store(&redis.url, &prefix));
    let first = a.token().await.unwrap();
    assert_eq!(b.token().await.unwrap().header_value(), "Bearer at-1");
    // A's request with at-1 gets a 401: A drops it and, although the store still has it, asks
    // for a new one.
    assert!(a.invalidate(&first));
    assert_eq!(a.token().await.unwrap().header_value(), "Bearer at-2");
    assert_eq!(idp.token_requests(), 2);
    // B's next 401 finds the replacement in the store: no request.
    let held = b.token().await.unwrap();
    assert!(b.invalidate(&held));
    assert_eq!(b.token().await.unwrap().header_value(), "Bearer at-2");
    assert_eq!(idp.token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_the_keys_time_to_live_on_the_redis_clock_not_a_replicas_wall_clock() {
    let Some(redis) = peers::redis() else { return };
    let idp = FakeIdp::start().await.unwrap();
    let prefix = prefix("pttl");
    let a = replica(&idp, store(&redis.url, &prefix));
    a.token().await.unwrap();
    let key = wait_for_key(&redis.url, &format!("{prefix}:token:*")).await;
    let mut conn = raw(&redis.url);
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!((3_590_000..=3_600_000).contains(&pttl), "the key lives as long as the token: {pttl} ms");
    let value: String = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&value).unwrap();
    let fields: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["access_token", "refresh_grace_ms", "v"], "no wall-clock time in the value");
    // Whatever a replica's clock says, the token's lifetime is what Redis has left on the key.
    redis::cmd("PEXPIRE").arg(&key).arg(10_000).exec(&mut conn).unwrap();
    let b = replica(&idp, store(&redis.url, &prefix));
    let token = b.token().await.unwrap();
    let left = token.expires_at() - Instant::now();
    assert!(left <= Duration::from_secs(10) && left >= Duration::from_secs(8), "{left:?}");
    assert_eq!(b.stats().token_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_fleets_ca_is_shared_and_an_unknown_ca_is_worked_around() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let Some(bin) = peers::redis_server() else { return };
    // A CA and a certificate for 127.0.0.1, made now.
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "tower-auth redis test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "localhost");
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
    let ca_pem = pem("CERTIFICATE", ca_cert.der());
    std::fs::write(&cert, pem("CERTIFICATE", server_cert.der()) + &ca_pem).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &server_key.serialize_der())).unwrap();
    let redis = PrivateRedis::start_tls(bin, &cert, &key);
    let url = redis.url().replace("redis://", "rediss://");

    let idp = FakeIdp::start().await.unwrap();
    let prefix = prefix("tls");
    let trusted = || store(&url, &prefix).tls_root_certificate(ca_pem.as_bytes()).build().unwrap();
    let probe = trusted();
    probe.ping().await.unwrap();
    let a = cc(&idp).store(trusted()).build(client()).unwrap();
    let b = cc(&idp).store(trusted()).build(client()).unwrap();
    a.token().await.unwrap();
    b.token().await.unwrap();
    assert_eq!(idp.token_requests(), 1, "shared over TLS");
    assert!(format!("{probe:?}").contains("rediss://127.0.0.1"));

    // The system's roots do not know this CA: the handshake fails, the replica works alone.
    let untrusted = store(&url, &prefix).build().unwrap();
    assert!(untrusted.ping().await.unwrap_err().is_unavailable());
    let c = cc(&idp).store(untrusted).build(client()).unwrap();
    c.token().await.unwrap();
    assert_eq!(idp.token_requests(), 2);
}

/// PEM text of DER bytes (rcgen is built without its `pem` feature).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_hangs_delays_a_token_by_one_operation_timeout_at_most() {
    let Some(bin) = peers::redis_server() else { return };
    let redis = PrivateRedis::start(bin);
    let url = redis.url();
    let idp = FakeIdp::start().await.unwrap();
    let prefix = prefix("hang");
    let a_store = store(&url, &prefix).build().unwrap();
    let a = cc(&idp).store(a_store.clone()).build(client()).unwrap();
    let first = a.token().await.unwrap();

    // Redis stops answering (connections open, nothing read).
    redis.freeze();
    assert!(a.invalidate(&first));
    let started = Instant::now();
    assert_eq!(a.token().await.unwrap().header_value(), "Bearer at-2");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    // A replica starting now: its first read times out once, then it fetches its own.
    let b_store = store(&url, &prefix).build().unwrap();
    let b = cc(&idp).store(b_store.clone()).build(client()).unwrap();
    let started = Instant::now();
    assert_eq!(b.token().await.unwrap().header_value(), "Bearer at-3");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    assert!(!a_store.is_available() && !b_store.is_available());

    // Redis answers again: the stores see it at their next call.
    redis.thaw();
    tokio::time::sleep(Duration::from_millis(400)).await;
    b_store.ping().await.unwrap();
    assert!(b_store.is_available());
    let held = b.token().await.unwrap();
    assert!(b.invalidate(&held));
    b.token().await.unwrap();
    wait_for_key(&url, &format!("{prefix}:token:*")).await;
    let c = replica(&idp, store(&url, &prefix));
    c.token().await.unwrap();
    assert_eq!(c.stats().token_requests(), 0, "shared again");
}
