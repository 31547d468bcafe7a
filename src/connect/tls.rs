//! TLS for outbound requests: rustls (the `ring` provider, no OpenSSL) through hyper-rustls,
//! directly or inside a [`ProxyConnector`](super::ProxyConnector)'s `CONNECT` tunnel.
//!
//! [`TlsConfig`] builds the rustls `ClientConfig`: the platform's roots by default
//! (`rustls-native-certs`: the system store, `SSL_CERT_FILE`/`SSL_CERT_DIR`), the compiled-in
//! Mozilla roots with feature `tls-webpki-roots`, extra CAs from PEM (curl's `--cacert`), or no
//! verification at all (curl's `-k`, loudly). [`TlsConfig::https`] wraps a connector in
//! hyper-rustls's `HttpsConnector`, offering HTTP/2 and HTTP/1.1 by ALPN. Nothing here is
//! hand-written but the `-k` verifier (rustls has none, on purpose) and the glue.
//!
//! A certificate for another name or from an unknown CA fails the connection with rustls's own
//! typed error (`rustls::Error::InvalidCertificate(NotValidForName | UnknownIssuer)`), found in
//! the client error's `source()` chain.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_auth::AuthLayer;
//! use tower_auth::connect::{ProxyConnector, tls::TlsConfig};
//!
//! // Proxies from the environment, TLS with the platform's roots plus a company CA.
//! let pem = std::fs::read("corp-ca.pem")?;
//! let https = TlsConfig::new().add_ca_pem(&pem)?.https(ProxyConnector::from_env()?)?;
//! let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https);
//! let svc = ServiceBuilder::new().layer(AuthLayer::bearer("t0ken")?).service(client);
//! let res = svc.oneshot(http::Request::get("https://api.github.com/user").body(Empty::new())?).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::ConfigError;

/// Which root certificates to trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roots {
    /// The platform's store (the default), read once by `rustls-native-certs`.
    Platform,
    /// The Mozilla roots compiled in (`webpki-roots`; feature `tls-webpki-roots`).
    #[cfg(feature = "tls-webpki-roots")]
    Webpki,
    /// None: only the CAs added with [`TlsConfig::add_ca_pem`].
    None,
}

/// How TLS connections are verified; builds the rustls `ClientConfig` and hyper-rustls
/// connectors. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    roots: Roots,
    extra: Vec<CertificateDer<'static>>,
    insecure: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig::new()
    }
}

impl TlsConfig {
    /// The platform's roots, certificates verified.
    pub fn new() -> Self {
        TlsConfig { roots: Roots::Platform, extra: Vec::new(), insecure: false }
    }

    /// Trusts these roots instead of the platform's.
    pub fn roots(mut self, roots: Roots) -> Self {
        self.roots = roots;
        self
    }

    /// Also trusts every certificate of this PEM bundle (curl's `--cacert`, a company CA).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the bundle holds no certificate or a malformed one.
    pub fn add_ca_pem(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        let before = self.extra.len();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ConfigError::new(format!("invalid CA bundle: {e}")))?;
            self.extra.push(cert);
        }
        if self.extra.len() == before {
            return Err(ConfigError::new("invalid CA bundle: no PEM certificate in it"));
        }
        Ok(self)
    }

    /// Accepts any certificate, for any name (curl's `-k`/`--insecure`): the connection is
    /// encrypted but anyone on the path can read and change it. Logs a warning when the
    /// configuration is built. Signatures of the handshake are still checked.
    pub fn danger_accept_invalid_certs(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// The rustls configuration (ring provider, TLS 1.2 and 1.3, no ALPN set).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if no root could be loaded at all (no platform store and no CA added),
    /// or a CA is not usable as a root.
    pub fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new(format!("TLS: {e}")))?;
        if self.insecure {
            tracing::warn!(
                "TLS certificate verification is OFF (--insecure): any server can pretend to be the one asked for"
            );
            let verifier = Arc::new(AcceptAny(provider.signature_verification_algorithms));
            return Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth());
        }
        let mut store = RootCertStore::empty();
        match self.roots {
            Roots::Platform => {
                let found = rustls_native_certs::load_native_certs();
                for err in &found.errors {
                    tracing::debug!(error = %err, "a platform root could not be read");
                }
                let (added, ignored) = store.add_parsable_certificates(found.certs);
                tracing::debug!(added, ignored, "platform roots loaded");
            }
            #[cfg(feature = "tls-webpki-roots")]
            Roots::Webpki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Roots::None => {}
        }
        for cert in &self.extra {
            store.add(cert.clone()).map_err(|e| ConfigError::new(format!("invalid CA certificate: {e}")))?;
        }
        if store.is_empty() {
            return Err(ConfigError::new("TLS: no root certificate to trust (no platform store, no CA given)"));
        }
        Ok(builder.with_root_certificates(store).with_no_client_auth())
    }

    /// Wraps a connector (a [`ProxyConnector`](super::ProxyConnector), hyper-util's
    /// `HttpConnector`…) in hyper-rustls's `HttpsConnector`: TLS for `https://` targets (inside
    /// the tunnel when there is one), HTTP/2 or HTTP/1.1 by ALPN, plain `http://` passed
    /// through.
    ///
    /// # Errors
    ///
    /// As [`TlsConfig::client_config`].
    pub fn https<C>(&self, connector: C) -> Result<HttpsConnector<C>, ConfigError> {
        Ok(HttpsConnectorBuilder::new()
            .with_tls_config(self.client_config()?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(connector))
    }
}

/// curl's `-k`: any certificate chain, any name; handshake signatures still verified.
#[derive(Debug)]
struct AcceptAny(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The ring provider, for callers building their own configurations alike.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
