//! The HTTP side of `batonctl`: one request to one controller (`Ctl::call`, with connect and
//! answer timeouts, failures sorted into unreachable / broken / bad answer), reads that prefer
//! the active controller's answer (`Ctl::read`), and operations sent to the active controller
//! only, following a standby's `503 not_active` to the address it names and never re-sending a
//! request that may have arrived (`Ctl::operate`). What the answers mean is the commands' job.
//!
//! Security (DESIGN §9): `https://` URLs are reached over TLS checked against the deployment's
//! CA ([`Credentials::ca`]; a controller must also carry the identity `controller.baton`, a
//! member `{cluster}.replica.baton`), `http://` ones in plain text; the bearer token goes with
//! every request over TLS and never over plain HTTP. A 401 or 403 answer becomes a message
//! saying which credential is missing or too weak.

use crate::targets::{active_from_message, normalize_url, scheme_of, Whose};
use crate::Fail;
use baton_runtime::connect::{Connector, Dialer};
use baton_runtime::tls::{any_controller, cluster_name, Tls};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-request limit (connect + answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an operation is retried while the active controller answers `503 busy`.
pub const BUSY_RETRY: Duration = Duration::from_secs(3);
pub const POLL: Duration = Duration::from_millis(200);

/// A controller's answer: its HTTP status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `(error, message)` of an error answer; a refusal for credentials (401, 403) says so and
    /// what to give instead.
    pub fn error(&self) -> Option<(String, String)> {
        if self.ok() {
            return None;
        }
        let code = self.body.get("error").and_then(Value::as_str);
        let msg = self.body.get("message").and_then(Value::as_str);
        let msg = msg.map_or_else(
            || format!("HTTP {}: {}", self.status, self.body),
            str::to_string,
        );
        let msg = match self.status {
            401 => format!(
                "the controller refused: {msg} (HTTP 401: no valid credentials; give a bearer \
                 token with --token or BATON_TOKEN, or --local-dir DIR for a local cluster's \
                 admin token)"
            ),
            403 => format!(
                "the controller refused: {msg} (HTTP 403: the token's role is not enough; \
                 operations need the admin role)"
            ),
            _ => msg,
        };
        Some((code.unwrap_or("http_error").to_string(), msg))
    }

    pub fn is(&self, status: u16, code: &str) -> bool {
        self.status == status && self.error().is_some_and(|(c, _)| c == code)
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum CallError {
    /// No connection: the request was never sent, so another controller may be asked.
    Unreachable {
        url: String,
        refused: bool,
        detail: String,
    },
    /// The request may have been sent; its outcome is unknown.
    Broken { url: String, detail: String },
    /// The answer was not what a controller sends.
    BadAnswer { url: String, detail: String },
}

impl CallError {
    pub fn message(&self) -> String {
        match self {
            CallError::Unreachable { url, detail, .. } | CallError::Broken { url, detail }
                if detail.contains("TLS") || detail.contains("certificate") =>
            {
                format!(
                    "TLS with the controller at {url} failed: {detail} (is --ca / BATON_CA the \
                     CA of this deployment, and the URL's host one its certificate names?)"
                )
            }
            CallError::Broken { url, .. } if url.starts_with("http://") => format!(
                "{} (if the controller serves TLS, use its https:// URL and the deployment's CA)",
                self.message_only()
            ),
            _ => self.message_only(),
        }
    }

    fn message_only(&self) -> String {
        match self {
            CallError::Unreachable {
                url,
                refused: true,
                ..
            } => format!(
                "cannot reach the controller at {url} (is baton-controller running? set --controller or BATON_CONTROLLER)"
            ),
            CallError::Unreachable { url, detail, .. } => format!(
                "cannot reach the controller at {url}: {detail} (is baton-controller running? set --controller or BATON_CONTROLLER)"
            ),
            CallError::Broken { url, detail } => {
                format!("the request to the controller at {url} failed: {detail}")
            }
            CallError::BadAnswer { url, detail } => {
                format!("the controller at {url} gave an unexpected answer: {detail}")
            }
        }
    }
}

/// Why an operation reached no active controller.
#[derive(Debug, Default)]
pub struct NoActive {
    pub unreachable: Vec<CallError>,
    /// `(url, message)` of each standby that answered `not_active`.
    pub standby: Vec<(String, String)>,
}

impl NoActive {
    pub fn message(&self, cluster: &str) -> String {
        if self.standby.is_empty() {
            return failures_message(&self.unreachable);
        }
        let mut parts: Vec<String> = self
            .standby
            .iter()
            .map(|(u, m)| format!("{u}: {m}"))
            .collect();
        if !self.unreachable.is_empty() {
            parts.push(failures_message(&self.unreachable));
        }
        format!(
            "no active controller for cluster {cluster:?} answered (an election may be under way; retry in a few seconds): {}",
            parts.join("; ")
        )
    }
}

/// One message for several failed requests; refused connections are named together.
pub fn failures_message(errors: &[CallError]) -> String {
    let refused: Vec<&str> = errors
        .iter()
        .filter_map(|e| match e {
            CallError::Unreachable {
                url, refused: true, ..
            } => Some(url.as_str()),
            _ => None,
        })
        .collect();
    let mut parts: Vec<String> = Vec::new();
    if !refused.is_empty() {
        parts.push(format!(
            "cannot reach the controller at {} (is baton-controller running? set --controller or BATON_CONTROLLER)",
            refused.join(", ")
        ));
    }
    parts.extend(
        errors
            .iter()
            .filter(|e| !matches!(e, CallError::Unreachable { refused: true, .. }))
            .map(CallError::message),
    );
    parts.join("; ")
}

/// What `batonctl` presents: the CA that signed the nodes' certificates (TLS, for `https://`
/// URLs) and the bearer token. From `--ca` / `BATON_CA` and `--token` / `BATON_TOKEN`, else a
/// local cluster's `cluster.json` (`"ca"`, `"tokens"."admin"`).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub ca: Option<PathBuf>,
    pub token: Option<String>,
}

pub type HttpClient = Client<Connector, Full<Bytes>>;

/// A pooled client: TLS with `tls` when given (the server must carry the identity `expect`,
/// `""`: any certificate of the CA), plain HTTP without.
pub fn http_client(tls: Option<Arc<Tls>>, expect: &str) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(baton_runtime::CLIENT_POOL_IDLE)
        .build(Connector::new(
            Dialer::new(tls, expect),
            Some(CONNECT_TIMEOUT),
        ))
}

