//! A fault-injecting TCP relay for partition tests without network namespaces: a test points
//! a link (a replica's heartbeats to a controller, or everyone's traffic to one replica) at
//! the relay, and can then pass traffic, black-hole it (connections accepted, nothing
//! forwarded, existing ones cut), or refuse it. Per-source rules ([`Relay::cut_from`]) apply
//! a mode only to connections opened by one process, found through `/proc` (Linux): that is
//! how one follower's link to its leader is cut while the proxy's still passes. The one-way
//! modes ([`Mode::DropFromClient`], [`Mode::DropToClient`]) forward one direction of a
//! connection and read and discard the other: messages one way are lost while the other way
//! flows (a one-way partition as the simulation has it, at the message level; a real one-way
//! packet drop would also stall TCP's own acknowledgements). Bounded: every connection ends
//! with the relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the relay does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    /// Accept and hold connections without forwarding (a silent partition).
    Blackhole = 1,
    /// Close connections at once (a refused port).
    Refuse = 2,
    /// Forward what the target sends, discard what the connecting side sends (its messages
    /// are lost; it still hears the target).
    DropFromClient = 3,
    /// Forward what the connecting side sends, discard what the target sends back (the target
    /// still hears it; it hears nothing).
    DropToClient = 4,
}

impl Mode {
    fn from_u8(x: u8) -> Mode {
        match x {
            1 => Mode::Blackhole,
            2 => Mode::Refuse,
            3 => Mode::DropFromClient,
            4 => Mode::DropToClient,
            _ => Mode::Pass,
        }
    }
}

/// A live connection: who opened it (when a rule asked), whether a rule decided its mode,
/// and how to cut it.
struct Conn {
    peer: SocketAddr,
    by_rule: bool,
    cut: tokio::sync::watch::Sender<bool>,
}

struct Shared {
    mode: AtomicU8,
    /// `(pid, mode)`: connections opened by that process get that mode.
    rules: Mutex<Vec<(u32, Mode)>>,
    conns: Mutex<HashMap<u64, Conn>>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running relay.
pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// Bumped on every mode change; live connections end when it moves.
    gen: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays a loopback port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Relay> {
        Relay::start_on(TcpListener::bind("127.0.0.1:0").await?, target)
    }

    /// Relays `listener` (already bound, so its address can be handed out first) to `target`.
    pub fn start_on(listener: TcpListener, target: SocketAddr) -> anyhow::Result<Relay> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Pass as u8),
            rules: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        });
        let gen = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (sh, g) = (shared.clone(), gen.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, peer)) = listener.accept().await {
                let changed = g.subscribe();
                let sh = sh.clone();
                tokio::spawn(serve(sh, inbound, peer, addr, target, changed));
            }
        });
        Ok(Relay {
            addr,
            shared,
            gen,
            task,
        })
    }

    /// Changes what the relay does; connections open under the old mode are cut.
    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
        self.gen.send_modify(|g| *g += 1);
    }

    /// The mode for connections no rule applies to.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.shared.mode.load(Ordering::SeqCst))
    }

    /// Applies `mode` to connections opened by process `pid` from now on, and cuts the ones
    /// it has open. Other connections are untouched. The rule names a process, not a node: a
    /// restarted process is not covered (heal before restarting).
    pub fn cut_from(&self, pid: u32, mode: Mode) {
        {
            let mut rules = lock(&self.shared.rules);
            rules.retain(|(p, _)| *p != pid);
            rules.push((pid, mode));
        }
        let conns: Vec<(u64, SocketAddr)> = lock(&self.shared.conns)
            .iter()
            .map(|(id, c)| (*id, c.peer))
            .collect();
        // The tables are read once for all connections: per connection, a busy relay took
        // seconds, and a "simultaneous" cut of two links landed seconds apart.
        let (inodes, owners) = (tcp_inodes(), sockets_of(&[pid]));
        for (id, peer) in conns {
            if owner_in(&inodes, &owners, peer, self.addr).is_some() {
                if let Some(c) = lock(&self.shared.conns).get(&id) {
                    let _ = c.cut.send(true);
                }
            }
        }
    }

    /// Drops every per-source rule; connections a rule held are cut (they reconnect and pass,
    /// or follow the relay's mode).
    pub fn clear_rules(&self) {
        lock(&self.shared.rules).clear();
        for c in lock(&self.shared.conns).values() {
            if c.by_rule {
                let _ = c.cut.send(true);
            }
        }
    }

    /// Whether any per-source rule is set.
    pub fn has_rules(&self) -> bool {
        !lock(&self.shared.rules).is_empty()
    }

    /// The URL of what it relays to, as the tests' mode speaks it (https by default: TLS
    /// passes through a relay untouched).
    pub fn url(&self) -> String {
        crate::secure::url(self.addr)
    }
}

