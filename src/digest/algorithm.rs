//! Digest hash algorithms (RFC 7616 §3.3, §6.1) and the response computation (§3.4.1).

use md5::Md5;
use sha1::Sha1;
use sha2::{Sha256, Sha512, Sha512_256};

/// A Digest hash algorithm, as named in the `algorithm` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// `MD5` (the default when a challenge names none).
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256` (RFC 7616).
    Sha256,
    /// `SHA-256-sess` (RFC 7616).
    Sha256Sess,
    /// `SHA-512-256` (RFC 7616).
    Sha512_256,
    /// `SHA-512-256-sess` (RFC 7616).
    Sha512_256Sess,
    /// `SHA` (SHA-1; not standard, sent by some servers, accepted by requests and httpx).
    Sha1,
    /// `SHA-sess` (not standard).
    Sha1Sess,
    /// `SHA-512` (not standard, accepted by requests and httpx).
    Sha512,
    /// `SHA-512-sess` (not standard).
    Sha512Sess,
}

impl Algorithm {
    /// Every algorithm, strongest first.
    pub const ALL: [Algorithm; 10] = [
        Algorithm::Sha512_256,
        Algorithm::Sha512_256Sess,
        Algorithm::Sha512,
        Algorithm::Sha512Sess,
        Algorithm::Sha256,
        Algorithm::Sha256Sess,
        Algorithm::Sha1,
        Algorithm::Sha1Sess,
        Algorithm::Md5,
        Algorithm::Md5Sess,
    ];

    /// The algorithm of an `algorithm` parameter (case-insensitive); `None` for one we do not
    /// know.
    pub fn from_param(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// The name as sent on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
            Algorithm::Sha512_256 => "SHA-512-256",
            Algorithm::Sha512_256Sess => "SHA-512-256-sess",
            Algorithm::Sha1 => "SHA",
            Algorithm::Sha1Sess => "SHA-sess",
            Algorithm::Sha512 => "SHA-512",
            Algorithm::Sha512Sess => "SHA-512-sess",
        }
    }

    /// Whether this is a `-sess` variant (H(A1) includes the nonce and cnonce).
    pub fn is_session(self) -> bool {
        matches!(
            self,
            Algorithm::Md5Sess
                | Algorithm::Sha256Sess
                | Algorithm::Sha512_256Sess
                | Algorithm::Sha1Sess
                | Algorithm::Sha512Sess
        )
    }

    /// Higher is stronger: SHA-512-256 > SHA-512 > SHA-256 > SHA-1 > MD5; a `-sess` variant
    /// ranks with its hash.
    pub fn strength(self) -> u8 {
        match self {
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => 5,
            Algorithm::Sha512 | Algorithm::Sha512Sess => 4,
            Algorithm::Sha256 | Algorithm::Sha256Sess => 3,
            Algorithm::Sha1 | Algorithm::Sha1Sess => 2,
            Algorithm::Md5 | Algorithm::Md5Sess => 1,
        }
    }

    /// The lower-case hex hash of `parts` joined by `:`.
    pub fn hash(self, parts: &[&[u8]]) -> String {
        self.hash_hex(parts).as_str().to_owned()
    }

    /// [`hash`](Self::hash) without a heap allocation, for the per-request path.
    pub(crate) fn hash_hex(self, parts: &[&[u8]]) -> Hex {
        fn run<D: sha2::Digest>(parts: &[&[u8]]) -> Hex {
            let mut d = D::new();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(part);
            }
            Hex::of(&d.finalize())
        }
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => run::<Md5>(parts),
            Algorithm::Sha256 | Algorithm::Sha256Sess => run::<Sha256>(parts),
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => run::<Sha512_256>(parts),
            Algorithm::Sha1 | Algorithm::Sha1Sess => run::<Sha1>(parts),
            Algorithm::Sha512 | Algorithm::Sha512Sess => run::<Sha512>(parts),
        }
    }
}

/// Lower-case hex of up to 64 bytes (the longest hash here), on the stack.
#[derive(Clone, Copy)]
pub(crate) struct Hex {
    buf: [u8; 128],
    len: usize,
}

impl Hex {
    pub(crate) fn of(bytes: &[u8]) -> Hex {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = Hex { buf: [0; 128], len: 0 };
        for (i, b) in bytes.iter().take(64).enumerate() {
            hex.buf[2 * i] = DIGITS[usize::from(b >> 4)];
            hex.buf[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        hex.len = bytes.len().min(64) * 2;
        hex
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Debug for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A nonce count as eight lower-case hex digits, without formatting machinery.
pub(crate) fn nc_hex(nc: u32) -> [u8; 8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; 8];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = DIGITS[((nc >> (28 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The quality of protection of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// No `qop` (RFC 2069 compatibility).
    None,
    /// `auth`.
    Auth,
    /// `auth-int`: the body is part of the hash.
    AuthInt,
}

impl Qop {
    /// The name as sent on the wire (empty for [`Qop::None`]).
    pub fn name(self) -> &'static str {
        match self {
            Qop::None => "",
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

/// The inputs of one Digest response (RFC 7616 §3.4.1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange<'a> {
    pub(crate) algorithm: Algorithm,
    /// H(A1) for non-session algorithms, or the session H(A1).
    pub(crate) ha1: &'a str,
    pub(crate) nonce: &'a str,
    pub(crate) nc: u32,
    pub(crate) cnonce: &'a str,
    pub(crate) qop: Qop,
    pub(crate) method: &'a str,
    pub(crate) uri: &'a str,
    /// H(entity-body), for auth-int.
    pub(crate) body_hash: Option<&'a str>,
}

/// H(user:realm:password).
pub(crate) fn ha1_base(algorithm: Algorithm, user: &str, realm: &str, password: &str) -> String {
    algorithm.hash(&[user.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The H(A1) to use for one nonce: the base for plain algorithms, H(base:nonce:cnonce) for
/// `-sess` ones.
pub(crate) fn session_ha1(algorithm: Algorithm, base: &str, nonce: &str, cnonce: &str) -> String {
    if algorithm.is_session() {
        algorithm.hash(&[base.as_bytes(), nonce.as_bytes(), cnonce.as_bytes()])
    } else {
        base.to_owned()
    }
}

impl Exchange<'_> {
    fn ha2(&self, method: &str) -> Hex {
        match (self.qop, self.body_hash) {
            (Qop::AuthInt, Some(body)) => {
                self.algorithm.hash_hex(&[method.as_bytes(), self.uri.as_bytes(), body.as_bytes()])
            }
            _ => self.algorithm.hash_hex(&[method.as_bytes(), self.uri.as_bytes()]),
        }
    }

    fn kd(&self, ha2: &Hex) -> Hex {
        let ha2 = ha2.as_str();
        let nc = nc_hex(self.nc);
        match self.qop {
            Qop::None => self.algorithm.hash_hex(&[self.ha1.as_bytes(), self.nonce.as_bytes(), ha2.as_bytes()]),
            qop => self.algorithm.hash_hex(&[
                self.ha1.as_bytes(),
                self.nonce.as_bytes(),
                &nc,
                self.cnonce.as_bytes(),
                qop.name().as_bytes(),
                ha2.as_bytes(),
            ]),
        }
    }

    /// The `response` parameter.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn response(&self) -> String {
        self.response_hex().as_str().to_owned()
    }

    /// The `response` parameter, on the stack.
    pub(crate) fn response_hex(&self) -> Hex {
        self.kd(&self.ha2(self.method))
    }

    /// The `rspauth` a server sends in Authentication-Info (RFC 7616 §3.5: A2 has an empty
    /// method).
    pub(crate) fn rspauth(&self) -> String {
        self.kd(&self.ha2("")).as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange<'a>(algorithm: Algorithm, ha1: &'a str, nonce: &'a str, cnonce: &'a str, uri: &'a str) -> Exchange<'a> {
        Exchange { algorithm, ha1, nonce, nc: 1, cnonce, qop: Qop::Auth, method: "GET", uri, body_hash: None }
    }

    #[test]
    fn rfc2617_section_3_5() {
        let ha1 = ha1_base(Algorithm::Md5, "Mufasa", "testrealm@host.com", "Circle Of Life");
        let ex = exchange(Algorithm::Md5, &ha1, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "0a4f113b", "/dir/index.html");
        assert_eq!(ex.response(), "6629fae49393a05397450978507c4ef1");
    }

    const NONCE_7616: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const CNONCE_7616: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    #[test]
    fn rfc7616_section_3_9_1_md5() {
        let ha1 = ha1_base(Algorithm::Md5, "Mufasa", "http-auth@example.org", "Circle of Life");
        let ex = exchange(Algorithm::Md5, &ha1, NONCE_7616, CNONCE_7616, "/dir/index.html");
        assert_eq!(ex.response(), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn rfc7616_section_3_9_1_sha256() {
        let ha1 = ha1_base(Algorithm::Sha256, "Mufasa", "http-auth@example.org", "Circle of Life");
        let ex = exchange(Algorithm::Sha256, &ha1, NONCE_7616, CNONCE_7616, "/dir/index.html");
        assert_eq!(ex.response(), "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
    }

    #[test]
    fn session_variants_fold_nonce_and_cnonce_into_ha1() {
        let base = ha1_base(Algorithm::Md5Sess, "u", "r", "p");
        let sess = session_ha1(Algorithm::Md5Sess, &base, "n", "c");
        assert_eq!(sess, Algorithm::Md5.hash(&[base.as_bytes(), b"n", b"c"]));
        assert_eq!(session_ha1(Algorithm::Md5, &base, "n", "c"), base);
    }

    #[test]
    fn auth_int_hashes_the_body_and_no_qop_is_rfc2069() {
        let ha1 = ha1_base(Algorithm::Sha256, "u", "r", "p");
        let body = Algorithm::Sha256.hash(&[b"payload"]);
        let mut ex = exchange(Algorithm::Sha256, &ha1, "n", "c", "/x");
        let plain = ex.response();
        ex.qop = Qop::AuthInt;
        ex.body_hash = Some(&body);
        let int = ex.response();
        assert_ne!(plain, int);
        let ha2 = Algorithm::Sha256.hash(&[b"GET", b"/x", body.as_bytes()]);
        assert_eq!(
            int,
            Algorithm::Sha256.hash(&[ha1.as_bytes(), b"n", b"00000001", b"c", b"auth-int", ha2.as_bytes()])
        );
        ex.qop = Qop::None;
        let ha2 = Algorithm::Sha256.hash(&[b"GET", b"/x"]);
        assert_eq!(ex.response(), Algorithm::Sha256.hash(&[ha1.as_bytes(), b"n", ha2.as_bytes()]));
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(Hex::of(&[0x00, 0x0f, 0xa5, 0xff]).as_str(), "000fa5ff");
        assert_eq!(Hex::of(&[0xab; 64]).as_str(), "ab".repeat(64));
        assert_eq!(&nc_hex(1), b"00000001");
        assert_eq!(&nc_hex(0xdeadbeef), b"deadbeef");
    }

    #[test]
    fn names_round_trip_case_insensitively() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_param(a.name()), Some(a));
            assert_eq!(Algorithm::from_param(&a.name().to_lowercase()), Some(a));
        }
        assert_eq!(Algorithm::from_param("SHA-3"), None);
        assert!(Algorithm::Sha512_256.strength() > Algorithm::Sha256.strength());
        assert!(Algorithm::Sha256.strength() > Algorithm::Md5.strength());
    }
}
