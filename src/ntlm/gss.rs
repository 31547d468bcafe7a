//! Negotiate through the system's GSS-API (MIT Kerberos or Heimdal, through the `libgssapi`
//! crate; feature `gssapi`): the ticket comes from the credential cache `kinit` filled
//! (`KRB5CCNAME`, any cache type the library knows: `FILE:`, `DIR:`, `KEYRING:`, `KCM:`), as with
//! `curl --negotiate -u :`. The library reads `krb5.conf` (`KRB5_CONFIG`) for the realm's KDC,
//! asks it for the `HTTP@host` service ticket, and checks the server's final token (mutual
//! authentication). Nothing here is hand-written protocol: the SPNEGO and Kerberos messages are
//! the system library's.

use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::error::{Error as GssError, MajorFlags};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE, OidSet};

use super::context::StepError;

/// The client side of one SPNEGO handshake over the system GSS-API, with the default
/// credentials (the credential cache).
pub(crate) struct GssContext {
    ctx: Option<ClientCtx>,
    /// `HTTP@host`, the host-based service name.
    target: String,
    /// The channel bindings' application data (`tls-server-end-point:` and the hash).
    bindings: Option<Vec<u8>>,
}

impl std::fmt::Debug for GssContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GssContext").field("target", &self.target).field("bindings", &self.bindings.is_some()).finish()
    }
}

/// The error's text: the major and the mechanism's (minor) message, read on the thread that
/// made the call (MIT keeps the detailed minor message per thread).
fn describe(err: &GssError) -> String {
    err.to_string().replace(" (Success)", "").trim().to_owned()
}

fn credentials_error(err: &GssError) -> bool {
    err.major.intersects(MajorFlags::GSS_S_NO_CRED | MajorFlags::GSS_S_CREDENTIALS_EXPIRED | MajorFlags::GSS_S_BAD_NAME)
}

/// Why the default Kerberos initiator credentials cannot be had, if they cannot.
fn kerberos_credentials_problem() -> Option<String> {
    let mut mechs = OidSet::new();
    mechs.add(GSS_MECH_KRB5).ok()?;
    let cred = match Cred::acquire(None, None, CredUsage::Initiate, Some(&mechs)) {
        Ok(cred) => cred,
        Err(e) => return Some(describe(&e)),
    };
    match cred.lifetime() {
        Ok(left) if left.is_zero() => Some("the ticket in the credential cache has expired".into()),
        Err(e) => Some(describe(&e)),
        Ok(_) => None,
    }
}

impl GssContext {
    pub(crate) fn new(host: &str, bindings: Option<&[u8]>) -> Self {
        GssContext { ctx: None, target: format!("HTTP@{host}"), bindings: bindings.map(<[u8]>::to_vec) }
    }

    /// The next token (empty when the context completed without one) and whether the context
    /// expects another token from the server.
    pub(crate) fn step(&mut self, input: Option<&[u8]>) -> Result<(Vec<u8>, bool), StepError> {
        if self.ctx.is_none() {
            let name = Name::new(self.target.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE)).map_err(|e| {
                StepError::Credentials(format!("invalid service name {}: {}", self.target, describe(&e)))
            })?;
            let flags = CtxFlags::GSS_C_MUTUAL_FLAG | CtxFlags::GSS_C_INTEG_FLAG | CtxFlags::GSS_C_CONF_FLAG;
            // No credential handle: the library takes the default one, the credential cache's
            // principal, as curl does.
            self.ctx = Some(ClientCtx::new(None, name, flags, Some(GSS_MECH_SPNEGO)));
        }
        let first = input.is_none();
        let ctx = self.ctx.as_mut().ok_or_else(|| StepError::Protocol("no context".into()))?;
        match ctx.step(input, self.bindings.as_deref()) {
            Ok(token) => {
                let token = token.map(|b| b.to_vec()).unwrap_or_default();
                Ok((token, !ctx.is_complete()))
            }
            Err(e) if first || credentials_error(&e) => {
                // SPNEGO says only that it has no mechanism; Kerberos' own credentials say why
                // (no cache, an expired ticket).
                let why = kerberos_credentials_problem().unwrap_or_else(|| describe(&e));
                Err(StepError::Credentials(format!(
                    "Kerberos from the credential cache (system GSS-API) could not start for {}: {why} \
                     (is there a valid ticket? run kinit, or set KRB5CCNAME)",
                    self.target,
                )))
            }
            Err(e) => Err(StepError::Protocol(describe(&e))),
        }
    }
}
