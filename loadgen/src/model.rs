//! The load generator's own balance model, built only from acknowledged results, and the
//! post-run verification of the ledger against it.
//!
//! Every acknowledged `ok` event's effect is applied to an independent balance map
//! (single-phase, pending, post, void, refund). Acknowledgements arrive in completion
//! order, which may differ from the engine's order, so a post or void whose pending
//! transfer has not been seen yet is parked until it is.
//!
//! Expiry: after the run the runner waits until every unresolved short-timeout
//! authorisation is past its expiry and submits one last "sweep" transfer. Per the spec,
//! expiries are released before the first batch stamped at or after their time, so an
//! unresolved pending transfer P is expired exactly when
//! `P.timestamp + P.timeout s <= sweep.timestamp`; otherwise it must still be pending.
//! The model decides each one that way, and the engine's pending balances must agree.
//!
//! Results: where the model can tell a transfer's result in advance ([`Model::predict`]:
//! single-phase, fresh, between two distinct accounts without balance limits), a run may
//! ask it to check each such result ([`Model::check_predictions`]); the transfers
//! workload does, so every one of its results must be `ok`. The festival's results
//! depend on the order concurrent submissions meet in, so the festival does not.

use crate::population::Population;
use crate::target::{Outcome, Target};
use std::collections::HashMap;
use tally_types::{
    AccountFlags, BATCH_EVENTS_MAX, NS_PER_S, ResultCode, Transfer, TransferFlags, id_is_valid,
};

#[derive(Debug, Clone, Copy)]
struct PendingState {
    debit: u32,
    credit: u32,
    amount: u128,
    timestamp: u64,
    timeout_s: u32,
    resolved: bool,
}

/// An acknowledged `ok` transfer, for the presence check.
#[derive(Debug, Clone, Copy)]
struct Acknowledged {
    id: u128,
    debit: u32,
    credit: u32,
    /// Expected stored amount; `None` where the engine fills it (void).
    amount: Option<u128>,
}

/// Balances of one account: debits pending, debits posted, credits pending, credits posted.
type Balances = [u128; 4];
const DP: usize = 0;
const DPO: usize = 1;
const CP: usize = 2;
const CPO: usize = 3;

/// The model's maps are keyed by ids the generator chose itself, so they need no
/// protection against chosen keys: foldhash (fast, still seeded per map) instead of
/// SipHash leaves more CPU to the engine that shares the machine with the generator.
type IdHash = foldhash::fast::RandomState;

/// Expected ledger state.
#[derive(Debug)]
pub struct Model {
    population: Population,
    balances: Vec<Balances>,
    pendings: HashMap<u128, PendingState, IdHash>,
    /// Posts and voids acknowledged before their pending transfer, by pending id.
    parked: HashMap<u128, Vec<Transfer>, IdHash>,
    acknowledged: Vec<Acknowledged>,
    /// Check every result [`Model::predict`] can tell against the prediction.
    predictions_checked: bool,
    /// Results checked against a prediction.
    results_predicted: u64,
    /// Results that differed from their prediction.
    results_mispredicted: u64,
    /// Inconsistencies met while applying results (an ok event the model cannot explain).
    pub anomalies: Vec<String>,
}

/// What the verification found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verification {
    /// Accounts looked up.
    pub accounts_checked: u64,
    /// Accounts the ledger does not have.
    pub accounts_missing: u64,
    /// Accounts whose balances differ from the model's.
    pub accounts_mismatched: u64,
    /// Acknowledged `ok` transfers looked up.
    pub transfers_checked: u64,
    /// Acknowledged `ok` transfers the ledger does not have.
    pub transfers_missing: u64,
    /// Transfers stored with other accounts or another amount than submitted.
    pub transfers_mismatched: u64,
    /// Per ledger: (ledger, debits_posted == credits_posted && pending likewise).
    pub conservation: Vec<(u32, bool)>,
    /// Every ledger conserves money (and at least one ledger was checked).
    pub conservation_ok: bool,
    /// Short-timeout authorisations the model expects still pending after the sweep.
    pub pending_left: u64,
    /// Short-timeout authorisations the model expects expired by the sweep.
    pub expired: u64,
    /// Results checked against the model's prediction (only where the run asked for it).
    pub results_predicted: u64,
    /// Results that differed from the model's prediction.
    pub results_mispredicted: u64,
    /// Inconsistencies found while applying results or verifying (the first few).
    pub anomalies: Vec<String>,
    /// Conservation holds, nothing is missing or different, every predicted result came
    /// true, and no anomaly was found.
    pub verified_ok: bool,
}

