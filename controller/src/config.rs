//! `baton-controller`'s config: identity, security (`insecure`, `[tls]`, `[[tokens]]`: DESIGN
//! §9), etcd endpoints and their TLS and user, timing, and the clusters it manages with their
//! declared members. Validated once at start; errors name file, key and problem.

use crate::core::ClusterParams;
use baton_common::config::{self, ConfigError};
use baton_common::directive::{Member, Mode};
use baton_common::NodeId;
use baton_runtime::auth::TokenConfig;
use baton_runtime::tls::{Tls, TlsFiles};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// This controller's id (`c1`, …). No default.
    pub id: String,
    /// HTTP API and heartbeat endpoint. No default.
    pub listen: SocketAddr,
    /// Address (`host:port`) replicas, proxies and `batonctl` reach this controller at
    /// (default: listen). With TLS its host must be one the certificate names.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Plain HTTP on the API and no credentials checked (DESIGN §9: only where nothing else is
    /// possible, never the default). Excludes `[tls]` and `[[tokens]]`.
    #[serde(default)]
    pub insecure: bool,
    /// The deployment's CA and this controller's certificate and key, PEM (required unless
    /// `insecure`). The certificate names `{id}.controller.baton` and `controller.baton`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Bearer tokens operators and clients may present (`read`: views, leader, history,
    /// metrics; `admin`: operations), each stored as its SHA-256. Only with `[tls]`.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// `[log]`: `format = "text" | "json"`, `level` (default `info`; `RUST_LOG` overrides).
    #[serde(default)]
    pub log: baton_runtime::logging::LogConfig,
    /// etcd client URLs: all `http://`, or all `https://` with `[etcd_tls]`. No default.
    pub etcd: Vec<String>,
    /// TLS to etcd (required with `https://` URLs, refused with `http://` ones).
    #[serde(default)]
    pub etcd_tls: Option<EtcdTls>,
    /// etcd authentication with a user and password (etcd `auth enable`).
    #[serde(default)]
    pub etcd_auth: Option<EtcdAuth>,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub limits: Limits,
    pub clusters: Vec<ClusterConfig>,
}

/// `[etcd_tls]`: how the controller verifies etcd's certificate, and the client certificate it
/// presents when etcd runs with `--client-cert-auth`. Files are PEM.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificates.
    pub ca_file: PathBuf,
    /// The controller's client certificate (with `key_file`), if etcd asks for one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name etcd's certificate must carry (default: each URL's host).
    #[serde(default)]
    pub domain: Option<String>,
}

/// `[etcd_auth]`: an etcd user for the controller. The password is read from a file so that
/// it sits neither in the config nor in the process's arguments.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdAuth {
    pub user: String,
    /// A file holding the password (one line; a trailing newline is ignored).
    pub password_file: PathBuf,
}

/// What connecting to etcd needs beyond the URLs, read from the files `[etcd_tls]` and
/// `[etcd_auth]` name.
#[derive(Clone, Debug, Default)]
pub struct EtcdSecrets {
    pub tls: Option<EtcdTlsPem>,
    /// User and password.
    pub auth: Option<(String, String)>,
}

/// The PEM contents `[etcd_tls]` names.
#[derive(Clone, Debug)]
pub struct EtcdTlsPem {
    pub ca: String,
    /// Client certificate and key.
    pub identity: Option<(String, String)>,
    /// The name etcd's certificate must carry, if not the URLs' host.
    pub domain: Option<String>,
}

/// Limits of the HTTP API.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections (replicas' heartbeats, proxies' long-polls, `batonctl`); one more is
    /// answered 503 `overloaded` and closed. Default 1024, as the replicas and the proxy.
    pub connections_max: usize,
    /// A connection that has not sent a complete request head this long (idle between requests
    /// included) is closed. Heartbeats and long-polls are held after their head arrived, so
    /// they are not cut by it.
    pub idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: 1024,
            idle_timeout_ms: baton_runtime::server::IDLE_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// The longest a failure timeout or sync wait may be (10 minutes): longer is a typo, and
