//! An NTLM server for tests (features `testing` and `ntlm`): `sspi`'s acceptor, which checks
//! the NTLMv2 response against the password for real, behind an HTTP/1.1 server that keeps each
//! connection authenticated after its handshake, as IIS does. Also the bare acceptor
//! ([`NtlmAcceptor`]), for servers of your own.
//!
//! ```
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//! use tower_auth::ntlm::WindowsAuth;
//! use tower_auth::testing::ntlm::NtlmServer;
//!
//! let server = NtlmServer::start(r"CORP\alice", "s3cret").await?;
//! let client = WindowsAuth::ntlm(r"CORP\alice", "s3cret").build::<http_body_util::Empty<bytes::Bytes>>()?;
//! for _ in 0..3 {
//!     let req = http::Request::get(server.url("/hello")).body(Default::default())?;
//!     let res = client.clone().oneshot(req).await?;
//!     assert_eq!(res.status(), 200);
//!     // Read to its end, the body gives the connection back to the client's pool.
//!     assert_eq!(res.into_body().collect().await?.to_bytes(), r"hello CORP\alice");
//! }
//! // One handshake (two legs) on one connection, then two requests on it.
//! assert_eq!((server.handshakes(), server.requests()), (1, 4));
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, State};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, StatusCode};
use sspi::{
    AuthIdentity, BufferType, CredentialUse, DataRepresentation, SecurityBuffer, SecurityStatus, ServerRequestFlags,
    Sspi, SspiImpl, Username,
};

/// `sspi`'s NTLM acceptor for one connection's handshakes, knowing one user.
pub struct NtlmAcceptor {
    user: String,
    password: crate::Secret,
    ntlm: Option<(sspi::Ntlm, <sspi::Ntlm as SspiImpl>::CredentialsHandle)>,
}

impl std::fmt::Debug for NtlmAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmAcceptor").field("user", &self.user).finish_non_exhaustive()
    }
}

/// What [`NtlmAcceptor::accept`] concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Send this challenge (type 2 message) and wait for the next token.
    Challenge(Vec<u8>),
    /// The client proved it knows the password: the connection is authenticated.
    Authenticated,
}

impl NtlmAcceptor {
    /// An acceptor that knows `user` (`DOMAIN\user`, `user`) with `password`.
    pub fn new(user: &str, password: &str) -> Self {
        NtlmAcceptor { user: user.to_owned(), password: crate::Secret::new(password), ntlm: None }
    }

    /// Runs the acceptor on one client token; a type 1 (negotiate) message starts a new
    /// handshake.
    ///
    /// # Errors
    ///
    /// `sspi`'s error: a malformed token, a wrong password (`LogonDenied`), a bad MIC.
    pub fn accept(&mut self, token: &[u8]) -> Result<Accepted, sspi::Error> {
        if token.get(8) == Some(&1) || self.ntlm.is_none() {
            let identity = AuthIdentity {
                username: Username::parse(&self.user)
                    .map_err(|e| sspi::Error::new(sspi::ErrorKind::InvalidParameter, e.to_string()))?,
                password: self.password.expose().to_owned().into(),
            };
            let mut ntlm = sspi::Ntlm::new();
            let handle = ntlm
                .acquire_credentials_handle()
                .with_credential_use(CredentialUse::Inbound)
                .with_auth_data(&identity)
                .execute(&mut ntlm)?
                .credentials_handle;
            self.ntlm = Some((ntlm, handle));
        }
        let Some((ntlm, handle)) = self.ntlm.as_mut() else {
            return Err(sspi::Error::new(sspi::ErrorKind::InternalError, "no context"));
        };
        let mut input = vec![SecurityBuffer::new(token.to_vec(), BufferType::Token)];
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let builder = ntlm
            .accept_security_context()
            .with_credentials_handle(handle)
            .with_context_requirements(ServerRequestFlags::ALLOCATE_MEMORY)
            .with_target_data_representation(DataRepresentation::Native)
            .with_input(&mut input)
            .with_output(&mut output);
        let result = ntlm.accept_security_context_impl(builder)?.resolve_to_result()?;
        if matches!(result.status, SecurityStatus::CompleteNeeded | SecurityStatus::CompleteAndContinue) {
            ntlm.complete_auth_token(&mut output)?;
        }
        Ok(match result.status {
            SecurityStatus::ContinueNeeded => Accepted::Challenge(output.pop().map(|b| b.buffer).unwrap_or_default()),
            _ => Accepted::Authenticated,
        })
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    handshakes: AtomicU64,
    refused: AtomicU64,
}

struct Shared {
    user: String,
    password: String,
    /// Per connection (its client address): the acceptor, and whether it is authenticated.
    connections: Mutex<HashMap<SocketAddr, (NtlmAcceptor, bool)>>,
    counters: Counters,
}

/// An HTTP/1.1 server on 127.0.0.1 (a free port) whose every path needs NTLM on the connection;
/// see the [module documentation](self). The tasks stop when it is dropped.
pub struct NtlmServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NtlmServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmServer").field("addr", &self.addr).field("user", &self.shared.user).finish()
    }
}

impl NtlmServer {
    /// Starts the server for `user` (`DOMAIN\user`) with `password`.
    ///
    /// # Errors
    ///
    /// The listener could not be bound.
    pub async fn start(user: &str, password: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            password: password.to_owned(),
            connections: Mutex::default(),
            counters: Counters::default(),
        });
        let app = axum::Router::new().fallback(answer).with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "NTLM test server stopped");
            }
        });
        Ok(NtlmServer { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests received (every leg of every handshake counts).
    pub fn requests(&self) -> u64 {
        self.shared.counters.requests.load(Ordering::Relaxed)
    }

    /// Handshakes that ended with the connection authenticated.
    pub fn handshakes(&self) -> u64 {
        self.shared.counters.handshakes.load(Ordering::Relaxed)
    }

    /// Authenticate messages refused (a wrong password, a bad MIC).
    pub fn refused(&self) -> u64 {
        self.shared.counters.refused.load(Ordering::Relaxed)
    }
}

impl Drop for NtlmServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let challenge = |token: Option<Vec<u8>>| {
        let value = token.map_or_else(|| "NTLM".to_owned(), |t| format!("NTLM {}", STANDARD.encode(t)));
        (StatusCode::UNAUTHORIZED, [(http::header::WWW_AUTHENTICATE, value)], "NTLM, please").into_response()
    };
    let mut connections = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
    let (acceptor, authenticated) =
        connections.entry(peer).or_insert_with(|| (NtlmAcceptor::new(&shared.user, &shared.password), false));
    if *authenticated {
        return format!("hello {}", shared.user).into_response();
    }
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok()?.strip_prefix("NTLM "))
        .and_then(|t| STANDARD.decode(t.trim()).ok());
    let Some(token) = token else { return challenge(None) };
    match acceptor.accept(&token) {
        Ok(Accepted::Challenge(out)) => challenge(Some(out)),
        Ok(Accepted::Authenticated) => {
            *authenticated = true;
            shared.counters.handshakes.fetch_add(1, Ordering::Relaxed);
            format!("hello {}", shared.user).into_response()
        }
        Err(_) => {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            challenge(None)
        }
    }
}
