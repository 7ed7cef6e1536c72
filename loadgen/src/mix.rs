//! The traffic mix: what each arrival submits. Deterministic from a seed and independent
//! of results (an open-loop generator cannot wait for answers), so a follow-up (post,
//! void, refund) may meet a failed original and fail realistically.
//!
//! Kinds, each one submission:
//! * payment: user → merchant (Zipf-skewed merchants), single-phase;
//! * insured payment: the payment linked with a return-shipping insurance premium
//!   (user → insurer), atomically;
//! * authorisation: a pending user → merchant transfer, later posted (fully or in part),
//!   voided, or left to expire;
//! * post / void of an earlier authorisation; refund (full or partial) of an earlier
//!   payment;
//! * money-market subscription (user → fund, often exactly RMB 1) and redemption;
//! * small-business loan disbursement (loan book → merchant);
//! * cross-border order: user → FX desk in CNY linked with FX desk → foreign merchant on
//!   the foreign ledger (USD, EUR, JPY, HKD), atomically.
//!
//! The transfers workload (`crate::transfers`) has a kind of its own, [`Kind::Transfer`];
//! both generators are a [`RequestStream`].

use crate::population::{
    FOREIGN, LEDGER_CNY, Population, RunIds, System, cny_transfer, minor, transfer_code,
};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};
use rand_xoshiro::Xoshiro256PlusPlus;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use tally_types::currency::CurrencyTable;
use tally_types::{Transfer, TransferFlags};

/// What a submission is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// A plain payment: user → merchant.
    Payment = 0,
    /// A payment linked with a return-shipping insurance premium (a two-transfer chain).
    InsuredPayment = 1,
    /// A two-phase authorisation (pending transfer), posted, voided or left to expire.
    Authorisation = 2,
    /// Posts an earlier authorisation, in full or in part.
    Post = 3,
    /// Voids an earlier authorisation.
    Void = 4,
    /// Refunds an earlier payment, in full or in part.
    Refund = 5,
    /// A money-market fund subscription: user → fund.
    MmfSubscribe = 6,
    /// A money-market fund redemption: fund → user.
    MmfRedeem = 7,
    /// A small-business loan: loan book → merchant.
    Loan = 8,
    /// A cross-border order: user → FX desk in CNY, linked with FX desk → foreign merchant.
    CrossBorder = 9,
    /// The transfers workload's only kind: one transfer between two accounts without
    /// balance limits.
    Transfer = 10,
}

impl Kind {
    /// Every kind, in the order of its `u8` value.
    pub const ALL: [Kind; 11] = [
        Kind::Payment,
        Kind::InsuredPayment,
        Kind::Authorisation,
        Kind::Post,
        Kind::Void,
        Kind::Refund,
        Kind::MmfSubscribe,
        Kind::MmfRedeem,
        Kind::Loan,
        Kind::CrossBorder,
        Kind::Transfer,
    ];

    /// The kind's name in reports and traces (`snake_case`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Payment => "payment",
            Kind::InsuredPayment => "insured_payment",
            Kind::Authorisation => "authorisation",
            Kind::Post => "post",
            Kind::Void => "void",
            Kind::Refund => "refund",
            Kind::MmfSubscribe => "mmf_subscribe",
            Kind::MmfRedeem => "mmf_redeem",
            Kind::Loan => "loan",
            Kind::CrossBorder => "cross_border",
            Kind::Transfer => "transfer",
        }
    }

    /// The kind stored as `value` in a trace, if any.
    pub fn from_u8(value: u8) -> Option<Kind> {
        Kind::ALL.get(usize::from(value)).copied()
    }
}

/// One submission: a single transfer or one linked chain, due at `offset_ns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Scheduled instant, nanoseconds from the start of the curve.
    pub offset_ns: u64,
    /// What the submission is.
    pub kind: Kind,
    /// The transfers, in order; a linked chain when more than one.
    pub transfers: Vec<Transfer>,
}

