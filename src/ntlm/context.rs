//! The security context of one handshake: Devolutions' `sspi` (NTLM, Negotiate) behind a small
//! step function, with every failure (and any panic inside `sspi` on hostile input) turned into
//! a typed error.

use std::panic::{AssertUnwindSafe, catch_unwind};

use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, DataRepresentation, SecurityBuffer, SecurityStatus,
    Sspi, SspiImpl, Username,
};

use super::{Credentials, Mechanism};

/// What a step produced.
#[derive(Debug)]
pub(crate) struct Step {
    /// The token to send (empty: nothing to send).
    pub(crate) token: Vec<u8>,
    /// Whether the context expects another token from the peer after this one.
    pub(crate) more: bool,
}

/// Why a step failed: the peer's message was unusable, or the credentials could not produce a
/// token. The text is `sspi`'s description, which never holds the password.
#[derive(Debug)]
pub(crate) enum StepError {
    Protocol(String),
    Credentials(String),
}

impl StepError {
    fn from_sspi(err: &sspi::Error) -> Self {
        use sspi::ErrorKind as K;
        let text = format!("{:?}: {}", err.error_type, err.description);
        match err.error_type {
            K::InvalidToken
            | K::InvalidParameter
            | K::MessageAltered
            | K::OutOfSequence
            | K::DecryptFailure
            | K::InternalError
            | K::BufferTooSmall
            | K::IncompleteMessage => StepError::Protocol(text),
            _ => StepError::Credentials(text),
        }
    }
}

enum Mech {
    Ntlm { ntlm: Box<sspi::Ntlm>, handle: <sspi::Ntlm as SspiImpl>::CredentialsHandle },
    Negotiate { negotiate: Box<sspi::Negotiate>, handle: <sspi::Negotiate as SspiImpl>::CredentialsHandle },
}

/// One handshake's client context.
pub(crate) struct SecContext {
    mech: Mech,
    /// `HTTP/host`, the service principal name.
    target: String,
    /// `SEC_CHANNEL_BINDINGS` bytes with the application data `tls-server-end-point:<hash>`.
    bindings: Option<Vec<u8>>,
    started: bool,
    complete: bool,
}

impl std::fmt::Debug for SecContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecContext")
            .field("target", &self.target)
            .field("bindings", &self.bindings.is_some())
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

/// The `sspi` user name for `user`, `DOMAIN\user` or `user@domain`.
pub(crate) fn username(user: &str) -> Result<Username, StepError> {
    Username::parse(user).map_err(|e| StepError::Credentials(format!("invalid user name: {e}")))
}

fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, sspi::Error>) -> Result<T, StepError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StepError::from_sspi(&e)),
        Err(_) => Err(StepError::Protocol(format!("{what}: the message could not be processed (sspi panicked)"))),
    }
}

/// The `SEC_CHANNEL_BINDINGS` structure (32-byte header, then the application data) that
/// `sspi` reads from a `ChannelBindings` buffer.
pub(crate) fn channel_bindings_struct(application_data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + application_data.len());
    for v in [0u32, 0, 0, 0, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(application_data.len() as u32).to_le_bytes());
    out.extend_from_slice(&32u32.to_le_bytes());
    out.extend_from_slice(application_data);
    out
}

const FLAGS: ClientRequestFlags = ClientRequestFlags::MUTUAL_AUTH
    .union(ClientRequestFlags::INTEGRITY)
    .union(ClientRequestFlags::CONFIDENTIALITY)
    .union(ClientRequestFlags::ALLOCATE_MEMORY);

