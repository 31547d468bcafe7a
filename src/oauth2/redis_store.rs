//! [`RedisStore`]: tokens shared by a fleet of replicas through Redis, with a cross-replica lease
//! so that the fleet makes one token request per renewal (feature `redis`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisError, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::store::{CacheKey, Lease, StoreFuture, StoredToken, TokenStore, wall_now};
use crate::error::ConfigError;
use crate::secret::Secret;

/// The value format this code reads and writes.
const VERSION: u64 = 1;
const DEFAULT_PREFIX: &str = "tower-auth";
/// Longer than the provider's default token request timeout (60 s).
const LEASE_TTL: Duration = Duration::from_secs(70);
const OP_TIMEOUT: Duration = Duration::from_millis(500);
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a token with a refresh token is kept past its access token's expiry (as `FileStore`).
const REFRESH_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// A larger value is not one of ours.
const MAX_VALUE: usize = 64 * 1024;

/// Writes the value with its time to live, then wakes the lease's waiters.
static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[2], 'saved')
return 1",
    )
});

/// Compare and delete: only the lease's owner gives it back; then its waiters are woken.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], 'released')
  return 1
end
return 0",
    )
});

/// Tokens kept in Redis and shared by every replica of a service that has the same client
/// configuration, with a lease so that the fleet behaves like one client: one token request per
/// renewal for N replicas, and a rotated refresh token used by one replica at a time.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_auth::oauth2::{RedisStore, TokenProvider};
/// # let client = tower::service_fn(|_req: http::Request<http_body_util::Full<bytes::Bytes>>| async move {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
/// # });
///
/// // Every replica runs this: the first one that needs a token asks the identity provider, the
/// // others read it from Redis.
/// let store = RedisStore::builder("rediss://tokens.internal:6380/2")
///     .username("svc-a")
///     .password(std::env::var("REDIS_PASSWORD")?)
///     .prefix("svc-a")
///     // Optional: AES-256-GCM over every stored value, with a key the replicas share.
///     .encryption_key([7; 32])
///     .lease_ttl(Duration::from_secs(40))
///     .build()?;
/// let provider = TokenProvider::client_credentials("https://idp.example/token", "svc-a", "s3cret")
///     .timeout(Duration::from_secs(30)) // shorter than the lease
///     .store(store)
///     .build(client)?;
/// let token = provider.token().await?;
/// # Ok(()) }
/// ```
///
/// # Keys and values
///
/// For a provider's [`CacheKey`] `K` (a SHA-256 of the token URL, client id, grant, scopes,
/// audience, resources and user name: never a secret) and the prefix `P` (default
/// `tower-auth`):
///
/// | key | what |
/// |---|---|
/// | `P:token:K` | the token, a versioned JSON value (below), with a time to live (`PX`) |
/// | `P:lease:K` | the lease: a random owner id, `SET NX PX` |
/// | `P:wake:K` | the pub/sub channel on which waiters are woken (after a save, after a release) |
///
/// The value is `{"v":1,"access_token":"…","refresh_token":"…","refresh_grace_ms":N}`, or with
/// encryption `{"v":1,"alg":"A256GCM","nonce":"<base64>","data":"<base64>"}` where `data` is
/// that JSON sealed with AES-256-GCM, a random 96-bit nonce per value, and the key's name as
/// associated data (a value copied to another key does not open).
///
/// **Expiry is Redis's clock, not the replicas'.** The key lives as long as the access token
/// has left (plus, when there is a refresh token, `refresh_grace_ms`: 30 days by default); a
/// replica that reads it takes the key's `PTTL` (less the grace) as the access token's remaining
/// lifetime. Durations only travel between replicas, never wall-clock times, so replicas whose
/// clocks disagree still agree on when a token expires.
///
/// # The lease
///
/// Before a token request the provider takes the lease ([`TokenStore::lease`]):
/// `SET P:lease:K <random owner id> NX PX <lease ttl>` (with a `GET` in the same round trip, so
/// that a call made again after a lost reply still knows the lease is its own). The owner reads the store again (another
/// replica may have just written a token: then it sends no request), requests, writes the new
/// token (and the rotated refresh token) and gives the lease back with a compare-and-delete Lua
/// script (only the owner deletes; a lease that expired and went to another replica is left
/// alone). The other replicas wait: subscribed to `P:wake:K`, they read the new token as soon as
/// the owner has written it (and send nothing), try for the lease again when it is given back,
/// and at least every [poll interval](RedisStoreBuilder::poll_interval) otherwise (a replica
/// that gets the lease reads the store first, so it too sends nothing if a token just came). An owner that dies mid-request
/// never gives the lease back: it expires after the [lease ttl](RedisStoreBuilder::lease_ttl)
/// and one waiter takes it. Make the lease longer than the provider's token request
/// [timeout](super::ProviderBuilder::timeout), so that a slow request never outlives its lease,
/// and, where callers should not fail while a dead owner's lease runs out at a cold start (no
/// token anywhere yet), shorter than the provider's
/// [wait timeout](super::ProviderBuilder::wait_timeout) (both 60 s by default: e.g. a token
/// request timeout of 10 s and a lease of 15 s).
///
/// # When Redis fails
///
/// Redis is not a single point of failure. Every Redis call is bounded by the
/// [operation timeout](RedisStoreBuilder::op_timeout) (default 500 ms); a call that fails or
/// times out marks Redis unavailable, with one `tracing` warning that names the cause (never a
/// password or a token). While it is unavailable the store reads as empty and grants every lease
/// at once, without waiting for Redis: each replica's provider keeps its own token in memory and
/// fetches its own, as if it had no store, and no request fails because Redis did. Redis is
/// tried again at most every [recheck interval](RedisStoreBuilder::recheck_interval) (default
/// 1 s); when it answers, one `info` line says so and the replicas share tokens again. Rotating
/// refresh tokens cannot be shared while Redis is down: each replica then uses its own.
///
/// A value that is not ours (another type, not JSON, another version, too large), that is
/// corrupt, that is sealed when no key is configured (or plain when one is), or that does not
/// open with the configured key, is read as absent, with a warning that says which (never the
/// value), and replaced by the next write. A lease that is never given back (a key written by
/// something else without a time to live) makes the waiter fail after the lease ttl with a
/// [`RedisStoreError`]; the provider then requests a token anyway.
///
/// # Security
///
/// The tokens in Redis are the same bearer secrets as in the provider's memory: **whoever can
/// read the Redis database can read the tokens** and act as the client until they expire (and,
/// with a refresh token, for longer). So:
///
/// - Use `rediss://` (TLS; the system's roots, or [your CA](RedisStoreBuilder::tls_root_certificate))
///   when Redis is not on the same host, and an ACL user with a password (in the URL,
///   `redis://user:password@host`, or [`username`](RedisStoreBuilder::username) and
///   [`password`](RedisStoreBuilder::password)) limited to the prefix's keys and channels
///   (`~P:* &P:*`, commands `get set del pttl publish subscribe evalsha eval multi exec`).
/// - [`encryption_key`](RedisStoreBuilder::encryption_key) seals every value with AES-256-GCM
///   (a key of 32 random bytes the replicas share): then a reader of the database without the key
///   sees no token. Key names and the lease are not secret and stay clear.
/// - The password is never in `Debug` output, an error or a log line; the store's `Debug` shows
///   the host, port, database, prefix and whether TLS and encryption are on.
///
/// # Written here, and why
///
/// The Redis client (connections that reconnect, scripts, pub/sub, TLS) is the `redis` crate's,
/// the cipher RustCrypto's `aes-gcm`. Written here: the lease protocol above (no Rust crate
/// shares OAuth2 tokens across processes; MSAL.NET's distributed cache shares them but locks in
/// one process only, so N replicas still refresh N times) and the value format, versioned so
/// that a future format is read as absent, not misread.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    target: String,
    prefix: String,
    password: Option<Secret>,
    cipher: Option<Aes256Gcm>,
    lease_ttl: Duration,
    op_timeout: Duration,
    poll_interval: Duration,
    recheck_interval: Duration,
    refresh_grace: Duration,
    /// Whether the last Redis call succeeded.
    available: AtomicBool,
    /// While unavailable: no Redis call before then (milliseconds since `epoch`).
    retry_at_ms: AtomicU64,
    epoch: Instant,
}

