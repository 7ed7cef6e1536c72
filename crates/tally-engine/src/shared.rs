//! What the ledger handle, its submitters and readers, and the two commit threads share.

use crate::admission::Room;
use crate::config::Config;
use crate::events::Progress;
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::recovery::Recovery;
use crate::request::Request;
use crate::sync::{AtomicBool, AtomicUsize};
use crossbeam_queue::ArrayQueue;
use parking_lot::{Mutex, RwLock};
use tally_state::StateMachine;

/// What the submitters, the readers and the two commit threads share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub queue: ArrayQueue<Request>,
    /// Events of the batches in `queue`, or being pushed: at most
    /// `config.queue_events_max`.
    pub queued_events: AtomicUsize,
    /// Submitters waiting for room in `queue`.
    pub room: Room,
    pub state: RwLock<StateMachine>,
    pub metrics: Metrics,
    /// Set once the log failed: every later write is refused with this message.
    pub failure: Mutex<Option<String>>,
    /// The log thread may exit once the queue is empty.
    pub draining: AtomicBool,
    /// Admission: closed at shutdown, which then waits for submitters mid-push.
    pub gate: Gate,
    /// What open recovered.
    pub recovery: Recovery,
    /// Where the change-event journal stands; `None` when change events are off.
    pub events: Option<std::sync::Arc<Progress>>,
}