/// A deterministic stream of submissions: asked for the one at each arrival instant, in
/// non-decreasing order. The festival's [`Generator`] and the transfers workload's
/// generator are both one.
pub trait RequestStream {
    /// The submission for the arrival at `offset_ns` (nanoseconds from the start).
    fn next_at(&mut self, offset_ns: u64) -> Request;
}

impl<S: RequestStream + ?Sized> RequestStream for Box<S> {
    fn next_at(&mut self, offset_ns: u64) -> Request {
        (**self).next_at(offset_ns)
    }
}

impl RequestStream for Generator {
    fn next_at(&mut self, offset_ns: u64) -> Request {
        Generator::next_at(self, offset_ns)
    }
}

/// Proportions and timings of the mix; recorded in traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixSpec {
    /// Weight of payments among the new (non-follow-up) submissions; the weights are
    /// normalised.
    pub weight_payment: f64,
    /// Weight of two-phase authorisations.
    pub weight_authorisation: f64,
    /// Weight of money-market fund subscriptions.
    pub weight_mmf_subscribe: f64,
    /// Weight of money-market fund redemptions.
    pub weight_mmf_redeem: f64,
    /// Weight of small-business loans.
    pub weight_loan: f64,
    /// Weight of cross-border orders.
    pub weight_cross_border: f64,
    /// Share of payments that carry a linked insurance premium.
    pub insured_share: f64,
    /// Share of payments refunded later.
    pub refund_share: f64,
    /// Of the refunded payments, the share refunded in part.
    pub refund_partial_share: f64,
    /// Of the partial refunds, the share followed by a (failing) full refund request.
    pub refund_again_share: f64,
    /// Share of authorisations posted (the rest not voided are left to expire).
    pub post_share: f64,
    /// Share of authorisations voided.
    pub void_share: f64,
    /// Share of posts that post only part of the amount.
    pub post_partial_share: f64,
    /// Range of the delay before a post or void (ms of curve time).
    pub settle_delay_ms: (u64, u64),
    /// Range of the delay before a refund (ms of curve time).
    pub refund_delay_ms: (u64, u64),
    /// Timeout (engine seconds) of authorisations meant to be posted or voided.
    pub authorisation_timeout_s: u32,
    /// Timeout (engine seconds) of authorisations left to expire.
    pub expiring_timeout_s: u32,
    /// Zipf exponent of merchant popularity.
    pub zipf_s: f64,
}

impl Default for MixSpec {
    fn default() -> Self {
        MixSpec {
            weight_payment: 0.78,
            weight_authorisation: 0.08,
            weight_mmf_subscribe: 0.05,
            weight_mmf_redeem: 0.02,
            weight_loan: 0.01,
            weight_cross_border: 0.06,
            insured_share: 0.20,
            refund_share: 0.04,
            refund_partial_share: 0.30,
            refund_again_share: 0.30,
            post_share: 0.80,
            void_share: 0.12,
            post_partial_share: 0.20,
            settle_delay_ms: (200, 3_000),
            refund_delay_ms: (1_000, 8_000),
            authorisation_timeout_s: 60,
            expiring_timeout_s: 2,
            zipf_s: 1.1,
        }
    }
}

#[derive(Debug, Clone)]
enum Action {
    Post {
        pending: Transfer,
        amount: u128,
    },
    Void {
        pending: Transfer,
    },
    Refund {
        original: Transfer,
        amount: u128,
        again: bool,
    },
}

#[derive(Debug, Clone)]
struct FollowUp {
    due_ns: u64,
    /// Tie-break: order of scheduling, so the heap is deterministic.
    order: u64,
    /// Boxed: the heap moves entries at every push and pop, and an action holds a whole
    /// transfer (a 24-byte entry instead of about 180; `BinaryHeap::pop` was 9 % of
    /// the generator's samples in max mode).
    action: Box<Action>,
}

