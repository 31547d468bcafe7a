//! RFC 5929 `tls-server-end-point` channel binding: `tls-server-end-point:` followed by the hash
//! of the server's certificate, the hash being the one of the certificate's signature algorithm
//! (SHA-256 for MD5 and SHA-1, and for algorithms without a single hash such as Ed25519).
//!
//! Hand-written because the only piece needed from the certificate is its signature algorithm's
//! OID: a few lines of DER reading (tested below against certificates made with rcgen) instead
//! of an X.509 parser in the dependency tree.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// Reads one DER TLV at the start of `der`: (tag, content, rest).
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The DER content of the certificate's `signatureAlgorithm` OID.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = tlv(cert)? else { return None };
    let (0x30, _, rest) = tlv(cert)? else { return None }; // tbsCertificate
    let (0x30, alg, _) = tlv(rest)? else { return None }; // signatureAlgorithm
    let (0x06, oid, _) = tlv(alg)? else { return None };
    Some(oid)
}

/// `tls-server-end-point:` and the certificate's hash, or `None` for bytes that are not a
/// certificate.
pub(crate) fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    const SHA384_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    const SHA512_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    let oid = signature_oid(cert)?;
    let hash = match oid {
        SHA384_RSA | SHA384_ECDSA => Sha384::digest(cert).to_vec(),
        SHA512_RSA | SHA512_ECDSA => Sha512::digest(cert).to_vec(),
        _ => Sha256::digest(cert).to_vec(),
    };
    let mut out = b"tls-server-end-point:".to_vec();
    out.extend_from_slice(&hash);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_certificate() {
        assert!(tls_server_end_point(b"").is_none());
        assert!(tls_server_end_point(&[0x30, 0x82, 0xff]).is_none());
        assert!(tls_server_end_point(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_none());
        assert!(tls_server_end_point(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
    }

    #[test]
    fn sha256_for_an_sha256_certificate() {
        // SEQUENCE { SEQUENCE {} (tbs), SEQUENCE { OID 1.2.840.113549.1.1.11 }, BIT STRING }
        let cert = [
            0x30, 0x12, 0x30, 0x00, 0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x03,
            0x01, 0x00,
        ];
        let out = tls_server_end_point(&cert).unwrap();
        assert_eq!(&out[..21], b"tls-server-end-point:");
        assert_eq!(&out[21..], Sha256::digest(cert).as_slice());
    }

    #[test]
    fn sha384_for_an_ecdsa_sha384_certificate() {
        let cert = [
            0x30, 0x11, 0x30, 0x00, 0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03, 0x03, 0x01,
            0x00,
        ];
        let out = tls_server_end_point(&cert).unwrap();
        assert_eq!(&out[21..], Sha384::digest(cert).as_slice());
    }
}
