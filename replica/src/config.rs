//! `baton-replica`'s config: the TOML shape with documented defaults, and the validation of
//! values and cross-field rules. A bad config is reported as `file: key: problem`.

use baton_common::config::{self, ConfigError};
use baton_common::NodeId;
use baton_runtime::auth::TokenConfig;
use baton_runtime::tls::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// Member id, as declared in the controller's config. No default.
    pub id: String,
    /// Cluster name (one replica set sharing one log).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Where the log, snapshots and meta file live. No default.
    pub data_dir: PathBuf,
    /// Address the client/replication API listens on. No default.
    pub listen: SocketAddr,
    /// Address others reach this replica at; defaults to `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Base URLs of every controller (`http://host:port`); heartbeats go to all of them.
    pub controllers: Vec<String>,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub limits: Limits,
    /// Plain HTTP without credentials (DESIGN §9: for cases that need it, never the default).
    #[serde(default)]
    pub insecure: bool,
    /// The deployment's CA and this replica's certificate and key (required unless insecure).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Bearer tokens clients may present, stored hashed, each with a role.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// `[log]`: `format = "text" | "json"`, `level` (default `info`; `RUST_LOG` overrides).
    #[serde(default)]
    pub log: baton_runtime::logging::LogConfig,
}

fn default_cluster() -> String {
    "main".into()
}

/// Timing tunables.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// Heartbeat period to every controller.
    pub heartbeat_interval_ms: u64,
    /// A heartbeat request not answered within this is abandoned.
    pub heartbeat_timeout_ms: u64,
    /// Clock-rate drift bound ρ: lease deadlines are shortened by this fraction.
    pub clock_drift: f64,
    /// A write not committed within this is answered `504 outcome_unknown`.
    pub write_timeout_ms: u64,
    /// On SIGTERM a leader waits up to this long for pending writes to commit.
    pub shutdown_drain_ms: u64,
    /// Follower promise carried by every acknowledgement (DESIGN.md §5): this replica leads no
    /// higher epoch within this long of an acknowledgement (nor of its own start). A leader
    /// holding unexpired promises from every other member keeps serving without a controller.
    /// 0 turns promises off; at most the controllers' `lease_ms` keeps promotions as fast.
    pub promise_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 500,
            clock_drift: 0.01,
            write_timeout_ms: 5000,
            shutdown_drain_ms: 1000,
            promise_ms: 800,
        }
    }
}

/// Storage tunables.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// A log segment is closed at this size.
    pub segment_bytes_max: u64,
    /// A snapshot is taken after this many bytes of log were applied since the last one; log
    /// segments it covers are then removed. Bounds restart time and disk use.
    pub snapshot_log_bytes: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            segment_bytes_max: 16 << 20,
            snapshot_log_bytes: 64 << 20,
        }
    }
}

/// Request limits; violations get a 4xx JSON error naming the limit.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    /// Open client connections; one more is answered 503 and closed.
    pub connections_max: usize,
    /// A connection that has not sent a complete request head this long (idle between requests
    /// included) is closed: slow or silent peers hold a connection slot this long at most.
    pub idle_timeout_ms: u64,
    /// Replication streams served at once (followers, and `batonctl` fetches); one more is
    /// answered 503 `overloaded`. Streams leave the connection count once upgraded, so they
    /// have their own cap.
    pub replication_streams_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 1024,
            value_bytes_max: 1 << 20,
            connections_max: 1024,
            idle_timeout_ms: baton_runtime::server::IDLE_TIMEOUT_MS_DEFAULT,
            replication_streams_max: 32,
        }
    }
}

