//! Every operation through a real server on a loopback port, answered as the embedded
//! ledger answers it.

use tally_engine::{Config, Ledger};
use tally_proto::v1;
use tally_proto::{LedgerClient, account_to_proto, transfer_to_proto, u128_to_proto};
use tally_server::{Server, ServerConfig};
use tally_types::{Account, AccountFlags, ResultCode, Transfer};

fn account(id: u128) -> Account {
    Account {
        id,
        ledger: 978,
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
        ledger: 978,
        code: 1,
        ..Transfer::default()
    }
}

fn codes(results: &v1::CreateResults) -> Vec<ResultCode> {
    results
        .results
        .iter()
        .map(|r| tally_proto::result_code_from_proto(r.code).expect("known code"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_embedded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    let server = Server::start(
        ledger,
        ServerConfig::new("127.0.0.1:0".parse().expect("addr")),
    )
    .await
    .expect("start");
    let url = format!("http://{}", server.local_addr());
    let mut client = LedgerClient::connect(url).await.expect("connect");

    let wallet = Account {
        flags: AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
        ..account(2)
    };
    let accounts = [account(1), wallet, account(3)]
        .iter()
        .map(account_to_proto)
        .collect();
    let created = client
        .create_accounts(v1::CreateAccountsRequest {
            accounts,
            ..Default::default()
        })
        .await
        .expect("create accounts")
        .into_inner();
    assert_eq!(codes(&created), vec![ResultCode::Ok; 3]);
    assert!(created.results.iter().all(|r| r.timestamp > 0));

    let transfers = [pay(10, 1, 2, 500), pay(11, 2, 3, 900), pay(10, 1, 2, 500)]
        .iter()
        .map(transfer_to_proto)
        .collect();
    let applied = client
        .create_transfers(v1::CreateTransfersRequest {
            transfers,
            ..Default::default()
        })
        .await
        .expect("create transfers")
        .into_inner();
    assert_eq!(
        codes(&applied),
        vec![
            ResultCode::Ok,
            ResultCode::ExceedsCredits,
            ResultCode::Exists
        ]
    );

    let ids = [2u128, 99, 1]
        .iter()
        .filter_map(|id| u128_to_proto(*id))
        .collect();
    let found = client
        .lookup_accounts(v1::LookupRequest { ids })
        .await
        .expect("lookup")
        .into_inner();
    let balances: Vec<(u128, u128)> = found
        .accounts
        .iter()
        .map(|a| {
            let id = tally_proto::u128_from_proto(a.id);
            (id, tally_proto::u128_from_proto(a.credits_posted))
        })
        .collect();
    assert_eq!(balances, vec![(2, 500), (1, 0)]);

    let ids = [10u128, 11]
        .iter()
        .filter_map(|id| u128_to_proto(*id))
        .collect();
    let transfers = client
        .lookup_transfers(v1::LookupRequest { ids })
        .await
        .expect("lookup transfers")
        .into_inner();
    assert_eq!(
        transfers.transfers.len(),
        1,
        "the refused transfer is not stored"
    );

    let filter = tally_proto::filter_to_proto(&tally_types::AccountFilter::new(2));
    let history = client
        .get_account_transfers(filter)
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.transfers.len(), 1);
    assert_eq!(tally_proto::u128_from_proto(history.transfers[0].id), 10);

    server.shutdown().await.expect("clean shutdown");
    let reopened = Ledger::open(Config::new(dir.path())).expect("reopen");
    assert_eq!(
        reopened.lookup_transfers(&[10]).len(),
        1,
        "durable before answered"
    );
}

/// Creates `transfers` asking for balances: the first two pay account 1 from account
/// 2, the third is refused (`accounts_must_be_different`).
async fn two_paid_one_refused(
    client: &mut LedgerClient<tonic::transport::Channel>,
    transfers: [Transfer; 3],
) -> v1::CreateResults {
    let applied = client
        .create_transfers(v1::CreateTransfersRequest {
            transfers: transfers.iter().map(transfer_to_proto).collect(),
            balances: true,
            ..Default::default()
        })
        .await
        .expect("create transfers")
        .into_inner();
    assert_eq!(
        codes(&applied),
        vec![
            ResultCode::Ok,
            ResultCode::Ok,
            ResultCode::AccountsMustBeDifferent
        ]
    );
    applied
}

/// Balances with results, the balance history and queries through a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_history_and_queries_answer_as_embedded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    let server = Server::start(
        ledger,
        ServerConfig::new("127.0.0.1:0".parse().expect("addr")),
    )
    .await
    .expect("start");
    let url = format!("http://{}", server.local_addr());
    let mut client = LedgerClient::connect(url).await.expect("connect");
    let kept = Account {
        flags: AccountFlags::HISTORY,
        user_data_32: 7,
        ..account(1)
    };
    let accounts = [kept, account(2)].iter().map(account_to_proto).collect();
    client
        .create_accounts(v1::CreateAccountsRequest {
            accounts,
            ..Default::default()
        })
        .await
        .expect("create accounts");
    let order = |id, amount| Transfer {
        user_data_128: 5_000 + id,
        ..pay(id, 2, 1, amount)
    };
    let applied = two_paid_one_refused(
        &mut client,
        [order(10, 300), order(11, 200), pay(12, 2, 2, 1)],
    )
    .await;
    let credited: Vec<u128> = applied
        .results
        .iter()
        .map(|r| tally_proto::balances_from_proto(r.credit_account.as_ref()).credits_posted)
        .collect();
    assert_eq!(credited, vec![300, 500, 0]);
    assert!(applied.results[2].debit_account.is_none());

    let rows = client
        .get_account_balances(tally_proto::filter_to_proto(
            &tally_types::AccountFilter::new(1),
        ))
        .await
        .expect("balances")
        .into_inner();
    let posted: Vec<u128> = rows
        .balances
        .iter()
        .map(|row| tally_proto::balances_from_proto(row.balances.as_ref()).credits_posted)
        .collect();
    assert_eq!(posted, vec![300, 500]);

    let by_order = tally_types::QueryFilter {
        user_data_128: 5_011,
        ..Default::default()
    };
    let found = client
        .query_transfers(tally_proto::query_filter_to_proto(&by_order))
        .await
        .expect("query transfers")
        .into_inner();
    assert_eq!(found.transfers.len(), 1);
    assert_eq!(tally_proto::u128_from_proto(found.transfers[0].id), 11);
    let by_reference = tally_types::QueryFilter {
        user_data_32: 7,
        ..Default::default()
    };
    let found = client
        .query_accounts(tally_proto::query_filter_to_proto(&by_reference))
        .await
        .expect("query accounts")
        .into_inner();
    assert_eq!(found.accounts.len(), 1);
    let wide_code = v1::QueryFilter {
        code: 70_000,
        ..Default::default()
    };
    let refused = client
        .query_accounts(wide_code)
        .await
        .expect_err("code past u16");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_request_is_refused_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    let server = Server::start(
        ledger,
        ServerConfig::new("127.0.0.1:0".parse().expect("addr")),
    )
    .await
    .expect("start");
    let mut client = LedgerClient::connect(format!("http://{}", server.local_addr()))
        .await
        .expect("connect");
    let mut bad = account_to_proto(&account(2));
    bad.code = 70_000;
    let accounts = vec![account_to_proto(&account(1)), bad];
    let refused = client
        .create_accounts(v1::CreateAccountsRequest {
            accounts,
            ..Default::default()
        })
        .await
        .expect_err("code too wide");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("event 1"),
        "{}",
        refused.message()
    );
    let mut funded = account_to_proto(&account(3));
    funded.credits_posted = u128_to_proto(5);
    let refused = client
        .create_accounts(v1::CreateAccountsRequest {
            accounts: vec![funded],
            ..Default::default()
        })
        .await
        .expect_err("balances are the engine's");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        ledger_of(&server).lookup_accounts(&[1, 2, 3]).is_empty(),
        "nothing changed"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn plain_text_on_a_public_address_needs_insecure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Ledger::open(Config::new(dir.path())).expect("open");
    let config = ServerConfig::new("0.0.0.0:0".parse().expect("addr"));
    let refused = Server::start(ledger.clone(), config)
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains("--insecure"), "{refused}");
    // Loopback written as an IPv4-mapped IPv6 address is loopback.
    let mapped = ServerConfig::new("[::ffff:127.0.0.1]:0".parse().expect("addr"));
    assert!(mapped.check().is_ok());
    // The metrics port is plain HTTP wherever it listens: off loopback it needs it too.
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.metrics = Some("0.0.0.0:0".parse().expect("addr"));
    let refused = Server::start(ledger.clone(), config.clone())
        .await
        .expect_err("refused");
    let message = refused.to_string();
    assert!(
        message.contains("metrics") && message.contains("--insecure"),
        "{message}"
    );
    config.insecure = true;
    let server = Server::start(ledger.clone(), config).await.expect("starts");
    server.shutdown().await.expect("clean shutdown");
    ledger.shutdown().expect("shutdown");
}

