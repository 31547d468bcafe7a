//! Origins (scheme, host, port) for routing credentials by request URI.
//!
//! An [`Origin`] is the triple *scheme + host + port* of [RFC 6454]. Credentials
//! are configured per origin and must only ever be sent to that exact origin:
//! `https://api.example.com` is a different origin from `http://api.example.com`,
//! from `https://api.example.com:8443` and from `https://example.com`.
//!
//! Parsing normalises everything that does not change the meaning:
//!
//! * the scheme and host are compared case-insensitively (stored lower-case);
//! * the default port is filled in (`http`/`ws` 80, `https`/`wss` 443), so
//!   `https://a.example` equals `https://a.example:443`;
//! * internationalised host names are converted to their ASCII (punycode)
//!   form with [IDNA](https://www.unicode.org/reports/tr46/):
//!   `https://Bücher.example` is `https://xn--bcher-kva.example`;
//! * IPv4 and IPv6 literals are compared as addresses: `[::0001]` is `[::1]`.
//!
//! # Hot path: routing a request to its origin
//!
//! [`OriginMap`] looks up the value configured for the origin of an
//! [`http::Uri`] without allocating. Every `Origin` carries a precomputed
//! [`OriginKey`] (a 64-bit hash of its normalised scheme, host and port), and
//! [`key_of_uri`] computes the same key straight from the borrowed parts of a
//! URI, lower-casing the host on the fly. The map then confirms the hit with an
//! exact comparison ([`Origin::matches_uri`]), so a hash collision can never
//! route a request to the wrong origin.
//!
//! A URI never contains a non-ASCII host: [`http::Uri`] rejects one, so a
//! client must send the punycode form, which is what the configured `Origin`
//! holds.
//!
//! ```
//! use tower_auth::route::origin::{Origin, OriginMap};
//!
//! let mut tokens = OriginMap::new();
//! tokens.insert("https://api.example.com".parse::<Origin>()?, "token-a");
//! tokens.insert("https://Bücher.example:8443".parse::<Origin>()?, "token-b");
//!
//! let uri: http::Uri = "https://API.example.com:443/v1/users?page=2".parse()?;
//! assert_eq!(tokens.get_for_uri(&uri), Some(&"token-a"));
//!
//! let uri: http::Uri = "https://xn--bcher-kva.example:8443/".parse()?;
//! assert_eq!(tokens.get_for_uri(&uri), Some(&"token-b"));
//!
//! // Another scheme, port or host is another origin.
//! let uri: http::Uri = "http://api.example.com/".parse()?;
//! assert_eq!(tokens.get_for_uri(&uri), None);
//!
//! // User info in a URI is not part of the host.
//! let uri: http::Uri = "https://api.example.com:@evil.example/".parse()?;
//! assert_eq!(tokens.get_for_uri(&uri), None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [RFC 6454]: https://www.rfc-editor.org/rfc/rfc6454

use std::collections::HashMap;
use std::collections::hash_map;
use std::error::Error;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use http::Uri;

// ---------------------------------------------------------------------------
// Scheme
// ---------------------------------------------------------------------------

/// The schemes an origin may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Scheme {
    Http,
    Https,
    Ws,
    Wss,
}

impl Scheme {
    /// Case-insensitive match of a scheme name.
    fn from_name(name: &str) -> Option<Scheme> {
        // Fast path: `http::Uri` stores `http` and `https` lower-case.
        match name {
            "https" => return Some(Scheme::Https),
            "http" => return Some(Scheme::Http),
            _ => {}
        }
        [Scheme::Http, Scheme::Https, Scheme::Ws, Scheme::Wss]
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http | Scheme::Ws => 80,
            Scheme::Https | Scheme::Wss => 443,
        }
    }

    fn id(self) -> u8 {
        match self {
            Scheme::Http => 1,
            Scheme::Https => 2,
            Scheme::Ws => 3,
            Scheme::Wss => 4,
        }
    }
}

// ---------------------------------------------------------------------------
// The key: a fixed 64-bit hash of (scheme, host, port)
// ---------------------------------------------------------------------------

/// A precomputed 64-bit hash of an origin's normalised scheme, host and port.
///
/// Equal origins have equal keys; unequal origins almost always have unequal
/// keys, but not always: a key only narrows a lookup down, and the candidate
/// must then be confirmed with [`Origin::matches_uri`] (as [`OriginMap`]
/// does). Keys are stable for a given version of this crate but are not part
/// of its stable interface: do not persist them.
///
/// Use it in a `HashMap<OriginKey, V, OriginKeyBuildHasher>`, whose hasher
/// passes the precomputed key straight through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginKey(u64);

impl OriginKey {
    /// The hash value.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Multiplier of `FxHash` (rustc's hasher).
const FX_K: u64 = 0x517c_c1b7_2722_0a95;
/// Arbitrary fixed seed (digits of pi).
const SEED: u64 = 0x243f_6a88_85a3_08d3;
const TAG_NAME: u64 = 0x4e;
const TAG_IPV6: u64 = 0x36;

#[inline]
fn fx_word(h: u64, w: u64) -> u64 {
    (h.rotate_left(5) ^ w).wrapping_mul(FX_K)
}

/// The 64-bit finaliser of `MurmurHash3`: every input bit affects every output bit,
/// so both the low bits (bucket index) and the high bits (control byte) that
/// `HashMap` uses are well mixed.
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// ASCII-lower-cases eight bytes at once (bytes >= 0x80 are left alone).
#[inline]
fn lower8(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let heptets = x & LOW7;
    // High bit of each byte set iff the byte (low 7 bits) is >= b'A' ...
    let ge_a = heptets.wrapping_add((0x80 - u64::from(b'A')) * ONES);
    // ... and iff it is > b'Z'.
    let gt_z = heptets.wrapping_add((0x80 - u64::from(b'Z') - 1) * ONES);
    let upper = ge_a & !gt_z & !x & HIGH;
    x | (upper >> 2)
}

/// Hashes a host name (or IPv4 literal) lower-cased, without allocating.
#[inline]
fn key_for_name(scheme: Scheme, host: &str, port: u16) -> OriginKey {
    let bytes = host.as_bytes();
    let head = u64::from(scheme.id()) | (TAG_NAME << 8) | (u64::from(port) << 16) | ((bytes.len() as u64) << 32);
    let mut h = fx_word(SEED, head);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        h = fx_word(h, lower8(u64::from_le_bytes(w)));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = fx_word(h, lower8(u64::from_le_bytes(w)));
    }
    OriginKey(fmix64(h))
}

/// Hashes an IPv6 address by its 16 octets, so every textual form of the
/// same address has the same key.
#[inline]
fn key_for_ipv6(scheme: Scheme, addr: &Ipv6Addr, port: u16) -> OriginKey {
    let head = u64::from(scheme.id()) | (TAG_IPV6 << 8) | (u64::from(port) << 16);
    let bits = addr.to_bits();
    let mut h = fx_word(SEED, head);
    h = fx_word(h, (bits >> 64) as u64);
    h = fx_word(h, bits as u64);
    OriginKey(fmix64(h))
}

