//! [`FileStore`]: tokens in a JSON file that survives restarts and that several processes share.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{FlockOperation, OFlags};
use serde::{Deserialize, Serialize};

use super::store::{CacheKey, StoreFuture, StoredToken, TokenStore};
use crate::error::{BoxError, ConfigError};
use crate::secret::Secret;

/// The format version this code reads and writes.
const VERSION: u64 = 1;
/// A file larger than this is not a token cache: treated as corrupt.
const MAX_FILE: u64 = 16 << 20;
/// How long an entry whose access token expired is kept for its refresh token.
const REFRESH_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a read or write waits for the lock by default.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Tokens kept in a JSON file: they survive restarts, and several providers (one entry per
/// [`CacheKey`]) and several processes share one file. The counterpart of requests_auth's
/// `JsonTokenFileCache`, without its torn files. Unix only.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_auth::oauth2::{FileStore, TokenProvider};
/// # use std::sync::atomic::{AtomicUsize, Ordering};
/// # use bytes::Bytes;
/// # use http_body_util::Full;
/// # static REQUESTS: AtomicUsize = AtomicUsize::new(0);
/// # let idp = tower::service_fn(|_req: http::Request<Full<Bytes>>| async move {
/// #     REQUESTS.fetch_add(1, Ordering::SeqCst);
/// #     let body = r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600}"#;
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
/// # });
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("tokens.json");
/// let provider = TokenProvider::client_credentials("https://idp.example/token", "svc-a", "s3cret")
///     .store(FileStore::new(&path)?)
///     .build(idp.clone())?;
/// provider.token().await?;
/// # while !path.exists() { tokio::time::sleep(std::time::Duration::from_millis(5)).await }
/// drop(provider);
///
/// // The token is in the file (mode 0600) ...
/// use std::os::unix::fs::PermissionsExt;
/// assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
///
/// // ... so a provider with the same configuration, as after a restart, sends no token request.
/// let provider = TokenProvider::client_credentials("https://idp.example/token", "svc-a", "s3cret")
///     .store(FileStore::new(&path)?)
///     .build(idp)?;
/// assert_eq!(provider.token().await?.header_value(), "Bearer at-1");
/// assert_eq!(provider.stats().token_requests(), 0);
/// # assert_eq!(REQUESTS.load(Ordering::SeqCst), 1);
/// # Ok(()) }
/// ```
///
/// # The file
///
/// ```json
/// {
///   "version": 1,
///   "tokens": {
///     "<CacheKey::as_str()>": {
///       "access_token": "…",
///       "expires_at": 1767225600,
///       "refresh_token": "…"
///     }
///   }
/// }
/// ```
///
/// `expires_at` is in Unix seconds; `refresh_token` is there only when the server sent one.
///
/// - **Writes** read the file, change one entry, drop entries that expired (an entry with a
///   refresh token is kept 30 days past its access token's expiry), and write the whole file to
///   a temporary file in the same directory (mode 0600), which is synced and renamed over the
///   file; then the directory is synced. A reader sees the old file or the new one, never a torn
///   one, and a crash leaves one of the two.
/// - **Locks**: writes hold an exclusive advisory lock (`flock`) on `<path>.lock` (mode 0600)
///   from the read to the rename, so processes sharing the file never lose each other's
///   entries; reads hold a shared one. A lock held by someone else for longer than the
///   [lock timeout](FileStore::lock_timeout) (default 10 s) gives an error rather than a hang.
/// - **Bad input**: a file that is not JSON, has another `version`, or is larger than 16 MiB is
///   reported (a `tracing` warning naming the path, never the content), read as empty, and
///   replaced by the next write. An entry that does not parse is dropped the same way. A file
///   that cannot be read gives a [`FileStoreError`]: the provider logs it and keeps its token
///   in memory.
///
/// File IO runs on tokio's blocking pool (`spawn_blocking`), never on the runtime's threads.
///
/// # Security
///
/// The file holds bearer tokens and refresh tokens in clear text: anyone who can read it can
/// act as the client until they expire. So the store refuses, with a [`ConfigError`] from
/// [`FileStore::new`] or a [`FileStoreError`] from a later read or write:
///
/// - a path that is a symbolic link (the file is opened with `O_NOFOLLOW`, so a link made
///   after `new` is refused too);
/// - something that is not a regular file;
/// - a file (or lock file) that its group or others may read or write (`mode & 0o077 != 0`):
///   `chmod 600` it;
/// - a file (or lock file) owned by another user than the process's effective user.
///
/// Files it creates are mode 0600. No token or refresh token appears in an error, in `Debug`
/// output or in a log line; a parse error is logged by line and column only. The store does
/// not check the directory: put the file in a directory that only its user may write to (a
/// directory others may write to lets them delete or replace the file, though not read it).
/// Advisory locks hold between processes that take them, on a local file system; on NFS,
/// `flock` may not be shared between machines.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    lock: PathBuf,
    dir: PathBuf,
    name: String,
    lock_timeout: Duration,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore").field("path", &self.inner.path).finish()
    }
}

