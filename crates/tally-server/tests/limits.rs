//! Hostile and careless clients against a real server on loopback: each gets a clear
//! status or a closed connection, and none disturbs a well-behaved client. Also the
//! operator's side: health, metrics and the busy hint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Buf, BufMut, Bytes};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_engine::{Backpressure, Config, Ledger};
use tally_proto::{LedgerClient, account_to_proto, transfer_to_proto, v1};
use tally_server::auth::token_line;
use tally_server::{Limits, Operation, Rights, RunningServer, Server, ServerConfig};
use tally_types::{Account, Transfer, TransferFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

struct Fixture {
    _dir: tempfile::TempDir,
    server: RunningServer,
}

impl Fixture {
    async fn start(limits: Limits) -> Fixture {
        Fixture::start_with(limits, |_| {}).await
    }

    async fn start_with(limits: Limits, engine: impl FnOnce(&mut Config)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        engine(&mut config);
        let ledger = Ledger::open(config).unwrap();
        let mut server_config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
        server_config.limits = limits;
        server_config.metrics = Some("127.0.0.1:0".parse().unwrap());
        let server = Server::start(ledger, server_config).await.unwrap();
        Fixture { _dir: dir, server }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    async fn client(&self) -> LedgerClient<Channel> {
        LedgerClient::connect(format!("http://{}", self.addr()))
            .await
            .unwrap()
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

fn account(id: u128) -> Account {
    Account {
        id,
        ledger: 978,
        code: 1,
        ..Account::default()
    }
}

fn pay(id: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 1,
        ledger: 978,
        code: 1,
        ..Transfer::default()
    }
}

/// Creates accounts 1 and 2 and pays one transfer: proves the client is served.
async fn served(client: &mut LedgerClient<Channel>, transfer_id: u128) {
    let accounts = vec![account_to_proto(&account(1)), account_to_proto(&account(2))];
    client
        .create_accounts(v1::CreateAccountsRequest {
            accounts,
            ..Default::default()
        })
        .await
        .expect("create accounts");
    let transfers = vec![transfer_to_proto(&pay(transfer_id))];
    let results = client
        .create_transfers(v1::CreateTransfersRequest {
            transfers,
            ..Default::default()
        })
        .await
        .expect("create transfer")
        .into_inner();
    assert_eq!(results.results.len(), 1);
}

/// Reads until the server closes the connection; returns how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {} // the server's SETTINGS frame, say
        }
    }
}

/// Bytes in, bytes out: sends whatever the test wrote as the message.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn raw_call(channel: Channel, path: &'static str, message: Bytes) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(message), path, RawCodec)
        .await
        .expect_err("malformed message accepted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_refused_and_the_server_goes_on() {
    let fixture = Fixture::start(Limits::default()).await;
    // Field 1 (transfers), length-delimited, with a length far past the end.
    let garbage = Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01]);
    let status = raw_call(
        fixture.channel().await,
        "/tally.v1.Ledger/CreateTransfers",
        garbage,
    )
    .await;
    // INVALID_ARGUMENT: nothing was applied (INTERNAL would leave the outcome unknown).
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("decode"), "{}", status.message());
    served(&mut fixture.client().await, 10).await;
}

/// A gRPC frame that declares more bytes than the call carries is refused as
/// undecodable, not as an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_cut_short_is_refused_as_invalid() {
    use tonic::codegen::{Service, http};
    let fixture = Fixture::start(Limits::default()).await;
    let mut channel = fixture.channel().await;
    // Not compressed, 16 bytes long, and then only 3 of them.
    let body = String::from_utf8(vec![0, 0, 0, 0, 16, 1, 2, 3]).unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/tally.v1.Ledger/LookupAccounts",
            fixture.addr()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(body))
        .unwrap();
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .unwrap();
    let response = channel.call(request).await.unwrap();
    let status = tonic::Status::from_header_map(response.headers()).expect("a status");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("EOF"), "{}", status.message());
    served(&mut fixture.client().await, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_refused_and_others_are_served() {
    let limits = Limits {
        message_bytes_max: 16 << 10,
        ..Limits::default()
    };
    let fixture = Fixture::start(limits).await;
    let mut client = fixture.client().await.max_encoding_message_size(usize::MAX);
    let transfers = (1..=2_000).map(|id| transfer_to_proto(&pay(id))).collect();
    let status = client
        .create_transfers(v1::CreateTransfersRequest {
            transfers,
            ..Default::default()
        })
        .await
        .expect_err("over message_bytes_max");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    served(&mut fixture.client().await, 10).await;
    served(&mut client, 11).await;
}

/// A message prefix declaring 60 KiB, then 40 KiB of it in 4 KiB frames, then
/// nothing.
struct Stalled(usize);

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let bytes = match self.0 {
            0 => vec![0, 0, 0, 0xf0, 0],
            1..=10 => vec![0; 4 << 10],
            _ => return std::task::Poll::Pending,
        };
        self.0 += 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(bytes)))))
    }
}

