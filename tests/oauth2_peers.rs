//! The OAuth2 provider over real sockets: against the crate's fake identity provider
//! (`testing::idp`, what a real server cannot do on demand) and against Glewlwyd, an OAuth2/OIDC
//! server nobody here wrote (tests/peers/glewlwyd.sh; skipped with a printed reason outside CI
//! when it cannot be had, a failure in CI).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_auth::AuthLayer;
use tower_auth::oauth2::{ClientAuth, JwtAlgorithm, PrivateKey, TokenProvider};
use tower_auth::testing::idp::{self, FakeIdp, OAuthError};

type Http = Client<HttpConnector, Full<Bytes>>;

fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

// ----------------------------------------------------------------------------- fake IdP --

#[tokio::test]
async fn a_revoked_token_is_replaced_and_the_request_sent_again_over_real_sockets() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client("svc", "s3cret");
    let provider = TokenProvider::client_credentials(idp.token_url(), "svc", "s3cret").build(http()).unwrap();
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::oauth2(provider.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<tower_auth::ReplayBody<Full<Bytes>>>());
    let get = || Request::get(idp.resource_url()).body(Full::<Bytes>::default()).unwrap();
    let first = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(first.status(), 200);
    let token = String::from_utf8(first.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(idp.revoke(token.trim_start_matches("Bearer ")), "{token}");
    let second = svc.oneshot(get()).await.unwrap();
    assert_eq!(second.status(), 200, "the 401 was answered with a new token");
    assert_eq!(idp.token_requests(), 2);
    assert_eq!(provider.stats().invalidations(), 1);
    assert_eq!(idp.resource_stats().rejected(), 1);
}

#[tokio::test]
async fn client_secret_basic_with_characters_that_need_encoding_reaches_a_server_that_decodes() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client("my client", "s3:cr+t/%&= x");
    let provider =
        TokenProvider::client_credentials(idp.token_url(), "my client", "s3:cr+t/%&= x").build(http()).unwrap();
    provider.token().await.unwrap();
    assert_eq!(idp.last_request().unwrap().client_auth.method(), "client_secret_basic");
    assert_eq!(idp.token_requests(), 1);
}

#[tokio::test]
async fn private_key_jwt_signs_a_fresh_assertion_per_token_request_rs256_and_es256() {
    for (key, public, alg, jws) in [
        ("tests/data/test-rsa-key.pem", "tests/data/test-rsa-pub.pem", JwtAlgorithm::Rs256, "RS256"),
        ("tests/data/test-ec-key.pem", "tests/data/test-ec-pub.pem", JwtAlgorithm::Es256, "ES256"),
    ] {
        let idp = FakeIdp::start().await.unwrap();
        idp.add_jwt_client("svc-jwt");
        idp.set_lifetime(Duration::from_secs(2));
        let pem = std::fs::read(key).unwrap();
        let provider = TokenProvider::client_credentials(idp.token_url(), "svc-jwt", "")
            .private_key_jwt(PrivateKey::from_pem(&pem, alg).unwrap().key_id("k-1"))
            .issuer(idp.issuer())
            .early_expiry(Duration::ZERO)
            .build(http())
            .unwrap();
        provider.token().await.unwrap();
        idp.wait_for_token_requests(2).await; // replaced in the background before the 2 s expiry
        let mut jtis = Vec::new();
        for request in idp.requests() {
            let idp::ClientAuth::JwtBearer { assertion, header, claims, .. } = request.client_auth else {
                panic!("{alg:?}: not private_key_jwt: {:?}", request.client_auth);
            };
            let header = header.unwrap();
            assert_eq!(header["alg"], jws);
            assert_eq!(header["kid"], "k-1");
            let claims = claims.unwrap();
            assert_eq!(claims["iss"], "svc-jwt");
            assert_eq!(claims["sub"], "svc-jwt");
            assert_eq!(claims["aud"], idp.issuer(), "aud is the issuer (the RFC 7523 update)");
            let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
            assert_eq!(exp - iat, 60);
            jtis.push(claims["jti"].as_str().unwrap().to_owned());
            // The signature verifies with the public key.
            let public = std::fs::read(public).unwrap();
            let decoding = match alg {
                JwtAlgorithm::Rs256 => jsonwebtoken::DecodingKey::from_rsa_pem(&public).unwrap(),
                JwtAlgorithm::Es256 => jsonwebtoken::DecodingKey::from_ec_pem(&public).unwrap(),
            };
            let mut validation = jsonwebtoken::Validation::new(match alg {
                JwtAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
                JwtAlgorithm::Es256 => jsonwebtoken::Algorithm::ES256,
            });
            validation.set_audience(&[idp.issuer()]);
            jsonwebtoken::decode::<serde_json::Value>(assertion.expose(), &decoding, &validation)
                .unwrap_or_else(|e| panic!("{alg:?}: the assertion does not verify: {e}"));
        }
        jtis.dedup();
        assert!(jtis.len() >= 2, "{alg:?}: a fresh jti per token request");
    }
}