/// Options of a [`RedisStore`], from [`RedisStore::builder`].
pub struct RedisStoreBuilder {
    url: Secret,
    username: Option<String>,
    password: Option<Secret>,
    prefix: String,
    key: Option<[u8; 32]>,
    root_cert: Option<Vec<u8>>,
    lease_ttl: Duration,
    op_timeout: Duration,
    poll_interval: Duration,
    recheck_interval: Duration,
    refresh_grace: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &"[redacted]")
            .field("prefix", &self.prefix)
            .field("encrypted", &self.key.is_some())
            .field("lease_ttl", &self.lease_ttl)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `url` with the default options (see [`RedisStore::builder`]).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a URL that is not a Redis URL.
    pub fn new(url: impl AsRef<str>) -> Result<RedisStore, ConfigError> {
        RedisStore::builder(url).build()
    }

    /// Options for a store at `url`: `redis://[user[:password]@]host[:port][/db]`,
    /// `rediss://…` for TLS, or `unix:///path/to/socket`. Nothing connects before the store is
    /// first used (within a tokio runtime); a Redis that is down then is worked around.
    pub fn builder(url: impl AsRef<str>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: Secret::new(url.as_ref()),
            username: None,
            password: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            key: None,
            root_cert: None,
            lease_ttl: LEASE_TTL,
            op_timeout: OP_TIMEOUT,
            poll_interval: POLL_INTERVAL,
            recheck_interval: RECHECK_INTERVAL,
            refresh_grace: REFRESH_GRACE,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key under which `key`'s token is stored (`{prefix}:token:{key}`).
    pub fn token_key(&self, key: &CacheKey) -> String {
        self.inner.name("token", key)
    }

    /// The Redis key of `key`'s lease (`{prefix}:lease:{key}`).
    pub fn lease_key(&self, key: &CacheKey) -> String {
        self.inner.name("lease", key)
    }

    /// Whether the last Redis call succeeded (false while the store works around an outage).
    pub fn is_available(&self) -> bool {
        self.inner.available.load(Ordering::Relaxed)
    }

    /// Sends `PING` now, whatever the store's view of Redis: a health check.
    ///
    /// # Errors
    ///
    /// A [`RedisStoreError`] ([`is_unavailable`](RedisStoreError::is_unavailable)) when Redis
    /// does not answer within the operation timeout, or refuses.
    pub async fn ping(&self) -> Result<(), RedisStoreError> {
        let inner = &self.inner;
        let result = inner.call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await }).await;
        match result {
            Ok(_) => {
                inner.succeeded();
                Ok(())
            }
            Err(e) => {
                inner.failed(&e);
                Err(e)
            }
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisStore")
            .field("target", &inner.target)
            .field("prefix", &inner.prefix)
            .field("encrypted", &inner.cipher.is_some())
            .field("available", &inner.available.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key and channel (default `tower-auth`): give each service or
    /// environment sharing a Redis its own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The ACL user name (else the URL's, else `default`).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password (else the URL's). Never logged or shown.
    pub fn password(mut self, password: impl AsRef<str>) -> Self {
        self.password = Some(Secret::new(password.as_ref()));
        self
    }

    /// Seals every stored value with AES-256-GCM under this key (32 bytes the replicas share;
    /// make them random). Replicas with another key, or none, read the values as absent.
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.key = Some(key);
        self
    }

    /// For `rediss://`: trust this CA (PEM) instead of the system's roots.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_cert = Some(pem.into());
        self
    }

    /// How long a lease lasts if its owner never gives it back (default 70 s). Make it longer
    /// than the provider's token request timeout (default 60 s).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The most one Redis call may take before Redis counts as unavailable (default 500 ms).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// How often a replica waiting for the lease tries again when no notification came
    /// (default 250 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// While Redis is unavailable, how often it is tried again (default 1 s).
    pub fn recheck_interval(mut self, interval: Duration) -> Self {
        self.recheck_interval = interval;
        self
    }

    /// How long a token with a refresh token stays in Redis after its access token expired
    /// (default 30 days), so that the next owner of the lease can still refresh.
    pub fn refresh_grace(mut self, grace: Duration) -> Self {
        self.refresh_grace = grace;
        self
    }

    /// The store.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (which never quotes the URL) for a URL that is not a Redis URL, an
    /// empty prefix, a zero duration, or a CA that is not PEM.
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        let info = self.url.expose().into_connection_info().map_err(|_| {
            ConfigError::new(
                "token store: not a Redis URL (redis://[user[:password]@]host[:port][/db], rediss://… or unix://…)",
            )
        })?;
        if self.prefix.is_empty() || self.prefix.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "token store: the Redis key prefix must be non-empty, without control characters",
            ));
        }
        for (name, d) in [
            ("lease ttl", self.lease_ttl),
            ("operation timeout", self.op_timeout),
            ("poll interval", self.poll_interval),
            ("recheck interval", self.recheck_interval),
        ] {
            if d.as_millis() == 0 {
                return Err(ConfigError::new(format!("token store: the Redis {name} must be at least 1 ms")));
            }
        }
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password.expose());
        }
        let password = settings.password().map(Secret::new);
        let db = settings.db();
        let info = info.set_redis_settings(settings);
        let target = match info.addr() {
            ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
            ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
            ConnectionAddr::Unix(path) => format!("unix://{}?db={db}", path.display()),
            _ => format!("redis (db {db})"),
        };
        let client = match self.root_cert {
            Some(pem) => {
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(info, certs)
            }
            None => redis::Client::open(info),
        }
        .map_err(|e| ConfigError::new(format!("token store {target}: {}", describe(&e, password.as_ref()))))?;
        let cipher = self.key.map(|k| Aes256Gcm::new(&k.into()));
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                conn: OnceCell::new(),
                target,
                prefix: self.prefix,
                password,
                cipher,
                lease_ttl: self.lease_ttl,
                op_timeout: self.op_timeout,
                poll_interval: self.poll_interval,
                recheck_interval: self.recheck_interval,
                refresh_grace: self.refresh_grace,
                available: AtomicBool::new(true),
                retry_at_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        })
    }
}