// Ordered by (due, order) only: `order` is unique, so the action never decides.
impl PartialEq for FollowUp {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ns, self.order) == (other.due_ns, other.order)
    }
}

impl Eq for FollowUp {}

impl PartialOrd for FollowUp {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FollowUp {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due_ns, self.order).cmp(&(other.due_ns, other.order))
    }
}

/// Bound on queued follow-ups: past it, new ones are not scheduled (stated in the
/// report as fewer refunds/settlements; at default rates it holds ~30 s of them).
const FOLLOW_UPS_MAX: usize = 4_000_000;

/// Deterministic request generator.
#[derive(Debug)]
pub struct Generator {
    population: Population,
    mix: MixSpec,
    rng: Xoshiro256PlusPlus,
    merchants: Zipf<f64>,
    foreign_merchants: Zipf<f64>,
    payment_yuan: LogNormal<f64>,
    /// Cumulative weights of the new kinds.
    cumulative: [(f64, Kind); 6],
    scale_cny: u32,
    scales_foreign: Vec<u32>,
    rates_foreign: Vec<Decimal>,
    ids: RunIds,
    follow_ups: BinaryHeap<Reverse<FollowUp>>,
    follow_up_order: u64,
}

/// The merchant's order number a payment or authorisation carries in `user_data_128`,
/// what support looks it up by: a bijection of the transfer id (an xor-shift, then a
/// multiplication by an odd constant), so no two transfers share one and no random
/// draw is spent on it.
pub fn order_id(transfer_id: u128) -> u128 {
    const ODD: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
    (transfer_id ^ (transfer_id >> 64)).wrapping_mul(ODD)
}

/// Everyday price points (yuan); a share of payments hit them exactly.
const PRICE_POINTS_FEN: &[i64] = &[
    990, 1_990, 2_990, 4_900, 5_900, 9_900, 12_900, 19_900, 29_900, 49_900,
];

impl Generator {
    /// A generator over `population` with the proportions of `mix`, seeded by `seed`: the same
    /// arguments give the same request stream.
    pub fn new(population: Population, mix: MixSpec, seed: u64) -> Generator {
        let merchant_count = population.spec.merchants as f64;
        let foreign_count = population.spec.foreign_merchants as f64;
        let zipf_s = mix.zipf_s.max(0.0);
        let merchants = Zipf::new(merchant_count, zipf_s).unwrap_or_else(|_| unreachable_zipf());
        let foreign_merchants =
            Zipf::new(foreign_count, zipf_s).unwrap_or_else(|_| unreachable_zipf());
        let payment_yuan = LogNormal::new(80f64.ln(), 0.9).unwrap_or_else(|_| unreachable_zipf());
        let weights = [
            (mix.weight_payment, Kind::Payment),
            (mix.weight_authorisation, Kind::Authorisation),
            (mix.weight_mmf_subscribe, Kind::MmfSubscribe),
            (mix.weight_mmf_redeem, Kind::MmfRedeem),
            (mix.weight_loan, Kind::Loan),
            (mix.weight_cross_border, Kind::CrossBorder),
        ];
        let total: f64 = weights.iter().map(|w| w.0.max(0.0)).sum();
        let mut running = 0.0;
        let cumulative = weights.map(|(weight, kind)| {
            running += weight.max(0.0) / total.max(f64::MIN_POSITIVE);
            (running, kind)
        });
        let table = CurrencyTable::default();
        let rates_foreign = FOREIGN
            .iter()
            .map(|(_, _, rate)| rate.parse::<Decimal>().unwrap_or(Decimal::ONE))
            .collect();
        Generator {
            scale_cny: table.scale(LEDGER_CNY),
            scales_foreign: FOREIGN.iter().map(|f| table.scale(f.0)).collect(),
            rates_foreign,
            population,
            mix,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            merchants,
            foreign_merchants,
            payment_yuan,
            cumulative,
            ids: RunIds::new(seed),
            follow_ups: BinaryHeap::new(),
            follow_up_order: 0,
        }
    }

