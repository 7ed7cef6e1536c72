//! Change events through a real server on a loopback port: both calls answer what the
//! embedded ledger reads; tokens limit them to their right and ledgers; a subscription
//! follows live commits, outlives the idle timeout, ends at a stop, and the client's
//! subscription resumes across a restart with every event exactly once.

use futures_util::{Stream, StreamExt};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::time::{Duration, Instant};
use tally_client::{Client, ClientConfig, ClientError, RetryPolicy};
use tally_engine::{Config, Ledger};
use tally_proto::{LedgerClient, v1};
use tally_server::{Operation, Rights, RunningServer, Server, ServerConfig};
use tally_types::{Account, ChangeEvent, ChangeKind, ResultCode, Transfer, TransferFlags};

const LEDGER: u32 = 978;
const OTHER: u32 = 840;
const WAIT: Duration = Duration::from_secs(10);

fn account(id: u128, ledger: u32) -> Account {
    Account {
        id,
        ledger,
        code: 1,
        ..Account::default()
    }
}

fn pay(id: u128, from: u128, to: u128, amount: u128, ledger: u32) -> Transfer {
    Transfer {
        id,
        debit_account_id: from,
        credit_account_id: to,
        amount,
        ledger,
        code: 1,
        ..Transfer::default()
    }
}

/// A server on `listen` over the ledger in `dir`, and the embedded handle of that ledger.
async fn serve(
    dir: &Path,
    listen: SocketAddr,
    configure: impl FnOnce(&mut ServerConfig),
) -> (RunningServer, Ledger) {
    let ledger = Ledger::open(Config::new(dir)).expect("open ledger");
    let mut config = ServerConfig::new(listen);
    configure(&mut config);
    let server = Server::start(ledger.clone(), config)
        .await
        .expect("start server");
    (server, ledger)
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

async fn connect(server: &RunningServer, token: Option<&str>) -> Client {
    let config = ClientConfig {
        token: token.map(str::to_string),
        retry: RetryPolicy {
            attempts_max: 100,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
        },
        ..ClientConfig::new(format!("http://{}", server.local_addr()))
    };
    Client::connect(config).await.expect("connect")
}

async fn all_ok(results: Vec<tally_client::CreateResult>) {
    let codes: Vec<ResultCode> = results.iter().map(|result| result.code).collect();
    assert!(
        codes.iter().all(|code| *code == ResultCode::Ok),
        "{codes:?}"
    );
}

/// Accounts in two ledgers, and every kind of transfer but expiry and refund.
async fn workload(client: &Client) {
    let accounts = [
        account(1, LEDGER),
        account(2, LEDGER),
        account(3, OTHER),
        account(4, OTHER),
    ];
    all_ok(client.create_accounts(accounts).await.expect("accounts")).await;
    let pending = Transfer {
        flags: TransferFlags::PENDING,
        ..pay(11, 1, 2, 70, LEDGER)
    };
    let post = Transfer {
        pending_id: 11,
        flags: TransferFlags::POST_PENDING_TRANSFER,
        ..pay(12, 1, 2, 70, LEDGER)
    };
    let held = Transfer {
        flags: TransferFlags::PENDING,
        ..pay(13, 3, 4, 9, OTHER)
    };
    let void = Transfer {
        pending_id: 13,
        flags: TransferFlags::VOID_PENDING_TRANSFER,
        ..pay(14, 3, 4, 9, OTHER)
    };
    let transfers = [pay(10, 1, 2, 500, LEDGER), pending, post, held, void];
    all_ok(client.create_transfers(transfers).await.expect("transfers")).await;
}

/// The next item of `stream`, within [`WAIT`].
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an item within the wait")
}

async fn take_events<S>(stream: &mut S, count: usize) -> Vec<ChangeEvent>
where
    S: Stream<Item = Result<ChangeEvent, ClientError>> + Unpin,
{
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let item = next(stream).await.expect("the stream goes on");
        events.push(item.expect("an event"));
    }
    events
}

fn ledger_of(event: &ChangeEvent) -> u32 {
    tally_proto::change_event_ledger(event)
}

