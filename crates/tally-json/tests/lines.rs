//! Request lines: every docs/spec.md §4 example, every error shape, the amount scale rule.
//! Each case is one `check(line, expected)`: `expected` is the parsed request rendered
//! compactly, or `error: <fragment>` that the error message must contain.

#![allow(clippy::unwrap_used)]

use tally_json::{LedgerLookup, NoLedgers, Request, RequestLine, parse_line};
use tally_types::currency::CurrencyTable;
use tally_types::{Account, AccountFilter, Transfer};

/// A store as a line might find it: accounts 1, 2 (CNY), 3 (JPY), 4 (BHD); transfers
/// 100 (CNY, pending), 101 (JPY), 102 (BHD).
struct Store;

impl LedgerLookup for Store {
    fn account_ledger(&self, id: u128) -> Option<u32> {
        match id {
            1 | 2 => Some(156),
            3 => Some(392),
            4 => Some(48),
            _ => None,
        }
    }

    fn transfer_ledger(&self, id: u128) -> Option<u32> {
        match id {
            100 => Some(156),
            101 => Some(392),
            102 => Some(48),
            _ => None,
        }
    }
}

fn check(line: &str, expected: &str) {
    let actual = match parse_line(line, &Store, &CurrencyTable::default()) {
        Ok(parsed) => render(&parsed),
        Err(error) => format!("error: {error}"),
    };
    match expected.strip_prefix("error: ") {
        Some(fragment) => assert!(
            actual.starts_with("error: ") && actual.contains(fragment),
            "line: {line}\nexpected an error containing: {fragment}\nactual: {actual}"
        ),
        None => assert_eq!(actual, expected, "line: {line}"),
    }
}

