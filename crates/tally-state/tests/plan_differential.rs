//! Sequential equivalence of planned execution (docs/spec.md §3.1): random groups applied by
//! plan on 2, 3, 4 and 8 parts, with the ready units run in random legal orders, give
//! the reference's results and state, batch for batch.
#![allow(clippy::unwrap_used)]

use tally_state::{Layout, Placement, Serial, StateMachine, plan, plan_with_escrow};
use tally_testkit::SeededRng;
use tally_testkit::workload::{Accounts, Workload};
use tally_types::{
    AccountBalance, AccountFilter, Batch, ChangeEvent, NS_PER_S, Transfer, TransferFlags,
};

#[derive(Debug, Default)]
struct Seen {
    planned_groups: u64,
    serial_groups: u64,
    units: u64,
    spanning_units: u64,
    delta_units: u64,
    overtaking_groups: u64,
    delta_accounts: u64,
}

fn run(seed: u64, layout: Layout, skew: Accounts, seen: &mut Seen) {
    let mut workload = Workload::new(seed, skew);
    let mut rng = SeededRng::new(seed ^ 0x5eed);
    let mut reference = StateMachine::new();
    let mut sharded = StateMachine::with_parts(layout);
    // Applies the same plans letting units overtake where both only take deltas, as
    // they would arrive with escrow.
    let mut overtaking = StateMachine::with_parts(layout);
    overtaking.set_change_capture(true);
    // Decides each unit without the parts it only adds to, and applies what it decided
    // there as deltas, each part in its log order (escrow).
    let mut decided = StateMachine::with_parts(layout);
    decided.set_change_capture(true);
    // Its own picks: how many steps it takes depends on the layout, and the groups
    // drawn from `rng` must not.
    let mut decided_rng = SeededRng::new(seed ^ 0xde17a);
    reference.set_change_capture(true);
    sharded.set_change_capture(true);
    let mut now = 1_000 * NS_PER_S;
    // Expiry instants of pending transfers created so far, to aim batches at.
    let mut expiries: Vec<u64> = Vec::new();
    for group_index in 0..60 {
        let batches: Vec<Batch> = (0..1 + rng.below(6)).map(|_| workload.batch()).collect();
        let mut stamped = Vec::new();
        for batch in &batches {
            // Now and then a batch starts just before an expiry instant, so that the
            // instant falls inside its span of stamps: it is released before the next
            // batch, not this one.
            let aimed = expiries
                .iter()
                .copied()
                .filter(|&at| at > now + batch.len() as u64)
                .min()
                .filter(|_| rng.chance(4));
            if let Some(at) = aimed {
                now = at - rng.below(batch.len().max(1) as u64);
            }
            stamped.push((now, batch));
            now += batch.len().max(1) as u64;
            // Mostly microseconds apart; now and then seconds, so timeouts come due
            // between groups and (serial fallback) inside one.
            now += if rng.chance(10) {
                NS_PER_S * rng.below(3)
            } else {
                1_000
            };
        }
        let expected: Vec<_> = stamped
            .iter()
            .map(|(stamp, batch)| reference.apply(*stamp, batch))
            .collect();
        for ((stamp, batch), results) in stamped.iter().zip(&expected) {
            if let Batch::CreateTransfers(events) = batch {
                for (index, (t, result)) in events.iter().zip(results).enumerate() {
                    if t.flags.contains(TransferFlags::PENDING) && t.timeout > 0 && result.is_ok() {
                        expiries.push(stamp + index as u64 + u64::from(t.timeout) * NS_PER_S);
                    }
                }
            }
        }
        let got = match plan(&sharded, &stamped) {
            Ok(plan) => {
                // The executor's plan and the escrow analysis cut the same units with
                // the same masks; only the analysis marks deltas.
                let escrow = plan_with_escrow(&sharded, &stamped).expect("planned alike");
                let masks = |plan: &tally_state::Plan| -> Vec<_> {
                    plan.units
                        .iter()
                        .map(|u| (u.batch, u.work, u.mask))
                        .collect()
                };
                assert_eq!(masks(&plan), masks(&escrow));
                assert!(plan.units.iter().all(|u| u.deltas == 0) && plan.touches.is_empty());
                seen.planned_groups += 1;
                seen.units += plan.units.len() as u64;
                seen.spanning_units += plan.units.iter().filter(|u| u.spans_parts()).count() as u64;
                seen.delta_units += escrow.units.iter().filter(|u| u.deltas != 0).count() as u64;
                for unit in &escrow.units {
                    // Every part that takes deltas is the part of an account that does.
                    let touches = &escrow.touches[unit.touches.0 as usize..unit.touches.1 as usize];
                    let delta_parts = touches
                        .iter()
                        .filter(|t| t.delta)
                        .fold(0, |mask, t| mask | 1 << layout.part_of(t.account));
                    assert_eq!(delta_parts, unit.deltas, "{unit:?} {touches:?}");
                    assert_eq!(unit.deltas & !unit.mask, 0);
                    assert_eq!(unit.deltas & unit.reads, 0);
                }
                let overtaken =
                    overtaking.apply_planned_overtaking_deltas(&stamped, &escrow, |ready| {
                        rng.below(ready as u64) as usize
                    });
                assert_eq!(
                    overtaken, expected,
                    "seed {seed}, {layout:?}, group {group_index}: deltas overtaking"
                );
                let with_deltas = decided.apply_planned_with_deltas(&stamped, &escrow, |ready| {
                    decided_rng.below(ready as u64) as usize
                });
                assert_eq!(
                    with_deltas, expected,
                    "seed {seed}, {layout:?}, group {group_index}: decided with deltas"
                );
                seen.delta_accounts += escrow.delta_accounts.len() as u64;
                sharded.apply_planned(&stamped, &plan, |ready| rng.below(ready as u64) as usize)
            }
            Err(Serial::ExpiryInsideGroup | Serial::Imported) => {
                seen.serial_groups += 1;
                for (stamp, batch) in &stamped {
                    overtaking.apply(*stamp, batch);
                    decided.apply(*stamp, batch);
                }
                stamped
                    .iter()
                    .map(|(stamp, batch)| sharded.apply(*stamp, batch))
                    .collect()
            }
            Err(Serial::OnePart) => unreachable!("several parts"),
        };
        assert_eq!(
            got, expected,
            "seed {seed}, {layout:?}, group {group_index}: results differ"
        );
        assert_eq!(
            sharded.image(),
            reference.image(),
            "seed {seed}, {layout:?}, group {group_index}: state differs"
        );
        assert_eq!(
            overtaking.image(),
            reference.image(),
            "seed {seed}, {layout:?}, group {group_index}: state differs, deltas overtaking"
        );
        assert_eq!(
            decided.image(),
            reference.image(),
            "seed {seed}, {layout:?}, group {group_index}: state differs, decided with deltas"
        );
        // This test aims batches so that expiry instants fall inside other batches'
        // stamps (the engine's stamping never does), so compare in a total order.
        let sorted = |mut changes: Vec<ChangeEvent>| {
            changes.sort_by_key(|e| {
                (
                    e.timestamp,
                    e.kind.code(),
                    e.transfer.id,
                    e.debit_account.id,
                )
            });
            changes
        };
        let changes = sorted(reference.take_changes());
        assert_eq!(
            sorted(sharded.take_changes()),
            changes,
            "seed {seed}, {layout:?}, group {group_index}: change events differ"
        );
        assert_eq!(
            sorted(decided.take_changes()),
            changes,
            "seed {seed}, {layout:?}, group {group_index}: change events differ, decided with deltas"
        );
        // The balances in change events follow the order deltas were applied in: when
        // they differ, a unit overtook another.
        if sorted(overtaking.take_changes()) != changes {
            seen.overtaking_groups += 1;
        }
    }
    assert!(reference.check_invariants().is_empty());
    assert!(sharded.check_invariants().is_empty());
    assert!(overtaking.check_invariants().is_empty());
    assert!(decided.check_invariants().is_empty());
    assert_eq!(decided.ledger_totals(), reference.ledger_totals());
    // Images leave out what loading rebuilds: each account's transfer list and
    // balance history, which deltas append to.
    assert_eq!(sharded.ledger_totals(), reference.ledger_totals());
    let expected = histories(&reference);
    for (name, state) in [("planned", &sharded), ("decided with deltas", &decided)] {
        let got = histories(state);
        assert_eq!(got.len(), expected.len());
        for (got, expected) in got.iter().zip(&expected) {
            assert_eq!(
                got, expected,
                "seed {seed}, {layout:?}, {name}: account {}",
                expected.0
            );
        }
    }
}

