//! The Python example client (clients/python/tally_example.py), with stubs compiled
//! from proto/, creates accounts and a transfer on a real `tally serve` over mutual TLS
//! with a token; Rust then finds them with the balances Python printed, and reads the
//! change events Python printed.
//!
//! Needs python3 with venv; `scripts/python-env.sh` installs the pinned packages into
//! target/python on the first run (the package index must be reachable then).
#![allow(clippy::unwrap_used)]

mod tls_fixture;

use std::path::{Path, PathBuf};
use std::process::Command;
use tally_proto::{u128_from_proto, u128_to_proto, v1};
use tls_fixture::{Auth, Dial, Pki, Served, make_token};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs scripts/python-env.sh; the venv's interpreter.
fn python_env() -> PathBuf {
    let root = repository();
    let output = Command::new("bash")
        .arg(root.join("scripts/python-env.sh"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scripts/python-env.sh failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    root.join("target/python/bin/python")
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_creates_what_rust_then_finds() {
    let python = python_env();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let tokens = dir.path().join("tokens.jsonl");
    let operations =
        "create_accounts,create_transfers,lookup_accounts,lookup_transfers,get_change_events";
    let token = make_token(&tokens, "python", operations, "840");
    let args = [
        "--tls-cert",
        text(&pki.server.cert),
        "--tls-key",
        text(&pki.server.key),
        "--tls-client-ca",
        text(&pki.ca),
        "--tokens",
        text(&tokens),
    ];
    let served = Served::start(&dir.path().join("data"), &args);

    // Ids above 2^64: both halves of U128 carry bits.
    let first = (7u128 << 64) | 1;
    let output = Command::new(&python)
        .arg(repository().join("clients/python/tally_example.py"))
        .args(["--addr", &served.addr.to_string(), "--ca", text(&pki.ca)])
        .args([
            "--cert",
            text(&pki.client.cert),
            "--key",
            text(&pki.client.key),
        ])
        .args(["--first-id", &first.to_string(), "--amount", "1250"])
        .args(["--stubs", text(&dir.path().join("stubs"))])
        .env("TALLY_TOKEN", &token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python: {stdout}{stderr}");
    let (debit, credit, transfer) = (first, first + 1, first + 2);
    for line in [
        format!("account {debit}: ok"),
        format!("account {credit}: ok"),
        format!("transfer {transfer}: ok"),
        format!("lookup account {debit}: ledger 840 debits_posted 1250 credits_posted 0"),
        format!("lookup account {credit}: ledger 840 debits_posted 0 credits_posted 1250"),
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
    let moved = format!("lookup transfer {transfer}: {debit} -> {credit} amount 1250 ");
    assert!(stdout.contains(&moved), "no {moved:?} in:\n{stdout}");

    let mut rust = Dial::tls(&pki.ca)
        .with_identity(&pki.client)
        .connect(served.addr, Auth::bearer(&token))
        .await
        .unwrap();
    let ids = [debit, credit].into_iter().filter_map(u128_to_proto);
    let found = rust
        .lookup_accounts(v1::LookupRequest { ids: ids.collect() })
        .await
        .unwrap()
        .into_inner();
    let balances: Vec<(u128, u128, u128)> = found
        .accounts
        .iter()
        .map(|a| {
            let id = u128_from_proto(a.id);
            (
                id,
                u128_from_proto(a.debits_posted),
                u128_from_proto(a.credits_posted),
            )
        })
        .collect();
    assert_eq!(balances, vec![(debit, 1250, 0), (credit, 0, 1250)]);
    let ids = u128_to_proto(transfer).into_iter().collect();
    let found = rust
        .lookup_transfers(v1::LookupRequest { ids })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.transfers.len(), 1);
    assert_eq!(u128_from_proto(found.transfers[0].amount), 1250);

    let filter = v1::ChangeEventsFilter {
        timestamp_min: 0,
        limit: 0,
    };
    let changes = rust.get_change_events(filter).await.unwrap().into_inner();
    assert_eq!(changes.events.len(), 3, "{changes:?}");
    for event in &changes.events {
        let line = change_line(event);
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
    let transfer_line = changes.events.last().map(change_line).unwrap();
    let expected = format!(
        "single_phase {transfer} debit {debit} debits_posted 1250 credit {credit} credits_posted 1250"
    );
    assert!(transfer_line.ends_with(&expected), "{transfer_line}");
    served.stop();
}

/// A change event as the Python example prints it.
fn change_line(event: &v1::ChangeEvent) -> String {
    let kind = v1::ChangeEventType::try_from(event.r#type).unwrap();
    let kind = kind
        .as_str_name()
        .trim_start_matches("CHANGE_EVENT_TYPE_")
        .to_lowercase();
    let default = v1::Account::default();
    if let Some(account) = &event.account {
        let id = u128_from_proto(account.id);
        return format!("change {}: {kind} {id}", event.timestamp);
    }
    let transfer = event.transfer.as_ref().map_or(0, |t| u128_from_proto(t.id));
    let debit = event.debit_account.as_ref().unwrap_or(&default);
    let credit = event.credit_account.as_ref().unwrap_or(&default);
    format!(
        "change {}: {kind} {transfer} debit {} debits_posted {} credit {} credits_posted {}",
        event.timestamp,
        u128_from_proto(debit.id),
        u128_from_proto(debit.debits_posted),
        u128_from_proto(credit.id),
        u128_from_proto(credit.credits_posted),
    )
}
