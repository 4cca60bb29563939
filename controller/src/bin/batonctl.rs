//! `batonctl`, the operator CLI over the controller's HTTP API (DESIGN.md §7): `status`,
//! `leader`, `history`, `dry-run` (reads: the first controller that answers, though a standby's
//! answer is kept only when no active controller answers) and
//! `init`, `switchover`, `failover`, `pause`, `resume` (operations, sent to the active
//! controller: a standby's `503 not_active` sends them on to the others and to the address it
//! names). It owns the rendering of the controller's answers as plain text and the mapping of
//! failures to messages a person can act on; it decides nothing about the cluster itself, and
//! it never replays an operation whose request may have reached a controller. The `local`
//! subcommands (DESIGN.md §8) are not here yet; the `Cmd` enum leaves room for them.

use baton_controller::journal::Entry;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Used when neither `--controller` nor `BATON_CONTROLLER` names a controller.
const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7001";
/// Per-request limit (connect + answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an operation is retried while the active controller answers `503 busy`.
const BUSY_RETRY: Duration = Duration::from_secs(3);
/// How long `failover` waits for the promotion to finish before handing back.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// The controller's default switchover timeout (api.rs), for our own wait.
const SWITCHOVER_DEFAULT_MS: u64 = 10_000;
const POLL: Duration = Duration::from_millis(200);

