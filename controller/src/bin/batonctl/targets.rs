//! Which controllers `batonctl` asks, and whose answer counts: the controller list from
//! `--controller`, `BATON_CONTROLLER` or the default; the active controller a standby names in
//! its `not_active` message; and, per read, how an answer says whether a standby gave it. It
//! sends nothing itself (`client.rs` does).

use serde_json::Value;

/// Used when neither `--controller` nor `BATON_CONTROLLER` names a controller (over TLS when a
/// CA is given).
pub const DEFAULT_CONTROLLER: &str = "127.0.0.1:7001";

/// The controllers to talk to, in order: `--controller` values (each possibly comma-separated),
/// else `BATON_CONTROLLER` (comma-separated), else the default. A bare `host:port` gets
/// `{scheme}://` (`https` when a CA is given); duplicates and trailing slashes go.
pub fn controller_list(
    flags: &[String],
    env: Option<&str>,
    scheme: &str,
) -> Result<Vec<String>, String> {
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
        let url = normalize_url(t, scheme).map_err(|e| format!("{source}: {e}"))?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    if out.is_empty() {
        out.push(format!("{scheme}://{DEFAULT_CONTROLLER}"));
    }
    Ok(out)
}

/// `s` as a base URL: `http://` or `https://`, `{scheme}://` put before a bare `host:port`.
pub fn normalize_url(s: &str, scheme: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let url = if s.contains("://") {
        s.to_string()
    } else {
        format!("{scheme}://{s}")
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(format!(
            "{s:?}: only https:// (and, for an insecure cluster, http://) controller URLs are \
             supported"
        ));
    }
    match url.parse::<hyper::Uri>() {
        Ok(u) if u.host().is_some() && (u.path() == "/" || u.path().is_empty()) => Ok(url),
        _ => Err(format!(
            "{s:?} is not a controller URL like https://127.0.0.1:7001"
        )),
    }
}

/// `https` for an `https://` URL, else `http`: the scheme of the addresses a controller
/// reached at `url` names (they are `host:port`, served the same way).
pub fn scheme_of(url: &str) -> &'static str {
    if url.starts_with("https://") {
        "https"
    } else {
        "http"
    }
}

/// The active controller a standby names in its `not_active` message ("… the active one is
/// 127.0.0.1:7001"), as a URL with `scheme`: for controllers older than the answer's
/// `active_controller` field, which is read first.
pub fn active_from_message(msg: &str, scheme: &str) -> Option<String> {
    let (_, rest) = msg.split_once("the active one is ")?;
    let addr = rest
        .split_whitespace()
        .next()?
        .trim_end_matches(['.', ',', ';']);
    if addr.is_empty() || addr == "unknown" {
        return None;
    }
    normalize_url(addr, scheme).ok()
}

/// Who gave a read's answer, as the answer itself says.
#[derive(Debug, PartialEq)]
pub enum Whose {
    Active,
    /// A standby, with the active controller's address if it knows it.
    Standby(Option<String>),
    /// Any controller's answer is as good (the journal is read from etcd).
    Any,
}

/// `GET /v1/clusters/{c}`: `active` and `active_controller`.
pub fn whose_view(v: &Value) -> Whose {
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
pub fn whose_leader(v: &Value) -> Whose {
    match v.get("from_active").and_then(Value::as_bool) {
        Some(false) => Whose::Standby(None),
        _ => Whose::Active,
    }
}

/// `GET …/dry-run` has no field saying whose it is; a standby lists itself as blocking.
pub fn whose_dry_run(v: &Value) -> Whose {
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

pub fn whose_any(_: &Value) -> Whose {
    Whose::Any
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
            "http",
        );
        assert_eq!(
            got,
            Ok(s(&["http://10.0.0.1:7001", "http://127.0.0.1:7002"]))
        );
        // With a CA, a bare address is reached over TLS.
        let got = controller_list(&s(&["127.0.0.1:7002", "https://a:1/"]), None, "https");
        assert_eq!(got, Ok(s(&["https://127.0.0.1:7002", "https://a:1"])));
    }

    #[test]
    fn controller_list_falls_back_to_env_then_default() {
        assert_eq!(
            controller_list(&[], Some(" a:1, ,http://b:2 "), "http"),
            Ok(s(&["http://a:1", "http://b:2"]))
        );
        assert_eq!(
            controller_list(&s(&[","]), Some(""), "http"),
            Ok(s(&["http://127.0.0.1:7001"]))
        );
        assert_eq!(
            controller_list(&[], None, "http"),
            Ok(s(&["http://127.0.0.1:7001"]))
        );
    }

    #[test]
    fn controller_list_rejects_what_it_cannot_use() {
        let e = controller_list(&s(&["ftp://a:1"]), None, "http").expect_err("ftp");
        assert!(e.starts_with("--controller: "), "{e}");
        assert!(e.contains("only https://"), "{e}");
        let e = controller_list(&[], Some("http://a:1/v1/cluster"), "http").expect_err("path");
        assert!(e.starts_with("BATON_CONTROLLER: "), "{e}");
    }

    #[test]
    fn the_active_controller_is_read_from_a_standby_message() {
        let msg = "this controller is not active; the active one is 127.0.0.1:7001";
        assert_eq!(
            active_from_message(msg, "http"),
            Some("http://127.0.0.1:7001".into())
        );
        assert_eq!(
            active_from_message(msg, scheme_of("https://127.0.0.1:7002")),
            Some("https://127.0.0.1:7001".into())
        );
        assert_eq!(
            active_from_message(
                "this controller is not active; the active one is unknown",
                "http"
            ),
            None
        );
        assert_eq!(active_from_message("busy", "http"), None);
    }

    #[test]
    fn reads_tell_a_standby_answer_from_the_active_one() {
        let mut v = serde_json::json!({"cluster": "main", "active": true,
                                       "active_controller": "127.0.0.1:7001"});
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
}