fn render(line: &RequestLine) -> String {
    let body = match &line.request {
        Request::CreateAccounts(accounts) => {
            format!(
                "create_accounts {}",
                join(accounts.iter().map(render_account))
            )
        }
        Request::CreateTransfers(transfers) => {
            format!(
                "create_transfers {}",
                join(transfers.iter().map(render_transfer))
            )
        }
        Request::LookupAccounts(ids) => format!("lookup_accounts {ids:?}"),
        Request::LookupTransfers(ids) => format!("lookup_transfers {ids:?}"),
        Request::GetAccountTransfers(filter) => {
            format!("get_account_transfers {}", render_filter(filter))
        }
        Request::GetChangeEvents {
            timestamp_min,
            limit,
        } => format!("get_change_events timestamp_min={timestamp_min} limit={limit}"),
        Request::GetAccountBalances(filter) => {
            format!("get_account_balances {}", render_filter(filter))
        }
        Request::QueryAccounts(filter) => format!("query_accounts {}", render_query(filter)),
        Request::QueryTransfers(filter) => format!("query_transfers {}", render_query(filter)),
    };
    match line.now {
        Some(now) => format!("{body} now={now}"),
        None => body,
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(" ")
}

/// Only the non-zero fields, in the order of docs/spec.md §2.
fn fields(pairs: &[(&str, String)]) -> String {
    let shown: Vec<String> = pairs
        .iter()
        .filter(|(_, value)| value != "0" && value != "[]")
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    format!("{{{}}}", shown.join(" "))
}

fn render_account(a: &Account) -> String {
    assert_eq!(
        (
            a.debits_pending,
            a.debits_posted,
            a.credits_pending,
            a.credits_posted
        ),
        (0, 0, 0, 0),
        "the parser never sets balances"
    );
    fields(&[
        ("id", a.id.to_string()),
        ("ledger", a.ledger.to_string()),
        ("code", a.code.to_string()),
        ("flags", format!("[{}]", a.flags.names().join(","))),
        ("ud128", a.user_data_128.to_string()),
        ("ud64", a.user_data_64.to_string()),
        ("ud32", a.user_data_32.to_string()),
        ("ts", a.timestamp.to_string()),
    ])
}

fn render_transfer(t: &Transfer) -> String {
    fields(&[
        ("id", t.id.to_string()),
        ("debit", t.debit_account_id.to_string()),
        ("credit", t.credit_account_id.to_string()),
        ("amount", t.amount.to_string()),
        ("pending_id", t.pending_id.to_string()),
        ("ledger", t.ledger.to_string()),
        ("code", t.code.to_string()),
        ("flags", format!("[{}]", t.flags.names().join(","))),
        ("timeout", t.timeout.to_string()),
        ("ud128", t.user_data_128.to_string()),
        ("ud64", t.user_data_64.to_string()),
        ("ud32", t.user_data_32.to_string()),
        ("ts", t.timestamp.to_string()),
    ])
}

fn render_filter(f: &AccountFilter) -> String {
    let mut parts = vec![
        format!("account={}", f.account_id),
        format!("limit={}", f.limit),
    ];
    for (on, name) in [
        (f.debits, "debits"),
        (f.credits, "credits"),
        (f.reversed, "reversed"),
    ] {
        if on {
            parts.push(name.to_string());
        }
    }
    parts.push(format!("time={}..{}", f.timestamp_min, f.timestamp_max));
    let given = fields(&[
        ("ud128", f.user_data_128.to_string()),
        ("ud64", f.user_data_64.to_string()),
        ("ud32", f.user_data_32.to_string()),
        ("ledger", f.ledger.to_string()),
        ("code", f.code.to_string()),
    ]);
    if given != "{}" {
        parts.push(given);
    }
    parts.join(" ")
}

fn render_query(f: &tally_types::QueryFilter) -> String {
    let reversed = if f.reversed { " reversed" } else { "" };
    let given = fields(&[
        ("ud128", f.user_data_128.to_string()),
        ("ud64", f.user_data_64.to_string()),
        ("ud32", f.user_data_32.to_string()),
        ("ledger", f.ledger.to_string()),
        ("code", f.code.to_string()),
        ("limit", f.limit.to_string()),
    ]);
    format!(
        "{given} time={}..{}{reversed}",
        f.timestamp_min, f.timestamp_max
    )
}

#[test]
fn query_filters_and_the_account_filter_fields() {
    check(
        r#"{"query_transfers": {"user_data_128": "340282366920938463463374607431768211454", "ledger": 156, "code": 7, "limit": 5}}"#,
        "query_transfers {ud128=340282366920938463463374607431768211454 ledger=156 code=7 limit=5} time=0..0",
    );
    check(
        r#"{"query_accounts": {"user_data_64": "9", "user_data_32": 3, "timestamp_min": "5", "timestamp_max": "9", "flags": ["reversed"]}}"#,
        "query_accounts {ud64=9 ud32=3} time=5..9 reversed",
    );
    check(r#"{"query_accounts": {}}"#, "query_accounts {} time=0..0");
    check(
        r#"{"query_transfers": {"reversed": true}}"#,
        "query_transfers {} time=0..0 reversed",
    );
    check(
        r#"{"query_transfers": {"reverse": true}}"#,
        "query_transfers {} time=0..0 reversed",
    );
    check(
        r#"{"query_accounts": {"flags": ["reverse"]}}"#,
        "query_accounts {} time=0..0 reversed",
    );
    check(
        r#"{"query_accounts": {"reverse": true, "reversed": false}}"#,
        "error: query_accounts.reversed: give reversed or reverse, not both",
    );
    check(
        r#"{"query_transfers": {"account_id": "1"}}"#,
        "error: query_transfers.account_id: unknown field; query filter fields are user_data_128,",
    );
    check(
        r#"{"query_transfers": {"flags": ["debits"]}}"#,
        "error: query_transfers.flags[0]: unknown flag \"debits\"; the flags here are reversed",
    );
    check(
        r#"{"query_transfers": {"flags": ["reversed"], "reversed": true}}"#,
        "error: query_transfers.flags: give reversed as a flag or as a field, not both",
    );
    check(
        r#"{"query_accounts": {"code": 70000}}"#,
        "error: query_accounts.code:",
    );
    check(
        r#"{"get_account_balances": {"account_id": "1", "flags": ["credits", "reversed"], "limit": 3}}"#,
        "get_account_balances account=1 limit=3 credits reversed time=0..0",
    );
    check(
        r#"{"get_account_transfers": {"account_id": "1", "user_data_128": "12", "user_data_64": "5", "user_data_32": 4, "ledger": 156, "code": 2}}"#,
        "get_account_transfers account=1 limit=0 debits credits time=0..0 {ud128=12 ud64=5 ud32=4 ledger=156 code=2}",
    );
}

#[test]
fn spec_examples_parse_verbatim() {
    check(
        r#"{"create_accounts": [{"id": "1", "ledger": 156, "code": 1, "flags": ["debits_must_not_exceed_credits"]}]}"#,
        "create_accounts {id=1 ledger=156 code=1 flags=[debits_must_not_exceed_credits]}",
    );
    check(
        r#"{"create_transfers": [{"id": "9", "debit_account_id": "2", "credit_account_id": "1", "amount": "12.50", "ledger": 156, "code": 1}]}"#,
        "create_transfers {id=9 debit=2 credit=1 amount=1250 ledger=156 code=1}",
    );
    check(
        r#"{"lookup_accounts": ["1", "2"]}"#,
        "lookup_accounts [1, 2]",
    );
    check(r#"{"lookup_transfers": ["9"]}"#, "lookup_transfers [9]");
    check(
        r#"{"get_account_transfers": {"account_id": "1", "limit": 10}}"#,
        "get_account_transfers account=1 limit=10 debits credits time=0..0",
    );
}

#[test]
fn every_field_is_read() {
    check(
        r#"{"create_accounts": [{"id": "7", "ledger": "840", "code": "3", "flags": ["linked", "credits_must_not_exceed_debits"],
            "user_data_128": "340282366920938463463374607431768211455", "user_data_64": "18446744073709551615", "user_data_32": 4294967295}]}"#,
        "create_accounts {id=7 ledger=840 code=3 flags=[linked,credits_must_not_exceed_debits] \
         ud128=340282366920938463463374607431768211455 ud64=18446744073709551615 ud32=4294967295}",
    );
    check(
        r#"{"create_transfers": [{"id": "10", "debit_account_id": "1", "credit_account_id": "2", "amount": "0.01", "ledger": 156,
            "code": 65535, "flags": ["pending", "linked"], "timeout": 60, "user_data_128": 5, "user_data_64": "6", "user_data_32": 7}]}"#,
        "create_transfers {id=10 debit=1 credit=2 amount=1 ledger=156 code=65535 flags=[linked,pending] \
         timeout=60 ud128=5 ud64=6 ud32=7}",
    );
    check(
        r#"{"get_account_transfers": {"account_id": "1", "limit": 0, "reversed": true, "timestamp_min": "5", "timestamp_max": 9}}"#,
        "get_account_transfers account=1 limit=0 debits credits reversed time=5..9",
    );
}

