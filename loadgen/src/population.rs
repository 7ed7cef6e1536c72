//! Who pays whom: users, merchants, system accounts and the foreign-currency ledgers,
//! with their ids, and the setup (account creation and pre-midnight funding). Or, for the
//! transfers workload ([`Shape::Plain`]), only accounts without balance limits on one
//! ledger, never funded.
//!
//! An account's slot in the load generator's own balance model is computed from its
//! id, not looked up: `id = (kind << 64) | (ledger << 32) | (slot + 1)`. The low 32
//! bits are unique over the whole population, so they serve as each account's
//! placement key (`--placement-bits 32`), and transfers carry their customer's
//! ([`transfer_id`]).

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_types::currency::{CurrencyTable, decimal_to_minor};
use tally_types::{Account, AccountFlags, BATCH_EVENTS_MAX, Batch, Transfer};

/// The CNY ledger (ISO 4217 156): users, merchants and the domestic system accounts.
pub const LEDGER_CNY: u32 = 156;

/// A single-phase transfer on the CNY ledger.
pub fn cny_transfer(id: u128, debit: u128, credit: u128, amount: u128, code: u16) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: LEDGER_CNY,
        code,
        ..Transfer::default()
    }
}

/// The ledger of the transfers workload's accounts: 2, as in TigerBeetle's `benchmark`
/// (not a currency, so scale 0).
pub const LEDGER_PLAIN: u32 = 2;

/// Foreign ledgers for cross-border orders, with the CNY price of one unit (2016-ish).
pub const FOREIGN: &[(u32, &str, &str)] = &[
    (840, "USD", "6.85"),
    (978, "EUR", "7.35"),
    (392, "JPY", "0.0625"),
    (344, "HKD", "0.88"),
];

/// Account codes (the account's type).
pub mod account_code {
    /// A shopper.
    pub const USER: u16 = 1;
    /// A domestic merchant.
    pub const MERCHANT: u16 = 2;
    /// The banks' settlement account.
    pub const BANK: u16 = 10;
    /// The return-shipping insurer.
    pub const INSURER: u16 = 11;
    /// The money-market fund.
    pub const MONEY_MARKET_FUND: u16 = 12;
    /// The small-business loan book.
    pub const LOAN_BOOK: u16 = 13;
    /// A foreign-exchange desk (one on CNY, one per foreign ledger).
    pub const FX_DESK: u16 = 14;
    /// A merchant on a foreign ledger.
    pub const FOREIGN_MERCHANT: u16 = 15;
    /// An account of the transfers workload (1, as in TigerBeetle's `benchmark`).
    pub const PLAIN: u16 = 1;
}

/// The system accounts on the CNY ledger, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// Where pre-midnight top-ups come from (the banks' settlement account).
    Bank = 0,
    /// Return-shipping insurance premiums go here.
    Insurer = 1,
    /// The money-market fund (Yu'e Bao): subscriptions in, redemptions out.
    MoneyMarketFund = 2,
    /// Small-business loans are disbursed from here.
    LoanBook = 3,
    /// CNY side of cross-border orders.
    FxDesk = 4,
}

const SYSTEM_COUNT: u64 = 5;
const KIND_USER: u128 = 1;
const KIND_MERCHANT: u128 = 2;
const KIND_SYSTEM: u128 = 3;
const KIND_FOREIGN_DESK: u128 = 4;
const KIND_FOREIGN_MERCHANT: u128 = 5;
const KIND_PLAIN: u128 = 6;

/// A transfer id: `(tag << 96) | (sequence << 32) | key`, where `key` is the low 32
/// bits of the account the transfer belongs to (its payer's, mostly: see each caller).
/// With `--placement-bits 32` a transfer then shares its shard with that account, as a
/// payment service placing a customer's records together would issue them.
pub fn transfer_id(tag: u128, sequence: u64, owner: u128) -> u128 {
    debug_assert!(tag < 1 << 32);
    (tag << 96) | (u128::from(sequence) << 32) | (owner & 0xffff_ffff)
}

