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
    /// Whether the peer can complete on this token, so the request's real body goes with it
    /// (NTLM's authenticate message, a Kerberos AP-REQ even when mutual authentication still
    /// expects the server's AP-REP).
    pub(crate) send_body: bool,
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

/// Where Negotiate finds the KDC, and whether it may fall back to NTLM.
#[derive(Debug, Clone, Default)]
pub(crate) struct KerberosOptions {
    /// `tcp://host:port` (or `udp://`, or `host:port`); `None`: `krb5.conf` (`KRB5_CONFIG`), or
    /// `SSPI_KDC_URL`.
    pub(crate) kdc: Option<String>,
    /// Kerberos only: no NTLM inside SPNEGO (a KDC error is then the request's error).
    pub(crate) no_ntlm: bool,
}

/// The KDC client `sspi` calls while it gets tickets: blocking sockets (the caller runs the step
/// on tokio's blocking pool), a timeout on every operation.
struct KdcClient;

const KDC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl sspi::network_client::NetworkClient for KdcClient {
    fn send(&self, request: &sspi::NetworkRequest) -> sspi::Result<Vec<u8>> {
        use std::io::{Read, Write};
        use std::net::ToSocketAddrs;
        let unreachable = |e: String| sspi::Error::new(sspi::ErrorKind::NoAuthenticatingAuthority, e);
        let host = request.url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let port = request.url.port().unwrap_or(88);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| unreachable(format!("KDC {host}:{port}: {e}")))?
            .next()
            .ok_or_else(|| unreachable(format!("KDC {host}:{port}: no address")))?;
        match request.protocol {
            sspi::NetworkProtocol::Tcp => {
                let mut stream = std::net::TcpStream::connect_timeout(&addr, KDC_TIMEOUT)
                    .map_err(|e| unreachable(format!("KDC {addr}: {e}")))?;
                let _ = stream.set_read_timeout(Some(KDC_TIMEOUT));
                let _ = stream.set_write_timeout(Some(KDC_TIMEOUT));
                stream.write_all(&request.data).map_err(|e| unreachable(format!("KDC {addr}: {e}")))?;
                let mut len = [0u8; 4];
                stream.read_exact(&mut len).map_err(|e| unreachable(format!("KDC {addr}: {e}")))?;
                let n = u32::from_be_bytes(len) as usize;
                if n > 1 << 20 {
                    return Err(unreachable(format!("KDC {addr}: a reply of {n} bytes")));
                }
                let mut out = vec![0u8; n + 4];
                out[..4].copy_from_slice(&len);
                stream.read_exact(&mut out[4..]).map_err(|e| unreachable(format!("KDC {addr}: {e}")))?;
                Ok(out)
            }
            sspi::NetworkProtocol::Udp => {
                let socket = std::net::UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
                    .map_err(|e| unreachable(format!("KDC {addr}: {e}")))?;
                let _ = socket.set_read_timeout(Some(KDC_TIMEOUT));
                socket.send_to(&request.data, addr).map_err(|e| unreachable(format!("KDC {addr}: {e}")))?;
                let mut buf = vec![0u8; 65536];
                let n = socket.recv(&mut buf).map_err(|e| unreachable(format!("KDC {addr}: {e}")))?;
                let mut out = (n as u32).to_be_bytes().to_vec();
                out.extend_from_slice(&buf[..n]);
                Ok(out)
            }
            _ => Err(unreachable("KDC proxies (http, https) are not supported".into())),
        }
    }
}

