//! `fetch`: a small curl-like client built on tower-auth.
//!
//! ```text
//! cargo run --release --example fetch -- [OPTIONS] URL
//! ```
//!
//! The service stack, outermost first:
//!
//! 1. [`AuthLayer`] with the schemes given on the command line (combined with [`AllOf`]);
//! 2. a counting layer written here ([`Count`]): it counts every exchange that left the auth
//!    layer (a scheme that answers challenges makes more than one per request) and, with `-v`,
//!    logs each one with its credentials redacted;
//! 3. hyper-util's legacy client, over [`ProxyConnector`] (direct, or through the proxy of `-x` or
//!    of the environment: absolute form for `http://`, a `CONNECT` tunnel answering the proxy's
//!    `407` for `https://`) wrapped in hyper-rustls (TLS, HTTP/2 by ALPN).
//!
//! Every scheme combination is a different service type; [`finish`] erases them all to one
//! [`BoxCloneService`], so the rest of the program does not care which schemes are in use.
//!
//! Standard error always ends with one `summary ...` line (see [`Tally::summary`]), except for
//! `--help` and usage errors, which print one `fetch: ...` line and exit with status 2.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::rt::TokioExecutor;
use percent_encoding::percent_decode_str;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_auth::connect::tls::TlsConfig;
use tower_auth::connect::{Proxies, Proxy, ProxyAuth, ProxyConnector, ThroughProxy, redact_userinfo};
use tower_auth::engine::ModeBody;
use tower_auth::ntlm::{ConnectAuth, Credentials as WinCredentials, Mechanism, WindowsAuth};
use tower_auth::oauth2::{ClientAuth, JwtAlgorithm, OAuth2, PrivateKey, TokenProvider};
use tower_auth::route::{RouteBuilder, Router};
use tower_auth::{
    AllOf, ApiKey, Auth, AuthLayer, AuthRequest, Authenticator, Authorize, Basic, Bearer, ConfigError, Digest, NoWait,
    Once, Replay,
};
use tower_auth::{BoxAuthenticator, NetrcAuth};
use tower_http::follow_redirect::FollowRedirectLayer;

/// The one service type every scheme combination is erased to.
type Svc = BoxCloneService<Request<Full<Bytes>>, Response<RespBody>, BoxError>;

/// The response body every service is erased to: hyper's, or the connection-bound client's
/// (which gives its connection back to its pool when read to the end).
type RespBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Erases a response body to [`RespBody`].
fn erase_body<B>(res: Response<B>) -> Response<RespBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    res.map(|b| b.map_err(Into::into).boxed_unsync())
}

const USAGE: &str = "\
usage: fetch [OPTIONS] URL

