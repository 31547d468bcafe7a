//! The concurrency machinery of Digest: the first-request gate (single flight per origin), the
//! bounded pool of leased nonces of a protection space in leased mode, and the wait that both
//! hand out. Std only: a `Mutex`-protected queue of [`WaitCell`]s, each holding the waiting
//! task's `Waker`. See the [module documentation](super) for the design.
//!
//! Lock order: a pool (or gate) lock may be held while a cell lock is taken, never the other way
//! round; wakers are woken after every lock is released.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::NonceState;

/// The most requests queued on one gate or one pool; a request that finds the queue full does
/// not wait (see [`Take::Full`]).
pub(crate) const MAX_WAITERS: usize = 1024;

/// The slot id of a permit to count on the shared nonce (probation, see [`Pool::take_permit`]).
pub(crate) const PERMIT: u64 = u64::MAX;

/// A nonce handed to one request: the pool slot it belongs to (`0`: a nonce of its own, in no
/// pool; [`PERMIT`]: a permit to count on the shared nonce) and the nonce.
pub(crate) struct Grant {
    pub(crate) id: u64,
    pub(crate) nonce: Arc<NonceState>,
}

#[derive(Default)]
struct CellInner {
    waker: Option<Waker>,
    /// Woken: by a hand-off (with a grant), a kick (without) or the gate opening.
    woken: bool,
    /// The request is gone: no hand-off to it.
    cancelled: bool,
    grant: Option<Grant>,
}

/// One waiting request.
#[derive(Default)]
pub(crate) struct WaitCell {
    inner: Mutex<CellInner>,
}

impl WaitCell {
    fn lock(&self) -> MutexGuard<'_, CellInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waiter with `grant`: the waker to wake once every lock is released, or the
    /// grant back if the waiter has gone.
    fn wake(&self, grant: Option<Grant>) -> Result<Option<Waker>, Option<Grant>> {
        let mut c = self.lock();
        if c.cancelled {
            return Err(grant);
        }
        c.woken = true;
        c.grant = grant;
        Ok(c.waker.take())
    }

    /// The nonce handed over with the wake-up, if any.
    pub(crate) fn take_grant(&self) -> Option<Grant> {
        self.lock().grant.take()
    }

    /// The request no longer waits; a nonce handed over but not taken is returned, to be
    /// released by the caller (outside any lock).
    pub(crate) fn cancel(&self) -> Option<Grant> {
        let mut c = self.lock();
        c.cancelled = true;
        c.waker = None;
        c.grant.take()
    }
}

/// The [`Authenticator::Wait`](crate::Authenticator::Wait) future of [`Digest`](super::Digest):
/// resolves when the request may go on, that is when the first request to its origin has its
/// answer, or when a nonce of its protection space is handed to it (or its slot is freed).
///
/// Each wait ends at the end of another request's exchange on the same origin (a hand-off); a
/// request waits a bounded number of times (see the module documentation).
pub struct DigestWait {
    cell: Arc<WaitCell>,
}

impl DigestWait {
    pub(crate) fn new(cell: Arc<WaitCell>) -> Self {
        DigestWait { cell }
    }
}

impl Future for DigestWait {
    type Output = Result<(), Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut c = self.cell.lock();
        if c.woken || c.cancelled {
            return Poll::Ready(Ok(()));
        }
        match &c.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => c.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl fmt::Debug for DigestWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestWait").field("woken", &self.cell.lock().woken).finish()
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const CANCELLED: u8 = 2;

/// The gate of an origin's first request: closed while it is in flight; the others wait.
pub(crate) struct Gate {
    state: AtomicU8,
    waiters: Mutex<Vec<Arc<WaitCell>>>,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Gate { state: AtomicU8::new(CLOSED), waiters: Mutex::new(Vec::new()) }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// The first request was dropped before its answer: another may take its place.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) == CANCELLED
    }

