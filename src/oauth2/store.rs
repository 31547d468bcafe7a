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
/// The provider loads once when its task starts and saves after every token it obtains. A
/// failing store is logged and worked around: the provider keeps its token in memory.
pub trait TokenStore: Send + Sync + 'static {
    /// The token stored under `key`, if any.
    fn load<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<StoredToken>>;
    /// Stores `token` under `key`, replacing what was there.
    fn save<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken) -> StoreFuture<'a, ()>;
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
        StoredToken { access_token: Secret::new(access), expires_at: SystemTime::now() + left, refresh_token }
    }

    /// Time left before it expires, if any.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at.duration_since(SystemTime::now()).ok().filter(|d| !d.is_zero())
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
