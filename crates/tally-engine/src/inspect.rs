//! Read-only inspection of a ledger's directory: what the `tally` reading commands
//! (`accounts`, `transfers`, `verify`) show.

use crate::error::EngineError;
use std::path::Path;
use tally_log::VerifyReport;
use tally_state::StateMachine;

/// Reads the ledger in `dir` without changing it and rebuilds its state as
/// [`Ledger::open`] would.
///
/// Every checksum is checked (`tally_log::read_log`), nothing is repaired and no file is
/// made: a torn tail is reported, not cut. The log is read on one thread and replayed
/// on the calling one as it is read, never whole in memory. The caller holds the
/// directory's lock (`tally_log::DirLock`), so that no ledger writes while it reads.
///
/// # Errors
///
/// [`EngineError::Log`] when a file does not read or check, and
/// [`EngineError::Recovery`] when the state it holds does not load.
///
/// # Examples
///
/// ```
/// use tally_engine::{Account, Config, Ledger};
///
/// let dir = tempfile::tempdir().expect("temp dir");
/// let ledger = Ledger::open(Config::new(dir.path())).expect("open");
/// let account = Account { id: 7, ledger: 1, code: 1, ..Account::default() };
/// ledger.create_accounts(vec![account]).expect("durable");
/// ledger.shutdown().expect("clean shutdown");
///
/// let lock = tally_log::DirLock::acquire(dir.path()).expect("lock");
/// let (report, state) = tally_engine::inspect::read_only(dir.path()).expect("read");
/// assert_eq!(state.lookup_accounts(&[7]).len(), 1);
/// drop((report, lock));
/// ```
///
/// [`Ledger::open`]: crate::Ledger::open
pub fn read_only(dir: &Path) -> Result<(VerifyReport, StateMachine), EngineError> {
    crate::recovery::replay_read_only(dir)
}
