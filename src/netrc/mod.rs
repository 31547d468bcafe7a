//! Opt-in `.netrc` support, as in curl and httpx's `NetRCAuth`.
//!
//! A `.netrc` file maps host names to credentials:
//!
//! ```text
//! # comments run to the end of the line
//! machine api.example.com login alice password "s3cret with spaces"
//! machine ftp.example.com
//!     login bob
//!     password hunter2
//! default login anonymous password guest@example.com
//! ```
//!
//! [`Netrc::find`] looks a host up: the first `machine` entry whose name equals
//! the host (ignoring ASCII case) wins, and the `default` entry applies only if
//! no machine matches, wherever it stands in the file. When the host comes from
//! a request, use [`Netrc::find_for_uri`], which takes it from [`Uri::host`]
//! only, so user info in a URI (`http://example.com:@evil.com/`) is never
//! mistaken for the host.
//!
//! # Grammar
//!
//! The grammar is curl's and Python's: tokens are separated by whitespace
//! (newlines are not significant), `#` at the start of a token starts a comment
//! that runs to the end of the line, and a token may be double-quoted
//! (`"with space \" escaped"`, with the escapes `\"`, `\\`, `\n`, `\r` and
//! `\t`; a quoted token ends at the end of its line). Keywords (ignoring ASCII
//! case) are `machine NAME`, `default`, `login VALUE`, `password VALUE`,
//! `account VALUE`, `port VALUE` (accepted and ignored) and `macdef NAME`,
//! whose body (from the next line up to an empty line) is skipped.
//! Within an entry a repeated field keeps its last value; of several `default`
//! entries the first counts. An unknown keyword, a field outside an entry and a
//! keyword without its value are syntax errors that give the line and column,
//! and never the text of the offending token, which may be part of a
//! password.
//!
//! # Security
//!
//! Reading `.netrc` is opt-in: nothing in this crate reads it unless asked to.
//! Passwords and accounts are held as [`Secret`]s, so `Debug` never shows
//! them. On Unix, [`Netrc::from_path`] logs a warning (naming the file, not
//! its content) when a file with a password is readable by its group or by
//! others.
//!
//! ```
//! use tower_auth::netrc::Netrc;
//!
//! let netrc = Netrc::parse(
//!     "machine api.example.com login alice password s3cret\n\
//!      default login anonymous password guest\n",
//! )?;
//!
//! let entry = netrc.find("API.example.com").unwrap();
//! assert_eq!(entry.login.as_deref(), Some("alice"));
//! assert_eq!(entry.password.as_ref().map(|p| p.expose()), Some("s3cret"));
//!
//! // Any other host gets the default entry.
//! let uri: http::Uri = "https://api.example.com:@other.example/".parse()?;
//! let entry = netrc.find_for_uri(&uri).unwrap();
//! assert_eq!(entry.login.as_deref(), Some("anonymous"));
//!
//! // Debug output never shows a password.
//! assert!(!format!("{netrc:?}").contains("s3cret"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::error::Error;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use http::Uri;

use crate::secret::Secret;

pub(crate) mod auth;

pub use auth::NetrcAuth;

/// The credentials of one `machine` (or the `default`) entry of a netrc file.
///
/// `Debug` shows the login but never the password or account.
#[derive(Clone, Debug, Default)]
pub struct NetrcEntry {
    /// The `login` (user name).
    pub login: Option<String>,
    /// The `password`.
    pub password: Option<Secret>,
    /// The `account` (an extra secret some FTP servers ask for).
    pub account: Option<Secret>,
}

#[derive(Clone, Debug)]
struct Record {
    /// `None` for the `default` entry.
    machine: Option<String>,
    entry: NetrcEntry,
}

/// A parsed netrc file. See the [module docs](self).
///
/// `Debug` shows machine names and logins, never passwords or accounts.
#[derive(Clone, Debug, Default)]
pub struct Netrc {
    records: Vec<Record>,
    path: Option<PathBuf>,
}

impl Netrc {
    /// Parses the text of a netrc file.
    ///
    /// # Errors
    ///
    /// A syntax error ([`NetrcError::is_syntax`]) with its line and column.
    pub fn parse(text: &str) -> Result<Netrc, NetrcError> {
        Netrc::parse_inner(text, None)
    }

    /// Parses the text of a netrc file read from `path`, which errors name.
    ///
    /// Unlike [`Netrc::from_path`], this does not read the file nor check its
    /// permissions.
    ///
    /// # Errors
    ///
    /// As [`Netrc::parse`], with the path in the error.
    pub fn parse_with_path(text: &str, path: impl Into<PathBuf>) -> Result<Netrc, NetrcError> {
        Netrc::parse_inner(text, Some(path.into()))
    }