async fn serve(
    sh: Arc<Shared>,
    inbound: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    target: SocketAddr,
    mut changed: tokio::sync::watch::Receiver<u64>,
) {
    let rules = lock(&sh.rules).clone();
    let mut mode = Mode::from_u8(sh.mode.load(Ordering::SeqCst));
    let mut by_rule = false;
    if !rules.is_empty() {
        let pids: Vec<u32> = rules.iter().map(|(p, _)| *p).collect();
        if let Some(pid) = socket_owner(peer, local, &pids) {
            if let Some((_, m)) = rules.iter().find(|(p, _)| *p == pid) {
                mode = *m;
                by_rule = true;
            }
        }
    }
    let (cut_tx, mut cut) = tokio::sync::watch::channel(false);
    let id = sh.next.fetch_add(1, Ordering::Relaxed);
    lock(&sh.conns).insert(
        id,
        Conn {
            peer,
            by_rule,
            cut: cut_tx,
        },
    );
    let ended = async {
        tokio::select! {
            _ = changed.changed() => {}
            _ = cut.wait_for(|c| *c) => {}
        }
    };
    match mode {
        Mode::Refuse => drop(inbound),
        // Hold it silently until the mode changes or the rule is lifted.
        Mode::Blackhole => {
            ended.await;
            drop(inbound);
        }
        Mode::Pass | Mode::DropFromClient | Mode::DropToClient => {
            if let Ok(outbound) = TcpStream::connect(target).await {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                // A dropped direction is read and discarded, so its sender never blocks.
                let up = async {
                    if mode == Mode::DropFromClient {
                        tokio::io::copy(&mut ri, &mut tokio::io::sink()).await
                    } else {
                        tokio::io::copy(&mut ri, &mut wo).await
                    }
                };
                let down = async {
                    if mode == Mode::DropToClient {
                        tokio::io::copy(&mut ro, &mut tokio::io::sink()).await
                    } else {
                        tokio::io::copy(&mut ro, &mut wi).await
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                    _ = ended => {}
                }
                let _ = wo.shutdown().await;
                let _ = wi.shutdown().await;
            }
        }
    }
    lock(&sh.conns).remove(&id);
}

/// `/proc/net/tcp` notation of an IPv4 socket address (`0100007F:1F90`).
fn proc_addr(a: SocketAddr) -> Option<String> {
    match a {
        SocketAddr::V4(a) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(a.ip().octets()),
            a.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

/// The inode of every IPv4 TCP socket, by (local, remote) address in `/proc/net/tcp`
/// notation. Read once per lookup batch: the table holds every socket of the machine.
fn tcp_inodes() -> HashMap<(String, String), String> {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return HashMap::new();
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 9).then(|| ((f[1].to_string(), f[2].to_string()), f[9].to_string()))
        })
        .collect()
}

/// The socket inodes each of `pids` holds open (`/proc/PID/fd` links `socket:[INODE]`).
fn sockets_of(pids: &[u32]) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in dir.flatten() {
            if let Ok(l) = std::fs::read_link(e.path()) {
                let l = l.to_string_lossy();
                if let Some(inode) = l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    out.insert(inode.to_string(), pid);
                }
            }
        }
    }
    out
}

