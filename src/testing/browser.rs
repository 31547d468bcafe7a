//! A browser for tests of interactive OAuth2 grants: [`BrowserMock`] implements
//! [`oauth2::Browser`](crate::oauth2::Browser) and, instead of showing a page to a user, follows
//! the authorization URL itself (the identity provider's `302` to the loopback redirect
//! listener), or answers the listener with a scripted reply, and records every step, like
//! requests_auth's `browser_mock` fixture and its `tab.assert_success()`.
//!
//! It only ever talks to loopback addresses (`127.0.0.1`, `[::1]`, `localhost`) over plain
//! HTTP, follows at most five redirects, and never sends cookies or credentials of its own.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_auth::BoxError> {
//! use axum::{Router, routing::get};
//! use tower_auth::oauth2::Browser;
//! use tower_auth::testing::{BrowserMock, FakeIdp, TestServer};
//!
//! let idp = FakeIdp::start().await?;
//! let listener = TestServer::start(Router::new().route("/callback", get(|| async { "ok" }))).await?;
//! let url = format!(
//!     "{}?response_type=code&client_id=app&state=xyz&redirect_uri={}",
//!     idp.authorize_url(),
//!     listener.url("/callback").replace(':', "%3A").replace('/', "%2F"),
//! );
//!
//! let browser = BrowserMock::new();
//! browser.open(&url)?; // returns at once: the mock runs on the tokio runtime
//! browser.wait_until_done(1).await;
//! browser.assert_success();
//! assert_eq!(browser.last_page().unwrap().1, "ok");
//! assert_eq!(browser.opened(), [url]);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use super::idp::parse_form;
use crate::BoxError;
use crate::oauth2::Browser;

/// Redirects followed per tab at most.
pub const MAX_REDIRECTS: usize = 5;
/// Pages larger than this are cut off with an error.
const PAGE_LIMIT: usize = 1024 * 1024;
/// Query parameters whose values [`Step`]'s `Debug` hides.
const SENSITIVE: [&str; 6] = ["code", "access_token", "id_token", "refresh_token", "client_secret", "code_verifier"];

/// A reply a [`BrowserMock::scripted`] browser sends to the redirect listener instead of going to
/// the identity provider: a query for the `redirect_uri` found in the authorization URL,
/// optionally after stray requests to the listener (a favicon, a port scanner).
///
/// In the query, `{state}` stands for the authorization URL's `state`, percent-encoded (empty if
/// it had none).
#[derive(Clone)]
pub struct ScriptedReply {
    query: String,
    stray: Vec<String>,
}

impl ScriptedReply {
    /// This query, as written (already percent-encoded), `{state}` replaced.
    pub fn query(query: &str) -> Self {
        ScriptedReply { query: query.to_owned(), stray: Vec::new() }
    }

    /// `code=<code>&state={state}`: what an approving provider sends.
    pub fn code(code: &str) -> Self {
        let code: String = percent_encoding::utf8_percent_encode(code, COMPONENT).collect();
        ScriptedReply::query(&format!("code={code}&state={{state}}"))
    }

    /// `error=access_denied&error_description=The%20user%20refused&state={state}`.
    pub fn denied() -> Self {
        ScriptedReply::query("error=access_denied&error_description=The%20user%20refused&state={state}")
    }

    /// `code=scripted-code&state=not-the-state`: a forged or mixed-up response.
    pub fn wrong_state() -> Self {
        ScriptedReply::query("code=scripted-code&state=not-the-state")
    }

    /// `code=scripted-code`, no `state`.
    pub fn no_state() -> Self {
        ScriptedReply::query("code=scripted-code")
    }

    /// First sends `GET <path>` to the listener's origin (e.g. `/favicon.ico`); repeatable, in
    /// order. The answers are recorded as steps and not followed.
    pub fn stray_first(mut self, path: &str) -> Self {
        self.stray.push(path.to_owned());
        self
    }

    fn render(&self, state: Option<&str>) -> String {
        let state: String = percent_encoding::utf8_percent_encode(state.unwrap_or(""), COMPONENT).collect();
        self.query.replace("{state}", &state)
    }
}

impl fmt::Debug for ScriptedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedReply").field("query", &redact(&self.query)).field("stray", &self.stray).finish()
    }
}

