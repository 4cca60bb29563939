//! A fault-injecting TCP relay for partition tests without network namespaces: a test points
//! a link (say, a replica's heartbeats to a controller) at the relay, and can then pass
//! traffic, black-hole it (connections accepted, nothing forwarded, existing ones cut), or
//! refuse it. Bounded: every connection ends with the relay.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
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
}

/// A running relay.
pub struct Relay {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Bumped on every mode change; live connections end when it moves.
    gen: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays a loopback port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let gen = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (m, g) = (mode.clone(), gen.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mode = m.load(Ordering::SeqCst);
                let mut changed = g.subscribe();
                tokio::spawn(async move {
                    match mode {
                        x if x == Mode::Refuse as u8 => drop(inbound),
                        x if x == Mode::Blackhole as u8 => {
                            // Hold it silently until the mode changes.
                            let _ = changed.changed().await;
                            drop(inbound);
                        }
                        _ => {
                            let Ok(outbound) = TcpStream::connect(target).await else {
                                return;
                            };
                            let _ = inbound.set_nodelay(true);
                            let _ = outbound.set_nodelay(true);
                            let (mut ri, mut wi) = inbound.into_split();
                            let (mut ro, mut wo) = outbound.into_split();
                            tokio::select! {
                                _ = tokio::io::copy(&mut ri, &mut wo) => {}
                                _ = tokio::io::copy(&mut ro, &mut wi) => {}
                                _ = changed.changed() => {}
                            }
                            let _ = wo.shutdown().await;
                            let _ = wi.shutdown().await;
                        }
                    }
                });
            }
        });
        Ok(Relay {
            addr,
            mode,
            gen,
            task,
        })
    }

    /// Changes what the relay does; connections open under the old mode are cut.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.gen.send_modify(|g| *g += 1);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.gen.send_modify(|g| *g += 1);
    }
}
