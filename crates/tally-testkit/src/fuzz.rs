//! Fuzz targets: one `pub fn NAME(data: &[u8])` per decoder or state-machine property.
//!
//! The cargo-fuzz project in `fuzz/` calls these from libFuzzer on nightly;
//! this crate's `tests/fuzz_corpus.rs` replays every committed corpus file through them on stable
//! (the short bounded run in CI). Each function must never panic on any input except
//! when a property is violated: then it panics with a message saying which, because a
//! panic is how libFuzzer and the test harness learn of a failure.
//!
//! * [`log_frame`]: any bytes through the frame decoder; a frame that decodes re-encodes
//!   to exactly the same bytes.
//! * [`log_segment`]: a segment file (garbage, or a valid log mutated) opened through
//!   `Wal::open_with_storage`: an error, or records that are a prefix of what was written,
//!   never a later frame dropped silently, and a file left canonical.
//! * [`snapshot`]: a snapshot file (garbage, or a valid snapshot mutated): a changed file
//!   is never loaded; one that loads is byte-for-byte what the writer produces.
//! * [`json_line`]: any line through `tally_json::parse_line`: a clear error, or a request
//!   whose values are in range.
//! * [`state_machine`]: batches derived from the bytes applied to the reference state
//!   machine: conservation, balance limits, chain atomicity, snapshot-image round trip,
//!   frame round trip and idempotent resubmission all hold.
//!
//! * [`grpc_request`]: any bytes decoded as each gRPC request message and converted to
//!   the ledger's records as the server converts them: a clear error, or records that
//!   convert back to the wire and again to the same records.
//!
//! Only with this crate's `fuzz` feature.
// Fuzz targets report a violated property by panicking, so `expect` on "cannot happen"
// paths is deliberate here; there is no `unwrap()` on input.
#![allow(clippy::expect_used)]

use tally_json::{NoLedgers, Request};
use tally_log::faulty::FaultyStorage;
use tally_log::layout::{
    self, FRAME_HEADER_SIZE, decode_frame, decode_frame_header, encode_frame,
    encode_segment_header, find_valid_frame_header,
};
use tally_log::{LogOptions, LogRecord, Wal};
use tally_state::StateMachine;
use tally_types::currency::{CurrencyTable, format_amount, parse_amount};
use tally_types::{
    Account, AccountFlags, BATCH_EVENTS_MAX, Batch, NS_PER_S, ResultCode, Transfer, TransferFlags,
};

/// Reads fuzz bytes as a stream of small decisions; past the end every read is 0.
struct Input<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data, position: 0 }
    }

    fn is_empty(&self) -> bool {
        self.position >= self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let byte = self.data.get(self.position).copied().unwrap_or(0);
        self.position += 1;
        byte
    }

    fn below(&mut self, n: u8) -> u8 {
        self.byte() % n
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn rest(&self) -> &'a [u8] {
        self.data.get(self.position..).unwrap_or(&[])
    }

    /// An id over a small space, with the reserved values 0 and u128::MAX now and then.
    fn id(&mut self, space: u8) -> u128 {
        match self.byte() {
            0 => 0,
            255 => u128::MAX,
            other => 1 + u128::from(other % space),
        }
    }

    /// An event's own timestamp: mostly 0; now and then a small one (the fuzz clock
    /// starts at 1, so an import may be accepted, or refused as regressing or
    /// advancing) or one past the range of imported timestamps.
    fn timestamp(&mut self) -> u64 {
        match self.below(8) {
            0 => u64::from(self.u16()),
            1 => u64::MAX - u64::from(self.byte()),
            _ => 0,
        }
    }

    /// An amount: mostly small, sometimes near u128::MAX to reach the overflow checks.
    fn amount(&mut self) -> u128 {
        match self.below(8) {
            0 => 0,
            1..=4 => u128::from(self.byte()),
            5 => u128::from(self.u16()),
            6 => u128::MAX - u128::from(self.byte()),
            _ => 1u128 << self.below(128),
        }
    }
}

