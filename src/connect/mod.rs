//! Connectors for hyper-util's client: proxies (forward, `CONNECT` tunnels whose `407` is
//! answered, from the environment) and TLS (feature `tls`).
//!
//! - [`ForwardProxy`]: every request to one HTTP proxy in absolute form (plain `http://`
//!   targets); an [`AuthLayer`](crate::AuthLayer) with a proxy scheme answers the `407`.
//! - [`ProxyConnector`]: the general one. For each target it asks [`Proxies`] (explicit, or
//!   `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY`) which proxy to use, then
//!   - no proxy: a direct TCP connection;
//!   - an `http://` target: a connection to the proxy, marked as proxied so hyper-util sends the
//!     request in absolute form (the layer answers `407`, as with [`ForwardProxy`]);
//!   - an `https://` target: a `CONNECT host:port` tunnel through the proxy. The proxy's
//!     credentials go on the `CONNECT` requests only, answered by the **same scheme objects**
//!     the layers use ([`Basic::proxy`](crate::Basic::proxy) pre-emptively,
//!     [`Digest::proxy`](crate::Digest::proxy) and [`Digest::proxy_guess`](crate::Digest::proxy_guess)
//!     answering the `407`), driven through the [`Authenticator`](crate::Authenticator) trait:
//!     `authorize`, send, `on_response`, and on [`Action::Retry`](crate::Action::Retry) once
//!     more, on the same connection if the proxy kept it open, else on a new one, at most
//!     [`MAX_EXCHANGES`](crate::MAX_EXCHANGES) times. Digest state (the proxy's nonce) outlives
//!     the tunnel, so later tunnels are pre-authorised: one `CONNECT` each. The loop takes any
//!     [`Authenticator`](crate::Authenticator) and keeps the connection while the proxy does, so
//!     a connection-bound scheme (NTLM, Negotiate: `ntlm::ConnectAuth`)
//!     plugs into it as it is. Each `CONNECT` carries a [`ViaProxy`] in its extensions (the
//!     proxy's host: Negotiate's service name). A scheme that answers [`Action::Retry`](crate::Action::Retry)
//!     to a `2xx` refuses it (Negotiate's final token did not verify): the loop then calls
//!     `authorize`, whose error is the [`ProxyError`]'s reason ([`ProxyError::is_protocol`]),
//!     and the tunnel is not opened.
//! - [`tls`] (feature `tls`): rustls over the tunnel (or directly), by wrapping a
//!   `ProxyConnector` in hyper-rustls's `HttpsConnector`; also TLS to an `https://` proxy
//!   itself.
//!
//! # What is hand-written, and why
//!
//! hyper-util has a tunnel connector (`client::legacy::connect::proxy::Tunnel`), but it sends a
//! fixed set of headers and turns a `407` into an error without its `Proxy-Authenticate`: it
//! cannot answer a Digest challenge. So the `CONNECT` exchange is written here, over hyper's own
//! HTTP/1.1 client connection (`hyper::client::conn::http1`, then `hyper::upgrade::on`), which
//! parses the proxy's answers and keeps the connection for a second `CONNECT`. hyper-util's
//! proxy [`Matcher`](hyper_util::client::proxy::matcher::Matcher) decides `NO_PROXY` (curl's
//! rules); what it lacks is added here: the proxy URL's user info as a scheme of this crate (it
//! only gives a Basic header, and refuses an `@` in a password), `NO_PROXY` entries with a port,
//! and curl's CGI rule for `HTTP_PROXY`. TLS itself is hyper-rustls and rustls.
//!
//! # Security
//!
//! `Proxy-Authorization` goes to the proxy only: on `CONNECT` requests (this connector), or on
//! plain-`http://` requests in absolute form (the layer; `AuthRequest::set_credential` refuses it
//! on `https://` requests, which travel inside the tunnel). With `NO_PROXY` (or a redirect
//! followed above the layer to a host that goes direct), wrap the layer's proxy scheme in
//! [`ThroughProxy`] with the connector's [`Proxies`]: it then applies exactly to the requests
//! the connector sends to the proxy. The origin's credentials (its layer)
//! travel inside TLS, through the tunnel. Errors ([`ProxyError`]) name the proxy and what
//! happened, never a password.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower_auth::Digest;
//! use tower_auth::connect::{Proxies, Proxy, ProxyConnector, tls};
//!
//! let proxy = Proxy::parse("http://proxy.corp:3128")?.auth(Digest::proxy("alice", "s3cret")?);
//! let connector = ProxyConnector::new(Proxies::all(proxy));
//! let https = tls::TlsConfig::new().https(connector)?;
//! let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https);
//! let res = client.get("https://api.github.com/".parse()?).await?;
//! # Ok(()) }
//! ```

