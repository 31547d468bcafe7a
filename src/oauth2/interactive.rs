//! The authorization code grant with PKCE for native applications (RFC 6749 §4.1, RFC 7636,
//! RFC 8252): a loopback redirect listener (axum) bound to 127.0.0.1 only, the user's browser,
//! and every check RFC 9700 asks of a client.
//!
//! - A fresh random `state` per authorisation, compared in constant time; a fresh PKCE verifier
//!   per attempt (S256; `plain` only when asked); an OpenID Connect `nonce` when the scope has
//!   `openid`, checked against the id_token (its `nonce`, `aud` and `exp`; the id_token's
//!   signature is not verified here: it came over the token endpoint's TLS); the `iss`
//!   authorization response parameter (RFC 9207) checked when the issuer is known.
//! - The `redirect_uri` names exactly what the listener binds: `http://127.0.0.1:PORT/PATH` by
//!   default, `http://[::1]:PORT/PATH`, or `http://localhost:PORT/PATH` with both loopback
//!   addresses bound on the same port ([`RedirectHost`]). The port is configurable (default 5000,
//!   as requests_auth), 0 for any free port, with fallbacks.
//! - The pages the browser is left on say how it ended and close themselves after a while
//!   ([`DisplaySettings`], requests_auth's counterpart), from your templates if you like.
//! - Extra parameters go where they belong: [`auth_param`](super::ProviderBuilder::auth_param)
//!   into the browser URL, [`param`](super::ProviderBuilder::param) into the token request; the
//!   client secret never goes into the browser URL.
//! - Anything else reaching the listener (a favicon, a port scanner) gets a 404 and the listener
//!   keeps waiting; everything the pages echo is HTML-escaped; the listener always shuts down and
//!   frees its port, on success, failure or timeout.
//! - One authorisation at a time per provider: it runs in the provider's single background task,
//!   so 50 requests needing a token open one browser tab. The refresh token it yields is used for
//!   later tokens (and kept in the provider's store); the browser opens again only when refreshing
//!   fails with `invalid_grant` (or a bare `400` without an OAuth2 body, Glewlwyd's answer to a
//!   revoked refresh token).
//!
//! Written here: the listener and the checks (the `oauth2` crate builds PKCE values and exchanges
//! the code; it has no listener).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::Html;
use http::StatusCode;
use oauth2::{PkceCodeChallenge, PkceCodeVerifier};
use tokio::sync::oneshot;

use super::browser::Browser;

/// How the PKCE challenge is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pkce {
    S256,
    Plain,
}

/// Which loopback address the redirect listener binds, and so the host its `redirect_uri` names.
///
/// requests_auth's `redirect_uri_domain` lets any name go into the redirect URI while its
/// listener binds every interface; here the URI names exactly what is bound, and only loopback
/// addresses are offered (RFC 8252 §7.3, §8.3): a listener on another interface would take
/// authorization codes from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RedirectHost {
    /// `http://127.0.0.1:PORT/…`, bound on 127.0.0.1 (the default; what RFC 8252 §8.3
    /// recommends).
    #[default]
    Ipv4,
    /// `http://[::1]:PORT/…`, bound on ::1.
    Ipv6,
    /// `http://localhost:PORT/…` (for servers that register only `localhost`), bound on 127.0.0.1
    /// and on ::1 with the same port, so the browser reaches the listener whichever address it
    /// resolves `localhost` to. A port whose ::1 side another program holds is skipped like a
    /// busy port (that program would otherwise receive the code); on a machine without IPv6 the
    /// listener binds 127.0.0.1 only.
    Localhost,
}

/// The pages the listener leaves the browser on: how long they stay before closing themselves
/// (`window.close()`, which browsers honour for tabs a program opened), and their HTML, like
/// requests_auth's `DisplaySettings`.
///
/// A template is a whole HTML page in which `{title}`, `{message}` and `{close_after_ms}` are
/// replaced (the first two HTML-escaped); a closing script goes before `</body>` when a display
/// time is set.
///
/// ```
/// use std::time::Duration;
/// use tower_auth::oauth2::DisplaySettings;
///
/// let display = DisplaySettings::default()
///     .success_display_time(Some(Duration::from_millis(500)))
///     .failure_display_time(None) // stays open
///     .success_template("<html><body><h1>{title}</h1><p>{message}</p><p>Back to the terminal!</p></body></html>");
/// # let _ = display;
/// ```
#[derive(Debug, Clone)]
pub struct DisplaySettings {
    success_display_time: Option<Duration>,
    failure_display_time: Option<Duration>,
    success_template: Option<String>,
    failure_template: Option<String>,
}

