//! The reads: `status` (a header line, a line saying how the cluster is secured — loudly when it
//! is not — and a `patronictl list`-shaped table, etcd alarms after it), `leader`, `history`
//! (the decision journal), `dry-run` and `rollbacks` (asked of every member). Each prints the
//! answer as text, or as JSON with `--json`; none changes anything.

use crate::client::{Ctl, To};
use crate::output::{
    leader_id, local_time, num_or_dash, print_json, print_lines, s_or, secs, unix_ms,
};
use crate::targets::{whose_any, whose_dry_run, whose_leader, whose_view};
use crate::Fail;
use baton_controller::journal::Entry;
use hyper::Method;
use serde_json::Value;
use std::time::Duration;

/// `batonctl status [--json]`.
pub async fn status(ctl: &Ctl, json: bool) -> Result<(), Fail> {
    let (url, v) = ctl.read(&ctl.path(""), None, whose_view).await?;
    if json {
        print_json(&v);
    } else {
        print_lines(&status_lines(&v, &url, unix_ms()));
    }
    Ok(())
}

/// `batonctl leader`.
pub async fn leader(ctl: &Ctl) -> Result<(), Fail> {
    let (_, v) = ctl.read(&ctl.path("/leader"), None, whose_leader).await?;
    if crate::output::json_mode() {
        crate::output::print_result(&v);
    } else {
        print_lines(&[leader_line(&v)]);
    }
    Ok(())
}

