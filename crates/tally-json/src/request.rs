//! Parsing one request line into a [`RequestLine`], all or nothing.

use crate::fields::{self, Loc, Width, amount_text, boolean, echo, short, unsigned};
use crate::tree::{self, Json};
use crate::{LedgerLookup, LineError, Request, RequestLine};
use std::collections::HashMap;
use tally_types::currency::{CurrencyTable, parse_amount};
use tally_types::{
    Account, AccountFilter, AccountFlags, BATCH_EVENTS_MAX, CHANGE_EVENTS_LIMIT_MAX, QueryFilter,
    Transfer, TransferFlags, change_events_limit,
};

/// The request keys, one of which a line carries.
const REQUEST_KEYS: &[&str] = &[
    "create_accounts",
    "create_transfers",
    "lookup_accounts",
    "lookup_transfers",
    "get_account_transfers",
    "get_account_balances",
    "get_change_events",
    "query_accounts",
    "query_transfers",
];

const NOW_KEY: &str = "now";
const BALANCES_KEY: &str = "balances";

const ACCOUNT_FIELDS: &[&str] = &[
    "id",
    "ledger",
    "code",
    "flags",
    "user_data_128",
    "user_data_64",
    "user_data_32",
    "timestamp",
];

/// Account fields the engine owns; named apart so the message can say why.
const ACCOUNT_BALANCE_FIELDS: &[&str] = &[
    "debits_pending",
    "debits_posted",
    "credits_pending",
    "credits_posted",
];

const TRANSFER_FIELDS: &[&str] = &[
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "pending_id",
    "refund_of",
    "ledger",
    "code",
    "flags",
    "timeout",
    "user_data_128",
    "user_data_64",
    "user_data_32",
    "timestamp",
];

const FILTER_FIELDS: &[&str] = &[
    "account_id",
    "limit",
    "debits",
    "credits",
    "reversed",
    "reverse",
    "timestamp_min",
    "timestamp_max",
    "flags",
    "user_data_128",
    "user_data_64",
    "user_data_32",
    "ledger",
    "code",
];

const QUERY_FIELDS: &[&str] = &[
    "user_data_128",
    "user_data_64",
    "user_data_32",
    "ledger",
    "code",
    "timestamp_min",
    "timestamp_max",
    "limit",
    "reversed",
    "reverse",
    "flags",
];

/// A query filter's one flag, as TigerBeetle's query filter spells it, and `reverse`
/// for it, as account filters accept.
const QUERY_FLAGS: &[(u8, &str)] = &[(FILTER_REVERSED, "reversed"), (FILTER_REVERSED, "reverse")];

/// A filter's flags, as TigerBeetle's account filter spells them: the same choices as
/// the `debits`, `credits` and `reversed` fields, which a filter gives one way or the
/// other.
const FILTER_DEBITS: u8 = 1;
const FILTER_CREDITS: u8 = 1 << 1;
const FILTER_REVERSED: u8 = 1 << 2;
/// `reverse` is accepted as another name for `reversed`: docs/spec.md §2 calls it "a reverse
/// option".
const FILTER_FLAGS: &[(u8, &str)] = &[
    (FILTER_DEBITS, "debits"),
    (FILTER_CREDITS, "credits"),
    (FILTER_REVERSED, "reversed"),
    (FILTER_REVERSED, "reverse"),
];

