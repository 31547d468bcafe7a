//! Where tokens are kept beyond the provider's own slot: the [`TokenStore`] trait, and
//! [`MemoryStore`] (tokens shared by every provider of one process that has the same
//! configuration).
//!
//! The trait is asynchronous and keyed by a [`CacheKey`] (a hash of the token URL, client id,
//! grant, scopes, audience, resources and user name, never a secret), so that a store shared by
//! a fleet of replicas fits it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

use super::endpoint::{Grant, Params};
use super::provider::Token;
use crate::error::BoxError;
use crate::secret::Secret;

/// The future a [`TokenStore`] returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// A place to keep tokens: shared between providers, across restarts, or across a fleet.
///
/// The provider loads once when its task starts. Before each token request it takes a
/// [`lease`](TokenStore::lease) on the key, loads again (another holder of the store may have
/// just obtained a token: then no request is made), requests, saves, and gives the lease back.
/// A failing store is logged and worked around: the provider keeps its token in memory.
pub trait TokenStore: Send + Sync + 'static {
    /// The token stored under `key`, if any.
    fn load<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<StoredToken>>;
    /// Stores `token` under `key`, replacing what was there.
    fn save<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken) -> StoreFuture<'a, ()>;
    /// The exclusive right to request a token for `key` among everything sharing the store, so
    /// that a fleet makes one token request per expiry (and a rotated refresh token is used by one
    /// writer). The default grants it at once: a store of one process needs nothing beyond the
    /// provider's own single flight. A store shared by replicas takes a lease (Redis:
    /// `SET key NX PX`, longer than the token request's timeout), waits while another holder
    /// has it (notified, or polling within a bound), and returns a [`Lease`] that gives it back.
    fn lease<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Lease> {
        let _ = key;
        Box::pin(std::future::ready(Ok(Lease::none())))
    }
}

/// The right to request a token, from [`TokenStore::lease`]; given back by
/// [`release`](Lease::release) (the provider calls it after saving) or, as a last resort, when
/// the store's own expiry of the lease passes.
pub struct Lease {
    release: Option<Box<dyn FnOnce() -> StoreFuture<'static, ()> + Send>>,
}

impl Lease {
    /// Nothing to give back.
    pub fn none() -> Self {
        Lease { release: None }
    }

    /// A lease given back by `release`.
    pub fn new(release: impl FnOnce() -> StoreFuture<'static, ()> + Send + 'static) -> Self {
        Lease { release: Some(Box::new(release)) }
    }

    /// Gives the lease back.
    ///
    /// # Errors
    ///
    /// The store's error; the lease then ends when the store's expiry of it passes.
    pub async fn release(mut self) -> Result<(), BoxError> {
        match self.release.take() {
            Some(release) => release().await,
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("held", &self.release.is_some()).finish()
    }
}

/// The key of one client configuration's token: a SHA-256 over the token URL, client id, grant
/// type, scopes, audience, resources and user name. Never derived from a secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    pub(crate) fn new(url: &str, client_id: &str, grant: &Grant, params: &Params) -> Self {
        let mut h = Sha256::new();
        let mut part = |s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        part(url);
        part(client_id);
        part(grant.name());
        if let Grant::Password { user, .. } = grant {
            part(user);
        }
        let mut scopes = params.scopes.clone();
        scopes.sort();
        for s in &scopes {
            part(s);
        }
        part(params.audience.as_deref().unwrap_or(""));
        for r in &params.resources {
            part(r);
        }
        CacheKey(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The key as hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", &self.0[..12.min(self.0.len())])
    }
}

/// A token as stored: its value, when it expires (wall-clock time, so that it survives a
/// restart), and the refresh token if there is one.
#[derive(Clone)]
pub struct StoredToken {
    /// The access token.
    pub access_token: Secret,
    /// When it expires.
    pub expires_at: SystemTime,
    /// The refresh token, if any.
    pub refresh_token: Option<Secret>,
}

impl StoredToken {
    pub(crate) fn from_token(token: &Token, refresh_token: Option<Secret>) -> Self {
        let left = token.expires_at().saturating_duration_since(tokio::time::Instant::now());
        let value = token.header_value().to_str().unwrap_or_default();
        let access = value.rsplit(' ').next().unwrap_or(value).to_owned();
        StoredToken { access_token: Secret::new(access), expires_at: wall_now() + left, refresh_token }
    }

    /// Time left before it expires, if any.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at.duration_since(wall_now()).ok().filter(|d| !d.is_zero())
    }
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &"[redacted]")
            .field("remaining", &self.remaining())
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Wall-clock time that moves with tokio's clock: the wall clock when first asked, plus tokio's
/// time since. In a running service it is the wall clock; on tokio's paused test clock, a stored
/// token's expiry moves with the paused time like every other deadline of the provider.
pub(crate) fn wall_now() -> SystemTime {
    static ANCHOR: std::sync::OnceLock<(SystemTime, tokio::time::Instant)> = std::sync::OnceLock::new();
    let (wall, instant) = ANCHOR.get_or_init(|| (SystemTime::now(), tokio::time::Instant::now()));
    *wall + tokio::time::Instant::now().saturating_duration_since(*instant)
}

/// Tokens kept in this process, shared by the providers given the same store (clones share).
#[derive(Clone, Default)]
pub struct MemoryStore {
    entries: Arc<Mutex<HashMap<CacheKey, StoredToken>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore").field("tokens", &self.len()).finish()
    }
}

impl TokenStore for MemoryStore {
    fn load<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<StoredToken>> {
        let found = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn save<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken) -> StoreFuture<'a, ()> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), token.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}