/// Sends a `CreateTransfers` call whose request stalls; answers its status.
async fn stalled_call(addr: SocketAddr) -> tonic::Status {
    let response = tokio::time::timeout(Duration::from_secs(10), held_call(addr))
        .await
        .expect("refused, not left waiting")
        .unwrap();
    tonic::Status::from_header_map(response.headers()).expect("a status")
}

/// 700 payments from `first`: a request of about 40 KiB.
fn forty_kib(first: u128) -> v1::CreateTransfersRequest {
    let request = v1::CreateTransfersRequest {
        transfers: (first..first + 700)
            .map(|id| transfer_to_proto(&pay(id)))
            .collect(),
        ..Default::default()
    };
    assert!(prost::Message::encoded_len(&request) > 32 << 10);
    request
}

/// A request that stalls is refused at the header timeout, and every call gives its
/// bytes back once read: calls of over half the address's budget pass one after
/// another. (The refusal past a budget is a unit test of the budgeted body.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_is_refused_and_every_call_gives_its_bytes_back() {
    let limits = Limits {
        message_bytes_max: 60 << 10,
        request_bytes_per_ip_max: 64 << 10,
        header_timeout: Duration::from_millis(1_500),
        ..Limits::default()
    };
    let fixture = Fixture::start(limits).await;
    let mut client = fixture.client().await;
    served(&mut client, 10).await;
    let started = Instant::now();
    let status = stalled_call(fixture.addr()).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(1_400));
    // Calls of over half the bound, one after another: each gives its bytes back, or
    // the second would be refused.
    for first in (1_000..6_000).step_by(1_000) {
        let answer = client.create_transfers(forty_kib(first)).await.unwrap();
        assert_eq!(answer.into_inner().results.len(), 700);
    }
}

/// The message limit bounds requests, not answers: a batch under it whose answer
/// (each transfer with both accounts' balances) is larger is applied and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_the_message_limit_is_still_sent() {
    let bytes_max = 100_000;
    let limits = Limits {
        message_bytes_max: bytes_max,
        ..Limits::default()
    };
    let fixture = Fixture::start(limits).await;
    let mut client = fixture.client().await.max_decoding_message_size(usize::MAX);
    served(&mut client, 10).await;
    // Amounts past 2^64, and every balance of both accounts set: each balance takes
    // both halves of its U128 in the answer.
    let large = |id: u128, from: u128, flags: TransferFlags| Transfer {
        amount: 1 << 65,
        debit_account_id: from,
        credit_account_id: 3 - from,
        flags,
        ..pay(id)
    };
    let set_up = [
        large(20, 1, TransferFlags::PENDING),
        large(21, 2, TransferFlags::PENDING),
        large(22, 2, TransferFlags::empty()),
    ];
    let request = v1::CreateTransfersRequest {
        transfers: set_up.iter().map(transfer_to_proto).collect(),
        ..Default::default()
    };
    client.create_transfers(request).await.unwrap();
    let request = v1::CreateTransfersRequest {
        transfers: (100..1_100)
            .map(|id| transfer_to_proto(&large(id, 1, TransferFlags::empty())))
            .collect(),
        balances: true,
        ..Default::default()
    };
    assert!(prost::Message::encoded_len(&request) < bytes_max);
    let answer = client.create_transfers(request).await.unwrap().into_inner();
    assert!(prost::Message::encoded_len(&answer) > bytes_max);
    assert_eq!(answer.results.len(), 1_000);
}

