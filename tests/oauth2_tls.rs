//! The OAuth2 token endpoint over TLS (issue 8, §3): the crate does no TLS itself, the client the
//! user gives does, and this shows that it works with a real rustls client.
//!
//! - A CA and a server certificate for `localhost` and `127.0.0.1` are made at test time (rcgen);
//!   nothing is read from disk and nothing expires between runs.
//! - The token endpoint is the crate's `FakeIdp` (plain HTTP) behind a small TLS-terminating proxy
//!   (tokio-rustls, bytes copied both ways), so the real token logic runs behind real TLS.
//! - The client is hyper-util with hyper-rustls, `https_only`, trusting only the generated CA.
//!   Through it: a token is obtained with `client_secret_basic`, and a request through
//!   `AuthLayer::oauth2` reaches the resource endpoint over the same TLS proxy.
//! - A client that does not trust the CA gets a typed error (`Error::is_scheme`, a `TokenError`
//!   naming the transport failure); an `https_only` client refuses a plain `http://` token URL.
//!   No error text holds the client secret.
//!
//! Everything runs on 127.0.0.1 with the `ring` provider, each test bounded by a timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::{ServiceBuilder, ServiceExt};
use tower_auth::AuthLayer;
use tower_auth::oauth2::{TokenError, TokenProvider};
use tower_auth::testing::idp::FakeIdp;

/// A secret that would stand out in any error text.
const SECRET: &str = "tls-s3cret-do-not-print";

/// Every test's bound: the handshakes and token requests are local and take milliseconds.
const BOUND: Duration = Duration::from_secs(10);

type Https<B> = Client<HttpsConnector<HttpConnector>, B>;

/// A CA made at test time and a server certificate it signed for `localhost` and `127.0.0.1`.
struct Pki {
    ca: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

fn ca(name: &str) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.der().clone(), Issuer::new(params, key))
}

