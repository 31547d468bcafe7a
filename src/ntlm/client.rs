//! [`WindowsAuth`]: the client that owns its HTTP/1.1 connections, authenticates each once and
//! keeps the authenticated ones in a bounded pool.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, Bytes};
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TRANSFER_ENCODING, WWW_AUTHENTICATE,
};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use super::context::{KerberosOptions, SecContext, Step, StepError};
use super::error::{Error, Kind};
use super::{Credentials, Mechanism};
use crate::connect::{Proxies, ProxyConnector};
use crate::{BoxError, ReplayBody};

/// The most bytes of a `401`/`407` body read to keep the connection for the next leg.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The most requests one handshake may send (NTLM needs 2, Negotiate with Kerberos 1 or 2).
pub const MAX_LEGS: u32 = 4;

/// Counters of a [`WindowsAuth`] and its clones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections opened (each authenticated at most once).
    pub connections: u64,
    /// Handshakes that ended authenticated.
    pub handshakes: u64,
    /// Handshakes that failed (the connection was closed).
    pub failed_handshakes: u64,
    /// Requests sent on the wire, every leg of every handshake included.
    pub round_trips: u64,
    /// Requests sent on a connection authenticated before (no handshake).
    pub reused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    handshakes: AtomicU64,
    failed: AtomicU64,
    round_trips: AtomicU64,
    reused: AtomicU64,
}

/// Who asks for credentials on a connection: the origin (`401`) or the proxy (`407`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Origin,
    Proxy,
}

impl Side {
    fn status(self) -> StatusCode {
        match self {
            Side::Origin => StatusCode::UNAUTHORIZED,
            Side::Proxy => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        }
    }
    fn challenge(self) -> HeaderName {
        match self {
            Side::Origin => WWW_AUTHENTICATE,
            Side::Proxy => PROXY_AUTHENTICATE,
        }
    }
    fn credentials(self) -> HeaderName {
        match self {
            Side::Origin => AUTHORIZATION,
            Side::Proxy => PROXY_AUTHORIZATION,
        }
    }
}

/// Configures a [`WindowsAuth`]. Made by [`WindowsAuth::ntlm`], [`WindowsAuth::negotiate`] or
/// [`WindowsAuth::builder`].
#[derive(Debug, Clone)]
pub struct WindowsAuthBuilder {
    origin: Option<(Mechanism, Credentials)>,
    proxy: Option<(Mechanism, Credentials)>,
    proxies: Proxies,
    #[cfg(feature = "tls")]
    tls: Option<crate::connect::tls::TlsConfig>,
    max_connections: usize,
    idle_timeout: Duration,
    body_limit: usize,
    kerberos: KerberosOptions,
    strict_channel_binding: bool,
}

impl WindowsAuthBuilder {
    /// Authenticates to origins (`401`) with this mechanism and these credentials.
    pub fn origin(mut self, mechanism: Mechanism, credentials: Credentials) -> Self {
        self.origin = Some((mechanism, credentials));
        self
    }

