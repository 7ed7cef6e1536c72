//! Crash tests with real processes (docs/spec.md §3.3): a `tally apply` child applies
//! batches and acknowledges each one on its stdout; the parent SIGKILLs it at random
//! moments, restarts it, and checks that every acknowledged result is there, exactly,
//! and that no unacknowledged batch is half-applied. Each restart runs on 1 to 4 shards,
//! with ids placed by the whole id or by their lowest bits.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tally_testkit::SeededRng as Rng;

const KILLS: u64 = 60;

/// Every batch sent, by its first id: (size, acknowledged (result, timestamp) per event).
type Sent = BTreeMap<u64, (u64, Option<Vec<(String, Option<String>)>>)>;
const ACCOUNTS: u64 = 8;

/// A `tally apply` child on `shards` shards, ids placed by their lowest `placement_bits`,
/// every group by plan on the shard threads when `by_plan` (else where that pays). All
/// change from one restart to the next: recovery and results must not depend on them.
fn apply_child(dir: &Path, shards: u64, placement_bits: u32, by_plan: bool) -> std::process::Child {
    let always = by_plan.then_some("--shards-always-by-plan");
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["apply", "--shards", &shards.to_string()])
        .args(always)
        .args(["--placement-bits", &placement_bits.to_string(), "--data"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// One batch: `size` transfers between the (unlimited) accounts, all of which succeed,
/// plus one zero-amount event that must fail with `amount_must_not_be_zero`.
fn batch_line(first_id: u64, size: u64, rng: &mut Rng) -> String {
    let mut events = Vec::new();
    for offset in 0..size {
        let debit = 1 + rng.below(ACCOUNTS);
        let credit = 1 + (debit + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
        let amount = if offset == size - 1 {
            0
        } else {
            1 + rng.below(1_000)
        };
        events.push(format!(
            r#"{{"id": "{}", "debit_account_id": "{debit}", "credit_account_id": "{credit}", "amount": "{amount}", "ledger": 7, "code": 1}}"#,
            first_id + offset
        ));
    }
    format!(r#"{{"create_transfers": [{}]}}"#, events.join(", "))
}

#[test]
fn sigkill_at_random_moments_never_loses_an_acknowledged_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0x7a11_7a11_7a11_7a11);
    let accounts: Vec<String> = (1..=ACCOUNTS)
        .map(|id| format!(r#"{{"id": "{id}", "ledger": 7, "code": 1}}"#))
        .collect();
    let setup = format!(r#"{{"create_accounts": [{}]}}"#, accounts.join(", "));
    // Every batch sent, by its first id: (size, acknowledged results if any).
    let mut sent: Sent = BTreeMap::new();
    let mut next_id = 1_000u64;
    let mut acknowledged_batches = 0;
    // Rounds whose kill cut the work short: some batches sent were never answered.
    let mut cut_short = 0;
    for kill in 0..KILLS {
        let placement_bits = [128, 2, 64, 1, 3][(kill % 5) as usize];
        let by_plan = kill % 3 != 2;
        let mut child = apply_child(dir.path(), 1 + kill % 4, placement_bits, by_plan);
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let batches = 5 + rng.below(40);
        let mut lines = vec![setup.clone()];
        let mut firsts = vec![None];
        for _ in 0..batches {
            let size = 2 + rng.below(20);
            lines.push(batch_line(next_id, size, &mut rng));
            sent.insert(next_id, (size, None));
            firsts.push(Some(next_id));
            next_id += size;
        }
        let writer = std::thread::spawn(move || {
            for line in lines {
                if writeln!(stdin, "{line}").is_err() {
                    return;
                }
            }
        });
        // Kill a random moment after a random answer in the first half, while answers
        // are being read. Counting from an answer, not from the start, keeps a slow start
        // on a loaded machine from turning every round into a kill before anything was
        // acknowledged, and a fast disk from letting every child finish first.
        let kill_after = 1 + rng.below(batches / 2 + 1) as usize;
        let (reached, answers_reached) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut answers = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                answers.push(serde_json::from_str::<Value>(&line).unwrap());
                if answers.len() == kill_after {
                    let _ = reached.send(());
                }
            }
            answers
        });
        let _ = answers_reached.recv_timeout(Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_micros(rng.below(3_000));
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let answers = reader.join().unwrap();
        let _ = writer.join();
        if answers.len() < firsts.len() {
            cut_short += 1;
        }
        for (answer, first) in answers.iter().zip(&firsts) {
            let Some(first) = first else { continue };
            let results: Vec<(String, Option<String>)> = answer["results"]
                .as_array()
                .unwrap_or_else(|| panic!("round {kill}: not a results answer: {answer}"))
                .iter()
                .map(|r| {
                    (
                        r["result"].as_str().unwrap().to_string(),
                        r["timestamp"].as_str().map(str::to_string),
                    )
                })
                .collect();
            sent.get_mut(first).unwrap().1 = Some(results);
            acknowledged_batches += 1;
        }
        check_recovered_state(dir.path(), &sent, kill);
    }
    assert!(
        acknowledged_batches > KILLS,
        "the kills came too early to test anything"
    );
    eprintln!("{cut_short} of {KILLS} kills cut the work short");
    // 52-55 of 60 do on 2 cores.
    assert!(
        cut_short >= KILLS / 4,
        "only {cut_short} of {KILLS} kills came before the last answer"
    );
}

/// Restarts on `dir` and checks every batch sent so far against what is on disk.
fn check_recovered_state(dir: &Path, sent: &Sent, kill: u64) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["transfers", "--data"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "round {kill}: restart failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stored: BTreeMap<u64, String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let t: Value = serde_json::from_str(line).unwrap();
            (
                t["id"].as_str().unwrap().parse().unwrap(),
                t["timestamp"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut seen = HashSet::new();
    for (first, (size, acknowledged)) in sent {
        let present: Vec<bool> = (*first..first + size - 1)
            .map(|id| stored.contains_key(&id))
            .collect();
        assert!(
            !stored.contains_key(&(first + size - 1)),
            "round {kill}: a failed event was stored"
        );
        match acknowledged {
            Some(results) => {
                for (offset, (result, timestamp)) in results.iter().enumerate() {
                    let id = first + offset as u64;
                    if offset as u64 == size - 1 {
                        assert_eq!(result, "amount_must_not_be_zero");
                    } else {
                        assert_eq!(result, "ok", "round {kill}: transfer {id}");
                        assert_eq!(
                            stored.get(&id),
                            timestamp.as_ref(),
                            "round {kill}: acknowledged transfer {id} lost or changed"
                        );
                    }
                }
            }
            None => {
                // Never acknowledged: the whole batch or none of it.
                assert!(
                    present.iter().all(|p| *p) || present.iter().all(|p| !*p),
                    "round {kill}: batch {first} half-applied: {present:?}"
                );
            }
        }
        seen.extend(*first..first + size);
    }
    assert!(
        stored.keys().all(|id| seen.contains(id)),
        "round {kill}: a transfer nobody sent"
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["verify", "--data"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "round {kill}: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
