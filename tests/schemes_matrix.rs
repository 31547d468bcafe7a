//! One table across every scheme: the rules of the crate's "Security" section, checked for each.
//!
//! Every row of [`cases`] is one scheme (or combination, router, box…) in front of an in-process
//! recording server ([`Recorder`]) that answers with the crate's own verifiers
//! (`tower_auth::testing`) or a hand-written proxy check. For each row, two fresh scheme
//! instances each send [`PLAIN_REQUESTS`] plain-`http://` requests and one request that already
//! carries the credential (instance A: the plain ones first; instance B: the caller's own
//! first), all under a `tracing` subscriber that captures everything at TRACE level. Checked:
//!
//! 1. **sensitive**: the credential header the server receives (for Digest and Guess, on every
//!    request that carries it, so on the authorised retry too) is marked sensitive, has the
//!    expected value, appears once, and the response is `200` (the server's verifier accepted
//!    it) after the expected number of round trips. The API key in the query has no header: the
//!    key is checked in the URI instead (a query cannot be marked sensitive);
//! 2. **caller wins**: a request that already carries the header reaches the server unchanged
//!    (value and flag), in one round trip. API key in the query: as documented on
//!    [`ApiKey`] (`with_query_param` in src/api_key.rs), the key *replaces* a same-named
//!    parameter in place, and the other parameters are kept;
//! 3. **no secret in logs or `Debug`**: the captured TRACE output, and the `Debug` of the layer,
//!    of the scheme and of the layered service, hold no password, token or key in any of the
//!    forms [`forms`] lists (raw, base64 alone and as `user:password`, percent-encoded, Digest's
//!    H(A1)); nor does a URI the server receives (except the API-key-in-the-query row, whose key
//!    belongs in the URI);
//! 4. **plain-http warning**: "over plain http" appears exactly once per scheme instance for the
//!    schemes that send a password readable on the path, and never for the others.
//!
//! Adding a scheme is one row. [`the_checks_catch_a_scheme_that_breaks_every_rule`] runs the same
//! checks on a scheme that breaks every rule, so none of them can pass vacuously.

