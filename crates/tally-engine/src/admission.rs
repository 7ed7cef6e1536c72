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
//! The async wait needs nothing from the executor but its waker: no runtime timer.
//! Its deadline is kept by the ledger's own deadline thread (`tally-admission-timer`,
//! started by the first async wait), which sleeps until the earliest deadline it holds
//! and then wakes every async waiter; each checks the clock and, past its deadline,
//! makes its last try. A waiter hands its deadline over once per wait, after creating
//! its `Notified`: the thread pops the deadline (under its lock) after the hand-over and
//! wakes after the pop, so the wake reaches the waiter. On a later round the waiter
//! reads the clock after creating its `Notified`, so either it reads a time past the
//! deadline or the wake reaches it. A deadline outlives a wait that ends early
//! (admitted or cancelled) and then wakes the waiters once, for nothing: the thread
//! holds at most one deadline per async wait begun within the configured wait.
//!
//! Waiting holds no admission pass (`crate::gate`): shutdown closes the gate, then
//! wakes every waiter, whose next try finds the gate closed, and stops the deadline
//! thread.

use crate::sync::{AtomicUsize, Ordering, fence};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::Notify;

/// Submitters waiting for room, and the means to wake them.
#[derive(Debug, Default)]
pub(crate) struct Room {
    /// Waiters registered (blocking and async).
    waiters: AtomicUsize,
    /// Wakes async waiters; shared with the deadline thread.
    notify: Arc<Notify>,
    /// Held by a blocking waiter from its try to its wait, and by a waker.
    lock: Mutex<()>,
    /// Wakes blocking waiters.
    freed: Condvar,
    /// The deadlines of the async waits.
    timer: Timer,
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

    /// Stops the deadline thread for good and joins it (shutdown, after the gate has
    /// closed). An async wait that begins later makes its last try at once.
    pub fn stop_timer(&self) {
        self.timer.stop();
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

    /// [`Room::wait_blocking`] for async code: the task yields while it waits, on any
    /// executor (the deadline is kept by the deadline thread, not by a runtime timer).
    /// Cancel-safe: dropping the future counts the waiter out and leaves nothing behind
    /// but its deadline, which later wakes the waiters once for nothing.
    ///
    /// When the deadline thread cannot be started (the operating system refuses a
    /// thread), the wait cannot be bounded: it makes its last try at once, so a full
    /// queue answers `None` (`Busy`) as under `Backpressure::Busy`. The next wait tries
    /// to start the thread again.
    pub async fn wait_async<R>(
        &self,
        deadline: Instant,
        mut attempt: impl FnMut() -> Option<R>,
    ) -> Option<R> {
        let _waiter = self.register();
        let mut timed = false;
        loop {
            // Created before the clock is read and before the try: a wake that follows
            // either completes it.
            let notified = self.notify.notified();
            fence(Ordering::SeqCst);
            let last = Instant::now() >= deadline;
            if let Some(done) = attempt() {
                return Some(done);
            }
            if last {
                return None;
            }
            if !timed {
                if !self.timer.add(deadline, &self.notify) {
                    return attempt();
                }
                timed = true;
            }
            notified.await;
        }
    }

    /// Waiters registered now (tests).
    #[cfg(test)]
    pub fn waiters(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }

    /// The deadline thread's state: one strong reference more than the room's while
    /// the thread runs (tests).
    #[cfg(test)]
    pub fn timer_probe(&self) -> std::sync::Weak<impl Sized + use<>> {
        Arc::downgrade(&self.timer.shared)
    }
}

/// The deadline thread of the async waits: started by the first one, stopped at
/// shutdown or when the room is dropped.
#[derive(Debug, Default)]
struct Timer {
    shared: Arc<TimerShared>,
}

#[derive(Debug, Default)]
struct TimerShared {
    deadlines: Mutex<Deadlines>,
    /// Signalled when a deadline earlier than all others arrives, and at stop.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Deadlines {
    /// Earliest first. At most one entry per async wait begun within the configured
    /// wait: each is popped at its deadline.
    heap: BinaryHeap<Reverse<Instant>>,
    /// The running thread; `None` before the first async wait and after stop.
    thread: Option<JoinHandle<()>>,
    stopped: bool,
}

impl Timer {
    /// Hands `deadline` to the thread, starting it if need be: at that instant it
    /// wakes every waiter of `notify`. False after stop, or when no thread can start.
    fn add(&self, deadline: Instant, notify: &Arc<Notify>) -> bool {
        let mut deadlines = self.shared.deadlines.lock();
        if deadlines.stopped {
            return false;
        }
        if deadlines.thread.is_none() {
            let shared = Arc::clone(&self.shared);
            let notify = Arc::clone(notify);
            let spawned = std::thread::Builder::new()
                .name("tally-admission-timer".into())
                .spawn(move || shared.run(&notify));
            match spawned {
                Ok(thread) => deadlines.thread = Some(thread),
                Err(_) => return false,
            }
        }
        let earliest = deadlines
            .heap
            .peek()
            .is_none_or(|&Reverse(first)| deadline < first);
        deadlines.heap.push(Reverse(deadline));
        if earliest {
            self.shared.changed.notify_one();
        }
        true
    }

    /// Stops the thread, if it runs, and joins it. Idempotent.
    fn stop(&self) {
        let thread = {
            let mut deadlines = self.shared.deadlines.lock();
            deadlines.stopped = true;
            deadlines.heap.clear();
            self.shared.changed.notify_all();
            deadlines.thread.take()
        };
        if let Some(thread) = thread {
            // The thread only sleeps and wakes tasks: it cannot panic but by a bug.
            let joined = thread.join();
            debug_assert!(joined.is_ok(), "the deadline thread panicked");
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TimerShared {
    /// The deadline thread: sleeps until the earliest deadline, pops every deadline
    /// that has passed, and wakes the async waiters, until stopped.
    fn run(&self, notify: &Notify) {
        let mut deadlines = self.deadlines.lock();
        while !deadlines.stopped {
            let Some(&Reverse(first)) = deadlines.heap.peek() else {
                self.changed.wait(&mut deadlines);
                continue;
            };
            let now = Instant::now();
            if now < first {
                self.changed.wait_until(&mut deadlines, first);
                continue;
            }
            while deadlines.heap.peek().is_some_and(|&Reverse(at)| at <= now) {
                deadlines.heap.pop();
            }
            MutexGuard::unlocked(&mut deadlines, || notify.notify_waiters());
        }
    }
}
