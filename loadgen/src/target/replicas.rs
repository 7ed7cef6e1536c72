//! A local cluster for the load generator: one `tally serve --cluster` child process
//! per replica, each with its own data directory, client port and peer port. The
//! processes can be killed (SIGKILL) and restarted from the same data directory; every
//! one still running is killed when the cluster is dropped, and on SIGINT or SIGTERM
//! (see [`LocalCluster::kill_all`]).

use parking_lot::Mutex;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// How long a replica process may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Replicas a local cluster may have.
pub const REPLICAS_MAX: u64 = 9;

/// One replica: its addresses and, while it runs, its process.
#[derive(Debug)]
struct ReplicaProcess {
    id: u64,
    /// The client-facing gRPC address (`--listen`).
    listen: String,
    /// The peer address (its entry in `--cluster`).
    peer: String,
    child: Option<Child>,
}

/// The replica processes of a cluster this process started.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    dir: PathBuf,
    /// `--cluster`: `1=HOST:PORT,2=HOST:PORT,...`.
    members: String,
    processes: Arc<Mutex<Vec<ReplicaProcess>>>,
}

/// The `tally` binary: `explicit` (`--tally-bin` or `$TALLY_BIN`), else the one next to
/// this executable (or one directory up, where test executables live in `deps/`).
pub fn tally_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!(
                "the tally binary {} does not exist",
                path.display()
            ))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let name = format!("tally{}", std::env::consts::EXE_SUFFIX);
    let near = exe
        .parent()
        .into_iter()
        .flat_map(|dir| [Some(dir), dir.parent()]);
    near.flatten()
        .map(|dir| dir.join(&name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "no tally binary next to {} (build it with `cargo build -p tally-cli`, or \
                 give --tally-bin PATH or TALLY_BIN)",
                exe.display()
            )
        })
}

/// A free loopback port, as `127.0.0.1:PORT`. The listener is closed at once, so
/// another process could take the port before the replica binds it: rare on loopback,
/// and the replica then fails to start with a clear error.
fn free_addr() -> Result<String, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("finding a free port: {e}"))?;
    Ok(addr.to_string())
}

impl LocalCluster {
    /// Starts `count` replicas of `binary` with data under `dir` (`replica-N`) and waits
    /// until each one serves. On failure every process already started is killed.
    pub fn start(binary: PathBuf, dir: &Path, count: u64) -> Result<LocalCluster, String> {
        if !(1..=REPLICAS_MAX).contains(&count) {
            return Err(format!("--replicas must be 1..={REPLICAS_MAX}"));
        }
        let mut processes = Vec::new();
        for id in 1..=count {
            processes.push(ReplicaProcess {
                id,
                listen: free_addr()?,
                peer: free_addr()?,
                child: None,
            });
        }
        let members = processes
            .iter()
            .map(|p| format!("{}={}", p.id, p.peer))
            .collect::<Vec<_>>()
            .join(",");
        let cluster = LocalCluster {
            binary,
            dir: dir.to_path_buf(),
            members,
            processes: Arc::new(Mutex::new(processes)),
        };
        for id in 1..=count {
            // Dropping `cluster` on an error kills the replicas started so far.
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    /// The client-facing addresses (`host:port`), replica 1 first.
    pub fn client_addrs(&self) -> Vec<String> {
        self.processes
            .lock()
            .iter()
            .map(|p| p.listen.clone())
            .collect()
    }

    /// The peer addresses by replica id, for status queries.
    pub fn peer_addrs(&self) -> Vec<(u64, String)> {
        let processes = self.processes.lock();
        processes.iter().map(|p| (p.id, p.peer.clone())).collect()
    }

    /// The data directory of replica `id`.
    pub fn replica_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("replica-{id}"))
    }

    /// Kills replica `id` with SIGKILL and reaps it; nothing happens if it is not
    /// running.
    pub fn kill(&self, id: u64) -> Result<(), String> {
        let mut processes = self.processes.lock();
        let process = processes
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| format!("no replica {id}"))?;
        if let Some(mut child) = process.child.take() {
            child
                .kill()
                .and_then(|()| child.wait().map(|_| ()))
                .map_err(|e| format!("killing replica {id}: {e}"))?;
        }
        Ok(())
    }

    /// Starts replica `id` (again) from its data directory, unless it runs; returns once
    /// it prints `listening on`.
    pub fn restart(&self, id: u64) -> Result<(), String> {
        let (listen, log) = {
            let processes = self.processes.lock();
            let process = processes
                .iter()
                .find(|p| p.id == id)
                .ok_or_else(|| format!("no replica {id}"))?;
            if process.child.is_some() {
                return Ok(());
            }
            (
                process.listen.clone(),
                self.dir.join(format!("replica-{id}.log")),
            )
        };
        let child = self.spawn(id, &listen, &log)?;
        let mut processes = self.processes.lock();
        if let Some(process) = processes.iter_mut().find(|p| p.id == id) {
            process.child = Some(child);
        }
        Ok(())
    }

    /// Ids of the replicas not running now.
    pub fn stopped(&self) -> Vec<u64> {
        let processes = self.processes.lock();
        processes
            .iter()
            .filter(|p| p.child.is_none())
            .map(|p| p.id)
            .collect()
    }

    fn spawn(&self, id: u64, listen: &str, log_path: &Path) -> Result<Child, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let data = self.replica_dir(id);
        let mut child = Command::new(&self.binary)
            .arg("serve")
            .arg("--data")
            .arg(&data)
            .args(["--listen", listen, "--cluster", &self.members])
            .args(["--replica", &id.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        match wait_listening(&mut child) {
            Ok(()) => Ok(child),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "replica {id}: {error} (its log: {})",
                    log_path.display()
                ))
            }
        }
    }

    /// A handle that kills every replica process, for a signal handler.
    pub fn killer(&self) -> Killer {
        Killer(self.processes.clone())
    }

    /// Kills every replica process still running.
    pub fn kill_all(&self) {
        self.killer().kill_all();
    }
}

/// Kills every replica process of a [`LocalCluster`] (from another thread).
#[derive(Debug, Clone)]
pub struct Killer(Arc<Mutex<Vec<ReplicaProcess>>>);

impl Killer {
    /// Kills (SIGKILL) and reaps every replica process still running.
    pub fn kill_all(&self) {
        for process in self.0.lock().iter_mut() {
            if let Some(mut child) = process.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Waits for the child's `listening on` line; then keeps draining its stdout on a
/// thread so that it never blocks on a full pipe.
fn wait_listening(child: &mut Child) -> Result<(), String> {
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("loadgen-replica-out".into())
        .spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = sender.send(first);
            for _ in lines {}
        })
        .map_err(|e| format!("starting a reader thread: {e}"))?;
    match receiver.recv_timeout(START_TIMEOUT) {
        Ok(Some(Ok(line))) if line.starts_with("listening on ") => Ok(()),
        Ok(Some(Ok(line))) => Err(format!("unexpected first line {line:?}")),
        Ok(Some(Err(error))) => Err(format!("reading its output: {error}")),
        Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => Err("exited before serving".into()),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("not serving after {} s", START_TIMEOUT.as_secs()))
        }
    }
}
