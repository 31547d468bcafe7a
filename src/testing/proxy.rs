//! [`TestProxy`]: an HTTP proxy on `127.0.0.1` for tests (feature `testing-tls`). It opens
//! `CONNECT` tunnels to any `host:port` once a [`Check`] (usually [`BasicCheck`] or
//! [`DigestCheck`](super::DigestCheck) in proxy mode) lets the request through, answers
//! plain-`http://` requests in absolute form itself (`200`, body `proxied GET URI`), and can
//! misbehave on purpose: challenge forever, send a malformed `Proxy-Authenticate`, refuse with a
//! status, close mid-handshake, close after each `407`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use tower_auth::testing::BasicCheck;
//! use tower_auth::testing::proxy::TestProxy;
//!
//! let proxy = TestProxy::builder().check(BasicCheck::new("proxy").user("alice", "s3cret").proxy(true)).start().await?;
//! assert!(proxy.url().starts_with("http://127.0.0.1:"));
//! assert_eq!(proxy.connects(), 0);
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::{BasicCheck, Check, Verdict};

/// How a [`TestProxy`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A proper proxy.
    None,
    /// `407` to every request, with the check's challenge (a proxy that never accepts).
    ChallengeForever,
    /// `407` with `Proxy-Authenticate: Digest realm="unterminated` (no challenge parses).
    MalformedChallenge,
    /// This status to every `CONNECT` (`403`, `502`…), after the check passed.
    Refuse(StatusCode),
    /// Reads the request head, then closes the connection without an answer.
    CloseMidHandshake,
}

/// What the proxy counts. Cloning shares the counts.
#[derive(Debug, Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
    connects: AtomicU64,
    tunnels: AtomicU64,
    with_credentials: AtomicU64,
}

/// Builds a [`TestProxy`].
pub struct TestProxyBuilder {
    check: Arc<dyn Check>,
    misbehaviour: Misbehaviour,
    close_after_challenge: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for TestProxyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestProxyBuilder")
            .field("misbehaviour", &self.misbehaviour)
            .field("close_after_challenge", &self.close_after_challenge)
            .finish_non_exhaustive()
    }
}

impl TestProxyBuilder {
    /// The check every request must pass (a proxy-mode check answers `407`). Without one, the
    /// proxy asks for no credentials.
    pub fn check(mut self, check: impl Check) -> Self {
        self.check = Arc::new(check);
        self
    }

    /// Misbehaves this way.
    pub fn misbehave(mut self, how: Misbehaviour) -> Self {
        self.misbehaviour = how;
        self
    }

    /// Closes the connection after each `407` (`Connection: close`), so the answer to the
    /// challenge must come on a new connection.
    pub fn close_after_challenge(mut self, on: bool) -> Self {
        self.close_after_challenge = on;
        self
    }

    /// An HTTPS proxy: TLS with this certificate before anything else (its
    /// [`url`](TestProxy::url) is then `https://`).
    ///
    /// # Errors
    ///
    /// rustls's, if the certificate is unusable.
    pub fn tls(mut self, pki: &super::tls::TestPki) -> Result<Self, rustls::Error> {
        let mut config = pki.server_config()?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        self.tls = Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)));
        Ok(self)
    }

    /// Starts the proxy on `127.0.0.1:0`.
    ///
    /// # Errors
    ///
    /// If no port can be bound.
    pub async fn start(self) -> std::io::Result<TestProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let https = self.tls.is_some();
        let shared = Arc::new(self);
        let task = {
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { return };
                    counts.connections.fetch_add(1, Ordering::Relaxed);
                    let (shared, counts) = (Arc::clone(&shared), Arc::clone(&counts));
                    tokio::spawn(async move {
                        match &shared.tls {
                            Some(acceptor) => {
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    serve(tls, shared, counts).await;
                                }
                            }
                            None => serve(tcp, shared, counts).await,
                        }
                    });
                }
            })
        };
        Ok(TestProxy { addr, https, counts, task })
    }
}

/// Lets every request through.
struct Open;

