//! `baton-bench tls`: what TLS costs (issue 13). The same three-replica cluster (leader r1,
//! stand-in controller, semi-sync with both followers waited, release build) is measured twice
//! in one run, once in the secure default (TLS on every client, follower and heartbeat link,
//! tokens checked on every request) and once with `insecure = true` (plain HTTP, nothing
//! checked), and both are printed in one table.

use super::common::*;
use baton_tests::client::Client;
use baton_tests::secure;
use baton_tests::standin::Standin;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) async fn run_tls(
    seconds: u64,
    clients: Vec<usize>,
    value_bytes: usize,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (dir, _tmp) = work_dir(dir)?;
    println!(
        "three replicas (leader r1, stand-in controller, semi-sync, both followers waited), \
         durable writes through the leader, {value_bytes}-byte values, {seconds} s per level, \
         TLS then plain HTTP in the same run, on {}\n",
        dir.display()
    );
    let mut rows = Vec::new();
    for (plain, label) in [(false, "TLS + tokens"), (true, "plain (insecure)")] {
        secure::set_plain(plain);
        let sub = dir.join(if plain { "plain" } else { "tls" });
        std::fs::create_dir_all(&sub)?;
        let standin = Standin::start("r1").await?;
        let mut nodes = Vec::new();
        for id in ["r1", "r2", "r3"] {
            nodes.push(start_release(id, &sub, &standin, "")?);
        }
        let c = Client::new(Duration::from_secs(5));
        let leader = nodes[0].url.clone();
        let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
        let ready = async {
            wait_writable(&c, &leader, "r1 to accept writes").await?;
            wait_two_waited(&c, &leader).await?;
            wait_converged(&c, &urls).await
        };
        if let Err(e) = ready.await {
            dump_logs(&nodes.iter().collect::<Vec<_>>());
            return Err(e);
        }
        eprintln!("{label}: measuring…");
        for &n in &clients {
            rows.push(
                put_load(
                    label,
                    if plain { "p" } else { "t" },
                    &leader,
                    n,
                    seconds,
                    value_bytes,
                )
                .await,
            );
        }
        for n in &mut nodes {
            n.term(Duration::from_secs(30));
        }
    }
    secure::set_plain(false);
    print_rows_as("transport", &mut rows);
    Ok(())
}
