//! Tests of the fake identity provider itself (`tower_auth::testing::idp`), over real HTTP, so
//! that the OAuth2 tests built on it can trust it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower_auth::oauth2::Browser;
use tower_auth::testing::idp::{
    AuthorizeOutcome, ClientAuth, ExpiresIn, FakeIdp, Fault, Grant, JWT_BEARER_ASSERTION_TYPE, OAuthError,
};
use tower_auth::testing::{BrowserMock, ScriptedReply, TestServer};

/// The special-characters client of RFC 6749 §2.3.1 tests.
const ID: &str = "my client";
const SECRET: &str = "s3:cr+t/%&= x";
/// `ID` and `SECRET` form-urlencoded, written out by hand (not by the code under test).
const ID_FORM: &str = "my+client";
const SECRET_FORM: &str = "s3%3Acr%2Bt%2F%25%26%3D+x";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(req: Request<Full<Bytes>>) -> Answer {
    let res = client().request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Answer { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

/// `POST /token` with a form body and, optionally, an `Authorization` header.
async fn token(idp: &FakeIdp, form: &str, authorization: Option<&str>) -> Answer {
    let mut req =
        Request::post(idp.token_url()).header("content-type", "application/x-www-form-urlencoded; charset=utf-8");
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    send(req.body(Full::from(form.to_owned())).unwrap()).await
}

fn basic(id_form: &str, secret_form: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id_form}:{secret_form}")))
}

async fn resource(idp: &FakeIdp, method: &str, bearer: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(idp.resource_url());
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    send(req.body(Full::default()).unwrap()).await
}

async fn get(url: &str) -> Answer {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

const CC: &str = "grant_type=client_credentials";

fn jwt(header: &Value, claims: &Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.c2lnbmF0dXJl", b64(header), b64(claims))
}

// ---- metadata ----

#[tokio::test]
async fn metadata_and_discovery_documents() {
    let idp = FakeIdp::start().await.unwrap();
    assert!(idp.issuer().starts_with("http://127.0.0.1:"));
    assert_eq!(idp.token_url(), format!("{}/token", idp.issuer()));
    for url in [idp.metadata_url(), idp.openid_configuration_url()] {
        let answer = get(&url).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let doc = answer.json();
        assert_eq!(doc["issuer"], idp.issuer());
        assert_eq!(doc["token_endpoint"], idp.token_url());
        assert_eq!(
            doc["token_endpoint_auth_methods_supported"],
            json!(["client_secret_basic", "client_secret_post", "private_key_jwt"])
        );
        assert_eq!(
            doc["grant_types_supported"],
            json!([
                "client_credentials",
                "password",
                "refresh_token",
                "authorization_code",
                "urn:ietf:params:oauth:grant-type:device_code"
            ])
        );
        assert_eq!(doc["authorization_endpoint"], idp.authorize_url());
        assert_eq!(doc["device_authorization_endpoint"], idp.device_authorization_url());
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256", "plain"]));
        assert!(doc.get("authorization_response_iss_parameter_supported").is_none());
        assert_eq!(doc["jwks_uri"], idp.url("/jwks"));
    }
    assert_eq!(get(&idp.url("/jwks")).await.json(), json!({"keys": []}));
    assert_eq!(idp.metadata_requests(), 2);

    idp.set_auth_methods(&["client_secret_post"]);
    idp.set_allowed_scopes(Some(&["read", "write"]));
    idp.set_metadata_field("issuer", json!("https://elsewhere.example"));
    idp.set_metadata_field("jwks_uri", Value::Null);
    let doc = get(&idp.metadata_url()).await.json();
    assert_eq!(doc["token_endpoint_auth_methods_supported"], json!(["client_secret_post"]));
    assert_eq!(doc["scopes_supported"], json!(["read", "write"]));
    assert_eq!(doc["issuer"], "https://elsewhere.example");
    assert!(doc.get("jwks_uri").is_none());
    assert_eq!(idp.metadata_requests(), 3);
    assert_eq!(idp.token_requests(), 0);
}

// ---- client authentication ----

#[tokio::test]
async fn client_secret_basic_decodes_form_urlencoded_id_and_secret() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client(ID, SECRET);

    let answer = token(&idp, CC, Some(&basic(ID_FORM, SECRET_FORM))).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["access_token"], "at-1");
    let record = idp.last_request().unwrap();
    assert!(matches!(&record.client_auth, ClientAuth::Basic { client_id } if client_id == ID));
    assert_eq!(record.client_auth.method(), "client_secret_basic");

    // The same characters not form-urlencoded first: `+` is a space, `%&=` is not an escape.
    let raw = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{ID}:{SECRET}")));
    let answer = token(&idp, CC, Some(&raw)).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.error(), "invalid_client");
}

#[tokio::test]
async fn wrong_basic_secret_is_401_invalid_client_with_a_basic_challenge() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client(ID, SECRET);
    for authorization in [basic(ID_FORM, "wrong"), basic("someone+else", SECRET_FORM), "Basic !!!".to_owned()] {
        let answer = token(&idp, CC, Some(&authorization)).await;
        assert_eq!(answer.status, 401);
        assert_eq!(answer.error(), "invalid_client");
        assert!(answer.header("www-authenticate").unwrap().starts_with("Basic "));
        assert!(!answer.text().contains(SECRET));
    }
    assert!(matches!(idp.last_request().unwrap().client_auth, ClientAuth::Malformed { .. }));
    assert_eq!(idp.token_requests(), 3);
}

#[tokio::test]
async fn client_secret_post() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client(ID, SECRET);
    let good = format!("{CC}&client_id={ID_FORM}&client_secret={SECRET_FORM}");
    let answer = token(&idp, &good, None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(matches!(&idp.last_request().unwrap().client_auth, ClientAuth::Post { client_id } if client_id == ID));

    let answer = token(&idp, &format!("{CC}&client_id={ID_FORM}&client_secret=nope"), None).await;
    assert_eq!((answer.status, answer.error().as_str()), (StatusCode::UNAUTHORIZED, "invalid_client"));
    // A secret without an id, and no authentication at all once clients are registered.
    let answer = token(&idp, &format!("{CC}&client_secret={SECRET_FORM}"), None).await;
    assert_eq!(answer.error(), "invalid_client");
    let answer = token(&idp, &format!("{CC}&client_id={ID_FORM}"), None).await;
    assert_eq!(answer.error(), "invalid_client");
    assert!(matches!(&idp.last_request().unwrap().client_auth, ClientAuth::None { client_id: Some(id) } if id == ID));
}

