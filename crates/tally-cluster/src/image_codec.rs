//! A replica's snapshot as bytes: the ledger's [`StateImage`] with the Raft position it
//! holds and the state digest there. Accounts and transfers are the 128-byte records of
//! the log format; the whole is closed by a CRC-32C, so a damaged snapshot is refused.

use std::io::{Read, Write};
use tally_state::{FrozenState, SideTables};
use tally_types::codec::{
    RECORD_SIZE, decode_account, decode_transfer, encode_account, encode_transfer,
};
use tally_types::packed::{self, PackedRun};
use tally_types::{LoadedImage, PendingStatus, StateImage};

const MAGIC: &[u8; 8] = b"TALLYRS1";

/// What a replica's snapshot holds besides the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotHead {
    /// The Raft snapshot metadata (last log id, membership, id), postcard-encoded.
    pub meta: Vec<u8>,
    /// The state digest after the last applied entry.
    pub digest: u64,
    /// Events applied since the log began.
    pub events_applied: u64,
}

/// Encodes a snapshot of `state` into `out` as it reads it (into a file: no image of
/// the state and no copy of the whole in memory on the way), the checksum computed as
/// it goes and written last. The records are those of `state.image()`, in its order.
pub(crate) fn encode_to(
    head: &SnapshotHead,
    state: &FrozenState,
    out: &mut (impl Write + ?Sized),
) -> std::io::Result<()> {
    let mut out = Checksummed { out, crc: 0 };
    out.write_all(MAGIC)?;
    out.put_u64(head.meta.len() as u64)?;
    out.write_all(&head.meta)?;
    out.put_u64(head.digest)?;
    out.put_u64(head.events_applied)?;
    out.put_u64(state.last_timestamp())?;
    let mut record = [0u8; RECORD_SIZE];
    out.put_u64(state.accounts_len() as u64)?;
    for account in state.accounts() {
        encode_account(&account, &mut record);
        out.write_all(&record)?;
    }
    out.put_u64(state.transfers_len() as u64)?;
    for transfer in state.transfers() {
        encode_transfer(&transfer, &mut record);
        out.write_all(&record)?;
    }
    let SideTables {
        pending_statuses,
        refunded,
        failed_ids,
    } = state.side_tables();
    out.put_u64(pending_statuses.len() as u64)?;
    for (id, status) in &pending_statuses {
        out.write_all(&id.to_le_bytes())?;
        out.write_all(&[*status as u8])?;
    }
    out.put_u64(refunded.len() as u64)?;
    for (id, amount) in &refunded {
        out.write_all(&id.to_le_bytes())?;
        out.write_all(&amount.to_le_bytes())?;
    }
    out.put_u64(failed_ids.len() as u64)?;
    for id in &failed_ids {
        out.write_all(&id.to_le_bytes())?;
    }
    let crc = out.crc;
    out.out.write_all(&crc.to_le_bytes())
}

/// A writer that keeps the CRC-32C of everything written through it.
struct Checksummed<'a, W: Write + ?Sized> {
    out: &'a mut W,
    crc: u32,
}

impl<W: Write + ?Sized> Checksummed<'_, W> {
    fn put_u64(&mut self, value: u64) -> std::io::Result<()> {
        self.write_all(&value.to_le_bytes())
    }
}