mod error;
mod forward;
mod proxy;
mod through;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
mod tunnel;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::upgrade::Upgraded;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use self::error::Kind;
pub use self::error::ProxyError;
pub use self::forward::{ForwardProxy, ProxiedStream};
pub use self::proxy::{Proxies, Proxy, ProxyAuth, ViaProxy, redact_userinfo};
pub use self::through::ThroughProxy;

/// The default bound on the whole proxy handshake (TCP, TLS to the proxy, every `CONNECT`).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A hyper-util connector that reaches each target directly or through its proxy, answering the
/// proxy's `407` on `CONNECT`. See the [module documentation](self).
///
/// Cloning is cheap; clones share the exchange counter and the proxies' scheme state.
#[derive(Clone)]
pub struct ProxyConnector {
    proxies: Proxies,
    http: HttpConnector,
    #[cfg(feature = "tls")]
    proxy_tls: Option<Arc<rustls::ClientConfig>>,
    exchanges: Arc<AtomicU64>,
    timeout: Duration,
}

impl std::fmt::Debug for ProxyConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConnector")
            .field("proxies", &self.proxies)
            .field("connect_exchanges", &self.connect_exchanges())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ProxyConnector {
    /// A connector using these proxies (and TCP with `TCP_NODELAY` for every connection).
    pub fn new(proxies: Proxies) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        ProxyConnector {
            proxies,
            http,
            #[cfg(feature = "tls")]
            proxy_tls: None,
            exchanges: Arc::new(AtomicU64::new(0)),
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// The proxies of the environment ([`Proxies::from_env`]).
    ///
    /// # Errors
    ///
    /// As [`Proxies::from_env`].
    pub fn from_env() -> Result<Self, crate::ConfigError> {
        Ok(ProxyConnector::new(Proxies::from_env()?))
    }

    /// Bounds the proxy handshake (connecting, TLS to the proxy, every `CONNECT` exchange);
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] otherwise.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The TLS configuration for `https://` proxies (TLS to the proxy itself); its ALPN is set to
    /// `http/1.1`. Without it, an `https://` proxy is reached with
    /// [`tls::TlsConfig::new`]'s platform roots.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn proxy_tls(mut self, config: rustls::ClientConfig) -> Self {
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        self.proxy_tls = Some(Arc::new(config));
        self
    }

    /// The proxies in use.
    pub fn proxies(&self) -> &Proxies {
        &self.proxies
    }

    /// `CONNECT` requests sent so far by this connector and its clones (each `407` answered
    /// counts one more).
    pub fn connect_exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    async fn tcp(&mut self, uri: Uri, what: impl FnOnce(io::Error) -> ProxyError) -> Result<TcpStream, ProxyError> {
        match self.http.call(uri).await {
            Ok(io) => Ok(io.into_inner()),
            Err(err) => Err(what(io::Error::other(err))),
        }
    }

    /// A connection to the proxy: TCP, and TLS for an `https://` proxy.
    async fn open_proxy(&mut self, proxy: &Proxy, target: &str) -> Result<Io, ProxyError> {
        let name = proxy.to_string();
        let tcp = self.tcp(proxy.uri(), |e| ProxyError::new(Kind::Connect, &name, target, "").with_source(e)).await?;
        if !proxy.https {
            return Ok(Io::Tcp(TokioIo::new(tcp)));
        }
        #[cfg(feature = "tls")]
        {
            let config = match &self.proxy_tls {
                Some(c) => Arc::clone(c),
                None => {
                    let built = tls::TlsConfig::new().client_config().map_err(|e| {
                        ProxyError::new(Kind::Connect, &name, target, "no TLS configuration").with_source(e)
                    })?;
                    self.proxy_tls.insert(Arc::new(built)).clone()
                }
            };
            let server = rustls::pki_types::ServerName::try_from(proxy.host.clone())
                .map_err(|e| ProxyError::new(Kind::Connect, &name, target, "invalid TLS server name").with_source(e))?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(server, tcp).await.map_err(|e| {
                ProxyError::new(Kind::Connect, &name, target, "TLS handshake with the proxy failed").with_source(e)
            })?;
            Ok(Io::Tls(Box::new(TokioIo::new(tls))))
        }
        #[cfg(not(feature = "tls"))]
        {
            drop(tcp);
            Err(ProxyError::new(Kind::Connect, &name, target, "an https:// proxy needs the `tls` feature"))
        }
    }

    async fn connect(mut self, dst: Uri) -> Result<ProxyStream, ProxyError> {
        let Some(proxy) = self.proxies.proxy_for(&dst).cloned() else {
            let target = tunnel::authority(&dst);
            let tcp = self.tcp(dst, |e| ProxyError::new(Kind::Direct, "", &target, "").with_source(e)).await?;
            return Ok(ProxyStream { io: Io::Tcp(TokioIo::new(tcp)), proxied: false });
        };
        let https = dst.scheme_str() == Some("https");
        let target = tunnel::authority(&dst);
        let name = proxy.to_string();
        let timeout = self.timeout;
        let work = async {
            let io = self.open_proxy(&proxy, &target).await?;
            if !https {
                return Ok(ProxyStream { io, proxied: true });
            }
            let upgraded = tunnel::connect(&mut self, &proxy, &target, io).await?;
            Ok(ProxyStream { io: Io::Tunnel(upgraded), proxied: false })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::new(Kind::Timeout, &name, &target, format!("no tunnel within {timeout:?}"))),
        }
    }
}

