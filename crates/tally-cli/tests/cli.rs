//! Drives the real `tally` binary with JSON Lines (docs/spec.md §4).
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn tally() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally"))
}

/// Runs `tally COMMAND --data DIR` (verify, accounts, transfers) to completion.
fn tally_on(command: &str, dir: &Path) -> std::process::Output {
    tally().args([command, "--data"]).arg(dir).output().unwrap()
}

/// Runs `tally apply` on `dir` with `lines`, returns one parsed answer per line.
fn apply(dir: &Path, lines: &[&str], manual_clock: bool) -> Vec<Value> {
    let mut command = tally();
    command.args(["apply", "--data"]).arg(dir);
    if manual_clock {
        command.arg("--manual-clock");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "tally apply failed");
    let answers: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(answers.len(), lines.len(), "one answer per request line");
    answers
}

fn results(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("not a results answer: {answer}"))
        .iter()
        .map(|r| r["result"].as_str().unwrap().to_string())
        .collect()
}

const ACCOUNTS: &str = r#"{"create_accounts": [{"id": "1", "ledger": 156, "code": 1, "flags": ["debits_must_not_exceed_credits"]}, {"id": "2", "ledger": 156, "code": 1}, {"id": "3", "ledger": 392, "code": 1}, {"id": "4", "ledger": 392, "code": 1}]}"#;