    /// Sends requests through these proxies (plain-`http` targets in absolute form on the
    /// client's own connections to the proxy, `https` targets in `CONNECT` tunnels).
    pub fn proxies(mut self, proxies: Proxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// Authenticates to the proxy (`407`) with this mechanism and these credentials: on the
    /// client's connections to the proxy for plain-`http` targets, and on the `CONNECT` of
    /// `https` targets (a [`ConnectAuth`](super::ConnectAuth) with the same Kerberos options is
    /// set on every proxy of [`proxies`](Self::proxies) when the client is built). The service
    /// name is `HTTP/` and the proxy's host.
    pub fn proxy_auth(mut self, mechanism: Mechanism, credentials: Credentials) -> Self {
        self.proxy = Some((mechanism, credentials));
        self
    }

    /// TLS for `https` origins (feature `tls`); [`TlsConfig::new`](crate::connect::tls::TlsConfig::new)
    /// otherwise. HTTP/1.1 only: NTLM and Negotiate cannot run over HTTP/2.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: crate::connect::tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The most connections open at once to one origin (or proxy); requests beyond wait for a
    /// connection to come back. 8 by default.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long an idle authenticated connection is kept; 90 s by default.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The most request body bytes kept to send a body again when a server asks an
    /// authenticated connection to authenticate anew; 64 KiB by default. A larger body is sent
    /// once: such a `401` is then returned as it is.
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// The KDC for Negotiate's Kerberos: `tcp://host:port`, `udp://host:port` or `host:port`.
    /// Without it, the realm's `kdc` in `krb5.conf` (`KRB5_CONFIG`, else `/etc/krb5.conf`), or
    /// `SSPI_KDC_URL`. The realm is the user's (`user@REALM`).
    pub fn kdc(mut self, url: impl Into<String>) -> Self {
        self.kerberos.kdc = Some(url.into());
        self
    }

    /// Never retry Kerberos without channel bindings. By default, when an `https` origin
    /// refuses `sspi`'s Kerberos AP-REQ that carries them, the request is tried once more on a
    /// new connection without them, and that origin gets none from then on (connections opened
    /// before the first refusal came back, by concurrent requests, may each be refused once; with
    /// `-c 8`, 8 refusals for the 8 first connections, then none): `sspi` (0.23) writes
    /// the MS-KILE `KERB_AP_OPTIONS_CBT` element in 2 bytes where MIT Kerberos (krb5 >= 1.19,
    /// behind Apache's mod_auth_gssapi, nginx and most Linux services) reads 4, and refuses every
    /// such AP-REQ. The retry gives up the binding's protection against a relay for that origin
    /// when an attacker can make the first attempt fail; with this option the refusal is the
    /// request's error instead. (NTLM's bindings are not concerned; with
    /// [`Credentials::from_cache`](super::Credentials::from_cache) the system's Kerberos sends
    /// bindings MIT reads, and never retries.)
    pub fn strict_channel_binding(mut self) -> Self {
        self.strict_channel_binding = true;
        self
    }

    /// Negotiate with Kerberos only: no NTLM inside SPNEGO when no ticket can be had (no KDC,
    /// clock skew, unknown principal): the request then fails with that error
    /// ([`Error::is_credentials`](super::Error::is_credentials)). By default Negotiate falls back
    /// to NTLM, as Windows does.
    pub fn kerberos_only(mut self) -> Self {
        self.kerberos.no_ntlm = true;
        self
    }

    /// The client, for request bodies of type `B`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::ConfigError) if the TLS configuration given to
    /// [`tls`](Self::tls) cannot be built. Without one, the default configuration (the
    /// platform's roots, which take milliseconds to read) is built on the first `https` origin,
    /// and an error there fails that request.
    pub fn build<B>(self) -> Result<WindowsAuth<B>, crate::ConfigError> {
        #[cfg(feature = "tls")]
        let tls = std::sync::OnceLock::new();
        #[cfg(feature = "tls")]
        if let Some(config) = &self.tls {
            let _ = tls.set(Ok(http1_tls(config)?));
        }
        let proxies = match &self.proxy {
            Some((mechanism, credentials)) => self
                .proxies
                .clone()
                .auth(super::ConnectAuth::new(*mechanism, credentials.clone()).with_kerberos(&self.kerberos)),
            None => self.proxies.clone(),
        };
        Ok(WindowsAuth {
            inner: Arc::new(Inner {
                connector: ProxyConnector::new(proxies),
                #[cfg(feature = "tls")]
                tls,
                pools: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                config: self,
            }),
            _body: PhantomData,
        })
    }
}

/// A tower service that sends HTTP/1.1 requests on connections it owns, authenticating each
/// connection once with NTLM or Negotiate (to the origin, `401`, or to a proxy, `407`). See the
/// [module documentation](super).
///
/// Its response body is a [`ResponseBody`] (hyper's [`Incoming`]); a connection goes back to the
/// pool once the response body has been read to its end (a body dropped unread closes it). Cloning is cheap:
/// clones share the pool and the counters.
pub struct WindowsAuth<B> {
    inner: Arc<Inner<B>>,
    _body: PhantomData<fn(B)>,
}

impl<B> Clone for WindowsAuth<B> {
    fn clone(&self) -> Self {
        WindowsAuth { inner: Arc::clone(&self.inner), _body: PhantomData }
    }
}

impl<B> fmt::Debug for WindowsAuth<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowsAuth")
            .field("origin", &self.inner.config.origin.as_ref().map(|(m, c)| (m, c.user())))
            .field("proxy", &self.inner.config.proxy.as_ref().map(|(m, c)| (m, c.user())))
            .field("max_connections", &self.inner.config.max_connections)
            .field("stats", &self.stats())
            .finish()
    }
}