/// The ids of a run's transfers: [`TRANSFER_TAG_RUN`], the run's seed (its low 32
/// bits, so runs with different seeds on a kept data directory never collide) and a
/// sequence, each placed with its owner ([`transfer_id`]).
#[derive(Debug, Clone)]
pub struct RunIds {
    seed: u32,
    sequence: u64,
}

impl RunIds {
    /// Ids of the run seeded with `seed`.
    pub fn new(seed: u64) -> RunIds {
        RunIds {
            seed: seed as u32,
            sequence: 0,
        }
    }

    /// The next transfer id, placed with `owner`.
    pub fn next(&mut self, owner: u128) -> u128 {
        self.sequence += 1;
        debug_assert!(self.sequence < 1 << 32);
        let sequence = (u64::from(self.seed) << 32) | self.sequence;
        transfer_id(TRANSFER_TAG_RUN, sequence, owner)
    }
}

/// Tag of the funding transfers before the run.
pub const TRANSFER_TAG_FUNDING: u128 = 1;
/// Tag of the transfers of the run itself.
pub const TRANSFER_TAG_RUN: u128 = 2;

/// Tag of the sweep transfer submitted after the run.
pub const TRANSFER_TAG_SWEEP: u128 = 3;
/// Tag of the end-of-day transfers: closures, their voids, settlement sweeps.
pub const TRANSFER_TAG_END_OF_DAY: u128 = 4;

/// One domestic merchant in this many keeps a balance history (account flag
/// `history`): the ones whose statements are asked for.
pub const HISTORY_MERCHANT_EVERY: u64 = 100;

/// Transfer codes (the transfer's reason).
pub mod transfer_code {
    /// Pre-midnight funding of a user.
    pub const TOP_UP: u16 = 1;
    /// A payment to a merchant.
    pub const PAYMENT: u16 = 2;
    /// A return-shipping insurance premium.
    pub const PREMIUM: u16 = 3;
    /// A two-phase authorisation.
    pub const AUTHORISATION: u16 = 4;
    /// A refund.
    pub const REFUND: u16 = 5;
    /// A money-market fund subscription.
    pub const MMF_SUBSCRIBE: u16 = 6;
    /// A money-market fund redemption.
    pub const MMF_REDEEM: u16 = 7;
    /// A small-business loan.
    pub const LOAN: u16 = 8;
    /// The CNY leg of a cross-border order.
    pub const CROSS_BORDER_CNY: u16 = 9;
    /// The foreign-currency leg of a cross-border order.
    pub const CROSS_BORDER_PAYOUT: u16 = 10;
    /// The money-market fund's float, funded at setup so redemptions never exceed it.
    pub const FUND_FLOAT: u16 = 11;
    /// The sweep transfer after the run.
    pub const SWEEP: u16 = 12;
    /// A merchant's end-of-day settlement to the banks (`balancing_debit`).
    pub const SETTLEMENT: u16 = 13;
    /// A pending transfer of 0 that closes a merchant's account (`closing_credit`).
    pub const CLOSURE: u16 = 14;
}

/// Which accounts a population holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// Users, merchants, system accounts and the foreign ledgers (the festival).
    #[default]
    Festival,
    /// `users` accounts on [`LEDGER_PLAIN`] without balance limits and nothing else, never
    /// funded: a transfer between two of them cannot fail (the transfers workload).
    Plain,
}

/// The population's parameters; recorded in traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PopulationSpec {
    /// Which accounts exist (traces written before it existed are festivals).
    #[serde(default)]
    pub shape: Shape,
    /// Users (shoppers), each funded before midnight; with [`Shape::Plain`], the number
    /// of accounts.
    pub users: u64,
    /// Domestic merchants.
    pub merchants: u64,
    /// Foreign merchants per foreign ledger.
    pub foreign_merchants: u64,
    /// Share of users funded only a little (they fail with exceeds_credits), in 1/10000.
    pub poor_users_bp: u32,
    /// Each user's pre-midnight funding is this many times the festival's: max mode
    /// submits many times the festival's payments per user, and users funded for 45 s
    /// of festival would run dry ([`max_mode_funding_scale`]). Traces written before
    /// it existed are 1.
    #[serde(default = "funding_scale_festival")]
    pub funding_scale: u64,
    /// Seed of the funding amounts.
    pub seed: u64,
}

