//! What the replicated log carries: a group of batches with the leader's clock reading,
//! and what applying it answers. Both travel as bytes: batches as the 128-byte records
//! of the log format, results as (code, timestamp) pairs, with both accounts' balances
//! after each applied transfer of a batch that asked for them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::{Arc, OnceLock};
use tally_engine::{EventResult, TransferResult, transfer_balances};
use tally_types::codec::{
    RECORD_SIZE, decode_account, decode_transfer, encode_account, encode_transfer, record_at,
};
use tally_types::{AccountBalances, Batch, ChangeEvent, ResultCode, TransferBalances};

/// Most events one group carries (one full batch, about 1 MB); larger bursts are split
/// over several groups. Bounded because openraft gives a whole AppendEntries message
/// (up to 2 entries) one heartbeat interval to arrive and be synced.
pub const GROUP_EVENTS_MAX: usize = tally_types::BATCH_EVENTS_MAX;

/// One entry of the replicated log: the batches the leader took together, and the
/// leader's wall clock when it took them. Every replica stamps batch `i` from
/// `max(proposed_ns, last timestamp + 1)`, so all apply the very same events.
///
/// Cheap to clone: openraft clones an entry for each follower it sends it to. Its bytes
/// are made once (or kept as received) and shared by the log and every message.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// The leader's wall clock (ns since the Unix epoch) when it formed the group.
    pub proposed_ns: u64,
    /// The batches, in the order they apply.
    pub batches: Arc<Vec<Batch>>,
    /// Per batch, whether its results carry balances (empty: none does).
    balances: Arc<Vec<bool>>,
    encoded: Arc<OnceLock<Vec<u8>>>,
}

impl PartialEq for Group {
    fn eq(&self, other: &Group) -> bool {
        self.proposed_ns == other.proposed_ns
            && self.batches == other.batches
            && (0..self.batches.len()).all(|i| self.wants_balances(i) == other.wants_balances(i))
    }
}

impl Eq for Group {}

/// What applying one log entry answered: per batch, one result per event, or why the
/// batch got none (its time did not fit).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupResults {
    /// Per batch of the group, in order.
    pub batches: Vec<Result<Vec<EventResult>, BatchRefusal>>,
    /// Per batch, for a batch that asked for balances: one entry per event, both
    /// accounts' balances right after it when it was applied. Empty where no batch of
    /// the group asked, and for a batch that did not ask or was refused.
    pub balances: Vec<Vec<Option<TransferBalances>>>,
}

impl GroupResults {
    /// Batch `index`'s results with their balances (`None` in each where it did not
    /// ask, or for an event not applied).
    pub fn with_balances(&self, index: usize) -> Option<Vec<TransferResult>> {
        let results = self.batches.get(index)?.as_ref().ok()?;
        let balances = self.balances.get(index);
        Some(
            results
                .iter()
                .enumerate()
                .map(|(event, result)| TransferResult {
                    code: result.code,
                    timestamp: result.timestamp,
                    balances: balances.and_then(|list| list.get(event).copied().flatten()),
                })
                .collect(),
        )
    }
}

/// Each event's balances after it, for one batch's `results`, from the change events
/// its group captured (`changes`, in timestamp order).
pub(crate) fn batch_balances(
    changes: &[ChangeEvent],
    results: &[EventResult],
) -> Vec<Option<TransferBalances>> {
    results
        .iter()
        .map(|result| transfer_balances(changes, result))
        .collect()
}

/// Why a batch of a committed group was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchRefusal {
    /// The ledger's time leaves no room for the batch's stamps in u64.
    TimeOutOfRange {
        /// The leader's clock reading.
        now: u64,
    },
}

const KIND_ACCOUNTS: u8 = 1;
const KIND_TRANSFERS: u8 = 2;
/// Transfers whose results carry balances.
const KIND_TRANSFERS_WITH_BALANCES: u8 = 3;

/// Appends `batch` as kind, count and records; `balances`: its results carry balances
/// (transfers only).
pub(crate) fn encode_batch(batch: &Batch, balances: bool, out: &mut Vec<u8>) {
    let mut record = [0u8; RECORD_SIZE];
    match batch {
        Batch::CreateAccounts(accounts) => {
            out.push(KIND_ACCOUNTS);
            out.extend_from_slice(&(accounts.len() as u32).to_le_bytes());
            for account in accounts {
                encode_account(account, &mut record);
                out.extend_from_slice(&record);
            }
        }
        Batch::CreateTransfers(transfers) => {
            out.push(if balances {
                KIND_TRANSFERS_WITH_BALANCES
            } else {
                KIND_TRANSFERS
            });
            out.extend_from_slice(&(transfers.len() as u32).to_le_bytes());
            for transfer in transfers {
                encode_transfer(transfer, &mut record);
                out.extend_from_slice(&record);
            }
        }
    }
}

