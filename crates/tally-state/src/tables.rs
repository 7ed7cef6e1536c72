//! Index tables prepared on another thread: a user-data index that starts in the middle
//! of a run (at the first record that sets its field) begins small and asks for the
//! table its reserved room calls for, and a large index (an id index, a user-data
//! index) asks for the table it will next grow into before it is full; the engine has
//! it allocated and faulted in on a helper thread ([`IndexTable::prefaulted`]) and hands
//! it back between groups. Without a helper an index simply grows as it fills. No
//! effect on results: tables are memory.

use crate::index::IndexTable;
use crate::state::StateMachine;
use crate::value_index::UserDataIndexes;

/// A table one index asks for ([`StateMachine::tables_wanted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRequest {
    part: u32,
    transfers: bool,
    /// A user-data field (0 to 2), or [`IDS`] for the id index.
    field: u8,
    /// Slots of the table to prepare.
    pub slots: usize,
}

/// [`TableRequest::field`] of an id index.
const IDS: u8 = u8::MAX;

impl StateMachine {
    /// Whether user-data indexes take their reserved room from tables prepared
    /// elsewhere (true) or at their first record (false, the default: a replay, which
    /// has no helper and no one waiting on it).
    pub fn prepare_tables_elsewhere(&mut self, on: bool) {
        for part in &mut self.parts {
            part.account_values.prepare_elsewhere(on);
            part.transfer_values.prepare_elsewhere(on);
            part.account_index.grow_elsewhere(on);
            part.transfer_index.grow_elsewhere(on);
        }
    }

    /// The tables indexes have asked for since the last call (each index asks once).
    pub fn tables_wanted(&mut self) -> Vec<TableRequest> {
        let mut wanted = Vec::new();
        for part in &mut self.parts {
            let index = part.index() as u32;
            for (transfers, ids) in [
                (false, &mut part.account_index),
                (true, &mut part.transfer_index),
            ] {
                if let Some(slots) = ids.growth_wanted() {
                    wanted.push(TableRequest {
                        part: index,
                        transfers,
                        field: IDS,
                        slots,
                    });
                }
            }
            for (transfers, indexes) in [
                (false, &mut part.account_values),
                (true, &mut part.transfer_values),
            ] {
                for (field, value_index) in indexes.by_field.iter_mut().enumerate() {
                    if let Some(slots) = value_index.take_wanted() {
                        wanted.push(TableRequest {
                            part: index,
                            transfers,
                            field: field as u8,
                            slots,
                        });
                    }
                }
            }
        }
        wanted
    }

    /// Gives the index that asked for it (`request`) its prepared table; false, and the
    /// table dropped, when that index has outgrown it meanwhile.
    pub fn adopt_table(&mut self, request: TableRequest, table: IndexTable) -> bool {
        assert_eq!(table.slots(), request.slots, "the table asked for");
        let part = &mut self.parts[request.part as usize];
        if request.field == IDS {
            let ids = if request.transfers {
                &mut part.transfer_index
            } else {
                &mut part.account_index
            };
            return ids.adopt(table);
        }
        let indexes: &mut UserDataIndexes = if request.transfers {
            &mut part.transfer_values
        } else {
            &mut part.account_values
        };
        indexes.by_field[usize::from(request.field)].adopt(table)
    }
}