/// One batch of events derived from the input: small id spaces so that collisions,
/// chains, second phases, refunds and failures are common. Balances stay zero, as
/// `Ledger::submit` admits only such batches; a timestamp is given now and then (an
/// imported event's, or one refused as `timestamp_must_be_zero`).
fn derive_batch(input: &mut Input<'_>) -> Batch {
    if input.below(4) == 0 {
        let count = 1 + usize::from(input.below(4));
        let accounts = (0..count)
            .map(|_| Account {
                id: input.id(10),
                ledger: u32::from(input.below(3)),
                code: u16::from(input.below(3)),
                flags: AccountFlags::from_bits(u16::from(input.byte() & 0b11_1111))
                    .expect("six defined account flag bits"),
                user_data_32: u32::from(input.below(2)),
                timestamp: input.timestamp(),
                ..Account::default()
            })
            .collect();
        return Batch::CreateAccounts(accounts);
    }
    let count = 1 + usize::from(input.below(8));
    let transfers = (0..count)
        .map(|_| {
            let flags = match input.below(4) {
                // Mostly one kind flag (plus maybe linked), sometimes any combination.
                0 => u16::from_le_bytes([input.byte(), input.byte() & 0b11]),
                _ => (1u16 << input.below(10)) | u16::from(input.below(2)),
            };
            Transfer {
                id: input.id(40),
                debit_account_id: input.id(12),
                credit_account_id: input.id(12),
                amount: input.amount(),
                pending_id: if input.below(2) == 0 { 0 } else { input.id(40) },
                timeout: match input.below(6) {
                    0 => u32::MAX,
                    other => u32::from(other / 2),
                },
                ledger: u32::from(input.below(3)),
                code: u16::from(input.below(3)),
                flags: TransferFlags::from_bits(flags).expect("ten defined transfer flag bits"),
                user_data_64: u64::from(input.below(2)),
                user_data_128: u128::from(input.below(3)),
                timestamp: input.timestamp(),
                ..Transfer::default()
            }
        })
        .collect();
    Batch::CreateTransfers(transfers)
}

/// Linked flags of a batch, per event.
fn linked_flags(batch: &Batch) -> Vec<bool> {
    match batch {
        Batch::CreateAccounts(accounts) => accounts
            .iter()
            .map(|a| a.flags.contains(AccountFlags::LINKED))
            .collect(),
        Batch::CreateTransfers(transfers) => transfers
            .iter()
            .map(|t| t.flags.contains(TransferFlags::LINKED))
            .collect(),
    }
}

/// Asserts that every linked chain of `batch` succeeded or failed as a whole.
pub fn assert_chains_atomic(batch: &Batch, codes: &[ResultCode]) {
    let linked = linked_flags(batch);
    assert_eq!(linked.len(), codes.len(), "one result per event");
    let mut start = 0;
    for index in 0..linked.len() {
        let chain_ends = !linked[index] || index + 1 == linked.len();
        if chain_ends {
            let chain = &codes[start..=index];
            let ok = chain.iter().filter(|c| **c == ResultCode::Ok).count();
            assert!(
                ok == 0 || ok == chain.len(),
                "chain {start}..={index} half applied: {chain:?}"
            );
            start = index + 1;
        }
    }
}

