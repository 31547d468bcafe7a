//! Tokens without any server, for your tests (the counterpart of requests_auth's `token_mock`,
//! `token_cache_mock` and `create_token` fixtures).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_auth::testing::token::{TokenMock, create_token};
//!
//! // An OAuth2 provider whose "token endpoint" answers a fixed token.
//! let provider = TokenMock::fixed("t0ken").provider();
//! assert_eq!(provider.token().await?.header_value(), "Bearer t0ken");
//!
//! // A JWT that expires in an hour, for code that reads `exp`.
//! let jwt = create_token(Duration::from_secs(3600));
//! assert_eq!(jwt.split('.').count(), 3);
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower_service::Service;

use crate::oauth2::TokenProvider;

/// The key [`create_token`] signs with (HS256): a test key, public on purpose.
pub const TEST_JWT_KEY: &[u8] = b"tower-auth test key, not a secret";

/// A JWT (HS256, [`TEST_JWT_KEY`]) with `sub`, `iat` and an `exp` `lifetime` from now.
pub fn create_token(lifetime: Duration) -> String {
    let now =
        crate::oauth2::wall_now_for_tests().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = serde_json::json!({ "sub": "test-user", "iat": now, "exp": now + lifetime.as_secs() });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_JWT_KEY),
    )
    .unwrap_or_default()
}

type MakeToken = dyn Fn(u64) -> String + Send + Sync;

/// A token endpoint without a server: a tower service to give a [`TokenProvider`] as its
/// transport, answering every token request with a token of your choice.
#[derive(Clone)]
pub struct TokenMock {
    make: Arc<MakeToken>,
    lifetime: Duration,
    requests: Arc<AtomicU64>,
}

impl fmt::Debug for TokenMock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenMock").field("lifetime", &self.lifetime).field("requests", &self.requests()).finish()
    }
}

impl TokenMock {
    /// Always the same token.
    pub fn fixed(token: impl Into<String>) -> Self {
        let token = token.into();
        TokenMock::custom(move |_| token.clone())
    }

    /// The token `make(n)` returns for the `n`th token request (from 1).
    pub fn custom(make: impl Fn(u64) -> String + Send + Sync + 'static) -> Self {
        TokenMock { make: Arc::new(make), lifetime: Duration::from_secs(3600), requests: Arc::default() }
    }

    /// The `expires_in` it answers (default one hour).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Token requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// A client credentials provider over this mock.
    pub fn provider(&self) -> TokenProvider {
        match TokenProvider::client_credentials("http://token-mock.invalid/token", "test-client", "test-secret")
            .build(self.clone())
        {
            Ok(provider) => provider,
            Err(e) => unreachable!("a fixed, valid configuration: {e}"),
        }
    }
}

impl Service<Request<Full<Bytes>>> for TokenMock {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let body = serde_json::json!({
            "access_token": (self.make)(n),
            "token_type": "Bearer",
            "expires_in": self.lifetime.as_secs(),
        })
        .to_string();
        let res = Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(body)));
        Box::pin(std::future::ready(Ok(res.unwrap_or_default())))
    }
}