impl WindowsAuth<()> {
    /// A builder with no credentials yet.
    pub fn builder() -> WindowsAuthBuilder {
        WindowsAuthBuilder {
            origin: None,
            proxy: None,
            proxies: Proxies::none(),
            #[cfg(feature = "tls")]
            tls: None,
            max_connections: 8,
            idle_timeout: Duration::from_secs(90),
            body_limit: crate::DEFAULT_BODY_LIMIT,
            kerberos: KerberosOptions::default(),
            strict_channel_binding: false,
        }
    }

    /// A builder authenticating to origins with NTLM as `user` (`user`, `DOMAIN\user` or
    /// `user@domain`).
    pub fn ntlm(user: impl Into<String>, password: impl Into<crate::Secret>) -> WindowsAuthBuilder {
        Self::builder().origin(Mechanism::Ntlm, Credentials::new(user, password))
    }

    /// A builder authenticating to origins with Negotiate (SPNEGO) as `user`.
    pub fn negotiate(user: impl Into<String>, password: impl Into<crate::Secret>) -> WindowsAuthBuilder {
        Self::builder().origin(Mechanism::Negotiate, Credentials::new(user, password))
    }
}

impl<B> WindowsAuth<B> {
    /// The counters so far (this client and its clones).
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            connections: c.connections.load(Ordering::Relaxed),
            handshakes: c.handshakes.load(Ordering::Relaxed),
            failed_handshakes: c.failed.load(Ordering::Relaxed),
            round_trips: c.round_trips.load(Ordering::Relaxed),
            reused: c.reused.load(Ordering::Relaxed),
        }
    }

    /// `CONNECT` requests sent to proxies for `https` targets (each `407` answered counts one
    /// more), as [`ProxyConnector::connect_exchanges`].
    pub fn connect_exchanges(&self) -> u64 {
        self.inner.connector.connect_exchanges()
    }

    /// Per-origin (or per-proxy) pools kept now. A pool is forgotten once it has no connection
    /// and no request, when a request for a new origin comes.
    pub fn pools(&self) -> usize {
        self.inner.pools.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Idle authenticated connections kept now, over all origins and proxies.
    pub fn idle_connections(&self) -> usize {
        let pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.values().map(|p| p.idle.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }
}

struct Inner<B> {
    config: WindowsAuthBuilder,
    connector: ProxyConnector,
    /// Made by `build` from the builder's configuration, else on the first `https` origin.
    #[cfg(feature = "tls")]
    tls: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    pools: Mutex<HashMap<String, Arc<HostPool<B>>>>,
    counters: Counters,
}

impl<B> Drop for Inner<B> {
    fn drop(&mut self) {
        let pools = std::mem::take(&mut *self.pools.lock().unwrap_or_else(|p| p.into_inner()));
        for pool in pools.values() {
            pool.close();
        }
    }
}

/// The connections of one origin (or proxy).
struct HostPool<B> {
    idle: Mutex<Vec<Idle<B>>>,
    slots: Arc<Semaphore>,
    returned: Notify,
    idle_timeout: Duration,
    /// A task closes expired idle connections while any are kept.
    reaping: std::sync::atomic::AtomicBool,
    /// The client is gone: connections coming back are closed, not kept.
    closed: std::sync::atomic::AtomicBool,
    /// This origin refused `sspi`'s Kerberos with channel bindings once: it gets none.
    kerberos_without_bindings: std::sync::atomic::AtomicBool,
}

struct Idle<B> {
    conn: Conn<B>,
    since: Instant,
}

/// A connection: the sender, its slot in the pool, whether it is authenticated.
struct Conn<B> {
    sender: SendRequest<ReplayBody<B>>,
    _slot: Slot<B>,
    /// The channel binding application data of a TLS connection.
    binding: Option<Vec<u8>>,
}

/// A connection's place in its pool; dropping it (the connection closed) wakes a waiter.
struct Slot<B> {
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<HostPool<B>>,
}

impl<B> Drop for Slot<B> {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.pool.returned.notify_one();
    }
}

enum Checkout<B> {
    Idle(Conn<B>),
    New(Slot<B>),
}

impl<B> HostPool<B> {
    fn new(max: usize, idle_timeout: Duration) -> Self {
        HostPool {
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(max)),
            returned: Notify::new(),
            idle_timeout,
            reaping: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            kerberos_without_bindings: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Closes the idle connections and every one that comes back later. An idle connection
    /// holds its pool (through its slot), so without this a dropped client's pools and open
    /// connections would live until the reaper's idle timeout.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        drop(idle);
    }

