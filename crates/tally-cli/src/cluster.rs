//! `tally cluster status|add|remove`: a cluster's replicas and its membership
//! (docs/spec.md §7, docs/cluster.md). Each command talks to a replica's peer address.

use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
    /// The cluster's peer secret (a file holding it), when its replicas were started
    /// with one.
    #[arg(long, global = true)]
    peer_secret_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Print each replica's status as one JSON line: role, term, leader, log and
    /// applied positions, state digest, membership. Exits 1 if one cannot be reached.
    Status {
        /// Peer addresses of the replicas to ask, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        peer: Vec<String>,
    },
    /// Add a replica already started with `tally serve --join`: it catches up from the
    /// leader's snapshot and log, then votes.
    Add {
        /// The peer address of any replica of the cluster.
        #[arg(long)]
        peer: String,
        /// The new replica's id.
        #[arg(long)]
        replica: u64,
        /// The new replica's peer address.
        #[arg(long)]
        addr: String,
    },
    /// Remove a replica from the voters (replace one: add the new, then remove the old).
    Remove {
        /// The peer address of any replica of the cluster.
        #[arg(long)]
        peer: String,
        /// The replica to remove.
        #[arg(long)]
        replica: u64,
    },
}

pub fn cluster(args: ClusterArgs) -> Result<ExitCode, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    let secret = args
        .peer_secret_file
        .as_deref()
        .map(tally_cluster::PeerSecret::read)
        .transpose()
        .map_err(|error| format!("--peer-secret-file {error}"))?;
    let secret = secret.as_ref();
    runtime.block_on(async move {
        match args.command {
            ClusterCommand::Status { peer } => {
                let mut code = ExitCode::SUCCESS;
                for address in peer {
                    match tally_cluster::admin::status(&address, secret).await {
                        Ok(status) => print_status(&address, &status)?,
                        Err(error) => {
                            eprintln!("tally: {address}: {error}");
                            code = ExitCode::FAILURE;
                        }
                    }
                }
                Ok(code)
            }
            ClusterCommand::Add {
                peer,
                replica,
                addr,
            } => {
                let status = tally_cluster::admin::add(&peer, secret, replica, &addr).await?;
                print_status(leader_address(&status, &peer), &status)?;
                Ok(ExitCode::SUCCESS)
            }
            ClusterCommand::Remove { peer, replica } => {
                let status = tally_cluster::admin::remove(&peer, secret, replica).await?;
                print_status(leader_address(&status, &peer), &status)?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// The peer address of the replica that answered a membership change (the leader,
/// which may not be the one asked), as its membership lists it.
fn leader_address<'a>(status: &'a tally_cluster::ReplicaStatus, asked: &'a str) -> &'a str {
    status
        .voters
        .get(&status.replica_id)
        .or_else(|| status.learners.get(&status.replica_id))
        .map_or(asked, String::as_str)
}

fn print_status(peer: &str, status: &tally_cluster::ReplicaStatus) -> Result<(), String> {
    let line = serde_json::json!({
        "peer": peer,
        "replica": status.replica_id,
        "role": status.role,
        "term": status.term,
        "leader": status.leader,
        "last_log_index": status.last_log_index,
        "applied_index": status.applied_index,
        "digest": format!("{:016x}", status.digest),
        "events_applied": status.events_applied,
        "voters": status.voters,
        "learners": status.learners,
    });
    println!("{line}");
    Ok(())
}
