//! `batonctl`, the operator CLI over the controller's HTTP API (DESIGN.md §7): `status`,
//! `leader`, `history`, `dry-run`, `rollbacks` (reads: the first controller that answers,
//! though a standby's answer is kept only when no active controller answers) and `init`,
//! `switchover`, `failover`, `pause`, `resume`, `recover` (operations, sent to the active
//! controller: a standby's `503 not_active` sends them on to the others and to the address it
//! names), and `local` (DESIGN.md §8: a whole deployment on this machine). It owns the
//! rendering of the controller's answers as plain text and the mapping of failures to messages
//! a person can act on; it decides nothing about the cluster itself, and it never replays an
//! operation whose request may have reached a controller.
//!
//! This file is the command line and the dispatch. One module per command family: `status.rs`
//! (the reads), `ops.rs` (switchover, failover, pause, resume, recover), `init.rs`, `local/`
//! (the launcher); shared by them: `client.rs` (requests to controllers), `targets.rs` (which
//! controllers, whose answer) and `output.rs` (printing, times).

mod client;
mod compose;
mod init;
mod local;
mod ops;
mod output;
mod status;
mod targets;

use clap::{Parser, Subcommand};
use client::{Credentials, Ctl};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Baton operator CLI: cluster status and operations through the failover controller.
#[derive(Parser, Debug)]
#[command(name = "batonctl", version)]
struct Cli {
    /// Controller URL; repeat it or separate several with commas. Default: the
    /// comma-separated list in BATON_CONTROLLER, else 127.0.0.1:7001 (https:// when a CA is
    /// given, else http://).
    #[arg(long = "controller", value_name = "URL", global = true)]
    controller: Vec<String>,
    /// The deployment's CA certificate (PEM): https:// controllers must present a certificate
    /// it signed. Default: "ca" of --local-dir's cluster.json.
    #[arg(long, value_name = "FILE", global = true, env = "BATON_CA")]
    ca: Option<PathBuf>,
    /// Bearer token sent with every request over TLS (`Authorization: Bearer TOKEN`); prefer
    /// BATON_TOKEN, which other users cannot read in the process list. Default: the admin
    /// token of --local-dir's cluster.json.
    #[arg(
        long,
        value_name = "TOKEN",
        global = true,
        env = "BATON_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Do not ask for confirmation before an operation that changes the leader or may lose
    /// data (switchover, failover, recover). Without a terminal such an operation is refused
    /// unless --yes is given. `--force` means the same (as in patronictl): it never accepts
    /// a loss of data; that is `failover --accept-data-loss`.
    #[arg(long, short = 'y', global = true, alias = "force")]
    yes: bool,
    /// Print each command's answer as JSON on stdout (messages for a person go to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// The cluster to act on.
    #[arg(long, value_name = "NAME", default_value = "main", global = true)]
    cluster: String,
    /// A `batonctl local up` directory: its controllers, CA and admin token (cluster.json) are
    /// used unless --controller, --ca or --token give others.
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
        /// Print it again every N seconds (default 2) until Ctrl-C.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Planned, lossless change of leader (asks for confirmation unless --yes).
    Switchover {
        /// The member to hand over to (default: the controller picks the best sync member).
        #[arg(long, value_name = "MEMBER")]
        to: Option<String>,
        /// Abort (the old leader keeps leading) if the target has not caught up by then.
        #[arg(long, value_name = "N")]
        timeout_ms: Option<u64>,
    },
    /// Manual promotion of a member (asks for confirmation unless --yes).
    Failover {
        /// The member to promote.
        #[arg(long, value_name = "MEMBER")]
        to: String,
        /// Promote it even if it may lack acknowledged writes (it is not a sync member, or
        /// lags): those writes are lost. The records at risk are printed first.
        #[arg(long)]
        accept_data_loss: bool,
        /// Also promote an unclean member (its log lost acknowledged records to damage or a
        /// cut); implies --accept-data-loss.
        #[arg(long, alias = "allow-data-loss")]
        allow_unclean: bool,
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
    },
    /// What automatic failover would do now, and why.
    DryRun,
    /// The current leader and its address.
    Leader,
    /// Rollback files on every member: records cut from a replica's log because they diverged
    /// from the leader's (an old leader's unreplicated writes), never silently erased.
    Rollbacks,
    /// A whole deployment on this machine: `local up|stop|start|down --dir DIR` (DESIGN.md §8).
    /// It talks to no controller until it has started them, so `main` dispatches it first.
    Local {
        #[command(subcommand)]
        cmd: local::LocalCmd,
    },
    /// The files of the Docker Compose deployment (deploy/compose/compose.yaml, DESIGN.md §8):
    /// `compose render --dir DIR` (scripts/compose.sh runs it).
    Compose {
        #[command(subcommand)]
        cmd: compose::ComposeCmd,
    },
    /// Print a shell completion script: `batonctl completion bash > /etc/bash_completion.d/batonctl`.
    Completion { shell: clap_complete::Shell },
    /// GET one URL and exit 0 on 200, 1 otherwise (a container health check:
    /// `batonctl probe https://localhost:7101/v1/health/ready --ca /etc/baton/ca.pem`).
    Probe {
        /// The URL (https:// needs --ca).
        url: String,
    },
}

/// batonctl's exit codes (documented in the README), so that a script can tell a refusal from
/// an unreachable cluster from an outcome nobody knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Anything else that failed.
    Failed = 1,
    /// Bad command line, config or credentials files.
    Usage = 2,
    /// A controller refused (4xx), or the operation was accepted and did not happen.
    Refused = 3,
    /// No controller (or no active one) could be reached.
    Unreachable = 4,
    /// The request may have been applied, or an operation is still running: check
    /// `batonctl status` and `batonctl history`.
    Unknown = 5,
}