impl Default for PopulationSpec {
    fn default() -> Self {
        PopulationSpec {
            shape: Shape::Festival,
            users: 1_000_000,
            merchants: 10_000,
            foreign_merchants: 200,
            poor_users_bp: 500,
            funding_scale: funding_scale_festival(),
            seed: 20_161_111,
        }
    }
}

fn funding_scale_festival() -> u64 {
    1
}

/// Transfers a user makes in the festival, about (2.8 M over 1 M users in 45 s).
const FESTIVAL_TRANSFERS_PER_USER: f64 = 3.0;

/// The rate max mode funds its users for, in transfers a second: above what one shard
/// sustains on a 2-core machine, so that users run dry only as often as in the festival.
const MAX_MODE_FUNDED_TPS: f64 = 2_000_000.0;

/// The funding scale for a max-mode run of `duration_s` over `users` users: as many
/// festivals' worth as the run may submit per user, at least 1.
pub fn max_mode_funding_scale(duration_s: f64, users: u64) -> u64 {
    let per_user = duration_s.max(0.0) * MAX_MODE_FUNDED_TPS / users.max(1) as f64;
    (per_user / FESTIVAL_TRANSFERS_PER_USER).ceil().max(1.0) as u64
}

/// Ids and slots of the population.
#[derive(Debug, Clone)]
pub struct Population {
    /// The parameters the ids derive from.
    pub spec: PopulationSpec,
}

fn id(kind: u128, ledger: u32, slot: u64) -> u128 {
    (kind << 64) | (u128::from(ledger) << 32) | u128::from(slot + 1)
}

impl Population {
    /// The population of `spec`.
    ///
    /// # Panics
    /// If a count is zero or the population reaches 2^31 accounts.
    pub fn new(spec: PopulationSpec) -> Population {
        assert!(spec.users >= 1 && spec.merchants >= 1 && spec.foreign_merchants >= 1);
        assert!(spec.users < 1 << 31 && spec.merchants < 1 << 31);
        assert!(spec.foreign_merchants < 1 << 24);
        let population = Population { spec };
        assert!(population.account_count() < 1 << 31);
        population
    }

    /// Id of user `index` (0-based).
    pub fn user(&self, index: u64) -> u128 {
        debug_assert!(index < self.spec.users);
        id(KIND_USER, 0, index)
    }

    /// Id of account `index` (0-based) of a [`Shape::Plain`] population.
    pub fn plain(&self, index: u64) -> u128 {
        debug_assert!(self.spec.shape == Shape::Plain && index < self.spec.users);
        id(KIND_PLAIN, 0, index)
    }

    /// Id of merchant `index` (0-based).
    pub fn merchant(&self, index: u64) -> u128 {
        debug_assert!(index < self.spec.merchants);
        id(KIND_MERCHANT, 0, self.spec.users + index)
    }

    /// Id of a system account.
    pub fn system(&self, which: System) -> u128 {
        id(KIND_SYSTEM, 0, self.system_base() + which as u64)
    }

    /// Id of the FX desk on foreign `ledger` (one of [`FOREIGN`]).
    pub fn foreign_desk(&self, ledger: u32) -> u128 {
        id(KIND_FOREIGN_DESK, ledger, self.foreign_slot(ledger))
    }

    /// Id of merchant `index` (0-based) on foreign `ledger` (one of [`FOREIGN`]).
    pub fn foreign_merchant(&self, ledger: u32, index: u64) -> u128 {
        debug_assert!(index < self.spec.foreign_merchants);
        id(
            KIND_FOREIGN_MERCHANT,
            ledger,
            self.foreign_slot(ledger) + 1 + index,
        )
    }

    /// The first system account's slot.
    fn system_base(&self) -> u64 {
        self.spec.users + self.spec.merchants
    }

    /// The slot of foreign `ledger`'s desk; its merchants follow it.
    fn foreign_slot(&self, ledger: u32) -> u64 {
        let position = FOREIGN.iter().position(|f| f.0 == ledger);
        debug_assert!(position.is_some(), "ledger {ledger} is not foreign");
        let per_foreign = 1 + self.spec.foreign_merchants;
        self.system_base() + SYSTEM_COUNT + position.unwrap_or(0) as u64 * per_foreign
    }