impl Default for DisplaySettings {
    /// Success pages close after 2 s, failure pages after 10 s (time to read what went wrong),
    /// with the crate's plain pages.
    fn default() -> Self {
        DisplaySettings {
            success_display_time: Some(Duration::from_secs(2)),
            failure_display_time: Some(Duration::from_secs(10)),
            success_template: None,
            failure_template: None,
        }
    }
}

impl DisplaySettings {
    /// How long the success page stays before closing itself (`None`: it stays).
    pub fn success_display_time(mut self, time: Option<Duration>) -> Self {
        self.success_display_time = time;
        self
    }

    /// How long the failure page stays before closing itself (`None`: it stays).
    pub fn failure_display_time(mut self, time: Option<Duration>) -> Self {
        self.failure_display_time = time;
        self
    }

    /// The success page's HTML (placeholders `{title}`, `{message}`, `{close_after_ms}`).
    pub fn success_template(mut self, html: impl Into<String>) -> Self {
        self.success_template = Some(html.into());
        self
    }

    /// The failure page's HTML (placeholders `{title}`, `{message}`, `{close_after_ms}`).
    pub fn failure_template(mut self, html: impl Into<String>) -> Self {
        self.failure_template = Some(html.into());
        self
    }

    /// The page for an outcome; `message` is HTML-escaped wherever it goes.
    fn render(&self, success: bool, message: &str) -> Html<String> {
        let (title, time, template) = if success {
            ("Authentication succeeded", self.success_display_time, &self.success_template)
        } else {
            ("Authentication failed", self.failure_display_time, &self.failure_template)
        };
        let close_after_ms = time.map_or(0, |t| t.as_millis());
        let mut html = match template {
            Some(template) => template
                .replace("{title}", &escape_html(title))
                .replace("{message}", &escape_html(message))
                .replace("{close_after_ms}", &close_after_ms.to_string()),
            None => page(title, message).0,
        };
        if time.is_some() {
            let script = format!("<script>setTimeout(function(){{window.close()}},{close_after_ms})</script>");
            match html.rfind("</body>") {
                Some(at) => html.insert_str(at, &script),
                None => html.push_str(&script),
            }
        }
        Html(html)
    }
}

/// The configuration of an authorization code flow, made and set through
/// [`TokenProvider::authorization_code`](super::TokenProvider::authorization_code) and the
/// builder's `redirect_port`, `browser`, `auth_param`… methods.
#[derive(Clone)]
pub struct CodeFlow {
    pub(crate) auth_url: String,
    pub(crate) browser: Arc<dyn Browser>,
    pub(crate) ports: Vec<u16>,
    pub(crate) host: RedirectHost,
    pub(crate) display: DisplaySettings,
    pub(crate) path: String,
    pub(crate) timeout: Duration,
    pub(crate) pkce: Pkce,
    pub(crate) auth_params: Vec<(String, String)>,
    /// The issuer, to check the `iss` authorization response parameter and the id_token.
    pub(crate) issuer: Option<String>,
    /// Refuse a response without `iss` (the server's metadata says it sends one).
    pub(crate) require_iss: bool,
    /// The implicit grant's `response_type` (`token`, `id_token`, `id_token token`).
    pub(crate) response_type: String,
    /// `response_mode=form_post` (the server posts the answer to the listener).
    pub(crate) form_post: bool,
}

impl std::fmt::Debug for CodeFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeFlow")
            .field("auth_url", &self.auth_url)
            .field("ports", &self.ports)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .field("pkce", &self.pkce)
            .finish_non_exhaustive()
    }
}

