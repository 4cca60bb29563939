//! What `local up` makes a deployment secure with (DESIGN §9), all under `DIR/tls/`: a new CA
//! (`ca.pem`), for each node a certificate carrying its identity names and the loopback hosts
//! with its key (`r1.pem`, `r1-key.pem`, owner-only), three random tokens (`read`, `write`,
//! `admin`, kept in `cluster.json`), and the config sections that name them: `[tls]` and
//! `[[tokens]]` (their SHA-256 only) for every node, `[etcd_tls]` for a controller of a private
//! etcd. The private etcd takes client certificates only from a second CA
//! (`etcd-clients-ca.pem`) that signs the controllers' etcd certificates alone: a replica's or
//! proxy's key opens nothing in etcd, where the controllers' state lives. The CAs' keys are
//! never written: a new `up` makes everything afresh.

use super::layout::Tokens;
use baton_runtime::auth::{hash_token, new_token};
use baton_runtime::pki::{self, Ca, NodeFiles};
use std::path::{Path, PathBuf};

pub struct Secure {
    ca: Ca,
    /// Signs the controllers' etcd client certificates only.
    etcd_ca: Ca,
    /// `DIR/tls/etcd-clients-ca.pem`: what etcd trusts for client certificates.
    pub etcd_ca_file: PathBuf,
    /// `DIR/tls`.
    dir: PathBuf,
    pub ca_file: PathBuf,
    pub tokens: Tokens,
}

/// Writes `text` to a new `path` (an old one is replaced) with `mode`.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One `[[tokens]]` per role (`local-read`, `local-write`, `local-admin`), stored hashed.
pub fn token_sections(t: &Tokens) -> String {
    let mut out = String::new();
    for (role, token) in [("read", &t.read), ("write", &t.write), ("admin", &t.admin)] {
        out.push_str(&format!(
            "\n[[tokens]]\nname = \"local-{role}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            hash_token(token)
        ));
    }
    out
}

/// A path as a TOML string.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

impl Secure {
    /// A new CA and tokens for the deployment in `dir`.
    pub fn new(dir: &Path) -> Result<Secure, String> {
        use std::os::unix::fs::PermissionsExt;
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).map_err(|e| format!("{}: {e}", tls.display()))?;
        std::fs::set_permissions(&tls, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", tls.display()))?;
        let ca = Ca::new("Baton local CA").map_err(|e| format!("cannot make a CA: {e}"))?;
        let ca_file = ca.write_ca(&tls).map_err(|e| e.to_string())?;
        let etcd_ca =
            Ca::new("Baton local etcd clients CA").map_err(|e| format!("cannot make a CA: {e}"))?;
        let etcd_ca_file = tls.join("etcd-clients-ca.pem");
        write_file(&etcd_ca_file, &etcd_ca.cert_pem(), 0o644)?;
        Ok(Secure {
            ca,
            etcd_ca,
            etcd_ca_file,
            dir: tls,
            ca_file,
            tokens: Tokens {
                read: new_token(),
                write: new_token(),
                admin: new_token(),
            },
        })
    }

    /// Writes the certificate and key of node `file` (`r1`, `c1`, `proxy`, `etcd`), carrying
    /// `names` and valid for the loopback hosts. The CA file is written once, in [`Secure::new`]:
    /// nodes already running read it meanwhile.
    pub fn node(&self, file: &str, names: &[String]) -> Result<NodeFiles, String> {
        let (cert, key) = self
            .ca
            .issue(names, &pki::local_hosts())
            .map_err(|e| format!("cannot make the certificate of {file}: {e}"))?;
        let files = NodeFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.dir.join(format!("{file}.pem")),
            key_file: self.dir.join(format!("{file}-key.pem")),
        };
        write_file(&files.cert_file, &cert, 0o644)?;
        write_file(&files.key_file, &key, 0o600)?;
        Ok(files)
    }

    /// A node config's `[tls]` (its files) and `[[tokens]]` (one per role, hashed).
    pub fn sections(&self, f: &NodeFiles) -> String {
        let mut out = format!(
            "[tls]\nca_file = {}\ncert_file = {}\nkey_file = {}\n",
            toml_path(&f.ca_file),
            toml_path(&f.cert_file),
            toml_path(&f.key_file)
        );
        out.push_str(&token_sections(&self.tokens));
        out
    }

    /// A controller's `[etcd_tls]` for the private etcd: the deployment's CA (etcd's server
    /// certificate is under it), and a client certificate of the etcd-clients CA made for
    /// controller `id` (`DIR/tls/{id}-etcd.pem`).
    pub fn etcd_tls(&self, id: &str) -> Result<String, String> {
        let (cert, key) = self
            .etcd_ca
            .issue(&[format!("{id}.etcd-client.baton")], &[])
            .map_err(|e| format!("cannot make the etcd certificate of {id}: {e}"))?;
        let cert_file = self.dir.join(format!("{id}-etcd.pem"));
        let key_file = self.dir.join(format!("{id}-etcd-key.pem"));
        write_file(&cert_file, &cert, 0o644)?;
        write_file(&key_file, &key, 0o600)?;
        Ok(format!(
            "[etcd_tls]\nca_file = {}\ncert_file = {}\nkey_file = {}\n",
            toml_path(&self.ca_file),
            toml_path(&cert_file),
            toml_path(&key_file)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_controller::config::ControllerConfig;

    /// The sections `up` writes make a controller config that its own validation accepts,
    /// with tokens that hash to what the config holds.
    #[test]
    fn a_controller_config_made_of_the_sections_is_valid() {
        let d = tempfile::tempdir().expect("tmp");
        let s = Secure::new(d.path()).expect("secure");
        let f = s.node("c1", &pki::controller_names("c1")).expect("node");
        let text = format!(
            "id = \"c1\"\nlisten = \"127.0.0.1:7001\"\netcd = [\"https://127.0.0.1:2379\"]\n\n{}\n{}\n\
             [[clusters]]\nname = \"main\"\n\n[[clusters.members]]\nid = \"r1\"\naddr = \"127.0.0.1:7101\"\n",
            s.etcd_tls("c1").expect("etcd tls"),
            s.sections(&f)
        );
        let c = ControllerConfig::parse(Path::new("controller.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.tokens.len(), 3);
        assert!(c
            .tokens
            .iter()
            .any(|t| t.sha256 == hash_token(&s.tokens.admin)));
        assert_ne!(s.tokens.read, s.tokens.admin);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&f.key_file), 0o600);
        assert_eq!(mode(&d.path().join("tls")), 0o700);
        // The etcd client certificate is not under the deployment's CA, and no node
        // certificate is under the etcd-clients CA: neither opens the other's door.
        let under = |ca: &Path, cert: &Path, key: &Path| {
            baton_runtime::tls::Tls::server(&baton_runtime::tls::TlsFiles {
                ca_file: ca.to_path_buf(),
                cert_file: cert.to_path_buf(),
                key_file: key.to_path_buf(),
            })
            .is_ok()
        };
        let tls = d.path().join("tls");
        let (ec, ek) = (tls.join("c1-etcd.pem"), tls.join("c1-etcd-key.pem"));
        assert!(under(&s.etcd_ca_file, &ec, &ek));
        assert!(!under(&s.ca_file, &ec, &ek));
        assert!(!under(&s.etcd_ca_file, &f.cert_file, &f.key_file));
        assert!(under(&s.ca_file, &f.cert_file, &f.key_file));
    }
}