/// An account's id, its transfers and its balance rows, oldest and newest first.
type History = (u128, [Vec<Transfer>; 2], [Vec<AccountBalance>; 2]);

/// Per account (by id), its [`History`].
fn histories(state: &StateMachine) -> Vec<History> {
    let mut ids: Vec<u128> = state.accounts().map(|a| a.id).collect();
    ids.sort_unstable();
    ids.into_iter()
        .map(|id| {
            let filter = |reversed| AccountFilter {
                limit: u32::MAX,
                reversed,
                ..AccountFilter::new(id)
            };
            let transfers = [false, true].map(|r| state.account_transfers(&filter(r)));
            let balances = [false, true].map(|r| state.account_balances(&filter(r)));
            (id, transfers, balances)
        })
        .collect()
}

#[test]
fn planned_groups_equal_the_reference_on_any_number_of_parts() {
    let mut seen = Seen::default();
    for parts in [2, 3, 4, 8] {
        for seed in 0..12 {
            for skew in [Accounts::Uniform, Accounts::Hot] {
                run(seed, Layout::from(parts), skew, &mut seen);
            }
        }
    }
    // The test must exercise what it claims: plans, serial fallbacks, units that span
    // parts, and units that take deltas and overtake one another.
    assert!(seen.planned_groups > 1_000, "{seen:?}");
    assert!(seen.serial_groups > 10, "{seen:?}");
    assert!(seen.spanning_units > seen.units / 4, "{seen:?}");
    assert!(seen.delta_units > seen.units / 10, "{seen:?}");
    assert!(seen.overtaking_groups > 50, "{seen:?}");
    assert!(seen.delta_accounts > seen.units / 10, "{seen:?}");
}

