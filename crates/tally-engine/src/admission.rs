//! Waiting for room in the submission queue (`Backpressure::Wait`), blocking or async,
//! without polling.
//!
//! A submitter that finds the queue full registers as a waiter and tries again each
//! time the log thread frees room; the log thread checks for waiters with one atomic
//! load per group it takes, so the commit path pays nothing while nobody waits.
//!
//! The lost-wake-up argument is a store-load handshake with a `SeqCst` fence on each
//! side: the waiter counts itself in (`waiters`), fences, then tries to push; the log
//! thread pops, fences, then reads `waiters`. Either the waiter's push sees the room,
//! or the log thread sees the waiter and wakes it. An async waiter creates its
//! `Notified` before it fences and tries, so a wake that follows the try reaches it;
//! a blocking waiter tries and waits under `lock`, which the log thread takes to wake
//! it.
//!
//! Waiting holds no admission pass (`crate::gate`): shutdown closes the gate, then
//! wakes every waiter, whose next try finds the gate closed.

use crate::sync::{AtomicUsize, Ordering, fence};
use parking_lot::{Condvar, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// Submitters waiting for room, and the means to wake them.
#[derive(Debug, Default)]
pub(crate) struct Room {
    /// Waiters registered (blocking and async).
    waiters: AtomicUsize,
    /// Wakes async waiters.
    notify: Notify,
    /// Held by a blocking waiter from its try to its wait, and by a waker.
    lock: Mutex<()>,
    /// Wakes blocking waiters.
    freed: Condvar,
}

/// A registered waiter; counts itself out when dropped (also when an async wait is
/// cancelled).
struct Waiter<'a> {
    room: &'a Room,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.room.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Room {
    /// Called by the log thread after it took requests off the queue: wakes the waiters,
    /// if any. One fence and one load when nobody waits.
    pub fn freed(&self) {
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.wake_all();
        }
    }

    /// Wakes every waiter to try again (room was freed, or the ledger is shutting down).
    pub fn wake_all(&self) {
        self.notify.notify_waiters();
        let _guard = self.lock.lock();
        self.freed.notify_all();
    }

    fn register(&self) -> Waiter<'_> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        Waiter { room: self }
    }

    /// Blocks until `attempt` returns `Some` (it pushed, or gave up for good) or
    /// `deadline` passes; `None` after the deadline. `attempt` runs under the lock.
    pub fn wait_blocking<R>(
        &self,
        deadline: Instant,
        mut attempt: impl FnMut() -> Option<R>,
    ) -> Option<R> {
        let _waiter = self.register();
        fence(Ordering::SeqCst);
        let mut guard = self.lock.lock();
        loop {
            if let Some(done) = attempt() {
                return Some(done);
            }
            if self.freed.wait_until(&mut guard, deadline).timed_out() {
                return attempt();
            }
        }
    }

    /// [`Room::wait_blocking`] for async code: the task yields while it waits, and the
    /// deadline is a tokio timer. Cancel-safe: dropping the future counts the waiter
    /// out and leaves nothing behind.
    pub async fn wait_async<R>(
        &self,
        deadline: Instant,
        mut attempt: impl FnMut() -> Option<R>,
    ) -> Option<R> {
        let _waiter = self.register();
        loop {
            // Created before the try: a wake that follows the try completes it.
            let notified = self.notify.notified();
            fence(Ordering::SeqCst);
            if let Some(done) = attempt() {
                return Some(done);
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return attempt();
            }
        }
    }

    /// Waiters registered now (tests).
    #[cfg(test)]
    pub fn waiters(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }
}