impl CodeFlow {
    pub(crate) fn new(auth_url: String, browser: Arc<dyn Browser>) -> Self {
        CodeFlow {
            auth_url,
            browser,
            ports: vec![5000],
            host: RedirectHost::Ipv4,
            display: DisplaySettings::default(),
            path: "/".into(),
            timeout: Duration::from_secs(60),
            pkce: Pkce::S256,
            auth_params: Vec::new(),
            issuer: None,
            require_iss: false,
            response_type: "code".into(),
            form_post: false,
        }
    }

    /// Binds the listener and builds the browser URL with the parameters every flow sends.
    async fn prepare(
        &self,
        client_id: &str,
        scopes: &[String],
        response_type: &str,
    ) -> Result<(Vec<tokio::net::TcpListener>, String, String, String, oauth2::url::Url), Failure> {
        let (listeners, port) = bind(&self.ports, self.host).await?;
        let path = if self.path.starts_with('/') { self.path.clone() } else { format!("/{}", self.path) };
        let host = match self.host {
            RedirectHost::Ipv4 => "127.0.0.1",
            RedirectHost::Ipv6 => "[::1]",
            RedirectHost::Localhost => "localhost",
        };
        let redirect_uri = format!("http://{host}:{port}{path}");
        let state = random_token();
        let mut url = oauth2::url::Url::parse(&self.auth_url)
            .map_err(|e| Failure::Listen(format!("invalid authorization URL: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", response_type);
            q.append_pair("client_id", client_id);
            q.append_pair("redirect_uri", &redirect_uri);
            if !scopes.is_empty() {
                q.append_pair("scope", &scopes.join(" "));
            }
            q.append_pair("state", &state);
        }
        Ok((listeners, path, redirect_uri, state, url))
    }

    /// Opens the browser (off the runtime), waits for the outcome, and always stops the
    /// listener.
    async fn run<T>(
        &self,
        url: &oauth2::url::Url,
        result: oneshot::Receiver<Result<T, Failure>>,
        server: Server,
    ) -> Result<T, Failure> {
        match show_and_wait(Arc::clone(&self.browser), url.as_str(), self.timeout, result, server).await {
            Some(Some(outcome)) => outcome,
            Some(None) => Err(Failure::NoCode),
            None => Err(Failure::Timeout(self.timeout)),
        }
    }

    /// Runs one implicit authorisation: the answer's fields (`access_token`, `id_token`,
    /// `expires_in`…), checked (state, error, the id_token's nonce).
    pub(crate) async fn implicit(
        &self,
        client_id: &str,
        scopes: &[String],
    ) -> Result<std::collections::HashMap<String, String>, Failure> {
        let (listeners, path, _redirect, state, mut url) = self.prepare(client_id, scopes, &self.response_type).await?;
        let nonce = random_token();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("nonce", &nonce);
            if self.form_post {
                q.append_pair("response_mode", "form_post");
            }
            for (k, v) in &self.auth_params {
                q.append_pair(k, v);
            }
        }
        let (done, result) = oneshot::channel();
        let (unused, _) = oneshot::channel();
        let waiting = Arc::new(Waiting {
            state,
            issuer: self.issuer.clone(),
            require_iss: self.require_iss,
            display: self.display.clone(),
            done: Mutex::new(Some(unused)),
            implicit: Some(ImplicitWait { nonce, client_id: client_id.to_owned(), done: Mutex::new(Some(done)) }),
        });
        let app = axum::Router::new()
            .route(&path, axum::routing::get(implicit_get).post(implicit_post))
            .fallback(not_found)
            .with_state(waiting);
        let server = serve(listeners, app);
        self.run(&url, result, server).await
    }
}

/// What the authorisation gave, ready to be exchanged.
pub(crate) struct Granted {
    pub(crate) code: String,
    pub(crate) verifier: PkceCodeVerifier,
    pub(crate) redirect_uri: String,
    pub(crate) nonce: Option<String>,
}