    fn parse_inner(text: &str, path: Option<PathBuf>) -> Result<Netrc, NetrcError> {
        // A UTF-8 byte order mark (as some Windows editors write) is not a token.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        match parse_records(text) {
            Ok(records) => Ok(Netrc { records, path }),
            Err(SyntaxError { message, offset }) => {
                let (line, column) = line_column(text, offset);
                Err(NetrcError::syntax(message, line, column, path))
            }
        }
    }

    /// Reads and parses the netrc file at `path`.
    ///
    /// A missing or unreadable file is an error for which
    /// [`NetrcError::is_io`] is true; a file that is not UTF-8 is a syntax
    /// error. On Unix, if the file contains a password and is readable by its
    /// group or by others, a warning naming the file is logged with
    /// [`tracing::warn!`].
    ///
    /// # Errors
    ///
    /// A [`NetrcError`] naming the file: [`NetrcError::is_io`] if it cannot be
    /// read, [`NetrcError::is_syntax`] if it is malformed.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Netrc, NetrcError> {
        let path = path.as_ref();
        let io_err = |e| NetrcError::io(e, path);
        let mut file = fs::File::open(path).map_err(io_err)?;
        let metadata = file.metadata().map_err(io_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
                let (line, column) = line_column(valid, valid.len());
                return Err(NetrcError::syntax("the file is not valid UTF-8", line, column, Some(path.to_path_buf())));
            }
        };
        let netrc = Netrc::parse_with_path(text, path)?;
        if netrc.has_password() {
            warn_if_exposed(path, &metadata);
        }
        Ok(netrc)
    }

    /// Loads the netrc file from its default location.
    ///
    /// That is the file named by the `NETRC` environment variable if it is set
    /// and not empty (a leading `~` stands for the home directory), and only
    /// that one; otherwise `.netrc`, else `_netrc`, in the home directory
    /// (`HOME`; on Windows `USERPROFILE`, else `HOME`).
    ///
    /// Returns `Ok(None)` if there is no such file (a missing `$NETRC` file is
    /// also logged as a warning).
    ///
    /// # Errors
    ///
    /// A [`NetrcError`] if the file exists but cannot be read or parsed.
    pub fn from_default_location() -> Result<Option<Netrc>, NetrcError> {
        Netrc::from_default_location_with(|name| std::env::var_os(name))
    }

    /// [`Netrc::from_default_location`] with the environment given by `var`.
    fn from_default_location_with(var: impl Fn(&str) -> Option<OsString>) -> Result<Option<Netrc>, NetrcError> {
        let non_empty = |name: &str| var(name).filter(|value| !value.is_empty());
        let home = HOME_VARS.iter().find_map(|name| non_empty(name)).map(PathBuf::from);

        if let Some(explicit) = non_empty("NETRC") {
            let path = expand_tilde(PathBuf::from(explicit), home.as_deref());
            let found = Netrc::load_if_exists(&path)?;
            if found.is_none() {
                tracing::warn!(
                    path = %path.display(),
                    "the netrc file named by $NETRC does not exist"
                );
            }
            return Ok(found);
        }

        let Some(home) = home else {
            return Ok(None);
        };
        for name in [".netrc", "_netrc"] {
            if let Some(netrc) = Netrc::load_if_exists(&home.join(name))? {
                return Ok(Some(netrc));
            }
        }
        Ok(None)
    }

    fn load_if_exists(path: &Path) -> Result<Option<Netrc>, NetrcError> {
        match fs::metadata(path) {
            Ok(_) => Netrc::from_path(path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NetrcError::io(e, path)),
        }
    }

    /// The entry for `host`: the first `machine` whose name equals `host`,
    /// ignoring ASCII case, else the `default` entry, if any.
    ///
    /// The comparison is exact otherwise: no IDNA, no trailing-dot or IP
    /// address normalisation.
    pub fn find(&self, host: &str) -> Option<&NetrcEntry> {
        self.records
            .iter()
            .find(|r| r.machine.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(host)))
            .or_else(|| self.records.iter().find(|r| r.machine.is_none()))
            .map(|r| &r.entry)
    }

    /// The entry for the host of `uri` ([`Uri::host`], never its user info),
    /// with the brackets of an IPv6 literal removed (`machine ::1`), or
    /// `None` if the URI has no host.
    pub fn find_for_uri(&self, uri: &Uri) -> Option<&NetrcEntry> {
        let host = uri.host()?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() {
            return None;
        }
        self.find(host)
    }

    /// The `default` entry, if any (the first one).
    pub fn default_entry(&self) -> Option<&NetrcEntry> {
        self.records.iter().find(|r| r.machine.is_none()).map(|r| &r.entry)
    }

    /// The `machine` entries, in file order (duplicates included).
    pub fn machines(&self) -> impl Iterator<Item = (&str, &NetrcEntry)> {
        self.records.iter().filter_map(|r| r.machine.as_deref().map(|m| (m, &r.entry)))
    }

    /// The file this was read from, if known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn has_password(&self) -> bool {
        self.records.iter().any(|r| r.entry.password.is_some())
    }
}