    /// The submission for the arrival at `offset_ns`: a due follow-up if any, else a
    /// new one drawn from the mix. Arrivals must come in non-decreasing order.
    pub fn next_at(&mut self, offset_ns: u64) -> Request {
        let due = self
            .follow_ups
            .peek()
            .is_some_and(|head| head.0.due_ns <= offset_ns);
        if due && let Some(Reverse(follow_up)) = self.follow_ups.pop() {
            return self.follow_up(offset_ns, *follow_up.action);
        }
        let pick: f64 = self.rng.random();
        let kind = self
            .cumulative
            .iter()
            .find(|(bound, _)| pick < *bound)
            .map_or(Kind::Payment, |(_, kind)| *kind);
        match kind {
            Kind::Payment => self.payment(offset_ns),
            Kind::Authorisation => self.authorisation(offset_ns),
            Kind::MmfSubscribe => self.mmf(offset_ns, true),
            Kind::MmfRedeem => self.mmf(offset_ns, false),
            Kind::Loan => self.loan(offset_ns),
            _ => self.cross_border(offset_ns),
        }
    }

    /// Follow-ups still queued (not yet due when the run ended).
    pub fn follow_ups_left(&self) -> usize {
        self.follow_ups.len()
    }

    /// The next transfer id, placed with `owner` (an account, or a transfer whose
    /// customer it follows).
    fn next_id(&mut self, owner: u128) -> u128 {
        self.ids.next(owner)
    }

    fn user(&mut self) -> u128 {
        let index = self.rng.random_range(0..self.population.spec.users);
        self.population.user(index)
    }

    fn merchant(&mut self) -> u128 {
        let rank = self.merchants.sample(&mut self.rng) as u64;
        let index = rank.clamp(1, self.population.spec.merchants) - 1;
        self.population.merchant(index)
    }

    fn schedule(&mut self, due_ns: u64, action: Action) {
        if self.follow_ups.len() >= FOLLOW_UPS_MAX {
            return;
        }
        self.follow_up_order += 1;
        self.follow_ups.push(Reverse(FollowUp {
            due_ns,
            order: self.follow_up_order,
            action: Box::new(action),
        }));
    }

    fn delay_ns(&mut self, range_ms: (u64, u64)) -> u64 {
        let (low, high) = (range_ms.0.min(range_ms.1), range_ms.0.max(range_ms.1));
        self.rng.random_range(low..=high) * 1_000_000
    }

    /// A shopping amount in yuan: an everyday price point or a log-normal draw, in fen.
    fn shopping_amount(&mut self) -> Decimal {
        if self.rng.random_bool(0.3) {
            let index = self.rng.random_range(0..PRICE_POINTS_FEN.len());
            return Decimal::new(PRICE_POINTS_FEN[index], 2);
        }
        // The draw is a sample, not money arithmetic: it picks an integer count of fen.
        let yuan = self
            .payment_yuan
            .sample(&mut self.rng)
            .clamp(0.01, 20_000.0);
        Decimal::new(((yuan * 100.0).round() as i64).max(1), 2)
    }

    fn cny(&self, amount: Decimal) -> u128 {
        minor(amount, self.scale_cny)
    }

    /// A transfer placed with `owner`.
    fn transfer(
        &mut self,
        owner: u128,
        debit: u128,
        credit: u128,
        amount: u128,
        code: u16,
    ) -> Transfer {
        cny_transfer(self.next_id(owner), debit, credit, amount, code)
    }