/// Applies the buffered group to `sharded` by plan (or serially when the plan says so)
/// and checks every batch's results against the reference's, recorded in the group.
fn apply_group_sharded(
    sharded: &mut StateMachine,
    group: &mut Vec<(u64, Batch, Vec<ResultCode>)>,
    picks: &mut u64,
) {
    let stamped: Vec<(u64, &Batch)> = group.iter().map(|(t, b, _)| (*t, b)).collect();
    let got: Vec<Vec<ResultCode>> = match tally_state::plan(sharded, &stamped) {
        Ok(plan) => sharded.apply_planned(&stamped, &plan, |ready| {
            // xorshift64: any legal order must do.
            *picks ^= *picks << 13;
            *picks ^= *picks >> 7;
            *picks ^= *picks << 17;
            (*picks % ready as u64) as usize
        }),
        Err(_) => stamped.iter().map(|(t, b)| sharded.apply(*t, b)).collect(),
    };
    for ((_, batch, expected), got) in group.iter().zip(&got) {
        assert_eq!(
            got, expected,
            "3 parts and the reference differ on {batch:?}"
        );
    }
    group.clear();
}

/// The state machine fed batches derived from the bytes keeps every invariant.
pub fn state_machine(data: &[u8]) {
    let mut input = Input::new(data);
    let mut state = StateMachine::new();
    // The same batches, grouped, applied by plan to a 3-part state in a pseudo-random
    // legal interleaving: results and state must equal the reference's (docs/spec.md §3.1).
    let mut sharded = StateMachine::with_parts(3);
    let mut group: Vec<(u64, Batch, Vec<ResultCode>)> = Vec::new();
    let mut picks = data.len() as u64 | 1;
    let mut timestamp: u64 = 1;
    let mut applied: Vec<Transfer> = Vec::new();
    let mut sequence = 0;
    while !input.is_empty() && sequence < 64 {
        let batch = derive_batch(&mut input);
        // Advance the clock, sometimes by whole seconds so pending transfers expire.
        let step = u64::from(input.byte());
        timestamp += if input.below(4) == 0 {
            step * NS_PER_S
        } else {
            step + 1
        };
        sequence += 1;
        let codes = state.apply(timestamp, &batch);
        assert_eq!(codes.len(), batch.len(), "one result per event");
        assert_chains_atomic(&batch, &codes);
        let violations = state.check_invariants();
        assert!(violations.is_empty(), "invariants broken: {violations:?}");
        if let Batch::CreateTransfers(transfers) = &batch {
            for (transfer, code) in transfers.iter().zip(&codes) {
                if *code == ResultCode::Ok {
                    applied.push(*transfer);
                }
            }
        }
        assert_frame_round_trip(&LogRecord {
            sequence,
            timestamp,
            batch: batch.clone(),
        });
        let batch_stamp = timestamp;
        timestamp += codes.len() as u64;
        group.push((batch_stamp, batch, codes));
        if input.below(3) == 0 {
            apply_group_sharded(&mut sharded, &mut group, &mut picks);
        }
    }
    apply_group_sharded(&mut sharded, &mut group, &mut picks);
    assert_eq!(
        sharded.image(),
        state.image(),
        "3 parts and the reference differ"
    );

    let image = state.image();
    let rebuilt = StateMachine::from_image(image.clone()).expect("an image of a state loads");
    assert_eq!(rebuilt.image(), image, "image round trip changed the state");

    // Idempotency: every transfer that was applied answers `exists` and changes nothing
    // (other than pending expiries the new timestamp releases, which an empty batch
    // at the same timestamp releases too).
    let resubmitted: Vec<Transfer> = applied
        .iter()
        .map(|t| Transfer {
            flags: t.flags.without(TransferFlags::LINKED),
            ..*t
        })
        .collect();
    for chunk in resubmitted.chunks(BATCH_EVENTS_MAX) {
        timestamp += 1;
        let mut expected = state.clone();
        expected.apply(timestamp, &Batch::CreateTransfers(Vec::new()));
        let codes = state.apply(timestamp, &Batch::CreateTransfers(chunk.to_vec()));
        assert!(
            codes.iter().all(|c| *c == ResultCode::Exists),
            "resubmitted transfers did not all answer exists: {codes:?}"
        );
        let mut before = expected.image();
        let mut after = state.image();
        before.last_timestamp = 0;
        after.last_timestamp = 0;
        assert_eq!(before, after, "a resubmitted transfer changed the state");
        timestamp += chunk.len() as u64;
    }
}