/// `batonctl rollbacks [--json]`: every member's rollback files.
pub async fn rollbacks(ctl: &Ctl, json: bool) -> Result<(), Fail> {
    let (_, view) = ctl.read(&ctl.path(""), None, whose_view).await?;
    let members = view["members"].as_array().cloned().unwrap_or_default();
    let mut all = Vec::new();
    let mut lines = Vec::new();
    for m in &members {
        let (Some(id), Some(addr)) = (m["id"].as_str(), m["addr"].as_str()) else {
            continue;
        };
        let base = format!("{}://{addr}", ctl.member_scheme());
        match ctl
            .call_to(To::Member, &base, Method::GET, "/v1/rollbacks", None)
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
            Ok(a) if a.status == 401 || a.status == 403 => lines.push(format!(
                "{id:<8} (refused: {})",
                a.error().map(|(_, m)| m).unwrap_or_default()
            )),
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

/// `batonctl history [--limit N] [--json]`: the newest entries of the journal, oldest first.
pub async fn history(ctl: &Ctl, limit: usize, json: bool) -> Result<(), Fail> {
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

/// `batonctl dry-run [--json]`: what automatic failover would do now.
pub async fn dry_run(ctl: &Ctl, json: bool) -> Result<(), Fail> {
    let (_, v) = ctl.read(&ctl.path("/dry-run"), None, whose_dry_run).await?;
    if json {
        print_json(&v);
    } else {
        print_lines(&dry_run_lines(&v));
    }
    Ok(())
}

/// How the cluster is secured, as `status` says it: insecure when the controller answered over
/// plain HTTP (or says it runs with `insecure = true`).
pub fn security_line(v: &Value, answered_by: &str) -> String {
    let insecure = !answered_by.starts_with("https://")
        || v.get("insecure").and_then(Value::as_bool) == Some(true);
    if insecure {
        "security: INSECURE (plain HTTP, no credentials)".into()
    } else {
        "security: TLS, tokens".into()
    }
}

/// The `status` text: one header line, the security line, then a table with one row per
/// member.
pub fn status_lines(v: &Value, answered_by: &str, now_unix_ms: u64) -> Vec<String> {
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
        if v.get("degraded").and_then(Value::as_bool) == Some(true) {
            head.push("DEGRADED (the leader acknowledges alone)".into());
        }
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
    let mut lines = vec![head.join(" | "), security_line(v, answered_by)];

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
    lines.extend(situation_lines(v));
    lines.extend(etcd_alarm_lines(v));
    lines
}

/// A member's catch-up (its heartbeat's `catchup`): what is left, the rate and the ETA.
pub fn catchup_line(id: &str, c: &Value) -> String {
    let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let eta = c.get("eta_ms").and_then(Value::as_u64).map_or_else(
        || "no rate yet".to_string(),
        |ms| format!("done in about {}", secs(ms)),
    );
    if s_or(c, "what", "") == "snapshot" {
        format!(
            "{id} installing a snapshot: {} received, {} left at {}/s, {eta}",
            mb(n("bytes_done")),
            mb(n("bytes_remaining")),
            mb(n("bytes_per_s"))
        )
    } else {
        format!(
            "{id} catching up: {} records (~{}) behind at {} records/s ({}/s), {eta}",
            n("records_remaining"),
            mb(n("bytes_remaining")),
            n("records_per_s"),
            mb(n("bytes_per_s"))
        )
    }
}

/// The partial failures in force, one line each (issue 12): a full disk, a leader acknowledging
/// alone, a leader serving on its followers' promises, a follower the leader's stream does not
/// reach. Only what the members' last heartbeats say; nothing when all is well.
pub fn situation_lines(v: &Value) -> Vec<String> {
    let empty = Vec::new();
    let members = v.get("members").and_then(Value::as_array).unwrap_or(&empty);
    let leader = leader_id(v);
    let mut out = Vec::new();
    if let Some(ms) = v
        .get("etcd_unreachable_ms")
        .and_then(Value::as_u64)
        .filter(|ms| *ms >= 1_000)
    {
        out.push(format!(
            "etcd unreachable for {} (from this controller): no failover, election or sync-set \
             change until it answers; the leader serves on its grant, then on its followers' promises",
            secs(ms)
        ));
    }
    let op = &v["op"]["op"];
    if op["type"] == "failover" && op["planned"] == true {
        out.push(format!(
            "planned failover to {} in progress (the controller's own decision; `batonctl history` says why)",
            op["to"].as_str().unwrap_or("?")
        ));
    }
    for w in v
        .get("leader_waiting")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let ms = ["last_ack_ms", "owed_ms"]
            .iter()
            .filter_map(|k| w.get(*k).and_then(Value::as_u64))
            .max()
            .unwrap_or(0);
        if ms >= 1_000 {
            out.push(format!(
                "leader {} has waited {} for {} to acknowledge (a slow disk or a cut link): \
                 writes wait until it does or the controller replaces it",
                leader.as_deref().unwrap_or("?"),
                secs(ms),
                s_or(w, "id", "?")
            ));
        }
    }
    for m in members {
        let id = s_or(m, "id", "?");
        let is_leader = leader.as_deref() == Some(id);
        let heard = s_or(m, "health", "") == "ok";
        if !heard {
            continue;
        }
        if m.get("disk_full").and_then(Value::as_bool) == Some(true) {
            out.push(if is_leader {
                format!("disk full on {id} (the leader): writes get 507; a planned failover replaces it")
            } else {
                format!("disk full on {id}: it takes no records until space is freed")
            });
        }
        if let Some(c) = m.get("catchup").filter(|c| c.is_object()) {
            out.push(catchup_line(id, c));
        }
        if !is_leader {
            if let Some(ms) = m
                .get("since_leader_ms")
                .and_then(Value::as_u64)
                .filter(|ms| *ms >= 1_000)
            {
                if s_or(m, "role", "") == "follower" {
                    out.push(format!(
                        "{id} has received nothing from the leader for {}",
                        secs(ms)
                    ));
                }
            }
            continue;
        }
        if let Some(ms) = m
            .get("degraded_for_ms")
            .and_then(Value::as_u64)
            .filter(|ms| *ms > 0)
        {
            out.push(format!(
                "leader {id} acknowledges alone (degraded) for {}: no sync member holds its writes",
                secs(ms)
            ));
        }
        if m.get("on_promises").and_then(Value::as_bool) == Some(true) {
            out.push(format!(
                "leader {id} serves on its followers' promises: no grant from an active controller \
                 (etcd or the controllers out of reach); failover waits until they are back"
            ));
        }
    }
    out
}

/// Lines for etcd's raised alarms (none when there are none): under NOSPACE etcd refuses every
/// write, so no decision, election or new lease happens until it is cleared.
pub fn etcd_alarm_lines(v: &Value) -> Vec<String> {
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
pub fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> Vec<String> {
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

pub fn leader_line(v: &Value) -> String {
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

/// `status --watch`: the status again every `every` until Ctrl-C (the screen cleared first on
/// a terminal; JSON answers one per line). A failed read is shown and the watch goes on.
pub async fn watch(ctl: &Ctl, json: bool, every: Duration) -> Result<(), Fail> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    loop {
        if tty && !json {
            print!("\x1b[2J\x1b[H");
        }
        if let Err(Fail(m, _)) = status(ctl, json).await {
            eprintln!("batonctl: {m}");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

pub fn parse_history(v: Value) -> Result<Vec<Entry>, Fail> {
    serde_json::from_value::<Vec<Entry>>(v).map_err(|e| {
        Fail::from(format!(
            "the controller's journal is not in the expected shape: {e}"
        ))
    })
}

/// One journal entry: local time, kind, epoch, message, and `×count` when coalesced.
pub fn history_line(e: &Entry, time: &dyn Fn(u64) -> String) -> String {
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

pub fn dry_run_lines(v: &Value) -> Vec<String> {
    let yes = v.get("would_fail_over").and_then(Value::as_bool) == Some(true);
    let mut out = vec![format!(
        "leader health:   {}",
        s_or(v, "leader_health", "?")
    )];
    if let Some(p) = v.get("planned").and_then(Value::as_str) {
        out.push(format!("planned:         {p}"));
    }
    out.push(format!(
        "would fail over: {}",
        if yes { "yes" } else { "no" }
    ));
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

#[cfg(test)]
mod tests;