#[cfg(windows)]
const HOME_VARS: &[&str] = &["USERPROFILE", "HOME"];
#[cfg(not(windows))]
const HOME_VARS: &[&str] = &["HOME"];

/// Replaces a leading `~` component by the home directory.
fn expand_tilde(path: PathBuf, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path,
    }
}

#[cfg(unix)]
fn warn_if_exposed(path: &Path, metadata: &fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = %format_args!("{:03o}", mode & 0o777),
            "netrc file with passwords is readable by group or others; restrict it with `chmod 600`"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path, _metadata: &fs::Metadata) {}

// ---------------------------------------------------------------------------
// Lexer and parser
// ---------------------------------------------------------------------------

struct SyntaxError {
    message: String,
    /// Byte offset into the text.
    offset: usize,
}

impl SyntaxError {
    fn new(message: impl Into<String>, offset: usize) -> Self {
        SyntaxError { message: message.into(), offset }
    }
}

struct Token<'a> {
    /// The raw text (between the quotes for a quoted token, unescaped later).
    raw: &'a str,
    quoted: bool,
    offset: usize,
}

impl Token<'_> {
    fn value(&self) -> String {
        if !self.quoted {
            return self.raw.to_owned();
        }
        let mut out = String::with_capacity(self.raw.len());
        let mut chars = self.raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        }
        out
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn next_token(&mut self) -> Result<Option<Token<'a>>, SyntaxError> {
        let bytes = self.text.as_bytes();
        loop {
            while self.pos < bytes.len() && is_space(bytes[self.pos]) {
                self.pos += 1;
            }
            if self.pos >= bytes.len() {
                return Ok(None);
            }
            if bytes[self.pos] == b'#' {
                self.skip_line();
                continue;
            }
            let start = self.pos;
            if bytes[start] == b'"' {
                let mut i = start + 1;
                loop {
                    match bytes.get(i) {
                        None | Some(b'\n') => {
                            return Err(SyntaxError::new(
                                "unterminated quoted token (a closing `\"` is missing on this line)",
                                start,
                            ));
                        }
                        Some(b'\\') if bytes.get(i + 1).is_some_and(|&b| b != b'\n') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                self.pos = i + 1;
                // `i` is at an ASCII quote, so these are char boundaries.
                return Ok(Some(Token { raw: &self.text[start + 1..i], quoted: true, offset: start }));
            }
            while self.pos < bytes.len() && !is_space(bytes[self.pos]) {
                self.pos += 1;
            }
            return Ok(Some(Token { raw: &self.text[start..self.pos], quoted: false, offset: start }));
        }
    }

    /// Moves past the end of the current line.
    fn skip_line(&mut self) {
        match self.text[self.pos..].find('\n') {
            Some(i) => self.pos += i + 1,
            None => self.pos = self.text.len(),
        }
    }

    /// Skips a `macdef` body: the rest of the current line, then every line up
    /// to and including an empty one (or the end of the text).
    fn skip_macro(&mut self) {
        self.skip_line();
        while self.pos < self.text.len() {
            let rest = &self.text[self.pos..];
            let line = rest.split('\n').next().unwrap_or(rest);
            self.skip_line();
            if line.is_empty() || line == "\r" {
                break;
            }
        }
    }
}

const KEYWORDS: &str = "machine, default, login, password, account, port or macdef";

