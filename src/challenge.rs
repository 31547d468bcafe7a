//! Parser for HTTP authentication challenges and credentials
//! ([RFC 9110 §11](https://www.rfc-editor.org/rfc/rfc9110#section-11)).
//!
//! # Grammar
//!
//! ```text
//! WWW-Authenticate         = #challenge                          ; §11.6.1
//! Proxy-Authenticate       = #challenge                          ; §11.7.1
//! Authorization            = credentials                         ; §11.6.2
//! Authentication-Info      = #auth-param                         ; §11.6.3
//!
//! challenge     = auth-scheme [ 1*SP ( token68 / #auth-param ) ] ; §11.2
//! credentials   = auth-scheme [ 1*SP ( token68 / #auth-param ) ] ; §11.4
//! auth-scheme   = token
//! auth-param    = token BWS "=" BWS ( token / quoted-string )
//! token68       = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
//!
//! token         = 1*tchar                                        ; §5.6.2
//! quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE        ; §5.6.4
//! qdtext        = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
//! quoted-pair   = "\" ( HTAB / SP / VCHAR / obs-text )
//! OWS = BWS     = *( SP / HTAB )                                 ; §5.6.3
//! #element      = [ element ] *( OWS "," OWS [ element ] )       ; §5.6.1, recipient form
//! ```
//!
//! A `WWW-Authenticate` value is one comma-separated list in which the
//! elements are either the start of a challenge (`scheme`, `scheme token68` or
//! `scheme name=value`) or a further `name=value` of the challenge before it.
//! This parser tells them apart by what follows the leading token:
//!
//! * `token BWS "="` is an auth-param of the current challenge;
//! * `token` followed by `,` or the end is a challenge without parameters;
//! * `token 1*SP` followed by anything else starts a new challenge. After the
//!   spaces, a `token68` that is followed by `,` or the end is taken as the
//!   token68 (so `Basic abc=` carries the token68 `abc=`), otherwise the
//!   element must be an auth-param (`Basic realm=x`).
//!
//! ```
//! use tower_auth::challenge::{self, Challenge};
//!
//! let value = br#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#;
//! let challenges = challenge::parse(value);
//! assert_eq!(challenges.len(), 2);
//! assert!(challenges[0].is_scheme("newauth"));
//! assert_eq!(challenges[0].param("TITLE"), Some(r#"Login to "apps""#));
//! assert_eq!(challenges[1], Challenge::new("Basic").with_param("realm", "simple"));
//!
//! let creds = challenge::parse_credentials(b"Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag==").unwrap();
//! assert_eq!(creds.token68(), Some("YIIGhgYGKwYBBQUCoIIGejCCBnag=="));
//!
//! let mut header = String::from("Basic realm=");
//! challenge::push_quoted(&mut header, r#"say "hi""#);
//! assert_eq!(header, r#"Basic realm="say \"hi\"""#);
//! assert_eq!(challenge::parse(header.as_bytes())[0].param("realm"), Some(r#"say "hi""#));
//! ```
//!
//! # What is accepted
//!
//! * Scheme and parameter names are compared ASCII case-insensitively
//!   ([`Challenge::is_scheme`], [`Challenge::param`]) and kept as sent.
//! * Parameter values are returned with the quotes removed and quoted-pairs
//!   unescaped; a token value and the same text quoted are indistinguishable.
//! * Quoted values may hold UTF-8 text (obs-text); a quoted value that is not
//!   valid UTF-8 makes its challenge malformed.
//! * Empty list elements (`, ,`) are ignored, as §5.6.1 requires of recipients.
//! * [`parse`] accepts HTAB as well as SP after the scheme; the strict parsers
//!   require at least one SP there, as the grammar does.
//! * A parameter name that occurs twice in one challenge is a server error
//!   (§11.2: "each parameter name MUST only occur once per challenge"). The
//!   lenient [`parse`] keeps both in [`Challenge::params`], and
//!   [`Challenge::param`] returns the **first** one. The strict parsers reject
//!   duplicates, so that a server-side verifier and whoever sits in front of it
//!   cannot disagree about which value counts.
//! * `Digest realm=` with nothing after it (or only further challenges) is,
//!   by the grammar, the scheme `Digest` with the token68 `realm=`, and is
//!   returned as such, with no `realm` parameter. Followed by a parameter, as
//!   in `Digest realm=, nonce=1`, it is malformed (see below).
//!
//! # Malformed challenges and resynchronisation
//!
//! [`parse`] never fails and never panics. When an element of the list does not
//! fit the grammar, the challenge it belongs to is dropped, a
//! `tracing::debug!` event names the reason and the byte offset (never a
//! parameter value or token68), and parsing resumes as follows:
//!
//! 1. The challenge that was being read is dropped, because a broken
//!    element after it may have been one of its parameters: using the
//!    challenge without it could, for example, silently fall back from a
//!    mangled `algorithm=SHA-256` to MD5. Challenges completed before it are
//!    kept. The exception is a challenge that already has a token68, which
//!    cannot take more elements: a stray non-parameter element after it
//!    is dropped alone. A `name=value` after a token68, on the other hand,
//!    drops that challenge (its "token68" was probably `name=` with the value
//!    missing, as in `Digest realm=, nonce="…"`).
//! 2. Scanning restarts at the beginning of the list element in which the
//!    error was found, **ignoring quotes** (a broken quote may be the very
//!    thing that is wrong), and stops at the first comma that is followed, after
//!    optional whitespace and further commas, by a token and then either `,`,
//!    the end, or whitespace and something other than `=`. This is where
//!    the next challenge starts. A `name=value` after a comma never
//!    starts a challenge, so the parameters of the broken challenge are
//!    skipped.
//!
//! So in `Digest realm="x, nonce=, Basic realm="ok"` (the closing quote after
//! `x` is missing) the `Digest` challenge is lost and `Basic realm="ok"` is
//! recovered. Recovery is a heuristic: when a quote is broken, text that was
//! meant to be inside it may come back as a challenge (`realm="a, Foo bar`
//! yields a challenge `Foo` with token68 `bar`). A well-formed header is never
//! read this way, and a client should only act on schemes it implements
//! anyway.
//!
//! # Limits
//!
//! The work done is linear in the length of the input (there is no
//! recursion and no backtracking beyond one list element). At most
//! [`MAX_CHALLENGES`] challenges are returned per call; further ones are
//! ignored with a debug event. A challenge with more than [`MAX_PARAMS`]
//! parameters is dropped (with a debug event) rather than truncated; the
//! strict parsers return [`ParseErrorKind::TooManyParams`]. At most 16 debug
//! events are emitted per call, plus one counting the rest.

use std::fmt;

use http::HeaderMap;
use http::header::AsHeaderName;

/// Most challenges that [`parse`] and [`parse_headers`] return; the rest of
/// the input is ignored.
pub const MAX_CHALLENGES: usize = 64;

/// Most auth-params one challenge or credentials value may have.
pub const MAX_PARAMS: usize = 64;

/// Most "skipping" debug events per call; the rest are only counted.
const MAX_LOGGED: usize = 16;

