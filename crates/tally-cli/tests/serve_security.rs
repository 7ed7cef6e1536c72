//! `tally serve` refuses whoever it must, over real sockets and real TLS: calls
//! without a known token, calls outside a token's rights, clients without a trusted
//! certificate, plain text against TLS, and plain text on a public address; and every
//! refusal leaves the ledger as it was.
#![allow(clippy::unwrap_used)]

mod tls_fixture;

use std::path::Path;
use tally_proto::{account_to_proto, transfer_to_proto, u128_from_proto, u128_to_proto, v1};
use tally_types::{Account, Transfer, TransferFlags};
use tempfile::TempDir;
use tls_fixture::{Auth, Client, Dial, Pki, Served, make_token, tally};
use tonic::Code;

/// Ledger numbers: the limited tokens may touch `USD` only.
const USD: u32 = 840;
const EUR: u32 = 978;

/// Whether the server asks clients for certificates signed by its CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutual {
    Off,
    Required,
}

/// A TLS server with a token file, and the tokens in it.
struct Fixture {
    dir: TempDir,
    pki: Pki,
    served: Served,
    /// Every operation, every ledger.
    admin: String,
    /// create_accounts, lookups and query_transfers, ledger 840 only.
    clerk: String,
    /// create_transfers and get_account_transfers, ledger 840 only.
    payer: String,
    /// query_transfers, ledgers 840 and 978.
    auditor: String,
}

impl Fixture {
    fn start(mutual: Mutual) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let tokens = dir.path().join("tokens.jsonl");
        let admin = make_token(&tokens, "admin", "*", "*");
        let clerk = make_token(
            &tokens,
            "clerk",
            "create_accounts,lookup_accounts,lookup_transfers,query_transfers",
            "840",
        );
        let payer = make_token(
            &tokens,
            "payer",
            "create_transfers,get_account_transfers",
            "840",
        );
        let auditor = make_token(&tokens, "auditor", "query_transfers", "840,978");
        let mut args = vec![
            "--tls-cert".to_string(),
            path(&pki.server.cert),
            "--tls-key".to_string(),
            path(&pki.server.key),
            "--tokens".to_string(),
            path(&tokens),
        ];
        if mutual == Mutual::Required {
            args.extend(["--tls-client-ca".to_string(), path(&pki.ca)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let served = Served::start(&dir.path().join("data"), &args);
        Fixture {
            dir,
            pki,
            served,
            admin,
            clerk,
            payer,
            auditor,
        }
    }

    async fn client(&self, auth: Auth) -> Client {
        Dial::tls(&self.pki.ca)
            .connect(self.served.addr, auth)
            .await
            .unwrap()
    }

    /// Stops the server; the accounts on disk as (id, ledger, debits_posted,
    /// credits_posted), from `tally accounts`.
    fn stop_and_dump(self) -> Vec<(String, u64, String, String)> {
        self.served.stop();
        let output = tally()
            .args(["accounts", "--data"])
            .arg(self.dir.path().join("data"))
            .output()
            .unwrap();
        assert!(output.status.success(), "tally accounts: {output:?}");
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                let account: serde_json::Value = serde_json::from_str(line).unwrap();
                let text = |field: &str| account[field].as_str().unwrap().to_string();
                let ledger = account["ledger"].as_u64().unwrap();
                (
                    text("id"),
                    ledger,
                    text("debits_posted"),
                    text("credits_posted"),
                )
            })
            .collect()
    }
}

