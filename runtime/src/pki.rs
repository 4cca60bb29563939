//! A deployment's certificates, made on the spot (rcgen): one CA, and for each node a
//! certificate carrying its identity name (see `tls.rs`) and the hosts it is reached at, for
//! both server and client use. `batonctl local up` and the tests use it; production
//! deployments bring their own CA and files.

use crate::tls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use std::path::{Path, PathBuf};

/// A CA able to sign node certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A node's files, as `[tls]` names them.
#[derive(Clone, Debug)]
pub struct NodeFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl NodeFiles {
    pub fn as_tls(&self) -> tls::TlsFiles {
        tls::TlsFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

/// Writes `text` to `path` (readable only by its owner when `secret`) through a temporary file
/// renamed over it: a node reading the file meanwhile (a SIGHUP reload, another node starting)
/// sees the old file or the new one, never half of one.
fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    o.mode(if secret { 0o600 } else { 0o644 });
    let mut f = o
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

impl Ca {
    /// A new CA named `name` (its common name).
    pub fn new(name: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for the node with identity `names` (e.g. `tls::replica_name(..)` and
    /// `tls::cluster_name(..)`) reached at `hosts` (host names or IP addresses); returns
    /// (certificate PEM, key PEM).
    pub fn issue(&self, names: &[String], hosts: &[String]) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        for h in hosts.iter().chain(names) {
            let san = match h.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(h.clone().try_into()?),
            };
            if !p.subject_alt_names.contains(&san) {
                p.subject_alt_names.push(san);
            }
        }
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes `dir/ca.pem` (unless it already holds this CA) and `dir/{file}.pem`,
    /// `dir/{file}-key.pem` (owner-only) for a node; returns its `[tls]` files.
    pub fn write_node(
        &self,
        dir: &Path,
        file: &str,
        names: &[String],
        hosts: &[String],
    ) -> anyhow::Result<NodeFiles> {
        let ca_file = self.write_ca(dir)?;
        let (cert, key) = self.issue(names, hosts)?;
        let cert_file = dir.join(format!("{file}.pem"));
        let key_file = dir.join(format!("{file}-key.pem"));
        write(&cert_file, &cert, false)?;
        write(&key_file, &key, true)?;
        Ok(NodeFiles {
            ca_file,
            cert_file,
            key_file,
        })
    }

    /// Writes `dir/ca.pem` unless it already holds this CA; returns its path.
    pub fn write_ca(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let ca_file = dir.join("ca.pem");
        let pem = self.cert_pem();
        if std::fs::read_to_string(&ca_file).ok().as_deref() != Some(pem.as_str()) {
            write(&ca_file, &pem, false)?;
        }
        Ok(ca_file)
    }
}

/// The identity names of replica `id` of `cluster`.
pub fn replica_names(cluster: &str, id: &str) -> Vec<String> {
    vec![tls::replica_name(cluster, id), tls::cluster_name(cluster)]
}
/// The identity names of controller `id`.
pub fn controller_names(id: &str) -> Vec<String> {
    vec![tls::controller_name(id), tls::any_controller()]
}
/// The identity names of proxy `id`.
pub fn proxy_names(id: &str) -> Vec<String> {
    vec![tls::proxy_name(id), tls::any_proxy()]
}
/// The hosts every local node is reached at.
pub fn local_hosts() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into(), "::1".into()]
}
