//! NTLM and Negotiate (SPNEGO): Windows authentication, bound to the connection (feature `ntlm`).
//!
//! These schemes authenticate a *connection*, not a request: the legs of the handshake (NTLM's
//! negotiate → challenge → authenticate) must travel on one keep-alive connection, and afterwards
//! that connection is authenticated (IIS behaves so) while others are not. A layer above a
//! connection pool cannot pin a connection, so this module has its own client:
//!
//! - [`WindowsAuth`]: a tower [`Service`](tower_service::Service) that owns its HTTP/1.1
//!   connections (hyper's `client::conn::http1`), keyed by origin (or proxy). A request takes an
//!   idle authenticated connection, or opens one and runs the handshake on it: the first leg and
//!   every intermediate one with an empty body (`Content-Length: 0`, as curl does), the real
//!   body on the last leg; every `401`/`407` body drained so the connection stays open. A
//!   connection whose handshake failed is closed, never pooled. Connections are bounded per
//!   origin ([`WindowsAuthBuilder::max_connections`]); requests beyond wait for one to come back;
//!   idle ones expire ([`WindowsAuthBuilder::idle_timeout`]). One client has one set of
//!   credentials, so an authenticated connection is never lent to other credentials: another
//!   user is another client, with its own pool. HTTP/1.1 only (Windows authentication cannot run
//!   over HTTP/2; TLS offers `http/1.1` by ALPN). If an authenticated connection is asked to
//!   authenticate again (a `401` on it), the handshake runs again on it and the body is replayed
//!   (within [`WindowsAuthBuilder::body_limit`]).
//! - Proxies: [`WindowsAuthBuilder::proxy_auth`] answers a proxy's `407` with NTLM or
//!   Negotiate: on the client's own connections to the proxy for plain-`http` targets (absolute
//!   form), and on the `CONNECT` of `https` targets through [`ConnectAuth`], the scheme the
//!   crate's [`ProxyConnector`](crate::connect::ProxyConnector) drives through the
//!   [`Authenticator`] trait; it is
//!   [connection-bound](crate::Authenticator::connection_bound), so the `CONNECT` loop keeps all
//!   legs on one connection or fails.
//!   Through a `CONNECT` tunnel, the origin's handshake then runs inside the tunnel (proxy and
//!   origin both authenticated, one connection). For a plain-`http` target through a proxy, only
//!   the proxy is authenticated: a forward proxy does not pin its upstream connection, so the
//!   origin's `401` reaches the caller.
//! - Channel binding: over HTTPS the NTLM authenticate message carries the RFC 5929
//!   `tls-server-end-point` hash of the server's certificate (servers with Extended Protection
//!   set to required refuse clients without it), and so does the Kerberos authenticator.
//!   `sspi` (0.23) writes the MS-KILE `KERB_AP_OPTIONS_CBT` element of a channel-bound Kerberos
//!   AP-REQ in 2 bytes where MIT Kerberos (krb5 >= 1.19: Apache's mod_auth_gssapi, nginx,
//!   Python services) reads 4, and refuses the AP-REQ: after such a refusal the client tries
//!   once more without bindings, on a new connection, and that origin gets none from then on
//!   ([`WindowsAuthBuilder::strict_channel_binding`] turns that off). The system's Kerberos
//!   ([`Credentials::from_cache`], feature `gssapi`) sends bindings MIT reads: tested against an
//!   MIT acceptor that requires them.
//!
//! User names: `user`, `DOMAIN\user` or `user@domain` ([`Credentials::new`]).
//!
//! # What is hand-written, and why
//!
//! The protocols are Devolutions' [`sspi`](https://docs.rs/sspi) (pure Rust, no OpenSSL):
//! NTLMv2 with the message integrity code, extended session security and channel bindings, and
//! SPNEGO. Written here: the client that owns its connections (no pool crate pins a connection
//! to a credential and runs a handshake on it), the HTTP framing of the tokens (parsed with the
//! crate's [challenge parser](crate::challenge)), and the `tls-server-end-point` hash (a few
//! lines of DER reading for the certificate's signature algorithm, tested in `binding.rs`).
//! Every call into `sspi` is guarded: a hostile challenge (truncated, offsets outside it) gives
//! a typed [`Error`], never a panic.
//!
//! The MIT keytab reader (`keytab.rs`, for [`Credentials::from_keytab`]) is hand-written too:
//! `sspi` takes a key, not a file.
//!
//! # Negotiate and Kerberos
//!
//! [`Mechanism::Negotiate`] sends SPNEGO tokens. With Kerberos (`sspi`'s client), a ticket is
//! obtained for `HTTP/host` from a password or a keytab key; the KDC is the one given to
//! [`WindowsAuthBuilder::kdc`], else the realm's `kdc` in `krb5.conf` (`KRB5_CONFIG`, then
//! `/etc/krb5.conf`), else `SSPI_KDC_URL`; it is reached over TCP or UDP by blocking sockets on
//! tokio's blocking pool (10 s timeouts). Users are `REALM\user` or `user@REALM` (the latter is
//! turned into the former: `sspi` would send an enterprise name, which MIT KDCs do not know). The
//! AP-REQ goes with the request's body (the server can answer on it), and the server's final
//! token (the AP-REP, or SPNEGO's `mechListMIC`) is verified: one that does not verify fails the
//! request ([`Error::is_protocol`]); an answer without one means the server did not authenticate
//! the connection (a resource that needs nothing): it is returned, and the connection is pooled
//! unauthenticated (a later challenge on it runs the handshake there). When no ticket can be had (no
//! KDC, clock skew, unknown principal) or the target is an IP address, NTLM runs inside SPNEGO, as
//! Windows does; [`WindowsAuthBuilder::kerberos_only`] turns that into a typed
//! [`Error::is_credentials`] instead. `sspi` follows the KDC's clock (the time in its
//! pre-authentication error), so a client clock off by hours still gets a ticket; a server whose
//! clock differs from the KDC's refuses it ("ticket not yet valid"): [`Error::is_rejected`],
//! tested with a KDC running 2 h ahead.
//!
//! # The credential cache (`kinit`), feature `gssapi`
//!
//! `sspi` reads no credential cache. [`Credentials::from_cache`] (`fetch --negotiate -u :`, as
//! curl) runs the handshake in the system's GSS-API library instead (MIT Kerberos or Heimdal,
//! through the `libgssapi` crate): it reads the cache (`KRB5CCNAME`, any cache type it knows) and
//! `krb5.conf`, gets the `HTTP@host` ticket from the KDC, binds the token to the TLS channel over
//! HTTPS, and verifies the server's final token. No cache, or an expired ticket: a typed
//! [`Error::is_credentials`] that says to run `kinit`, before anything is sent.
//!
//! # Proxies
//!
//! The service name of a handshake with a proxy is `HTTP/` and the proxy's host.
//! [`ConnectAuth`] makes its first token on tokio's blocking pool (with Kerberos, the KDC
//! exchange) while the connector's task waits; a final Negotiate token on the proxy's `200` must
//! verify, or the tunnel is refused.
//!
//! # Security
//!
//! Credentials go only to the origin or proxy they were configured for (the client's own
//! connections, the proxy's `CONNECT`); the token headers are marked sensitive; [`Error`],
//! `Debug` output and this crate's logs never hold a password, hash or token (`sspi`'s own
//! `trace`-level events show Kerberos session keys: keep `sspi=trace` off in production). At most [`MAX_LEGS`] requests
//! per handshake: a server answering `401` forever gets a typed error, not a loop.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::ServiceExt;
//! use tower_auth::ntlm::WindowsAuth;
//!
//! let client = WindowsAuth::ntlm(r"CORP\alice", "s3cret").max_connections(8).build::<Full<Bytes>>()?;
//! let req = http::Request::post("http://intranet.corp/api").body(Full::from("{}"))?;
//! let res = client.clone().oneshot(req).await?;
//! println!("{} after {} handshakes", res.status(), client.stats().handshakes);
//! # Ok(()) }
//! ```