/// A page of change events ends before the server's message limit, and `timestamp_last`
/// takes the client on: every event comes back once, in order, whatever the page size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_event_pages_fit_the_message_limit() {
    let bytes_max = 16 << 10;
    let limits = Limits {
        message_bytes_max: bytes_max,
        ..Limits::default()
    };
    let fixture = Fixture::start(limits).await;
    let mut client = fixture.client().await.max_decoding_message_size(usize::MAX);
    served(&mut client, 10).await;
    let big = |id: u128| Transfer {
        user_data_128: u128::MAX - id,
        user_data_64: u64::MAX,
        ..pay(id)
    };
    for first in (100..400).step_by(50) {
        let transfers = (first..first + 50)
            .map(|id| transfer_to_proto(&big(id)))
            .collect();
        let request = v1::CreateTransfersRequest {
            transfers,
            ..Default::default()
        };
        client.create_transfers(request).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut timestamp_min = 0;
    loop {
        let filter = v1::ChangeEventsFilter {
            timestamp_min,
            limit: 0,
        };
        let page = client.get_change_events(filter).await.unwrap().into_inner();
        assert!(prost::Message::encoded_len(&page) <= bytes_max);
        if page.events.is_empty() {
            break;
        }
        seen.extend(page.events.iter().map(|event| event.timestamp));
        timestamp_min = page.timestamp_last + 1;
    }
    // Two accounts, one payment, then 300 transfers of about 250 bytes on the wire.
    assert_eq!(seen.len(), 303);
    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "each once, in order"
    );
}