#[tokio::test]
async fn two_client_authentication_methods_at_once_are_invalid_request() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client(ID, SECRET);
    let answer = token(
        &idp,
        &format!("{CC}&client_id={ID_FORM}&client_secret={SECRET_FORM}"),
        Some(&basic(ID_FORM, SECRET_FORM)),
    )
    .await;
    assert_eq!((answer.status, answer.error().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
}

#[tokio::test]
async fn auth_methods_not_advertised_are_refused() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client(ID, SECRET);
    idp.set_auth_methods(&["client_secret_post"]);
    let answer = token(&idp, CC, Some(&basic(ID_FORM, SECRET_FORM))).await;
    assert_eq!(answer.error(), "invalid_client");
    let answer = token(&idp, &format!("{CC}&client_id={ID_FORM}&client_secret={SECRET_FORM}"), None).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn jwt_bearer_assertions_are_recorded_not_verified() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_jwt_client("svc");
    let assertion = jwt(
        &json!({"alg": "ES256", "typ": "JWT", "kid": "key-1"}),
        &json!({"iss": "svc", "sub": "svc", "aud": idp.issuer(), "jti": "j1", "iat": 1, "exp": 2}),
    );
    let form = format!("{CC}&client_assertion_type={JWT_BEARER_ASSERTION_TYPE}&client_assertion={assertion}");
    let answer = token(&idp, &form, None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let record = idp.last_request().unwrap();
    assert_eq!(record.client_auth.method(), "private_key_jwt");
    assert_eq!(record.client_auth.client_id(), Some("svc"));
    let ClientAuth::JwtBearer { assertion: received, header, claims, .. } = &record.client_auth else { panic!() };
    assert_eq!(received.expose(), assertion);
    assert_eq!(header.as_ref().unwrap()["kid"], "key-1");
    assert_eq!(claims.as_ref().unwrap()["aud"], idp.issuer());
    assert_eq!(claims.as_ref().unwrap()["jti"], "j1");

    // Another client, a wrong assertion type, an assertion that is not a JWT.
    let other = jwt(&json!({"alg": "RS256"}), &json!({"iss": "x", "sub": "x"}));
    let form = format!("{CC}&client_assertion_type={JWT_BEARER_ASSERTION_TYPE}&client_assertion={other}");
    assert_eq!(token(&idp, &form, None).await.error(), "invalid_client");
    let form = format!("{CC}&client_assertion_type=urn%3Aother&client_assertion={assertion}");
    assert_eq!(token(&idp, &form, None).await.error(), "invalid_client");
    let form = format!("{CC}&client_assertion_type={JWT_BEARER_ASSERTION_TYPE}&client_assertion=not-a-jwt");
    assert_eq!(token(&idp, &form, None).await.error(), "invalid_client");
    let ClientAuth::JwtBearer { claims, client_id, .. } = idp.last_request().unwrap().client_auth else { panic!() };
    assert_eq!((claims, client_id), (None, None));
    // With `client_id` in the body, that names the client.
    let form =
        format!("{CC}&client_id=svc&client_assertion_type={JWT_BEARER_ASSERTION_TYPE}&client_assertion=not-a-jwt");
    assert_eq!(token(&idp, &form, None).await.status, 200);
}

#[tokio::test]
async fn with_no_client_registered_any_client_is_accepted() {
    let idp = FakeIdp::start().await.unwrap();
    assert_eq!(token(&idp, CC, None).await.status, 200);
    assert!(matches!(idp.last_request().unwrap().client_auth, ClientAuth::None { client_id: None }));
    assert_eq!(token(&idp, CC, Some(&basic("anyone", "anything"))).await.status, 200);
    assert_eq!(token(&idp, &format!("{CC}&client_id=a&client_secret=b"), None).await.status, 200);
}

// ---- grants ----

#[tokio::test]
async fn client_credentials_answer() {
    let idp = FakeIdp::start().await.unwrap();
    let answer = token(&idp, CC, None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("pragma"), Some("no-cache"));
    assert_eq!(answer.json(), json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600}));
    // Unique per issue; a refresh token only when asked for.
    assert_eq!(token(&idp, CC, None).await.json()["access_token"], "at-2");
    idp.set_refresh_on_client_credentials(true);
    let body = token(&idp, CC, None).await.json();
    assert_eq!((body["access_token"].as_str(), body["refresh_token"].as_str()), (Some("at-3"), Some("rt-1")));
}

#[tokio::test]
async fn password_grant() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client(ID, SECRET);
    idp.add_user("alice", "p@ss word");
    let auth = basic(ID_FORM, SECRET_FORM);
    let answer = token(&idp, "grant_type=password&username=alice&password=p%40ss+word", Some(&auth)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!((body["access_token"].as_str(), body["refresh_token"].as_str()), (Some("at-1"), Some("rt-1")));
    let record = idp.last_request().unwrap();
    assert_eq!((record.grant.clone(), record.username.as_deref()), (Grant::Password, Some("alice")));
    assert!(!format!("{record:?}").contains("p@ss"));

    let answer = token(&idp, "grant_type=password&username=alice&password=wrong", Some(&auth)).await;
    assert_eq!((answer.status, answer.error().as_str()), (StatusCode::BAD_REQUEST, "invalid_grant"));
    let answer = token(&idp, "grant_type=password&username=alice", Some(&auth)).await;
    assert_eq!(answer.error(), "invalid_request");
    idp.set_refresh_tokens(false);
    let body = token(&idp, "grant_type=password&username=alice&password=p%40ss+word", Some(&auth)).await.json();
    assert!(body.get("refresh_token").is_none());
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_refresh_token() {
    let idp = FakeIdp::start().await.unwrap();
    let first = token(&idp, "grant_type=password&username=a&password=b", None).await.json();
    assert_eq!(first["refresh_token"], "rt-1");
    for expected in ["at-2", "at-3"] {
        let body = token(&idp, "grant_type=refresh_token&refresh_token=rt-1", None).await.json();
        assert_eq!(body["access_token"], expected);
        assert!(body.get("refresh_token").is_none(), "{body}");
    }
    assert!(idp.is_active("rt-1"));
    assert_eq!(idp.last_request().unwrap().refresh_token.unwrap().expose(), "rt-1");
    assert_eq!(idp.token_requests_for(&Grant::RefreshToken), 2);
    assert_eq!(idp.token_requests_for(&Grant::Password), 1);
}

#[tokio::test]
async fn refresh_with_rotation_refuses_a_reused_refresh_token() {
    let idp = FakeIdp::start().await.unwrap();
    idp.set_rotation(true);
    token(&idp, "grant_type=password&username=a&password=b", None).await;
    let body = token(&idp, "grant_type=refresh_token&refresh_token=rt-1", None).await.json();
    assert_eq!((body["access_token"].as_str(), body["refresh_token"].as_str()), (Some("at-2"), Some("rt-2")));
    assert!(!idp.is_active("rt-1"));
    let answer = token(&idp, "grant_type=refresh_token&refresh_token=rt-1", None).await;
    assert_eq!((answer.status, answer.error().as_str()), (StatusCode::BAD_REQUEST, "invalid_grant"));
    let body = token(&idp, "grant_type=refresh_token&refresh_token=rt-2", None).await.json();
    assert_eq!(body["refresh_token"], "rt-3");
}

#[tokio::test]
async fn refresh_checks_the_token_its_client_and_its_scopes() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client("one", "1");
    idp.add_client("two", "2");
    let form = "grant_type=password&username=a&password=b&scope=read+write";
    assert_eq!(token(&idp, form, Some(&basic("one", "1"))).await.json()["scope"], "read write");
    let refresh = "grant_type=refresh_token&refresh_token=rt-1";
    assert_eq!(token(&idp, refresh, Some(&basic("two", "2"))).await.error(), "invalid_grant");
    let body = token(&idp, &format!("{refresh}&scope=read"), Some(&basic("one", "1"))).await.json();
    assert_eq!(body["scope"], "read");
    assert_eq!(token(&idp, &format!("{refresh}&scope=admin"), Some(&basic("one", "1"))).await.error(), "invalid_scope");
    assert_eq!(
        token(&idp, "grant_type=refresh_token&refresh_token=rt-9", Some(&basic("one", "1"))).await.error(),
        "invalid_grant"
    );
    assert_eq!(token(&idp, "grant_type=refresh_token", Some(&basic("one", "1"))).await.error(), "invalid_request");
    // An access token is not a refresh token; a revoked refresh token is refused.
    assert_eq!(
        token(&idp, "grant_type=refresh_token&refresh_token=at-1", Some(&basic("one", "1"))).await.error(),
        "invalid_grant"
    );
    assert!(idp.revoke("rt-1"));
    assert_eq!(token(&idp, refresh, Some(&basic("one", "1"))).await.error(), "invalid_grant");
}