/// deadlines computed from it must not overflow.
const MAX_MS: u64 = 600_000;

/// Timing tunables. Validated together: heartbeats renew the lease (at least 3 per lease), and
/// the lease, stretched by the clock drift, runs out before `failure_timeout_ms`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// Replicas heartbeat this often (their own config must match).
    pub heartbeat_interval_ms: u64,
    /// A leader unheard this long, and lost by every reporting follower, has failed.
    pub failure_timeout_ms: u64,
    /// Lease granted to the leader with each directive; shorter than the failure timeout.
    pub lease_ms: u64,
    /// TTL of the controller's etcd election lease (seconds).
    pub election_ttl_s: u64,
    /// How long a replacement sync member may take to catch up before the dead one is dropped.
    pub sync_wait_ms: u64,
    /// Clock-rate drift bound ρ.
    pub clock_drift: f64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval_ms: 100,
            failure_timeout_ms: 800,
            lease_ms: 600,
            election_ttl_s: 2,
            sync_wait_ms: 1000,
            clock_drift: 0.01,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name; its etcd prefix is `/baton/{name}/`.
    #[serde(default = "main")]
    pub name: String,
    #[serde(default)]
    pub mode: Mode,
    /// Members in the sync set (semi-sync).
    #[serde(default = "one")]
    pub sync_size: usize,
    /// With an empty sync set: block writes (true) or run degraded (false).
    #[serde(default)]
    pub strict: bool,
    /// Async mode: a candidate may lag the best by at most this many records.
    #[serde(default = "lag")]
    pub max_lag_on_failover: u64,
    /// Automatic failovers allowed per hour before automatic failover pauses.
    #[serde(default = "three")]
    pub max_failovers_per_hour: usize,
    pub members: Vec<Member>,
}

fn main() -> String {
    "main".into()
}
fn one() -> usize {
    1
}
fn lag() -> u64 {
    1000
}
fn three() -> usize {
    3
}