/// Which process of `owners` (from [`sockets_of`]) holds the client end of the loopback
/// connection `peer` → `local`, looked up in `inodes` (from [`tcp_inodes`]).
fn owner_in(
    inodes: &HashMap<(String, String), String>,
    owners: &HashMap<String, u32>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<u32> {
    let key = (proc_addr(peer)?, proc_addr(local)?);
    owners.get(inodes.get(&key)?).copied()
}

/// Which of `pids` owns the client end of the loopback connection `peer` → `local`: the
/// socket's inode from `/proc/net/tcp`, then each process's `/proc/PID/fd` links.
pub fn socket_owner(peer: SocketAddr, local: SocketAddr, pids: &[u32]) -> Option<u32> {
    owner_in(&tcp_inodes(), &sockets_of(pids), peer, local)
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.gen.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        a
    }

    async fn roundtrip(s: &mut TcpStream) -> bool {
        let fut = async {
            s.write_all(b"hi").await.ok()?;
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.ok()?;
            (&b == b"hi").then_some(())
        };
        matches!(
            tokio::time::timeout(std::time::Duration::from_millis(300), fut).await,
            Ok(Some(()))
        )
    }

    #[tokio::test]
    async fn a_rule_for_this_process_cuts_and_blocks_its_connections_until_cleared() {
        let relay = Relay::start(echo().await).await.expect("relay");
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        assert!(roundtrip(&mut s).await, "passes by default");
        // A rule for another process changes nothing.
        relay.cut_from(1, Mode::Blackhole);
        assert!(
            roundtrip(&mut s).await,
            "a rule for pid 1 does not touch this process"
        );
        // A rule for this process cuts the open connection and holds new ones.
        relay.cut_from(std::process::id(), Mode::Blackhole);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!roundtrip(&mut s).await, "the open connection was cut");
        let mut s2 = TcpStream::connect(relay.addr).await.expect("connect");
        assert!(!roundtrip(&mut s2).await, "a new connection is held");
        relay.clear_rules();
        let mut s3 = TcpStream::connect(relay.addr).await.expect("connect");
        assert!(roundtrip(&mut s3).await, "passes again once cleared");
    }

    #[tokio::test]
    async fn one_way_modes_forward_one_direction_and_discard_the_other() {
        use std::time::Duration;
        // A server that records what it receives and greets every connection.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = l.local_addr().expect("addr");
        let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let got_tx = got_tx.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(b"hello").await;
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || got_tx.send(b[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let relay = Relay::start(target).await.expect("relay");
        let wait = Duration::from_millis(300);
        // The client's messages are lost; it still hears the server.
        relay.cut_from(std::process::id(), Mode::DropFromClient);
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        let mut b = [0u8; 5];
        let heard = tokio::time::timeout(wait, s.read_exact(&mut b)).await;
        assert!(
            matches!(heard, Ok(Ok(_))) && &b == b"hello",
            "hears the server"
        );
        s.write_all(b"lost").await.expect("write");
        assert!(
            tokio::time::timeout(wait, got.recv()).await.is_err(),
            "the server never receives what the client sent"
        );
        // The other way round: the server hears the client, the client hears nothing.
        relay.cut_from(std::process::id(), Mode::DropToClient);
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        assert!(
            tokio::time::timeout(wait, s.read_exact(&mut b))
                .await
                .is_err(),
            "the greeting is dropped"
        );
        s.write_all(b"kept").await.expect("write");
        let r = tokio::time::timeout(wait, got.recv()).await;
        assert_eq!(r.ok().flatten().as_deref(), Some(&b"kept"[..]));
    }

    #[tokio::test]
    async fn modes_apply_to_everyone() {
        let relay = Relay::start(echo().await).await.expect("relay");
        relay.set(Mode::Blackhole);
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        assert!(!roundtrip(&mut s).await);
        relay.set(Mode::Pass);
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        assert!(roundtrip(&mut s).await);
        assert_eq!(relay.mode(), Mode::Pass);
    }
}