impl<W: Write + ?Sized> Write for Checksummed<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(bytes)?;
        self.crc = crc32c::crc32c_append(self.crc, &bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Decodes a snapshot of `len` bytes read from `input` as it goes: the transfers are
/// kept packed (about a quarter of their 128-byte records), and no copy of the whole is
/// made, so a replica opening or installing one holds little beside the state it
/// rebuilds. The checksum is compared at the end: on a mismatch, all that was decoded
/// is dropped.
pub(crate) fn decode(input: impl Read, len: u64) -> Result<(SnapshotHead, LoadedImage), String> {
    if len < (MAGIC.len() + 4) as u64 {
        return Err("not a Tally replica snapshot".into());
    }
    let mut reader = Reader {
        input: std::io::BufReader::with_capacity(READ_BUFFER_BYTES, input),
        crc: 0,
        body_left: len - 4,
    };
    if &reader.array::<8>()? != MAGIC {
        return Err("not a Tally replica snapshot".into());
    }
    let meta_len = reader.length(1)?;
    if meta_len > META_BYTES_MAX {
        return Err(format!("its metadata takes {meta_len} bytes"));
    }
    let mut meta = vec![0; meta_len];
    reader.fill(&mut meta)?;
    let head = SnapshotHead {
        meta,
        digest: reader.u64()?,
        events_applied: reader.u64()?,
    };
    let mut loaded = LoadedImage {
        image: StateImage {
            last_timestamp: reader.u64()?,
            ..StateImage::default()
        },
        packed_transfers: Vec::new(),
    };
    let image = &mut loaded.image;
    for _ in 0..reader.length(RECORD_SIZE)? {
        let record = reader.array::<RECORD_SIZE>()?;
        image
            .accounts
            .push(decode_account(&record).map_err(|e| e.to_string())?);
    }
    // Packed as they are read, in the runs the single node's snapshots keep.
    let mut failure = None;
    let transfers = (0..reader.length(RECORD_SIZE)?).map_while(|_| {
        let record = reader.array::<RECORD_SIZE>();
        let transfer = record.and_then(|r| decode_transfer(&r).map_err(|e| e.to_string()));
        transfer.map_err(|error| failure = Some(error)).ok()
    });
    packed::pack_in_runs(transfers, |records, bytes| {
        let run = PackedRun::new(records, bytes.to_vec());
        let run = run.map_err(|e| format!("packing transfers: {e:?}"))?;
        loaded.packed_transfers.push(run);
        Ok::<(), String>(())
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    for _ in 0..reader.length(17)? {
        let id = reader.u128()?;
        let [raw] = reader.array::<1>()?;
        let status = PendingStatus::from_u8(raw).ok_or(format!("unknown pending status {raw}"))?;
        image.pending_statuses.push((id, status));
    }
    for _ in 0..reader.length(32)? {
        image.refunded.push((reader.u128()?, reader.u128()?));
    }
    for _ in 0..reader.length(16)? {
        image.failed_ids.push(reader.u128()?);
    }
    reader.finish()?;
    Ok((head, loaded))
}

/// The most bytes a snapshot's Raft metadata takes (the membership of a few replicas
/// takes hundreds): more is damage, found before the checksum is.
const META_BYTES_MAX: usize = 1 << 20;

/// The buffer a snapshot is read through.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// Reads a snapshot's body, keeping its CRC-32C and how many bytes of it are left.
struct Reader<R: Read> {
    input: std::io::BufReader<R>,
    crc: u32,
    body_left: u64,
}

impl<R: Read> Reader<R> {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), String> {
        let n = out.len() as u64;
        if n > self.body_left {
            return Err("the snapshot is cut short".into());
        }
        self.input
            .read_exact(out)
            .map_err(|e| format!("reading the snapshot: {e}"))?;
        self.body_left -= n;
        self.crc = crc32c::crc32c_append(self.crc, out);
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut bytes = [0u8; N];
        self.fill(&mut bytes)?;
        Ok(bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn u128(&mut self) -> Result<u128, String> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    /// A count of items of `item_bytes` each, refused when the rest cannot hold them.
    fn length(&mut self, item_bytes: usize) -> Result<usize, String> {
        let count = usize::try_from(self.u64()?).map_err(|_| "a count overflows")?;
        let needed = count.checked_mul(item_bytes).ok_or("a count overflows")?;
        if needed as u64 > self.body_left {
            return Err("a count is larger than the snapshot".into());
        }
        Ok(count)
    }

    /// Checks that the body is all read, and the checksum after it.
    fn finish(mut self) -> Result<(), String> {
        if self.body_left != 0 {
            return Err("trailing bytes in the snapshot".into());
        }
        let mut stored = [0u8; 4];
        self.input
            .read_exact(&mut stored)
            .map_err(|_| "the snapshot is cut short".to_string())?;
        if u32::from_le_bytes(stored) != self.crc {
            return Err("the snapshot's checksum does not match".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_testkit::{TEST_LEDGER, account, transfer};
    use tally_types::{Account, AccountFlags, Transfer, TransferFlags};

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let accounts = [1, 2].map(|id| Account {
            timestamp: id as u64,
            ..account(id, TEST_LEDGER, AccountFlags::empty())
        });
        let pending = Transfer {
            flags: TransferFlags::PENDING,
            timestamp: 3,
            ..transfer(5, 1, 2, 10)
        };
        let refunded = Transfer {
            timestamp: 4,
            ..transfer(6, 1, 2, 20)
        };
        let image = StateImage {
            last_timestamp: 99,
            accounts: accounts.to_vec(),
            transfers: vec![pending, refunded],
            pending_statuses: vec![(5, PendingStatus::Voided)],
            refunded: vec![(6, 10)],
            failed_ids: vec![7],
        };
        let head = SnapshotHead {
            meta: vec![1, 2, 3],
            digest: 17,
            events_applied: 4,
        };
        let state = tally_state::StateMachine::from_image(image.clone()).expect("an image");
        let mut bytes = Vec::new();
        encode_to(&head, &state.freeze(), &mut bytes).expect("encodes");
        let decode = |bytes: &[u8]| decode(bytes, bytes.len() as u64);
        let (decoded_head, loaded) = decode(&bytes).expect("decodes");
        assert_eq!((decoded_head, loaded.unpack()), (head, image));
        for at in [0, 20, bytes.len() - 130, bytes.len() - 1] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1;
            assert!(decode(&flipped).is_err(), "a flipped byte at {at}");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    /// Transfers are packed in runs as they are read: past one run, each comes back,
    /// in order, and damage to a record in a later run is refused.
    #[test]
    fn transfers_past_one_packed_run_round_trip() {
        let count = packed::PACKED_RUN_RECORDS as u64 + 2;
        let accounts = [1, 2].map(|id| Account {
            timestamp: id as u64,
            ..account(id, TEST_LEDGER, AccountFlags::empty())
        });
        let transfers = (0..count).map(|n| Transfer {
            timestamp: 3 + n,
            ..transfer(u128::from(n) + 10, 1, 2, 1)
        });
        let image = StateImage {
            last_timestamp: 3 + count,
            accounts: accounts.to_vec(),
            transfers: transfers.collect(),
            ..StateImage::default()
        };
        let head = SnapshotHead {
            meta: Vec::new(),
            digest: 1,
            events_applied: count + 2,
        };
        let state = tally_state::StateMachine::from_image(image.clone()).expect("an image");
        let mut bytes = Vec::new();
        encode_to(&head, &state.freeze(), &mut bytes).expect("encodes");
        let (_, loaded) = decode(bytes.as_slice(), bytes.len() as u64).expect("decodes");
        assert_eq!(loaded.packed_transfers.len(), 2);
        assert_eq!(loaded.unpack(), image);
        let last_record = bytes.len() - 4 - 3 * 8 - RECORD_SIZE;
        bytes[last_record] ^= 0xff;
        assert!(decode(bytes.as_slice(), bytes.len() as u64).is_err());
    }
}
