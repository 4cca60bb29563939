//! The status page (`GET /ui`, DESIGN §7's view for people): one HTML document, rendered on the
//! server from what `GET /v1/clusters/{c}` answers and the journal, with no JavaScript (it
//! reloads itself every 2 s): per cluster its summary, the members (role, health, lag, sync
//! membership, catch-up), the timeline of the newest promotion (when the old leader was last
//! heard, when the failure was detected, each step, when the new leader was recorded and when it
//! first reported leading) and the recent journal.
//!
//! Pure: the caller hands in the views, the journals and the time. Every value that came from
//! outside (member ids, addresses, messages) is escaped. The markup carries `data-*` attributes
//! (cluster, epoch, leader, member role and health, timeline steps) that tests and scrapers read.

use crate::journal::{Entry, Kind};
use baton_common::{Epoch, NodeId};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// How many journal entries the page lists per cluster.
const JOURNAL_ROWS: usize = 25;

/// How many of the newest journal entries the page reads (the newest promotion is found among
/// them).
pub const JOURNAL_READ: usize = 200;

/// What the page shows of one cluster.
pub struct ClusterPage<'a> {
    /// The cluster view (`api::view`).
    pub view: &'a Value,
    /// The journal, oldest first.
    pub journal: &'a [Entry],
    /// When this controller first heard a member leading each recent epoch (Unix ms).
    pub leading_seen: &'a BTreeMap<Epoch, (NodeId, u64)>,
}

/// One step of a promotion's timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// `last-heard`, `detected`, `promoting`, `promoted`, `leading`.
    pub key: &'static str,
    pub at_unix_ms: u64,
    pub text: String,
}

/// HTML-escapes `s`.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The entries that start a promotion.
fn starts_promotion(k: &Kind) -> bool {
    matches!(
        k,
        Kind::Failover | Kind::ManualFailover | Kind::Restart | Kind::Switchover
    )
}

/// The timeline of the newest promotion in `journal` (empty when it holds none): the old
/// leader last heard (from the starting entry's inputs), the start, the entries of the new
/// epoch between, the new leader recorded, and when it was first heard leading.
pub fn timeline(journal: &[Entry], leading_seen: &BTreeMap<Epoch, (NodeId, u64)>) -> Vec<Step> {
    let Some(si) = journal.iter().rposition(|e| starts_promotion(&e.kind)) else {
        return Vec::new();
    };
    let start = &journal[si];
    let epoch = start.epoch;
    let mut steps = Vec::new();
    let leader_heard = start.inputs["heard"].as_array().and_then(|h| {
        h.iter()
            .find(|m| m["role"] == "leader")
            .and_then(|m| Some((m["id"].as_str()?, m["heard_ms_ago"].as_u64()?)))
    });
    if let Some((id, ago)) = leader_heard {
        steps.push(Step {
            key: "last-heard",
            at_unix_ms: start.at_unix_ms.saturating_sub(ago),
            text: format!("leader {id} last heard"),
        });
    }
    let what = match start.kind {
        Kind::Failover => "failure detected: automatic failover",
        Kind::ManualFailover => "manual failover",
        Kind::Restart => "leader restarted: new epoch",
        _ => "switchover",
    };
    steps.push(Step {
        key: "detected",
        at_unix_ms: start.at_unix_ms,
        text: format!("{what} (epoch {epoch}): {}", start.message),
    });
    for e in journal[si + 1..].iter().filter(|e| e.epoch == epoch) {
        if e.kind == Kind::Promoted {
            steps.push(Step {
                key: "promoted",
                at_unix_ms: e.at_unix_ms,
                text: e.message.clone(),
            });
            break;
        }
        steps.push(Step {
            key: "promoting",
            at_unix_ms: e.at_unix_ms,
            text: format!("{}: {}", e.kind, e.message),
        });
    }
    if let Some((id, at)) = leading_seen.get(&Epoch(epoch)) {
        steps.push(Step {
            key: "leading",
            at_unix_ms: *at,
            text: format!("{id} reports leading epoch {epoch} with a lease: writes accepted"),
        });
    }
    steps
}

/// `ms` after `t0`, as "+1.234 s".
fn offset(ms: u64, t0: u64) -> String {
    format!("+{:.3} s", ms.saturating_sub(t0) as f64 / 1000.0)
}