/// Why an authorisation failed (never a secret; the server's text is quoted as given).
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server redirected with `error=` (`access_denied`…).
    Denied { error: String, description: Option<String> },
    /// The callback's `state` was missing or not ours.
    State,
    /// The callback's `iss` was not the issuer's (RFC 9207).
    Issuer(String),
    /// The callback had no `iss` from a server whose metadata says it sends one (RFC 9207).
    NoIssuer,
    /// No callback within the timeout.
    Timeout(Duration),
    /// No loopback port could be bound.
    Listen(String),
    /// A callback without a code (or, for the implicit grant, without a token).
    NoCode,
    /// The implicit grant's id_token failed its checks.
    IdToken(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Denied { error, description } => {
                write!(f, "the authorization server refused: {error}")?;
                if let Some(d) = description {
                    write!(f, ": {d}")?;
                }
                Ok(())
            }
            Failure::State => {
                f.write_str("the authorization response's state is missing or not this request's (refused)")
            }
            Failure::Issuer(iss) => write!(
                f,
                "the authorization response came from issuer {iss:?}, not the configured one (refused, RFC 9207)"
            ),
            Failure::NoIssuer => f.write_str(
                "the authorization response has no iss, which this server's metadata says it sends (refused, RFC 9207)",
            ),
            Failure::Timeout(d) => {
                write!(f, "no authorization response within {} s (the browser never came back)", d.as_secs())
            }
            Failure::Listen(e) => write!(f, "no loopback port for the redirect listener: {e}"),
            Failure::NoCode => f.write_str("the authorization response has no code or token"),
            Failure::IdToken(e) => f.write_str(e),
        }
    }
}

/// 128 random bits, URL-safe.
fn random_token() -> String {
    rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes the same time wherever the first difference is.
pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HTML-escapes text for the pages the listener answers with.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn page(title: &str, text: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body><h1>{}</h1><p>{}</p></body></html>",
        escape_html(title),
        escape_html(title),
        escape_html(text)
    ))
}

struct Waiting {
    state: String,
    issuer: Option<String>,
    require_iss: bool,
    display: DisplaySettings,
    done: Mutex<Option<oneshot::Sender<Result<String, Failure>>>>,
    /// For the implicit grant: the fields of the answer, and the nonce an id_token must carry.
    implicit: Option<ImplicitWait>,
}

/// The fields of an implicit grant's answer.
type Fields = std::collections::HashMap<String, String>;

struct ImplicitWait {
    nonce: String,
    client_id: String,
    done: Mutex<Option<oneshot::Sender<Result<Fields, Failure>>>>,
}

/// The page that sends a fragment's parameters back to the listener (the browser never sends a
/// fragment to a server). It echoes nothing.
const FRAGMENT_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Completing sign-in</title></head><body><p id=\"m\">Completing sign-in…</p><script>fetch(location.pathname,{method:'POST',headers:{'content-type':'application/x-www-form-urlencoded'},body:location.hash.substring(1)}).then(function(r){return r.text()}).then(function(t){document.open();document.write(t);document.close()})</script></body></html>";

async fn implicit_get(
    State(w): State<Arc<Waiting>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, Html<String>) {
    if q.contains_key("state") || q.contains_key("error") {
        return implicit_answer(&w, q);
    }
    (StatusCode::OK, Html(FRAGMENT_PAGE.to_owned()))
}

async fn implicit_post(
    State(w): State<Arc<Waiting>>,
    axum::Form(q): axum::Form<std::collections::HashMap<String, String>>,
) -> (StatusCode, Html<String>) {
    implicit_answer(&w, q)
}

fn implicit_answer(w: &Waiting, q: std::collections::HashMap<String, String>) -> (StatusCode, Html<String>) {
    let Some(implicit) = &w.implicit else {
        return not_found_page();
    };
    let outcome = judge(w, &q).or_else(|e| match e {
        Failure::NoCode => Ok(String::new()), // no code in the implicit grant
        other => Err(other),
    });
    let outcome = outcome.and_then(|_| {
        if !q.contains_key("access_token") && !q.contains_key("id_token") {
            return Err(Failure::NoCode);
        }
        if let Some(id_token) = q.get("id_token") {
            check_id_token(id_token, &implicit.nonce, &implicit.client_id).map_err(Failure::IdToken)?;
        }
        Ok(q)
    });
    let (status, reply) = w.reply(outcome.as_ref().map(|_| ()));
    if let Some(done) = implicit.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = done.send(outcome);
    }
    (status, reply)
}

