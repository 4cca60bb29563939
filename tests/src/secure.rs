//! The tests' side of security (DESIGN §9): every process a test starts runs the secure
//! default — TLS with one CA per test process, node certificates naming each node, and bearer
//! tokens for the `read`, `write` and `admin` roles — and the tests' [`Client`] uses them
//! without each test saying so. `BATON_TEST_INSECURE=1` runs everything in plain HTTP instead
//! (to read traffic while debugging; CI never sets it).
//!
//! [`Client`]: crate::client::Client

use baton_runtime::pki::{self, Ca, NodeFiles};
use baton_runtime::tls::Tls;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The process's CA, its issued node files, and the three tokens.
pub struct TestPki {
    pub dir: PathBuf,
    ca: Ca,
    pub tokens: Tokens,
    issued: Mutex<HashMap<String, NodeFiles>>,
    client: Arc<Tls>,
}

/// One token per role.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub read: String,
    pub write: String,
    pub admin: String,
}

static PKI: OnceLock<TestPki> = OnceLock::new();
static PLAIN: AtomicBool = AtomicBool::new(false);

/// Whether this test process runs insecure (`BATON_TEST_INSECURE=1`, or [`set_plain`]).
pub fn insecure() -> bool {
    PLAIN.load(Ordering::Relaxed) || std::env::var("BATON_TEST_INSECURE").is_ok_and(|v| v == "1")
}

/// Switches what is started from now on to plain HTTP (`true`) or back to TLS: the
/// benchmark's side-by-side runs. Processes and clients made before keep their mode.
pub fn set_plain(plain: bool) {
    PLAIN.store(plain, Ordering::Relaxed);
}

/// The process's PKI; `None` in insecure mode.
pub fn pki() -> Option<&'static TestPki> {
    if insecure() {
        return None;
    }
    Some(PKI.get_or_init(|| {
        let dir = std::env::temp_dir()
            .join("baton-tests-pki")
            .join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("create the test PKI directory");
        let ca = Ca::new("baton tests CA").expect("make a CA");
        let ca_file = ca.write_ca(&dir).expect("write the CA");
        let client = Tls::client_only(&ca_file).expect("load the CA");
        let tokens = Tokens {
            read: baton_runtime::auth::new_token(),
            write: baton_runtime::auth::new_token(),
            admin: baton_runtime::auth::new_token(),
        };
        TestPki {
            dir,
            ca,
            tokens,
            issued: Mutex::new(HashMap::new()),
            client,
        }
    }))
}

/// `https` (or `http` when insecure).
pub fn scheme() -> &'static str {
    if pki().is_some() {
        "https"
    } else {
        "http"
    }
}

/// `{scheme}://{addr}`.
pub fn url(addr: impl std::fmt::Display) -> String {
    format!("{}://{addr}", scheme())
}

/// A deployment this process did not make (the Compose deployment of
/// `tests/tests/compose.rs`): its CA and tokens, which the tests' clients then use.
static ADOPTED: OnceLock<(Arc<Tls>, Tokens)> = OnceLock::new();

/// Makes the tests' clients trust `ca_file` and present `tokens` instead of this process's
/// own: for a deployment made elsewhere. Call it before any client is made; once per process.
pub fn adopt(ca_file: &std::path::Path, tokens: Tokens) -> anyhow::Result<()> {
    let tls = Tls::client_only(&ca_file.to_path_buf())
        .map_err(|e| anyhow::anyhow!("{}: {}", ca_file.display(), e.reason))?;
    ADOPTED
        .set((tls, tokens))
        .map_err(|_| anyhow::anyhow!("secure::adopt was called twice"))
}

/// The TLS the tests' clients use (trusts the CA, presents no certificate).
pub fn client_tls() -> Option<Arc<Tls>> {
    if let Some((tls, _)) = ADOPTED.get() {
        return Some(tls.clone());
    }
    pki().map(|p| p.client.clone())
}

/// The admin token (what the tests' client sends by default).
pub fn admin_token() -> Option<String> {
    if let Some((_, t)) = ADOPTED.get() {
        return Some(t.admin.clone());
    }
    pki().map(|p| p.tokens.admin.clone())
}

impl TestPki {
    /// The files of the node named `file` with identity `names` (issued once per process).
    pub fn node(&self, file: &str, names: &[String]) -> NodeFiles {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = issued.get(file) {
            return f.clone();
        }
        let f = self
            .ca
            .write_node(&self.dir, file, names, &pki::local_hosts())
            .expect("issue a node certificate");
        issued.insert(file.to_string(), f.clone());
        f
    }

    /// The path of the CA certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

/// The top-level line of a node config: `insecure = true\n` in insecure mode, else nothing
/// (put it among the top-level keys, before any table).
pub fn top() -> &'static str {
    if pki().is_some() {
        ""
    } else {
        "insecure = true\n"
    }
}

/// The `[tls]` table and the three `[[tokens]]` for a node config (nothing when insecure):
/// append after every top-level key of the config.
fn tables(files: Option<NodeFiles>) -> String {
    let (Some(p), Some(f)) = (pki(), files) else {
        return String::new();
    };
    let mut s = format!(
        "\n[tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        f.ca_file, f.cert_file, f.key_file
    );
    for (name, role, t) in [
        ("tests-read", "read", &p.tokens.read),
        ("tests-write", "write", &p.tokens.write),
        ("tests-admin", "admin", &p.tokens.admin),
    ] {
        s.push_str(&format!(
            "\n[[tokens]]\nname = {name:?}\nrole = {role:?}\nsha256 = {:?}\n",
            baton_runtime::auth::hash_token(t)
        ));
    }
    s
}

/// A replica's security tables: its certificate names `id` of `cluster`.
pub fn replica_tables(cluster: &str, id: &str) -> String {
    tables(pki().map(|p| {
        p.node(
            &format!("replica-{cluster}-{id}"),
            &pki::replica_names(cluster, id),
        )
    }))
}

/// A controller's security tables.
pub fn controller_tables(id: &str) -> String {
    tables(pki().map(|p| p.node(&format!("controller-{id}"), &pki::controller_names(id))))
}

/// A proxy's security tables.
pub fn proxy_tables(id: &str) -> String {
    tables(pki().map(|p| p.node(&format!("proxy-{id}"), &pki::proxy_names(id))))
}

/// A server-side TLS for a test double acting as controller `id` (the stand-in controller).
pub fn controller_tls(id: &str) -> Option<Arc<Tls>> {
    pki().map(|p| {
        let f = p.node(&format!("controller-{id}"), &pki::controller_names(id));
        Tls::server(&f.as_tls()).expect("load the controller files")
    })
}

/// A dialer that presents member `id` of `cluster`'s certificate (as a follower does) and
/// expects the server to carry `expect` (`""`: any node of the CA). Plain in insecure mode.
pub fn member_dialer(cluster: &str, id: &str, expect: &str) -> baton_runtime::connect::Dialer {
    let tls = pki().map(|p| {
        let f = p.node(
            &format!("replica-{cluster}-{id}"),
            &pki::replica_names(cluster, id),
        );
        Tls::server(&f.as_tls()).expect("load the member files")
    });
    baton_runtime::connect::Dialer::new(tls, expect)
}

/// The arguments that let `batonctl` talk to the tests' nodes: `--ca` and `--token` (admin), or
/// nothing when insecure.
pub fn batonctl_args() -> Vec<String> {
    match pki() {
        Some(p) => vec![
            "--ca".into(),
            p.ca_file().display().to_string(),
            "--token".into(),
            p.tokens.admin.clone(),
        ],
        None => Vec::new(),
    }
}