/// Longest scheme name written into a debug event.
const MAX_LOGGED_SCHEME: usize = 32;

/// One challenge (from `WWW-Authenticate` / `Proxy-Authenticate`) or one
/// credentials value (from `Authorization` / `Proxy-Authorization`).
///
/// Parsed values never have both a [`token68`](Self::token68) and
/// [`params`](Self::params). The [`Debug`] output shows the scheme and the
/// parameter names but redacts every value, since credentials are parsed into
/// the same type.
#[derive(Clone, PartialEq, Eq)]
pub struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
    token68: Option<String>,
}

impl Challenge {
    /// A challenge with the given scheme and nothing else, to be completed
    /// with [`with_param`](Self::with_param) or
    /// [`with_token68`](Self::with_token68). Nothing is validated.
    pub fn new(scheme: impl Into<String>) -> Self {
        Self { scheme: scheme.into(), params: Vec::new(), token68: None }
    }

    /// Appends an auth-param (unquoted, unescaped value).
    #[must_use]
    pub fn with_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Sets the token68.
    #[must_use]
    pub fn with_token68(mut self, token68: impl Into<String>) -> Self {
        self.token68 = Some(token68.into());
        self
    }

    /// The auth-scheme, with the case it was sent in.
    #[must_use]
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Whether the scheme is `name`, compared ASCII case-insensitively.
    #[must_use]
    pub fn is_scheme(&self, name: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(name)
    }

    /// The value of the first parameter called `name` (ASCII
    /// case-insensitive), unquoted and unescaped.
    #[must_use]
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every parameter in the order sent, duplicates included, as
    /// `(name, value)` with names as sent and values unquoted.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The token68, if the challenge had one instead of parameters.
    #[must_use]
    pub fn token68(&self) -> Option<&str> {
        self.token68.as_deref()
    }
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted;
        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("<redacted>")
            }
        }
        struct Params<'a>(&'a [(String, String)]);
        impl fmt::Debug for Params<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.iter().map(|(n, _)| (n, Redacted))).finish()
            }
        }
        f.debug_struct("Challenge")
            .field("scheme", &self.scheme)
            .field("params", &Params(&self.params))
            .field("token68", &self.token68.as_ref().map(|_| Redacted))
            .finish()
    }
}

/// What is wrong with a value, see [`ParseError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The value is empty or only whitespace.
    Empty,
    /// An auth-scheme or parameter name (a token) was expected.
    ExpectedToken,
    /// A `,` or the end of the value was expected after a complete element.
    ExpectedComma,
    /// A parameter name is not followed by `=`.
    ExpectedEquals,
    /// `name=` with no value after it.
    MissingValue,
    /// A byte that the grammar does not allow here.
    UnexpectedByte,
    /// A quoted-string without its closing quote.
    UnterminatedQuote,
    /// A control byte (other than HTAB) inside a quoted-string.
    ControlByte,
    /// A backslash followed by a byte that cannot be escaped.
    InvalidEscape,
    /// A quoted-string whose content is not UTF-8.
    NotUtf8,
    /// An auth-param after a token68, which cannot have any.
    ParamAfterToken68,
    /// An auth-param before any auth-scheme.
    ParamWithoutScheme,
    /// A second auth-scheme where only auth-params may follow.
    UnexpectedScheme,
    /// The same parameter name twice (strict parsers only).
    DuplicateParam,
    /// More than [`MAX_PARAMS`] parameters.
    TooManyParams,
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty value where an auth-scheme was expected",
            Self::ExpectedToken => "expected a token",
            Self::ExpectedComma => "expected `,` or the end of the value",
            Self::ExpectedEquals => "expected `=` after a parameter name",
            Self::MissingValue => "auth-param has no value",
            Self::UnexpectedByte => "byte not allowed by the grammar",
            Self::UnterminatedQuote => "unterminated quoted-string",
            Self::ControlByte => "control byte in a quoted-string",
            Self::InvalidEscape => "invalid quoted-pair escape",
            Self::NotUtf8 => "quoted-string is not valid UTF-8",
            Self::ParamAfterToken68 => "auth-param after a token68",
            Self::ParamWithoutScheme => "auth-param before any auth-scheme",
            Self::UnexpectedScheme => "second auth-scheme where an auth-param was expected",
            Self::DuplicateParam => "duplicate auth-param name",
            Self::TooManyParams => "too many auth-params",
        })
    }
}

/// Why a strict parse failed, and where. Neither [`Display`](fmt::Display) nor
/// [`Debug`] repeats any byte of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParseError {
    kind: ParseErrorKind,
    offset: usize,
}

impl ParseError {
    fn new(kind: ParseErrorKind, offset: usize) -> Self {
        Self { kind, offset }
    }

    /// What is wrong.
    #[must_use]
    pub fn kind(&self) -> ParseErrorKind {
        self.kind
    }

    /// Byte offset in the parsed value where the problem was found. For
    /// [`ParseErrorKind::NotUtf8`] and [`ParseErrorKind::UnterminatedQuote`]
    /// it is the offset of the opening quote.
    #[must_use]
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind, self.offset)
    }
}

impl std::error::Error for ParseError {}

/// Parses one `WWW-Authenticate` or `Proxy-Authenticate` value leniently:
/// every well-formed challenge, in order.
///
/// Malformed challenges are skipped with a `tracing::debug!` event that says
/// why and where (never the value of a param), and parsing resumes at the
/// next challenge where the grammar allows, as described in the
/// [module docs](self#malformed-challenges-and-resynchronisation). At most
/// [`MAX_CHALLENGES`] are returned.
#[must_use]
pub fn parse(value: &[u8]) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut log = SkipLog::default();
    parse_list(value, &mut out, &mut log);
    log.finish();
    out
}

/// Every challenge across all lines of the header `name` (normally
/// `WWW-Authenticate` or `Proxy-Authenticate`), in order, parsed as by
/// [`parse`]. Each line is parsed on its own, so a broken quote in one line
/// cannot swallow the next. At most [`MAX_CHALLENGES`] are returned in all.
#[must_use]
pub fn parse_headers(headers: &HeaderMap, name: impl AsHeaderName) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut log = SkipLog::default();
    for value in headers.get_all(name) {
        if parse_list(value.as_bytes(), &mut out, &mut log).full {
            break;
        }
    }
    log.finish();
    out
}

/// Parses exactly one credentials value, as in an `Authorization` or
/// `Proxy-Authorization` header: `scheme [ 1*SP ( token68 / #auth-param ) ]`,
/// with optional whitespace around it. Strict: anything else, including a
/// second scheme, a duplicate parameter name or more than [`MAX_PARAMS`]
/// parameters, is an error. Empty list elements are allowed.
///
/// # Errors
///
/// A [`ParseError`] with the first problem found and its byte offset.
pub fn parse_credentials(value: &[u8]) -> Result<Challenge, ParseError> {
    let mut cur = Cursor::new(value);
    cur.skip_ws();
    if cur.at_end() {
        return Err(ParseError::new(ParseErrorKind::Empty, cur.pos));
    }
    let scheme = cur.token();
    if scheme.is_empty() {
        return Err(ParseError::new(ParseErrorKind::ExpectedToken, cur.pos));
    }
    let mut credentials = Challenge::new(ascii(scheme));
    let spaces = cur.skip_while(|b| b == b' ');
    cur.skip_ws();
    if cur.at_end() {
        return Ok(credentials);
    }
    if spaces == 0 {
        return Err(ParseError::new(ParseErrorKind::UnexpectedByte, cur.pos));
    }
    if let Some(end) = cur.token68_end(false) {
        credentials.token68 = Some(ascii(&value[cur.pos..end]));
        return Ok(credentials);
    }
    credentials.params = strict_params(&mut cur)?;
    Ok(credentials)
}

