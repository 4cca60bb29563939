//! TLS for every Baton listener and client (DESIGN §9): the `[tls]` files (one CA per
//! deployment, this node's certificate and key), the server and client configs built from them
//! and rebuilt on SIGHUP (open connections keep the config they started with), and the node
//! identities certificates carry.
//!
//! A node's identity is a DNS name in its certificate's subject alternative names, beside the
//! host names and addresses it is reached at: replica `r1` of cluster `main` is
//! `r1.main.replica.baton` (and `main.replica.baton`, "a member of main"), controller `c1` is
//! `c1.controller.baton` (and `controller.baton`), proxy `p1` is `p1.proxy.baton` (and
//! `proxy.baton`). rustls-webpki checks a certificate is valid for such a name exactly as it
//! checks a host name, so no certificate parsing of our own is involved.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// The suffix of every node identity name.
pub const DOMAIN: &str = "baton";

/// `{id}.{cluster}.replica.baton`: replica `id` of `cluster`.
pub fn replica_name(cluster: &str, id: &str) -> String {
    format!("{id}.{cluster}.replica.{DOMAIN}")
}
/// `{cluster}.replica.baton`: any member of `cluster`.
pub fn cluster_name(cluster: &str) -> String {
    format!("{cluster}.replica.{DOMAIN}")
}
/// `{id}.controller.baton`: controller `id`.
pub fn controller_name(id: &str) -> String {
    format!("{id}.controller.{DOMAIN}")
}
/// `controller.baton`: any controller of the deployment.
pub fn any_controller() -> String {
    format!("controller.{DOMAIN}")
}
/// `{id}.proxy.baton`: proxy `id`.
pub fn proxy_name(id: &str) -> String {
    format!("{id}.proxy.{DOMAIN}")
}
/// `proxy.baton`: any proxy of the deployment.
pub fn any_proxy() -> String {
    format!("proxy.{DOMAIN}")
}

/// Checks that `label` (a node id or cluster name) can be one label of an identity name: 1–63
/// letters, digits, '-' or '_', not starting or ending with '-'. Identity names compare without
/// regard to case, as host names do.
pub fn check_label(label: &str) -> Result<(), String> {
    let name = format!("{label}.x.{DOMAIN}");
    if label.len() > 63 || label.contains('.') || ServerName::try_from(name.as_str()).is_err() {
        return Err(format!(
            "{label:?} cannot name a node in a TLS certificate (1 to 63 letters, digits, '-' or \
             '_', not starting or ending with '-')"
        ));
    }
    Ok(())
}