#[test]
fn missing_fields_are_zero_and_empty_batches_are_fine() {
    check(r#"{"create_accounts": [{}]}"#, "create_accounts {}");
    check(r#"{"create_transfers": [{}]}"#, "create_transfers {}");
    check(r#"{"create_transfers": []}"#, "create_transfers ");
    check(r#"{"lookup_accounts": []}"#, "lookup_accounts []");
    check(
        r#"{"get_account_transfers": {}}"#,
        "get_account_transfers account=0 limit=0 debits credits time=0..0",
    );
    check(
        r#"{"create_accounts": [{"flags": []}]}"#,
        "create_accounts {}",
    );
}

#[test]
fn filter_directions() {
    let base = r#"{"get_account_transfers": {"account_id": "1", "#;
    let cases = [
        (r#""debits": true"#, "debits"),
        (r#""debits": false"#, "credits"),
        (r#""credits": true"#, "credits"),
        (r#""credits": false"#, "debits"),
        (r#""debits": true, "credits": true"#, "debits credits"),
        (r#""debits": false, "credits": false"#, ""),
        // The same choices as TigerBeetle's filter flags.
        (r#""flags": ["debits"]"#, "debits"),
        (r#""flags": ["credits"]"#, "credits"),
        (r#""flags": ["credits", "debits"]"#, "debits credits"),
        (r#""flags": []"#, "debits credits"),
        (r#""flags": ["reversed"]"#, "debits credits reversed"),
        (r#""flags": ["debits", "reversed"]"#, "debits reversed"),
        // docs/spec.md §2 calls it "a reverse option": `reverse` is the same as `reversed`.
        (r#""reverse": true"#, "debits credits reversed"),
        (r#""reverse": false"#, "debits credits"),
        (r#""flags": ["reverse"]"#, "debits credits reversed"),
    ];
    for (given, directions) in cases {
        let expected = format!("get_account_transfers account=1 limit=0 {directions} time=0..0")
            .replace("  ", " ");
        check(&format!("{base}{given}}}}}"), &expected);
    }
    check(
        r#"{"get_account_transfers": {"account_id": "1", "reversed": "yes"}}"#,
        "error: get_account_transfers.reversed: expected true or false, found a string",
    );
    check(
        r#"{"get_account_transfers": {"account_id": "1", "flags": ["debits"], "reversed": true}}"#,
        "error: get_account_transfers.flags: give debits, credits and reversed either as flags or as fields, not both",
    );
    check(
        r#"{"get_account_transfers": {"account_id": "1", "flags": ["newest"]}}"#,
        "error: get_account_transfers.flags[0]: unknown flag \"newest\"; the flags here are debits, credits, reversed, reverse",
    );
    check(
        r#"{"get_account_transfers": {"account_id": "1", "reversed": true, "reverse": true}}"#,
        "error: get_account_transfers.reverse: give reversed or reverse, not both",
    );
    check(
        r#"{"get_account_transfers": {"account_id": "1", "order": "asc"}}"#,
        "error: get_account_transfers.order: unknown field; filter fields are account_id,",
    );
    check(
        r#"{"get_account_transfers": ["1"]}"#,
        "error: get_account_transfers: expected an object of filter fields, found an array",
    );
}

#[test]
fn now_is_returned_for_the_caller_to_judge() {
    check(
        r#"{"lookup_accounts": ["1"], "now": "1732800000000000001"}"#,
        "lookup_accounts [1] now=1732800000000000001",
    );
    check(
        r#"{"now": 5, "lookup_accounts": ["1"]}"#,
        "lookup_accounts [1] now=5",
    );
    check(
        r#"{"lookup_accounts": ["1"], "now": "18446744073709551616"}"#,
        r#"error: now: "18446744073709551616" is past u64"#,
    );
    check(
        r#"{"lookup_accounts": ["1"], "now": 1.5}"#,
        "error: now: JSON number 1.5",
    );
    check(
        r#"{"lookup_accounts": ["1"], "now": "1", "now": "2"}"#,
        "error: now: given twice",
    );
    check(r#"{"now": "1"}"#, "error: no request in the line");
}

#[test]
fn line_shape_errors() {
    check(
        r#"{"lookup_accounts": ["1"]"#,
        "error: malformed JSON: EOF while parsing",
    );
    check(
        r#"{"lookup_accounts": ["1"]} x"#,
        "error: malformed JSON: trailing characters",
    );
    check("", "error: malformed JSON");
    check(r#"["1"]"#, "error: a request line is a JSON object");
    check(
        "{}",
        "error: no request in the line; expected one of create_accounts,",
    );
    check(
        r#"{"create_account": [{"id": "1"}]}"#,
        r#"error: unknown request key "create_account"; a line carries one of create_accounts,"#,
    );
    check(
        r#"{"create_accounts": [], "lookup_accounts": ["1"]}"#,
        "error: a line carries exactly one request; found create_accounts and lookup_accounts",
    );
    check(
        r#"{"lookup_accounts": ["1"], "lookup_accounts": ["2"]}"#,
        "error: lookup_accounts: given twice",
    );
    check(
        r#"{"create_accounts": {"id": "1"}}"#,
        "error: create_accounts: expected an array of accounts, found an object",
    );
    check(
        r#"{"create_accounts": ["1"]}"#,
        "error: create_accounts[0]: expected an object of account fields, found a string",
    );
    // A malformed value inside an object names its field; the line's own syntax does not.
    for (line, expected) in [
        (
            r#"{"create_accounts": [{"ledger": 1, "id": 1e400}]}"#,
            "create_accounts[0].id: malformed JSON: number out of range at line 1 column",
        ),
        (
            r#"{"create_transfers": [{"id": "1"}, {"amount": tru}]}"#,
            "create_transfers[1].amount: malformed JSON: expected ident at line 1 column",
        ),
        (
            r#"{"get_account_transfers": {"account_id": "1", "flags": ["debits" "credits"]}}"#,
            "get_account_transfers.flags: malformed JSON: expected `,` or `]` at line 1 column",
        ),
        (
            r#"{"lookup_accounts": ["1" "2"]}"#,
            "lookup_accounts: malformed JSON: expected `,` or `]` at line 1 column",
        ),
        // A key is shown escaped and cut, like any client text in a message.
        (
            r#"{"create_accounts": [{"i\u0001d": 1e400}]}"#,
            "create_accounts[0].i\\u{1}d: malformed JSON: number out of range",
        ),
    ] {
        check(line, &format!("error: {expected}"));
        let message = parse_line(line, &Store, &CurrencyTable::default())
            .err()
            .unwrap()
            .0;
        assert_eq!(message.matches(" at line ").count(), 1, "{message}");
        assert!(!message.contains('\u{1}'), "{message}");
    }
    // Nesting past serde_json's recursion limit is refused, not a stack overflow.
    check(
        &"[".repeat(100_000),
        "error: malformed JSON: recursion limit exceeded",
    );
}

#[test]
fn unknown_repeated_and_engine_owned_fields() {
    check(
        r#"{"create_accounts": [{"id": "1", "colour": "red"}]}"#,
        "error: create_accounts[0].colour: unknown field; account fields are id, ledger,",
    );
    check(
        r#"{"create_transfers": [{"id": "1"}, {"id": "2", "amout": "1"}]}"#,
        "error: create_transfers[1].amout: unknown field; transfer fields are id,",
    );
    check(
        r#"{"create_accounts": [{"id": "1", "id": "2"}]}"#,
        "error: create_accounts[0].id: given twice",
    );
    check(
        r#"{"create_accounts": [{"id": "1", "ledger": 156, "code": 1, "credits_posted": "5.00"}]}"#,
        "error: create_accounts[0].credits_posted: balances are not accepted in create_accounts",
    );
    check(
        r#"{"create_accounts": [{"id": "1", "debits_pending": "0"}]}"#,
        "error: create_accounts[0].debits_pending: balances are not accepted",
    );
    // A timestamp is read (an imported event's own); the ledger judges it.
    check(
        r#"{"create_accounts": [{"id": "1", "timestamp": "5", "flags": ["imported"]}]}"#,
        "create_accounts {id=1 flags=[imported] ts=5}",
    );
    check(
        r#"{"create_transfers": [{"id": "1", "timestamp": "5"}]}"#,
        "create_transfers {id=1 ts=5}",
    );
    check(
        r#"{"create_transfers": [{"id": "1", "timestamp": "-5"}]}"#,
        "error: create_transfers[0].timestamp:",
    );
    let long_key = "k".repeat(1000);
    let line = format!(r#"{{"create_accounts": [{{"{long_key}": 1}}]}}"#);
    let error = parse_line(&line, &NoLedgers, &CurrencyTable::default()).unwrap_err();
    assert!(
        error.0.len() < 300,
        "a hostile key is not echoed whole: {}",
        error.0.len()
    );
}

#[test]
fn flags_errors() {
    check(
        r#"{"create_accounts": [{"id": "1", "flags": ["linked", "pending"]}]}"#,
        r#"error: create_accounts[0].flags[1]: unknown flag "pending"; the flags here are linked, debits_must_not_exceed_credits, credits_must_not_exceed_debits, history, imported, closed"#,
    );
    check(
        r#"{"create_transfers": [{"flags": ["Linked"]}]}"#,
        r#"error: create_transfers[0].flags[0]: unknown flag "Linked""#,
    );
    check(
        r#"{"create_transfers": [{"flags": "linked"}]}"#,
        "error: create_transfers[0].flags: expected an array of flag names, found a string",
    );
    check(
        r#"{"create_transfers": [{"flags": [1]}]}"#,
        "error: create_transfers[0].flags[0]: expected a flag name, found a number",
    );
    check(
        r#"{"create_transfers": [{"flags": ["linked", "linked"]}]}"#,
        "create_transfers {flags=[linked]}",
    );
}

#[test]
fn id_and_integer_errors() {
    let past = "340282366920938463463374607431768211456";
    check(
        &format!(
            r#"{{"create_transfers": [{{"id": "1"}}, {{"id": "2"}}, {{"id": "3"}}, {{"id": "4", "debit_account_id": "{past}"}}]}}"#
        ),
        &format!(r#"error: create_transfers[3].debit_account_id: "{past}" is past u128"#),
    );
    check(
        r#"{"lookup_transfers": ["340282366920938463463374607431768211455"]}"#,
        "lookup_transfers [340282366920938463463374607431768211455]",
    );
    check(
        r#"{"lookup_accounts": [-1]}"#,
        "error: lookup_accounts[0]: -1 is negative",
    );
    check(
        r#"{"lookup_accounts": [-1.5]}"#,
        "error: lookup_accounts[0]: -1.5 is negative",
    );
    check(
        r#"{"lookup_accounts": ["1", 1.5]}"#,
        "error: lookup_accounts[1]: JSON number 1.5 is not an integer; give u128 values as a string",
    );
    check(
        r#"{"lookup_accounts": [1.0]}"#,
        "error: lookup_accounts[0]: JSON number 1.0",
    );
    check(
        r#"{"lookup_accounts": [1e3]}"#,
        "error: lookup_accounts[0]: JSON number 1000.0",
    );
    check(
        r#"{"lookup_accounts": [9007199254740991]}"#,
        "lookup_accounts [9007199254740991]",
    );
    check(
        r#"{"lookup_accounts": [9007199254740992]}"#,
        r#"error: lookup_accounts[0]: 9007199254740992 is a JSON number at or past 2^53"#,
    );
    check(
        r#"{"lookup_accounts": [340282366920938463463374607431768211456]}"#,
        "error: lookup_accounts[0]: JSON number 3.402823669209385e38 is past 2^53, where JSON numbers are not exact; give u128 values as a string",
    );
    for bad in ["", "0x10", "+1", " 1", "1 ", "-1", "1.0", "1e3", "١"] {
        check(
            &format!(r#"{{"lookup_accounts": ["{bad}"]}}"#),
            "error: lookup_accounts[0]: \"",
        );
        check(
            &format!(r#"{{"lookup_accounts": ["{bad}"]}}"#),
            "error: is not a string of decimal digits",
        );
    }
    check(
        r#"{"lookup_accounts": [null]}"#,
        "error: lookup_accounts[0]: expected a string of decimal digits, found null",
    );
    check(
        r#"{"lookup_accounts": [true]}"#,
        "error: lookup_accounts[0]: expected a string of decimal digits, found a boolean",
    );
    check(
        r#"{"create_accounts": [{"user_data_64": "18446744073709551616"}]}"#,
        r#"error: create_accounts[0].user_data_64: "18446744073709551616" is past u64"#,
    );
    check(
        r#"{"create_accounts": [{"ledger": 4294967296}]}"#,
        "error: create_accounts[0].ledger: 4294967296 is past u32",
    );
    check(
        r#"{"create_accounts": [{"code": 65536}]}"#,
        "error: create_accounts[0].code: 65536 is past u16",
    );
    check(
        r#"{"create_accounts": [{"code": "65536"}]}"#,
        r#"error: create_accounts[0].code: "65536" is past u16"#,
    );
    check(
        r#"{"create_accounts": [{"ledger": 156.0}]}"#,
        "error: create_accounts[0].ledger: JSON number 156.0 is written with a fraction or an exponent (as 1.0 or 1e3); give u32 values as an integer",
    );
    check(
        r#"{"create_transfers": [{"timeout": -5}]}"#,
        "error: create_transfers[0].timeout: -5 is negative",
    );
    check(
        r#"{"create_accounts": [{"ledger": [156]}]}"#,
        "error: create_accounts[0].ledger: expected an integer, found an array",
    );
    // u32 fields take any JSON integer in range, not only those below 2^53.
    check(
        r#"{"create_accounts": [{"ledger": 4294967295}]}"#,
        "create_accounts {ledger=4294967295}",
    );
}

#[test]
fn amount_errors() {
    let transfer = |amount: &str, ledger: u32| {
        format!(
            r#"{{"create_transfers": [{{"id": "9", "debit_account_id": "2", "credit_account_id": "1", "amount": {amount}, "ledger": {ledger}, "code": 1}}]}}"#
        )
    };
    let ok = |amount: u128, ledger: u32| {
        format!("create_transfers {{id=9 debit=2 credit=1 amount={amount} ledger={ledger} code=1}}")
    };
    check(&transfer(r#""12.500""#, 156), &ok(1250, 156));
    check(&transfer(r#""12""#, 156), &ok(1200, 156));
    check(&transfer("12", 156), &ok(1200, 156));
    check(&transfer(r#""1000""#, 392), &ok(1000, 392));
    check(&transfer(r#""1.005""#, 48), &ok(1005, 48));
    check(
        &transfer(r#""1.005""#, 156),
        r#"error: create_transfers[0].amount: "1.005" has more than 2 decimal place(s) for this ledger; amounts are never rounded (ledger 156 has scale 2)"#,
    );
    check(
        &transfer(r#""1.5""#, 392),
        "error: create_transfers[0].amount: \"1.5\" has more than 0",
    );
    check(
        &transfer("12.5", 156),
        r#"error: create_transfers[0].amount: JSON number 12.5 is a float; give amounts as a decimal string such as "12.50""#,
    );
    check(
        &transfer("12.0", 156),
        "error: create_transfers[0].amount: JSON number 12.0 is a float",
    );
    check(
        &transfer("18446744073709551616", 156),
        "error: create_transfers[0].amount: JSON number 1.8446744073709552e19 is at or past 2^53",
    );
    let long = format!("\"{}\"", "9".repeat(10_000));
    check(
        &transfer(&long, 156),
        &format!(
            "error: create_transfers[0].amount: \"{}…\" is too large",
            "9".repeat(64)
        ),
    );
    check(
        &transfer("-1", 156),
        "error: create_transfers[0].amount: -1 is negative",
    );
    check(
        &transfer(r#""-1.00""#, 156),
        "error: create_transfers[0].amount: \"-1.00\" is negative",
    );
    check(
        &transfer(r#""abc""#, 156),
        "error: create_transfers[0].amount: \"abc\" is not a decimal amount",
    );
    check(
        &transfer(r#""""#, 156),
        "error: create_transfers[0].amount: \"\" is not a decimal amount",
    );
    check(&transfer(r#""1e3""#, 156), "error: is not a decimal amount");
    check(
        &transfer("9007199254740992", 392),
        "error: create_transfers[0].amount: 9007199254740992 is a JSON number at or past 2^53",
    );
    check(
        &transfer("null", 156),
        "error: create_transfers[0].amount: expected a decimal string",
    );
    check(
        &transfer(r#""340282366920938463463374607431768211455""#, 156),
        "error: is too large for a u128 amount",
    );
    check(
        &transfer(r#""340282366920938463463374607431768211455""#, 392),
        &ok(u128::MAX, 392),
    );
}

#[test]
fn pending_id_and_refund_of_share_one_field() {
    check(
        r#"{"create_transfers": [{"id": "5", "pending_id": "100", "refund_of": "101"}]}"#,
        "error: create_transfers[0].refund_of: pending_id is given too",
    );
    check(
        r#"{"create_transfers": [{"id": "5", "refund_of": "102", "flags": ["refund"]}]}"#,
        "create_transfers {id=5 pending_id=102 flags=[refund]}",
    );
    // Without the refund flag it is stored all the same; the state machine answers
    // pending_id_must_be_zero.
    check(
        r#"{"create_transfers": [{"id": "5", "refund_of": "102", "amount": "3"}]}"#,
        "create_transfers {id=5 amount=3 pending_id=102}",
    );
    check(
        r#"{"create_transfers": [{"id": "5", "pending_id": "0", "refund_of": "102", "flags": ["refund"]}]}"#,
        "create_transfers {id=5 pending_id=102 flags=[refund]}",
    );
}

#[test]
fn scale_rule_for_transfers_without_a_ledger() {
    // Post reads its pending transfer's scale (100 is CNY).
    check(
        r#"{"create_transfers": [{"id": "200", "pending_id": "100", "flags": ["post_pending_transfer"], "amount": "1.50"}]}"#,
        "create_transfers {id=200 amount=150 pending_id=100 flags=[post_pending_transfer]}",
    );
    check(
        r#"{"create_transfers": [{"id": "200", "pending_id": "100", "flags": ["void_pending_transfer"], "amount": "1.505"}]}"#,
        "error: create_transfers[0].amount: \"1.505\" has more than 2 decimal place(s) for this ledger; amounts are never rounded (read at scale 2 of ledger 156, taken from transfer 100)",
    );
    // A refund reads its original's scale (102 is BHD), not its debit account's (JPY).
    check(
        r#"{"create_transfers": [{"id": "201", "refund_of": "102", "debit_account_id": "3", "flags": ["refund"], "amount": "1.005"}]}"#,
        "create_transfers {id=201 debit=3 amount=1005 pending_id=102 flags=[refund]}",
    );
    // A transfer without ledger reads its debit account's scale (3 is JPY).
    check(
        r#"{"create_transfers": [{"id": "202", "debit_account_id": "3", "credit_account_id": "5", "amount": "1000"}]}"#,
        "create_transfers {id=202 debit=3 credit=5 amount=1000}",
    );
    check(
        r#"{"create_transfers": [{"id": "202", "debit_account_id": "3", "amount": "1.5"}]}"#,
        "error: create_transfers[0].amount: \"1.5\" has more than 0 decimal place(s) for this ledger; amounts are never rounded (read at scale 0 of ledger 392, taken from debit account 3)",
    );
    // A given ledger wins over the debit account's.
    check(
        r#"{"create_transfers": [{"id": "203", "debit_account_id": "3", "ledger": 156, "amount": "1.50"}]}"#,
        "create_transfers {id=203 debit=3 amount=150 ledger=156}",
    );
    // A stray refund_of (no refund flag) does not pick the original's ledger.
    check(
        r#"{"create_transfers": [{"id": "204", "debit_account_id": "3", "refund_of": "102", "amount": "1.005"}]}"#,
        "error: create_transfers[0].amount: \"1.005\" has more than 0",
    );
    // A post of an unknown pending transfer falls back on its debit account.
    check(
        r#"{"create_transfers": [{"id": "205", "pending_id": "999", "debit_account_id": "4", "flags": ["post_pending_transfer"], "amount": "0.001"}]}"#,
        "create_transfers {id=205 debit=4 amount=1 pending_id=999 flags=[post_pending_transfer]}",
    );
    // Nothing found: scale 0.
    check(
        r#"{"create_transfers": [{"id": "206", "pending_id": "999", "flags": ["post_pending_transfer"], "amount": "12"}]}"#,
        "create_transfers {id=206 amount=12 pending_id=999 flags=[post_pending_transfer]}",
    );
    check(
        r#"{"create_transfers": [{"id": "206", "debit_account_id": "77", "amount": "12.5"}]}"#,
        "error: create_transfers[0].amount: \"12.5\" has more than 0 decimal place(s) for this ledger; amounts are never rounded (no ledger given or found: read at scale 0)",
    );
}

#[test]
fn scale_rule_sees_earlier_events_of_the_same_line() {
    // A pending transfer with its own ledger, then its post without one.
    check(
        r#"{"create_transfers": [
            {"id": "300", "debit_account_id": "4", "credit_account_id": "6", "amount": "2", "ledger": 48, "code": 1, "flags": ["pending"]},
            {"id": "301", "pending_id": "300", "flags": ["post_pending_transfer"], "amount": "0.001"}]}"#,
        "create_transfers {id=300 debit=4 credit=6 amount=2000 ledger=48 code=1 flags=[pending]} \
         {id=301 amount=1 pending_id=300 flags=[post_pending_transfer]}",
    );
    // A transfer whose ledger was itself derived (debit account 4, BHD), then its refund.
    check(
        r#"{"create_transfers": [
            {"id": "310", "debit_account_id": "4", "credit_account_id": "6", "amount": "2", "code": 1},
            {"id": "311", "refund_of": "310", "flags": ["refund"], "amount": "0.001"}]}"#,
        "create_transfers {id=310 debit=4 credit=6 amount=2000 code=1} \
         {id=311 amount=1 pending_id=310 flags=[refund]}",
    );
    // The store wins over the line: 100 is stored as CNY, so a line event reusing id 100
    // (it will get `exists*`) does not change the scale of a post of 100.
    check(
        r#"{"create_transfers": [
            {"id": "100", "ledger": 392, "amount": "5"},
            {"id": "320", "pending_id": "100", "flags": ["post_pending_transfer"], "amount": "1.50"}]}"#,
        "create_transfers {id=100 amount=5 ledger=392} {id=320 amount=150 pending_id=100 flags=[post_pending_transfer]}",
    );
    // A later event does not count for an earlier one.
    check(
        r#"{"create_transfers": [
            {"id": "331", "pending_id": "330", "flags": ["post_pending_transfer"], "amount": "1.5"},
            {"id": "330", "ledger": 156, "amount": "5", "flags": ["pending"]}]}"#,
        "error: create_transfers[0].amount: \"1.5\" has more than 0",
    );
}

#[test]
fn batch_size_is_bounded() {
    let line = |count: usize| {
        let events = vec![r#"{"id": "1"}"#; count].join(",");
        format!(r#"{{"create_accounts": [{events}]}}"#)
    };
    let at_limit = parse_line(&line(8_190), &NoLedgers, &CurrencyTable::default()).unwrap();
    assert!(matches!(at_limit.request, Request::CreateAccounts(a) if a.len() == 8_190));
    check(
        &line(8_191),
        "error: create_accounts: 8191 items is more than the batch limit of 8190",
    );
    let ids = vec![r#""1""#; 8_191].join(",");
    check(
        &format!(r#"{{"lookup_transfers": [{ids}]}}"#),
        "error: lookup_transfers: 8191 items is more than the batch limit of 8190",
    );
}
