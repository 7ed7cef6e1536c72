//! Batch stamping: the wall clock (or a requested manual time), forced monotonic.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch; 0 if the system clock is before 1970.
pub fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// The stamp of a batch of `events` events: the requested time (or the wall clock),
/// never at or before `last_timestamp`. `None` if the batch's last event would not fit
/// in u64.
pub fn batch_stamp(requested: u64, last_timestamp: u64, events: usize) -> Option<u64> {
    let stamp = requested.max(last_timestamp.checked_add(1)?);
    stamp.checked_add(events.saturating_sub(1) as u64)?;
    Some(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_never_go_backwards_and_never_overflow() {
        assert_eq!(batch_stamp(100, 0, 5), Some(100));
        assert_eq!(batch_stamp(100, 200, 5), Some(201));
        assert_eq!(batch_stamp(u64::MAX, 0, 1), Some(u64::MAX));
        assert_eq!(batch_stamp(u64::MAX, 0, 2), None);
        assert_eq!(batch_stamp(0, u64::MAX, 1), None);
    }
}
