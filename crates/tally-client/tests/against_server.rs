//! The client against a real server on a loopback port: coalescing, own results,
//! idempotent retries, reconnection after a restart, tokens and typed errors.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tally_client::{Client, ClientConfig, ClientError, RetryPolicy};
use tally_engine::{Config, Ledger};
use tally_server::{Operation, RunningServer, Server, ServerConfig};
use tally_types::{
    Account, AccountFilter, AccountFlags, QueryFilter, ResultCode, Transfer, TransferFlags,
};

const LEDGER: u32 = 978;

fn account(id: u128) -> Account {
    Account {
        id,
        ledger: LEDGER,
        code: 1,
        ..Account::default()
    }
}

fn pay(id: u128, from: u128, to: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: from,
        credit_account_id: to,
        amount,
        ledger: LEDGER,
        code: 1,
        ..Transfer::default()
    }
}

/// A server on `listen` over the ledger in `dir` (opened, or recovered when it exists).
async fn serve(
    dir: &Path,
    listen: SocketAddr,
    configure: impl FnOnce(&mut ServerConfig),
) -> RunningServer {
    let ledger = Ledger::open(Config::new(dir)).expect("open ledger");
    let mut config = ServerConfig::new(listen);
    configure(&mut config);
    Server::start(ledger, config).await.expect("start server")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

fn client_config(server: &RunningServer) -> ClientConfig {
    ClientConfig::new(format!("http://{}", server.local_addr()))
}

async fn connect(server: &RunningServer) -> Client {
    Client::connect(client_config(server))
        .await
        .expect("connect")
}

async fn open_accounts(client: &Client, ids: &[u128]) {
    let accounts: Vec<Account> = ids.iter().map(|&id| account(id)).collect();
    let results = client
        .create_accounts(accounts)
        .await
        .expect("create accounts");
    assert!(
        results.iter().all(|r| r.code == ResultCode::Ok),
        "{results:?}"
    );
}

async fn balance_credits(client: &Client, id: u128) -> u128 {
    let accounts = client.lookup_accounts([id]).await.expect("lookup");
    assert_eq!(accounts.len(), 1, "account {id} exists");
    accounts[0].credits_posted
}

/// Concurrent single calls share batches, and each caller gets the result of its own
/// event, refusals included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_calls_are_coalesced_with_their_own_results() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), loopback(), |_| {}).await;
    let client = connect(&server).await;
    open_accounts(&client, &[1, 2]).await;

    let calls: u128 = 400;
    let mut tasks = tokio::task::JoinSet::new();
    for id in 1..=calls {
        let client = client.clone();
        // Every tenth transfer names a missing account: its caller alone is refused.
        let credit = if id % 10 == 0 { 99 } else { 2 };
        tasks.spawn(async move { (id, client.create_transfer(pay(id, 1, credit, id)).await) });
    }
    let mut timestamps = Vec::new();
    let mut expected_credits = 0;
    while let Some(joined) = tasks.join_next().await {
        let (id, result) = joined.expect("task ran");
        let result = result.expect("answered");
        if id % 10 == 0 {
            assert_eq!(
                result.code,
                ResultCode::CreditAccountNotFound,
                "transfer {id}"
            );
            assert_eq!(result.timestamp, 0);
        } else {
            assert_eq!(result.code, ResultCode::Ok, "transfer {id}");
            expected_credits += id;
            timestamps.push(result.timestamp);
            let stored = client.lookup_transfers([id]).await.expect("lookup");
            assert_eq!(
                stored[0].timestamp, result.timestamp,
                "own timestamp of {id}"
            );
        }
    }
    timestamps.sort_unstable();
    timestamps.dedup();
    assert_eq!(
        timestamps.len(),
        360,
        "every applied transfer has its own stamp"
    );
    assert_eq!(balance_credits(&client, 2).await, expected_credits);

    let stats = client.stats();
    let rpcs = server
        .stats()
        .calls(Operation::CreateTransfers, tonic::Code::Ok);
    assert_eq!(stats.single_calls, 400);
    // The small account batch of the setup was coalesced too, on its own coalescer.
    let account_rpcs = server
        .stats()
        .calls(Operation::CreateAccounts, tonic::Code::Ok);
    assert_eq!(stats.coalesced_batches, rpcs + account_rpcs, "{stats:?}");
    eprintln!("{rpcs} create calls carried 400 single transfers");
    assert!(
        rpcs < 400,
        "{rpcs} calls for 400 transfers: nothing was coalesced"
    );
    assert_eq!(server.stats().events(Operation::CreateTransfers), 400);
    server.shutdown().await.expect("shutdown");
}