async fn callback(
    State(w): State<Arc<Waiting>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, Html<String>) {
    let outcome = judge(&w, &q);
    let (status, reply) = w.reply(outcome.as_ref().map(|_| ()));
    if let Some(done) = w.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = done.send(outcome);
    }
    (status, reply)
}

impl Waiting {
    /// The page for an outcome, as the display settings say.
    fn reply(&self, outcome: Result<(), &Failure>) -> (StatusCode, Html<String>) {
        match outcome {
            Ok(()) => (StatusCode::OK, self.display.render(true, "You can close this window.")),
            Err(e) => (StatusCode::BAD_REQUEST, self.display.render(false, &e.to_string())),
        }
    }
}

/// Anything but the redirect path (a favicon, a port scanner): 404, and the listener keeps
/// waiting.
async fn not_found() -> (StatusCode, Html<String>) {
    not_found_page()
}

fn not_found_page() -> (StatusCode, Html<String>) {
    (StatusCode::NOT_FOUND, page("Not found", "This is an OAuth2 redirect listener."))
}

/// Opens `url` in `browser` (off the runtime; printed on stderr if it cannot be opened), waits
/// at most `timeout` for the listener's outcome, and always stops the listener. `None` when the
/// time ran out, `Some(None)` when the listener went away without an outcome. Shared by the
/// OAuth2 flows and OAuth1's three-legged dance.
pub(crate) async fn show_and_wait<T>(
    browser: Arc<dyn Browser>,
    url: &str,
    timeout: Duration,
    result: oneshot::Receiver<T>,
    server: Server,
) -> Option<Option<T>> {
    let shown = url.to_owned();
    let opened = tokio::task::spawn_blocking(move || browser.open(&shown))
        .await
        .unwrap_or_else(|e| Err(format!("the browser opener panicked: {e}").into()));
    if let Err(e) = opened {
        tracing::warn!(error = %e, "no browser could be opened; the URL is printed on stderr");
        eprintln!("Open this URL in a browser to authorise the application:\n{url}");
    }
    let outcome = tokio::time::timeout(timeout, result).await.ok().map(Result::ok);
    server.stop().await;
    outcome
}

/// Serves `app` on every listener until the returned [`Server`] is stopped.
pub(crate) fn serve(listeners: Vec<tokio::net::TcpListener>, app: axum::Router) -> Server {
    Server::spawn(listeners, app)
}

/// The listener's servers (one per bound address), stopped together.
pub(crate) struct Server {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    fn spawn(listeners: Vec<tokio::net::TcpListener>, app: axum::Router) -> Server {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = listeners
            .into_iter()
            .map(|listener| {
                let (app, mut stopped) = (app.clone(), stopped.clone());
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        })
                        .await;
                })
            })
            .collect();
        drop(stopped);
        Server { stop, tasks }
    }

    /// Stops every server and waits until their ports are free.
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn judge(w: &Waiting, q: &std::collections::HashMap<String, String>) -> Result<String, Failure> {
    let state_ok = q.get("state").is_some_and(|s| constant_time_eq(s, &w.state));
    if let Some(error) = q.get("error") {
        if !state_ok {
            return Err(Failure::State);
        }
        return Err(Failure::Denied { error: error.clone(), description: q.get("error_description").cloned() });
    }
    if !state_ok {
        return Err(Failure::State);
    }
    if w.require_iss && !q.contains_key("iss") {
        return Err(Failure::NoIssuer);
    }
    if let (Some(expected), Some(iss)) = (&w.issuer, q.get("iss"))
        && iss.trim_end_matches('/') != expected.trim_end_matches('/')
    {
        return Err(Failure::Issuer(iss.clone()));
    }
    q.get("code").filter(|c| !c.is_empty()).cloned().ok_or(Failure::NoCode)
}