fn assert_frame_round_trip(record: &LogRecord) {
    let mut bytes = Vec::new();
    encode_frame(record, &mut bytes);
    let (decoded, len) = decode_frame(&bytes).expect("an encoded frame decodes");
    assert_eq!(len, bytes.len(), "frame length");
    assert_eq!(&decoded, record, "frame round trip");
}

/// Any bytes through the frame decoder: an error, or a frame that re-encodes to the
/// same bytes (nothing corrupt is accepted as something else).
pub fn log_frame(data: &[u8]) {
    let header = decode_frame_header(data);
    match decode_frame(data) {
        Ok((record, len)) => {
            assert!(len <= data.len(), "frame longer than its bytes");
            assert!(header.is_ok(), "a frame decoded without a valid header");
            let mut bytes = Vec::new();
            encode_frame(&record, &mut bytes);
            assert_eq!(
                bytes,
                data[..len],
                "decoded frame does not re-encode to its bytes"
            );
        }
        Err(error) => assert!(!error.to_string().is_empty(), "error without a message"),
    }
    if let Some(offset) = find_valid_frame_header(data, 0) {
        assert!(
            decode_frame_header(&data[offset..]).is_ok(),
            "find_valid_frame_header returned an invalid header"
        );
    }
}

fn segment_bytes(records: &[LogRecord]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = encode_segment_header(1).to_vec();
    let mut offsets = Vec::with_capacity(records.len() + 1);
    for record in records {
        offsets.push(bytes.len());
        encode_frame(record, &mut bytes);
    }
    offsets.push(bytes.len());
    (bytes, offsets)
}

/// Applies up to three mutations (bit flip, truncation, overwrite, appended garbage).
fn mutate(input: &mut Input<'_>, original: &[u8]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for _ in 0..input.below(4) {
        let at = usize::from(input.u16());
        match input.below(4) {
            0 if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] ^= 1 << input.below(8);
            }
            1 => bytes.truncate(at % (bytes.len() + 1)),
            2 if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] = input.byte();
            }
            _ => {
                let count = usize::from(input.below(64));
                bytes.extend((0..count).map(|_| input.byte()));
            }
        }
    }
    bytes
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then_some(a.len().min(b.len())))
}

fn open(storage: &FaultyStorage) -> Result<(Wal, tally_log::Recovered), tally_log::LogError> {
    Wal::open_with_storage(Box::new(storage.clone()), LogOptions::default())
}

/// A segment file opened by recovery. The first byte picks raw garbage or a valid log
/// (derived from the bytes) that is then mutated.
pub fn log_segment(data: &[u8]) {
    let mut input = Input::new(data);
    if input.below(4) == 0 {
        log_segment_raw(input.rest());
    } else {
        log_segment_mutated(&mut input);
    }
}

fn log_segment_raw(bytes: &[u8]) {
    let storage = FaultyStorage::new();
    storage.write_file_durable(&layout::segment_name(1), bytes);
    let Ok((wal, recovered)) = open(&storage) else {
        return;
    };
    drop(wal);
    let (canonical, _) = segment_bytes(&recovered.records);
    let file = storage
        .read_file(&layout::segment_name(1))
        .expect("segment 1 exists after open");
    // The header may be an older format version's; the frames are canonical; only zeros
    // (preallocated space) may follow them.
    assert_eq!(
        layout::decode_segment_header(&file),
        Ok(1),
        "segment header"
    );
    assert!(
        file.len() >= canonical.len(),
        "recovered segment lost frames"
    );
    assert_eq!(
        file[layout::SEGMENT_HEADER_SIZE..canonical.len()],
        canonical[layout::SEGMENT_HEADER_SIZE..],
        "recovered frames are not canonical"
    );
    assert!(
        layout::is_zero(&file[canonical.len()..]),
        "recovered segment has more than zeros after its frames"
    );
    for (index, record) in recovered.records.iter().enumerate() {
        assert_eq!(
            record.sequence,
            index as u64 + 1,
            "sequences are consecutive"
        );
    }
    if recovered.torn_segment_removed {
        assert!(
            recovered.records.is_empty(),
            "header was recreated over records"
        );
        return;
    }
    assert_eq!(
        &bytes[..canonical.len()],
        &file[..canonical.len()],
        "recovery changed kept bytes"
    );
    assert!(
        file.len() == canonical.len() || file.len() == bytes.len(),
        "a torn tail is truncated or zeroed in place, nothing else"
    );
    // Torn bytes are counted up to the last non-zero one; zeros after them are space.
    let after_frames = &bytes[canonical.len()..];
    let torn = after_frames
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last + 1);
    assert_eq!(
        recovered.torn_tail_bytes_cut as usize, torn,
        "cut bytes reported"
    );
}

