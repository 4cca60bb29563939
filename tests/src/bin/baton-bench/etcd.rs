//! The etcd side of the side-by-side runs: a private single-node etcd and the same write load
//! against it through its HTTP gateway.

use super::common::*;
use baton_tests::client::Client;
use baton_tests::procs::{free_port, wait_for};
use bytes::Bytes;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) struct Etcd {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for ch in data.chunks(3) {
        let b = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= ch.len() {
                out.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) async fn start_etcd(dir: &Path) -> anyhow::Result<Option<Etcd>> {
    let Ok(bin) = which("etcd") else {
        println!("etcd is not installed (apt install etcd-server): the etcd comparison is skipped");
        return Ok(None);
    };
    let (cport, pport) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{cport}");
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    let child = Command::new(bin)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd-data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{pport}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{pport}"),
        ])
        .args([
            "--initial-cluster",
            &format!("bench=http://127.0.0.1:{pport}"),
        ])
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let e = Etcd { child, url };
    let c = Client::new(Duration::from_secs(2));
    let put = etcd_put_body(b"probe", b"x");
    wait_for(Duration::from_secs(20), "etcd to answer", || async {
        matches!(c.call("POST", &format!("{}/v3/kv/put", e.url), &[], put.clone()).await, Ok(r) if r.status == 200)
            .then_some(())
    })
    .await?;
    Ok(Some(e))
}

pub(crate) fn etcd_put_body(k: &[u8], v: &[u8]) -> Bytes {
    Bytes::from(format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
        b64(k),
        b64(v)
    ))
}

pub(crate) async fn bench_etcd(url: &str, clients: &[usize], secs: u64, vbytes: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let v = vec![b'x'; vbytes];
    for &n in clients {
        let c = Client::new(Duration::from_secs(10));
        let put = format!("{url}/v3/kv/put");
        let v = v.clone();
        let row = load("etcd 1 node (HTTP gateway)", n, secs, move |t, i| {
            let (c, put) = (c.clone(), put.clone());
            let body = etcd_put_body(format!("b{n}-{t}-{i}").as_bytes(), &v);
            async move { matches!(c.call("POST", &put, &[], body).await, Ok(r) if r.status == 200) }
        })
        .await;
        rows.push(row);
    }
    rows
}