impl Inner {
    fn name(&self, kind: &str, key: &CacheKey) -> String {
        format!("{}:{kind}:{}", self.prefix, key.as_str())
    }

    /// The connection manager (made on first use: it needs the runtime).
    async fn conn(&self) -> Result<ConnectionManager, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(self.recheck_interval)
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout));
        let conn = self.conn.get_or_try_init(|| async { self.client.get_connection_manager_lazy(config) }).await?;
        Ok(conn.clone())
    }

    /// One Redis call, bounded by the operation timeout. A call that finds its connection
    /// broken (Redis restarted) is made once more, on the connection the manager makes anew.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, RedisStoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let work = async {
            match f(self.conn().await?).await {
                Err(e) if e.is_io_error() || e.is_connection_dropped() => f(self.conn().await?).await,
                other => other,
            }
        };
        match tokio::time::timeout(self.op_timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            // Another type under one of our keys (the code may come wrapped, from a transaction).
            Ok(Err(e)) if e.code() == Some("WRONGTYPE") || e.to_string().contains("WRONGTYPE") => {
                Err(RedisStoreError { kind: Kind::Foreign })
            }
            Ok(Err(e)) => Err(RedisStoreError { kind: Kind::Unavailable(describe(&e, self.password.as_ref())) }),
            Err(_) => Err(RedisStoreError {
                kind: Kind::Unavailable(format!("no answer within {} ms", self.op_timeout.as_millis())),
            }),
        }
    }

    /// Whether to try Redis now: it is available, or the recheck interval since it failed passed.
    fn usable(&self) -> bool {
        self.available.load(Ordering::Relaxed)
            || self.epoch.elapsed().as_millis() as u64 >= self.retry_at_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, e: &RedisStoreError) {
        if matches!(e.kind, Kind::Foreign) {
            return;
        }
        let retry = self.epoch.elapsed() + self.recheck_interval;
        self.retry_at_ms.store(retry.as_millis() as u64, Ordering::Relaxed);
        if self.available.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                redis = %self.target,
                error = %e,
                "the Redis token store is unavailable; each replica keeps and fetches its own tokens until it is back"
            );
        }
    }

    fn succeeded(&self) {
        if !self.available.swap(true, Ordering::Relaxed) {
            tracing::info!(redis = %self.target, "the Redis token store is back; tokens are shared again");
        }
    }

    /// Runs `f` against Redis unless it is known to be down; `None` when it is, or when the
    /// call fails (recorded, logged once per outage).
    async fn attempt<T, F, Fut>(&self, f: F) -> Option<Result<T, RedisStoreError>>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        if !self.usable() {
            return None;
        }
        let result = self.call(f).await;
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) if e.is_foreign() => self.succeeded(),
            Err(e) => {
                self.failed(e);
                return None;
            }
        }
        Some(result)
    }

    async fn load(&self, key: &CacheKey) -> Option<StoredToken> {
        let name = self.name("token", key);
        let found = self
            .attempt(|mut c| {
                let name = name.clone();
                async move {
                    redis::pipe().atomic().get(&name).pttl(&name).query_async::<(Option<Vec<u8>>, i64)>(&mut c).await
                }
            })
            .await?;
        let (value, pttl) = match found {
            Ok(found) => found,
            Err(_) => {
                self.unusable(key, Unusable::NotOurs);
                return None;
            }
        };
        let value = value?;
        let entry = match self.decode(&name, &value) {
            Ok(entry) => entry,
            Err(why) => {
                self.unusable(key, why);
                return None;
            }
        };
        // Our values always have a time to live; -1 means someone else wrote it.
        let Ok(pttl) = u64::try_from(pttl) else {
            self.unusable(key, Unusable::NotOurs);
            return None;
        };
        let left = Duration::from_millis(pttl.saturating_sub(entry.refresh_grace_ms));
        Some(StoredToken {
            access_token: Secret::new(entry.access_token),
            expires_at: wall_now() + left,
            refresh_token: entry.refresh_token.filter(|s| !s.is_empty()).map(Secret::new),
        })
    }

    fn unusable(&self, key: &CacheKey, why: Unusable) {
        tracing::warn!(
            redis = %self.target,
            key = %self.name("token", key),
            problem = why.as_str(),
            "a value in the Redis token store is not usable; read as absent, and replaced by the next write"
        );
    }

    async fn save(&self, key: &CacheKey, token: &StoredToken) {
        let left = token.remaining().unwrap_or_default();
        let grace = if token.refresh_token.is_some() { self.refresh_grace } else { Duration::ZERO };
        let ttl = (left + grace).as_millis() as u64;
        if ttl == 0 {
            return;
        }
        let name = self.name("token", key);
        let entry = Entry {
            v: VERSION,
            access_token: token.access_token.expose().to_owned(),
            refresh_token: token.refresh_token.as_ref().map(|s| s.expose().to_owned()),
            refresh_grace_ms: grace.as_millis() as u64,
        };
        let Some(value) = self.encode(&name, &entry) else { return };
        let channel = self.name("wake", key);
        let (name, channel, value) = (&name, &channel, &value);
        let _ = self
            .attempt(|mut c| async move {
                SAVE.key(name).key(channel).arg(value).arg(ttl).invoke_async::<i64>(&mut c).await
            })
            .await;
    }

    async fn lease(self: &Arc<Self>, key: &CacheKey) -> Result<Lease, RedisStoreError> {
        let name = self.name("lease", key);
        let owner = format!("{:032x}", rand::random::<u128>());
        let ttl = self.lease_ttl.as_millis() as u64;
        let deadline = Instant::now() + self.lease_ttl + self.poll_interval;
        // `SET NX PX`, then `GET` in the same round trip: the lease is ours if it holds our
        // owner id, also when a reply was lost and the call made again.
        let try_take = || {
            let (name, owner) = (&name, &owner);
            self.attempt(move |mut c| async move {
                let (_, holder) = redis::pipe()
                    .cmd("SET")
                    .arg(name)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .get(name)
                    .query_async::<(redis::Value, Option<Vec<u8>>)>(&mut c)
                    .await?;
                Ok(holder.as_deref() == Some(owner.as_bytes()))
            })
        };
        let mut waiter: Option<redis::aio::PubSub> = None;
        let mut subscribed = false;
        loop {
            match try_take().await {
                // Redis is down: no lease to take, the provider goes on alone.
                None => return Ok(Lease::none()),
                Some(Ok(true)) => return Ok(self.held(key, owner)),
                // Another type under the lease's key: not ours to wait for.
                Some(Err(_)) => return Err(RedisStoreError { kind: Kind::Foreign }),
                Some(Ok(false)) => {}
            }
            if Instant::now() >= deadline {
                tracing::warn!(redis = %self.target, lease = %name, "the token store's lease was not given back within its ttl");
                return Err(RedisStoreError { kind: Kind::LeaseTimeout(self.lease_ttl) });
            }
            if !subscribed {
                // Subscribe, then try again at once: a release between the first try and the
                // subscription is not missed.
                subscribed = true;
                waiter = self.subscribe(key).await;
                continue;
            }
            let nap = tokio::time::sleep_until(deadline.min(Instant::now() + self.poll_interval));
            match &mut waiter {
                Some(pubsub) => {
                    let mut messages = pubsub.on_message();
                    tokio::select! {
                        message = messages.next() => match message {
                            // A new token was written: the provider reads it (no request), even
                            // if its writer has not given the lease back yet.
                            Some(m) if m.get_payload_bytes() == b"saved" => return Ok(Lease::none()),
                            Some(_) => {}
                            None => {
                                drop(messages);
                                waiter = None;
                            }
                        },
                        () = nap => {}
                    }
                }
                None => nap.await,
            }
        }
    }

    /// A pub/sub connection subscribed to `key`'s channel, if one can be had in time (else the
    /// waiter polls).
    async fn subscribe(&self, key: &CacheKey) -> Option<redis::aio::PubSub> {
        let channel = self.name("wake", key);
        let work = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        match tokio::time::timeout(self.op_timeout, work).await {
            Ok(Ok(pubsub)) => Some(pubsub),
            Ok(Err(e)) => {
                tracing::debug!(error = %describe(&e, self.password.as_ref()), "no Redis pub/sub for the lease; polling");
                None
            }
            Err(_) => None,
        }
    }

    fn held(self: &Arc<Self>, key: &CacheKey, owner: String) -> Lease {
        let this = Arc::clone(self);
        let name = self.name("lease", key);
        let channel = self.name("wake", key);
        Lease::new(move || {
            Box::pin(async move {
                let (name, channel, owner) = (&name, &channel, &owner);
                let released = this
                    .attempt(|mut c| async move {
                        RELEASE.key(name).key(channel).arg(owner).invoke_async::<i64>(&mut c).await
                    })
                    .await;
                if let Some(Ok(0)) = released {
                    tracing::warn!(
                        redis = %this.target,
                        lease_ttl_ms = this.lease_ttl.as_millis() as u64,
                        "the token store's lease had expired before it was given back: make the lease longer than the token request timeout"
                    );
                }
                Ok(())
            })
        })
    }

    fn encode(&self, name: &str, entry: &Entry) -> Option<Vec<u8>> {
        let plain = serde_json::to_vec(entry).ok()?;
        let Some(cipher) = &self.cipher else { return Some(plain) };
        let nonce: [u8; 12] = rand::random();
        let sealed = cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad: name.as_bytes() }).ok()?;
        let value = Sealed { v: VERSION, alg: "A256GCM".into(), nonce: B64.encode(nonce), data: B64.encode(sealed) };
        serde_json::to_vec(&value).ok()
    }

    fn decode(&self, name: &str, value: &[u8]) -> Result<Entry, Unusable> {
        if value.len() > MAX_VALUE {
            return Err(Unusable::NotOurs);
        }
        let doc: serde_json::Value = serde_json::from_slice(value).map_err(|_| Unusable::NotOurs)?;
        match doc.get("v").and_then(serde_json::Value::as_u64) {
            Some(VERSION) => {}
            Some(_) => return Err(Unusable::Version),
            None => return Err(Unusable::NotOurs),
        }
        let entry: Entry = match (doc.get("alg").is_some(), &self.cipher) {
            (false, None) => serde_json::from_value(doc).map_err(|_| Unusable::NotOurs)?,
            (false, Some(_)) => return Err(Unusable::Plain),
            (true, None) => return Err(Unusable::Sealed),
            (true, Some(cipher)) => {
                let sealed: Sealed = serde_json::from_value(doc).map_err(|_| Unusable::NotOurs)?;
                let nonce = B64.decode(&sealed.nonce).map_err(|_| Unusable::NotOurs)?;
                let data = B64.decode(&sealed.data).map_err(|_| Unusable::NotOurs)?;
                if sealed.alg != "A256GCM" || nonce.len() != 12 {
                    return Err(Unusable::NotOurs);
                }
                let plain = cipher
                    .decrypt(Nonce::from_slice(&nonce), Payload { msg: &data, aad: name.as_bytes() })
                    .map_err(|_| Unusable::Undecryptable)?;
                serde_json::from_slice(&plain).map_err(|_| Unusable::NotOurs)?
            }
        };
        if entry.v != VERSION || entry.access_token.is_empty() {
            return Err(Unusable::NotOurs);
        }
        Ok(entry)
    }
}

