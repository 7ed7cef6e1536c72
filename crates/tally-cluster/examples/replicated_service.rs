//! A payment service whose instances each host one replica of the ledger.
//!
//! Three instances (here three tasks of one process, each with its own data directory
//! and peer address, as three hosts would have) form a cluster. Customers pay a merchant
//! through whichever instance they reach: a follower passes the write to the leader, and
//! the answer comes once a majority has the payment on disk. Then the leader's instance
//! stops, as a crashed host would: the other two elect a new leader, and a payment whose
//! answer was lost is retried with the same transfer id, answered `exists`, never applied
//! twice. Every replica ends with the same state digest.
//!
//! Each instance embeds its replica as it would a single node: `Ledger::open` (here
//! `Ledger::open_async`, on the service's runtime) with a `ClusterConfig` instead of a
//! single node's `Config`, and the same calls.
//!
//! `cargo run -p tally-cluster --example replicated_service [-- DATA_DIR]` (a temporary
//! directory when none is given).

use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};
use tally_cluster::{ClusterConfig, Ledger};
use tally_types::{Account, AccountFlags, Batch, ResultCode, Transfer};

const EUR: u32 = 978;
const BANK: u128 = 1;
const MERCHANT: u128 = 2;
const PRICE: u128 = 399;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    match std::env::args().nth(1) {
        Some(dir) => run(Path::new(&dir)).await,
        None => run(tempfile::tempdir()?.path()).await,
    }
}

async fn run(dir: &Path) -> Result<(), Box<dyn Error>> {
    // Each instance is told every replica's peer address and which one it is.
    let members: BTreeMap<u64, String> = (1..=3)
        .map(|id| Ok((id, format!("127.0.0.1:{}", free_port()?))))
        .collect::<Result<_, std::io::Error>>()?;
    let mut instances = Vec::new();
    for id in 1..=3 {
        let config = ClusterConfig::new(id, members.clone(), dir.join(format!("replica-{id}")));
        instances.push(Some(Ledger::open_async(config).await?));
    }
    let leader = wait_for_leader(&instances).await?;
    println!("replica {leader} leads");

    let any = instances.iter().flatten().next().ok_or("no instance")?;
    let opened = any
        .submit_async(Batch::CreateAccounts(vec![
            account(BANK),
            account(MERCHANT),
        ]))
        .await?;
    assert!(opened.iter().all(|r| r.code == ResultCode::Ok));

    // Payments through every instance, leader and followers alike.
    for n in 0..30u128 {
        let instance = instances[(n % 3) as usize].as_ref().ok_or("gone")?;
        let paid = instance
            .submit_async(Batch::CreateTransfers(vec![pay(100 + n)]))
            .await?;
        assert_eq!(paid[0].code, ResultCode::Ok);
    }
    println!("30 payments acknowledged, each synced on a majority");

    // The leader's host crashes; the survivors elect a new leader.
    let index = instances
        .iter()
        .position(|r| r.as_ref().and_then(Ledger::as_replica).map(|r| r.id()) == Some(leader))
        .ok_or("no leader")?;
    if let Some(crashed) = instances[index].take() {
        crashed.shutdown_async().await?;
    }
    let started = Instant::now();
    let new_leader = wait_for_leader(&instances).await?;
    println!(
        "replica {leader} stopped; replica {new_leader} leads after {} ms",
        started.elapsed().as_millis()
    );

    // A payment whose first answer was lost is sent again, same id: `exists`.
    let survivor = instances.iter().flatten().next().ok_or("no survivor")?;
    let again = survivor
        .submit_async(Batch::CreateTransfers(vec![pay(129), pay(200)]))
        .await?;
    assert_eq!(again[0].code, ResultCode::Exists);
    assert_eq!(again[1].code, ResultCode::Ok);
    let merchant = survivor.lookup_accounts_async(&[MERCHANT]).await?;
    assert_eq!(merchant[0].credits_posted, 31 * PRICE);
    println!("the retried payment answered exists; the merchant holds 31 payments");

    let digests: Vec<_> = instances
        .iter()
        .flatten()
        .filter_map(Ledger::as_replica)
        .map(|r| (r.id(), r.status().applied_index, r.status().digest))
        .collect();
    println!("replicas' (id, applied index, digest): {digests:x?}");
    for instance in instances.iter().flatten() {
        instance.shutdown_async().await?;
    }
    Ok(())
}

async fn wait_for_leader(instances: &[Option<Ledger>]) -> Result<u64, Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let leading = instances
            .iter()
            .flatten()
            .filter_map(Ledger::as_replica)
            .map(|replica| replica.status())
            .find(|status| status.role == "leader");
        if let Some(status) = leading {
            return Ok(status.replica_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("no leader elected within 10 s".into())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn account(id: u128) -> Account {
    Account {
        id,
        ledger: EUR,
        code: 1,
        flags: AccountFlags::empty(),
        ..Account::default()
    }
}

fn pay(id: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: BANK,
        credit_account_id: MERCHANT,
        amount: PRICE,
        ledger: EUR,
        code: 1,
        ..Transfer::default()
    }
}
