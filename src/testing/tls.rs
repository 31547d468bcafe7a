//! TLS for tests (feature `testing-tls`): a [`TestPki`] made at run time with rcgen (a CA and a
//! server certificate for the names you give), and a [`TlsServer`] serving an axum router over
//! TLS on `127.0.0.1`, HTTP/2 and HTTP/1.1 by ALPN. Nothing is read from disk, nothing expires
//! between runs.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use axum::{Router, routing::get};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower_auth::connect::{Proxies, ProxyConnector, tls::{Roots, TlsConfig}};
//! use tower_auth::testing::tls::{TestPki, TlsServer};
//!
//! let pki = TestPki::new(&["localhost", "127.0.0.1"])?;
//! let server = TlsServer::start(&pki, Router::new().route("/", get(|| async { "secret plans" }))).await?;
//! let tls = TlsConfig::new().roots(Roots::None).add_ca_pem(pki.ca_pem().as_bytes())?;
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, Empty<Bytes>>(tls.https(ProxyConnector::new(Proxies::none()))?);
//! let res = client.get(server.url("/").parse()?).await?;
//! assert_eq!(res.version(), http::Version::HTTP_2);
//! assert_eq!(res.into_body().collect().await?.to_bytes(), "secret plans");
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// A CA made at run time and a server certificate it signed.
pub struct TestPki {
    ca: CertificateDer<'static>,
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").field("key", &"[redacted]").finish_non_exhaustive()
    }
}

impl TestPki {
    /// A new CA, and a server certificate for `names` (strings that parse as IP addresses become
    /// IP subject alternative names, the others DNS names).
    ///
    /// # Errors
    ///
    /// rcgen's, if a name is not usable.
    pub fn new(names: &[&str]) -> Result<Self, rcgen::Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: two test CAs must not pass for one another.
        let ca_name = format!("tower-auth test CA {:016x}", rand::random::<u64>());
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let ca_pem = ca.pem();
        let ca_der = ca.der().clone();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(TestPki {
            ca: ca_der.clone(),
            ca_pem,
            chain: vec![cert.der().clone(), ca_der],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    /// The CA certificate, PEM (what `--cacert` reads).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// A rustls server configuration with this certificate, offering `h2` and `http/1.1`.
    ///
    /// # Errors
    ///
    /// rustls's, if the key does not fit the certificate.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(crate::connect::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// An axum router served over TLS on `127.0.0.1` on a free port (HTTP/2 or HTTP/1.1, as the
/// client's ALPN asks), until dropped.
#[derive(Debug)]
pub struct TlsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsServer {
    /// Serves `router` with `pki`'s server certificate.
    ///
    /// # Errors
    ///
    /// If no port can be bound or the certificate is unusable.
    pub async fn start(pki: &TestPki, router: axum::Router) -> std::io::Result<Self> {
        let config = pki.server_config().map_err(std::io::Error::other)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate aborts the handshake: nothing to serve.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = TowerToHyperService::new(router);
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(TlsServer { addr, task })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
