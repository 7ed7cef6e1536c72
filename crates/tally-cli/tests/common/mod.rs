//! A cluster of real `tally serve --cluster` processes on loopback, a fault-injecting
//! TCP proxy in front of each replica's peer service, and a load of transfers whose
//! acknowledged results are recorded and checked after the faults.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod load;
pub mod proxy;

use proxy::Net;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_client::{Client, ClientConfig, RetryPolicy};
use tally_cluster::ReplicaStatus;
pub use tally_testkit::free_port;

/// How long a replica may take to print `listening on` (a debug build on a loaded
/// machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One replica: where it lives and, while it runs, its process.
#[derive(Debug)]
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    /// The client-facing gRPC port.
    pub client_port: u16,
    /// Where its peer service binds.
    pub peer_listen: String,
    /// Where the others reach it: its proxy, or `peer_listen` itself.
    pub peer_advertised: String,
    /// The `--cluster` list it was started with.
    pub members: String,
    pub join: bool,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// The peer secret every test cluster's replicas share (`Cluster::secret_file`).
pub const PEER_SECRET: &str = "test-cluster-peer-secret-0123456789";

/// Replicas as child processes; every child is killed when the cluster is dropped,
/// a failed assertion included. They share a peer secret, so every fault test runs
/// with the peer calls authenticated.
#[derive(Debug)]
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Node>,
    /// The proxies, when peer traffic goes through them.
    pub net: Option<Arc<Net>>,
    /// Small file systems mounted on data directories: unmounted once the children
    /// are dead.
    pub mounts: Vec<SmallDisk>,
    /// More arguments for every replica's `tally serve`.
    pub serve_args: Vec<String>,
}

impl Cluster {
    /// The file holding the replicas' peer secret, for `tally cluster`.
    pub fn secret_file(&self) -> String {
        self.root.path().join("peer-secret").display().to_string()
    }

    /// `count` replicas forming a cluster; with `proxied`, each one's peer traffic goes
    /// through a proxy of `Net`. Returns once every replica serves.
    pub async fn start(count: u64, proxied: bool) -> Cluster {
        let mut cluster = Cluster::prepare(count, proxied).await;
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        cluster.spawn_all(&ids).await;
        cluster
    }