const ANOMALIES_KEPT: usize = 20;

impl Model {
    /// An empty model of `population` (all balances zero).
    pub fn new(population: Population) -> Model {
        Model::with_capacity(population, 0)
    }

    /// Sized up front for about `transfers_hint` acknowledged transfers, so no growth
    /// (a copy of hundreds of MB under the model's lock) stalls callers mid-run.
    pub fn with_capacity(population: Population, transfers_hint: usize) -> Model {
        let count = population.account_count();
        Model {
            population,
            balances: vec![[0; 4]; count],
            pendings: HashMap::with_capacity_and_hasher(transfers_hint / 10, IdHash::default()),
            parked: HashMap::default(),
            acknowledged: Vec::with_capacity(transfers_hint),
            predictions_checked: false,
            results_predicted: 0,
            results_mispredicted: 0,
            anomalies: Vec::new(),
        }
    }

    /// From now on, checks every result [`Model::predict`] can tell: one that differs
    /// is an anomaly and fails the verification.
    pub fn check_predictions(&mut self) {
        self.predictions_checked = true;
    }

    /// The result `transfer` must get, where the model can tell it in advance: `ok` for
    /// a valid single-phase transfer between two distinct accounts of the population on
    /// its ledger, neither with a balance limit, that overflows no balance. `None`
    /// otherwise (any flag, a limit, an unknown account: the result then depends on what
    /// the ledger holds). The id must be fresh, which the generators ensure by drawing
    /// each id once; a reused id would answer `exists`, and a check reports it.
    pub fn predict(&self, transfer: &Transfer) -> Option<ResultCode> {
        let valid = id_is_valid(transfer.id)
            && transfer.flags.is_empty()
            && transfer.pending_id == 0
            && transfer.timeout == 0
            && transfer.ledger != 0
            && transfer.code != 0
            && transfer.amount != 0
            && transfer.debit_account_id != transfer.credit_account_id;
        if !valid {
            return None;
        }
        let debit = self.population.slot(transfer.debit_account_id)?;
        let credit = self.population.slot(transfer.credit_account_id)?;
        let (debit_account, credit_account) = (
            self.population.account_at(debit),
            self.population.account_at(credit),
        );
        let unlimited = !debit_account
            .flags
            .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && !credit_account
                .flags
                .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS);
        let same_ledger =
            debit_account.ledger == transfer.ledger && credit_account.ledger == transfer.ledger;
        let fits = |balances: &Balances, posted: usize, pending: usize| {
            balances[posted]
                .checked_add(transfer.amount)
                .and_then(|total| total.checked_add(balances[pending]))
                .is_some()
        };
        let no_overflow =
            fits(&self.balances[debit], DPO, DP) && fits(&self.balances[credit], CPO, CP);
        (unlimited && same_ledger && no_overflow).then_some(ResultCode::Ok)
    }

    /// Checks `transfers`' results against their predictions. A transfer in a linked
    /// chain is not predicted: the chain's other events decide it too.
    fn check_results(&mut self, transfers: &[Transfer], outcomes: &[Outcome]) {
        let mut chained = false;
        for (transfer, outcome) in transfers.iter().zip(outcomes) {
            let in_chain = chained || transfer.flags.contains(TransferFlags::LINKED);
            chained = transfer.flags.contains(TransferFlags::LINKED);
            if in_chain {
                continue;
            }
            let Some(expected) = self.predict(transfer) else {
                continue;
            };
            self.results_predicted += 1;
            if outcome.code != expected {
                self.results_mispredicted += 1;
                self.anomaly(format!(
                    "transfer {}: the model predicted {expected}, the ledger answered {}",
                    transfer.id, outcome.code
                ));
            }
        }
    }

    /// Starts from balances that already exist (a kept data directory).
    pub fn set_baseline(&mut self, slot: usize, balances: [u128; 4]) {
        self.balances[slot] = balances;
    }

    /// The balances the model expects of account `id` (debits pending, debits posted,
    /// credits pending, credits posted); `None` for an account outside the population.
    pub fn balances_of(&self, id: u128) -> Option<[u128; 4]> {
        self.population.slot(id).map(|slot| self.balances[slot])
    }

    /// The population the model follows.
    pub fn population(&self) -> &Population {
        &self.population
    }

    /// Records an inconsistency found outside the model (kept with its own).
    pub fn report_anomaly(&mut self, text: String) {
        self.anomaly(text);
    }

    fn anomaly(&mut self, text: String) {
        if self.anomalies.len() < ANOMALIES_KEPT {
            self.anomalies.push(text);
        }
    }

    fn slots(&mut self, transfer: &Transfer) -> Option<(u32, u32)> {
        let debit = self.population.slot(transfer.debit_account_id);
        let credit = self.population.slot(transfer.credit_account_id);
        match (debit, credit) {
            (Some(debit), Some(credit)) => Some((debit as u32, credit as u32)),
            _ => {
                self.anomaly(format!("transfer {} ok on unknown accounts", transfer.id));
                None
            }
        }
    }

    fn add(&mut self, slot: u32, field: usize, amount: u128) {
        let value = &mut self.balances[slot as usize][field];
        *value = value.saturating_add(amount);
    }

    fn sub(&mut self, slot: u32, field: usize, amount: u128) {
        let value = self.balances[slot as usize][field];
        match value.checked_sub(amount) {
            Some(rest) => self.balances[slot as usize][field] = rest,
            None => self.anomaly(format!("slot {slot} balance {field} would go negative")),
        }
    }

    /// Applies the results of one submission.
    pub fn apply(&mut self, transfers: &[Transfer], outcomes: &[Outcome]) {
        if transfers.len() != outcomes.len() {
            self.anomaly(format!(
                "{} results for {} events",
                outcomes.len(),
                transfers.len()
            ));
            return;
        }
        if self.predictions_checked {
            self.check_results(transfers, outcomes);
        }
        for (transfer, outcome) in transfers.iter().zip(outcomes) {
            if outcome.code == ResultCode::Ok {
                self.apply_ok(transfer, outcome.timestamp);
            }
        }
    }

    fn apply_ok(&mut self, transfer: &Transfer, timestamp: u64) {
        let flags = transfer.flags;
        let settles = flags.contains(TransferFlags::POST_PENDING_TRANSFER)
            || flags.contains(TransferFlags::VOID_PENDING_TRANSFER);
        if settles {
            if self.pendings.contains_key(&transfer.pending_id) {
                self.settle(transfer);
            } else {
                self.parked
                    .entry(transfer.pending_id)
                    .or_default()
                    .push(*transfer);
            }
            return;
        }
        let Some((debit, credit)) = self.slots(transfer) else {
            return;
        };
        self.acknowledged.push(Acknowledged {
            id: transfer.id,
            debit,
            credit,
            amount: Some(transfer.amount),
        });
        if flags.contains(TransferFlags::PENDING) {
            self.add(debit, DP, transfer.amount);
            self.add(credit, CP, transfer.amount);
            let state = PendingState {
                debit,
                credit,
                amount: transfer.amount,
                timestamp,
                timeout_s: transfer.timeout,
                resolved: false,
            };
            self.pendings.insert(transfer.id, state);
            for parked in self.parked.remove(&transfer.id).unwrap_or_default() {
                self.settle(&parked);
            }
        } else {
            // Single-phase and refunds (refunds carry their accounts explicitly).
            self.add(debit, DPO, transfer.amount);
            self.add(credit, CPO, transfer.amount);
        }
    }

    fn settle(&mut self, transfer: &Transfer) {
        let Some(pending) = self.pendings.get(&transfer.pending_id).copied() else {
            return;
        };
        if pending.resolved {
            self.anomaly(format!("pending {} settled twice", transfer.pending_id));
            return;
        }
        self.sub(pending.debit, DP, pending.amount);
        self.sub(pending.credit, CP, pending.amount);
        let posted = transfer
            .flags
            .contains(TransferFlags::POST_PENDING_TRANSFER);
        let amount = if transfer.amount == 0 {
            pending.amount
        } else {
            transfer.amount
        };
        if posted {
            self.add(pending.debit, DPO, amount);
            self.add(pending.credit, CPO, amount);
        }
        if let Some(state) = self.pendings.get_mut(&transfer.pending_id) {
            state.resolved = true;
        }
        self.acknowledged.push(Acknowledged {
            id: transfer.id,
            debit: pending.debit,
            credit: pending.credit,
            amount: posted.then_some(amount),
        });
    }

    /// Latest expiry instant (engine ns) among unresolved pending transfers whose timeout
    /// is at most `timeout_s_max`; the runner waits past it before the sweep.
    pub fn expiry_ns_max(&self, timeout_s_max: u32) -> Option<u64> {
        self.pendings
            .values()
            .filter(|p| !p.resolved && p.timeout_s > 0 && p.timeout_s <= timeout_s_max)
            .map(|p| p.timestamp + u64::from(p.timeout_s) * NS_PER_S)
            .max()
    }

    /// Releases every unresolved pending transfer that expired before `sweep_timestamp`.
    /// Returns (expired, still pending).
    pub fn expire(&mut self, sweep_timestamp: u64) -> (u64, u64) {
        let mut expired = Vec::new();
        let mut still = 0;
        for pending in self.pendings.values_mut().filter(|p| !p.resolved) {
            let expiry = pending.timestamp + u64::from(pending.timeout_s) * NS_PER_S;
            if pending.timeout_s > 0 && expiry <= sweep_timestamp {
                pending.resolved = true;
                expired.push(*pending);
            } else {
                still += 1;
            }
        }
        for pending in &expired {
            self.sub(pending.debit, DP, pending.amount);
            self.sub(pending.credit, CP, pending.amount);
        }
        (expired.len() as u64, still)
    }

    /// Parked posts/voids whose pending transfer was never acknowledged ok: the engine
    /// said ok to settling something the model never saw succeed.
    fn check_parked(&mut self) {
        let orphans: Vec<u128> = self.parked.keys().copied().collect();
        for pending_id in orphans {
            self.anomaly(format!(
                "settlement of pending {pending_id} acknowledged without it"
            ));
        }
    }

    /// Acknowledged `ok` transfers the model holds.
    pub fn acknowledged_ok(&self) -> u64 {
        self.acknowledged.len() as u64
    }

    /// Checks the ledger against the model: conservation per ledger over all accounts,
    /// every acknowledged ok transfer present, every balance as expected.
    pub fn verify<T: Target>(
        &mut self,
        target: &T,
        expired: u64,
        pending_left: u64,
    ) -> Verification {
        self.check_parked();
        let mut report = Verification {
            expired,
            pending_left,
            results_predicted: self.results_predicted,
            results_mispredicted: self.results_mispredicted,
            ..Verification::default()
        };
        let count = self.population.account_count();
        let mut sums: HashMap<u32, Balances> = HashMap::new();
        for start in (0..count).step_by(BATCH_EVENTS_MAX) {
            let end = (start + BATCH_EVENTS_MAX).min(count);
            let ids: Vec<u128> = (start..end)
                .map(|s| self.population.account_at(s).id)
                .collect();
            let found = target.lookup_accounts(&ids);
            let by_id: HashMap<u128, _> = found.iter().map(|a| (a.id, a)).collect();
            for (slot, id) in (start..end).zip(&ids) {
                report.accounts_checked += 1;
                let Some(account) = by_id.get(id) else {
                    report.accounts_missing += 1;
                    continue;
                };
                let actual = [
                    account.debits_pending,
                    account.debits_posted,
                    account.credits_pending,
                    account.credits_posted,
                ];
                let sum = sums.entry(account.ledger).or_default();
                for (total, value) in sum.iter_mut().zip(actual) {
                    *total = total.saturating_add(value);
                }
                if actual != self.balances[slot] {
                    report.accounts_mismatched += 1;
                    let expected = self.balances[slot];
                    self.anomaly(format!(
                        "account {id}: ledger {actual:?}, model {expected:?}"
                    ));
                }
            }
        }
        let mut ledgers: Vec<_> = sums.into_iter().collect();
        ledgers.sort_unstable_by_key(|(ledger, _)| *ledger);
        report.conservation = ledgers
            .iter()
            .map(|(ledger, s)| (*ledger, s[DPO] == s[CPO] && s[DP] == s[CP]))
            .collect();
        report.conservation_ok =
            !report.conservation.is_empty() && report.conservation.iter().all(|(_, ok)| *ok);
        self.verify_transfers(target, &mut report);
        report.anomalies = self.anomalies.clone();
        report.verified_ok = report.conservation_ok
            && report.accounts_missing == 0
            && report.accounts_mismatched == 0
            && report.transfers_missing == 0
            && report.transfers_mismatched == 0
            && report.results_mispredicted == 0
            && self.anomalies.is_empty();
        report
    }

    fn verify_transfers<T: Target>(&mut self, target: &T, report: &mut Verification) {
        let acknowledged = std::mem::take(&mut self.acknowledged);
        for chunk in acknowledged.chunks(BATCH_EVENTS_MAX) {
            let ids: Vec<u128> = chunk.iter().map(|a| a.id).collect();
            let found: HashMap<u128, Transfer> = target
                .lookup_transfers(&ids)
                .into_iter()
                .map(|t| (t.id, t))
                .collect();
            for expected in chunk {
                report.transfers_checked += 1;
                let Some(stored) = found.get(&expected.id) else {
                    report.transfers_missing += 1;
                    if report.transfers_missing <= 3 {
                        self.anomaly(format!("acknowledged transfer {} is missing", expected.id));
                    }
                    continue;
                };
                let debit = self.population.slot(stored.debit_account_id);
                let credit = self.population.slot(stored.credit_account_id);
                let accounts_match = debit == Some(expected.debit as usize)
                    && credit == Some(expected.credit as usize);
                let amount_matches = expected.amount.is_none_or(|a| a == stored.amount);
                if !accounts_match || !amount_matches {
                    report.transfers_mismatched += 1;
                    if report.transfers_mismatched <= 3 {
                        self.anomaly(format!(
                            "transfer {} differs from what was acknowledged",
                            expected.id
                        ));
                    }
                }
            }
        }
        self.acknowledged = acknowledged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::{LEDGER_CNY, PopulationSpec};

    fn model() -> Model {
        let spec = PopulationSpec {
            users: 10,
            merchants: 3,
            foreign_merchants: 1,
            ..PopulationSpec::default()
        };
        Model::new(Population::new(spec))
    }

    fn ok(timestamp: u64) -> Outcome {
        Outcome {
            code: ResultCode::Ok,
            timestamp,
        }
    }

    #[test]
    fn settlements_seen_before_their_pending_are_applied_once_it_arrives() {
        let mut model = model();
        let population = model.population.clone();
        let (user, merchant) = (population.user(0), population.merchant(0));
        let pending = Transfer {
            id: 10,
            debit_account_id: user,
            credit_account_id: merchant,
            amount: 500,
            ledger: LEDGER_CNY,
            code: 4,
            flags: TransferFlags::PENDING,
            timeout: 60,
            ..Transfer::default()
        };
        let post = Transfer {
            id: 11,
            pending_id: 10,
            amount: 300,
            flags: TransferFlags::POST_PENDING_TRANSFER,
            ..Transfer::default()
        };
        model.apply(&[post], &[ok(2)]);
        model.apply(&[pending], &[ok(1)]);
        assert_eq!(model.balances[0], [0, 300, 0, 0]);
        assert_eq!(model.balances[10], [0, 0, 0, 300]);
        assert!(model.anomalies.is_empty());
        assert_eq!(model.acknowledged_ok(), 2);
    }

    #[test]
    fn a_result_other_than_the_predicted_one_fails_the_check() {
        let mut model = model();
        let population = model.population.clone();
        // A merchant and the loan book have no limits: ok is certain.
        let loan = Transfer {
            id: 20,
            debit_account_id: population.system(crate::population::System::LoanBook),
            credit_account_id: population.merchant(0),
            amount: 100,
            ledger: LEDGER_CNY,
            code: 8,
            ..Transfer::default()
        };
        // A user may not be overdrawn: the model cannot tell.
        let payment = Transfer {
            id: 21,
            debit_account_id: population.user(0),
            ..loan
        };
        assert_eq!(model.predict(&loan), Some(ResultCode::Ok));
        assert_eq!(model.predict(&payment), None);
        let linked = Transfer {
            flags: TransferFlags::LINKED,
            ..loan
        };
        assert_eq!(model.predict(&linked), None);
        let failed = |code| Outcome { code, timestamp: 1 };
        model.apply(&[loan], &[failed(ResultCode::Exists)]);
        assert!(model.anomalies.is_empty(), "not checked unless asked");
        model.check_predictions();
        model.apply(&[payment], &[failed(ResultCode::ExceedsCredits)]);
        assert!(model.anomalies.is_empty(), "no prediction, no check");
        model.apply(&[loan], &[ok(2)]);
        model.apply(&[loan], &[failed(ResultCode::Exists)]);
        assert_eq!(
            (model.results_predicted, model.results_mispredicted),
            (2, 1)
        );
        assert_eq!(model.anomalies.len(), 1, "{:?}", model.anomalies);
    }

    #[test]
    fn expiry_follows_the_sweep_timestamp() {
        let mut model = model();
        let population = model.population.clone();
        let pending = |id, timeout| Transfer {
            id,
            debit_account_id: population.user(1),
            credit_account_id: population.merchant(1),
            amount: 100,
            ledger: LEDGER_CNY,
            code: 4,
            flags: TransferFlags::PENDING,
            timeout,
            ..Transfer::default()
        };
        model.apply(&[pending(1, 2)], &[ok(NS_PER_S)]);
        model.apply(&[pending(2, 60)], &[ok(NS_PER_S)]);
        assert_eq!(model.expiry_ns_max(10), Some(3 * NS_PER_S));
        assert_eq!(
            model.expire(3 * NS_PER_S),
            (1, 1),
            "expired at exactly its time"
        );
        assert_eq!(model.balances[1], [100, 0, 0, 0]);
    }
}