/// A [`Hasher`] that passes an [`OriginKey`] through unchanged.
///
/// The key is already a well-mixed 64-bit hash, so hashing it again would only
/// cost time. Other input (which an `OriginKey` never produces) is folded in
/// FxHash-style, so the hasher still works if misused.
#[derive(Clone, Copy, Debug, Default)]
pub struct OriginKeyHasher(u64);

impl Hasher for OriginKeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = if self.0 == 0 { n } else { fx_word(self.0, n) };
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = fx_word(self.0, u64::from(b));
        }
    }
}

/// [`BuildHasher`] for maps keyed by [`OriginKey`]: see [`OriginKeyHasher`].
///
/// ```
/// use std::collections::HashMap;
/// use tower_auth::route::origin::{key_of_uri, Origin, OriginKey, OriginKeyBuildHasher};
///
/// let origin: Origin = "https://example.com".parse()?;
/// let mut map: HashMap<OriginKey, (Origin, u32), OriginKeyBuildHasher> = HashMap::default();
/// map.insert(origin.key(), (origin, 7));
///
/// let uri: http::Uri = "https://EXAMPLE.com/x".parse()?;
/// let hit = key_of_uri(&uri)
///     .and_then(|key| map.get(&key))
///     .filter(|(origin, _)| origin.matches_uri(&uri)); // always confirm!
/// assert_eq!(hit.map(|(_, v)| *v), Some(7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct OriginKeyBuildHasher;

impl BuildHasher for OriginKeyBuildHasher {
    type Hasher = OriginKeyHasher;

    #[inline]
    fn build_hasher(&self) -> OriginKeyHasher {
        OriginKeyHasher(0)
    }
}

// ---------------------------------------------------------------------------
// Borrowed view of a URI's origin
// ---------------------------------------------------------------------------

/// The origin parts of a URI, borrowed. Built once per lookup.
#[derive(Clone, Copy, Debug)]
struct UriOrigin<'a> {
    scheme: Scheme,
    /// The host as in the URI (IPv6 with brackets), not lower-cased.
    host: &'a str,
    /// Set when `host` is a bracketed IPv6 literal.
    ipv6: Option<Ipv6Addr>,
    port: u16,
}

impl<'a> UriOrigin<'a> {
    /// Extracts the origin parts of `uri` without allocating.
    ///
    /// Returns `None` for a relative URI, an unknown scheme, an empty host,
    /// an unparsable IPv6 literal (including ones with a zone id) and a port
    /// that is not a decimal number from 1 to 65535. A port that is present
    /// but empty (`http://a:/`) means the default port, as in URLs.
    #[inline]
    fn of(uri: &'a Uri) -> Option<Self> {
        let scheme = Scheme::from_name(uri.scheme_str()?)?;
        let authority = uri.authority()?.as_str();
        // User info ends at the last '@' (as `http::Uri::host` has it).
        let host_port = match authority.rfind('@') {
            Some(i) => &authority[i + 1..],
            None => authority,
        };
        let (host, rest, ipv6) = if host_port.starts_with('[') {
            let end = host_port.find(']')?;
            let addr = parse_ipv6(&host_port[1..end])?;
            (&host_port[..=end], &host_port[end + 1..], Some(addr))
        } else {
            match host_port.find(':') {
                Some(i) => (&host_port[..i], &host_port[i..], None),
                None => (host_port, "", None),
            }
        };
        if host.is_empty() {
            return None;
        }
        let port = match rest.strip_prefix(':') {
            None if rest.is_empty() => scheme.default_port(),
            None => return None,
            Some("") => scheme.default_port(),
            Some(digits) => parse_port(digits)?,
        };
        Some(UriOrigin { scheme, host, ipv6, port })
    }

    #[inline]
    fn key(&self) -> OriginKey {
        match &self.ipv6 {
            Some(addr) => key_for_ipv6(self.scheme, addr, self.port),
            None => key_for_name(self.scheme, self.host, self.port),
        }
    }

    #[inline]
    fn matches(&self, origin: &Origin) -> bool {
        self.scheme == origin.scheme
            && self.port == origin.port
            && match (&self.ipv6, &origin.ipv6) {
                (Some(a), Some(b)) => a == b,
                (None, None) => self.host.eq_ignore_ascii_case(&origin.host),
                _ => false,
            }
    }
}

/// Parses the text of an IPv6 literal (without brackets) without allocating.
///
/// The common forms (hexadecimal groups with at most one `::`) take a fast
/// path; anything else (an embedded IPv4 address, or text the fast path
/// does not accept) is left to `Ipv6Addr`'s parser, which also does not
/// allocate but is several times slower. Zone ids (`%25eth0`) are rejected.
#[inline]
fn parse_ipv6(text: &str) -> Option<Ipv6Addr> {
    parse_ipv6_fast(text.as_bytes()).or_else(|| text.parse().ok())
}

/// The fast path of [`parse_ipv6`]: only hexadecimal groups of 1 to 4 digits
/// separated by `:`, with at most one `::`. `None` means "not handled here",
/// not necessarily "invalid". Everything it accepts, `Ipv6Addr::from_str`
/// accepts with the same result (see the `ipv6_fast_path_agrees_with_std`
/// test).
#[inline]
fn parse_ipv6_fast(s: &[u8]) -> Option<Ipv6Addr> {
    let mut groups = [0u16; 8];
    let mut count = 0usize; // groups written
    let mut gap: Option<usize> = None; // index where `::` stands
    let mut i = 0usize;
    if s.starts_with(b"::") {
        gap = Some(0);
        i = 2;
        if i == s.len() {
            return Some(Ipv6Addr::UNSPECIFIED);
        }
    } else if s.first() == Some(&b':') {
        return None;
    }
    loop {
        // One group of 1 to 4 hex digits.
        let start = i;
        let mut value: u16 = 0;
        while i < s.len() && i - start < 4 {
            let digit = match s[i] {
                b @ b'0'..=b'9' => b - b'0',
                b @ b'a'..=b'f' => b - b'a' + 10,
                b @ b'A'..=b'F' => b - b'A' + 10,
                _ => break,
            };
            value = (value << 4) | u16::from(digit);
            i += 1;
        }
        if i == start || count == 8 {
            return None;
        }
        groups[count] = value;
        count += 1;
        if i == s.len() {
            break;
        }
        if s[i] != b':' {
            return None; // '.', '%', a fifth digit, ...: not ours.
        }
        i += 1;
        if i < s.len() && s[i] == b':' {
            if gap.is_some() {
                return None;
            }
            gap = Some(count);
            i += 1;
            if i == s.len() {
                break;
            }
        } else if i == s.len() {
            return None; // A single trailing ':'.
        }
    }
    match gap {
        None if count == 8 => {}
        Some(at) if count < 8 => {
            let tail = count - at;
            groups.copy_within(at..count, 8 - tail);
            groups[at..8 - tail].fill(0);
        }
        _ => return None,
    }
    Some(Ipv6Addr::from(groups))
}

/// Parses a decimal port: ASCII digits only (no sign), 1 to 65535.
#[inline]
fn parse_port(digits: &str) -> Option<u16> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match digits.parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(port) => Some(port),
    }
}