/// Reads one `tally apply` request line. Any problem rejects the whole line with a
/// message naming the field; nothing is partially returned.
///
/// `lookup` and `currencies` give transfer amounts their scale (see the crate docs).
pub fn parse_line(
    line: &str,
    lookup: &dyn LedgerLookup,
    currencies: &CurrencyTable,
) -> Result<RequestLine, LineError> {
    let root = tree::read(line).map_err(LineError)?;
    let Json::Object(members) = &root else {
        return Err(LineError(format!(
            "a request line is a JSON object such as {{\"lookup_accounts\": [\"1\"]}}; found {}",
            root.kind()
        )));
    };

    let mut request: Option<(&'static str, &Json)> = None;
    let mut now = None;
    let mut now_seen = false;
    let mut balances = None;
    for (key, value) in members {
        if key == BALANCES_KEY {
            if balances.is_some() {
                return Err(LineError("balances: given twice".to_string()));
            }
            balances = Some(boolean(value, Loc::top(BALANCES_KEY))?);
            continue;
        }
        if key == NOW_KEY {
            if now_seen {
                return Err(LineError("now: given twice".to_string()));
            }
            now_seen = true;
            let requested = unsigned::<u64>(value, Loc::top(NOW_KEY), "u64", Width::Wide)?;
            if requested > tally_types::NOW_NS_MAX {
                return Err(LineError(format!(
                    "now: {requested} is past the latest time accepted, {} ns (year 2262)",
                    tally_types::NOW_NS_MAX
                )));
            }
            now = Some(requested);
            continue;
        }
        let Some(known) = REQUEST_KEYS.iter().copied().find(|k| k == key) else {
            return Err(LineError(format!(
                "unknown request key {}; a line carries one of {} (and optionally \"now\", \"balances\")",
                echo(key),
                REQUEST_KEYS.join(", ")
            )));
        };
        if let Some((first, _)) = request {
            return Err(LineError(if first == known {
                format!("{known}: given twice")
            } else {
                format!("a line carries exactly one request; found {first} and {known}")
            }));
        }
        request = Some((known, value));
    }
    let Some((key, value)) = request else {
        return Err(LineError(format!(
            "no request in the line; expected one of {}",
            REQUEST_KEYS.join(", ")
        )));
    };

    if balances.is_some() && key != "create_transfers" {
        return Err(LineError(format!(
            "balances: only a create_transfers line may ask for balances, not {key}"
        )));
    }
    let loc = Loc::top(key);
    let request = match key {
        "create_accounts" => Request::CreateAccounts(accounts(value, loc)?),
        "create_transfers" => Request::CreateTransfers(transfers(value, loc, lookup, currencies)?),
        "lookup_accounts" => Request::LookupAccounts(ids(value, loc)?),
        "lookup_transfers" => Request::LookupTransfers(ids(value, loc)?),
        "get_change_events" => change_events_filter(value, loc)?,
        "get_account_balances" => Request::GetAccountBalances(filter(value, loc)?),
        "query_accounts" => Request::QueryAccounts(query_filter(value, loc)?),
        "query_transfers" => Request::QueryTransfers(query_filter(value, loc)?),
        _ => Request::GetAccountTransfers(filter(value, loc)?),
    };
    Ok(RequestLine {
        request,
        now,
        balances: balances.unwrap_or(false),
    })
}

/// The events of a batch request: an array of at most [`BATCH_EVENTS_MAX`] items.
fn batch<'j>(value: &'j Json, loc: Loc<'_>, what: &str) -> Result<&'j [Json], LineError> {
    let Json::Array(items) = value else {
        return Err(loc.error(format!(
            "expected an array of {what}, found {}",
            value.kind()
        )));
    };
    if items.len() > BATCH_EVENTS_MAX {
        return Err(loc.error(format!(
            "{} items is more than the batch limit of {BATCH_EVENTS_MAX}; split the request",
            items.len()
        )));
    }
    Ok(items)
}

/// The members of one event object, each checked against `known` (unknown and repeated
/// fields are errors). `unknown` explains a field that is not in `known`.
fn event_members<'j>(
    value: &'j Json,
    loc: Loc<'_>,
    what: &str,
    known: &'static [&'static str],
    unknown: impl Fn(&str) -> String,
) -> Result<Vec<(&'static str, &'j Json)>, LineError> {
    let Json::Object(members) = value else {
        return Err(loc.error(format!(
            "expected an object of {what} fields, found {}",
            value.kind()
        )));
    };
    // One bit per known field; `known` lists are far below 64 entries.
    debug_assert!(known.len() <= 64);
    let mut seen: u64 = 0;
    let mut out = Vec::with_capacity(members.len().min(known.len()));
    for (key, member) in members {
        let Some(index) = known.iter().position(|k| k == key) else {
            return Err(loc.field(&short(key)).error(unknown(key)));
        };
        let bit = 1u64 << index;
        if seen & bit != 0 {
            return Err(loc.field(known[index]).error("given twice"));
        }
        seen |= bit;
        out.push((known[index], member));
    }
    Ok(out)
}