#[test]
fn the_spec_examples_answer_as_specified() {
    let dir = tempfile::tempdir().unwrap();
    let answers = apply(
        dir.path(),
        &[
            ACCOUNTS,
            r#"{"create_transfers": [{"id": "9", "debit_account_id": "2", "credit_account_id": "1", "amount": "12.50", "ledger": 156, "code": 1}, {"id": "10", "debit_account_id": "1", "credit_account_id": "2", "amount": "100", "ledger": 156, "code": 1}]}"#,
            r#"{"lookup_accounts": ["1", "2", "99"]}"#,
            r#"{"lookup_transfers": ["9"]}"#,
            r#"{"get_account_transfers": {"account_id": "1", "limit": 10}}"#,
        ],
        false,
    );
    assert_eq!(results(&answers[0]), vec!["ok"; 4]);
    assert_eq!(results(&answers[1]), vec!["ok", "exceeds_credits"]);
    assert!(
        answers[1]["results"][0]["timestamp"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(answers[1]["results"][1].get("timestamp").is_none());
    let accounts = answers[2]["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2, "unknown ids are skipped");
    assert_eq!(accounts[0]["credits_posted"], json!("12.50"));
    assert_eq!(accounts[0]["debits_posted"], json!("0.00"));
    assert_eq!(
        accounts[0]["flags"],
        json!(["debits_must_not_exceed_credits"])
    );
    assert_eq!(accounts[1]["debits_posted"], json!("12.50"));
    assert_eq!(answers[3]["transfers"][0]["amount"], json!("12.50"));
    assert_eq!(answers[4]["transfers"].as_array().unwrap().len(), 1);
}

#[test]
fn a_balancing_sweep_moves_what_is_there_and_a_retry_is_exists() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = r#"{"create_transfers": [{"id": "20", "debit_account_id": "1", "credit_account_id": "2", "amount": "1000000.00", "ledger": 156, "code": 9, "flags": ["balancing_debit"]}]}"#;
    let answers = apply(
        dir.path(),
        &[
            ACCOUNTS,
            r#"{"create_transfers": [{"id": "9", "debit_account_id": "2", "credit_account_id": "1", "amount": "12.50", "ledger": 156, "code": 1}]}"#,
            sweep,
            r#"{"lookup_transfers": ["20"]}"#,
            r#"{"lookup_accounts": ["1"]}"#,
            sweep,
            r#"{"create_transfers": [{"id": "20", "debit_account_id": "1", "credit_account_id": "2", "amount": "12.49", "ledger": 156, "code": 9, "flags": ["balancing_debit"]}]}"#,
            r#"{"create_transfers": [{"id": "21", "pending_id": "9", "ledger": 156, "code": 1, "flags": ["post_pending_transfer", "balancing_credit"]}]}"#,
        ],
        false,
    );
    assert_eq!(results(&answers[2]), vec!["ok"]);
    let swept = &answers[3]["transfers"][0];
    assert_eq!(
        swept["amount"],
        json!("12.50"),
        "the amount moved is stored"
    );
    assert_eq!(swept["flags"], json!(["balancing_debit"]));
    assert_eq!(answers[4]["accounts"][0]["debits_posted"], json!("12.50"));
    assert_eq!(results(&answers[5]), vec!["exists"]);
    assert_eq!(results(&answers[6]), vec!["exists_with_different_amount"]);
    assert_eq!(results(&answers[7]), vec!["flags_are_mutually_exclusive"]);
}

#[test]
fn balances_with_results_queries_and_balance_history_through_apply() {
    let dir = tempfile::tempdir().unwrap();
    let answers = apply(
        dir.path(),
        &[
            r#"{"create_accounts": [{"id": "1", "ledger": 156, "code": 1, "flags": ["history"], "user_data_128": "500"}, {"id": "2", "ledger": 156, "code": 2, "user_data_128": "500"}, {"id": "3", "ledger": 392, "code": 1}]}"#,
            r#"{"create_transfers": [{"id": "9", "debit_account_id": "2", "credit_account_id": "1", "amount": "12.50", "ledger": 156, "code": 1, "user_data_128": "7001"}, {"id": "10", "debit_account_id": "1", "credit_account_id": "3", "amount": "1", "ledger": 156, "code": 1}, {"id": "11", "debit_account_id": "1", "credit_account_id": "2", "amount": "2.25", "ledger": 156, "code": 4, "flags": ["pending"], "user_data_128": "7002"}], "balances": true}"#,
            r#"{"create_transfers": [{"id": "12", "pending_id": "11", "flags": ["post_pending_transfer"]}], "balances": true}"#,
            r#"{"query_transfers": {"user_data_128": "7002"}}"#,
            r#"{"query_transfers": {"ledger": 156, "code": 1, "flags": ["reversed"]}}"#,
            r#"{"query_accounts": {"user_data_128": "500", "code": 2}}"#,
            r#"{"get_account_balances": {"account_id": "1"}}"#,
            r#"{"get_account_balances": {"account_id": "2"}}"#,
            r#"{"get_account_transfers": {"account_id": "1", "code": 4}}"#,
            r#"{"lookup_accounts": ["1"], "balances": true}"#,
        ],
        false,
    );
    assert_eq!(results(&answers[0]), vec!["ok"; 3]);
    assert_eq!(
        results(&answers[1]),
        vec!["ok", "accounts_must_have_the_same_ledger", "ok"]
    );
    let paid = &answers[1]["results"][0];
    assert_eq!(paid["debit_account"]["debits_posted"], json!("12.50"));
    assert_eq!(paid["credit_account"]["credits_posted"], json!("12.50"));
    assert!(
        answers[1]["results"][1].get("debit_account").is_none(),
        "no balances on a failure"
    );
    let held = &answers[1]["results"][2];
    assert_eq!(held["debit_account"]["debits_pending"], json!("2.25"));
    assert_eq!(held["credit_account"]["credits_posted"], json!("0.00"));
    // A post gives no ledger: its balances are in the pending transfer's scale.
    let posted = &answers[2]["results"][0];
    assert_eq!(posted["debit_account"]["debits_pending"], json!("0.00"));
    assert_eq!(posted["debit_account"]["debits_posted"], json!("2.25"));
    assert_eq!(posted["credit_account"]["credits_posted"], json!("2.25"));
    assert_eq!(posted["credit_account"]["debits_posted"], json!("12.50"));
    // The post took the pending transfer's order id: both are found by it.
    let by_order: Vec<&Value> = answers[3]["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(by_order, vec![&json!("11"), &json!("12")]);
    let code_1: Vec<&Value> = answers[4]["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(code_1, vec![&json!("9")]);
    let accounts = answers[5]["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0]["id"], json!("2"));
    let history = answers[6]["account_balances"].as_array().unwrap();
    assert_eq!(history.len(), 3, "one row per transfer: {history:?}");
    assert_eq!(history[0]["credits_posted"], json!("12.50"));
    assert_eq!(history[1]["debits_pending"], json!("2.25"));
    assert_eq!(history[2]["debits_posted"], json!("2.25"));
    assert_eq!(history[2]["timestamp"], posted["timestamp"]);
    assert_eq!(
        answers[7]["account_balances"],
        json!([]),
        "account 2 keeps no history"
    );
    assert_eq!(answers[8]["transfers"].as_array().unwrap().len(), 2);
    assert!(answers[9]["error"].as_str().unwrap().contains("balances"));
}

#[test]
fn a_ledger_is_migrated_in_with_imported_events_and_keeps_their_times() {
    let dir = tempfile::tempdir().unwrap();
    let answers = apply(
        dir.path(),
        &[
            r#"{"create_accounts": [{"id": "1", "ledger": 840, "code": 1, "flags": ["imported", "history"], "timestamp": "1000"}, {"id": "2", "ledger": 840, "code": 1, "flags": ["imported"], "timestamp": "2000"}]}"#,
            r#"{"create_transfers": [{"id": "9", "debit_account_id": "1", "credit_account_id": "2", "amount": "3.00", "ledger": 840, "code": 1, "flags": ["imported"], "timestamp": "3000"}, {"id": "10", "debit_account_id": "1", "credit_account_id": "2", "amount": "1.00", "ledger": 840, "code": 1, "timestamp": "4000"}, {"id": "11", "debit_account_id": "1", "credit_account_id": "2", "amount": "1.00", "ledger": 840, "code": 1, "flags": ["imported"], "timestamp": "2500"}]}"#,
            r#"{"create_transfers": [{"id": "12", "debit_account_id": "1", "credit_account_id": "2", "amount": "1.00", "ledger": 840, "code": 1, "timestamp": "5000"}]}"#,
            r#"{"lookup_transfers": ["9"]}"#,
        ],
        false,
    );
    assert_eq!(results(&answers[0]), vec!["ok", "ok"]);
    assert_eq!(answers[0]["results"][1]["timestamp"], json!("2000"));
    assert_eq!(
        results(&answers[1]),
        vec![
            "ok",
            "imported_event_expected",
            "imported_event_timestamp_must_not_regress"
        ]
    );
    assert_eq!(answers[1]["results"][0]["timestamp"], json!("3000"));
    assert_eq!(results(&answers[2]), vec!["timestamp_must_be_zero"]);
    assert_eq!(answers[3]["transfers"][0]["timestamp"], json!("3000"));
    // After a restart (replay of the log) the own timestamps and the history stand.
    let answers = apply(
        dir.path(),
        &[
            r#"{"lookup_accounts": ["1", "2"]}"#,
            r#"{"get_account_balances": {"account_id": "1"}}"#,
            r#"{"create_transfers": [{"id": "13", "debit_account_id": "1", "credit_account_id": "2", "amount": "1.00", "ledger": 840, "code": 1}]}"#,
        ],
        false,
    );
    assert_eq!(answers[0]["accounts"][0]["timestamp"], json!("1000"));
    assert_eq!(answers[0]["accounts"][1]["credits_posted"], json!("3.00"));
    let rows = answers[1]["account_balances"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["timestamp"], json!("3000"));
    assert_eq!(results(&answers[2]), vec!["ok"]);
    let verify = tally_on("verify", dir.path());
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // Change events stay in commit order; the records inside keep their own stamps.
    let events = tally()
        .args(["events", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let events: Vec<Value> = String::from_utf8(events.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), 4);
    let stamps: Vec<u64> = events
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    assert_eq!(events[0]["account"]["timestamp"], json!("1000"));
    assert_eq!(events[2]["transfer"]["timestamp"], json!("3000"));
}

#[test]
fn closing_an_account_as_tigerbeetle_documents_it_and_reopening_it() {
    let dir = tempfile::tempdir().unwrap();
    // Sweep account 1 into 2, then close account 1 with a pending transfer of 0.
    let close = r#"{"create_transfers": [{"id": "30", "debit_account_id": "1", "credit_account_id": "2", "amount": "1000000.00", "ledger": 156, "code": 9, "flags": ["linked", "balancing_debit"]}, {"id": "31", "debit_account_id": "1", "credit_account_id": "2", "amount": "0", "ledger": 156, "code": 9, "flags": ["pending", "closing_debit"]}]}"#;
    let answers = apply(
        dir.path(),
        &[
            ACCOUNTS,
            r#"{"create_transfers": [{"id": "9", "debit_account_id": "2", "credit_account_id": "1", "amount": "12.50", "ledger": 156, "code": 1}]}"#,
            close,
            r#"{"lookup_accounts": ["1"]}"#,
            r#"{"create_transfers": [{"id": "32", "debit_account_id": "2", "credit_account_id": "1", "amount": "1.00", "ledger": 156, "code": 1}]}"#,
            r#"{"create_transfers": [{"id": "33", "pending_id": "31", "flags": ["void_pending_transfer"]}]}"#,
            r#"{"create_transfers": [{"id": "34", "debit_account_id": "2", "credit_account_id": "1", "amount": "1.00", "ledger": 156, "code": 1}]}"#,
            r#"{"lookup_accounts": ["1"]}"#,
        ],
        false,
    );
    assert_eq!(results(&answers[2]), vec!["ok", "ok"]);
    let account = &answers[3]["accounts"][0];
    assert_eq!(
        account["flags"],
        json!(["debits_must_not_exceed_credits", "closed"])
    );
    assert_eq!(account["debits_posted"], account["credits_posted"]);
    assert_eq!(results(&answers[4]), vec!["credit_account_already_closed"]);
    assert_eq!(results(&answers[5]), vec!["ok"]);
    assert_eq!(results(&answers[6]), vec!["ok"]);
    assert_eq!(
        answers[7]["accounts"][0]["flags"],
        json!(["debits_must_not_exceed_credits"])
    );
}

#[test]
fn malformed_lines_are_rejected_whole_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        "not json",
        r#"{"create_transfers": [{"id": "20", "debit_account_id": "2", "credit_account_id": "1", "amount": "1.005", "ledger": 156, "code": 1}]}"#,
        r#"{"create_transfers": [{"id": "21", "debit_account_id": "2", "credit_account_id": "1", "amount": "1", "ledger": 156, "code": 1, "colour": "red"}]}"#,
        r#"{"create_transfers": [{"id": "340282366920938463463374607431768211456", "debit_account_id": "2", "credit_account_id": "1", "amount": "1", "ledger": 156, "code": 1}]}"#,
        r#"{"create_transfers": [{"id": "22", "debit_account_id": "2", "credit_account_id": "1", "amount": "1", "ledger": 156, "code": 1, "flags": ["instant"]}]}"#,
        // Half valid: the first event is fine, the second is not; nothing is applied.
        r#"{"create_transfers": [{"id": "23", "debit_account_id": "2", "credit_account_id": "1", "amount": "5", "ledger": 156, "code": 1}, {"id": "24", "debit_account_id": "2", "credit_account_id": "1", "amount": "-5", "ledger": 156, "code": 1}]}"#,
        r#"{"create_transfers": [], "now": "5"}"#,
    ];
    let mut lines = vec![ACCOUNTS];
    lines.extend(bad);
    lines.push(r#"{"lookup_transfers": ["20", "21", "22", "23", "24"]}"#);
    let answers = apply(dir.path(), &lines, false);
    let expected_fields = [
        "malformed JSON",
        "amount",
        "colour",
        "id",
        "flags",
        "amount",
        "now",
    ];
    for (answer, field) in answers[1..=bad.len()].iter().zip(expected_fields) {
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {answer}"));
        assert!(message.contains(field), "{message:?} should name {field}");
    }
    assert_eq!(answers.last().unwrap()["transfers"], json!([]));
    let accounts = apply(dir.path(), &[r#"{"lookup_accounts": ["1", "2"]}"#], false);
    assert_eq!(accounts[0]["accounts"][0]["credits_posted"], json!("0.00"));
}

/// A line that is not UTF-8, and one past the length bound, each get an error answer
/// and change nothing; the lines after them are still read and answered. Blank lines
/// hold no request and get no answer.
#[test]
fn a_line_of_bad_bytes_or_too_long_is_answered_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = Vec::new();
    writeln!(input, "{ACCOUNTS}").unwrap();
    input.extend_from_slice(b"\n  \t\r\n");
    input.extend_from_slice(
        b"{\"create_accounts\": [{\"id\": \"7\", \"ledger\": 1, \"code\": 1, \"x\xff\": 1}]}\n",
    );
    let long = format!(
        r#"{{"create_accounts": [{{"id": "8", "ledger": 1, "code": 1, "user_data_64": "{}"}}]}}"#,
        "1".repeat(17_000_000)
    );
    writeln!(input, "{long}").unwrap();
    input.extend_from_slice(b"{\"lookup_accounts\": [\"1\", \"7\", \"8\"]}\r\n\n");
    let mut child = tally()
        .args(["apply", "--data"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success());
    let answers: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(answers.len(), 4, "{answers:?}");
    let error = |answer: &Value| answer["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error(&answers[1]).contains("not valid UTF-8"),
        "{}",
        answers[1]
    );
    assert!(
        error(&answers[2]).contains("longer than the maximum"),
        "{}",
        answers[2]
    );
    let found: Vec<&str> = answers[3]["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["1"], "only account 1 exists");
}

#[test]
fn the_manual_clock_stamps_batches_and_drives_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let answers = apply(
        dir.path(),
        &[
            r#"{"create_accounts": [{"id": "1", "ledger": 156, "code": 1}, {"id": "2", "ledger": 156, "code": 1}], "now": "1000000000000"}"#,
            r#"{"create_transfers": [{"id": "5", "debit_account_id": "1", "credit_account_id": "2", "amount": "3.00", "ledger": 156, "code": 1, "flags": ["pending"], "timeout": 2}], "now": "2000000000000"}"#,
            r#"{"create_transfers": [{"id": "6", "pending_id": "5", "flags": ["post_pending_transfer"]}], "now": "2002000000000"}"#,
            r#"{"lookup_accounts": ["2"]}"#,
            r#"{"create_accounts": [], "now": "5"}"#,
        ],
        true,
    );
    assert_eq!(
        answers[0]["results"][0]["timestamp"],
        json!("1000000000000")
    );
    assert_eq!(
        answers[0]["results"][1]["timestamp"],
        json!("1000000000001")
    );
    assert_eq!(
        answers[1]["results"][0]["timestamp"],
        json!("2000000000000")
    );
    assert_eq!(results(&answers[2]), vec!["pending_transfer_expired"]);
    assert_eq!(answers[3]["accounts"][0]["credits_pending"], json!("0.00"));
    // Time never goes backwards: a "now" in the past stamps just after the last event.
    assert_eq!(answers[4]["results"], json!([]));
}

/// A `now` past the latest accepted time is refused, naming the field, and cannot
/// leave the ledger without time for later batches; the latest accepted time still
/// leaves room for more.
#[test]
fn a_now_near_the_end_of_u64_is_refused_and_the_ledger_keeps_stamping() {
    let dir = tempfile::tempdir().unwrap();
    let answers = apply(
        dir.path(),
        &[
            r#"{"create_accounts": [], "now": "18446744073709551615"}"#,
            r#"{"create_accounts": [{"id": "1", "ledger": 1, "code": 1}], "now": "9223372036854775808"}"#,
            r#"{"create_accounts": [{"id": "2", "ledger": 1, "code": 1}], "now": "9223372036854775807"}"#,
            r#"{"create_accounts": [{"id": "3", "ledger": 1, "code": 1}], "now": "9223372036854775807"}"#,
            r#"{"create_accounts": [{"id": "4", "ledger": 1, "code": 1}]}"#,
        ],
        true,
    );
    for refused in &answers[..2] {
        let message = refused["error"].as_str().unwrap_or_default();
        assert!(message.starts_with("now: "), "{refused}");
    }
    let stamps: Vec<&Value> = answers[2..]
        .iter()
        .map(|answer| &answer["results"][0]["timestamp"])
        .collect();
    assert_eq!(
        stamps,
        [
            &json!("9223372036854775807"),
            &json!("9223372036854775808"),
            &json!("9223372036854775809")
        ]
    );
}

#[test]
fn state_survives_a_restart_and_resubmission_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let pay = r#"{"create_transfers": [{"id": "7", "debit_account_id": "3", "credit_account_id": "4", "amount": "500", "ledger": 392, "code": 1}]}"#;
    let first = apply(dir.path(), &[ACCOUNTS, pay], false);
    assert_eq!(results(&first[1]), vec!["ok"]);
    let second = apply(dir.path(), &[pay, r#"{"lookup_accounts": ["4"]}"#], false);
    assert_eq!(results(&second[0]), vec!["exists"]);
    assert_eq!(second[1]["accounts"][0]["credits_posted"], json!("500"));
    let dump = tally()
        .args(["transfers", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let lines: Vec<Value> = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["id"], json!("7"));
    let verify = tally_on("verify", dir.path());
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn a_second_process_on_the_same_directory_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = tally()
        .args(["apply", "--data"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first process answers, so it surely holds the lock.
    let mut stdin = first.stdin.take().unwrap();
    writeln!(stdin, r#"{{"lookup_accounts": []}}"#).unwrap();
    let mut stdout = std::io::BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let second = tally()
        .args(["apply", "--data"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(
        message.contains("lock") || message.contains("in use"),
        "{message}"
    );
    drop(stdin);
    assert!(first.wait().unwrap().success());
}

#[test]
fn verify_fails_on_a_flipped_bit_inside_the_committed_log() {
    let dir = tempfile::tempdir().unwrap();
    let pay = |id: u32| {
        format!(
            r#"{{"create_transfers": [{{"id": "{id}", "debit_account_id": "3", "credit_account_id": "4", "amount": "5", "ledger": 392, "code": 1}}]}}"#
        )
    };
    let lines: Vec<String> = std::iter::once(ACCOUNTS.to_string())
        .chain((100..110).map(pay))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    apply(dir.path(), &refs, false);
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&segment, bytes).unwrap();
    let verify = tally_on("verify", dir.path());
    assert!(!verify.status.success());
    let message = String::from_utf8_lossy(&verify.stderr);
    assert!(
        message.contains(".log") && message.contains("offset"),
        "{message}"
    );
}

/// Every file of `dir`, by name, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                // The event journal: its files, named under it.
                files(&path)
                    .into_iter()
                    .map(|(inner, bytes)| (format!("{name}/{inner}"), bytes))
                    .collect()
            } else {
                vec![(name, std::fs::read(&path).unwrap())]
            }
        })
        .collect();
    files.sort();
    files
}

/// `verify`, `accounts` and `transfers` only read: after a crash left a torn tail they
/// report it (verify warns and still passes, the dumps leave it out) and change no byte
/// of the directory; on an empty directory they make no log. `tally apply` then cuts
/// the tail and goes on.
#[test]
fn reading_commands_change_nothing_and_verify_reports_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    apply(dir.path(), &[ACCOUNTS], false);
    let segment = files(dir.path())
        .into_iter()
        .find(|(name, _)| name.starts_with("wal-0"))
        .unwrap()
        .0;
    // A crash in the middle of writing a frame: half a frame header of garbage.
    let path = dir.path().join(&segment);
    let mut bytes = std::fs::read(&path).unwrap();
    // (A log this small is not preallocated: the file ends with its last frame.)
    bytes.extend_from_slice(b"TLFRtorn");
    std::fs::write(&path, &bytes).unwrap();
    let before = files(dir.path());
    let run = |command: &str| tally_on(command, dir.path());
    let verify = run("verify");
    assert!(verify.status.success());
    let summary = String::from_utf8_lossy(&verify.stdout);
    assert!(
        summary.contains("ends in 8 byte(s) of a frame that does not check"),
        "{summary}"
    );
    assert!(summary.contains("state: 4 account(s)"), "{summary}");
    let accounts = run("accounts");
    assert!(accounts.status.success());
    assert_eq!(String::from_utf8_lossy(&accounts.stdout).lines().count(), 4);
    assert!(run("transfers").status.success());
    assert_eq!(files(dir.path()), before, "reading changed the directory");
    // Writing cuts the tail, and the summary is clean again.
    apply(dir.path(), &[r#"{"lookup_accounts": ["1"]}"#], false);
    let summary = String::from_utf8_lossy(&run("verify").stdout).to_string();
    assert!(!summary.contains("warning"), "{summary}");

    let empty = tempfile::tempdir().unwrap();
    let verify = tally_on("verify", empty.path());
    assert!(verify.status.success());
    assert!(
        files(empty.path())
            .iter()
            .all(|(name, _)| name == tally_log::LOCK_FILE_NAME),
        "verify of an empty directory made a log"
    );
}

/// Flips one bit in the body of the last frame of `segment` (a log of whole frames),
/// on disk; returns where that frame starts and the segment's bytes as now written.
fn flip_a_bit_in_the_newest_frame(segment: &Path) -> (usize, Vec<u8>) {
    let mut bytes = std::fs::read(segment).unwrap();
    let mut offset = tally_log::layout::SEGMENT_HEADER_SIZE;
    let mut last = offset;
    while let Ok(header) = tally_log::layout::decode_frame_header(&bytes[offset..]) {
        last = offset;
        offset += header.frame_bytes as usize;
    }
    bytes[last + 60] ^= 0x04;
    std::fs::write(segment, &bytes).unwrap();
    (last, bytes)
}

/// `tally apply` closes the log cleanly when its input ends: a bit flipped afterwards in
/// the newest batch's frame is then damage (verify fails, naming the file and offset),
/// never a torn tail to cut silently.
#[test]
fn after_a_clean_exit_a_flipped_bit_in_the_newest_batch_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pay = r#"{"create_transfers": [{"id": "100", "debit_account_id": "3", "credit_account_id": "4", "amount": "5", "ledger": 392, "code": 1}]}"#;
    apply(dir.path(), &[ACCOUNTS, pay], false);
    let segment = dir.path().join(tally_log::layout::segment_name(1));
    let (last, _) = flip_a_bit_in_the_newest_frame(&segment);
    let verify = tally_on("verify", dir.path());
    assert!(!verify.status.success());
    let message = String::from_utf8_lossy(&verify.stderr);
    assert!(
        message.contains("wal-00000000000000000001.log")
            && message.contains(&format!("offset {last}"))
            && message.contains("closed cleanly"),
        "{message}"
    );
}

/// After a crash (no close marker) a flipped bit in the newest batch's frame cannot be
/// told from a write cut short, so `tally apply` cuts the frame, but never in silence:
/// it says so on stderr, naming where it kept the frame's bytes.
#[test]
fn after_a_crash_a_damaged_newest_frame_is_cut_with_a_warning_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let pay = r#"{"create_transfers": [{"id": "100", "debit_account_id": "3", "credit_account_id": "4", "amount": "5", "ledger": 392, "code": 1}]}"#;
    apply(dir.path(), &[ACCOUNTS, pay], false);
    std::fs::remove_file(dir.path().join(tally_log::layout::CLOSE_MARKER_NAME)).unwrap();
    let name = tally_log::layout::segment_name(1);
    let segment = dir.path().join(&name);
    let (last, bytes) = flip_a_bit_in_the_newest_frame(&segment);

    let mut child = tally()
        .args(["apply", "--data"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        child.stdin.take().unwrap(),
        r#"{{"lookup_transfers": ["100"]}}"#
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        r#"{"transfers":[]}"#
    );
    let kept = dir
        .path()
        .join(tally_log::torn_tail_name(&name, last as u64));
    let warning = String::from_utf8_lossy(&output.stderr);
    assert!(
        warning.contains("warning: the log ended in")
            && warning.contains(&kept.display().to_string()),
        "{warning}"
    );
    let copy = std::fs::read(&kept).unwrap();
    assert!(
        !copy.is_empty() && bytes[last..].starts_with(&copy),
        "the frame's bytes"
    );
}

/// `tally apply` refuses a cluster replica's directory by name instead of starting a
/// single-node ledger in it; the reading commands read a replica's directory as its
/// own (an empty log here: no state), and `tally events` its journal.
#[test]
fn a_replica_directory_is_read_but_never_applied_to() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("replica.log"), b"").unwrap();
    let applied = tally_on("apply", dir.path());
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(
        !applied.status.success(),
        "apply wrote to a replica's directory"
    );
    assert!(
        stderr.contains("holds a cluster replica"),
        "apply: {stderr}"
    );
    for command in ["events", "accounts", "transfers"] {
        let output = tally_on(command, dir.path());
        assert!(output.status.success(), "{command}: {output:?}");
        assert!(output.stdout.is_empty(), "{command}: {output:?}");
    }
    let verified = tally_on("verify", dir.path());
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{verified:?}");
    assert!(stdout.contains("replica log: entries none"), "{stdout}");
    assert!(stdout.contains("verify: ok"), "{stdout}");
    assert_eq!(std::fs::read(dir.path().join("replica.log")).unwrap(), b"");
}
