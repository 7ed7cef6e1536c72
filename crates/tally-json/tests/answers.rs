//! Answer lines: the docs/spec.md §4 shapes, exact scale digits, field order, refund display,
//! and properties (formatting round-trips through parsing; no input panics the parser).

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::Value;
use tally_json::{
    AccountJson, EventOutcome, NoLedgers, Request, TransferJson, account_json, account_line,
    accounts_answer, change_event_json, change_event_line, error_answer, parse_line,
    results_answer, transfer_json, transfer_line, transfers_answer,
};
use tally_types::currency::{CurrencyTable, parse_amount};
use tally_types::{
    Account, AccountFlags, ChangeEvent, ChangeKind, ResultCode, Transfer, TransferFlags,
};

/// `actual` must be exactly `expected` (one line, field order of docs/spec.md §4, no spaces).
fn check(actual: &str, expected: &str) {
    assert_eq!(actual, expected);
    assert!(!actual.contains('\n'), "an answer is one line");
    let _: Value = serde_json::from_str(actual).unwrap();
}

fn cny_wallet() -> Account {
    Account {
        id: 1,
        ledger: 156,
        code: 1,
        flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
        credits_posted: 1250,
        timestamp: 1_732_800_000_000_000_001,
        ..Account::default()
    }
}

#[test]
fn results_match_the_spec_example() {
    let answer = results_answer(&[
        EventOutcome {
            code: ResultCode::Ok,
            timestamp: 1_732_800_000_000_000_001,
        },
        EventOutcome {
            code: ResultCode::ExceedsCredits,
            timestamp: 1_732_800_000_000_000_002,
        },
    ]);
    check(
        &answer,
        r#"{"results":[{"index":0,"result":"ok","timestamp":"1732800000000000001"},{"index":1,"result":"exceeds_credits"}]}"#,
    );
    let spec: Value = serde_json::from_str(
        r#"{"results": [{"index": 0, "result": "ok", "timestamp": "1732800000000000001"}, {"index": 1, "result": "exceeds_credits"}]}"#,
    )
    .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&answer).unwrap(), spec);
    check(&results_answer(&[]), r#"{"results":[]}"#);
}

#[test]
fn change_events_carry_the_transfer_and_both_accounts_or_the_account() {
    let mut currencies = CurrencyTable::default();
    currencies.register(156, 2).unwrap();
    let transfer = Transfer {
        id: 9,
        debit_account_id: 2,
        credit_account_id: 1,
        amount: 250,
        ledger: 156,
        code: 7,
        timestamp: 1_732_800_000_000_000_005,
        ..Transfer::default()
    };
    let debit = Account {
        id: 2,
        debits_posted: 250,
        ..cny_wallet()
    };
    let credit = Account {
        credits_posted: 1500,
        ..cny_wallet()
    };
    let event = ChangeEvent {
        timestamp: transfer.timestamp,
        kind: ChangeKind::SinglePhase,
        transfer,
        debit_account: debit,
        credit_account: credit,
    };
    let expected = format!(
        r#"{{"timestamp":"1732800000000000005","type":"single_phase","transfer":{},"debit_account":{},"credit_account":{}}}"#,
        transfer_line(&transfer, &currencies),
        account_line(&debit, &currencies),
        account_line(&credit, &currencies),
    );
    check(&change_event_line(&event, &currencies), &expected);
    let value = change_event_json(&event, &currencies);
    assert_eq!(value["transfer"], transfer_json(&transfer, &currencies));
    assert_eq!(value["credit_account"]["credits_posted"], "15.00");
    assert_eq!(serde_json::from_str::<Value>(&expected).unwrap(), value);

    let created = ChangeEvent::account_created(cny_wallet());
    check(
        &change_event_line(&created, &currencies),
        &format!(
            r#"{{"timestamp":"1732800000000000001","type":"account_created","account":{}}}"#,
            account_line(&cny_wallet(), &currencies)
        ),
    );
    let value = change_event_json(&created, &currencies);
    assert_eq!(value["account"], account_json(&cny_wallet(), &currencies));
    assert!(value.get("transfer").is_none() && value.get("debit_account").is_none());
}

#[test]
fn accounts_match_the_spec_example() {
    check(
        &accounts_answer(&[cny_wallet()], &CurrencyTable::default()),
        r#"{"accounts":[{"id":"1","ledger":156,"code":1,"flags":["debits_must_not_exceed_credits"],"debits_pending":"0.00","debits_posted":"0.00","credits_pending":"0.00","credits_posted":"12.50","user_data_128":"0","user_data_64":"0","user_data_32":0,"timestamp":"1732800000000000001"}]}"#,
    );
    check(
        &accounts_answer(&[], &CurrencyTable::default()),
        r#"{"accounts":[]}"#,
    );
}

