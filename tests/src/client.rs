//! A small HTTP client for tests and the benchmark: keep-alive connections through hyper's
//! pooled client, with the status, headers and body of each reply. It speaks the tests'
//! secure default (`secure.rs`): https trusting the tests' CA, and the admin token on every
//! request that does not carry its own Authorization ([`Client::anonymous`] sends none).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// A reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// Why a request produced no reply: the distinction matters for outcome accounting.
#[derive(Debug)]
pub enum CallError {
    /// The connection failed; the request may or may not have been sent.
    Transport(String),
    Timeout,
}

/// A pooled HTTP/1.1 client.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<baton_runtime::connect::Connector, Full<Bytes>>,
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer …` on https requests that do not carry their own.
    token: Option<String>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl Client {
    /// A client with the tests' CA and admin token (plain, tokenless in insecure mode).
    pub fn new(timeout: Duration) -> Client {
        Client::with_token(timeout, crate::secure::admin_token())
    }

    /// A client that presents no credentials: what a stranger sends.
    pub fn anonymous(timeout: Duration) -> Client {
        Client::with_token(timeout, None)
    }

    /// A client that presents `token` (or nothing).
    pub fn with_token(timeout: Duration, token: Option<String>) -> Client {
        // Plain http:// is still spoken to etcd's port (etcd_growth, the benchmark's etcd).
        let dialer =
            baton_runtime::connect::Dialer::new(crate::secure::client_tls(), "").allowing_plain();
        Client::with_dialer(timeout, dialer, token)
    }

    /// A client that connects with `dialer` (e.g. presenting a member's certificate) and
    /// presents `token` (or nothing).
    pub fn with_dialer(
        timeout: Duration,
        dialer: baton_runtime::connect::Dialer,
        token: Option<String>,
    ) -> Client {
        let conn = baton_runtime::connect::Connector::new(dialer, None);
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            // Under the servers' idle timeout (baton_runtime::CLIENT_POOL_IDLE), so a test never
            // sends on a connection the server is closing.
            .pool_idle_timeout(Duration::from_secs(4))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(conn);
        Client {
            inner,
            timeout,
            token,
        }
    }

    /// Sends one request. `url` is absolute.
    pub async fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, CallError> {
        let mut b = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        // Only to Baton's own TLS ports: etcd's plain gateway reads `Authorization` as its own
        // auth token (and a token never crosses the network in plain text).
        if let Some(t) = self.token.as_ref().filter(|_| url.starts_with("https://")) {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            {
                b = b.header("authorization", format!("Bearer {t}"));
            }
        }
        let req = b
            .body(Full::new(body))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| CallError::Transport(format!("{e:?}")))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Transport(e.to_string()))?
                .to_bytes();
            Ok(Reply {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        }
    }

    pub async fn put(
        &self,
        base: &str,
        key: &str,
        value: impl Into<Bytes>,
    ) -> Result<Reply, CallError> {
        self.call("PUT", &format!("{base}/v1/kv/{key}"), &[], value.into())
            .await
    }

    pub async fn get(&self, base: &str, key: &str) -> Result<Reply, CallError> {
        self.call("GET", &format!("{base}/v1/kv/{key}"), &[], Bytes::new())
            .await
    }

    pub async fn status(&self, base: &str) -> Result<serde_json::Value, CallError> {
        let r = self
            .call("GET", &format!("{base}/v1/status"), &[], Bytes::new())
            .await?;
        Ok(r.json())
    }
}

/// Reads every acknowledged write (key → value) back from `base` with leader reads, 8 at a
/// time; a `503` (no lease for a moment on a loaded machine) is retried for up to 20 s. Fails
/// naming the first few keys that are missing or wrong.
pub async fn assert_all_readable(
    base: &str,
    acked: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let items: Vec<(String, String)> = acked.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let chunk = items.len().div_ceil(8).max(1);
    let mut tasks = Vec::new();
    for part in items.chunks(chunk) {
        let (part, base) = (part.to_vec(), base.to_string());
        tasks.push(tokio::spawn(async move {
            // Long enough for a proxy that holds requests during a failover.
            let c = Client::new(Duration::from_secs(30));
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut bad = Vec::new();
            for (k, v) in part {
                loop {
                    match c.get(&base, &k).await {
                        Ok(r) if r.status == 200 && r.text() == v => {}
                        Ok(r) if r.status == 503 && std::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Ok(r) => bad.push(format!(
                            "{k}: {} {:?} (acknowledged {v:?})",
                            r.status,
                            r.text()
                        )),
                        Err(e) => bad.push(format!("{k}: {e:?}")),
                    }
                    break;
                }
            }
            bad
        }));
    }
    let mut bad = Vec::new();
    for t in tasks {
        bad.extend(t.await?);
    }
    anyhow::ensure!(
        bad.is_empty(),
        "{} of {} acknowledged writes are not readable from {base}; first: {:?}",
        bad.len(),
        acked.len(),
        &bad[..bad.len().min(5)]
    );
    Ok(())
}
