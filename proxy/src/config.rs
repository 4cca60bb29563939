//! `baton-proxy`'s config: where it listens, which controllers it asks, its security (DESIGN
//! §9: `[tls]` files and its identity `id`, the client `[[tokens]]`, or `insecure = true`), the
//! timing of holding and forwarding requests, and the request limits. Validated once at start
//! (the TLS files are loaded to check them); a bad config is reported as `file: key: problem`.
//! It holds no durable state, so there is no data directory.

use baton_common::config::{self, ConfigError};
use baton_common::NodeId;
use baton_runtime::auth::TokenConfig;
use baton_runtime::tls::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// The whole config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the client API listens on. No default.
    pub listen: SocketAddr,
    /// Base URLs of every controller (`https://host:port` with TLS, `http://host:port` when
    /// `insecure`); the proxy long-polls all of them for the leader. No default.
    pub controllers: Vec<String>,
    /// The cluster whose leader the proxy routes to.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// This proxy's name: its certificate carries `{id}.proxy.baton`
    /// ([`baton_runtime::tls::proxy_name`]), which it presents to controllers and replicas.
    #[serde(default = "default_id")]
    pub id: String,
    /// Plain HTTP without credentials, in and out (no `[tls]`, no `[[tokens]]`). Default false.
    #[serde(default)]
    pub insecure: bool,
    /// The deployment's CA, this proxy's certificate and key (PEM files): the client API is
    /// served over TLS, controllers and replicas are reached over TLS. Required unless
    /// `insecure`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The bearer tokens clients present (`Authorization: Bearer TOKEN`), stored as SHA-256:
    /// `read` for GETs (keys, `/v1/status`, `/metrics`), `write` also for PUT and DELETE. The
    /// client's `Authorization` header is forwarded to the replica, which checks it as well.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// `[log]`: `format = "text" | "json"`, `level` (default `info`; `RUST_LOG` overrides).
    #[serde(default)]
    pub log: baton_runtime::logging::LogConfig,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub limits: Limits,
}

fn default_cluster() -> String {
    "main".into()
}

fn default_id() -> String {
    "proxy".into()
}

/// Timing tunables.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// How long a request may be held, from its arrival, while there is no leader or the leader
    /// refuses it (503) or cannot be connected to; it is re-sent when a new leader is known.
    /// 0 answers at once.
    pub failover_buffer_ms: u64,
    /// One forwarded attempt (connect, send, whole reply) gets this long; past it the outcome
    /// is unknown (504). Longer than the replicas' `timing.write_timeout_ms`, so that a slow
    /// commit is answered by the replica, not cut by the proxy.
    pub request_timeout_ms: u64,
    /// Connecting to a replica gets this long; a connection not made sent nothing, so the
    /// request may be re-sent. Shorter than `request_timeout_ms`.
    pub connect_timeout_ms: u64,
    /// `wait_ms` of the long-poll on each controller's `GET /v1/clusters/{c}/leader`. A
    /// controller behind the view answers only when the wait runs out, so this also paces the
    /// reset to a new, lower cluster state (three such answers are needed).
    pub long_poll_ms: u64,
    /// How long every active controller must have named a cluster state behind the proxy's (a
    /// lower rev, or a lower epoch) before the proxy follows it, lowering its rev and epoch:
    /// etcd emptied and the cluster initialized again, or restored from a backup
    /// ([`crate::view::ResetRule`]). Longer than the controllers' election TTL: a controller
    /// cut off from etcd may answer as active from an old read until its lease runs out.
    pub state_reset_after_ms: u64,
    /// Extra time a controller gets to answer beyond `long_poll_ms`, and the whole time of a
    /// non-waiting controller request (the cluster view for the member list).
    pub controller_timeout_ms: u64,
    /// On SIGTERM/SIGINT, open requests get this long to finish before the proxy exits.
    pub shutdown_drain_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            failover_buffer_ms: 3000,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 500,
            long_poll_ms: 5000,
            state_reset_after_ms: 10_000,
            controller_timeout_ms: 1000,
            shutdown_drain_ms: 5000,
        }
    }
}

/// Request limits; violations get a 4xx JSON error naming the limit.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest key (after percent-decoding), as the replicas' `limits.key_bytes_max`.
    pub key_bytes_max: usize,
    /// Largest request body, as the replicas' `limits.value_bytes_max`.
    pub body_bytes_max: usize,
    /// Open client connections; one more is answered 503 `overloaded` and closed.
    pub connections_max: usize,
    /// Requests held at once during a failover; one more is answered 503 `overloaded`.
    pub buffered_max: usize,
    /// A client connection that has not sent a complete request head this long (idle between
    /// requests included) is closed.
    pub idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 1024,
            body_bytes_max: 1 << 20,
            connections_max: 1024,
            buffered_max: 10_000,
            idle_timeout_ms: baton_runtime::server::IDLE_TIMEOUT_MS_DEFAULT,
        }
    }
}

