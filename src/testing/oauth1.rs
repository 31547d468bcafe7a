//! A server-side OAuth 1.0a verifier (RFC 5849 §3.2) for tests: HMAC-SHA1/256/512 and
//! PLAINTEXT signatures, parameters from the header, the query or a form body, the body hash,
//! and nonces used once.

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::request::Parts;
use percent_encoding::percent_decode_str;

use super::{Check, Verdict, constant_time_eq};
use crate::oauth1::SignatureMethod;
use crate::oauth1::signature::{base_string, base_uri, form_decode, normalize, sign, signing_key};
use crate::secret::Secret;

/// Checks OAuth 1.0a signatures made with a consumer key and secret (and a token and its
/// secret, if set). RSA signatures are not checked here (there is no public key to give it):
/// the crate's tests check those against `oauthlib`. The base string URI is the request URI
/// if it is absolute, else `http://` and the `Host` header (a server sees the path only).
///
/// ```
/// use tower_auth::testing::{OAuth1Check, RequireLayer};
///
/// let require = RequireLayer::new(OAuth1Check::new("app-key", "app-secret").token("tok", "tok-secret"));
/// # let _ = require;
/// ```
pub struct OAuth1Check {
    consumer_key: String,
    token: Option<String>,
    key: Secret,
    nonces: Mutex<HashSet<(String, String)>>,
}

impl OAuth1Check {
    /// A check for this consumer, two-legged (no token).
    pub fn new(consumer_key: &str, consumer_secret: &str) -> Self {
        OAuth1Check {
            consumer_key: consumer_key.to_owned(),
            token: None,
            key: Secret::new(signing_key(consumer_secret, "")),
            nonces: Mutex::new(HashSet::new()),
        }
    }

    /// Requires this token, signed with its secret (three-legged).
    pub fn token(mut self, token: &str, token_secret: &str) -> Self {
        let consumer_secret = self.key.expose().split('&').next().unwrap_or_default();
        let consumer_secret = percent_decode_str(consumer_secret).decode_utf8_lossy().into_owned();
        self.key = Secret::new(signing_key(&consumer_secret, token_secret));
        self.token = Some(token.to_owned());
        self
    }

    /// Checks one request: `Ok` or why not (the reason never holds a secret).
    ///
    /// # Errors
    ///
    /// A missing or unknown parameter, a wrong signature or body hash, a nonce seen before.
    pub fn verify(&self, req: &Parts, body: &Bytes) -> Result<(), String> {
        let mut params: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if let Some(value) = req.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            if let Some(rest) = value.strip_prefix("OAuth ") {
                for item in rest.split(',') {
                    let (name, value) = item.trim().split_once('=').ok_or("a header parameter without '='")?;
                    if name == "realm" {
                        continue;
                    }
                    let value = value.trim_matches('"');
                    let decode = |s: &str| percent_decode_str(s).collect::<Vec<u8>>();
                    params.push((decode(name), decode(value)));
                }
            }
        }
        if let Some(query) = req.uri.query() {
            params.extend(form_decode(query.as_bytes()));
        }
        let form = req.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
        });
        if form {
            params.extend(form_decode(body));
        }
        let get = |name: &str| {
            params.iter().find(|(n, _)| n == name.as_bytes()).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let signature = get("oauth_signature").ok_or("no oauth_signature")?;
        let method: SignatureMethod =
            get("oauth_signature_method").ok_or("no oauth_signature_method")?.parse().map_err(|_| "unknown method")?;
        if method.is_rsa() {
            return Err("RSA signatures are not checked by OAuth1Check".into());
        }
        if get("oauth_consumer_key").as_deref() != Some(self.consumer_key.as_str()) {
            return Err("unknown consumer key".into());
        }
        if get("oauth_token") != self.token {
            return Err("wrong or missing token".into());
        }
        let nonce = get("oauth_nonce").ok_or("no oauth_nonce")?;
        let timestamp = get("oauth_timestamp").ok_or("no oauth_timestamp")?;
        if let Some(hash) = get("oauth_body_hash") {
            if form {
                return Err("oauth_body_hash on a form body".into());
            }
            if !constant_time_eq(hash.as_bytes(), method.body_hash(std::slice::from_ref(body)).as_bytes()) {
                return Err("wrong oauth_body_hash".into());
            }
        }
        // A server sees the path only: the origin comes from `Host` (plain http, as TestServer).
        let uri = match base_uri(&req.uri) {
            Some(uri) => uri,
            None => {
                let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).ok_or("no Host")?;
                let full: http::Uri = format!("http://{host}{}", req.uri.path()).parse().map_err(|_| "bad Host")?;
                base_uri(&full).ok_or("bad Host")?
            }
        };
        let normalized = normalize(
            params.iter().filter(|(n, _)| n != b"oauth_signature").map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        let base = base_string(req.method.as_str(), &uri, &normalized);
        let expected = sign(method, self.key.expose(), None, &base).map_err(|_| "cannot sign")?;
        if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
            return Err("wrong signature".into());
        }
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        if !nonces.insert((timestamp, nonce)) {
            return Err("nonce used before".into());
        }
        Ok(())
    }
}

impl fmt::Debug for OAuth1Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth1Check")
            .field("consumer_key", &self.consumer_key)
            .field("token", &self.token)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

impl Check for OAuth1Check {
    fn check(&self, req: &Parts, body: &Bytes) -> Verdict {
        match self.verify(req, body) {
            Ok(()) => Verdict::Pass,
            Err(reason) => {
                tracing::debug!(%reason, "OAuth1Check: rejected");
                Verdict::challenge("OAuth realm=\"test\"")
            }
        }
    }
}