impl ControllerConfig {
    pub fn load(path: &Path) -> Result<ControllerConfig, ConfigError> {
        let c: ControllerConfig = config::load(path)?;
        c.validate(path)?;
        Ok(c)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ControllerConfig, ConfigError> {
        let c: ControllerConfig = config::parse(path, text)?;
        c.validate(path)?;
        Ok(c)
    }

    /// Reads the files `[etcd_tls]` and `[etcd_auth]` name; an error names the file, the key and
    /// the problem. Called at validation and again when connecting (files may be replaced).
    pub fn etcd_secrets(&self, f: &Path) -> Result<EtcdSecrets, ConfigError> {
        let read = |key: &str, path: &Path, pem: bool| -> Result<String, ConfigError> {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(f, key, format!("cannot read {}: {e}", path.display()))
            })?;
            if pem && !text.contains("-----BEGIN ") {
                return Err(ConfigError::invalid(
                    f,
                    key,
                    format!("{} holds no PEM block", path.display()),
                ));
            }
            Ok(text)
        };
        let mut out = EtcdSecrets::default();
        if let Some(t) = &self.etcd_tls {
            let ca = read("etcd_tls.ca_file", &t.ca_file, true)?;
            let identity = match (&t.cert_file, &t.key_file) {
                (None, None) => None,
                (Some(c), Some(k)) => Some((
                    read("etcd_tls.cert_file", c, true)?,
                    read("etcd_tls.key_file", k, true)?,
                )),
                (Some(_), None) => {
                    return Err(ConfigError::invalid(
                        f,
                        "etcd_tls.key_file",
                        "cert_file is set without key_file",
                    ))
                }
                (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        f,
                        "etcd_tls.cert_file",
                        "key_file is set without cert_file",
                    ))
                }
            };
            out.tls = Some(EtcdTlsPem {
                ca,
                identity,
                domain: t.domain.clone(),
            });
        }
        if let Some(a) = &self.etcd_auth {
            if a.user.is_empty() {
                return Err(ConfigError::invalid(f, "etcd_auth.user", "is empty"));
            }
            let pw = read("etcd_auth.password_file", &a.password_file, false)?;
            let pw = pw.trim_end_matches(['\n', '\r']).to_string();
            if pw.is_empty() {
                return Err(ConfigError::invalid(
                    f,
                    "etcd_auth.password_file",
                    format!("{} is empty", a.password_file.display()),
                ));
            }
            out.auth = Some((a.user.clone(), pw));
        }
        Ok(out)
    }

    /// The API's TLS (`None`: insecure), its files read and checked; an error names the key.
    /// Called at validation and again when serving (files may have been replaced).
    pub fn security(&self, f: &Path) -> Result<Option<Arc<Tls>>, ConfigError> {
        baton_runtime::tls::check_security(self.insecure, self.tls.as_ref(), &self.tokens)
            .map_err(|(key, reason)| ConfigError::invalid(f, &key, reason))
    }

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
        self.security(f)?;
        // With TLS, ids and cluster names are labels of the identity names certificates carry
        // (`c1.controller.baton`, `r1.main.replica.baton`).
        let tls = !self.insecure;
        let label = |k: &str, v: &str| match baton_runtime::tls::check_label(v) {
            Err(r) if tls => bad(k, r),
            _ => Ok(()),
        };
        label("id", &self.id)?;
        if let Err(r) =
            config::check_advertise(&self.advertised(), &self.listen.to_string(), "c1:7001")
        {
            return bad("advertise", r);
        }
        if self.etcd.is_empty() {
            return bad("etcd", "at least one etcd URL is required".into());
        }
        for (i, u) in self.etcd.iter().enumerate() {
            let https = u.starts_with("https://");
            if !https && !u.starts_with("http://") {
                return bad(
                    &format!("etcd[{i}]"),
                    format!("{u:?} is not a URL like http://127.0.0.1:2379"),
                );
            }
            // Without TLS settings an https URL could only ever log "cannot reach etcd";
            // with them, an http URL would send the credentials in the clear.
            if https && self.etcd_tls.is_none() {
                return bad(
                    &format!("etcd[{i}]"),
                    format!(
                        "{u:?} is https:// but there is no [etcd_tls] section \
                         (ca_file, and cert_file and key_file if etcd asks for client certificates)"
                    ),
                );
            }
            if !https && self.etcd_tls.is_some() {
                return bad(
                    &format!("etcd[{i}]"),
                    format!("{u:?} is http:// but [etcd_tls] is set: use https:// URLs"),
                );
            }
        }
        self.etcd_secrets(f)?;
        let t = &self.timing;
        // The relations of DESIGN.md §5: a lease renewed by heartbeats, and run out, on the
        // leader's clock, before a failover may be declared.
        if !(10..=10_000).contains(&t.heartbeat_interval_ms) {
            return bad(
                "timing.heartbeat_interval_ms",
                format!("{} is outside 10..=10000", t.heartbeat_interval_ms),
            );
        }
        if !(0.0..=0.1).contains(&t.clock_drift) {
            return bad(
                "timing.clock_drift",
                format!("{} is outside 0.0..=0.1", t.clock_drift),
            );
        }
        let beats = 3 * t.heartbeat_interval_ms;
        if t.failure_timeout_ms < beats {
            return bad(
                "timing.failure_timeout_ms",
                format!(
                    "{} must be at least 3 heartbeat intervals ({beats})",
                    t.failure_timeout_ms
                ),
            );
        }
        if t.failure_timeout_ms > MAX_MS {
            return bad(
                "timing.failure_timeout_ms",
                format!("{} is above the maximum of {MAX_MS}", t.failure_timeout_ms),
            );
        }
        if t.lease_ms == 0 {
            return bad("timing.lease_ms", "must be positive".into());
        }
        if t.lease_ms < beats {
            return bad(
                "timing.lease_ms",
                format!(
                    "{} must cover at least 3 heartbeat intervals ({beats}): the leader's lease \
                     is renewed by heartbeat answers, and must survive two lost ones",
                    t.lease_ms
                ),
            );
        }
        let rho = t.clock_drift;
        let stretched = t.lease_ms as f64 * (1.0 + rho) / (1.0 - rho);
        if stretched >= t.failure_timeout_ms as f64 {
            return bad(
                "timing.lease_ms",
                format!(
                    "{} stretched by the clock drift (lease_ms*(1+clock_drift)/(1-clock_drift) \
                     = {stretched:.0}) is not shorter than timing.failure_timeout_ms ({}): a \
                     failover could be declared while the old leader still holds its lease",
                    t.lease_ms, t.failure_timeout_ms
                ),
            );
        }
        if !(1..=60).contains(&t.election_ttl_s) {
            return bad(
                "timing.election_ttl_s",
                format!("{} is outside 1..=60", t.election_ttl_s),
            );
        }
        if t.sync_wait_ms == 0 {
            return bad("timing.sync_wait_ms", "must be positive".into());
        }
        if t.sync_wait_ms < beats {
            return bad(
                "timing.sync_wait_ms",
                format!(
                    "{} must be at least 3 heartbeat intervals ({beats}): adding a sync member \
                     takes a directive and two leader heartbeats",
                    t.sync_wait_ms
                ),
            );
        }
        if t.sync_wait_ms > MAX_MS {
            return bad(
                "timing.sync_wait_ms",
                format!("{} is above the maximum of {MAX_MS}", t.sync_wait_ms),
            );
        }
        if self.limits.connections_max == 0 {
            return bad("limits.connections_max", "must be positive".into());
        }
        if let Err(e) = baton_runtime::server::check_idle_timeout_ms(self.limits.idle_timeout_ms) {
            return bad("limits.idle_timeout_ms", e);
        }
        if self.clusters.is_empty() {
            return bad(
                "clusters",
                "at least one [[clusters]] table is required".into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let k = |s: &str| format!("clusters[{i}].{s}");
            if let Err(r) = NodeId::validate(&c.name) {
                return bad(&k("name"), r);
            }
            label(&k("name"), &c.name)?;
            if !names.insert(c.name.clone()) {
                return bad(
                    &k("name"),
                    format!("cluster {:?} is declared twice", c.name),
                );
            }
            if c.members.is_empty() {
                return bad(&k("members"), "at least one member is required".into());
            }
            let mut ids = std::collections::BTreeSet::new();
            for (j, m) in c.members.iter().enumerate() {
                if let Err(r) = NodeId::validate(&m.id.0) {
                    return bad(&k(&format!("members[{j}].id")), r);
                }
                label(&k(&format!("members[{j}].id")), &m.id.0)?;
                if !ids.insert(m.id.clone()) {
                    return bad(
                        &k(&format!("members[{j}].id")),
                        format!("member {} is declared twice", m.id),
                    );
                }
                // Optional: the address a member advertises in its heartbeats is the one
                // followers and proxies are sent to; this one serves until it is heard.
                if !m.addr.is_empty() {
                    if let Err(r) = config::check_host_port(&m.addr) {
                        return bad(&k(&format!("members[{j}].addr")), r);
                    }
                }
            }
            if c.sync_size >= c.members.len() && c.mode == Mode::SemiSync && c.members.len() > 1 {
                return bad(
                    &k("sync_size"),
                    format!(
                        "{} leaves no member to lead ({} members)",
                        c.sync_size,
                        c.members.len()
                    ),
                );
            }
        }
        Ok(())
    }

    /// The core's view of one cluster.
    pub fn cluster_cfg(&self, c: &ClusterConfig) -> ClusterParams {
        ClusterParams {
            name: c.name.clone(),
            members: c.members.clone(),
            mode: c.mode,
            sync_size: c.sync_size,
            strict: c.strict,
            heartbeat_interval_ms: self.timing.heartbeat_interval_ms,
            failure_timeout_ms: self.timing.failure_timeout_ms,
            lease_ms: self.timing.lease_ms,
            sync_wait_ms: self.timing.sync_wait_ms,
            drift: self.timing.clock_drift,
            max_lag_on_failover: c.max_lag_on_failover,
            max_failovers_per_hour: c.max_failovers_per_hour,
        }
    }
}