#[test]
fn amounts_have_exactly_the_scale_digits() {
    let currencies = CurrencyTable::default();
    let cases = [
        (392, 1000, "1000"),  // JPY: no decimals
        (392, 0, "0"),        // JPY zero
        (48, 1005, "1.005"),  // BHD: three
        (48, 1, "0.001"),     // BHD smallest unit
        (156, 5, "0.05"),     // CNY: two
        (156, 1250, "12.50"), // CNY keeps the trailing zero
        (999, 42, "42"),      // unknown ledger: scale 0
    ];
    for (ledger, minor, shown) in cases {
        let account = Account {
            ledger,
            debits_posted: minor,
            ..Account::default()
        };
        assert_eq!(
            AccountJson::new(&account, &currencies).debits_posted,
            shown,
            "{ledger}"
        );
        let transfer = Transfer {
            ledger,
            amount: minor,
            ..Transfer::default()
        };
        assert_eq!(
            TransferJson::new(&transfer, &currencies).amount,
            shown,
            "{ledger}"
        );
    }
    let mut registered = CurrencyTable::default();
    registered.register(999, 4).unwrap();
    let account = Account {
        ledger: 999,
        credits_posted: 5,
        ..Account::default()
    };
    assert_eq!(
        AccountJson::new(&account, &registered).credits_posted,
        "0.0005"
    );
}

#[test]
fn transfers_show_refund_of_for_refunds_and_pending_id_otherwise() {
    let currencies = CurrencyTable::default();
    let post = Transfer {
        id: 11,
        debit_account_id: 2,
        credit_account_id: 1,
        amount: 1250,
        pending_id: 10,
        ledger: 156,
        code: 1,
        flags: TransferFlags::POST_PENDING_TRANSFER,
        timestamp: 7,
        ..Transfer::default()
    };
    check(
        &transfers_answer(&[post], &currencies),
        r#"{"transfers":[{"id":"11","debit_account_id":"2","credit_account_id":"1","amount":"12.50","pending_id":"10","refund_of":"0","ledger":156,"code":1,"flags":["post_pending_transfer"],"timeout":0,"user_data_128":"0","user_data_64":"0","user_data_32":0,"timestamp":"7"}]}"#,
    );
    let refund = Transfer {
        id: 12,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 100,
        pending_id: 11,
        ledger: 392,
        code: 2,
        flags: TransferFlags::REFUND.with(TransferFlags::LINKED),
        timeout: 0,
        user_data_128: u128::MAX,
        user_data_64: u64::MAX,
        user_data_32: u32::MAX,
        timestamp: 8,
    };
    check(
        &transfer_line(&refund, &currencies),
        r#"{"id":"12","debit_account_id":"1","credit_account_id":"2","amount":"100","pending_id":"0","refund_of":"11","ledger":392,"code":2,"flags":["linked","refund"],"timeout":0,"user_data_128":"340282366920938463463374607431768211455","user_data_64":"18446744073709551615","user_data_32":4294967295,"timestamp":"8"}"#,
    );
    let value = transfer_json(&refund, &currencies);
    assert_eq!(value["refund_of"], "11");
    assert_eq!(value["pending_id"], "0");
    assert_eq!(value["user_data_32"], 4_294_967_295u32);
}

#[test]
fn dump_lines_and_values_carry_the_same_record() {
    let currencies = CurrencyTable::default();
    let account = cny_wallet();
    let line = account_line(&account, &currencies);
    assert!(
        line.starts_with(r#"{"id":"1","ledger":156,"code":1,"flags":"#),
        "{line}"
    );
    let from_line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(from_line, account_json(&account, &currencies));
    let typed: AccountJson = serde_json::from_str(&line).unwrap();
    assert_eq!(typed, AccountJson::new(&account, &currencies));
}

#[test]
fn errors_are_escaped_json() {
    check(&error_answer("plain"), r#"{"error":"plain"}"#);
    check(
        &error_answer("unknown flag \"x\"\nnext"),
        r#"{"error":"unknown flag \"x\"\nnext"}"#,
    );
    let parsed: Value = serde_json::from_str(&error_answer("a\\b\u{1}")).unwrap();
    assert_eq!(parsed["error"], "a\\b\u{1}");
}

fn ledgers() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(156u32),
        Just(392),
        Just(48),
        Just(840),
        Just(0),
        Just(7),
        any::<u32>()
    ]
}

fn account_strategy() -> impl Strategy<Value = Account> {
    (
        (
            any::<u128>(),
            any::<u128>(),
            any::<u128>(),
            any::<u128>(),
            any::<u128>(),
        ),
        (
            any::<u128>(),
            any::<u64>(),
            any::<u32>(),
            ledgers(),
            any::<u16>(),
        ),
        (0u16..8, any::<u64>()),
    )
        .prop_map(
            |((id, dp, dpo, cp, cpo), (ud128, ud64, ud32, ledger, code), (bits, ts))| Account {
                id,
                debits_pending: dp,
                debits_posted: dpo,
                credits_pending: cp,
                credits_posted: cpo,
                user_data_128: ud128,
                user_data_64: ud64,
                user_data_32: ud32,
                ledger,
                code,
                flags: AccountFlags::from_bits(bits).unwrap(),
                timestamp: ts,
            },
        )
}