/// A server over a fresh ledger that knows one token (`tly_good`, every right), with
/// `limits`; the directories live as long as the server is used.
async fn server_with_a_token(limits: Limits) -> (RunningServer, [tempfile::TempDir; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let tokens = files.path().join("tokens.jsonl");
    std::fs::write(&tokens, token_line("tly_good", &Rights::all())).unwrap();
    let ledger = Ledger::open(Config::new(dir.path())).unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    config.tokens = Some(tokens);
    config.limits = limits;
    let server = Server::start(ledger, config).await.unwrap();
    (server, [dir, files])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_known_token_is_refused_before_its_message_is_decoded() {
    let (server, _dirs) = server_with_a_token(Limits {
        message_bytes_max: 16 << 10,
        ..Limits::default()
    })
    .await;
    let mut client = LedgerClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap()
        .max_encoding_message_size(usize::MAX);
    // Over message_bytes_max: were it decoded first, the answer would be OUT_OF_RANGE.
    let transfers = (1..=2_000).map(|id| transfer_to_proto(&pay(id))).collect();
    let status = client
        .create_transfers(v1::CreateTransfersRequest {
            transfers,
            ..Default::default()
        })
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let garbage = Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01]);
    let channel = Channel::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = raw_call(channel, "/tally.v1.Ledger/CreateAccounts", garbage).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let stats = server.stats();
    for operation in [Operation::CreateTransfers, Operation::CreateAccounts] {
        assert_eq!(
            stats.calls(operation, Code::Unauthenticated),
            1,
            "{operation}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_event_limit_is_invalid() {
    let fixture = Fixture::start(Limits::default()).await;
    let mut client = fixture.client().await;
    let transfers = (1..=8_191).map(|id| transfer_to_proto(&pay(id))).collect();
    let status = client
        .create_transfers(v1::CreateTransfersRequest {
            transfers,
            ..Default::default()
        })
        .await
        .expect_err("8,191 events");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("8191"), "{}", status.message());
    assert!(ledger_of(&fixture.server).lookup_transfers(&[1]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_limit_are_closed_at_once() {
    let limits = Limits {
        connections_per_ip_max: 2,
        ..Limits::default()
    };
    let fixture = Fixture::start(limits).await;
    let mut first = fixture.client().await;
    let mut second = fixture.client().await;
    served(&mut first, 10).await;
    for _ in 0..3 {
        let mut third = TcpStream::connect(fixture.addr()).await.unwrap();
        third
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok();
        closed_within(&mut third, Duration::from_secs(2)).await;
    }
    served(&mut first, 11).await;
    served(&mut second, 12).await;
    let stats = fixture.server.stats();
    assert_eq!(stats.connections_refused(), 3);
    assert_eq!(stats.connections_open(), 2);
    // A closed connection gives its slot back.
    drop(second);
    let given_back = settles(Duration::from_secs(5), || stats.connections_open() <= 1).await;
    assert!(given_back, "slot not given back");
    served(&mut fixture.client().await, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let fixture = Fixture::start(limits).await;
    let mut silent = TcpStream::connect(fixture.addr()).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(250), "closed early: {took:?}");
    assert_eq!(fixture.server.stats().connections_timed_out(), 1);
    served(&mut fixture.client().await, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_quiet_is_closed_after_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(400),
        ..Limits::default()
    };
    let fixture = Fixture::start(limits).await;
    let mut quiet = TcpStream::connect(fixture.addr()).await.unwrap();
    quiet
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut quiet, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(350), "closed early: {took:?}");
    assert_eq!(fixture.server.stats().connections_timed_out(), 1);
}

/// Idle time counts calls, not bytes: a live client that answers the server's
/// keepalive pings but makes no call is closed after the idle timeout, while a call in
/// flight (a stream held open) keeps its connection however long it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_time_counts_calls_not_the_answers_to_keepalive_pings() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let limits = Limits {
        idle_timeout: Duration::from_millis(600),
        keepalive_interval: Duration::from_millis(100),
        ..Limits::default()
    };
    let fixture = Fixture::start(limits).await;
    let stats = fixture.server.stats();
    let mut health = HealthClient::new(fixture.channel().await);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let mut watch = health.watch(request).await.unwrap().into_inner();
    watch.message().await.unwrap().unwrap();
    // One call, then none, on a connection of its own.
    let mut client = fixture.client().await;
    served(&mut client, 10).await;
    let started = Instant::now();
    assert!(
        settles(Duration::from_secs(5), || stats.connections_timed_out()
            == 1)
        .await,
        "a connection without calls stayed open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed early"
    );
    // Twice the idle timeout more: the watch's connection is still open.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(stats.connections_timed_out(), 1);
    drop(watch);
}

/// Calls refused for their token are no activity: a connection that makes nothing
/// else is closed after the idle timeout, however often it calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_known_token_do_not_keep_a_connection_open() {
    let (server, _dirs) = server_with_a_token(Limits {
        idle_timeout: Duration::from_millis(600),
        ..Limits::default()
    })
    .await;
    let stats = server.stats();
    let mut client = LedgerClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let started = Instant::now();
    let mut refused = 0;
    while stats.connections_timed_out() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{refused} refused calls kept the connection open"
        );
        let answer = client.lookup_accounts(v1::LookupRequest::default()).await;
        if answer.is_err_and(|status| status.code() == Code::Unauthenticated) {
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused >= 3, "{refused}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed early"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_does_not_starve_a_good_client() {
    let limits = Limits {
        connections_per_ip_max: 4,
        connections_max: 16,
        header_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let fixture = Fixture::start(limits).await;
    let addr = fixture.addr();
    // The flood comes from another loopback address, as an attacker's would.
    let flood = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..300 {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(stream) = socket.connect(addr).await {
                held.push(stream);
            }
        }
        held
    });
    let mut client = fixture.client().await;
    for id in 10..40 {
        served(&mut client, id).await;
    }
    let held = flood.await.unwrap();
    assert!(held.len() >= 250, "the flood itself failed: {}", held.len());
    // The kernel completes a handshake before the server accepts the connection and
    // counts its refusal: wait for the accept loop to catch up with the backlog.
    let stats = fixture.server.stats();
    settles(Duration::from_secs(10), || {
        stats.connections_refused() >= 250
    })
    .await;
    assert!(
        stats.connections_refused() >= 250,
        "{}",
        stats.connections_refused()
    );
    served(&mut fixture.client().await, 99).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_serving_then_not_serving_on_shutdown() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let fixture = Fixture::start(Limits::default()).await;
    let mut health = HealthClient::new(fixture.channel().await);
    for service in ["tally.v1.Ledger", ""] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "tally.v1.Ledger".to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let metrics = fixture.server.metrics_addr().unwrap();
    assert!(http_get(metrics, "/ready").await.contains(" 200 "));
    let Fixture { _dir, server } = fixture;
    let stopping = tokio::spawn(server.shutdown());
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    // A watch is a call in flight: it ends with the stop, so that the drain does not
    // wait for its client to let go (the client here never does).
    assert!(watch.message().await.unwrap().is_none(), "the watch ended");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown drained before its timeout")
        .unwrap()
        .unwrap();
    drop(health);
}

