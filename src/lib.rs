//! Authentication for outbound HTTP requests, as [tower](https://docs.rs/tower) layers.
//!
//! Put an [`AuthLayer`] in front of any client service that takes `http::Request`s (a
//! hyper-util client, a tonic `Channel`, an axum handler's outbound client) and every request
//! leaves with credentials:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_auth::AuthLayer;
//! # let client = tower::service_fn(|req: http::Request<String>| async move {
//! #     assert_eq!(req.headers()["authorization"], "Bearer t0ken");
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! # });
//!
//! let svc = ServiceBuilder::new().layer(AuthLayer::bearer("t0ken")?).service(client);
//! let res = svc.oneshot(http::Request::get("https://api.example/me").body(String::new())?).await?;
//! # Ok(()) }
//! ```
//!
//! # Body type and error type of a layered service
//!
//! | the scheme… | the wrapped service receives | the layered service's error | why |
//! |---|---|---|---|
//! | never retries (Basic, Bearer, API keys, headers, closures, netrc, a router of those) | the caller's body `B`, unchanged | the wrapped service's own | nothing to resend; fits tonic's `Channel`, whose body type is fixed |
//! | answers challenges (Digest, Guess, proxy Digest, a router with such a route) | [`ReplayBody<B>`](ReplayBody) | the wrapped service's own | the body is kept (up to [`AuthLayer::body_limit`]) to be sent again after a `401`/`407` |
//! | runs an httpx-style flow (reads response bodies, sends requests of its own: [`engine::Flow`]) | [`ReplayBody<B>`](ReplayBody) | the caller gets [`engine::ResponseBody<R>`] | the bytes the scheme read go back to the caller, then whatever was not read |
//! | can fail (a token fetch; a router, a [`BoxAuthenticator`]) | as above | [`Error`] (the wrapped service's error is its [`source`](std::error::Error::source)) | a request never leaves without its credentials: it fails instead |
//!
//! So a hyper-util client under Digest is built for `ReplayBody`:
//! `Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>()`.
//!
//! ## When the client's body type is wrong
//!
//! Moving a client from Bearer to Digest (or to a router with a Digest route) without changing
//! its body type gives
//!
//! ```text
//! error[E0599]: the method `oneshot` exists for struct `Auth<Client<HttpConnector, Full<Bytes>>, Digest>`,
//!               but its trait bounds were not satisfied
//! ```
//!
//! The wrapped client must take `ReplayBody<Full<Bytes>>`: build it with
//! `build_http::<ReplayBody<Full<Bytes>>>()`. (A `#[diagnostic::on_unimplemented]` message was
//! tried: rustc reports this mistake as E0599 on the method call, where the request body type
//! is not known yet, and shows no custom message there.)
//!
//! # Schemes
//!
//! | scheme | type | constructor | status |
//! |---|---|---|---|
//! | Basic (RFC 7617) | [`Basic`] | [`AuthLayer::basic`], [`AuthLayer::proxy_basic`] | done |
//! | Bearer (RFC 6750) | [`Bearer`] | [`AuthLayer::bearer`] | done |
//! | API key, header or query | [`ApiKey`] | [`AuthLayer::api_key`], [`AuthLayer::api_key_query`] | done |
//! | any static header | [`HeaderCredential`] | [`AuthLayer::new`] | done |
//! | a closure | [`FnAuth`] | [`AuthLayer::from_fn`] | done |
//! | your own credential (a few lines) | [`Credential`] | [`AuthLayer::new`] | done |
//! | all of / first of | [`AllOf`], [`FirstOf`] | [`AuthLayer::new`] | done |
//! | your own, with challenges, waits, multi-leg flows or observed responses | [`Authenticator`] | [`AuthLayer::new`] | done |
//! | Digest (RFC 7616), shared nonce reuse | [`Digest`] | [`AuthLayer::digest`] | done |
//! | Guess (Digest, else Basic) | [`Digest::guess`] | [`AuthLayer::guess`] | done |
//! | proxy Basic / Digest / Guess (`407`) | [`Basic::proxy`], [`Digest::proxy`] | [`AuthLayer::proxy_digest`], … | done |
//! | HTTPS through an authenticating proxy (`CONNECT` answering `407`), proxies from the environment | `connect::ProxyConnector` | `connect::Proxies::from_env` (feature `connector`) | done |
//! | TLS (rustls, HTTP/2 by ALPN) | `connect::tls::TlsConfig` | feature `tls` | done |
//! | routing by origin (scheme, host, port) | [`route::Router`] | [`AuthLayer::route`] | done |
//! | netrc (opt-in) | [`NetrcAuth`] | [`AuthLayer::netrc`] | done |
//! | credentials in the URL (opt-in) | [`UrlCredentials`] | [`AuthLayer::url_credentials`] | done |
//! | any scheme behind one type | [`BoxAuthenticator`] | [`AuthLayer::new`] | done |
//! | OAuth 1.0a request signing (RFC 5849): HMAC-SHA1/256/512, RSA-SHA1/256/512, PLAINTEXT, body hash; header, query or form body | [`oauth1::OAuth1`], [`oauth1::OAuth1Session`] (three-legged dance) | [`AuthLayer::new`] | done (feature `oauth1`) |
//! | OAuth2 for services: client credentials, password, refresh; a token refreshed in the background, shared lock-free | [`oauth2::OAuth2`], [`oauth2::TokenProvider`] | [`AuthLayer::oauth2`] | done |
//! | OAuth2 for people: authorization code with PKCE, implicit, device code; presets | [`oauth2::TokenProvider`] | [`AuthLayer::oauth2`] | done (feature `oauth2-browser` for the browser flows) |
//! | NTLM and Negotiate (Kerberos, SPNEGO), bound to the connection, to origins and proxies | `ntlm::WindowsAuth` (a client owning its connections), `ntlm::ConnectAuth` | `ntlm::WindowsAuth::ntlm`, `ntlm::WindowsAuth::negotiate` | done (feature `ntlm`) |
//!
//! # How it works
//!
//! One engine, [`Auth`], runs every scheme. A scheme is an [`Authenticator`]: it adds
//! credentials to each request and, if it answers challenges, looks at the response and may
//! ask for one more exchange. Schemes that never retry cost one header insert per request and
//! leave the request body type alone; schemes that retry get the body wrapped in a
//! [`ReplayBody`] that buffers it (up to [`AuthLayer::body_limit`]) so it can be sent again.
//!
//! # Security
//!
//! - Header values built from credentials are marked sensitive, and every type holding a
//!   secret prints it as `[redacted]` in `Debug`; errors never contain one.
//! - A request that already carries the header a scheme would set is left alone: the caller's
//!   explicit credentials win.
//! - Basic over plain `http://` logs a warning (once per scheme).
//! - A layer built with [`AuthLayer::basic`] and friends authenticates every request it sees.
//!   A service that talks to more than one host binds credentials to their origin with
//!   [`AuthLayer::route`]: a request to an origin nobody configured gets nothing.
//! - Redirects: put tower-http's `FollowRedirectLayer` *outside* the router, so every hop is
//!   routed anew and credentials go only to their own origin (the [`route`] module shows the
//!   whole stack and what happens with the follower inside).
//! - `Proxy-Authorization` is added to `http://` requests only (absolute form, to the proxy);
//!   an `https://` request goes through a `CONNECT` tunnel and carries no proxy credentials: the
//!   connector (`connect::ProxyConnector`) sends them on the `CONNECT` only.
//! - Challenge answers: at most one per challenge plus one for `stale=true`, never more than
//!   [`MAX_EXCHANGES`] exchanges per request.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod api_key;
mod authenticator;
mod basic;
mod bearer;
pub mod challenge;
pub mod combine;
#[cfg(feature = "connector")]
#[cfg_attr(docsrs, doc(cfg(feature = "connector")))]
pub mod connect;
/// The first name of [`connect`], kept so that `tower_auth::connector::ForwardProxy` still works.
#[cfg(feature = "connector")]
#[cfg_attr(docsrs, doc(cfg(feature = "connector")))]
pub use connect as connector;
#[cfg(feature = "digest")]
#[cfg_attr(docsrs, doc(cfg(feature = "digest")))]
pub mod digest;
pub mod engine;
mod header;
pub mod netrc;
#[cfg(feature = "ntlm")]
#[cfg_attr(docsrs, doc(cfg(feature = "ntlm")))]
pub mod ntlm;
#[cfg(feature = "oauth1")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth1")))]
pub mod oauth1;
#[cfg(feature = "oauth2")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth2")))]
pub mod oauth2;
pub mod route;
mod secret;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod url_credentials;

// Short crate-internal paths to the engine's pieces.
pub(crate) use engine as layer;
pub(crate) use engine::error;

pub use api_key::{ApiKey, DEFAULT_API_KEY_HEADER, DEFAULT_API_KEY_PARAM};
pub use authenticator::{
    Action, AuthRequest, Authenticator, Authorize, BodyView, Credential, FnAuth, NoWait, credentials_rejected,
};
pub use basic::Basic;
pub use bearer::Bearer;
pub use combine::{AllOf, BoxAuthenticator, FirstOf};
#[cfg(feature = "digest")]
pub use digest::Digest;
pub use engine::{
    Auth, AuthLayer, BoxError, ConfigError, DEFAULT_BODY_LIMIT, Error, MAX_EXCHANGES, Once, Replay, ReplayBody,
};
pub use header::HeaderCredential;
pub use netrc::NetrcAuth;
pub use secret::{Secret, sensitive_header_value};
pub use url_credentials::UrlCredentials;

/// The README's Rust snippets, compiled and run as doctests (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
