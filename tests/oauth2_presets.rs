//! Provider presets: the URLs and token request bodies they produce (Okta, Microsoft Entra ID,
//! WakaTime), checked with a recording token transport and a browser that only records.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower_auth::oauth2::presets::{EntraId, Okta, WakaTime};
use tower_auth::testing::BrowserMock;

/// One token request: its URI, its Authorization header, its body.
type Recorded = (String, Option<String>, String);

/// Records each token request and answers a token.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Recorded>>>);

impl tower::Service<Request<Full<Bytes>>> for Recorder {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let log = self.0.clone();
        Box::pin(async move {
            let uri = req.uri().to_string();
            let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
            let body = String::from_utf8(req.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
            log.lock().unwrap().push((uri, auth, body));
            let token = r#"{"access_token":"at","token_type":"Bearer","expires_in":3600}"#;
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(token)))
                .unwrap())
        })
    }
}

#[tokio::test]
async fn okta_endpoints_and_bodies() {
    let okta = Okta::new("dev-123.okta.com");
    assert_eq!(okta.authorize_url(), "https://dev-123.okta.com/oauth2/default/v1/authorize");
    assert_eq!(okta.issuer(), "https://dev-123.okta.com/oauth2/default");
    let custom = Okta::new("https://dev-123.okta.com/").authorization_server("aus9");
    assert_eq!(custom.token_url(), "https://dev-123.okta.com/oauth2/aus9/v1/token");

    let rec = Recorder::default();
    okta.client_credentials("svc", "s3cret", "orders:read").build(rec.clone()).unwrap().token().await.unwrap();
    okta.password("app", "alice", "pw").build(rec.clone()).unwrap().token().await.unwrap();
    let log = rec.0.lock().unwrap().clone();
    assert_eq!(log[0].0, "https://dev-123.okta.com/oauth2/default/v1/token");
    assert!(log[0].1.as_deref().unwrap().starts_with("Basic "));
    assert!(
        log[0].2.contains("grant_type=client_credentials") && log[0].2.contains("scope=orders%3Aread"),
        "{}",
        log[0].2
    );
    assert!(log[1].2.contains("grant_type=password") && log[1].2.contains("scope=openid"), "{}", log[1].2);
}

#[tokio::test]
async fn entra_id_endpoints_and_bodies() {
    let entra = EntraId::new("contoso.onmicrosoft.com");
    assert_eq!(entra.token_url(), "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
    assert_eq!(entra.issuer(), "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0");
    let rec = Recorder::default();
    entra
        .client_credentials("app-id", "s3cret", "https://graph.microsoft.com/.default")
        .build(rec.clone())
        .unwrap()
        .token()
        .await
        .unwrap();
    let (uri, auth, body) = rec.0.lock().unwrap()[0].clone();
    assert_eq!(uri, entra.token_url());
    assert!(auth.is_none(), "Entra gets the secret in the body");
    assert!(
        body.contains("client_secret=s3cret") && body.contains("scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"),
        "{body}"
    );
}

#[tokio::test]
async fn authorization_code_presets_build_their_providers_authorization_urls() {
    for (builder, prefix, scope) in [
        (
            Okta::new("dev-123.okta.com").authorization_code("app"),
            "https://dev-123.okta.com/oauth2/default/v1/authorize?",
            "openid",
        ),
        (
            EntraId::new("common").authorization_code("app"),
            "https://login.microsoftonline.com/common/oauth2/v2.0/authorize?",
            "openid+offline_access",
        ),
        (
            WakaTime::authorization_code("app", "s3cret", &["email", "read_stats"]),
            "https://wakatime.com/oauth/authorize?",
            "email%2Cread_stats",
        ),
    ] {
        let browser = BrowserMock::never_returns();
        let p = builder
            .browser(browser.clone())
            .redirect_port(0)
            .authorization_timeout(Duration::from_millis(200))
            .build(Recorder::default())
            .unwrap();
        assert!(p.token().await.is_err(), "nobody comes back");
        let url = browser.opened()[0].clone();
        assert!(url.starts_with(prefix), "{url}");
        assert!(url.contains(&format!("scope={scope}&")), "{url}");
        assert!(url.contains("code_challenge_method=S256") && !url.contains("s3cret"), "{url}");
    }
}

#[tokio::test]
async fn implicit_presets_ask_for_a_token_or_an_id_token_with_a_nonce() {
    let okta = Okta::new("dev-123.okta.com");
    let entra = EntraId::new("common");
    for (builder, prefix, response_type, scope) in [
        (
            okta.implicit("app"),
            "https://dev-123.okta.com/oauth2/default/v1/authorize?",
            "token",
            "openid+profile+email",
        ),
        (
            okta.implicit_id_token("app"),
            "https://dev-123.okta.com/oauth2/default/v1/authorize?",
            "id_token",
            "openid+profile+email",
        ),
        (entra.implicit("app"), "https://login.microsoftonline.com/common/oauth2/v2.0/authorize?", "token", "openid"),
        (
            entra.implicit_id_token("app"),
            "https://login.microsoftonline.com/common/oauth2/v2.0/authorize?",
            "id_token",
            "openid",
        ),
    ] {
        let browser = BrowserMock::never_returns();
        let p = builder
            .browser(browser.clone())
            .redirect_port(0)
            .authorization_timeout(Duration::from_millis(200))
            .build(Recorder::default())
            .unwrap();
        assert!(p.token().await.is_err(), "nobody comes back");
        let url = browser.opened()[0].clone();
        assert!(url.starts_with(prefix), "{url}");
        assert!(url.contains(&format!("response_type={response_type}&")), "{url}");
        assert!(url.contains(&format!("scope={scope}&")), "{url}");
        assert!(url.contains("nonce=") && url.contains("client_id=app"), "{url}");
    }
}