#[cfg_attr(not(feature = "tls"), allow(dead_code))]
mod binding;
mod client;
mod context;
mod error;
#[cfg(feature = "gssapi")]
mod gss;
mod keytab;

use std::fmt;

use http::header::PROXY_AUTHENTICATE;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode};

pub use self::client::{MAX_LEGS, ResponseBody, Stats, WindowsAuth, WindowsAuthBuilder};
use self::context::SecContext;
pub use self::error::Error;
use crate::authenticator::{Action, AuthRequest, Authenticator, Authorize};
use crate::secret::Secret;

/// The scheme: `NTLM` or `Negotiate` (SPNEGO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `NTLM`: NTLMv2 with the message integrity code.
    Ntlm,
    /// `Negotiate`: SPNEGO, Kerberos when a ticket can be had, NTLM inside it otherwise.
    Negotiate,
}

impl Mechanism {
    /// The scheme name in headers.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Ntlm => "NTLM",
            Mechanism::Negotiate => "Negotiate",
        }
    }
}

/// A user and password (`user`, `DOMAIN\user` or `user@domain`), or a Kerberos principal and
/// its key from a keytab. `Debug` redacts the password and the key.
#[derive(Clone)]
pub struct Credentials {
    user: String,
    password: Secret,
    keytab: Option<std::sync::Arc<keytab::KeytabKey>>,
    cache: bool,
}

