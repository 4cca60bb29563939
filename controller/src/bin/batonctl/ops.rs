//! The operations that change the cluster, sent to the active controller: `pause`, `resume`,
//! `recover` (one request, its answer printed), and `switchover` / `failover`, which then watch
//! the cluster until the operation ended and say whether it happened, with the journal's reason
//! when it did not. `init` is `init.rs`.

use crate::client::{Ctl, POLL};
use crate::output::{leader_id, print_lines, print_result, unix_ms};
use crate::status::parse_history;
use crate::targets::{whose_any, whose_view};
use crate::Fail;
use serde_json::Value;
use std::time::{Duration, Instant};

/// How long `failover` waits for the promotion to finish before handing back.
pub const FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// The controller's default switchover timeout (api.rs), for our own wait.
pub const SWITCHOVER_DEFAULT_MS: u64 = 10_000;

pub async fn simple_op(ctl: &Ctl, tail: &str) -> Result<(), Fail> {
    let (_, a) = ctl.operate_retrying(&ctl.path(tail), None).await?;
    print_lines(&[answer_message(&a.body)]);
    print_result(&a.body);
    Ok(())
}

pub fn answer_message(v: &Value) -> String {
    v.get("message")
        .and_then(Value::as_str)
        .map_or_else(|| v.to_string(), str::to_string)
}

/// Asks the person at the terminal to confirm `what` (`--yes` skips it). Without a terminal
/// the operation is refused: a script must say `--yes`.
pub fn confirm(yes: bool, what: &str) -> Result<(), Fail> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Fail::usage(format!(
            "{what}: refusing to go on without a terminal to confirm it; add --yes"
        )));
    }
    eprint!("{what}\nGo on? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    match line.trim() {
        "y" | "Y" | "yes" | "YES" => Ok(()),
        _ => Err(Fail::refused("not confirmed; nothing was changed")),
    }
}

/// A member's row in the cluster view.
fn member<'a>(view: &'a Value, id: &str) -> Option<&'a Value> {
    view.get("members")?
        .as_array()?
        .iter()
        .find(|m| m.get("id").and_then(Value::as_str) == Some(id))
}

pub async fn switchover(
    ctl: &Ctl,
    to: Option<String>,
    timeout_ms: Option<u64>,
    yes: bool,
) -> Result<(), Fail> {
    let (_, before) = ctl.read(&ctl.path(""), None, whose_view).await?;
    let old_leader = leader_id(&before);
    let old_epoch = before.get("epoch").and_then(Value::as_u64).unwrap_or(0);
    confirm(
        yes,
        &format!(
            "switchover: {} hands leadership to {} (lossless; writes pause briefly)",
            old_leader.as_deref().unwrap_or("no leader"),
            to.as_deref().unwrap_or("the best sync member")
        ),
    )?;
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
        print_result(&serde_json::json!({ "done": true, "leader": who, "epoch": epoch }));
        return Ok(());
    }
    let why = last_journal_message(ctl, &url, started, &["abort", "refusal", "blocked"]).await;
    Err(Fail::refused(format!(
        "the switchover did not happen: {who} leads epoch {epoch}{}",
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    )))
}

pub async fn failover(
    ctl: &Ctl,
    to: String,
    force: bool,
    allow_data_loss: bool,
    yes: bool,
) -> Result<(), Fail> {
    let (_, before) = ctl.read(&ctl.path(""), None, whose_view).await?;
    let old_leader = leader_id(&before);
    let target = member(&before, &to);
    // What a forced promotion may lose: the records the target lacks of the leader's log end
    // (acknowledged or not: the controller knows no finer split), or unknown.
    let lag = target
        .and_then(|m| m.get("lag_records"))
        .and_then(Value::as_u64);
    let in_sync = target.and_then(|m| m.get("sync")).and_then(Value::as_bool) == Some(true);
    let risk = match (force, in_sync, lag) {
        (false, _, _) => "lossless: refused if it may lack acknowledged writes".to_string(),
        (true, true, Some(0)) => {
            "it is a sync member and holds the leader's log end: nothing at risk".into()
        }
        (true, _, Some(n)) => format!(
            "ACCEPTING DATA LOSS: {to} lacks {n} record(s) of the leader's log end; acknowledged \
             writes among them are lost (archived on the old leader when it returns)"
        ),
        (true, _, None) => {
            "ACCEPTING DATA LOSS: how far it lags is unknown (the leader is not heard)".into()
        }
    };
    let risk = if allow_data_loss {
        format!("{risk}; an unclean member may have lost acknowledged records of its own")
    } else {
        risk
    };
    print_lines(&[format!("failover to {to}: {risk}")]);
    confirm(
        yes,
        &format!(
            "failover: promote {to} (leader now: {})",
            old_leader.as_deref().unwrap_or("none")
        ),
    )?;
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
        print_result(&serde_json::json!({ "done": true, "leader": to, "epoch": epoch }));
        return Ok(());
    }
    let why = last_journal_message(ctl, &url, started, &["blocked", "refusal", "abort"]).await;
    Err(Fail::refused(format!(
        "the failover did not happen: {} leads epoch {epoch}{}",
        leader.unwrap_or_else(|| "no member".into()),
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    )))
}

/// Polls the cluster until no operation runs and the phase is steady (or `wait` passes),
/// printing each new blocking reason the journal gives meanwhile. Returns the last view.
pub async fn wait_for_op(
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
            return Err(Fail::unknown(format!(
                "still {phase} after {} s; watch `batonctl status` and `batonctl history`",
                wait.as_secs()
            )));
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
pub async fn last_journal_message(
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