/// A transfer sent again with the same id (as a retry does) answers `exists`, and the
/// balances show it applied once; a single call of it answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_transfer_answers_exists_and_applies_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), loopback(), |_| {}).await;
    let client = connect(&server).await;
    open_accounts(&client, &[1, 2]).await;

    let transfer = pay(10, 1, 2, 250);
    let first = client.create_transfers([transfer]).await.expect("first");
    assert_eq!(first[0].code, ResultCode::Ok);
    let again = client.create_transfers([transfer]).await.expect("again");
    assert_eq!(again[0].code, ResultCode::Exists);
    let single = client.create_transfer(transfer).await.expect("single");
    assert_eq!(single.code, ResultCode::Exists);
    assert_eq!(balance_credits(&client, 2).await, 250);
    let history = client
        .get_account_transfers(AccountFilter::new(2))
        .await
        .expect("history");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].timestamp, first[0].timestamp);
    server.shutdown().await.expect("shutdown");
}

/// Balances with results: each applied transfer answers both accounts' balances right
/// after it, chained transfers included; a refused one and a repeated one answer none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_answer_their_balances_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), loopback(), |_| {}).await;
    let client = connect(&server).await;
    open_accounts(&client, &[1, 2, 3]).await;
    let mut pending = pay(12, 3, 2, 5);
    pending.flags = TransferFlags::PENDING;
    let batch = [
        pay(10, 1, 2, 100),
        pay(11, 2, 3, 30),
        pending,
        pay(13, 1, 99, 1),
        pay(10, 1, 2, 100),
    ];
    let results = client
        .create_transfers_with_balances(batch)
        .await
        .expect("answered");
    let codes: Vec<ResultCode> = results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [
            ResultCode::Ok,
            ResultCode::Ok,
            ResultCode::Ok,
            ResultCode::CreditAccountNotFound,
            ResultCode::Exists
        ]
    );
    let after = |n: usize| {
        results[n]
            .balances
            .expect("an applied transfer has balances")
    };
    // Account 2 after the first: credited 100; after the second: debited 30.
    assert_eq!(after(0).debit_account.debits_posted, 100);
    assert_eq!(after(0).credit_account.credits_posted, 100);
    assert_eq!(after(1).debit_account.credits_posted, 100);
    assert_eq!(after(1).debit_account.debits_posted, 30);
    assert_eq!(after(1).credit_account.credits_posted, 30);
    // The pending transfer reserves: account 3 has 5 debits pending, 2 has 5 credits.
    assert_eq!(after(2).debit_account.debits_pending, 5);
    assert_eq!(after(2).debit_account.credits_posted, 30);
    assert_eq!(after(2).credit_account.credits_pending, 5);
    assert!(results[0].timestamp > 0 && results[3].timestamp == 0);
    assert!(results[3].balances.is_none() && results[4].balances.is_none());
    assert!(
        client
            .create_transfers_with_balances([])
            .await
            .expect("empty")
            .is_empty()
    );
    server.shutdown().await.expect("shutdown");
}

/// Balance history and the two queries answer through the client what the ledger
/// holds: rows after each transfer, and the records whose fields match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_history_and_queries_answer_through_the_client() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), loopback(), |_| {}).await;
    let client = connect(&server).await;
    let history = Account {
        user_data_32: 7,
        flags: AccountFlags::HISTORY,
        ..account(1)
    };
    let created = client
        .create_accounts([history, account(2)])
        .await
        .expect("accounts");
    assert!(created.iter().all(|r| r.code == ResultCode::Ok));
    let transfers: Vec<Transfer> = (10..13)
        .map(|id| Transfer {
            user_data_128: if id == 11 { 4242 } else { 0 },
            ..pay(id, 1, 2, id * 100)
        })
        .collect();
    let applied = client.create_transfers(transfers).await.expect("transfers");
    assert!(applied.iter().all(|r| r.code == ResultCode::Ok));

    let rows = client
        .get_account_balances(AccountFilter::new(1))
        .await
        .expect("balances");
    let debits: Vec<u128> = rows.iter().map(|r| r.balances.debits_posted).collect();
    assert_eq!(debits, vec![1_000, 2_100, 3_300]);
    assert_eq!(rows[2].timestamp, applied[2].timestamp);
    let newest_first = AccountFilter {
        debits: true,
        reversed: true,
        limit: 1,
        ..AccountFilter::new(1)
    };
    let newest = client
        .get_account_balances(newest_first)
        .await
        .expect("one");
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].balances.debits_posted, 3_300);

    let by_data = QueryFilter {
        user_data_32: 7,
        ..QueryFilter::default()
    };
    let found = client.query_accounts(by_data).await.expect("accounts");
    assert_eq!(found.iter().map(|a| a.id).collect::<Vec<_>>(), vec![1]);
    let by_order = QueryFilter {
        user_data_128: 4242,
        ledger: LEDGER,
        ..QueryFilter::default()
    };
    let found = client.query_transfers(by_order).await.expect("transfers");
    assert_eq!(found.iter().map(|t| t.id).collect::<Vec<_>>(), vec![11]);
    server.shutdown().await.expect("shutdown");
}