    /// Queues a waiter, unless the gate has opened meanwhile or the queue is full.
    pub(crate) fn wait(&self) -> Option<Arc<WaitCell>> {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.is_closed() || waiters.len() >= MAX_WAITERS {
            return None;
        }
        let cell = Arc::new(WaitCell::default());
        waiters.push(Arc::clone(&cell));
        Some(cell)
    }

    fn open(&self, cancelled: bool) {
        let waiters = {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            self.state.store(if cancelled { CANCELLED } else { OPEN }, Ordering::Release);
            std::mem::take(&mut *waiters)
        };
        for cell in waiters {
            if let Ok(Some(waker)) = cell.wake(None) {
                waker.wake();
            }
        }
    }
}

/// Held by an origin's first request: opens the gate when the request has its answer
/// ([`finish`](ProbeGuard::finish)), or, dropped without an answer, opens it as cancelled.
pub(crate) struct ProbeGuard {
    gate: Option<Arc<Gate>>,
}

impl ProbeGuard {
    pub(crate) fn new(gate: Arc<Gate>) -> Self {
        ProbeGuard { gate: Some(gate) }
    }

    pub(crate) fn finish(mut self) {
        if let Some(gate) = self.gate.take() {
            gate.open(false);
        }
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.open(true);
        }
    }
}

struct Slot {
    id: u64,
    nonce: Arc<NonceState>,
    leased: bool,
}

/// What [`Pool::take`] gives a request.
pub(crate) enum Take {
    /// A free nonce, leased to the request.
    Leased(Grant),
    /// No free nonce, room for one more: the request goes without credentials and answers the
    /// challenge with a nonce of its own, which joins the pool ([`Pool::adopt`]).
    Grow,
    /// Wait for a nonce to be handed over.
    Wait(Arc<WaitCell>),
    /// No free nonce, no room, no waiting: the request gets a nonce of its own, in no pool.
    Full,
}

/// The nonces of one protection space in leased mode: at most `cap`, each used by one request
/// at a time, and the requests waiting for one (first come, first served).
#[derive(Default)]
pub(crate) struct Pool {
    slots: Vec<Slot>,
    /// Requests gone to fetch a nonce that will join the pool.
    growing: usize,
    /// Permits in use (probation).
    permits: usize,
    waiters: VecDeque<Arc<WaitCell>>,
    next_id: u64,
}

impl Pool {
    pub(crate) fn take(&mut self, cap: usize, may_wait: bool) -> Take {
        if let Some(slot) = self.slots.iter_mut().find(|s| !s.leased) {
            slot.leased = true;
            return Take::Leased(Grant { id: slot.id, nonce: Arc::clone(&slot.nonce) });
        }
        if self.slots.len() + self.growing < cap {
            self.growing += 1;
            return Take::Grow;
        }
        if may_wait && self.waiters.len() < MAX_WAITERS {
            let cell = Arc::new(WaitCell::default());
            self.waiters.push_back(Arc::clone(&cell));
            return Take::Wait(cell);
        }
        Take::Full
    }

    /// Probation: a permit to count on the shared nonce `shared`, at most `window` at once.
    pub(crate) fn take_permit(&mut self, window: usize, may_wait: bool, shared: &Arc<NonceState>) -> Take {
        if self.permits < window {
            self.permits += 1;
            return Take::Leased(Grant { id: PERMIT, nonce: Arc::clone(shared) });
        }
        if may_wait && self.waiters.len() < MAX_WAITERS {
            let cell = Arc::new(WaitCell::default());
            self.waiters.push_back(Arc::clone(&cell));
            return Take::Wait(cell);
        }
        Take::Full
    }

    /// A permit comes back: to the next waiter if still in probation (`hand_off`).
    #[must_use]
    pub(crate) fn release_permit(&mut self, hand_off: bool, shared: &Arc<NonceState>) -> Option<Waker> {
        if hand_off {
            let mut grant = Some(Grant { id: PERMIT, nonce: Arc::clone(shared) });
            while let Some(cell) = self.waiters.pop_front() {
                match cell.wake(grant) {
                    Ok(waker) => return waker,
                    Err(back) => grant = back,
                }
            }
        }
        self.permits = self.permits.saturating_sub(1);
        None
    }