/// Sends a `CreateTransfers` call whose request never ends, on a connection of its own;
/// its answer, when one comes.
async fn held_call(
    addr: SocketAddr,
) -> Result<tonic::codegen::http::Response<tonic::body::Body>, tonic::transport::Error> {
    use tonic::codegen::{Service, http};
    let mut channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/tally.v1.Ledger/CreateTransfers"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Stalled(0)))
        .unwrap();
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .unwrap();
    channel.call(request).await
}

/// A call whose client never lets go (its request never ends, and the header timeout
/// is far off) does not stop shutdown: `/ready` says 503 while the calls drain, and
/// the drain timeout ends the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_held_open_does_not_stop_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Config::new(dir.path())).unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    let drain_timeout = Duration::from_millis(1_000);
    config.drain_timeout = drain_timeout;
    config.limits.header_timeout = Duration::from_secs(60);
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::start(ledger, config).await.unwrap();
    let metrics = server.metrics_addr().unwrap();
    let stats = Arc::clone(server.stats());
    let held = tokio::spawn(held_call(server.local_addr()));
    assert!(settles(Duration::from_secs(5), || stats.connections_open() == 1).await);
    // Time for the call's first frames to reach the server.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let stopping = tokio::spawn(server.shutdown());
    let mut ready = String::new();
    for _ in 0..100 {
        ready = http_get(metrics, "/ready").await;
        if ready.contains(" 503 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ready.contains(" 503 "), "draining, not ready: {ready}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown ends after the drain timeout")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= drain_timeout,
        "the held call was waited for"
    );
    // Its connection was closed under it.
    let ended = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held call ended with the server")
        .unwrap();
    let refused = ended.map_or(true, |answer| {
        tonic::Status::from_header_map(answer.headers()).is_some()
    });
    assert!(refused, "the held call got no answer of its own");
    // The ledger was shut down: its directory opens again.
    Ledger::open(Config::new(dir.path()))
        .unwrap()
        .shutdown()
        .unwrap();
}