/// A server stopped and started again on the same address and data directory is
/// reached again without the caller noticing: calls made while it is down are retried
/// until it is back, and a transfer already applied before the stop answers `exists`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected_transparently() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), loopback(), |_| {}).await;
    let addr = server.local_addr();
    let config = ClientConfig {
        retry: RetryPolicy {
            attempts_max: 50,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
        },
        ..client_config(&server)
    };
    let client = Client::connect(config).await.expect("connect");
    open_accounts(&client, &[1, 2]).await;
    let before = client
        .create_transfer(pay(1, 1, 2, 5))
        .await
        .expect("before");
    assert_eq!(before.code, ResultCode::Ok);

    server.shutdown().await.expect("shutdown");
    let during = {
        let client = client.clone();
        tokio::spawn(async move { client.create_transfer(pay(2, 1, 2, 7)).await })
    };
    let again = {
        let client = client.clone();
        tokio::spawn(async move { client.create_transfers([pay(1, 1, 2, 5)]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = serve(dir.path(), addr, |_| {}).await;

    let during = during
        .await
        .expect("task ran")
        .expect("answered after restart");
    assert_eq!(during.code, ResultCode::Ok);
    let again = again
        .await
        .expect("task ran")
        .expect("answered after restart");
    assert_eq!(again[0].code, ResultCode::Exists, "applied before the stop");
    assert_eq!(balance_credits(&client, 2).await, 12);
    assert!(client.stats().retries > 0, "{:?}", client.stats());
    server.shutdown().await.expect("shutdown");
}

/// With a token file, the client's bearer token is sent on every call; no token is
/// `Unauthenticated`, a token without the right is `PermissionDenied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_sent_and_refusals_are_typed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens.jsonl");
    let reader = tally_server::Rights {
        name: "reader".to_string(),
        operations: [Operation::LookupAccounts].into_iter().collect(),
        ledgers: None,
    };
    let lines = [
        tally_server::auth::token_line("all-rights", &tally_server::Rights::all()),
        tally_server::auth::token_line("read-only", &reader),
    ];
    std::fs::write(&tokens, lines.join("\n") + "\n").expect("token file");
    let data = dir.path().join("data");
    let server = serve(&data, loopback(), |config| config.tokens = Some(tokens)).await;
    let with_token = |token: Option<&str>| ClientConfig {
        token: token.map(str::to_string),
        ..client_config(&server)
    };

    let writer = Client::connect(with_token(Some("all-rights")))
        .await
        .expect("connect");
    open_accounts(&writer, &[1, 2]).await;
    let result = writer
        .create_transfer(pay(1, 1, 2, 3))
        .await
        .expect("with rights");
    assert_eq!(result.code, ResultCode::Ok);

    let anonymous = Client::connect(with_token(None)).await.expect("connect");
    let refused = anonymous.create_transfer(pay(2, 1, 2, 3)).await;
    assert!(
        matches!(refused, Err(ClientError::Unauthenticated(_))),
        "{refused:?}"
    );
    let wrong = Client::connect(with_token(Some("guessed")))
        .await
        .expect("connect");
    let refused = wrong.lookup_accounts([1]).await;
    assert!(
        matches!(refused, Err(ClientError::Unauthenticated(_))),
        "{refused:?}"
    );

    let reader = Client::connect(with_token(Some("read-only")))
        .await
        .expect("connect");
    assert_eq!(
        reader.lookup_accounts([2]).await.expect("may read")[0].credits_posted,
        3
    );
    let refused = reader.create_transfers([pay(3, 1, 2, 3)]).await;
    assert!(
        matches!(refused, Err(ClientError::PermissionDenied(_))),
        "{refused:?}"
    );
    assert_eq!(
        balance_credits(&writer, 2).await,
        3,
        "refusals changed nothing"
    );
    server.shutdown().await.expect("shutdown");
}

/// Refusals the client makes itself, before sending: a linked single call, a batch
/// above the limit; and an unreachable server at connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_what_cannot_be_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), loopback(), |_| {}).await;
    let config = ClientConfig {
        batch_events_max: 4,
        ..client_config(&server)
    };
    let client = Client::connect(config).await.expect("connect");
    open_accounts(&client, &[1, 2]).await;

    let linked = Transfer {
        flags: TransferFlags::LINKED,
        ..pay(1, 1, 2, 1)
    };
    let refused = client.create_transfer(linked).await;
    assert!(
        matches!(refused, Err(ClientError::LinkedSingle)),
        "{refused:?}"
    );
    let chain = [linked, pay(2, 1, 2, 1)];
    let results = client
        .create_transfers(chain)
        .await
        .expect("a chain as a batch");
    assert!(
        results.iter().all(|r| r.code == ResultCode::Ok),
        "{results:?}"
    );

    let five: Vec<Transfer> = (10..15).map(|id| pay(id, 1, 2, 1)).collect();
    let refused = client.create_transfers(five).await;
    assert!(
        matches!(refused, Err(ClientError::InvalidArgument(_))),
        "{refused:?}"
    );
    assert_eq!(
        balance_credits(&client, 2).await,
        2,
        "nothing of the refused batch"
    );

    let addr = server.local_addr();
    server.shutdown().await.expect("shutdown");
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::new(format!("http://{addr}"))
    };
    let refused = Client::connect(config).await;
    assert!(
        matches!(refused, Err(ClientError::Connect(_))),
        "{refused:?}"
    );
}