    fn payment(&mut self, offset_ns: u64) -> Request {
        let (user, merchant) = (self.user(), self.merchant());
        let amount = self.shopping_amount();
        let amount = self.cny(amount);
        let mut payment = self.transfer(user, user, merchant, amount, transfer_code::PAYMENT);
        payment.user_data_128 = order_id(payment.id);
        let insured = self.rng.random_bool(self.mix.insured_share.clamp(0.0, 1.0));
        if self.rng.random_bool(self.mix.refund_share.clamp(0.0, 1.0)) {
            let amount = if self
                .rng
                .random_bool(self.mix.refund_partial_share.clamp(0.0, 1.0))
            {
                self.partial(payment.amount)
            } else {
                payment.amount
            };
            let delay = self.delay_ns(self.mix.refund_delay_ms);
            let again = amount < payment.amount
                && self
                    .rng
                    .random_bool(self.mix.refund_again_share.clamp(0.0, 1.0));
            self.schedule(
                offset_ns + delay,
                Action::Refund {
                    original: payment,
                    amount,
                    again,
                },
            );
        }
        if !insured {
            return Request {
                offset_ns,
                kind: Kind::Payment,
                transfers: vec![payment],
            };
        }
        // Return-shipping insurance: RMB 0.50-3.00 in 0.10 steps, all or nothing with
        // the payment.
        let premium_amount = Decimal::new(self.rng.random_range(5..=30), 1);
        let premium_amount = self.cny(premium_amount);
        let insurer = self.population.system(System::Insurer);
        let premium = self.transfer(user, user, insurer, premium_amount, transfer_code::PREMIUM);
        payment.flags = TransferFlags::LINKED;
        Request {
            offset_ns,
            kind: Kind::InsuredPayment,
            transfers: vec![payment, premium],
        }
    }

    /// 10%-95% of `amount` minor units, in whole fen (at least one).
    fn partial(&mut self, amount: u128) -> u128 {
        let percent = Decimal::new(self.rng.random_range(10..=95), 2);
        let whole = Decimal::from_i128_with_scale(amount as i128, 0);
        let part = (whole * percent).round_dp_with_strategy(0, RoundingStrategy::ToZero);
        let part = u128::try_from(part.mantissa()).unwrap_or(1);
        part.clamp(1, amount)
    }

    fn authorisation(&mut self, offset_ns: u64) -> Request {
        let (user, merchant) = (self.user(), self.merchant());
        let amount = self.shopping_amount();
        let amount = self.cny(amount);
        let mut pending = self.transfer(user, user, merchant, amount, transfer_code::AUTHORISATION);
        pending.flags = TransferFlags::PENDING;
        pending.user_data_128 = order_id(pending.id);
        let fate: f64 = self.rng.random();
        let delay = self.delay_ns(self.mix.settle_delay_ms);
        if fate < self.mix.post_share {
            pending.timeout = self.mix.authorisation_timeout_s;
            let amount = if self
                .rng
                .random_bool(self.mix.post_partial_share.clamp(0.0, 1.0))
            {
                self.partial(amount)
            } else {
                amount
            };
            self.schedule(offset_ns + delay, Action::Post { pending, amount });
        } else if fate < self.mix.post_share + self.mix.void_share {
            pending.timeout = self.mix.authorisation_timeout_s;
            self.schedule(offset_ns + delay, Action::Void { pending });
        } else {
            pending.timeout = self.mix.expiring_timeout_s;
        }
        Request {
            offset_ns,
            kind: Kind::Authorisation,
            transfers: vec![pending],
        }
    }