impl baton_runtime::logging::Logged for ControllerConfig {
    fn log(&self) -> &baton_runtime::logging::LogConfig {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/controller.toml");

    /// The deploy example made insecure (its `[tls]`, `[[tokens]]` and `insecure` dropped,
    /// `insecure = true` put first): the base of the tests of everything else.
    fn example() -> String {
        let mut out = String::from("insecure = true\n");
        let mut skip = false;
        for line in EXAMPLE.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                skip = t == "[tls]" || t == "[[tokens]]";
            }
            if skip || t.starts_with("insecure ") || t.starts_with("insecure=") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// A CA and controller c1's certificate in `dir` (`ca.pem`, `c1.pem`, `c1-key.pem`).
    fn pki(dir: &Path) -> baton_runtime::pki::NodeFiles {
        let ca = baton_runtime::pki::Ca::new("test CA").expect("ca");
        ca.write_node(
            dir,
            "c1",
            &baton_runtime::pki::controller_names("c1"),
            &baton_runtime::pki::local_hosts(),
        )
        .expect("node files")
    }

    fn tls_table(f: &baton_runtime::pki::NodeFiles) -> String {
        format!(
            "[tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            f.ca_file, f.cert_file, f.key_file
        )
    }

    /// `base` with `insecure = true` replaced by `top` (top-level keys) and `tables` appended.
    fn secure(base: &str, top: &str, tables: &str) -> String {
        format!(
            "{top}{}\n{tables}",
            base.replacen("insecure = true\n", "", 1)
        )
    }

    #[test]
    fn the_example_config_in_deploy_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        pki(dir.path());
        // Its files are named under /etc/baton/tls/; here they are made on the spot.
        let text = EXAMPLE.replace("/etc/baton/tls/", &format!("{}/", dir.path().display()));
        let text = if text.contains("\n[tls]") {
            text
        } else {
            example()
        };
        let c = ControllerConfig::parse(Path::new("deploy/controller.toml"), &text)
            .unwrap_or_else(|e| panic!("example parses: {e}"));
        assert_eq!(c.clusters[0].members.len(), 3);
        let d = Timing::default();
        assert_eq!(c.timing.failure_timeout_ms, d.failure_timeout_ms);
        assert_eq!(c.timing.lease_ms, d.lease_ms);
        assert_eq!(c.limits, Limits::default());
    }