#[test]
fn a_private_key_file_that_is_not_a_key_is_a_clear_error() {
    let err =
        PrivateKey::from_pem(&std::fs::read("tests/data/not-a-key.pem").unwrap(), JwtAlgorithm::Rs256).unwrap_err();
    assert!(err.to_string().contains("not a PEM Rs256 private key"), "{err}");
    let ec_as_rsa = PrivateKey::from_pem(&std::fs::read("tests/data/test-ec-key.pem").unwrap(), JwtAlgorithm::Rs256);
    assert!(ec_as_rsa.is_err());
    assert!(
        !format!(
            "{:?}",
            PrivateKey::from_pem(&std::fs::read("tests/data/test-ec-key.pem").unwrap(), JwtAlgorithm::Es256).unwrap()
        )
        .contains("BEGIN")
    );
}

#[tokio::test]
async fn discovery_finds_the_token_endpoint_once_and_checks_the_issuer() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client("svc", "s3cret");
    idp.set_auth_methods(&["client_secret_post"]);
    let provider = TokenProvider::client_credentials(idp.issuer(), "svc", "s3cret").discover(http()).await.unwrap();
    provider.token().await.unwrap();
    assert_eq!(idp.last_request().unwrap().client_auth.method(), "client_secret_post", "chosen from the metadata");
    // Fetched once per issuer and process.
    let again = TokenProvider::client_credentials(idp.issuer(), "svc", "s3cret").discover(http()).await.unwrap();
    again.token().await.unwrap();
    assert_eq!(idp.metadata_requests(), 1);

    // Metadata naming another issuer is refused.
    let other = FakeIdp::start().await.unwrap();
    other.set_metadata_field("issuer", "https://evil.example".into());
    let err = TokenProvider::client_credentials(other.issuer(), "svc", "s3cret").discover(http()).await.unwrap_err();
    assert!(err.to_string().contains("RFC 8414") && err.to_string().contains("evil.example"), "{err}");
}

#[tokio::test]
async fn invalid_client_is_permanent_and_never_shows_the_secret() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client("svc", "right");
    idp.fail_always(idp::Fault::Error(OAuthError::invalid_client().description("unknown client")));
    let provider = TokenProvider::client_credentials(idp.token_url(), "svc", "wrong-s3cret").build(http()).unwrap();
    let err = provider.token().await.unwrap_err();
    let cause = std::error::Error::source(&err).unwrap();
    let token_error = cause.downcast_ref::<tower_auth::oauth2::TokenError>().unwrap();
    assert!(token_error.is_permanent());
    assert_eq!(token_error.oauth2_error(), Some("invalid_client"));
    assert_eq!(token_error.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(cause.to_string().contains("unknown client") && !cause.to_string().contains("s3cret"), "{cause}");
    let err2 = provider.token().await.unwrap_err();
    assert!(err2.is_scheme());
    assert_eq!(idp.token_requests(), 1, "a permanent error is not retried at once");
}

// ----------------------------------------------------------------------------- Glewlwyd --

fn glewlwyd() -> Option<&'static support::peers::Glewlwyd> {
    support::peers::glewlwyd()
}

#[tokio::test]
async fn glewlwyd_client_credentials_with_basic_and_post() {
    let Some(g) = glewlwyd() else { return };
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let provider = TokenProvider::client_credentials(&g.token_url, &g.client_id, &g.client_secret)
            .client_auth(auth)
            .scope(&g.scope)
            .build(http())
            .unwrap();
        let token =
            provider.token().await.unwrap_or_else(|e| panic!("{auth:?}: {e}: {:?}", std::error::Error::source(&e)));
        let value = token.header_value().to_str().unwrap().to_owned();
        let claims = jwt_claims(value.trim_start_matches("Bearer "));
        assert_eq!(claims["iss"], g.issuer.as_str(), "{auth:?}");
        assert!(token.expires_at() > tokio::time::Instant::now() + Duration::from_secs(g.token_lifetime - 2));
        assert_eq!(provider.stats().token_requests(), 1);
    }
}