enum Mech {
    /// The system GSS-API with the credential cache's ticket (feature `gssapi`).
    #[cfg(feature = "gssapi")]
    Gss(super::gss::GssContext),
    Ntlm {
        ntlm: Box<sspi::Ntlm>,
        handle: <sspi::Ntlm as SspiImpl>::CredentialsHandle,
    },
    Negotiate {
        negotiate: Box<sspi::Negotiate>,
        handle: <sspi::Negotiate as SspiImpl>::CredentialsHandle,
    },
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

/// The user name as `sspi` should see it. For Negotiate, `user@REALM` becomes `REALM\user`:
/// `sspi` sends a user principal name as an enterprise name, which an MIT KDC does not know, while
/// `REALM\user` gives the principal `user@REALM` (Active Directory accepts both).
pub(crate) fn user_for(mechanism: Mechanism, user: &str) -> String {
    match (mechanism, user.contains('\\'), user.rsplit_once('@')) {
        (Mechanism::Negotiate, false, Some((name, realm))) if !name.is_empty() && !realm.is_empty() => {
            format!("{}\\{name}", realm.to_ascii_uppercase())
        }
        _ => user.to_owned(),
    }
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

/// The outbound credentials handle of `data`.
fn acquire<T: Sspi>(ctx: &mut T, data: &T::AuthenticationData) -> sspi::Result<T::CredentialsHandle> {
    Ok(ctx
        .acquire_credentials_handle()
        .with_credential_use(CredentialUse::Outbound)
        .with_auth_data(data)
        .execute(ctx)?
        .credentials_handle)
}

/// One `InitializeSecurityContext` call, the KDC reached through [`KdcClient`] when Kerberos
/// asks.
fn initialize<T: Sspi>(
    ctx: &mut T,
    handle: &mut T::CredentialsHandle,
    target: &str,
    inputs: &mut [SecurityBuffer],
    output: &mut [SecurityBuffer],
) -> sspi::Result<SecurityStatus> {
    let mut builder = ctx
        .initialize_security_context()
        .with_credentials_handle(handle)
        .with_context_requirements(FLAGS)
        .with_target_data_representation(DataRepresentation::Native)
        .with_target_name(target)
        .with_input(inputs)
        .with_output(output);
    Ok(ctx.initialize_security_context_impl(&mut builder)?.resolve_with_client(&KdcClient)?.status)
}

impl SecContext {
    /// A client context for `creds` towards `host` (`HTTP/host`), with the channel binding
    /// application data (`tls-server-end-point:` and the certificate hash) over TLS.
    pub(crate) fn new(
        mechanism: Mechanism,
        creds: &Credentials,
        host: &str,
        binding: Option<&[u8]>,
        kerberos: &KerberosOptions,
    ) -> Result<Self, StepError> {
        if creds.is_from_cache() {
            return Self::from_cache(mechanism, host, binding);
        }
        let identity = AuthIdentity {
            username: username(&user_for(mechanism, creds.user()))?,
            password: creds.password().expose().to_owned().into(),
        };
        let computer = "WORKSTATION".to_owned();
        let mech = match mechanism {
            Mechanism::Ntlm if creds.keytab().is_some() => {
                return Err(StepError::Credentials("a keytab holds Kerberos keys: use Negotiate".into()));
            }
            Mechanism::Ntlm => {
                let mut ntlm = Box::new(sspi::Ntlm::new());
                let handle = guard("credentials", || acquire(&mut *ntlm, &identity))?;
                Mech::Ntlm { ntlm, handle }
            }
            Mechanism::Negotiate => {
                let mut krb = sspi::KerberosConfig {
                    kdc_resolution: sspi::KdcResolution::KdcUrl(None),
                    client_computer_name: computer.clone(),
                };
                if let Some(kdc) = &kerberos.kdc {
                    krb = sspi::KerberosConfig::new_with_kdc_url(kdc, computer.clone());
                }
                let packages = kerberos.no_ntlm.then(|| "kerberos,!ntlm,!pku2u".to_owned());
                let packages = packages.or_else(|| Some("kerberos,ntlm,!pku2u".to_owned()));
                let config = sspi::NegotiateConfig::new(Box::new(krb), packages, computer);
                let mut negotiate = Box::new(guard("negotiate", || sspi::Negotiate::new_client(config))?);
                let creds = match creds.keytab() {
                    None => sspi::Credentials::AuthIdentity(identity),
                    Some(key) => {
                        let key_enctype =
                            picky_krb::crypto::CipherSuite::try_from(usize::from(key.enctype)).map_err(|_| {
                                StepError::Credentials(format!("keytab: unsupported key type {}", key.enctype))
                            })?;
                        sspi::Credentials::Keytab(sspi::KeytabIdentity {
                            principal: identity.username.clone(),
                            key: key.key.clone().into(),
                            key_enctype,
                        })
                    }
                };
                let handle = guard("credentials", || acquire(&mut *negotiate, &creds))?;
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

    /// The credential cache's ticket through the system GSS-API.
    #[cfg(feature = "gssapi")]
    fn from_cache(mechanism: Mechanism, host: &str, binding: Option<&[u8]>) -> Result<Self, StepError> {
        if mechanism == Mechanism::Ntlm {
            return Err(StepError::Credentials("a credential cache holds Kerberos tickets: use Negotiate".into()));
        }
        Ok(SecContext {
            mech: Mech::Gss(super::gss::GssContext::new(host, binding)),
            target: format!("HTTP@{host}"),
            bindings: None,
            started: false,
            complete: false,
        })
    }

    #[cfg(not(feature = "gssapi"))]
    fn from_cache(_: Mechanism, _: &str, _: Option<&[u8]>) -> Result<Self, StepError> {
        Err(StepError::Credentials(
            "a ticket from the credential cache needs the `gssapi` feature (the system's Kerberos library)".into(),
        ))
    }

    /// Whether Negotiate chose Kerberos (else NTLM inside SPNEGO, or plain NTLM).
    pub(crate) fn is_kerberos(&self) -> bool {
        #[cfg(feature = "gssapi")]
        if let Mech::Gss(_) = &self.mech {
            return true;
        }
        matches!(&self.mech, Mech::Negotiate { negotiate, .. } if negotiate.negotiated_protocol().is_kerberos())
    }

    /// Whether this is `sspi`'s Kerberos with channel bindings: its AP-REQ carries the MS-KILE
    /// `KERB_AP_OPTIONS_CBT` element in 2 bytes, which MIT acceptors (krb5 >= 1.19) refuse.
    pub(crate) fn sspi_kerberos_with_bindings(&self) -> bool {
        self.bindings.is_some()
            && matches!(&self.mech, Mech::Negotiate { negotiate, .. } if negotiate.negotiated_protocol().is_kerberos())
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
        #[cfg(feature = "gssapi")]
        if let Mech::Gss(gss) = &mut self.mech {
            let (token, more) = gss.step(input)?;
            self.complete = !more;
            // SPNEGO's first token carries the AP-REQ: the body goes with it.
            return Ok(Step { token, more, send_body: true });
        }
        let mut inputs = vec![SecurityBuffer::new(input.unwrap_or_default().to_vec(), BufferType::Token)];
        if let Some(b) = &self.bindings {
            inputs.push(SecurityBuffer::new(b.clone(), BufferType::ChannelBindings));
        }
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let target = self.target.clone();
        // Inputs from the first step on: NTLM ignores them until the challenge (then reads the
        // bindings there), Negotiate's Kerberos reads the bindings at once.
        let status = match &mut self.mech {
            #[cfg(feature = "gssapi")]
            Mech::Gss(_) => return Err(StepError::Protocol("unreachable".into())),
            Mech::Ntlm { ntlm, handle } => {
                guard("NTLM", || initialize(&mut **ntlm, handle, &target, &mut inputs, &mut output))?
            }
            Mech::Negotiate { negotiate, handle } => {
                guard("Negotiate", || initialize(&mut **negotiate, handle, &target, &mut inputs, &mut output))?
            }
        };
        let kerberos =
            matches!(&self.mech, Mech::Negotiate { negotiate, .. } if negotiate.negotiated_protocol().is_kerberos());
        let more = matches!(status, SecurityStatus::ContinueNeeded | SecurityStatus::CompleteAndContinue);
        if !more {
            self.complete = true;
        }
        let token = output.pop().map(|b| b.buffer).unwrap_or_default();
        // The body goes with NTLM's authenticate message (inside SPNEGO too: the token answering
        // the challenge) and with Kerberos' AP-REQ.
        let negotiate = matches!(self.mech, Mech::Negotiate { .. });
        let send_body = !more || kerberos || (negotiate && input.is_some());
        Ok(Step { token, more, send_body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_users_in_realm_form() {
        assert_eq!(user_for(Mechanism::Negotiate, "alice@towerauth.test"), r"TOWERAUTH.TEST\alice");
        assert_eq!(user_for(Mechanism::Negotiate, r"CORP\alice"), r"CORP\alice");
        assert_eq!(user_for(Mechanism::Negotiate, "alice"), "alice");
        assert_eq!(user_for(Mechanism::Ntlm, "alice@corp.example"), "alice@corp.example");
    }

    #[test]
    fn channel_bindings_structure() {
        let b = channel_bindings_struct(b"tls-server-end-point:xy");
        assert_eq!(b.len(), 32 + 23);
        assert_eq!(&b[24..28], &23u32.to_le_bytes());
        assert_eq!(&b[28..32], &32u32.to_le_bytes());
        assert_eq!(
            sspi::channel_bindings::ChannelBindings::from_bytes(&b).unwrap().application_data,
            b"tls-server-end-point:xy"
        );
    }
}
