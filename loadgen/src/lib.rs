//! Tally's festival load generator: the Singles' Day traffic model, an open-loop runner
//! with coordinated-omission-free latency, a closed-loop max mode, traces, and the
//! post-run verification of the ledger against the generator's own balance model. A
//! second workload, `transfers`, has the shape of TigerBeetle's own `benchmark`.
//!
//! Modules point one way (`a → b`: `a` uses `b`); `curve`, `stats` and `population` use
//! no other module:
//!
//! ```text
//! events_check → stats (the change-event stream followed live, then checked)
//! order_lookups (queries by order id while the load runs; no other module)
//! target → events_check, order_lookups, stats (the [`target::Target`] trait with its
//!   engine, server, cluster and in-memory adapters, and the cluster's processes and
//!   chaos)
//! mix → population · transfers → mix, population · trace → mix
//! model → population, target · end_of_day → model, population, target
//! runner → mix, model, population, stats, target, trace
//! report → end_of_day, events_check, model, order_lookups, runner, stats, target
//! the binary (main.rs) → all of them
//! ```

#![deny(missing_docs)]

pub mod curve;
pub mod end_of_day;
pub mod events_check;
pub mod mix;
pub mod model;
pub mod order_lookups;
pub mod population;
pub mod report;
pub mod runner;
pub mod stats;
pub mod target;
pub mod trace;
pub mod transfers;