Sends an HTTP request (http:// or https://, HTTP/2 by ALPN) with credentials added by
tower-auth layers.

options:
  -u, --user USER:PASS         credentials for the server: Basic by default
      --basic                  send --user as Basic, pre-emptively (the default)
      --digest                 answer the server's Digest challenge with --user (RFC 7616)
      --anyauth                Digest if the server offers it, else Basic (Guess)
      --ntlm                   NTLM with --user (USER, DOMAIN\\USER or USER@DOMAIN), on
                               connections of fetch's own that stay authenticated
      --negotiate              Negotiate (SPNEGO) with --user, likewise: Kerberos (the KDC of
                               the realm in $KRB5_CONFIG or /etc/krb5.conf; user as
                               REALM\\USER or USER@REALM), else NTLM inside SPNEGO; with
                               -u : the ticket of the credential cache (kinit, $KRB5CCNAME;
                               needs --features gssapi: the system's Kerberos library)
      --keytab FILE            with --negotiate: the key of -u PRINCIPAL: (or of the file's
                               first principal with -u :) from this MIT keytab, no password
  -x, --proxy URL              send requests through this proxy (http:// or https://, with
                               optional USER:PASS@): absolute form for http:// URLs, a CONNECT
                               tunnel for https:// URLs. Without it, the proxies of
                               http_proxy, https_proxy, all_proxy (and upper-case) are used
      --noproxy LIST           hosts that go direct (comma-separated, as NO_PROXY; '*': all,
                               so no proxy from the environment)
      --cacert FILE            also trust the CA certificates of this PEM file
  -k, --insecure               do not verify the server's certificate (dangerous)
  -U, --proxy-user USER:PASS   credentials for the proxy (on CONNECT for https:// URLs): Basic
                               by default; without it, the proxy URL's user info
      --proxy-basic            send --proxy-user as Basic, pre-emptively (the default)
      --proxy-digest           answer the proxy's Digest challenge (407) with --proxy-user
      --proxy-anyauth          Digest if the proxy offers it, else Basic
      --proxy-ntlm             NTLM to the proxy with --proxy-user (its own connections for
                               http:// URLs, the CONNECT for https:// URLs)
      --proxy-negotiate        Negotiate to the proxy with --proxy-user, likewise (-U :
                               for the credential cache's ticket)
      --bearer TOKEN           a bearer token
      --api-key NAME:VALUE     an API key in the header NAME
      --api-key-query NAME=VALUE
                               an API key in the query parameter NAME
      --netrc                  credentials from ~/.netrc (or $NETRC) for the URL's host
      --netrc-file PATH        credentials from this netrc file
      --auth-for ORIGIN=SCHEME:CREDENTIALS
                               credentials for one origin only (repeatable); SCHEME is basic,
                               digest or anyauth (USER:PASS), bearer (TOKEN), api-key
                               (NAME:VALUE) or api-key-query (NAME=VALUE); e.g.
                               --auth-for http://127.0.0.1:8080=bearer:TOKEN
      --oauth2-token-url URL   OAuth2: get access tokens from this token endpoint
      --oauth2-issuer URL      OAuth2: find the token endpoint in this issuer's metadata
                               (RFC 8414, then OpenID Connect discovery)
      --client-id ID           OAuth2 client id
      --client-secret SECRET   OAuth2 client secret
      --token-auth METHOD      client authentication: basic (default), post, private-key-jwt
                               or none
      --private-key PEM_FILE   private key for private-key-jwt (RSA: RS256, EC: ES256)
      --key-id KID             the kid header of private-key-jwt assertions
      --scope S                OAuth2 scope (repeatable)
      --audience A             OAuth2 audience parameter
      --resource URI           OAuth2 resource indicator (RFC 8707; repeatable)
      --grant GRANT            client_credentials (default), password (with --user) or
                               refresh_token (with --refresh-token)
      --refresh-token RT       the refresh token of --grant refresh_token
      --token-cache FILE       keep OAuth2 tokens in this JSON file (0600), so the next run
                               reuses a valid token instead of asking for one
      --token-store redis://HOST:PORT/DB
                               share OAuth2 tokens through Redis (rediss:// for TLS; user and
                               password in the URL): several fetch processes act as replicas of
                               one client, one token request per renewal for all of them
      --token-store-prefix P   the Redis key prefix (default tower-auth)
      --oauth2-auth-code AUTH_URL
                               OAuth2 authorization code with PKCE: the browser opens AUTH_URL
                               and comes back to a listener on 127.0.0.1 (with
                               --oauth2-token-url, --client-id, optional --client-secret)
      --pkce                   PKCE S256 (the default with --oauth2-auth-code; kept for curl-like
                               scripts)
      --redirect-port PORT[,PORT...]
                               the listener's port (default 5000; 0 for any free port), then
                               fallbacks tried in turn when it is taken
      --oauth2-implicit AUTH_URL
                               OAuth2 implicit grant (discouraged; for servers that need it):
                               the access token comes back through the browser (with
                               --client-id)
      --oauth2-device DEVICE_AUTH_URL
                               OAuth2 device code: shows a URL and a code, then polls (with
                               --oauth2-token-url, --client-id)
      --oauth1 CONSUMER_KEY:CONSUMER_SECRET[:TOKEN:TOKEN_SECRET]
                               sign every request with OAuth 1.0a (RFC 5849); with the
                               options below (not with --user, --bearer, --digest, --auth-for
                               or OAuth2)
      --oauth1-method METHOD   HMAC-SHA1 (default), HMAC-SHA256, HMAC-SHA512, RSA-SHA1,
                               RSA-SHA256, RSA-SHA512 or PLAINTEXT
      --oauth1-key PEM_FILE    the RSA private key of the RSA methods (PKCS#8 or PKCS#1)
      --oauth1-realm REALM     the realm of the Authorization header
      --oauth1-body-hash       add oauth_body_hash to bodies that are not forms
      --oauth1-in PLACE        where the parameters go: header (default), query or body
      --rate R                 at most R requests per second across all workers (a run can
                               then span token expiries)
  -L, --location               follow redirects; credentials go only where they belong
  -X, --request METHOD         the method (default GET, or POST with --data)
  -d, --data DATA              the request body (sets Content-Type to
                               application/x-www-form-urlencoded unless -H gives one)
  -H, --header 'Name: value'   an extra request header (repeatable)
  -n, --count N                send the request N times through one shared service (default 1)
  -c, --concurrency C          at most C requests in flight at once (default 1)
  -v, --verbose                log each exchange on stderr, credentials redacted, and the
                               crate's debug lines (its warnings are always shown;
                               RUST_LOG=... overrides, as usual)
  -h, --help                   print this help

Several credential options combine: --api-key with --bearer sends both. The response body is
printed on stdout when N is 1. Standard error ends with a summary line:
  summary requests=N ok=K statuses=200:K[,401:M...] round_trips=R token_requests=T elapsed_ms=E
(round_trips counts the CONNECT exchanges with a proxy too). With --ntlm, --negotiate,
--proxy-ntlm or --proxy-negotiate, round_trips counts every leg of every handshake, and a line
before the summary tells the connections:
  windows-auth connections=C handshakes=H failed_handshakes=F reused=R
Exit status: 0 if every response was 2xx, 1 otherwise, 2 for a usage or configuration error.
";

/// The crate's log lines on stderr: its warnings always (Basic over plain http, a body over the
/// replay limit), its debug lines too with `-v` (a challenge from another origin, a scheme's
/// choices); `RUST_LOG` overrides both, as usual. The crate never logs a secret.
fn init_tracing(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if verbose { "tower_auth=debug" } else { "tower_auth=warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(args) {
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Some(opts)) => opts,
        Err(msg) => {
            eprintln!("fetch: {msg}");
            return ExitCode::from(2);
        }
    };
    init_tracing(opts.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("fetch: cannot start the runtime: {err}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(opts))
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// What the command line asks for.
struct Opts {
    url: Uri,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    count: usize,
    concurrency: usize,
    verbose: bool,
    creds: Creds,
    net: Net,
    location: bool,
    rate: Option<f64>,
}

/// Proxies and TLS: `-x`, `--noproxy`, `-U` and its mode, `--cacert`, `-k`.
struct Net {
    proxies: Proxies,
    proxy_user: Option<(String, String)>,
    proxy_mode: UserMode,
    tls: TlsConfig,
}

/// The credentials given on the command line, already validated by tower-auth's constructors.
#[derive(Default)]
struct Creds {
    /// Schemes that add a fixed header or query parameter to every request.
    statics: Vec<StaticScheme>,
    /// `--user` with `--digest` or `--anyauth`.
    digest: Option<Digest>,
    /// `--proxy-user` with `--proxy-digest` or `--proxy-anyauth`.
    proxy_digest: Option<ThroughProxy<Digest>>,
    /// `--auth-for`: schemes bound to one origin each.
    routes: Option<RouteBuilder<Replay>>,
    /// Headers of API keys (for the log).
    key_headers: Vec<HeaderName>,
    /// Query parameters of API keys (for the log).
    key_queries: Vec<String>,
    /// `--oauth2-token-url` / `--oauth2-issuer` and friends.
    oauth2: Option<OAuthOpts>,
    /// `--oauth1` and friends.
    oauth1: Option<tower_auth::oauth1::OAuth1>,
    /// `--user` with `--ntlm` or `--negotiate`.
    windows: Option<(Mechanism, WinCredentials)>,
    /// `--proxy-user` with `--proxy-ntlm` or `--proxy-negotiate`.
    windows_proxy: Option<(Mechanism, WinCredentials)>,
}

/// The OAuth2 options; the provider is built when the run starts (discovery is a request).
#[derive(Default)]
struct OAuthOpts {
    token_url: Option<String>,
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    token_auth: Option<ClientAuth>,
    private_key: Option<PrivateKey>,
    key_id: Option<String>,
    scopes: Vec<String>,
    audience: Option<String>,
    resources: Vec<String>,
    grant: Option<String>,
    refresh_token: Option<String>,
    user: Option<(String, String)>,
    token_cache: Option<String>,
    /// `--token-store` (a Redis URL: it may hold a password) and `--token-store-prefix`.
    token_store: Option<String>,
    token_store_prefix: Option<String>,
    auth_code_url: Option<String>,
    redirect_ports: Vec<u16>,
    device_url: Option<String>,
    implicit_url: Option<String>,
}

/// How `--user` or `--proxy-user` is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UserMode {
    Basic,
    Digest,
    Any,
    /// NTLM, on fetch's own connections (`tower_auth::ntlm::WindowsAuth`).
    Ntlm,
    /// Negotiate (SPNEGO), likewise.
    Negotiate,
}

/// A scheme that never retries.
enum StaticScheme {
    Basic(Box<Basic>),
    /// `Basic::proxy`, for the requests that go through the proxy only.
    ProxyBasic(Box<ThroughProxy<Basic>>),
    Bearer(Bearer),
    Key(ApiKey),
    Netrc(Box<NetrcAuth>),
}

/// Every static scheme of the command line, applied in order: fetch's own `AllOf` over a list.
struct Statics(Vec<StaticScheme>);

impl Authenticator for Statics {
    type Mode = Once;
    type Error = Infallible;
    type State = ();
    type Wait = NoWait<Infallible>;
    fn authorize(&self, req: &mut AuthRequest<'_>, state: &mut ()) -> Result<Authorize<Self::Wait>, Infallible> {
        for scheme in &self.0 {
            match scheme {
                StaticScheme::Basic(b) => b.authorize(req, state)?,
                StaticScheme::ProxyBasic(b) => b.authorize(req, state)?,
                StaticScheme::Bearer(b) => b.authorize(req, state)?,
                StaticScheme::Key(k) => k.authorize(req, state)?,
                StaticScheme::Netrc(n) => n.authorize(req, state)?,
            };
        }
        Ok(Authorize::Done)
    }
}

/// The OAuth1 scheme of the `--oauth1*` options (in the order given) and whether its parameters
/// go in the query. Errors name the option, never a secret.
fn oauth1_scheme(opts: &[(&'static str, String)]) -> Result<(tower_auth::oauth1::OAuth1, bool), String> {
    use tower_auth::oauth1::{OAuth1, Placement, SignatureMethod};
    let creds = opts.iter().rev().find(|(o, _)| *o == "--oauth1").map(|(_, v)| v.as_str());
    let creds =
        creds.ok_or("the --oauth1-* options need --oauth1 CONSUMER_KEY:CONSUMER_SECRET[:TOKEN:TOKEN_SECRET]")?;
    let parts: Vec<&str> = creds.split(':').collect();
    let mut b = match parts[..] {
        [key, secret] => OAuth1::builder(key, secret),
        [key, secret, token, token_secret] => OAuth1::builder(key, secret).token(token, token_secret),
        _ => return Err("--oauth1: expected CONSUMER_KEY:CONSUMER_SECRET[:TOKEN:TOKEN_SECRET]".into()),
    };
    let mut query = false;
    for (option, value) in opts {
        b = match *option {
            "--oauth1-method" => b.method(value.parse::<SignatureMethod>().map_err(|e| config(option, e))?),
            "--oauth1-key" => {
                let pem =
                    std::fs::read_to_string(value).map_err(|e| format!("{option}: cannot read {value:?}: {e}"))?;
                b.rsa_key_pem(pem)
            }
            "--oauth1-realm" => b.realm(value),
            "--oauth1-body-hash" => b.body_hash(true),
            "--oauth1-in" => {
                let placement = value.parse::<Placement>().map_err(|e| config(option, e))?;
                query = placement == Placement::Query;
                b.placement(placement)
            }
            _ => b,
        };
    }
    Ok((b.build().map_err(|e| config("--oauth1", e))?, query))
}

/// Parses the arguments: `None` for `--help`. An error is the message after `fetch: `; it never
/// contains a secret.
fn parse(args: Vec<String>) -> Result<Option<Opts>, String> {
    let mut url: Option<String> = None;
    let mut method: Option<Method> = None;
    let mut headers = HeaderMap::new();
    let mut data: Option<String> = None;
    let mut count = 1usize;
    let mut concurrency = 1usize;
    let mut verbose = false;
    let mut creds = Creds::default();
    // `--user` / `--bearer` both set Authorization: only one of them may be given.
    let mut authz_from = "";
    let mut user: Option<(String, String)> = None;
    let mut user_mode = UserMode::Basic;
    let mut proxy: Option<Proxy> = None;
    let mut noproxy: Option<String> = None;
    let mut keytab: Option<String> = None;
    let mut tls = TlsConfig::new();
    let mut proxy_user: Option<(String, String)> = None;
    let mut proxy_mode = UserMode::Basic;
    let mut location = false;
    let mut netrc_from: Option<Box<NetrcAuth>> = None;
    let mut oauth: Option<OAuthOpts> = None;
    let mut rate: Option<f64> = None;
    let mut oauth1: Vec<(&'static str, String)> = Vec::new();

    let mut args = args.into_iter();
    let mut only_positional = false;
    while let Some(arg) = args.next() {
        if only_positional || arg == "-" || !arg.starts_with('-') {
            if url.is_some() {
                return Err("more than one URL given (quote the URL if it contains spaces)".into());
            }
            url = Some(arg);
            continue;
        }
        if arg == "--" {
            only_positional = true;
            continue;
        }
        // Split `--opt=value` and `-oVALUE`; `name` is the option as typed, without its value.
        let (name, inline): (String, Option<String>) = if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some((n, v)) => (format!("--{n}"), Some(v.to_owned())),
                None => (arg.clone(), None),
            }
        } else if arg.len() > 2 && arg.is_char_boundary(2) {
            (arg[..2].to_owned(), Some(arg[2..].to_owned()))
        } else {
            (arg.clone(), None)
        };
        let canonical = match name.as_str() {
            "-u" | "--user" => "--user",
            "--basic" => "--basic",
            "--digest" => "--digest",
            "--anyauth" => "--anyauth",
            "--ntlm" => "--ntlm",
            "--negotiate" => "--negotiate",
            "--proxy-ntlm" => "--proxy-ntlm",
            "--proxy-negotiate" => "--proxy-negotiate",
            "-x" | "--proxy" => "--proxy",
            "--noproxy" => "--noproxy",
            "--keytab" => "--keytab",
            "--cacert" => "--cacert",
            "-k" | "--insecure" => "--insecure",
            "--netrc" => "--netrc",
            "--netrc-file" => "--netrc-file",
            "--auth-for" => "--auth-for",
            "-L" | "--location" => "--location",
            "-U" | "--proxy-user" => "--proxy-user",
            "--proxy-basic" => "--proxy-basic",
            "--proxy-digest" => "--proxy-digest",
            "--proxy-anyauth" => "--proxy-anyauth",
            "--bearer" => "--bearer",
            "--api-key" => "--api-key",
            "--api-key-query" => "--api-key-query",
            "-X" | "--request" => "--request",
            "-d" | "--data" => "--data",
            "-H" | "--header" => "--header",
            "-n" | "--count" => "--count",
            "-c" | "--concurrency" => "--concurrency",
            "--oauth2-token-url" => "--oauth2-token-url",
            "--oauth2-issuer" => "--oauth2-issuer",
            "--client-id" => "--client-id",
            "--client-secret" => "--client-secret",
            "--token-auth" => "--token-auth",
            "--private-key" => "--private-key",
            "--key-id" => "--key-id",
            "--scope" => "--scope",
            "--audience" => "--audience",
            "--resource" => "--resource",
            "--grant" => "--grant",
            "--refresh-token" => "--refresh-token",
            "--rate" => "--rate",
            "--token-cache" => "--token-cache",
            "--token-store" => "--token-store",
            "--token-store-prefix" => "--token-store-prefix",
            "--oauth2-auth-code" => "--oauth2-auth-code",
            "--pkce" => "--pkce",
            "--redirect-port" => "--redirect-port",
            "--oauth2-device" => "--oauth2-device",
            "--oauth2-implicit" => "--oauth2-implicit",
            "--oauth1" => "--oauth1",
            "--oauth1-method" => "--oauth1-method",
            "--oauth1-key" => "--oauth1-key",
            "--oauth1-realm" => "--oauth1-realm",
            "--oauth1-body-hash" => "--oauth1-body-hash",
            "--oauth1-in" => "--oauth1-in",
            "-v" | "--verbose" => "--verbose",
            "-h" | "--help" => "--help",
            // Only the name: what follows `=` could be a secret.
            _ => return Err(format!("unknown option {name} (try --help)")),
        };
        let flag = matches!(
            canonical,
            "--basic"
                | "--digest"
                | "--anyauth"
                | "--ntlm"
                | "--negotiate"
                | "--proxy-ntlm"
                | "--proxy-negotiate"
                | "--proxy-basic"
                | "--proxy-digest"
                | "--proxy-anyauth"
                | "--netrc"
                | "--location"
                | "--verbose"
                | "--pkce"
                | "--oauth1-body-hash"
                | "--insecure"
                | "--help"
        );
        if flag {
            if inline.is_some() {
                return Err(format!("{name}: takes no value"));
            }
            match canonical {
                "--help" => return Ok(None),
                "--verbose" => verbose = true,
                "--basic" => user_mode = UserMode::Basic,
                "--digest" => user_mode = UserMode::Digest,
                "--anyauth" => user_mode = UserMode::Any,
                "--ntlm" => user_mode = UserMode::Ntlm,
                "--negotiate" => user_mode = UserMode::Negotiate,
                "--proxy-ntlm" => proxy_mode = UserMode::Ntlm,
                "--proxy-negotiate" => proxy_mode = UserMode::Negotiate,
                "--proxy-basic" => proxy_mode = UserMode::Basic,
                "--proxy-digest" => proxy_mode = UserMode::Digest,
                "--location" => location = true,
                "--insecure" => {
                    eprintln!("fetch: warning: --insecure: the server's certificate is NOT verified");
                    tls = tls.danger_accept_invalid_certs();
                }
                "--pkce" => {
                    oauth.get_or_insert_with(OAuthOpts::default);
                }
                "--oauth1-body-hash" => oauth1.push((canonical, String::new())),
                "--netrc" => {
                    let netrc = NetrcAuth::from_default_location().map_err(|e| config(canonical, e))?;
                    netrc_from = Some(Box::new(netrc));
                }
                _ => proxy_mode = UserMode::Any,
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{canonical}: missing value"))?,
        };
        match canonical {
            "--user" => {
                let (u, p) = value.split_once(':').ok_or_else(|| format!("{canonical}: expected USER:PASS"))?;
                set_authz(&mut authz_from, canonical)?;
                user = Some((u.to_owned(), p.to_owned()));
            }
            "--bearer" => {
                let bearer = Bearer::new(&value).map_err(|e| config(canonical, e))?;
                set_authz(&mut authz_from, canonical)?;
                creds.statics.push(StaticScheme::Bearer(bearer));
            }
            "--proxy" => proxy = Some(Proxy::parse(&value).map_err(|e| config(canonical, e))?),
            "--noproxy" => noproxy = Some(value),
            "--keytab" => keytab = Some(value),
            "--cacert" => {
                let pem = std::fs::read(&value).map_err(|e| format!("{canonical}: cannot read {value:?}: {e}"))?;
                tls = tls.add_ca_pem(&pem).map_err(|e| config(canonical, e))?;
            }
            "--netrc-file" => {
                let netrc = NetrcAuth::from_path(&value).map_err(|e| config(canonical, e))?;
                netrc_from = Some(Box::new(netrc));
            }
            "--auth-for" => {
                let builder = creds.routes.take().unwrap_or_else(|| Router::builder().replaying());
                creds.routes = Some(auth_for(builder, &value, &mut creds.key_headers, &mut creds.key_queries)?);
            }
            "--proxy-user" => {
                let (u, p) = value.split_once(':').ok_or_else(|| format!("{canonical}: expected USER:PASS"))?;
                proxy_user = Some((u.to_owned(), p.to_owned()));
            }
            "--api-key" => {
                let (header, key) = value.split_once(':').ok_or_else(|| format!("{canonical}: expected NAME:VALUE"))?;
                let header = header.trim_matches([' ', '\t']);
                let key_value =
                    ApiKey::header_named(header, key.trim_matches([' ', '\t'])).map_err(|e| config(canonical, e))?;
                let header_name =
                    HeaderName::try_from(header).map_err(|_| format!("{canonical}: invalid header name"))?;
                creds.statics.push(StaticScheme::Key(key_value));
                creds.key_headers.push(header_name);
            }
            "--api-key-query" => {
                let (param, key) = value.split_once('=').ok_or_else(|| format!("{canonical}: expected NAME=VALUE"))?;
                let key_value = ApiKey::query_named(param, key).map_err(|e| config(canonical, e))?;
                creds.statics.push(StaticScheme::Key(key_value));
                creds.key_queries.push(param.to_owned());
            }
            "--request" => {
                method =
                    Some(Method::from_bytes(value.as_bytes()).map_err(|_| format!("{canonical}: invalid method"))?);
            }
            "--data" => data = Some(value),
            "--header" => {
                let (h, v) = value.split_once(':').ok_or_else(|| format!("{canonical}: expected 'Name: value'"))?;
                let h = h.trim();
                let hn = HeaderName::try_from(h).map_err(|_| format!("{canonical}: invalid header name {h:?}"))?;
                // The value may be a credential: name the header, never the value.
                let mut hv = HeaderValue::try_from(v.trim())
                    .map_err(|_| format!("{canonical}: invalid value for header {h:?}"))?;
                if hn == AUTHORIZATION || hn == PROXY_AUTHORIZATION {
                    hv.set_sensitive(true);
                }
                headers.append(hn, hv);
            }
            "--oauth2-token-url" => oauth.get_or_insert_with(OAuthOpts::default).token_url = Some(value),
            "--oauth2-issuer" => oauth.get_or_insert_with(OAuthOpts::default).issuer = Some(value),
            "--client-id" => oauth.get_or_insert_with(OAuthOpts::default).client_id = Some(value),
            "--client-secret" => oauth.get_or_insert_with(OAuthOpts::default).client_secret = Some(value),
            "--token-auth" => {
                oauth.get_or_insert_with(OAuthOpts::default).token_auth = Some(match value.as_str() {
                    "basic" => ClientAuth::Basic,
                    "post" => ClientAuth::Post,
                    "private-key-jwt" => ClientAuth::PrivateKeyJwt,
                    "none" => ClientAuth::None,
                    _ => return Err(format!("{canonical}: expected basic, post, private-key-jwt or none")),
                });
            }
            "--private-key" => {
                let pem = std::fs::read(&value).map_err(|e| format!("{canonical}: cannot read {value:?}: {e}"))?;
                let key = PrivateKey::from_pem(&pem, JwtAlgorithm::Rs256)
                    .or_else(|_| PrivateKey::from_pem(&pem, JwtAlgorithm::Es256))
                    .map_err(|_| format!("{canonical}: {value:?} is not a PEM RSA or EC (P-256) private key"))?;
                oauth.get_or_insert_with(OAuthOpts::default).private_key = Some(key);
            }
            "--key-id" => oauth.get_or_insert_with(OAuthOpts::default).key_id = Some(value),
            "--scope" => oauth.get_or_insert_with(OAuthOpts::default).scopes.push(value),
            "--audience" => oauth.get_or_insert_with(OAuthOpts::default).audience = Some(value),
            "--resource" => oauth.get_or_insert_with(OAuthOpts::default).resources.push(value),
            "--grant" => {
                if !matches!(value.as_str(), "client_credentials" | "password" | "refresh_token") {
                    return Err(format!("{canonical}: expected client_credentials, password or refresh_token"));
                }
                oauth.get_or_insert_with(OAuthOpts::default).grant = Some(value);
            }
            "--refresh-token" => oauth.get_or_insert_with(OAuthOpts::default).refresh_token = Some(value),
            "--token-cache" => oauth.get_or_insert_with(OAuthOpts::default).token_cache = Some(value),
            "--token-store" => oauth.get_or_insert_with(OAuthOpts::default).token_store = Some(value),
            "--token-store-prefix" => oauth.get_or_insert_with(OAuthOpts::default).token_store_prefix = Some(value),
            "--oauth2-auth-code" => oauth.get_or_insert_with(OAuthOpts::default).auth_code_url = Some(value),
            "--oauth2-device" => oauth.get_or_insert_with(OAuthOpts::default).device_url = Some(value),
            "--oauth2-implicit" => oauth.get_or_insert_with(OAuthOpts::default).implicit_url = Some(value),
            "--redirect-port" => {
                let ports = value
                    .split(',')
                    .map(|p| p.trim().parse::<u16>())
                    .collect::<Result<Vec<u16>, _>>()
                    .map_err(|_| format!("{canonical}: expected port numbers separated by commas (0 for any)"))?;
                oauth.get_or_insert_with(OAuthOpts::default).redirect_ports = ports;
            }
            "--rate" => {
                let r: f64 =
                    value.parse().map_err(|_| format!("{canonical}: expected a number of requests per second"))?;
                if !(r > 0.0 && r.is_finite()) {
                    return Err(format!("{canonical}: expected a positive number"));
                }
                rate = Some(r);
            }
            o if o.starts_with("--oauth1") => oauth1.push((o, value)),
            "--count" => count = positive(canonical, &value)?,
            "--concurrency" => concurrency = positive(canonical, &value)?,
            other => return Err(format!("{other}: this option is not handled (a bug in fetch: please report it)")),
        }
    }

    if let Some(o) = &mut oauth {
        if (o.auth_code_url.is_some() || o.device_url.is_some()) && o.token_url.is_none() {
            return Err("--oauth2-auth-code and --oauth2-device need --oauth2-token-url".into());
        }
        if let Some(implicit) = &o.implicit_url
            && o.token_url.is_none()
            && o.issuer.is_none()
        {
            // The implicit grant has no token endpoint.
            o.token_url = Some(implicit.clone());
        }
        if o.token_url.is_some() == o.issuer.is_some() {
            return Err("OAuth2 options need exactly one of --oauth2-token-url and --oauth2-issuer".into());
        }
        if o.client_id.is_none() {
            return Err("OAuth2 options need --client-id".into());
        }
        match o.grant.as_deref() {
            Some("password") => {
                o.user = Some(user.take().ok_or("--grant password: needs --user USER:PASS (the resource owner)")?);
            }
            Some("refresh_token") if o.refresh_token.is_none() => {
                return Err("--grant refresh_token: needs --refresh-token".into());
            }
            _ => {}
        }
        if o.token_auth == Some(ClientAuth::PrivateKeyJwt) && o.private_key.is_none() {
            return Err("--token-auth private-key-jwt: needs --private-key".into());
        }
        if authz_from == "--bearer" {
            return Err("--bearer and OAuth2 both set Authorization: give one".into());
        }
    }
    if !oauth1.is_empty() {
        if oauth.is_some() || !authz_from.is_empty() || user.is_some() || creds.routes.is_some() {
            return Err("--oauth1 signs alone: not with --user, --bearer, --auth-for or OAuth2".into());
        }
        let (scheme, query) = oauth1_scheme(&oauth1)?;
        if query {
            // PLAINTEXT's signature is the secrets: never in a log line.
            creds.key_queries.push("oauth_signature".into());
        }
        creds.oauth1 = Some(scheme);
    }
    creds.oauth2 = oauth;
    if let Some((u, p)) = user {
        let option = "--user";
        match user_mode {
            UserMode::Basic => {
                let basic = Basic::new(u, p).map_err(|e| config(option, e))?;
                creds.statics.insert(0, StaticScheme::Basic(Box::new(basic)));
            }
            UserMode::Digest => creds.digest = Some(Digest::new(u, p).map_err(|e| config(option, e))?),
            UserMode::Any => creds.digest = Some(Digest::guess(u, p).map_err(|e| config(option, e))?),
            UserMode::Ntlm => creds.windows = Some((Mechanism::Ntlm, WinCredentials::new(u, p))),
            UserMode::Negotiate => {
                let c = match &keytab {
                    Some(path) => {
                        let principal = Some(u.as_str()).filter(|u| !u.is_empty());
                        WinCredentials::from_keytab(principal, path).map_err(|e| config("--keytab", e))?
                    }
                    None => negotiate_credentials("--user", &u, &p)?,
                };
                creds.windows = Some((Mechanism::Negotiate, c));
            }
        }
    }
    if let Some(netrc) = netrc_from {
        // After --user and friends: explicit credentials win over the netrc file's.
        creds.statics.push(StaticScheme::Netrc(netrc));
    }
    let proxies = match proxy {
        Some(p) => Proxies::all(p),
        None => Proxies::from_env().map_err(|e| format!("proxy from the environment: {e}"))?,
    };
    let proxies = match &noproxy {
        Some(list) => proxies.no_proxy(list),
        None => proxies,
    };
    if let Some((u, p)) = &proxy_user {
        let option = "--proxy-user";
        if proxies.is_empty() {
            return Err(format!("{option}: needs --proxy (or a proxy in the environment)"));
        }
        // Checked here (a usage error); built for the layer and the tunnel when the run starts.
        proxy_scheme(u, p, proxy_mode).map_err(|e| config(option, e))?;
    }
    let proxies = proxies.answer_with(proxy_auth(proxy_mode)).map_err(|e| config("--proxy", e))?;
    let net = Net { proxies, proxy_user, proxy_mode, tls };
    let url = url.ok_or("missing URL (try --help)")?;
    let url = parse_url(&url)?;
    let body = match data {
        Some(d) => {
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
            }
            Bytes::from(d)
        }
        None => Bytes::new(),
    };
    let method = method.unwrap_or(if body.is_empty() { Method::GET } else { Method::POST });
    Ok(Some(Opts { url, method, headers, body, count, concurrency, verbose, creds, net, location, rate }))
}

/// `ORIGIN=SCHEME:CREDENTIALS`: adds one route. Errors name the option and the origin, never a
/// credential.
fn auth_for(
    builder: RouteBuilder<Replay>,
    value: &str,
    key_headers: &mut Vec<HeaderName>,
    key_queries: &mut Vec<String>,
) -> Result<RouteBuilder<Replay>, String> {
    const OPTION: &str = "--auth-for";
    let shape = || format!("{OPTION}: expected ORIGIN=SCHEME:CREDENTIALS");
    let (origin, rest) = value.split_once('=').ok_or_else(shape)?;
    let (scheme, secret) = rest.split_once(':').ok_or_else(shape)?;
    let pair = |sep: char, what: &str| {
        secret.split_once(sep).ok_or_else(|| format!("{OPTION} {origin}: {scheme} expects {what}"))
    };
    let cfg = |e: ConfigError| format!("{OPTION} {origin}: {e}");
    let builder = match scheme {
        "basic" => {
            let (u, p) = pair(':', "USER:PASS")?;
            builder.origin(origin, Basic::new(u, p).map_err(cfg)?)
        }
        "digest" => {
            let (u, p) = pair(':', "USER:PASS")?;
            builder.origin(origin, Digest::new(u, p).map_err(cfg)?)
        }
        "anyauth" => {
            let (u, p) = pair(':', "USER:PASS")?;
            builder.origin(origin, Digest::guess(u, p).map_err(cfg)?)
        }
        "bearer" => builder.origin(origin, Bearer::new(secret).map_err(cfg)?),
        "api-key" => {
            let (name, key) = pair(':', "NAME:VALUE")?;
            let header =
                HeaderName::try_from(name.trim()).map_err(|_| format!("{OPTION} {origin}: invalid header name"))?;
            key_headers.push(header);
            builder.origin(origin, ApiKey::header_named(name.trim(), key.trim()).map_err(cfg)?)
        }
        "api-key-query" => {
            let (name, key) = pair('=', "NAME=VALUE")?;
            key_queries.push(name.to_owned());
            builder.origin(origin, ApiKey::query_named(name, key).map_err(cfg)?)
        }
        other => {
            return Err(format!(
                "{OPTION} {origin}: unknown scheme {other:?} (basic, digest, anyauth, bearer, api-key, api-key-query)"
            ));
        }
    };
    builder.map_err(|e| format!("{OPTION}: {e}"))
}

/// `--proxy-basic`, `--proxy-digest`, `--proxy-anyauth` as the connector names them.
fn proxy_auth(mode: UserMode) -> ProxyAuth {
    match mode {
        UserMode::Basic => ProxyAuth::Basic,
        UserMode::Digest => ProxyAuth::Digest,
        UserMode::Any => ProxyAuth::Guess,
        // The proxy URL's user info is then answered by the connection-bound client.
        UserMode::Ntlm | UserMode::Negotiate => ProxyAuth::Basic,
    }
}

/// The proxy scheme of `-U` and its mode, for the `CONNECT` tunnel.
fn proxy_scheme(user: &str, pass: &str, mode: UserMode) -> Result<BoxAuthenticator, ConfigError> {
    Ok(match mode {
        UserMode::Basic => BoxAuthenticator::new(Basic::proxy(user, pass)?),
        UserMode::Digest => BoxAuthenticator::new(Digest::proxy(user, pass)?),
        UserMode::Any => BoxAuthenticator::new(Digest::proxy_guess(user, pass)?),
        UserMode::Ntlm => BoxAuthenticator::new(ConnectAuth::new(Mechanism::Ntlm, WinCredentials::new(user, pass))),
        UserMode::Negotiate => BoxAuthenticator::new(ConnectAuth::new(
            Mechanism::Negotiate,
            negotiate_credentials("--proxy-user", user, pass).map_err(ConfigError::new)?,
        )),
    })
}

/// Negotiate's credentials: `USER:PASS`, or with `:` (empty user and password) the ticket of the
/// Kerberos credential cache (`kinit`), as curl's `--negotiate -u :`.
fn negotiate_credentials(option: &str, user: &str, pass: &str) -> Result<WinCredentials, String> {
    if !user.is_empty() || !pass.is_empty() {
        return Ok(WinCredentials::new(user, pass));
    }
    if cfg!(feature = "gssapi") {
        Ok(WinCredentials::from_cache())
    } else {
        Err(format!(
            "{option} ':' (the ticket of the Kerberos credential cache) needs the `gssapi` feature: \
             cargo run --features gssapi --example fetch; or give USER:PASS, or --keytab FILE"
        ))
    }
}

/// The connector and, for a plain-`http://` URL through a proxy, the proxy scheme the layer
/// answers `407` with (`-U`, else the proxy URL's user info). Proxy credentials never go to a
/// URL that bypasses the proxy.
fn connector(net: Net, url: &Uri, creds: &mut Creds) -> Result<(ProxyConnector, TlsConfig), String> {
    let Net { proxies, proxy_user, proxy_mode, tls } = net;
    let via = proxies.proxy_for(url).cloned();
    let user = proxy_user
        .clone()
        .or_else(|| via.as_ref().and_then(Proxy::credentials).map(|(u, p)| (u.to_owned(), p.expose().to_owned())));
    if let (Some(_), Some((u, p)), Some("http")) = (&via, &user, url.scheme_str()) {
        let cfg = |e: ConfigError| config("--proxy-user", e);
        // Only for the requests that go through the proxy: a redirect (-L) to a host in
        // NO_PROXY goes direct, without Proxy-Authorization.
        let only = |scheme| ThroughProxy::new(scheme, proxies.clone());
        match proxy_mode {
            UserMode::Basic => {
                let basic = Basic::proxy(u, p).map_err(cfg)?;
                creds.statics.push(StaticScheme::ProxyBasic(Box::new(ThroughProxy::new(basic, proxies.clone()))));
            }
            UserMode::Digest => creds.proxy_digest = Some(only(Digest::proxy(u, p).map_err(cfg)?)),
            UserMode::Any => creds.proxy_digest = Some(only(Digest::proxy_guess(u, p).map_err(cfg)?)),
            UserMode::Ntlm => {
                creds.windows_proxy = Some((Mechanism::Ntlm, WinCredentials::new(u.as_str(), p.as_str())))
            }
            UserMode::Negotiate => {
                creds.windows_proxy = Some((Mechanism::Negotiate, negotiate_credentials("--proxy-user", u, p)?))
            }
        }
    }
    let proxies = match &proxy_user {
        Some((u, p)) => proxies.auth(proxy_scheme(u, p, proxy_mode).map_err(|e| config("--proxy-user", e))?),
        None => proxies,
    };
    // TLS to an https:// proxy is verified as the origin's is (--cacert, -k).
    let mut connector = ProxyConnector::new(proxies);
    if via.as_ref().is_some_and(Proxy::is_https) {
        connector = connector.proxy_tls(tls.client_config().map_err(|e| format!("TLS: {e}"))?);
    }
    Ok((connector, tls))
}

/// The connection-bound client of `--ntlm`, `--negotiate`, `--proxy-ntlm`, `--proxy-negotiate`
/// (`None` without them): the same proxies and TLS as the rest, at most `concurrency`
/// connections per origin.
fn windows_client(
    creds: &mut Creds,
    connector: &ProxyConnector,
    tls: &TlsConfig,
    concurrency: usize,
) -> Result<Option<WindowsAuth<Full<Bytes>>>, String> {
    if creds.windows.is_none() && creds.windows_proxy.is_none() {
        return Ok(None);
    }
    if creds.digest.is_some() || creds.proxy_digest.is_some() || creds.oauth2.is_some() || creds.routes.is_some() {
        return Err("--ntlm/--negotiate: not with Digest, OAuth2 or --auth-for".into());
    }
    let mut builder = WindowsAuth::builder().proxies(connector.proxies().clone()).tls(tls.clone());
    if let Some((m, c)) = creds.windows.take() {
        builder = builder.origin(m, c);
    }
    if let Some((m, c)) = creds.windows_proxy.take() {
        builder = builder.proxy_auth(m, c);
    }
    let client = builder.max_connections(concurrency).build().map_err(|e| format!("TLS: {e}"))?;
    Ok(Some(client))
}

fn set_authz(from: &mut &'static str, option: &'static str) -> Result<(), String> {
    if !from.is_empty() && *from != option {
        return Err(format!("{option}: cannot be combined with {from} (both set Authorization)"));
    }
    *from = option;
    Ok(())
}

/// A configuration error from tower-auth, shown as it displays itself (it never holds a secret).
fn config(option: &str, err: ConfigError) -> String {
    format!("{option}: {err}")
}

fn positive(option: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{option}: expected a positive integer, got {value:?}")),
    }
}

fn parse_url(raw: &str) -> Result<Uri, String> {
    let shown = redact_userinfo(raw);
    let uri: Uri = raw.parse().map_err(|e| format!("invalid URL {shown:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("invalid URL {shown:?}: unsupported scheme {other:?}")),
        None => return Err(format!("invalid URL {shown:?}: expected http(s)://HOST[:PORT]/PATH")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("invalid URL {shown:?}: no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("invalid URL {shown:?}: credentials in the URL are not supported, use --user"));
    }
    Ok(uri)
}

// ---------------------------------------------------------------------------------------------
// The service stack
// ---------------------------------------------------------------------------------------------

/// What the counting layer needs besides the counters: how to log an exchange safely.
#[derive(Debug)]
struct Redact {
    verbose: bool,
    key_headers: Vec<HeaderName>,
    key_queries: Vec<String>,
}

/// Counters shared by every clone of the service; the summary line prints them.
#[derive(Debug, Default)]
struct Stats {
    /// Exchanges the auth layer sent for the caller's requests (answers to challenges included).
    round_trips: AtomicU64,
    /// Requests to a token endpoint: a token provider (OAuth2, planned) sends them through its
    /// own client, wrapped in [`CountLayer::token_endpoint`], so they are counted here and not
    /// as round trips. No scheme fetch offers today fetches tokens, so this stays 0.
    token_requests: AtomicU64,
}

/// Which counter of [`Stats`] a [`Count`] service adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    RoundTrips,
    TokenRequests,
}

/// The counting layer: sits between the auth layer and the client.
#[derive(Debug, Clone)]
struct CountLayer {
    stats: Arc<Stats>,
    redact: Arc<Redact>,
    counter: Counter,
}

impl CountLayer {
    /// The same counters, for the client of a token provider: its requests count as token
    /// requests.
    fn token_endpoint(&self) -> CountLayer {
        CountLayer { counter: Counter::TokenRequests, ..self.clone() }
    }
}

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;
    fn layer(&self, inner: S) -> Count<S> {
        Count { inner, stats: Arc::clone(&self.stats), redact: Arc::clone(&self.redact), counter: self.counter }
    }
}

/// Counts each exchange the auth layer sends and, with `-v`, logs it on one line:
/// `> METHOD URL auth=SCHEME [redacted] < STATUS`.
#[derive(Debug, Clone)]
struct Count<S> {
    inner: S,
    stats: Arc<Stats>,
    redact: Arc<Redact>,
    counter: Counter,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for Count<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<RB>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let counter = match self.counter {
            Counter::RoundTrips => &self.stats.round_trips,
            Counter::TokenRequests => &self.stats.token_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let line = self.redact.verbose.then(|| describe(&req, &self.redact));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await.map_err(Into::into);
            if let Some(mut line) = line {
                match &res {
                    Ok(res) => {
                        let _ = write!(line, " < {}", res.status());
                    }
                    Err(err) => {
                        let _ = write!(line, " < error: {}", chain(err.as_ref()));
                    }
                }
                eprintln!("{line}");
            }
            res
        })
    }
}

/// `> METHOD URL auth=...`: the scheme word of each credential header, never its value.
fn describe<B>(req: &Request<B>, redact: &Redact) -> String {
    let mut line = format!("> {} {}", req.method(), redacted_uri(req.uri(), &redact.key_queries));
    let scheme = |name: &HeaderName| {
        req.headers().get(name).map(|v| {
            let word = v.to_str().ok().and_then(|s| s.split_whitespace().next()).unwrap_or("?");
            // A value with no scheme word (a bare token) is all secret.
            if v.to_str().is_ok_and(|s| s.trim() == word) {
                "[redacted]".to_owned()
            } else {
                format!("{word} [redacted]")
            }
        })
    };
    let _ = write!(line, " auth={}", scheme(&AUTHORIZATION).as_deref().unwrap_or("none"));
    if let Some(proxy) = scheme(&PROXY_AUTHORIZATION) {
        let _ = write!(line, " proxy-auth={proxy}");
    }
    for name in redact.key_headers.iter().filter(|n| req.headers().contains_key(*n)) {
        let _ = write!(line, " {name}=[redacted]");
    }
    line
}

/// The URI with the API keys' query parameter values replaced by `[redacted]`.
fn redacted_uri(uri: &Uri, params: &[String]) -> String {
    let Some(query) = uri.query().filter(|_| !params.is_empty()) else { return uri.to_string() };
    let base = uri.to_string();
    let base = base.split_once('?').map_or(base.as_str(), |(b, _)| b);
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
            let decoded = percent_decode_str(&raw.replace('+', " ")).decode_utf8_lossy().into_owned();
            if params.contains(&decoded) { format!("{raw}=[redacted]") } else { pair.to_owned() }
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

/// An error and its sources, `: `-separated (hyper-util's own message is terse).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

/// The client the auth layer of scheme `A` wraps, over connector `C`: its body type depends on
/// the scheme's mode (`Full<Bytes>` itself for schemes that never retry, `ReplayBody<Full<Bytes>>`
/// otherwise).
type Inner<A, C> = Count<Client<C, ModeBody<A, Full<Bytes>>>>;

/// Builds `AuthLayer(auth) -> Count -> Client` and erases its type.
fn finish<A, C>(auth: A, count: &CountLayer, connector: C) -> Svc
where
    A: Authenticator,
    C: Connect + Clone + Send + Sync + 'static,
    ModeBody<A, Full<Bytes>>: http_body::Body + Send + Unpin + 'static,
    <ModeBody<A, Full<Bytes>> as http_body::Body>::Data: Send,
    <ModeBody<A, Full<Bytes>> as http_body::Body>::Error: Into<BoxError>,
    Auth<Inner<A, C>, A>: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    <Auth<Inner<A, C>, A> as Service<Request<Full<Bytes>>>>::Error: Into<BoxError>,
    <Auth<Inner<A, C>, A> as Service<Request<Full<Bytes>>>>::Future: Send + 'static,
{
    let client = Client::builder(TokioExecutor::new()).build::<C, ModeBody<A, Full<Bytes>>>(connector);
    let svc = AuthLayer::new(auth).layer(count.layer(client));
    BoxCloneService::new(svc.map_err(Into::into).map_response(erase_body))
}

/// Turns the command line's credentials into one scheme: Digest for the server and for the
/// proxy where asked, then every static scheme, combined with [`AllOf`].
fn build<C: Connect + Clone + Send + Sync + 'static>(
    creds: Creds,
    oauth: Option<OAuth2>,
    count: &CountLayer,
    connector: C,
) -> Svc {
    let statics = Statics(creds.statics);
    if let Some(oauth1) = creds.oauth1 {
        // Signed last of all: OAuth1 signs the query an API key may have added.
        return finish(AllOf::new(statics, oauth1), count, connector);
    }
    if let Some(oauth) = oauth {
        // The OAuth2 token first, then everything else, erased to one type.
        let others = digests_then(creds.digest, creds.proxy_digest, statics);
        let rest = match creds.routes {
            Some(routes) => BoxAuthenticator::new(AllOf::new(routes.into_router(), others)),
            None => others,
        };
        return finish(AllOf::new(oauth, rest), count, connector);
    }
    if let Some(routes) = creds.routes {
        // Per-origin schemes first, then the rest, erased to one type.
        let rest = digests_then(creds.digest, creds.proxy_digest, statics);
        return finish(AllOf::new(routes.into_router(), rest), count, connector);
    }
    match (creds.digest, creds.proxy_digest) {
        (None, None) => finish(statics, count, connector),
        (Some(d), None) => finish(AllOf::new(d, statics), count, connector),
        (None, Some(p)) => finish(AllOf::new(p, statics), count, connector),
        (Some(d), Some(p)) => finish(AllOf::new(AllOf::new(d, p), statics), count, connector),
    }
}

/// The server's and the proxy's Digest (if given), then the static schemes, erased to one type.
fn digests_then(digest: Option<Digest>, proxy: Option<ThroughProxy<Digest>>, statics: Statics) -> BoxAuthenticator {
    match (digest, proxy) {
        (None, None) => BoxAuthenticator::new(statics),
        (Some(d), None) => BoxAuthenticator::new(AllOf::new(d, statics)),
        (None, Some(p)) => BoxAuthenticator::new(AllOf::new(p, statics)),
        (Some(d), Some(p)) => BoxAuthenticator::new(AllOf::new(AllOf::new(d, p), statics)),
    }
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// The outcome of every request.
#[derive(Debug, Default)]
struct Tally {
    /// Response status code (or `None` for a transport error) -> count.
    statuses: BTreeMap<Option<u16>, usize>,
    last_body: Option<Bytes>,
    first_error: Option<String>,
}

impl Tally {
    fn ok(&self) -> usize {
        self.statuses.iter().filter(|(code, _)| code.is_some_and(|c| (200..300).contains(&c))).map(|(_, n)| n).sum()
    }

    /// `summary requests=N ok=K statuses=200:K,401:M,err:E round_trips=R token_requests=T elapsed_ms=E`.
    fn summary(&self, requests: usize, round_trips: u64, token_requests: u64, elapsed_ms: u128) -> String {
        let mut statuses: Vec<String> =
            self.statuses.iter().filter_map(|(code, n)| code.map(|c| format!("{c}:{n}"))).collect();
        if let Some(errors) = self.statuses.get(&None) {
            statuses.push(format!("err:{errors}"));
        }
        format!(
            "summary requests={requests} ok={} statuses={} round_trips={round_trips} token_requests={token_requests} \
             elapsed_ms={elapsed_ms}",
            self.ok(),
            statuses.join(",")
        )
    }
}

/// The OAuth2 token provider of the command line. Token requests go through their own client
/// (no auth layer, no redirects), counted in `token_requests`. An error is one line without a
/// secret.
/// `--redirect-port PORT[,PORT...]`: the first port, then the fallbacks.
#[cfg(feature = "oauth2-browser")]
fn with_redirect_ports(b: tower_auth::oauth2::ProviderBuilder, ports: &[u16]) -> tower_auth::oauth2::ProviderBuilder {
    match ports.split_first() {
        Some((first, rest)) => b.redirect_port(*first).fallback_ports(rest.iter().copied()),
        None => b,
    }
}

async fn oauth_provider(o: OAuthOpts, count: &CountLayer) -> Result<TokenProvider, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let transport = count.token_endpoint().layer(client);
    let url = o.token_url.clone().or(o.issuer.clone()).unwrap_or_default();
    let client_id = o.client_id.clone().unwrap_or_default();
    let mut b = match (&o.auth_code_url, &o.device_url, o.grant.as_deref()) {
        #[cfg(feature = "oauth2-browser")]
        (Some(auth), _, _) => {
            let b = TokenProvider::authorization_code(auth, &url, &client_id);
            with_redirect_ports(b, &o.redirect_ports)
        }
        #[cfg(not(feature = "oauth2-browser"))]
        (Some(_), _, _) => {
            return Err("--oauth2-auth-code: this fetch was built without the oauth2-browser feature".into());
        }
        #[cfg(feature = "oauth2-browser")]
        (None, _, _) if o.implicit_url.is_some() => {
            let auth = o.implicit_url.clone().unwrap_or_default();
            let b = TokenProvider::implicit(auth, &client_id, tower_auth::oauth2::ImplicitResponse::AccessToken);
            with_redirect_ports(b, &o.redirect_ports)
        }
        (None, Some(device), _) => TokenProvider::device_code(device, &url, &client_id),
        (None, None, grant) => match grant {
            Some("password") => {
                let (u, p) = o.user.clone().unwrap_or_default();
                TokenProvider::password(&url, &client_id, u, p)
            }
            Some("refresh_token") => {
                TokenProvider::refresh_token(&url, &client_id, o.refresh_token.clone().unwrap_or_default())
            }
            _ => TokenProvider::client_credentials(&url, &client_id, o.client_secret.clone().unwrap_or_default()),
        },
    };
    if (o.auth_code_url.is_some() || o.device_url.is_some())
        && let Some(secret) = &o.client_secret
    {
        b = b.client_secret(secret);
    }
    if o.grant.as_deref().is_some_and(|g| g != "client_credentials")
        && let Some(secret) = &o.client_secret
    {
        b = b.client_secret(secret);
    }
    if let Some(key) = o.private_key {
        let key = match o.key_id {
            Some(kid) => key.key_id(kid),
            None => key,
        };
        b = b.private_key_jwt(key);
    }
    if let Some(auth) = o.token_auth.filter(|a| *a != ClientAuth::PrivateKeyJwt) {
        b = b.client_auth(auth);
    }
    for scope in &o.scopes {
        b = b.scope(scope);
    }
    if let Some(audience) = o.audience {
        b = b.audience(audience);
    }
    for resource in o.resources {
        b = b.resource(resource);
    }
    if let Some(path) = &o.token_cache {
        let store = tower_auth::oauth2::FileStore::new(path).map_err(|e| format!("--token-cache: {e}"))?;
        b = b.store(store);
    }
    // `--token-store`: Redis shared by several fetch processes (the error never quotes the URL).
    match (&o.token_store, &o.token_cache) {
        (Some(_), Some(_)) => return Err("give one of --token-cache and --token-store".into()),
        #[cfg(feature = "redis")]
        (Some(url), None) => {
            let store = tower_auth::oauth2::RedisStore::builder(url);
            let store = match &o.token_store_prefix {
                Some(prefix) => store.prefix(prefix),
                None => store,
            };
            b = b.store(store.build().map_err(|e| format!("--token-store: {e}"))?);
        }
        #[cfg(not(feature = "redis"))]
        (Some(_), None) => return Err("--token-store: this fetch was built without the redis feature".into()),
        (None, _) if o.token_store_prefix.is_some() => return Err("--token-store-prefix needs --token-store".into()),
        (None, _) => {}
    }
    let built = if o.issuer.is_some() { b.discover(transport).await } else { b.build(transport) };
    built.map_err(|e| format!("OAuth2: {e}"))
}

async fn run(opts: Opts) -> ExitCode {
    let Opts { url, method, headers, body, count, concurrency, verbose, mut creds, net, location, rate } = opts;
    let stats = Arc::new(Stats::default());
    let redact = Redact { verbose, key_headers: creds.key_headers.clone(), key_queries: creds.key_queries.clone() };
    let count_layer = CountLayer { stats: Arc::clone(&stats), redact: Arc::new(redact), counter: Counter::RoundTrips };
    let (proxy_connector, https, tls_config) = match connector(net, &url, &mut creds).and_then(|(c, tls)| {
        let https = tls.https(c.clone()).map_err(|e| format!("TLS: {e}"))?;
        Ok((c, https, tls))
    }) {
        Ok(built) => built,
        Err(msg) => {
            eprintln!("fetch: {msg}");
            return ExitCode::from(2);
        }
    };
    let oauth = match creds.oauth2.take() {
        None => None,
        Some(o) => match oauth_provider(o, &count_layer).await {
            Ok(provider) => Some(OAuth2::new(provider)),
            Err(msg) => {
                eprintln!("fetch: {msg}");
                return ExitCode::from(2);
            }
        },
    };
    let windows = match windows_client(&mut creds, &proxy_connector, &tls_config, concurrency) {
        Ok(w) => w,
        Err(msg) => {
            eprintln!("fetch: {msg}");
            return ExitCode::from(2);
        }
    };
    let svc = match &windows {
        // The connection-bound client replaces hyper-util's: static schemes still apply above it.
        Some(w) => {
            let statics = Statics(std::mem::take(&mut creds.statics));
            Svc::new(
                AuthLayer::new(statics)
                    .layer(count_layer.layer(w.clone()))
                    .map_err(Into::into)
                    .map_response(erase_body),
            )
        }
        None => build(creds, oauth, &count_layer, https),
    };
    // `--rate`: one shared ticker; each request waits for its tick.
    let ticker = rate.map(|r| {
        let mut interval = tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / r));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Arc::new(tokio::sync::Mutex::new(interval))
    });
    // Redirects are followed outside the auth layers: each hop is authorised anew for its own
    // origin, so credentials never follow a redirect to another origin.
    let svc = if location { Svc::new(FollowRedirectLayer::new().layer(svc)) } else { svc };

    let template = Arc::new((method, url, headers, body));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let keep_body = count == 1;
    let started = Instant::now();

    // `concurrency` workers share the `count` requests: at most that many are in flight.
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(count) {
        let mut svc = svc.clone();
        let (template, tally, next) = (Arc::clone(&template), Arc::clone(&tally), Arc::clone(&next));
        let ticker = ticker.clone();
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                if let Some(ticker) = &ticker {
                    ticker.lock().await.tick().await;
                }
                let (method, url, headers, body) = &*template;
                let mut req = Request::new(Full::new(body.clone()));
                *req.method_mut() = method.clone();
                *req.uri_mut() = url.clone();
                *req.headers_mut() = headers.clone();
                let outcome = match svc.ready().await {
                    Ok(svc) => match svc.call(req).await {
                        // Read the whole body: it is printed, or the connection is reused.
                        Ok(res) => {
                            let status = res.status().as_u16();
                            match res.into_body().collect().await {
                                Ok(body) => Ok((status, body.to_bytes())),
                                Err(err) => Err(BoxError::from(err)),
                            }
                        }
                        Err(err) => Err(err),
                    },
                    Err(err) => Err(err),
                };
                let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok((status, body)) => {
                        *tally.statuses.entry(Some(status)).or_default() += 1;
                        if keep_body {
                            tally.last_body = Some(body);
                        }
                    }
                    Err(err) => {
                        *tally.statuses.entry(None).or_default() += 1;
                        tally.first_error.get_or_insert_with(|| chain(err.as_ref()));
                    }
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        if let Err(err) = joined {
            eprintln!("fetch: a worker failed: {err}");
        }
    }
    let elapsed_ms = started.elapsed().as_millis();

    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(body) = &tally.last_body {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(body).and_then(|()| out.flush());
    }
    if let Some(err) = &tally.first_error {
        eprintln!("fetch: request failed: {err}");
    }
    let mut round_trips = stats.round_trips.load(Ordering::Relaxed) + proxy_connector.connect_exchanges();
    if let Some(w) = &windows {
        // Every leg of every handshake, on the client's own connections and its CONNECTs.
        let s = w.stats();
        round_trips = s.round_trips + w.connect_exchanges();
        eprintln!(
            "windows-auth connections={} handshakes={} failed_handshakes={} reused={}",
            s.connections, s.handshakes, s.failed_handshakes, s.reused
        );
    }
    let token_requests = stats.token_requests.load(Ordering::Relaxed);
    eprintln!("{}", tally.summary(count, round_trips, token_requests, elapsed_ms));
    if tally.ok() == count { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
