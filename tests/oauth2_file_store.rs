//! `oauth2::FileStore` on real files in temporary directories: restarts, keys sharing a file,
//! a provider that finds its token in the file, corrupt files, refused files (symlink, mode,
//! owner), writers in several threads and processes at once, and no token in any error.
#![cfg(unix)]

use std::convert::Infallible;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use support::captured;
use tower_auth::Secret;
use tower_auth::oauth2::{FileStore, FileStoreError, StoredToken, TokenProvider};

const ACCESS: &str = "AT-very-secret-0123456789";
const REFRESH: &str = "RT-very-secret-9876543210";

fn token(access: &str, refresh: Option<&str>, lifetime: Duration) -> StoredToken {
    StoredToken {
        access_token: Secret::new(access),
        expires_at: SystemTime::now() + lifetime,
        refresh_token: refresh.map(Secret::new),
    }
}

fn expired(access: &str, refresh: Option<&str>, ago: Duration) -> StoredToken {
    StoredToken { expires_at: SystemTime::now() - ago, ..token(access, refresh, Duration::ZERO) }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The file as JSON, checked to be a version 1 token cache.
fn json(path: &Path) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).expect("the file is JSON");
    assert_eq!(v["version"], 1);
    assert!(v["tokens"].is_object());
    v
}

fn entries(path: &Path) -> usize {
    json(path)["tokens"].as_object().unwrap().len()
}

/// Asserts no token is in an error's text or `Debug` output.
fn assert_no_token(e: &dyn std::fmt::Debug, text: &str) {
    let debug = format!("{e:?}");
    for secret in [ACCESS, REFRESH, "AT-", "RT-"] {
        assert!(!text.contains(secret), "{text}");
        assert!(!debug.contains(secret), "{debug}");
    }
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    (dir, path)
}

#[test]
fn round_trip_across_a_restart() {
    let (_dir, path) = tmp();
    let saved = token(ACCESS, Some(REFRESH), Duration::from_secs(3600));
    FileStore::new(&path).unwrap().save_blocking("k1", &saved).unwrap();

    // Another instance, as after a restart.
    let store = FileStore::new(&path).unwrap();
    let loaded = store.load_blocking("k1").unwrap().expect("the token is in the file");
    assert_eq!(loaded.access_token.expose(), ACCESS);
    assert_eq!(loaded.refresh_token.as_ref().map(Secret::expose), Some(REFRESH));
    assert_eq!(unix(loaded.expires_at), unix(saved.expires_at));
    assert!(store.load_blocking("other").unwrap().is_none());

    let v = json(&path);
    assert_eq!(v["tokens"]["k1"]["expires_at"], unix(saved.expires_at));
    // Without a refresh token, no field.
    store.save_blocking("k2", &token("AT-2", None, Duration::from_secs(60))).unwrap();
    assert!(json(&path)["tokens"]["k2"].get("refresh_token").is_none());
    assert!(store.load_blocking("k2").unwrap().unwrap().refresh_token.is_none());
}

#[test]
fn a_missing_file_is_empty_and_created_0600_by_the_first_write() {
    let (dir, path) = tmp();
    let store = FileStore::new(&path).unwrap();
    assert_eq!(store.path(), path);
    assert!(store.load_blocking("k").unwrap().is_none());
    store.save_blocking("k", &token(ACCESS, None, Duration::from_secs(60))).unwrap();
    assert_eq!(mode(&path), 0o600);
    let mut lock = path.clone().into_os_string();
    lock.push(".lock");
    assert_eq!(mode(Path::new(&lock)), 0o600);
    // No temporary file left behind.
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn two_keys_share_one_file() {
    let (_dir, path) = tmp();
    let a = FileStore::new(&path).unwrap();
    let b = FileStore::new(&path).unwrap();
    a.save_blocking("key-a", &token("AT-a", None, Duration::from_secs(600))).unwrap();
    b.save_blocking("key-b", &token("AT-b", Some("RT-b"), Duration::from_secs(600))).unwrap();
    // A replaces only its own entry.
    a.save_blocking("key-a", &token("AT-a2", None, Duration::from_secs(600))).unwrap();
    assert_eq!(entries(&path), 2);
    assert_eq!(b.load_blocking("key-a").unwrap().unwrap().access_token.expose(), "AT-a2");
    let got_b = a.load_blocking("key-b").unwrap().unwrap();
    assert_eq!(got_b.access_token.expose(), "AT-b");
    assert_eq!(got_b.refresh_token.unwrap().expose(), "RT-b");
}

#[test]
fn expired_entries_are_pruned_on_write() {
    let (_dir, path) = tmp();
    let store = FileStore::new(&path).unwrap();
    store.save_blocking("old", &expired("AT-old", None, Duration::from_secs(10))).unwrap();
    store.save_blocking("old-with-refresh", &expired("AT-o", Some("RT-o"), Duration::from_secs(3600))).unwrap();
    store
        .save_blocking("ancient-with-refresh", &expired("AT-x", Some("RT-x"), Duration::from_secs(40 * 24 * 3600)))
        .unwrap();
    store.save_blocking("new", &token("AT-new", None, Duration::from_secs(600))).unwrap();
    let v = json(&path);
    let keys: Vec<_> = v["tokens"].as_object().unwrap().keys().cloned().collect();
    // Kept: the valid one, and an expired one whose refresh token may still serve.
    assert_eq!(keys, ["new", "old-with-refresh"]);
}

/// An in-process token endpoint: `at-<n>` valid an hour, counting requests.
fn idp(
    requests: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let body = format!(r#"{{"access_token":"at-{n}","token_type":"Bearer","expires_in":3600}}"#);
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        }
    })
}

