//! Times the wire cost of a full batch of transfers, per event: the client's conversion
//! and encoding, the server's decoding and conversion, and the results both ways; with
//! the transfers as messages and as 128-byte records.
//!
//! `cargo bench -p tally-proto --bench wire_bench -- [ROUNDS]` (`-- --test`: one round)

use prost::Message;
use std::hint::black_box;
use std::time::{Duration, Instant};
use tally_proto::v1;
use tally_types::{BATCH_EVENTS_MAX, ResultCode, Transfer};

fn main() {
    let (arguments, smoke) = tally_testkit::bench_arguments();
    let rounds: u32 = arguments
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(if smoke { 1 } else { 200 });
    let mut rng = tally_testkit::SeededRng::new(7);
    let transfers: Vec<Transfer> = (0..BATCH_EVENTS_MAX)
        .map(|i| Transfer {
            id: u128::from(rng.next_u64()),
            debit_account_id: 1 + u128::from(rng.next_u64() % 1_000_000),
            credit_account_id: 1 + u128::from(rng.next_u64() % 1_000_000),
            amount: 1 + u128::from(rng.next_u64() % 100_000),
            ledger: 156,
            code: 1,
            user_data_64: i as u64,
            ..Transfer::default()
        })
        .collect();
    let mut phases = [Duration::ZERO; 6];
    let mut bytes = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let request = v1::CreateTransfersRequest {
            transfers: transfers
                .iter()
                .map(tally_proto::transfer_to_proto)
                .collect(),
            ..Default::default()
        };
        let wire = request.encode_to_vec();
        phases[0] += start.elapsed();
        bytes = wire.len();

        let start = Instant::now();
        let decoded = v1::CreateTransfersRequest::decode(wire.as_slice()).expect("decodes");
        let back: Vec<Transfer> = decoded
            .transfers
            .iter()
            .enumerate()
            .map(|(i, t)| tally_proto::transfer_from_proto(i, t).expect("converts"))
            .collect();
        phases[1] += start.elapsed();
        assert_eq!(black_box(&back), &transfers);

        let start = Instant::now();
        let records = tally_proto::transfers_to_records(&transfers, false).encode_to_vec();
        phases[4] += start.elapsed();

        let start = Instant::now();
        let decoded = v1::CreateTransfersRequest::decode(records.as_slice()).expect("decodes");
        let from_records = tally_proto::transfers_from_request(&decoded).expect("converts");
        phases[5] += start.elapsed();
        assert_eq!(black_box(&from_records), &transfers);

        let start = Instant::now();
        let results = v1::CreateResults {
            results: back
                .iter()
                .map(|t| v1::CreateResult {
                    code: tally_proto::result_code_to_proto(ResultCode::Ok) as i32,
                    timestamp: t.user_data_64 + 1_795_000_000_000_000_000,
                    ..v1::CreateResult::default()
                })
                .collect(),
        };
        let answer = results.encode_to_vec();
        phases[2] += start.elapsed();

        let start = Instant::now();
        let decoded = v1::CreateResults::decode(answer.as_slice()).expect("decodes");
        let codes = decoded
            .results
            .iter()
            .filter(|r| tally_proto::result_code_from_proto(r.code) == Some(ResultCode::Ok))
            .count();
        phases[3] += start.elapsed();
        assert_eq!(black_box(codes), BATCH_EVENTS_MAX);
    }
    let events = f64::from(rounds) * BATCH_EVENTS_MAX as f64;
    let per_event = |d: Duration| d.as_nanos() as f64 / events;
    println!("wire_bench: {rounds} rounds of {BATCH_EVENTS_MAX} transfers, {bytes} bytes a batch");
    println!(
        "  client: convert + encode request   {:7.1} ns/event",
        per_event(phases[0])
    );
    println!(
        "  server: decode + convert request   {:7.1} ns/event",
        per_event(phases[1])
    );
    println!(
        "  server: encode results             {:7.1} ns/event",
        per_event(phases[2])
    );
    println!(
        "  client: decode results             {:7.1} ns/event",
        per_event(phases[3])
    );
    let total: Duration = phases[..4].iter().sum();
    println!(
        "  total                              {:7.1} ns/event",
        per_event(total)
    );
    println!("  as records (what tally-client sends):");
    println!(
        "  client: encode records             {:7.1} ns/event",
        per_event(phases[4])
    );
    println!(
        "  server: decode records             {:7.1} ns/event",
        per_event(phases[5])
    );
    let records_total = phases[2] + phases[3] + phases[4] + phases[5];
    println!(
        "  total                              {:7.1} ns/event",
        per_event(records_total)
    );
}