#[tokio::test]
async fn records_scope_audience_resources_and_extra_parameters() {
    let idp = FakeIdp::start().await.unwrap();
    let form = format!(
        "{CC}&scope=read+write&audience=https%3A%2F%2Fapi.example&resource=https%3A%2F%2Fa.example&resource=https%3A%2F%2Fb.example&tenant=t+1"
    );
    let answer = token(&idp, &form, None).await;
    assert_eq!(answer.json()["scope"], "read write");
    let record = idp.last_request().unwrap();
    assert_eq!(record.grant, Grant::ClientCredentials);
    assert_eq!(record.scope.as_deref(), Some("read write"));
    assert_eq!(record.scopes(), ["read", "write"]);
    assert_eq!(record.audience, ["https://api.example"]);
    assert_eq!(record.resources, ["https://a.example", "https://b.example"]);
    assert_eq!(record.extra("tenant"), Some("t 1"));
    assert_eq!(record.content_type.as_deref(), Some("application/x-www-form-urlencoded; charset=utf-8"));
}

#[tokio::test]
async fn malformed_token_requests() {
    let idp = FakeIdp::start().await.unwrap();
    let answer = token(&idp, "grant_type=urn:example:unknown&code=x", None).await;
    assert_eq!(answer.error(), "unsupported_grant_type");
    assert_eq!(idp.token_requests_for(&Grant::Other("urn:example:unknown".into())), 1);
    assert_eq!(token(&idp, "scope=x", None).await.error(), "invalid_request");
    assert_eq!(idp.last_request().unwrap().grant, Grant::Other(String::new()));
    assert_eq!(token(&idp, &format!("{CC}&scope=a&scope=b"), None).await.error(), "invalid_request");
    let json = Request::post(idp.token_url())
        .header("content-type", "application/json")
        .body(Full::from(r#"{"grant_type":"client_credentials"}"#))
        .unwrap();
    let answer = send(json).await;
    assert_eq!((answer.status, answer.error().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
    let answer = send(Request::get(idp.token_url()).body(Full::default()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(idp.token_requests(), 4);
}

#[tokio::test]
async fn allowed_scopes() {
    let idp = FakeIdp::start().await.unwrap();
    idp.set_allowed_scopes(Some(&["read"]));
    assert_eq!(token(&idp, &format!("{CC}&scope=read"), None).await.status, 200);
    let answer = token(&idp, &format!("{CC}&scope=read+admin"), None).await;
    assert_eq!((answer.status, answer.error().as_str()), (StatusCode::BAD_REQUEST, "invalid_scope"));
    assert!(answer.json()["error_description"].as_str().unwrap().contains("admin"));
}

// ---- the shape of token responses ----

#[tokio::test]
async fn expires_in_refresh_in_token_type_and_extra_fields() {
    let idp = FakeIdp::start().await.unwrap();
    idp.set_lifetime(Duration::from_secs(5));
    assert_eq!(token(&idp, CC, None).await.json()["expires_in"], 5);
    idp.set_expires_in(ExpiresIn::String);
    assert_eq!(token(&idp, CC, None).await.json()["expires_in"], "5");
    idp.set_expires_in(ExpiresIn::Omit);
    assert!(token(&idp, CC, None).await.json().get("expires_in").is_none());
    for odd in [json!(-30), json!(0), json!(u64::MAX), json!(1e300), json!("soon"), Value::Null] {
        idp.set_expires_in(ExpiresIn::Value(odd.clone()));
        assert_eq!(token(&idp, CC, None).await.json()["expires_in"], odd);
    }
    idp.set_expires_in(ExpiresIn::Number);
    idp.set_refresh_in(Some(2));
    idp.set_token_type("bearer");
    idp.set_response_field("id_token", json!("eyJ.x.y"));
    let body = token(&idp, CC, None).await.json();
    assert_eq!((body["refresh_in"].clone(), body["token_type"].clone()), (json!(2), json!("bearer")));
    assert_eq!(body["id_token"], "eyJ.x.y");
    idp.set_response_field("token_type", Value::Null);
    idp.set_refresh_in(None);
    let body = token(&idp, CC, None).await.json();
    assert!(body.get("token_type").is_none() && body.get("refresh_in").is_none(), "{body}");
}

// ---- the protected resource, expiry, revocation ----

#[tokio::test(start_paused = true)]
async fn resource_accepts_issued_tokens_until_they_expire() {
    let idp = FakeIdp::start().await.unwrap();
    idp.set_lifetime(Duration::from_secs(60));
    let access = token(&idp, CC, None).await.json()["access_token"].as_str().unwrap().to_owned();
    for method in ["GET", "POST"] {
        let answer = resource(&idp, method, Some(&access)).await;
        assert_eq!((answer.status, answer.text()), (StatusCode::OK, access.clone()));
    }
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(idp.is_active(&access));
    assert_eq!(resource(&idp, "GET", Some(&access)).await.status, 200);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!idp.is_active(&access));
    let answer = resource(&idp, "GET", Some(&access)).await;
    assert_eq!(answer.status, 401);
    assert!(answer.header("www-authenticate").unwrap().contains(r#"error="invalid_token""#));

    let stats = idp.resource_stats();
    assert_eq!((stats.requests(), stats.accepted(), stats.rejected()), (4, 3, 1));
    let presented: Vec<String> = idp.resource_tokens().iter().map(|t| t.expose().to_owned()).collect();
    assert_eq!(presented, vec![access; 4]);
}

#[tokio::test]
async fn resource_challenges() {
    let idp = FakeIdp::start().await.unwrap();
    let answer = resource(&idp, "GET", None).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.header("www-authenticate"), Some(r#"Bearer realm="fake-idp""#));
    for token in ["at-1", "rt-1", "made-up"] {
        let answer = resource(&idp, "GET", Some(token)).await;
        assert_eq!(answer.status, 401);
        let challenge = answer.header("www-authenticate").unwrap();
        assert!(challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_token""#), "{challenge}");
    }
    assert!(idp.resource_tokens().len() == 3);
}

#[tokio::test]
async fn revoked_tokens_are_refused() {
    let idp = FakeIdp::start().await.unwrap();
    token(&idp, CC, None).await;
    token(&idp, CC, None).await;
    assert!(idp.revoke("at-1"));
    assert!(!idp.revoke("at-99"));
    assert_eq!(resource(&idp, "GET", Some("at-1")).await.status, 401);
    assert_eq!(resource(&idp, "GET", Some("at-2")).await.status, 200);
}

#[tokio::test]
async fn required_scope_gives_403_insufficient_scope() {
    let idp = FakeIdp::start().await.unwrap();
    idp.set_required_scope(Some("write"));
    token(&idp, &format!("{CC}&scope=read"), None).await;
    token(&idp, &format!("{CC}&scope=read+write"), None).await;
    let answer = resource(&idp, "GET", Some("at-1")).await;
    assert_eq!(answer.status, 403);
    let challenge = answer.header("www-authenticate").unwrap();
    assert!(challenge.contains(r#"error="insufficient_scope""#) && challenge.contains(r#"scope="write""#));
    assert_eq!(resource(&idp, "GET", Some("at-2")).await.status, 200);
    idp.set_required_scope(None);
    assert_eq!(resource(&idp, "GET", Some("at-1")).await.status, 200);
}

// ---- faults ----

#[tokio::test]
async fn next_n_requests_fail_then_the_endpoint_recovers() {
    let idp = FakeIdp::start().await.unwrap();
    idp.fail_next(2, Fault::ServerError);
    assert_eq!(token(&idp, CC, None).await.status, 500);
    assert_eq!(token(&idp, CC, None).await.status, 500);
    let answer = token(&idp, CC, None).await;
    assert_eq!(answer.status, 200);
    // Faulted requests issue nothing: the first token is still at-1.
    assert_eq!(answer.json()["access_token"], "at-1");
    assert_eq!(idp.token_requests(), 3);
    assert_eq!(idp.requests().len(), 3);
}

#[tokio::test]
async fn too_many_requests_with_retry_after() {
    let idp = FakeIdp::start().await.unwrap();
    idp.fail_next(1, Fault::TooManyRequests { retry_after: 7 });
    let answer = token(&idp, CC, None).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("7"));
}

#[tokio::test]
async fn bodies_that_are_not_a_token() {
    let idp = FakeIdp::start().await.unwrap();
    idp.fail_next(1, Fault::Garbage);
    idp.fail_next(1, Fault::Html);
    idp.fail_next(1, Fault::MissingAccessToken);
    idp.fail_next(
        1,
        Fault::Raw { status: StatusCode::BAD_GATEWAY, content_type: "text/plain".into(), body: "upstream down".into() },
    );

    let garbage = token(&idp, CC, None).await;
    assert_eq!((garbage.status, garbage.header("content-type")), (StatusCode::OK, Some("application/json")));
    assert!(serde_json::from_slice::<Value>(&garbage.body).is_err());
    let html = token(&idp, CC, None).await;
    assert_eq!(html.status, 200);
    assert!(html.header("content-type").unwrap().starts_with("text/html"));
    assert!(html.text().starts_with("<!DOCTYPE html>"));
    let missing = token(&idp, CC, None).await;
    assert_eq!(missing.status, 200);
    assert!(missing.json().get("access_token").is_none());
    let raw = token(&idp, CC, None).await;
    assert_eq!((raw.status, raw.text()), (StatusCode::BAD_GATEWAY, "upstream down".to_owned()));
    assert_eq!(token(&idp, CC, None).await.status, 200);
}

#[tokio::test]
async fn oauth_errors_with_description_and_uri() {
    let idp = FakeIdp::start().await.unwrap();
    let errors = [
        OAuthError::invalid_client(),
        OAuthError::invalid_grant(),
        OAuthError::unauthorized_client(),
        OAuthError::invalid_scope(),
        OAuthError::invalid_request(),
    ];
    for err in errors {
        let code = err.error().to_owned();
        idp.fail_next(1, Fault::Error(err.description("it went wrong").uri("https://idp.example/errors")));
        let answer = token(&idp, CC, None).await;
        let expected = if code == "invalid_client" { 401 } else { 400 };
        assert_eq!(answer.status, expected, "{code}");
        assert_eq!(
            answer.json(),
            json!({"error": code, "error_description": "it went wrong", "error_uri": "https://idp.example/errors"})
        );
        assert_eq!(answer.header("www-authenticate").is_some(), code == "invalid_client");
    }
    idp.fail_next(1, Fault::Error(OAuthError::new("temporarily_unavailable").status(StatusCode::SERVICE_UNAVAILABLE)));
    let answer = token(&idp, CC, None).await;
    assert_eq!(
        (answer.status, answer.json()),
        (StatusCode::SERVICE_UNAVAILABLE, json!({"error": "temporarily_unavailable"}))
    );
}

#[tokio::test]
async fn fail_always_until_cleared() {
    let idp = FakeIdp::start().await.unwrap();
    idp.fail_next(1, Fault::TooManyRequests { retry_after: 1 });
    idp.fail_always(Fault::ServerError);
    assert_eq!(token(&idp, CC, None).await.status, 429);
    for _ in 0..3 {
        assert_eq!(token(&idp, CC, None).await.status, 500);
    }
    idp.clear_faults();
    assert_eq!(token(&idp, CC, None).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn hang_never_answers_until_released() {
    let idp = FakeIdp::start().await.unwrap();
    idp.fail_next(2, Fault::Hang);
    // The paused clock jumps to the timeout as soon as everything waits: no real waiting.
    let started = Instant::now();
    let timed_out = tokio::time::timeout(Duration::from_secs(30), token(&idp, CC, None)).await;
    assert!(timed_out.is_err());
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert_eq!(idp.token_requests(), 1);

    let handle = idp.handle();
    let url = idp.token_url();
    let hung = tokio::spawn(async move {
        let req = Request::post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::from(CC))
            .unwrap();
        send(req).await.status
    });
    handle.wait_for_token_requests(2).await;
    assert!(!hung.is_finished());
    idp.release_hung();
    assert_eq!(hung.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(token(&idp, CC, None).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn delays_run_on_tokio_time() {
    let idp = FakeIdp::start().await.unwrap();
    idp.set_delay(Duration::from_secs(5));
    let started = Instant::now();
    assert_eq!(token(&idp, CC, None).await.status, 200);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(6), "{elapsed:?}");

    idp.set_delay(Duration::ZERO);
    idp.fail_next(1, Fault::Delay(Duration::from_secs(200)));
    let started = Instant::now();
    assert_eq!(token(&idp, CC, None).await.status, 200);
    assert!(started.elapsed() >= Duration::from_secs(200));
    let started = Instant::now();
    assert_eq!(token(&idp, CC, None).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
}

// ---- counting ----

#[tokio::test]
async fn counts_and_waiting_for_n_requests() {
    let idp = FakeIdp::start().await.unwrap();
    let handle = idp.handle();
    let url = idp.token_url();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let url = url.clone();
        let form = if i % 2 == 0 { CC } else { "grant_type=password&username=u&password=p" };
        tasks.push(tokio::spawn(async move {
            let req = Request::post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::from(form))
                .unwrap();
            send(req).await.status
        }));
    }
    handle.wait_for_token_requests(6).await;
    assert_eq!(idp.token_requests(), 6);
    assert_eq!(idp.token_requests_for(&Grant::ClientCredentials), 3);
    assert_eq!(idp.token_requests_for(&Grant::Password), 3);
    assert_eq!(idp.token_requests_for(&Grant::RefreshToken), 0);
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let records = idp.requests();
    assert!(records.windows(2).all(|w| w[0].received_at <= w[1].received_at));

    idp.reset_counts();
    assert_eq!((idp.token_requests(), idp.requests().len()), (0, 0));
    assert_eq!(idp.token_requests_for(&Grant::Password), 0);
    // Tokens issued before the reset are still good, and numbering goes on.
    assert_eq!(resource(&idp, "GET", Some("at-6")).await.status, 200);
    assert_eq!(token(&idp, CC, None).await.json()["access_token"], "at-7");
    assert_eq!(idp.token_requests(), 1);
}

// ---- secrets ----

#[tokio::test]
async fn debug_output_holds_no_secret() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client(ID, SECRET);
    idp.add_jwt_client("svc");
    idp.add_user("alice", "hunter2-pw");
    token(&idp, "grant_type=password&username=alice&password=hunter2-pw", Some(&basic(ID_FORM, SECRET_FORM))).await;
    token(&idp, "grant_type=refresh_token&refresh_token=rt-1", Some(&basic(ID_FORM, SECRET_FORM))).await;
    let assertion = jwt(&json!({"alg": "RS256"}), &json!({"sub": "svc"}));
    let form = format!("{CC}&client_assertion_type={JWT_BEARER_ASSERTION_TYPE}&client_assertion={assertion}");
    token(&idp, &form, None).await;
    resource(&idp, "GET", Some("at-1")).await;

    let debug = format!("{idp:?} {:?} {:?}", idp.requests(), idp.resource_tokens());
    assert!(debug.contains(ID) && debug.contains("alice") && debug.contains("svc"), "{debug}");
    for secret in [SECRET, SECRET_FORM, "hunter2", "rt-1", "at-1", assertion.as_str()] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_provider_releases_hung_requests() {
    let idp = FakeIdp::start().await.unwrap();
    idp.fail_always(Fault::Hang);
    let handle = idp.handle();
    let url = idp.token_url();
    let hung = tokio::spawn(async move {
        let req = Request::post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::from(CC))
            .unwrap();
        client().request(req).await.map(|res| res.status())
    });
    handle.wait_for_token_requests(1).await;
    drop(idp);
    // Answered (503) rather than left pending for the life of the runtime.
    assert_eq!(hung.await.unwrap().unwrap(), StatusCode::SERVICE_UNAVAILABLE);
}

// ---- authorization endpoint and authorization code grant ----

/// RFC 7636 appendix B: a verifier and its S256 challenge, computed there, not here.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const REDIRECT: &str = "http://127.0.0.1:4711/callback";

/// Percent-encodes all but RFC 3986's unreserved characters.
fn enc(value: &str) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(value, SET).to_string()
}

fn query(params: &[(&str, &str)]) -> String {
    params.iter().map(|(n, v)| format!("{}={}", enc(n), enc(v))).collect::<Vec<_>>().join("&")
}

/// `GET /authorize?…` (not followed).
async fn authorize(idp: &FakeIdp, params: &[(&str, &str)]) -> Answer {
    get(&format!("{}?{}", idp.authorize_url(), query(params))).await
}

/// The usual authorization request of a public client `app` with S256 PKCE.
fn pkce_params<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", "app"),
        ("redirect_uri", REDIRECT),
        ("state", "st 1/+"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    params.extend_from_slice(extra);
    params
}

/// The query parameters of a redirect's `Location`, decoded.
fn location_params(answer: &Answer) -> Vec<(String, String)> {
    let location = answer.header("location").unwrap_or_else(|| panic!("no Location: {}", answer.status));
    let (_, query) = location.split_once('?').unwrap();
    query
        .split('&')
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap();
            (n.to_owned(), percent_encoding::percent_decode_str(v).decode_utf8().unwrap().into_owned())
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

async fn code_for(idp: &FakeIdp, extra: &[(&str, &str)]) -> String {
    let answer = authorize(idp, &pkce_params(extra)).await;
    assert_eq!(answer.status, StatusCode::FOUND, "{}", answer.text());
    param(&location_params(&answer), "code").unwrap().to_owned()
}

fn code_form(code: &str, verifier: Option<&str>) -> String {
    let mut params = vec![("grant_type", "authorization_code"), ("code", code), ("redirect_uri", REDIRECT)];
    params.push(("client_id", "app"));
    if let Some(verifier) = verifier {
        params.push(("code_verifier", verifier));
    }
    query(&params)
}

#[tokio::test]
async fn authorize_redirects_to_the_loopback_listener_with_code_and_state() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_public_client("app");
    let answer = authorize(&idp, &pkce_params(&[("scope", "openid read"), ("nonce", "n-0S6")])).await;
    assert_eq!(answer.status, StatusCode::FOUND);
    let location = answer.header("location").unwrap();
    assert!(location.starts_with("http://127.0.0.1:4711/callback?code=code-1&state="), "{location}");
    let params = location_params(&answer);
    assert_eq!(param(&params, "state"), Some("st 1/+"));
    assert_eq!(param(&params, "iss"), None);
    assert_eq!(params.len(), 2);

    let record = idp.last_authorize_request().unwrap();
    assert_eq!(record.client_id.as_deref(), Some("app"));
    assert_eq!(record.redirect_uri.as_deref(), Some(REDIRECT));
    assert_eq!(record.state.as_deref(), Some("st 1/+"));
    assert_eq!(record.code_challenge.as_deref(), Some(CHALLENGE));
    assert_eq!(record.code_challenge_method.as_deref(), Some("S256"));
    assert_eq!(record.nonce.as_deref(), Some("n-0S6"));
    assert_eq!(record.scopes(), ["openid", "read"]);
    assert!(!record.has("client_secret"));
    assert_eq!(idp.authorize_requests().len(), 1);
    idp.wait_for_authorize_requests(1).await;

    // Redirect URIs that already have a query keep it.
    let answer =
        authorize(&idp, &[("response_type", "code"), ("client_id", "app"), ("redirect_uri", "http://[::1]:9/cb?x=1")])
            .await;
    assert!(answer.header("location").unwrap().starts_with("http://[::1]:9/cb?x=1&code=code-2"));
    let answer =
        authorize(&idp, &[("response_type", "code"), ("client_id", "app"), ("redirect_uri", "http://localhost:9/")])
            .await;
    assert_eq!(answer.header("location"), Some("http://localhost:9/?code=code-3"), "no state sent, none echoed");
}

#[tokio::test]
async fn code_exchange_with_pkce_gives_tokens_and_an_id_token_with_the_nonce() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_public_client("app");
    let code = code_for(&idp, &[("scope", "openid read"), ("nonce", "n-0S6")]).await;
    let answer = token(&idp, &code_form(&code, Some(VERIFIER)), None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["access_token"], "at-1");
    assert_eq!(body["refresh_token"], "rt-1");
    assert_eq!(body["scope"], "openid read");
    let record = idp.last_request().unwrap();
    assert_eq!(record.grant, Grant::AuthorizationCode);
    assert!(record.has_code_verifier());
    assert_eq!(record.client_auth.method(), "none");
    assert!(!format!("{record:?}").contains(VERIFIER));
    assert!(!format!("{record:?}").contains(&code));

    // The id_token, checked by jsonwebtoken with the published test key.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["app"]);
    validation.set_issuer(&[idp.issuer()]);
    let id_token = body["id_token"].as_str().unwrap();
    let key = jsonwebtoken::DecodingKey::from_secret(tower_auth::testing::idp::ID_TOKEN_KEY);
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation).unwrap().claims;
    assert_eq!(claims["nonce"], "n-0S6");
    assert_eq!(claims["sub"], "fake-user");
    assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());

    // The refresh token works and the access token opens the resource.
    assert_eq!(resource(&idp, "GET", Some("at-1")).await.status, 200);
    let answer = token(&idp, "grant_type=refresh_token&refresh_token=rt-1&client_id=app", None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    // Single use: presenting the code again fails and revokes what it gave.
    let answer = token(&idp, &code_form(&code, Some(VERIFIER)), None).await;
    assert_eq!(answer.error(), "invalid_grant");
    assert!(!idp.is_active("at-1"));
    assert!(!idp.is_active("rt-1"));

    // No openid, no id_token; claims can be made wrong.
    let code = code_for(&idp, &[("scope", "read")]).await;
    assert!(token(&idp, &code_form(&code, Some(VERIFIER)), None).await.json().get("id_token").is_none());
    idp.set_id_token_claim("nonce", json!("another"));
    idp.set_id_token_claim("sub", Value::Null);
    let code = code_for(&idp, &[("scope", "openid"), ("nonce", "n-1")]).await;
    let body = token(&idp, &code_form(&code, Some(VERIFIER)), None).await.json();
    let claims = jsonwebtoken::decode::<Value>(body["id_token"].as_str().unwrap(), &key, &validation).unwrap().claims;
    assert_eq!(claims["nonce"], "another");
    assert!(claims.get("sub").is_none());
}

#[tokio::test]
async fn code_exchange_checks_verifier_client_and_redirect_uri() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_public_client("app");
    idp.add_public_client("other");
    let wrong_verifier = "x".repeat(43);
    let cases: Vec<(String, &str)> = vec![
        (code_form("", None).replace("code=&", "code=nope&"), "unknown code"),
        (code_form("CODE", Some(&wrong_verifier)), "wrong verifier"),
        (code_form("CODE", None), "no verifier"),
        (code_form("CODE", Some("short")), "verifier too short"),
        (code_form("CODE", Some(VERIFIER)).replace("client_id=app", "client_id=other"), "other client"),
        (code_form("CODE", Some(VERIFIER)).replace("4711", "4712"), "other redirect_uri"),
        (code_form("CODE", Some(VERIFIER)).replace(&format!("&redirect_uri={}", enc(REDIRECT)), ""), "no redirect_uri"),
    ];
    for (form, what) in cases {
        let code = code_for(&idp, &[]).await;
        let answer = token(&idp, &form.replace("CODE", &code), None).await;
        assert_eq!((answer.status, answer.error().as_str()), (StatusCode::BAD_REQUEST, "invalid_grant"), "{what}");
        // Spent even though refused.
        if what == "unknown code" {
            continue;
        }
        assert_eq!(token(&idp, &code_form(&code, Some(VERIFIER)), None).await.error(), "invalid_grant", "{what}");
    }
    assert_eq!(token(&idp, "grant_type=authorization_code&client_id=app", None).await.error(), "invalid_request");

    // A verifier where no challenge was sent (a PKCE downgrade) is refused; none at all is fine.
    let no_pkce = [("response_type", "code"), ("client_id", "app"), ("redirect_uri", REDIRECT)];
    let code_of = |answer: &Answer| param(&location_params(answer), "code").unwrap().to_owned();
    let code = code_of(&authorize(&idp, &no_pkce).await);
    assert_eq!(token(&idp, &code_form(&code, Some(VERIFIER)), None).await.error(), "invalid_grant");
    let code = code_of(&authorize(&idp, &no_pkce).await);
    assert_eq!(token(&idp, &code_form(&code, None), None).await.status, 200);

    // `plain`: the verifier is the challenge.
    let plain = [("code_challenge", VERIFIER), ("code_challenge_method", "plain")];
    let mut params = no_pkce.to_vec();
    params.extend_from_slice(&plain);
    let code = code_of(&authorize(&idp, &params).await);
    assert_eq!(token(&idp, &code_form(&code, Some(VERIFIER)), None).await.status, 200);

    // Unknown public clients are refused.
    let code = code_for(&idp, &[]).await;
    let answer =
        token(&idp, &code_form(&code, Some(VERIFIER)).replace("client_id=app", "client_id=nobody"), None).await;
    assert_eq!(answer.error(), "invalid_client");
}

#[tokio::test]
async fn confidential_clients_authenticate_at_the_token_endpoint() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_client("app", "s3cret");
    let code = code_for(&idp, &[]).await;
    // Without its secret: invalid_client (the code is not even looked at).
    assert_eq!(token(&idp, &code_form(&code, Some(VERIFIER)), None).await.error(), "invalid_client");
    let form = code_form(&code, Some(VERIFIER)).replace("&client_id=app", "");
    let answer = token(&idp, &form, Some(&basic("app", "s3cret"))).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(idp.last_request().unwrap().client_auth.method(), "client_secret_basic");
}

#[tokio::test(start_paused = true)]
async fn codes_expire_on_tokio_time() {
    let idp = FakeIdp::start().await.unwrap();
    idp.set_code_lifetime(Duration::from_secs(30));
    let code = code_for(&idp, &[]).await;
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(token(&idp, &code_form(&code, Some(VERIFIER)), None).await.error(), "invalid_grant");
}

#[tokio::test]
async fn authorize_refuses_bad_requests() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_public_client("app");
    // Not redirected (RFC 6749 §4.1.2.1): unknown client, missing or non-loopback redirect_uri.
    let page = |params: Vec<(&'static str, &'static str)>| {
        let idp = &idp;
        async move {
            let answer = authorize(idp, &params).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{params:?}: {}", answer.text());
            assert!(answer.header("location").is_none());
        }
    };
    page(vec![("response_type", "code"), ("redirect_uri", REDIRECT)]).await;
    page(vec![("response_type", "code"), ("client_id", "nobody"), ("redirect_uri", REDIRECT)]).await;
    page(vec![("response_type", "code"), ("client_id", "app")]).await;
    for redirect in [
        "https://127.0.0.1:4711/cb",
        "http://127.0.0.1/cb",
        "http://example.com:4711/cb",
        "http://127.0.0.1.example.com:4711/cb",
        "http://user@127.0.0.1:4711/cb",
        "http://127.0.0.1:4711/cb#frag",
        "http://127.0.0.1:0/cb",
        "http://[::2]:4711/cb",
        "urn:ietf:wg:oauth:2.0:oob",
    ] {
        page(vec![("response_type", "code"), ("client_id", "app"), ("redirect_uri", redirect)]).await;
    }

    // Redirected with an error.
    let error = |answer: &Answer| {
        assert_eq!(answer.status, StatusCode::FOUND);
        let params = location_params(answer);
        assert_eq!(param(&params, "state"), Some("st 1/+"));
        assert!(param(&params, "code").is_none());
        param(&params, "error").unwrap().to_owned()
    };
    let answer = authorize(&idp, &pkce_params(&[])[1..]).await;
    assert_eq!(param(&location_params(&answer), "error"), Some("unsupported_response_type"));
    let mut params = pkce_params(&[]);
    params[0].1 = "token";
    assert_eq!(error(&authorize(&idp, &params).await), "unsupported_response_type");
    let mut params = pkce_params(&[]);
    params[5].1 = "S512";
    assert_eq!(error(&authorize(&idp, &params).await), "invalid_request");
    let mut params = pkce_params(&[]);
    params[4].1 = "too-short";
    assert_eq!(error(&authorize(&idp, &params).await), "invalid_request");
    assert_eq!(error(&authorize(&idp, &pkce_params(&[("state", "again")])).await), "invalid_request");
    let without_challenge: Vec<_> = pkce_params(&[]).into_iter().filter(|(n, _)| !n.starts_with("code_")).collect();
    assert_eq!(authorize(&idp, &without_challenge).await.status, StatusCode::FOUND);
    idp.set_require_pkce(true);
    assert_eq!(error(&authorize(&idp, &without_challenge).await), "invalid_request");
    assert!(param(&location_params(&authorize(&idp, &pkce_params(&[])).await), "code").is_some());
    idp.set_allowed_scopes(Some(&["read"]));
    assert_eq!(error(&authorize(&idp, &pkce_params(&[("scope", "read write")])).await), "invalid_scope");

    // Every parameter is recorded, a misplaced client secret too (so tests can catch it); Debug
    // shows only its name.
    authorize(&idp, &pkce_params(&[("client_secret", "leaked-s3cret")])).await;
    let record = idp.last_authorize_request().unwrap();
    assert!(record.has("client_secret"));
    assert_eq!(record.param("client_secret"), Some("leaked-s3cret"));
    let debug = format!("{record:?}");
    assert!(debug.contains("client_secret") && !debug.contains("leaked-s3cret"), "{debug}");
    assert_eq!(idp.authorize_requests().len(), 22);
    assert_eq!(idp.token_requests(), 0);
}

#[tokio::test]
async fn authorize_outcomes_and_the_iss_parameter() {
    let idp = FakeIdp::start().await.unwrap();
    let outcome = |answer: Answer| location_params(&answer);

    idp.set_send_iss(true);
    let doc = get(&idp.metadata_url()).await.json();
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    let params = outcome(authorize(&idp, &pkce_params(&[])).await);
    assert_eq!(param(&params, "iss"), Some(idp.issuer()));
    assert_eq!(param(&params, "state"), Some("st 1/+"));

    idp.set_authorize_outcome(AuthorizeOutcome::Deny);
    let params = outcome(authorize(&idp, &pkce_params(&[])).await);
    assert_eq!(param(&params, "error"), Some("access_denied"));
    assert!(param(&params, "error_description").is_some());
    assert_eq!(param(&params, "state"), Some("st 1/+"));
    assert_eq!(param(&params, "iss"), Some(idp.issuer()));
    assert!(param(&params, "code").is_none());

    idp.set_send_iss(false);
    idp.set_authorize_outcome(AuthorizeOutcome::WrongIss);
    let params = outcome(authorize(&idp, &pkce_params(&[])).await);
    assert!(param(&params, "iss").is_some_and(|iss| iss != idp.issuer()));
    assert_eq!(param(&params, "state"), Some("st 1/+"));

    idp.set_authorize_outcome(AuthorizeOutcome::WrongState);
    let params = outcome(authorize(&idp, &pkce_params(&[])).await);
    assert!(param(&params, "state").is_some_and(|state| state != "st 1/+"));
    assert!(param(&params, "code").is_some());

    idp.set_authorize_outcome(AuthorizeOutcome::NoState);
    let params = outcome(authorize(&idp, &pkce_params(&[])).await);
    assert!(param(&params, "state").is_none());
    let code = param(&params, "code").unwrap().to_owned();
    assert_eq!(token(&idp, &code_form(&code, Some(VERIFIER)), None).await.status, 200, "the code itself is good");

    idp.set_authorize_outcome(AuthorizeOutcome::Hang);
    let url = format!("{}?{}", idp.authorize_url(), query(&pkce_params(&[])));
    let hung = tokio::spawn(async move { get(&url).await.status });
    idp.wait_for_authorize_requests(6).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!hung.is_finished());
    idp.release_hung();
    assert_eq!(hung.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
}

// ---- device authorization grant ----

async fn device_authorization(idp: &FakeIdp, form: &str) -> Answer {
    let req = Request::post(idp.device_authorization_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::from(form.to_owned()))
        .unwrap();
    send(req).await
}

async fn poll(idp: &FakeIdp, device_code: &str) -> Answer {
    token(
        idp,
        &format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={device_code}&client_id=tv"
        ),
        None,
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn device_grant_pending_slow_down_then_approved() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_public_client("tv");
    let answer = device_authorization(&idp, "client_id=tv&scope=openid+read").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    let device_code = body["device_code"].as_str().unwrap().to_owned();
    let user_code = body["user_code"].as_str().unwrap().to_owned();
    assert_eq!(body["verification_uri"], idp.verification_url());
    assert_eq!(body["verification_uri_complete"], format!("{}?user_code={user_code}", idp.verification_url()));
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["interval"], 5);
    assert!(user_code.len() == 9 && user_code.as_bytes()[4] == b'-', "{user_code}");
    assert_eq!(get(&idp.verification_url()).await.status, 200);
    idp.wait_for_device_authorizations(1).await;
    let record = &idp.device_authorizations()[0];
    assert_eq!(record.user_code.as_deref(), Some(user_code.as_str()));
    assert_eq!(record.client_auth.client_id(), Some("tv"));
    assert_eq!(record.scope.as_deref(), Some("openid read"));

    assert_eq!(poll(&idp, &device_code).await.error(), "authorization_pending");
    // Too soon: slow_down, and the interval is now 10 s for this device code.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(poll(&idp, &device_code).await.error(), "slow_down");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(poll(&idp, &device_code).await.error(), "slow_down");
    tokio::time::advance(Duration::from_secs(15)).await;
    assert_eq!(poll(&idp, &device_code).await.error(), "authorization_pending");
    // A forced one.
    idp.force_slow_down();
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(poll(&idp, &device_code).await.error(), "slow_down");

    assert!(!idp.approve_device("NOPE-NOPE"));
    assert!(idp.approve_device(&user_code));
    tokio::time::advance(Duration::from_secs(20)).await;
    let answer = poll(&idp, &device_code).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["access_token"], "at-1");
    assert_eq!(body["refresh_token"], "rt-1");
    assert!(body["id_token"].is_string());
    assert_eq!(idp.last_request().unwrap().grant, Grant::DeviceCode);
    assert_eq!(idp.token_requests_for(&Grant::DeviceCode), 6);
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(poll(&idp, &device_code).await.error(), "invalid_grant", "used");
    assert!(!idp.deny_device(&user_code));
}

#[tokio::test(start_paused = true)]
async fn device_grant_denied_expired_and_refused() {
    let idp = FakeIdp::start().await.unwrap();
    idp.add_public_client("tv");
    idp.set_device_interval(1);
    idp.set_device_lifetime(Duration::from_secs(30));
    let body = device_authorization(&idp, "client_id=tv").await.json();
    assert_eq!((body["interval"].as_u64(), body["expires_in"].as_u64()), (Some(1), Some(30)));
    let denied = body["device_code"].as_str().unwrap().to_owned();
    assert!(idp.deny_device(body["user_code"].as_str().unwrap()));
    assert_eq!(poll(&idp, &denied).await.error(), "access_denied");

    let body = device_authorization(&idp, "client_id=tv").await.json();
    let expiring = body["device_code"].as_str().unwrap().to_owned();
    assert_ne!(body["user_code"], idp.device_authorizations()[0].user_code.clone().unwrap());
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(poll(&idp, &expiring).await.error(), "expired_token");
    assert!(idp.approve_device(body["user_code"].as_str().unwrap()));
    assert_eq!(poll(&idp, &expiring).await.error(), "expired_token", "approved too late");

    assert_eq!(poll(&idp, "dc-99").await.error(), "invalid_grant");
    assert_eq!(device_authorization(&idp, "client_id=nobody").await.error(), "invalid_client");
    assert_eq!(device_authorization(&idp, "scope=read").await.error(), "invalid_client");
    let body = device_authorization(&idp, "client_id=tv").await.json();
    let answer = token(
        &idp,
        &format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={}",
            body["device_code"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(answer.error(), "invalid_client", "no client_id");
    assert_eq!(idp.device_authorizations().len(), 5);
    assert!(idp.device_authorizations()[3].user_code.is_none());
}

// ---- the browser mock, against the fake provider and a listener of the test's own ----

/// A stand-in for the loopback redirect listener: `/callback` answers `200 ok` to a code and
/// `400 failed: <error>` to an error, and records the queries it got; `/loop` redirects to
/// itself, `/away` redirects off the loopback addresses.
struct Listener {
    server: TestServer,
    queries: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    async fn start() -> Self {
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&queries);
        let app = Router::new()
            .route(
                "/callback",
                axum::routing::get(move |uri: http::Uri| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let query = uri.query().unwrap_or("").to_owned();
                        seen.lock().unwrap().push(query.clone());
                        if query.contains("code=") {
                            (StatusCode::OK, "ok".to_owned())
                        } else {
                            (StatusCode::BAD_REQUEST, format!("failed: {query}"))
                        }
                    }
                }),
            )
            .route("/loop", axum::routing::get(|| async { axum::response::Redirect::to("/loop") }))
            .route("/away", axum::routing::get(|| async { axum::response::Redirect::to("http://example.com/") }));
        Listener { server: TestServer::start(app).await.unwrap(), queries }
    }

    fn callback(&self) -> String {
        self.server.url("/callback")
    }

    fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

fn authorization_url(idp: &FakeIdp, redirect_uri: &str) -> String {
    let mut params = pkce_params(&[("scope", "openid"), ("nonce", "n-1")]);
    params[2].1 = redirect_uri;
    format!("{}?{}", idp.authorize_url(), query(&params))
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn browser_mock_follows_the_provider_to_the_listener() {
    let idp = FakeIdp::start().await.unwrap();
    let listener = Listener::start().await;
    let url = authorization_url(&idp, &listener.callback());
    let browser = BrowserMock::new();
    let as_trait: Box<dyn Browser> = Box::new(browser.clone());
    as_trait.open(&url).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    browser.assert_success();
    browser.assert_success_with("ok");
    assert_eq!(browser.last_page(), Some((StatusCode::OK, "ok".to_owned())));
    assert_eq!(browser.opened(), std::slice::from_ref(&url));
    assert_eq!(browser.done(), 1);
    assert!(browser.last_error().is_none());

    let steps = browser.steps();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!((steps[0].url.as_str(), steps[0].status), (url.as_str(), Some(StatusCode::FOUND)));
    assert!(steps[1].url.starts_with(&format!("{}?code=code-1&state=", listener.callback())));
    assert_eq!(steps[1].status, Some(StatusCode::OK));
    assert_eq!(steps[0].location.as_deref(), Some(steps[1].url.as_str()));
    let debug = format!("{steps:?} {browser:?}");
    assert!(!debug.contains("code-1"), "{debug}");

    // The listener got the code and the state; the code is good once, with the verifier.
    let queries = listener.queries();
    assert_eq!(queries.len(), 1);
    assert!(queries[0].starts_with("code=code-1&state=st%201%2F%2B"), "{}", queries[0]);
    let form = code_form("code-1", Some(VERIFIER)).replace(&enc(REDIRECT), &enc(&listener.callback()));
    let answer = token(&idp, &form, None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.json()["id_token"].is_string());

    // A second tab.
    browser.open(&url).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(2)).await.unwrap();
    assert_eq!(browser.opened().len(), 2);
    assert_eq!(browser.steps().iter().filter(|s| s.tab == 1).count(), 2);
}

#[tokio::test]
async fn browser_mock_shows_the_listener_failure_page() {
    let idp = FakeIdp::start().await.unwrap();
    idp.set_authorize_outcome(AuthorizeOutcome::Deny);
    let listener = Listener::start().await;
    let browser = BrowserMock::new();
    browser.open(&authorization_url(&idp, &listener.callback())).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    browser.assert_failure();
    browser.assert_failure_with("error=access_denied");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| browser.assert_success()));
    assert!(result.is_err());

    // The provider hangs: the tab finishes only when it is released (503, a failure).
    idp.set_authorize_outcome(AuthorizeOutcome::Hang);
    browser.open(&authorization_url(&idp, &listener.callback())).unwrap();
    idp.wait_for_authorize_requests(2).await;
    assert!(tokio::time::timeout(Duration::from_millis(100), browser.wait_until_done(2)).await.is_err());
    idp.release_hung();
    tokio::time::timeout(WAIT, browser.wait_until_done(2)).await.unwrap();
    assert_eq!(browser.last_page().unwrap().0, StatusCode::SERVICE_UNAVAILABLE);
    browser.assert_failure();
}

#[tokio::test]
async fn browser_mock_that_never_returns_or_cannot_open() {
    let idp = FakeIdp::start().await.unwrap();
    let browser = BrowserMock::never_returns();
    browser.open(&authorization_url(&idp, REDIRECT)).unwrap();
    assert_eq!(browser.opened().len(), 1);
    assert!(tokio::time::timeout(Duration::from_millis(100), browser.wait_until_done(1)).await.is_err());
    assert!(browser.steps().is_empty());
    assert!(browser.last_page().is_none());
    assert_eq!(idp.authorize_requests().len(), 0);

    let browser = BrowserMock::unavailable();
    assert!(browser.open(&authorization_url(&idp, REDIRECT)).is_err());
    assert_eq!(browser.opened().len(), 1);
    assert_eq!(browser.done(), 0);
}

#[test]
fn browser_mock_outside_a_runtime_fails_to_open() {
    let browser = BrowserMock::new();
    let err = browser.open("http://127.0.0.1:1/authorize").unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
    assert!(browser.last_error().is_some());
}

#[tokio::test]
async fn scripted_browser_mock_calls_the_listener_directly() {
    let idp = FakeIdp::start().await.unwrap();
    let listener = Listener::start().await;
    let url = authorization_url(&idp, &listener.callback());

    // A favicon request first (404, not followed), then the user's refusal, with the real state.
    let browser = BrowserMock::scripted(ScriptedReply::denied().stray_first("/favicon.ico"));
    browser.open(&url).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    let steps = browser.steps();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0].url, listener.server.url("/favicon.ico"));
    assert_eq!(steps[0].status, Some(StatusCode::NOT_FOUND));
    browser.assert_failure_with("error=access_denied");
    assert_eq!(listener.queries(), ["error=access_denied&error_description=The%20user%20refused&state=st%201%2F%2B"]);
    assert_eq!(idp.authorize_requests().len(), 0, "the provider is skipped");

    let browser = BrowserMock::scripted(ScriptedReply::wrong_state());
    browser.open(&url).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    assert_eq!(listener.queries()[1], "code=scripted-code&state=not-the-state");

    let browser = BrowserMock::scripted(ScriptedReply::no_state());
    browser.open(&url).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    assert_eq!(listener.queries()[2], "code=scripted-code");

    let browser = BrowserMock::scripted(ScriptedReply::code("a b"));
    browser.open(&url).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    browser.assert_success_with("ok");
    assert_eq!(listener.queries()[3], "code=a%20b&state=st%201%2F%2B");
    assert!(!format!("{browser:?}").contains("a%20b"));

    let browser = BrowserMock::scripted(ScriptedReply::query("code=x&state={state}&iss=https%3A%2F%2Fevil.example"));
    browser.open(&url).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    assert_eq!(listener.queries()[4], "code=x&state=st%201%2F%2B&iss=https%3A%2F%2Fevil.example");

    // An authorization URL without redirect_uri.
    let browser = BrowserMock::scripted(ScriptedReply::denied());
    browser.open(&idp.authorize_url()).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    assert!(browser.last_error().unwrap().contains("redirect_uri"));
    assert!(browser.last_page().is_none());
}

#[tokio::test]
async fn browser_mock_stays_on_loopback_and_stops_redirect_loops() {
    let listener = Listener::start().await;
    let browser = BrowserMock::new();
    browser.open(&listener.server.url("/away")).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    assert!(browser.last_error().unwrap().contains("refused"), "{:?}", browser.last_error());
    let steps = browser.steps();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[1].url, "http://example.com/");
    assert!(steps[1].status.is_none());

    let browser = BrowserMock::new();
    browser.open(&listener.server.url("/loop")).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    assert!(browser.last_error().unwrap().contains("redirects"));
    assert_eq!(browser.steps().len(), 1 + tower_auth::testing::browser::MAX_REDIRECTS);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| browser.assert_failure()));
    assert!(result.is_err(), "no page at all is not a failure page");

    // Nothing listening.
    let port = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let browser = BrowserMock::new();
    browser.open(&format!("http://127.0.0.1:{port}/callback")).unwrap();
    tokio::time::timeout(WAIT, browser.wait_until_done(1)).await.unwrap();
    assert!(browser.last_error().unwrap().contains("request failed"));
}
