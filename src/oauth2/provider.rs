//! The token provider: the current token in an `arc-swap` slot read without locks, one
//! background task that fetches (single flight), refreshes before expiry, backs off on failure
//! and never takes away a token that is still valid.
//!
//! Written here because no well-kept crate shares a token this way (the survey is in the module
//! documentation of [`oauth2`](crate::oauth2)); the token requests themselves are the `oauth2`
//! crate's.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::endpoint::{Endpoint, Grant, Issued, Params, TokenError};
use super::store::{CacheKey, StoredToken, TokenStore};
use crate::error::Error;
use crate::secret::Secret;

/// The shortest and longest lifetimes believed; others are clamped (and logged).
const MIN_LIFETIME: Duration = Duration::from_secs(1);
const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);
/// First and longest waits between failed token requests.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// After a permanent error (`invalid_client`…), how long requests fail at once before a new
/// request may try again.
const PERMANENT_HOLD: Duration = Duration::from_secs(60);

/// One access token, ready to send.
pub struct Token {
    header: HeaderValue,
    issued_at: Instant,
    /// Served to requests until then.
    usable_until: Instant,
    /// Replaced in the background from then on.
    refresh_at: Instant,
    expires_at: Instant,
}

impl Token {
    /// The header value to send (`Bearer …`), marked sensitive.
    pub fn header_value(&self) -> &HeaderValue {
        &self.header
    }

    /// When the server said it expires.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// When it was obtained.
    pub fn issued_at(&self) -> Instant {
        self.issued_at
    }

    /// Whether requests may still carry it.
    pub fn is_usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"[redacted]")
            .field("expires_in", &self.expires_at.saturating_duration_since(Instant::now()))
            .finish()
    }
}

/// Counters read by `fetch`, the benches and your monitoring.
#[derive(Debug, Default)]
pub struct ProviderStats {
    token_requests: AtomicU64,
    failures: AtomicU64,
    invalidations: AtomicU64,
}

impl ProviderStats {
    /// Token requests sent to the token endpoint.
    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::Relaxed)
    }
    /// Token requests that failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// Tokens dropped because a resource server rejected them.
    pub fn invalidations(&self) -> u64 {
        self.invalidations.load(Ordering::Relaxed)
    }
}

/// Timing and presentation options, with their defaults.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub(crate) early_expiry: Duration,
    pub(crate) refresh_fraction: f64,
    pub(crate) default_lifetime: Duration,
    pub(crate) wait_timeout: Duration,
    pub(crate) header_name: HeaderName,
    pub(crate) template: String,
}

/// The provider's progress, behind a small lock taken by the task and by waiters only (never by
/// a request that finds a usable token).
#[derive(Default)]
struct Control {
    /// Someone needs a token now (no usable token, or one was invalidated).
    demand: bool,
    /// No token request before then (backoff).
    retry_at: Option<Instant>,
    failures_in_a_row: u32,
    /// The last attempt's failure, until an attempt succeeds.
    last_error: Option<TokenError>,
    /// A permanent failure: requests fail at once until `retry_at`.
    permanent: bool,
    /// The refresh token to use next (the latest one the server gave).
    refresh_token: Option<Secret>,
    /// The last token a resource server rejected: never taken back from the store.
    rejected: Option<HeaderValue>,
}

pub(crate) struct Shared {
    slot: ArcSwapOption<Token>,
    control: Mutex<Control>,
    /// Bumped after every token request, with its outcome in `control`.
    attempts: watch::Sender<u64>,
    signals: Arc<Signals>,
    started: AtomicBool,
    endpoint: Endpoint,
    grant: Grant,
    params: Params,
    timing: Timing,
    stats: Arc<ProviderStats>,
    store: Option<(Arc<dyn TokenStore>, CacheKey)>,
}

struct Signals {
    wake: Notify,
    shutdown: Notify,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: the background task ends.
        self.signals.shutdown.notify_one();
    }
}

/// A handle on a token provider: cheap to clone, shared by every layer and task that uses it.
/// The background task ends when the last handle is dropped.
///
/// Read the token outside the layer with [`current`](TokenProvider::current) (never waits) or
/// [`token`](TokenProvider::token) (waits for a usable one): for tonic interceptors, WebSockets,
/// or anything else that needs the header value.
#[derive(Clone)]
pub struct TokenProvider {
    shared: Arc<Shared>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("token_url", &self.shared.endpoint.url)
            .field("client_id", &self.shared.endpoint.client_id)
            .field("grant", &self.shared.grant.name())
            .field("token", &self.shared.slot.load().as_deref())
            .finish()
    }
}