impl Check for Open {
    fn check(&self, _: &http::request::Parts, _: &Bytes) -> Verdict {
        Verdict::Pass
    }
}

async fn serve<I>(mut io: I, config: Arc<TestProxyBuilder>, counts: Arc<Counts>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if config.misbehaviour == Misbehaviour::CloseMidHandshake {
        let mut buf = [0u8; 1024];
        let _ = io.read(&mut buf).await;
        counts.requests.fetch_add(1, Ordering::Relaxed);
        return; // dropped: closed without an answer
    }
    let service = service_fn(move |req: Request<Incoming>| {
        let (config, counts) = (Arc::clone(&config), Arc::clone(&counts));
        async move { Ok::<_, Infallible>(answer(req, &config, &counts)) }
    });
    let _ =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).with_upgrades().await;
}

fn answer(req: Request<Incoming>, config: &TestProxyBuilder, counts: &Counts) -> Response<Full<Bytes>> {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let connect = req.method() == Method::CONNECT;
    if connect {
        counts.connects.fetch_add(1, Ordering::Relaxed);
    }
    if req.headers().contains_key(PROXY_AUTHORIZATION) {
        counts.with_credentials.fetch_add(1, Ordering::Relaxed);
    }
    let reply = |status: StatusCode, headers: Vec<(http::HeaderName, http::HeaderValue)>, body: String| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        for (name, value) in headers {
            res.headers_mut().append(name, value);
        }
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED && config.close_after_challenge {
            res.headers_mut().insert(CONNECTION, http::HeaderValue::from_static("close"));
        }
        res
    };
    let (parts, body) = req.into_parts();
    let verdict = match config.misbehaviour {
        Misbehaviour::MalformedChallenge => Verdict::Reject {
            status: StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            headers: vec![(PROXY_AUTHENTICATE, http::HeaderValue::from_static("Digest realm=\"unterminated"))],
        },
        Misbehaviour::ChallengeForever => match config.check.check(&parts, &Bytes::new()) {
            reject @ Verdict::Reject { .. } => reject,
            _ => BasicCheck::new("forever").proxy(true).check(&parts, &Bytes::new()),
        },
        _ => config.check.check(&parts, &Bytes::new()),
    };
    if let Verdict::Reject { status, headers } = verdict {
        return reply(status, headers, "proxy authentication required\n".to_owned());
    }
    if let Misbehaviour::Refuse(status) = config.misbehaviour
        && connect
    {
        return reply(status, Vec::new(), "refused\n".to_owned());
    }
    if !connect {
        return reply(StatusCode::OK, Vec::new(), format!("proxied {} {}", parts.method, parts.uri));
    }
    let target = parts.uri.to_string();
    let req = Request::from_parts(parts, body);
    counts.tunnels.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
        let Ok(mut upstream) = TcpStream::connect(target.as_str()).await else { return };
        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut upstream).await;
    });
    reply(StatusCode::OK, Vec::new(), String::new())
}

/// A running test proxy; stops when dropped. See the [module documentation](self).
#[derive(Debug)]
pub struct TestProxy {
    addr: SocketAddr,
    https: bool,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl TestProxy {
    /// A proxy that asks for no credentials and behaves.
    pub fn builder() -> TestProxyBuilder {
        TestProxyBuilder {
            check: Arc::new(Open),
            misbehaviour: Misbehaviour::None,
            close_after_challenge: false,
            tls: None,
        }
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` with [`TestProxyBuilder::tls`]).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.addr)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.counts.connections.load(Ordering::Relaxed)
    }

    /// Requests received (every `CONNECT`, and plain requests in absolute form).
    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// `CONNECT` requests received.
    pub fn connects(&self) -> u64 {
        self.counts.connects.load(Ordering::Relaxed)
    }

    /// Tunnels opened.
    pub fn tunnels(&self) -> u64 {
        self.counts.tunnels.load(Ordering::Relaxed)
    }

    /// Requests that carried `Proxy-Authorization`.
    pub fn with_credentials(&self) -> u64 {
        self.counts.with_credentials.load(Ordering::Relaxed)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
