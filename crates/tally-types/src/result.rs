//! Every answer an event can get. The snake_case names are part of the API (JSON) and the
//! numeric values are part of the on-disk format (never renumber; only append).

use std::fmt;

macro_rules! result_codes {
    ($($variant:ident = $value:literal, $name:literal;)*) => {
        /// The result of one event: `Ok` or the first failing check, in the order of
        /// docs/spec.md §2.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum ResultCode {
            $(
                #[doc = concat!("`", $name, "` (on-disk value ", stringify!($value), ").")]
                $variant = $value,
            )*
        }

        impl ResultCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ResultCode] = &[$(ResultCode::$variant),*];

            /// The snake_case name used in JSON.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ResultCode::$variant => $name,)*
                }
            }

            /// The code with this snake_case name.
            pub fn from_name(name: &str) -> Result<Self, UnknownResultCode> {
                match name {
                    $($name => Ok(ResultCode::$variant),)*
                    _ => Err(UnknownResultCode(name.to_string())),
                }
            }

            /// The code with this on-disk value.
            pub fn from_u8(value: u8) -> Result<Self, UnknownResultCode> {
                match value {
                    $($value => Ok(ResultCode::$variant),)*
                    _ => Err(UnknownResultCode(format!("result code value {value}"))),
                }
            }
        }
    };
}

result_codes! {
    Ok = 0, "ok";
    LinkedEventFailed = 1, "linked_event_failed";
    LinkedEventChainOpen = 2, "linked_event_chain_open";
    IdMustNotBeZero = 3, "id_must_not_be_zero";
    IdMustNotBeIntMax = 4, "id_must_not_be_int_max";
    FlagsAreMutuallyExclusive = 5, "flags_are_mutually_exclusive";
    LedgerMustNotBeZero = 6, "ledger_must_not_be_zero";
    CodeMustNotBeZero = 7, "code_must_not_be_zero";
    ExistsWithDifferentFlags = 8, "exists_with_different_flags";
    ExistsWithDifferentLedger = 9, "exists_with_different_ledger";
    ExistsWithDifferentCode = 10, "exists_with_different_code";
    ExistsWithDifferentUserData128 = 11, "exists_with_different_user_data_128";
    ExistsWithDifferentUserData64 = 12, "exists_with_different_user_data_64";
    ExistsWithDifferentUserData32 = 13, "exists_with_different_user_data_32";
    Exists = 14, "exists";
    ExistsWithDifferentDebitAccountId = 15, "exists_with_different_debit_account_id";
    ExistsWithDifferentCreditAccountId = 16, "exists_with_different_credit_account_id";
    ExistsWithDifferentAmount = 17, "exists_with_different_amount";
    ExistsWithDifferentPendingId = 18, "exists_with_different_pending_id";
    ExistsWithDifferentRefundOf = 19, "exists_with_different_refund_of";
    ExistsWithDifferentTimeout = 20, "exists_with_different_timeout";
    IdAlreadyFailed = 21, "id_already_failed";
    DebitAccountIdMustNotBeZero = 22, "debit_account_id_must_not_be_zero";
    DebitAccountIdMustNotBeIntMax = 23, "debit_account_id_must_not_be_int_max";
    CreditAccountIdMustNotBeZero = 24, "credit_account_id_must_not_be_zero";
    CreditAccountIdMustNotBeIntMax = 25, "credit_account_id_must_not_be_int_max";
    AccountsMustBeDifferent = 26, "accounts_must_be_different";
    PendingIdMustBeZero = 27, "pending_id_must_be_zero";
    TimeoutReservedForPendingTransfer = 28, "timeout_reserved_for_pending_transfer";
    AmountMustNotBeZero = 29, "amount_must_not_be_zero";
    DebitAccountNotFound = 30, "debit_account_not_found";
    CreditAccountNotFound = 31, "credit_account_not_found";
    AccountsMustHaveTheSameLedger = 32, "accounts_must_have_the_same_ledger";
    TransferMustHaveTheSameLedgerAsAccounts = 33, "transfer_must_have_the_same_ledger_as_accounts";
    OverflowsDebitsPending = 34, "overflows_debits_pending";
    OverflowsCreditsPending = 35, "overflows_credits_pending";
    OverflowsDebitsPosted = 36, "overflows_debits_posted";
    OverflowsCreditsPosted = 37, "overflows_credits_posted";
    OverflowsDebits = 38, "overflows_debits";
    OverflowsCredits = 39, "overflows_credits";
    OverflowsTimeout = 40, "overflows_timeout";
    ExceedsCredits = 41, "exceeds_credits";
    ExceedsDebits = 42, "exceeds_debits";
    PendingIdMustNotBeZero = 43, "pending_id_must_not_be_zero";
    PendingIdMustNotBeIntMax = 44, "pending_id_must_not_be_int_max";
    PendingIdMustBeDifferent = 45, "pending_id_must_be_different";
    PendingTransferNotFound = 46, "pending_transfer_not_found";
    PendingTransferNotPending = 47, "pending_transfer_not_pending";
    PendingTransferHasDifferentDebitAccountId = 48, "pending_transfer_has_different_debit_account_id";
    PendingTransferHasDifferentCreditAccountId = 49, "pending_transfer_has_different_credit_account_id";
    PendingTransferHasDifferentLedger = 50, "pending_transfer_has_different_ledger";
    PendingTransferHasDifferentCode = 51, "pending_transfer_has_different_code";
    ExceedsPendingTransferAmount = 52, "exceeds_pending_transfer_amount";
    PendingTransferHasDifferentAmount = 53, "pending_transfer_has_different_amount";
    PendingTransferAlreadyPosted = 54, "pending_transfer_already_posted";
    PendingTransferAlreadyVoided = 55, "pending_transfer_already_voided";
    PendingTransferExpired = 56, "pending_transfer_expired";
    RefundOfMustNotBeZero = 57, "refund_of_must_not_be_zero";
    RefundOfMustNotBeIntMax = 58, "refund_of_must_not_be_int_max";
    OriginalTransferNotFound = 59, "original_transfer_not_found";
    OriginalTransferNotRefundable = 60, "original_transfer_not_refundable";
    RefundHasDifferentDebitAccountId = 61, "refund_has_different_debit_account_id";
    RefundHasDifferentCreditAccountId = 62, "refund_has_different_credit_account_id";
    RefundHasDifferentLedger = 63, "refund_has_different_ledger";
    ExceedsRefundableAmount = 64, "exceeds_refundable_amount";
    ClosingTransferMustBePending = 65, "closing_transfer_must_be_pending";
    DebitAccountAlreadyClosed = 66, "debit_account_already_closed";
    CreditAccountAlreadyClosed = 67, "credit_account_already_closed";
    ImportedEventExpected = 68, "imported_event_expected";
    ImportedEventNotExpected = 69, "imported_event_not_expected";
    TimestampMustBeZero = 70, "timestamp_must_be_zero";
    ImportedEventTimestampOutOfRange = 71, "imported_event_timestamp_out_of_range";
    ImportedEventTimestampMustNotAdvance = 72, "imported_event_timestamp_must_not_advance";
    ImportedEventTimestampMustNotRegress = 73, "imported_event_timestamp_must_not_regress";
    ImportedEventTimestampMustPostdateDebitAccount = 74, "imported_event_timestamp_must_postdate_debit_account";
    ImportedEventTimestampMustPostdateCreditAccount = 75, "imported_event_timestamp_must_postdate_credit_account";
    ImportedEventTimeoutMustBeZero = 76, "imported_event_timeout_must_be_zero";
}