/// `[tls]` in every server's config: the deployment's CA, this node's certificate chain and its
/// private key, all PEM files.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A `[tls]` file that cannot be used: `key` is the key under `[tls]` (`cert_file`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub key: &'static str,
    pub reason: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tls.{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for TlsFileError {}

fn bad(key: &'static str, reason: impl Into<String>) -> TlsFileError {
    TlsFileError {
        key,
        reason: reason.into(),
    }
}

/// The crypto provider of every Baton TLS config (ring, as etcd-client's tonic uses).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(
    key: &'static str,
    path: &PathBuf,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = std::fs::read(path)
        .map_err(|e| bad(key, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(
                key,
                format!("{}: not PEM certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(bad(key, format!("{} holds no certificate", path.display())));
    }
    Ok(certs)
}

/// Reads a CA file into a root store; the error names `key`.
pub fn read_roots(key: &'static str, path: &PathBuf) -> Result<Arc<RootCertStore>, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(key, path)? {
        roots.add(c).map_err(|e| {
            bad(
                key,
                format!("{}: not a usable CA certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(Arc::new(roots))
}

/// What one load of the files gave: everything else is built from it.
struct Loaded {
    roots: Arc<RootCertStore>,
    /// This node's chain and key; `None` for a client with only a CA (`batonctl`, tests).
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server: Option<Arc<ServerConfig>>,
    /// Client configs by the identity name the server must carry (`""`: any node of the CA).
    clients: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

fn load(ca: &PathBuf, identity: Option<(&PathBuf, &PathBuf)>) -> Result<Loaded, TlsFileError> {
    let roots = read_roots("ca_file", ca)?;
    let provider = provider();
    let (identity, server) = match identity {
        None => (None, None),
        Some((cert, key)) => {
            let chain = read_certs("cert_file", cert)?;
            let bytes = std::fs::read(key)
                .map_err(|e| bad("key_file", format!("cannot read {}: {e}", key.display())))?;
            let pk = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                bad(
                    "key_file",
                    format!("{}: no PEM private key: {e}", key.display()),
                )
            })?;
            // Our own certificate must chain to the CA and be usable as a client certificate
            // (nodes present it to each other): say so now rather than at the first handshake.
            let client_verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| bad("ca_file", format!("{}: {e}", ca.display())))?;
            client_verifier
                .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
                .map_err(|e| {
                    bad(
                        "cert_file",
                        format!(
                            "{} is not valid under the CA of tls.ca_file {} (or lacks the \
                             client-auth usage): {e}",
                            cert.display(),
                            ca.display()
                        ),
                    )
                })?;
            let optional_clients =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| bad("ca_file", format!("{}: {e}", ca.display())))?;
            let mut server = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| bad("cert_file", e.to_string()))?
                .with_client_cert_verifier(optional_clients)
                .with_single_cert(chain.clone(), pk.clone_key())
                .map_err(|e| {
                    bad(
                        "key_file",
                        format!("{} does not fit {}: {e}", key.display(), cert.display()),
                    )
                })?;
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
            (Some((chain, Arc::new(pk))), Some(Arc::new(server)))
        }
    };
    Ok(Loaded {
        roots,
        identity,
        server,
        clients: Mutex::new(HashMap::new()),
    })
}

/// One process's TLS: the files it was loaded from and what was built from them, replaced as a
/// whole by [`Tls::reload`] (a failed reload keeps the old).
pub struct Tls {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// A server's TLS (it also presents its certificate as a client to other nodes).
    pub fn server(files: &TlsFiles) -> Result<Arc<Tls>, TlsFileError> {
        let identity = Some((files.cert_file.clone(), files.key_file.clone()));
        let loaded = load(&files.ca_file, identity.as_ref().map(|(c, k)| (c, k)))?;
        Ok(Arc::new(Tls {
            ca: files.ca_file.clone(),
            identity,
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    /// A client that trusts `ca` and presents no certificate (it uses a bearer token).
    pub fn client_only(ca: &PathBuf) -> Result<Arc<Tls>, TlsFileError> {
        let loaded = load(ca, None)?;
        Ok(Arc::new(Tls {
            ca: ca.clone(),
            identity: None,
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    /// Reads the files again; on success new connections use them, open ones keep theirs.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let loaded = load(&self.ca, self.identity.as_ref().map(|(c, k)| (c, k)))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(())
    }

    fn now(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The config a listener accepts with: this node's certificate; a client certificate is
    /// asked for and, when given, must chain to the CA (clients with tokens send none).
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.now().server.clone()
    }

    /// The config a client connects with: the server must chain to the CA, match the URL's
    /// host, and, unless `expect` is empty, carry the identity name `expect` (e.g.
    /// [`any_controller`]); this node presents its own certificate when it has one.
    pub fn client_config(&self, expect: &str) -> Arc<ClientConfig> {
        let loaded = self.now();
        let mut clients = loaded.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(expect) {
            return c.clone();
        }
        let c = Arc::new(build_client(&loaded, expect));
        clients.insert(expect.to_string(), c.clone());
        c
    }
}

fn build_client(loaded: &Loaded, expect: &str) -> ClientConfig {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(loaded.roots.clone(), provider.clone())
        .build()
        .expect("a root store with at least one CA (checked at load)");
    let verifier = Arc::new(ExpectName {
        inner,
        expect: (!expect.is_empty())
            .then(|| ServerName::try_from(expect.to_string()).ok())
            .flatten(),
        expect_text: expect.to_string(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut c = match &loaded.identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .expect("the key fits the certificate (checked at load)"),
        None => builder.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

/// The usual web PKI check (chain to the CA, valid now, the URL's host named), then the node
/// identity the caller expects.
#[derive(Debug)]
struct ExpectName {
    inner: Arc<WebPkiServerVerifier>,
    expect: Option<ServerName<'static>>,
    expect_text: String,
}

impl ServerCertVerifier for ExpectName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if !self.expect_text.is_empty() && !names(end_entity, &self.expect_text, &self.expect) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn names(cert: &CertificateDer<'_>, text: &str, parsed: &Option<ServerName<'static>>) -> bool {
    let Some(name) = parsed else {
        tracing::warn!(name = text, "not a valid identity name");
        return false;
    };
    match webpki::EndEntityCert::try_from(cert) {
        Ok(c) => c.verify_is_valid_for_subject_name(name).is_ok(),
        Err(_) => false,
    }
}

/// Who is on the other end of one accepted connection: its address and, over TLS, the
/// certificate it presented (already checked against the CA in the handshake). The accept loop
/// puts one in every request's extensions.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub cert: Option<Arc<CertificateDer<'static>>>,
}

impl Peer {
    /// Whether the peer's certificate carries the identity name `name` (see the file header).
    pub fn is(&self, name: &str) -> bool {
        let Some(cert) = &self.cert else { return false };
        names(cert, name, &ServerName::try_from(name.to_string()).ok())
    }
}

/// Reloads `tls` on every SIGHUP until `cancel`; a reload that fails is logged and the old
/// files stay in use.
pub fn reload_on_sighup(tls: Arc<Tls>, cancel: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: TLS files are not reloaded");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = hup.recv() => if r.is_none() { break },
                _ = cancel.cancelled() => break,
            }
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(ca = %tls.ca.display(), "SIGHUP: reloaded the TLS certificates and keys")
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: cannot reload TLS files; the old ones stay in use")
                }
            }
        }
    });
}

/// The security part of every server's config, checked the same way everywhere: `insecure`
/// (plain HTTP, no credentials), `tls` (required unless insecure) and `tokens` (only with TLS:
/// tokens in plain text would be anyone's). Loads the files to check them. `Err` is the config
/// key and the problem.
pub fn check_security(
    insecure: bool,
    tls: Option<&TlsFiles>,
    tokens: &[crate::auth::TokenConfig],
) -> Result<Option<Arc<Tls>>, (String, String)> {
    match (insecure, tls) {
        (true, Some(_)) => Err((
            "tls".into(),
            "is set together with insecure = true: choose one".into(),
        )),
        (true, None) if !tokens.is_empty() => Err((
            "tokens".into(),
            "are set with insecure = true, where they would cross the network in plain text and \
             nothing checks them: remove them or configure [tls]"
                .into(),
        )),
        (true, None) => Ok(None),
        (false, None) => Err((
            "tls".into(),
            "is missing: Baton serves and connects only over TLS; name [tls] ca_file, cert_file \
             and key_file, or set insecure = true for plain HTTP without credentials"
                .into(),
        )),
        (false, Some(files)) => {
            if let Err((k, r)) =
                crate::auth::Auth::new(true, tokens, &prometheus::Registry::new(), "check")
            {
                return Err((k, r));
            }
            Tls::server(files)
                .map(Some)
                .map_err(|e| (format!("tls.{}", e.key), e.reason))
        }
    }
}