impl FileStore {
    /// A store in the file at `path`, created at the first write if it does not exist (its
    /// directory must).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the directory does not exist, or if the file or its lock file
    /// (`<path>.lock`) exists and is a symbolic link, not a regular file, readable or writable
    /// by group or others, or owned by another user.
    pub fn new(path: impl AsRef<Path>) -> Result<FileStore, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let name = path
            .file_name()
            .ok_or_else(|| ConfigError::new(format!("token cache {}: not a file name", path.display())))?
            .to_string_lossy()
            .into_owned();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ConfigError::new(format!(
                    "token cache {}: {} is not a directory",
                    path.display(),
                    dir.display()
                )));
            }
            Err(e) => {
                return Err(ConfigError::new(format!(
                    "token cache {}: its directory {} cannot be used: {e}",
                    path.display(),
                    dir.display()
                )));
            }
        }
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        let lock = PathBuf::from(lock);
        for p in [&path, &lock] {
            match fs::symlink_metadata(p) {
                Ok(meta) => check(p, &meta).map_err(|e| ConfigError::new(e.to_string()))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ConfigError::new(FileStoreError::io(p, "inspect", e).to_string())),
            }
        }
        Ok(FileStore { inner: Arc::new(Inner { path, lock, dir, name, lock_timeout: LOCK_TIMEOUT }) })
    }

    /// How long a read or write waits for another process's lock before it fails
    /// (default 10 s).
    pub fn lock_timeout(self, timeout: Duration) -> FileStore {
        let inner = &self.inner;
        FileStore {
            inner: Arc::new(Inner {
                path: inner.path.clone(),
                lock: inner.lock.clone(),
                dir: inner.dir.clone(),
                name: inner.name.clone(),
                lock_timeout: timeout,
            }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The token stored under `key` (a [`CacheKey::as_str`]), reading the file now on this
    /// thread: for tools and tests. Providers use the [`TokenStore`] methods, which run this
    /// on tokio's blocking pool.
    ///
    /// # Errors
    ///
    /// A [`FileStoreError`] if the file cannot be read or is refused (see [Security](#security)).
    /// A corrupt file is not an error: it reads as empty.
    pub fn load_blocking(&self, key: &str) -> Result<Option<StoredToken>, FileStoreError> {
        let inner = &self.inner;
        let _lock = inner.lock(false)?;
        let tokens = inner.read()?;
        Ok(tokens.get(key).and_then(Entry::to_stored))
    }

    /// Stores `token` under `key` (a [`CacheKey::as_str`]), writing the file now on this thread:
    /// for tools and tests. Providers use the [`TokenStore`] methods, which run this on tokio's
    /// blocking pool.
    ///
    /// # Errors
    ///
    /// A [`FileStoreError`] if the file cannot be read or written, or is refused (see
    /// [Security](#security)). A corrupt file is not an error: it is replaced.
    pub fn save_blocking(&self, key: &str, token: &StoredToken) -> Result<(), FileStoreError> {
        let inner = &self.inner;
        let _lock = inner.lock(true)?;
        let mut tokens = inner.read()?;
        tokens.insert(key.to_owned(), Entry::from_stored(token));
        let now = unix_seconds(super::store::wall_now());
        tokens.retain(|k, e| k == key || e.keep(now));
        inner.write(&tokens)
    }
}

impl TokenStore for FileStore {
    fn load<'a>(&'a self, key: &'a CacheKey) -> StoreFuture<'a, Option<StoredToken>> {
        let this = self.clone();
        let key = key.as_str().to_owned();
        Box::pin(async move {
            let result = tokio::task::spawn_blocking(move || this.load_blocking(&key)).await;
            Ok(result.map_err(|e| task_failed(&e))??)
        })
    }

    fn save<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken) -> StoreFuture<'a, ()> {
        let this = self.clone();
        let key = key.as_str().to_owned();
        let token = token.clone();
        Box::pin(async move {
            let result = tokio::task::spawn_blocking(move || this.save_blocking(&key, &token)).await;
            Ok(result.map_err(|e| task_failed(&e))??)
        })
    }
}