use std::convert::Infallible;
use std::fmt;
use std::future::Ready;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{AUTHORIZATION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tower::util::BoxCloneService;
use tower::{Layer as _, Service, ServiceExt as _};
use tower_auth::digest::Algorithm;
use tower_auth::route::Router;
use tower_auth::testing::{BasicCheck, Check, DigestCheck, TokenCheck, Verdict};
use tower_auth::{
    AllOf, ApiKey, Auth, AuthLayer, AuthRequest, Basic, Bearer, BoxAuthenticator, BoxError, Credential, Digest,
    FirstOf, HeaderCredential, NetrcAuth, Once, Replay, UrlCredentials,
};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Plain-`http://` requests each scheme instance sends (besides the caller's-own one).
const PLAIN_REQUESTS: usize = 3;
/// The request every row sends (absolute form, as to a proxy; plain http).
const TARGET: &str = "http://api.test/v1/items?page=2";
/// The value a caller puts in the header a scheme would set.
const CALLER_OWN: &str = "caller-own-value";
/// What the warning for a password readable on the path says, whichever scheme logs it.
const WARNING: &str = "over plain http";

const USER: &str = "alice";
// One secret per row, each with a space or `/`, `+`, `=` (so percent-encoded and base64 forms
// differ from the raw one) and, where the scheme allows it, a character that is not ASCII.
// Values that go into a header as they are stay ASCII (the verifiers compare `to_str()`).
const BASIC_PW: &str = "basic S3cret/ö+=";
const BEARER_TOKEN: &str = "bearer-T0ken/+=x";
const API_KEY: &str = "apikey-K3y/+=x";
const QUERY_KEY: &str = "query K3y/ö+&=x";
const HEADER_TOKEN: &str = "hdr-T0ken/+=x";
const CLOSURE_KEY: &str = "closure-K3y/+=x";
const CUSTOM_KEY: &str = "custom-K3y/+=x";
const DIGEST_MD5_PW: &str = "md5 S3cret/ö+=";
const DIGEST_SHA_PW: &str = "sha256 S3cret/ö+=";
const GUESS_BASIC_PW: &str = "guessb S3cret/ö+=";
const GUESS_DIGEST_PW: &str = "guessd S3cret/ö+=";
const PROXY_BASIC_PW: &str = "pbasic S3cret/ö+=";
const PROXY_DIGEST_PW: &str = "pdigest S3cret/ö+=";
const PROXY_GUESS_B_PW: &str = "pguessb S3cret/ö+=";
const PROXY_GUESS_D_PW: &str = "pguessd S3cret/ö+=";
const ROUTE_BASIC_PW: &str = "rbasic S3cret/ö+=";
const ROUTE_OTHER_PW: &str = "rother S3cret/ö+=";
const ROUTE_TOKEN: &str = "route-T0ken/+=x";
const ROUTE_DIGEST_PW: &str = "rdigest S3cret/ö+=";
const NETRC_PW: &str = "netrc S3cret/ö+=";
const URL_PW: &str = "url S3cret/ö+=:@";
const ALLOF_KEY: &str = "allof-K3y/+=x";
const ALLOF_TOKEN: &str = "allof-T0ken/+=x";
const FIRSTOF_PW: &str = "firstof S3cret/ö+=";
const BOX_DIGEST_PW: &str = "boxd S3cret/ö+=";
const BOX_BASIC_PW: &str = "boxb S3cret/ö+=";
const ALLOF_DIGEST_KEY: &str = "allofd-K3y/+=x";
const ALLOF_DIGEST_PW: &str = "allofd S3cret/ö+=";

/// RFC 3986 `unreserved` kept, everything else encoded (the crate's set for query components).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

fn cases() -> Vec<Case> {
    let x_api_key = HeaderName::from_static("x-api-key");
    vec![
        Case::new("Basic", |r| erase(AuthLayer::basic(USER, BASIC_PW).unwrap(), r), || basic_check(BASIC_PW))
            .header(AUTHORIZATION, Want::exact(basic(USER, BASIC_PW)))
            .secret(Some(USER), BASIC_PW)
            .warns(),
        Case::new(
            "Bearer",
            |r| erase(AuthLayer::bearer(BEARER_TOKEN).unwrap(), r),
            || TokenCheck::bearer("api", BEARER_TOKEN),
        )
        .header(AUTHORIZATION, Want::exact(format!("Bearer {BEARER_TOKEN}")))
        .secret(None, BEARER_TOKEN),
        Case::new(
            "API key, header",
            |r| erase(AuthLayer::api_key(API_KEY).unwrap(), r),
            || TokenCheck::header("x-api-key", API_KEY),
        )
        .header(x_api_key.clone(), Want::exact(API_KEY))
        .secret(None, API_KEY),
        Case::new(
            "API key, query",
            |r| erase(AuthLayer::api_key_query(QUERY_KEY).unwrap(), r),
            || TokenCheck::query("api_key", QUERY_KEY),
        )
        .query("api_key", QUERY_KEY)
        .secret(None, QUERY_KEY),
        Case::new(
            "HeaderCredential",
            |r| erase(AuthLayer::new(HeaderCredential::new("Private-Token", HEADER_TOKEN).unwrap()), r),
            || TokenCheck::header("private-token", HEADER_TOKEN),
        )
        .header(HeaderName::from_static("private-token"), Want::exact(HEADER_TOKEN))
        .secret(None, HEADER_TOKEN),
        Case::new(
            "closure (AuthLayer::from_fn)",
            |r| {
                erase(
                    AuthLayer::from_fn(|req: &mut AuthRequest<'_>| {
                        // A plain (not sensitive) value: `set_credential` marks it.
                        req.set_credential(
                            &HeaderName::from_static("x-tenant-key"),
                            &HeaderValue::from_static(CLOSURE_KEY),
                        );
                    }),
                    r,
                )
            },
            || TokenCheck::header("x-tenant-key", CLOSURE_KEY),
        )
        .header(HeaderName::from_static("x-tenant-key"), Want::exact(CLOSURE_KEY))
        .secret(None, CLOSURE_KEY),
        Case::new(
            "custom Credential",
            |r| erase(AuthLayer::new(Signed { key: CUSTOM_KEY }), r),
            || TokenCheck::header("x-signature", &format!("GET {CUSTOM_KEY}")),
        )
        .header(HeaderName::from_static("x-signature"), Want::exact(format!("GET {CUSTOM_KEY}")))
        .secret(None, CUSTOM_KEY),
        Case::new(
            "Digest MD5",
            |r| erase(AuthLayer::digest(USER, DIGEST_MD5_PW).unwrap(), r),
            || DigestCheck::new("md5-realm").user(USER, DIGEST_MD5_PW).algorithms(&[Algorithm::Md5]),
        )
        .header(AUTHORIZATION, Want::digest("md5-realm", "MD5"))
        .digest_secret("md5-realm", DIGEST_MD5_PW)
        .challenged(),
        Case::new(
            "Digest SHA-256",
            |r| erase(AuthLayer::digest(USER, DIGEST_SHA_PW).unwrap(), r),
            || DigestCheck::new("sha-realm").user(USER, DIGEST_SHA_PW).algorithms(&[Algorithm::Sha256]),
        )
        .header(AUTHORIZATION, Want::digest("sha-realm", "SHA-256"))
        .digest_secret("sha-realm", DIGEST_SHA_PW)
        .challenged(),
        // Guess's Basic answer goes through the shared helpers (`basic_value`, `set_credential`,
        // `PlainHttpWarning`), like Basic itself.
        Case::new(
            "Guess answering Basic",
            |r| erase(AuthLayer::guess(USER, GUESS_BASIC_PW).unwrap(), r),
            || basic_check(GUESS_BASIC_PW),
        )
        .header(AUTHORIZATION, Want::exact(basic(USER, GUESS_BASIC_PW)))
        .secret(Some(USER), GUESS_BASIC_PW)
        .challenged()
        .warns(),
        Case::new(
            "Guess answering Digest",
            |r| erase(AuthLayer::guess(USER, GUESS_DIGEST_PW).unwrap(), r),
            || DigestCheck::new("guess-realm").user(USER, GUESS_DIGEST_PW).algorithms(&[Algorithm::Sha256]),
        )
        .header(AUTHORIZATION, Want::digest("guess-realm", "SHA-256"))
        .digest_secret("guess-realm", GUESS_DIGEST_PW)
        .challenged(),
        Case::new(
            "proxy Basic",
            |r| erase(AuthLayer::proxy_basic(USER, PROXY_BASIC_PW).unwrap(), r),
            || ProxyBasicCheck::new(PROXY_BASIC_PW),
        )
        .header(PROXY_AUTHORIZATION, Want::exact(basic(USER, PROXY_BASIC_PW)))
        .secret(Some(USER), PROXY_BASIC_PW)
        .warns(),
        Case::new(
            "proxy Digest",
            |r| erase(AuthLayer::proxy_digest(USER, PROXY_DIGEST_PW).unwrap(), r),
            || DigestCheck::new("proxy-realm").user(USER, PROXY_DIGEST_PW).proxy(true),
        )
        .header(PROXY_AUTHORIZATION, Want::digest("proxy-realm", "MD5"))
        .digest_secret("proxy-realm", PROXY_DIGEST_PW)
        .challenged(),
        Case::new(
            "proxy Guess answering Basic",
            |r| erase(AuthLayer::proxy_guess(USER, PROXY_GUESS_B_PW).unwrap(), r),
            || ProxyBasicCheck::new(PROXY_GUESS_B_PW),
        )
        .header(PROXY_AUTHORIZATION, Want::exact(basic(USER, PROXY_GUESS_B_PW)))
        .secret(Some(USER), PROXY_GUESS_B_PW)
        .challenged()
        .warns(),
        Case::new(
            "proxy Guess answering Digest",
            |r| erase(AuthLayer::proxy_guess(USER, PROXY_GUESS_D_PW).unwrap(), r),
            || {
                DigestCheck::new("pguess-realm")
                    .user(USER, PROXY_GUESS_D_PW)
                    .algorithms(&[Algorithm::Sha256])
                    .proxy(true)
            },
        )
        .header(PROXY_AUTHORIZATION, Want::digest("pguess-realm", "SHA-256"))
        .digest_secret("pguess-realm", PROXY_GUESS_D_PW)
        .challenged(),
        Case::new(
            "router, static routes (Router<Once>), Basic route",
            |r| {
                let layer: AuthLayer<Router<Once>> = AuthLayer::route()
                    .origin("http://api.test", Basic::new(USER, ROUTE_BASIC_PW).unwrap())
                    .unwrap()
                    .origin("http://other.test", Basic::new(USER, ROUTE_OTHER_PW).unwrap())
                    .unwrap()
                    .build();
                erase(layer, r)
            },
            || basic_check(ROUTE_BASIC_PW),
        )
        .header(AUTHORIZATION, Want::exact(basic(USER, ROUTE_BASIC_PW)))
        .secret(Some(USER), ROUTE_BASIC_PW)
        .secret(Some(USER), ROUTE_OTHER_PW)
        .warns(),
        Case::new(
            "router, static routes (Router<Once>), Bearer route",
            |r| {
                let layer: AuthLayer<Router<Once>> = AuthLayer::route()
                    .origin("http://api.test", Bearer::new(ROUTE_TOKEN).unwrap())
                    .unwrap()
                    .origin("http://other.test", Basic::new(USER, ROUTE_OTHER_PW).unwrap())
                    .unwrap()
                    .build();
                erase(layer, r)
            },
            || TokenCheck::bearer("api", ROUTE_TOKEN),
        )
        .header(AUTHORIZATION, Want::exact(format!("Bearer {ROUTE_TOKEN}")))
        .secret(None, ROUTE_TOKEN)
        .secret(Some(USER), ROUTE_OTHER_PW),
        Case::new(
            "router with a Digest route (Router<Replay>)",
            |r| {
                let layer: AuthLayer<Router<Replay>> = AuthLayer::route()
                    .origin("http://api.test", Digest::new(USER, ROUTE_DIGEST_PW).unwrap())
                    .unwrap()
                    .origin("http://other.test", Basic::new(USER, ROUTE_OTHER_PW).unwrap())
                    .unwrap()
                    .build();
                erase(layer, r)
            },
            || DigestCheck::new("route-realm").user(USER, ROUTE_DIGEST_PW),
        )
        .header(AUTHORIZATION, Want::digest("route-realm", "MD5"))
        .digest_secret("route-realm", ROUTE_DIGEST_PW)
        .secret(Some(USER), ROUTE_OTHER_PW)
        .challenged(),
        Case::new(
            "netrc (NetrcAuth from a file)",
            |r| {
                let mut file = tempfile::NamedTempFile::new().unwrap();
                writeln!(file, "machine other.test login bob password \"{ROUTE_OTHER_PW}\"").unwrap();
                writeln!(file, "machine api.test login {USER} password \"{NETRC_PW}\"").unwrap();
                erase(AuthLayer::new(NetrcAuth::from_path(file.path()).unwrap()), r)
            },
            || basic_check(NETRC_PW),
        )
        .header(AUTHORIZATION, Want::exact(basic(USER, NETRC_PW)))
        .secret(Some(USER), NETRC_PW)
        .secret(Some("bob"), ROUTE_OTHER_PW)
        .warns(),
        Case::new(
            "URL credentials (UrlCredentials)",
            |r| erase(AuthLayer::url_credentials(), r),
            || basic_check(URL_PW),
        )
        .uri(format!("http://{USER}:{}@api.test/v1/items?page=2", utf8_percent_encode(URL_PW, NON_ALPHANUMERIC)))
        .header(AUTHORIZATION, Want::exact(basic(USER, URL_PW)))
        .secret(Some(USER), URL_PW)
        .warns(),
        Case::new(
            "AllOf(API key header, Bearer)",
            |r| {
                erase(
                    AuthLayer::new(AllOf::new(ApiKey::header(ALLOF_KEY).unwrap(), Bearer::new(ALLOF_TOKEN).unwrap())),
                    r,
                )
            },
            || {
                Both(
                    Box::new(TokenCheck::header("x-api-key", ALLOF_KEY)),
                    Box::new(TokenCheck::bearer("api", ALLOF_TOKEN)),
                )
            },
        )
        .header(x_api_key.clone(), Want::exact(ALLOF_KEY))
        .header(AUTHORIZATION, Want::exact(format!("Bearer {ALLOF_TOKEN}")))
        .secret(None, ALLOF_KEY)
        .secret(None, ALLOF_TOKEN),
        Case::new(
            "AllOf(API key header, Digest)",
            |r| {
                let both =
                    AllOf::new(ApiKey::header(ALLOF_DIGEST_KEY).unwrap(), Digest::new(USER, ALLOF_DIGEST_PW).unwrap());
                erase(AuthLayer::new(both), r)
            },
            || {
                Both(
                    Box::new(TokenCheck::header("x-api-key", ALLOF_DIGEST_KEY)),
                    Box::new(DigestCheck::new("allof-realm").user(USER, ALLOF_DIGEST_PW)),
                )
            },
        )
        .header(x_api_key, Want::exact(ALLOF_DIGEST_KEY))
        .header(AUTHORIZATION, Want::digest("allof-realm", "MD5"))
        .secret(None, ALLOF_DIGEST_KEY)
        .digest_secret("allof-realm", ALLOF_DIGEST_PW)
        .challenged(),
        Case::new(
            "FirstOf(UrlCredentials, Basic)",
            |r| erase(AuthLayer::new(FirstOf::new(UrlCredentials::new(), Basic::new(USER, FIRSTOF_PW).unwrap())), r),
            || basic_check(FIRSTOF_PW),
        )
        .header(AUTHORIZATION, Want::exact(basic(USER, FIRSTOF_PW)))
        .secret(Some(USER), FIRSTOF_PW)
        .warns(),
        Case::new(
            "BoxAuthenticator(Digest)",
            |r| erase(AuthLayer::new(BoxAuthenticator::new(Digest::new(USER, BOX_DIGEST_PW).unwrap())), r),
            || DigestCheck::new("box-realm").user(USER, BOX_DIGEST_PW),
        )
        .header(AUTHORIZATION, Want::digest("box-realm", "MD5"))
        .digest_secret("box-realm", BOX_DIGEST_PW)
        .challenged(),
        Case::new(
            "BoxAuthenticator<Once>(Basic)",
            |r| erase(AuthLayer::new(BoxAuthenticator::once(Basic::new(USER, BOX_BASIC_PW).unwrap())), r),
            || basic_check(BOX_BASIC_PW),
        )
        .header(AUTHORIZATION, Want::exact(basic(USER, BOX_BASIC_PW)))
        .secret(Some(USER), BOX_BASIC_PW)
        .warns(),
    ]
}

/// A custom scheme in a few lines, as the `Credential` docs show: a header computed from the
/// request, set through `set_credential` (which applies the crate's rules).
struct Signed {
    key: &'static str,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signed { key: [redacted] }")
    }
}