fn pki() -> Pki {
    let (ca, issuer) = ca("tower-auth test CA");
    // Strings that parse as IP addresses become IP SANs, the others DNS names.
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca: ca.clone(),
        server_chain: vec![cert.der().clone(), ca],
        server_key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS-terminating proxy on 127.0.0.1:0 in front of `upstream` (plain TCP): each accepted
/// connection is handshaken, then bytes are copied both ways. Ends with the test's runtime.
async fn tls_proxy(pki: &Pki, upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.server_chain.clone(), PrivateKeyDer::Pkcs8(pki.server_key.clone_key()))
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate aborts the handshake: nothing to serve.
                let Ok(Ok(mut tls)) = tokio::time::timeout(BOUND, acceptor.accept(tcp)).await else { return };
                let Ok(mut plain) = TcpStream::connect(upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// A hyper-util client over rustls that trusts only `roots` and refuses plain `http://`.
fn https_client<B>(roots: &[CertificateDer<'static>]) -> Https<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The error and everything under it, as text: none of it may hold the secret.
fn all_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{err} | {err:?}");
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(&format!(" | {e} | {e:?}"));
        source = e.source();
    }
    text
}

#[tokio::test]
async fn a_token_is_obtained_over_tls_and_the_request_carries_it_over_tls() {
    tokio::time::timeout(BOUND, async {
        let pki = pki();
        let idp = FakeIdp::start().await.unwrap();
        idp.add_client("svc-tls", SECRET);
        let proxy = tls_proxy(&pki, idp.addr()).await;

        // The token URL by IP address (the certificate's IP SAN).
        let token_url = format!("https://127.0.0.1:{}/token", proxy.port());
        let provider = TokenProvider::client_credentials(&token_url, "svc-tls", SECRET)
            .timeout(Duration::from_secs(5))
            .wait_timeout(Duration::from_secs(5))
            .build(https_client::<Full<Bytes>>(std::slice::from_ref(&pki.ca)))
            .unwrap();
        let token = provider.token().await.unwrap();
        assert_eq!(idp.token_requests(), 1);
        let request = idp.last_request().unwrap();
        assert_eq!(request.client_auth.method(), "client_secret_basic");
        assert_eq!(request.client_auth.client_id(), Some("svc-tls"));

        // The resource by name (the certificate's DNS SAN), through the auth layer over TLS.
        let svc = ServiceBuilder::new().layer(AuthLayer::oauth2(provider.clone())).service(https_client::<
            tower_auth::ReplayBody<Full<Bytes>>,
        >(
            std::slice::from_ref(&pki.ca),
        ));
        let resource = format!("https://localhost:{}/resource", proxy.port());
        let res = svc.oneshot(Request::get(&resource).body(Full::<Bytes>::default()).unwrap()).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let sent = format!("Bearer {}", String::from_utf8(body.to_vec()).unwrap());
        assert_eq!(sent.as_bytes(), token.header_value().as_bytes(), "the resource saw the provider's token");
        assert_eq!(idp.resource_stats().rejected(), 0);
        assert_eq!(idp.token_requests(), 1, "the layer used the token already fetched");
        assert_eq!(provider.stats().token_requests(), 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_gets_a_typed_transport_error_without_the_secret() {
    tokio::time::timeout(BOUND, async {
        let pki = pki();
        let idp = FakeIdp::start().await.unwrap();
        idp.add_client("svc-tls", SECRET);
        let proxy = tls_proxy(&pki, idp.addr()).await;

        // Trusts another CA made at test time (and no public roots), not the server's.
        let (other_ca, _) = ca("some other CA");
        let untrusting = https_client::<Full<Bytes>>(&[other_ca]);
        let token_url = format!("https://localhost:{}/token", proxy.port());
        let provider = TokenProvider::client_credentials(&token_url, "svc-tls", SECRET)
            .timeout(Duration::from_secs(5))
            .wait_timeout(Duration::from_secs(5))
            .build(untrusting.clone())
            .unwrap();
        let err = provider.token().await.unwrap_err();
        assert!(err.is_scheme(), "{err:?}");
        assert!(!err.is_timeout(), "the failure is reported at once, not after the wait timeout: {err:?}");
        let text = all_text(&err);
        let source = std::error::Error::source(&err).expect("a source");
        let token_error = source.downcast_ref::<TokenError>().expect("a TokenError source");
        assert!(!token_error.is_permanent(), "a transport failure is retried: {token_error}");
        assert_eq!(token_error.status(), None, "no HTTP answer: {token_error}");
        let shown = token_error.to_string();
        assert!(shown.contains("the token request failed"), "{shown}");
        // The transport error's causes are kept: the certificate is named.
        assert!(shown.contains("invalid peer certificate") && shown.contains("UnknownIssuer"), "{shown}");
        assert!(!text.contains(SECRET), "the secret leaked: {text}");
        assert_eq!(idp.token_requests(), 0, "nothing reached the token endpoint");
        assert!(provider.current().is_none());
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn an_https_only_client_refuses_a_plain_http_token_url() {
    tokio::time::timeout(BOUND, async {
        let pki = pki();
        let idp = FakeIdp::start().await.unwrap();
        idp.add_client("svc-tls", SECRET);
        // The fake IdP's own URL: plain HTTP, which the client refuses before sending anything.
        let provider = TokenProvider::client_credentials(idp.token_url(), "svc-tls", SECRET)
            .timeout(Duration::from_secs(5))
            .wait_timeout(Duration::from_secs(5))
            .build(https_client::<Full<Bytes>>(&[pki.ca]))
            .unwrap();
        let err = provider.token().await.unwrap_err();
        assert!(err.is_scheme(), "{err:?}");
        let token_error =
            std::error::Error::source(&err).and_then(|e| e.downcast_ref::<TokenError>()).expect("a TokenError");
        assert!(token_error.to_string().contains("the token request failed"), "{token_error}");
        assert!(!all_text(&err).contains(SECRET));
        assert_eq!(idp.token_requests(), 0, "the secret never went out in clear");
    })
    .await
    .expect("bounded");
}