fn log_segment_mutated(input: &mut Input<'_>) {
    let count = 1 + usize::from(input.below(4));
    let mut timestamp = 1_000;
    let records: Vec<LogRecord> = (1..=count as u64)
        .map(|sequence| {
            let batch = derive_batch(input);
            let record = LogRecord {
                sequence,
                timestamp,
                batch,
            };
            timestamp += 1 + record.batch.len() as u64;
            record
        })
        .collect();
    let (original, offsets) = segment_bytes(&records);
    let mutated = mutate(input, &original);
    let storage = FaultyStorage::new();
    storage.write_file_durable(&layout::segment_name(1), &mutated);
    let opened = open(&storage);
    let Some(damage) = first_difference(&original, &mutated) else {
        let (_, recovered) = opened.expect("an undamaged log opens");
        assert_eq!(
            recovered.records, records,
            "an undamaged log reads back whole"
        );
        return;
    };
    let Ok((wal, recovered)) = opened else {
        return;
    };
    drop(wal);
    let kept = recovered.records.len();
    assert!(kept <= count, "more records than were written");
    assert_eq!(
        recovered.records[..],
        records[..kept],
        "recovered records are not the ones written"
    );
    // Frames wholly before the first damaged byte are never lost.
    let intact = offsets[1..].iter().filter(|end| **end <= damage).count();
    assert!(
        kept >= intact,
        "recovery dropped {} undamaged frame(s) before byte {damage}",
        intact - kept
    );
    // A later frame whose header is still intact in place means the damage is inside
    // the committed log: recovery must stop, not cut.
    for (later, start) in offsets.iter().enumerate().take(count).skip(kept + 1) {
        let header = *start..*start + FRAME_HEADER_SIZE;
        assert!(
            mutated.get(header.clone()) != original.get(header),
            "frame {later} is intact but was dropped after damage at byte {damage}"
        );
    }
}

const SNAPSHOT_NAME_PREFIX: &str = "snapshot-";

fn snapshot_file(storage: &FaultyStorage) -> Option<(String, Vec<u8>)> {
    let name = storage
        .file_names()
        .into_iter()
        .find(|name| name.starts_with(SNAPSHOT_NAME_PREFIX) && !name.ends_with(".tmp"))?;
    let bytes = storage.read_file(&name)?;
    Some((name, bytes))
}

/// Logs `batches` and applies them, then writes a snapshot of the state after the last.
/// Returns the storage, the snapshot's file name, its bytes and the image it holds.
fn logged_with_snapshot(batches: Vec<Batch>) -> (FaultyStorage, String, Vec<u8>, LogRecords) {
    let storage = FaultyStorage::new();
    let (mut wal, _) = open(&storage).expect("a fresh log opens");
    let mut state = StateMachine::new();
    let mut records = Vec::new();
    let mut timestamp = 1_000;
    for (index, batch) in batches.into_iter().enumerate() {
        let record = LogRecord {
            sequence: index as u64 + 1,
            timestamp,
            batch,
        };
        timestamp += 1 + record.batch.len() as u64;
        state.apply(record.timestamp, &record.batch);
        records.push(record);
    }
    wal.append(&records).expect("append to healthy storage");
    let image = state.image();
    wal.write_snapshot(records.len() as u64, &image)
        .expect("snapshot to healthy storage");
    drop(wal);
    let (name, bytes) = snapshot_file(&storage).expect("the snapshot was written");
    (storage, name, bytes, LogRecords { records, image })
}

