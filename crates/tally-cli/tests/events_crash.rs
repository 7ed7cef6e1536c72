//! Change events across crashes (docs/spec.md §2, "Change events"): a `tally apply`
//! child commits payments and pending transfers and is SIGKILLed at random moments;
//! between crashes a consumer (`tally events --after TS`, a separate process that takes
//! no lock) resumes from the last timestamp it handled. In the end the consumer has
//! every event exactly once, in order, equal to a full read, and every acknowledged
//! transfer has its event.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tally_testkit::SeededRng as Rng;

const KILLS: u64 = 12;
const ACCOUNTS: u64 = 6;

/// Every event `tally events --data DIR --after AFTER` prints now, as (timestamp, line).
fn events_after(dir: &Path, after: u64) -> Vec<(u64, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["events", "--after", &after.to_string(), "--data"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            let timestamp = value["timestamp"].as_str().unwrap().parse().unwrap();
            (timestamp, line.to_string())
        })
        .collect()
}

/// The line that creates accounts 1 to `ACCOUNTS` of ledger 7.
fn accounts_line() -> String {
    let accounts: Vec<String> = (1..=ACCOUNTS)
        .map(|id| format!(r#"{{"id": "{id}", "ledger": 7, "code": 1}}"#))
        .collect();
    format!(r#"{{"create_accounts": [{}]}}"#, accounts.join(", "))
}

/// Runs `tally apply --data DIR` over `lines` to a clean exit.
fn apply_all(dir: &Path, lines: &[String]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["apply", "--data"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", lines.join("\n")).unwrap();
    assert!(child.wait().unwrap().success());
}

fn batch_line(first_id: u64, size: u64, rng: &mut Rng) -> String {
    let events: Vec<String> = (0..size)
        .map(|offset| {
            let debit = 1 + rng.below(ACCOUNTS);
            let credit = 1 + (debit + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
            let pending = if rng.chance(4) {
                r#", "flags": ["pending"], "timeout": 1"#
            } else {
                ""
            };
            format!(
                r#"{{"id": "{}", "debit_account_id": "{debit}", "credit_account_id": "{credit}", "amount": "{}", "ledger": 7, "code": 1{pending}}}"#,
                first_id + offset,
                1 + rng.below(100)
            )
        })
        .collect();
    format!(r#"{{"create_transfers": [{}]}}"#, events.join(", "))
}

#[test]
fn a_consumer_resuming_across_sigkills_gets_every_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0xe7e7_0001);
    let setup = accounts_line();
    let mut consumed: Vec<(u64, String)> = Vec::new();
    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut next_id = 1_000u64;
    // Kills that landed while the child worked: after its first answer, before its last.
    let mut cut_short = 0;
    for kill in 0..=KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["apply", "--data"])
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = vec![setup.clone()];
        for _ in 0..(5 + rng.below(30)) {
            let size = 1 + rng.below(20);
            lines.push(batch_line(next_id, size, &mut rng));
            next_id += size;
        }
        let sent = lines.clone();
        let writer = std::thread::spawn(move || {
            for line in sent {
                if writeln!(stdin, "{line}").is_err() {
                    break;
                }
            }
        });
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // The kill comes a random while after a random answer in the first half, while
        // the batches are being answered: not before any work, nor after a clean exit
        // (a delay from the first answer let a fast disk finish most rounds first).
        let kill_after = 1 + rng.below(lines.len() as u64 / 2) as usize;
        let wait_us = rng.below(2_000);
        let (reached, answers_reached) = std::sync::mpsc::channel();
        let killer = std::thread::spawn(move || {
            let _ = answers_reached.recv_timeout(Duration::from_secs(30));
            std::thread::sleep(Duration::from_micros(wait_us));
            if kill < KILLS {
                let _ = child.kill();
            }
            child
        });
        // Every acknowledged ok transfer, by its timestamp.
        let mut answered = 0;
        for (line, request) in stdout.lines().map_while(Result::ok).zip(&lines) {
            answered += 1;
            if answered == kill_after {
                let _ = reached.send(());
            }
            let answer: Value = serde_json::from_str(&line).unwrap();
            if request.contains("create_transfers") {
                for result in answer["results"].as_array().unwrap() {
                    if result["result"] == "ok" {
                        acknowledged.insert(result["timestamp"].as_str().unwrap().to_string());
                    }
                }
            }
        }
        let _ = writer.join();
        let mut child = killer.join().unwrap();
        let status = child.wait().unwrap();
        if status.signal() == Some(9) && 0 < answered && answered < lines.len() {
            cut_short += 1;
        }
        // The consumer resumes after the last event it handled.
        let after = consumed.last().map_or(0, |(timestamp, _)| *timestamp);
        consumed.extend(events_after(dir.path(), after));
    }
    eprintln!("{cut_short} of {KILLS} kills landed while the child worked");
    assert!(
        cut_short >= KILLS / 2,
        "only {cut_short} of {KILLS} kills landed while the child worked"
    );
    // A last clean start derives whatever the last crash left out, then a last read.
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["apply", "--data"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success());
    let after = consumed.last().map_or(0, |(timestamp, _)| *timestamp);
    consumed.extend(events_after(dir.path(), after));
    assert!(
        consumed.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "in order, no duplicate"
    );
    assert_eq!(consumed, events_after(dir.path(), 0), "no gap");
    let timestamps: HashSet<String> = consumed.iter().map(|(t, _)| t.to_string()).collect();
    let missing = acknowledged.difference(&timestamps).count();
    assert_eq!(missing, 0, "every acknowledged transfer has its event");
    assert!(
        acknowledged.len() > 100,
        "enough traffic: {}",
        acknowledged.len()
    );
    // The journal the crashes left is, event for event, what the log makes.
    let (passed, summary) = verify(dir.path());
    assert!(passed, "{summary}");
    let compared = format!(
        "events compared with the log's: {} equal, 0 past the journal's end",
        consumed.len()
    );
    assert!(summary.contains(&compared), "{summary}");
}

/// `tally verify --data DIR`: whether it passed, and what it printed.
fn verify(dir: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["verify", "--data"])
        .arg(dir)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    (output.status.success(), printed)
}

/// Writes `events` as the whole journal of the ledger in `dir`, in place of its own.
fn rewrite_journal(dir: &Path, events: &[tally_types::ChangeEvent]) {
    use tally_log::events::{EventJournal, JournalOptions};
    let journal_dir = dir.join("events");
    std::fs::remove_dir_all(&journal_dir).unwrap();
    let mut journal = EventJournal::open(&journal_dir, JournalOptions::default()).unwrap();
    journal.append(events).unwrap();
    journal.sync().unwrap();
}

/// `tally verify` compares the journal with the events the log makes: an event
/// altered, one missing, or one the log never made, is a violation; a journal that
/// lost its tail (as a crash leaves it) is not.
#[test]
fn verify_finds_a_journal_that_departs_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0xe7e7_0002);
    apply_all(
        dir.path(),
        &[accounts_line(), batch_line(1_000, 20, &mut rng)],
    );
    let mut reader = tally_log::events::EventReader::open(&dir.path().join("events")).unwrap();
    let events = reader.read(0, 8_190).unwrap();
    assert_eq!(events.len(), 26);
    let (passed, summary) = verify(dir.path());
    assert!(passed, "{summary}");
    assert!(summary.contains("26 equal, 0 past"), "{summary}");

    let mut altered = events.clone();
    altered[10].transfer.amount += 1;
    rewrite_journal(dir.path(), &altered);
    let (passed, summary) = verify(dir.path());
    assert!(!passed, "{summary}");
    let at = altered[10].timestamp;
    assert!(
        summary.contains(&format!("event at {at} differs")),
        "{summary}"
    );

    let mut extra = events.clone();
    let mut invented = *extra.last().unwrap();
    invented.timestamp += 1_000;
    extra.push(invented);
    rewrite_journal(dir.path(), &extra);
    let (passed, summary) = verify(dir.path());
    assert!(!passed, "{summary}");
    assert!(summary.contains("past the log's end"), "{summary}");

    let mut gap = events.clone();
    let lacked = gap.remove(12).timestamp;
    rewrite_journal(dir.path(), &gap);
    let (passed, summary) = verify(dir.path());
    assert!(!passed, "{summary}");
    assert!(
        summary.contains(&format!("lacks the log's event at {lacked}")),
        "{summary}"
    );

    rewrite_journal(dir.path(), &events[..20]);
    let (passed, summary) = verify(dir.path());
    assert!(passed, "{summary}");
    assert!(summary.contains("20 equal, 6 past"), "{summary}");
}