fn task_failed(e: &tokio::task::JoinError) -> BoxError {
    let what = if e.is_panic() { "panicked" } else { "was cancelled" };
    format!("the token cache's file task {what}").into()
}

/// The flags every open of ours uses: never follow a link, never block on a FIFO.
fn open_flags() -> i32 {
    (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32
}

/// Refuses what must not hold tokens: a link, not a file, open to others, another user's.
fn check(path: &Path, meta: &fs::Metadata) -> Result<(), FileStoreError> {
    let refuse = |why| Err(FileStoreError { path: path.to_path_buf(), kind: Kind::Refused(why) });
    if meta.file_type().is_symlink() {
        return refuse(Refusal::Symlink);
    }
    if !meta.is_file() {
        return refuse(Refusal::NotAFile);
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(Refusal::Owner { owner: meta.uid(), me });
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return refuse(Refusal::Mode(mode & 0o777));
    }
    Ok(())
}

/// An error of the open that may mean a symbolic link (`O_NOFOLLOW` gives `ELOOP`).
fn open_error(path: &Path, what: &'static str, e: io::Error) -> FileStoreError {
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        return FileStoreError { path: path.to_path_buf(), kind: Kind::Refused(Refusal::Symlink) };
    }
    FileStoreError::io(path, what, e)
}