    /// Every account, in a fixed order: users, merchants, system, then per foreign ledger
    /// its desk and merchants. An account's position here is its slot.
    pub fn account_count(&self) -> usize {
        if self.spec.shape == Shape::Plain {
            return self.spec.users as usize;
        }
        let foreign = FOREIGN.len() as u64 * (1 + self.spec.foreign_merchants);
        (self.spec.users + self.spec.merchants + SYSTEM_COUNT + foreign) as usize
    }

    /// The slot of an account id, or `None` for an id outside the population.
    pub fn slot(&self, account_id: u128) -> Option<usize> {
        let slot = ((account_id & 0xffff_ffff) as u64).checked_sub(1)?;
        let slot = usize::try_from(slot).ok()?;
        (slot < self.account_count() && self.id_at(slot) == account_id).then_some(slot)
    }

    /// The id of the account at `slot` (below [`Population::account_count`]).
    fn id_at(&self, slot: usize) -> u128 {
        let slot = slot as u64;
        let (users, merchants) = (self.spec.users, self.spec.merchants);
        if self.spec.shape == Shape::Plain {
            return self.plain(slot);
        }
        if slot < users {
            return self.user(slot);
        }
        if slot < users + merchants {
            return self.merchant(slot - users);
        }
        let foreign_base = self.system_base() + SYSTEM_COUNT;
        if slot < foreign_base {
            return id(KIND_SYSTEM, 0, slot);
        }
        let per_foreign = 1 + self.spec.foreign_merchants;
        let (position, offset) = (
            (slot - foreign_base) / per_foreign,
            (slot - foreign_base) % per_foreign,
        );
        let ledger = FOREIGN[position as usize].0;
        match offset {
            0 => self.foreign_desk(ledger),
            _ => self.foreign_merchant(ledger, offset - 1),
        }
    }

    /// The account at `slot` (inverse of [`Population::slot`]), as created at setup.
    pub fn account_at(&self, slot: usize) -> Account {
        if self.spec.shape == Shape::Plain {
            return self.plain_account_at(slot as u64);
        }
        let slot = slot as u64;
        let users = self.spec.users;
        let merchants = self.spec.merchants;
        let foreign_base = users + merchants + SYSTEM_COUNT;
        let no_overdraft = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS;
        let (id, ledger, code, flags) = if slot < users {
            (
                self.user(slot),
                LEDGER_CNY,
                account_code::USER,
                no_overdraft,
            )
        } else if slot < users + merchants {
            let index = slot - users;
            let history = if index.is_multiple_of(HISTORY_MERCHANT_EVERY) {
                AccountFlags::HISTORY
            } else {
                AccountFlags::empty()
            };
            (
                self.merchant(index),
                LEDGER_CNY,
                account_code::MERCHANT,
                history,
            )
        } else if slot < foreign_base {
            let index = slot - users - merchants;
            let (code, flags) = match index {
                0 => (account_code::BANK, AccountFlags::empty()),
                1 => (account_code::INSURER, AccountFlags::empty()),
                2 => (account_code::MONEY_MARKET_FUND, no_overdraft),
                3 => (account_code::LOAN_BOOK, AccountFlags::empty()),
                _ => (account_code::FX_DESK, AccountFlags::empty()),
            };
            (id(KIND_SYSTEM, 0, slot), LEDGER_CNY, code, flags)
        } else {
            let rest = slot - foreign_base;
            let per_foreign = 1 + self.spec.foreign_merchants;
            let ledger = FOREIGN[(rest / per_foreign) as usize].0;
            match rest % per_foreign {
                0 => (
                    self.foreign_desk(ledger),
                    ledger,
                    account_code::FX_DESK,
                    AccountFlags::empty(),
                ),
                m => (
                    self.foreign_merchant(ledger, m - 1),
                    ledger,
                    account_code::FOREIGN_MERCHANT,
                    AccountFlags::empty(),
                ),
            }
        };
        Account {
            id,
            ledger,
            code,
            flags,
            ..Account::default()
        }
    }