fn path(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

fn account(id: u128, ledger: u32) -> v1::Account {
    account_to_proto(&Account {
        id,
        ledger,
        code: 1,
        ..Account::default()
    })
}

fn transfer(id: u128, from: u128, to: u128, amount: u128, ledger: u32) -> v1::Transfer {
    transfer_to_proto(&Transfer {
        id,
        debit_account_id: from,
        credit_account_id: to,
        amount,
        ledger,
        code: 1,
        ..Transfer::default()
    })
}

fn ids(ids: &[u128]) -> v1::LookupRequest {
    v1::LookupRequest {
        ids: ids.iter().filter_map(|id| u128_to_proto(*id)).collect(),
    }
}

fn create_accounts(accounts: Vec<v1::Account>) -> v1::CreateAccountsRequest {
    v1::CreateAccountsRequest {
        accounts,
        ..Default::default()
    }
}

fn create_transfers(transfers: Vec<v1::Transfer>) -> v1::CreateTransfersRequest {
    v1::CreateTransfersRequest {
        transfers,
        ..Default::default()
    }
}

fn all_ok(results: &v1::CreateResults, count: usize) {
    assert_eq!(results.results.len(), count);
    assert!(
        results
            .results
            .iter()
            .all(|result| result.code == v1::ResultCode::Ok as i32),
        "{results:?}"
    );
}

async fn found_accounts(client: &mut Client, wanted: &[u128]) -> Vec<u128> {
    let found = client.lookup_accounts(ids(wanted)).await.unwrap();
    let found = found.into_inner().accounts;
    found
        .iter()
        .map(|account| u128_from_proto(account.id))
        .collect()
}

async fn found_transfers(client: &mut Client, wanted: &[u128]) -> Vec<u128> {
    let found = client.lookup_transfers(ids(wanted)).await.unwrap();
    let found = found.into_inner().transfers;
    found
        .iter()
        .map(|transfer| u128_from_proto(transfer.id))
        .collect()
}

/// Accounts 1 and 2 in USD, 3 and 4 in EUR, and one transfer in each, made with the
/// admin token.
async fn seed(fixture: &Fixture) {
    let mut admin = fixture.client(Auth::bearer(&fixture.admin)).await;
    let accounts = vec![
        account(1, USD),
        account(2, USD),
        account(3, EUR),
        account(4, EUR),
    ];
    let created = admin.create_accounts(create_accounts(accounts)).await;
    all_ok(&created.unwrap().into_inner(), 4);
    let transfers = vec![transfer(10, 1, 2, 500, USD), transfer(11, 3, 4, 700, EUR)];
    let applied = admin.create_transfers(create_transfers(transfers)).await;
    all_ok(&applied.unwrap().into_inner(), 2);
}

/// The ledger after `seed`, as `tally accounts` prints it (both currencies have two
/// decimals).
fn seeded() -> Vec<(String, u64, String, String)> {
    let row = |id: &str, ledger: u64, debits: &str, credits: &str| {
        (
            id.to_string(),
            ledger,
            debits.to_string(),
            credits.to_string(),
        )
    };
    vec![
        row("1", 840, "5.00", "0.00"),
        row("2", 840, "0.00", "5.00"),
        row("3", 978, "7.00", "0.00"),
        row("4", 978, "0.00", "7.00"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_known_bearer_token_are_unauthenticated() {
    let fixture = Fixture::start(Mutual::Off);
    seed(&fixture).await;
    let unknown = format!("tly_{}", "0".repeat(64));
    let cases = [
        ("no header", Auth::none()),
        ("unknown token", Auth::bearer(&unknown)),
        ("basic scheme", Auth::header("Basic YWRtaW46YWRtaW4=")),
        ("token without a scheme", Auth::header(&fixture.admin)),
        (
            "bearer scheme, no space",
            Auth::header(&format!("Bearer{}", fixture.admin)),
        ),
        ("empty token", Auth::header("Bearer ")),
    ];
    for (case, auth) in cases {
        let mut client = fixture.client(auth).await;
        let refused = client
            .create_accounts(create_accounts(vec![account(5, USD)]))
            .await
            .expect_err(case);
        assert_eq!(refused.code(), Code::Unauthenticated, "{case}: {refused:?}");
        let refused = client
            .create_transfers(create_transfers(vec![transfer(12, 1, 2, 1, USD)]))
            .await
            .expect_err(case);
        assert_eq!(refused.code(), Code::Unauthenticated, "{case}: {refused:?}");
        let refused = client.lookup_accounts(ids(&[1])).await.expect_err(case);
        assert_eq!(refused.code(), Code::Unauthenticated, "{case}: {refused:?}");
    }
    // The scheme is case-insensitive (RFC 7235); the token is not.
    let mut admin = fixture
        .client(Auth::header(&format!("bearer {}", fixture.admin)))
        .await;
    assert_eq!(found_accounts(&mut admin, &[1]).await, vec![1]);
    let shouted = format!("Bearer {}", fixture.admin.to_uppercase());
    let mut client = fixture.client(Auth::header(&shouted)).await;
    let refused = client
        .lookup_accounts(ids(&[1]))
        .await
        .expect_err("upper-case token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(found_accounts(&mut admin, &[5]).await, Vec::<u128>::new());
    assert_eq!(found_transfers(&mut admin, &[12]).await, Vec::<u128>::new());
    assert_eq!(fixture.stop_and_dump(), seeded(), "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_may_call_only_its_operations_on_its_ledgers() {
    let fixture = Fixture::start(Mutual::Off);
    seed(&fixture).await;
    let mut clerk = fixture.client(Auth::bearer(&fixture.clerk)).await;
    let mut payer = fixture.client(Auth::bearer(&fixture.payer)).await;
    let denied = |case: &str, result: Result<tonic::Response<v1::CreateResults>, tonic::Status>| {
        let status = result.expect_err(case);
        assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
    };

    // Operations outside the rights.
    let call = clerk.create_transfers(create_transfers(vec![transfer(12, 1, 2, 1, USD)]));
    denied("clerk creates a transfer", call.await);
    let call = payer.create_accounts(create_accounts(vec![account(5, USD)]));
    denied("payer creates an account", call.await);
    let status = payer
        .lookup_accounts(ids(&[1]))
        .await
        .expect_err("payer looks up");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Ledgers outside the rights: alone, or behind an allowed event of the same batch.
    let call = clerk.create_accounts(create_accounts(vec![account(5, EUR)]));
    denied("clerk creates a EUR account", call.await);
    let call = clerk.create_accounts(create_accounts(vec![account(5, USD), account(6, EUR)]));
    denied("clerk's mixed batch", call.await);
    let call = payer.create_transfers(create_transfers(vec![transfer(12, 3, 4, 1, EUR)]));
    denied("payer moves EUR", call.await);

    // Ledger 0 on a post or void is the pending transfer's: checked against the stored
    // one, refused when it is not stored.
    let pending = |id: u128, from: u128, to: u128, ledger: u32| {
        let mut pending = transfer(id, from, to, 100, ledger);
        pending.flags = TransferFlags::PENDING.bits().into();
        create_transfers(vec![pending])
    };
    let applied = payer.create_transfers(pending(13, 1, 2, USD)).await;
    all_ok(&applied.unwrap().into_inner(), 1);
    let mut admin = fixture.client(Auth::bearer(&fixture.admin)).await;
    let applied = admin.create_transfers(pending(15, 3, 4, EUR)).await;
    all_ok(&applied.unwrap().into_inner(), 1);
    let settle = |id: u128, pending_id: u128, flag: TransferFlags| {
        let mut settle = transfer(id, 0, 0, 0, 0);
        settle.flags = flag.bits().into();
        settle.pending_id = u128_to_proto(pending_id);
        settle
    };
    let unknown = settle(14, 99, TransferFlags::POST_PENDING_TRANSFER);
    let call = payer.create_transfers(create_transfers(vec![unknown]));
    denied("payer posts an unknown pending with ledger 0", call.await);
    let eur_void = settle(16, 15, TransferFlags::VOID_PENDING_TRANSFER);
    let call = payer.create_transfers(create_transfers(vec![eur_void]));
    denied("payer voids a EUR pending with ledger 0", call.await);
    assert_eq!(
        found_transfers(&mut admin, &[12, 13, 14, 15, 16]).await,
        vec![13, 15]
    );
    assert_eq!(
        found_accounts(&mut admin, &[5, 6]).await,
        Vec::<u128>::new()
    );

    reads_stay_within_the_ledgers(&fixture).await;

    // Voiding the USD pending transfer with ledger 0 is allowed: it is the stored
    // pending transfer's ledger. With the EUR one voided too, the balances are back.
    let void = settle(14, 13, TransferFlags::VOID_PENDING_TRANSFER);
    let applied = payer.create_transfers(create_transfers(vec![void])).await;
    all_ok(&applied.unwrap().into_inner(), 1);
    let eur_void = settle(16, 15, TransferFlags::VOID_PENDING_TRANSFER);
    let applied = admin
        .create_transfers(create_transfers(vec![eur_void]))
        .await;
    all_ok(&applied.unwrap().into_inner(), 1);
    // A void of a pending transfer earlier in its own batch is not taken on trust
    // with ledger 0 (another caller could store that id first, in another ledger): it
    // gives its ledger, which the engine checks against the pending transfer's. An
    // event that names no ledger at all is answered, not refused.
    let pending_and_void = |ledger: u32| {
        let mut batch = pending(17, 1, 2, USD);
        let mut void = settle(18, 17, TransferFlags::VOID_PENDING_TRANSFER);
        void.ledger = ledger;
        batch.transfers.push(void);
        batch
    };
    let call = payer.create_transfers(pending_and_void(0));
    denied("payer's pending and its void giving ledger 0", call.await);
    let applied = payer.create_transfers(pending_and_void(USD)).await;
    all_ok(&applied.unwrap().into_inner(), 2);
    let no_ledger = create_transfers(vec![transfer(21, 1, 2, 1, 0)]);
    let answered = payer
        .create_transfers(no_ledger)
        .await
        .unwrap()
        .into_inner();
    let code = answered.results.first().map(|result| result.code);
    assert_eq!(
        code,
        Some(v1::ResultCode::LedgerMustNotBeZero as i32),
        "{answered:?}"
    );
    assert_eq!(fixture.stop_and_dump(), seeded(), "only what was allowed");
}

/// Reads that would show records of other ledgers are refused; reads within the token's
/// ledgers are served, and a query naming no ledger sees the token's only one.
async fn reads_stay_within_the_ledgers(fixture: &Fixture) {
    let mut clerk = fixture.client(Auth::bearer(&fixture.clerk)).await;
    let mut payer = fixture.client(Auth::bearer(&fixture.payer)).await;
    let mut auditor = fixture.client(Auth::bearer(&fixture.auditor)).await;
    let denied = |case: &str, status: tonic::Status| {
        assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
    };
    let status = clerk.lookup_accounts(ids(&[3, 1])).await.expect_err("EUR");
    denied("clerk looks up a EUR account", status);
    let status = clerk
        .lookup_transfers(ids(&[10, 11]))
        .await
        .expect_err("EUR");
    denied("clerk looks up a EUR transfer", status);
    assert_eq!(found_accounts(&mut clerk, &[1, 9, 2]).await, vec![1, 2]);
    assert_eq!(found_transfers(&mut clerk, &[10, 99]).await, vec![10]);
    let filter = tally_proto::filter_to_proto(&tally_types::AccountFilter::new(3));
    let status = payer.get_account_transfers(filter).await.expect_err("EUR");
    denied("payer reads a EUR account's transfers", status);
    let filter = tally_proto::filter_to_proto(&tally_types::AccountFilter::new(1));
    let history = payer.get_account_transfers(filter).await.unwrap();
    assert_eq!(history.into_inner().transfers.len(), 2, "USD history shown");

    let query = |ledger: u32| {
        tally_proto::query_filter_to_proto(&tally_types::QueryFilter {
            ledger,
            ..tally_types::QueryFilter::default()
        })
    };
    let ids_of = |transfers: Vec<v1::Transfer>| -> Vec<u128> {
        transfers.iter().map(|t| u128_from_proto(t.id)).collect()
    };
    let usd = clerk.query_transfers(query(0)).await.unwrap().into_inner();
    assert_eq!(
        ids_of(usd.transfers),
        vec![10, 13],
        "narrowed to the clerk's ledger"
    );
    let status = clerk.query_transfers(query(EUR)).await.expect_err("EUR");
    denied("clerk queries EUR", status);
    let status = auditor
        .query_transfers(query(0))
        .await
        .expect_err("no ledger");
    denied("a token of two ledgers queries without naming one", status);
    let eur = auditor
        .query_transfers(query(EUR))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids_of(eur.transfers), vec![11, 15]);
}

/// Connects and makes one lookup; the error, if any, as text.
async fn try_lookup(dial: &Dial, served: &Served, token: &str) -> Result<(), String> {
    let mut client = dial.connect(served.addr, Auth::bearer(token)).await?;
    client
        .lookup_accounts(ids(&[1]))
        .await
        .map(|_| ())
        .map_err(|status| format!("call: {status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_from_its_ca() {
    let fixture = Fixture::start(Mutual::Required);
    let (pki, served, token) = (&fixture.pki, &fixture.served, &fixture.admin);
    let anonymous = Dial::tls(&pki.ca);
    let refused = try_lookup(&anonymous, served, token).await;
    let _ = refused.expect_err("a client without a certificate was served");
    let stranger = Dial::tls(&pki.ca).with_identity(&pki.stranger);
    let refused = try_lookup(&stranger, served, token).await;
    let _ = refused.expect_err("a certificate from another CA was accepted");
    let member = Dial::tls(&pki.ca).with_identity(&pki.client);
    try_lookup(&member, served, token).await.unwrap();
    // A trusted certificate does not stand in for the token.
    let unknown = format!("tly_{}", "1".repeat(64));
    let refused = try_lookup(&member, served, &unknown).await.unwrap_err();
    assert!(refused.contains("Unauthenticated"), "{refused}");
    assert!(fixture.stop_and_dump().is_empty(), "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_talks_only_tls_with_its_own_certificate() {
    let fixture = Fixture::start(Mutual::Off);
    let (pki, served, token) = (&fixture.pki, &fixture.served, &fixture.admin);
    let refused = try_lookup(&Dial::plain(), served, token).await;
    let _ = refused.expect_err("plain text was answered by a TLS server");
    // A client that does not trust the server's CA does not send its token.
    let refused = try_lookup(&Dial::tls(&pki.other_ca), served, token).await;
    let _ = refused.expect_err("a server certificate from an unknown CA was trusted");
    try_lookup(&Dial::tls(&pki.ca), served, token)
        .await
        .unwrap();
    assert!(fixture.stop_and_dump().is_empty(), "nothing changed");
}

#[test]
fn a_tls_handshake_that_stalls_is_dropped_after_the_header_timeout() {
    use std::io::{ErrorKind, Read, Write};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (cert, key) = (path(&pki.server.cert), path(&pki.server.key));
    let args = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--header-timeout-s",
        "1",
    ];
    let served = Served::start(&dir.path().join("data"), &args);
    let mut stalled = std::net::TcpStream::connect(served.addr).unwrap();
    // A handshake record header promising 512 bytes that never come: the first bytes
    // arrive in time, the handshake never ends (the idle timeout is 300 s).
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    loop {
        match stalled.read(&mut buffer) {
            Ok(0) => break,
            Ok(_) => {} // an alert, say
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("still open after {:?}", started.elapsed())
            }
            Err(_) => break,
        }
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800), "closed early: {took:?}");
    served.stop();
}

/// Runs `tally serve ARGS --data DATA`, which must refuse to start before it makes
/// `data` and before it prints a listening line; returns its stderr.
fn serve_refused(args: &[&str], data: &Path) -> String {
    let output = tally()
        .arg("serve")
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "served with {args:?}: {stderr}");
    assert!(output.stdout.is_empty(), "no listening line");
    assert!(!data.exists(), "refused before the data directory is made");
    stderr
}

/// TLS files that do not read, are not PEM, or hold a key that is not the
/// certificate's are refused before the data directory is made, naming the files and
/// the cause.
#[test]
fn bad_tls_files_are_refused_naming_them_before_the_ledger_opens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pki = Pki::new(dir.path());
    let serve = |cert: &Path, key: &Path| {
        let (cert, key) = (path(cert), path(key));
        serve_refused(
            &[
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ],
            &data,
        )
    };
    let stderr = serve(&pki.server.cert, &pki.client.key);
    assert!(
        stderr.contains("TLS configuration refused") && stderr.contains(&path(&pki.client.key)),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().len() > stderr.find("transport error").map_or(0, |at| at + 16),
        "a cause after tonic's own words: {stderr}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let stderr = serve(&garbage, &pki.server.key);
    assert!(stderr.contains("garbage.pem"), "{stderr}");
    let stderr = serve(&dir.path().join("missing.pem"), &pki.server.key);
    assert!(stderr.contains("missing.pem"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_on_a_public_address_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stderr = serve_refused(&["--shards", "1", "--listen", "0.0.0.0:0"], &data);
    assert!(stderr.contains("--insecure"), "{stderr}");
    let missing = dir.path().join("no-such-tokens.jsonl");
    let tokens = missing.to_str().unwrap();
    let stderr = serve_refused(&["--listen", "127.0.0.1:0", "--tokens", tokens], &data);
    assert!(
        stderr.contains("no-such-tokens.jsonl"),
        "names the file: {stderr}"
    );
    // A replica's peer service speaks plain text: a public peer address needs it too.
    let public_peer = [
        "--listen",
        "127.0.0.1:0",
        "--cluster",
        "1=0.0.0.0:7999",
        "--replica",
        "1",
    ];
    let stderr = serve_refused(&public_peer, &data);
    assert!(
        stderr.contains("peer address") && stderr.contains("--insecure-peer"),
        "{stderr}"
    );
    // --insecure-peer opens only the peer address, not the client one.
    let both = [
        "--listen",
        "0.0.0.0:0",
        "--cluster",
        "1=0.0.0.0:7999",
        "--replica",
        "1",
    ];
    let stderr = serve_refused(&[&both[..], &["--insecure-peer"]].concat(), &data);
    assert!(stderr.contains("plain text on non-loopback"), "{stderr}");
    let short = dir.path().join("short-secret");
    std::fs::write(&short, "too short\n").unwrap();
    let mut with_secret = vec!["--listen", "127.0.0.1:0", "--cluster", "1=127.0.0.1:7999"];
    with_secret.extend([
        "--replica",
        "1",
        "--peer-secret-file",
        short.to_str().unwrap(),
    ]);
    let stderr = serve_refused(&with_secret, &data);
    assert!(
        stderr.contains("short-secret") && stderr.contains("peer secret"),
        "{stderr}"
    );
    let small = [
        "--listen",
        "127.0.0.1:0",
        "--request-bytes-per-ip-max",
        "1000",
    ];
    let stderr = serve_refused(&small, &data);
    assert!(stderr.contains("--request-bytes-per-ip-max"), "{stderr}");
    // A replica places nothing on shards: placement is refused, not ignored.
    let placed = [
        &with_secret[..4],
        &["--replica", "1", "--placement-bits", "8"],
    ]
    .concat();
    let stderr = serve_refused(&placed, &data);
    assert!(stderr.contains("--placement-bits"), "{stderr}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let stderr = serve_refused(&["--listen", &taken], &data);
    assert!(stderr.contains("cannot listen on"), "{stderr}");

    let served = Served::start(
        &dir.path().join("data"),
        &["--listen", "0.0.0.0:0", "--insecure"],
    );
    assert!(served.addr.ip().is_unspecified(), "{}", served.addr);
    let log = served.log();
    assert!(
        log.contains("WARN") && log.contains("no token file on a non-loopback address"),
        "{log}"
    );
    let mut client = Dial::plain()
        .connect(served.addr, Auth::none())
        .await
        .unwrap();
    let created = client
        .create_accounts(create_accounts(vec![account(1, USD)]))
        .await;
    all_ok(&created.unwrap().into_inner(), 1);
    served.stop();

    // TLS is what a public address needs: without a token file it starts, and warns
    // that any caller may do everything.
    let pki = Pki::new(dir.path());
    let (cert, key) = (path(&pki.server.cert), path(&pki.server.key));
    let tls = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--listen",
        "0.0.0.0:0",
    ];
    let served = Served::start(&dir.path().join("tls-data"), &tls);
    assert!(
        served
            .log()
            .contains("no token file on a non-loopback address"),
        "{}",
        served.log()
    );
    let mut client = Dial::tls(&pki.ca)
        .connect(served.addr, Auth::none())
        .await
        .unwrap();
    let created = client
        .create_accounts(create_accounts(vec![account(2, USD)]))
        .await;
    all_ok(&created.unwrap().into_inner(), 1);
    served.stop();

    // --insecure accepts plain text on every address it serves, a replica's peer
    // address included.
    let free = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let peer = format!("1=0.0.0.0:{}", free.local_addr().unwrap().port());
    drop(free);
    let mut replica = tally()
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure",
            "--cluster",
            &peer,
        ])
        .args(["--replica", "1", "--data"])
        .arg(dir.path().join("replica-data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = replica.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    // (It may have exited already, refusing to start: the assertion says so.)
    let _ = replica.kill();
    replica.wait().unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
}

/// Over TLS too, a subscription is a call in flight: its connection outlives the idle
/// timeout however quiet it is, and the next event still arrives on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_subscription_over_tls_outlives_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (cert, key) = (path(&pki.server.cert), path(&pki.server.key));
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--idle-timeout-s",
        "1",
    ];
    let served = Served::start(&dir.path().join("data"), &args);
    let dial = Dial::tls(&pki.ca);
    let mut follower = dial.connect(served.addr, Auth::none()).await.unwrap();
    let request = v1::SubscribeChangeEventsRequest { after: 0 };
    let mut stream = follower
        .subscribe_change_events(request)
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let mut clerk = dial.connect(served.addr, Auth::none()).await.unwrap();
    let created = clerk.create_accounts(create_accounts(vec![account(1, USD)]));
    all_ok(&created.await.unwrap().into_inner(), 1);
    let event = stream.message().await.expect("the stream is still open");
    assert!(event.is_some(), "an event, not the end of the stream");
    served.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_a_token_create_accounts_and_transfers() {
    let fixture = Fixture::start(Mutual::Required);
    let dial = Dial::tls(&fixture.pki.ca).with_identity(&fixture.pki.client);
    let mut clerk = dial
        .connect(fixture.served.addr, Auth::bearer(&fixture.clerk))
        .await
        .unwrap();
    let mut payer = dial
        .connect(fixture.served.addr, Auth::bearer(&fixture.payer))
        .await
        .unwrap();
    let big = (7u128 << 64) | 1;
    let accounts = vec![account(big, USD), account(big + 1, USD)];
    let created = clerk.create_accounts(create_accounts(accounts)).await;
    all_ok(&created.unwrap().into_inner(), 2);
    let transfers = vec![
        transfer(big + 2, big, big + 1, 1_250, USD),
        transfer(big + 3, big + 1, big, 250, USD),
    ];
    let applied = payer.create_transfers(create_transfers(transfers)).await;
    all_ok(&applied.unwrap().into_inner(), 2);
    let found = clerk.lookup_accounts(ids(&[big, big + 1])).await.unwrap();
    let balances: Vec<(u128, u128, u128)> = found
        .into_inner()
        .accounts
        .iter()
        .map(|a| {
            let posted = (
                u128_from_proto(a.debits_posted),
                u128_from_proto(a.credits_posted),
            );
            (u128_from_proto(a.id), posted.0, posted.1)
        })
        .collect();
    assert_eq!(balances, vec![(big, 1_250, 250), (big + 1, 250, 1_250)]);
    let moved = found_transfers(&mut clerk, &[big + 2, big + 3]).await;
    assert_eq!(moved, vec![big + 2, big + 3]);
    let dumped = fixture.stop_and_dump();
    let balances: Vec<(&str, &str)> = dumped
        .iter()
        .map(|row| (row.2.as_str(), row.3.as_str()))
        .collect();
    assert_eq!(
        balances,
        vec![("12.50", "2.50"), ("2.50", "12.50")],
        "durable"
    );
}