/// Reads one batch written by [`encode_batch`] at the start of `bytes`; returns it,
/// whether it asked for balances, and the bytes it took.
pub(crate) fn decode_batch(bytes: &[u8]) -> Result<(Batch, bool, usize), String> {
    let (&kind, rest) = bytes.split_first().ok_or("a batch is cut short")?;
    let count = read_u32(rest)? as usize;
    let records = rest
        .get(
            4..4 + count
                .checked_mul(RECORD_SIZE)
                .ok_or("a batch is too long")?,
        )
        .ok_or("a batch's records are cut short")?;
    let batch = match kind {
        KIND_ACCOUNTS => Batch::CreateAccounts(
            (0..count)
                .map(|i| record_at(records, i).and_then(decode_account))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("an account record: {e}"))?,
        ),
        KIND_TRANSFERS | KIND_TRANSFERS_WITH_BALANCES => Batch::CreateTransfers(
            (0..count)
                .map(|i| record_at(records, i).and_then(decode_transfer))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("a transfer record: {e}"))?,
        ),
        other => return Err(format!("unknown batch kind {other}")),
    };
    Ok((
        batch,
        kind == KIND_TRANSFERS_WITH_BALANCES,
        1 + 4 + records.len(),
    ))
}

fn read_u32(bytes: &[u8]) -> Result<u32, String> {
    let head: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("a length is cut short")?;
    Ok(u32::from_le_bytes(head))
}

fn read_u64(bytes: &[u8]) -> Result<u64, String> {
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("a number is cut short")?;
    Ok(u64::from_le_bytes(head))
}

/// Encodes a list of batches: count, then each batch (`balances[i]`: batch `i` asks
/// for balances; missing entries do not).
pub(crate) fn encode_batches(batches: &[Batch], balances: &[bool], out: &mut Vec<u8>) {
    out.extend_from_slice(&(batches.len() as u32).to_le_bytes());
    for (index, batch) in batches.iter().enumerate() {
        encode_batch(batch, balances.get(index).copied().unwrap_or(false), out);
    }
}

/// Decodes what [`encode_batches`] wrote, refusing trailing bytes: the batches, and
/// which ask for balances (empty when none does).
pub(crate) fn decode_batches(bytes: &[u8]) -> Result<(Vec<Batch>, Vec<bool>), String> {
    let count = read_u32(bytes)? as usize;
    let mut at = 4;
    let mut batches = Vec::with_capacity(count.min(1024));
    let mut balances = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let (batch, asks, used) = decode_batch(&bytes[at..])?;
        batches.push(batch);
        balances.push(asks);
        at += used;
    }
    if at != bytes.len() {
        return Err("trailing bytes after the batches".into());
    }
    if !balances.contains(&true) {
        balances.clear();
    }
    Ok((batches, balances))
}

impl Group {
    /// A group of `batches` formed at `proposed_ns`.
    pub fn new(proposed_ns: u64, batches: Vec<Batch>) -> Group {
        Group::with_balances(proposed_ns, batches, Vec::new())
    }

    /// A group of `batches` formed at `proposed_ns`, where batch `i`'s results carry
    /// balances when `balances[i]` (missing entries: they do not). Only transfer
    /// batches carry them.
    pub fn with_balances(proposed_ns: u64, batches: Vec<Batch>, balances: Vec<bool>) -> Group {
        let mut balances: Vec<bool> = balances
            .into_iter()
            .zip(batches.iter())
            .map(|(asks, batch)| asks && matches!(batch, Batch::CreateTransfers(_)))
            .collect();
        if !balances.contains(&true) {
            balances.clear();
        }
        Group {
            proposed_ns,
            batches: Arc::new(batches),
            balances: Arc::new(balances),
            encoded: Arc::default(),
        }
    }

    /// Whether batch `index`'s results carry balances.
    pub fn wants_balances(&self, index: usize) -> bool {
        self.balances.get(index).copied().unwrap_or(false)
    }

    /// Whether any batch's results carry balances (applying the group then captures
    /// its changes).
    pub fn wants_any_balances(&self) -> bool {
        !self.balances.is_empty()
    }