fn parse_records(text: &str) -> Result<Vec<Record>, SyntaxError> {
    let mut lexer = Lexer { text, pos: 0 };
    let mut records: Vec<Record> = Vec::new();
    // Index of the entry that fields belong to.
    let mut current: Option<usize> = None;

    while let Some(token) = lexer.next_token()? {
        if token.quoted {
            return Err(SyntaxError::new(
                format!("expected a keyword ({KEYWORDS}), found a quoted token"),
                token.offset,
            ));
        }
        let keyword = ["machine", "default", "login", "password", "account", "port", "macdef"]
            .into_iter()
            .find(|k| k.eq_ignore_ascii_case(token.raw));
        let Some(keyword) = keyword else {
            // The token itself is not shown: it may be part of a password.
            return Err(SyntaxError::new(format!("unexpected token; expected a keyword ({KEYWORDS})"), token.offset));
        };
        let mut value = |what: &str| -> Result<String, SyntaxError> {
            match lexer.next_token()? {
                Some(v) => Ok(v.value()),
                None => Err(SyntaxError::new(format!("`{keyword}` without {what}"), token.offset)),
            }
        };
        match keyword {
            "machine" => {
                let name = value("a host name")?;
                records.push(Record { machine: Some(name), entry: NetrcEntry::default() });
                current = Some(records.len() - 1);
            }
            "default" => {
                records.push(Record { machine: None, entry: NetrcEntry::default() });
                current = Some(records.len() - 1);
            }
            "macdef" => {
                value("a macro name")?;
                lexer.skip_macro();
                current = None;
            }
            field => {
                let Some(index) = current else {
                    return Err(SyntaxError::new(
                        format!("`{field}` outside a `machine` or `default` entry"),
                        token.offset,
                    ));
                };
                let v = value("a value")?;
                let entry = &mut records[index].entry;
                match field {
                    "login" => entry.login = Some(v),
                    "password" => entry.password = Some(Secret::new(v)),
                    "account" => entry.account = Some(Secret::new(v)),
                    _ => {} // `port`: accepted and ignored.
                }
            }
        }
    }
    Ok(records)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a netrc file could not be loaded.
///
/// `Display` says what is wrong, the file's path if known, and for a syntax
/// error its line and column (1-based, columns counted in characters). It
/// never contains a password nor any other token of the file. For an I/O
/// error the cause is the [`source`](Error::source).
#[derive(Debug)]
pub struct NetrcError {
    kind: ErrorKind,
    path: Option<PathBuf>,
}

#[derive(Debug)]
enum ErrorKind {
    Io(io::Error),
    Syntax { message: String, line: usize, column: usize },
}

impl NetrcError {
    fn io(error: io::Error, path: &Path) -> Self {
        NetrcError { kind: ErrorKind::Io(error), path: Some(path.to_path_buf()) }
    }

    fn syntax(message: impl Into<String>, line: usize, column: usize, path: Option<PathBuf>) -> Self {
        NetrcError { kind: ErrorKind::Syntax { message: message.into(), line, column }, path }
    }

    /// Whether the file could not be read (missing, unreadable, a directory).
    pub fn is_io(&self) -> bool {
        matches!(self.kind, ErrorKind::Io(_))
    }

    /// Whether the file's content is malformed.
    pub fn is_syntax(&self) -> bool {
        matches!(self.kind, ErrorKind::Syntax { .. })
    }

    /// The file's path, if known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The 1-based line of a syntax error.
    pub fn line(&self) -> Option<usize> {
        match self.kind {
            ErrorKind::Syntax { line, .. } => Some(line),
            ErrorKind::Io(_) => None,
        }
    }

    /// The 1-based column (in characters) of a syntax error.
    pub fn column(&self) -> Option<usize> {
        match self.kind {
            ErrorKind::Syntax { column, .. } => Some(column),
            ErrorKind::Io(_) => None,
        }
    }
}

impl fmt::Display for NetrcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Io(_) => {
                f.write_str("cannot read netrc file")?;
                if let Some(path) = &self.path {
                    write!(f, " {}", path.display())?;
                }
                Ok(())
            }
            ErrorKind::Syntax { message, line, column } => {
                f.write_str("netrc syntax error")?;
                if let Some(path) = &self.path {
                    write!(f, " in {}", path.display())?;
                }
                write!(f, " at line {line}, column {column}: {message}")
            }
        }
    }
}

impl Error for NetrcError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            ErrorKind::Syntax { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn parse(text: &str) -> Netrc {
        Netrc::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> NetrcError {
        match Netrc::parse(text) {
            Ok(netrc) => panic!("parsed: {netrc:?}"),
            Err(e) => e,
        }
    }

