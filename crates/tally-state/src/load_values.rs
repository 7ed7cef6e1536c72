//! Filling the transfers' user-data indexes while a snapshot loads.
//!
//! Nothing else a load does reads those indexes, so they are taken out of the parts
//! when the transfers start and filled on a `tally-values` thread from batches of
//! stored transfers, while the loading thread, which sets a load's pace, stores and
//! checks the rest (on a 60 s max-mode ledger it had spent about a fifth of its time
//! indexing user data). A batch names full chunks of a part's store, shared, not
//! copied; the last batch of each part, its tail too. Where no thread can be started,
//! each batch is indexed here as it comes.

use crate::index::KnownEntry;
use crate::store::FrozenTransfers;
use crate::value_index::UserDataIndexes;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::{Scope, ScopedJoinHandle};

/// Stored transfers of one part to index: positions `from..to` of `transfers`.
#[derive(Debug)]
pub(crate) struct ValuesBatch {
    pub part: usize,
    pub transfers: FrozenTransfers,
    pub from: u32,
    pub to: u32,
}

/// What the values thread is handed, in order.
enum ToFill {
    /// Field `field` of part `part` is in use: fault in its table now.
    Field {
        part: usize,
        field: usize,
    },
    Batch(ValuesBatch),
}

/// Working room for indexing batches, kept from one to the next.
#[derive(Debug, Default)]
struct FillRoom {
    entries: [Vec<KnownEntry>; 3],
    scratch: Vec<KnownEntry>,
}

impl FillRoom {
    /// Does `work` on `indexes` (by part).
    fn work_on(&mut self, indexes: &mut [UserDataIndexes], work: &ToFill) {
        match work {
            ToFill::Field { part, field } => indexes[*part].by_field[*field].prepare_room(),
            ToFill::Batch(batch) => self.fill(&mut indexes[batch.part], batch),
        }
    }

    /// Adds `batch`'s transfers to `indexes`, each field's entries gathered first and
    /// inserted many at a time, in table order.
    fn fill(&mut self, indexes: &mut UserDataIndexes, batch: &ValuesBatch) {
        let transfers = &batch.transfers;
        for position in batch.from..batch.to {
            indexes.gather(
                transfers.user_data(position as usize),
                position,
                &mut self.entries,
            );
        }
        indexes.add_gathered(&self.entries, &mut self.scratch, |p| {
            transfers.user_data(p as usize)
        });
        self.entries.iter_mut().for_each(Vec::clear);
    }
}

/// Fills each part's transfer user-data indexes (taken out of the parts, by part)
/// from the batches it is handed, beside the load or, without a thread, here.
pub(crate) struct ValuesFill<'scope>(Fill<'scope>);

enum Fill<'scope> {
    Beside {
        work: Sender<ToFill>,
        thread: ScopedJoinHandle<'scope, Option<Vec<UserDataIndexes>>>,
    },
    Here {
        indexes: Vec<UserDataIndexes>,
        room: FillRoom,
    },
}

impl<'scope> ValuesFill<'scope> {
    /// Starts filling `indexes` on a thread of `scope`, or here where none can start.
    pub fn start(scope: &'scope Scope<'scope, '_>, indexes: Vec<UserDataIndexes>) -> Self {
        if !thread_wanted() {
            return ValuesFill::here(indexes);
        }
        // The indexes go to the thread only once it runs, so that they are still here
        // if it cannot be started.
        let (give, take) = channel::<Vec<UserDataIndexes>>();
        let (work, receive) = channel::<ToFill>();
        let spawned = std::thread::Builder::new()
            .name("tally-values".into())
            .spawn_scoped(scope, move || fill_all(&take, &receive));
        match spawned {
            Ok(thread) => {
                give.send(indexes)
                    .expect("the values thread waits for its indexes");
                ValuesFill(Fill::Beside { work, thread })
            }
            Err(_) => ValuesFill::here(indexes),
        }
    }

    /// Fills `indexes` on the loading thread, batch by batch as they come.
    fn here(indexes: Vec<UserDataIndexes>) -> Self {
        ValuesFill(Fill::Here {
            indexes,
            room: FillRoom::default(),
        })
    }

    /// Says that field `field` (0: `user_data_128`, 1: `_64`, 2: `_32`) of part `part`
    /// is in use, before its first batch, so that its table is faulted in early.
    pub fn field_in_use(&mut self, part: usize, field: usize) {
        self.hand(ToFill::Field { part, field });
    }

    /// Indexes `batch`: batches of one part come in position order, each starting
    /// where the one before ended.
    pub fn add(&mut self, batch: ValuesBatch) {
        debug_assert!(batch.from <= batch.to);
        self.hand(ToFill::Batch(batch));
    }

    fn hand(&mut self, work: ToFill) {
        match &mut self.0 {
            // A thread that stopped listening panicked: `finish` says so.
            Fill::Beside {
                work: to_thread, ..
            } => drop(to_thread.send(work)),
            Fill::Here { indexes, room } => room.work_on(indexes, &work),
        }
    }

    /// The filled indexes, by part, once every batch is in.
    pub fn finish(self) -> Vec<UserDataIndexes> {
        match self.0 {
            Fill::Beside { work, thread } => {
                drop(work);
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    .expect("the values thread was given its indexes")
            }
            Fill::Here { indexes, .. } => indexes,
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Set by tests of the path a load takes where no values thread can start: loads on
    /// this thread then fill here.
    pub(crate) static FILL_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a load fills the user-data indexes on a thread of their own (always, but in
/// tests of the path taken without one).
fn thread_wanted() -> bool {
    #[cfg(test)]
    if FILL_HERE.with(std::cell::Cell::get) {
        return false;
    }
    true
}

/// The body of the values thread: the indexes, then all it is handed until the load
/// drops its end.
fn fill_all(
    take: &Receiver<Vec<UserDataIndexes>>,
    handed: &Receiver<ToFill>,
) -> Option<Vec<UserDataIndexes>> {
    let mut indexes = take.recv().ok()?;
    let mut room = FillRoom::default();
    for work in handed {
        room.work_on(&mut indexes, &work);
    }
    Some(indexes)
}