struct LogRecords {
    records: Vec<LogRecord>,
    image: tally_types::StateImage,
}

/// A snapshot file read by recovery. The first byte picks raw garbage (next to a valid
/// log) or a valid snapshot (of a state derived from the bytes) that is then mutated.
pub fn snapshot(data: &[u8]) {
    let mut input = Input::new(data);
    let raw = input.below(4) == 0;
    let batches: Vec<Batch> = (0..1 + input.below(4))
        .map(|_| derive_batch(&mut input))
        .collect();
    let (storage, name, original, written) = logged_with_snapshot(batches);
    let bytes = if raw {
        input.rest().to_vec()
    } else {
        mutate(&mut input, &original)
    };
    storage.write_file_durable(&name, &bytes);
    let opened = open(&storage);
    if bytes == original {
        let (_, recovered) = opened.expect("an undamaged snapshot opens");
        let (sequence, image) = recovered.snapshot.expect("an undamaged snapshot is used");
        assert_eq!(sequence, written.records.len() as u64, "snapshot sequence");
        assert_eq!(image, written.image, "snapshot image");
        return;
    }
    // Damaged: the log still reaches back to sequence 1, so recovery may fall back to
    // it; it must never load the changed file.
    let Ok((_, recovered)) = opened else {
        return;
    };
    assert!(
        recovered.snapshot.is_none(),
        "a changed snapshot file was loaded ({} bytes, originally {})",
        bytes.len(),
        original.len()
    );
    assert_eq!(
        recovered.records, written.records,
        "fallback replays the whole log"
    );
}

/// Any line through the `tally apply` request decoder: a clear error, or values in range.
pub fn json_line(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let currencies = CurrencyTable::default();
    let parsed = match tally_json::parse_line(line, &NoLedgers, &currencies) {
        Ok(parsed) => parsed,
        Err(error) => {
            assert!(!error.0.is_empty(), "an error without a message");
            return;
        }
    };
    match parsed.request {
        Request::CreateAccounts(accounts) => {
            assert!(accounts.len() <= BATCH_EVENTS_MAX, "batch over the limit");
            for account in accounts {
                let balances = [
                    account.debits_pending,
                    account.debits_posted,
                    account.credits_pending,
                    account.credits_posted,
                ];
                assert!(balances.iter().all(|b| *b == 0), "JSON set a balance");
            }
        }
        Request::CreateTransfers(transfers) => {
            assert!(transfers.len() <= BATCH_EVENTS_MAX, "batch over the limit");
            for transfer in transfers {
                let scale = currencies.scale(transfer.ledger);
                let text = format_amount(transfer.amount, scale);
                assert_eq!(
                    parse_amount(&text, scale).ok(),
                    Some(transfer.amount),
                    "amount {text} does not round-trip at scale {scale}"
                );
            }
        }
        Request::LookupAccounts(ids) | Request::LookupTransfers(ids) => {
            assert!(ids.len() <= BATCH_EVENTS_MAX, "lookup over the limit");
        }
        Request::GetAccountTransfers(filter) | Request::GetAccountBalances(filter) => {
            assert!(
                filter.limit_effective() <= BATCH_EVENTS_MAX,
                "page over the limit"
            );
        }
        Request::QueryAccounts(filter) | Request::QueryTransfers(filter) => {
            assert!(
                filter.limit_effective() <= BATCH_EVENTS_MAX,
                "page over the limit"
            );
        }
        Request::GetChangeEvents { limit, .. } => {
            assert!(
                tally_types::change_events_limit(limit as usize).is_some(),
                "change events page out of range"
            );
        }
    }
}

