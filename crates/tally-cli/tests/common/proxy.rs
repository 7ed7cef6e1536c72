//! A fault-injecting TCP proxy per replica: every connection to replica N's peer
//! service goes through proxy N, which knows (from /proc) which replica process opened
//! it. So a replica can be cut off both ways: its proxy refuses everything, and the
//! others' proxies refuse connections it opens. Bytes can be delayed and connections
//! dropped at random (seeded).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_testkit::SeededRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the network does now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Replicas cut off: nothing reaches them, nothing they send gets through.
    pub isolated: BTreeSet<u64>,
    /// Each chunk of bytes waits this long before it is passed on.
    pub delay: Duration,
    /// A chunk closes its connection instead, this many times in a thousand.
    pub drop_per_mille: u64,
}

impl Rules {
    fn allows(&self, source: Option<u64>, target: u64) -> bool {
        !self.isolated.contains(&target) && source.is_none_or(|s| !self.isolated.contains(&s))
    }
}

/// The proxies and the rules they follow.
#[derive(Debug)]
pub struct Net {
    /// The proxy of each replica: its listening address.
    proxies: BTreeMap<u64, SocketAddr>,
    /// The process id of each running replica, to tell who opened a connection.
    pids: Mutex<BTreeMap<u64, u32>>,
    rules: watch::Sender<Rules>,
    rng: Mutex<SeededRng>,
}

impl Net {
    /// A proxy for each replica of `real` (id to real peer address), running on the
    /// current runtime.
    pub async fn start(real: &BTreeMap<u64, String>) -> Arc<Net> {
        let mut listeners = Vec::new();
        let mut proxies = BTreeMap::new();
        for (id, target) in real {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            proxies.insert(*id, listener.local_addr().unwrap());
            listeners.push((*id, listener, target.clone()));
        }
        let net = Arc::new(Net {
            proxies,
            pids: Mutex::new(BTreeMap::new()),
            rules: watch::Sender::new(Rules::default()),
            rng: Mutex::new(SeededRng::new(0x0fau64 << 32 | 0x17)),
        });
        for (id, listener, target) in listeners {
            tokio::spawn(accept_loop(Arc::clone(&net), id, listener, target));
        }
        net
    }

    pub fn addresses(&self) -> BTreeMap<u64, String> {
        self.proxies
            .iter()
            .map(|(id, addr)| (*id, addr.to_string()))
            .collect()
    }

    pub fn set_pid(&self, id: u64, pid: u32) {
        self.pids.lock().unwrap().insert(id, pid);
    }

    pub fn isolate(&self, id: u64) {
        self.rules.send_modify(|rules| {
            rules.isolated.insert(id);
        });
    }

    pub fn heal(&self) {
        self.rules.send_modify(|rules| rules.isolated.clear());
    }

    pub fn set_delay(&self, delay: Duration) {
        self.rules.send_modify(|rules| rules.delay = delay);
    }

    pub fn set_drops(&self, per_mille: u64) {
        self.rules
            .send_modify(|rules| rules.drop_per_mille = per_mille);
    }

    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().unwrap() = SeededRng::new(seed);
    }

    fn drop_now(&self, per_mille: u64) -> bool {
        per_mille > 0 && self.rng.lock().unwrap().below(1_000) < per_mille
    }

    /// The replica whose process holds the socket bound to `source` connected to
    /// `proxy`, from /proc/net/tcp and the processes' descriptors.
    fn source_of(&self, source: SocketAddr, proxy: SocketAddr) -> Option<u64> {
        let inode = socket_inode(source, proxy)?;
        let wanted = format!("socket:[{inode}]");
        let pids = self.pids.lock().unwrap().clone();
        pids.into_iter().find_map(|(id, pid)| {
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
            fds.filter_map(Result::ok)
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|link| link.to_string_lossy() == wanted)
                })
                .then_some(id)
        })
    }
}

/// The inode of the IPv4 socket whose local end is `local` and remote end `remote`.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{:04X}", local.port());
    let remote = format!(":{:04X}", remote.port());
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches = fields.len() > 9
            && fields[1].starts_with("0100007F")
            && fields[1].ends_with(&local)
            && fields[2].ends_with(&remote);
        matches.then(|| fields[9].to_string())
    })
}

async fn accept_loop(net: Arc<Net>, target_id: u64, listener: TcpListener, target: String) {
    let proxy = listener.local_addr().unwrap();
    loop {
        let Ok((inbound, source)) = listener.accept().await else {
            continue;
        };
        let net = Arc::clone(&net);
        let target = target.clone();
        tokio::spawn(async move {
            let net_for_lookup = Arc::clone(&net);
            let source_id =
                tokio::task::spawn_blocking(move || net_for_lookup.source_of(source, proxy))
                    .await
                    .ok()
                    .flatten();
            relay(net, source_id, target_id, inbound, &target).await;
        });
    }
}

/// Passes bytes both ways until either side closes or the rules cut the link.
async fn relay(
    net: Arc<Net>,
    source: Option<u64>,
    target_id: u64,
    inbound: TcpStream,
    target: &str,
) {
    let mut rules = net.rules.subscribe();
    if !rules.borrow_and_update().allows(source, target_id) {
        return; // refused: dropping the socket closes it
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let cut = async {
        loop {
            if rules.changed().await.is_err() {
                return;
            }
            if !rules.borrow_and_update().allows(source, target_id) {
                return;
            }
        }
    };
    tokio::select! {
        () = pump(&net, in_read, out_write) => {}
        () = pump(&net, out_read, in_write) => {}
        () = cut => {}
    }
}

async fn pump(
    net: &Net,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let (delay, drops) = {
            let rules = net.rules.borrow();
            (rules.delay, rules.drop_per_mille)
        };
        if net.drop_now(drops) {
            return;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