fn accounts(value: &Json, loc: Loc<'_>) -> Result<Vec<Account>, LineError> {
    let items = batch(value, loc, "accounts")?;
    let mut accounts = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        accounts.push(account(item, loc.at(index))?);
    }
    Ok(accounts)
}

fn account(value: &Json, loc: Loc<'_>) -> Result<Account, LineError> {
    let unknown = |key: &str| {
        if ACCOUNT_BALANCE_FIELDS.contains(&key) {
            "balances are not accepted in create_accounts; an account starts at 0 and only \
             transfers change it"
                .to_string()
        } else {
            format!(
                "unknown field; account fields are {}",
                ACCOUNT_FIELDS.join(", ")
            )
        }
    };
    let mut account = Account::default();
    for (field, value) in event_members(value, loc, "account", ACCOUNT_FIELDS, unknown)? {
        let at = loc.field(field);
        match field {
            "id" => account.id = unsigned(value, at, "u128", Width::Wide)?,
            "ledger" => account.ledger = unsigned(value, at, "u32", Width::Narrow)?,
            "code" => account.code = unsigned(value, at, "u16", Width::Narrow)?,
            "flags" => {
                account.flags = fields::flags(
                    value,
                    at,
                    AccountFlags::NAMED,
                    AccountFlags::empty(),
                    AccountFlags::with,
                )?;
            }
            "user_data_128" => account.user_data_128 = unsigned(value, at, "u128", Width::Wide)?,
            "user_data_64" => account.user_data_64 = unsigned(value, at, "u64", Width::Wide)?,
            "user_data_32" => account.user_data_32 = unsigned(value, at, "u32", Width::Narrow)?,
            // An imported account's own; on any other the ledger answers
            // timestamp_must_be_zero.
            "timestamp" => account.timestamp = unsigned(value, at, "u64", Width::Wide)?,
            _ => unreachable_field(field, at)?,
        }
    }
    Ok(account)
}

/// A field listed as known but not handled: a bug in this module, reported as a line
/// error rather than a panic on client input.
fn unreachable_field(field: &str, loc: Loc<'_>) -> Result<(), LineError> {
    debug_assert!(false, "known field {field} is not handled");
    Err(loc.error("field is not handled by this version"))
}

/// Ledgers of transfers defined earlier in the same line, for the scale rule.
type LineLedgers = HashMap<u128, u32>;

fn transfers(
    value: &Json,
    loc: Loc<'_>,
    lookup: &dyn LedgerLookup,
    currencies: &CurrencyTable,
) -> Result<Vec<Transfer>, LineError> {
    let items = batch(value, loc, "transfers")?;
    let mut transfers = Vec::with_capacity(items.len());
    let mut line_ledgers = LineLedgers::new();
    for (index, item) in items.iter().enumerate() {
        let at = loc.at(index);
        let (mut transfer, amount) = transfer_fields(item, at)?;
        let taken = ledger_taken(&transfer, lookup, &line_ledgers);
        if let Some(amount) = amount {
            transfer.amount = amount_minor(&amount, at.field("amount"), taken, currencies)?;
        }
        if let Some(ledger) = taken.ledger {
            // The first definition of an id in the line is the one that can apply;
            // a repeat gets `exists*` and does not change what the id names.
            line_ledgers.entry(transfer.id).or_insert(ledger);
        }
        transfers.push(transfer);
    }
    Ok(transfers)
}

