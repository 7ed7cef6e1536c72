//! Formatting answers: one JSON line per request, fields in the order docs/spec.md §4 shows.
//!
//! The records cross the JSON boundary as [`AccountJson`] and [`TransferJson`], separate
//! from the internal types: ids and u64 values as decimal strings (exact in every JSON
//! tool), amounts as decimal strings with exactly the ledger's scale digits, ledger,
//! code, timeout and user_data_32 as integers, flags as name arrays.

use serde::{Deserialize, Serialize};
use tally_types::currency::{CurrencyTable, format_amount};
use tally_types::{
    Account, AccountBalances, ChangeEvent, ChangeKind, ResultCode, Transfer, TransferBalances,
    TransferFlags,
};

/// The result of one event, as the engine returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventOutcome {
    /// `ok` or the first failing check.
    pub code: ResultCode,
    /// The event's timestamp; shown only when `code` is `ok`.
    pub timestamp: u64,
}

/// An account as it appears in answers and dumps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountJson {
    /// Decimal string.
    pub id: String,
    /// The ledger (currency) number.
    pub ledger: u32,
    /// The client's code; not 0.
    pub code: u16,
    /// Names of the flags set, in bit order.
    pub flags: Vec<String>,
    /// Amount with the ledger's scale digits ("12.50").
    pub debits_pending: String,
    /// Amount with the ledger's scale digits ("12.50").
    pub debits_posted: String,
    /// Amount with the ledger's scale digits ("12.50").
    pub credits_pending: String,
    /// Amount with the ledger's scale digits ("12.50").
    pub credits_posted: String,
    /// Decimal string.
    pub user_data_128: String,
    /// Decimal string.
    pub user_data_64: String,
    /// Opaque to the ledger.
    pub user_data_32: u32,
    /// Nanoseconds, decimal string; assigned by the ledger.
    pub timestamp: String,
}

impl AccountJson {
    /// The JSON form of `account`, amounts with its ledger's scale.
    pub fn new(account: &Account, currencies: &CurrencyTable) -> Self {
        let scale = currencies.scale(account.ledger);
        AccountJson {
            id: account.id.to_string(),
            ledger: account.ledger,
            code: account.code,
            flags: account
                .flags
                .names()
                .into_iter()
                .map(str::to_string)
                .collect(),
            debits_pending: format_amount(account.debits_pending, scale),
            debits_posted: format_amount(account.debits_posted, scale),
            credits_pending: format_amount(account.credits_pending, scale),
            credits_posted: format_amount(account.credits_posted, scale),
            user_data_128: account.user_data_128.to_string(),
            user_data_64: account.user_data_64.to_string(),
            user_data_32: account.user_data_32,
            timestamp: account.timestamp.to_string(),
        }
    }
}

/// A transfer as it appears in answers and dumps. `pending_id` and `refund_of` share
/// storage; a refund shows its value as `refund_of` (`pending_id` "0"), any other
/// transfer as `pending_id` (`refund_of` "0").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferJson {
    /// Decimal string.
    pub id: String,
    /// Decimal string.
    pub debit_account_id: String,
    /// Decimal string.
    pub credit_account_id: String,
    /// Amount with the ledger's scale digits ("12.50").
    pub amount: String,
    /// Decimal string; "0" for a refund.
    pub pending_id: String,
    /// Decimal string; "0" unless the transfer is a refund.
    pub refund_of: String,
    /// The ledger (currency) number.
    pub ledger: u32,
    /// The client's code; not 0.
    pub code: u16,
    /// Names of the flags set, in bit order.
    pub flags: Vec<String>,
    /// Seconds; pending transfers only.
    pub timeout: u32,
    /// Decimal string.
    pub user_data_128: String,
    /// Decimal string.
    pub user_data_64: String,
    /// Opaque to the ledger.
    pub user_data_32: u32,
    /// Nanoseconds, decimal string; assigned by the ledger.
    pub timestamp: String,
}

impl TransferJson {
    /// The JSON form of `transfer`, the amount with its ledger's scale.
    pub fn new(transfer: &Transfer, currencies: &CurrencyTable) -> Self {
        let (pending_id, refund_of) = if transfer.flags.contains(TransferFlags::REFUND) {
            (0, transfer.refund_of())
        } else {
            (transfer.pending_id, 0)
        };
        TransferJson {
            id: transfer.id.to_string(),
            debit_account_id: transfer.debit_account_id.to_string(),
            credit_account_id: transfer.credit_account_id.to_string(),
            amount: format_amount(transfer.amount, currencies.scale(transfer.ledger)),
            pending_id: pending_id.to_string(),
            refund_of: refund_of.to_string(),
            ledger: transfer.ledger,
            code: transfer.code,
            flags: transfer
                .flags
                .names()
                .into_iter()
                .map(str::to_string)
                .collect(),
            timeout: transfer.timeout,
            user_data_128: transfer.user_data_128.to_string(),
            user_data_64: transfer.user_data_64.to_string(),
            user_data_32: transfer.user_data_32,
            timestamp: transfer.timestamp.to_string(),
        }
    }
}

