//! Shared helpers for integration tests.
#![allow(dead_code, unreachable_pub)]

pub(crate) mod example;
pub(crate) mod https;
pub(crate) mod peers;
pub(crate) mod redis_server;
pub(crate) mod windows;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tower::Service;

/// Counts the exchanges that leave the auth layer (it sits between the auth layer and the client).
#[derive(Clone, Debug)]
pub struct Counting<S> {
    pub inner: S,
    pub count: Arc<AtomicUsize>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> (Self, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        (Counting { inner, count: count.clone() }, count)
    }
}

impl<S: Service<R>, R> Service<R> for Counting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: R) -> S::Future {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.inner.call(req)
    }
}

/// Log text written by a `tracing_subscriber::fmt` subscriber.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
    }
}

/// Everything `tracing` logs at every level while `f` runs on this thread, as text: for tests
/// that check no secret reaches a log line.
pub fn captured<T>(f: impl FnOnce() -> T) -> (T, String) {
    let buf = LogBuf::default();
    let out = tracing::subscriber::with_default(buf.subscriber(), f);
    (out, buf.text())
}

/// Everything `tracing` logs at every level, on every thread, from the first call on: the
/// process's global subscriber (a thread's own, as [`captured`] sets, can miss events when
/// other test threads log at the same time: tracing caches per call site whether anyone
/// listens).
pub fn global_logs() -> LogBuf {
    static GLOBAL: std::sync::OnceLock<LogBuf> = std::sync::OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let buf = LogBuf::default();
            tracing::subscriber::set_global_default(buf.subscriber()).expect("no global subscriber yet");
            buf
        })
        .clone()
}

/// A fresh fake identity provider on its own thread and runtime, for tests that run programs
/// (`fetch`) against it from synchronous code; it serves until the test process exits.
pub fn idp_on_thread() -> tower_auth::testing::idp::IdpHandle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let idp = tower_auth::testing::idp::FakeIdp::start().await.unwrap();
            tx.send(idp.handle()).unwrap();
            std::future::pending::<()>().await;
            drop(idp);
        });
    });
    rx.recv().unwrap()
}

/// The `key=value` pairs of `fetch`'s last stderr line, `summary …` (asserted).
pub fn fetch_summary(stderr: &str) -> std::collections::HashMap<String, String> {
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("summary "), "{stderr}");
    last["summary ".len()..]
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