#[tokio::test]
async fn glewlwyd_does_not_decode_basic_credentials_so_client_secret_post_is_used_instead() {
    let Some(g) = glewlwyd() else { return };
    // Glewlwyd 2.7 compares the Basic id:secret without form-decoding (RFC 6749 §2.3.1 says to
    // encode): a secret with reserved characters is refused under Basic; the provider falls back
    // to client_secret_post, once, and keeps it.
    let provider = TokenProvider::client_credentials(&g.token_url, &g.odd_client_id, &g.odd_client_secret)
        .scope(&g.scope)
        .build(http())
        .unwrap();
    provider.token().await.unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)));
    assert_eq!(provider.stats().token_requests(), 1, "one refresh cycle");
    assert_eq!(provider.stats().failures(), 0);
}

#[tokio::test]
async fn glewlwyd_wrong_secret_is_a_permanent_error() {
    let Some(g) = glewlwyd() else { return };
    let provider = TokenProvider::client_credentials(&g.token_url, &g.client_id, "not-the-secret")
        .scope(&g.scope)
        .build(http())
        .unwrap();
    let err = provider.token().await.unwrap_err();
    let cause = std::error::Error::source(&err).unwrap();
    let token_error = cause.downcast_ref::<tower_auth::oauth2::TokenError>().unwrap();
    assert!(token_error.is_permanent(), "{token_error}");
    assert_eq!(token_error.status(), Some(StatusCode::FORBIDDEN), "Glewlwyd answers a bare 403");
    assert!(!cause.to_string().contains("not-the-secret"));
}

#[tokio::test]
async fn glewlwyd_password_grant_then_refresh_in_the_background() {
    let Some(g) = glewlwyd() else { return };
    // The short-lived instance: tokens last 5 s; refreshed before they expire, with the refresh
    // token from the password grant.
    let provider = TokenProvider::password(&g.short_token_url, &g.client_id, &g.username, &g.password)
        .client_secret(&g.client_secret)
        .scope(&g.scope)
        .early_expiry(Duration::from_secs(1))
        .build(http())
        .unwrap();
    let first = provider.token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(g.short_token_lifetime + 1)).await;
    let second = provider.current().expect("a usable token, refreshed in the background");
    assert_ne!(first.header_value(), second.header_value());
    assert!(provider.stats().token_requests() >= 2, "{:?}", provider.stats());
    assert_eq!(provider.stats().failures(), 0);
}

#[tokio::test]
async fn glewlwyd_discovery() {
    let Some(g) = glewlwyd() else { return };
    let provider = TokenProvider::client_credentials(&g.issuer, &g.client_id, &g.client_secret)
        .scope(&g.scope)
        .discover(http())
        .await
        .unwrap();
    provider.token().await.unwrap();
}

// ------------------------------------------------------------------------- device code --

#[tokio::test]
async fn device_code_the_user_approves_while_the_provider_polls() {
    use std::sync::{Arc, Mutex};
    let idp = FakeIdp::start().await.unwrap();
    idp.set_device_interval(1);
    let shown = Arc::new(Mutex::new(None));
    let seen = shown.clone();
    let approver = idp.handle();
    let provider = TokenProvider::device_code(idp.device_authorization_url(), idp.token_url(), "tv-app")
        .scope("orders:read")
        .device_prompt(move |i| {
            *seen.lock().unwrap() = Some(i.clone());
            // The user, on another device, approves after a moment.
            let (approver, code) = (approver.clone(), i.user_code.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                assert!(approver.approve_device(&code));
            });
        })
        .build(http())
        .unwrap();
    let token = provider.token().await.unwrap();
    assert!(token.header_value().to_str().unwrap().starts_with("Bearer "));
    let shown = shown.lock().unwrap().clone().expect("the user was shown the URL and code");
    assert!(shown.verification_uri.starts_with("http://127.0.0.1:"), "{shown:?}");
    assert!(!shown.user_code.is_empty());
    let device_polls = idp.requests().iter().filter(|r| r.grant == idp::Grant::DeviceCode).count();
    assert!(device_polls >= 2, "polled until approved: {device_polls}");
}