    /// The cluster of [`Cluster::start`], its processes not started yet.
    pub async fn prepare(count: u64, proxied: bool) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("peer-secret"), format!("{PEER_SECRET}\n")).unwrap();
        let mut nodes = BTreeMap::new();
        let mut real = BTreeMap::new();
        for id in 1..=count {
            real.insert(id, format!("127.0.0.1:{}", free_port()));
        }
        let net = if proxied {
            Some(Net::start(&real).await)
        } else {
            None
        };
        let advertised: BTreeMap<u64, String> = match &net {
            Some(net) => net.addresses(),
            None => real.clone(),
        };
        let members = advertised
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        for id in 1..=count {
            let node = Node {
                id,
                dir: root.path().join(format!("replica-{id}")),
                client_port: free_port(),
                peer_listen: real[&id].clone(),
                peer_advertised: advertised[&id].clone(),
                members: members.clone(),
                join: false,
                child: None,
                log: root.path().join(format!("replica-{id}.log")),
            };
            nodes.insert(id, node);
        }
        Cluster {
            root,
            nodes,
            net,
            mounts: Vec::new(),
            serve_args: Vec::new(),
        }
    }

    /// Starts the replicas `ids` (their processes), all at once, and waits until each
    /// serves.
    pub async fn spawn_all(&mut self, ids: &[u64]) {
        let mut waits = Vec::new();
        for id in ids {
            let node = self.nodes.get_mut(id).unwrap();
            assert!(node.child.is_none(), "replica {id} already runs");
            std::fs::create_dir_all(&node.dir).unwrap();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&node.log)
                .unwrap();
            let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
            command
                .args(["serve", "--listen"])
                .arg(format!("127.0.0.1:{}", node.client_port))
                .arg("--data")
                .arg(&node.dir)
                .args(["--cluster", &node.members])
                .args(["--replica", &id.to_string()])
                .args(["--peer-listen", &node.peer_listen])
                .arg("--peer-secret-file")
                .arg(self.root.path().join("peer-secret"))
                .args(&self.serve_args);
            if node.join {
                command.arg("--join");
            }
            let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
            let stdout = child.stdout.take().unwrap();
            if let Some(net) = &self.net {
                net.set_pid(*id, child.id());
            }
            node.child = Some(child);
            waits.push((*id, std::thread::spawn(move || first_line(stdout))));
        }
        for (id, wait) in waits {
            let line = wait.join().unwrap();
            assert!(
                line.starts_with("listening on "),
                "replica {id} did not start: {line:?}\n{}",
                self.log_tail(id)
            );
        }
    }

    /// Adds replica `id` to the nodes, to be started with `--join` (not yet a member).
    pub fn add_joining_node(&mut self, id: u64) {
        let peer = format!("127.0.0.1:{}", free_port());
        let node = Node {
            id,
            dir: self.root.path().join(format!("replica-{id}")),
            client_port: free_port(),
            peer_listen: peer.clone(),
            peer_advertised: peer.clone(),
            members: format!("{id}={peer}"),
            join: true,
            child: None,
            log: self.root.path().join(format!("replica-{id}.log")),
        };
        self.nodes.insert(id, node);
    }

    /// SIGKILL: the process dies at once, whatever it was writing.
    pub fn kill(&mut self, id: u64) {
        let mut child = self.nodes.get_mut(&id).unwrap().child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and waits for the exit.
    pub fn terminate(&mut self, id: u64) {
        let mut child = self.nodes.get_mut(&id).unwrap().child.take().unwrap();
        assert_eq!(
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .map(|status| status.success())
                .ok(),
            Some(true)
        );
        child.wait().unwrap();
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|node| node.child.is_some())
            .map(|node| node.id)
            .collect()
    }

    /// The last lines a replica logged, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!("replica {id} log:\n{}", lines[from..].join("\n"))
    }

    /// The status of replica `id`, asked at its real peer address (never through its
    /// proxy, so a cut does not hide it).
    pub async fn status(&self, id: u64) -> Result<ReplicaStatus, String> {
        let secret = tally_cluster::PeerSecret::new(PEER_SECRET)?;
        tally_cluster::admin::status(&self.nodes[&id].peer_listen, Some(&secret)).await
    }

    /// Polls `among` until one of them, not `not`, leads in the highest term any of
    /// them reports.
    pub async fn wait_leader(&self, among: &[u64], not: Option<u64>, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let mut statuses = Vec::new();
            for id in among {
                if let Ok(status) = self.status(*id).await {
                    statuses.push(status);
                }
            }
            // openraft orders leaders by (term, id): of two that led the same term (at
            // start-up every replica stands at once), the greater id is the leader.
            let leader = statuses
                .iter()
                .filter(|s| s.role == "leader")
                .max_by_key(|s| (s.term, s.replica_id))
                .filter(|s| Some(s.replica_id) != not && s.term >= term_max(&statuses));
            if let Some(leader) = leader {
                return leader.replica_id;
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {among:?} within {limit:?}: {statuses:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `ids` until all report the same applied index and digest, the whole log
    /// applied. Returns the statuses.
    pub async fn wait_converged(&self, ids: &[u64], limit: Duration) -> Vec<ReplicaStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let mut statuses = Vec::new();
            for id in ids {
                if let Ok(status) = self.status(*id).await {
                    statuses.push(status);
                }
            }
            let first = statuses.first().cloned();
            let equal = statuses.len() == ids.len()
                && first.as_ref().is_some_and(|first| {
                    statuses.iter().all(|s| {
                        s.applied_index == first.applied_index
                            && s.digest == first.digest
                            && s.last_log_index == s.applied_index
                    })
                });
            if equal {
                return statuses;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = ids.iter().map(|id| self.log_tail(*id)).collect();
                panic!(
                    "replicas {ids:?} did not converge within {limit:?}: {statuses:#?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of the replicas `ids`, the first one first.
    pub async fn client(&self, ids: &[u64], request_timeout: Duration) -> Client {
        let urls: Vec<String> = ids.iter().map(|id| self.nodes[id].url()).collect();
        let config = ClientConfig {
            replicas: urls[1..].to_vec(),
            request_timeout,
            connect_timeout: Duration::from_secs(1),
            // Short back-offs, so that a failover's measured end is the cluster's and
            // not a client asleep between two tries; as many tries as before in time.
            retry: RetryPolicy {
                attempts_max: 24,
                backoff_initial: Duration::from_millis(20),
                backoff_max: Duration::from_millis(100),
            },
            ..ClientConfig::new(urls[0].clone())
        };
        Client::connect(config).await.unwrap()
    }

    /// The peer addresses (real ones) of `ids`, comma-separated, for `tally cluster`.
    pub fn peers(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|id| self.nodes[id].peer_listen.clone())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.mounts.clear();
    }
}

/// The first line a child prints, or what went wrong, within [`START_TIMEOUT`].
fn first_line(stdout: std::process::ChildStdout) -> String {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = sender.send(line);
        // Keep reading so the child never blocks on a full pipe.
        let mut rest = String::new();
        while reader.read_line(&mut rest).is_ok_and(|read| read > 0) {
            rest.clear();
        }
    });
    receiver
        .recv_timeout(START_TIMEOUT)
        .unwrap_or_else(|_| "no line in time".into())
}

/// Runs `tally ARGS` and answers its stdout; panics with its stderr when it fails.
pub async fn tally(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tally {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// The leader `tally cluster status` names: the replica reporting role `leader` with
/// the highest term.
pub async fn leader_by_cli(peers: &str, secret_file: &str) -> Option<u64> {
    let out = tally(vec![
        "cluster".into(),
        "status".into(),
        "--peer".into(),
        peers.into(),
        "--peer-secret-file".into(),
        secret_file.into(),
    ])
    .await;
    out.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|status| status["role"] == "leader")
        .max_by_key(|status| status["term"].as_u64())
        .and_then(|status| status["replica"].as_u64())
}

/// Runs a test on its own runtime, one test at a time: each starts several processes,
/// and timing assertions mean nothing on an overloaded machine.
pub fn run(test: impl std::future::Future<Output = ()>) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// A tmpfs of `bytes` mounted on `dir` (root only), unmounted when dropped.
#[derive(Debug)]
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts it, or answers why not.
    pub fn mount(dir: &Path, bytes: u64) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn term_max(statuses: &[ReplicaStatus]) -> u64 {
    statuses.iter().map(|s| s.term).max().unwrap_or(0)
}