/// One HTTP/1.1 request on a fresh connection; the whole response.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: tally\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// Polls `done` every 10 ms for up to `within`: whether it came true. For counters the
/// server updates a moment after the client sees the effect.
async fn settles(within: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// One peer holding idle connections to the metrics port cannot keep another's
/// readiness probe waiting: past its share, its connections are closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_hold_up_probes() {
    let fixture = Fixture::start(Limits::default()).await;
    let metrics = fixture.server.metrics_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..12 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        held.push(socket.connect(metrics).await.unwrap());
    }
    // Well within the 2 s a silent scraper keeps its place.
    let ready = tokio::time::timeout(Duration::from_secs(1), http_get(metrics, "/ready"))
        .await
        .expect("answered while the others are held");
    assert!(ready.contains(" 200 "), "{ready}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_as_prometheus_text() {
    let fixture = Fixture::start(Limits::default()).await;
    let mut client = fixture.client().await;
    served(&mut client, 10).await;
    let metrics = fixture.server.metrics_addr().expect("metrics address");
    let response = http_get(metrics, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("text/plain; version=0.0.4"), "{response}");
    for line in [
        "tally_events_committed_total 3",
        "tally_server_calls_total{operation=\"create_transfers\",code=\"OK\"} 1",
        "tally_server_events_total{operation=\"create_accounts\"} 2",
        "tally_server_connections_open 1",
        "tally_server_connections_refused_total 0",
    ] {
        assert!(response.contains(line), "missing {line:?} in\n{response}");
    }
    let missing = http_get(metrics, "/other").await;
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    // Health and readiness for probes that speak HTTP.
    let health = http_get(metrics, "/health").await;
    assert!(
        health.starts_with("HTTP/1.1 200 ") && health.ends_with("ok\n"),
        "{health}"
    );
    let ready = http_get(metrics, "/ready?probe=1").await;
    assert!(
        ready.starts_with("HTTP/1.1 200 ") && ready.ends_with("ready\n"),
        "{ready}"
    );
    // A request head that never ends is cut off, not buffered without bound.
    let mut endless = TcpStream::connect(metrics).await.unwrap();
    let chunk = vec![b'a'; 4096];
    let mut written = 0;
    while endless.write_all(&chunk).await.is_ok() && written < (1 << 20) {
        written += chunk.len();
    }
    let mut response = String::new();
    let _ = endless.read_to_string(&mut response).await;
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 431 "),
        "{response}"
    );
    assert!(
        http_get(metrics, "/metrics")
            .await
            .starts_with("HTTP/1.1 200 ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_with_a_retry_hint() {
    let fixture = Fixture::start_with(Limits::default(), |config| {
        config.queue_batches_max = 1;
        config.backpressure = Backpressure::Busy;
    })
    .await;
    let mut client = fixture.client().await;
    served(&mut client, 1).await;
    let mut calls = tokio::task::JoinSet::new();
    for id in 0..256u128 {
        let mut client = client.clone();
        calls.spawn(async move {
            let transfers = vec![transfer_to_proto(&pay(1_000 + id))];
            client
                .create_transfers(v1::CreateTransfersRequest {
                    transfers,
                    ..Default::default()
                })
                .await
        });
    }
    let mut busy = None;
    while let Some(answer) = calls.join_next().await {
        if let Err(status) = answer.unwrap() {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            busy = Some(status);
        }
    }
    let status = busy.expect("256 concurrent calls never filled a one-batch queue");
    let hint = status.metadata().get("retry-after-ms").expect("retry hint");
    assert_eq!(hint.to_str().unwrap(), "5");
    assert!(
        status.message().contains("retry after 5 ms"),
        "{}",
        status.message()
    );
}

fn ledger_of(server: &tally_server::RunningServer) -> &tally_engine::Ledger {
    match server.backend() {
        tally_server::Backend::Node(ledger) => ledger,
        other => panic!("a single-node server was expected, not {other:?}"),
    }
}

/// A replica that knows no leader answers every call `UNAVAILABLE`, so it says it is
/// not ready (`/ready` 503, health `NOT_SERVING`) until one is elected; then it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_ready_only_while_it_knows_a_leader() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let dir = tempfile::tempdir().unwrap();
    let members: std::collections::BTreeMap<u64, String> = (1..=2)
        .map(|id| (id, format!("127.0.0.1:{}", tally_testkit::free_port())))
        .collect();
    let open = |id: u64| {
        let config = tally_cluster::ClusterConfig::new(
            id,
            members.clone(),
            dir.path().join(format!("r{id}")),
        );
        tally_cluster::Replica::open(config)
    };
    // One of two: no majority, no leader.
    let first = Arc::new(open(1).await.unwrap());
    let backend = tally_server::Backend::Replica(
        tally_cluster::HostedReplica::on_current_runtime(Arc::clone(&first)).unwrap(),
    );
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::start_backend(backend, config).await.unwrap();
    let metrics = server.metrics_addr().unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let whole = || HealthCheckRequest {
        service: String::new(),
    };
    let mut status_becomes = async |want: ServingStatus, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let status = health.check(whole()).await.unwrap().into_inner().status();
            if status == want || Instant::now() >= deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let status = status_becomes(ServingStatus::NotServing, Duration::from_secs(5)).await;
    assert_eq!(status, ServingStatus::NotServing);
    let ready = http_get(metrics, "/ready").await;
    assert!(
        ready.contains(" 503 ") && ready.contains("no leader"),
        "{ready}"
    );
    // The second replica starts: a leader is elected, and the replica is ready.
    let second = open(2).await.unwrap();
    let status = status_becomes(ServingStatus::Serving, Duration::from_secs(15)).await;
    assert_eq!(status, ServingStatus::Serving);
    let ready = http_get(metrics, "/ready").await;
    assert!(ready.contains(" 200 "), "{ready}");
    server.shutdown().await.unwrap();
    first.shutdown().await;
    second.shutdown().await;
}