impl Credentials {
    /// The user (`user`, `DOMAIN\user` or `user@domain`) and password.
    pub fn new(user: impl Into<String>, password: impl Into<Secret>) -> Self {
        Credentials { user: user.into(), password: password.into(), keytab: None, cache: false }
    }

    /// A principal's long-term key from an MIT keytab file (`kadmin ktadd`, `ktutil`), for
    /// Negotiate with Kerberos without a password: `principal` as `name@REALM` (`None`: the
    /// file's first principal). AES256 is preferred over AES128, the highest key version wins.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::ConfigError) if the file cannot be read, is not a keytab, or
    /// holds no AES key for the principal. The message never holds key material.
    pub fn from_keytab(principal: Option<&str>, path: impl AsRef<std::path::Path>) -> Result<Self, crate::ConfigError> {
        let path = path.as_ref();
        let data = std::fs::read(path)
            .map_err(|e| crate::ConfigError::new(format!("cannot read the keytab {}: {e}", path.display())))?;
        let keys = keytab::parse(&data).map_err(|e| crate::ConfigError::new(format!("{}: {e}", path.display())))?;
        let key = keytab::select(&keys, principal).ok_or_else(|| {
            crate::ConfigError::new(format!(
                "{}: no AES key for {}",
                path.display(),
                principal.unwrap_or("any principal")
            ))
        })?;
        Ok(Credentials {
            user: key.principal.clone(),
            password: Secret::new(""),
            keytab: Some(std::sync::Arc::new(key)),
            cache: false,
        })
    }

    /// The ticket in the Kerberos credential cache (`kinit`; `KRB5CCNAME`, else the system's
    /// default cache), for Negotiate, as `curl --negotiate -u :` uses it. Needs the feature
    /// `gssapi`: the handshake then runs in the system's GSS-API library (MIT Kerberos or
    /// Heimdal), which reads the cache and `krb5.conf`, asks the KDC for the `HTTP@host` ticket
    /// and checks the server's final token. Without that feature the handshake fails with
    /// [`Error::is_credentials`]. [`user`](Self::user) is empty: the cache names the principal.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use tower::ServiceExt;
    /// use tower_auth::ntlm::{Credentials, Mechanism, WindowsAuth};
    ///
    /// // After `kinit alice@CORP.EXAMPLE`:
    /// let client = WindowsAuth::builder()
    ///     .origin(Mechanism::Negotiate, Credentials::from_cache())
    ///     .build::<http_body_util::Empty<bytes::Bytes>>()?;
    /// let res = client.oneshot(http::Request::get("http://intranet.corp.example/").body(Default::default())?).await?;
    /// assert!(res.status().is_success());
    /// # Ok(()) }
    /// ```
    pub fn from_cache() -> Self {
        Credentials { user: String::new(), password: Secret::new(""), keytab: None, cache: true }
    }