/// The [`OriginKey`] of a URI's origin, computed without allocating.
///
/// Equals [`Origin::key`] of the configured origin whenever
/// [`Origin::matches_uri`] is true. Returns `None` when the URI has no origin
/// an [`Origin`] could equal: a relative URI, a scheme other than http, https,
/// ws and wss, an empty host, a malformed IPv6 literal or port.
///
/// ```
/// use tower_auth::route::origin::{key_of_uri, Origin};
///
/// let origin: Origin = "http://[::1]:8080".parse()?;
/// let uri: http::Uri = "http://[0:0::0001]:8080/path".parse()?;
/// assert_eq!(key_of_uri(&uri), Some(origin.key()));
/// assert_eq!(key_of_uri(&"/relative".parse()?), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[inline]
pub fn key_of_uri(uri: &Uri) -> Option<OriginKey> {
    UriOrigin::of(uri).map(|o| o.key())
}

// ---------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------

/// A web origin: scheme, host and (effective) port. See the [module
/// docs](self).
///
/// Two origins are equal when their normalised scheme, host and port are
/// equal. `Display` gives the canonical form `scheme://host[:port]`, with the
/// port left out when it is the scheme's default; parsing it again gives an
/// equal origin.
#[derive(Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: Scheme,
    /// Lower-case ASCII; an IPv6 literal is in canonical form with brackets.
    host: Box<str>,
    ipv6: Option<Ipv6Addr>,
    port: u16,
    key: OriginKey,
}

impl Origin {
    /// Parses an origin such as `https://example.com`, `http://[::1]:8080` or
    /// `https://Bücher.example`.
    ///
    /// Accepted: the schemes `http`, `https`, `ws` and `wss` (any case),
    /// a host name (converted to lower-case punycode), an IPv4 literal, an
    /// IPv6 literal in brackets, an optional port (`:` alone means the default
    /// port), and an optional trailing `/`.
    ///
    /// Rejected: a missing or other scheme, user info (`user:pass@`), an empty
    /// or invalid host (including IPv6 zone ids and a name whose last label is
    /// numeric but is not a valid IPv4 address), a port that is not 1 to
    /// 65535, a path other than `/`, a query and a fragment.
    ///
    /// # Errors
    ///
    /// An [`OriginError`] naming the problem; its message echoes the input,
    /// except for any user info.
    pub fn parse(s: &str) -> Result<Origin, OriginError> {
        let (scheme, host, port) = split_origin(s).map_err(|kind| OriginError::new(kind, s))?;
        Origin::from_parts(scheme, host, port).map_err(|kind| OriginError::new(kind, s))
    }

    /// The origin of an absolute URI, or `None` for a relative URI, a scheme
    /// other than http, https, ws and wss, or a host or port that
    /// [`Origin::parse`] would reject.
    ///
    /// The host comes from [`Uri::host`] only: user info is never mistaken for
    /// it, so `http://example.com:@evil.com/` has the origin `http://evil.com`.
    pub fn from_uri(uri: &Uri) -> Option<Origin> {
        let parts = UriOrigin::of(uri)?;
        Origin::from_parts(parts.scheme, parts.host, parts.port).ok()
    }

    fn from_parts(scheme: Scheme, host: &str, port: u16) -> Result<Origin, OriginErrorKind> {
        let (host, ipv6) = normalize_host(host)?;
        let key = match &ipv6 {
            Some(addr) => key_for_ipv6(scheme, addr, port),
            None => key_for_name(scheme, &host, port),
        };
        Ok(Origin { scheme, host, ipv6, port, key })
    }

    /// The scheme, lower-case: `"http"`, `"https"`, `"ws"` or `"wss"`.
    pub fn scheme(&self) -> &str {
        self.scheme.as_str()
    }

    /// The host: lower-case ASCII (punycode for internationalised names),
    /// an IPv4 address, or an IPv6 address in canonical form with brackets
    /// (`[::1]`), as [`Uri::host`] has it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The effective port: the explicit one, else the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the port is the scheme's default port.
    pub fn is_default_port(&self) -> bool {
        self.port == self.scheme.default_port()
    }

    /// The precomputed hash key; equals [`key_of_uri`] of every matching URI.
    pub fn key(&self) -> OriginKey {
        self.key
    }

    /// Whether `uri` is an absolute URI of exactly this origin. Never
    /// allocates.
    ///
    /// ```
    /// use tower_auth::route::origin::Origin;
    ///
    /// let origin: Origin = "https://example.com".parse()?;
    /// assert!(origin.matches_uri(&"https://Example.COM:443/a?b".parse()?));
    /// assert!(!origin.matches_uri(&"https://example.com:8443/".parse()?));
    /// assert!(!origin.matches_uri(&"https://example.com.evil.net/".parse()?));
    /// assert!(!origin.matches_uri(&"/relative".parse()?));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn matches_uri(&self, uri: &Uri) -> bool {
        UriOrigin::of(uri).is_some_and(|parts| parts.matches(self))
    }
}

impl Hash for Origin {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.key.0);
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if !self.is_default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin(\"{self}\")")
    }
}

impl FromStr for Origin {
    type Err = OriginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Origin::parse(s)
    }
}

impl TryFrom<&str> for Origin {
    type Error = OriginError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Origin::parse(s)
    }
}

// ---------------------------------------------------------------------------
// Parsing helpers
// ---------------------------------------------------------------------------

/// Splits `scheme://host[:port][/]` into its parts (host not yet normalised).
fn split_origin(s: &str) -> Result<(Scheme, &str, u16), OriginErrorKind> {
    let (scheme_name, rest) = s.split_once("://").ok_or(OriginErrorKind::MissingScheme)?;
    if scheme_name.is_empty() {
        return Err(OriginErrorKind::MissingScheme);
    }
    let scheme = Scheme::from_name(scheme_name).ok_or(OriginErrorKind::UnknownScheme)?;

    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(OriginErrorKind::UserInfo);
    }
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, tail) = tail.split_at(path_end);
    if !(path.is_empty() || path == "/") {
        return Err(OriginErrorKind::Path);
    }
    if tail.starts_with('?') {
        return Err(OriginErrorKind::Query);
    }
    if tail.starts_with('#') {
        return Err(OriginErrorKind::Fragment);
    }

    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(OriginErrorKind::InvalidHost)?;
        (&authority[..=end], &authority[end + 1..])
    } else {
        match authority.find(':') {
            Some(i) => authority.split_at(i),
            None => (authority, ""),
        }
    };
    if host.is_empty() {
        return Err(OriginErrorKind::EmptyHost);
    }
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => scheme.default_port(),
        None => return Err(OriginErrorKind::InvalidHost),
        Some("") => scheme.default_port(),
        Some(digits) => parse_port(digits).ok_or(OriginErrorKind::BadPort)?,
    };
    Ok((scheme, host, port))
}