    /// The mode of the space changed: every waiter goes again, in the new mode.
    #[must_use]
    pub(crate) fn kick_all(&mut self) -> Vec<Waker> {
        self.waiters.drain(..).filter_map(|cell| cell.wake(None).ok().flatten()).collect()
    }

    /// Adds a nonce fresh from a challenge, leased to the request that received it, if there is
    /// room (`reserved`: the request had a place from [`Take::Grow`]). Returns its slot id, or
    /// `0` when the pool is full (the nonce then stays the request's own).
    pub(crate) fn adopt(&mut self, nonce: &Arc<NonceState>, cap: usize, reserved: bool) -> u64 {
        if reserved {
            self.growing = self.growing.saturating_sub(1);
        }
        if self.slots.len() >= cap {
            return 0;
        }
        self.next_id += 1;
        self.slots.push(Slot { id: self.next_id, nonce: Arc::clone(nonce), leased: true });
        self.next_id
    }

    /// A new nonce for a leased slot (`stale=true`, a fresh challenge, `nextnonce`).
    pub(crate) fn replace(&mut self, id: u64, nonce: &Arc<NonceState>) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.id == id) {
            slot.nonce = Arc::clone(nonce);
        }
    }

    /// The request using slot `id` has its answer: the next waiter gets the slot, or it is free.
    #[must_use]
    pub(crate) fn release(&mut self, id: u64) -> Option<Waker> {
        let slot = self.slots.iter_mut().find(|s| s.id == id)?;
        let mut grant = Some(Grant { id, nonce: Arc::clone(&slot.nonce) });
        while let Some(cell) = self.waiters.pop_front() {
            match cell.wake(grant) {
                Ok(waker) => return waker,
                Err(back) => grant = back,
            }
        }
        slot.leased = false;
        None
    }

    /// Slot `id` can no longer be trusted (its request was dropped, so whether the server saw
    /// its count is unknown): forget it, and let the next waiter take its place.
    #[must_use]
    pub(crate) fn retire(&mut self, id: u64) -> Option<Waker> {
        self.slots.retain(|s| s.id != id);
        self.kick()
    }

    /// A request that went to fetch a nonce for the pool came back without one.
    #[must_use]
    pub(crate) fn cancel_growth(&mut self) -> Option<Waker> {
        self.growing = self.growing.saturating_sub(1);
        self.kick()
    }

    /// Wakes the first waiter without a nonce: there is room for it to fetch one.
    fn kick(&mut self) -> Option<Waker> {
        while let Some(cell) = self.waiters.pop_front() {
            if let Ok(waker) = cell.wake(None) {
                return waker;
            }
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;
    use crate::digest::{Algorithm, wake};

    fn nonce(n: &str) -> Arc<NonceState> {
        Arc::new(NonceState::new(Algorithm::Md5, "ha1", n, Some("o"), String::new))
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(wait: &mut DigestWait, count: &Arc<Count>) -> bool {
        let waker = Waker::from(Arc::clone(count));
        Pin::new(wait).poll(&mut Context::from_waker(&waker)).is_ready()
    }

    #[test]
    fn a_released_slot_goes_to_the_first_waiter_first_come_first_served() {
        let mut pool = Pool::default();
        assert!(matches!(pool.take(1, true), Take::Grow));
        let id = pool.adopt(&nonce("n1"), 1, true);
        assert_eq!((id, pool.len()), (1, 1));
        let (Take::Wait(a), Take::Wait(b)) = (pool.take(1, true), pool.take(1, true)) else { panic!("full: wait") };
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let (mut wait_a, mut wait_b) = (DigestWait::new(Arc::clone(&a)), DigestWait::new(Arc::clone(&b)));
        assert!(!poll(&mut wait_a, &count) && !poll(&mut wait_b, &count));
        wake(pool.release(id));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut wait_a, &count) && !poll(&mut wait_b, &count));
        let grant = a.take_grant().expect("handed over");
        assert_eq!((grant.id, grant.nonce.nonce.as_str()), (id, "n1"));
        // Not waiting or full: `Full`, never a second nonce past the cap.
        assert!(matches!(pool.take(1, false), Take::Full));
        // Released again: b, still waiting, gets it; released once more, it is free.
        wake(pool.release(id));
        assert!(poll(&mut wait_b, &count) && b.take_grant().is_some());
        assert!(pool.release(id).is_none());
        assert!(matches!(pool.take(1, true), Take::Leased(g) if g.id == id));
    }

    #[test]
    fn a_cancelled_waiter_is_skipped_and_gives_back_what_it_was_handed() {
        let mut pool = Pool::default();
        let id = pool.adopt(&nonce("n1"), 1, false);
        let (Take::Wait(a), Take::Wait(b)) = (pool.take(1, true), pool.take(1, true)) else { panic!("wait") };
        assert!(a.cancel().is_none()); // a's request is gone before the hand-off
        assert!(pool.release(id).is_none()); // no waker registered yet, but b was handed the slot
        assert!(b.take_grant().is_some());
        // Handed over, then cancelled before it was taken: the grant comes back to be released.
        let Take::Wait(c) = pool.take(1, true) else { panic!("wait") };
        let _ = pool.release(id);
        assert_eq!(c.cancel().map(|g| g.id), Some(id));
    }

    #[test]
    fn a_retired_slot_makes_room_for_a_waiter_to_fetch_a_nonce() {
        let mut pool = Pool::default();
        let id = pool.adopt(&nonce("n1"), 1, false);
        let Take::Wait(a) = pool.take(1, true) else { panic!("wait") };
        let _ = pool.retire(id);
        assert_eq!(pool.len(), 0);
        assert!(a.take_grant().is_none(), "woken without a nonce");
        assert!(matches!(pool.take(1, true), Take::Grow));
        let Take::Wait(_b) = pool.take(1, true) else { panic!("the place is reserved") };
        let _ = pool.cancel_growth();
        assert!(matches!(pool.take(1, true), Take::Grow));
    }

    #[test]
    fn permits_bound_the_shared_nonce_and_go_to_waiters() {
        let mut pool = Pool::default();
        let shared = nonce("s");
        assert!(matches!(pool.take_permit(2, true, &shared), Take::Leased(g) if g.id == PERMIT));
        assert!(matches!(pool.take_permit(2, true, &shared), Take::Leased(_)));
        let Take::Wait(a) = pool.take_permit(2, true, &shared) else { panic!("window full") };
        let _ = pool.release_permit(true, &shared);
        assert_eq!(a.take_grant().map(|g| g.id), Some(PERMIT));
        let Take::Wait(b) = pool.take_permit(2, true, &shared) else { panic!("still full") };
        let wakers = pool.kick_all();
        assert!(wakers.is_empty(), "no waker registered");
        assert!(b.take_grant().is_none());
        let _ = pool.release_permit(false, &shared);
        let _ = pool.release_permit(false, &shared);
        assert!(matches!(pool.take_permit(2, false, &shared), Take::Leased(_)));
    }

    #[test]
    fn the_gate_wakes_its_waiters_once_open_and_takes_none_after() {
        let gate = Gate::new();
        let cell = gate.wait().expect("closed");
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let mut wait = DigestWait::new(cell);
        assert!(!poll(&mut wait, &count));
        drop(ProbeGuard::new(Arc::new(Gate::new()))); // another gate: nothing here
        let gate = Arc::new(gate);
        drop(ProbeGuard::new(Arc::clone(&gate))); // dropped without an answer: cancelled, waiters go
        assert!(gate.is_cancelled() && !gate.is_closed());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut wait, &count));
        assert!(gate.wait().is_none());
    }
}