    /// Whether these are [`from_cache`](Self::from_cache)'s.
    pub fn is_from_cache(&self) -> bool {
        self.cache
    }

    /// The user as given.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub(crate) fn password(&self) -> &Secret {
        &self.password
    }

    pub(crate) fn keytab(&self) -> Option<&keytab::KeytabKey> {
        self.keytab.as_deref()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password)
            .field("keytab", &self.keytab.is_some())
            .field("cache", &self.cache)
            .finish()
    }
}

/// NTLM or Negotiate for a proxy's `CONNECT`, driven by
/// [`ProxyConnector`](crate::connect::ProxyConnector)'s loop: the first `CONNECT` carries the
/// first token, the `407`'s challenge gives the next one, all on one connection. It applies to
/// `CONNECT` requests only (an authenticated connection belongs to the connection-bound client,
/// [`WindowsAuth`], never to a pooled one).
///
/// The service name is `HTTP/` and the proxy's host (from [`ViaProxy`](crate::connect::ViaProxy)
/// in the request's extensions). The first token is made on tokio's blocking pool (with
/// Kerberos it asks the KDC for a ticket): the connector's task waits for it without blocking its
/// thread. A final Negotiate token on the proxy's `200` is verified (mutual authentication): one
/// that does not verify fails the tunnel, which is never used.
///
/// ```
/// use tower_auth::connect::Proxy;
/// use tower_auth::ntlm::{ConnectAuth, Credentials, Mechanism};
///
/// let proxy = Proxy::parse("http://proxy.corp:8080")
///     .unwrap()
///     .auth(ConnectAuth::new(Mechanism::Ntlm, Credentials::new(r"CORP\alice", "s3cret")));
/// ```
#[derive(Debug, Clone)]
pub struct ConnectAuth {
    mechanism: Mechanism,
    credentials: Credentials,
    kerberos: context::KerberosOptions,
}

impl ConnectAuth {
    /// The scheme for a proxy's `CONNECT`.
    pub fn new(mechanism: Mechanism, credentials: Credentials) -> Self {
        ConnectAuth { mechanism, credentials, kerberos: context::KerberosOptions::default() }
    }

    /// The KDC for Negotiate's Kerberos, as [`WindowsAuthBuilder::kdc`].
    pub fn kdc(mut self, url: impl Into<String>) -> Self {
        self.kerberos.kdc = Some(url.into());
        self
    }

    /// Kerberos only, no NTLM inside SPNEGO, as [`WindowsAuthBuilder::kerberos_only`].
    pub fn kerberos_only(mut self) -> Self {
        self.kerberos.no_ntlm = true;
        self
    }

    pub(crate) fn with_kerberos(mut self, kerberos: &context::KerberosOptions) -> Self {
        self.kerberos = kerberos.clone();
        self
    }
}

type FirstStep = std::sync::Arc<std::sync::Mutex<Option<(SecContext, Vec<u8>)>>>;

/// The progress of one `CONNECT` handshake.
#[derive(Debug, Default)]
pub struct ConnectState {
    ctx: Option<SecContext>,
    next: Option<Vec<u8>>,
    /// The first step, made on the blocking pool while the connector waits.
    first: Option<FirstStep>,
    /// Why the proxy's last answer was refused (a final token that did not verify).
    refused: Option<String>,
}

impl ConnectAuth {
    fn header(&self, token: &[u8]) -> Option<HeaderValue> {
        use base64::Engine as _;
        let value = format!("{} {}", self.mechanism.name(), base64::engine::general_purpose::STANDARD.encode(token));
        let mut value = HeaderValue::try_from(value).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// The first step: a context for `host`, its first token.
    fn first_step(&self, host: &str) -> Result<(SecContext, Vec<u8>), crate::Error> {
        let mut ctx = SecContext::new(self.mechanism, &self.credentials, host, None, &self.kerberos)
            .map_err(|e| crate::Error::scheme(step_text(e)))?;
        let step = ctx.step(None).map_err(|e| crate::Error::scheme(step_text(e)))?;
        Ok((ctx, step.token))
    }
}

fn step_text(e: context::StepError) -> String {
    match e {
        context::StepError::Protocol(d) | context::StepError::Credentials(d) => d,
    }
}

/// The wait of [`ConnectAuth`]: its first step on tokio's blocking pool.
pub type ConnectWait = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), crate::Error>> + Send>>;