/// Baton operator CLI: cluster status and operations through the failover controller.
#[derive(Parser, Debug)]
#[command(name = "batonctl", version)]
struct Cli {
    /// Controller URL; repeat it or separate several with commas. Default: the
    /// comma-separated list in BATON_CONTROLLER, else http://127.0.0.1:7001.
    #[arg(long = "controller", value_name = "URL", global = true)]
    controller: Vec<String>,
    /// The cluster to act on.
    #[arg(long, value_name = "NAME", default_value = "main", global = true)]
    cluster: String,
    /// A `batonctl local up` directory: its controllers are used unless --controller is given.
    #[arg(
        long = "local-dir",
        value_name = "DIR",
        global = true,
        env = "BATON_LOCAL_DIR"
    )]
    local_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Members with role, health, epoch, positions, lag, sync set and unclean flag.
    Status {
        /// Print the controller's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Planned, lossless change of leader.
    Switchover {
        /// The member to hand over to (default: the controller picks the best sync member).
        #[arg(long, value_name = "MEMBER")]
        to: Option<String>,
        /// Abort (the old leader keeps leading) if the target has not caught up by then.
        #[arg(long, value_name = "N")]
        timeout_ms: Option<u64>,
    },
    /// Forced promotion of a member.
    Failover {
        /// The member to promote.
        #[arg(long, value_name = "MEMBER")]
        to: String,
        /// Accept promoting a member that may lack acknowledged writes.
        #[arg(long)]
        force: bool,
        /// Also accept promoting an unclean member.
        #[arg(long)]
        allow_data_loss: bool,
    },
    /// Stop automatic failover (a running promotion still finishes).
    Pause,
    /// Turn automatic failover back on.
    Resume,
    /// After etcd was restored from an old backup or lost: write a new epoch, leaderless and
    /// promoting with an empty sync set, above everything the members report. Then promote
    /// with `failover --to`, which states the possible loss of acknowledged writes.
    Recover,
    /// Write the first cluster state once every member reported an empty log.
    Init {
        /// Keep retrying this long while members are missing or no controller is ready.
        #[arg(long, value_name = "N", default_value_t = 30)]
        wait_s: u64,
    },
    /// The decision journal, oldest first.
    History {
        /// How many of the newest entries to show.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// Print the entries as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What automatic failover would do now, and why.
    DryRun {
        /// Print the controller's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The current leader and its address.
    Leader,
    /// Rollback files on every member: records cut from a replica's log because they diverged
    /// from the leader's (an old leader's unreplicated writes), never silently erased.
    Rollbacks {
        /// Print the answers as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A whole deployment on this machine: `local up|stop|start|down --dir DIR` (DESIGN.md §8).
    /// It talks to no controller until it has started them, so `main` dispatches it first.
    Local {
        #[command(subcommand)]
        cmd: baton_controller::local::LocalCmd,
    },
}

/// A failure to report: the message is printed as is, and the process exits 1.
#[derive(Debug)]
struct Fail(String);

impl<T: Into<String>> From<T> for Fail {
    fn from(s: T) -> Fail {
        Fail(s.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Local { cmd } = cli.cmd {
        return run_local(cmd, cli.cluster).await;
    }
    let mut env = std::env::var("BATON_CONTROLLER").ok();
    if let (true, Some(dir)) = (cli.controller.is_empty(), &cli.local_dir) {
        match baton_controller::local::read_layout(dir) {
            Ok(l) => {
                env = Some(
                    l.controllers
                        .iter()
                        .map(|c| c.url.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                )
            }
            Err(e) => {
                eprintln!("batonctl: --local-dir: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let controllers = match controller_list(&cli.controller, env.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("batonctl: {e}");
            return ExitCode::from(2);
        }
    };
    let ctl = Ctl::new(controllers, cli.cluster);
    match run(&ctl, cli.cmd).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(m)) => {
            eprintln!("batonctl: {m}");
            ExitCode::from(1)
        }
    }
}

/// `local …`: after `up`, print the status table; without `--detach` stay in the foreground
/// and stop everything on Ctrl-C or SIGTERM.
async fn run_local(cmd: baton_controller::local::LocalCmd, cluster: String) -> ExitCode {
    let up = match baton_controller::local::run(cmd).await {
        Ok(up) => up,
        Err(e) => {
            eprintln!("batonctl: {e}");
            return ExitCode::from(1);
        }
    };
    let Some((controllers, dir, detach)) = up else {
        return ExitCode::SUCCESS;
    };
    let ctl = Ctl::new(controllers, cluster);
    // Let a few heartbeats reach the controllers so the table shows current positions.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    println!();
    if let Err(Fail(m)) = run(&ctl, Cmd::Status { json: false }).await {
        eprintln!("batonctl: status: {m}");
    }
    if detach {
        println!(
            "\nStop it with: batonctl local down --dir {}",
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    println!("\nRunning in the foreground; Ctrl-C stops everything (the data stays).");
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut t) => {
                t.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    match tokio::task::spawn_blocking(move || baton_controller::local::down(&dir)).await {
        Ok(Ok(())) => {
            println!("stopped");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("batonctl: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("batonctl: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(ctl: &Ctl, cmd: Cmd) -> Result<(), Fail> {
    match cmd {
        Cmd::Local { .. } => Err(Fail(
            "`local` is handled before any controller is contacted".into(),
        )),
        Cmd::Status { json } => {
            let (url, v) = ctl.read(&ctl.path(""), None, whose_view).await?;
            if json {
                print_json(&v);
            } else {
                print_lines(&status_lines(&v, &url, unix_ms()));
            }
            Ok(())
        }
        Cmd::Leader => {
            let (_, v) = ctl.read(&ctl.path("/leader"), None, whose_leader).await?;
            print_lines(&[leader_line(&v)]);
            Ok(())
        }
        Cmd::Rollbacks { json } => {
            let (_, view) = ctl.read(&ctl.path(""), None, whose_view).await?;
            let members = view["members"].as_array().cloned().unwrap_or_default();
            let mut all = Vec::new();
            let mut lines = Vec::new();
            for m in &members {
                let (Some(id), Some(addr)) = (m["id"].as_str(), m["addr"].as_str()) else {
                    continue;
                };
                match ctl
                    .call(
                        &format!("http://{addr}"),
                        Method::GET,
                        "/v1/rollbacks",
                        None,
                    )
                    .await
                {
                    Ok(a) if a.ok() => {
                        for f in a.body.as_array().into_iter().flatten() {
                            lines.push(format!(
                                "{id:<8} epoch {:<4} LSN {}..={}  {} bytes  {}",
                                f["epoch"],
                                f["from_lsn"],
                                f["to_lsn"],
                                f["bytes"],
                                f["file"].as_str().unwrap_or("?")
                            ));
                        }
                        all.push(serde_json::json!({ "member": id, "rollbacks": a.body }));
                    }
                    Ok(a) => lines.push(format!("{id:<8} (answered HTTP {})", a.status)),
                    Err(_) => lines.push(format!("{id:<8} (unreachable at {addr})")),
                }
            }
            if json {
                print_json(&Value::Array(all));
            } else {
                if lines.is_empty() {
                    lines.push("(no member has rollback files)".into());
                }
                print_lines(&lines);
            }
            Ok(())
        }
        Cmd::History { limit, json } => {
            let (_, v) = ctl
                .read(
                    &ctl.path(&format!("/history?limit={limit}")),
                    None,
                    whose_any,
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                let entries = parse_history(v)?;
                if entries.is_empty() {
                    print_lines(&["(the journal is empty)".to_string()]);
                }
                let lines: Vec<String> = entries
                    .iter()
                    .map(|e| history_line(e, &local_time))
                    .collect();
                print_lines(&lines);
            }
            Ok(())
        }
        Cmd::DryRun { json } => {
            let (_, v) = ctl.read(&ctl.path("/dry-run"), None, whose_dry_run).await?;
            if json {
                print_json(&v);
            } else {
                print_lines(&dry_run_lines(&v));
            }
            Ok(())
        }
        Cmd::Pause => simple_op(ctl, "/pause").await,
        Cmd::Resume => simple_op(ctl, "/resume").await,
        Cmd::Recover => simple_op(ctl, "/recover").await,
        Cmd::Init { wait_s } => init(ctl, Duration::from_secs(wait_s)).await,
        Cmd::Switchover { to, timeout_ms } => switchover(ctl, to, timeout_ms).await,
        Cmd::Failover {
            to,
            force,
            allow_data_loss,
        } => failover(ctl, to, force, allow_data_loss).await,
    }
}

// ----- controller list ------------------------------------------------------------------------

/// The controllers to talk to, in order: `--controller` values (each possibly comma-separated),
/// else `BATON_CONTROLLER` (comma-separated), else the default. A bare `host:port` gets
/// `http://`; duplicates and trailing slashes go.
fn controller_list(flags: &[String], env: Option<&str>) -> Result<Vec<String>, String> {
    let mut raw: Vec<&str> = flags.iter().flat_map(|f| f.split(',')).collect();
    let mut source = "--controller";
    if raw.iter().all(|s| s.trim().is_empty()) {
        raw = env.map(|e| e.split(',').collect()).unwrap_or_default();
        source = "BATON_CONTROLLER";
    }
    let mut out: Vec<String> = Vec::new();
    for r in raw {
        let t = r.trim();
        if t.is_empty() {
            continue;
        }
        let url = normalize_url(t).map_err(|e| format!("{source}: {e}"))?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    if out.is_empty() {
        out.push(DEFAULT_CONTROLLER.to_string());
    }
    Ok(out)
}

fn normalize_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let url = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    if !url.starts_with("http://") {
        return Err(format!("{s:?}: only http:// controller URLs are supported"));
    }
    match url.parse::<hyper::Uri>() {
        Ok(u) if u.host().is_some() && (u.path() == "/" || u.path().is_empty()) => Ok(url),
        _ => Err(format!(
            "{s:?} is not a controller URL like http://127.0.0.1:7001"
        )),
    }
}

/// The active controller a standby names in its `not_active` message ("… the active one is
/// 127.0.0.1:7001"), as a URL.
fn active_from_message(msg: &str) -> Option<String> {
    let (_, rest) = msg.split_once("the active one is ")?;
    let addr = rest
        .split_whitespace()
        .next()?
        .trim_end_matches(['.', ',', ';']);
    if addr.is_empty() || addr == "unknown" {
        return None;
    }
    normalize_url(addr).ok()
}

// ----- HTTP -----------------------------------------------------------------------------------

/// A controller's answer: its HTTP status and JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `(error, message)` of an error answer.
    fn error(&self) -> Option<(String, String)> {
        if self.ok() {
            return None;
        }
        let code = self.body.get("error").and_then(Value::as_str);
        let msg = self.body.get("message").and_then(Value::as_str);
        Some((
            code.unwrap_or("http_error").to_string(),
            msg.map_or_else(
                || format!("HTTP {}: {}", self.status, self.body),
                str::to_string,
            ),
        ))
    }

    fn is(&self, status: u16, code: &str) -> bool {
        self.status == status && self.error().is_some_and(|(c, _)| c == code)
    }
}

/// Why a request got no answer.
#[derive(Debug)]
enum CallError {
    /// No connection: the request was never sent, so another controller may be asked.
    Unreachable {
        url: String,
        refused: bool,
        detail: String,
    },
    /// The request may have been sent; its outcome is unknown.
    Broken { url: String, detail: String },
    /// The answer was not what a controller sends.
    BadAnswer { url: String, detail: String },
}

impl CallError {
    fn message(&self) -> String {
        match self {
            CallError::Unreachable {
                url,
                refused: true,
                ..
            } => format!(
                "cannot reach the controller at {url} (is baton-controller running? set --controller or BATON_CONTROLLER)"
            ),
            CallError::Unreachable { url, detail, .. } => format!(
                "cannot reach the controller at {url}: {detail} (is baton-controller running? set --controller or BATON_CONTROLLER)"
            ),
            CallError::Broken { url, detail } => {
                format!("the request to the controller at {url} failed: {detail}")
            }
            CallError::BadAnswer { url, detail } => {
                format!("the controller at {url} gave an unexpected answer: {detail}")
            }
        }
    }
}

/// Why an operation reached no active controller.
#[derive(Debug, Default)]
struct NoActive {
    unreachable: Vec<CallError>,
    /// `(url, message)` of each standby that answered `not_active`.
    standby: Vec<(String, String)>,
}

impl NoActive {
    fn message(&self, cluster: &str) -> String {
        if self.standby.is_empty() {
            return failures_message(&self.unreachable);
        }
        let mut parts: Vec<String> = self
            .standby
            .iter()
            .map(|(u, m)| format!("{u}: {m}"))
            .collect();
        if !self.unreachable.is_empty() {
            parts.push(failures_message(&self.unreachable));
        }
        format!(
            "no active controller for cluster {cluster:?} answered (an election may be under way; retry in a few seconds): {}",
            parts.join("; ")
        )
    }
}

/// One message for several failed requests; refused connections are named together.
fn failures_message(errors: &[CallError]) -> String {
    let refused: Vec<&str> = errors
        .iter()
        .filter_map(|e| match e {
            CallError::Unreachable {
                url, refused: true, ..
            } => Some(url.as_str()),
            _ => None,
        })
        .collect();
    let mut parts: Vec<String> = Vec::new();
    if !refused.is_empty() {
        parts.push(format!(
            "cannot reach the controller at {} (is baton-controller running? set --controller or BATON_CONTROLLER)",
            refused.join(", ")
        ));
    }
    parts.extend(
        errors
            .iter()
            .filter(|e| !matches!(e, CallError::Unreachable { refused: true, .. }))
            .map(CallError::message),
    );
    parts.join("; ")
}

/// Who gave a read's answer, as the answer itself says.
#[derive(Debug, PartialEq)]
enum Whose {
    Active,
    /// A standby, with the active controller's address if it knows it.
    Standby(Option<String>),
    /// Any controller's answer is as good (the journal is read from etcd).
    Any,
}

/// `GET /v1/clusters/{c}`: `active` and `active_controller`.
fn whose_view(v: &Value) -> Whose {
    match v.get("active").and_then(Value::as_bool) {
        Some(false) => Whose::Standby(
            v.get("active_controller")
                .and_then(Value::as_str)
                .map(str::to_string),
        ),
        _ => Whose::Active,
    }
}

/// `GET …/leader`: `from_active`.
fn whose_leader(v: &Value) -> Whose {
    match v.get("from_active").and_then(Value::as_bool) {
        Some(false) => Whose::Standby(None),
        _ => Whose::Active,
    }
}

/// `GET …/dry-run` has no field saying whose it is; a standby lists itself as blocking.
fn whose_dry_run(v: &Value) -> Whose {
    let standby = v
        .get("blocking")
        .and_then(Value::as_array)
        .is_some_and(|b| {
            b.iter()
                .any(|x| x.as_str() == Some("this controller is not active"))
        });
    if standby {
        Whose::Standby(None)
    } else {
        Whose::Active
    }
}

fn whose_any(_: &Value) -> Whose {
    Whose::Any
}

struct Ctl {
    controllers: Vec<String>,
    cluster: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Ctl {
    fn new(controllers: Vec<String>, cluster: String) -> Ctl {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(CONNECT_TIMEOUT));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(conn);
        Ctl {
            controllers,
            cluster,
            client,
        }
    }

    fn path(&self, tail: &str) -> String {
        format!("/v1/clusters/{}{tail}", self.cluster)
    }

    /// One request to one controller.
    async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CallError> {
        let bad = |detail: String| CallError::BadAnswer {
            url: base.to_string(),
            detail,
        };
        let uri = format!("{base}{path}")
            .parse::<hyper::Uri>()
            .map_err(|e| bad(format!("cannot form a request URL: {e}")))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| bad(format!("cannot form the request: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| classify(base, &e))?;
            let status = resp.status().as_u16();
            let raw = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Broken {
                    url: base.to_string(),
                    detail: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, CallError>((status, raw))
        };
        let (status, raw) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| CallError::Broken {
                url: base.to_string(),
                detail: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            })??;
        match serde_json::from_slice::<Value>(&raw) {
            Ok(body) => Ok(Answer { status, body }),
            Err(_) if !(200..300).contains(&status) => {
                // Not from our API (a proxy, another service on the port): keep its text.
                let text = String::from_utf8_lossy(&raw);
                Ok(Answer {
                    status,
                    body: serde_json::json!({
                        "error": format!("http_{status}"),
                        "message": format!("{base} answered HTTP {status}: {}", text.trim()),
                    }),
                })
            }
            Err(e) => Err(bad(format!("not JSON ({e})"))),
        }
    }

    /// A read: the first controller (`prefer` first, then the configured order) that answers,
    /// except that an answer its `whose` calls a standby's is kept only if no active
    /// controller (among the others and the one the standby names) answers: a standby's view
    /// may be a state poll behind, and its dry run is not the active controller's.
    async fn read(
        &self,
        path: &str,
        prefer: Option<&str>,
        whose: fn(&Value) -> Whose,
    ) -> Result<(String, Value), Fail> {
        let mut order: Vec<String> = prefer.into_iter().map(str::to_string).collect();
        for u in &self.controllers {
            if !order.contains(u) {
                order.push(u.clone());
            }
        }
        let mut standby: Option<(String, Value)> = None;
        let mut errors = Vec::new();
        let mut i = 0;
        // Bounded: each address is queued once.
        while i < order.len() && i < 16 {
            let url = order[i].clone();
            i += 1;
            match self.call(&url, Method::GET, path, None).await {
                Ok(a) => {
                    if let Some((_, m)) = a.error() {
                        if standby.is_some() {
                            continue;
                        }
                        return Err(m.into());
                    }
                    match whose(&a.body) {
                        Whose::Standby(named) => {
                            if let Some(n) = named.and_then(|n| normalize_url(&n).ok()) {
                                if !order.contains(&n) {
                                    order.insert(i, n);
                                }
                            }
                            standby.get_or_insert((url, a.body));
                        }
                        Whose::Active | Whose::Any => return Ok((url, a.body)),
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        standby.ok_or_else(|| failures_message(&errors).into())
    }

    /// An operation: sent to each controller in turn until one that is active answers.
    /// Standbys (`503 not_active`) are skipped and the address they name is tried next; an
    /// unreachable controller is skipped; a request that may have arrived is never re-sent.
    async fn operate(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Result<(String, Answer), NoActive>, Fail> {
        let mut queue: Vec<String> = self.controllers.clone();
        let mut no = NoActive::default();
        let mut i = 0;
        // Bounded: each address is queued once.
        while i < queue.len() && i < 16 {
            let url = queue[i].clone();
            i += 1;
            match self.call(&url, Method::POST, path, body).await {
                Ok(a) if a.is(503, "not_active") => {
                    let msg = a.error().map(|(_, m)| m).unwrap_or_default();
                    if let Some(active) = active_from_message(&msg) {
                        if !queue.contains(&active) {
                            queue.insert(i, active);
                        }
                    }
                    no.standby.push((url, msg));
                }
                Ok(a) => return Ok(Ok((url, a))),
                Err(e @ CallError::Unreachable { .. }) => no.unreachable.push(e),
                Err(e) => {
                    return Err(format!(
                        "{}; the operation may or may not have been applied: check `batonctl status` and `batonctl history`",
                        e.message()
                    )
                    .into())
                }
            }
        }
        Ok(Err(no))
    }

    /// An operation retried while the active controller is busy writing another change.
    async fn operate_retrying(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(String, Answer), Fail> {
        let start = Instant::now();
        loop {
            match self.operate(path, body).await? {
                Ok((_, a)) if a.is(503, "busy") && start.elapsed() < BUSY_RETRY => {
                    tokio::time::sleep(POLL).await;
                }
                Ok((url, a)) => {
                    if let Some((_, m)) = a.error() {
                        return Err(m.into());
                    }
                    return Ok((url, a));
                }
                Err(no) => return Err(no.message(&self.cluster).into()),
            }
        }
    }
}

/// Sorts a client error into "never connected" (safe to try elsewhere) and "broken".
fn classify(url: &str, e: &hyper_util::client::legacy::Error) -> CallError {
    let mut refused = false;
    let mut detail = e.to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        detail = s.to_string();
        src = s.source();
    }
    if e.is_connect() || refused {
        CallError::Unreachable {
            url: url.to_string(),
            refused,
            detail,
        }
    } else {
        CallError::Broken {
            url: url.to_string(),
            detail,
        }
    }
}

// ----- operations -----------------------------------------------------------------------------

async fn simple_op(ctl: &Ctl, tail: &str) -> Result<(), Fail> {
    let (_, a) = ctl.operate_retrying(&ctl.path(tail), None).await?;
    print_lines(&[answer_message(&a.body)]);
    Ok(())
}

fn answer_message(v: &Value) -> String {
    v.get("message")
        .and_then(Value::as_str)
        .map_or_else(|| v.to_string(), str::to_string)
}

async fn init(ctl: &Ctl, wait: Duration) -> Result<(), Fail> {
    let path = ctl.path("/init");
    let start = Instant::now();
    let mut last_said = String::new();
    loop {
        // Waited for: members not reporting yet (409 members_missing), no active controller or
        // a busy one (503).
        let waiting_for = match ctl.operate(&path, None).await? {
            Ok((_, a)) if a.ok() => {
                print_lines(&[answer_message(&a.body)]);
                return Ok(());
            }
            Ok((_, a)) if a.is(409, "members_missing") || a.status == 503 => {
                a.error().map(|(_, m)| m).unwrap_or_default()
            }
            Ok((_, a)) => return Err(a.error().map(|(_, m)| m).unwrap_or_default().into()),
            Err(no) if !no.standby.is_empty() => no.message(&ctl.cluster),
            Err(no) => return Err(no.message(&ctl.cluster).into()),
        };
        if start.elapsed() >= wait {
            return Err(format!("init gave up after {} s: {waiting_for}", wait.as_secs()).into());
        }
        if waiting_for != last_said {
            print_lines(&[format!("waiting: {waiting_for}")]);
            last_said = waiting_for;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn switchover(ctl: &Ctl, to: Option<String>, timeout_ms: Option<u64>) -> Result<(), Fail> {
    let (_, before) = ctl.read(&ctl.path(""), None, whose_view).await?;
    let old_leader = leader_id(&before);
    let old_epoch = before.get("epoch").and_then(Value::as_u64).unwrap_or(0);
    let mut body = serde_json::Map::new();
    if let Some(t) = &to {
        body.insert("to".into(), Value::from(t.as_str()));
    }
    if let Some(t) = timeout_ms {
        body.insert("timeout_ms".into(), Value::from(t));
    }
    let started = unix_ms();
    let (url, a) = ctl
        .operate_retrying(&ctl.path("/switchover"), Some(&Value::Object(body)))
        .await?;
    print_lines(&[answer_message(&a.body)]);
    let wait = Duration::from_millis(timeout_ms.unwrap_or(SWITCHOVER_DEFAULT_MS) + 5_000);
    let v = wait_for_op(ctl, &url, wait, started).await?;
    let leader = leader_id(&v);
    let epoch = v.get("epoch").and_then(Value::as_u64).unwrap_or(0);
    let done = leader.is_some()
        && leader != old_leader
        && epoch > old_epoch
        && (to.is_none() || leader == to);
    let who = leader.unwrap_or_else(|| "no member".into());
    if done {
        print_lines(&[format!("switchover done: {who} leads epoch {epoch}")]);
        return Ok(());
    }
    let why = last_journal_message(ctl, &url, started, &["abort", "refusal", "blocked"]).await;
    Err(format!(
        "the switchover did not happen: {who} leads epoch {epoch}{}",
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    )
    .into())
}

async fn failover(ctl: &Ctl, to: String, force: bool, allow_data_loss: bool) -> Result<(), Fail> {
    let body = serde_json::json!({ "to": to, "force": force, "allow_data_loss": allow_data_loss });
    let started = unix_ms();
    let (url, a) = ctl
        .operate_retrying(&ctl.path("/failover"), Some(&body))
        .await?;
    print_lines(&[answer_message(&a.body)]);
    let v = wait_for_op(ctl, &url, FAILOVER_WAIT, started).await?;
    let leader = leader_id(&v);
    let epoch = v.get("epoch").and_then(Value::as_u64).unwrap_or(0);
    if leader.as_deref() == Some(to.as_str()) {
        print_lines(&[format!("failover done: {to} leads epoch {epoch}")]);
        return Ok(());
    }
    let why = last_journal_message(ctl, &url, started, &["blocked", "refusal", "abort"]).await;
    Err(format!(
        "the failover did not happen: {} leads epoch {epoch}{}",
        leader.unwrap_or_else(|| "no member".into()),
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    )
    .into())
}

/// Polls the cluster until no operation runs and the phase is steady (or `wait` passes),
/// printing each new blocking reason the journal gives meanwhile. Returns the last view.
async fn wait_for_op(
    ctl: &Ctl,
    url: &str,
    wait: Duration,
    since_unix_ms: u64,
) -> Result<Value, Fail> {
    let start = Instant::now();
    let mut said = String::new();
    let mut asked = Instant::now();
    loop {
        let (_, v) = ctl.read(&ctl.path(""), Some(url), whose_view).await?;
        let steady = v.get("phase").and_then(Value::as_str) == Some("steady");
        if steady && v.get("op").is_none_or(Value::is_null) {
            return Ok(v);
        }
        if start.elapsed() >= wait {
            let phase = v.get("phase").and_then(Value::as_str).unwrap_or("unknown");
            return Err(format!(
                "still {phase} after {} s; watch `batonctl status` and `batonctl history`",
                wait.as_secs()
            )
            .into());
        }
        if asked.elapsed() >= Duration::from_secs(1) {
            asked = Instant::now();
            if let Some(m) =
                last_journal_message(ctl, url, since_unix_ms, &["blocked", "refusal"]).await
            {
                if m != said {
                    print_lines(&[format!("waiting: {m}")]);
                    said = m;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The message of the newest journal entry of one of `kinds` seen since `since_unix_ms`.
async fn last_journal_message(
    ctl: &Ctl,
    url: &str,
    since_unix_ms: u64,
    kinds: &[&str],
) -> Option<String> {
    let (_, v) = ctl
        .read(&ctl.path("/history?limit=20"), Some(url), whose_any)
        .await
        .ok()?;
    let entries = parse_history(v).ok()?;
    entries
        .iter()
        .rev()
        .find(|e| {
            kinds.contains(&e.kind.as_str())
                && e.last_unix_ms.unwrap_or(e.at_unix_ms) + 1_000 >= since_unix_ms
        })
        .map(|e| e.message.clone())
}

// ----- rendering ------------------------------------------------------------------------------

fn leader_id(v: &Value) -> Option<String> {
    v.get("leader")?.get("id")?.as_str().map(str::to_string)
}

fn s_or<'a>(v: &'a Value, key: &str, dflt: &'a str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or(dflt)
}

fn num_or_dash(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_u64)
        .map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The `status` text: one header line, then a table with one row per member.
fn status_lines(v: &Value, answered_by: &str, now_unix_ms: u64) -> Vec<String> {
    let cluster = s_or(v, "cluster", "?");
    let mut head = vec![format!("Cluster: {cluster}")];
    if v.get("initialized").and_then(Value::as_bool) == Some(false) {
        head.push("not initialized (run `batonctl init`)".into());
    } else {
        head.push(format!("epoch {}", num_or_dash(v, "epoch")));
        head.push(format!(
            "leader {}",
            leader_id(v).unwrap_or_else(|| "none".into())
        ));
        head.push(format!("phase {}", s_or(v, "phase", "?")));
        let control = s_or(v, "control", "?");
        if control == "manual" {
            head.push("control manual (PAUSED: failover is manual only)".into());
        } else {
            head.push(format!("control {control}"));
        }
        head.push(format!("mode {}", s_or(v, "mode", "?")));
    }
    let active = v.get("active").and_then(Value::as_bool).unwrap_or(false);
    let active_addr = v.get("active_controller").and_then(Value::as_str);
    head.push(match (active, active_addr) {
        (true, Some(a)) => format!("active controller {a}"),
        (true, None) => format!("active controller {answered_by}"),
        (false, Some(a)) => format!("active controller {a} (answered by standby {answered_by})"),
        (false, None) => format!("active controller unknown (answered by standby {answered_by})"),
    });
    if let Some(op) = v.get("op").filter(|o| !o.is_null()) {
        let deadline = op.get("deadline_ms").and_then(Value::as_u64).unwrap_or(0);
        let when = if deadline >= now_unix_ms {
            format!("deadline in {}", secs(deadline - now_unix_ms))
        } else {
            format!("deadline passed {} ago", secs(now_unix_ms - deadline))
        };
        head.push(format!(
            "op {} {} ({when})",
            s_or(op, "id", "?"),
            s_or(op, "kind", "?")
        ));
    }
    let mut lines = vec![head.join(" | ")];

    let adding = v
        .get("adding")
        .and_then(|a| a.get("id"))
        .and_then(Value::as_str);
    let empty = Vec::new();
    let members = v.get("members").and_then(Value::as_array).unwrap_or(&empty);
    let tags = members.iter().any(|m| {
        m.get("no_failover").and_then(Value::as_bool) == Some(true)
            || m.get("priority").and_then(Value::as_i64).unwrap_or(0) != 0
    });
    let mut headers = vec![
        "Member", "Host", "Role", "Health", "Epoch", "LSN", "Lag", "Sync", "Unclean",
    ];
    let mut right = vec![false, false, false, false, true, true, true, false, false];
    if tags {
        headers.push("Tags");
        right.push(false);
    }
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let id = s_or(m, "id", "?");
            let health = match (
                s_or(m, "health", "?"),
                m.get("heard_ms_ago").and_then(Value::as_u64),
            ) {
                ("unreachable", Some(ago)) => format!("unreachable {}", secs(ago)),
                (h, _) => h.to_string(),
            };
            let sync = if m.get("sync").and_then(Value::as_bool) == Some(true) {
                "sync"
            } else if adding == Some(id) {
                "adding"
            } else {
                ""
            };
            let unclean = if m.get("unclean").and_then(Value::as_bool) == Some(true) {
                "yes"
            } else {
                ""
            };
            let mut row = vec![
                id.to_string(),
                s_or(m, "addr", "?").to_string(),
                s_or(m, "role", "-").to_string(),
                health,
                num_or_dash(m, "epoch"),
                num_or_dash(m, "log_end_lsn"),
                num_or_dash(m, "lag_records"),
                sync.to_string(),
                unclean.to_string(),
            ];
            if tags {
                let mut t = Vec::new();
                if let Some(p) = m
                    .get("priority")
                    .and_then(Value::as_i64)
                    .filter(|p| *p != 0)
                {
                    t.push(format!("priority={p}"));
                }
                if m.get("no_failover").and_then(Value::as_bool) == Some(true) {
                    t.push("no_failover".into());
                }
                row.push(t.join(" "));
            }
            row
        })
        .collect();
    lines.extend(table(&headers, &right, &rows));
    lines.extend(etcd_alarm_lines(v));
    lines
}

/// Lines for etcd's raised alarms (none when there are none): under NOSPACE etcd refuses every
/// write, so no decision, election or new lease happens until it is cleared.
fn etcd_alarm_lines(v: &Value) -> Vec<String> {
    let alarms = v["etcd"]["alarms"].as_array().cloned().unwrap_or_default();
    alarms
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap_or("?");
            if a.starts_with("NOSPACE") {
                format!(
                    "etcd ALARM {a}: etcd's space quota is exhausted and it refuses every write (no \
                     decision, election or new lease); compact and defragment etcd, then \
                     `etcdctl alarm disarm`"
                )
            } else {
                format!("etcd ALARM {a}: see etcd's log; `etcdctl alarm list`")
            }
        })
        .collect()
}

/// A bordered ASCII table in `patronictl list`'s shape.
fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> Vec<String> {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let rule = format!(
        "+{}+",
        w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let line = |cells: Vec<&str>| {
        let cells: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let n = w.get(i).copied().unwrap_or(0);
                if right.get(i).copied().unwrap_or(false) {
                    format!(" {c:>n$} ")
                } else {
                    format!(" {c:<n$} ")
                }
            })
            .collect();
        format!("|{}|", cells.join("|"))
    };
    let mut out = vec![rule.clone(), line(headers.to_vec()), rule.clone()];
    for r in rows {
        out.push(line(r.iter().map(String::as_str).collect()));
    }
    out.push(rule);
    out
}

fn leader_line(v: &Value) -> String {
    let epoch = num_or_dash(v, "epoch");
    let rev = num_or_dash(v, "rev");
    let standby = if v.get("from_active").and_then(Value::as_bool) == Some(false) {
        ", from a standby controller"
    } else {
        ""
    };
    match v.get("id").and_then(Value::as_str) {
        Some(id) => format!(
            "{id} {} (epoch {epoch}, rev {rev}{standby})",
            s_or(v, "addr", "?")
        ),
        None => format!("no leader (epoch {epoch}, rev {rev}{standby})"),
    }
}

fn parse_history(v: Value) -> Result<Vec<Entry>, Fail> {
    serde_json::from_value::<Vec<Entry>>(v).map_err(|e| {
        Fail(format!(
            "the controller's journal is not in the expected shape: {e}"
        ))
    })
}

/// One journal entry: local time, kind, epoch, message, and `×count` when coalesced.
fn history_line(e: &Entry, time: &dyn Fn(u64) -> String) -> String {
    let mut s = format!(
        "{}  {:<15} e{:<4} {}",
        time(e.at_unix_ms),
        e.kind,
        e.epoch,
        e.message
    );
    if e.count > 1 {
        s.push_str(&format!("  ×{}", e.count));
        if let Some(last) = e.last_unix_ms {
            s.push_str(&format!(" (last {})", time(last)));
        }
    }
    s
}

fn dry_run_lines(v: &Value) -> Vec<String> {
    let yes = v.get("would_fail_over").and_then(Value::as_bool) == Some(true);
    let mut out = vec![
        format!("leader health:   {}", s_or(v, "leader_health", "?")),
        format!("would fail over: {}", if yes { "yes" } else { "no" }),
    ];
    match v.get("candidate").and_then(Value::as_str) {
        Some(c) => {
            let loss = v
                .get("expected_loss_records")
                .and_then(Value::as_u64)
                .map_or_else(|| "unknown".to_string(), |n| format!("{n} records"));
            out.push(format!("candidate:       {c} (expected loss: {loss})"));
        }
        None => out.push("candidate:       none".into()),
    }
    let blocking: Vec<&str> = v
        .get("blocking")
        .and_then(Value::as_array)
        .map(|b| b.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if blocking.is_empty() {
        out.push("blocking:        nothing".into());
    } else {
        out.push("blocking:".into());
        out.extend(blocking.iter().map(|b| format!("  - {b}")));
    }
    out
}

// ----- output and time ------------------------------------------------------------------------

/// Prints lines to stdout; a closed pipe (`batonctl history | head`) is not an error.
fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for l in lines {
        if writeln!(out, "{l}").is_err() {
            return;
        }
    }
}

fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    print_lines(&[text]);
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `YYYY-MM-DD HH:MM:SS` in the local time zone (UTC, marked `Z`, if it cannot be had).
fn local_time(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value (integers and a null zone pointer), and
    // localtime_r writes only into the `tm` it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return utc_time(unix_ms);
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// UTC civil time from Unix ms (Howard Hinnant's days-to-civil algorithm).
fn utc_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn controller_list_splits_normalizes_and_dedups_flags() {
        let got = controller_list(
            &s(&[
                "http://10.0.0.1:7001,127.0.0.1:7002/",
                " 127.0.0.1:7002 ",
                "",
            ]),
            Some("http://ignored:1"),
        );
        assert_eq!(
            got,
            Ok(s(&["http://10.0.0.1:7001", "http://127.0.0.1:7002"]))
        );
    }

    #[test]
    fn controller_list_falls_back_to_env_then_default() {
        assert_eq!(
            controller_list(&[], Some(" a:1, ,http://b:2 ")),
            Ok(s(&["http://a:1", "http://b:2"]))
        );
        assert_eq!(
            controller_list(&s(&[","]), Some("")),
            Ok(s(&[DEFAULT_CONTROLLER]))
        );
        assert_eq!(controller_list(&[], None), Ok(s(&[DEFAULT_CONTROLLER])));
    }

    #[test]
    fn controller_list_rejects_what_it_cannot_use() {
        let e = controller_list(&s(&["https://a:1"]), None).expect_err("https");
        assert!(e.starts_with("--controller: "), "{e}");
        assert!(e.contains("only http://"), "{e}");
        let e = controller_list(&[], Some("http://a:1/v1/cluster")).expect_err("path");
        assert!(e.starts_with("BATON_CONTROLLER: "), "{e}");
    }

    #[test]
    fn the_active_controller_is_read_from_a_standby_message() {
        assert_eq!(
            active_from_message("this controller is not active; the active one is 127.0.0.1:7001"),
            Some("http://127.0.0.1:7001".into())
        );
        assert_eq!(
            active_from_message("this controller is not active; the active one is unknown"),
            None
        );
        assert_eq!(active_from_message("busy"), None);
    }

    fn sample() -> Value {
        serde_json::json!({
            "cluster": "main", "initialized": true, "epoch": 4, "rev": 31, "phase": "steady",
            "leader": {"id": "r3", "data_id": "x", "boot_id": "y"}, "prev_leader": null,
            "sync_set": [{"id": "r1", "data_id": "a"}], "adding": {"id": "r2", "data_id": "b"},
            "control": "auto", "mode": "semi-sync", "op": null,
            "members": [
                {"id": "r1", "addr": "127.0.0.1:7101", "priority": 0, "no_failover": false,
                 "role": "follower", "health": "ok", "heard_ms_ago": 40, "unclean": false,
                 "epoch": 4, "log_end_lsn": 1042, "flushed_lsn": 1042, "applied_lsn": 1042,
                 "sync": true, "lag_records": 0},
                {"id": "r2", "addr": "127.0.0.1:7102", "priority": 0, "no_failover": false,
                 "role": "follower", "health": "unreachable", "heard_ms_ago": 2500,
                 "unclean": true, "epoch": 3, "log_end_lsn": 980, "flushed_lsn": 980,
                 "applied_lsn": 975, "sync": false, "lag_records": 62},
                {"id": "r3", "addr": "127.0.0.1:7103", "priority": 0, "no_failover": false,
                 "role": "leader", "health": "ok", "heard_ms_ago": 10, "unclean": false,
                 "epoch": 4, "log_end_lsn": 1042, "flushed_lsn": 1042, "applied_lsn": 1042,
                 "sync": false, "lag_records": 0},
                {"id": "r4", "addr": "127.0.0.1:7104", "priority": 0, "no_failover": false,
                 "role": null, "health": "never heard", "heard_ms_ago": null, "unclean": null,
                 "epoch": null, "log_end_lsn": null, "flushed_lsn": null, "applied_lsn": null,
                 "sync": false, "lag_records": null}
            ],
            "active": true, "active_controller": "127.0.0.1:7001"
        })
    }

    #[test]
    fn status_renders_a_header_and_one_row_per_member() {
        let got = status_lines(&sample(), "http://127.0.0.1:7001", 0);
        let want = [
            "Cluster: main | epoch 4 | leader r3 | phase steady | control auto | mode semi-sync | active controller 127.0.0.1:7001",
            "+--------+----------------+----------+-------------------+-------+------+-----+--------+---------+",
            "| Member | Host           | Role     | Health            | Epoch |  LSN | Lag | Sync   | Unclean |",
            "+--------+----------------+----------+-------------------+-------+------+-----+--------+---------+",
            "| r1     | 127.0.0.1:7101 | follower | ok                |     4 | 1042 |   0 | sync   |         |",
            "| r2     | 127.0.0.1:7102 | follower | unreachable 2.5 s |     3 |  980 |  62 | adding | yes     |",
            "| r3     | 127.0.0.1:7103 | leader   | ok                |     4 | 1042 |   0 |        |         |",
            "| r4     | 127.0.0.1:7104 | -        | never heard       |     - |    - |   - |        |         |",
            "+--------+----------------+----------+-------------------+-------+------+-----+--------+---------+",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn status_says_paused_names_the_op_and_a_standby_answer() {
        let mut v = sample();
        v["control"] = "manual".into();
        v["phase"] = "switching".into();
        v["op"] =
            serde_json::json!({"id": "op-0000abcd", "kind": "switchover:r1", "deadline_ms": 9_500});
        v["active"] = false.into();
        v["members"][3]["no_failover"] = true.into();
        let got = status_lines(&v, "http://127.0.0.1:7002", 2_000);
        assert_eq!(
            got[0],
            "Cluster: main | epoch 4 | leader r3 | phase switching | control manual (PAUSED: failover is manual only) \
             | mode semi-sync | active controller 127.0.0.1:7001 (answered by standby http://127.0.0.1:7002) \
             | op op-0000abcd switchover:r1 (deadline in 7.5 s)"
        );
        assert!(got[2].ends_with("| Unclean | Tags        |"), "{}", got[2]);
        assert!(got[7].ends_with("|         | no_failover |"), "{}", got[7]);
    }

    #[test]
    fn status_names_an_etcd_alarm_after_the_table() {
        let mut v = sample();
        v["etcd"] = serde_json::json!({"alarms": ["NOSPACE (member 8e9e05c52164694d)"], "db_size": 2147483648u64});
        let got = status_lines(&v, "http://127.0.0.1:7001", 0);
        assert_eq!(got.len(), 10);
        assert!(
            got[9].starts_with(
                "etcd ALARM NOSPACE (member 8e9e05c52164694d): etcd's space quota is exhausted"
            ),
            "{}",
            got[9]
        );
        v["etcd"]["alarms"] = serde_json::json!([]);
        assert_eq!(status_lines(&v, "http://127.0.0.1:7001", 0).len(), 9);
    }

    #[test]
    fn status_of_an_uninitialized_cluster_says_to_run_init() {
        let v = serde_json::json!({
            "cluster": "main", "initialized": false, "epoch": null, "phase": null, "leader": null,
            "control": null, "mode": null, "op": null, "members": [], "active": true,
            "active_controller": null
        });
        let got = status_lines(&v, "http://127.0.0.1:7001", 0);
        assert_eq!(
            got[0],
            "Cluster: main | not initialized (run `batonctl init`) | active controller http://127.0.0.1:7001"
        );
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn history_lines_show_time_kind_epoch_message_and_count() {
        let t = |ms: u64| format!("T{}", ms / 1000);
        let mut e = Entry {
            seq: 0,
            at_unix_ms: 5_000,
            last_unix_ms: None,
            kind: "promoted".into(),
            message: "promoted r2 at epoch 3".into(),
            epoch: 3,
            inputs: Value::Null,
            count: 1,
        };
        assert_eq!(
            history_line(&e, &t),
            "T5  promoted        e3    promoted r2 at epoch 3"
        );
        e.count = 4;
        e.last_unix_ms = Some(9_000);
        assert_eq!(
            history_line(&e, &t),
            "T5  promoted        e3    promoted r2 at epoch 3  ×4 (last T9)"
        );
    }

    #[test]
    fn utc_fallback_formats_civil_time() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_time(1_709_210_096_000), "2024-02-29 12:34:56Z");
    }

    #[test]
    fn dry_run_lists_candidate_and_blocking_reasons() {
        let v = serde_json::json!({
            "leader_health": "healthy", "would_fail_over": false, "candidate": "r2",
            "expected_loss_records": 0, "blocking": ["paused: automatic failover is off"]
        });
        assert_eq!(
            dry_run_lines(&v),
            s(&[
                "leader health:   healthy",
                "would fail over: no",
                "candidate:       r2 (expected loss: 0 records)",
                "blocking:",
                "  - paused: automatic failover is off",
            ])
        );
    }

    #[test]
    fn refused_controllers_are_named_in_one_message() {
        let refused = |u: &str| CallError::Unreachable {
            url: u.into(),
            refused: true,
            detail: "Connection refused (os error 111)".into(),
        };
        let errs = [
            refused("http://a:1"),
            refused("http://b:2"),
            CallError::Unreachable {
                url: "http://c:3".into(),
                refused: false,
                detail: "timed out".into(),
            },
        ];
        assert_eq!(
            failures_message(&errs),
            "cannot reach the controller at http://a:1, http://b:2 (is baton-controller running? \
             set --controller or BATON_CONTROLLER); cannot reach the controller at http://c:3: \
             timed out (is baton-controller running? set --controller or BATON_CONTROLLER)"
        );
        let no = NoActive {
            unreachable: vec![refused("http://a:1")],
            standby: vec![("http://b:2".into(), "this controller is not active".into())],
        };
        assert!(no
            .message("main")
            .starts_with("no active controller for cluster \"main\" answered"));
    }

    #[test]
    fn reads_tell_a_standby_answer_from_the_active_one() {
        let mut v = sample();
        assert_eq!(whose_view(&v), Whose::Active);
        v["active"] = false.into();
        assert_eq!(
            whose_view(&v),
            Whose::Standby(Some("127.0.0.1:7001".into()))
        );
        let l = serde_json::json!({"id": "r1", "from_active": false});
        assert_eq!(whose_leader(&l), Whose::Standby(None));
        let d = serde_json::json!({"blocking": ["this controller is not active"]});
        assert_eq!(whose_dry_run(&d), Whose::Standby(None));
        let d = serde_json::json!({"blocking": ["paused: automatic failover is off"]});
        assert_eq!(whose_dry_run(&d), Whose::Active);
    }

    #[test]
    fn error_answers_give_code_and_message() {
        let a = Answer {
            status: 503,
            body: serde_json::json!({"error": "not_active", "message": "m"}),
        };
        assert!(a.is(503, "not_active"));
        assert_eq!(a.error(), Some(("not_active".into(), "m".into())));
        let ok = Answer {
            status: 200,
            body: serde_json::json!({"ok": true}),
        };
        assert_eq!(ok.error(), None);
    }
}
