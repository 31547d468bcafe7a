//! [`ForwardProxy`]: a hyper-util connector that sends every request through an HTTP forward
//! proxy, in absolute form, so that proxy authentication
//! ([`AuthLayer::proxy_basic`](crate::AuthLayer::proxy_basic),
//! [`AuthLayer::proxy_digest`](crate::AuthLayer::proxy_digest), `proxy_guess`) has a proxy to
//! talk to.
//!
//! It handles plain `http://` targets. HTTPS through an authenticating proxy needs a `CONNECT`
//! tunnel whose `407` is answered before TLS starts: [`ProxyConnector`](super::ProxyConnector) does that, not the
//! layer, because the tunnel request never passes through the tower stack.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_auth::{AuthLayer, connector::ForwardProxy};
//!
//! let proxy = ForwardProxy::new("http://127.0.0.1:3128".parse()?)?;
//! let client = Client::builder(TokioExecutor::new()).build::<_, tower_auth::ReplayBody<Full<Bytes>>>(proxy);
//! let svc = ServiceBuilder::new().layer(AuthLayer::proxy_digest("alice", "s3cret")?).service(client);
//! let res = svc.oneshot(http::Request::get("http://internal.example/").body(Full::default())?).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::error::ConfigError;

/// Connects every request to one HTTP proxy and marks the connection as proxied, so hyper-util
/// sends requests in absolute form (`GET http://host/path HTTP/1.1`).
#[derive(Debug, Clone)]
pub struct ForwardProxy {
    host: String,
    port: u16,
}

impl ForwardProxy {
    /// A connector for the proxy at `proxy` (`http://host:port`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the URI is not `http://` with a host (an HTTPS proxy would need TLS).
    pub fn new(proxy: Uri) -> Result<Self, ConfigError> {
        if proxy.scheme_str() != Some("http") {
            return Err(ConfigError::new(format!("invalid proxy {proxy}: only http:// proxies are supported")));
        }
        let host = proxy.host().ok_or_else(|| ConfigError::new(format!("invalid proxy {proxy}: no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(ForwardProxy { host, port: proxy.port_u16().unwrap_or(80) })
    }
}

impl Service<Uri> for ForwardProxy {
    type Response = ProxiedStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<ProxiedStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let (host, port) = (self.host.clone(), self.port);
        Box::pin(async move {
            if target.scheme_str() != Some("http") {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "ForwardProxy carries http:// requests only; https needs a CONNECT tunnel",
                ));
            }
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(ProxiedStream(TokioIo::new(tcp)))
        })
    }
}

/// A TCP connection to a proxy, marked as proxied for hyper-util.
#[derive(Debug)]
pub struct ProxiedStream(TokioIo<TcpStream>);

impl Connection for ProxiedStream {
    fn connected(&self) -> Connected {
        self.0.connected().proxy(true)
    }
}

impl Read for ProxiedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for ProxiedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