/// Normalises a host: IPv6 literal to canonical form, IPv4 literal checked,
/// a name through IDNA to lower-case ASCII and checked.
fn normalize_host(host: &str) -> Result<(Box<str>, Option<Ipv6Addr>), OriginErrorKind> {
    if host.is_empty() {
        return Err(OriginErrorKind::EmptyHost);
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(OriginErrorKind::InvalidHost)?;
        let addr: Ipv6Addr = inner.parse().map_err(|_| OriginErrorKind::InvalidHost)?;
        return Ok((format!("[{addr}]").into_boxed_str(), Some(addr)));
    }
    let ascii = idna::domain_to_ascii_cow(host.as_bytes(), idna::AsciiDenyList::URL)
        .map_err(|_| OriginErrorKind::InvalidHost)?;
    if let Ok(addr) = ascii.parse::<Ipv4Addr>() {
        return Ok((addr.to_string().into_boxed_str(), None));
    }
    check_domain(&ascii)?;
    Ok((ascii.into_owned().into_boxed_str(), None))
}

/// Checks a lower-case ASCII domain name: letters, digits, `-`, `_` and `.`,
/// no empty label (a single trailing dot is allowed), and a last label that
/// is not numeric (such a host must be a valid IPv4 address).
fn check_domain(name: &str) -> Result<(), OriginErrorKind> {
    if name.contains('*') {
        return Err(OriginErrorKind::Wildcard);
    }
    if name.is_empty() {
        return Err(OriginErrorKind::EmptyHost);
    }
    let ok_byte = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b);
    if !name.bytes().all(ok_byte) {
        return Err(OriginErrorKind::InvalidHost);
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.split('.').any(str::is_empty) {
        return Err(OriginErrorKind::InvalidHost);
    }
    let last = trimmed.rsplit('.').next().unwrap_or(trimmed);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last.strip_prefix("0x").is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(OriginErrorKind::InvalidHost);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What is wrong with a string that is not a valid origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OriginErrorKind {
    /// No `scheme://` prefix.
    MissingScheme,
    /// A scheme other than http, https, ws and wss.
    UnknownScheme,
    /// User info (`user:password@`) before the host.
    UserInfo,
    /// No host.
    EmptyHost,
    /// A host that is not a valid name, IPv4 or IPv6 literal.
    InvalidHost,
    /// A `*` in a host, or a wildcard pattern that is not `*.domain`.
    Wildcard,
    /// A port that is not a decimal number from 1 to 65535.
    BadPort,
    /// A path other than `/`.
    Path,
    /// A query (`?...`).
    Query,
    /// A fragment (`#...`).
    Fragment,
}

impl OriginErrorKind {
    fn describe(self) -> &'static str {
        match self {
            OriginErrorKind::MissingScheme => "missing scheme (expected e.g. https://host)",
            OriginErrorKind::UnknownScheme => "unsupported scheme (expected http, https, ws or wss)",
            OriginErrorKind::UserInfo => "user info (credentials) is not allowed in an origin",
            OriginErrorKind::EmptyHost => "empty host",
            OriginErrorKind::InvalidHost => "invalid host",
            OriginErrorKind::Wildcard => "wildcards are only allowed as a leading `*.` of an origin pattern",
            OriginErrorKind::BadPort => "invalid port (expected 1 to 65535)",
            OriginErrorKind::Path => "an origin has no path (only a trailing `/` is allowed)",
            OriginErrorKind::Query => "an origin has no query",
            OriginErrorKind::Fragment => "an origin has no fragment",
        }
    }
}

/// The error of [`Origin::parse`] and [`OriginPattern::parse`].
///
/// Its `Display` names the problem and echoes the input, with any user info
/// (`user:password@`) replaced by `[redacted]@`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginError {
    kind: OriginErrorKind,
    input: String,
}

impl OriginError {
    fn new(kind: OriginErrorKind, input: &str) -> Self {
        OriginError { kind, input: redact_input(input) }
    }

    /// What is wrong.
    pub fn kind(&self) -> OriginErrorKind {
        self.kind
    }
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid origin {:?}: {}", self.input, self.kind.describe())
    }
}

impl Error for OriginError {}

/// The input as it may be echoed: everything up to the last `@` (user info,
/// possibly a password) is replaced, keeping a leading `scheme://`; long
/// inputs are cut.
fn redact_input(input: &str) -> String {
    const MAX_CHARS: usize = 200;
    let mut out = match input.rfind('@') {
        Some(at) => {
            let first_at = input.find('@').unwrap_or(at);
            let prefix = match input.find("://") {
                Some(i) if i < first_at => &input[..i + 3],
                _ => "",
            };
            format!("{prefix}[redacted]@{}", &input[at + 1..])
        }
        None => input.to_owned(),
    };
    if let Some((cut, _)) = out.char_indices().nth(MAX_CHARS) {
        out.truncate(cut);
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------
// OriginPattern
// ---------------------------------------------------------------------------

/// An explicit subdomain wildcard such as `https://*.example.com`.
///
/// It matches every origin with the same scheme and effective port whose host
/// ends in `.example.com` and has at least one more label: `a.example.com` and
/// `a.b.example.com`, but neither `example.com` itself nor
/// `evilexample.com`. The suffix must have at least two labels (`*.com` is
/// rejected) and must be a name, not an IP address.
///
/// ```
/// use tower_auth::route::origin::OriginPattern;
///
/// let pattern: OriginPattern = "https://*.example.com".parse()?;
/// assert!(pattern.matches_uri(&"https://a.example.com/x".parse()?));
/// assert!(pattern.matches_uri(&"https://A.B.Example.com:443/".parse()?));
/// assert!(!pattern.matches_uri(&"https://example.com/".parse()?));
/// assert!(!pattern.matches_uri(&"https://evilexample.com/".parse()?));
/// assert!(!pattern.matches_uri(&"http://a.example.com/".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OriginPattern {
    scheme: Scheme,
    /// Lower-case ASCII, without the leading `*.`.
    suffix: Box<str>,
    port: u16,
}

impl OriginPattern {
    /// Parses `scheme://*.domain[:port][/]`, normalising like
    /// [`Origin::parse`].
    ///
    /// # Errors
    ///
    /// An [`OriginError`] for anything [`Origin::parse`] rejects, and with
    /// [`OriginErrorKind::Wildcard`] for a host that does not start with `*.`,
    /// a suffix with a single label (`*.com`) or an IP address suffix.
    pub fn parse(s: &str) -> Result<OriginPattern, OriginError> {
        let err = |kind| OriginError::new(kind, s);
        let (scheme, host, port) = split_origin(s).map_err(err)?;
        let suffix = host.strip_prefix("*.").ok_or(OriginErrorKind::Wildcard).map_err(err)?;
        if suffix.is_empty() {
            return Err(err(OriginErrorKind::EmptyHost));
        }
        if suffix.starts_with('[') {
            return Err(err(OriginErrorKind::Wildcard));
        }
        let (suffix, _) = normalize_host(suffix).map_err(err)?;
        let trimmed = suffix.strip_suffix('.').unwrap_or(&suffix);
        if trimmed.parse::<Ipv4Addr>().is_ok() || !trimmed.contains('.') {
            return Err(err(OriginErrorKind::Wildcard));
        }
        Ok(OriginPattern { scheme, suffix, port })
    }

    /// The scheme, lower-case.
    pub fn scheme(&self) -> &str {
        self.scheme.as_str()
    }

    /// The domain under which hosts match, without the leading `*.`.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// The effective port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the origin of `uri` is matched. Never allocates.
    pub fn matches_uri(&self, uri: &Uri) -> bool {
        UriOrigin::of(uri)
            .is_some_and(|parts| parts.ipv6.is_none() && self.matches_parts(parts.scheme, parts.host, parts.port))
    }

    /// Whether `origin` is matched.
    pub fn matches(&self, origin: &Origin) -> bool {
        origin.ipv6.is_none() && self.matches_parts(origin.scheme, &origin.host, origin.port)
    }

    fn matches_parts(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if scheme != self.scheme || port != self.port {
            return false;
        }
        let suffix = self.suffix.as_bytes();
        let host = host.as_bytes();
        // At least one character, then a dot, then the suffix.
        if host.len() < suffix.len() + 2 {
            return false;
        }
        let dot = host.len() - suffix.len() - 1;
        host[dot] == b'.' && host[dot - 1] != b'.' && host[dot + 1..].eq_ignore_ascii_case(suffix)
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://*.{}", self.scheme.as_str(), self.suffix)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl fmt::Debug for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OriginPattern(\"{self}\")")
    }
}

impl FromStr for OriginPattern {
    type Err = OriginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OriginPattern::parse(s)
    }
}