/// A failure to report: the message is printed as is, and the process exits with `code`.
#[derive(Debug)]
pub struct Fail(pub String, pub Exit);

impl<T: Into<String>> From<T> for Fail {
    fn from(s: T) -> Fail {
        Fail(s.into(), Exit::Failed)
    }
}

impl Fail {
    pub fn refused(m: impl Into<String>) -> Fail {
        Fail(m.into(), Exit::Refused)
    }
    pub fn unreachable(m: impl Into<String>) -> Fail {
        Fail(m.into(), Exit::Unreachable)
    }
    pub fn unknown(m: impl Into<String>) -> Fail {
        Fail(m.into(), Exit::Unknown)
    }
    pub fn usage(m: impl Into<String>) -> Fail {
        Fail(m.into(), Exit::Usage)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let cli = match cli.cmd {
        Cmd::Local { cmd } => return local::run(cmd, cli.cluster).await,
        Cmd::Compose { cmd } => {
            return match compose::run(cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("batonctl: compose: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Probe { url } => return probe(&url, cli.ca.as_deref()).await,
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            // Into memory first: a closed pipe (`| head`) is not a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "batonctl", &mut script);
            use std::io::Write;
            let _ = std::io::stdout().write_all(&script);
            return ExitCode::SUCCESS;
        }
        _ => cli,
    };
    let mut env = std::env::var("BATON_CONTROLLER").ok();
    let mut creds = Credentials {
        ca: cli.ca.clone(),
        token: cli.token.clone(),
    };
    if let Some(dir) = &cli.local_dir {
        match local::layout::read_layout(dir) {
            Ok(l) => {
                if cli.controller.is_empty() {
                    env = Some(
                        l.controllers
                            .iter()
                            .map(|c| c.url.clone())
                            .collect::<Vec<_>>()
                            .join(","),
                    );
                }
                // Its token goes only to its own deployment: with its CA, not another.
                let (ca, token) = l.credentials();
                if creds.ca.is_none() || creds.ca == ca {
                    creds.token = creds.token.or(token);
                }
                creds.ca = creds.ca.or(ca);
            }
            // Only its controllers were wanted, and --controller named them.
            Err(_) if !cli.controller.is_empty() => {}
            Err(e) => {
                eprintln!("batonctl: --local-dir: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let scheme = if creds.ca.is_some() { "https" } else { "http" };
    let ctl = targets::controller_list(&cli.controller, env.as_deref(), scheme)
        .and_then(|controllers| Ctl::new(controllers, cli.cluster, &creds));
    let ctl = match ctl {
        Ok(c) => c,
        Err(e) => {
            eprintln!("batonctl: {e}");
            return ExitCode::from(2);
        }
    };
    output::set_json(cli.json);
    let json = cli.json;
    match run(&ctl, cli.cmd, cli.yes, json).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(m, code)) => {
            eprintln!("batonctl: {m}");
            ExitCode::from(code as u8)
        }
    }
}

/// Runs one command that talks to the controllers.
async fn run(ctl: &Ctl, cmd: Cmd, yes: bool, json: bool) -> Result<(), Fail> {
    match cmd {
        Cmd::Local { .. } | Cmd::Compose { .. } | Cmd::Probe { .. } | Cmd::Completion { .. } => {
            Err(Fail::usage(
                "`local`, `compose` and `probe` are handled before any controller is contacted",
            ))
        }
        Cmd::Status { watch: None } => status::status(ctl, json).await,
        Cmd::Status { watch: Some(every) } => {
            status::watch(ctl, json, Duration::from_secs(every.max(1))).await
        }
        Cmd::Leader => status::leader(ctl).await,
        Cmd::Rollbacks => status::rollbacks(ctl, json).await,
        Cmd::History { limit } => status::history(ctl, limit, json).await,
        Cmd::DryRun => status::dry_run(ctl, json).await,
        Cmd::Pause => ops::simple_op(ctl, "/pause").await,
        Cmd::Resume => ops::simple_op(ctl, "/resume").await,
        Cmd::Recover => {
            ops::confirm(
                yes,
                "recover writes a new epoch with no leader: writes stop until `failover --to`",
            )?;
            ops::simple_op(ctl, "/recover").await
        }
        Cmd::Init { wait_s } => init::init(ctl, Duration::from_secs(wait_s)).await,
        Cmd::Switchover { to, timeout_ms } => ops::switchover(ctl, to, timeout_ms, yes).await,
        Cmd::Failover {
            to,
            accept_data_loss,
            allow_unclean,
        } => {
            ops::failover(
                ctl,
                to,
                accept_data_loss || allow_unclean,
                allow_unclean,
                yes,
            )
            .await
        }
    }
}

/// `batonctl probe URL`: one GET (no token: health checks are open), 2 s at most.
async fn probe(url: &str, ca: Option<&std::path::Path>) -> ExitCode {
    let creds = Credentials {
        ca: ca.map(PathBuf::from),
        token: None,
    };
    let http = match client::load_ca(&creds) {
        Ok(tls) => local::Http::new(tls, None),
        Err(e) => {
            eprintln!("batonctl: probe: {e}");
            return ExitCode::from(2);
        }
    };
    match http.call("GET", url, "").await {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok((status, body)) => {
            eprintln!("batonctl: probe {url}: HTTP {status} {}", body.trim());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("batonctl: probe {url}: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over the whole command line (duplicate flags, bad
    /// defaults): a conflict would otherwise show only when that command is parsed.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
