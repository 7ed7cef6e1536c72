//! Support code shared by Tally's tests, benches and fuzzing (never by production code).
//!
//! * [`SeededRng`]: a tiny portable RNG, so a failing seed replays anywhere.
//! * [`account`] and [`transfer`]: record builders with test defaults.
//! * [`workload`]: seeded random ledger traffic for differential tests.
//! * [`reference`](mod@reference): an independent model of the operations, written from the
//!   specification, for differential tests of the state machine.
//! * [`free_port`]: a loopback port for a test's server or replica.
//! * `fuzz` (feature `fuzz`): the fuzz targets, shared by the cargo-fuzz project in
//!   `fuzz/` and this crate's corpus replay test.
#![deny(missing_docs)]

use tally_types::{Account, AccountFlags, ChangeEvent, Transfer, TransferFlags};

#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod reference;
pub mod workload;

/// A loopback port nobody listens on now and that this process has not handed out
/// before: the listener is dropped, so the kernel may offer the same port again, and
/// two replicas of one test cluster were once given one port (one as its client port,
/// one as its peer port). The race with another process taking it in between is
/// accepted in tests.
///
/// # Panics
/// If no port can be bound, or a thousand tries all return ports handed out already.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1_000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a loopback port")
            .port();
        if given.insert(port) {
            return port;
        }
    }
    panic!("no loopback port left that was not handed out already");
}

/// The ledger the builders use unless told otherwise: CNY, 2 decimals.
pub const TEST_LEDGER: u32 = 156;

/// An account with code 1 and zero balances.
pub fn account(id: u128, ledger: u32, flags: AccountFlags) -> Account {
    Account {
        id,
        ledger,
        code: 1,
        flags,
        ..Account::default()
    }
}

/// The change event of account `timestamp` created at `timestamp`, on ledger 1: a
/// journal's simplest event, for tests of its files.
pub fn account_created_event(timestamp: u64) -> ChangeEvent {
    ChangeEvent::account_created(Account {
        id: u128::from(timestamp),
        ledger: 1,
        code: 1,
        timestamp,
        ..Account::default()
    })
}

/// A single-phase transfer on [`TEST_LEDGER`] with code 1.
pub fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: TEST_LEDGER,
        code: 1,
        ..Transfer::default()
    }
}

/// Accounts 1 (whose debits may not exceed its credits), 2 and 3 on [`TEST_LEDGER`]:
/// those of [`transfers_with_every_outcome`].
pub fn accounts_for_every_outcome() -> Vec<Account> {
    vec![
        account(1, TEST_LEDGER, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(2, TEST_LEDGER, AccountFlags::empty()),
        account(3, TEST_LEDGER, AccountFlags::empty()),
    ]
}

/// Three batches of transfers on [`TEST_LEDGER`] between accounts 1 (whose debits
/// may not exceed its credits), 2 and 3 ([`accounts_for_every_outcome`]), with every
/// kind of outcome: applied, over the
/// limit, a pending transfer then its partial post, a chain failed by its second event.
pub fn transfers_with_every_outcome() -> Vec<Vec<Transfer>> {
    let mut pending = transfer(13, 1, 3, 20);
    pending.flags = TransferFlags::PENDING;
    let mut linked = transfer(14, 1, 3, 10);
    linked.flags = TransferFlags::LINKED;
    let mut post = transfer(16, 1, 3, 0);
    post.flags = TransferFlags::POST_PENDING_TRANSFER;
    post.pending_id = 13;
    post.amount = 15;
    vec![
        vec![transfer(10, 2, 1, 100), transfer(11, 1, 3, 30)],
        vec![transfer(12, 1, 3, 500), pending],
        vec![linked, transfer(15, 1, 3, 1000), post],
    ]
}

/// The arguments of a benchmark program (`[[bench]] harness = false`), without the
/// `--bench` that `cargo bench` adds, and whether `--test` asked for a smoke run (as
/// `cargo bench -- --test` does): then the program runs a tiny configuration.
pub fn bench_arguments() -> (Vec<String>, bool) {
    let mut smoke = false;
    let arguments = std::env::args()
        .skip(1)
        .filter(|argument| match argument.as_str() {
            "--bench" => false,
            "--test" => {
                smoke = true;
                false
            }
            _ => true,
        })
        .collect();
    (arguments, smoke)
}

/// splitmix64: a tiny portable RNG. The same seed gives the same sequence on every
/// machine, so a failing seed replays the same failure anywhere. Any seed works,
/// zero included.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed)
    }

    /// The next value of the sequence, uniform over `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0); the modulo bias is irrelevant for tests.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no values");
        self.next_u64() % n
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            assert!(seen.insert(free_port()));
        }
    }

    #[test]
    fn sequences_are_fixed_by_the_seed() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
        // splitmix64 of seed 0: the published first output.
        assert_eq!(SeededRng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        assert!((0..1000).all(|_| a.below(10) < 10));
    }
}