fn transfer_strategy() -> impl Strategy<Value = Transfer> {
    (
        (
            any::<u128>(),
            any::<u128>(),
            any::<u128>(),
            any::<u128>(),
            any::<u128>(),
        ),
        (
            any::<u128>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            ledgers(),
            any::<u16>(),
        ),
        0u16..32,
    )
        .prop_map(
            |((id, dr, cr, amount, pending), (ud128, ud64, ud32, timeout, ledger, code), bits)| {
                Transfer {
                    id,
                    debit_account_id: dr,
                    credit_account_id: cr,
                    amount,
                    pending_id: pending,
                    user_data_128: ud128,
                    user_data_64: ud64,
                    user_data_32: ud32,
                    timeout,
                    ledger,
                    code,
                    flags: TransferFlags::from_bits(bits).unwrap(),
                    timestamp: 0,
                }
            },
        )
}

/// Hand-made mutations of valid lines: the parser's hardest inputs are near-misses.
fn near_miss_lines() -> impl Strategy<Value = String> {
    let seeds = prop_oneof![
        Just(
            r#"{"create_accounts": [{"id": "1", "ledger": 156, "code": 1, "flags": ["debits_must_not_exceed_credits"]}]}"#
        ),
        Just(
            r#"{"create_transfers": [{"id": "9", "debit_account_id": "2", "credit_account_id": "1", "amount": "12.50", "ledger": 156, "code": 1}]}"#
        ),
        Just(
            r#"{"create_transfers": [{"id": "9", "pending_id": "8", "flags": ["post_pending_transfer"], "amount": "1"}], "now": "5"}"#
        ),
        Just(r#"{"get_account_transfers": {"account_id": "1", "limit": 10, "debits": true}}"#),
        Just(r#"{"lookup_accounts": ["1", "2"]}"#),
    ];
    (
        seeds,
        any::<usize>(),
        "[\\[\\]{}\",:.\\-+eE0-9a-z\\\\ ]{0,4}",
        0usize..3,
    )
        .prop_map(|(seed, at, insert, cut)| {
            let mut chars: Vec<char> = seed.chars().collect();
            let at = at % (chars.len() + 1);
            let end = (at + cut).min(chars.len());
            chars.splice(at..end, insert.chars());
            chars.into_iter().collect()
        })
}

proptest! {
    /// Formatting an account, then reading its amounts back at its ledger's scale, gives
    /// the same minor units; ids and user data survive too.
    #[test]
    fn account_amounts_round_trip(account in account_strategy()) {
        let currencies = CurrencyTable::default();
        let answer = accounts_answer(&[account], &currencies);
        let value: Value = serde_json::from_str(&answer).unwrap();
        let shown: AccountJson = serde_json::from_value(value["accounts"][0].clone()).unwrap();
        let scale = currencies.scale(account.ledger);
        prop_assert_eq!(parse_amount(&shown.debits_pending, scale), Ok(account.debits_pending));
        prop_assert_eq!(parse_amount(&shown.debits_posted, scale), Ok(account.debits_posted));
        prop_assert_eq!(parse_amount(&shown.credits_pending, scale), Ok(account.credits_pending));
        prop_assert_eq!(parse_amount(&shown.credits_posted, scale), Ok(account.credits_posted));
        prop_assert_eq!(shown.id, account.id.to_string());
        prop_assert_eq!(shown.user_data_128, account.user_data_128.to_string());
    }

    /// A formatted transfer, sent back as a create_transfers event (timestamp dropped),
    /// parses to the same transfer: the answer format and the request format agree.
    #[test]
    fn transfer_line_parses_back(transfer in transfer_strategy()) {
        let currencies = CurrencyTable::default();
        let mut value = transfer_json(&transfer, &currencies);
        let object = value.as_object_mut().unwrap();
        object.remove("timestamp");
        let line = serde_json::json!({ "create_transfers": [value] }).to_string();
        let parsed = parse_line(&line, &NoLedgers, &currencies);
        prop_assert_eq!(parsed.map(|l| l.request), Ok(Request::CreateTransfers(vec![transfer])));
    }

    /// Arbitrary text never panics the parser; it parses or is rejected with a message.
    #[test]
    fn arbitrary_strings_never_panic(line in any::<String>()) {
        if let Err(error) = parse_line(&line, &NoLedgers, &CurrencyTable::default()) {
            prop_assert!(!error.0.is_empty());
        }
    }

    /// Near-misses of valid lines never panic either, and errors name something.
    #[test]
    fn near_miss_lines_never_panic(line in near_miss_lines()) {
        if let Err(error) = parse_line(&line, &NoLedgers, &CurrencyTable::default()) {
            prop_assert!(!error.0.is_empty());
            let answer: Value = serde_json::from_str(&error_answer(&error.0)).unwrap();
            prop_assert_eq!(answer["error"].as_str(), Some(error.0.as_str()));
        }
    }
}