/// Why a stored value is read as absent (logged; never the value).
#[derive(Clone, Copy)]
enum Unusable {
    NotOurs,
    Version,
    Plain,
    Sealed,
    Undecryptable,
}

impl Unusable {
    fn as_str(self) -> &'static str {
        match self {
            Unusable::NotOurs => "not a token of this store (another type, not JSON, or fields missing)",
            Unusable::Version => "another version of the value format",
            Unusable::Plain => "not encrypted, but this store has an encryption key",
            Unusable::Sealed => "encrypted, but this store has no encryption key",
            Unusable::Undecryptable => "does not decrypt with this store's key (another key, or altered)",
        }
    }
}

/// The stored token. No `Debug`: it holds the tokens.
#[derive(Serialize, Deserialize)]
struct Entry {
    v: u64,
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default)]
    refresh_grace_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    v: u64,
    alg: String,
    nonce: String,
    data: String,
}

/// A Redis error's text with the password, should it appear, redacted.
fn describe(e: &RedisError, password: Option<&Secret>) -> String {
    let text = e.to_string();
    match password.map(Secret::expose).filter(|p| !p.is_empty()) {
        Some(p) => text.replace(p, "[redacted]"),
        None => text,
    }
}

impl TokenStore for RedisStore {
    fn load<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<StoredToken>> {
        Box::pin(async move { Ok(self.inner.load(key).await) })
    }