    /// Account `slot` of a [`Shape::Plain`] population: no flags, and user data drawn
    /// from the slot alone (TigerBeetle's `benchmark` fills it at random), so that every
    /// seed gives the same accounts: a run with `--keep` and another seed (the same
    /// seed would draw the same transfer ids) finds its accounts already there.
    fn plain_account_at(&self, slot: u64) -> Account {
        // The default seed, which drew them before they stopped following the seed.
        const PLAIN_USER_DATA_SEED: u64 = 20_161_111;
        let user_data = split_mix(PLAIN_USER_DATA_SEED ^ split_mix(slot));
        Account {
            id: self.plain(slot),
            ledger: LEDGER_PLAIN,
            code: account_code::PLAIN,
            user_data_128: u128::from(user_data) << 64 | u128::from(split_mix(user_data)),
            user_data_64: user_data,
            user_data_32: (user_data >> 32) as u32,
            ..Account::default()
        }
    }

    /// Account creation batches (full batches of up to 8,190).
    pub fn account_batches(&self) -> impl Iterator<Item = Batch> + '_ {
        let count = self.account_count();
        (0..count).step_by(BATCH_EVENTS_MAX).map(move |start| {
            let end = (start + BATCH_EVENTS_MAX).min(count);
            Batch::CreateAccounts((start..end).map(|slot| self.account_at(slot)).collect())
        })
    }

    /// Pre-midnight funding: every user topped up from the bank; the money-market fund
    /// seeded with its float. Amounts drawn in yuan; seeded.
    /// A [`Shape::Plain`] population is never funded: none of its accounts has a limit.
    pub fn funding_transfers(&self) -> Vec<Transfer> {
        if self.spec.shape == Shape::Plain {
            return Vec::new();
        }
        let scale = CurrencyTable::default().scale(LEDGER_CNY);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.spec.seed ^ 0xf00d);
        let bank = self.system(System::Bank);
        let mut transfers = Vec::with_capacity(self.spec.users as usize + 1);
        for index in 0..self.spec.users {
            let poor = rng.random_range(0..10_000) < self.spec.poor_users_bp;
            // Poor users hold RMB 0.01-60.00; the rest RMB 300.00-6,000.00.
            let fen: i64 = if poor {
                rng.random_range(1..=6_000)
            } else {
                rng.random_range(30_000..=600_000)
            };
            let fen =
                fen.saturating_mul(i64::try_from(self.spec.funding_scale).unwrap_or(i64::MAX));
            let amount = Decimal::new(fen, 2);
            transfers.push(cny_transfer(
                transfer_id(TRANSFER_TAG_FUNDING, index + 1, self.user(index)),
                bank,
                self.user(index),
                minor(amount, scale),
                transfer_code::TOP_UP,
            ));
        }
        // The fund's float, so redemptions never exceed what it holds.
        transfers.push(cny_transfer(
            transfer_id(
                TRANSFER_TAG_FUNDING,
                self.spec.users + 1,
                self.system(System::MoneyMarketFund),
            ),
            bank,
            self.system(System::MoneyMarketFund),
            minor(Decimal::new(10_000_000_000, 0), scale),
            transfer_code::FUND_FLOAT,
        ));
        transfers
    }
}