    fn pop_idle(&self, timeout: Duration) -> Option<Conn<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if c.since.elapsed() <= timeout && !c.conn.sender.is_closed() {
                return Some(c.conn);
            }
            // Expired or closed: dropped here (its slot wakes a waiter).
        }
        None
    }

    async fn checkout(self: &Arc<Self>, timeout: Duration) -> Checkout<B> {
        loop {
            let returned = self.returned.notified();
            if let Some(conn) = self.pop_idle(timeout) {
                return Checkout::Idle(conn);
            }
            if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
                return Checkout::New(Slot { permit: Some(permit), pool: Arc::clone(self) });
            }
            returned.await;
        }
    }

    /// Closes the idle connections kept longer than the idle timeout; whether any is left.
    fn prune(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| c.since.elapsed() <= self.idle_timeout && !c.conn.sender.is_closed());
        !idle.is_empty()
    }
}

impl<B: Send + 'static> HostPool<B> {
    fn put(self: &Arc<Self>, conn: Conn<B>) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if self.closed.load(Ordering::Acquire) {
                return; // the client is gone: `conn` closes here
            }
            idle.push(Idle { conn, since: Instant::now() });
        }
        self.returned.notify_one();
        if !self.reaping.swap(true, Ordering::AcqRel)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // One reaper per pool while it keeps idle connections; it holds the pool weakly, so
            // dropping the client ends it.
            let pool = Arc::downgrade(self);
            let every = self.idle_timeout.max(Duration::from_millis(10));
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(pool) = pool.upgrade() else { return };
                    if !pool.prune() {
                        pool.reaping.store(false, Ordering::Release);
                        // A connection put back meanwhile starts its own reaper (or finds us).
                        if pool.prune() && !pool.reaping.swap(true, Ordering::AcqRel) {
                            continue;
                        }
                        return;
                    }
                }
            });
        }
    }
}

/// Where a request's connection goes, and the pool key.
struct Route {
    /// `scheme://host:port` of the origin, for messages and the pool key.
    origin: String,
    host: String,
    https: bool,
    /// The request goes to a proxy in absolute form (plain `http` through a proxy).
    proxied: bool,
    /// The proxy's host when `proxied`: the service name of a handshake with the proxy.
    proxy_host: Option<String>,
    key: String,
}