// ---------------------------------------------------------------------------
// OriginMap
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Slot<V> {
    One(Origin, V),
    /// Origins whose keys collide (practically never happens).
    Many(Vec<(Origin, V)>),
}

/// A map from [`Origin`] to `V` whose lookup by request URI
/// ([`OriginMap::get_for_uri`]) does not allocate.
///
/// It hashes with the precomputed [`OriginKey`] and confirms every hit with an
/// exact comparison, so colliding keys cost time, never correctness.
#[derive(Clone)]
pub struct OriginMap<V> {
    map: HashMap<OriginKey, Slot<V>, OriginKeyBuildHasher>,
    len: usize,
}

impl<V> OriginMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        OriginMap { map: HashMap::with_hasher(OriginKeyBuildHasher), len: 0 }
    }

    /// An empty map with room for `capacity` origins.
    pub fn with_capacity(capacity: usize) -> Self {
        OriginMap { map: HashMap::with_capacity_and_hasher(capacity, OriginKeyBuildHasher), len: 0 }
    }

    /// The number of origins.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts a value for `origin`, returning the previous one.
    pub fn insert(&mut self, origin: Origin, value: V) -> Option<V> {
        match self.map.entry(origin.key) {
            hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Slot::One(origin, value));
                self.len += 1;
                None
            }
            hash_map::Entry::Occupied(mut occupied) => {
                let slot = occupied.get_mut();
                match slot {
                    Slot::One(existing, old) if *existing == origin => {
                        return Some(std::mem::replace(old, value));
                    }
                    Slot::One(..) => {
                        // Collision: turn the slot into a list.
                        let Slot::One(o, v) = std::mem::replace(slot, Slot::Many(Vec::new())) else {
                            unreachable!("matched Slot::One above")
                        };
                        *slot = Slot::Many(vec![(o, v), (origin, value)]);
                    }
                    Slot::Many(list) => {
                        if let Some((_, old)) = list.iter_mut().find(|(o, _)| *o == origin) {
                            return Some(std::mem::replace(old, value));
                        }
                        list.push((origin, value));
                    }
                }
                self.len += 1;
                None
            }
        }
    }

    /// The value for `origin`.
    pub fn get(&self, origin: &Origin) -> Option<&V> {
        match self.map.get(&origin.key)? {
            Slot::One(o, v) => (o == origin).then_some(v),
            Slot::Many(list) => list.iter().find(|(o, _)| o == origin).map(|(_, v)| v),
        }
    }

    /// The value for `origin`, mutably.
    pub fn get_mut(&mut self, origin: &Origin) -> Option<&mut V> {
        match self.map.get_mut(&origin.key)? {
            Slot::One(o, v) => (o == origin).then_some(v),
            Slot::Many(list) => list.iter_mut().find(|(o, _)| o == origin).map(|(_, v)| v),
        }
    }

    /// Whether the map has a value for `origin`.
    pub fn contains(&self, origin: &Origin) -> bool {
        self.get(origin).is_some()
    }

    /// Removes and returns the value for `origin`.
    pub fn remove(&mut self, origin: &Origin) -> Option<V> {
        let hash_map::Entry::Occupied(mut occupied) = self.map.entry(origin.key) else {
            return None;
        };
        let removed = match occupied.get_mut() {
            Slot::One(o, _) if o == origin => match occupied.remove() {
                Slot::One(_, v) => Some(v),
                Slot::Many(_) => unreachable!("matched Slot::One above"),
            },
            Slot::One(..) => None,
            Slot::Many(list) => {
                let index = list.iter().position(|(o, _)| o == origin)?;
                let (_, v) = list.swap_remove(index);
                if list.is_empty() {
                    occupied.remove();
                }
                Some(v)
            }
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The value for the origin of `uri`: allocation-free, one hash of the
    /// host and one exact comparison.
    #[inline]
    pub fn get_for_uri(&self, uri: &Uri) -> Option<&V> {
        self.get_key_value_for_uri(uri).map(|(_, v)| v)
    }

    /// The configured origin and value for the origin of `uri`.
    #[inline]
    pub fn get_key_value_for_uri(&self, uri: &Uri) -> Option<(&Origin, &V)> {
        let parts = UriOrigin::of(uri)?;
        match self.map.get(&parts.key())? {
            Slot::One(o, v) => parts.matches(o).then_some((o, v)),
            Slot::Many(list) => list.iter().find(|(o, _)| parts.matches(o)).map(|(o, v)| (o, v)),
        }
    }

    /// All origins and values, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Origin, &V)> {
        self.map.values().flat_map(|slot| {
            let (one, many) = match slot {
                Slot::One(o, v) => (Some((o, v)), &[][..]),
                Slot::Many(list) => (None, list.as_slice()),
            };
            one.into_iter().chain(many.iter().map(|(o, v)| (o, v)))
        })
    }
}

