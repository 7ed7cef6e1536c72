//! The transfers workload: the shape of TigerBeetle's own `benchmark`, so that Tally and
//! TigerBeetle are measured on the same work.
//!
//! Accounts on one ledger without balance limits ([`Shape::Plain`]), never funded; each
//! submission is one single-phase transfer between two distinct accounts, both picked
//! from the same distribution, uniform or Zipf-skewed. Nothing can fail: every
//! transfer is valid, no account has a limit, and ids are fresh.
//!
//! As in TigerBeetle's `benchmark`: ledger 2, account code 1, a transfer code drawn from
//! 1..=65,535, an amount drawn from an exponential law of mean 10,000 plus 1, random user
//! data, and a credit account equal to the debit account moved to the next one. Its
//! zipfian default exponent is 0.99 (YCSB's), and the popular accounts are spread over
//! the id space rather than being the first ones: here a seeded bijection maps
//! popularity ranks to accounts (TigerBeetle shuffles its hottest few thousand accounts
//! and draws the rest uniformly; this keeps the power law over every rank).

use crate::mix::{Kind, Request, RequestStream};
use crate::population::{LEDGER_PLAIN, Population, RunIds, Shape};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution as _, Exp, Zipf};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use tally_types::Transfer;

/// Zipf exponent of account popularity by default: YCSB's 0.99, TigerBeetle's default.
pub const ZIPF_S_DEFAULT: f64 = 0.99;
/// Mean of the exponential law the amounts are drawn from (before adding 1).
pub const AMOUNT_MEAN: f64 = 10_000.0;

/// How the two accounts of a transfer are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Every account equally likely.
    Uniform,
    /// Account of popularity rank k picked with probability proportional to 1/k^s
    /// (s: --zipf).
    Zipfian,
}

impl Distribution {
    /// The name in reports (`snake_case`).
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        }
    }
}

/// The workload's parameters; recorded in traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransfersSpec {
    /// How accounts are picked.
    pub distribution: Distribution,
    /// Zipf exponent (zipfian only): 0 is uniform, larger is more skewed.
    pub zipf_s: f64,
}

impl Default for TransfersSpec {
    fn default() -> Self {
        TransfersSpec {
            distribution: Distribution::Zipfian,
            zipf_s: ZIPF_S_DEFAULT,
        }
    }
}

#[derive(Debug)]
enum Picker {
    Uniform,
    /// Popularity ranks from a Zipf law, mapped to accounts by
    /// `(rank * stride + offset) mod accounts`, a bijection since `stride` is coprime
    /// with `accounts`.
    Zipfian {
        ranks: Zipf<f64>,
        stride: u64,
        offset: u64,
    },
}

/// Deterministic generator of the transfers workload.
#[derive(Debug)]
pub struct TransfersGenerator {
    population: Population,
    accounts: u64,
    picker: Picker,
    rng: Xoshiro256PlusPlus,
    amount: Exp<f64>,
    ids: RunIds,
}

impl TransfersGenerator {
    /// A generator over `population` picking accounts as `spec` says, seeded by `seed`:
    /// the same arguments give the same request stream.
    ///
    /// # Panics
    /// If the population is not [`Shape::Plain`] or has fewer than two accounts, or the
    /// exponent is negative or not finite (the command line refuses these).
    pub fn new(population: Population, spec: &TransfersSpec, seed: u64) -> TransfersGenerator {
        assert_eq!(population.spec.shape, Shape::Plain);
        let accounts = population.spec.users;
        assert!(accounts >= 2, "a transfer needs two distinct accounts");
        assert!(spec.zipf_s.is_finite() && spec.zipf_s >= 0.0);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let picker = match spec.distribution {
            Distribution::Uniform => Picker::Uniform,
            Distribution::Zipfian => Picker::Zipfian {
                ranks: Zipf::new(accounts as f64, spec.zipf_s)
                    .unwrap_or_else(|error| panic!("checked Zipf parameters: {error}")),
                stride: coprime_stride(&mut rng, accounts),
                offset: rng.random_range(0..accounts),
            },
        };
        let amount = Exp::new(1.0 / AMOUNT_MEAN)
            .unwrap_or_else(|error| panic!("constant exponential law: {error}"));
        TransfersGenerator {
            population,
            accounts,
            picker,
            rng,
            amount,
            ids: RunIds::new(seed),
        }
    }

    /// One account index, below `accounts`.
    fn pick(&mut self) -> u64 {
        let accounts = self.accounts;
        let index = match &self.picker {
            Picker::Uniform => self.rng.random_range(0..accounts),
            Picker::Zipfian {
                ranks,
                stride,
                offset,
            } => {
                let rank = (ranks.sample(&mut self.rng) as u64).clamp(1, accounts) - 1;
                let spread = u128::from(rank) * u128::from(*stride) + u128::from(*offset);
                (spread % u128::from(accounts)) as u64
            }
        };
        debug_assert!(index < accounts);
        index
    }

    /// The submission at `offset_ns`: one transfer between two distinct accounts.
    pub fn next_at(&mut self, offset_ns: u64) -> Request {
        let debit = self.pick();
        let mut credit = self.pick();
        if credit == debit {
            credit = (credit + 1) % self.accounts;
        }
        assert_ne!(debit, credit);
        // The draw is a sample, not money arithmetic: it picks an integer amount.
        let amount = self.amount.sample(&mut self.rng) as u128 + 1;
        let debit = self.population.plain(debit);
        let transfer = Transfer {
            id: self.ids.next(debit),
            debit_account_id: debit,
            credit_account_id: self.population.plain(credit),
            amount,
            user_data_128: self.rng.random(),
            user_data_64: self.rng.random(),
            user_data_32: self.rng.random(),
            ledger: LEDGER_PLAIN,
            code: self.rng.random_range(1..=u16::MAX),
            ..Transfer::default()
        };
        Request {
            offset_ns,
            kind: Kind::Transfer,
            transfers: vec![transfer],
        }
    }
}