impl<B> Inner<B>
where
    B: Body + Send + 'static,
    B::Data: Buf + Send,
    B::Error: Into<BoxError>,
{
    fn route(&self, uri: &Uri) -> Result<Route, Error> {
        let scheme = uri.scheme_str().unwrap_or("");
        let https = match scheme {
            "http" => false,
            "https" => true,
            _ => return Err(Error::new(Kind::Request, uri.to_string(), "only http:// and https:// URLs")),
        };
        let Some(host) = uri.host() else {
            return Err(Error::new(Kind::Request, uri.to_string(), "no host in the URL"));
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let origin = format!("{scheme}://{host}:{port}");
        let proxy = self.config.proxies.proxy_for(uri);
        let proxied = !https && proxy.is_some();
        let key = match (proxied, proxy) {
            (true, Some(p)) => format!("proxy {p}"),
            _ => origin.clone(),
        };
        let proxy_host = proxy.filter(|_| proxied).map(|p| p.host.clone());
        Ok(Route {
            origin,
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            https,
            proxied,
            proxy_host,
            key,
        })
    }

    fn pool(&self, key: &str) -> Arc<HostPool<B>> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(key) {
            return Arc::clone(pool);
        }
        // A new origin: first forget the pools nobody holds (no connection, open or idle, and no
        // request holds them: the map's is the only reference), so a client talking to many
        // origins over time keeps only the live ones.
        pools.retain(|_, pool| Arc::strong_count(pool) > 1);
        let pool = Arc::new(HostPool::new(self.config.max_connections, self.config.idle_timeout));
        pools.insert(key.to_owned(), Arc::clone(&pool));
        pool
    }

    /// Opens a connection (TCP or the proxy's tunnel, then TLS for `https`), HTTP/1.1.
    async fn open(&self, route: &Route, uri: &Uri, slot: Slot<B>) -> Result<Conn<B>, Error> {
        let mut connector = self.connector.clone();
        let stream = connector.call(uri.clone()).await.map_err(|e| {
            let kind = if e.is_closed() { Kind::Closed } else { Kind::Connect };
            let detail = if e.is_auth_required() { "the proxy refused the tunnel" } else { "" };
            Error::new(kind, &route.origin, detail).with_source(e)
        })?;
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        let (sender, binding) = if route.https {
            #[cfg(feature = "tls")]
            {
                self.tls_handshake(route, stream).await?
            }
            #[cfg(not(feature = "tls"))]
            {
                drop(stream);
                return Err(Error::new(Kind::Request, &route.origin, "https:// needs the `tls` feature"));
            }
        } else {
            (http1_handshake(stream, &route.origin).await?, None)
        };
        Ok(Conn { sender, _slot: slot, binding })
    }

    #[cfg(feature = "tls")]
    async fn tls_handshake(
        &self,
        route: &Route,
        stream: crate::connect::ProxyStream,
    ) -> Result<(SendRequest<ReplayBody<B>>, Option<Vec<u8>>), Error> {
        let config =
            self.tls.get_or_init(|| http1_tls(&Default::default()).map_err(|e| e.to_string())).clone().map_err(
                |e| Error::new(Kind::Connect, &route.origin, format!("the TLS configuration could not be built: {e}")),
            )?;
        let name = rustls::pki_types::ServerName::try_from(route.host.clone())
            .map_err(|e| Error::new(Kind::Request, &route.origin, "invalid TLS server name").with_source(e))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Error::new(Kind::Connect, &route.origin, "TLS handshake failed").with_source(e))?;
        let binding = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| super::binding::tls_server_end_point(cert.as_ref()));
        let sender = http1_handshake(hyper_util::rt::TokioIo::new(tls), &route.origin).await?;
        Ok((sender, binding))
    }

    /// Sends one request on `conn`, counting the round trip.
    async fn send(
        &self,
        conn: &mut Conn<B>,
        req: Request<ReplayBody<B>>,
        peer: &str,
        legs: u32,
    ) -> Result<Response<Incoming>, Error> {
        conn.sender
            .ready()
            .await
            .map_err(|e| Error::new(Kind::Closed, peer, "the connection closed").with_legs(legs).with_source(e))?;
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        conn.sender.send_request(req).await.map_err(|e| {
            let kind = if e.is_parse() { Kind::Protocol } else { Kind::Closed };
            let kind = if e.is_user() { Kind::Body } else { kind };
            Error::new(kind, peer, "no answer").with_legs(legs + 1).with_source(e)
        })
    }

    /// Runs the handshake on `conn` for `parts`, the real body sent on the last leg only; whether
    /// the connection ended authenticated.
    async fn handshake(
        &self,
        conn: &mut Conn<B>,
        side: Side,
        route: &Route,
        parts: &http::request::Parts,
        body: &ReplayBody<B>,
        bindings: bool,
    ) -> Result<(Response<Incoming>, bool), Error> {
        let (mechanism, creds) = match side {
            Side::Origin => self.config.origin.as_ref(),
            Side::Proxy => self.config.proxy.as_ref(),
        }
        .ok_or_else(|| Error::new(Kind::Request, &route.origin, "no credentials for this side"))?;
        let peer = match side {
            Side::Origin => route.origin.clone(),
            Side::Proxy => route.key.trim_start_matches("proxy ").to_owned(),
        };
        let binding = if side == Side::Origin && bindings { conn.binding.as_deref() } else { None };
        let blocking = *mechanism == Mechanism::Negotiate;
        // The service is `HTTP/` and the host of whoever asks: the origin, or the proxy.
        let host = match side {
            Side::Origin => &route.host,
            Side::Proxy => route.proxy_host.as_ref().unwrap_or(&route.host),
        };
        let ctx = SecContext::new(*mechanism, creds, host, binding, &self.config.kerberos)
            .map_err(|e| step_error(e, &peer, 0))?;
        let mut ctx = Some(ctx);
        let mut step = run_step(&mut ctx, None, blocking).await.map_err(|e| step_error(e, &peer, 0))?;
        let mut legs = 0u32;
        let mut body_sent = false;
        loop {
            // After the leg that carries the body, a challenge means a refusal (SPNEGO still
            // expects the server's mechListMIC or AP-REP, which come with the success).
            let last = !step.more || step.send_body;
            if step.send_body && body_sent && !body.is_replayable() {
                return Err(Error::new(
                    Kind::Body,
                    &peer,
                    "the server wants another leg with the body, which is over the body limit and cannot be sent again",
                )
                .with_legs(legs));
            }
            let value = format!("{} {}", mechanism.name(), STANDARD.encode(&step.token));
            let mut value =
                HeaderValue::try_from(value).map_err(|e| Error::new(Kind::Protocol, &peer, "token").with_source(e))?;
            value.set_sensitive(true);
            let leg_body = if step.send_body || body.is_empty_body() {
                body_sent = true;
                body.clone_for_replay()
            } else {
                ReplayBody::from_bytes(Bytes::new())
            };
            let mut req = build(parts, route, leg_body, !step.send_body && !body.is_empty_body());
            req.headers_mut().insert(side.credentials(), value);
            let res = self.send(conn, req, &peer, legs).await?;
            legs += 1;
            tracing::debug!(
                peer = %peer,
                scheme = mechanism.name(),
                leg = legs,
                body = step.send_body,
                status = res.status().as_u16(),
                "handshake leg"
            );
            if res.status() != side.status() {
                let complete = ctx.as_ref().is_some_and(SecContext::is_complete);
                match final_token(&res, side, *mechanism) {
                    // Negotiate's mutual authentication: the server's last token must verify.
                    Some(token) if !complete => {
                        run_step(&mut ctx, Some(token), false).await.map_err(|e| match e {
                            StepError::Protocol(d) | StepError::Credentials(d) => Error::new(
                                Kind::Protocol,
                                &peer,
                                format!("the server's final token did not verify (mutual authentication): {d}"),
                            )
                            .with_status(res.status())
                            .with_legs(legs),
                        })?;
                    }
                    // No final token, the context incomplete: the server did not authenticate this
                    // connection (it needed nothing, as a public resource): it is not marked
                    // authenticated, and a later challenge on it runs the handshake.
                    None if !complete => return Ok((res, false)),
                    _ => {}
                }
                return Ok((res, true));
            }
            // A challenge: drain it, keep the connection, go on.
            let (res_parts, res_body) = res.into_parts();
            let close = wants_close(&res_parts);
            let token = challenge_token(&res_parts, side, *mechanism);
            if last {
                let bindings = ctx.as_ref().is_some_and(SecContext::sspi_kerberos_with_bindings);
                return Err(Error::new(Kind::Rejected, &peer, "the credentials were refused")
                    .with_status(res_parts.status)
                    .with_legs(legs)
                    .with_kerberos_bindings_refused(bindings));
            }
            let Some(token) = token else {
                let offered = !crate::challenge::parse_headers(&res_parts.headers, side.challenge())
                    .iter()
                    .any(|c| c.is_scheme(mechanism.name()));
                let (kind, why) = if offered {
                    (Kind::NoScheme, format!("no {} challenge offered", mechanism.name()))
                } else {
                    (
                        Kind::Rejected,
                        format!("{} offered again without a token: the first leg was refused", mechanism.name()),
                    )
                };
                return Err(Error::new(kind, &peer, why).with_status(res_parts.status).with_legs(legs));
            };
            if legs >= MAX_LEGS {
                return Err(Error::new(
                    Kind::TooManyLegs,
                    &peer,
                    format!("still {} after {legs} legs", res_parts.status),
                )
                .with_legs(legs));
            }
            if close || Limited::new(res_body, DRAIN_LIMIT).collect().await.is_err() {
                return Err(Error::new(
                    Kind::Closed,
                    &peer,
                    "the server closed the connection in the middle of the handshake (it must stay open)",
                )
                .with_status(res_parts.status)
                .with_legs(legs));
            }
            let ntlm_in_spnego = blocking && !ctx.as_ref().is_some_and(SecContext::is_kerberos);
            step = run_step(&mut ctx, Some(token), blocking).await.map_err(|e| {
                let err = step_error(e, &peer, legs);
                if ntlm_in_spnego {
                    err.with_hint(
                        "Negotiate ran NTLM inside SPNEGO (no Kerberos ticket could be had: is the KDC reachable, \
                         the user REALM\\user?); a server that accepts only Kerberos refuses it",
                    )
                } else {
                    err
                }
            })?;
            if step.token.is_empty() {
                return Err(
                    Error::new(Kind::Protocol, &peer, "the handshake produced no token to send").with_legs(legs)
                );
            }
        }
    }

    async fn run(self: Arc<Self>, req: Request<B>) -> Result<Response<ResponseBody>, Error> {
        let route = self.route(req.uri())?;
        let uri = req.uri().clone();
        let (parts, body) = req.into_parts();
        let body = ReplayBody::new(body, self.config.body_limit);
        let pool = self.pool(&route.key);
        let side = if route.proxied && self.config.proxy.is_some() {
            Some(Side::Proxy)
        } else if self.config.origin.is_some() {
            Some(Side::Origin)
        } else {
            None
        };
        let mut conn = loop {
            match pool.checkout(self.config.idle_timeout).await {
                Checkout::Idle(mut conn) => {
                    // A pooled connection the server closed meanwhile: the request was not sent,
                    // take another one.
                    if conn.sender.ready().await.is_err() {
                        continue;
                    }
                    self.counters.reused.fetch_add(1, Ordering::Relaxed);
                    let res = self
                        .send(&mut conn, build(&parts, &route, body.clone_for_replay(), false), &route.origin, 0)
                        .await?;
                    let again = side.is_some_and(|s| res.status() == s.status()) && body.is_replayable();
                    if !again {
                        return Ok(self.finish(&pool, conn, res));
                    }
                    // The server wants this connection authenticated anew: drain, then handshake
                    // on it.
                    let (res_parts, res_body) = res.into_parts();
                    if wants_close(&res_parts) || Limited::new(res_body, DRAIN_LIMIT).collect().await.is_err() {
                        drop(conn);
                        let slot = self.fresh_slot(&pool).await;
                        break self.open(&route, &uri, slot).await?;
                    }
                    break conn;
                }
                Checkout::New(slot) => break self.open(&route, &uri, slot).await?,
            }
        };
        let Some(side) = side else {
            let res =
                self.send(&mut conn, build(&parts, &route, body.clone_for_replay(), false), &route.origin, 0).await?;
            return Ok(self.finish(&pool, conn, res));
        };
        let bindings = !pool.kerberos_without_bindings.load(Ordering::Relaxed);
        let err = match self.handshake(&mut conn, side, &route, &parts, &body, bindings).await {
            Ok((res, authenticated)) => return Ok(self.authenticated(&pool, conn, res, authenticated)),
            Err(err) => err,
        };
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %err, "handshake failed: closing the connection");
        drop(conn);
        if !err.kerberos_bindings_refused() || self.config.strict_channel_binding || !body.is_replayable() {
            return Err(err);
        }
        // `sspi` writes the MS-KILE `KERB_AP_OPTIONS_CBT` element of a channel-bound AP-REQ in 2
        // bytes where MIT (krb5 >= 1.19: Apache's mod_auth_gssapi, nginx, Python) reads 4 and
        // refuses the whole AP-REQ. Once per origin: Kerberos without bindings, on a new
        // connection. A server that requires bindings refuses that too.
        pool.kerberos_without_bindings.store(true, Ordering::Relaxed);
        tracing::info!(
            origin = %route.origin,
            "Kerberos with channel bindings refused: trying without them (servers using MIT Kerberos refuse sspi's \
             encoding of the bindings flag; WindowsAuthBuilder::strict_channel_binding turns this off)"
        );
        let slot = self.fresh_slot(&pool).await;
        let mut conn = self.open(&route, &uri, slot).await?;
        match self.handshake(&mut conn, side, &route, &parts, &body, false).await {
            Ok((res, authenticated)) => Ok(self.authenticated(&pool, conn, res, authenticated)),
            Err(retry) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                Err(retry.with_hint(
                    "refused with channel bindings and without: the server may require bindings, which sspi's \
                     Kerberos cannot give MIT acceptors (Credentials::from_cache with the `gssapi` feature can)",
                ))
            }
        }
    }

    /// The response of a handshake that ended well, counted.
    fn authenticated(
        &self,
        pool: &Arc<HostPool<B>>,
        conn: Conn<B>,
        res: Response<Incoming>,
        authenticated: bool,
    ) -> Response<ResponseBody> {
        if authenticated {
            self.counters.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        self.finish(pool, conn, res)
    }

    /// A slot for a new connection (one was just freed by closing the connection at hand).
    async fn fresh_slot(&self, pool: &Arc<HostPool<B>>) -> Slot<B> {
        let permit = Arc::clone(&pool.slots).acquire_owned().await.ok();
        Slot { permit, pool: Arc::clone(pool) }
    }

    /// The response for the caller, whose body gives the connection back to the pool when it
    /// has been read to its end (a body dropped before its end closes the connection).
    fn finish(&self, pool: &Arc<HostPool<B>>, conn: Conn<B>, res: Response<Incoming>) -> Response<ResponseBody> {
        let pool = Arc::clone(pool);
        let close = res.version() == Version::HTTP_10
            || res
                .headers()
                .get_all(CONNECTION)
                .iter()
                .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))));
        let give_back: Box<dyn FnOnce() + Send> = Box::new(move || {
            if !close {
                pool.put(conn);
            }
        });
        res.map(|body| ResponseBody::new(body, give_back))
    }
}