impl Service<Uri> for ProxyConnector {
    type Response = ProxyStream;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<ProxyStream, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        Box::pin(self.clone().connect(dst))
    }
}

/// A connection made by [`ProxyConnector`]: direct, to a proxy (marked as proxied for
/// absolute-form requests), or a `CONNECT` tunnel through one.
#[derive(Debug)]
pub struct ProxyStream {
    io: Io,
    proxied: bool,
}

#[derive(Debug)]
enum Io {
    Tcp(TokioIo<TcpStream>),
    #[cfg(feature = "tls")]
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
    Tunnel(Upgraded),
}

impl ProxyStream {
    /// Whether requests on this connection go to a proxy in absolute form.
    pub fn is_proxied(&self) -> bool {
        self.proxied
    }

    /// Whether this connection is a `CONNECT` tunnel.
    pub fn is_tunnel(&self) -> bool {
        matches!(self.io, Io::Tunnel(_))
    }
}

impl Connection for ProxyStream {
    fn connected(&self) -> Connected {
        let connected = match &self.io {
            Io::Tcp(tcp) => tcp.connected(),
            #[cfg(feature = "tls")]
            Io::Tls(tls) => tls.inner().get_ref().0.connected(),
            Io::Tunnel(_) => Connected::new(),
        };
        connected.proxy(self.proxied)
    }
}

impl Read for ProxyStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for ProxyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Read for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Io::Tls(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tunnel(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl Write for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Io::Tls(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tunnel(io) => Pin::new(io).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_flush(cx),
            #[cfg(feature = "tls")]
            Io::Tls(io) => Pin::new(io).poll_flush(cx),
            Io::Tunnel(io) => Pin::new(io).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Io::Tls(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tunnel(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