    /// The batches and which ask for balances, taken out of the group (copied only if
    /// a clone still shares them).
    pub fn into_parts(self) -> (Vec<Batch>, Vec<bool>) {
        let balances = Arc::try_unwrap(self.balances).unwrap_or_else(|shared| (*shared).clone());
        let batches =
            Arc::try_unwrap(self.batches).unwrap_or_else(|shared| shared.as_ref().clone());
        (batches, balances)
    }

    /// The group's bytes: encoded on first use, then shared.
    fn bytes(&self) -> &[u8] {
        self.encoded.get_or_init(|| self.to_bytes())
    }

    /// Number of events over all batches.
    pub fn events(&self) -> usize {
        self.batches.iter().map(Batch::len).sum()
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.events() * RECORD_SIZE + 5 * self.batches.len());
        out.extend_from_slice(&self.proposed_ns.to_le_bytes());
        encode_batches(&self.batches, &self.balances, &mut out);
        out
    }

    fn from_bytes(bytes: Vec<u8>) -> Result<Group, String> {
        let proposed_ns = read_u64(&bytes)?;
        let (batches, balances) = decode_batches(&bytes[8..])?;
        Ok(Group {
            proposed_ns,
            batches: Arc::new(batches),
            balances: Arc::new(balances),
            // Kept: the follower appends the very bytes it received to its log.
            encoded: Arc::new(OnceLock::from(bytes)),
        })
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "group of {} batches, {} events",
            self.batches.len(),
            self.events()
        )
    }
}

impl Serialize for Group {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.bytes())
    }
}

impl<'de> Deserialize<'de> for Group {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Group, D::Error> {
        let bytes: Vec<u8> = serde_bytes_vec(deserializer)?;
        Group::from_bytes(bytes).map_err(serde::de::Error::custom)
    }
}

/// Encodes results: per batch a tag (0 = results, 1 = time out of range) and its
/// content; results as (u8 code, u64 timestamp), codes numbered as on disk.
pub(crate) fn encode_results(results: &GroupResults, out: &mut Vec<u8>) {
    out.extend_from_slice(&(results.batches.len() as u32).to_le_bytes());
    for batch in &results.batches {
        match batch {
            Ok(events) => {
                out.push(0);
                out.extend_from_slice(&(events.len() as u32).to_le_bytes());
                for event in events {
                    out.push(event.code as u8);
                    out.extend_from_slice(&event.timestamp.to_le_bytes());
                }
            }
            Err(BatchRefusal::TimeOutOfRange { now }) => {
                out.push(1);
                out.extend_from_slice(&now.to_le_bytes());
            }
        }
    }
    encode_balances(&results.balances, out);
}

/// Encodes balance lists: their count, then per list its length and per event a
/// presence byte and, when present, the eight balances (u128 each).
fn encode_balances(lists: &[Vec<Option<TransferBalances>>], out: &mut Vec<u8>) {
    out.extend_from_slice(&(lists.len() as u32).to_le_bytes());
    for list in lists {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for balances in list {
            let Some(balances) = balances else {
                out.push(0);
                continue;
            };
            out.push(1);
            for account in [balances.debit_account, balances.credit_account] {
                for value in [
                    account.debits_pending,
                    account.debits_posted,
                    account.credits_pending,
                    account.credits_posted,
                ] {
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
        }
    }
}

/// Decodes what [`encode_balances`] wrote at `bytes[*at..]`, moving `at` past it.
fn decode_balances(
    bytes: &[u8],
    at: &mut usize,
) -> Result<Vec<Vec<Option<TransferBalances>>>, String> {
    let lists = read_u32(bytes.get(*at..).unwrap_or_default())? as usize;
    *at += 4;
    let mut out = Vec::with_capacity(lists.min(1024));
    for _ in 0..lists {
        let events = read_u32(bytes.get(*at..).unwrap_or_default())? as usize;
        *at += 4;
        let mut list = Vec::with_capacity(events.min(tally_types::BATCH_EVENTS_MAX));
        for _ in 0..events {
            let present = *bytes.get(*at).ok_or("balances are cut short")?;
            *at += 1;
            if present == 0 {
                list.push(None);
                continue;
            }
            let mut values = [0u128; 8];
            for value in &mut values {
                let raw: [u8; 16] = bytes
                    .get(*at..*at + 16)
                    .and_then(|b| b.try_into().ok())
                    .ok_or("a balance is cut short")?;
                *value = u128::from_le_bytes(raw);
                *at += 16;
            }
            let account = |v: &[u128]| AccountBalances {
                debits_pending: v[0],
                debits_posted: v[1],
                credits_pending: v[2],
                credits_posted: v[3],
            };
            list.push(Some(TransferBalances {
                debit_account: account(&values[..4]),
                credit_account: account(&values[4..]),
            }));
        }
        out.push(list);
    }
    Ok(out)
}

/// Decodes what [`encode_results`] wrote.
pub(crate) fn decode_results(bytes: &[u8]) -> Result<GroupResults, String> {
    let count = read_u32(bytes)? as usize;
    let mut at = 4;
    let mut batches = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let tag = *bytes.get(at).ok_or("results are cut short")?;
        at += 1;
        match tag {
            0 => {
                let events = read_u32(&bytes[at..])? as usize;
                at += 4;
                let mut list = Vec::with_capacity(events.min(tally_types::BATCH_EVENTS_MAX));
                for _ in 0..events {
                    let raw = *bytes.get(at).ok_or("a result is cut short")?;
                    let code = ResultCode::from_u8(raw).map_err(|e| e.to_string())?;
                    let timestamp = read_u64(&bytes[at + 1..])?;
                    at += 9;
                    list.push(EventResult { code, timestamp });
                }
                batches.push(Ok(list));
            }
            1 => {
                let now = read_u64(&bytes[at..])?;
                at += 8;
                batches.push(Err(BatchRefusal::TimeOutOfRange { now }));
            }
            other => return Err(format!("unknown result tag {other}")),
        }
    }
    let balances = decode_balances(bytes, &mut at)?;
    if at != bytes.len() {
        return Err("trailing bytes after the results".into());
    }
    Ok(GroupResults { batches, balances })
}

impl Serialize for GroupResults {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::new();
        encode_results(self, &mut out);
        serializer.serialize_bytes(&out)
    }
}