/// The body of a [`WindowsAuth`] response: hyper's [`Incoming`], which gives its connection back
/// to the pool once read to its end.
pub struct ResponseBody {
    inner: Incoming,
    give_back: Option<Box<dyn FnOnce() + Send>>,
}

impl ResponseBody {
    fn new(inner: Incoming, give_back: Box<dyn FnOnce() + Send>) -> Self {
        let mut body = ResponseBody { inner, give_back: Some(give_back) };
        if body.inner.is_end_stream() {
            body.done();
        }
        body
    }

    fn done(&mut self) {
        if let Some(give_back) = self.give_back.take() {
            give_back();
        }
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.done(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.done(),
            Poll::Ready(Some(Err(_))) => drop(self.give_back.take()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The rustls configuration of `config`, offering `http/1.1` only by ALPN (Windows
/// authentication cannot run over HTTP/2).
#[cfg(feature = "tls")]
fn http1_tls(config: &crate::connect::tls::TlsConfig) -> Result<Arc<rustls::ClientConfig>, crate::ConfigError> {
    let mut config = config.client_config()?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One step of the context; on tokio's blocking pool when it may talk to a KDC (Negotiate).
async fn run_step(ctx: &mut Option<SecContext>, input: Option<Vec<u8>>, blocking: bool) -> Result<Step, StepError> {
    let mut c = ctx.take().ok_or_else(|| StepError::Protocol("the handshake already failed".into()))?;
    if !blocking {
        let step = c.step(input.as_deref());
        *ctx = Some(c);
        return step;
    }
    let (c, step) = tokio::task::spawn_blocking(move || {
        let step = c.step(input.as_deref());
        (c, step)
    })
    .await
    .map_err(|e| StepError::Protocol(format!("the handshake step failed: {e}")))?;
    *ctx = Some(c);
    step
}

fn step_error(e: StepError, peer: &str, legs: u32) -> Error {
    match e {
        StepError::Protocol(d) => Error::new(Kind::Protocol, peer, d).with_legs(legs),
        StepError::Credentials(d) => Error::new(Kind::Credentials, peer, d).with_legs(legs),
    }
}

async fn http1_handshake<T, B>(io: T, peer: &str) -> Result<SendRequest<ReplayBody<B>>, Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Buf + Send,
    B::Error: Into<BoxError>,
{
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| Error::new(Kind::Connect, peer, "HTTP/1.1 handshake failed").with_source(e))?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(error = %err, "connection ended with an error");
        }
    });
    Ok(sender)
}

/// The request for one leg: origin form (absolute form to a proxy), `Host` set, and for an
/// intermediate leg of a request with a body, `Content-Length: 0`.
fn build<B>(
    parts: &http::request::Parts,
    route: &Route,
    body: ReplayBody<B>,
    empty_leg: bool,
) -> Request<ReplayBody<B>> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = parts.headers.clone();
    *req.uri_mut() = if route.proxied {
        parts.uri.clone()
    } else {
        parts.uri.path_and_query().map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()))
    };
    if !req.headers().contains_key(HOST)
        && let Some(auth) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(auth.as_str())
    {
        req.headers_mut().insert(HOST, v);
    }
    if empty_leg {
        req.headers_mut().remove(TRANSFER_ENCODING);
        req.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    req
}

fn wants_close(res: &http::response::Parts) -> bool {
    res.version == Version::HTTP_10
        || res
            .headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))))
}

/// The token of the mechanism's challenge, if the response carries one.
fn challenge_token(res: &http::response::Parts, side: Side, mechanism: Mechanism) -> Option<Vec<u8>> {
    crate::challenge::parse_headers(&res.headers, side.challenge())
        .iter()
        .filter(|c| c.is_scheme(mechanism.name()))
        .find_map(|c| c.token68())
        .and_then(|t| STANDARD.decode(t).ok())
        .filter(|t| !t.is_empty())
}

fn final_token(res: &Response<Incoming>, side: Side, mechanism: Mechanism) -> Option<Vec<u8>> {
    let headers = res.headers();
    crate::challenge::parse_headers(headers, side.challenge())
        .iter()
        .filter(|c| c.is_scheme(mechanism.name()))
        .find_map(|c| c.token68())
        .and_then(|t| STANDARD.decode(t).ok())
}

impl<B> Service<Request<B>> for WindowsAuth<B>
where
    B: Body + Send + 'static,
    B::Data: Buf + Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(Arc::clone(&self.inner).run(req))
    }
}