/// A change event as it appears in `tally events` and event streams: `timestamp` and
/// `type`, then `transfer`, `debit_account` and `credit_account` for a transfer kind, or
/// `account` alone for `account_created`.
#[derive(Serialize)]
struct ChangeEventJson {
    timestamp: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer: Option<TransferJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    debit_account: Option<AccountJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credit_account: Option<AccountJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<AccountJson>,
}

impl ChangeEventJson {
    fn new(event: &ChangeEvent, currencies: &CurrencyTable) -> Self {
        let mut json = ChangeEventJson {
            timestamp: event.timestamp.to_string(),
            kind: event.kind.name(),
            transfer: None,
            debit_account: None,
            credit_account: None,
            account: None,
        };
        if event.kind == ChangeKind::AccountCreated {
            json.account = Some(AccountJson::new(&event.debit_account, currencies));
        } else {
            json.transfer = Some(TransferJson::new(&event.transfer, currencies));
            json.debit_account = Some(AccountJson::new(&event.debit_account, currencies));
            json.credit_account = Some(AccountJson::new(&event.credit_account, currencies));
        }
        json
    }
}

#[derive(Serialize)]
struct ResultJson {
    index: usize,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    debit_account: Option<BalancesJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credit_account: Option<BalancesJson>,
}

/// An account's four balances, amounts with its ledger's scale digits.
#[derive(Serialize)]
struct BalancesJson {
    debits_pending: String,
    debits_posted: String,
    credits_pending: String,
    credits_posted: String,
}

impl BalancesJson {
    fn new(balances: &AccountBalances, scale: u32) -> BalancesJson {
        BalancesJson {
            debits_pending: format_amount(balances.debits_pending, scale),
            debits_posted: format_amount(balances.debits_posted, scale),
            credits_pending: format_amount(balances.credits_pending, scale),
            credits_posted: format_amount(balances.credits_posted, scale),
        }
    }
}

/// One row of an account's balance history.
#[derive(Serialize)]
struct AccountBalanceJson {
    timestamp: String,
    #[serde(flatten)]
    balances: BalancesJson,
}

#[derive(Serialize)]
struct AccountBalancesAnswer {
    account_balances: Vec<AccountBalanceJson>,
}

/// The result of one transfer submitted with `"balances": true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalancedOutcome {
    /// The code and timestamp.
    pub outcome: EventOutcome,
    /// For an applied transfer: both accounts' balances right after it, and the
    /// transfer's ledger (whose scale the amounts are written in).
    pub balances: Option<(TransferBalances, u32)>,
}

#[derive(Serialize)]
struct ResultsAnswer {
    results: Vec<ResultJson>,
}

#[derive(Serialize)]
struct AccountsAnswer {
    accounts: Vec<AccountJson>,
}

#[derive(Serialize)]
struct ChangeEventsAnswer {
    change_events: Vec<ChangeEventJson>,
}

#[derive(Serialize)]
struct TransfersAnswer {
    transfers: Vec<TransferJson>,
}

#[derive(Serialize)]
struct ErrorAnswer<'a> {
    error: &'a str,
}

/// Serializes one of this module's plain structs on one line.
fn line<T: Serialize>(value: &T) -> String {
    // serde_json fails only on non-string map keys or a failing custom Serialize; these
    // structs have neither, so a failure is a bug here, not an operating error.
    #[allow(clippy::expect_used)]
    serde_json::to_string(value).expect("answer structs always serialize")
}

/// `{"results": [{"index": 0, "result": "ok", "timestamp": "…"}, …]}`, one entry per event
/// in input order; the timestamp only on `ok`.
pub fn results_answer(outcomes: &[EventOutcome]) -> String {
    let results = outcomes
        .iter()
        .enumerate()
        .map(|(index, outcome)| ResultJson {
            index,
            result: outcome.code.name(),
            timestamp: outcome.code.is_ok().then(|| outcome.timestamp.to_string()),
            debit_account: None,
            credit_account: None,
        })
        .collect();
    line(&ResultsAnswer { results })
}