/// One request the mock sent.
#[derive(Clone)]
#[non_exhaustive]
pub struct Step {
    /// Which [`open`](Browser::open) call (tab) it belongs to, from 0.
    pub tab: usize,
    /// The URL requested.
    pub url: String,
    /// The answer's status, when there was one.
    pub status: Option<StatusCode>,
    /// The answer's `Location`, when it had one.
    pub location: Option<String>,
    /// Why the step failed (connection refused, not a loopback URL, …).
    pub error: Option<String>,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("tab", &self.tab)
            .field("url", &redact(&self.url))
            .field("status", &self.status)
            .field("location", &self.location.as_deref().map(redact))
            .field("error", &self.error)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Follow,
    NeverReturns,
    Unavailable,
    Scripted,
}

#[derive(Default)]
struct Tab {
    page: Option<(StatusCode, String)>,
    error: Option<String>,
}

#[derive(Default)]
struct MockState {
    opened: Vec<String>,
    tabs: Vec<Tab>,
    steps: Vec<Step>,
    /// Tabs in the order they finished.
    finished: Vec<usize>,
}

struct Inner {
    mode: Mode,
    reply: Option<ScriptedReply>,
    state: Mutex<MockState>,
    /// Tabs finished.
    done: watch::Sender<usize>,
}

/// A [`Browser`] for tests (see the [module](self) documentation). Cloning shares the mock, so a
/// test keeps one clone and gives the other to the flow.
#[derive(Clone)]
pub struct BrowserMock {
    inner: Arc<Inner>,
}

impl Default for BrowserMock {
    fn default() -> Self {
        BrowserMock::new()
    }
}

impl BrowserMock {
    fn with_mode(mode: Mode, reply: Option<ScriptedReply>) -> Self {
        BrowserMock {
            inner: Arc::new(Inner {
                mode,
                reply,
                state: Mutex::new(MockState::default()),
                done: watch::Sender::new(0),
            }),
        }
    }

    /// A browser that follows the URL it opens: `GET`, then each `Location` (at most
    /// [`MAX_REDIRECTS`], loopback addresses only), and keeps the last page (the listener's).
    pub fn new() -> Self {
        BrowserMock::with_mode(Mode::Follow, None)
    }

    /// A browser that records the URL and never goes there: a user who never comes back (for
    /// time-out tests). Its tabs never finish.
    pub fn never_returns() -> Self {
        BrowserMock::with_mode(Mode::NeverReturns, None)
    }

    /// A browser that cannot be opened: [`open`](Browser::open) records the URL and fails (the
    /// flow should print the URL and keep waiting). Its tabs never finish.
    pub fn unavailable() -> Self {
        BrowserMock::with_mode(Mode::Unavailable, None)
    }

    /// A browser that skips the identity provider: it reads `redirect_uri` and `state` from the
    /// authorization URL and calls the listener with `reply` (then follows the listener's
    /// redirects, if any, as [`new`](Self::new) does).
    pub fn scripted(reply: ScriptedReply) -> Self {
        BrowserMock::with_mode(Mode::Scripted, Some(reply))
    }

    fn state(&self) -> MutexGuard<'_, MockState> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The URLs it was asked to open, in order (one per browser tab).
    pub fn opened(&self) -> Vec<String> {
        self.state().opened.clone()
    }

    /// Every request sent, in order (tabs interleave when several run at once).
    pub fn steps(&self) -> Vec<Step> {
        self.state().steps.clone()
    }

    /// The final page of the last tab to finish: status and body text (the listener's success or
    /// failure page). `None` until a tab finishes with a page.
    pub fn last_page(&self) -> Option<(StatusCode, String)> {
        let state = self.state();
        let tab = *state.finished.last()?;
        state.tabs[tab].page.clone()
    }

    /// Why the last tab to finish failed without a final page (connection refused, too many
    /// redirects, a redirect off the loopback addresses), if it did.
    pub fn last_error(&self) -> Option<String> {
        let state = self.state();
        let tab = *state.finished.last()?;
        state.tabs[tab].error.clone()
    }

    /// Tabs finished so far (with a page or an error).
    pub fn done(&self) -> usize {
        *self.inner.done.borrow()
    }

    /// Waits until `n` tabs have finished (no polling). Wrap it in a timeout: the tabs of
    /// [`never_returns`](Self::never_returns) never finish.
    pub async fn wait_until_done(&self, n: usize) {
        let mut done = self.inner.done.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = done.wait_for(|count| *count >= n).await;
    }