/// A transfer with every field but the amount, and the amount text to read once the
/// ledger (hence the scale) is known.
fn transfer_fields(value: &Json, loc: Loc<'_>) -> Result<(Transfer, Option<String>), LineError> {
    let unknown = |_key: &str| {
        format!(
            "unknown field; transfer fields are {}",
            TRANSFER_FIELDS.join(", ")
        )
    };
    let mut transfer = Transfer::default();
    let mut amount = None;
    let mut pending_id = 0u128;
    let mut refund_of = 0u128;
    for (field, value) in event_members(value, loc, "transfer", TRANSFER_FIELDS, unknown)? {
        let at = loc.field(field);
        match field {
            "id" => transfer.id = unsigned(value, at, "u128", Width::Wide)?,
            "debit_account_id" => {
                transfer.debit_account_id = unsigned(value, at, "u128", Width::Wide)?;
            }
            "credit_account_id" => {
                transfer.credit_account_id = unsigned(value, at, "u128", Width::Wide)?;
            }
            "amount" => amount = Some(amount_text(value, at)?),
            "pending_id" => pending_id = unsigned(value, at, "u128", Width::Wide)?,
            "refund_of" => refund_of = unsigned(value, at, "u128", Width::Wide)?,
            "ledger" => transfer.ledger = unsigned(value, at, "u32", Width::Narrow)?,
            "code" => transfer.code = unsigned(value, at, "u16", Width::Narrow)?,
            "flags" => {
                transfer.flags = fields::flags(
                    value,
                    at,
                    TransferFlags::NAMED,
                    TransferFlags::empty(),
                    TransferFlags::with,
                )?;
            }
            "timeout" => transfer.timeout = unsigned(value, at, "u32", Width::Narrow)?,
            "user_data_128" => transfer.user_data_128 = unsigned(value, at, "u128", Width::Wide)?,
            "user_data_64" => transfer.user_data_64 = unsigned(value, at, "u64", Width::Wide)?,
            "user_data_32" => transfer.user_data_32 = unsigned(value, at, "u32", Width::Narrow)?,
            "timestamp" => transfer.timestamp = unsigned(value, at, "u64", Width::Wide)?,
            _ => unreachable_field(field, at)?,
        }
    }
    // pending_id and refund_of share one stored field; a refund_of on a transfer without
    // the `refund` flag is kept there too, so the state machine answers it with
    // `pending_id_must_be_zero` like any stray pending_id.
    if pending_id != 0 && refund_of != 0 {
        return Err(loc.field("refund_of").error(
            "pending_id is given too; they share one field: give pending_id for a post or \
             void, refund_of for a refund",
        ));
    }
    transfer.pending_id = pending_id | refund_of;
    Ok((transfer, amount))
}

/// The ledger a transfer's amount is read in, and where it came from (for messages).
#[derive(Debug, Clone, Copy)]
struct LedgerTaken {
    ledger: Option<u32>,
    source: LedgerSource,
}

#[derive(Debug, Clone, Copy)]
enum LedgerSource {
    Given,
    Transfer(u128),
    DebitAccount(u128),
    NotFound,
}

/// docs/spec.md §4: a transfer that gives no ledger takes its pending or original transfer's
/// (post, void, refund), else its debit account's, as they stand when the line is read,
/// earlier events of the same line included; where none is found, none (scale 0).
fn ledger_taken(
    transfer: &Transfer,
    lookup: &dyn LedgerLookup,
    line_ledgers: &LineLedgers,
) -> LedgerTaken {
    if transfer.ledger != 0 {
        return LedgerTaken {
            ledger: Some(transfer.ledger),
            source: LedgerSource::Given,
        };
    }
    let acts_on_transfer = TransferFlags::POST_PENDING_TRANSFER
        .with(TransferFlags::VOID_PENDING_TRANSFER)
        .with(TransferFlags::REFUND);
    let acts = transfer.flags.bits() & acts_on_transfer.bits() != 0;
    if acts && transfer.pending_id != 0 {
        // What is stored wins over the line: an id already stored makes the line's
        // event of that id fail with `exists*`, so the stored ledger is the one that holds.
        let found = lookup
            .transfer_ledger(transfer.pending_id)
            .or_else(|| line_ledgers.get(&transfer.pending_id).copied());
        if let Some(ledger) = found.filter(|l| *l != 0) {
            return LedgerTaken {
                ledger: Some(ledger),
                source: LedgerSource::Transfer(transfer.pending_id),
            };
        }
    }
    if transfer.debit_account_id != 0 {
        // Accounts cannot be created in a create_transfers line, so only the store counts.
        if let Some(ledger) = lookup
            .account_ledger(transfer.debit_account_id)
            .filter(|l| *l != 0)
        {
            return LedgerTaken {
                ledger: Some(ledger),
                source: LedgerSource::DebitAccount(transfer.debit_account_id),
            };
        }
    }
    LedgerTaken {
        ledger: None,
        source: LedgerSource::NotFound,
    }
}