impl<'de> Deserialize<'de> for GroupResults {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<GroupResults, D::Error> {
        let bytes = serde_bytes_vec(deserializer)?;
        decode_results(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Reads a byte string from any serde format.
fn serde_bytes_vec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    struct BytesVisitor;
    impl<'de> serde::de::Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(byte) = seq.next_element()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_byte_buf(BytesVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_testkit::{TEST_LEDGER, account, transfer};
    use tally_types::AccountFlags;

    #[test]
    fn groups_and_results_round_trip_through_postcard() {
        let group = Group::new(
            42,
            vec![
                Batch::CreateAccounts(vec![
                    account(1, TEST_LEDGER, AccountFlags::empty()),
                    account(2, TEST_LEDGER, AccountFlags::empty()),
                ]),
                Batch::CreateTransfers(vec![transfer(9, 1, 2, 5)]),
            ],
        );
        let bytes = postcard::to_allocvec(&group).expect("encodes");
        let back: Group = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, group);
        assert!(!back.wants_any_balances());

        // Balances asked of the transfers only: an account batch never carries them.
        let (batches, _) = group.into_parts();
        let asking = Group::with_balances(42, batches, vec![true, true]);
        assert!(!asking.wants_balances(0) && asking.wants_balances(1));
        let bytes = postcard::to_allocvec(&asking).expect("encodes");
        let back: Group = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, asking);
        assert!(back.wants_balances(1));
        assert_ne!(back, Group::new(42, back.batches.as_ref().clone()));

        let balances = TransferBalances {
            debit_account: AccountBalances {
                debits_pending: 1,
                debits_posted: u128::MAX,
                credits_pending: 3,
                credits_posted: 4,
            },
            credit_account: AccountBalances {
                debits_pending: 5,
                debits_posted: 6,
                credits_pending: 7,
                credits_posted: 8,
            },
        };
        for balances in [Vec::new(), vec![vec![Some(balances), None], Vec::new()]] {
            let results = GroupResults {
                batches: vec![
                    Ok(vec![
                        EventResult {
                            code: ResultCode::Ok,
                            timestamp: 9,
                        },
                        EventResult {
                            code: ResultCode::Exists,
                            timestamp: 0,
                        },
                    ]),
                    Err(BatchRefusal::TimeOutOfRange { now: 3 }),
                ],
                balances,
            };
            let bytes = postcard::to_allocvec(&results).expect("encodes");
            let back: GroupResults = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(back, results);
            let mut raw = Vec::new();
            encode_results(&results, &mut raw);
            for cut in 0..raw.len() {
                assert!(decode_results(&raw[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn damaged_groups_are_refused() {
        let group = Group::new(
            1,
            vec![Batch::CreateAccounts(vec![account(
                1,
                TEST_LEDGER,
                AccountFlags::empty(),
            )])],
        );
        let bytes = group.to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                Group::from_bytes(bytes[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        let mut unknown = bytes.clone();
        unknown[12] = 9;
        assert!(Group::from_bytes(unknown).is_err());
    }
}
