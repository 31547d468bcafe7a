//! `sspi`'s NTLM acceptor (server side), one per connection: the in-process NTLM server of
//! `tests/ntlm.rs` and `benches/ntlm.rs` (included there with `#[path]`).
#![allow(dead_code, unreachable_pub)]

use sspi::{
    AuthIdentity, BufferType, CredentialUse, DataRepresentation, SecurityBuffer, SecurityStatus, ServerRequestFlags,
    Sspi, SspiImpl, Username,
};

/// The acceptor of one connection's handshake, for one user.
pub struct Acceptor {
    user: String,
    password: String,
    ntlm: Option<(sspi::Ntlm, <sspi::Ntlm as SspiImpl>::CredentialsHandle)>,
}

impl Acceptor {
    /// An acceptor that knows `user` (`DOMAIN\user`) with `password`.
    pub fn new(user: &str, password: &str) -> Self {
        Acceptor { user: user.to_owned(), password: password.to_owned(), ntlm: None }
    }

    /// Runs the acceptor on one client token (a type 1 message starts a new handshake): the
    /// status and the token to send back.
    pub fn accept(&mut self, token: &[u8]) -> Result<(SecurityStatus, Vec<u8>), sspi::Error> {
        if token.get(8) == Some(&1) || self.ntlm.is_none() {
            let identity = AuthIdentity {
                username: Username::parse(&self.user).expect("user name"),
                password: self.password.clone().into(),
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
        let Some((ntlm, handle)) = self.ntlm.as_mut() else { unreachable!() };
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
        Ok((result.status, output.pop().map(|b| b.buffer).unwrap_or_default()))
    }
}