fn amount_minor(
    text: &str,
    loc: Loc<'_>,
    taken: LedgerTaken,
    currencies: &CurrencyTable,
) -> Result<u128, LineError> {
    let scale = taken.ledger.map_or(0, |ledger| currencies.scale(ledger));
    parse_amount(text, scale).map_err(|e| {
        let context = match (taken.source, taken.ledger) {
            (LedgerSource::Given, Some(l)) => format!("ledger {l} has scale {scale}"),
            (LedgerSource::Transfer(id), Some(l)) => {
                format!("read at scale {scale} of ledger {l}, taken from transfer {id}")
            }
            (LedgerSource::DebitAccount(id), Some(l)) => {
                format!("read at scale {scale} of ledger {l}, taken from debit account {id}")
            }
            _ => "no ledger given or found: read at scale 0".to_string(),
        };
        loc.error(format!("{e} ({context})"))
    })
}

fn ids(value: &Json, loc: Loc<'_>) -> Result<Vec<u128>, LineError> {
    let items = batch(value, loc, "ids")?;
    let mut ids = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        ids.push(unsigned(item, loc.at(index), "u128", Width::Wide)?);
    }
    Ok(ids)
}

const CHANGE_EVENTS_FIELDS: &[&str] = &["timestamp_min", "limit"];

/// `{"timestamp_min": "…", "limit": n}`: both optional (0, and the maximum).
fn change_events_filter(value: &Json, loc: Loc<'_>) -> Result<Request, LineError> {
    let unknown = |_key: &str| {
        format!(
            "unknown field; get_change_events fields are {}",
            CHANGE_EVENTS_FIELDS.join(", ")
        )
    };
    let mut timestamp_min = 0;
    let mut limit = CHANGE_EVENTS_LIMIT_MAX as u32;
    for (field, value) in event_members(value, loc, "filter", CHANGE_EVENTS_FIELDS, unknown)? {
        let at = loc.field(field);
        match field {
            "timestamp_min" => timestamp_min = unsigned(value, at, "u64", Width::Wide)?,
            "limit" => {
                limit = unsigned(value, at, "u32", Width::Narrow)?;
                if change_events_limit(limit as usize).is_none() {
                    return Err(at.error(format!(
                        "must be at most {CHANGE_EVENTS_LIMIT_MAX} (0 asks for the most), \
                         not {limit}"
                    )));
                }
            }
            _ => unreachable_field(field, at)?,
        }
    }
    Ok(Request::GetChangeEvents {
        timestamp_min,
        limit,
    })
}

