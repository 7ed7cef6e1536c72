//! Every atomic the engine uses goes through here, so that `--cfg loom` swaps in loom's
//! model-checked versions.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::thread::{Builder as ThreadBuilder, JoinHandle, yield_now};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::thread::{Builder as ThreadBuilder, JoinHandle, yield_now};

/// The shard threads' queues: crossbeam's bounded array channel, or loom's modelled
/// channel (unbounded; the bound is a capacity argument, not a correctness one).
#[cfg(loom)]
pub(crate) mod channel {
    pub(crate) use loom::sync::mpsc::{Receiver, Sender};

    pub(crate) fn bounded<T>(_capacity: usize) -> (Sender<T>, Receiver<T>) {
        loom::sync::mpsc::channel()
    }
}

#[cfg(not(loom))]
pub(crate) mod channel {
    pub(crate) use crossbeam_channel::{Receiver, Sender, bounded};
}