impl ResultCode {
    /// True for `Ok`.
    pub const fn is_ok(self) -> bool {
        matches!(self, ResultCode::Ok)
    }

    /// A *transient* failure could pass later as the state changes; it burns the
    /// transfer id so that a retry can never succeed later by surprise.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            ResultCode::DebitAccountNotFound
                | ResultCode::CreditAccountNotFound
                | ResultCode::PendingTransferNotFound
                | ResultCode::OriginalTransferNotFound
                | ResultCode::ExceedsCredits
                | ResultCode::ExceedsDebits
                | ResultCode::DebitAccountAlreadyClosed
                | ResultCode::CreditAccountAlreadyClosed
        )
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name or value that is not a result code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownResultCode(pub String);

impl fmt::Display for UnknownResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown result code: {}", self.0)
    }
}

impl std::error::Error for UnknownResultCode {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_round_trip_and_are_unique() {
        let mut names = std::collections::HashSet::new();
        for (index, code) in ResultCode::ALL.iter().enumerate() {
            assert_eq!(*code as u8 as usize, index, "values are dense, in order");
            assert_eq!(ResultCode::from_name(code.name()), Ok(*code));
            assert_eq!(ResultCode::from_u8(*code as u8), Ok(*code));
            assert!(names.insert(code.name()), "duplicate name {}", code.name());
        }
        assert!(ResultCode::from_u8(ResultCode::ALL.len() as u8).is_err());
        assert!(ResultCode::from_name("Ok").is_err());
    }

    #[test]
    fn exactly_eight_codes_are_transient() {
        let transient: Vec<_> = ResultCode::ALL
            .iter()
            .filter(|c| c.is_transient())
            .collect();
        assert_eq!(transient.len(), 8);
    }
}
