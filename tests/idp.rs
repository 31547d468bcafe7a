//! Tests of the fake identity provider itself (`tower_auth::testing::idp`), over real HTTP, so
//! that the OAuth2 tests built on it can trust it.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower_auth::testing::idp::{ClientAuth, ExpiresIn, FakeIdp, Fault, Grant, JWT_BEARER_ASSERTION_TYPE, OAuthError};

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
