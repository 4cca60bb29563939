//! The processes of a local deployment: finding our binaries, starting one detached from the
//! terminal with its log, telling whether a recorded pid is still ours and alive, signalling it,
//! free loopback ports, and the small HTTP client `up` uses for its own readiness checks (TLS
//! against the deployment's CA and the admin token, unless insecure).

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether `pid` is a live process running one of our binaries (not a reused pid).
pub fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&cmdline);
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0;
    exists && (text.contains("baton") || text.contains("etcd")) && !is_zombie(pid)
}

pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// A loopback port nothing listens on, below the kernel's ephemeral range: a port from
/// `bind(0)` lies in that range, where any outgoing connection may take it as its source port
/// between our check and the node's own bind (it happened: "etcd: address already in use"
/// under a busy test run). Ports already handed out by this process are not given again.
pub fn free_port() -> Result<u16, String> {
    use rand::Rng;
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let low = ephemeral_start().clamp(1025, 32_768);
    let from = low.saturating_sub(12_000).max(1024);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(from..low);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    Err(format!(
        "cannot find a free loopback port in {from}..{low} (below the ephemeral range)"
    ))
}

/// The first port of the kernel's ephemeral range (Linux default 32768).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

pub fn bin(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.parent().map(|d| d.join(name)).unwrap_or_default();
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} not found next to batonctl ({}); build the workspace: cargo build --release --workspace --bins", name, p.display()))
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Starts a node detached from batonctl's terminal (its own process group), its stdout and
/// stderr appended to `log`. The caller keeps the [`Child`] to tell, without guessing from
/// `/proc`, whether it exited and how (`exited`).
pub fn spawn(cmd: &[String], log: &Path) -> Result<Child, String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cmd[0]))?;
    Ok(child)
}

/// How `child` ended, if it did: its exit status and the last lines of its log (what it said
/// before exiting).
pub fn exited(child: &mut Child, log: &str) -> Option<String> {
    let status = child.try_wait().ok()??;
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    };
    let tail = last_lines(log, 3);
    Some(if tail.is_empty() {
        format!("{how}, nothing in its log")
    } else {
        format!("{how}: {tail}")
    })
}

/// The last `n` non-empty lines of `log`, joined by " | ".
pub fn last_lines(log: &str, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The processes one `up` started, held as children: whether one exited is known from
/// `waitpid`, not guessed, and a failed `up` stops every one of them.
#[derive(Default)]
pub struct Started {
    nodes: Vec<(String, Child, String)>,
}

impl Started {
    /// Starts node `id` (see [`spawn`]); returns its pid.
    pub fn spawn(&mut self, id: &str, cmd: &[String], log: &str) -> Result<u32, String> {
        let child = spawn(cmd, Path::new(log))?;
        let pid = child.id();
        self.nodes.push((id.to_string(), child, log.to_string()));
        Ok(pid)
    }

    /// An error naming the first node that exited, how, and what its log said last.
    pub fn check(&mut self) -> Result<(), String> {
        for (id, child, log) in &mut self.nodes {
            if let Some(why) = exited(child, log) {
                return Err(format!("{id} exited ({why}); log: {log}"));
            }
        }
        Ok(())
    }

    /// Stops (SIGKILL) and reaps every node started.
    pub fn kill_all(&mut self) {
        for (_, child, _) in &mut self.nodes {
            kill_child(child);
        }
    }
}

/// Stops `child` (SIGKILL) and reaps it.
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let s = match sig.to_ascii_uppercase().as_str() {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        other => {
            return Err(format!(
                "unknown signal {other:?}: use KILL, TERM, STOP or CONT"
            ))
        }
    };
    // SAFETY: kill(2) on a pid read from cluster.json and checked to be one of ours.
    if unsafe { libc::kill(pid as i32, s) } != 0 {
        return Err(format!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The client of `up`'s own requests (init, the first write): TLS checked against the new
/// deployment's CA with its admin token, or plain HTTP for `--insecure`.
pub struct Http {
    client: crate::client::HttpClient,
    token: Option<String>,
}

impl Http {
    pub fn new(
        tls: Option<std::sync::Arc<baton_runtime::tls::Tls>>,
        token: Option<String>,
    ) -> Http {
        Http {
            client: crate::client::http_client(tls, ""),
            token,
        }
    }

    pub async fn call(&self, method: &str, url: &str, body: &str) -> Result<(u16, String), String> {
        use http_body_util::BodyExt;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // The innermost cause says the most (a refused connection, a TLS failure).
                let mut detail = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    detail = s.to_string();
                    src = s.source();
                }
                detail
            })?;
            let status = resp.status().as_u16();
            let b = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, String::from_utf8_lossy(&b).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .map_err(|_| "timeout".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_are_not_given_twice() {
        let low = ephemeral_start();
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("a port")).collect();
        assert!(
            ports.iter().all(|p| *p < low),
            "{ports:?} (ephemeral from {low})"
        );
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }
}