impl ReplicaConfig {
    /// Loads and validates `path`.
    pub fn load(path: &Path) -> Result<ReplicaConfig, ConfigError> {
        let c: ReplicaConfig = config::load(path)?;
        c.validate(path)?;
        Ok(c)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<ReplicaConfig, ConfigError> {
        let c: ReplicaConfig = config::parse(path, text)?;
        c.validate(path)?;
        Ok(c)
    }

    /// The address others reach this replica at.
    pub fn advertised(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    fn validate(&self, f: &Path) -> Result<(), ConfigError> {
        let bad = |k: &str, r: String| Err(ConfigError::invalid(f, k, r));
        if let Err((k, r)) = self.log.check() {
            return bad(&k, r);
        }
        if let Err(r) = NodeId::validate(&self.id) {
            return bad("id", r);
        }
        if let Err(r) = NodeId::validate(&self.cluster) {
            return bad("cluster", r);
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty".into());
        }
        if self.controllers.is_empty() {
            return bad("controllers", "at least one controller URL is required: a replica takes its role only from a controller".into());
        }
        let scheme = if self.insecure { "http://" } else { "https://" };
        for (i, c) in self.controllers.iter().enumerate() {
            if let Err(r) = baton_runtime::connect::check_scheme(!self.insecure, c) {
                return bad(&format!("controllers[{i}]"), r);
            }
            let ok = c
                .strip_prefix(scheme)
                .map(|rest| rest.trim_end_matches('/'))
                .is_some_and(|rest| config::check_host_port(rest).is_ok());
            if !ok {
                return bad(
                    &format!("controllers[{i}]"),
                    format!(
                        "{c:?} is not a base URL like {scheme}c1:7001 or {scheme}10.0.0.1:7001"
                    ),
                );
            }
        }
        // Sent in every heartbeat: the controller directs followers and proxies to it.
        if let Err(r) =
            config::check_advertise(&self.advertised(), &self.listen.to_string(), "r1:7101")
        {
            return bad("advertise", r);
        }
        if let Err((k, r)) =
            baton_runtime::tls::check_security(self.insecure, self.tls.as_ref(), &self.tokens)
        {
            return bad(&k, r);
        }
        if !self.insecure {
            for (k, v) in [("id", &self.id), ("cluster", &self.cluster)] {
                if let Err(r) = baton_runtime::tls::check_label(v) {
                    return bad(k, r);
                }
            }
        }
        let t = &self.timing;
        if !(10..=10_000).contains(&t.heartbeat_interval_ms) {
            return bad(
                "timing.heartbeat_interval_ms",
                format!("{} is outside 10..=10000", t.heartbeat_interval_ms),
            );
        }
        if t.heartbeat_timeout_ms < t.heartbeat_interval_ms {
            return bad(
                "timing.heartbeat_timeout_ms",
                format!(
                    "{} is shorter than timing.heartbeat_interval_ms ({})",
                    t.heartbeat_timeout_ms, t.heartbeat_interval_ms
                ),
            );
        }
        if !(0.0..=0.1).contains(&t.clock_drift) {
            return bad(
                "timing.clock_drift",
                format!("{} is outside 0.0..=0.1", t.clock_drift),
            );
        }
        if t.heartbeat_timeout_ms > 60_000 {
            return bad(
                "timing.heartbeat_timeout_ms",
                format!(
                    "{} is above the maximum of 60000 (a directive that late grants no lease)",
                    t.heartbeat_timeout_ms
                ),
            );
        }
        if t.write_timeout_ms == 0 {
            return bad("timing.write_timeout_ms", "must be positive".into());
        }
        if t.write_timeout_ms > 600_000 {
            return bad(
                "timing.write_timeout_ms",
                format!("{} is above the maximum of 600000", t.write_timeout_ms),
            );
        }
        if t.shutdown_drain_ms == 0 {
            return bad(
                "timing.shutdown_drain_ms",
                "must be positive: on SIGTERM pending writes need time to commit".into(),
            );
        }
        if t.shutdown_drain_ms > 60_000 {
            return bad(
                "timing.shutdown_drain_ms",
                format!(
                    "{} is above the maximum of 60000 (a service manager kills a process that \
                     takes longer to stop)",
                    t.shutdown_drain_ms
                ),
            );
        }
        if t.promise_ms > 60_000 {
            return bad(
                "timing.promise_ms",
                format!(
                    "{} is above the maximum of 60000 (a promoted replica waits out its own promise)",
                    t.promise_ms
                ),
            );
        }
        let s = &self.storage;
        if s.segment_bytes_max < 4096 {
            return bad(
                "storage.segment_bytes_max",
                format!("{} is below the minimum of 4096", s.segment_bytes_max),
            );
        }
        if s.snapshot_log_bytes < 4096 {
            return bad(
                "storage.snapshot_log_bytes",
                format!("{} is below the minimum of 4096", s.snapshot_log_bytes),
            );
        }
        let l = &self.limits;
        if !(1..=65_535).contains(&l.key_bytes_max) {
            return bad(
                "limits.key_bytes_max",
                format!("{} is outside 1..=65535", l.key_bytes_max),
            );
        }
        if !(1..=(32 << 20)).contains(&l.value_bytes_max) {
            return bad(
                "limits.value_bytes_max",
                format!("{} is outside 1..=33554432", l.value_bytes_max),
            );
        }
        if l.connections_max == 0 {
            return bad("limits.connections_max", "must be positive".into());
        }
        if let Err(e) = baton_runtime::server::check_idle_timeout_ms(l.idle_timeout_ms) {
            return bad("limits.idle_timeout_ms", e);
        }
        if l.replication_streams_max == 0 {
            return bad("limits.replication_streams_max", "must be positive".into());
        }
        Ok(())
    }
}

impl baton_runtime::logging::Logged for ReplicaConfig {
    fn log(&self) -> &baton_runtime::logging::LogConfig {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "r1"
data_dir = "/tmp/r1"
listen = "127.0.0.1:7101"
controllers = ["http://127.0.0.1:7001"]
insecure = true
"#;

    /// A CA and r1's certificate in `dir`, as the deploy example names them under
    /// /etc/baton/tls/.
    fn pki(dir: &Path) -> baton_runtime::pki::NodeFiles {
        let ca = baton_runtime::pki::Ca::new("test CA").expect("ca");
        ca.write_node(
            dir,
            "r1",
            &baton_runtime::pki::replica_names("main", "r1"),
            &baton_runtime::pki::local_hosts(),
        )
        .expect("node files")
    }

    fn err(extra: &str) -> String {
        ReplicaConfig::parse(Path::new("r.toml"), &format!("{GOOD}{extra}"))
            .expect_err("must fail")
            .to_string()
    }

    #[test]
    fn the_example_config_in_deploy_parses_and_matches_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        pki(dir.path());
        let text = include_str!("../../deploy/replica.toml")
            .replace("/etc/baton/tls/", &format!("{}/", dir.path().display()));
        let c = ReplicaConfig::parse(Path::new("deploy/replica.toml"), &text)
            .unwrap_or_else(|e| panic!("example parses: {e}"));
        assert!(!c.insecure && c.tls.is_some() && c.tokens.len() == 1);
        let (t, s, l) = (Timing::default(), Storage::default(), Limits::default());
        assert_eq!(c.timing.heartbeat_interval_ms, t.heartbeat_interval_ms);
        assert_eq!(c.timing.heartbeat_timeout_ms, t.heartbeat_timeout_ms);
        assert_eq!(c.timing.clock_drift, t.clock_drift);
        assert_eq!(c.timing.write_timeout_ms, t.write_timeout_ms);
        assert_eq!(c.timing.shutdown_drain_ms, t.shutdown_drain_ms);
        assert_eq!(c.storage.segment_bytes_max, s.segment_bytes_max);
        assert_eq!(c.storage.snapshot_log_bytes, s.snapshot_log_bytes);
        assert_eq!(c.limits.key_bytes_max, l.key_bytes_max);
        assert_eq!(c.limits.value_bytes_max, l.value_bytes_max);
        assert_eq!(c.limits.connections_max, l.connections_max);
    }

    #[test]
    fn defaults_apply() {
        let c = ReplicaConfig::parse(Path::new("r.toml"), GOOD).expect("parse");
        assert_eq!(c.cluster, "main");
        assert_eq!(c.limits.key_bytes_max, 1024);
        assert_eq!(c.limits.value_bytes_max, 1 << 20);
        assert_eq!(c.advertised(), "127.0.0.1:7101");
    }

    #[test]
    fn addresses_may_be_host_names_and_a_wildcard_listen_needs_an_advertise() {
        let c = ReplicaConfig::parse(
            Path::new("r.toml"),
            &GOOD
                .replace(
                    "127.0.0.1:7101\"",
                    "0.0.0.0:7101\"\nadvertise = \"r1:7101\"",
                )
                .replace("http://127.0.0.1:7001", "http://c1.baton.internal:7001"),
        )
        .expect("host names");
        assert_eq!(c.advertised(), "r1:7101");
        let e = ReplicaConfig::parse(
            Path::new("r.toml"),
            &GOOD.replace("127.0.0.1:7101", "0.0.0.0:7101"),
        )
        .expect_err("wildcard without advertise")
        .to_string();
        assert!(
            e.starts_with("r.toml: advertise: listen is 0.0.0.0:7101"),
            "{e}"
        );
        assert!(err("advertise = \"r_1:7101\"\n").starts_with("r.toml: advertise: "));
        assert!(err("advertise = \"r1\"\n").contains("not host:port"));
    }

    #[test]
    fn bad_values_name_the_key() {
        assert!(err("[timing]\nheartbeat_interval_ms = 1\n")
            .starts_with("r.toml: timing.heartbeat_interval_ms: "));
        assert!(
            err("[limits]\nvalue_bytes_max = 0\n").starts_with("r.toml: limits.value_bytes_max: ")
        );
        assert!(err("[storage]\nsegment_bytes_max = 10\n")
            .starts_with("r.toml: storage.segment_bytes_max: "));
        let e = err("[timing]\nhearbeat_interval_ms = 100\n");
        assert!(
            e.contains("timing") && e.contains("hearbeat_interval_ms"),
            "{e}"
        );
        let e = ReplicaConfig::parse(Path::new("r.toml"), &GOOD.replace("r1", "r 1"))
            .expect_err("bad id")
            .to_string();
        assert!(e.starts_with("r.toml: id: "), "{e}");
        let e = ReplicaConfig::parse(
            Path::new("r.toml"),
            &GOOD.replace("http://127.0.0.1:7001", "127.0.0.1:7001"),
        )
        .expect_err("bad url")
        .to_string();
        assert!(e.starts_with("r.toml: controllers[0]: "), "{e}");
        let e = ReplicaConfig::parse(
            Path::new("r.toml"),
            &GOOD.replace("127.0.0.1:7101", "nowhere"),
        )
        .expect_err("bad listen")
        .to_string();
        assert!(e.starts_with("r.toml: listen: "), "{e}");
    }

    /// DESIGN §9: TLS unless `insecure = true` says otherwise, never both, no tokens in plain
    /// text, URLs matching the mode, usable files; each refusal names the key.
    #[test]
    fn security_settings_are_checked_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = pki(dir.path());
        let secure = GOOD
            .replace("insecure = true\n", "")
            .replace("http://", "https://");
        let tls = format!(
            "[tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            f.ca_file, f.cert_file, f.key_file
        );
        let parse =
            |t: &str| ReplicaConfig::parse(Path::new("r.toml"), t).map_err(|e| e.to_string());
        let c = parse(&format!("{secure}{tls}")).expect("secure config");
        assert!(c.tls.is_some());
        let token = "[[tokens]]\nname = \"app\"\nrole = \"write\"\nsha256 = \"";
        let h = baton_runtime::auth::hash_token("t");
        parse(&format!("{secure}{tls}{token}{h}\"\n")).expect("with a token");
        let rows: Vec<(String, &str, &str)> = vec![
            (secure.clone(), "r.toml: tls: ", "insecure = true"),
            (format!("{GOOD}{tls}"), "r.toml: tls: ", "choose one"),
            (
                format!("{GOOD}{token}{h}\"\n"),
                "r.toml: tokens: ",
                "plain text",
            ),
            (
                format!("{secure}{tls}{token}abc\"\n"),
                "r.toml: tokens[0].sha256: ",
                "64 hex",
            ),
            (
                format!("{}{tls}", secure.replace("https://", "http://")),
                "r.toml: controllers[0]: ",
                "https://",
            ),
            (
                format!("{}{tls}", GOOD.replace("insecure = true\n", "")),
                "r.toml: controllers[0]: ",
                "https://",
            ),
            (
                format!("{secure}{}", tls.replace("r1-key.pem", "nothing.pem")),
                "r.toml: tls.key_file: ",
                "cannot read",
            ),
            (
                format!("{secure}{}", tls.replace("r1.pem", "ca.pem")),
                "r.toml: tls.",
                "",
            ),
            (
                format!("{}{tls}", secure.replace("\"r1\"", "\"-r1\"")),
                "r.toml: id: ",
                "",
            ),
        ];
        for (text, prefix, word) in rows {
            let e = parse(&text).expect_err(&text);
            assert!(e.starts_with(prefix) && e.contains(word), "{text}\n=> {e}");
        }
    }

    /// Issue 10 item 9: timings that cannot work are refused at start, naming the key and the
    /// problem. One row a case: the `[timing]` lines, the key named, a word of the problem.
    #[test]
    fn timings_that_cannot_work_are_refused_naming_key_and_problem() {
        let rows: &[(&str, &str, &str)] = &[
            (
                "heartbeat_interval_ms = 0",
                "timing.heartbeat_interval_ms",
                "outside",
            ),
            (
                "heartbeat_timeout_ms = 0",
                "timing.heartbeat_timeout_ms",
                "shorter",
            ),
            (
                "heartbeat_interval_ms = 200\nheartbeat_timeout_ms = 150",
                "timing.heartbeat_timeout_ms",
                "shorter",
            ),
            (
                "heartbeat_timeout_ms = 60001",
                "timing.heartbeat_timeout_ms",
                "maximum",
            ),
            ("clock_drift = -0.01", "timing.clock_drift", "outside"),
            ("clock_drift = nan", "timing.clock_drift", "outside"),
            (
                "write_timeout_ms = 0",
                "timing.write_timeout_ms",
                "positive",
            ),
            (
                "write_timeout_ms = 600001",
                "timing.write_timeout_ms",
                "maximum",
            ),
            // A leader stopped with SIGTERM must give pending writes time to commit.
            (
                "shutdown_drain_ms = 0",
                "timing.shutdown_drain_ms",
                "positive",
            ),
            (
                "shutdown_drain_ms = 60001",
                "timing.shutdown_drain_ms",
                "maximum",
            ),
        ];
        for (lines, key, problem) in rows {
            let e = err(&format!("[timing]\n{lines}\n"));
            assert!(e.starts_with(&format!("r.toml: {key}: ")), "{lines}: {e}");
            assert!(e.contains(problem), "{lines}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        for lines in [
            "heartbeat_timeout_ms = 60000",
            "write_timeout_ms = 600000",
            "shutdown_drain_ms = 1\nheartbeat_interval_ms = 10\nheartbeat_timeout_ms = 10",
        ] {
            ReplicaConfig::parse(Path::new("r.toml"), &format!("{GOOD}[timing]\n{lines}\n"))
                .unwrap_or_else(|e| panic!("{lines}: {e}"));
        }
    }
}
