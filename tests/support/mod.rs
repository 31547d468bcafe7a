//! Shared helpers for integration tests.
#![allow(dead_code, unreachable_pub)]

pub(crate) mod example;
pub(crate) mod peers;
pub(crate) mod redis_server;

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