impl ProxyConfig {
    /// Loads and validates `path`.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let c: ProxyConfig = config::load(path)?;
        c.validate(path)?;
        Ok(c)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<ProxyConfig, ConfigError> {
        let c: ProxyConfig = config::parse(path, text)?;
        c.validate(path)?;
        Ok(c)
    }

    /// The controllers' base URLs without a trailing slash.
    pub fn controller_urls(&self) -> Vec<String> {
        self.controllers
            .iter()
            .map(|c| c.trim_end_matches('/').to_string())
            .collect()
    }

    fn validate(&self, f: &Path) -> Result<(), ConfigError> {
        let bad = |k: &str, r: String| Err(ConfigError::invalid(f, k, r));
        if let Err((k, r)) = self.log.check() {
            return bad(&k, r);
        }
        if let Err(r) = NodeId::validate(&self.cluster) {
            return bad("cluster", r);
        }
        if let Err((key, reason)) =
            baton_runtime::tls::check_security(self.insecure, self.tls.as_ref(), &self.tokens)
        {
            return bad(&key, reason);
        }
        let tls = !self.insecure;
        if tls {
            if let Err(r) = baton_runtime::tls::check_label(&self.id) {
                return bad("id", r);
            }
            if let Err(r) = baton_runtime::tls::check_label(&self.cluster) {
                return bad("cluster", r);
            }
        }
        if self.controllers.is_empty() {
            return bad(
                "controllers",
                "at least one controller URL is required: the proxy learns the leader from them"
                    .into(),
            );
        }
        let scheme = if tls { "https" } else { "http" };
        for (i, c) in self.controllers.iter().enumerate() {
            let key = format!("controllers[{i}]");
            if let Err(r) = baton_runtime::connect::check_scheme(tls, c) {
                return bad(&key, r);
            }
            let ok = c
                .split_once("://")
                .map(|(_, rest)| rest.trim_end_matches('/'))
                .is_some_and(|rest| config::check_host_port(rest).is_ok());
            if !ok {
                return bad(
                    &key,
                    format!("{c:?} is not a base URL like {scheme}://c1:7001 or {scheme}://10.0.0.1:7001"),
                );
            }
        }
        let t = &self.timing;
        if t.failover_buffer_ms > 600_000 {
            return bad(
                "timing.failover_buffer_ms",
                format!("{} is above the maximum of 600000", t.failover_buffer_ms),
            );
        }
        if t.connect_timeout_ms == 0 {
            return bad("timing.connect_timeout_ms", "must be positive".into());
        }
        if t.request_timeout_ms <= t.connect_timeout_ms {
            return bad(
                "timing.request_timeout_ms",
                format!(
                    "{} is not longer than timing.connect_timeout_ms ({})",
                    t.request_timeout_ms, t.connect_timeout_ms
                ),
            );
        }
        if !(100..=60_000).contains(&t.long_poll_ms) {
            return bad(
                "timing.long_poll_ms",
                format!(
                    "{} is outside 100..=60000 (the controllers cap a wait at 60 s)",
                    t.long_poll_ms
                ),
            );
        }
        if t.controller_timeout_ms == 0 {
            return bad("timing.controller_timeout_ms", "must be positive".into());
        }
        if !(1..=600_000).contains(&t.state_reset_after_ms) {
            return bad(
                "timing.state_reset_after_ms",
                format!("{} is outside 1..=600000", t.state_reset_after_ms),
            );
        }
        let l = &self.limits;
        if !(1..=65_535).contains(&l.key_bytes_max) {
            return bad(
                "limits.key_bytes_max",
                format!("{} is outside 1..=65535", l.key_bytes_max),
            );
        }
        if !(1..=(32 << 20)).contains(&l.body_bytes_max) {
            return bad(
                "limits.body_bytes_max",
                format!("{} is outside 1..=33554432", l.body_bytes_max),
            );
        }
        if l.connections_max == 0 {
            return bad("limits.connections_max", "must be positive".into());
        }
        if l.buffered_max == 0 {
            return bad("limits.buffered_max", "must be positive".into());
        }
        if let Err(e) = baton_runtime::server::check_idle_timeout_ms(l.idle_timeout_ms) {
            return bad("limits.idle_timeout_ms", e);
        }
        Ok(())
    }
}