    fn save<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.inner.save(key, token).await;
            Ok(())
        })
    }

    fn lease<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Lease> {
        Box::pin(async move { Ok(self.inner.lease(key).await?) })
    }
}

/// Why a [`RedisStore`] could not do what was asked. It names what happened, never a token or a
/// password.
#[derive(Debug)]
pub struct RedisStoreError {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Unavailable(String),
    LeaseTimeout(Duration),
    Foreign,
}

impl RedisStoreError {
    /// Whether Redis did not answer in time, could not be reached, or refused (authentication,
    /// ACL).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, Kind::Unavailable(_))
    }

    /// Whether the lease was held by someone else for longer than its ttl (never given back).
    pub fn is_lease_timeout(&self) -> bool {
        matches!(self.kind, Kind::LeaseTimeout(_))
    }

    /// Whether a key of the store holds something that is not ours (another Redis type).
    pub fn is_foreign(&self) -> bool {
        matches!(self.kind, Kind::Foreign)
    }
}

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Unavailable(cause) => write!(f, "Redis token store unavailable: {cause}"),
            Kind::LeaseTimeout(ttl) => {
                write!(f, "Redis token store: the lease was not given back within {} s", ttl.as_secs_f32())
            }
            Kind::Foreign => f.write_str("Redis token store: a key holds a value of another type"),
        }
    }
}