impl Inner {
    /// The lock file, locked shared or exclusive; the lock goes with the returned file.
    /// A reader that may not create the lock file (a read-only directory) reads unlocked:
    /// writes are atomic renames, so it still never sees a torn file.
    fn lock(&self, exclusive: bool) -> Result<Option<File>, FileStoreError> {
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(open_flags())
            .open(&self.lock);
        let file = match opened {
            Ok(file) => file,
            Err(e)
                if !exclusive
                    && matches!(e.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem) =>
            {
                tracing::debug!(path = %self.lock.display(), "token cache lock file not writable; reading without the lock");
                return Ok(None);
            }
            Err(e) => return Err(open_error(&self.lock, "open the lock file", e)),
        };
        let meta = file.metadata().map_err(|e| FileStoreError::io(&self.lock, "inspect", e))?;
        check(&self.lock, &meta)?;
        let op =
            if exclusive { FlockOperation::NonBlockingLockExclusive } else { FlockOperation::NonBlockingLockShared };
        let deadline = Instant::now() + self.lock_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match rustix::fs::flock(&file, op) {
                Ok(()) => return Ok(Some(file)),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(FileStoreError {
                            path: self.lock.clone(),
                            kind: Kind::LockTimeout(self.lock_timeout),
                        });
                    }
                    // Jittered, growing pauses, so that waiters do not wake in step.
                    let nap = pause.mul_f64(0.5 + rand::random::<f64>());
                    std::thread::sleep(nap.min(deadline - now));
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(e) => return Err(FileStoreError::io(&self.lock, "lock", e.into())),
            }
        }
    }

    /// The entries in the file: none if it does not exist or is corrupt (logged).
    fn read(&self) -> Result<BTreeMap<String, Entry>, FileStoreError> {
        let path = &self.path;
        let opened = OpenOptions::new().read(true).custom_flags(open_flags()).open(path);
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(open_error(path, "open", e)),
        };
        let meta = file.metadata().map_err(|e| FileStoreError::io(path, "inspect", e))?;
        check(path, &meta)?;
        let mut bytes = Vec::with_capacity(meta.len().min(MAX_FILE) as usize);
        file.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(|e| FileStoreError::io(path, "read", e))?;
        if bytes.len() as u64 > MAX_FILE {
            tracing::warn!(path = %path.display(), max_bytes = MAX_FILE, "the token cache file is too large to be one; ignored, and replaced on the next write");
            return Ok(BTreeMap::new());
        }
        Ok(parse(path, &bytes))
    }

    /// Writes `tokens` to a temporary file, syncs it, renames it over the file, syncs the
    /// directory.
    fn write(&self, tokens: &BTreeMap<String, Entry>) -> Result<(), FileStoreError> {
        let doc = FileOut { version: VERSION, tokens };
        let mut bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| FileStoreError::io(&self.path, "encode", io::Error::other(e.to_string())))?;
        bytes.push(b'\n');
        let (tmp, mut file) = self.temp_file()?;
        let written = (|| {
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(&bytes)?;
            file.sync_all()
        })();
        drop(file);
        let renamed = written
            .map_err(|e| FileStoreError::io(&tmp, "write", e))
            .and_then(|()| fs::rename(&tmp, &self.path).map_err(|e| FileStoreError::io(&self.path, "replace", e)));
        if let Err(e) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // The rename is in the directory: sync it so that it survives a crash. The new file is
        // in place either way, so a failure here is only logged.
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::debug!(path = %self.dir.display(), error = %e, "token cache directory not synced");
        }
        Ok(())
    }

    /// A new file in the same directory, mode 0600, made by this call (`O_EXCL`).
    fn temp_file(&self) -> Result<(PathBuf, File), FileStoreError> {
        let mut tries = 0;
        loop {
            let tmp =
                self.dir.join(format!(".{}.{}.{:016x}.tmp", self.name, std::process::id(), rand::random::<u64>()));
            let created =
                OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(open_flags()).open(&tmp);
            match created {
                Ok(file) => return Ok((tmp, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(FileStoreError::io(&tmp, "create", e)),
            }
        }
    }
}

/// The entries of a file's bytes; a corrupt file or entry is logged (where, never what) and
/// left out.
fn parse(path: &Path, bytes: &[u8]) -> BTreeMap<String, Entry> {
    let doc: FileIn = match serde_json::from_slice(bytes) {
        Ok(doc) => doc,
        Err(e) => {
            // The error's text may quote the file (a token): only its place and category.
            tracing::warn!(
                path = %path.display(),
                line = e.line(),
                column = e.column(),
                problem = ?e.classify(),
                "the token cache file is corrupt; ignored, and replaced on the next write"
            );
            return BTreeMap::new();
        }
    };
    if doc.version != VERSION {
        tracing::warn!(
            path = %path.display(),
            version = doc.version,
            expected = VERSION,
            "the token cache file has another version; ignored, and replaced on the next write"
        );
        return BTreeMap::new();
    }
    let mut bad = 0usize;
    let tokens: BTreeMap<String, Entry> = doc
        .tokens
        .into_iter()
        .filter_map(|(k, v)| match serde_json::from_value::<Entry>(v) {
            Ok(entry) if entry.to_stored().is_some() => Some((k, entry)),
            _ => {
                bad += 1;
                None
            }
        })
        .collect();
    if bad > 0 {
        tracing::warn!(path = %path.display(), entries = bad, "token cache entries that do not parse; ignored, and dropped on the next write");
    }
    tokens
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Deserialize)]
struct FileIn {
    version: u64,
    tokens: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    version: u64,
    tokens: &'a BTreeMap<String, Entry>,
}