impl baton_runtime::logging::Logged for ProxyConfig {
    fn log(&self) -> &baton_runtime::logging::LogConfig {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_runtime::pki;

    const GOOD: &str = r#"
listen = "127.0.0.1:7200"
controllers = ["http://127.0.0.1:7001", "http://127.0.0.1:7002/"]
insecure = true
"#;

    /// Top-level keys of a secure config (TLS files not included).
    const SECURE: &str = r#"
listen = "127.0.0.1:7200"
controllers = ["https://127.0.0.1:7001", "https://127.0.0.1:7002/"]
"#;

    fn err(text: &str) -> String {
        ProxyConfig::parse(Path::new("p.toml"), text)
            .expect_err("must fail")
            .to_string()
    }

    /// A CA and this proxy's certificate (`proxy.proxy.baton`) in a new directory; returns it
    /// and the `[tls]` table naming the files.
    fn tls_files() -> (tempfile::TempDir, TlsFiles, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki::Ca::new("test CA").expect("CA");
        let files = ca
            .write_node(
                dir.path(),
                "proxy",
                &pki::proxy_names("proxy"),
                &pki::local_hosts(),
            )
            .expect("certificate")
            .as_tls();
        let table = format!(
            "[tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            files.ca_file, files.cert_file, files.key_file
        );
        (dir, files, table)
    }

    #[test]
    fn the_example_config_in_deploy_parses_and_matches_the_defaults() {
        let text = include_str!("../../deploy/proxy.toml");
        let path = Path::new("deploy/proxy.toml");
        let mut c: ProxyConfig = config::parse(path, text).expect("example parses");
        // The example names files of a real deployment: check the rest with files made here.
        let (_dir, files, _) = tls_files();
        if c.tls.is_some() {
            c.tls = Some(files);
        }
        c.validate(path).expect("example is valid");
        assert_eq!(c.cluster, "main");
        assert_eq!(c.id, "proxy");
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.controllers.len(), 2);
    }