/// Both calls, through the client and raw, answer exactly the embedded ledger's events,
/// paged and followed; a transfer committed after a subscription starts reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_calls_answer_what_the_embedded_ledger_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, ledger) = serve(dir.path(), loopback(), |_| {}).await;
    let client = connect(&server, None).await;
    workload(&client).await;
    let embedded = ledger.get_change_events(0, 8_190).expect("embedded");
    let kinds: Vec<ChangeKind> = embedded.iter().map(|event| event.kind).collect();
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    assert!(
        kinds.contains(&ChangeKind::TwoPhasePosted) && kinds.contains(&ChangeKind::TwoPhaseVoided)
    );

    let page = client.get_change_events(0, 8_190).await.expect("page");
    assert_eq!(page.events, embedded);
    assert_eq!(
        Some(page.timestamp_last),
        embedded.last().map(|e| e.timestamp)
    );
    let first = client.get_change_events(0, 4).await.expect("first page");
    let rest = client
        .get_change_events(first.timestamp_last + 1, 8_190)
        .await
        .expect("next page");
    assert_eq!([first.events, rest.events].concat(), embedded);

    let mut raw = LedgerClient::connect(format!("http://{}", server.local_addr()))
        .await
        .expect("raw connect");
    let filter = |limit| v1::ChangeEventsFilter {
        timestamp_min: 0,
        limit,
    };
    let all = raw.get_change_events(filter(0)).await.expect("limit 0");
    assert_eq!(all.get_ref().events.len(), embedded.len(), "0 is the most");
    let over = raw
        .get_change_events(filter(8_191))
        .await
        .expect_err("over");
    assert_eq!(over.code(), tonic::Code::InvalidArgument, "{over:?}");

    let mut followed = pin!(client.subscribe_change_events(0));
    assert_eq!(take_events(&mut followed, embedded.len()).await, embedded);
    let mut later = pin!(client.subscribe_change_events(embedded[2].timestamp));
    assert_eq!(take_events(&mut later, 1).await, vec![embedded[3]]);

    all_ok(
        client
            .create_transfers([pay(20, 2, 1, 5, LEDGER)])
            .await
            .expect("live"),
    )
    .await;
    let live = take_events(&mut followed, 1).await[0];
    assert_eq!(live.kind, ChangeKind::SinglePhase);
    assert_eq!(live.transfer.id, 20);
    assert_eq!(
        ledger.get_change_events(live.timestamp, 1).expect("read"),
        vec![live]
    );
    assert_eq!(take_events(&mut later, 1).await, vec![embedded[4]]);

    let answered = server
        .stats()
        .calls(Operation::GetChangeEvents, tonic::Code::Ok);
    assert!(answered >= 6, "{answered} calls counted");
    server.shutdown().await.expect("shutdown");
}

/// A token without the `get_change_events` right is refused both calls; a token limited
/// to one ledger sees only that ledger's events, and pages on past the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_limit_change_events_to_their_right_and_ledgers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens.jsonl");
    let lookups = Rights {
        name: "lookups".to_string(),
        operations: [Operation::LookupAccounts].into_iter().collect(),
        ledgers: None,
    };
    let other = Rights {
        name: "other".to_string(),
        operations: [Operation::GetChangeEvents].into_iter().collect(),
        ledgers: Some([OTHER].into_iter().collect()),
    };
    let lines = [
        tally_server::auth::token_line("all-rights", &Rights::all()),
        tally_server::auth::token_line("lookups-only", &lookups),
        tally_server::auth::token_line("other-ledger", &other),
    ];
    std::fs::write(&tokens, lines.join("\n") + "\n").expect("token file");
    let data = dir.path().join("data");
    let (server, ledger) = serve(&data, loopback(), |config| config.tokens = Some(tokens)).await;
    workload(&connect(&server, Some("all-rights")).await).await;
    let embedded = ledger.get_change_events(0, 8_190).expect("embedded");
    let expected: Vec<ChangeEvent> = embedded
        .iter()
        .filter(|event| ledger_of(event) == OTHER)
        .copied()
        .collect();
    assert_eq!(expected.len(), 4, "two accounts, a pending and a void");

    let refused = connect(&server, Some("lookups-only")).await;
    let error = refused
        .get_change_events(0, 10)
        .await
        .expect_err("no right");
    assert!(
        matches!(error, ClientError::PermissionDenied(_)),
        "{error:?}"
    );
    let mut stream = pin!(refused.subscribe_change_events(0));
    let error = next(&mut stream)
        .await
        .expect("an item")
        .expect_err("no right");
    assert!(
        matches!(error, ClientError::PermissionDenied(_)),
        "{error:?}"
    );
    assert!(
        next(&mut stream).await.is_none(),
        "the stream ends after its error"
    );

    let limited = connect(&server, Some("other-ledger")).await;
    let page = limited.get_change_events(0, 8_190).await.expect("page");
    assert_eq!(page.events, expected);
    assert_eq!(
        Some(page.timestamp_last),
        embedded.last().map(|e| e.timestamp)
    );
    let mut paged = Vec::new();
    let mut from = 0;
    loop {
        let page = limited
            .get_change_events(from, 1)
            .await
            .expect("page of one");
        paged.extend(page.events);
        if page.timestamp_last == 0 {
            break;
        }
        from = page.timestamp_last + 1;
    }
    assert_eq!(
        paged, expected,
        "pages of one step over the other ledger's events"
    );
    let mut followed = pin!(limited.subscribe_change_events(0));
    assert_eq!(take_events(&mut followed, expected.len()).await, expected);
    let refused_calls = server
        .stats()
        .calls(Operation::GetChangeEvents, tonic::Code::PermissionDenied);
    assert_eq!(refused_calls, 2);
    server.shutdown().await.expect("shutdown");
}