/// Parses a bare `#auth-param` list, as in `Authentication-Info` or
/// `Proxy-Authentication-Info`. Strict, like [`parse_credentials`]; an empty
/// value is an empty list.
///
/// # Errors
///
/// A [`ParseError`] with the first problem found and its byte offset, for
/// anything but `name=value` elements separated by commas (including a
/// duplicate name or more than [`MAX_PARAMS`] of them).
pub fn parse_params(value: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    strict_params(&mut Cursor::new(value))
}

/// Appends `value` to `out` as a quoted-string, escaping `"` and `\`.
///
/// Control characters other than HTAB cannot be carried by a quoted-string
/// at all; each is written as U+FFFD so that the result never contains CR or
/// LF. Non-ASCII text is written as UTF-8 (obs-text).
pub fn push_quoted(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    // Most values (nonces, hashes, paths) need no escape: copy them whole.
    if !value.bytes().any(|b| b == b'"' || b == b'\\' || (b.is_ascii_control() && b != b'\t')) {
        out.push_str(value);
        out.push('"');
        return;
    }
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push(c),
            c if c.is_ascii_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// Byte classes (RFC 9110 §5.6)

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF)
}

fn is_escapable(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21..=0x7E | 0x80..=0xFF)
}

/// Bytes already known to be ASCII (tokens, token68) as a `String`.
fn ascii(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

// ---------------------------------------------------------------------------
// Cursor: the element-level pieces shared by the lenient and strict parsers

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Bytes examined, for the linearity tests.
    work: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, work: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn bump(&mut self) {
        self.pos += 1;
        self.work += 1;
    }

    fn skip_while(&mut self, f: impl Fn(u8) -> bool) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        self.work += self.pos - start + 1;
        self.pos - start
    }

    fn skip_ws(&mut self) -> usize {
        self.skip_while(is_ws)
    }

    fn token(&mut self) -> &'a [u8] {
        let start = self.pos;
        self.skip_while(is_tchar);
        &self.buf[start..self.pos]
    }

    /// If a token68 starts at the cursor and is followed by OWS and then the
    /// end (or a `,` when `comma_ends` is set), returns where it ends. Does
    /// not move the cursor.
    fn token68_end(&mut self, comma_ends: bool) -> Option<usize> {
        let buf = self.buf;
        let mut i = self.pos;
        while i < buf.len() && is_token68_char(buf[i]) {
            i += 1;
        }
        if i == self.pos {
            return None;
        }
        while i < buf.len() && buf[i] == b'=' {
            i += 1;
        }
        let end = i;
        while i < buf.len() && is_ws(buf[i]) {
            i += 1;
        }
        self.work += i - self.pos + 1;
        (i == buf.len() || (comma_ends && buf[i] == b',')).then_some(end)
    }

    /// `token / quoted-string`, the cursor being just past `=` and BWS.
    fn value(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            None | Some(b',') => Err(ParseError::new(ParseErrorKind::MissingValue, self.pos)),
            Some(b'"') => self.quoted_string(),
            Some(b) if is_tchar(b) => Ok(ascii(self.token())),
            Some(_) => Err(ParseError::new(ParseErrorKind::UnexpectedByte, self.pos)),
        }
    }

    /// A quoted-string starting at the cursor, unescaped.
    fn quoted_string(&mut self) -> Result<String, ParseError> {
        let open = self.pos;
        self.bump();
        let mut out = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(ParseError::new(ParseErrorKind::UnterminatedQuote, open));
            };
            self.bump();
            match b {
                b'"' => break,
                b'\\' => match self.peek() {
                    Some(c) if is_escapable(c) => {
                        out.push(c);
                        self.bump();
                    }
                    Some(_) => {
                        return Err(ParseError::new(ParseErrorKind::InvalidEscape, self.pos - 1));
                    }
                    None => {
                        return Err(ParseError::new(ParseErrorKind::UnterminatedQuote, open));
                    }
                },
                b if is_qdtext(b) => out.push(b),
                _ => return Err(ParseError::new(ParseErrorKind::ControlByte, self.pos - 1)),
            }
        }
        String::from_utf8(out).map_err(|_| ParseError::new(ParseErrorKind::NotUtf8, open))
    }
}

/// `#auth-param` up to the end of the input, strictly.
fn strict_params(cur: &mut Cursor<'_>) -> Result<Vec<(String, String)>, ParseError> {
    let mut params: Vec<(String, String)> = Vec::new();
    let mut need_comma = false;
    loop {
        cur.skip_ws();
        match cur.peek() {
            None => break,
            Some(b',') => {
                cur.bump();
                need_comma = false;
                continue;
            }
            Some(_) if need_comma => {
                return Err(ParseError::new(ParseErrorKind::ExpectedComma, cur.pos));
            }
            Some(_) => {}
        }
        let name_start = cur.pos;
        let name = cur.token();
        if name.is_empty() {
            return Err(ParseError::new(ParseErrorKind::ExpectedToken, cur.pos));
        }
        let spaces = cur.skip_ws();
        match cur.peek() {
            Some(b'=') => cur.bump(),
            Some(b) if spaces > 0 && is_tchar(b) => {
                return Err(ParseError::new(ParseErrorKind::UnexpectedScheme, name_start));
            }
            _ => return Err(ParseError::new(ParseErrorKind::ExpectedEquals, cur.pos)),
        }
        cur.skip_ws();
        let value = cur.value()?;
        if params.iter().any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name)) {
            return Err(ParseError::new(ParseErrorKind::DuplicateParam, name_start));
        }
        if params.len() >= MAX_PARAMS {
            return Err(ParseError::new(ParseErrorKind::TooManyParams, name_start));
        }
        params.push((ascii(name), value));
        need_comma = true;
    }
    Ok(params)
}

// ---------------------------------------------------------------------------
// Lenient list parser

/// Rate-limited debug events for one call.
#[derive(Default)]
struct SkipLog {
    logged: usize,
    suppressed: usize,
}

