//! `tally events` on a journal written directly: the lines, `--after`, `--limit`,
//! `--follow` next to a writer, a closed stdout, and no lock taken.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_log::DirLock;
use tally_log::events::{EventJournal, JournalOptions};
use tally_types::currency::CurrencyTable;
use tally_types::{Account, ChangeEvent, ChangeKind, Transfer};

fn tally() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally"))
}

/// A transfer event at `timestamp`, or an account creation when `timestamp` is odd.
fn event(timestamp: u64) -> ChangeEvent {
    let account = |id: u128| Account {
        id,
        ledger: 840,
        code: 1,
        debits_posted: u128::from(timestamp),
        timestamp: 1,
        ..Account::default()
    };
    if timestamp % 2 == 1 {
        // A created account has no balances yet.
        return ChangeEvent::account_created(Account {
            timestamp,
            debits_posted: 0,
            ..account(u128::from(timestamp))
        });
    }
    ChangeEvent {
        timestamp,
        kind: ChangeKind::SinglePhase,
        transfer: Transfer {
            id: u128::from(timestamp),
            debit_account_id: 1,
            credit_account_id: 2,
            amount: 5,
            ledger: 840,
            code: 1,
            timestamp,
            ..Transfer::default()
        },
        debit_account: account(1),
        credit_account: account(2),
    }
}

fn lines(timestamps: impl IntoIterator<Item = u64>) -> Vec<String> {
    let currencies = CurrencyTable::default();
    timestamps
        .into_iter()
        .map(|timestamp| tally_json::change_event_line(&event(timestamp), &currencies))
        .collect()
}

fn journal(data: &Path) -> EventJournal {
    EventJournal::open(&data.join("events"), JournalOptions::default()).unwrap()
}

fn append(journal: &mut EventJournal, timestamps: impl IntoIterator<Item = u64>) {
    let events: Vec<ChangeEvent> = timestamps.into_iter().map(event).collect();
    journal.append(&events).unwrap();
}