impl TokenProvider {
    pub(crate) fn new(
        endpoint: Endpoint,
        grant: Grant,
        params: Params,
        timing: Timing,
        store: Option<Arc<dyn TokenStore>>,
    ) -> Self {
        let key = store.as_ref().map(|_| CacheKey::new(&endpoint.url, &endpoint.client_id, &grant, &params));
        let refresh_token = match &grant {
            Grant::RefreshToken(rt) => Some(rt.clone()),
            _ => None,
        };
        let shared = Shared {
            slot: ArcSwapOption::empty(),
            control: Mutex::new(Control { refresh_token, ..Control::default() }),
            attempts: watch::channel(0).0,
            signals: Arc::new(Signals { wake: Notify::new(), shutdown: Notify::new() }),
            started: AtomicBool::new(false),
            endpoint,
            grant,
            params,
            timing,
            stats: Arc::new(ProviderStats::default()),
            store: store.zip(key),
        };
        TokenProvider { shared: Arc::new(shared) }
    }

    /// The current token if requests may carry it now; never waits, never locks.
    #[inline]
    pub fn current(&self) -> Option<Arc<Token>> {
        let token = self.shared.slot.load_full()?;
        token.is_usable(Instant::now()).then_some(token)
    }

    /// A usable token, waiting for one if there is none (bounded by the provider's wait
    /// timeout).
    ///
    /// # Errors
    ///
    /// [`Error::is_scheme`] with the [`TokenError`] as source when the token endpoint failed and
    /// no usable token is left; [`Error::is_timeout`] when none came in time.
    pub async fn token(&self) -> Result<Arc<Token>, Error> {
        if let Some(token) = self.current() {
            return Ok(token);
        }
        let deadline = Instant::now() + self.shared.timing.wait_timeout;
        match tokio::time::timeout_at(deadline, self.shared.wait_usable()).await {
            Ok(result) => result,
            Err(_) => Err(Error::timeout(WaitTimeout(self.shared.timing.wait_timeout))),
        }
    }

    /// The counters of this provider.
    pub fn stats(&self) -> &Arc<ProviderStats> {
        &self.shared.stats
    }

    /// Drops `token` if it is still the current one (compare, then swap), so that it is never
    /// sent again, and asks for a new one. Returns whether it was current: of 50 requests
    /// rejected with the same token, one invalidates it and causes one token request.
    pub fn invalidate(&self, token: &Arc<Token>) -> bool {
        let shared = &self.shared;
        let current = shared.slot.load();
        let is_current = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, token));
        if !is_current {
            return false;
        }
        let previous = shared.slot.compare_and_swap(&*current, None);
        let swapped = previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, token));
        if swapped {
            shared.lock().rejected = Some(token.header.clone());
            shared.stats.invalidations.fetch_add(1, Ordering::Relaxed);
            tracing::info!(token_url = %shared.endpoint.url, "a resource server rejected the current token; it is dropped and a new one requested");
            shared.demand();
        }
        swapped
    }

    /// The header the layer sets.
    pub(crate) fn header_name(&self) -> &HeaderName {
        &self.shared.timing.header_name
    }
}

#[derive(Debug)]
struct WaitTimeout(Duration);

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no access token within {} s", self.0.as_secs_f32())
    }
}