    #[test]
    fn defaults_apply() {
        let c = ProxyConfig::parse(Path::new("p.toml"), GOOD).expect("parse");
        assert_eq!(c.cluster, "main");
        assert_eq!(c.id, "proxy");
        assert!(c.insecure && c.tls.is_none() && c.tokens.is_empty());
        assert_eq!(c.timing.failover_buffer_ms, 3000);
        assert_eq!(c.limits.body_bytes_max, 1 << 20);
        assert_eq!(c.limits.key_bytes_max, 1024);
        assert_eq!(
            c.controller_urls(),
            vec!["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
        );
    }

    #[test]
    fn missing_identity_and_addresses_are_errors() {
        let e = err("controllers = [\"http://127.0.0.1:7001\"]\ninsecure = true\n");
        assert!(e.starts_with("p.toml: ") && e.contains("listen"), "{e}");
        let e = err("listen = \"127.0.0.1:7200\"\ninsecure = true\n");
        assert!(
            e.starts_with("p.toml: ") && e.contains("controllers"),
            "{e}"
        );
        let e = err("listen = \"127.0.0.1:7200\"\ncontrollers = []\ninsecure = true\n");
        assert!(e.starts_with("p.toml: controllers: "), "{e}");
    }

    /// One row a case: extra TOML after [`GOOD`] and the key the error must name.
    #[test]
    fn bad_values_name_the_key() {
        let rows: &[(&str, &str)] = &[
            ("cluster = \"a b\"\n", "cluster"),
            (
                "[timing]\nfailover_buffer_ms = 700000\n",
                "timing.failover_buffer_ms",
            ),
            (
                "[timing]\nconnect_timeout_ms = 0\n",
                "timing.connect_timeout_ms",
            ),
            (
                "[timing]\nrequest_timeout_ms = 500\nconnect_timeout_ms = 500\n",
                "timing.request_timeout_ms",
            ),
            ("[timing]\nlong_poll_ms = 99\n", "timing.long_poll_ms"),
            ("[timing]\nlong_poll_ms = 60001\n", "timing.long_poll_ms"),
            (
                "[timing]\ncontroller_timeout_ms = 0\n",
                "timing.controller_timeout_ms",
            ),
            (
                "[timing]\nstate_reset_after_ms = 0\n",
                "timing.state_reset_after_ms",
            ),
            (
                "[timing]\nfailover_buffer_ms = -1\n",
                "timing.failover_buffer_ms",
            ),
            ("[limits]\nkey_bytes_max = 0\n", "limits.key_bytes_max"),
            (
                "[limits]\nbody_bytes_max = 40000000\n",
                "limits.body_bytes_max",
            ),
            ("[limits]\nconnections_max = 0\n", "limits.connections_max"),
            ("[limits]\nbuffered_max = 0\n", "limits.buffered_max"),
        ];
        for (extra, key) in rows {
            let e = err(&format!("{GOOD}{extra}"));
            assert!(e.starts_with(&format!("p.toml: {key}: ")), "{extra:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = err(&GOOD.replace("http://127.0.0.1:7001", "127.0.0.1:7001"));
        assert!(e.starts_with("p.toml: controllers[0]: "), "{e}");
        let e = err(&GOOD.replace("http://127.0.0.1:7001", "http://127.0.0.1:7001/x"));
        assert!(e.starts_with("p.toml: controllers[0]: "), "{e}");
        let e = err(&GOOD.replace("http://127.0.0.1:7002/", "https://127.0.0.1:7002"));
        assert!(e.starts_with("p.toml: controllers[1]: "), "{e}");
        assert!(e.contains("http://"), "{e}");
        let e = err(&GOOD.replace("127.0.0.1:7200", "nowhere"));
        assert!(e.starts_with("p.toml: listen: "), "{e}");
        let e = err(&format!("{GOOD}[timing]\nfailover_bufer_ms = 1\n"));
        assert!(
            e.contains("timing") && e.contains("failover_bufer_ms"),
            "{e}"
        );
        let e = err(&format!("{GOOD}bogus = 1\n"));
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn a_secure_config_with_its_files_is_accepted() {
        let (_dir, files, table) = tls_files();
        let tokens = format!(
            "[[tokens]]\nname = \"app\"\nrole = \"write\"\nsha256 = \"{}\"\n\
             [[tokens]]\nname = \"dashboards\"\nrole = \"read\"\nsha256 = \"{}\"\n",
            baton_runtime::auth::hash_token("secret"),
            baton_runtime::auth::hash_token("other").to_uppercase(),
        );
        let text = format!("{SECURE}id = \"p1\"\n{table}{tokens}");
        // The certificate names `proxy`, not `p1`: the proxy starts anyway (and warns).
        let c = ProxyConfig::parse(Path::new("p.toml"), &text).expect("valid");
        assert!(!c.insecure);
        assert_eq!(c.id, "p1");
        assert_eq!(c.tls, Some(files));
        assert_eq!(c.tokens.len(), 2);
        assert_eq!(c.tokens[0].role, baton_runtime::auth::Role::Write);
        assert_eq!(
            c.controller_urls(),
            vec!["https://127.0.0.1:7001", "https://127.0.0.1:7002"]
        );
        // Without tokens too: then no client gets in, only health checks.
        ProxyConfig::parse(Path::new("p.toml"), &format!("{SECURE}{table}")).expect("valid");
    }

    /// One row a case: the config and the key its error must name.
    #[test]
    fn security_mistakes_name_the_key() {
        let (_dir, _, table) = tls_files();
        let token = |role: &str, sha: &str| {
            format!("[[tokens]]\nname = \"app\"\nrole = \"{role}\"\nsha256 = \"{sha}\"\n")
        };
        let good_sha = baton_runtime::auth::hash_token("secret");
        let missing =
            "[tls]\nca_file = \"/nonexistent/ca.pem\"\ncert_file = \"/nonexistent/p.pem\"\n\
                       key_file = \"/nonexistent/p-key.pem\"\n";
        let rows: Vec<(String, &str)> = vec![
            // Neither [tls] nor insecure = true.
            (SECURE.to_string(), "tls"),
            // Both.
            (format!("{GOOD}{table}"), "tls"),
            // Tokens in plain HTTP.
            (format!("{GOOD}{}", token("read", &good_sha)), "tokens"),
            // A token hash that is not one.
            (
                format!("{SECURE}{table}{}", token("read", "abc123")),
                "tokens[0].sha256",
            ),
            (
                format!("{SECURE}{table}{}", token("read", &"g".repeat(64))),
                "tokens[0].sha256",
            ),
            // An unknown role.
            (
                format!("{SECURE}{table}{}", token("root", &good_sha)),
                "tokens",
            ),
            // Files that are not there.
            (format!("{SECURE}{missing}"), "tls.ca_file"),
            // A plain-HTTP controller with TLS on.
            (
                format!(
                    "{}{table}",
                    SECURE.replace("https://127.0.0.1:7002/", "http://127.0.0.1:7002")
                ),
                "controllers[1]",
            ),
            // An id or cluster that cannot be a certificate name.
            (format!("{SECURE}id = \"a.b\"\n{table}"), "id"),
            (format!("{SECURE}id = \"\"\n{table}"), "id"),
            (format!("{SECURE}cluster = \"-main\"\n{table}"), "cluster"),
            // An unknown key under [tls].
            (format!("{SECURE}{table}crl_file = \"x\"\n"), "tls"),
        ];
        for (text, key) in rows {
            let e = err(&text);
            assert!(e.starts_with(&format!("p.toml: {key}")), "{text}\n{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
