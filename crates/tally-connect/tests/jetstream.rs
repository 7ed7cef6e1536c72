//! The connector against a real `nats-server -js`: the one `.ci/run` starts
//! (`TALLY_NATS_URL`), or one these tests start from PATH. Each test uses its own stream
//! and subjects, so they share a broker safely.

use async_nats::jetstream::{self, consumer::pull, stream::Stream};
use futures_util::StreamExt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_log::events::{EventJournal, JournalOptions};
use tally_types::currency::CurrencyTable;
use tally_types::{Account, ChangeEvent, ChangeKind, Transfer};

const WAIT_MAX: Duration = Duration::from_secs(60);

/// A `nats-server -js` this test started, on a fixed port and store so it can restart.
struct OwnBroker {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl OwnBroker {
    fn start(store: &Path) -> OwnBroker {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let mut broker = OwnBroker {
            port,
            store: store.to_path_buf(),
            child: None,
        };
        broker.restart();
        broker
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        self.stop("TERM");
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "TALLY_NATS_URL is not set and nats-server is not on PATH: install Debian's \
                 nats-server package, or run .ci/run, which starts one",
            );
        self.child = Some(child);
        let deadline = Instant::now() + WAIT_MAX;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it with `signal` (`TERM` or `KILL`, through kill(1): no `unsafe` for a
    /// test).
    fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .expect("kill(1)");
            assert!(status.success(), "kill -{signal} nats-server");
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The broker of a test: the shared one of `TALLY_NATS_URL`, or its own.
fn broker(store: &Path) -> (String, Option<OwnBroker>) {
    match std::env::var("TALLY_NATS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let own = OwnBroker::start(store);
            (own.url(), Some(own))
        }
    }
}

/// Names unique to one test and one run: stream, subject prefix.
fn names(test: &str) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    let tag = format!("{test}_{}_{nanos}", std::process::id());
    (format!("T_{tag}"), format!("tally.test.{tag}"))
}

/// Event `timestamp`, of a kind that cycles through all of them.
fn event(timestamp: u64) -> ChangeEvent {
    let kind = ChangeKind::ALL[(timestamp % ChangeKind::ALL.len() as u64) as usize];
    let account = |id: u128| Account {
        id,
        ledger: 1,
        code: 1,
        timestamp: 1,
        ..Account::default()
    };
    if kind == ChangeKind::AccountCreated {
        return ChangeEvent::account_created(Account {
            timestamp,
            ..account(u128::from(timestamp))
        });
    }
    ChangeEvent {
        timestamp,
        kind,
        transfer: Transfer {
            id: u128::from(timestamp),
            debit_account_id: 1,
            credit_account_id: 2,
            amount: u128::from(timestamp),
            ledger: 1,
            code: 1,
            timestamp,
            ..Transfer::default()
        },
        debit_account: account(1),
        credit_account: account(2),
    }
}

/// Appends the events with timestamps `timestamps` to `DATA/events` (synced).
fn append(data: &Path, timestamps: std::ops::RangeInclusive<u64>) {
    let mut journal =
        EventJournal::open(&data.join("events"), JournalOptions::default()).expect("journal");
    let events: Vec<ChangeEvent> = timestamps.map(event).collect();
    journal.append(&events).expect("append");
    journal.sync().expect("sync");
}

/// The connector binary, killed (SIGKILL) when dropped.
struct Connector(Child);

impl Connector {
    fn start(data: &Path, url: &str, stream: &str, subject: &str, extra: &[&str]) -> Connector {
        let child = Command::new(env!("CARGO_BIN_EXE_tally-connect"))
            .arg("--data")
            .arg(data)
            .args(["--nats", url, "--stream", stream, "--subject", subject])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start tally-connect");
        Connector(child)
    }