/// Binds the first usable port of `ports` on the loopback address(es) `host` names; the
/// listeners and the port.
pub(crate) async fn bind(ports: &[u16], host: RedirectHost) -> Result<(Vec<tokio::net::TcpListener>, u16), Failure> {
    use tokio::net::TcpListener;
    let v4 = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = |port| SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let port_of = |l: &TcpListener| l.local_addr().map(|a| a.port()).map_err(|e| Failure::Listen(e.to_string()));
    let mut last = String::from("no port configured");
    for &port in ports {
        match host {
            RedirectHost::Ipv4 | RedirectHost::Ipv6 => {
                let addr = if host == RedirectHost::Ipv4 { v4(port) } else { v6(port) };
                match TcpListener::bind(addr).await {
                    Ok(listener) => {
                        let port = port_of(&listener)?;
                        return Ok((vec![listener], port));
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            RedirectHost::Localhost => {
                // An ephemeral port is picked on 127.0.0.1 and then taken on ::1 too; a few
                // tries, as the ::1 side of a fresh port may be someone else's.
                for _ in 0..if port == 0 { 8 } else { 1 } {
                    let first = match TcpListener::bind(v4(port)).await {
                        Ok(listener) => listener,
                        Err(e) => {
                            last = format!("{}: {e}", v4(port));
                            break;
                        }
                    };
                    let chosen = port_of(&first)?;
                    match TcpListener::bind(v6(chosen)).await {
                        Ok(second) => return Ok((vec![first, second], chosen)),
                        // No IPv6 on this machine: localhost can only be 127.0.0.1.
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
                            ) || e.raw_os_error() == Some(97) =>
                        {
                            return Ok((vec![first], chosen));
                        }
                        Err(e) => last = format!("{}: {e}", v6(chosen)),
                    }
                }
            }
        }
    }
    Err(Failure::Listen(last))
}

impl CodeFlow {
    /// Runs one authorisation: listener, browser, callback, checks. `client_id` and `scopes`
    /// go into the browser URL; the client secret never does.
    pub(crate) async fn authorize(&self, client_id: &str, scopes: &[String]) -> Result<Granted, Failure> {
        let (listeners, path, redirect_uri, state, mut url) = self.prepare(client_id, scopes, "code").await?;
        let (challenge, verifier) = match self.pkce {
            Pkce::S256 => PkceCodeChallenge::new_random_sha256(),
            Pkce::Plain => {
                let verifier = PkceCodeVerifier::new(format!("{}{}", random_token(), random_token()));
                (PkceCodeChallenge::from_code_verifier_plain(&verifier), verifier)
            }
        };
        let nonce = scopes.iter().any(|s| s == "openid").then(random_token);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("code_challenge", challenge.as_str());
            q.append_pair("code_challenge_method", challenge.method().as_str());
            if let Some(nonce) = &nonce {
                q.append_pair("nonce", nonce);
            }
            for (k, v) in &self.auth_params {
                q.append_pair(k, v);
            }
        }
        let (done, result) = oneshot::channel();
        let waiting = Arc::new(Waiting {
            state,
            issuer: self.issuer.clone(),
            require_iss: self.require_iss,
            display: self.display.clone(),
            done: Mutex::new(Some(done)),
            implicit: None,
        });
        let app =
            axum::Router::new().route(&path, axum::routing::get(callback)).fallback(not_found).with_state(waiting);
        let server = serve(listeners, app);
        tracing::info!(redirect_uri = %redirect_uri, "waiting for the authorization response on the loopback listener");
        let code = self.run(&url, result, server).await?;
        Ok(Granted { code, verifier, redirect_uri, nonce })
    }
}

/// Checks an id_token's `nonce`, `aud` and `exp` (RFC 9700 §2.1.1; OpenID Connect Core §3.1.3.7).
pub(crate) fn check_id_token(id_token: &str, nonce: &str, client_id: &str) -> Result<(), String> {
    use base64::Engine as _;
    let payload = id_token.split('.').nth(1).ok_or("the id_token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the id_token's payload is not base64url")?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| "the id_token's payload is not JSON")?;
    if claims.get("nonce").and_then(|n| n.as_str()).is_none_or(|n| !constant_time_eq(n, nonce)) {
        return Err("the id_token's nonce is not this request's (refused)".into());
    }
    let aud_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == client_id,
        Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err("the id_token is not for this client (aud)".into());
    }
    let now = super::store::wall_now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if claims.get("exp").and_then(|e| e.as_u64()).is_none_or(|exp| exp <= now) {
        return Err("the id_token has expired".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_states_compare_exactly() {
        assert_eq!(
            escape_html("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert_ne!(random_token(), random_token());
    }
}