fn filter(value: &Json, loc: Loc<'_>) -> Result<AccountFilter, LineError> {
    let unknown = |_key: &str| {
        format!(
            "unknown field; filter fields are {}",
            FILTER_FIELDS.join(", ")
        )
    };
    let mut filter = AccountFilter::new(0);
    let mut debits = None;
    let mut credits = None;
    let mut reversed = None;
    let mut flag_set = None;
    for (field, value) in event_members(value, loc, "filter", FILTER_FIELDS, unknown)? {
        let at = loc.field(field);
        match field {
            "account_id" => filter.account_id = unsigned(value, at, "u128", Width::Wide)?,
            "limit" => filter.limit = unsigned(value, at, "u32", Width::Narrow)?,
            "debits" => debits = Some(boolean(value, at)?),
            "credits" => credits = Some(boolean(value, at)?),
            "reversed" | "reverse" => {
                if reversed.is_some() {
                    return Err(at.error("give reversed or reverse, not both".to_string()));
                }
                reversed = Some(boolean(value, at)?);
            }
            "timestamp_min" => filter.timestamp_min = unsigned(value, at, "u64", Width::Wide)?,
            "timestamp_max" => filter.timestamp_max = unsigned(value, at, "u64", Width::Wide)?,
            "flags" => {
                flag_set = Some(fields::flags(value, at, FILTER_FLAGS, 0, |a, b| a | b)?);
            }
            "user_data_128" => filter.user_data_128 = unsigned(value, at, "u128", Width::Wide)?,
            "user_data_64" => filter.user_data_64 = unsigned(value, at, "u64", Width::Wide)?,
            "user_data_32" => filter.user_data_32 = unsigned(value, at, "u32", Width::Narrow)?,
            "ledger" => filter.ledger = unsigned(value, at, "u32", Width::Narrow)?,
            "code" => filter.code = unsigned(value, at, "u16", Width::Narrow)?,
            _ => unreachable_field(field, at)?,
        }
    }
    if let Some(set) = flag_set {
        if debits.is_some() || credits.is_some() || reversed.is_some() {
            return Err(loc.field("flags").error(
                "give debits, credits and reversed either as flags or as fields, not both"
                    .to_string(),
            ));
        }
        if set & (FILTER_DEBITS | FILTER_CREDITS) != 0 {
            debits = Some(set & FILTER_DEBITS != 0);
            credits = Some(set & FILTER_CREDITS != 0);
        }
        reversed = Some(set & FILTER_REVERSED != 0);
    }
    filter.reversed = reversed.unwrap_or(false);
    // Neither direction given: both. One given: the other is its opposite, so that
    // {"debits": true} means debits only and {"debits": false} credits only.
    (filter.debits, filter.credits) = match (debits, credits) {
        (None, None) => (true, true),
        (Some(d), None) => (d, !d),
        (None, Some(c)) => (!c, c),
        (Some(d), Some(c)) => (d, c),
    };
    Ok(filter)
}

/// `query_accounts` / `query_transfers`: every field optional (0 = any).
fn query_filter(value: &Json, loc: Loc<'_>) -> Result<QueryFilter, LineError> {
    let unknown = |_key: &str| {
        format!(
            "unknown field; query filter fields are {}",
            QUERY_FIELDS.join(", ")
        )
    };
    let mut filter = QueryFilter::default();
    let mut reversed = None;
    let mut flag_set = None;
    for (field, value) in event_members(value, loc, "query filter", QUERY_FIELDS, unknown)? {
        let at = loc.field(field);
        match field {
            "user_data_128" => filter.user_data_128 = unsigned(value, at, "u128", Width::Wide)?,
            "user_data_64" => filter.user_data_64 = unsigned(value, at, "u64", Width::Wide)?,
            "user_data_32" => filter.user_data_32 = unsigned(value, at, "u32", Width::Narrow)?,
            "ledger" => filter.ledger = unsigned(value, at, "u32", Width::Narrow)?,
            "code" => filter.code = unsigned(value, at, "u16", Width::Narrow)?,
            "timestamp_min" => filter.timestamp_min = unsigned(value, at, "u64", Width::Wide)?,
            "timestamp_max" => filter.timestamp_max = unsigned(value, at, "u64", Width::Wide)?,
            "limit" => filter.limit = unsigned(value, at, "u32", Width::Narrow)?,
            "reversed" | "reverse" => {
                if reversed.is_some() {
                    return Err(at.error("give reversed or reverse, not both".to_string()));
                }
                reversed = Some(boolean(value, at)?);
            }
            "flags" => {
                flag_set = Some(fields::flags(value, at, QUERY_FLAGS, 0, |a, b| a | b)?);
            }
            _ => unreachable_field(field, at)?,
        }
    }
    if let Some(set) = flag_set {
        if reversed.is_some() {
            return Err(loc
                .field("flags")
                .error("give reversed as a flag or as a field, not both".to_string()));
        }
        reversed = Some(set & FILTER_REVERSED != 0);
    }
    filter.reversed = reversed.unwrap_or(false);
    Ok(filter)
}
