//! The festival's end of day, after the expiry sweep: a few merchants are closed (a
//! pending transfer of 0 with `closing_credit`), refused a payment while closed and
//! reopened (the closure voided); then every merchant settles what it holds to the
//! banks with one `balancing_debit` sweep, capped at [`SETTLEMENT_CAP_YUAN`]; then the
//! merchants that keep a balance history are read back.
//!
//! By now the model holds every acknowledged balance, so it predicts every result and
//! every amount moved: the clamp of each sweep, the refusal of a closed account, the
//! last row of each history. Each difference is an anomaly of the model, which fails
//! the verification that follows.

use crate::model::Model;
use crate::population::{
    HISTORY_MERCHANT_EVERY, LEDGER_CNY, System, TRANSFER_TAG_END_OF_DAY, cny_transfer, minor,
    transfer_code, transfer_id,
};
use crate::target::{Outcome, Target};
use tally_types::currency::CurrencyTable;
use tally_types::{AccountFilter, BATCH_EVENTS_MAX, Batch, ResultCode, Transfer, TransferFlags};

/// Merchants closed and reopened (the least popular ones).
pub const CLOSED_MERCHANTS: u64 = 3;

/// The most one merchant's settlement sweep moves (yuan); the most popular merchants
/// hold more after a busy run, and keep the rest for the next sweep.
pub const SETTLEMENT_CAP_YUAN: i64 = 1_000_000;

/// What the end of day did, for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EndOfDay {
    /// Merchants closed, refused a payment while closed, reopened and paid again.
    pub merchants_closed: u64,
    /// Settlement sweeps (one per merchant), every one `ok`.
    pub merchants_settled: u64,
    /// Sweeps that moved less than the cap (the merchant held less).
    pub settlements_clamped: u64,
    /// Money moved to the banks, in fen.
    pub settled_fen: u128,
    /// Merchants whose latest history row was checked against the model (`None`: the
    /// target cannot read balance histories).
    pub histories_checked: Option<u64>,
    /// Results, amounts or history rows that differed from the model's prediction.
    pub mispredicted: u64,
}

/// The closures, the sweeps and the history checks, each result checked against the
/// model's prediction and every `ok` applied to the model. `nonce` keeps the ids of
/// runs on a kept data directory apart. An error means a submission got no results.
pub fn close_the_day<T: Target>(
    target: &T,
    model: &mut Model,
    nonce: u64,
) -> Result<EndOfDay, String> {
    let mut day = Day {
        target,
        model,
        nonce,
        sequence: 0,
        report: EndOfDay::default(),
    };
    day.close_and_reopen()?;
    day.settle()?;
    day.check_histories();
    Ok(day.report)
}

struct Day<'a, T> {
    target: &'a T,
    model: &'a mut Model,
    nonce: u64,
    sequence: u32,
    report: EndOfDay,
}