    /// DESIGN §9: TLS unless `insecure = true` says otherwise, never both, no tokens in plain
    /// text, usable files and token hashes, ids and names that fit in a certificate; each
    /// refusal names the key.
    #[test]
    fn security_settings_are_checked_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = pki(dir.path());
        let base = example();
        let tls = tls_table(&f);
        let parse =
            |t: &str| ControllerConfig::parse(Path::new("c.toml"), t).map_err(|e| e.to_string());
        let h = baton_runtime::auth::hash_token("secret");
        let token = |role: &str, sha: &str| {
            format!("[[tokens]]\nname = \"ops\"\nrole = \"{role}\"\nsha256 = \"{sha}\"\n")
        };
        // A good TLS config, with tokens of each role.
        let good = secure(
            &base,
            "",
            &format!(
                "{tls}{}{}",
                token("admin", &h),
                token("read", &h.to_uppercase())
            ),
        );
        let c = parse(&good).expect("a good TLS config");
        assert!(!c.insecure && c.tls.is_some() && c.tokens.len() == 2);
        assert!(c.security(Path::new("c.toml")).expect("loads").is_some());
        let c = parse(&base).expect("insecure");
        assert!(c.security(Path::new("c.toml")).expect("insecure").is_none());
        let rows: Vec<(String, &str, &str)> = vec![
            // Neither [tls] nor insecure.
            (secure(&base, "", ""), "c.toml: tls: ", "insecure = true"),
            (
                secure(&base, "insecure = false\n", ""),
                "c.toml: tls: ",
                "is missing",
            ),
            // Both.
            (format!("{base}{tls}"), "c.toml: tls: ", "choose one"),
            // Tokens in plain text.
            (
                format!("{base}{}", token("admin", &h)),
                "c.toml: tokens: ",
                "plain text",
            ),
            // A hash that is not one.
            (
                secure(&base, "", &format!("{tls}{}", token("admin", "abc"))),
                "c.toml: tokens[0].sha256: ",
                "64 hex",
            ),
            (
                secure(&base, "", &format!("{tls}{}", token("root", &h))),
                "c.toml: ",
                "role",
            ),
            // Files that cannot be used.
            (
                secure(&base, "", &tls.replace("c1-key.pem", "nothing.pem")),
                "c.toml: tls.key_file: ",
                "cannot read",
            ),
            (
                secure(&base, "", &tls.replace("c1.pem", "ca.pem")),
                "c.toml: tls.",
                "",
            ),
            // Names a certificate cannot carry (NodeId allows them; an identity name does not).
            (
                secure(&base, "", &tls).replacen("id = \"c1\"", "id = \"c-\"", 1),
                "c.toml: id: ",
                "certificate",
            ),
            (
                secure(&base, "", &tls).replacen("name = \"main\"", "name = \"-main\"", 1),
                "c.toml: clusters[0].name: ",
                "certificate",
            ),
            (
                secure(&base, "", &tls).replacen("id = \"r2\"", "id = \"r2-\"", 1),
                "c.toml: clusters[0].members[1].id: ",
                "certificate",
            ),
        ];
        for (text, prefix, word) in rows {
            let e = parse(&text).expect_err(&text);
            assert!(e.starts_with(prefix) && e.contains(word), "{text}\n=> {e}");
        }
    }

    /// An https etcd URL is refused at start with the reason, not accepted and then retried
    /// forever against a client without TLS (issue 13).
    #[test]
    fn https_etcd_is_refused_with_the_reason() {
        let base = example();
        let base = base.as_str();
        let https = base.replacen("http://127.0.0.1:2379", "https://127.0.0.1:2379", 1);
        assert_ne!(https, base, "the example names an http etcd URL");
        let e = ControllerConfig::parse(Path::new("c.toml"), &https)
            .expect_err("https without TLS support")
            .to_string();
        assert!(e.starts_with("c.toml: etcd[0]: "), "{e}");
        assert!(e.contains("[etcd_tls]"), "{e}");
    }

    /// `[etcd_tls]` and `[etcd_auth]`: each mistake names the key and the file.
    #[test]
    fn etcd_tls_and_auth_mistakes_name_the_key() {
        let d = tempfile::tempdir().expect("tmp");
        let pem = d.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let not_pem = d.path().join("junk.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let empty = d.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let base = example();
        let base = base.as_str();
        let https = base.replacen("http://127.0.0.1:2379", "https://127.0.0.1:2379", 1);
        let with = |text: &str, extra: String| format!("{text}\n{extra}");
        let cases = [
            (
                with(base, format!("[etcd_tls]\nca_file = {pem:?}\n")),
                "etcd[0]",
                "is http:// but [etcd_tls] is set",
            ),
            (
                with(
                    &https,
                    "[etcd_tls]\nca_file = \"/nonexistent/ca.pem\"\n".into(),
                ),
                "etcd_tls.ca_file",
                "cannot read /nonexistent/ca.pem",
            ),
            (
                with(&https, format!("[etcd_tls]\nca_file = {not_pem:?}\n")),
                "etcd_tls.ca_file",
                "holds no PEM block",
            ),
            (
                with(
                    &https,
                    format!("[etcd_tls]\nca_file = {pem:?}\ncert_file = {pem:?}\n"),
                ),
                "etcd_tls.key_file",
                "without key_file",
            ),
            (
                with(
                    base,
                    format!("[etcd_auth]\nuser = \"baton\"\npassword_file = {empty:?}\n"),
                ),
                "etcd_auth.password_file",
                "is empty",
            ),
        ];
        for (text, key, says) in cases {
            let e = ControllerConfig::parse(Path::new("c.toml"), &text)
                .expect_err(key)
                .to_string();
            assert!(e.starts_with(&format!("c.toml: {key}: ")), "{e}");
            assert!(e.contains(says), "{e}");
        }
        // And a good pair parses.
        let ok = with(&https, format!("[etcd_tls]\nca_file = {pem:?}\n"));
        let c = ControllerConfig::parse(Path::new("c.toml"), &ok).expect("parses");
        assert!(c.etcd_tls.is_some());
    }

    #[test]
    fn idle_timeout_defaults_and_is_bounded() {
        let base = example();
        let base = base.as_str();
        let c = ControllerConfig::parse(Path::new("c.toml"), base).expect("parses");
        assert_eq!(c.limits.idle_timeout_ms, 15_000);
        let e = ControllerConfig::parse(
            Path::new("c.toml"),
            &base.replace("idle_timeout_ms = 15000", "idle_timeout_ms = 10"),
        )
        .expect_err("too short")
        .to_string();
        assert!(e.starts_with("c.toml: limits.idle_timeout_ms: "), "{e}");
    }

    #[test]
    fn connections_max_defaults_and_must_be_positive() {
        let base = example();
        let base = base.as_str();
        let without = base.replace("connections_max = 1024\n", "");
        assert_ne!(without, base, "the example sets limits.connections_max");
        let c = ControllerConfig::parse(Path::new("c.toml"), &without).expect("parses");
        assert_eq!(c.limits.connections_max, 1024);
        let e = ControllerConfig::parse(
            Path::new("c.toml"),
            &base.replace("connections_max = 1024", "connections_max = 0"),
        )
        .expect_err("zero connections")
        .to_string();
        assert!(e.starts_with("c.toml: limits.connections_max: "), "{e}");
        assert!(e.contains("positive"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let base = example();
        let base = base.as_str();
        let e = ControllerConfig::parse(
            Path::new("c.toml"),
            &base.replace("lease_ms = 600", "lease_ms = 900"),
        )
        .expect_err("lease must be shorter than the failure timeout")
        .to_string();
        assert!(e.starts_with("c.toml: timing.lease_ms: "), "{e}");
        let e = ControllerConfig::parse(
            Path::new("c.toml"),
            &base.replace("127.0.0.1:7102", "nowhere"),
        )
        .expect_err("bad addr")
        .to_string();
        assert!(
            e.starts_with("c.toml: clusters[0].members[1].addr: "),
            "{e}"
        );
    }

    #[test]
    fn member_addresses_are_optional_host_names_and_advertise_is_checked() {
        let base = example();
        let named = base
            .replace(
                "addr = \"127.0.0.1:7101\"",
                "addr = \"r1.baton.internal:7101\"",
            )
            .replace("addr = \"127.0.0.1:7102\"\n", "");
        let c = ControllerConfig::parse(Path::new("c.toml"), &named).expect("host names parse");
        let m = &c.clusters[0].members;
        assert_eq!(
            (m[0].addr.as_str(), m[1].addr.as_str()),
            ("r1.baton.internal:7101", "")
        );
        let wild = base.replace(
            "listen = \"127.0.0.1:7001\"\nadvertise = \"127.0.0.1:7001\"\n",
            "listen = \"0.0.0.0:7001\"\n",
        );
        assert_ne!(wild, base);
        let e = ControllerConfig::parse(Path::new("c.toml"), &wild)
            .expect_err("a wildcard listen needs an advertise")
            .to_string();
        assert!(
            e.starts_with("c.toml: advertise: listen is 0.0.0.0:7001"),
            "{e}"
        );
        let e = ControllerConfig::parse(
            Path::new("c.toml"),
            &base.replace("advertise = \"127.0.0.1:7001\"", "advertise = \"c1\""),
        )
        .expect_err("no port")
        .to_string();
        assert!(e.starts_with("c.toml: advertise: "), "{e}");
    }

    /// The deploy example with one `[timing]` line replaced (or added).
    fn timing(changes: &[(&str, &str)]) -> String {
        let mut text = example();
        for (key, value) in changes {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .map(str::to_string);
            text = match line {
                Some(l) => text.replacen(&l, &format!("{key} = {value}"), 1),
                None => text.replacen("[timing]\n", &format!("[timing]\n{key} = {value}\n"), 1),
            };
        }
        text
    }

    /// Issue 10 item 9: timings that cannot work are refused at start, naming the key and the
    /// problem. One row a case: the `[timing]` changes, the key named, a word of the problem.
    #[test]
    fn timings_that_cannot_work_are_refused_naming_key_and_problem() {
        type Row<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let rows: &[Row] = &[
            (
                &[("heartbeat_interval_ms", "0")],
                "timing.heartbeat_interval_ms",
                "outside",
            ),
            (
                &[("failure_timeout_ms", "0")],
                "timing.failure_timeout_ms",
                "3 heartbeat",
            ),
            (
                &[("failure_timeout_ms", "250")],
                "timing.failure_timeout_ms",
                "3 heartbeat",
            ),
            (
                &[("failure_timeout_ms", "700000")],
                "timing.failure_timeout_ms",
                "maximum",
            ),
            (&[("lease_ms", "0")], "timing.lease_ms", "positive"),
            // Fewer than 3 heartbeats per lease: two lost heartbeats lose the lease.
            (&[("lease_ms", "250")], "timing.lease_ms", "3 heartbeat"),
            (
                &[("heartbeat_interval_ms", "250")],
                "timing.lease_ms",
                "3 heartbeat",
            ),
            // The leader's lease, stretched by the clock drift, must run out before a failover
            // may be declared: 790 * 1.01 / 0.99 = 806 > 800.
            (
                &[("lease_ms", "790")],
                "timing.lease_ms",
                "failure_timeout_ms",
            ),
            (
                &[("lease_ms", "900")],
                "timing.lease_ms",
                "failure_timeout_ms",
            ),
            (
                &[("clock_drift", "0.1"), ("failure_timeout_ms", "700")],
                "timing.lease_ms",
                "failure_timeout_ms",
            ),
            (&[("clock_drift", "0.2")], "timing.clock_drift", "outside"),
            (&[("clock_drift", "nan")], "timing.clock_drift", "outside"),
            (
                &[("election_ttl_s", "0")],
                "timing.election_ttl_s",
                "outside",
            ),
            (&[("sync_wait_ms", "0")], "timing.sync_wait_ms", "positive"),
            (
                &[("sync_wait_ms", "200")],
                "timing.sync_wait_ms",
                "3 heartbeat",
            ),
            (
                &[("sync_wait_ms", "700000")],
                "timing.sync_wait_ms",
                "maximum",
            ),
        ];
        for (changes, key, problem) in rows {
            let e = ControllerConfig::parse(Path::new("c.toml"), &timing(changes))
                .expect_err("must be refused")
                .to_string();
            assert!(
                e.starts_with(&format!("c.toml: {key}: ")),
                "{changes:?}: {e}"
            );
            assert!(e.contains(problem), "{changes:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        // The edges that work.
        for changes in [
            &[("lease_ms", "300")][..],
            &[("lease_ms", "780")],
            &[("clock_drift", "0.1"), ("failure_timeout_ms", "750")],
            &[("sync_wait_ms", "300")],
            &[("failure_timeout_ms", "600000"), ("sync_wait_ms", "600000")],
        ] {
            ControllerConfig::parse(Path::new("c.toml"), &timing(changes))
                .unwrap_or_else(|e| panic!("{changes:?}: {e}"));
        }
    }
}