#[test]
fn get_change_events_answers_through_tally_apply() {
    let dir = tempfile::tempdir().unwrap();
    let input = [
        r#"{"create_accounts": [{"id": "1", "ledger": 7, "code": 1}, {"id": "2", "ledger": 7, "code": 1}]}"#,
        r#"{"create_transfers": [{"id": "9", "debit_account_id": "1", "credit_account_id": "2", "amount": "5", "ledger": 7, "code": 1}]}"#,
        r#"{"get_change_events": {"timestamp_min": "0", "limit": 2}}"#,
        r#"{"get_change_events": {}}"#,
        r#"{"get_change_events": {"limit": 0}}"#,
        r#"{"get_change_events": {"limit": 8191}}"#,
    ]
    .join("\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["apply", "--data"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{input}").unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let answers: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // Each event in the form `tally events` prints it, field order included.
    let printed = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["events", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let printed: Vec<&str> = std::str::from_utf8(&printed.stdout)
        .unwrap()
        .lines()
        .collect();
    assert_eq!(
        stdout.lines().nth(3).unwrap(),
        format!(r#"{{"change_events":[{}]}}"#, printed.join(","))
    );
    let first_two = answers[2]["change_events"].as_array().unwrap();
    assert_eq!(first_two.len(), 2);
    assert_eq!(first_two[0]["type"], "account_created");
    let all = answers[3]["change_events"].as_array().unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2]["type"], "single_phase");
    assert_eq!(all[2]["debit_account"]["debits_posted"], "5");
    assert_eq!(all[2]["credit_account"]["credits_posted"], "5");
    // A limit of 0 asks for the most, as a filter's does; above the most is refused.
    assert_eq!(answers[4], answers[3]);
    assert!(answers[5]["error"].as_str().unwrap().contains("limit"));
}