impl Authenticator for ConnectAuth {
    type Mode = crate::Replay;
    type Error = crate::Error;
    type State = ConnectState;
    type Wait = ConnectWait;

    fn authorize(
        &self,
        req: &mut AuthRequest<'_>,
        state: &mut ConnectState,
    ) -> Result<Authorize<Self::Wait>, crate::Error> {
        if req.method() != Method::CONNECT {
            return Ok(Authorize::Done);
        }
        if let Some(why) = &state.refused {
            return Err(crate::Error::scheme(why.clone()));
        }
        let token = match (&state.ctx, state.next.take()) {
            (None, _) => {
                if let Some(slot) = state.first.take() {
                    let made = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    let Some((ctx, token)) = made else {
                        return Err(crate::Error::scheme("the first handshake step did not finish"));
                    };
                    state.ctx = Some(ctx);
                    token
                } else {
                    // The proxy's host names the service (`HTTP/proxy`), not the target.
                    let host = req
                        .parts()
                        .extensions
                        .get::<crate::connect::ViaProxy>()
                        .map(|via| via.host().to_owned())
                        .or_else(|| req.uri().host().map(str::to_owned))
                        .unwrap_or_default();
                    let slot = FirstStep::default();
                    state.first = Some(std::sync::Arc::clone(&slot));
                    let this = self.clone();
                    return Ok(Authorize::Wait(Box::pin(async move {
                        let made = match tokio::runtime::Handle::try_current() {
                            Ok(rt) => rt
                                .spawn_blocking(move || this.first_step(&host))
                                .await
                                .map_err(|e| crate::Error::scheme(format!("the handshake step failed: {e}")))??,
                            Err(_) => this.first_step(&host)?,
                        };
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(made);
                        Ok(())
                    })));
                }
            }
            (Some(_), Some(token)) => token,
            (Some(_), None) => return Ok(Authorize::Done),
        };
        if let Some(value) = self.header(&token) {
            req.headers_mut().insert(http::header::PROXY_AUTHORIZATION, value);
        }
        Ok(Authorize::Done)
    }

    fn applies_to(&self, req: &Parts) -> bool {
        req.method == Method::CONNECT
    }

    fn connection_bound(&self) -> bool {
        true
    }

    fn on_response(&self, _: &Parts, res: &http::response::Parts, state: &mut ConnectState) -> Action {
        let Some(ctx) = state.ctx.as_mut() else { return Action::Done };
        use base64::Engine as _;
        let token = crate::challenge::parse_headers(&res.headers, PROXY_AUTHENTICATE)
            .iter()
            .filter(|c| c.is_scheme(self.mechanism.name()))
            .find_map(|c| c.token68())
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok());
        if res.status.is_success() {
            // Negotiate's mutual authentication: a final token must verify; the tunnel is refused
            // otherwise (`Retry` on a success: `authorize` then fails with the reason).
            return match token {
                Some(token) if !token.is_empty() && !ctx.is_complete() => match ctx.step(Some(&token)) {
                    Ok(_) => Action::Done,
                    Err(e) => {
                        state.refused = Some(format!(
                            "the proxy's final {} token did not verify (mutual authentication): {}",
                            self.mechanism.name(),
                            step_text(e)
                        ));
                        Action::Retry
                    }
                },
                _ => Action::Done,
            };
        }
        if res.status != StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            return Action::Done;
        }
        if ctx.is_complete() {
            return Action::Done; // refused after the last leg
        }
        let Some(token) = token else { return Action::Done };
        match ctx.step(Some(&token)) {
            Ok(step) if !step.token.is_empty() => {
                state.next = Some(step.token);
                Action::Retry
            }
            Ok(_) => Action::Done,
            Err(e) => {
                tracing::debug!(error = ?e, "the proxy's challenge could not be answered");
                Action::Done
            }
        }
    }
}