/// Any bytes as each request message of `proto/tally/v1/tally.proto`, through the
/// conversions the server runs: decoding and converting never panic, a refusal says
/// which event and why, and whatever converts survives the trip back to the wire.
pub fn grpc_request(data: &[u8]) {
    use prost::Message;
    use tally_proto::v1;
    if let Ok(request) = v1::CreateAccountsRequest::decode(data) {
        for (index, wire) in request.accounts.iter().enumerate() {
            match tally_proto::account_from_proto(index, wire) {
                Ok(account) => {
                    let again = tally_proto::account_to_proto(&account);
                    let back = tally_proto::account_from_proto(index, &again)
                        .expect("an account read from the wire is refused when written back");
                    assert_eq!(back, account, "account does not round-trip");
                }
                Err(error) => assert_refusal(index, &error),
            }
        }
    }
    if let Ok(request) = v1::CreateTransfersRequest::decode(data) {
        for (index, wire) in request.transfers.iter().enumerate() {
            match tally_proto::transfer_from_proto(index, wire) {
                Ok(transfer) => {
                    let again = tally_proto::transfer_to_proto(&transfer);
                    let back = tally_proto::transfer_from_proto(index, &again)
                        .expect("a transfer read from the wire is refused when written back");
                    assert_eq!(back, transfer, "transfer does not round-trip");
                }
                Err(error) => assert_refusal(index, &error),
            }
        }
        // What the server runs: messages or records, whole or refused.
        if let Ok(transfers) = tally_proto::transfers_from_request(&request) {
            let records = tally_proto::transfers_to_records(&transfers, false);
            let back = tally_proto::transfers_from_request(&records)
                .expect("transfers read from a request are refused as records");
            assert_eq!(back, transfers, "transfer records do not round-trip");
        }
    }
    let accounts = v1::CreateAccountsRequest::decode(data)
        .ok()
        .and_then(|request| tally_proto::accounts_from_request(&request).ok());
    if let Some(accounts) = accounts {
        let records = tally_proto::accounts_to_records(&accounts);
        let back = tally_proto::accounts_from_request(&records)
            .expect("accounts read from a request are refused as records");
        assert_eq!(back, accounts, "account records do not round-trip");
    }
    if let Ok(request) = v1::LookupRequest::decode(data) {
        for wire in &request.ids {
            let id = tally_proto::u128_from_proto(Some(*wire));
            let again = tally_proto::u128_from_proto(tally_proto::u128_to_proto(id));
            assert_eq!(again, id, "id does not round-trip");
        }
    }
    if let Ok(request) = v1::AccountFilter::decode(data)
        && let Ok(filter) = tally_proto::filter_from_proto(&request)
    {
        let again = tally_proto::filter_from_proto(&tally_proto::filter_to_proto(&filter));
        assert_eq!(again, Ok(filter), "filter does not round-trip");
        assert!(
            filter.limit_effective() <= BATCH_EVENTS_MAX,
            "page over the limit"
        );
    }
}

fn assert_refusal(index: usize, error: &tally_proto::ConvertError) {
    let message = error.to_string();
    assert!(
        message.contains(&format!("event {index}")),
        "a refusal that does not name its event: {message}"
    );
}

/// A fuzz target: panics only when a property is violated.
pub type Target = fn(&[u8]);

/// Names of every target, for the corpus replay test and the fuzz project.
pub const TARGETS: &[(&str, Target)] = &[
    ("log_frame", log_frame),
    ("log_segment", log_segment),
    ("snapshot", snapshot),
    ("json_line", json_line),
    ("state_machine", state_machine),
    ("grpc_request", grpc_request),
];