fn ledger_of(server: &tally_server::RunningServer) -> &tally_engine::Ledger {
    match server.backend() {
        tally_server::Backend::Node(ledger) => ledger,
        other => panic!("a single-node server was expected, not {other:?}"),
    }
}

/// A replica answers balances with results and change events as a single node does (a
/// cluster of one: the replica path of the server; `tally-cluster`'s tests cover the
/// forward path and three replicas).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_with_results_answer_through_a_replica() {
    let dir = tempfile::tempdir().expect("temp dir");
    let members = [(1, format!("127.0.0.1:{}", tally_testkit::free_port()))].into();
    let config = tally_cluster::ClusterConfig::new(1, members, dir.path().join("r1"));
    let replica = tally_cluster::Replica::open(config).await.expect("opens");
    let replica = std::sync::Arc::new(replica);
    let server = Server::start_backend(
        tally_server::Backend::Replica(
            tally_cluster::HostedReplica::on_current_runtime(replica.clone()).expect("a runtime"),
        ),
        ServerConfig::new("127.0.0.1:0".parse().expect("addr")),
    )
    .await
    .expect("start");
    let url = format!("http://{}", server.local_addr());
    let mut client = LedgerClient::connect(url).await.expect("connect");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The lone replica elects itself first: until then calls answer UNAVAILABLE.
    while let Err(status) = client
        .create_accounts(v1::CreateAccountsRequest {
            accounts: [account(1), account(2)]
                .iter()
                .map(account_to_proto)
                .collect(),
            ..Default::default()
        })
        .await
    {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(std::time::Instant::now() < deadline, "no leader: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let applied = two_paid_one_refused(
        &mut client,
        [pay(10, 2, 1, 300), pay(11, 2, 1, 200), pay(12, 2, 2, 1)],
    )
    .await;
    let balances = |r: &v1::CreateResult| {
        (
            tally_proto::balances_from_proto(r.debit_account.as_ref()).debits_posted,
            tally_proto::balances_from_proto(r.credit_account.as_ref()).credits_posted,
        )
    };
    let seen: Vec<(u128, u128)> = applied.results.iter().map(balances).collect();
    assert_eq!(seen, vec![(300, 300), (500, 500), (0, 0)]);
    assert!(applied.results[2].credit_account.is_none());

    // The replica keeps change events: a page, and a subscription, as a single node.
    let page = client
        .get_change_events(v1::ChangeEventsFilter {
            timestamp_min: 0,
            limit: 0,
        })
        .await
        .expect("change events")
        .into_inner();
    let kinds: Vec<i32> = page.events.iter().map(|e| e.r#type).collect();
    let created = v1::ChangeEventType::AccountCreated as i32;
    let paid = v1::ChangeEventType::SinglePhase as i32;
    assert_eq!(kinds, vec![created, created, paid, paid]);
    let amounts: Vec<u128> = page.events[2..]
        .iter()
        .map(|e| tally_proto::u128_from_proto(e.transfer.as_ref().and_then(|t| t.amount)))
        .collect();
    assert_eq!(amounts, vec![300, 200]);
    let mut followed = client
        .subscribe_change_events(v1::SubscribeChangeEventsRequest {
            after: page.events[0].timestamp,
        })
        .await
        .expect("subscribes")
        .into_inner();
    for expected in &page.events[1..] {
        let event = followed
            .message()
            .await
            .expect("streams")
            .expect("an event");
        assert_eq!(&event, expected);
    }
    server.shutdown().await.expect("shuts down");
    replica.shutdown().await;
}