    fn login<'a>(netrc: &'a Netrc, host: &str) -> Option<&'a str> {
        netrc.find(host)?.login.as_deref()
    }

    fn password<'a>(netrc: &'a Netrc, host: &str) -> Option<&'a str> {
        netrc.find(host)?.password.as_ref().map(Secret::expose)
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn single_line_entry() {
        let n = parse("machine example.com login alice password s3cret");
        assert_eq!(login(&n, "example.com"), Some("alice"));
        assert_eq!(password(&n, "example.com"), Some("s3cret"));
        assert!(n.find("example.org").is_none());
        assert!(n.path().is_none());
    }

    #[test]
    fn multi_line_entries_and_account() {
        let n = parse(
            "machine a.example\n  login alice\n  password pa\n  account acct\n\n\
             machine b.example\n\tlogin bob\n\tpassword pb\n",
        );
        assert_eq!(login(&n, "a.example"), Some("alice"));
        let a = n.find("a.example").unwrap();
        assert_eq!(a.account.as_ref().map(Secret::expose), Some("acct"));
        assert_eq!(password(&n, "b.example"), Some("pb"));
        assert!(n.find("b.example").unwrap().account.is_none());
        let names: Vec<_> = n.machines().map(|(m, _)| m).collect();
        assert_eq!(names, ["a.example", "b.example"]);
    }

    #[test]
    fn newlines_are_not_significant() {
        let n = parse("machine\nexample.com\nlogin\nalice\npassword\ns3cret");
        assert_eq!(login(&n, "example.com"), Some("alice"));
        assert_eq!(password(&n, "example.com"), Some("s3cret"));
    }

    #[test]
    fn crlf_line_endings() {
        let n = parse("machine a.example\r\nlogin alice\r\npassword p\r\n");
        assert_eq!(password(&n, "a.example"), Some("p"));
        let n = parse("macdef init\r\ncd /\r\n\r\nmachine a.example login x\r\n");
        assert_eq!(login(&n, "a.example"), Some("x"));
    }

    #[test]
    fn host_lookup_ignores_case_only() {
        let n = parse("machine Example.COM login alice");
        assert_eq!(login(&n, "example.com"), Some("alice"));
        assert_eq!(login(&n, "EXAMPLE.com"), Some("alice"));
        assert!(n.find("example.com.").is_none());
        assert!(n.find("www.example.com").is_none());
        assert!(n.find("xample.com").is_none());
    }

    #[test]
    fn first_matching_machine_wins() {
        let n = parse("machine a.example login first\nmachine A.EXAMPLE login second\n");
        assert_eq!(login(&n, "a.example"), Some("first"));
    }

    #[test]
    fn repeated_field_keeps_last_value() {
        let n = parse("machine a.example login one login two password p");
        assert_eq!(login(&n, "a.example"), Some("two"));
    }

    #[test]
    fn default_applies_only_without_matching_machine() {
        let n = parse("machine a.example login alice\ndefault login anon password guest\n");
        assert_eq!(login(&n, "a.example"), Some("alice"));
        assert_eq!(login(&n, "b.example"), Some("anon"));
        assert_eq!(password(&n, "b.example"), Some("guest"));
        assert_eq!(n.default_entry().unwrap().login.as_deref(), Some("anon"));
    }

    #[test]
    fn default_before_machine() {
        let n = parse("default login anon password guest\nmachine a.example login alice password pa\n");
        assert_eq!(login(&n, "a.example"), Some("alice"));
        assert_eq!(password(&n, "a.example"), Some("pa"));
        assert_eq!(login(&n, "other.example"), Some("anon"));
        // The machine's fields don't leak into the default entry, nor back.
        assert_eq!(password(&n, "other.example"), Some("guest"));
    }

    #[test]
    fn first_default_counts() {
        let n = parse("default login one\ndefault login two\n");
        assert_eq!(login(&n, "x"), Some("one"));
    }

    #[test]
    fn machine_without_fields_still_matches() {
        let n = parse("machine a.example\ndefault login anon\n");
        let entry = n.find("a.example").unwrap();
        assert!(entry.login.is_none() && entry.password.is_none());
    }

    #[test]
    fn comments() {
        let n = parse(
            "# leading comment\n\
             machine a.example # trailing comment login nope\n\
             login alice # password nope\n\
             password p#notacomment\n\
             #machine b.example login bob\n",
        );
        assert_eq!(login(&n, "a.example"), Some("alice"));
        assert_eq!(password(&n, "a.example"), Some("p#notacomment"));
        assert!(n.find("b.example").is_none());
        assert!(parse("").find("a").is_none());
        assert!(parse("# only a comment").find("a").is_none());
    }

    #[test]
    fn quoted_tokens() {
        let n = parse(r#"machine "a.example" login "alice smith" password "with space \" escaped \\ \n\r\t \x""#);
        assert_eq!(login(&n, "a.example"), Some("alice smith"));
        assert_eq!(password(&n, "a.example"), Some("with space \" escaped \\ \n\r\t x"));
        let n = parse(r##"machine a login "" password "#""##);
        assert_eq!(login(&n, "a"), Some(""));
        assert_eq!(password(&n, "a"), Some("#"));
        // Quotes inside an unquoted token are literal.
        let n = parse(r#"machine a password pa"ss"#);
        assert_eq!(password(&n, "a"), Some(r#"pa"ss"#));
        // Non-ASCII tokens.
        let n = parse("machine a login jörg password \"pässwörd ✓\"");
        assert_eq!(password(&n, "a"), Some("pässwörd ✓"));
    }

    #[test]
    fn macdef_is_skipped() {
        let n = parse(
            "machine a.example login alice\n\
             macdef init\n\
             machine evil.example login mallory\n\
             password nope\n\
             \n\
             machine b.example login bob\n",
        );
        assert_eq!(login(&n, "a.example"), Some("alice"));
        assert!(n.find("evil.example").is_none());
        assert_eq!(login(&n, "b.example"), Some("bob"));
        // A macro at the end of the file needs no empty line.
        let n = parse("machine a login x\nmacdef m\ncd /\nls");
        assert_eq!(login(&n, "a"), Some("x"));
        // An empty macro.
        let n = parse("macdef m\n\nmachine a login x");
        assert_eq!(login(&n, "a"), Some("x"));
    }

    #[test]
    fn macdef_ends_the_entry() {
        let e = parse_err("machine a login x\nmacdef m\ncd /\n\nlogin y\n");
        assert!(e.is_syntax());
        assert_eq!((e.line(), e.column()), (Some(5), Some(1)));
    }

    #[test]
    fn port_is_accepted_and_ignored() {
        let n = parse("machine a.example port 8080 login alice");
        assert_eq!(login(&n, "a.example"), Some("alice"));
    }

    #[test]
    fn keywords_ignore_case() {
        let n = parse("MACHINE a.example Login alice PASSWORD p\nDEFAULT login anon");
        assert_eq!(password(&n, "a.example"), Some("p"));
        assert_eq!(login(&n, "zzz"), Some("anon"));
    }

    #[test]
    fn unknown_keyword_error_has_position_but_no_token() {
        let e = parse_err("machine a.example\n  login alice\n  password my secret\n");
        assert!(e.is_syntax() && !e.is_io());
        assert_eq!((e.line(), e.column()), (Some(3), Some(15)));
        let msg = e.to_string();
        assert!(msg.contains("line 3, column 15"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
        assert!(e.source().is_none());
    }

    #[test]
    fn missing_values_are_errors() {
        let e = parse_err("machine a.example\nlogin");
        assert_eq!((e.line(), e.column()), (Some(2), Some(1)));
        assert!(e.to_string().contains("`login` without a value"), "{e}");
        let e = parse_err("machine a password");
        assert!(e.to_string().contains("`password` without a value"), "{e}");
        let e = parse_err("  machine");
        assert_eq!((e.line(), e.column()), (Some(1), Some(3)));
        assert!(e.to_string().contains("host name"), "{e}");
        let e = parse_err("machine a\nmacdef");
        assert!(e.to_string().contains("macro name"), "{e}");
    }

    #[test]
    fn fields_outside_entries_are_errors() {
        let e = parse_err("login alice password p\nmachine a");
        assert_eq!((e.line(), e.column()), (Some(1), Some(1)));
        assert!(e.to_string().contains("outside"), "{e}");
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let e = parse_err("machine a\npassword \"abc\nlogin x\n");
        assert_eq!((e.line(), e.column()), (Some(2), Some(10)));
        assert!(!e.to_string().contains("abc"), "{e}");
        let e = parse_err("machine a password \"abc\\");
        assert!(e.is_syntax());
    }

    #[test]
    fn quoted_keyword_is_an_error() {
        let e = parse_err("\"machine\" a");
        assert!(e.is_syntax());
    }

    #[test]
    fn column_counts_characters() {
        let e = parse_err("machine é login x\n  ünknown");
        assert_eq!((e.line(), e.column()), (Some(2), Some(3)));
        let e = parse_err("machine é bogus");
        assert_eq!((e.line(), e.column()), (Some(1), Some(11)));
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let n = parse("\u{feff}machine a login x");
        assert_eq!(login(&n, "a"), Some("x"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let n = parse("machine a login alice password s3cret account acc0unt\ndefault password d3fault");
        let dbg = format!("{n:?} {:?}", n.find("a").unwrap());
        assert!(!dbg.contains("s3cret") && !dbg.contains("acc0unt") && !dbg.contains("d3fault"));
        assert!(dbg.contains("alice") && dbg.contains("redacted"), "{dbg}");
    }

    #[test]
    fn find_for_uri_uses_only_the_host() {
        let n = parse("machine example.com login victim password topsecret\nmachine evil.com login attacker");
        let entry = n.find_for_uri(&uri("http://example.com:@evil.com/")).unwrap();
        assert_eq!(entry.login.as_deref(), Some("attacker"));
        let entry = n.find_for_uri(&uri("http://evil.com@example.com/")).unwrap();
        assert_eq!(entry.login.as_deref(), Some("victim"));
        assert_eq!(n.find_for_uri(&uri("https://EXAMPLE.com:8443/x?y")).unwrap().login.as_deref(), Some("victim"));
        assert!(n.find_for_uri(&uri("/relative")).is_none());
        assert!(n.find_for_uri(&uri("http://other.example/")).is_none());
    }

    #[test]
    fn find_for_uri_ipv6_and_default() {
        let n = parse("machine ::1 login local\ndefault login anon");
        assert_eq!(n.find_for_uri(&uri("http://[::1]:8080/")).unwrap().login.as_deref(), Some("local"));
        assert_eq!(n.find_for_uri(&uri("http://x.example/")).unwrap().login.as_deref(), Some("anon"));
        // No host, no default either.
        assert!(n.find_for_uri(&uri("/relative")).is_none());
    }

    #[test]
    fn parse_with_path_names_the_file_in_errors() {
        let e = Netrc::parse_with_path("machine a\nbogus", "/home/u/.netrc").unwrap_err();
        assert_eq!(e.path(), Some(Path::new("/home/u/.netrc")));
        assert_eq!(
            e.to_string(),
            "netrc syntax error in /home/u/.netrc at line 2, column 1: \
             unexpected token; expected a keyword \
             (machine, default, login, password, account, port or macdef)"
        );
        let n = Netrc::parse_with_path("machine a", "/x").unwrap();
        assert_eq!(n.path(), Some(Path::new("/x")));
    }

    #[test]
    fn types_are_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Netrc>();
        check::<NetrcEntry>();
        check::<NetrcError>();
    }

    fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(content).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        path
    }

    #[test]
    fn from_path_reads_and_records_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "netrc", b"machine a login alice password p\n");
        let n = Netrc::from_path(&path).unwrap();
        assert_eq!(login(&n, "a"), Some("alice"));
        assert_eq!(n.path(), Some(path.as_path()));
    }

    #[test]
    fn from_path_missing_file_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let e = Netrc::from_path(&path).unwrap_err();
        assert!(e.is_io() && !e.is_syntax());
        assert_eq!(e.path(), Some(path.as_path()));
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        let source = e.source().unwrap().downcast_ref::<io::Error>().unwrap();
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert_eq!((e.line(), e.column()), (None, None));
    }

    #[test]
    fn from_path_directory_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Netrc::from_path(dir.path()).unwrap_err();
        assert!(e.is_io(), "{e}");
    }

    #[test]
    fn from_path_syntax_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "netrc", b"machine a\n\n  login\n");
        let e = Netrc::from_path(&path).unwrap_err();
        assert!(e.is_syntax());
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("line 3, column 3"), "{msg}");
    }

    #[test]
    fn from_path_invalid_utf8_is_syntax_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "netrc", b"machine a\nlogin x password \xff\xfe\n");
        let e = Netrc::from_path(&path).unwrap_err();
        assert!(e.is_syntax());
        assert_eq!((e.line(), e.column()), (Some(2), Some(18)));
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn permission_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let with_password = write_file(dir.path(), "a", b"machine a login x password s3cret\n");
        let without_password = write_file(dir.path(), "b", b"machine a login x\n");

        // 0600: no warning.
        let events = capture::warnings(|| {
            Netrc::from_path(&with_password).unwrap();
        });
        assert!(events.is_empty(), "{events:?}");

        // Group- or world-readable with a password: one warning, with the path.
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&with_password, fs::Permissions::from_mode(mode)).unwrap();
            let events = capture::warnings(|| {
                Netrc::from_path(&with_password).unwrap();
            });
            assert_eq!(events.len(), 1, "{mode:o}: {events:?}");
            let text = &events[0];
            assert!(text.contains(&with_password.display().to_string()), "{text}");
            assert!(text.contains(&format!("{mode:o}")), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }

        // Readable by others but without a password: no warning.
        fs::set_permissions(&without_password, fs::Permissions::from_mode(0o644)).unwrap();
        let events = capture::warnings(|| {
            Netrc::from_path(&without_password).unwrap();
        });
        assert!(events.is_empty(), "{events:?}");
    }

    /// A fake environment for `from_default_location_with`.
    ///
    /// The process environment is not modified: `std::env::set_var` is
    /// `unsafe` (edition 2024) and this crate forbids unsafe code. The real
    /// environment is exercised in a child process instead
    /// (`default_location_from_real_env`).
    fn env(vars: &[(&str, &Path)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> =
            vars.iter().map(|(k, v)| (k.to_string(), v.as_os_str().to_owned())).collect();
        move |name| map.get(name).cloned()
    }

    const HOME: &str = HOME_VARS[0];

    fn found_login(result: Result<Option<Netrc>, NetrcError>) -> Option<String> {
        let netrc = result.unwrap()?;
        Some(netrc.find("a")?.login.clone().unwrap_or_default())
    }

    #[test]
    fn default_location_prefers_netrc_env() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = write_file(dir.path(), "custom", b"machine a login from-env\n");
        write_file(dir.path(), ".netrc", b"machine a login from-home\n");
        let result = Netrc::from_default_location_with(env(&[("NETRC", &explicit), (HOME, dir.path())]));
        let netrc = result.unwrap().unwrap();
        assert_eq!(netrc.path(), Some(explicit.as_path()));
        assert_eq!(login(&netrc, "a"), Some("from-env"));
    }

    #[test]
    fn default_location_missing_netrc_env_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), ".netrc", b"machine a login from-home\n");
        let missing = dir.path().join("missing");
        let events = capture::warnings(|| {
            let result = Netrc::from_default_location_with(env(&[("NETRC", &missing), (HOME, dir.path())]));
            assert_eq!(found_login(result), None);
        });
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].contains("missing"), "{events:?}");
    }

    #[test]
    fn default_location_netrc_env_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write_file(dir.path(), "bad", b"machine a bogus\n");
        let e = Netrc::from_default_location_with(env(&[("NETRC", &bad)])).unwrap_err();
        assert!(e.is_syntax());
        assert_eq!(e.path(), Some(bad.as_path()));
    }

    #[test]
    fn default_location_empty_netrc_env_falls_back_to_home() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), ".netrc", b"machine a login from-home\n");
        let result = Netrc::from_default_location_with(env(&[("NETRC", Path::new("")), (HOME, dir.path())]));
        assert_eq!(found_login(result).as_deref(), Some("from-home"));
    }

    #[test]
    fn default_location_expands_tilde() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "custom", b"machine a login tilde\n");
        let result = Netrc::from_default_location_with(env(&[("NETRC", Path::new("~/custom")), (HOME, dir.path())]));
        assert_eq!(found_login(result).as_deref(), Some("tilde"));
    }

    #[test]
    fn default_location_home_files() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        // Neither file.
        assert_eq!(found_login(Netrc::from_default_location_with(env(&[(HOME, home)]))), None);
        // Only `_netrc`.
        write_file(home, "_netrc", b"machine a login underscore\n");
        let result = Netrc::from_default_location_with(env(&[(HOME, home)]));
        assert_eq!(found_login(result).as_deref(), Some("underscore"));
        // Both: `.netrc` wins.
        write_file(home, ".netrc", b"machine a login dot\n");
        let result = Netrc::from_default_location_with(env(&[(HOME, home)]));
        assert_eq!(found_login(result).as_deref(), Some("dot"));
        // No home directory at all.
        assert_eq!(found_login(Netrc::from_default_location_with(env(&[]))), None);
    }

    #[test]
    fn default_location_unreadable_home_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(".netrc")).unwrap();
        let e = Netrc::from_default_location_with(env(&[(HOME, dir.path())])).unwrap_err();
        assert!(e.is_io(), "{e}");
    }

    /// Runs `from_default_location` against the real process environment, in
    /// a child process (this test binary) whose environment sets `NETRC`.
    #[test]
    fn default_location_from_real_env() {
        const CHILD: &str = "TOWER_AUTH_NETRC_TEST_CHILD";
        if let Some(expected) = std::env::var_os(CHILD) {
            let netrc = Netrc::from_default_location().unwrap().unwrap();
            assert_eq!(netrc.path().map(Path::as_os_str), Some(expected.as_os_str()));
            assert_eq!(login(&netrc, "a"), Some("child"));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "netrc", b"machine a login child\n");
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let name = format!("{module}::default_location_from_real_env");
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &name, "--nocapture", "--test-threads=1"])
            .env("NETRC", &path)
            .env(CHILD, &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("1 passed"), "the child ran no test: {stdout}");
    }

    /// A minimal `tracing` subscriber that records WARN events as text.
    mod capture {
        use std::fmt::Write as _;
        use std::sync::{Arc, Mutex};
        use tracing::field::{Field, Visit};
        use tracing::span::{Attributes, Id, Record};
        use tracing::subscriber::Interest;
        use tracing::{Event, Level, Metadata, Subscriber};

        struct Capture(Arc<Mutex<Vec<String>>>);

        struct Text(String);

        impl Visit for Text {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                let _ = write!(self.0, " {}={:?}", field.name(), value);
            }
        }

        impl Subscriber for Capture {
            fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
                Interest::sometimes()
            }
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, event: &Event<'_>) {
                if *event.metadata().level() == Level::WARN {
                    let mut text = Text(String::new());
                    event.record(&mut text);
                    self.0.lock().unwrap().push(text.0);
                }
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }

        /// Runs `f` and returns the WARN events it logged on this thread.
        pub(super) fn warnings(f: impl FnOnce()) -> Vec<String> {
            let events = Arc::new(Mutex::new(Vec::new()));
            tracing::subscriber::with_default(Capture(Arc::clone(&events)), f);
            let events = events.lock().unwrap();
            events.clone()
        }
    }
}