impl SkipLog {
    fn skipped(&mut self, err: &ParseError, scheme: Option<&str>) {
        if self.logged >= MAX_LOGGED {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        // The scheme is a token (no control bytes), shortened; values are
        // never logged.
        let scheme = scheme.map_or("", |s| s.get(..MAX_LOGGED_SCHEME).unwrap_or(s));
        tracing::debug!(
            offset = err.offset,
            reason = %err.kind,
            scheme,
            "skipping malformed authentication challenge"
        );
    }

    fn too_many_params(&mut self, scheme: &str) {
        let err = ParseError::new(ParseErrorKind::TooManyParams, 0);
        if self.logged >= MAX_LOGGED {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        let scheme = scheme.get(..MAX_LOGGED_SCHEME).unwrap_or(scheme);
        tracing::debug!(
            reason = %err.kind,
            max = MAX_PARAMS,
            scheme,
            "skipping authentication challenge with too many parameters"
        );
    }

    fn finish(&self) {
        if self.suppressed > 0 {
            tracing::debug!(count = self.suppressed, "further malformed authentication challenges skipped");
        }
    }
}

/// Which challenge an error costs.
#[derive(Clone, Copy)]
enum Blame {
    /// The challenge being read (it is dropped).
    Pending,
    /// Only the broken element; the challenge being read is complete and kept.
    Element,
}

struct Pending {
    challenge: Challenge,
    too_many_params: bool,
}

struct ListOutcome {
    /// [`MAX_CHALLENGES`] reached: stop reading further lines too.
    full: bool,
    #[cfg_attr(not(test), allow(dead_code))]
    work: usize,
}

struct ListParser<'a, 'o> {
    cur: Cursor<'a>,
    out: &'o mut Vec<Challenge>,
    log: &'o mut SkipLog,
    pending: Option<Pending>,
    full: bool,
}

fn parse_list(value: &[u8], out: &mut Vec<Challenge>, log: &mut SkipLog) -> ListOutcome {
    let mut parser = ListParser { cur: Cursor::new(value), out, log, pending: None, full: false };
    if parser.out.len() >= MAX_CHALLENGES {
        parser.set_full();
    } else {
        parser.run();
    }
    ListOutcome { full: parser.full, work: parser.cur.work }
}

impl ListParser<'_, '_> {
    fn run(&mut self) {
        let mut need_comma = false;
        let mut elem_start = 0;
        while !self.full {
            self.cur.skip_ws();
            if need_comma {
                match self.cur.peek() {
                    None => break,
                    Some(b',') => {}
                    Some(_) => {
                        let err = ParseError::new(ParseErrorKind::ExpectedComma, self.cur.pos);
                        if !self.recover(err, Blame::Pending, elem_start) {
                            break;
                        }
                        need_comma = false;
                        continue;
                    }
                }
            }
            // Separators and empty list elements.
            while self.cur.peek() == Some(b',') {
                self.cur.bump();
                self.cur.skip_ws();
            }
            if self.cur.at_end() {
                break;
            }
            elem_start = self.cur.pos;
            match self.element() {
                Ok(()) => need_comma = true,
                Err((err, blame)) => {
                    if !self.recover(err, blame, elem_start) {
                        break;
                    }
                    need_comma = false;
                }
            }
        }
        self.commit();
    }

    /// One list element, the cursor being at its first byte.
    fn element(&mut self) -> Result<(), (ParseError, Blame)> {
        let name_start = self.cur.pos;
        let name = self.cur.token();
        // An element that is neither a parameter nor a challenge might have
        // been a parameter of the pending challenge, unless that one has a
        // token68 and so is complete.
        let garbage_blame = || {
            if self.pending.as_ref().is_some_and(|p| p.challenge.token68.is_some()) {
                Blame::Element
            } else {
                Blame::Pending
            }
        };
        if name.is_empty() {
            let err = ParseError::new(ParseErrorKind::UnexpectedByte, self.cur.pos);
            return Err((err, garbage_blame()));
        }
        let spaces = self.cur.skip_ws();
        match self.cur.peek() {
            Some(b'=') => {
                let err = match &self.pending {
                    None => Some((ParseErrorKind::ParamWithoutScheme, Blame::Element)),
                    Some(p) if p.challenge.token68.is_some() => {
                        Some((ParseErrorKind::ParamAfterToken68, Blame::Pending))
                    }
                    Some(_) => None,
                };
                if let Some((kind, blame)) = err {
                    return Err((ParseError::new(kind, name_start), blame));
                }
                self.cur.bump();
                self.cur.skip_ws();
                let value = self.cur.value().map_err(|e| (e, Blame::Pending))?;
                self.push_param(name, value);
                Ok(())
            }
            None | Some(b',') => {
                self.start(name);
                Ok(())
            }
            Some(_) if spaces > 0 => {
                if self.start(name) {
                    self.after_scheme().map_err(|e| (e, Blame::Pending))?;
                }
                Ok(())
            }
            Some(_) => {
                let err = ParseError::new(ParseErrorKind::UnexpectedByte, self.cur.pos);
                Err((err, garbage_blame()))
            }
        }
    }

    /// `token68 / auth-param` right after `scheme 1*SP`.
    fn after_scheme(&mut self) -> Result<(), ParseError> {
        if let Some(end) = self.cur.token68_end(true) {
            let token68 = ascii(&self.cur.buf[self.cur.pos..end]);
            self.cur.pos = end;
            if let Some(p) = &mut self.pending {
                p.challenge.token68 = Some(token68);
            }
            return Ok(());
        }
        let name = self.cur.token();
        if name.is_empty() {
            return Err(ParseError::new(ParseErrorKind::UnexpectedByte, self.cur.pos));
        }
        self.cur.skip_ws();
        if self.cur.peek() != Some(b'=') {
            return Err(ParseError::new(ParseErrorKind::ExpectedEquals, self.cur.pos));
        }
        self.cur.bump();
        self.cur.skip_ws();
        let value = self.cur.value()?;
        self.push_param(name, value);
        Ok(())
    }

    fn push_param(&mut self, name: &[u8], value: String) {
        if let Some(p) = &mut self.pending {
            if p.challenge.params.len() >= MAX_PARAMS {
                p.too_many_params = true;
            } else {
                p.challenge.params.push((ascii(name), value));
            }
        }
    }

    /// Completes the pending challenge and starts a new one, unless the cap
    /// is reached (then returns `false`).
    fn start(&mut self, scheme: &[u8]) -> bool {
        self.commit();
        if self.out.len() >= MAX_CHALLENGES {
            self.set_full();
            return false;
        }
        self.pending = Some(Pending { challenge: Challenge::new(ascii(scheme)), too_many_params: false });
        true
    }

    fn commit(&mut self) {
        if let Some(p) = self.pending.take() {
            if p.too_many_params {
                self.log.too_many_params(&p.challenge.scheme);
            } else {
                self.out.push(p.challenge);
            }
        }
    }

    fn set_full(&mut self) {
        self.full = true;
        tracing::debug!(max = MAX_CHALLENGES, "too many authentication challenges; ignoring the rest");
    }

    /// Drops what `blame` says, logs, and moves the cursor to the next
    /// challenge start after `from`. Returns `false` if there is none.
    fn recover(&mut self, err: ParseError, blame: Blame, from: usize) -> bool {
        match blame {
            Blame::Pending => {
                let pending = self.pending.take();
                self.log.skipped(&err, pending.as_ref().map(|p| p.challenge.scheme.as_str()));
            }
            Blame::Element => {
                self.commit();
                self.log.skipped(&err, None);
            }
        }
        match resync(&mut self.cur, from) {
            Some(start) => {
                self.cur.pos = start;
                true
            }
            None => {
                self.cur.pos = self.cur.buf.len();
                false
            }
        }
    }
}

/// Finds, from `from` on and without regard to quotes, the first comma
/// followed (after OWS and empty elements) by a token and then `,`, the end,
/// or whitespace and a byte other than `=`; returns where that token starts.
fn resync(cur: &mut Cursor<'_>, from: usize) -> Option<usize> {
    let buf = cur.buf;
    let len = buf.len();
    let mut i = from.min(len);
    let found = loop {
        match buf[i..].iter().position(|&b| b == b',') {
            None => {
                i = len;
                break None;
            }
            Some(k) => i += k + 1,
        }
        while i < len && is_ws(buf[i]) {
            i += 1;
        }
        let start = i;
        while i < len && is_tchar(buf[i]) {
            i += 1;
        }
        if i == start {
            continue;
        }
        let token_end = i;
        while i < len && is_ws(buf[i]) {
            i += 1;
        }
        if i == len || buf[i] == b',' || (i > token_end && buf[i] != b'=') {
            break Some(start);
        }
    };
    cur.work += i - from.min(len) + 1;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(scheme: &str) -> Challenge {
        Challenge::new(scheme)
    }

    fn schemes(list: &[Challenge]) -> Vec<&str> {
        list.iter().map(Challenge::scheme).collect()
    }

    fn work(value: &[u8]) -> usize {
        let mut out = Vec::new();
        parse_list(value, &mut out, &mut SkipLog::default()).work
    }

    // -- several challenges ------------------------------------------------

    #[test]
    fn several_challenges_in_one_line() {
        let got = parse(br#"Basic realm="a", Digest realm="b", nonce="n", qop="auth,auth-int""#);
        assert_eq!(
            got,
            vec![
                c("Basic").with_param("realm", "a"),
                c("Digest").with_param("realm", "b").with_param("nonce", "n").with_param("qop", "auth,auth-int"),
            ]
        );
    }

    #[test]
    fn several_header_lines() {
        let mut headers = HeaderMap::new();
        headers.append(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(r#"Negotiate, Digest realm="x, y", nonce=1"#),
        );
        headers.append(http::header::PROXY_AUTHENTICATE, http::HeaderValue::from_static("Basic realm=proxy"));
        headers.append(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static(r#"Basic realm="b""#));
        let got = parse_headers(&headers, http::header::WWW_AUTHENTICATE);
        assert_eq!(
            got,
            vec![
                c("Negotiate"),
                c("Digest").with_param("realm", "x, y").with_param("nonce", "1"),
                c("Basic").with_param("realm", "b"),
            ]
        );
        let proxy = parse_headers(&headers, "proxy-authenticate");
        assert_eq!(proxy, vec![c("Basic").with_param("realm", "proxy")]);
        assert!(parse_headers(&headers, http::header::AUTHORIZATION).is_empty());
    }

    #[test]
    fn broken_quote_in_one_line_does_not_swallow_the_next() {
        let mut headers = HeaderMap::new();
        headers.append(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static(r#"Digest realm="open"#));
        headers.append(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        let got = parse_headers(&headers, &http::header::WWW_AUTHENTICATE);
        assert_eq!(got, vec![c("Bearer")]);
    }

    #[test]
    fn challenge_cap_applies_across_lines() {
        let mut headers = HeaderMap::new();
        let line = vec!["A"; 40].join(", ");
        for _ in 0..3 {
            headers.append(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_str(&line).unwrap());
        }
        assert_eq!(parse_headers(&headers, http::header::WWW_AUTHENTICATE).len(), MAX_CHALLENGES);
    }

    // -- values, escapes, whitespace, empty elements -----------------------

    #[test]
    fn token_and_quoted_values() {
        let got = parse(br#"Digest algorithm=SHA-256, stale=TRUE, realm="a b", opaque="""#);
        let d = &got[0];
        assert_eq!(got.len(), 1);
        assert_eq!(d.param("algorithm"), Some("SHA-256"));
        assert_eq!(d.param("stale"), Some("TRUE"));
        assert_eq!(d.param("realm"), Some("a b"));
        assert_eq!(d.param("opaque"), Some(""));
        assert_eq!(d.param("nonce"), None);
    }

    #[test]
    fn quoted_pair_escapes() {
        let got = parse(br#"Basic realm="a\"b\\c\d\ e", x="\\""#);
        assert_eq!(got[0].param("realm"), Some(r#"a"b\cd e"#));
        assert_eq!(got[0].param("x"), Some("\\"));
    }

    #[test]
    fn ows_and_bws() {
        let got = parse(b"  Basic   realm = \"a\"\t ,\t charset =UTF-8 ,Bearer\t,  Digest  nonce= 1  ");
        assert_eq!(
            got,
            vec![
                c("Basic").with_param("realm", "a").with_param("charset", "UTF-8"),
                c("Bearer"),
                c("Digest").with_param("nonce", "1"),
            ]
        );
    }

    #[test]
    fn htab_after_scheme_is_tolerated() {
        let got = parse(b"Basic\trealm=x, Negotiate\tabc==");
        assert_eq!(got, vec![c("Basic").with_param("realm", "x"), c("Negotiate").with_token68("abc=="),]);
    }

    #[test]
    fn empty_list_elements() {
        let got = parse(b", ,Basic realm=a, , ,charset=x,, , Bearer ,,, ,");
        assert_eq!(got, vec![c("Basic").with_param("realm", "a").with_param("charset", "x"), c("Bearer"),]);
        assert!(parse(b"").is_empty());
        assert!(parse(b" , ,\t,").is_empty());
    }

    // -- token68 -----------------------------------------------------------

    #[test]
    fn negotiate_token68() {
        let got = parse(b"Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag==");
        assert_eq!(got, vec![c("Negotiate").with_token68("YIIGhgYGKwYBBQUCoIIGejCCBnag==")]);
    }

    #[test]
    fn ntlm_token68_and_others() {
        let got = parse(b"NTLM TlRMTVNTUAACAAAADAAMADAAAAA1goni, Negotiate, Basic realm=x");
        assert_eq!(
            got,
            vec![
                c("NTLM").with_token68("TlRMTVNTUAACAAAADAAMADAAAAA1goni"),
                c("Negotiate"),
                c("Basic").with_param("realm", "x"),
            ]
        );
        let got = parse(b"Foo a+b/c-d.e_f~g=");
        assert_eq!(got[0].token68(), Some("a+b/c-d.e_f~g="));
    }

    #[test]
    fn bare_schemes() {
        assert_eq!(parse(b"Negotiate"), vec![c("Negotiate")]);
        assert_eq!(parse(b"Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Bearer  "), vec![c("Bearer")]);
        assert_eq!(parse(b"Bearer, Negotiate"), vec![c("Bearer"), c("Negotiate")]);
    }

    #[test]
    fn token68_versus_param() {
        assert_eq!(parse(b"Basic abc="), vec![c("Basic").with_token68("abc=")]);
        assert_eq!(parse(b"Basic abc"), vec![c("Basic").with_token68("abc")]);
        assert_eq!(parse(b"Basic realm=x"), vec![c("Basic").with_param("realm", "x")]);
        assert_eq!(parse(b"Basic realm= x"), vec![c("Basic").with_param("realm", "x")]);
        assert_eq!(parse(b"Basic realm =x"), vec![c("Basic").with_param("realm", "x")]);
        assert_eq!(parse(b"Basic abc==, Bearer"), vec![c("Basic").with_token68("abc=="), c("Bearer")]);
        // By the grammar a lone `realm=` is a token68.
        assert_eq!(parse(b"Digest realm="), vec![c("Digest").with_token68("realm=")]);
    }

    #[test]
    fn rfc9110_newauth_example() {
        let got = parse(br#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#);
        assert_eq!(
            got,
            vec![
                c("Newauth")
                    .with_param("realm", "apps")
                    .with_param("type", "1")
                    .with_param("title", r#"Login to "apps""#),
                c("Basic").with_param("realm", "simple"),
            ]
        );
    }

    #[test]
    fn rfc6750_bearer_error() {
        let got =
            parse(br#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].param("error"), Some("invalid_token"));
        assert_eq!(got[0].param("error_description"), Some("The access token expired"));
    }

    // -- case and duplicates ----------------------------------------------

    #[test]
    fn case_insensitive_names() {
        let got = parse(br#"dIgEsT ReAlM="r", NONCE=n"#);
        assert_eq!(got[0].scheme(), "dIgEsT");
        assert!(got[0].is_scheme("Digest"));
        assert!(got[0].is_scheme("DIGEST"));
        assert!(!got[0].is_scheme("Digest2"));
        assert_eq!(got[0].param("realm"), Some("r"));
        assert_eq!(got[0].param("Nonce"), Some("n"));
        assert_eq!(got[0].params().collect::<Vec<_>>(), vec![("ReAlM", "r"), ("NONCE", "n")]);
    }

    #[test]
    fn duplicate_params_first_wins() {
        let got = parse(b"Basic realm=first, REALM=second");
        assert_eq!(got[0].param("realm"), Some("first"));
        assert_eq!(got[0].params().collect::<Vec<_>>(), vec![("realm", "first"), ("REALM", "second")]);
    }

    // -- malformed input ---------------------------------------------------

    #[test]
    fn unterminated_quote() {
        assert!(parse(br#"Basic realm="abc"#).is_empty());
        assert!(parse(br#"Basic realm=""#).is_empty());
        assert!(parse(br#"Basic realm="abc\"#).is_empty());
        // A challenge start inside it is recovered (documented heuristic).
        assert_eq!(parse(br#"Basic realm="a, Foo bar"#), vec![c("Foo").with_token68("bar")]);
        // Good challenges before it are kept.
        assert_eq!(parse(br#"Bearer, Basic realm="abc, Negotiate"#), vec![c("Bearer"), c("Negotiate")]);
    }

    #[test]
    fn missing_value() {
        assert_eq!(parse(br#"Digest realm=, nonce="x", Basic realm="ok""#), vec![c("Basic").with_param("realm", "ok")]);
        assert!(parse(br#"Digest nonce="x", realm="#).is_empty());
        assert_eq!(parse(br#"Digest nonce="x", realm=, qop=auth, Bearer"#), vec![c("Bearer")]);
        // `realm=` followed by a challenge is, by the grammar, a token68.
        assert_eq!(parse(b"Basic realm= , Bearer"), vec![c("Basic").with_token68("realm="), c("Bearer")]);
    }

    #[test]
    fn broken_quote_then_good_challenge() {
        assert_eq!(parse(br#"Digest realm="x, nonce=, Basic realm="ok""#), vec![c("Basic").with_param("realm", "ok")]);
        assert_eq!(
            parse(br#"Basic realm="a", Digest realm="x, Basic realm="ok""#),
            vec![c("Basic").with_param("realm", "a"), c("Basic").with_param("realm", "ok")]
        );
        // Garbage right after a closing quote.
        assert_eq!(
            parse(br#"Digest realm="x"y, nonce=1, Bearer error="e""#),
            vec![c("Bearer").with_param("error", "e")]
        );
    }

    #[test]
    fn bytes_outside_the_grammar() {
        // Garbage element before any scheme.
        assert_eq!(parse(b"@@@, Basic realm=x"), vec![c("Basic").with_param("realm", "x")]);
        // Garbage after params: the challenge it may belong to is dropped.
        assert_eq!(parse(b"Basic realm=x, @@, Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Basic realm=x @@, Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Basic realm=x, re@lm=y, Bearer"), vec![c("Bearer")]);
        // Garbage after a token68 challenge: that challenge is complete.
        assert_eq!(parse(b"Negotiate abc, @@, Bearer"), vec![c("Negotiate").with_token68("abc"), c("Bearer")]);
        assert_eq!(parse(b"Basic realm=@x, Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Ba{sic, Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Basic \"x\", Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Basic realm x, Bearer"), vec![c("Bearer")]);
        assert!(parse(b"=").is_empty());
        assert!(parse(b"\"").is_empty());
        assert!(parse(b"\\").is_empty());
    }

    #[test]
    fn param_before_any_scheme() {
        assert_eq!(parse(b"realm=x, Basic realm=y"), vec![c("Basic").with_param("realm", "y")]);
        assert!(parse(b"realm=\"a, b\"").is_empty());
    }

    #[test]
    fn param_after_token68_drops_the_challenge() {
        assert_eq!(parse(b"Negotiate abc=, realm=x, Bearer"), vec![c("Bearer")]);
        assert_eq!(
            parse(b"Negotiate abc=, Bearer realm=x"),
            vec![c("Negotiate").with_token68("abc="), c("Bearer").with_param("realm", "x")]
        );
        assert_eq!(parse(b"Negotiate abc def, Bearer"), vec![c("Bearer")]);
    }

    #[test]
    fn control_bytes() {
        assert_eq!(parse(b"Basic realm=\"a\x01b\", Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Basic realm=\"a\r\nb\", Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Basic realm=\"a\x7f\", Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Basic realm=\"a\\\x00\", Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Basic\0realm=x, Bearer"), vec![c("Bearer")]);
        assert_eq!(parse(b"Basic realm=x\r\n, Bearer"), vec![c("Bearer")]);
        // HTAB is fine inside quotes.
        assert_eq!(parse(b"Basic realm=\"a\tb\"")[0].param("realm"), Some("a\tb"));
        assert!(parse(b"\0\x01\x02\x7f").is_empty());
    }

    #[test]
    fn non_utf8_in_quoted_value() {
        assert_eq!(
            parse(b"Digest realm=\"\xff\xfe\", nonce=1, Basic realm=\"ok\""),
            vec![c("Basic").with_param("realm", "ok")]
        );
        assert_eq!(parse(b"Basic realm=\"ok\", Digest realm=\"caf\xe9\""), vec![c("Basic").with_param("realm", "ok")]);
        // Valid UTF-8 (obs-text) is kept.
        let got = parse("Basic realm=\"café ☕\"".as_bytes());
        assert_eq!(got[0].param("realm"), Some("café ☕"));
        // Non-UTF-8 outside quotes is simply outside the grammar.
        assert_eq!(parse(b"B\xc3\xa4sic, Bearer"), vec![c("Bearer")]);
    }

    #[test]
    fn one_megabyte_headers() {
        const MB: usize = 1 << 20;
        let mut long = b"Basic realm=\"".to_vec();
        long.resize(MB, b'a');
        long.extend_from_slice(b"\", Bearer");
        let got = parse(&long);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].param("realm").map(str::len), Some(MB - 13));

        let mut token = vec![b'x'; MB];
        token.extend_from_slice(b", Bearer");
        assert_eq!(parse(&token).len(), 2);

        for byte in [b'"', b'\\', b'=', b' ', b'@', 0xff, b'a'] {
            let _ = parse(&vec![byte; MB]);
            let _ = parse_credentials(&vec![byte; MB]);
            let _ = parse_params(&vec![byte; MB]);
        }
    }

    #[test]
    fn repeated_commas() {
        let commas = vec![b','; 1 << 20];
        assert!(parse(&commas).is_empty());
        let mut mixed = b"Basic".to_vec();
        mixed.extend(std::iter::repeat_n(b", ".iter().copied(), 100_000).flatten());
        mixed.extend_from_slice(b"Bearer");
        assert_eq!(schemes(&parse(&mixed)), vec!["Basic", "Bearer"]);
        assert_eq!(parse_params(&commas), Ok(vec![]));
    }

    #[test]
    fn challenge_cap() {
        let many = vec!["A"; 100].join(", ");
        assert_eq!(parse(many.as_bytes()).len(), MAX_CHALLENGES);
        let many = vec!["Negotiate abc=="; 1000].join(",");
        assert_eq!(parse(many.as_bytes()).len(), MAX_CHALLENGES);
    }

    #[test]
    fn param_cap_drops_the_challenge() {
        let params: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=\"v, X y\"")).collect();
        let value = format!("Digest {}, Bearer", params.join(", "));
        assert_eq!(parse(value.as_bytes()), vec![c("Bearer")]);
        let params: Vec<String> = (0..MAX_PARAMS).map(|i| format!("p{i}=v")).collect();
        let value = format!("Digest {}", params.join(", "));
        assert_eq!(parse(value.as_bytes())[0].params().count(), MAX_PARAMS);
    }

    #[test]
    fn work_is_linear() {
        let n = 20_000;
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        let rep = |prefix: &[u8], unit: &[u8]| {
            let mut v = prefix.to_vec();
            for _ in 0..n {
                v.extend_from_slice(unit);
            }
            v
        };
        inputs.push(rep(b"a b=\"", b", c"));
        inputs.push(rep(b"a b=\"", b", c d=\"x"));
        inputs.push(rep(b"", b", a b=@"));
        inputs.push(rep(b"", b"a \""));
        inputs.push(rep(b"", b", a \"x"));
        inputs.push(rep(b"", b"\\\""));
        inputs.push(rep(b"a b=\"", b"\\\", X y"));
        inputs.push(rep(b"", b", a b=\", c@"));
        inputs.push(rep(b"", b", a b=x y"));
        inputs.push(rep(b"", b", a abc  @"));
        inputs.push(rep(b"Negotiate abc", b"       "));
        inputs.push(rep(b"", b", Negotiate abc, x=1"));
        inputs.push(rep(b"", b",X Y=\"\xff\""));
        inputs.push(rep(b"", b"a b=\"x\" "));
        for input in &inputs {
            let w = work(input);
            assert!(
                w <= 8 * input.len() + 64,
                "work {w} for input of {} bytes starting {:?}",
                input.len(),
                String::from_utf8_lossy(&input[..16])
            );
        }
    }

    #[test]
    fn work_is_linear_for_random_repeated_units() {
        const ALPHABET: &[u8] = b"aB =,\"\\\t@/\xff";
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        for _ in 0..3000 {
            let unit_len = 1 + rng.below(8);
            let unit: Vec<u8> = (0..unit_len).map(|_| ALPHABET[rng.below(ALPHABET.len())]).collect();
            let prefix: Vec<u8> = (0..rng.below(6)).map(|_| ALPHABET[rng.below(ALPHABET.len())]).collect();
            let mut input = prefix;
            while input.len() < 8_000 {
                input.extend_from_slice(&unit);
            }
            let w = work(&input);
            assert!(w <= 8 * input.len() + 64, "work {w} for {:?}", String::from_utf8_lossy(&input[..32]));
        }
    }

    // -- strict parsers ----------------------------------------------------

    #[test]
    fn credentials_token68() {
        let got = parse_credentials(b"Basic dXNlcjpwYXNz").unwrap();
        assert_eq!(got, c("Basic").with_token68("dXNlcjpwYXNz"));
        let got = parse_credentials(b"  Bearer abc.def-ghi_jkl~+/== \t").unwrap();
        assert_eq!(got.token68(), Some("abc.def-ghi_jkl~+/=="));
        assert_eq!(parse_credentials(b"Negotiate").unwrap(), c("Negotiate"));
        assert_eq!(parse_credentials(b"Negotiate  ").unwrap(), c("Negotiate"));
    }

    #[test]
    fn credentials_params() {
        let value = br#"Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
        let got = parse_credentials(value).unwrap();
        assert!(got.is_scheme("digest"));
        assert_eq!(got.param("username"), Some("Mufasa"));
        assert_eq!(got.param("nc"), Some("00000001"));
        assert_eq!(got.params().count(), 10);
        assert_eq!(got.token68(), None);
        // Empty list elements and BWS are fine.
        let got = parse_credentials(b"Digest , a = 1 ,, b=\"2\" ,").unwrap();
        assert_eq!(got, c("Digest").with_param("a", "1").with_param("b", "2"));
    }

    #[test]
    fn credentials_errors() {
        use ParseErrorKind::*;
        let err = |v: &[u8]| {
            let e = parse_credentials(v).unwrap_err();
            (e.kind(), e.offset())
        };
        assert_eq!(err(b""), (Empty, 0));
        assert_eq!(err(b"  "), (Empty, 2));
        assert_eq!(err(b"@"), (ExpectedToken, 0));
        assert_eq!(err(b"Basic,x"), (UnexpectedByte, 5));
        assert_eq!(err(b"Basic\tabc"), (UnexpectedByte, 6));
        assert_eq!(err(b"Basic abc def"), (UnexpectedScheme, 6));
        assert_eq!(err(b"Basic abc@"), (ExpectedEquals, 9));
        assert_eq!(err(b"Basic abc=, x=y"), (MissingValue, 10));
        assert_eq!(err(b"Basic realm=x, Digest nonce=y"), (UnexpectedScheme, 15));
        assert_eq!(err(b"Basic realm=x, Digest"), (ExpectedEquals, 21));
        assert_eq!(err(b"Basic realm=x realm=y"), (ExpectedComma, 14));
        assert_eq!(err(b"Basic realm=x, REALM=y"), (DuplicateParam, 15));
        assert_eq!(err(b"Basic realm=\"x"), (UnterminatedQuote, 12));
        assert_eq!(err(b"Basic realm=\"\x01\""), (ControlByte, 13));
        assert_eq!(err(b"Basic realm=\"\\\n\""), (InvalidEscape, 13));
        assert_eq!(err(b"Basic realm=\"\xff\""), (NotUtf8, 12));
        assert_eq!(err(b"Basic realm=\"a\"b"), (ExpectedComma, 15));
        assert_eq!(err(b"Basic realm=@"), (UnexpectedByte, 12));
        let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=v")).collect();
        let value = format!("Digest {}", many.join(","));
        assert_eq!(err(value.as_bytes()).0, TooManyParams);
    }

    #[test]
    fn params_list() {
        let got = parse_params(
            br#"qop=auth, rspauth="6629fae49393a05397450978507c4ef1", cnonce="0a4f113b", nc=00000001, nextnonce="x""#,
        )
        .unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], ("qop".to_owned(), "auth".to_owned()));
        assert_eq!(got[4], ("nextnonce".to_owned(), "x".to_owned()));
        assert_eq!(parse_params(b""), Ok(vec![]));
        assert_eq!(parse_params(b" , ,"), Ok(vec![]));
        let e = parse_params(b"a=1, Basic b=2").unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ParseErrorKind::UnexpectedScheme, 5));
        let e = parse_params(b"a=1, a=2").unwrap_err();
        assert_eq!(e.kind(), ParseErrorKind::DuplicateParam);
        let e = parse_params(b"a=").unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ParseErrorKind::MissingValue, 2));
        let e = parse_params(b"abc").unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ParseErrorKind::ExpectedEquals, 3));
    }

    #[test]
    fn errors_never_echo_input() {
        let secret = b"Basic realm=\"sup3rsecret\x01\"";
        let e = parse_credentials(secret).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("sup3rsecret"), "{shown}");
        assert_eq!(e.to_string(), "control byte in a quoted-string at byte 24");
        let _: &dyn std::error::Error = &e;
    }

    #[test]
    fn debug_redacts_values() {
        let creds = parse_credentials(b"Digest username=\"alice\", response=\"s3cr3t\"").unwrap();
        let shown = format!("{creds:?}");
        assert!(shown.contains("Digest") && shown.contains("response"), "{shown}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("alice"), "{shown}");
        let basic = parse_credentials(b"Basic dXNlcjpwYXNz").unwrap();
        let shown = format!("{basic:?}");
        assert!(!shown.contains("dXNlcjpwYXNz"), "{shown}");
    }

    // -- push_quoted -------------------------------------------------------

    #[test]
    fn push_quoted_escapes_and_round_trips() {
        let mut out = String::new();
        push_quoted(&mut out, r#"a"b\c"#);
        assert_eq!(out, r#""a\"b\\c""#);
        let mut out = String::new();
        push_quoted(&mut out, "x\r\ny\tz\u{7f}é");
        assert_eq!(out, "\"x\u{FFFD}\u{FFFD}y\tz\u{FFFD}é\"");

        for value in ["", "plain", r#"\"\\"#, "a, Basic realm=x", "é ☕", "\t"] {
            let mut header = String::from("Digest realm=");
            push_quoted(&mut header, value);
            header.push_str(", nonce=");
            push_quoted(&mut header, value);
            let got = parse(header.as_bytes());
            assert_eq!(got, vec![c("Digest").with_param("realm", value).with_param("nonce", value)]);
            assert_eq!(parse_credentials(header.as_bytes()).unwrap(), got[0]);
        }
    }

    // -- logging -------------------------------------------------------------

    mod capture {
        use std::fmt::Write as _;
        use std::sync::{Arc, Mutex};
        use tracing::field::{Field, Visit};
        use tracing::span;

        #[derive(Clone, Default)]
        pub(super) struct Capture(pub(super) Arc<Mutex<String>>);

        struct Visitor<'a>(&'a mut String);

        impl Visit for Visitor<'_> {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                let _ = write!(self.0, "{}={:?} ", field.name(), value);
            }
        }

        impl tracing::Subscriber for Capture {
            fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
                span::Id::from_u64(1)
            }
            fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
            fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
            fn event(&self, event: &tracing::Event<'_>) {
                let mut line = String::new();
                event.record(&mut Visitor(&mut line));
                let mut all = self.0.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
            fn enter(&self, _: &span::Id) {}
            fn exit(&self, _: &span::Id) {}
        }
    }

    fn captured(f: impl FnOnce()) -> String {
        let capture = capture::Capture::default();
        tracing::subscriber::with_default(capture.clone(), f);
        capture.0.lock().unwrap().clone()
    }

    #[test]
    fn debug_events_never_contain_values() {
        let logs = captured(|| {
            let got = parse(
                b"Digest realm=\"SECRET1\" x, Basic realm=SECRET2@, Foo tok=\"SECRET3\xff\", \
                  Bar SECRET4 SECRET5, Baz a=\"SECRET6",
            );
            assert!(got.is_empty(), "{got:?}");
        });
        assert!(logs.contains("skipping malformed"), "{logs}");
        assert!(logs.contains("offset="), "{logs}");
        assert!(!logs.contains("SECRET"), "{logs}");
        assert_eq!(logs.lines().count(), 5, "{logs}");
    }

    #[test]
    fn debug_events_are_rate_limited() {
        let input = vec!["X a=@"; 1000].join(", ");
        let logs = captured(|| assert!(parse(input.as_bytes()).is_empty()));
        assert_eq!(logs.lines().count(), MAX_LOGGED + 1, "{logs}");
        assert!(logs.contains("count=984"), "{logs}");
        let many = vec!["A"; 100].join(", ");
        let logs = captured(|| assert_eq!(parse(many.as_bytes()).len(), MAX_CHALLENGES));
        assert!(logs.contains("too many authentication challenges"), "{logs}");
    }

    // -- random inputs ---------------------------------------------------------

    fn check_invariants(input: &[u8]) {
        let list = parse(input);
        assert!(list.len() <= MAX_CHALLENGES);
        for ch in &list {
            assert!(!ch.scheme().is_empty() && ch.scheme().bytes().all(is_tchar));
            assert!(ch.params().count() <= MAX_PARAMS);
            assert!(ch.token68().is_none() || ch.params().count() == 0);
            for (n, _) in ch.params() {
                assert!(!n.is_empty() && n.bytes().all(is_tchar));
            }
            if let Some(t) = ch.token68() {
                let body = t.trim_end_matches('=');
                assert!(!body.is_empty() && body.bytes().all(is_token68_char));
            }
        }
        if let Ok(creds) = parse_credentials(input) {
            // Whatever the strict parser accepts, the lenient one reads the same.
            assert_eq!(list, vec![creds], "{:?}", String::from_utf8_lossy(input));
        }
        if let Ok(params) = parse_params(input) {
            assert!(params.len() <= MAX_PARAMS);
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn random_inputs_keep_invariants() {
        const ALPHABET: &[u8] = b"aB9 \t,,==\"\"\\/+-.~!@\x01\xff\xc3\xa9xyz";
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let len = rng.below(48);
            let input: Vec<u8> = (0..len).map(|_| ALPHABET[rng.below(ALPHABET.len())]).collect();
            check_invariants(&input);
        }
    }
}