impl Credential for Signed {
    fn apply(&self, req: &mut AuthRequest<'_>) {
        // A plain (not sensitive) value: `set_credential` marks it.
        let value = HeaderValue::try_from(format!("{} {}", req.method(), self.key)).unwrap();
        req.set_credential(&HeaderName::from_static("x-signature"), &value);
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_scheme_meets_every_rule() {
    let cases = cases();
    let mut verdicts = Verdicts::default();
    for case in &cases {
        run_case(case, &mut verdicts).await;
    }
    println!("{} cases, {} assertions", cases.len(), verdicts.run);
    for (rule, n) in &verdicts.by_rule {
        println!("  {rule}: {n}");
    }
    assert!(verdicts.failures.is_empty(), "{} of {} checks failed:\n{}", verdicts.failures.len(), verdicts.run, {
        verdicts.failures.join("\n")
    });
}

/// A scheme that breaks every rule: a header not marked sensitive, the caller's header
/// overwritten, its key logged and its base64 in `Debug`, and the warning on every request. The
/// same checks as the table's must catch each of these.
#[tokio::test]
async fn the_checks_catch_a_scheme_that_breaks_every_rule() {
    struct Leaky {
        key: &'static str,
    }
    impl fmt::Debug for Leaky {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Leaky({})", STANDARD.encode(self.key))
        }
    }
    impl Credential for Leaky {
        fn apply(&self, req: &mut AuthRequest<'_>) {
            tracing::trace!(key = self.key, "leaky: adding the key");
            tracing::warn!("leaky: sending a key {WARNING}");
            req.headers_mut().insert("x-leaky", HeaderValue::from_static(self.key));
        }
    }
    const LEAKY_KEY: &str = "leaky-K3y/+=x";
    let case = Case::new(
        "leaky",
        |r| erase(AuthLayer::new(Leaky { key: LEAKY_KEY }), r),
        || TokenCheck::header("x-leaky", LEAKY_KEY),
    )
    .header(HeaderName::from_static("x-leaky"), Want::exact(LEAKY_KEY))
    .secret(None, LEAKY_KEY)
    .warns();
    let mut verdicts = Verdicts::default();
    run_case(&case, &mut verdicts).await;
    for rule in [RULE_SENSITIVE, RULE_CALLER_WINS, RULE_LOGS, RULE_DEBUG, RULE_WARNING] {
        assert!(
            verdicts.failures.iter().any(|f| f.contains(rule)),
            "rule {rule:?} did not catch the leaky scheme; failures:\n{}",
            verdicts.failures.join("\n")
        );
    }
    // And the warning rule catches a scheme that should warn and does not.
    let silent = Case::new(
        "silent Basic",
        |r| erase(AuthLayer::bearer(BEARER_TOKEN).unwrap(), r),
        || TokenCheck::bearer("api", BEARER_TOKEN),
    )
    .header(AUTHORIZATION, Want::exact(format!("Bearer {BEARER_TOKEN}")))
    .secret(None, BEARER_TOKEN)
    .warns();
    let mut verdicts = Verdicts::default();
    run_case(&silent, &mut verdicts).await;
    assert!(verdicts.failures.iter().all(|f| f.contains(RULE_WARNING)), "{:?}", verdicts.failures);
    assert_eq!(verdicts.failures.len(), 2, "one per instance: {:?}", verdicts.failures);
}

/// Rule 4 across two origins: one scheme instance that serves two plain-http hosts. Asserts the
/// current behaviour of the schemes that hold one Basic credential per host.
#[tokio::test]
async fn plain_http_warning_across_two_origins() {
    struct Row {
        name: &'static str,
        make: fn(&Recorder) -> Built,
        /// Accepts the credentials of both hosts.
        check: fn() -> BasicCheck,
        warnings: usize,
    }
    let rows = [
        Row {
            name: "Basic",
            make: |r| erase(AuthLayer::basic(USER, BASIC_PW).unwrap(), r),
            check: || basic_check(BASIC_PW),
            warnings: 1,
        },
        // One warning flag per `Digest` instance, whatever the origins it learnt Basic for.
        Row {
            name: "Guess answering Basic",
            make: |r| erase(AuthLayer::guess(USER, GUESS_BASIC_PW).unwrap(), r),
            check: || basic_check(GUESS_BASIC_PW),
            warnings: 1,
        },
        // Each `origin` owns its scheme instance (documented in `tower_auth::route`): one warning
        // per Basic route.
        Row {
            name: "router with two Basic routes",
            make: |r| {
                let layer: AuthLayer<Router<Once>> = AuthLayer::route()
                    .origin("http://api.test", Basic::new(USER, ROUTE_BASIC_PW).unwrap())
                    .unwrap()
                    .origin("http://other.test", Basic::new(USER, ROUTE_OTHER_PW).unwrap())
                    .unwrap()
                    .build();
                erase(layer, r)
            },
            check: || basic_check(ROUTE_BASIC_PW).user(USER, ROUTE_OTHER_PW),
            warnings: 2,
        },
        // One `NetrcAuth` warns once for the whole file, whichever entries it uses.
        Row {
            name: "netrc with two hosts",
            make: |r| {
                let mut file = tempfile::NamedTempFile::new().unwrap();
                writeln!(file, "machine api.test login {USER} password \"{NETRC_PW}\"").unwrap();
                writeln!(file, "machine other.test login bob password \"{ROUTE_OTHER_PW}\"").unwrap();
                erase(AuthLayer::new(NetrcAuth::from_path(file.path()).unwrap()), r)
            },
            check: || basic_check(NETRC_PW).user("bob", ROUTE_OTHER_PW),
            warnings: 1,
        },
    ];
    let mut failures = Vec::new();
    for row in &rows {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("trace"))
            .with_ansi(false)
            .with_writer(capture.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let recorder = Recorder::new(Arc::new((row.check)()));
        let built = (row.make)(&recorder);
        for uri in ["http://api.test/a", "http://other.test/b", "http://api.test/c", "http://other.test/d"] {
            let req = Request::get(uri).body(Empty::new()).unwrap();
            let res = built.svc.clone().oneshot(req).await;
            let status = res.map(|r| r.status()).map_err(|e| e.to_string());
            assert_eq!(status, Ok(StatusCode::OK), "{}: {uri}", row.name);
        }
        drop(guard);
        let got = capture.text().matches(WARNING).count();
        if got != row.warnings {
            failures.push(format!("{}: {got} warnings, {} expected:\n{}", row.name, row.warnings, capture.text()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn secret_forms_cover_base64_and_percent_encoding() {
    let forms = forms(Some("Aladdin"), "open sesame");
    let has = |s: &str| forms.iter().any(|(_, f)| s.contains(f.as_str()));
    assert!(has("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")); // RFC 7617 §2
    assert!(has("?k=open%20sesame"));
    assert!(has("?k=open+sesame"));
    assert!(has("b3BlbiBzZXNhbWU")); // base64("open sesame"), unpadded
    assert!(!has("Basic QWxhZGRpbjpvcGVu"));
    assert!(!has("open-sesame"));
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

const RULE_SENSITIVE: &str = "rule 1 (sensitive header)";
const RULE_ACCEPTED: &str = "rule 1 (credential accepted)";
const RULE_CALLER_WINS: &str = "rule 2 (caller's own header wins)";
const RULE_LOGS: &str = "rule 3 (no secret in TRACE logs)";
const RULE_DEBUG: &str = "rule 3 (no secret in Debug)";
const RULE_URI: &str = "rule 3 (no secret in the URI sent)";
const RULE_WARNING: &str = "rule 4 (plain-http warning exactly once)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A plain request: the scheme adds its credentials.
    Plain,
    /// A request that carries the credential header already.
    CallerOwn,
}

async fn run_case(case: &Case, v: &mut Verdicts) {
    let plain = [Step::Plain; PLAIN_REQUESTS];
    // Instance A: plain requests, then the caller's own (the scheme has learnt its server).
    let a: Vec<Step> = plain.iter().copied().chain([Step::CallerOwn]).collect();
    // Instance B: the caller's own first (a fresh scheme), then plain requests.
    let b: Vec<Step> = [Step::CallerOwn].into_iter().chain(plain).collect();
    run_instance(case, "A", &a, v).await;
    run_instance(case, "B", &b, v).await;
}

async fn run_instance(case: &Case, instance: &str, steps: &[Step], v: &mut Verdicts) {
    let name = format!("{} / instance {instance}", case.name);
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("trace"))
        .with_span_events(FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(capture.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::trace!(case = case.name, instance, "matrix: instance start");

    let recorder = Recorder::new((case.check)());
    let built = (case.make)(&recorder);
    let mut plain_sent = 0;
    for step in steps {
        match step {
            Step::Plain => {
                let req = Request::get(case.uri.as_str()).body(Empty::new()).unwrap();
                let res = built.svc.clone().oneshot(req).await;
                let seen = recorder.take();
                check_plain(case, &name, plain_sent == 0, res, &seen, v);
                plain_sent += 1;
            }
            Step::CallerOwn => {
                let (req, expected_uri) = caller_own_request(case);
                let res = built.svc.clone().oneshot(req).await;
                let seen = recorder.take();
                check_caller_own(case, &name, res, &seen, expected_uri, v);
            }
        }
    }
    let debug = (built.debug)();
    tracing::trace!(case = case.name, instance, "matrix: instance end");
    drop(guard);
    let logs = capture.text();

    v.check(&name, RULE_LOGS, logs.contains("matrix: instance start") && logs.contains("matrix: instance end"), || {
        format!("the TRACE capture did not record the test's own events:\n{logs}")
    });
    for (form, secret) in &case.secrets {
        v.check(&name, RULE_LOGS, !logs.contains(secret.as_str()), || format!("{form} appears in the logs:\n{logs}"));
        v.check(&name, RULE_DEBUG, !debug.contains(secret.as_str()), || format!("{form} appears in Debug: {debug}"));
    }
    v.check(&name, RULE_DEBUG, !debug.is_empty(), || "empty Debug".into());
    let warnings = logs.matches(WARNING).count();
    let expected = usize::from(case.warns);
    v.check(&name, RULE_WARNING, warnings == expected, || {
        format!(
            "{warnings} \"{WARNING}\" warnings over {PLAIN_REQUESTS} plain-http requests, {expected} expected:\n{logs}"
        )
    });
}

fn check_plain(
    case: &Case,
    name: &str,
    first: bool,
    res: Result<Response<Empty<Bytes>>, BoxError>,
    seen: &[Seen],
    v: &mut Verdicts,
) {
    let status = res.as_ref().map(|r| r.status()).map_err(|e| e.to_string());
    v.check(name, RULE_ACCEPTED, status == Ok(StatusCode::OK), || format!("response {status:?}, 200 expected"));
    let trips = if first && case.challenged { 2 } else { 1 };
    v.check(name, RULE_ACCEPTED, seen.len() == trips, || format!("{} round trips, {trips} expected", seen.len()));
    let Some(last) = seen.last() else { return };
    for want in &case.sets {
        match want {
            Sets::Header(header, value) => {
                let values: Vec<&HeaderValue> = last.headers.get_all(header).iter().collect();
                v.check(name, RULE_ACCEPTED, values.len() == 1 && value.matches(values[0]), || {
                    format!("{header}: {values:?}, expected {value:?}")
                });
                // Every request that carries it (the authorised retry of Digest and Guess too).
                for (i, s) in seen.iter().enumerate() {
                    for got in s.headers.get_all(header) {
                        v.check(name, RULE_SENSITIVE, got.is_sensitive(), || {
                            format!("{header} of round trip {} is not marked sensitive", i + 1)
                        });
                    }
                }
                v.check(name, RULE_SENSITIVE, !values.is_empty(), || format!("no {header} on the authorised request"));
            }
            Sets::Query { param, encoded } => {
                let pair = format!("{param}={encoded}");
                let count = last.uri.query().unwrap_or("").split('&').filter(|p| *p == pair).count();
                v.check(name, RULE_ACCEPTED, count == 1, || format!("{pair} {count} times in {}", last.uri));
            }
        }
    }
    check_uris(case, name, seen, v);
}

/// The caller's request carrying what the scheme would set, and (for the query variant) the URI
/// the server must receive.
fn caller_own_request(case: &Case) -> (Request<Empty<Bytes>>, Option<String>) {
    let mut uri = case.uri.clone();
    let mut expected_uri = None;
    let mut headers = HeaderMap::new();
    for want in &case.sets {
        match want {
            Sets::Header(header, _) => {
                headers.insert(header.clone(), HeaderValue::from_static(CALLER_OWN));
            }
            Sets::Query { param, encoded } => {
                // The caller's own parameter of that name comes first, another one after it.
                let (path, query) = case.uri.split_once('?').unwrap_or((case.uri.as_str(), ""));
                let rest = if query.is_empty() { String::new() } else { format!("&{query}") };
                uri = format!("{path}?{param}={CALLER_OWN}{rest}");
                expected_uri = Some(format!("{path}?{param}={encoded}{rest}"));
            }
        }
    }
    let mut req = Request::get(uri.as_str()).body(Empty::new()).unwrap();
    *req.headers_mut() = headers;
    (req, expected_uri)
}

fn check_caller_own(
    case: &Case,
    name: &str,
    res: Result<Response<Empty<Bytes>>, BoxError>,
    seen: &[Seen],
    expected_uri: Option<String>,
    v: &mut Verdicts,
) {
    v.check(name, RULE_CALLER_WINS, res.is_ok(), || format!("the request failed: {:?}", res.as_ref().err()));
    // The server refuses the caller's value; the scheme must not answer for the caller.
    v.check(name, RULE_CALLER_WINS, seen.len() == 1, || format!("{} round trips, 1 expected", seen.len()));
    let Some(first) = seen.first() else { return };
    for want in &case.sets {
        match want {
            Sets::Header(header, _) => {
                let values: Vec<&HeaderValue> = first.headers.get_all(header).iter().collect();
                let unchanged = values.len() == 1 && values[0] == CALLER_OWN && !values[0].is_sensitive();
                v.check(name, RULE_CALLER_WINS, unchanged, || {
                    format!("{header}: {values:?} (sensitive: {:?}), the caller's {CALLER_OWN:?} expected unchanged", {
                        values.iter().map(|v| v.is_sensitive()).collect::<Vec<_>>()
                    })
                });
            }
            Sets::Query { .. } => {
                // Documented (src/api_key.rs, `with_query_param` and the `ApiKey` example): the
                // key replaces a same-named parameter in place; other parameters are kept.
                let expected = expected_uri.as_deref().unwrap_or_default();
                v.check(name, RULE_CALLER_WINS, first.uri == expected, || {
                    format!("sent {}, expected {expected} (the key replaces the caller's parameter)", first.uri)
                });
            }
        }
    }
    check_uris(case, name, seen, v);
}

/// No secret in a URI the server receives (user info removed by UrlCredentials), except for the
/// API key in the query, which belongs there.
fn check_uris(case: &Case, name: &str, seen: &[Seen], v: &mut Verdicts) {
    if case.sets.iter().any(|s| matches!(s, Sets::Query { .. })) {
        return;
    }
    for s in seen {
        let uri = s.uri.to_string();
        v.check(name, RULE_URI, s.uri.authority().is_none_or(|a| !a.as_str().contains('@')), || {
            format!("user info in the URI sent: {uri}")
        });
        for (form, secret) in &case.secrets {
            v.check(name, RULE_URI, !uri.contains(secret.as_str()), || format!("{form} in the URI sent: {uri}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rows and expectations
// ---------------------------------------------------------------------------------------------

/// A scheme instance in front of the recorder, erased to one service type.
struct Built {
    svc: Client,
    /// `Debug` of the layer (hence of the scheme) and of the layered service, taken after the
    /// requests (when Digest has learnt its protection spaces).
    debug: Box<dyn Fn() -> String>,
}

type Client = BoxCloneService<Request<Empty<Bytes>>, Response<Empty<Bytes>>, BoxError>;

/// Puts any scheme's layer in front of the recorder, as one type: whatever the body type the
/// recorder receives (the caller's, or `ReplayBody`) and whatever the error type.
fn erase<A>(layer: AuthLayer<A>, recorder: &Recorder) -> Built
where
    A: fmt::Debug + Send + Sync + 'static,
    Auth<Recorder, A>: Service<Request<Empty<Bytes>>, Response = Response<Empty<Bytes>>> + Clone + Send + 'static,
    <Auth<Recorder, A> as Service<Request<Empty<Bytes>>>>::Error: Into<BoxError>,
    <Auth<Recorder, A> as Service<Request<Empty<Bytes>>>>::Future: Send + 'static,
{
    let svc = layer.layer(recorder.clone());
    let for_debug = layer.layer(recorder.clone());
    let svc = BoxCloneService::new(svc.map_err(Into::into));
    Built { svc, debug: Box::new(move || format!("{layer:?}\n{:?}\n{for_debug:?}", layer.authenticator())) }
}

struct Case {
    name: &'static str,
    make: fn(&Recorder) -> Built,
    check: Box<dyn Fn() -> Arc<dyn Check>>,
    uri: String,
    sets: Vec<Sets>,
    /// (what it is, the string that must not appear).
    secrets: Vec<(String, String)>,
    /// The scheme sends a password readable on the path: it warns once over plain http.
    warns: bool,
    /// The first request meets a challenge (two round trips).
    challenged: bool,
}

impl Case {
    fn new<C: Check>(name: &'static str, make: fn(&Recorder) -> Built, check: fn() -> C) -> Self {
        Case {
            name,
            make,
            check: Box::new(move || Arc::new(check()) as Arc<dyn Check>),
            uri: TARGET.to_owned(),
            sets: Vec::new(),
            secrets: Vec::new(),
            warns: false,
            challenged: false,
        }
    }

    fn uri(mut self, uri: String) -> Self {
        self.uri = uri;
        self
    }

    fn header(mut self, name: HeaderName, want: Want) -> Self {
        self.sets.push(Sets::Header(name, want));
        self
    }

    fn query(mut self, param: &'static str, key: &str) -> Self {
        self.sets.push(Sets::Query { param, encoded: utf8_percent_encode(key, UNRESERVED).to_string() });
        self
    }

    fn secret(mut self, user: Option<&str>, secret: &str) -> Self {
        self.secrets.extend(forms(user, secret));
        self
    }

    /// A Digest password: its forms, and H(A1) (which stands for the password) in the realm.
    fn digest_secret(mut self, realm: &str, password: &str) -> Self {
        let a1 = format!("{USER}:{realm}:{password}");
        self.secrets.push(("H(A1) MD5".into(), hex(&<md5::Md5 as md5::Digest>::digest(a1.as_bytes()))));
        self.secrets.push(("H(A1) SHA-256".into(), hex(&<sha2::Sha256 as sha2::Digest>::digest(a1.as_bytes()))));
        self.secret(Some(USER), password)
    }

    fn warns(mut self) -> Self {
        self.warns = true;
        self
    }

    fn challenged(mut self) -> Self {
        self.challenged = true;
        self
    }
}

/// What a scheme puts on a request.
enum Sets {
    Header(HeaderName, Want),
    /// The API key in the query: `param=encoded`.
    Query {
        param: &'static str,
        encoded: String,
    },
}

#[derive(Debug)]
enum Want {
    Exact(String),
    /// Every one of these substrings.
    Contains(Vec<String>),
}

impl Want {
    fn exact(value: impl Into<String>) -> Self {
        Want::Exact(value.into())
    }

    fn digest(realm: &str, algorithm: &str) -> Self {
        Want::Contains(vec![
            "Digest ".into(),
            format!("username=\"{USER}\""),
            format!("realm=\"{realm}\""),
            format!("algorithm={algorithm}"),
            "response=\"".into(),
        ])
    }

    fn matches(&self, value: &HeaderValue) -> bool {
        let Ok(value) = value.to_str() else { return false };
        match self {
            Want::Exact(want) => value == want,
            Want::Contains(parts) => value.starts_with(parts[0].as_str()) && parts.iter().all(|p| value.contains(p)),
        }
    }
}

/// The forms a secret must not appear in: raw, percent-encoded (every non-alphanumeric byte;
/// RFC 3986 unreserved kept; form-encoded with `+` for space), base64 (standard and URL-safe,
/// padded or not), and base64 of `user:secret` as Basic sends it.
fn forms(user: Option<&str>, secret: &str) -> Vec<(String, String)> {
    let mut out = vec![("the secret".to_owned(), secret.to_owned())];
    let pct_all = utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string();
    let pct_query = utf8_percent_encode(secret, UNRESERVED).to_string();
    out.push(("the secret percent-encoded".into(), pct_all.clone()));
    out.push(("the secret percent-encoded (lower-case hex)".into(), lower_hex_escapes(&pct_all)));
    out.push(("the secret percent-encoded (unreserved kept)".into(), pct_query.clone()));
    out.push(("the secret form-encoded".into(), pct_query.replace("%20", "+")));
    let mut b64 = |what: &str, bytes: &[u8]| {
        for (engine, name) in [
            (&STANDARD, "base64"),
            (&STANDARD_NO_PAD, "base64, unpadded"),
            (&URL_SAFE, "base64url"),
            (&URL_SAFE_NO_PAD, "base64url, unpadded"),
        ] {
            out.push((format!("{name}({what})"), engine.encode(bytes)));
        }
    };
    b64("secret", secret.as_bytes());
    if let Some(user) = user {
        b64("user:secret", format!("{user}:{secret}").as_bytes());
    }
    out.sort();
    out.dedup_by(|a, b| a.1 == b.1);
    out
}

fn lower_hex_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn basic_check(password: &str) -> BasicCheck {
    BasicCheck::new("api").user(USER, password)
}

// ---------------------------------------------------------------------------------------------
// The server side
// ---------------------------------------------------------------------------------------------

/// What the server received.
#[derive(Debug)]
struct Seen {
    uri: Uri,
    /// Cloned as received: `HeaderValue::clone` keeps the sensitive flag.
    headers: HeaderMap,
}

/// An in-process server: records every request and answers with a [`Check`]'s verdict. It takes
/// any request body type (the caller's, or `ReplayBody` under schemes that replay).
#[derive(Clone)]
struct Recorder {
    check: Arc<dyn Check>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn new(check: Arc<dyn Check>) -> Self {
        Recorder { check, seen: Arc::default() }
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recorder")
    }
}

impl<B: Send + 'static> Service<Request<B>> for Recorder {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Empty<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, _body) = req.into_parts();
        self.seen.lock().unwrap().push(Seen { uri: parts.uri.clone(), headers: parts.headers.clone() });
        let mut res = Response::new(Empty::new());
        match self.check.check(&parts, &Bytes::new()) {
            Verdict::Pass => {}
            Verdict::PassWith { headers } => res.headers_mut().extend(headers.into_iter().map(|(n, v)| (Some(n), v))),
            Verdict::Reject { status, headers } => {
                *res.status_mut() = status;
                res.headers_mut().extend(headers.into_iter().map(|(n, v)| (Some(n), v)));
            }
        }
        std::future::ready(Ok(res))
    }
}

/// A proxy that wants Basic: `407` with `Proxy-Authenticate: Basic` until the request carries
/// the right `Proxy-Authorization`.
struct ProxyBasicCheck {
    expected: String,
}

impl ProxyBasicCheck {
    fn new(password: &str) -> Self {
        ProxyBasicCheck { expected: basic(USER, password) }
    }
}

impl Check for ProxyBasicCheck {
    fn check(&self, req: &Parts, _: &Bytes) -> Verdict {
        if req.headers.get(PROXY_AUTHORIZATION).is_some_and(|v| v.as_bytes() == self.expected.as_bytes()) {
            return Verdict::Pass;
        }
        Verdict::Reject {
            status: StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            headers: vec![(PROXY_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"proxy\""))],
        }
    }
}

/// Both checks must pass; the first refusal is the answer.
struct Both(Box<dyn Check>, Box<dyn Check>);

impl Check for Both {
    fn check(&self, req: &Parts, body: &Bytes) -> Verdict {
        match self.0.check(req, body) {
            Verdict::Pass | Verdict::PassWith { .. } => self.1.check(req, body),
            refused => refused,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks and the log capture
// ---------------------------------------------------------------------------------------------

/// Every check run, and the failed ones (so one run reports every failure of every case).
#[derive(Default)]
struct Verdicts {
    run: usize,
    by_rule: std::collections::BTreeMap<String, usize>,
    failures: Vec<String>,
}

impl Verdicts {
    fn check(&mut self, case: &str, rule: &str, ok: bool, detail: impl FnOnce() -> String) {
        self.run += 1;
        *self.by_rule.entry(rule.to_owned()).or_default() += 1;
        if !ok {
            self.failures.push(format!("[{case}] {rule}: {}", detail()));
        }
    }
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}