    fn follow_up(&mut self, offset_ns: u64, action: Action) -> Request {
        // Placed with the transfer it settles or refunds (and so with its customer).
        let id = match &action {
            Action::Post { pending, .. } | Action::Void { pending } => self.next_id(pending.id),
            Action::Refund { original, .. } => self.next_id(original.id),
        };
        match action {
            // Accounts, ledger and code left 0: the engine takes them from the pending.
            Action::Post { pending, amount } => {
                let post = Transfer {
                    id,
                    amount,
                    pending_id: pending.id,
                    flags: TransferFlags::POST_PENDING_TRANSFER,
                    ..Transfer::default()
                };
                Request {
                    offset_ns,
                    kind: Kind::Post,
                    transfers: vec![post],
                }
            }
            Action::Void { pending } => {
                let void = Transfer {
                    id,
                    pending_id: pending.id,
                    flags: TransferFlags::VOID_PENDING_TRANSFER,
                    ..Transfer::default()
                };
                Request {
                    offset_ns,
                    kind: Kind::Void,
                    transfers: vec![void],
                }
            }
            Action::Refund {
                original,
                amount,
                again,
            } => {
                if again {
                    let delay = self.delay_ns(self.mix.refund_delay_ms);
                    let full = original.amount;
                    self.schedule(
                        offset_ns + delay,
                        Action::Refund {
                            original,
                            amount: full,
                            again: false,
                        },
                    );
                }
                let refund = Transfer {
                    id,
                    debit_account_id: original.credit_account_id,
                    credit_account_id: original.debit_account_id,
                    amount,
                    pending_id: original.id,
                    ledger: original.ledger,
                    code: transfer_code::REFUND,
                    flags: TransferFlags::REFUND,
                    ..Transfer::default()
                };
                Request {
                    offset_ns,
                    kind: Kind::Refund,
                    transfers: vec![refund],
                }
            }
        }
    }

    fn mmf(&mut self, offset_ns: u64, subscribe: bool) -> Request {
        let user = self.user();
        let fund = self.population.system(System::MoneyMarketFund);
        // Yu'e Bao's famous minimum: RMB 1. Half the orders are exactly that.
        let amount = if self.rng.random_bool(0.5) {
            Decimal::new(100, 2)
        } else {
            Decimal::new(self.rng.random_range(100..=50_000), 2)
        };
        let amount = self.cny(amount);
        let (transfer, kind) = if subscribe {
            (
                self.transfer(user, user, fund, amount, transfer_code::MMF_SUBSCRIBE),
                Kind::MmfSubscribe,
            )
        } else {
            (
                self.transfer(user, fund, user, amount, transfer_code::MMF_REDEEM),
                Kind::MmfRedeem,
            )
        };
        Request {
            offset_ns,
            kind,
            transfers: vec![transfer],
        }
    }

    fn loan(&mut self, offset_ns: u64) -> Request {
        let index = self.rng.random_range(0..self.population.spec.merchants);
        let merchant = self.population.merchant(index);
        let book = self.population.system(System::LoanBook);
        let amount = Decimal::new(self.rng.random_range(1_000..=50_000), 0);
        let amount = self.cny(amount);
        let loan = self.transfer(merchant, book, merchant, amount, transfer_code::LOAN);
        Request {
            offset_ns,
            kind: Kind::Loan,
            transfers: vec![loan],
        }
    }

    fn cross_border(&mut self, offset_ns: u64) -> Request {
        let which = self.rng.random_range(0..FOREIGN.len());
        let (ledger, _, _) = FOREIGN[which];
        let scale = self.scales_foreign[which];
        // A foreign price: USD/EUR 5.00-300.00, HKD 40.00-2,400.00, JPY 500-30,000.
        let price = match scale {
            0 => Decimal::new(self.rng.random_range(500..=30_000), 0),
            _ if ledger == 344 => Decimal::new(self.rng.random_range(4_000..=240_000), 2),
            _ => Decimal::new(self.rng.random_range(500..=30_000), 2),
        };
        let yuan = (price * self.rates_foreign[which])
            .round_dp_with_strategy(self.scale_cny, RoundingStrategy::MidpointNearestEven)
            .max(Decimal::new(1, 2));
        let user = self.user();
        let desk_cny = self.population.system(System::FxDesk);
        let amount_cny = self.cny(yuan);
        let mut pay = self.transfer(
            user,
            user,
            desk_cny,
            amount_cny,
            transfer_code::CROSS_BORDER_CNY,
        );
        pay.flags = TransferFlags::LINKED;
        let rank = self.foreign_merchants.sample(&mut self.rng) as u64;
        let index = rank.clamp(1, self.population.spec.foreign_merchants) - 1;
        let merchant = self.population.foreign_merchant(ledger, index);
        let desk = self.population.foreign_desk(ledger);
        let mut payout = self.transfer(
            user,
            desk,
            merchant,
            minor(price, scale),
            transfer_code::CROSS_BORDER_PAYOUT,
        );
        payout.ledger = ledger;
        Request {
            offset_ns,
            kind: Kind::CrossBorder,
            transfers: vec![pay, payout],
        }
    }
}

