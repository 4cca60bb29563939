//! `baton-dev --dir DIR`: one replica for working on the replica alone (no etcd; a whole
//! deployment is `batonctl local up`) — starts the stand-in controller (a test double, not the real controller) and one
//! `baton-replica` on loopback, waits until it accepts writes, prints how to use it, and stops
//! everything on Ctrl-C. Data stays in DIR.

use baton_tests::client::Client;
use baton_tests::procs::{wait_for, ReplicaProc, ReplicaSpec};
use baton_tests::standin::Standin;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Directory for the replica's data, config and log.
    #[arg(long, default_value = "./baton-dev")]
    dir: PathBuf,
    /// Port of the replica's API (0 = pick one).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let standin = Standin::start("r1").await?;
    let mut spec = ReplicaSpec::new("r1", &dir, std::slice::from_ref(&standin.url));
    if args.port != 0 {
        spec.port = args.port;
    }
    let r = ReplicaProc::start(spec)?;
    let c = Client::new(Duration::from_secs(5));
    let started = wait_for(
        Duration::from_secs(30),
        "the replica to accept writes",
        || async {
            match c.put(&r.url, "hello", "world").await {
                Ok(rep) if rep.status == 200 => Some(()),
                _ => None,
            }
        },
    )
    .await;
    if let Err(e) = started {
        eprintln!(
            "baton-dev: {e}\n--- replica log ({}) ---\n{}",
            r.log_path.display(),
            r.log()
        );
        std::process::exit(1);
    }
    println!("Baton dev replica r1 is leading at {}", r.url);
    println!("  data:   {}", r.data_dir().display());
    println!("  log:    {}", r.log_path.display());
    println!(
        "  try:    curl -X PUT --data-binary 'v1' {}/v1/kv/k1",
        r.url
    );
    println!("          curl {}/v1/kv/k1", r.url);
    println!("          curl {}/v1/status", r.url);
    println!("Ctrl-C stops it (the data stays).");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let mut r = r;
    match r.term(Duration::from_secs(5)) {
        Some(st) if st.success() => println!("stopped"),
        other => eprintln!(
            "baton-dev: the replica did not stop cleanly ({other:?}); see {}",
            r.log_path.display()
        ),
    }
    Ok(())
}