/// One token as written. No `Debug`: it holds the tokens.
#[derive(Serialize, Deserialize)]
struct Entry {
    access_token: String,
    /// Unix seconds.
    expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

impl Entry {
    fn from_stored(token: &StoredToken) -> Self {
        Entry {
            access_token: token.access_token.expose().to_owned(),
            expires_at: unix_seconds(token.expires_at),
            refresh_token: token.refresh_token.as_ref().map(|s| s.expose().to_owned()),
        }
    }

    fn to_stored(&self) -> Option<StoredToken> {
        if self.access_token.is_empty() {
            return None;
        }
        Some(StoredToken {
            access_token: Secret::new(self.access_token.as_str()),
            expires_at: UNIX_EPOCH.checked_add(Duration::from_secs(self.expires_at))?,
            refresh_token: self.refresh_token.as_deref().filter(|s| !s.is_empty()).map(Secret::new),
        })
    }

    /// Whether a write keeps it: its access token is valid, or its refresh token may still be.
    fn keep(&self, now: u64) -> bool {
        let until = if self.refresh_token.is_some() {
            self.expires_at.saturating_add(REFRESH_GRACE.as_secs())
        } else {
            self.expires_at
        };
        until > now
    }
}

/// Why a [`FileStore`] could not read or write its file. It names the file and what happened,
/// never a token.
#[derive(Debug)]
pub struct FileStoreError {
    path: PathBuf,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Refused(Refusal),
    Io(&'static str, io::Error),
    LockTimeout(Duration),
}

#[derive(Debug)]
enum Refusal {
    Symlink,
    NotAFile,
    Mode(u32),
    Owner { owner: u32, me: u32 },
}

impl FileStoreError {
    fn io(path: &Path, what: &'static str, e: io::Error) -> Self {
        FileStoreError { path: path.to_path_buf(), kind: Kind::Io(what, e) }
    }

    /// The file (the token cache, its lock file or a temporary file) concerned.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file was refused for safety: a symbolic link, not a regular file, open to
    /// group or others, or owned by another user.
    pub fn is_refused(&self) -> bool {
        matches!(self.kind, Kind::Refused(_))
    }

    /// Whether reading or writing failed (the source is the [`io::Error`]).
    pub fn is_io(&self) -> bool {
        matches!(self.kind, Kind::Io(..))
    }

    /// Whether another process held the lock for longer than the lock timeout.
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self.kind, Kind::LockTimeout(_))
    }
}

impl fmt::Display for FileStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.kind {
            Kind::Refused(Refusal::Symlink) => write!(f, "token cache {path}: refused: it is a symbolic link"),
            Kind::Refused(Refusal::NotAFile) => write!(f, "token cache {path}: refused: not a regular file"),
            Kind::Refused(Refusal::Mode(mode)) => write!(
                f,
                "token cache {path}: refused: mode {mode:03o} lets group or others read or write it (chmod 600 it)"
            ),
            Kind::Refused(Refusal::Owner { owner, me }) => {
                write!(f, "token cache {path}: refused: owned by user {owner}, not by this process's user {me}")
            }
            Kind::Io(what, e) => write!(f, "token cache {path}: could not {what}: {e}"),
            Kind::LockTimeout(t) => {
                write!(f, "token cache {path}: locked by someone else for more than {} s", t.as_secs_f32())
            }
        }
    }
}

impl std::error::Error for FileStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Io(_, e) => Some(e),
            _ => None,
        }
    }
}