impl SecContext {
    /// A client context for `creds` towards `host` (`HTTP/host`), with the channel binding
    /// application data (`tls-server-end-point:` and the certificate hash) over TLS.
    pub(crate) fn new(
        mechanism: Mechanism,
        creds: &Credentials,
        host: &str,
        binding: Option<&[u8]>,
    ) -> Result<Self, StepError> {
        let identity =
            AuthIdentity { username: username(creds.user())?, password: creds.password().expose().to_owned().into() };
        let computer = "WORKSTATION".to_owned();
        let mech = match mechanism {
            Mechanism::Ntlm => {
                let mut ntlm = Box::new(sspi::Ntlm::new());
                let handle = guard("credentials", || {
                    Ok(ntlm
                        .acquire_credentials_handle()
                        .with_credential_use(CredentialUse::Outbound)
                        .with_auth_data(&identity)
                        .execute(&mut *ntlm)?
                        .credentials_handle)
                })?;
                Mech::Ntlm { ntlm, handle }
            }
            Mechanism::Negotiate => {
                let config = sspi::NegotiateConfig::new(
                    Box::new(sspi::ntlm::NtlmConfig::default()),
                    Some("!kerberos,ntlm".to_owned()),
                    computer,
                );
                let mut negotiate = Box::new(guard("negotiate", || sspi::Negotiate::new_client(config))?);
                let creds = sspi::Credentials::AuthIdentity(identity);
                let handle = guard("credentials", || {
                    Ok(negotiate
                        .acquire_credentials_handle()
                        .with_credential_use(CredentialUse::Outbound)
                        .with_auth_data(&creds)
                        .execute(&mut *negotiate)?
                        .credentials_handle)
                })?;
                Mech::Negotiate { negotiate, handle }
            }
        };
        Ok(SecContext {
            mech,
            target: format!("HTTP/{host}"),
            bindings: binding.map(channel_bindings_struct),
            started: false,
            complete: false,
        })
    }

    /// Whether the context is established (the last token was produced or verified).
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }

    /// The next token: the first one without input, then one per peer token.
    pub(crate) fn step(&mut self, input: Option<&[u8]>) -> Result<Step, StepError> {
        if self.started && input.is_none() {
            return Err(StepError::Protocol("the peer sent no token to continue the handshake".into()));
        }
        if self.complete {
            return Err(StepError::Protocol("a token after the handshake was complete".into()));
        }
        self.started = true;
        let mut inputs = Vec::new();
        if let Some(token) = input {
            inputs.push(SecurityBuffer::new(token.to_vec(), BufferType::Token));
            if let Some(b) = &self.bindings {
                inputs.push(SecurityBuffer::new(b.clone(), BufferType::ChannelBindings));
            }
        }
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let target = self.target.clone();
        let status = match &mut self.mech {
            Mech::Ntlm { ntlm, handle } => guard("NTLM", || {
                let mut builder = ntlm
                    .initialize_security_context()
                    .with_credentials_handle(handle)
                    .with_context_requirements(FLAGS)
                    .with_target_data_representation(DataRepresentation::Native)
                    .with_target_name(&target)
                    .with_output(&mut output);
                if input.is_some() {
                    builder = builder.with_input(&mut inputs);
                }
                let result = ntlm.initialize_security_context_impl(&mut builder)?.resolve_to_result()?;
                Ok(result.status)
            })?,
            Mech::Negotiate { negotiate, handle } => guard("Negotiate", || {
                let mut builder = negotiate
                    .initialize_security_context()
                    .with_credentials_handle(handle)
                    .with_context_requirements(FLAGS)
                    .with_target_data_representation(DataRepresentation::Native)
                    .with_target_name(&target)
                    .with_output(&mut output);
                if input.is_some() {
                    builder = builder.with_input(&mut inputs);
                }
                let result = negotiate.initialize_security_context_impl(&mut builder)?.resolve_to_result()?;
                Ok(result.status)
            })?,
        };
        let more = matches!(status, SecurityStatus::ContinueNeeded | SecurityStatus::CompleteAndContinue);
        if !more {
            self.complete = true;
        }
        let token = output.pop().map(|b| b.buffer).unwrap_or_default();
        Ok(Step { token, more })
    }
}