/// [`results_answer`] for a `create_transfers` line with `"balances": true`: each
/// applied transfer's entry also carries `"debit_account"` and `"credit_account"`, the
/// four balances of each right after it.
pub fn results_with_balances_answer(
    outcomes: &[BalancedOutcome],
    currencies: &CurrencyTable,
) -> String {
    let results = outcomes
        .iter()
        .enumerate()
        .map(|(index, balanced)| {
            let outcome = balanced.outcome;
            let (debit_account, credit_account) = match &balanced.balances {
                Some((balances, ledger)) => {
                    let scale = currencies.scale(*ledger);
                    (
                        Some(BalancesJson::new(&balances.debit_account, scale)),
                        Some(BalancesJson::new(&balances.credit_account, scale)),
                    )
                }
                None => (None, None),
            };
            ResultJson {
                index,
                result: outcome.code.name(),
                timestamp: outcome.code.is_ok().then(|| outcome.timestamp.to_string()),
                debit_account,
                credit_account,
            }
        })
        .collect();
    line(&ResultsAnswer { results })
}

/// `{"account_balances": [{"timestamp": "…", "debits_pending": "…", …}]}`: an account's
/// balance history rows, amounts in the scale of `ledger` (the account's).
pub fn account_balances_answer(
    rows: &[(u64, AccountBalances)],
    ledger: u32,
    currencies: &CurrencyTable,
) -> String {
    let scale = currencies.scale(ledger);
    let account_balances = rows
        .iter()
        .map(|(timestamp, balances)| AccountBalanceJson {
            timestamp: timestamp.to_string(),
            balances: BalancesJson::new(balances, scale),
        })
        .collect();
    line(&AccountBalancesAnswer { account_balances })
}

/// `{"accounts": [...]}`.
pub fn accounts_answer(accounts: &[Account], currencies: &CurrencyTable) -> String {
    let accounts = accounts
        .iter()
        .map(|a| AccountJson::new(a, currencies))
        .collect();
    line(&AccountsAnswer { accounts })
}

/// `{"transfers": [...]}`.
pub fn transfers_answer(transfers: &[Transfer], currencies: &CurrencyTable) -> String {
    let transfers = transfers
        .iter()
        .map(|t| TransferJson::new(t, currencies))
        .collect();
    line(&TransfersAnswer { transfers })
}

/// `{"error": "..."}`, the message escaped as JSON.
pub fn error_answer(message: &str) -> String {
    line(&ErrorAnswer { error: message })
}

/// One account as a JSON value. Note `serde_json::Value` objects sort their keys; use
/// [`account_line`] where the field order of docs/spec.md §4 matters (dumps).
pub fn account_json(account: &Account, currencies: &CurrencyTable) -> serde_json::Value {
    value(&AccountJson::new(account, currencies))
}

/// One transfer as a JSON value (keys sorted; see [`transfer_line`]).
pub fn transfer_json(transfer: &Transfer, currencies: &CurrencyTable) -> serde_json::Value {
    value(&TransferJson::new(transfer, currencies))
}

/// One account on one line, fields in the order of docs/spec.md §4: a line of `tally accounts`.
pub fn account_line(account: &Account, currencies: &CurrencyTable) -> String {
    line(&AccountJson::new(account, currencies))
}

/// One transfer on one line, fields in the order of docs/spec.md §4: a line of `tally transfers`.
pub fn transfer_line(transfer: &Transfer, currencies: &CurrencyTable) -> String {
    line(&TransferJson::new(transfer, currencies))
}

/// One change event as a JSON value (keys sorted; see [`change_event_line`]).
pub fn change_event_json(event: &ChangeEvent, currencies: &CurrencyTable) -> serde_json::Value {
    value(&ChangeEventJson::new(event, currencies))
}

/// `{"change_events": [...]}`: the answer to `get_change_events`, in commit order, each
/// event's fields in the order of a `tally events` line.
pub fn change_events_answer(events: &[ChangeEvent], currencies: &CurrencyTable) -> String {
    let change_events = events
        .iter()
        .map(|event| ChangeEventJson::new(event, currencies))
        .collect();
    line(&ChangeEventsAnswer { change_events })
}

/// One change event on one line, fields in the order of docs/spec.md §4: a line of
/// `tally events`. A transfer kind:
/// `{"timestamp": "…", "type": "single_phase", "transfer": {…}, "debit_account": {…},
/// "credit_account": {…}}`, the accounts as they stood right after the change;
/// `account_created`: `{"timestamp": "…", "type": "account_created", "account": {…}}`.
pub fn change_event_line(event: &ChangeEvent, currencies: &CurrencyTable) -> String {
    line(&ChangeEventJson::new(event, currencies))
}

fn value<T: Serialize>(record: &T) -> serde_json::Value {
    // As for `line`: these structs always serialize.
    #[allow(clippy::expect_used)]
    serde_json::to_value(record).expect("record structs always serialize")
}
