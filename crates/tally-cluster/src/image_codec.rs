//! A replica's snapshot as bytes: the ledger's [`StateImage`] with the Raft position it
//! holds and the state digest there. Accounts and transfers are the 128-byte records of
//! the log format; the whole is closed by a CRC-32C, so a damaged snapshot is refused.

use tally_types::codec::{
    RECORD_SIZE, decode_account, decode_transfer, encode_account, encode_transfer,
};
use tally_types::{PendingStatus, StateImage};

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

/// Encodes a snapshot.
pub(crate) fn encode(head: &SnapshotHead, image: &StateImage) -> Vec<u8> {
    let records = image.accounts.len() + image.transfers.len();
    let mut out = Vec::with_capacity(64 + head.meta.len() + records * RECORD_SIZE);
    out.extend_from_slice(MAGIC);
    put_u64(&mut out, head.meta.len() as u64);
    out.extend_from_slice(&head.meta);
    put_u64(&mut out, head.digest);
    put_u64(&mut out, head.events_applied);
    put_u64(&mut out, image.last_timestamp);
    let mut record = [0u8; RECORD_SIZE];
    put_u64(&mut out, image.accounts.len() as u64);
    for account in &image.accounts {
        encode_account(account, &mut record);
        out.extend_from_slice(&record);
    }
    put_u64(&mut out, image.transfers.len() as u64);
    for transfer in &image.transfers {
        encode_transfer(transfer, &mut record);
        out.extend_from_slice(&record);
    }
    put_u64(&mut out, image.pending_statuses.len() as u64);
    for (id, status) in &image.pending_statuses {
        out.extend_from_slice(&id.to_le_bytes());
        out.push(*status as u8);
    }
    put_u64(&mut out, image.refunded.len() as u64);
    for (id, amount) in &image.refunded {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&amount.to_le_bytes());
    }
    put_u64(&mut out, image.failed_ids.len() as u64);
    for id in &image.failed_ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a snapshot, checking its checksum first.
pub(crate) fn decode(bytes: &[u8]) -> Result<(SnapshotHead, StateImage), String> {
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a Tally replica snapshot".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err("the snapshot's checksum does not match".into());
    }
    let mut reader = Reader {
        bytes: body,
        at: MAGIC.len(),
    };
    let meta_len = reader.length(1)?;
    let meta = reader.take(meta_len)?.to_vec();
    let head = SnapshotHead {
        meta,
        digest: reader.u64()?,
        events_applied: reader.u64()?,
    };
    let mut image = StateImage {
        last_timestamp: reader.u64()?,
        ..StateImage::default()
    };
    for _ in 0..reader.length(RECORD_SIZE)? {
        let record = reader.record()?;
        image
            .accounts
            .push(decode_account(record).map_err(|e| e.to_string())?);
    }
    for _ in 0..reader.length(RECORD_SIZE)? {
        let record = reader.record()?;
        image
            .transfers
            .push(decode_transfer(record).map_err(|e| e.to_string())?);
    }
    for _ in 0..reader.length(17)? {
        let id = reader.u128()?;
        let raw = reader.take(1)?[0];
        let status = PendingStatus::from_u8(raw).ok_or(format!("unknown pending status {raw}"))?;
        image.pending_statuses.push((id, status));
    }
    for _ in 0..reader.length(32)? {
        image.refunded.push((reader.u128()?, reader.u128()?));
    }
    for _ in 0..reader.length(16)? {
        image.failed_ids.push(reader.u128()?);
    }
    if reader.at != body.len() {
        return Err("trailing bytes in the snapshot".into());
    }
    Ok((head, image))
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("a length overflows")?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or("the snapshot is cut short")?;
        self.at = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    fn u128(&mut self) -> Result<u128, String> {
        let mut word = [0u8; 16];
        word.copy_from_slice(self.take(16)?);
        Ok(u128::from_le_bytes(word))
    }

    /// A count of items of `item_bytes` each, refused when the rest cannot hold them.
    fn length(&mut self, item_bytes: usize) -> Result<usize, String> {
        let count = usize::try_from(self.u64()?).map_err(|_| "a count overflows")?;
        let needed = count.checked_mul(item_bytes).ok_or("a count overflows")?;
        if needed > self.bytes.len() - self.at {
            return Err("a count is larger than the snapshot".into());
        }
        Ok(count)
    }

    fn record(&mut self) -> Result<&'a [u8; RECORD_SIZE], String> {
        self.take(RECORD_SIZE)?
            .try_into()
            .map_err(|_| "a record is cut short".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_testkit::{TEST_LEDGER, account};
    use tally_types::AccountFlags;

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let image = StateImage {
            last_timestamp: 99,
            accounts: vec![account(1, TEST_LEDGER, AccountFlags::empty())],
            transfers: vec![],
            pending_statuses: vec![(5, PendingStatus::Voided)],
            refunded: vec![(6, 10)],
            failed_ids: vec![7],
        };
        let head = SnapshotHead {
            meta: vec![1, 2, 3],
            digest: 17,
            events_applied: 4,
        };
        let bytes = encode(&head, &image);
        assert_eq!(decode(&bytes).expect("decodes"), (head, image));
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(decode(&flipped).is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
