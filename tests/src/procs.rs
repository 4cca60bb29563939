//! Process control for tests and tools: locate the built binaries, write a replica's config,
//! start it with its log captured to a file, signal it (TERM, KILL, STOP, CONT), restart it on
//! the same data or on a wiped one, and kill it when the handle is dropped so no test leaves a
//! process behind; run `batonctl` and take a `batonctl local` deployment down when a test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs the built `batonctl` with `args`.
pub fn batonctl(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(bin_path("batonctl")?).args(args).output()?)
}

/// Takes the `batonctl local` deployment in its directory down when dropped (also when an
/// assertion failed).
pub struct LocalDown<'a>(pub &'a Path);

impl Drop for LocalDown<'_> {
    fn drop(&mut self) {
        let d = self.0.display().to_string();
        let _ = batonctl(&["local", "down", "--dir", &d]);
    }
}

/// `batonctl local stop --signal KILL` of `node` in the deployment in `dir`; an error when
/// batonctl refused.
pub fn local_kill(dir: &Path, node: &str) -> anyhow::Result<()> {
    let d = dir.display().to_string();
    let out = batonctl(&["local", "stop", "--dir", &d, node, "--signal", "KILL"])?;
    anyhow::ensure!(
        out.status.success(),
        "stop {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `batonctl local up --detach` in `dir` (secure by default); returns its `cluster.json`.
pub fn local_up(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let d = dir.display().to_string();
    let out = batonctl(&["local", "up", "--dir", &d, "--detach"])?;
    anyhow::ensure!(
        out.status.success(),
        "up failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_str(&std::fs::read_to_string(
        dir.join("cluster.json"),
    )?)?)
}

/// `s` percent-encoded for a URL component (unreserved characters kept).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Path of a workspace binary built next to the running executable (`target/<profile>/`), or in
/// `$BATON_BIN_DIR` when set.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("BATON_BIN_DIR") {
        return Ok(Path::new(&dir).join(name));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if !p.exists() {
        anyhow::bail!(
            "{} is not built; run `cargo build --workspace --bins` (same profile) first",
            p.display()
        );
    }
    Ok(p)
}

