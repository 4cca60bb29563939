//! The controller against a real etcd that runs with TLS, client certificates
//! (`--client-cert-auth`) and authentication enabled (issue 13 item 3): with `[etcd_tls]` and
//! `[etcd_auth]` it wins the election and holds its key; without a user etcd knows it is
//! refused and never becomes active; a plain client gets nothing from the TLS port.

use baton_controller::config::ControllerConfig;
use baton_tests::client::Client;
use baton_tests::cluster::etcd_bin;
use baton_tests::procs::{free_port, wait_for, Daemon};
use baton_tests::secure;
use etcd_client::{Certificate, ConnectOptions, Identity, Permission, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A CA and the certificates it signs, written as PEM files in a directory.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "baton test CA");
        let ca = p.self_signed(&ca_key)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        Ok(Pki {
            ca,
            ca_key,
            dir: dir.to_path_buf(),
        })
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `cn`, valid for 127.0.0.1 and localhost, for servers and clients;
    /// returns (cert file, key file).
    fn issue(&self, cn: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse()?));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key)?;
        let (c, k) = (
            self.dir.join(format!("{cn}.pem")),
            self.dir.join(format!("{cn}-key.pem")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }

    fn client_options(&self, cn_files: &(PathBuf, PathBuf)) -> anyhow::Result<ConnectOptions> {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(self.ca_file())?))
            .identity(Identity::from_pem(
                std::fs::read(&cn_files.0)?,
                std::fs::read(&cn_files.1)?,
            ));
        Ok(ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_uses_etcd_with_tls_client_certificates_and_a_user() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let pki = Pki::new(tmp.path())?;
    let server = pki.issue("etcd")?;
    let root = pki.issue("root")?;
    let c1 = pki.issue("c1")?;

    // etcd: TLS on the client port, client certificates required.
    let (cport, pport) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{cport}");
    let peer = format!("http://127.0.0.1:{pport}");
    let dir = tmp.path().join("etcd");
    std::fs::create_dir_all(&dir)?;
    let args: Vec<std::ffi::OsString> = vec![
        "--name".into(),
        "sec".into(),
        "--data-dir".into(),
        dir.join("data").into(),
        "--listen-client-urls".into(),
        url.clone().into(),
        "--advertise-client-urls".into(),
        url.clone().into(),
        "--listen-peer-urls".into(),
        peer.clone().into(),
        "--initial-advertise-peer-urls".into(),
        peer.clone().into(),
        "--initial-cluster".into(),
        format!("sec={peer}").into(),
        "--cert-file".into(),
        server.0.clone().into(),
        "--key-file".into(),
        server.1.clone().into(),
        "--trusted-ca-file".into(),
        pki.ca_file().into(),
        "--client-cert-auth".into(),
    ];
    let _etcd = Daemon::start("etcd", etcd_bin()?, args, dir.join("etcd.log"))?;

    // Users: root (by its certificate's name) enables auth; the controller's user may read
    // and write /baton/ only.
    let mut admin = wait_for(Duration::from_secs(20), "etcd over TLS", || async {
        let opts = pki.client_options(&root).ok()?;
        let mut c = etcd_client::Client::connect([url.as_str()], Some(opts))
            .await
            .ok()?;
        c.status().await.ok()?;
        Some(c)
    })
    .await?;
    let mut auth = admin.auth_client();
    auth.role_add("root").await?;
    auth.user_add("root", "root-pw", None).await?;
    auth.user_grant_role("root", "root").await?;
    auth.role_add("baton").await?;
    auth.role_grant_permission("baton", Permission::read_write("/baton/").with_prefix())
        .await?;
    auth.user_add("baton", "baton-pw", None).await?;
    auth.user_grant_role("baton", "baton").await?;
    auth.auth_enable().await?;
    let pw = tmp.path().join("etcd-password");
    std::fs::write(&pw, "baton-pw\n")?;

    let config = |port: u16, with_user: bool| -> anyhow::Result<ControllerConfig> {
        let user = if with_user {
            format!(
                "[etcd_auth]\nuser = \"baton\"\npassword_file = \"{}\"\n",
                pw.display()
            )
        } else {
            String::new()
        };
        let text = format!(
            "id = \"c1\"\nlisten = \"127.0.0.1:{port}\"\netcd = [\"{url}\"]\n{}\
             [etcd_tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{user}\
             [[clusters]]\nname = \"main\"\n[[clusters.members]]\nid = \"r1\"\naddr = \"127.0.0.1:{}\"\n{}",
            secure::top(),
            pki.ca_file().display(),
            c1.0.display(),
            c1.1.display(),
            free_port(),
            secure::controller_tables("c1"),
        );
        Ok(ControllerConfig::parse(
            Path::new("controller.toml"),
            &text,
        )?)
    };
    let client = Client::new(Duration::from_secs(2));
    let active = |port: u16| {
        let client = client.clone();
        async move {
            let r = client
                .call(
                    "GET",
                    &secure::url(format!("127.0.0.1:{port}/v1/clusters/main")),
                    &[],
                    bytes::Bytes::new(),
                )
                .await
                .ok()?;
            (r.status == 200 && r.json()["active"] == true).then_some(())
        }
    };

    // Without a user etcd knows (its certificate names "c1", no such user): refused, never
    // active, and it wrote nothing.
    let port = free_port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let refused = tokio::spawn(baton_controller::run(config(port, false)?, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(4)).await;
    anyhow::ensure!(
        active(port).await.is_none(),
        "a controller etcd does not authorize became active"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), refused).await;
    let keys = admin
        .get(
            "/baton/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    anyhow::ensure!(
        keys.kvs().is_empty(),
        "an unauthorized controller wrote keys"
    );

    // With the user: active, holding its election key.
    let port = free_port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(baton_controller::run(config(port, true)?, async {
        let _ = stopped.await;
    }));
    wait_for(
        Duration::from_secs(20),
        "the controller to become active",
        || active(port),
    )
    .await?;
    let held = admin.get("/baton/main/election", None).await?;
    anyhow::ensure!(held.kvs().len() == 1, "the election key is held");

    // A plain-HTTP etcd client gets nothing from the TLS port.
    let plain = etcd_client::Client::connect(
        [format!("http://127.0.0.1:{cport}")],
        Some(ConnectOptions::new().with_timeout(Duration::from_secs(1))),
    )
    .await;
    if let Ok(mut p) = plain {
        anyhow::ensure!(
            p.get("/baton/main/election", None).await.is_err(),
            "plain HTTP read etcd"
        );
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), controller).await???;
    Ok(())
}