    /// Panics unless the last tab to finish ended on a `2xx` page.
    #[track_caller]
    pub fn assert_success(&self) {
        match (self.last_page(), self.last_error()) {
            (Some((status, _)), _) if status.is_success() => {}
            (Some((status, body)), _) => panic!("expected a success page, got {status}: {body:?}"),
            (None, error) => {
                panic!("expected a success page, got none ({})", error.as_deref().unwrap_or("no tab finished"))
            }
        }
    }

    /// Panics unless the last tab to finish ended on a `2xx` page whose text contains `text`.
    #[track_caller]
    pub fn assert_success_with(&self, text: &str) {
        self.assert_success();
        let (_, body) = self.last_page().unwrap_or_default();
        assert!(body.contains(text), "the success page does not say {text:?}: {body:?}");
    }

    /// Panics unless the last tab to finish ended on a `4xx` or `5xx` page (the listener's
    /// failure page).
    #[track_caller]
    pub fn assert_failure(&self) {
        match (self.last_page(), self.last_error()) {
            (Some((status, _)), _) if status.is_client_error() || status.is_server_error() => {}
            (Some((status, body)), _) => panic!("expected a failure page, got {status}: {body:?}"),
            (None, error) => {
                panic!("expected a failure page, got none ({})", error.as_deref().unwrap_or("no tab finished"))
            }
        }
    }

    /// Panics unless the last tab to finish ended on a `4xx` or `5xx` page whose text contains
    /// `text`.
    #[track_caller]
    pub fn assert_failure_with(&self, text: &str) {
        self.assert_failure();
        let (_, body) = self.last_page().unwrap_or_default();
        assert!(body.contains(text), "the failure page does not say {text:?}: {body:?}");
    }
}

impl Browser for BrowserMock {
    fn open(&self, url: &str) -> Result<(), BoxError> {
        let tab = {
            let mut state = self.state();
            state.opened.push(url.to_owned());
            state.tabs.push(Tab::default());
            state.tabs.len() - 1
        };
        match self.inner.mode {
            Mode::NeverReturns => return Ok(()),
            Mode::Unavailable => return Err("no browser can be opened (BrowserMock::unavailable)".into()),
            Mode::Follow | Mode::Scripted => {}
        }
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime,
            Err(err) => {
                let reason = format!("BrowserMock needs a tokio runtime: {err}");
                finish(&self.inner, tab, Err(reason.clone()));
                return Err(reason.into());
            }
        };
        let inner = Arc::clone(&self.inner);
        let url = url.to_owned();
        runtime.spawn(async move {
            let outcome = run(&inner, tab, url).await;
            finish(&inner, tab, outcome);
        });
        Ok(())
    }
}