/// A certificate authority and what it signed, as PEM.
struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca_params.self_signed(&ca_key).expect("CA cert").pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(names).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem,
        server: leaf(vec!["localhost".to_string()]),
        client: leaf(vec!["payments.internal".to_string()]),
    }
}

/// Over TLS with client certificates required, the client with its certificate is
/// served; one without a certificate is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = pki();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    let files = tally_server::TlsFiles {
        cert: write("server.pem", &pki.server.0),
        key: write("server.key", &pki.server.1),
        client_ca: Some(write("ca.pem", &pki.ca_pem)),
    };
    let data = dir.path().join("data");
    let server = serve(&data, loopback(), |config| config.tls = Some(files)).await;
    let tls = |identity: Option<tally_client::ClientIdentity>| ClientConfig {
        tls: Some(tally_client::TlsConfig {
            ca_certificate_pem: pki.ca_pem.clone().into_bytes(),
            domain_name: Some("localhost".to_string()),
            identity,
        }),
        retry: RetryPolicy {
            attempts_max: 1,
            ..RetryPolicy::default()
        },
        ..ClientConfig::new(format!("https://{}", server.local_addr()))
    };

    let identity = tally_client::ClientIdentity {
        certificate_pem: pki.client.0.clone().into_bytes(),
        key_pem: pki.client.1.clone().into_bytes(),
    };
    let client = Client::connect(tls(Some(identity))).await.expect("connect");
    open_accounts(&client, &[1, 2]).await;
    let result = client
        .create_transfer(pay(1, 1, 2, 9))
        .await
        .expect("over TLS");
    assert_eq!(result.code, ResultCode::Ok);

    let refused = match Client::connect(tls(None)).await {
        Ok(stranger) => stranger.lookup_accounts([1]).await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(
        matches!(
            refused,
            Err(ClientError::Connect(_) | ClientError::Unavailable { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(balance_credits(&client, 2).await, 9);
    server.shutdown().await.expect("shutdown");
}

/// Chains from concurrent callers share requests but never run into each other: a chain
/// that fails takes down only its own events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_chains_stay_apart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), loopback(), |_| {}).await;
    let client = connect(&server).await;
    open_accounts(&client, &[1, 2, 3]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..200u128 {
        let client = client.clone();
        tasks.spawn(async move {
            let base = 1_000 + caller * 10;
            // Odd callers' chains fail on their second event (account 99 is missing).
            let credit = if caller % 2 == 1 { 99 } else { 3 };
            let mut first = pay(base, 1, 2, 5);
            first.flags = TransferFlags::LINKED;
            let second = pay(base + 1, 2, credit, 5);
            let results = client.create_transfers([first, second]).await;
            (caller, results)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (caller, results) = joined.expect("task ran");
        let codes: Vec<ResultCode> = results.expect("answered").iter().map(|r| r.code).collect();
        let expected = if caller % 2 == 1 {
            vec![
                ResultCode::LinkedEventFailed,
                ResultCode::CreditAccountNotFound,
            ]
        } else {
            vec![ResultCode::Ok, ResultCode::Ok]
        };
        assert_eq!(codes, expected, "caller {caller}");
    }
    let stats = client.stats();
    assert!(
        stats.coalesced_batches < 201,
        "200 chains went in fewer requests: {stats:?}"
    );
    assert_eq!(balance_credits(&client, 3).await, 100 * 5);
    server.shutdown().await.expect("shutdown");
}
