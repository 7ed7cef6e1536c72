//! Tally's festival load generator: the Singles' Day traffic model, an open-loop runner
//! with coordinated-omission-free latency, a closed-loop max mode, traces, and the
//! post-run verification of the ledger against the generator's own balance model.

pub mod curve;
pub mod engine;
pub mod memory;
pub mod mix;
pub mod model;
pub mod population;
pub mod report;
pub mod runner;
pub mod stats;
pub mod target;
pub mod trace;