async fn wait_for_entries(path: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(path.exists() && entries(path) == n) {
        assert!(Instant::now() < deadline, "the provider did not write its token");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_provider_finds_its_token_after_a_restart_and_sends_no_token_request() {
    let (_dir, path) = tmp();
    let requests = Arc::new(AtomicUsize::new(0));
    let build = |client: &str| {
        TokenProvider::client_credentials("https://idp.example/token", client, "s3cret")
            .store(FileStore::new(&path).unwrap())
            .build(idp(Arc::clone(&requests)))
            .unwrap()
    };

    // First lifetime: one token request, saved.
    let first = build("svc-a");
    assert_eq!(first.token().await.unwrap().header_value(), "Bearer at-1");
    wait_for_entries(&path, 1).await;
    assert_eq!(mode(&path), 0o600);
    drop(first);

    // Second lifetime: the token comes from the file.
    let second = build("svc-a");
    assert_eq!(second.token().await.unwrap().header_value(), "Bearer at-1");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    assert_eq!(second.stats().token_requests(), 0);

    // Another client shares the file under its own key.
    let other = build("svc-b");
    assert_eq!(other.token().await.unwrap().header_value(), "Bearer at-2");
    wait_for_entries(&path, 2).await;
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[test]
fn a_corrupt_file_is_reported_ignored_and_replaced_on_the_next_write() {
    let bad: [Vec<u8>; 5] = [
        format!("{{\"version\":1,\"tokens\":{{\"k\":{{\"access_token\":\"{ACCESS}\"").into_bytes(), // torn
        b"\xff\xfe garbage".to_vec(),
        format!("{{\"version\":2,\"tokens\":{{\"k\":{{\"access_token\":\"{ACCESS}\",\"expires_at\":1}}}}}}")
            .into_bytes(),
        format!("{{\"version\":1,\"tokens\":[\"{ACCESS}\"]}}").into_bytes(),
        Vec::new(),
    ];
    for (i, content) in bad.iter().enumerate() {
        let (_dir, path) = tmp();
        fs::write(&path, content).unwrap();
        chmod(&path, 0o600);
        let store = FileStore::new(&path).unwrap();
        let (loaded, logs) = captured(|| store.load_blocking("k"));
        assert!(loaded.unwrap().is_none(), "case {i}");
        assert!(logs.contains("WARN"), "case {i}: {logs}");
        assert!(logs.contains(&path.display().to_string()), "case {i}: {logs}");
        assert!(!logs.contains(ACCESS), "case {i}: {logs}");

        let (saved, logs) = captured(|| store.save_blocking("k2", &token("AT-new", None, Duration::from_secs(60))));
        saved.unwrap();
        assert!(!logs.contains(ACCESS), "case {i}: {logs}");
        assert_eq!(entries(&path), 1, "case {i}");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(store.load_blocking("k2").unwrap().unwrap().access_token.expose(), "AT-new");
    }
}

#[test]
fn an_entry_that_does_not_parse_is_dropped_and_the_others_kept() {
    let (_dir, path) = tmp();
    let exp = unix(SystemTime::now()) + 600;
    let content = serde_json::json!({
        "version": 1,
        "tokens": {
            "bad-type": {"access_token": "AT-ok", "expires_at": ACCESS},
            "bad-huge": {"access_token": ACCESS, "expires_at": u64::MAX},
            "bad-negative": {"access_token": ACCESS, "expires_at": -5},
            "bad-empty": {"access_token": "", "expires_at": exp},
            "good": {"access_token": "AT-good", "expires_at": exp, "refresh_token": REFRESH},
        }
    });
    fs::write(&path, content.to_string()).unwrap();
    chmod(&path, 0o600);
    let store = FileStore::new(&path).unwrap();
    let (good, logs) = captured(|| store.load_blocking("good").unwrap());
    assert_eq!(good.unwrap().access_token.expose(), "AT-good");
    assert!(logs.contains("WARN") && logs.contains("entries=4"), "{logs}");
    assert!(!logs.contains(ACCESS), "{logs}");
    for k in ["bad-type", "bad-huge", "bad-negative", "bad-empty"] {
        assert!(store.load_blocking(k).unwrap().is_none(), "{k}");
    }
    store.save_blocking("new", &token("AT-new", None, Duration::from_secs(60))).unwrap();
    let v = json(&path);
    let keys: Vec<_> = v["tokens"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["good", "new"]);
}

fn assert_refused(e: &FileStoreError, what: &str) {
    let text = e.to_string();
    assert!(e.is_refused(), "{text}");
    assert!(text.contains(what), "{text}");
    assert_no_token(e, &text);
}

#[test]
fn a_symlink_is_refused() {
    let (dir, path) = tmp();
    let target = dir.path().join("elsewhere.json");
    FileStore::new(&target)
        .unwrap()
        .save_blocking("k", &token(ACCESS, Some(REFRESH), Duration::from_secs(60)))
        .unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let err = FileStore::new(&path).unwrap_err().to_string();
    assert!(err.contains("symbolic link") && err.contains("tokens.json"), "{err}");
    assert_no_token(&err, &err);

    // A link that appears after `new`: refused at load and save, the target untouched.
    let (dir, path) = tmp();
    let store = FileStore::new(&path).unwrap();
    let target = dir.path().join("target.json");
    fs::write(&target, "{}").unwrap();
    chmod(&target, 0o600);
    std::os::unix::fs::symlink(&target, &path).unwrap();
    assert_refused(&store.load_blocking("k").unwrap_err(), "symbolic link");
    assert_refused(
        &store.save_blocking("k", &token(ACCESS, None, Duration::from_secs(60))).unwrap_err(),
        "symbolic link",
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "{}");

    // A symlinked lock file is refused too.
    let (dir, path) = tmp();
    let mut lock = path.clone().into_os_string();
    lock.push(".lock");
    std::os::unix::fs::symlink(dir.path().join("x"), &lock).unwrap();
    let err = FileStore::new(&path).unwrap_err().to_string();
    assert!(err.contains("symbolic link") && err.contains(".lock"), "{err}");
}

#[test]
fn a_file_open_to_group_or_others_is_refused() {
    for bad in [0o644, 0o640, 0o604, 0o620, 0o602] {
        let (_dir, path) = tmp();
        FileStore::new(&path)
            .unwrap()
            .save_blocking("k", &token(ACCESS, Some(REFRESH), Duration::from_secs(60)))
            .unwrap();
        chmod(&path, bad);
        let err = FileStore::new(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("mode {bad:03o}")) && err.contains("chmod 600"), "{err}");
        assert_no_token(&err, &err);
    }

    // Loosened after `new`: refused at load and save, and the file is left as it is.
    let (_dir, path) = tmp();
    let store = FileStore::new(&path).unwrap();
    store.save_blocking("k", &token(ACCESS, Some(REFRESH), Duration::from_secs(60))).unwrap();
    chmod(&path, 0o644);
    let (err, logs) = captured(|| store.load_blocking("k").unwrap_err());
    assert_refused(&err, "mode 644");
    assert!(!logs.contains(ACCESS));
    assert_refused(&store.save_blocking("k2", &token("AT-2", None, Duration::from_secs(60))).unwrap_err(), "mode 644");
    assert_eq!(entries(&path), 1);
    assert_eq!(mode(&path), 0o644);
}

#[test]
fn a_file_of_another_user_is_refused() {
    if euid() != 0 {
        eprintln!("skipped: changing a file's owner needs root");
        return;
    }
    let (_dir, path) = tmp();
    FileStore::new(&path).unwrap().save_blocking("k", &token(ACCESS, None, Duration::from_secs(60))).unwrap();
    let store = FileStore::new(&path).unwrap();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let err = FileStore::new(&path).unwrap_err().to_string();
    assert!(err.contains("owned by user 65534"), "{err}");
    assert_refused(&store.load_blocking("k").unwrap_err(), "owned by user 65534");
}

/// The effective user id, from the owner of a file this process creates.
fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid()
}

#[test]
fn an_unreadable_path_gives_a_typed_error() {
    // Not a file.
    let (_dir, path) = tmp();
    let store = FileStore::new(&path).unwrap();
    fs::create_dir(&path).unwrap();
    assert_refused(&store.load_blocking("k").unwrap_err(), "not a regular file");
    assert!(FileStore::new(&path).is_err());

    // Its directory gone.
    let (dir, path) = tmp();
    let store = FileStore::new(&path).unwrap();
    drop(dir);
    let err = store.load_blocking("k").unwrap_err();
    assert!(err.is_io(), "{err}");
    assert!(std::error::Error::source(&err).is_some());
    let err = store.save_blocking("k", &token(ACCESS, Some(REFRESH), Duration::from_secs(60))).unwrap_err();
    assert!(err.is_io(), "{err}");
    assert_no_token(&err, &err.to_string());

    // A directory that does not exist, at `new`.
    let err = FileStore::new("/nonexistent-dir-for-tower-auth/tokens.json").unwrap_err().to_string();
    assert!(err.contains("nonexistent-dir-for-tower-auth"), "{err}");
}

#[tokio::test]
async fn a_failing_store_does_not_stop_the_provider() {
    let (dir, path) = tmp();
    let store = FileStore::new(&path).unwrap();
    fs::create_dir(&path).unwrap(); // now unusable
    let requests = Arc::new(AtomicUsize::new(0));
    let provider = TokenProvider::client_credentials("https://idp.example/token", "svc", "s3cret")
        .store(store)
        .build(idp(Arc::clone(&requests)))
        .unwrap();
    assert_eq!(provider.token().await.unwrap().header_value(), "Bearer at-1");
    drop(dir);
}

#[test]
fn a_lock_held_too_long_gives_a_timeout_error() {
    let (_dir, path) = tmp();
    let store = FileStore::new(&path).unwrap().lock_timeout(Duration::from_millis(300));
    store.save_blocking("k", &token(ACCESS, None, Duration::from_secs(60))).unwrap();
    let mut lock = path.clone().into_os_string();
    lock.push(".lock");
    // util-linux flock(1) holds the lock in another process for 2 s (`-o`: not its child).
    let Ok(mut holder) = std::process::Command::new("flock").arg("-o").arg(&lock).args(["sleep", "2"]).spawn() else {
        eprintln!("skipped: no flock(1)");
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let err = store.save_blocking("k2", &token(ACCESS, None, Duration::from_secs(60))).unwrap_err();
    assert!(err.is_lock_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_no_token(&err, &err.to_string());
    assert!(holder.wait().unwrap().success());
    store.save_blocking("k2", &token("AT-2", None, Duration::from_secs(60))).unwrap();
    assert_eq!(entries(&path), 2);
}

/// Saves `per` keys named `<prefix>-<i>` into `path`.
fn save_many(path: &Path, prefix: &str, per: usize) {
    let store = FileStore::new(path).unwrap();
    for i in 0..per {
        let key = format!("{prefix}-{i}");
        store.save_blocking(&key, &token(&format!("AT-{key}"), Some("RT-x"), Duration::from_secs(600))).unwrap();
    }
}

#[test]
fn eight_threads_writing_at_once_lose_no_entry() {
    let (_dir, path) = tmp();
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (path, barrier) = (path.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                save_many(&path, &format!("t{t}"), 50);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(entries(&path), 400);
    assert_eq!(mode(&path), 0o600);
    let store = FileStore::new(&path).unwrap();
    for t in 0..8 {
        for i in [0, 49] {
            let got = store.load_blocking(&format!("t{t}-{i}")).unwrap().unwrap();
            assert_eq!(got.access_token.expose(), format!("AT-t{t}-{i}"));
        }
    }
}

const CHILD_ENV: &str = "TOWER_AUTH_FILE_STORE_CHILD";

#[test]
fn two_processes_writing_at_once_lose_no_entry() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        // In a child: `<path>|<prefix>`.
        let (path, prefix) = spec.split_once('|').unwrap();
        save_many(Path::new(path), prefix, 100);
        return;
    }
    let (_dir, path) = tmp();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ["p0", "p1"]
        .iter()
        .map(|prefix| {
            std::process::Command::new(&exe)
                .args(["--exact", "two_processes_writing_at_once_lose_no_entry", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{}|{prefix}", path.display()))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(entries(&path), 200);
    let store = FileStore::new(&path).unwrap();
    assert!(store.load_blocking("p0-99").unwrap().is_some());
    assert!(store.load_blocking("p1-0").unwrap().is_some());
}

#[test]
fn debug_output_names_the_path_only() {
    let (_dir, path) = tmp();
    let store = FileStore::new(&path).unwrap();
    store.save_blocking("k", &token(ACCESS, Some(REFRESH), Duration::from_secs(60))).unwrap();
    let debug = format!("{store:?} {:?}", store.load_blocking("k").unwrap());
    assert!(debug.contains("tokens.json"), "{debug}");
    assert_no_token(&debug, &debug);
}
