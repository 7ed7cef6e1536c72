//! Which part holds an id: the number of parts and the placement rule.
//!
//! Results and state never depend on either (docs/sharding.md): the layout decides
//! only which units span parts, so it is chosen per run, not stored in the ledger.

use std::fmt;
use std::str::FromStr;

/// The most parts a state can have (plan masks are one u64).
pub const PARTS_MAX: usize = 64;

/// Which bits of an id place it: the lowest [`Placement::key_bits`] of them. Ids that
/// share those bits share a part whatever the number of parts, so a service that puts
/// a customer's key in the low bits of every id it issues for that customer (wallets,
/// payments, authorisations and their posts) keeps the customer's events on one part.
/// The default, 128 bits, places by the whole id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Placement {
    key_bits: u8,
}

impl Placement {
    /// Places by the whole id (the default).
    pub const WHOLE_ID: Placement = Placement { key_bits: 128 };

    /// Places by the lowest `bits` bits of an id (1 to 128); `None` outside that range.
    pub const fn low_bits(bits: u32) -> Option<Placement> {
        if bits >= 1 && bits <= 128 {
            Some(Placement {
                key_bits: bits as u8,
            })
        } else {
            None
        }
    }

    /// How many low bits of an id place it.
    pub fn key_bits(self) -> u32 {
        u32::from(self.key_bits)
    }

    /// The part of an id that places it.
    #[inline]
    fn key(self, id: u128) -> u128 {
        if self.key_bits >= 128 {
            id
        } else {
            id & ((1u128 << self.key_bits) - 1)
        }
    }
}

impl Default for Placement {
    fn default() -> Self {
        Placement::WHOLE_ID
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key_bits)
    }
}

impl FromStr for Placement {
    type Err = String;

    /// Parses a number of key bits, 1 to 128.
    fn from_str(text: &str) -> Result<Placement, String> {
        text.trim()
            .parse::<u32>()
            .ok()
            .and_then(Placement::low_bits)
            .ok_or_else(|| format!("placement key bits must be 1 to 128, not {text:?}"))
    }
}

/// How a state is cut: how many parts, and by which bits of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    count: u32,
    placement: Placement,
}

impl Layout {
    /// `count` parts (1 to [`PARTS_MAX`]) placed by `placement`.
    pub fn new(count: usize, placement: Placement) -> Layout {
        assert!(
            (1..=PARTS_MAX).contains(&count),
            "between 1 and {PARTS_MAX} parts, not {count}"
        );
        Layout {
            count: count as u32,
            placement,
        }
    }

    /// The number of parts.
    #[inline]
    pub fn count(self) -> usize {
        self.count as usize
    }

    /// The placement rule.
    pub fn placement(self) -> Placement {
        self.placement
    }

    /// The part that holds id `id` (an account's or a transfer's). A fixed function of
    /// the id, so that a plan made on one thread routes like the state.
    #[inline]
    pub fn part_of(self, id: u128) -> usize {
        if self.count == 1 {
            return 0;
        }
        let key = self.placement.key(id);
        // Both halves folded into one word, then splitmix64's finaliser, then a
        // multiply-shift into [0, count). The high half is multiplied before the fold,
        // not rotated: ids built from a number repeated at two shifts (`n << 64 | n << 32`)
        // folded to 0 and all landed on one part.
        let mut x = (key as u64) ^ ((key >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        (((x >> 32) * u64::from(self.count)) >> 32) as usize
    }
}

/// One part (a plain state).
impl Default for Layout {
    fn default() -> Self {
        Layout::from(1)
    }
}

/// `count` parts placed by the whole id.
impl From<usize> for Layout {
    fn from(count: usize) -> Layout {
        Layout::new(count, Placement::WHOLE_ID)
    }
}

/// The part that holds id `id` among `count` parts placed by the whole id (the default
/// [`Placement`]); [`Layout::part_of`] for any placement.
#[inline]
pub fn part_of(id: u128, count: usize) -> usize {
    Layout::from(count).part_of(id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_sharing_their_key_bits_share_a_part() {
        let placement = Placement::low_bits(32).unwrap();
        for count in [2, 3, 8, 64] {
            let layout = Layout::new(count, placement);
            let mut hits = vec![0u32; count];
            for key in 1..=20_000u128 {
                let part = layout.part_of(key);
                hits[part] += 1;
                for high in [1u128, 7 << 32, u128::MAX << 64] {
                    assert_eq!(layout.part_of((high << 32) | key), part, "{count} parts");
                }
            }
            let even = 20_000 / count as u32;
            assert!(
                hits.iter()
                    .all(|&h| h > even * 8 / 10 && h < even * 12 / 10)
            );
        }
    }

    #[test]
    fn ids_that_differ_in_a_few_bits_anywhere_spread_over_the_parts() {
        /// A name, and the id of `n` at a shift.
        type Family = (&'static str, fn(u128, u32) -> u128);
        let families: [Family; 4] = [
            ("n << s", |n, s| n << s),
            ("n << 64 ^ n << s", |n, s| n << 64 ^ n << (s % 64)),
            ("n << 96 ^ n << s", |n, s| n << 96 ^ n << (s % 96)),
            ("n ^ n << s", |n, s| n ^ n << s.max(1)),
        ];
        for count in [2, 3, 8, 64] {
            let layout = Layout::from(count);
            for (name, id) in families {
                for shift in (0..=112).step_by(8) {
                    let mut hits = vec![0u32; count];
                    for n in 1..=20_000u128 {
                        hits[layout.part_of(id(n, shift))] += 1;
                    }
                    let even = 20_000 / count as u32;
                    assert!(
                        hits.iter()
                            .all(|&h| h > even * 7 / 10 && h < even * 13 / 10),
                        "{name}, shift {shift}, {count} parts: {hits:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_whole_id_places_as_part_of() {
        let layout = Layout::new(5, Placement::WHOLE_ID);
        assert_eq!(Placement::low_bits(128), Some(Placement::WHOLE_ID));
        for id in [1u128, 1 << 64, u128::MAX, 12345 << 70] {
            assert_eq!(layout.part_of(id), part_of(id, 5));
        }
        assert_eq!(
            Layout::new(1, Placement::low_bits(3).unwrap()).part_of(7),
            0
        );
    }

    #[test]
    fn key_bits_parse_in_range_only() {
        assert_eq!(
            "32".parse::<Placement>(),
            Ok(Placement::low_bits(32).unwrap())
        );
        assert_eq!("128".parse::<Placement>(), Ok(Placement::WHOLE_ID));
        for bad in ["0", "129", "-1", "x", ""] {
            assert!(bad.parse::<Placement>().is_err(), "{bad}");
        }
        assert_eq!(Placement::low_bits(64).unwrap().to_string(), "64");
    }
}