impl std::error::Error for RedisStoreError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(key: Option<[u8; 32]>) -> RedisStore {
        let b = RedisStore::builder("redis://user:pa55word@127.0.0.1:1/3");
        match key {
            Some(k) => b.encryption_key(k),
            None => b,
        }
        .build()
        .unwrap()
    }

    fn entry() -> Entry {
        Entry { v: VERSION, access_token: "at-1".into(), refresh_token: Some("rt-1".into()), refresh_grace_ms: 5 }
    }

    #[test]
    fn debug_shows_the_target_never_the_password() {
        let s = store(None);
        let text = format!("{s:?}");
        assert!(text.contains("redis://127.0.0.1:1/3") && text.contains("tower-auth"), "{text}");
        assert!(!text.contains("pa55word") && !text.contains("user"), "{text}");
        let b = format!("{:?}", RedisStore::builder("redis://u:pa55word@h/0"));
        assert!(!b.contains("pa55word"), "{b}");
    }

    #[test]
    fn bad_urls_are_config_errors_that_do_not_quote_them() {
        let e = RedisStore::new("http://u:pa55word@h").unwrap_err().to_string();
        assert!(!e.contains("pa55word"), "{e}");
        assert!(RedisStore::builder("redis://h").prefix("").build().is_err());
        assert!(RedisStore::builder("redis://h").lease_ttl(Duration::ZERO).build().is_err());
    }

    #[test]
    fn plain_values_round_trip_and_foreign_ones_are_absent() {
        let s = store(None);
        let inner = &s.inner;
        let value = inner.encode("p:token:k", &entry()).unwrap();
        let back = inner.decode("p:token:k", &value).ok().unwrap();
        assert_eq!((back.access_token.as_str(), back.refresh_grace_ms), ("at-1", 5));
        for bad in
            [&b"hello"[..], b"{}", br#"{"v":2,"access_token":"x"}"#, br#"{"v":1}"#, br#"{"v":1,"access_token":""}"#]
        {
            assert!(inner.decode("p:token:k", bad).is_err());
        }
    }

    #[test]
    fn sealed_values_open_only_with_the_key_under_the_same_name() {
        let s = store(Some([1; 32]));
        let value = s.inner.encode("p:token:k", &entry()).unwrap();
        let text = String::from_utf8_lossy(&value);
        assert!(!text.contains("at-1") && !text.contains("rt-1"), "{text}");
        assert!(s.inner.decode("p:token:k", &value).is_ok());
        assert!(matches!(s.inner.decode("p:token:other", &value), Err(Unusable::Undecryptable)));
        assert!(matches!(store(Some([2; 32])).inner.decode("p:token:k", &value), Err(Unusable::Undecryptable)));
        assert!(matches!(store(None).inner.decode("p:token:k", &value), Err(Unusable::Sealed)));
        let plain = store(None).inner.encode("p:token:k", &entry()).unwrap();
        assert!(matches!(s.inner.decode("p:token:k", &plain), Err(Unusable::Plain)));
    }
}