/// A Unix ms time as UTC "HH:MM:SS.mmm".
fn clock(unix_ms: u64) -> String {
    let s = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        unix_ms % 1000
    )
}

/// `v[k]` as text ("-" when absent).
fn field(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em}h2{font-size:1.15em;margin-top:1.5em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
th{background:#f3f3f3}.ok{color:#176b1f}.bad{color:#b00020;font-weight:bold}.warn{color:#9a6700}\
.summary span{margin-right:1.2em}.timeline ol{margin:.3em 0}.timeline li{margin:.2em 0}\
.muted{color:#777}svg text{font-size:11px}";

/// The whole page: every cluster this controller serves.
pub fn render(controller: &str, clusters: &[ClusterPage<'_>], now_unix_ms: u64) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\"><title>Baton — {c}</title>\
         <style>{STYLE}</style></head><body><h1>Baton status — controller {c}</h1>\
         <p class=\"muted\">As this controller sees it at {t}; reloads every 2 s.</p>",
        c = esc(controller),
        t = clock(now_unix_ms)
    );
    for c in clusters {
        cluster(&mut h, c, now_unix_ms);
    }
    h.push_str("</body></html>\n");
    h
}

fn cluster(h: &mut String, c: &ClusterPage<'_>, now_unix_ms: u64) {
    let v = c.view;
    let name = field(v, "cluster");
    let leader = v["leader"]["id"].as_str().unwrap_or("");
    let _ = write!(
        h,
        "<section class=\"cluster\" data-cluster=\"{n}\" data-epoch=\"{e}\" data-leader=\"{l}\">\
         <h2>Cluster {n}</h2><p class=\"summary\">",
        n = esc(&name),
        e = v["epoch"].as_u64().unwrap_or(0),
        l = esc(leader)
    );
    let mut item = |label: &str, value: String, class: &str| {
        let _ = write!(
            h,
            "<span>{label}: <b class=\"{class}\">{}</b></span>",
            esc(&value)
        );
    };
    if v["initialized"] != true {
        item("state", "not initialized".into(), "bad");
    }
    item("epoch", field(v, "epoch"), "");
    item(
        "leader",
        if leader.is_empty() {
            "none".into()
        } else {
            leader.into()
        },
        if leader.is_empty() { "bad" } else { "ok" },
    );
    item("phase", field(v, "phase"), "");
    let paused = v["control"] == "manual";
    item(
        "automatic failover",
        if paused { "paused" } else { "on" }.into(),
        if paused { "warn" } else { "" },
    );
    item("mode", field(v, "mode"), "");
    if v["degraded"] == true {
        item("degraded", "the leader acknowledges alone".into(), "bad");
    }
    item(
        "this controller",
        if v["active"] == true {
            "active"
        } else {
            "standby"
        }
        .into(),
        "",
    );
    if let Some(ms) = v["etcd_unreachable_ms"].as_u64() {
        item(
            "etcd",
            format!("unreachable for {:.1} s", ms as f64 / 1000.0),
            "bad",
        );
    }
    h.push_str("</p>");
    members(h, v);
    let steps = timeline(c.journal, c.leading_seen);
    timeline_html(h, &steps);
    journal_html(h, v, c.journal, now_unix_ms);
    h.push_str("</section>");
}

fn members(h: &mut String, v: &Value) {
    h.push_str(
        "<table class=\"members\"><tr><th>Member</th><th>Address</th><th>Role</th><th>Health</th>\
         <th>Epoch</th><th>Log end</th><th>Lag (records)</th><th>Sync set</th><th>Notes</th></tr>",
    );
    let empty = Vec::new();
    for m in v["members"].as_array().unwrap_or(&empty) {
        let health = m["health"].as_str().unwrap_or("?");
        let reported = m["role"].as_str().unwrap_or("none");
        let mut notes = Vec::new();
        // What a member no longer heard last reported is not its role now.
        let role = if health == "ok" {
            reported
        } else {
            if reported != "none" {
                notes.push(format!("last reported {reported}"));
            }
            "none"
        };
        if m["unclean"] == true {
            notes.push("unclean".to_string());
        }
        if m["disk_full"] == true {
            notes.push("disk full".into());
        }
        if let Some(c) = m["catchup"].as_object() {
            let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
            let eta = c
                .get("eta_ms")
                .and_then(Value::as_u64)
                .map_or("no rate yet".to_string(), |e| {
                    format!("about {:.0} s left", (e as f64 / 1000.0).ceil())
                });
            notes.push(format!(
                "catching up ({}): {:.1} MB left at {:.1} MB/s, {eta}",
                c.get("what").and_then(Value::as_str).unwrap_or("log"),
                n("bytes_remaining") as f64 / 1e6,
                n("bytes_per_s") as f64 / 1e6
            ));
        }
        if m["no_failover"] == true {
            notes.push("no_failover".into());
        }
        let class = if health == "ok" { "ok" } else { "bad" };
        let _ = write!(
            h,
            "<tr data-member=\"{id}\" data-role=\"{r}\" data-health=\"{hl}\"><td>{id}</td><td>{a}</td>\
             <td>{r}</td><td class=\"{class}\">{hl}{ago}</td><td>{e}</td><td>{end}</td><td>{lag}</td>\
             <td>{sync}</td><td>{notes}</td></tr>",
            id = esc(m["id"].as_str().unwrap_or("?")),
            a = esc(&field(m, "addr")),
            r = esc(role),
            hl = esc(health),
            ago = match (health, m["heard_ms_ago"].as_u64()) {
                ("unreachable", Some(ms)) => format!(" ({:.1} s)", ms as f64 / 1000.0),
                _ => String::new(),
            },
            e = esc(&field(m, "epoch")),
            end = esc(&field(m, "log_end_lsn")),
            lag = esc(&field(m, "lag_records")),
            sync = if m["sync"] == true { "yes" } else { "" },
            notes = esc(&notes.join("; ")),
        );
    }
    h.push_str("</table>");
}

fn timeline_html(h: &mut String, steps: &[Step]) {
    h.push_str("<div class=\"timeline\"><h3>Newest promotion</h3>");
    let (Some(first), Some(last)) = (steps.first(), steps.last()) else {
        h.push_str("<p class=\"muted\">No promotion in the journal.</p></div>");
        return;
    };
    let t0 = first.at_unix_ms;
    let span = last.at_unix_ms.saturating_sub(t0).max(1);
    // A line with a dot per step, placed by time.
    let _ = write!(
        h,
        "<svg width=\"820\" height=\"46\" role=\"img\" aria-label=\"timeline\">\
         <line x1=\"60\" y1=\"16\" x2=\"760\" y2=\"16\" stroke=\"#999\"/>"
    );
    for (i, s) in steps.iter().enumerate() {
        let x = 60.0 + 700.0 * s.at_unix_ms.saturating_sub(t0) as f64 / span as f64;
        let y = if i % 2 == 0 { 36 } else { 46 };
        let _ = write!(
            h,
            "<circle cx=\"{x:.1}\" cy=\"16\" r=\"5\" fill=\"#2457a6\"><title>{t}</title></circle>\
             <text x=\"{x:.1}\" y=\"{y}\" text-anchor=\"middle\">{k}</text>",
            t = esc(&s.text),
            k = s.key
        );
    }
    h.push_str("</svg><ol>");
    for s in steps {
        let _ = write!(
            h,
            "<li class=\"step\" data-step=\"{k}\"><b>{off}</b> <span class=\"muted\">{at}</span> \
             {k}: {t}</li>",
            k = s.key,
            off = offset(s.at_unix_ms, t0),
            at = clock(s.at_unix_ms),
            t = esc(&s.text)
        );
    }
    h.push_str("</ol></div>");
}

fn journal_html(h: &mut String, v: &Value, journal: &[Entry], now_unix_ms: u64) {
    h.push_str("<h3>Journal (newest first)</h3>");
    if let Some(note) = v["journal_note"].as_str() {
        let _ = write!(h, "<p class=\"warn\">{}</p>", esc(note));
    }
    h.push_str(
        "<table class=\"journal\"><tr><th>When</th><th>Ago</th>\
         <th>Kind</th><th>Epoch</th><th>Count</th><th>What</th></tr>",
    );
    for e in journal.iter().rev().take(JOURNAL_ROWS) {
        let at = e.last_unix_ms.unwrap_or(e.at_unix_ms);
        let _ = write!(
            h,
            "<tr data-kind=\"{k}\"><td>{when}</td><td>{ago:.1} s</td><td>{k}</td><td>{ep}</td>\
             <td>{n}</td><td>{m}</td></tr>",
            when = clock(e.at_unix_ms),
            ago = now_unix_ms.saturating_sub(at) as f64 / 1000.0,
            k = esc(e.kind.as_str()),
            ep = e.epoch,
            n = e.count,
            m = esc(&e.message)
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, msg: &str, epoch: u64, at: u64, inputs: Value) -> Entry {
        Entry {
            seq: 0,
            at_unix_ms: at,
            last_unix_ms: None,
            kind: kind.into(),
            message: msg.into(),
            epoch,
            inputs,
            count: 1,
            reason: String::new(),
        }
    }

    fn failover_journal() -> Vec<Entry> {
        let heard = serde_json::json!({"heard": [
            {"id": "r1", "heard_ms_ago": 1000, "role": "leader"},
            {"id": "r2", "heard_ms_ago": 10, "role": "follower"}]});
        vec![
            entry("init", "initialized", 1, 1_000, Value::Null),
            entry(
                "failover",
                "leader r1 not heard for 1000 ms",
                2,
                10_000,
                heard,
            ),
            entry("sync_drop", "dropped r1", 2, 10_050, Value::Null),
            entry("promoted", "promoted r2 at epoch 2", 2, 10_100, Value::Null),
            entry("sync_add", "r3 joins", 2, 12_000, Value::Null),
        ]
    }

    #[test]
    fn the_timeline_runs_from_the_leader_last_heard_to_writes_accepted() {
        let mut seen = BTreeMap::new();
        seen.insert(Epoch(2), (NodeId("r2".into()), 10_180));
        let steps = timeline(&failover_journal(), &seen);
        let keys: Vec<(&str, u64)> = steps.iter().map(|s| (s.key, s.at_unix_ms)).collect();
        assert_eq!(
            keys,
            [
                ("last-heard", 9_000),
                ("detected", 10_000),
                ("promoting", 10_050),
                ("promoted", 10_100),
                ("leading", 10_180)
            ]
        );
        assert!(timeline(&failover_journal()[..1], &seen).is_empty());
    }

    #[test]
    fn the_page_marks_cluster_members_and_steps_and_escapes_what_it_is_given() {
        let view = serde_json::json!({
            "cluster": "main", "initialized": true, "epoch": 2, "leader": {"id": "r2"},
            "phase": "steady", "control": "auto", "mode": "semi_sync", "active": true,
            "members": [
                {"id": "r1", "addr": "<script>", "role": "leader", "health": "unreachable", "heard_ms_ago": 4200},
                {"id": "r2", "addr": "h2:1", "role": "leader", "health": "ok", "epoch": 2, "sync": false},
                {"id": "r3", "addr": "h3:1", "role": "follower", "health": "ok", "sync": true,
                 "catchup": {"what": "log", "bytes_remaining": 2_000_000, "bytes_per_s": 1_000_000, "eta_ms": 2000}}
            ]
        });
        let journal = failover_journal();
        let seen = BTreeMap::new();
        let page = render(
            "c1",
            &[ClusterPage {
                view: &view,
                journal: &journal,
                leading_seen: &seen,
            }],
            13_000,
        );
        for want in [
            "data-cluster=\"main\" data-epoch=\"2\" data-leader=\"r2\"",
            "<tr data-member=\"r1\" data-role=\"none\" data-health=\"unreachable\">",
            "unreachable (4.2 s)",
            "last reported leader",
            "<tr data-member=\"r2\" data-role=\"leader\" data-health=\"ok\">",
            "catching up (log): 2.0 MB left at 1.0 MB/s, about 2 s left",
            "data-step=\"detected\"",
            "data-step=\"promoted\"",
            "http-equiv=\"refresh\"",
            "&lt;script&gt;",
        ] {
            assert!(page.contains(want), "missing {want}: {page}");
        }
        assert!(!page.contains("<script>"), "nothing unescaped");
        assert!(!page.contains("data-step=\"leading\""), "not heard leading");
    }
}