impl RequestStream for TransfersGenerator {
    fn next_at(&mut self, offset_ns: u64) -> Request {
        TransfersGenerator::next_at(self, offset_ns)
    }
}

/// A seeded stride in `1..count` coprime with `count` (1 when `count` is 2).
fn coprime_stride(rng: &mut Xoshiro256PlusPlus, count: u64) -> u64 {
    let mut stride = rng.random_range(1..count);
    while gcd(stride, count) != 1 {
        stride = stride % (count - 1) + 1;
    }
    stride
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use crate::population::PopulationSpec;
    use std::collections::HashSet;
    use tally_types::{ResultCode, TransferFlags};

    const ACCOUNTS: u64 = 1_000;

    fn population() -> Population {
        Population::new(PopulationSpec {
            shape: Shape::Plain,
            users: ACCOUNTS,
            ..PopulationSpec::default()
        })
    }

    fn draw(distribution: Distribution, seed: u64, count: u64) -> Vec<Transfer> {
        let spec = TransfersSpec {
            distribution,
            ..TransfersSpec::default()
        };
        let mut generator = TransfersGenerator::new(population(), &spec, seed);
        (0..count)
            .flat_map(|i| generator.next_at(i * 1_000).transfers)
            .collect()
    }

    /// How many times each account was picked, debit or credit, most picked first.
    fn picks(transfers: &[Transfer]) -> Vec<u64> {
        let population = population();
        let mut counts = vec![0u64; ACCOUNTS as usize];
        for transfer in transfers {
            for id in [transfer.debit_account_id, transfer.credit_account_id] {
                let slot = population.slot(id).expect("an account of the population");
                counts[slot] += 1;
            }
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts
    }

    #[test]
    fn transfers_join_two_distinct_accounts_of_the_range() {
        let population = population();
        for distribution in [Distribution::Uniform, Distribution::Zipfian] {
            for transfer in draw(distribution, 1, 50_000) {
                let debit = population.slot(transfer.debit_account_id);
                let credit = population.slot(transfer.credit_account_id);
                assert!(debit.is_some_and(|s| s < ACCOUNTS as usize));
                assert!(credit.is_some_and(|s| s < ACCOUNTS as usize));
                assert_ne!(debit, credit, "{distribution:?}");
            }
        }
    }

    #[test]
    fn zipfian_picks_are_skewed_and_uniform_ones_are_not() {
        let uniform_share = 1.0 / ACCOUNTS as f64;
        let share = |counts: &[u64]| counts[0] as f64 / counts.iter().sum::<u64>() as f64;
        // s = 0.99 over 1,000 accounts: the most popular takes about 13% of the picks.
        let zipfian = share(&picks(&draw(Distribution::Zipfian, 2, 50_000)));
        assert!(zipfian > 50.0 * uniform_share, "top share {zipfian}");
        // 100,000 picks over 1,000 accounts: about 100 each, the busiest well under 150.
        let uniform = share(&picks(&draw(Distribution::Uniform, 2, 50_000)));
        assert!(uniform < 1.5 * uniform_share, "top share {uniform}");
    }

    #[test]
    fn zipfian_popular_accounts_are_spread_over_the_ids() {
        let population = population();
        let mut counts = vec![0u64; ACCOUNTS as usize];
        for transfer in draw(Distribution::Zipfian, 3, 50_000) {
            let slot = population.slot(transfer.debit_account_id).expect("slot");
            counts[slot] += 1;
        }
        let mut by_count: Vec<usize> = (0..counts.len()).collect();
        by_count.sort_unstable_by_key(|slot| std::cmp::Reverse(counts[*slot]));
        let hot: Vec<usize> = by_count[..10].to_vec();
        assert!(hot.iter().any(|slot| *slot >= 10), "hot accounts {hot:?}");
    }

    #[test]
    fn the_stream_is_seeded_with_fresh_valid_single_phase_transfers() {
        let first = draw(Distribution::Zipfian, 4, 20_000);
        assert_eq!(first, draw(Distribution::Zipfian, 4, 20_000));
        assert_ne!(first, draw(Distribution::Zipfian, 5, 20_000));
        let mut ids = HashSet::new();
        for transfer in &first {
            assert!(ids.insert(transfer.id), "duplicate id");
            assert!(tally_types::id_is_valid(transfer.id));
            assert_eq!(transfer.flags, TransferFlags::empty());
            assert!(transfer.amount >= 1 && transfer.code >= 1);
        }
        let mean = first.iter().map(|t| t.amount as f64).sum::<f64>() / first.len() as f64;
        assert!(
            (mean / (AMOUNT_MEAN + 1.0) - 1.0).abs() < 0.05,
            "mean {mean}"
        );
    }

    #[test]
    fn the_model_predicts_ok_for_every_transfer() {
        let model = Model::new(population());
        for distribution in [Distribution::Uniform, Distribution::Zipfian] {
            for transfer in draw(distribution, 6, 20_000) {
                assert_eq!(model.predict(&transfer), Some(ResultCode::Ok));
            }
        }
    }

    #[test]
    fn coprime_strides_make_a_bijection() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        for count in [2u64, 3, 10, 64, 1_000, 997] {
            let stride = coprime_stride(&mut rng, count);
            let images: HashSet<u64> = (0..count).map(|r| r * stride % count).collect();
            assert_eq!(images.len() as u64, count, "count {count} stride {stride}");
        }
    }
}