/// Builds the fault-enabled binaries (`baton-replica-failpoints`, `baton-controller-failpoints`)
/// once per process, a no-op when they are fresh: the same command as `scripts/test.sh` (keep
/// them equal, or each one rebuilds the other's), the two crates unoptimized and without debug
/// info in the dev profile, which builds in a fraction of the time; with `--release` for
/// `release` (what [`running_release`] says for the caller's own profile). With
/// `BATON_BIN_DIR` set, the binaries there are taken as they are. Blocking: call it from
/// `spawn_blocking` in async code.
pub fn build_fault_bins(release: bool) -> anyhow::Result<()> {
    static DEBUG: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    static RELEASE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let once = if release { &RELEASE } else { &DEBUG };
    once.get_or_init(|| build_fault_bins_now(release))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Whether the running executable is a release build (it lives under `target/release/`).
pub fn running_release() -> bool {
    std::env::current_exe().is_ok_and(|exe| exe.components().any(|c| c.as_os_str() == "release"))
}

fn build_fault_bins_now(release: bool) -> Result<(), String> {
    if std::env::var_os("BATON_BIN_DIR").is_some() {
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args([
        "build",
        "--workspace",
        "--locked",
        "--bin",
        "baton-replica-failpoints",
        "--bin",
        "baton-controller-failpoints",
        "--features",
        "baton-replica/failpoints,baton-controller/failpoints",
        "--config",
        "profile.dev.package.baton-replica.opt-level=0",
        "--config",
        "profile.dev.package.baton-replica.debug=0",
        "--config",
        "profile.dev.package.baton-controller.opt-level=0",
        "--config",
        "profile.dev.package.baton-controller.debug=0",
    ]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the fault-enabled binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A free loopback port for a process to listen on: bound then released, chosen at random
/// below Linux's ephemeral range (32768–60999 by default), never handed out twice by this
/// process. A port from the ephemeral range (what `bind(0)` gives) could be taken by any
/// outgoing connection on the machine before the process binds it (seen in CI: "cannot
/// listen: Address already in use" while the tests ran in parallel).
pub fn free_port() -> u16 {
    use rand::Rng;
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = rand::rng();
    for _ in 0..500 {
        let port = rng.random_range(20_000..32_000);
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a loopback port is available")
}

/// How to start one replica.
#[derive(Clone, Debug)]
pub struct ReplicaSpec {
    pub id: String,
    /// Its cluster (`main` unless a test says otherwise): written as `cluster` in the config
    /// and named by its certificate.
    pub cluster: String,
    /// Holds `data/`, the config file and the process log.
    pub dir: PathBuf,
    pub port: u16,
    pub controllers: Vec<String>,
    /// `advertise` in the config: the address others reach it at (e.g. a relay in front of
    /// it); `None` = its listen address.
    pub advertise: Option<String>,
    /// Extra TOML appended to the generated config (tables like `[storage]`).
    pub extra_toml: String,
    /// Use the release build (benchmarks).
    pub release: bool,
    /// Run `baton-replica-failpoints` (the fault points compiled in, none armed) instead of
    /// `baton-replica`, so that disk faults can be armed at run time over HTTP: a slow disk
    /// is `PUT /v1/failpoints/wal.before_fsync` with body `sleep(3000)`, a full disk
    /// `wal.before_append` with `return(enospc)`; `DELETE` ends either. Built by
    /// `cargo build --bin baton-replica-failpoints --features baton-replica/failpoints` (with
    /// `--release` for a release spec).
    pub fault_points: bool,
}

impl ReplicaSpec {
    pub fn new(id: &str, dir: &Path, controllers: &[String]) -> ReplicaSpec {
        ReplicaSpec {
            id: id.to_string(),
            cluster: "main".into(),
            dir: dir.join(id),
            port: free_port(),
            controllers: controllers.to_vec(),
            advertise: None,
            extra_toml: String::new(),
            release: false,
            fault_points: false,
        }
    }

    pub fn config_text(&self) -> String {
        let ctl: Vec<String> = self.controllers.iter().map(|c| format!("{c:?}")).collect();
        let advertise = self
            .advertise
            .as_ref()
            .map(|a| format!("advertise = {a:?}\n"))
            .unwrap_or_default();
        format!(
            "id = {:?}\ncluster = {:?}\ndata_dir = {:?}\nlisten = \"127.0.0.1:{}\"\n{advertise}controllers = [{}]\n{}{}\n{}\n",
            self.id,
            self.cluster,
            self.dir.join("data").display().to_string(),
            self.port,
            ctl.join(", "),
            crate::secure::top(),
            self.extra_toml,
            crate::secure::replica_tables(&self.cluster, &self.id),
        )
    }
}

/// Any process a test starts: its log captured to a file, signals, restart with the same
/// arguments, and SIGKILL when dropped.
pub struct Daemon {
    pub name: String,
    pub log_path: PathBuf,
    bin: PathBuf,
    args: Vec<std::ffi::OsString>,
    /// Environment for the next start: `Some` sets a variable, `None` removes an inherited one.
    envs: Vec<(String, Option<String>)>,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(
        name: &str,
        bin: PathBuf,
        args: Vec<std::ffi::OsString>,
        log_path: PathBuf,
    ) -> anyhow::Result<Daemon> {
        Daemon::start_with_env(name, bin, args, log_path, &[])
    }

    /// [`Daemon::start`] with environment variables set (`Some`) or removed (`None`).
    pub fn start_with_env(
        name: &str,
        bin: PathBuf,
        args: Vec<std::ffi::OsString>,
        log_path: PathBuf,
        env: &[(&str, Option<&str>)],
    ) -> anyhow::Result<Daemon> {
        let mut d = Daemon {
            name: name.to_string(),
            log_path,
            bin,
            args,
            envs: Vec::new(),
            child: None,
        };
        d.set_env(
            "RUST_LOG",
            Some(&std::env::var("BATON_TEST_LOG").unwrap_or_else(|_| "info".into())),
        );
        d.set_env("ETCD_UNSUPPORTED_ARCH", Some(std::env::consts::ARCH));
        for (k, v) in env {
            d.set_env(k, *v);
        }
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        self.child = Some(
            cmd.spawn()
                .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.bin.display()))?,
        );
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_string(), value.map(str::to_string)));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends a signal (libc number) to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on a child we started and have not reaped.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Daemon::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Never signal a pid that was already reaped (it may belong to someone else now).
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: plain kill(2) on a child we started and have not reaped.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGKILL);
                }
            }
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to `timeout` for the exit status.
    pub fn term(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.as_mut() {
                Some(c) => {
                    if let Ok(Some(st)) = c.try_wait() {
                        self.child = None;
                        return Some(st);
                    }
                }
                None => return None,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// [`Daemon::wait_exit`] for async tests: waits without blocking the runtime's thread.
    pub async fn exited(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the process again with the same arguments.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            anyhow::bail!("{} is still running", self.name);
        }
        self.spawn()
    }

    /// The process log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` lines of the process log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A replica process.
pub struct ReplicaProc {
    pub spec: ReplicaSpec,
    pub url: String,
    pub cfg_path: PathBuf,
    pub log_path: PathBuf,
    daemon: Daemon,
}

impl ReplicaProc {
    /// Writes the config and starts the process.
    pub fn start(spec: ReplicaSpec) -> anyhow::Result<ReplicaProc> {
        std::fs::create_dir_all(&spec.dir)?;
        let cfg_path = spec.dir.join("replica.toml");
        std::fs::write(&cfg_path, spec.config_text())?;
        let name = if spec.fault_points {
            "baton-replica-failpoints"
        } else {
            "baton-replica"
        };
        let bin = if spec.release {
            release_bin(name)?
        } else {
            bin_path(name)?
        };
        let log_path = spec.dir.join("replica.log");
        let daemon = Daemon::start(
            &spec.id,
            bin,
            vec!["--config".into(), cfg_path.clone().into()],
            log_path.clone(),
        )?;
        Ok(ReplicaProc {
            url: crate::secure::url(format!("127.0.0.1:{}", spec.port)),
            log_path,
            cfg_path,
            spec,
            daemon,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }
    pub fn signal(&self, sig: i32) {
        self.daemon.signal(sig)
    }
    pub fn kill9(&mut self) {
        self.daemon.kill9()
    }
    pub fn term(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.daemon.term(timeout)
    }
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.daemon.wait_exit(timeout)
    }
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.daemon.restart()
    }
    pub fn pause(&self) {
        self.daemon.pause()
    }
    pub fn resume(&self) {
        self.daemon.resume()
    }
    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }
    /// SIGKILL, delete the data directory (a lost disk), and start again on an empty one.
    pub fn wipe_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        self.restart()
    }
    pub fn log(&self) -> String {
        self.daemon.log()
    }
    pub fn data_dir(&self) -> PathBuf {
        self.spec.dir.join("data")
    }
}

/// The release build of a workspace binary.
pub fn release_bin(name: &str) -> anyhow::Result<PathBuf> {
    let debug = bin_path(name)?;
    let rel = debug
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("release").join(name))
        .unwrap_or(debug);
    if !rel.exists() {
        anyhow::bail!(
            "{} is not built; run `cargo build --release --workspace --bins`",
            rel.display()
        );
    }
    Ok(rel)
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