#[tokio::test]
async fn device_code_denied_is_a_typed_error_and_not_retried_by_itself() {
    let idp = FakeIdp::start().await.unwrap();
    idp.set_device_interval(1);
    let denier = idp.handle();
    let provider = TokenProvider::device_code(idp.device_authorization_url(), idp.token_url(), "tv-app")
        .device_prompt(move |i| {
            let (denier, code) = (denier.clone(), i.user_code.clone());
            tokio::spawn(async move {
                assert!(denier.deny_device(&code));
            });
        })
        .build(http())
        .unwrap();
    let err = provider.token().await.unwrap_err();
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("refused the device"), "{cause}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(idp.device_authorizations().len(), 1, "no new prompt by itself");
}

#[tokio::test]
async fn device_code_polling_backs_off_after_a_time_out_and_a_server_error_and_goes_on() {
    let idp = FakeIdp::start().await.unwrap();
    idp.set_device_interval(1);
    let approver = idp.handle();
    let provider = TokenProvider::device_code(idp.device_authorization_url(), idp.token_url(), "tv-app")
        .timeout(Duration::from_millis(300))
        .device_prompt(move |i| {
            // The user approves at once; the token endpoint is what fails: the first poll never
            // gets an answer (a connection time-out), the second gets a 500 page.
            assert!(approver.approve_device(&i.user_code));
            approver.fail_next(1, idp::Fault::Hang);
            approver.fail_next(1, idp::Fault::ServerError);
        })
        .build(http())
        .unwrap();
    let started = std::time::Instant::now();
    let token = provider.token().await.expect("polling went on after the failures");
    let elapsed = started.elapsed();
    assert!(token.header_value().to_str().unwrap().starts_with("Bearer "));
    let polls = idp.requests().iter().filter(|r| r.grant == idp::Grant::DeviceCode).count();
    assert_eq!(polls, 3, "a hung poll, a failed poll, then the token");
    // Backed off: 0.3 s (time-out) + 2 s + 4 s, where the server's interval alone would be 2.3 s.
    assert!(elapsed >= Duration::from_secs(6), "the interval doubled after each failure: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    idp.release_hung();
}

/// A store that hands out an expired access token with a refresh token Glewlwyd does not know
/// (a revoked one), and keeps what the provider saves.
struct RevokedRefreshToken {
    saved: std::sync::Mutex<Option<tower_auth::oauth2::StoredToken>>,
}

impl tower_auth::oauth2::TokenStore for RevokedRefreshToken {
    fn load<'a>(
        &'a self,
        _: &'a tower_auth::oauth2::CacheKey,
    ) -> tower_auth::oauth2::StoreFuture<'a, Option<tower_auth::oauth2::StoredToken>> {
        let stored = self.saved.lock().unwrap().clone().unwrap_or(tower_auth::oauth2::StoredToken {
            access_token: "expired".into(),
            expires_at: std::time::SystemTime::now() - Duration::from_secs(60),
            refresh_token: Some("a-refresh-token-glewlwyd-does-not-know".into()),
        });
        Box::pin(std::future::ready(Ok(Some(stored))))
    }

    fn save<'a>(
        &'a self,
        _: &'a tower_auth::oauth2::CacheKey,
        token: &'a tower_auth::oauth2::StoredToken,
    ) -> tower_auth::oauth2::StoreFuture<'a, ()> {
        *self.saved.lock().unwrap() = Some(token.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

#[tokio::test]
async fn glewlwyd_refuses_an_unknown_refresh_token_with_a_bare_400_and_the_password_grant_logs_in_again() {
    let Some(g) = glewlwyd() else { return };
    // Glewlwyd answers an unknown (revoked) refresh token with 400 and no body, not RFC 6749's
    // invalid_grant: the provider takes that as a refused refresh token too and logs in again
    // with its grant, rather than failing (or, for the interactive grants, never reopening the
    // browser).
    let provider = TokenProvider::password(&g.token_url, &g.client_id, &g.username, &g.password)
        .client_secret(&g.client_secret)
        .scope(&g.scope)
        .store(RevokedRefreshToken { saved: Default::default() })
        .build(http())
        .unwrap();
    let token = provider.token().await.unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)));
    let claims = jwt_claims(token.header_value().to_str().unwrap().trim_start_matches("Bearer "));
    assert_eq!(claims["iss"], g.issuer.as_str());
    let stats = provider.stats();
    assert_eq!((stats.token_requests(), stats.failures()), (2, 0), "the refresh, then the password grant: {stats:?}");
}