/// SplitMix64's finaliser: spreads the bits of `value` (a hash, not a random stream).
fn split_mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Converts a drawn decimal to minor units. The generator only draws values with at most
/// the ledger's scale digits, so a failure here is a bug in the generator.
pub fn minor(amount: Decimal, scale: u32) -> u128 {
    match decimal_to_minor(amount, scale) {
        Ok(value) => value,
        Err(error) => panic!("generator drew an inexact amount {amount} at scale {scale}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Population {
        Population::new(PopulationSpec {
            shape: Shape::Festival,
            users: 100,
            merchants: 10,
            foreign_merchants: 3,
            poor_users_bp: 1_000,
            funding_scale: 1,
            seed: 1,
        })
    }

    #[test]
    fn max_mode_funds_users_for_the_run_s_length() {
        // 60 s at 2 M transfers/s over 1 M users: 120 transfers each, 40 festivals.
        assert_eq!(max_mode_funding_scale(60.0, 1_000_000), 40);
        assert_eq!(max_mode_funding_scale(0.1, 1_000_000), 1, "never below 1");
        assert_eq!(max_mode_funding_scale(-1.0, 10), 1);
        let scaled = Population::new(PopulationSpec {
            funding_scale: 40,
            ..small().spec
        });
        for (one, forty) in small()
            .funding_transfers()
            .iter()
            .zip(scaled.funding_transfers())
            .take(100)
        {
            assert_eq!(
                forty.amount,
                one.amount * 40,
                "user {}",
                one.credit_account_id
            );
        }
    }

    #[test]
    fn slots_are_dense_and_invert_ids() {
        let population = small();
        let count = population.account_count();
        assert_eq!(count, 100 + 10 + 5 + 4 * 4);
        let mut keys = std::collections::HashSet::new();
        for slot in 0..count {
            let account = population.account_at(slot);
            assert_eq!(population.slot(account.id), Some(slot), "slot {slot}");
            assert!(tally_types::id_is_valid(account.id));
            // Every account has a placement key of its own.
            assert!(keys.insert(account.id & 0xffff_ffff));
        }
        assert_eq!(population.slot(0), None);
        assert_eq!(population.slot(id(KIND_USER, 0, 200)), None);
        assert_eq!(population.slot(id(KIND_FOREIGN_DESK, 999, 0)), None);
        // A slot's key under another kind or ledger is no account.
        assert_eq!(population.slot(id(KIND_MERCHANT, 0, 5)), None);
        assert_eq!(population.slot(id(KIND_USER, 840, 5)), None);
    }

    #[test]
    fn a_transfer_id_carries_its_owners_key() {
        let population = small();
        let user = population.user(42);
        let ids: Vec<u128> = (1..=3)
            .map(|sequence| transfer_id(TRANSFER_TAG_RUN, sequence, user))
            .collect();
        assert!(ids.iter().all(|&t| t & 0xffff_ffff == user & 0xffff_ffff));
        assert!(ids[0] != ids[1] && ids[1] != ids[2]);
        assert_ne!(
            transfer_id(TRANSFER_TAG_RUN, 1, user),
            transfer_id(TRANSFER_TAG_FUNDING, 1, user)
        );
    }

    #[test]
    fn a_plain_population_is_its_accounts_without_limits_or_funding() {
        let population = Population::new(PopulationSpec {
            shape: Shape::Plain,
            users: 50,
            ..PopulationSpec::default()
        });
        assert_eq!(population.account_count(), 50);
        let mut ids = std::collections::HashSet::new();
        for slot in 0..50 {
            let account = population.account_at(slot);
            assert_eq!(population.slot(account.id), Some(slot));
            assert_eq!(account.flags, AccountFlags::empty());
            assert_eq!(account.ledger, LEDGER_PLAIN);
            assert!(tally_types::id_is_valid(account.id));
            assert!(ids.insert(account.id));
            assert_eq!(account, population.account_at(slot), "the same every time");
        }
        assert_eq!(population.slot(id(KIND_USER, 0, 0)), None);
        assert_eq!(population.slot(id(KIND_PLAIN, 0, 50)), None);
        assert!(population.funding_transfers().is_empty());
        // A kept directory's accounts are those of a run with any other seed.
        let reseeded = Population::new(PopulationSpec {
            shape: Shape::Plain,
            users: 50,
            seed: 7,
            ..PopulationSpec::default()
        });
        for slot in 0..50 {
            assert_eq!(reseeded.account_at(slot), population.account_at(slot));
        }
        assert_ne!(
            population.account_at(0).user_data_128,
            population.account_at(1).user_data_128
        );
    }

    #[test]
    fn funding_is_seeded_and_leaves_some_users_poor() {
        let population = small();
        let funding = population.funding_transfers();
        assert_eq!(funding, population.funding_transfers());
        let poor = funding[..100].iter().filter(|t| t.amount <= 6_000).count();
        assert!((3..=25).contains(&poor), "{poor} poor users of 100");
        let batches: Vec<Batch> = population.account_batches().collect();
        assert_eq!(
            batches.iter().map(Batch::len).sum::<usize>(),
            population.account_count()
        );
    }
}