/// Loads the CA of `creds` (an error names it).
pub fn load_ca(creds: &Credentials) -> Result<Option<Arc<Tls>>, String> {
    creds
        .ca
        .as_ref()
        .map(|ca| {
            Tls::client_only(ca)
                .map_err(|e| format!("--ca / BATON_CA {}: {}", ca.display(), e.reason))
        })
        .transpose()
}

/// Whom a request goes to: the certificate it must show differs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum To {
    Controller,
    Member,
}

pub struct Ctl {
    pub controllers: Vec<String>,
    pub cluster: String,
    plain: HttpClient,
    /// TLS clients to controllers and to members, when a CA is given.
    tls: Option<(HttpClient, HttpClient)>,
    token: Option<String>,
}

impl Ctl {
    /// Refuses `https://` controllers without a CA, and a CA file that cannot be used.
    pub fn new(
        controllers: Vec<String>,
        cluster: String,
        creds: &Credentials,
    ) -> Result<Ctl, String> {
        let tls = load_ca(creds)?;
        if tls.is_none() {
            if let Some(u) = controllers.iter().find(|u| u.starts_with("https://")) {
                return Err(format!(
                    "{u}: checking its TLS certificate needs the deployment's CA: --ca FILE or \
                     BATON_CA (or --local-dir DIR for a local cluster)"
                ));
            }
        }
        let tls = tls.map(|t| {
            (
                http_client(Some(t.clone()), &any_controller()),
                http_client(Some(t), &cluster_name(&cluster)),
            )
        });
        Ok(Ctl {
            controllers,
            cluster,
            plain: http_client(None, ""),
            tls,
            token: creds.token.clone().filter(|t| !t.is_empty()),
        })
    }

    pub fn path(&self, tail: &str) -> String {
        format!("/v1/clusters/{}{tail}", self.cluster)
    }

    /// The scheme members are reached with: `https` when a CA is given.
    pub fn member_scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// One request to one controller.
    pub async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CallError> {
        self.call_to(To::Controller, base, method, path, body).await
    }