#[test]
fn placing_ids_by_their_low_bits_keeps_the_reference_results() {
    // Few key bits put many of the workload's small ids on one part: a plan that routed
    // by another rule than the state would reach a part it does not hold and panic.
    let mut by_key = Seen::default();
    let mut by_id = Seen::default();
    for (parts, bits) in [(2, 1), (3, 2), (4, 3), (8, 5)] {
        let placement = Placement::low_bits(bits).unwrap();
        for seed in 0..4 {
            for skew in [Accounts::Uniform, Accounts::Hot] {
                run(seed, Layout::new(parts, placement), skew, &mut by_key);
                run(seed, Layout::from(parts), skew, &mut by_id);
            }
        }
    }
    assert!(by_key.planned_groups > 300, "{by_key:?}");
    // Same work, placed otherwise: a different share of it spans parts.
    assert_eq!(by_key.units, by_id.units);
    assert_ne!(by_key.spanning_units, by_id.spanning_units);
}

#[test]
fn an_image_loads_into_any_number_of_parts_and_reads_the_same() {
    let mut workload = Workload::new(99, Accounts::Hot);
    let mut reference = StateMachine::new();
    let mut now = NS_PER_S;
    for _ in 0..200 {
        let batch = workload.batch();
        reference.apply(now, &batch);
        now += 2 * NS_PER_S;
    }
    let image = reference.image();
    let by_key = Placement::low_bits(2).unwrap();
    for layout in [1, 2, 5, 8]
        .into_iter()
        .flat_map(|parts| [Layout::from(parts), Layout::new(parts, by_key)])
    {
        let loaded = StateMachine::from_image_in_parts(image.clone(), layout).unwrap();
        assert_eq!(loaded.layout(), layout);
        assert_eq!(loaded.image(), image);
        for id in 0..40u128 {
            assert_eq!(loaded.lookup_account(id), reference.lookup_account(id));
            let filter = tally_types::AccountFilter {
                limit: 50,
                ..tally_types::AccountFilter::new(id)
            };
            assert_eq!(
                loaded.account_transfers(&filter),
                reference.account_transfers(&filter)
            );
        }
    }
}

#[test]
fn a_plans_cost_counts_its_critical_path_on_one_core_per_part() {
    use tally_state::{Plan, PlanCost, STEPS_PER_EVENT, Unit, Work};
    let unit = |mask, events| Unit {
        batch: 0,
        work: Work::Events {
            start: 0,
            end: events,
        },
        mask,
        deltas: 0,
        reads: mask,
        touches: (0, 0),
    };
    // Parts 0 and 1 run side by side; a unit spanning both waits for both.
    let plan = Plan {
        layout: tally_state::Layout::from(3),
        units: vec![unit(0b01, 3), unit(0b10, 5), unit(0b11, 2), unit(0b01, 1)],
        ..Plan::default()
    };
    assert_eq!(
        plan.cost(),
        PlanCost {
            work: 11 * STEPS_PER_EVENT,
            critical_path: 8 * STEPS_PER_EVENT,
            // Part 1 runs 5 + 2 events, part 0 3 + 2 + 1.
            busiest_part: 7 * STEPS_PER_EVENT,
        }
    );
    let expire = Unit {
        batch: 0,
        work: Work::Expire { at: 1, id: 7 },
        mask: 0b100,
        deltas: 0,
        reads: 0b100,
        touches: (0, 0),
    };
    let plan = Plan {
        layout: tally_state::Layout::from(3),
        units: vec![expire, unit(0b100, 4)],
        ..Plan::default()
    };
    assert_eq!(plan.cost().critical_path, 5 * STEPS_PER_EVENT);
    assert_eq!(
        plan.cost_with_deltas(),
        plan.cost(),
        "no deltas, no difference"
    );
}
