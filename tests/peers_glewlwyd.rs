//! Checks the Glewlwyd peer itself (tests/peers/glewlwyd.sh): what its token endpoint and its
//! discovery document answer, success and errors, with a plain hyper-util client and no code of
//! this crate. The OAuth2 provider's tests rely on these answers; the top of
//! tests/peers/glewlwyd.sh records them. Glewlwyd is found or started by tests/support/peers.rs:
//! these tests skip with a printed reason outside CI when it is not installed, and fail in CI.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use support::peers::{Glewlwyd, glewlwyd};

// ------------------------------------------------------------------------------------- HTTP --

struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    cache_control: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Json {
        parse_json(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn field(&self, name: &str) -> Json {
        self.json().get(name).cloned().unwrap_or_else(|| panic!("no {name:?} in {}", self.body))
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What `application/x-www-form-urlencoded` leaves as it is: letters, digits and `*-._` (a space
/// is written `%20`, which decoders take as well as `+`).
const FORM: &AsciiSet = &NON_ALPHANUMERIC.remove(b'*').remove(b'-').remove(b'.').remove(b'_');

fn form_encode(text: &str) -> String {
    utf8_percent_encode(text, FORM).to_string()
}

/// `application/x-www-form-urlencoded` body.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v))).collect::<Vec<_>>().join("&")
}

/// `Basic base64(id:secret)` with id and secret as they are (what Glewlwyd 2.7.5 expects).
fn basic_raw(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// `Basic base64(urlencode(id):urlencode(secret))`, as RFC 6749 §2.3.1 says.
fn basic_form_encoded(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{}:{}", form_encode(id), form_encode(secret))))
}

async fn send(req: Request<Full<Bytes>>) -> Answer {
    let res = client().request(req).await.expect("Glewlwyd answers");
    let header_string = |name: header::HeaderName| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let status = res.status();
    let content_type = header_string(header::CONTENT_TYPE);
    let cache_control = header_string(header::CACHE_CONTROL);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer { status, content_type, cache_control, body: String::from_utf8(body.to_vec()).unwrap() }
}

async fn get(url: &str) -> Answer {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

/// POST a form to a token endpoint, with an `Authorization` header when given.
/// One token request, sent again (at most twice, after 100 and 300 ms) when Glewlwyd answers
/// 500: its sqlite back end fails a token write that collides with another one ("Error
/// executing sql query" in its log, `{"error":"server_error"}` or an empty body), which the
/// tests of this file, sending token requests in parallel, meet about once in ten runs. A
/// client retries a 500 (the crate's provider does, with backoff); these tests check the
/// answers to the requests, not Glewlwyd's storage.
async fn token_request(url: &str, authorization: Option<&str>, pairs: &[(&str, &str)]) -> Answer {
    let mut answer = None;
    for pause in [0, 100, 300] {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        let mut req = Request::post(url).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(value) = authorization {
            req = req.header(header::AUTHORIZATION, value);
        }
        let got = send(req.body(Full::new(Bytes::from(form(pairs)))).unwrap()).await;
        if got.status != 500 {
            return got;
        }
        answer = Some(got);
    }
    answer.expect("three answers")
}

async fn client_credentials_basic(g: &Glewlwyd, url: &str) -> Answer {
    let auth = basic_raw(&g.client_id, &g.client_secret);
    token_request(url, Some(&auth), &[("grant_type", "client_credentials"), ("scope", g.scope.as_str())]).await
}

async fn password_grant(g: &Glewlwyd, password: &str) -> Answer {
    let auth = basic_raw(&g.client_id, &g.client_secret);
    let pairs = [
        ("grant_type", "password"),
        ("username", g.username.as_str()),
        ("password", password),
        ("scope", g.scope.as_str()),
    ];
    token_request(&g.token_url, Some(&auth), &pairs).await
}

/// Glewlwyd's way of refusing most token requests: a status and nothing else.
#[track_caller]
fn assert_empty_refusal(answer: &Answer, status: u16) {
    assert_eq!(answer.status, status, "body: {:?}", answer.body);
    assert_eq!(answer.body, "", "Glewlwyd 2.7.5 sends no body with this refusal");
    assert_eq!(answer.content_type, None);
}

/// A successful token answer: JSON, not cached, a bearer JWT for the scope that lasts `lifetime`
/// seconds, issued by `issuer`. Returns the access token.
#[track_caller]
fn assert_token(answer: &Answer, g: &Glewlwyd, issuer: &str, lifetime: u64) -> String {
    assert_eq!(answer.status, 200, "body: {:?}", answer.body);
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    assert_eq!(answer.cache_control.as_deref(), Some("no-store"));
    assert_eq!(answer.field("token_type"), Json::Str("bearer".into()));
    assert_eq!(answer.field("expires_in"), Json::Num(lifetime as f64));
    assert_eq!(answer.field("scope"), Json::Str(g.scope.clone()));
    let Json::Str(token) = answer.field("access_token") else {
        panic!("access_token is not a string: {}", answer.body)
    };
    let claims = jwt_claims(&token);
    assert_eq!(claims.get("iss"), Some(&Json::Str(issuer.to_owned())));
    assert_eq!(claims.get("scope"), Some(&Json::Str(g.scope.clone())));
    assert_eq!(claims.get("client_id"), Some(&Json::Str(g.client_id.clone())));
    let (Some(Json::Num(iat)), Some(Json::Num(exp))) = (claims.get("iat"), claims.get("exp")) else {
        panic!("no iat/exp in the access token: {claims:?}")
    };
    assert_eq!(exp - iat, lifetime as f64);
    token
}

fn jwt_claims(token: &str) -> Json {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS in compact form: {token}");
    let header = URL_SAFE_NO_PAD.decode(parts[0]).expect("base64url header");
    let header = parse_json(std::str::from_utf8(&header).unwrap()).unwrap();
    assert_eq!(header.get("alg"), Some(&Json::Str("HS256".into())));
    assert_eq!(header.get("typ"), Some(&Json::Str("at+jwt".into())));
    let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url payload");
    parse_json(std::str::from_utf8(&payload).unwrap()).unwrap()
}

// ------------------------------------------------------------------------------------ tests --

#[tokio::test]
async fn discovery_names_the_issuer_and_the_token_endpoint() {
    let Some(g) = glewlwyd() else { return };
    assert_eq!(g.discovery_url, format!("{}/.well-known/openid-configuration", g.issuer));
    let answer = get(&g.discovery_url).await;
    assert_eq!(answer.status, 200, "body: {:?}", answer.body);
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    assert_eq!(answer.field("issuer"), Json::Str(g.issuer.clone()));
    assert_eq!(answer.field("token_endpoint"), Json::Str(g.token_url.clone()));
    assert_eq!(
        answer.field("token_endpoint_auth_methods_supported"),
        Json::Arr(vec![Json::Str("client_secret_basic".into()), Json::Str("client_secret_post".into())])
    );
    // Quirk: the enabled grants are listed under response_types_supported, and
    // grant_types_supported does not list them.
    let Json::Arr(response_types) = answer.field("response_types_supported") else { panic!("{}", answer.body) };
    for grant in ["password", "client_credentials", "refresh_token"] {
        assert!(response_types.contains(&Json::Str(grant.into())), "{grant} in {}", answer.body);
    }

    let short = get(&format!("{}/.well-known/openid-configuration", g.short_issuer)).await;
    assert_eq!(short.status, 200);
    assert_eq!(short.field("issuer"), Json::Str(g.short_issuer.clone()));
    assert_eq!(short.field("token_endpoint"), Json::Str(g.short_token_url.clone()));
}

#[tokio::test]
async fn client_credentials_with_basic_and_post_client_auth() {
    let Some(g) = glewlwyd() else { return };
    let answer = client_credentials_basic(g, &g.token_url).await;
    let first = assert_token(&answer, g, &g.issuer, g.token_lifetime);
    assert!(answer.json().get("refresh_token").is_none(), "no refresh token for client credentials");

    let pairs = [
        ("grant_type", "client_credentials"),
        ("scope", g.scope.as_str()),
        ("client_id", g.client_id.as_str()),
        ("client_secret", g.client_secret.as_str()),
    ];
    let answer = token_request(&g.token_url, None, &pairs).await;
    let second = assert_token(&answer, g, &g.issuer, g.token_lifetime);
    assert_ne!(first, second, "every request gets a new token");
}

#[tokio::test]
async fn short_instance_issues_short_lived_tokens() {
    let Some(g) = glewlwyd() else { return };
    assert!(g.short_token_lifetime < g.token_lifetime);
    let answer = client_credentials_basic(g, &g.short_token_url).await;
    assert_token(&answer, g, &g.short_issuer, g.short_token_lifetime);
}

#[tokio::test]
async fn client_credentials_refusals() {
    let Some(g) = glewlwyd() else { return };
    let cc = [("grant_type", "client_credentials"), ("scope", g.scope.as_str())];

    // Wrong secret (Basic, then post), unknown client, no client authentication: 403, no body.
    let wrong = basic_raw(&g.client_id, "not-the-secret");
    assert_empty_refusal(&token_request(&g.token_url, Some(&wrong), &cc).await, 403);
    let post_wrong = [cc[0], cc[1], ("client_id", g.client_id.as_str()), ("client_secret", "not-the-secret")];
    assert_empty_refusal(&token_request(&g.token_url, None, &post_wrong).await, 403);
    let unknown = basic_raw("no-such-client", "x");
    assert_empty_refusal(&token_request(&g.token_url, Some(&unknown), &cc).await, 403);
    assert_empty_refusal(&token_request(&g.token_url, None, &cc).await, 403);

    let auth = basic_raw(&g.client_id, &g.client_secret);
    // No scope parameter at all: 403, no body.
    let no_scope = [("grant_type", "client_credentials")];
    assert_empty_refusal(&token_request(&g.token_url, Some(&auth), &no_scope).await, 403);
    // A scope the client lacks: 400 with a JSON error, "scope_invalid" (not RFC 6749's
    // "invalid_scope").
    let bad_scope = [("grant_type", "client_credentials"), ("scope", "scope9")];
    let answer = token_request(&g.token_url, Some(&auth), &bad_scope).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    assert_eq!(answer.body, r#"{"error":"scope_invalid"}"#);
    // An unknown grant type: 400, no body.
    assert_empty_refusal(&token_request(&g.token_url, Some(&auth), &[("grant_type", "foo")]).await, 400);
}

#[tokio::test]
async fn basic_credentials_are_compared_undecoded() {
    let Some(g) = glewlwyd() else { return };
    assert_eq!(g.odd_client_secret, "s3:cr+t/%&=x");
    let cc = [("grant_type", "client_credentials"), ("scope", g.scope.as_str())];
    let odd = Glewlwyd { client_id: g.odd_client_id.clone(), ..g.clone() };

    // Glewlwyd 2.7.5 takes the decoded Basic credentials as they are ...
    let raw = basic_raw(&g.odd_client_id, &g.odd_client_secret);
    assert_token(&token_request(&g.token_url, Some(&raw), &cc).await, &odd, &g.issuer, g.token_lifetime);
    // ... and refuses them form-urlencoded, as RFC 6749 §2.3.1 has clients send them.
    let encoded = basic_form_encoded(&g.odd_client_id, &g.odd_client_secret);
    assert_ne!(encoded, raw);
    assert_empty_refusal(&token_request(&g.token_url, Some(&encoded), &cc).await, 403);
    // client_secret_post: the form body is decoded, so the secret works.
    let post = [cc[0], cc[1], ("client_id", g.odd_client_id.as_str()), ("client_secret", g.odd_client_secret.as_str())];
    assert_token(&token_request(&g.token_url, None, &post).await, &odd, &g.issuer, g.token_lifetime);
    // Credentials made only of letters, digits and `*-._` are the same either way.
    assert_eq!(basic_form_encoded("tower-client", "tower-secret-0123"), basic_raw("tower-client", "tower-secret-0123"));
}

#[tokio::test]
async fn password_grant_then_refresh_grant() {
    let Some(g) = glewlwyd() else { return };
    let answer = password_grant(g, &g.password).await;
    let access = assert_token(&answer, g, &g.issuer, g.token_lifetime);
    let Json::Str(refresh) = answer.field("refresh_token") else { panic!("refresh_token: {}", answer.body) };
    assert!(!refresh.is_empty());
    assert!(matches!(answer.field("iat"), Json::Num(_)));

    let auth = basic_raw(&g.client_id, &g.client_secret);
    let rt = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())];
    let answer = token_request(&g.token_url, Some(&auth), &rt).await;
    let renewed = assert_token(&answer, g, &g.issuer, g.token_lifetime);
    assert_ne!(renewed, access);
    // No new refresh token: the old one stays valid and can be used again (no rotation).
    assert!(answer.json().get("refresh_token").is_none(), "{}", answer.body);
    let post = [rt[0], rt[1], ("client_id", g.client_id.as_str()), ("client_secret", g.client_secret.as_str())];
    assert_token(&token_request(&g.token_url, None, &post).await, g, &g.issuer, g.token_lifetime);

    // The refresh token with a wrong client secret or no client authentication: 400, no body.
    let wrong = basic_raw(&g.client_id, "not-the-secret");
    assert_empty_refusal(&token_request(&g.token_url, Some(&wrong), &rt).await, 400);
    assert_empty_refusal(&token_request(&g.token_url, None, &rt).await, 400);
}

#[tokio::test]
async fn password_and_refresh_refusals() {
    let Some(g) = glewlwyd() else { return };
    // Wrong user password: 403, no body.
    assert_empty_refusal(&password_grant(g, "not-the-password").await, 403);
    // Right user password, wrong client secret: 400, no body.
    let wrong = basic_raw(&g.client_id, "not-the-secret");
    let pairs = [
        ("grant_type", "password"),
        ("username", g.username.as_str()),
        ("password", g.password.as_str()),
        ("scope", g.scope.as_str()),
    ];
    assert_empty_refusal(&token_request(&g.token_url, Some(&wrong), &pairs).await, 400);
    // Unknown refresh token: 400, no body (no "invalid_grant").
    let auth = basic_raw(&g.client_id, &g.client_secret);
    let bogus = [("grant_type", "refresh_token"), ("refresh_token", "not-a-refresh-token")];
    assert_empty_refusal(&token_request(&g.token_url, Some(&auth), &bogus).await, 400);
}

// ------------------------------------------------------------------------- a minimal JSON --

/// Just enough JSON for Glewlwyd's answers (no dependency on a JSON crate here).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, name: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

fn parse_json(text: &str) -> Result<Json, String> {
    let mut parser = Parser { bytes: text.as_bytes(), pos: 0 };
    let value = parser.value()?;
    parser.ws();
    if parser.pos != parser.bytes.len() {
        return Err(format!("trailing data at {}", parser.pos));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", byte as char, self.pos))
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(format!("bad literal at {}", self.pos))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        match self.peek().ok_or("unexpected end")? {
            b'{' => {
                self.pos += 1;
                let mut fields = Vec::new();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Json::Obj(fields));
                }
                loop {
                    let Json::Str(key) = self.value()? else { return Err(format!("object key at {}", self.pos)) };
                    self.expect(b':')?;
                    fields.push((key, self.value()?));
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Json::Obj(fields));
                        }
                        _ => return Err(format!("expected , or }} at {}", self.pos)),
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return Err(format!("expected , or ] at {}", self.pos)),
                    }
                }
            }
            b'"' => {
                self.pos += 1;
                let mut out = String::new();
                loop {
                    let start = self.pos;
                    while self.pos < self.bytes.len() && self.bytes[self.pos] != b'"' && self.bytes[self.pos] != b'\\' {
                        self.pos += 1;
                    }
                    out.push_str(std::str::from_utf8(&self.bytes[start..self.pos]).map_err(|e| e.to_string())?);
                    match self.bytes.get(self.pos) {
                        Some(b'"') => {
                            self.pos += 1;
                            return Ok(Json::Str(out));
                        }
                        Some(b'\\') => {
                            let escaped = *self.bytes.get(self.pos + 1).ok_or("unterminated escape")?;
                            self.pos += 2;
                            match escaped {
                                b'"' => out.push('"'),
                                b'\\' => out.push('\\'),
                                b'/' => out.push('/'),
                                b'n' => out.push('\n'),
                                b't' => out.push('\t'),
                                b'r' => out.push('\r'),
                                b'b' => out.push('\u{8}'),
                                b'f' => out.push('\u{c}'),
                                b'u' => {
                                    let hex = self.bytes.get(self.pos..self.pos + 4).ok_or("short \\u escape")?;
                                    let code = u32::from_str_radix(std::str::from_utf8(hex).unwrap_or("?"), 16)
                                        .map_err(|e| e.to_string())?;
                                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                                    self.pos += 4;
                                }
                                other => return Err(format!("bad escape \\{}", other as char)),
                            }
                        }
                        _ => return Err("unterminated string".into()),
                    }
                }
            }
            b't' => self.literal("true", Json::Bool(true)),
            b'f' => self.literal("false", Json::Bool(false)),
            b'n' => self.literal("null", Json::Null),
            _ => {
                let start = self.pos;
                while self.pos < self.bytes.len()
                    && matches!(self.bytes[self.pos], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    self.pos += 1;
                }
                let number = std::str::from_utf8(&self.bytes[start..self.pos]).unwrap();
                number.parse().map(Json::Num).map_err(|_| format!("bad value at {start}"))
            }
        }
    }
}