    /// One request to one node: over TLS (checked for what `to` must carry, the token sent)
    /// for an `https://` base, plain for an `http://` one.
    pub async fn call_to(
        &self,
        to: To,
        base: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CallError> {
        let bad = |detail: String| CallError::BadAnswer {
            url: base.to_string(),
            detail,
        };
        let uri = format!("{base}{path}")
            .parse::<hyper::Uri>()
            .map_err(|e| bad(format!("cannot form a request URL: {e}")))?;
        let https = uri.scheme_str() == Some("https");
        let client = match (&self.tls, https) {
            (_, false) => &self.plain,
            (Some((ctl, _)), true) if to == To::Controller => ctl,
            (Some((_, member)), true) => member,
            (None, true) => {
                return Err(CallError::Unreachable {
                    url: base.to_string(),
                    refused: false,
                    detail: "an https:// URL needs the deployment's CA: --ca FILE or BATON_CA \
                             (or --local-dir DIR)"
                        .into(),
                })
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        // Only over TLS: in plain text the token would be anyone's.
        if let (true, Some(t)) = (https, &self.token) {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| bad(format!("cannot form the request: {e}")))?;
        let exchange = async {
            let resp = client.request(req).await.map_err(|e| classify(base, &e))?;
            let status = resp.status().as_u16();
            let raw = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Broken {
                    url: base.to_string(),
                    detail: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, CallError>((status, raw))
        };
        let (status, raw) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| CallError::Broken {
                url: base.to_string(),
                detail: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            })??;
        match serde_json::from_slice::<Value>(&raw) {
            Ok(body) => Ok(Answer { status, body }),
            Err(_) if !(200..300).contains(&status) => {
                // Not from our API (a proxy, another service on the port): keep its text.
                let text = String::from_utf8_lossy(&raw);
                Ok(Answer {
                    status,
                    body: serde_json::json!({
                        "error": format!("http_{status}"),
                        "message": format!("{base} answered HTTP {status}: {}", text.trim()),
                    }),
                })
            }
            Err(e) => Err(bad(format!("not JSON ({e})"))),
        }
    }

    /// A read: the first controller (`prefer` first, then the configured order) that answers,
    /// except that an answer its `whose` calls a standby's is kept only if no active
    /// controller (among the others and the one the standby names) answers: a standby's view
    /// may be a state poll behind, and its dry run is not the active controller's.
    pub async fn read(
        &self,
        path: &str,
        prefer: Option<&str>,
        whose: fn(&Value) -> Whose,
    ) -> Result<(String, Value), Fail> {
        let mut order: Vec<String> = prefer.into_iter().map(str::to_string).collect();
        for u in &self.controllers {
            if !order.contains(u) {
                order.push(u.clone());
            }
        }
        let mut standby: Option<(String, Value)> = None;
        let mut errors = Vec::new();
        let mut i = 0;
        // Bounded: each address is queued once.
        while i < order.len() && i < 16 {
            let url = order[i].clone();
            i += 1;
            match self.call(&url, Method::GET, path, None).await {
                Ok(a) => {
                    if let Some((_, m)) = a.error() {
                        if standby.is_some() {
                            continue;
                        }
                        return Err(m.into());
                    }
                    match whose(&a.body) {
                        Whose::Standby(named) => {
                            let scheme = scheme_of(&url);
                            if let Some(n) = named.and_then(|n| normalize_url(&n, scheme).ok()) {
                                if !order.contains(&n) {
                                    order.insert(i, n);
                                }
                            }
                            standby.get_or_insert((url, a.body));
                        }
                        Whose::Active | Whose::Any => return Ok((url, a.body)),
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        standby.ok_or_else(|| Fail::unreachable(failures_message(&errors)))
    }

    /// An operation: sent to each controller in turn until one that is active answers.
    /// Standbys (`503 not_active`) are skipped and the address they name is tried next; an
    /// unreachable controller is skipped; a request that may have arrived is never re-sent.
    pub async fn operate(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Result<(String, Answer), NoActive>, Fail> {
        let mut queue: Vec<String> = self.controllers.clone();
        let mut no = NoActive::default();
        let mut i = 0;
        // Bounded: each address is queued once.
        while i < queue.len() && i < 16 {
            let url = queue[i].clone();
            i += 1;
            match self.call(&url, Method::POST, path, body).await {
                Ok(a) if a.is(503, "not_active") => {
                    let msg = a.error().map(|(_, m)| m).unwrap_or_default();
                    // The typed field; the message for controllers older than it.
                    let named = a
                        .body
                        .get("active_controller")
                        .and_then(Value::as_str)
                        .and_then(|addr| normalize_url(addr, scheme_of(&url)).ok())
                        .or_else(|| active_from_message(&msg, scheme_of(&url)));
                    if let Some(active) = named {
                        if !queue.contains(&active) {
                            queue.insert(i, active);
                        }
                    }
                    no.standby.push((url, msg));
                }
                Ok(a) => return Ok(Ok((url, a))),
                Err(e @ CallError::Unreachable { .. }) => no.unreachable.push(e),
                Err(e) => {
                    return Err(Fail::unknown(format!(
                        "{}; the operation may or may not have been applied: check `batonctl status` and `batonctl history`",
                        e.message()
                    )))
                }
            }
        }
        Ok(Err(no))
    }

    /// An operation retried while the active controller is busy writing another change.
    pub async fn operate_retrying(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(String, Answer), Fail> {
        let start = Instant::now();
        loop {
            match self.operate(path, body).await? {
                Ok((_, a)) if a.is(503, "busy") && start.elapsed() < BUSY_RETRY => {
                    tokio::time::sleep(POLL).await;
                }
                Ok((url, a)) => {
                    if let Some((_, m)) = a.error() {
                        return Err(Fail::refused(m));
                    }
                    return Ok((url, a));
                }
                Err(no) => return Err(Fail::unreachable(no.message(&self.cluster))),
            }
        }
    }
}

/// Sorts a client error into "never connected" (safe to try elsewhere) and "broken".
pub fn classify(url: &str, e: &hyper_util::client::legacy::Error) -> CallError {
    let mut refused = false;
    let mut detail = e.to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        detail = s.to_string();
        src = s.source();
    }
    if e.is_connect() || refused {
        CallError::Unreachable {
            url: url.to_string(),
            refused,
            detail,
        }
    } else {
        CallError::Broken {
            url: url.to_string(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_controllers_are_named_in_one_message() {
        let refused = |u: &str| CallError::Unreachable {
            url: u.into(),
            refused: true,
            detail: "Connection refused (os error 111)".into(),
        };
        let errs = [
            refused("http://a:1"),
            refused("http://b:2"),
            CallError::Unreachable {
                url: "http://c:3".into(),
                refused: false,
                detail: "timed out".into(),
            },
        ];
        assert_eq!(
            failures_message(&errs),
            "cannot reach the controller at http://a:1, http://b:2 (is baton-controller running? \
             set --controller or BATON_CONTROLLER); cannot reach the controller at http://c:3: \
             timed out (is baton-controller running? set --controller or BATON_CONTROLLER)"
        );
        let tls = CallError::Unreachable {
            url: "https://c:3".into(),
            refused: false,
            detail: "TLS handshake with c: invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(tls
            .message()
            .starts_with("TLS with the controller at https://c:3 failed: TLS handshake"));
        assert!(tls.message().contains("--ca"));
        let no = NoActive {
            unreachable: vec![refused("http://a:1")],
            standby: vec![("http://b:2".into(), "this controller is not active".into())],
        };
        assert!(no
            .message("main")
            .starts_with("no active controller for cluster \"main\" answered"));
    }

    #[test]
    fn refusals_for_credentials_say_what_to_give() {
        let a = Answer {
            status: 401,
            body: serde_json::json!({"error": "unauthorized", "message": "POST /x needs a bearer token"}),
        };
        let (code, m) = a.error().expect("error");
        assert_eq!(code, "unauthorized");
        assert!(
            m.starts_with("the controller refused: POST /x needs"),
            "{m}"
        );
        assert!(m.contains("--token") && m.contains("BATON_TOKEN"), "{m}");
        let a = Answer {
            status: 403,
            body: serde_json::json!({"error": "forbidden", "message": "needs the admin role"}),
        };
        let (_, m) = a.error().expect("error");
        assert!(
            m.contains("needs the admin role") && m.contains("HTTP 403"),
            "{m}"
        );
    }

    #[test]
    fn error_answers_give_code_and_message() {
        let a = Answer {
            status: 503,
            body: serde_json::json!({"error": "not_active", "message": "m"}),
        };
        assert!(a.is(503, "not_active"));
        assert_eq!(a.error(), Some(("not_active".into(), "m".into())));
        let ok = Answer {
            status: 200,
            body: serde_json::json!({"ok": true}),
        };
        assert_eq!(ok.error(), None);
    }
}
