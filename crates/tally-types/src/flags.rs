//! Account and transfer flags: small bit sets with stable bit positions (they are on disk)
//! and stable snake_case names (they are in JSON).

use std::fmt;

/// An unknown flag name or bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagsError(pub String);

impl fmt::Display for FlagsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FlagsError {}

macro_rules! flag_set {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $flag:ident = $bit:expr, $text:literal;)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name(u16);

        impl $name {
            $($(#[$fdoc])* pub const $flag: $name = $name(1 << $bit);)*
            /// Every defined bit.
            pub const ALL: $name = $name(0 $(| (1 << $bit))*);
            /// Every flag with its JSON name, in bit order.
            pub const NAMED: &'static [($name, &'static str)] = &[$(($name::$flag, $text)),*];

            /// The empty set.
            pub const fn empty() -> Self {
                $name(0)
            }

            /// The raw bits, as stored on disk.
            pub const fn bits(self) -> u16 {
                self.0
            }

            /// Rebuilds a set from disk bits; unknown bits are an error, never dropped.
            pub fn from_bits(bits: u16) -> Result<Self, FlagsError> {
                if bits & !Self::ALL.0 != 0 {
                    return Err(FlagsError(format!(
                        "unknown {} bits {:#06x}",
                        stringify!($name),
                        bits & !Self::ALL.0
                    )));
                }
                Ok($name(bits))
            }

            /// True when every flag of `other` is set here.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// This set plus `other`.
            #[must_use]
            pub const fn with(self, other: Self) -> Self {
                $name(self.0 | other.0)
            }

            /// This set less `other`.
            #[must_use]
            pub const fn without(self, other: Self) -> Self {
                $name(self.0 & !other.0)
            }

            /// True when no flag is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// The JSON name of one flag.
            pub fn parse_name(text: &str) -> Result<Self, FlagsError> {
                Self::NAMED
                    .iter()
                    .find(|(_, name)| *name == text)
                    .map(|(flag, _)| *flag)
                    .ok_or_else(|| FlagsError(format!("unknown flag \"{text}\"")))
            }

            /// The JSON names of the set flags, in bit order.
            pub fn names(self) -> Vec<&'static str> {
                Self::NAMED
                    .iter()
                    .filter(|(flag, _)| self.contains(*flag))
                    .map(|(_, name)| *name)
                    .collect()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{:?}", stringify!($name), self.names())
            }
        }
    };
}

flag_set! {
    /// Flags of an account.
    AccountFlags {
        /// Chains this event to the next one in the batch: all or nothing.
        LINKED = 0, "linked";
        /// The account may not be overdrawn: debits (pending and posted) never exceed
        /// posted credits.
        DEBITS_MUST_NOT_EXCEED_CREDITS = 1, "debits_must_not_exceed_credits";
        /// Mirror image: credits (pending and posted) never exceed posted debits.
        CREDITS_MUST_NOT_EXCEED_DEBITS = 2, "credits_must_not_exceed_debits";
        /// The account keeps its balances after every transfer and expiry that changes
        /// it, for `get_account_balances` (bit 3, as TigerBeetle numbers it).
        HISTORY = 3, "history";
        /// The account carries its own past timestamp (a migration): the batch is all
        /// imported or none.
        IMPORTED = 4, "imported";
        /// The account refuses every transfer but the void of a pending one. Set at
        /// creation, or by a closing transfer (which a void or an expiry undoes).
        CLOSED = 5, "closed";
    }
}

flag_set! {
    /// Flags of a transfer.
    TransferFlags {
        /// Chains this event to the next one in the batch: all or nothing.
        LINKED = 0, "linked";
        /// Reserves the amount (first phase of a two-phase transfer).
        PENDING = 1, "pending";
        /// Posts a pending transfer (second phase).
        POST_PENDING_TRANSFER = 2, "post_pending_transfer";
        /// Releases a pending transfer (second phase).
        VOID_PENDING_TRANSFER = 3, "void_pending_transfer";
        /// Sends money back along an earlier transfer.
        REFUND = 4, "refund";
        /// Moves at most `amount`: no more than keeps the debit account's debits
        /// (pending and posted) within its posted credits.
        BALANCING_DEBIT = 5, "balancing_debit";
        /// Moves at most `amount`: no more than keeps the credit account's credits
        /// (pending and posted) within its posted debits.
        BALANCING_CREDIT = 6, "balancing_credit";
        /// Closes the debit account when the (pending) transfer succeeds.
        CLOSING_DEBIT = 7, "closing_debit";
        /// Closes the credit account when the (pending) transfer succeeds.
        CLOSING_CREDIT = 8, "closing_credit";
        /// The transfer carries its own past timestamp (a migration): the batch is all
        /// imported or none.
        IMPORTED = 9, "imported";
    }
}

impl TransferFlags {
    /// The flags that pick a transfer's kind; at most one may be set.
    pub const KIND_MASK: TransferFlags = TransferFlags::PENDING
        .with(TransferFlags::POST_PENDING_TRANSFER)
        .with(TransferFlags::VOID_PENDING_TRANSFER)
        .with(TransferFlags::REFUND);

    /// The flags that make the amount an upper bound.
    pub const BALANCING_MASK: TransferFlags =
        TransferFlags::BALANCING_DEBIT.with(TransferFlags::BALANCING_CREDIT);

    /// True when the amount is an upper bound (either balancing flag is set).
    pub const fn is_balancing(self) -> bool {
        self.0 & Self::BALANCING_MASK.0 != 0
    }

    /// The flags that close an account.
    pub const CLOSING_MASK: TransferFlags =
        TransferFlags::CLOSING_DEBIT.with(TransferFlags::CLOSING_CREDIT);

    /// True when the transfer closes an account (either closing flag is set).
    pub const fn is_closing(self) -> bool {
        self.0 & Self::CLOSING_MASK.0 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_fail() {
        for (flag, name) in TransferFlags::NAMED {
            assert_eq!(TransferFlags::parse_name(name), Ok(*flag));
        }
        assert!(AccountFlags::parse_name("pending").is_err());
        let set = TransferFlags::LINKED.with(TransferFlags::REFUND);
        assert_eq!(set.names(), vec!["linked", "refund"]);
    }

    #[test]
    fn unknown_bits_are_rejected_not_dropped() {
        assert!(AccountFlags::from_bits(1 << 6).is_err());
        assert!(AccountFlags::from_bits(1 << 7).is_err());
        assert!(TransferFlags::from_bits(1 << 15).is_err());
        assert_eq!(
            TransferFlags::from_bits(0b1_0011),
            Ok(TransferFlags::LINKED
                .with(TransferFlags::PENDING)
                .with(TransferFlags::REFUND))
        );
    }
}