#[test]
fn tally_profile_prints_the_parallelism_of_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    let mut input = vec![accounts_line()];
    for n in 0..20 {
        input.push(batch_line(1_000 + n * 50, 40, &mut rng));
    }
    apply_all(dir.path(), &input);
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "profile",
            "--shards",
            "1,4",
            "--group-events",
            "100",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(2)
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(rows[0][0], "1");
    assert_eq!(
        rows[0][2], rows[0][3],
        "one shard: work is the critical path\n{text}"
    );
    let parallelism: f64 = rows[1][4].parse().unwrap();
    assert!(parallelism > 1.0 && parallelism <= 4.0, "{text}");
    // Accounts without limits: with escrow most units need only their own id's part.
    let with_escrow: f64 = rows[1][5].parse().unwrap();
    assert!(with_escrow > parallelism && with_escrow <= 4.0, "{text}");
    assert_eq!(rows[0][6], "1.00", "one shard is all the load\n{text}");
    let busiest: f64 = rows[1][6].parse().unwrap();
    assert!((1.0..2.0).contains(&busiest), "{text}");
    // Placed by their lowest bit, ids land on two of the four shards only.
    let profile = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["profile", "--shards", "4", "--group-events", "100"])
            .args(extra)
            .arg("--data")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        let row: Vec<String> = text
            .lines()
            .nth(2)
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect();
        (text, row)
    };
    let (text, row) = profile(&["--placement-bits", "1"]);
    assert!(text.contains("low 1 bits"), "{text}");
    let with_escrow: f64 = row[5].parse().unwrap();
    let busiest: f64 = row[6].parse().unwrap();
    assert!(with_escrow <= 2.0 && busiest >= 2.0, "{text}");
    // The set-up and the first batches replayed, not profiled.
    let (text, row) = profile(&["--skip-events", "500"]);
    let work: u64 = row[2].parse().unwrap();
    // All but the skipped groups (each of at least 100 events, ending past the 500th).
    let total = 20 * 40 + ACCOUNTS;
    assert!(work > 0 && work <= total - 500 + 100, "{text}");
    for bad in [
        &["--shards", "65"][..],
        &["--placement-bits", "0"],
        &["--placement-bits", "129"],
    ] {
        let bad = Command::new(env!("CARGO_BIN_EXE_tally"))
            .arg("profile")
            .args(bad)
            .arg("--data")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!bad.status.success());
    }
}