fn unreachable_zipf<T>() -> T {
    panic!("distribution parameters are validated by the command line")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::PopulationSpec;
    use std::collections::{HashMap, HashSet};

    fn generator(seed: u64) -> Generator {
        let spec = PopulationSpec {
            shape: crate::population::Shape::Festival,
            users: 10_000,
            merchants: 1_000,
            foreign_merchants: 50,
            poor_users_bp: 500,
            funding_scale: 1,
            seed,
        };
        Generator::new(Population::new(spec), MixSpec::default(), seed)
    }

    /// 200,000 arrivals at 10,000/s: 20 s, long enough for follow-ups to flow.
    fn draw(seed: u64) -> Vec<Request> {
        let mut generator = generator(seed);
        (0..200_000u64)
            .map(|i| generator.next_at(i * 100_000))
            .collect()
    }

    #[test]
    fn mix_proportions_match_the_spec() {
        let requests = draw(11);
        let mix = MixSpec::default();
        new_submissions_match_the_weights(&requests, &mix);
        follow_ups_match_their_shares(&requests, &mix);
        insured_and_cross_border_requests_are_linked_pairs(&requests);
    }

    #[test]
    fn payments_and_authorisations_carry_distinct_order_ids() {
        let mut seen = HashSet::new();
        for request in draw(5) {
            let first = &request.transfers[0];
            match request.kind {
                Kind::Payment | Kind::InsuredPayment | Kind::Authorisation => {
                    assert_eq!(first.user_data_128, order_id(first.id));
                    assert!(seen.insert(first.user_data_128), "order id used twice");
                }
                _ => assert_eq!(first.user_data_128, 0, "{:?}", request.kind),
            }
        }
        assert!(seen.len() > 100_000);
    }

    /// Asserts that `actual` is within 0.01 of `expected`.
    fn close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() < 0.01,
            "{what}: {actual:.4} vs {expected:.4}"
        );
    }

    /// Each kind's share of new submissions (follow-ups left out) is its weight.
    fn new_submissions_match_the_weights(requests: &[Request], mix: &MixSpec) {
        let mut counts: HashMap<Kind, f64> = HashMap::new();
        for request in requests {
            *counts.entry(request.kind).or_default() += 1.0;
        }
        let count = |kind| counts.get(&kind).copied().unwrap_or(0.0);
        let new_total: f64 = [
            Kind::Payment,
            Kind::InsuredPayment,
            Kind::Authorisation,
            Kind::MmfSubscribe,
            Kind::MmfRedeem,
            Kind::Loan,
            Kind::CrossBorder,
        ]
        .iter()
        .map(|k| count(*k))
        .sum();
        let share = |value: f64| value / new_total;
        let payments = count(Kind::Payment) + count(Kind::InsuredPayment);
        close(share(payments), mix.weight_payment, "payments");
        close(
            count(Kind::InsuredPayment) / payments,
            mix.insured_share,
            "insured",
        );
        close(
            share(count(Kind::Authorisation)),
            mix.weight_authorisation,
            "auth",
        );
        close(
            share(count(Kind::MmfSubscribe)),
            mix.weight_mmf_subscribe,
            "mmf in",
        );
        close(
            share(count(Kind::MmfRedeem)),
            mix.weight_mmf_redeem,
            "mmf out",
        );
        close(share(count(Kind::Loan)), mix.weight_loan, "loan");
        close(
            share(count(Kind::CrossBorder)),
            mix.weight_cross_border,
            "cross-border",
        );
    }

    /// Posts and voids per authorisation; refunds per payment (plus the repeated full
    /// refunds after partial ones). Only originals early enough that every follow-up
    /// (at most 3 s, or 2 x 8 s for refunds) fell inside the 20 s are counted.
    fn follow_ups_match_their_shares(requests: &[Request], mix: &MixSpec) {
        let early = |request: &&Request, s: u64| request.offset_ns < s * 1_000_000_000;
        let authorisations: HashSet<u128> = requests
            .iter()
            .filter(|r| r.kind == Kind::Authorisation && early(r, 15))
            .map(|r| r.transfers[0].id)
            .collect();
        let payments_early: HashSet<u128> = requests
            .iter()
            .filter(|r| matches!(r.kind, Kind::Payment | Kind::InsuredPayment) && early(r, 3))
            .map(|r| r.transfers[0].id)
            .collect();
        let follow_ups = |kind: Kind, originals: &HashSet<u128>| {
            let n = requests
                .iter()
                .filter(|r| r.kind == kind && originals.contains(&r.transfers[0].pending_id))
                .count();
            n as f64 / originals.len() as f64
        };
        close(
            follow_ups(Kind::Post, &authorisations),
            mix.post_share,
            "posts",
        );
        close(
            follow_ups(Kind::Void, &authorisations),
            mix.void_share,
            "voids",
        );
        let refunds_expected =
            mix.refund_share * (1.0 + mix.refund_partial_share * mix.refund_again_share);
        let refunds = follow_ups(Kind::Refund, &payments_early);
        assert!(
            (refunds - refunds_expected).abs() < 0.005,
            "refunds {refunds}"
        );
    }

    /// Insured payments and cross-border orders are linked pairs; the rest are single.
    fn insured_and_cross_border_requests_are_linked_pairs(requests: &[Request]) {
        for request in requests {
            let linked = request
                .transfers
                .iter()
                .filter(|t| t.flags.contains(TransferFlags::LINKED));
            match request.kind {
                Kind::InsuredPayment | Kind::CrossBorder => {
                    assert_eq!(request.transfers.len(), 2);
                    assert_eq!(linked.count(), 1);
                    assert!(!request.transfers[1].flags.contains(TransferFlags::LINKED));
                }
                _ => assert_eq!(request.transfers.len(), 1),
            }
        }
    }

    #[test]
    fn merchants_are_zipf_skewed() {
        let requests = draw(5);
        let mut per_merchant: HashMap<u128, u64> = HashMap::new();
        for request in requests.iter().filter(|r| r.kind == Kind::Payment) {
            *per_merchant
                .entry(request.transfers[0].credit_account_id)
                .or_default() += 1;
        }
        let mut counts: Vec<u64> = per_merchant.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let total: u64 = counts.iter().sum();
        let top_ten: u64 = counts.iter().take(10).sum();
        // With s = 1.1 over 1,000 merchants the top 1% take well over a third.
        assert!(
            top_ten * 3 > total,
            "top 10 merchants: {top_ten} of {total}"
        );
    }

    #[test]
    fn same_seed_same_requests_and_ids_are_unique() {
        let first = draw(42);
        assert_eq!(first, draw(42));
        assert_ne!(first, draw(43));
        let mut ids = HashSet::new();
        for transfer in first.iter().flat_map(|r| &r.transfers) {
            assert!(ids.insert(transfer.id), "duplicate id");
            assert!(tally_types::id_is_valid(transfer.id));
        }
    }

    #[test]
    fn amounts_are_exact_minor_units_on_each_ledger() {
        for request in draw(3).iter().filter(|r| r.kind == Kind::CrossBorder) {
            let payout = &request.transfers[1];
            assert_ne!(payout.ledger, LEDGER_CNY);
            assert!(payout.amount > 0);
            if payout.ledger == 392 {
                assert!(
                    (500..=30_000).contains(&payout.amount),
                    "JPY has no minor unit"
                );
            }
            assert!(request.transfers[0].amount > 0);
        }
    }
}