/// A subscription that waits quietly is kept past the idle timeout (the keepalive pings
/// are answered), and a graceful stop ends it at once with `UNAVAILABLE` rather than
/// waiting out the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_subscription_outlives_the_idle_timeout_and_ends_at_a_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _ledger) = serve(dir.path(), loopback(), |config| {
        config.limits.idle_timeout = Duration::from_secs(1);
        config.limits.keepalive_interval = Duration::from_millis(200);
        config.drain_timeout = Duration::from_secs(30);
    })
    .await;
    let writer = connect(&server, None).await;
    all_ok(
        writer
            .create_accounts([account(1, LEDGER), account(2, LEDGER)])
            .await
            .expect("accounts"),
    )
    .await;
    let mut raw = LedgerClient::connect(format!("http://{}", server.local_addr()))
        .await
        .expect("raw connect");
    let request = v1::SubscribeChangeEventsRequest { after: 0 };
    let mut stream = raw
        .subscribe_change_events(request)
        .await
        .expect("subscribed")
        .into_inner();
    for id in [1, 2] {
        let event = stream.message().await.expect("event").expect("open");
        assert_eq!(
            tally_proto::u128_from_proto(event.account.and_then(|a| a.id)),
            id
        );
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    all_ok(
        writer
            .create_transfers([pay(10, 1, 2, 3, LEDGER)])
            .await
            .expect("transfer"),
    )
    .await;
    let event = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("in time")
        .expect("the quiet stream is still open")
        .expect("an event");
    assert_eq!(event.r#type, v1::ChangeEventType::SinglePhase as i32);

    let started = Instant::now();
    let stop = tokio::spawn(server.shutdown());
    let end = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the stream ends in time")
        .expect_err("ends with a status");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    stop.await.expect("task ran").expect("shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The client's subscription, across a stop and a start of the server on the same
/// address and data directory, yields every event once, in order, with nothing after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_subscription_resumes_across_a_restart_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _ledger) = serve(dir.path(), loopback(), |_| {}).await;
    let addr = server.local_addr();
    let client = connect(&server, None).await;
    all_ok(
        client
            .create_accounts([account(1, LEDGER), account(2, LEDGER)])
            .await
            .expect("accounts"),
    )
    .await;
    all_ok(
        client
            .create_transfers([pay(10, 1, 2, 5, LEDGER)])
            .await
            .expect("before"),
    )
    .await;
    let mut followed = pin!(client.subscribe_change_events(0));
    let mut seen = take_events(&mut followed, 3).await;

    server.shutdown().await.expect("shutdown");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (server, ledger) = serve(dir.path(), addr, |_| {}).await;
    let transfers = [pay(11, 1, 2, 6, LEDGER), pay(12, 2, 1, 7, LEDGER)];
    all_ok(client.create_transfers(transfers).await.expect("after")).await;
    seen.extend(take_events(&mut followed, 2).await);

    assert_eq!(seen, ledger.get_change_events(0, 100).expect("embedded"));
    let ids: Vec<u128> = seen[2..].iter().map(|event| event.transfer.id).collect();
    assert_eq!(ids, [10, 11, 12]);
    let extra = tokio::time::timeout(Duration::from_millis(300), followed.next()).await;
    assert!(extra.is_err(), "nothing after the last event: {extra:?}");
    server.shutdown().await.expect("shutdown");
}