impl fmt::Debug for BrowserMock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("BrowserMock")
            .field("mode", &self.inner.mode)
            .field("reply", &self.inner.reply)
            .field("opened", &state.opened.len())
            .field("done", &*self.inner.done.borrow())
            .finish()
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, MockState> {
    inner.state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn finish(inner: &Inner, tab: usize, outcome: Result<(StatusCode, String), String>) {
    {
        let mut state = lock(inner);
        match outcome {
            Ok(page) => state.tabs[tab].page = Some(page),
            Err(error) => state.tabs[tab].error = Some(error),
        }
        state.finished.push(tab);
    }
    inner.done.send_modify(|done| *done += 1);
}

fn record(inner: &Inner, step: Step) {
    lock(inner).steps.push(step);
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// One tab: the final page, or why there is none.
async fn run(inner: &Inner, tab: usize, url: String) -> Result<(StatusCode, String), String> {
    // No idle connections: a listener shutting down gracefully does not wait for the mock.
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http();
    let Some(reply) = inner.reply.as_ref().filter(|_| inner.mode == Mode::Scripted) else {
        return follow(inner, &client, tab, url).await;
    };
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    let params = parse_form(query.as_bytes());
    let param = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let Some(redirect_uri) = param("redirect_uri") else {
        return Err("the authorization URL has no redirect_uri".to_owned());
    };
    let origin = origin(redirect_uri).ok_or_else(|| format!("redirect_uri is not an http URL: {redirect_uri}"))?;
    for path in &reply.stray {
        let stray = format!("{origin}{path}");
        // Stray requests are not followed; their failure is recorded and does not stop the tab.
        let _ = get(inner, &client, tab, &stray).await;
    }
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let callback = format!("{redirect_uri}{separator}{}", reply.render(param("state")));
    follow(inner, &client, tab, callback).await
}

/// `GET url`, then each `Location`, at most [`MAX_REDIRECTS`] times.
async fn follow(
    inner: &Inner,
    client: &HttpClient,
    tab: usize,
    mut url: String,
) -> Result<(StatusCode, String), String> {
    for _ in 0..=MAX_REDIRECTS {
        let (status, location, body) = get(inner, client, tab, &url).await?;
        match location {
            Some(location) if status.is_redirection() => url = resolve(&url, &location),
            _ => return Ok((status, body)),
        }
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

/// One request, recorded as a step.
async fn get(
    inner: &Inner,
    client: &HttpClient,
    tab: usize,
    url: &str,
) -> Result<(StatusCode, Option<String>, String), String> {
    let mut step = Step { tab, url: url.to_owned(), status: None, location: None, error: None };
    let outcome = fetch(client, url).await;
    match &outcome {
        Ok((status, location, _)) => {
            step.status = Some(*status);
            step.location.clone_from(location);
        }
        Err(error) => step.error = Some(error.clone()),
    }
    record(inner, step);
    outcome
}

async fn fetch(client: &HttpClient, url: &str) -> Result<(StatusCode, Option<String>, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    if !is_loopback_http(&uri) {
        return Err("refused: not http on 127.0.0.1, [::1] or localhost".to_owned());
    }
    let req = Request::get(uri)
        .header(http::header::ACCEPT, "text/html,*/*")
        .header(http::header::USER_AGENT, "tower-auth BrowserMock")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let res = client.request(req).await.map_err(|e| format!("request failed: {e}"))?;
    let status = res.status();
    let location = res.headers().get(http::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = Limited::new(res.into_body(), PAGE_LIMIT)
        .collect()
        .await
        .map_err(|e| format!("reading the page failed: {e}"))?
        .to_bytes();
    Ok((status, location, String::from_utf8_lossy(&body).into_owned()))
}

fn is_loopback_http(uri: &Uri) -> bool {
    uri.scheme_str() == Some("http")
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && matches!(uri.host(), Some("127.0.0.1" | "[::1]" | "::1" | "localhost"))
}

/// `scheme://authority` of an absolute URL.
fn origin(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
}

/// `location` resolved against `base` (absolute, scheme-relative, absolute-path or relative).
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split_once("://").map_or("http", |(s, _)| s);
        return format!("{scheme}://{rest}");
    }
    let Some(origin) = origin(base) else { return location.to_owned() };
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = base[origin.len()..].split(['?', '#']).next().unwrap_or("");
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{origin}{dir}{location}")
}

/// A URL or query with the values of [`SENSITIVE`] parameters replaced.
fn redact(url: &str) -> String {
    let Some((head, query)) = url.split_once('?').or_else(|| (!url.contains("://")).then_some(("", url))) else {
        return url.to_owned();
    };
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if SENSITIVE.contains(&name) => format!("{name}=[redacted]"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    if head.is_empty() && !url.contains('?') { query } else { format!("{head}?{query}") }
}

/// Percent-encoding of a query component (RFC 3986 unreserved characters stay).
const COMPONENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_locations() {
        let base = "http://127.0.0.1:1/a/b?x=1";
        assert_eq!(resolve(base, "http://localhost:2/c"), "http://localhost:2/c");
        assert_eq!(resolve(base, "//[::1]:3/d"), "http://[::1]:3/d");
        assert_eq!(resolve(base, "/e?f=g"), "http://127.0.0.1:1/e?f=g");
        assert_eq!(resolve(base, "h"), "http://127.0.0.1:1/a/h");
    }

    #[test]
    fn redacts_codes_and_tokens() {
        assert_eq!(redact("http://127.0.0.1:1/cb?code=abc&state=s"), "http://127.0.0.1:1/cb?code=[redacted]&state=s");
        assert_eq!(redact("code=abc&state={state}"), "code=[redacted]&state={state}");
        assert_eq!(redact("http://127.0.0.1:1/cb"), "http://127.0.0.1:1/cb");
    }

    #[test]
    fn only_loopback_http() {
        for good in ["http://127.0.0.1:1/", "http://[::1]:1/", "http://localhost:1/x"] {
            assert!(is_loopback_http(&good.parse().unwrap()), "{good}");
        }
        for bad in ["https://127.0.0.1:1/", "http://example.com/", "http://u@127.0.0.1:1/", "http://127.0.0.2/"] {
            assert!(!is_loopback_http(&bad.parse().unwrap()), "{bad}");
        }
    }
}
