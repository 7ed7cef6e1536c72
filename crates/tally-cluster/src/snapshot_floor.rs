//! How far the newest snapshot on disk reaches: raised by the state store once a
//! snapshot is durably in place, waited for by the log before it writes a purge past it.
//!
//! Why: openraft tells the log to purge the entries a snapshot from the leader covers as
//! soon as it hands the snapshot to the state machine, while the snapshot is still being
//! installed (seconds for a large one). Had the purge reached the disk first, a crash
//! then would leave the old snapshot behind a log that no longer holds the entries
//! between: the replica could not rebuild its state. So a purge past the floor, and
//! every log write after it, waits until the floor reaches it.

use std::sync::Arc;
use tokio::sync::watch;

/// The newest durable snapshot's last log index, shared (cheap to clone).
#[derive(Clone, Debug)]
pub struct SnapshotFloor {
    floor: Arc<watch::Sender<Floor>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Floor {
    /// The last log index the newest durable snapshot holds; `None` before any.
    reached: Option<u64>,
    /// No snapshot will be installed any more (shutdown, or an install that failed):
    /// what waits for one is never written.
    abandoned: bool,
}

impl Floor {
    fn covers(&self, index: u64) -> bool {
        self.reached.is_some_and(|reached| reached >= index)
    }
}

impl Default for SnapshotFloor {
    fn default() -> Self {
        SnapshotFloor::new()
    }
}

impl SnapshotFloor {
    /// A floor below every index: no snapshot yet.
    pub fn new() -> SnapshotFloor {
        SnapshotFloor {
            floor: Arc::new(watch::Sender::new(Floor::default())),
        }
    }

    /// Records that a snapshot holding the log up to `index` is durably in place.
    pub fn raise(&self, index: u64) {
        self.floor.send_if_modified(|floor| {
            let raised = !floor.covers(index);
            if raised {
                floor.reached = Some(index);
            }
            raised
        });
    }

    /// Records that no snapshot will be installed any more: log writes waiting for one
    /// are dropped, and the log writes nothing more.
    pub fn abandon(&self) {
        self.floor
            .send_if_modified(|floor| !std::mem::replace(&mut floor.abandoned, true));
    }

    /// Whether a durable snapshot holds the log up to `index`.
    pub fn covers(&self, index: u64) -> bool {
        self.floor.borrow().covers(index)
    }

    /// Waits until a durable snapshot holds the log up to `index` (true), or none will
    /// (false).
    pub async fn reached(&self, index: u64) -> bool {
        let mut floor = self.floor.subscribe();
        match floor
            .wait_for(|floor| floor.covers(index) || floor.abandoned)
            .await
        {
            Ok(floor) => floor.covers(index),
            // The sender lives in `self`: never dropped while this waits.
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_the_floor_reaches_it_or_is_abandoned() {
        let floor = SnapshotFloor::new();
        assert!(!floor.covers(0));
        floor.raise(10);
        assert!(floor.covers(10) && !floor.covers(11));
        floor.raise(5);
        assert!(floor.covers(10), "a floor never goes down");
        let waiting = tokio::spawn({
            let floor = floor.clone();
            async move { floor.reached(20).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        floor.raise(20);
        assert!(waiting.await.expect("the wait"));
        let abandoned = tokio::spawn({
            let floor = floor.clone();
            async move { floor.reached(30).await }
        });
        tokio::task::yield_now().await;
        floor.abandon();
        assert!(!abandoned.await.expect("the wait"));
    }
}
