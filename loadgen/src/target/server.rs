//! Tally over the network: the load goes through `tally-client` to a `tally serve`
//! endpoint over real loopback (or remote) TCP. Single payments use the client's
//! coalesced single calls (as a payment service would); batches go as one call.

use super::{Outcome, SubmitFailure, Target};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::time::Duration;
use tally_client::{Client, ClientConfig, ClientError, CreateResult, RetryPolicy, TlsConfig};
use tally_engine::Ledger;
use tally_server::{RunningServer, Server, ServerConfig};
use tally_types::{Account, BATCH_EVENTS_MAX, Batch, Transfer, TransferFlags};
use tokio::runtime::Runtime;

/// A server started by the load generator itself, in this process, on a runtime of its
/// own; it owns the ledger and shuts it down.
#[derive(Debug)]
struct LocalServer {
    runtime: Runtime,
    server: Mutex<Option<RunningServer>>,
}

/// The client side: a [`Client`] on its own runtime, and the local server if any.
#[derive(Debug)]
pub struct ServerTarget {
    runtime: Runtime,
    client: Client,
    addr: String,
    local: Option<LocalServer>,
}

pub(super) fn runtime(name: &str, threads: usize) -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|error| format!("starting the {name} runtime: {error}"))
}

impl ServerTarget {
    /// Connects to a running server at `addr` (`host:port`): plain text, or TLS when
    /// the CA certificate (PEM) of the server is given; with a bearer token if given.
    pub fn connect(
        addr: &str,
        token: Option<String>,
        ca_certificate_pem: Option<Vec<u8>>,
    ) -> Result<ServerTarget, String> {
        let runtime = runtime("loadgen-client", 1)?;
        let mut config = client_config(addr);
        config.token = token;
        if let Some(ca_certificate_pem) = ca_certificate_pem {
            config.endpoint = format!("https://{addr}");
            config.tls = Some(TlsConfig {
                ca_certificate_pem,
                domain_name: None,
                identity: None,
            });
        }
        let client = runtime.block_on(connect_client(config))?;
        Ok(ServerTarget {
            runtime,
            client,
            addr: addr.to_string(),
            local: None,
        })
    }

    /// Serves `ledger` from this process on a free loopback port, then connects to it.
    pub fn start_local(ledger: Ledger, server_threads: usize) -> Result<ServerTarget, String> {
        let server_runtime = runtime("loadgen-server", server_threads)?;
        let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
        let started =
            server_runtime.block_on(Server::start(ledger.clone(), ServerConfig::new(listen)));
        let server = match started {
            Ok(server) => server,
            Err(error) => {
                let _ = ledger.shutdown();
                return Err(format!("starting the server: {error}"));
            }
        };
        let addr = server.local_addr().to_string();
        let local = LocalServer {
            runtime: server_runtime,
            server: Mutex::new(Some(server)),
        };
        let runtime = runtime("loadgen-client", 1)?;
        let client = runtime.block_on(connect_client(client_config(&addr)))?;
        Ok(ServerTarget {
            runtime,
            client,
            addr,
            local: Some(local),
        })
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// True when this process runs the server.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// Calls the client made and events it sent, for the report.
    pub fn client_stats(&self) -> tally_client::ClientStats {
        self.client.stats()
    }
}

fn client_config(addr: &str) -> ClientConfig {
    ClientConfig {
        // The load generator counts back-pressure and never retries blindly: one
        // attempt per call, so `busy` is reported as the engine target reports it.
        retry: RetryPolicy {
            attempts_max: 1,
            ..RetryPolicy::default()
        },
        request_timeout: Duration::from_secs(30),
        ..ClientConfig::new(format!("http://{addr}"))
    }
}

pub(super) async fn connect_client(config: ClientConfig) -> Result<Client, String> {
    let endpoint = config.endpoint.clone();
    Client::connect(config)
        .await
        .map_err(|error| format!("connecting to {endpoint}: {error}"))
}

pub(super) fn failure(error: ClientError) -> SubmitFailure {
    match error {
        ClientError::Busy { .. } => SubmitFailure::Busy,
        other => SubmitFailure::Other(other.to_string()),
    }
}

pub(super) fn outcome(result: &CreateResult) -> Outcome {
    Outcome {
        code: result.code,
        timestamp: result.timestamp,
    }
}

fn outcomes(
    results: Result<Vec<CreateResult>, ClientError>,
) -> Result<Vec<Outcome>, SubmitFailure> {
    results
        .map(|results| results.iter().map(outcome).collect())
        .map_err(failure)
}

impl Target for ServerTarget {
    async fn submit(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        match batch {
            // One payment alone: the client gathers it with other callers' payments.
            Batch::CreateTransfers(transfers)
                if transfers.len() == 1 && !transfers[0].flags.contains(TransferFlags::LINKED) =>
            {
                let result = self.client.create_transfer(transfers[0]).await;
                result.map(|r| vec![outcome(&r)]).map_err(failure)
            }
            Batch::CreateTransfers(transfers) => {
                outcomes(self.client.create_transfers(transfers).await)
            }
            Batch::CreateAccounts(accounts) => {
                outcomes(self.client.create_accounts(accounts).await)
            }
        }
    }

    fn submit_blocking(&self, batch: Batch) -> Result<Vec<Outcome>, SubmitFailure> {
        self.runtime.block_on(self.submit(batch))
    }

    fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_EVENTS_MAX) {
            match self.runtime.block_on(self.client.lookup_accounts(chunk)) {
                Ok(accounts) => found.extend(accounts),
                // The model counts what is missing: a failed lookup shows as missing.
                Err(error) => eprintln!("loadgen: lookup_accounts failed: {error}"),
            }
        }
        found
    }

    fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_EVENTS_MAX) {
            match self.runtime.block_on(self.client.lookup_transfers(chunk)) {
                Ok(transfers) => found.extend(transfers),
                Err(error) => eprintln!("loadgen: lookup_transfers failed: {error}"),
            }
        }
        found
    }

    fn shutdown(&self) -> Result<(), String> {
        let Some(local) = &self.local else {
            // A server the load generator did not start keeps running.
            return Ok(());
        };
        let Some(server) = local.server.lock().take() else {
            return Ok(());
        };
        local
            .runtime
            .block_on(server.shutdown())
            .map_err(|error| error.to_string())
    }
}