impl std::error::Error for WaitTimeout {}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the task for a token now, starting it on first use.
    fn demand(self: &Arc<Self>) {
        self.lock().demand = true;
        self.start();
        self.signals.wake.notify_one();
    }

    fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Acquire) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let signals = Arc::clone(&self.signals);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(run(weak, signals));
            }
            Err(_) => {
                self.started.store(false, Ordering::Release);
                tracing::error!("the OAuth2 token provider needs a tokio runtime");
            }
        }
    }

    async fn wait_usable(self: &Arc<Self>) -> Result<Arc<Token>, Error> {
        let mut attempts = self.attempts.subscribe();
        {
            let control = self.lock();
            if control.permanent
                && control.retry_at.is_some_and(|t| Instant::now() < t)
                && let Some(err) = &control.last_error
            {
                return Err(Error::scheme(err.clone()));
            }
        }
        self.demand();
        loop {
            if let Some(token) = self.slot.load_full().filter(|t| t.is_usable(Instant::now())) {
                return Ok(token);
            }
            if attempts.changed().await.is_err() {
                return Err(Error::scheme(TokenError::config("the token provider stopped")));
            }
            if let Some(token) = self.slot.load_full().filter(|t| t.is_usable(Instant::now())) {
                return Ok(token);
            }
            if let Some(err) = &self.lock().last_error {
                // Fail fast: the attempt made for us failed and no usable token is left. The
                // task keeps retrying in the background (transient errors).
                return Err(Error::scheme(err.clone()));
            }
        }
    }

    /// What the task does next.
    fn plan(&self, now: Instant) -> Plan {
        let control = self.lock();
        let token = self.slot.load();
        let usable = token.as_ref().is_some_and(|t| t.is_usable(now));
        // A grant that needs the user for every token (no refresh token to use) is not renewed
        // in the background: the user is asked when a request needs a token, not out of nowhere.
        let silent_renewal = !self.grant.is_interactive() || control.refresh_token.is_some();
        let due = match token.as_ref() {
            Some(t) if usable && silent_renewal => Some(t.refresh_at),
            Some(_) if usable => None,
            _ if control.demand => Some(now),
            _ => None,
        };
        let Some(due) = due else {
            return Plan::Idle;
        };
        if control.permanent && !control.demand {
            return Plan::Idle;
        }
        let at = match control.retry_at {
            Some(retry) if retry > due => retry,
            _ => due,
        };
        if at <= now { Plan::Fetch } else { Plan::Sleep(at) }
    }

    /// One token request, its outcome published.
    async fn fetch(&self) {
        // With a shared store: take its lease on the key, then look again — another holder of
        // the store may have just obtained a token, and then this one makes no request.
        let lease = self.lease().await;
        if lease.is_some() && self.reload_fresh().await {
            self.lock().demand = false;
            if let Some(lease) = lease
                && let Err(e) = lease.release().await
            {
                tracing::warn!(error = %e, "the token store's lease could not be given back; it ends when it expires");
            }
            self.attempts.send_modify(|n| *n += 1);
            return;
        }
        self.fetch_leased().await;
        if let Some(lease) = lease
            && let Err(e) = lease.release().await
        {
            tracing::warn!(error = %e, "the token store's lease could not be given back; it ends when it expires");
        }
    }

    /// The store's lease on this provider's key, if it has a store (a failing store is logged
    /// and the request made anyway: a token matters more than one request too many).
    async fn lease(&self) -> Option<super::store::Lease> {
        let (store, key) = self.store.as_ref()?;
        match store.lease(key).await {
            Ok(lease) => Some(lease),
            Err(e) => {
                tracing::warn!(error = %e, "the token store's lease could not be taken; requesting a token anyway");
                None
            }
        }
    }

    /// Installs a token from the store if it is fresher than the one held and usable for a while
    /// yet; `true` if it did.
    async fn reload_fresh(&self) -> bool {
        let Some((store, key)) = &self.store else { return false };
        let Ok(Some(stored)) = store.load(key).await else { return false };
        // Under the lease, the stored refresh token is the newest (the last owner wrote its
        // rotated one before giving the lease back), even when the access token expired.
        if let Some(rt) = stored.refresh_token.clone() {
            self.lock().refresh_token = Some(rt);
        }
        let Some(remaining) = stored.remaining() else { return false };
        let now = Instant::now();
        let held = self.slot.load().as_ref().map(|t| t.expires_at.saturating_duration_since(now));
        // Fresher than ours, and still to be sent for a while (past the early expiry, shortened
        // for short lifetimes as `install` does).
        let early = self.timing.early_expiry.min(remaining / 2);
        if held.is_some_and(|h| remaining <= h) || remaining.saturating_sub(early) < Duration::from_secs(1) {
            return false;
        }
        // A token this provider saw rejected (still in the store, written before the rejection)
        // is not taken back: a new one is requested.
        let rejected = self.lock().rejected.clone();
        if rejected.is_some_and(|r| self.header(stored.access_token.expose()).is_ok_and(|h| h == r)) {
            return false;
        }
        let issued = Issued {
            token: stored.access_token.clone(),
            expires_in: Some(remaining.as_secs() as i64),
            refresh_in: None,
            refresh_token: None,
        };
        let installed = self.install(&issued, now).is_ok();
        if installed {
            let mut control = self.lock();
            control.failures_in_a_row = 0;
            control.retry_at = None;
            control.last_error = None;
            control.permanent = false;
            tracing::debug!("a token another holder of the token store obtained is used");
        }
        installed
    }

    async fn fetch_leased(&self) {
        let (grant, refresh) = {
            let mut control = self.lock();
            control.demand = false;
            (self.grant.clone(), control.refresh_token.clone())
        };
        self.stats.token_requests.fetch_add(1, Ordering::Relaxed);
        // With a refresh token in hand (from a password or refresh grant), refresh; if that is
        // refused, fall back to the configured grant (a password grant logs in again).
        let mut result = match &refresh {
            Some(rt) if !matches!(grant, Grant::ClientCredentials) => {
                let refreshed = self.endpoint.request(&Grant::RefreshToken(rt.clone()), &self.params).await;
                match refreshed {
                    Err(e)
                        if e.refresh_token_refused()
                            && (matches!(grant, Grant::Password { .. }) || grant.is_interactive()) =>
                    {
                        tracing::info!(grant = grant.name(), "the refresh token was refused; authorising again");
                        self.stats.token_requests.fetch_add(1, Ordering::Relaxed);
                        self.endpoint.request(&grant, &self.params).await
                    }
                    other => other,
                }
            }
            _ => self.endpoint.request(&grant, &self.params).await,
        };
        let now = Instant::now();
        if let Ok(issued) = &mut result {
            match self.install(issued, now) {
                Ok(token) => {
                    {
                        let mut control = self.lock();
                        if let Some(rt) = issued.refresh_token.take() {
                            // Rotation: the one writer keeps the newest; the old one is never reused.
                            control.refresh_token = Some(rt);
                        }
                        control.failures_in_a_row = 0;
                        control.retry_at = None;
                        control.last_error = None;
                        control.permanent = false;
                    }
                    let expires = token.expires_at.saturating_duration_since(now);
                    tracing::debug!(token_url = %self.endpoint.url, expires_in_s = expires.as_secs(), "access token obtained");
                    self.save(&token).await;
                }
                Err(e) => result = Err(e),
            }
        }
        if let Err(err) = result {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            let mut control = self.lock();
            control.failures_in_a_row += 1;
            let still_usable = self.slot.load().as_ref().is_some_and(|t| t.is_usable(now));
            // The user's part is never retried by itself (no tab or prompt out of nowhere): the
            // next request that needs a token asks again, after the hold-off.
            let permanent = err.is_permanent() || self.grant.is_interactive();
            let wait = if permanent {
                control.permanent = true;
                PERMANENT_HOLD
            } else {
                let exp = BACKOFF_BASE.saturating_mul(1 << control.failures_in_a_row.min(8));
                let jittered = exp.min(BACKOFF_MAX).mul_f64(0.5 + rand::random::<f64>() / 2.0);
                err.retry_after().map_or(jittered, |r| r.max(jittered))
            };
            control.retry_at = Some(now + wait);
            tracing::warn!(
                token_url = %self.endpoint.url,
                error = %err,
                permanent,
                retry_in_ms = wait.as_millis() as u64,
                still_usable,
                "token request failed"
            );
            control.last_error = Some(err);
            // Keep trying in the background while the token is still usable or someone waits.
            control.demand = !control.permanent && !still_usable;
        }
        self.attempts.send_modify(|n| *n += 1);
    }

    /// Turns an answer into the current token.
    fn install(&self, issued: &Issued, now: Instant) -> Result<Arc<Token>, TokenError> {
        let lifetime = self.lifetime(issued);
        let header = self.header(issued.token.expose())?;
        let early = self.timing.early_expiry.min(lifetime / 2);
        let usable = lifetime - early;
        // The replacement starts early enough to arrive before the token stops being sent: at
        // the earlier of a fraction of the lifetime and the usable time less a margin (a fifth
        // of it, at most 30 s) for the token request itself, then up to a tenth earlier again
        // (at most 30 s), at random, so that replicas do not refresh in step.
        let margin = (usable / 5).min(Duration::from_secs(30));
        let mut refresh = (usable - margin).min(lifetime.mul_f64(self.timing.refresh_fraction));
        if let Some(refresh_in) = issued.refresh_in.and_then(|s| u64::try_from(s).ok()) {
            refresh = refresh.min(Duration::from_secs(refresh_in));
        }
        let jitter = refresh.mul_f64(0.1).min(Duration::from_secs(30)).mul_f64(rand::random::<f64>());
        let token = Arc::new(Token {
            header,
            issued_at: now,
            usable_until: now + usable,
            refresh_at: now + refresh - jitter,
            expires_at: now + lifetime,
        });
        self.slot.store(Some(Arc::clone(&token)));
        Ok(token)
    }

    fn lifetime(&self, issued: &Issued) -> Duration {
        let stated = match issued.expires_in {
            Some(s) => Some(s),
            None => jwt_exp(issued.token.expose()),
        };
        let Some(seconds) = stated else {
            return self.timing.default_lifetime;
        };
        let lifetime = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
        if lifetime < MIN_LIFETIME || lifetime > MAX_LIFETIME {
            let clamped = lifetime.clamp(MIN_LIFETIME, MAX_LIFETIME);
            tracing::warn!(
                expires_in = seconds,
                clamped_s = clamped.as_secs(),
                "the token's lifetime is out of range; clamped"
            );
            return clamped;
        }
        lifetime
    }

    fn header(&self, token: &str) -> Result<HeaderValue, TokenError> {
        let text = self.timing.template.replace("{token}", token);
        let mut value = HeaderValue::try_from(text)
            .map_err(|_| TokenError::config("the access token holds a byte not allowed in a header"))?;
        value.set_sensitive(true);
        Ok(value)
    }

    async fn save(&self, token: &Token) {
        let Some((store, key)) = &self.store else { return };
        let stored = StoredToken::from_token(token, self.lock().refresh_token.clone());
        if let Err(e) = store.save(key, &stored).await {
            tracing::warn!(error = %e, "the token cache could not be written; the token is kept in memory");
        }
    }

    /// A token from the store, if a usable one is there (once, when the task starts).
    async fn load(&self) {
        let Some((store, key)) = &self.store else { return };
        match store.load(key).await {
            Ok(Some(stored)) => {
                if let Some(rt) = stored.refresh_token.clone() {
                    self.lock().refresh_token = Some(rt);
                }
                let Some(remaining) = stored.remaining() else { return };
                let issued = Issued {
                    token: stored.access_token.clone(),
                    expires_in: Some(remaining.as_secs() as i64),
                    refresh_in: None,
                    refresh_token: None,
                };
                if self.install(&issued, Instant::now()).is_ok() {
                    tracing::debug!("access token loaded from the token cache");
                    self.attempts.send_modify(|n| *n += 1);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "the token cache could not be read; ignored"),
        }
    }
}

/// The `exp` claim of a JWT access token, as seconds from now.
fn jwt_exp(token: &str) -> Option<i64> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(exp - now)
}

enum Plan {
    Fetch,
    Sleep(Instant),
    Idle,
}

/// The background task: alive while a handle is.
async fn run(weak: Weak<Shared>, signals: Arc<Signals>) {
    if let Some(shared) = weak.upgrade() {
        shared.load().await;
    }
    loop {
        let Some(shared) = weak.upgrade() else { return };
        match shared.plan(Instant::now()) {
            Plan::Fetch => {
                shared.fetch().await;
                continue;
            }
            Plan::Sleep(at) => {
                drop(shared);
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = signals.wake.notified() => {}
                    () = signals.shutdown.notified() => return,
                }
            }
            Plan::Idle => {
                drop(shared);
                tokio::select! {
                    () = signals.wake.notified() => {}
                    () = signals.shutdown.notified() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_exp_is_read_from_the_payload() {
        use base64::Engine as _;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{}}}", now + 120));
        let left = jwt_exp(&format!("h.{payload}.s")).unwrap();
        assert!((118..=120).contains(&left), "{left}");
        assert_eq!(jwt_exp("opaque-token"), None);
    }
}
