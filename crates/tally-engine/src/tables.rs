//! The table maker: a helper thread that allocates and faults in the index tables the
//! state asks for ([`tally_state::IndexTable::prefaulted`]), so that the apply thread
//! never stops to clear fresh memory when a user-data index starts in the middle of a
//! run, or when a large index grows. The apply thread hands requests over and adopts
//! finished tables between groups, with the state write-locked; a table that is late
//! only means the index grew by itself meanwhile.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use tally_state::{IndexTable, StateMachine, TableRequest};

/// Requests in flight at most: per part, eight indexes (the ids and three user-data
/// fields of two record kinds) each asking for at most two tables at once (an index
/// that grew by itself before its table came asks for the next size).
const REQUESTS_MAX: usize = 16 * tally_state::PARTS_MAX;

/// The apply thread's end of the table maker.
pub(crate) struct TableMaker {
    requests: Option<SyncSender<TableRequest>>,
    tables: Receiver<(TableRequest, IndexTable)>,
    thread: Option<JoinHandle<()>>,
}

impl TableMaker {
    /// Starts the helper thread.
    pub fn start() -> std::io::Result<TableMaker> {
        let (requests, incoming) = sync_channel::<TableRequest>(REQUESTS_MAX);
        // Room for every table not yet taken: at most the requests queued and the one
        // in hand (`tend` takes them all before it hands over more requests).
        let (done, tables) = sync_channel(REQUESTS_MAX + 1);
        let thread = std::thread::Builder::new()
            .name("tally-tables".into())
            .spawn(move || {
                while let Ok(request) = incoming.recv() {
                    let table = IndexTable::prefaulted(request.slots);
                    if done.send((request, table)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(TableMaker {
            requests: Some(requests),
            tables,
            thread: Some(thread),
        })
    }

    /// Between groups: gives the state the tables that are ready, then hands over
    /// what its last group asked for.
    pub fn tend(&self, state: &mut StateMachine) {
        while let Ok((request, table)) = self.tables.try_recv() {
            // False when the index outgrew the table meanwhile: then it is dropped.
            state.adopt_table(request, table);
        }
        if let Some(requests) = &self.requests {
            for request in state.tables_wanted() {
                // A full or closed channel drops the request: the index grows by itself.
                let _ = requests.try_send(request);
            }
        }
    }
}

impl Drop for TableMaker {
    fn drop(&mut self) {
        // Closing the requests ends the helper once the tables asked for are done; its
        // sends never block (the channel has room for all of them).
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