impl<V> Default for OriginMap<V> {
    fn default() -> Self {
        OriginMap::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for OriginMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> Extend<(Origin, V)> for OriginMap<V> {
    fn extend<I: IntoIterator<Item = (Origin, V)>>(&mut self, iter: I) {
        for (origin, value) in iter {
            self.insert(origin, value);
        }
    }
}

impl<V> FromIterator<(Origin, V)> for OriginMap<V> {
    fn from_iter<I: IntoIterator<Item = (Origin, V)>>(iter: I) -> Self {
        let mut map = OriginMap::new();
        map.extend(iter);
        map
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> Origin {
        Origin::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn u(s: &str) -> Uri {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> OriginError {
        match Origin::parse(s) {
            Ok(origin) => panic!("{s} parsed as {origin}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_simple_origins() {
        let a = o("http://example.com");
        assert_eq!((a.scheme(), a.host(), a.port()), ("http", "example.com", 80));
        let b = o("https://example.com:8443");
        assert_eq!((b.scheme(), b.host(), b.port()), ("https", "example.com", 8443));
        assert_eq!(b.to_string(), "https://example.com:8443");
    }

    #[test]
    fn trailing_slash_is_allowed() {
        assert_eq!(o("https://example.com/"), o("https://example.com"));
        assert_eq!(o("https://example.com:8443/"), o("https://example.com:8443"));
    }

    #[test]
    fn default_ports_are_normalised() {
        assert_eq!(o("https://a.example"), o("https://a.example:443"));
        assert_eq!(o("http://a.example"), o("http://a.example:80"));
        assert_eq!(o("ws://a.example"), o("ws://a.example:80"));
        assert_eq!(o("wss://a.example"), o("wss://a.example:443"));
        assert_eq!(o("https://a.example:443").to_string(), "https://a.example");
        assert_ne!(o("https://a.example"), o("http://a.example:443"));
        assert_ne!(o("https://a.example"), o("https://a.example:80"));
        assert_eq!(o("http://a.example:0080"), o("http://a.example"));
    }

    #[test]
    fn empty_port_means_default() {
        assert_eq!(o("http://a.example:"), o("http://a.example"));
        assert_eq!(o("http://a.example:/"), o("http://a.example"));
    }

    #[test]
    fn scheme_and_host_are_case_insensitive() {
        let a = o("HTTPS://Example.COM");
        assert_eq!(a.scheme(), "https");
        assert_eq!(a.host(), "example.com");
        assert_eq!(a, o("https://example.com"));
        assert_eq!(a.to_string(), "https://example.com");
    }

    #[test]
    fn idna_hosts_become_punycode() {
        let a = o("https://Bücher.example");
        assert_eq!(a.host(), "xn--bcher-kva.example");
        assert_eq!(a, o("https://xn--bcher-kva.example"));
        assert_eq!(a, o("https://BÜCHER.example"));
        assert_eq!(a.to_string(), "https://xn--bcher-kva.example");
        // Full-width letters are mapped too.
        assert_eq!(o("https://ｅxample.com"), o("https://example.com"));
        let uri = u("https://xn--bcher-kva.example/x");
        assert!(a.matches_uri(&uri));
        assert_eq!(key_of_uri(&uri), Some(a.key()));
    }

    #[test]
    fn ipv6_literals_are_canonical() {
        let a = o("http://[::1]:8080");
        assert_eq!(a.host(), "[::1]");
        assert_eq!(a.port(), 8080);
        assert_eq!(a, o("http://[::0001]:8080"));
        assert_eq!(a, o("http://[0:0:0:0:0:0:0:1]:8080/"));
        assert_eq!(o("https://[2001:DB8::A]"), o("https://[2001:db8:0:0::a]"));
        assert_eq!(o("https://[2001:DB8::A]").to_string(), "https://[2001:db8::a]");
        assert_ne!(o("http://[::1]"), o("http://[::2]"));
        assert_ne!(o("http://[::1]"), o("http://[::1]:8080"));
    }

    #[test]
    fn ipv4_literals() {
        let a = o("http://127.0.0.1:3000");
        assert_eq!(a.host(), "127.0.0.1");
        assert!(a.matches_uri(&u("http://127.0.0.1:3000/health")));
        assert_eq!(err("http://1.2.3.999").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://01.2.3.4").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://0x7f.1").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://example.123").kind(), OriginErrorKind::InvalidHost);
        // A numeric label that is not the last one is fine.
        assert_eq!(o("http://123.example").host(), "123.example");
    }

    #[test]
    fn rejects_paths_queries_fragments() {
        assert_eq!(err("https://a.example/path").kind(), OriginErrorKind::Path);
        assert_eq!(err("https://a.example//").kind(), OriginErrorKind::Path);
        assert_eq!(err("https://a.example?x=1").kind(), OriginErrorKind::Query);
        assert_eq!(err("https://a.example/?x=1").kind(), OriginErrorKind::Query);
        assert_eq!(err("https://a.example#top").kind(), OriginErrorKind::Fragment);
        assert_eq!(err("https://a.example/#top").kind(), OriginErrorKind::Fragment);
    }

    #[test]
    fn rejects_schemes() {
        assert_eq!(err("ftp://a.example").kind(), OriginErrorKind::UnknownScheme);
        assert_eq!(err("file:///etc/passwd").kind(), OriginErrorKind::UnknownScheme);
        assert_eq!(err("a.example").kind(), OriginErrorKind::MissingScheme);
        assert_eq!(err("http:a.example").kind(), OriginErrorKind::MissingScheme);
        assert_eq!(err("://a.example").kind(), OriginErrorKind::MissingScheme);
        assert_eq!(err("").kind(), OriginErrorKind::MissingScheme);
    }

    #[test]
    fn rejects_empty_and_invalid_hosts() {
        assert_eq!(err("http://").kind(), OriginErrorKind::EmptyHost);
        assert_eq!(err("http:///").kind(), OriginErrorKind::EmptyHost);
        assert_eq!(err("http://:80").kind(), OriginErrorKind::EmptyHost);
        assert_eq!(err("http://a b").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://a%62c").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://a..b").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://.").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://[::1").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://[zz::1]").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://[fe80::1%25eth0]").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://[::1]x").kind(), OriginErrorKind::InvalidHost);
        assert_eq!(err("http://::1").kind(), OriginErrorKind::EmptyHost);
        assert_eq!(err("http://*.a.example").kind(), OriginErrorKind::Wildcard);
        // A trailing dot is kept: a distinct (fully qualified) name.
        assert_eq!(o("http://a.example.").host(), "a.example.");
        assert_ne!(o("http://a.example."), o("http://a.example"));
    }

    #[test]
    fn rejects_bad_ports() {
        for s in [
            "http://a.example:0",
            "http://a.example:65536",
            "http://a.example:99999999999999999999",
            "http://a.example:+80",
            "http://a.example:-1",
            "http://a.example:8o",
            "http://a.example:80:80",
            "http://[::1]:x",
        ] {
            assert_eq!(err(s).kind(), OriginErrorKind::BadPort, "{s}");
        }
        assert_eq!(o("http://a.example:65535").port(), 65535);
    }

    #[test]
    fn rejects_user_info_without_echoing_it() {
        let e = err("https://user:hunter2@a.example");
        assert_eq!(e.kind(), OriginErrorKind::UserInfo);
        let msg = e.to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(!msg.contains("user:"), "{msg}");
        assert!(msg.contains("https://[redacted]@a.example"), "{msg}");
        // Even when another error would be reported first.
        for s in [
            "ftp://user:hunter2@a.example",
            "user:hunter2@a.example",
            "http:/user:hunter2@a.example",
            "https://user:hunter2@a.example/path?q",
            "https://user:p@hunter2@a.example",
        ] {
            let msg = err(s).to_string();
            assert!(!msg.contains("hunter2"), "{s}: {msg}");
        }
    }

    #[test]
    fn error_display_echoes_input() {
        let msg = err("ftp://a.example").to_string();
        assert!(msg.contains("\"ftp://a.example\""), "{msg}");
        assert!(msg.contains("scheme"), "{msg}");
        let msg = err("https://a.example/path").to_string();
        assert!(msg.contains("https://a.example/path") && msg.contains("path"), "{msg}");
        let long = format!("https://{}", "a".repeat(1000));
        assert!(err(&format!("{long}/x")).to_string().len() < 400);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "http://example.com",
            "https://example.com:8443",
            "http://[::1]:8080",
            "https://[2001:db8::1]",
            "http://10.0.0.1:81",
            "wss://xn--bcher-kva.example",
            "https://a_b.example",
        ] {
            let origin = o(s);
            assert_eq!(origin.to_string(), s);
            assert_eq!(o(&origin.to_string()), origin);
            assert_eq!(format!("{origin:?}"), format!("Origin(\"{s}\")"));
        }
    }

    #[test]
    fn from_str_and_try_from() {
        let a: Origin = "https://a.example".parse().unwrap();
        let b = Origin::try_from("https://A.example:443/").unwrap();
        assert_eq!(a, b);
        assert!("https://a.example/x".parse::<Origin>().is_err());
    }

    #[test]
    fn from_uri() {
        assert_eq!(Origin::from_uri(&u("https://API.example.com:443/v1?x#y")), Some(o("https://api.example.com")));
        assert_eq!(Origin::from_uri(&u("/relative")), None);
        assert_eq!(Origin::from_uri(&u("*")), None);
        assert_eq!(Origin::from_uri(&u("ftp://a.example/")), None);
        assert_eq!(Origin::from_uri(&u("http://:80/")), None);
        assert_eq!(Origin::from_uri(&u("http://a.example:65536/")), None);
        assert_eq!(Origin::from_uri(&u("http://a.example:+80/")), None);
        assert_eq!(Origin::from_uri(&u("http://[fe80::1%25eth0]/")), None);
        assert_eq!(Origin::from_uri(&u("http://[::0001]:8080/")), Some(o("http://[::1]:8080")));
        assert_eq!(Origin::from_uri(&u("http://a.example:/")), Some(o("http://a.example")));
        // Authority-form (CONNECT) URIs have no scheme.
        assert_eq!(Origin::from_uri(&u("a.example:443")), None);
    }

    #[test]
    fn user_info_in_uri_is_not_the_host() {
        let uri = u("http://example.com:@evil.com/");
        let origin = Origin::from_uri(&uri).unwrap();
        assert_eq!(origin.host(), "evil.com");
        assert_eq!(origin, o("http://evil.com"));
        assert!(!o("http://example.com").matches_uri(&uri));
        assert_ne!(key_of_uri(&uri), Some(o("http://example.com").key()));
        assert_eq!(key_of_uri(&uri), Some(o("http://evil.com").key()));
        let uri = u("http://user:pw@example.com:8080/");
        assert_eq!(Origin::from_uri(&uri), Some(o("http://example.com:8080")));
        let uri = u("http://example.com:80@evil.com/");
        assert_eq!(Origin::from_uri(&uri), Some(o("http://evil.com")));
    }

    #[test]
    fn key_of_uri_equals_key_of_origin() {
        let cases = [
            ("https://example.com", "https://example.com/"),
            ("https://example.com", "https://EXAMPLE.com:443/a/b?c=d"),
            ("https://example.com", "HTTPS://Example.Com"),
            ("https://example.com:8443", "https://eXaMpLe.CoM:8443/"),
            ("http://example.com", "http://example.com:80"),
            ("http://example.com", "http://example.com:/"),
            ("http://example.com", "http://example.com:0080/"),
            ("http://example.com", "http://u:p@example.com/"),
            ("http://[::1]:8080", "http://[::1]:8080/"),
            ("http://[::1]:8080", "http://[::0001]:8080/"),
            ("http://[::1]:8080", "http://[0:0:0:0:0:0:0:1]:8080/"),
            ("https://[2001:db8::a]", "https://[2001:DB8:0::A]/"),
            ("http://127.0.0.1:3000", "http://127.0.0.1:3000/x"),
            ("https://xn--bcher-kva.example", "https://XN--BCHER-KVA.example/"),
            ("https://Bücher.example", "https://xn--bcher-kva.example/"),
            ("ws://chat.example", "ws://CHAT.example:80/socket"),
            ("wss://chat.example", "wss://chat.example/socket"),
            ("http://[::ffff:1.2.3.4]", "http://[::FFFF:1.2.3.4]/"),
            ("http://[::ffff:1.2.3.4]", "http://[::ffff:102:304]/"),
            ("http://[::]", "http://[0::0]/"),
            ("https://a", "https://A"),
            ("https://abcdefgh", "https://ABCDEFGH"),
            ("https://abcdefghi", "https://ABCDEFGHI"),
            (
                "https://a-very-long-host-name.with.many.labels.example.org",
                "https://A-Very-Long-Host-Name.With.Many.Labels.Example.ORG/",
            ),
        ];
        for (config, request) in cases {
            let origin = o(config);
            let uri = u(request);
            assert_eq!(key_of_uri(&uri), Some(origin.key()), "{config} vs {request}");
            assert!(origin.matches_uri(&uri), "{config} vs {request}");
            assert_eq!(Origin::from_uri(&uri).as_ref(), Some(&origin));
        }
    }

    #[test]
    fn keys_differ_across_scheme_host_port() {
        let origins = [
            "http://example.com",
            "https://example.com",
            "ws://example.com",
            "wss://example.com",
            "http://example.com:8080",
            "http://example.org",
            "http://example.co",
            "http://[::1]",
            "http://[::2]",
            "http://127.0.0.1",
        ];
        let keys: std::collections::HashSet<_> = origins.iter().map(|s| o(s).key()).collect();
        assert_eq!(keys.len(), origins.len());
        for (i, a) in origins.iter().enumerate() {
            for (j, b) in origins.iter().enumerate() {
                assert_eq!(o(a).matches_uri(&u(b)), i == j, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn matches_uri_rejects_lookalikes() {
        let origin = o("https://example.com");
        for s in [
            "https://example.com.evil.net/",
            "https://evilexample.com/",
            "https://sub.example.com/",
            "https://example.co/",
            "http://example.com/",
            "https://example.com:8443/",
            "https://example.com:65536/",
            "https://example.com:x/",
            "/example.com",
            "example.com:443",
        ] {
            if let Ok(uri) = s.parse::<Uri>() {
                assert!(!origin.matches_uri(&uri), "{s}");
            }
        }
    }

    #[test]
    fn hash_and_eq_are_consistent() {
        let mut set = std::collections::HashSet::new();
        set.insert(o("https://a.example"));
        assert!(set.contains(&o("HTTPS://A.EXAMPLE:443/")));
        assert!(!set.contains(&o("https://a.example:444")));
    }

    #[test]
    fn ipv6_fast_path_agrees_with_std() {
        let fixed = [
            "::",
            "::1",
            "1::",
            "1::2",
            "::ffff:1.2.3.4",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7",
            ":::",
            "1:::2",
            "1::2::3",
            ":1::",
            "1:",
            ":1",
            "12345::",
            "fFfF::AbCd",
            "0000:0000::0001",
            "",
            ":",
            "1.2.3.4",
            "fe80::1%eth0",
            "1:2:3:4:5:6:1.2.3.4",
            "::1:2:3:4:5:6:7",
            "::1:2:3:4:5:6:7:8",
            "1:2:3:4::5:6:7:8",
            "g::",
            "1::2:",
        ];
        // Plus pseudo-random strings over the relevant alphabet.
        let alphabet = b"0123456789abcdefABCDEF:::::.g%";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = Vec::new();
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            let mut x = state;
            let text: String = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    alphabet[((x >> 33) % alphabet.len() as u64) as usize] as char
                })
                .collect();
            random.push(text);
        }
        let mut accepted = 0;
        for text in fixed.iter().map(ToString::to_string).chain(random) {
            let fast = parse_ipv6_fast(text.as_bytes());
            let std = text.parse::<Ipv6Addr>().ok();
            if fast.is_some() {
                accepted += 1;
                assert_eq!(fast, std, "{text:?}");
            }
            assert_eq!(parse_ipv6(&text), std, "{text:?}");
        }
        assert!(accepted > 1000, "only {accepted} accepted");
        for text in ["::", "::1", "1::", "2001:db8::a", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::"] {
            assert!(parse_ipv6_fast(text.as_bytes()).is_some(), "{text}");
        }
    }

    #[test]
    fn types_are_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Origin>();
        check::<OriginKey>();
        check::<OriginError>();
        check::<OriginPattern>();
        check::<OriginMap<String>>();
    }

    #[test]
    fn lower8_matches_std() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut bytes = *b"AbZz@[`{";
                bytes[pos] = b;
                let got = lower8(u64::from_le_bytes(bytes)).to_le_bytes();
                assert_eq!(got, bytes.map(|c| c.to_ascii_lowercase()), "{b} at {pos}");
            }
        }
    }

    #[test]
    fn origin_map_basics() {
        let mut map = OriginMap::new();
        assert!(map.is_empty());
        assert_eq!(map.insert(o("https://a.example"), 1), None);
        assert_eq!(map.insert(o("https://b.example"), 2), None);
        assert_eq!(map.insert(o("https://A.example:443"), 3), Some(1));
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&o("https://a.example")), Some(&3));
        assert!(map.contains(&o("https://b.example")));
        *map.get_mut(&o("https://b.example")).unwrap() += 10;
        assert_eq!(map.get_for_uri(&u("https://B.example/x")), Some(&12));
        assert_eq!(map.get_for_uri(&u("http://b.example/x")), None);
        assert_eq!(map.get_for_uri(&u("/x")), None);
        let (origin, value) = map.get_key_value_for_uri(&u("https://a.example")).unwrap();
        assert_eq!((origin.to_string().as_str(), *value), ("https://a.example", 3));
        assert_eq!(map.remove(&o("https://a.example")), Some(3));
        assert_eq!(map.remove(&o("https://a.example")), None);
        assert_eq!(map.len(), 1);
        assert_eq!(map.iter().count(), 1);
        let dbg = format!("{map:?}");
        assert_eq!(dbg, r#"{Origin("https://b.example"): 12}"#);
    }

    #[test]
    fn origin_map_survives_key_collisions() {
        // Forge two origins with the same key to exercise the collision path.
        let a = o("https://a.example");
        let mut b = o("https://b.example");
        b.key = a.key;
        let mut map = OriginMap::new();
        map.insert(a.clone(), "a");
        map.insert(b.clone(), "b");
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&a), Some(&"a"));
        assert_eq!(map.get(&b), Some(&"b"));
        assert_eq!(map.insert(b.clone(), "b2"), Some("b"));
        assert_eq!(map.get_for_uri(&u("https://a.example/")), Some(&"a"));
        assert_eq!(map.iter().count(), 2);
        assert_eq!(map.remove(&a), Some("a"));
        assert_eq!(map.get(&b), Some(&"b2"));
        assert_eq!(map.remove(&b), Some("b2"));
        assert!(map.is_empty());
        assert!(map.map.is_empty());
        // A request whose key collides with a configured origin gets nothing.
        let mut c = o("https://c.example");
        c.key = key_of_uri(&u("https://evil.example/")).unwrap();
        let map: OriginMap<_> = [(c, 1)].into_iter().collect();
        assert_eq!(map.get_for_uri(&u("https://evil.example/")), None);
    }

    #[test]
    fn origin_map_many_origins() {
        let map: OriginMap<usize> =
            (0..10_000).map(|i| (o(&format!("https://host{i}.example:{}", 1000 + i % 7)), i)).collect();
        assert_eq!(map.len(), 10_000);
        for i in (0..10_000).step_by(97) {
            let uri = u(&format!("https://HOST{i}.example:{}/x", 1000 + i % 7));
            assert_eq!(map.get_for_uri(&uri), Some(&i));
            let uri = u(&format!("https://host{i}.example:{}/x", 1000 + (i + 1) % 7));
            assert_eq!(map.get_for_uri(&uri), None);
        }
    }

    #[test]
    fn pattern_matches_subdomains_only() {
        let p: OriginPattern = "https://*.example.com".parse().unwrap();
        assert_eq!(p.suffix(), "example.com");
        assert_eq!(p.to_string(), "https://*.example.com");
        assert!(p.matches_uri(&u("https://a.example.com/")));
        assert!(p.matches_uri(&u("https://a.b.example.com/")));
        assert!(p.matches_uri(&u("https://A.EXAMPLE.COM:443/")));
        assert!(!p.matches_uri(&u("https://example.com/")));
        assert!(!p.matches_uri(&u("https://.example.com/")));
        assert!(!p.matches_uri(&u("https://evilexample.com/")));
        assert!(!p.matches_uri(&u("https://a.example.com.evil.net/")));
        assert!(!p.matches_uri(&u("https://a.example.com:8443/")));
        assert!(!p.matches_uri(&u("http://a.example.com/")));
        assert!(!p.matches_uri(&u("https://example.com:@a.example.org/")));
        assert!(p.matches_uri(&u("https://x:y@a.example.com/")));
        assert!(p.matches(&o("https://a.example.com")));
        assert!(!p.matches(&o("https://example.com")));
        let p: OriginPattern = "http://*.Bücher.example:8080/".parse().unwrap();
        assert_eq!(p.to_string(), "http://*.xn--bcher-kva.example:8080");
        assert!(p.matches_uri(&u("http://shop.xn--bcher-kva.example:8080")));
        assert_eq!(format!("{p:?}"), "OriginPattern(\"http://*.xn--bcher-kva.example:8080\")");
    }

    #[test]
    fn pattern_rejections() {
        for s in [
            "https://example.com",
            "https://*example.com",
            "https://a.*.example.com",
            "https://*.com",
            "https://*.*.example.com",
            "https://*.1.2.3.4",
            "https://*.[::1]",
            "https://*.",
            "https://*.example.com/path",
            "https://u:p@*.example.com",
        ] {
            assert!(OriginPattern::parse(s).is_err(), "{s}");
        }
    }
}