impl<T: Target> Day<'_, T> {
    /// A fresh end-of-day transfer on the CNY ledger.
    fn transfer(&mut self, debit: u128, credit: u128, amount: u128, code: u16) -> Transfer {
        self.sequence += 1;
        let sequence = (u64::from(self.nonce as u32) << 32) | u64::from(self.sequence);
        let id = transfer_id(TRANSFER_TAG_END_OF_DAY, sequence, debit);
        cny_transfer(id, debit, credit, amount, code)
    }

    /// Submits `submitted` in batches, expects `expected[i]` of each, and applies each
    /// `ok` to the model as `applied[i]` (the transfer as it is stored: a sweep's
    /// predicted amount rather than its cap).
    fn submit(
        &mut self,
        submitted: &[Transfer],
        applied: &[Transfer],
        expected: &[ResultCode],
    ) -> Result<(), String> {
        assert!(submitted.len() == applied.len() && applied.len() == expected.len());
        for start in (0..submitted.len()).step_by(BATCH_EVENTS_MAX) {
            let end = (start + BATCH_EVENTS_MAX).min(submitted.len());
            let batch = Batch::CreateTransfers(submitted[start..end].to_vec());
            let outcomes: Vec<Outcome> = self
                .target
                .submit_blocking(batch)
                .map_err(|error| format!("end of day: {error:?}"))?;
            if outcomes.len() != end - start {
                return Err(format!(
                    "end of day: {} results for {} transfers",
                    outcomes.len(),
                    end - start
                ));
            }
            for (index, outcome) in (start..end).zip(&outcomes) {
                if outcome.code != expected[index] {
                    self.mispredicted(format!(
                        "end-of-day transfer {}: {}, expected {}",
                        submitted[index].id, outcome.code, expected[index]
                    ));
                }
            }
            self.model.apply(&applied[start..end], &outcomes);
        }
        Ok(())
    }

    fn mispredicted(&mut self, text: String) {
        self.report.mispredicted += 1;
        self.model.report_anomaly(text);
    }

    /// Closes the least popular merchants, tries to pay each while closed, reopens
    /// them by voiding the closure and pays each once more.
    fn close_and_reopen(&mut self) -> Result<(), String> {
        let population = self.model.population().clone();
        let bank = population.system(System::Bank);
        let merchants = population.spec.merchants;
        let closed: Vec<u128> = (merchants.saturating_sub(CLOSED_MERCHANTS)..merchants)
            .map(|index| population.merchant(index))
            .collect();
        let closures: Vec<Transfer> = closed
            .iter()
            .map(|&merchant| Transfer {
                flags: TransferFlags::PENDING.with(TransferFlags::CLOSING_CREDIT),
                ..self.transfer(bank, merchant, 0, transfer_code::CLOSURE)
            })
            .collect();
        let payments = |day: &mut Self| -> Vec<Transfer> {
            closed
                .iter()
                .map(|&merchant| day.transfer(bank, merchant, 1, transfer_code::PAYMENT))
                .collect()
        };
        let voids: Vec<Transfer> = closures
            .iter()
            .map(|closure| Transfer {
                pending_id: closure.id,
                flags: TransferFlags::VOID_PENDING_TRANSFER,
                ..self.transfer(bank, closure.credit_account_id, 0, transfer_code::CLOSURE)
            })
            .collect();
        let every = |code| vec![code; closed.len()];
        self.submit(&closures, &closures, &every(ResultCode::Ok))?;
        let refused = payments(self);
        let code = ResultCode::CreditAccountAlreadyClosed;
        self.submit(&refused, &refused, &every(code))?;
        self.submit(&voids, &voids, &every(ResultCode::Ok))?;
        let paid = payments(self);
        self.submit(&paid, &paid, &every(ResultCode::Ok))?;
        self.report.merchants_closed = closed.len() as u64;
        Ok(())
    }

    /// One `balancing_debit` sweep per merchant to the banks: the model predicts each
    /// amount (what the merchant holds beyond its debits, at most the cap).
    fn settle(&mut self) -> Result<(), String> {
        let population = self.model.population().clone();
        let bank = population.system(System::Bank);
        let scale = CurrencyTable::default().scale(LEDGER_CNY);
        let cap = minor(SETTLEMENT_CAP_YUAN.into(), scale);
        let mut submitted = Vec::new();
        let mut applied = Vec::new();
        for index in 0..population.spec.merchants {
            let merchant = population.merchant(index);
            let Some([debits_pending, debits_posted, _, credits_posted]) =
                self.model.balances_of(merchant)
            else {
                continue;
            };
            let held = credits_posted.saturating_sub(debits_posted.saturating_add(debits_pending));
            let moved = held.min(cap);
            let sweep = Transfer {
                flags: TransferFlags::BALANCING_DEBIT,
                ..self.transfer(merchant, bank, cap, transfer_code::SETTLEMENT)
            };
            submitted.push(sweep);
            applied.push(Transfer {
                amount: moved,
                ..sweep
            });
            self.report.settled_fen += moved;
            self.report.settlements_clamped += u64::from(moved < cap);
        }
        let expected = vec![ResultCode::Ok; submitted.len()];
        self.submit(&submitted, &applied, &expected)?;
        self.report.merchants_settled = submitted.len() as u64;
        self.check_amounts_moved(&applied);
        Ok(())
    }

    /// Each stored sweep must record the amount the model predicted it would move.
    fn check_amounts_moved(&mut self, predicted: &[Transfer]) {
        for chunk in predicted.chunks(BATCH_EVENTS_MAX) {
            let ids: Vec<u128> = chunk.iter().map(|t| t.id).collect();
            let stored: std::collections::HashMap<u128, u128> = (self.target)
                .lookup_transfers(&ids)
                .into_iter()
                .map(|t| (t.id, t.amount))
                .collect();
            for expected in chunk {
                let found = stored.get(&expected.id).copied();
                if found != Some(expected.amount) {
                    self.mispredicted(format!(
                        "settlement {}: moved {found:?}, model {}",
                        expected.id, expected.amount
                    ));
                }
            }
        }
    }

    /// The latest row of each history merchant's balance history must hold the
    /// balances the model expects.
    fn check_histories(&mut self) {
        let population = self.model.population().clone();
        let mut checked = 0;
        for index in (0..population.spec.merchants).step_by(HISTORY_MERCHANT_EVERY as usize) {
            let merchant = population.merchant(index);
            let latest = AccountFilter {
                limit: 1,
                reversed: true,
                ..AccountFilter::new(merchant)
            };
            let Some(rows) = self.target.account_balances(&latest) else {
                return;
            };
            let Some(expected) = self.model.balances_of(merchant) else {
                continue;
            };
            // No row at all: the merchant never moved, and the model must agree.
            let found = rows.first().map_or([0; 4], |row| {
                let b = row.balances;
                [
                    b.debits_pending,
                    b.debits_posted,
                    b.credits_pending,
                    b.credits_posted,
                ]
            });
            if found != expected {
                self.mispredicted(format!(
                    "merchant {merchant}: latest history row {found:?}, model {expected:?}"
                ));
            }
            checked += 1;
        }
        self.report.histories_checked = Some(checked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::{Population, PopulationSpec};
    use crate::runner::setup;
    use crate::target::memory::MemoryTarget;

    /// A funded population of 250 merchants on the in-memory ledger, with one payment
    /// to each of the first merchants and a refund from merchant 1 beyond what it held.
    fn paid_day() -> (MemoryTarget, Model) {
        let population = Population::new(PopulationSpec {
            users: 500,
            merchants: 250,
            foreign_merchants: 2,
            ..PopulationSpec::default()
        });
        let target = MemoryTarget::new();
        let mut model = Model::new(population.clone());
        setup(&target, &population, &mut model, false).expect("setup");
        let bank = population.system(System::Bank);
        let mut paid: Vec<Transfer> = (0..5u64)
            .map(|index| {
                cny_transfer(
                    900 + u128::from(index),
                    bank,
                    population.merchant(index),
                    1_000 * u128::from(index + 1),
                    transfer_code::PAYMENT,
                )
            })
            .collect();
        paid.push(Transfer {
            id: 910,
            debit_account_id: population.merchant(1),
            credit_account_id: bank,
            amount: 5_000,
            ..paid[0]
        });
        let outcomes = target
            .submit_blocking(Batch::CreateTransfers(paid.clone()))
            .expect("payments");
        assert!(outcomes.iter().all(|o| o.code == ResultCode::Ok));
        model.apply(&paid, &outcomes);
        (target, model)
    }

    #[test]
    fn the_day_closes_as_the_model_predicts() {
        let (target, mut model) = paid_day();
        let day = close_the_day(&target, &mut model, 1).expect("end of day");
        assert_eq!(day.mispredicted, 0, "{:?}", model.anomalies);
        assert_eq!(day.merchants_closed, CLOSED_MERCHANTS);
        assert_eq!(day.merchants_settled, 250);
        // Merchant 1 owes more than it was paid: its sweep moves nothing. The closed
        // merchants were paid 1 fen each once reopened.
        assert_eq!(day.settled_fen, 1_000 + 3_000 + 4_000 + 5_000 + 3);
        assert_eq!(day.settlements_clamped, 250);
        assert_eq!(day.histories_checked, Some(3));
        let merchant = model.population().merchant(0);
        assert_eq!(model.balances_of(merchant), Some([0, 1_000, 0, 1_000]));
        let verification = model.verify(&target, 0, 0);
        assert!(verification.verified_ok, "{verification:?}");
    }

    #[test]
    fn a_sweep_or_history_the_model_did_not_predict_fails_the_day() {
        let (target, mut model) = paid_day();
        // The model believes merchant 100 (which keeps a history) was paid 7 fen.
        let merchant = model.population().merchant(100);
        let slot = model.population().slot(merchant).expect("a merchant");
        model.set_baseline(slot, [0, 0, 0, 7]);
        let day = close_the_day(&target, &mut model, 1).expect("end of day");
        // Its sweep moved 0, not 7; and its latest history row is not the model's.
        assert_eq!(day.mispredicted, 2, "{:?}", model.anomalies);
        assert!(!model.verify(&target, 0, 0).verified_ok);
    }
}