    fn assert_running(&mut self) {
        let status = self.0.try_wait().expect("try_wait");
        assert!(status.is_none(), "tally-connect exited: {status:?}");
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn jetstream_of(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .expect("connect to NATS");
    jetstream::new(client)
}

/// The stream once it exists (the connector creates it).
async fn stream_of(jetstream: &jetstream::Context, name: &str) -> Stream {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Ok(stream) = jetstream.get_stream(name).await {
            return stream;
        }
        assert!(Instant::now() < deadline, "stream {name} never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the stream holds at least `count` messages; returns how many it holds.
async fn wait_for_messages(stream: &Stream, count: u64) -> u64 {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Ok(info) = stream.get_info().await
            && info.state.messages >= count
        {
            return info.state.messages;
        }
        assert!(
            Instant::now() < deadline,
            "stream never held {count} messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message of the stream, through a JetStream consumer: (timestamp of the
/// `Nats-Msg-Id` header, subject, payload).
async fn consume_all(stream: &Stream) -> Vec<(u64, String, String)> {
    let count = stream.get_info().await.expect("info").state.messages as usize;
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut consumed = Vec::with_capacity(count);
    while consumed.len() < count {
        let message = tokio::time::timeout(WAIT_MAX, messages.next())
            .await
            .expect("a message within the wait")
            .expect("the consumer goes on")
            .expect("a message");
        let id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
            .expect("a Nats-Msg-Id header")
            .as_str()
            .parse::<u64>()
            .expect("a decimal message id");
        let payload = String::from_utf8(message.payload.to_vec()).expect("a UTF-8 payload");
        consumed.push((id, message.subject.to_string(), payload));
    }
    consumed
}

/// The stream holds the events `1..=last`, each once, in order, on its kind's subject.
async fn check_exactly_once(stream: &Stream, subject: &str, last: u64) {
    let consumed = consume_all(stream).await;
    let timestamps: Vec<u64> = consumed.iter().map(|(id, _, _)| *id).collect();
    let expected: Vec<u64> = (1..=last).collect();
    assert_eq!(timestamps.len(), expected.len(), "messages in the stream");
    assert!(
        timestamps == expected,
        "not every event exactly once, in order"
    );
    let currencies = CurrencyTable::default();
    for (id, message_subject, payload) in consumed {
        let event = event(id);
        assert_eq!(message_subject, format!("{subject}.{}", event.kind.name()));
        assert_eq!(payload, tally_json::change_event_line(&event, &currencies));
        let payload_timestamp = tally_connect::resume::payload_timestamp(payload.as_bytes());
        assert_eq!(payload_timestamp, Some(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_once_in_order_then_follows_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _own) = broker(&dir.path().join("nats"));
    let (stream_name, subject) = names("follow");
    let data = dir.path().join("data");
    append(&data, 1..=2_000);
    let mut connector = Connector::start(&data, &url, &stream_name, &subject, &[]);
    let jetstream = jetstream_of(&url).await;
    let stream = stream_of(&jetstream, &stream_name).await;
    wait_for_messages(&stream, 2_000).await;
    append(&data, 2_001..=2_500);
    wait_for_messages(&stream, 2_500).await;
    connector.assert_running();
    check_exactly_once(&stream, &subject, 2_500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_connector_resumes_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _own) = broker(&dir.path().join("nats"));
    let (stream_name, subject) = names("sigkill");
    let data = dir.path().join("data");
    let total = 30_000;
    append(&data, 1..=total);
    let jetstream = jetstream_of(&url).await;
    let mut killed_at = Vec::new();
    for round in 0..3 {
        let connector = Connector::start(&data, &url, &stream_name, &subject, &[]);
        let stream = stream_of(&jetstream, &stream_name).await;
        killed_at.push(wait_for_messages(&stream, (round + 1) * 2_000).await);
        // SIGKILL mid-way, with publishes in flight.
        drop(connector);
    }
    append(&data, total + 1..=total + 1_000);
    let mut connector = Connector::start(&data, &url, &stream_name, &subject, &[]);
    let stream = stream_of(&jetstream, &stream_name).await;
    wait_for_messages(&stream, total + 1_000).await;
    connector.assert_running();
    check_exactly_once(&stream, &subject, total + 1_000).await;
    assert!(killed_at[0] < total, "killed mid-way: {killed_at:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nats_server_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut own = OwnBroker::start(&dir.path().join("nats"));
    let url = own.url();
    let (stream_name, subject) = names("broker_restart");
    let data = dir.path().join("data");
    let total = 100_000;
    append(&data, 1..=total);
    let mut connector = Connector::start(&data, &url, &stream_name, &subject, &[]);
    let jetstream = jetstream_of(&url).await;
    let mut stopped_at = Vec::new();
    let mut last = total;
    // Stopped mid-way with publishes in flight, once gracefully and once killed (the
    // acknowledgements in flight are lost); more events come while it is down.
    for (round, signal) in [(1, "TERM"), (2, "KILL")] {
        let stream = stream_of(&jetstream, &stream_name).await;
        stopped_at.push(wait_for_messages(&stream, round * 5_000).await);
        own.stop(signal);
        append(&data, last + 1..=last + 1_000);
        last += 1_000;
        tokio::time::sleep(Duration::from_millis(300)).await;
        own.restart();
    }
    let stream = stream_of(&jetstream, &stream_name).await;
    wait_for_messages(&stream, last).await;
    append(&data, last + 1..=last + 500);
    wait_for_messages(&stream, last + 500).await;
    connector.assert_running();
    check_exactly_once(&stream, &subject, last + 500).await;
    assert!(stopped_at[1] < total, "stopped mid-way: {stopped_at:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_skips_the_events_up_to_its_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _own) = broker(&dir.path().join("nats"));
    let (stream_name, subject) = names("after");
    let data = dir.path().join("data");
    append(&data, 1..=1_000);
    let _connector = Connector::start(&data, &url, &stream_name, &subject, &["--after", "600"]);
    let jetstream = jetstream_of(&url).await;
    let stream = stream_of(&jetstream, &stream_name).await;
    wait_for_messages(&stream, 400).await;
    let timestamps: Vec<u64> = consume_all(&stream).await.iter().map(|m| m.0).collect();
    assert_eq!(timestamps, (601..=1_000).collect::<Vec<u64>>());
}

#[test]
fn a_missing_data_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-data");
    let output = Command::new(env!("CARGO_BIN_EXE_tally-connect"))
        .arg("--data")
        .arg(&missing)
        .args(["--nats", "nats://127.0.0.1:1"])
        .output()
        .expect("run tally-connect");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not exist") && stderr.contains("no-such-data"),
        "{stderr}"
    );
}
