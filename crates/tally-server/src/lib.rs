//! Tally over the network: a [`tally_engine::Ledger`] (or a replica of a cluster,
//! [`tally_cluster::Replica`]) served as the gRPC service of
//! `proto/tally/v1/tally.proto`, with TLS, bearer tokens and per-client limits.
//!
//! A call is answered exactly as an embedded submit would be: a create answers once its
//! batch is durable, one result per event; a refused call (bad token, rights, invalid
//! event, full queue) changes nothing. `tally serve` runs one from the command line;
//! docs/server.md is the operator's guide.
//!
//! ```no_run
//! use tally_server::{Server, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ledger = tally_engine::Ledger::open(tally_engine::Config::new("data"))?;
//! let server = Server::start(ledger, ServerConfig::new("127.0.0.1:7100".parse()?)).await?;
//! // ... until the process is told to stop:
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod auth;
mod authenticate;
mod backend;
mod calls;
mod config;
mod events;
mod health;
mod incoming;
mod metrics_http;
mod server;
mod service;
mod stats;

pub use auth::{Operation, Rights, Tokens};
pub use backend::Backend;
pub use config::{Limits, ServerConfig, ServerError, TlsFiles};
pub use server::{RunningServer, Server};
pub use stats::ServerStats;