/// Runs `tally events --data DIR ARGS` to completion; returns its stdout lines.
fn events(data: &Path, args: &[&str]) -> Vec<String> {
    let output = tally()
        .args(["events", "--data"])
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A `tally events --follow` process, killed when dropped: a failing test must not
/// leave it following (it holds the test run's stderr open).
struct Follower(Child);

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Follower {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Follower {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn follow(data: &Path, args: &[&str]) -> Follower {
    Follower(
        tally()
            .args(["events", "--follow", "--data"])
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn wait_for_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "tally events did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn events_print_as_json_lines_after_a_timestamp_and_up_to_a_limit() {
    let data = tempfile::tempdir().unwrap();
    assert_eq!(
        events(data.path(), &[]),
        Vec::<String>::new(),
        "no journal yet"
    );
    let mut journal = journal(data.path());
    append(&mut journal, 10..15);
    append(&mut journal, [20]);
    assert_eq!(events(data.path(), &[]), lines([10, 11, 12, 13, 14, 20]));
    assert_eq!(events(data.path(), &["--after", "12"]), lines([13, 14, 20]));
    assert_eq!(
        events(data.path(), &["--after", "20"]),
        Vec::<String>::new()
    );
    assert_eq!(
        events(data.path(), &["--after", &u64::MAX.to_string()]),
        Vec::<String>::new()
    );
    assert_eq!(events(data.path(), &["--limit", "2"]), lines([10, 11]));
    let first: serde_json::Value = serde_json::from_str(&events(data.path(), &[])[0]).unwrap();
    assert_eq!(first["timestamp"], "10");
    assert_eq!(first["type"], "single_phase");
}

#[test]
fn a_bad_timestamp_is_a_usage_error_and_a_missing_directory_an_error() {
    let data = tempfile::tempdir().unwrap();
    let output = tally()
        .args(["events", "--after", "soon", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--after"));
    let output = tally()
        .args(["events", "--data"])
        .arg(data.path().join("missing"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("tally: "));
}

#[test]
fn events_read_while_another_holder_has_the_directory_locked() {
    let data = tempfile::tempdir().unwrap();
    let _lock = DirLock::acquire(data.path()).unwrap();
    let mut journal = journal(data.path());
    append(&mut journal, [5, 6]);
    assert_eq!(events(data.path(), &[]), lines([5, 6]));
}

#[test]
fn follow_prints_new_events_as_the_writer_appends_them() {
    let data = tempfile::tempdir().unwrap();
    let mut journal = journal(data.path());
    append(&mut journal, [1, 2]);
    let mut child = follow(data.path(), &["--after", "1"]);
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = vec![out.next().unwrap().unwrap()];
    for group in 1..20u64 {
        append(&mut journal, (0..group).map(|i| 100 * group + i));
        for _ in 0..group {
            seen.push(out.next().unwrap().unwrap());
        }
    }
    let expected =
        lines(std::iter::once(2).chain((1..20).flat_map(|g| (0..g).map(move |i| 100 * g + i))));
    assert_eq!(seen, expected);
}

#[test]
fn follow_ends_quietly_when_stdout_is_closed() {
    let data = tempfile::tempdir().unwrap();
    let mut journal = journal(data.path());
    append(&mut journal, [1]);
    let mut child = follow(data.path(), &[]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), lines([1])[0]);
    drop(out);
    append(&mut journal, [2]);
    append(&mut journal, [3]);
    let status = wait_for_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn follow_stops_after_the_limit() {
    let data = tempfile::tempdir().unwrap();
    let mut journal = journal(data.path());
    append(&mut journal, [1]);
    let mut child = follow(data.path(), &["--limit", "3"]);
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), lines([1])[0]);
    append(&mut journal, [2, 3, 4]);
    let rest: Vec<String> = out.map(Result::unwrap).collect();
    assert_eq!(rest, lines([2, 3]));
    assert!(wait_for_exit(&mut child, Duration::from_secs(20)).success());
}

/// Three frames of one event each, written and closed; the journal's one segment.
fn three_frames(data: &Path) -> std::path::PathBuf {
    let mut writer = journal(data);
    for timestamp in [10, 12, 14] {
        append(&mut writer, [timestamp]);
    }
    writer.sync().unwrap();
    drop(writer);
    only_segment(data)
}

/// The journal's one segment.
fn only_segment(data: &Path) -> std::path::PathBuf {
    let segments: Vec<_> = std::fs::read_dir(data.join("events"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments[0].clone()
}

/// Where the `nth` frame (from 0) of a segment starts, by its magic.
fn frame_offset(segment: &Path, nth: usize) -> usize {
    let bytes = std::fs::read(segment).unwrap();
    let starts: Vec<usize> = (0..bytes.len() - 3)
        .filter(|&at| &bytes[at..at + 4] == b"TEVF")
        .collect();
    starts[nth]
}

fn run(args: &[&str], data: &Path) -> std::process::Output {
    tally().args(args).arg("--data").arg(data).output().unwrap()
}

#[test]
fn damage_inside_the_journal_is_reported_by_events_and_verify() {
    let data = tempfile::tempdir().unwrap();
    let segment = three_frames(data.path());
    let second = frame_offset(&segment, 1);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[second + 60] ^= 0xff; // inside the second frame's body
    std::fs::write(&segment, &bytes).unwrap();

    let output = run(&["events"], data.path());
    assert!(!output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        lines([10]),
        "the events before it"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(stderr.contains(&format!("offset {second}")), "{stderr}");

    let output = run(&["verify"], data.path());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("change-event journal damaged"), "{stdout}");
    assert!(stdout.contains(&segment.display().to_string()), "{stdout}");
}

/// Three batches of one account each through `tally apply`: a log, and a journal of
/// its three events in one segment, which it returns.
fn three_applied(data: &Path) -> std::path::PathBuf {
    let mut child = tally()
        .args(["apply", "--data"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for id in 1..=3 {
        let line =
            format!(r#"{{"create_accounts": [{{"id": "{id}", "ledger": 840, "code": 1}}]}}"#);
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    only_segment(data)
}

#[test]
fn a_journal_cut_short_is_a_warning_for_verify_and_an_error_for_events() {
    let data = tempfile::tempdir().unwrap();
    let segment = three_applied(data.path());
    let third = frame_offset(&segment, 2);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(third as u64 + 20).unwrap();
    drop(file);

    let output = run(&["events"], data.path());
    assert!(!output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("does not check"), "{stderr}");

    let output = run(&["verify"], data.path());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("events: 2 event(s)"), "{stdout}");
    assert!(
        stdout.contains("warning: the change-event journal ends"),
        "{stdout}"
    );
}

/// Events the log does not make fail `verify`: here the log is gone and the journal
/// stays (nothing else says the directory ever held more). The next open cuts them.
#[test]
fn journal_events_without_the_log_fail_verify() {
    let data = tempfile::tempdir().unwrap();
    three_applied(data.path());
    for entry in std::fs::read_dir(data.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("wal-") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let output = run(&["verify"], data.path());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("0 differing, 3 past the log's end"),
        "{stdout}"
    );
    assert!(
        stdout.contains("violation: change-event journal: the journal holds 3 event(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("log frames that were synced are missing"),
        "{stdout}"
    );
    // The next open cuts the journal back to the (empty) log, and says so.
    let applied = tally()
        .args(["apply", "--data"])
        .arg(data.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8(applied.stderr).unwrap();
    assert!(applied.status.success(), "{stderr}");
    assert!(
        stderr.contains("the change-event journal held 3 event(s) past the log's end"),
        "{stderr}"
    );
    let output = run(&["verify"], data.path());
    assert!(output.status.success(), "{output:?}");
}

/// A torn log tail whose events the journal already holds (the log lost a synced
/// frame: a test or a failing disk): `verify` warns, as it does of the tail; the next
/// `tally apply` cuts both, says so, and the ledger verifies clean after it.
#[test]
fn journal_events_of_a_torn_log_tail_are_a_warning_then_cut_by_the_next_apply() {
    let data = tempfile::tempdir().unwrap();
    three_applied(data.path());
    // A crash: no close marker; then the last log frame torn.
    std::fs::remove_file(data.path().join("wal-closed")).unwrap();
    let log = data.path().join("wal-00000000000000000001.log");
    let length = std::fs::metadata(&log).unwrap().len();
    let handle = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    handle.set_len(length - 5).unwrap();
    drop(handle);

    let output = run(&["verify"], data.path());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("1 past the log's end"), "{stdout}");
    assert!(
        stdout
            .contains("warning: the journal holds 1 event(s) past the log's end, the torn tail's"),
        "{stdout}"
    );

    let mut child = tally()
        .args(["apply", "--data"])
        .arg(data.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = r#"{"create_accounts": [{"id": "4", "ledger": 840, "code": 1}]}"#;
    writeln!(child.stdin.take().unwrap(), "{line}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("the change-event journal held 1 event(s) past the log's end"),
        "{stderr}"
    );
    assert!(std::fs::read_dir(data.path()).unwrap().any(|entry| {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        name.starts_with("torn-events-after-")
    }));

    let output = run(&["verify"], data.path());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("3 equal"), "{stdout}");
    let output = run(&["events"], data.path());
    let ids: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            line.split(r#""id":""#)
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["1", "2", "4"]);
}
