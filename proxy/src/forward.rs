//! Forwarding one client request: pick the target from the view (the leader, or a member in
//! turn for `consistency=any` reads), send it over the pooled client with
//! `Baton-Min-Epoch: <highest epoch seen>`, learn epochs from the reply, and act on
//! [`retry::classify`]: pass the reply through, answer `504 outcome_unknown`, or hold the
//! request and re-send it — waking when the controllers name a new leader, or after a short
//! delay — until `timing.failover_buffer_ms` from its arrival has passed.
//!
//! The request body is read whole before the first attempt, so a re-send sends the same bytes.
//! Nothing here decides *whether* a failure may be re-sent; that is `retry.rs`.
//!
//! The client's headers go to the replica as they came, Authorization included: the replica
//! checks the client's bearer token itself (DESIGN §9). They are never logged. The replica must
//! prove its identity in the TLS handshake: the leader's own name when the request goes to the
//! leader, any member of the cluster for `consistency=any` reads (`shared.rs`).

use crate::retry::{self, Attempt, Disposition};
use crate::shared::{replica_identity, Shared};
use crate::view::addr_of;
use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use baton_common::api::{ErrorBody, ErrorCode, LeaderHint};
use baton_common::{Epoch, NodeId};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::time::{Duration, Instant};

/// The header carrying the epoch precondition (DESIGN.md §7).
pub const MIN_EPOCH: &str = "baton-min-epoch";

/// A client request, ready to be sent (and re-sent). Its `Debug` leaves out the header values
/// (a bearer token among them) and the body.
#[derive(Clone)]
pub struct Outgoing {
    pub method: Method,
    /// Path and query exactly as the client sent them (`/v1/kv/…?…`).
    pub path_and_query: String,
    /// End-to-end headers of the client (no hop-by-hop ones, no Host, no Baton-Min-Epoch).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// A `consistency=any` read: any member may answer.
    pub any_read: bool,
    /// The client's own `Baton-Min-Epoch` (0: none); the proxy sends the higher of it and its
    /// own epoch.
    pub client_min_epoch: u64,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.keys().map(|k| k.as_str()).collect();
        f.debug_struct("Outgoing")
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("header_names", &names)
            .field("body_len", &self.body.len())
            .field("any_read", &self.any_read)
            .field("client_min_epoch", &self.client_min_epoch)
            .finish()
    }
}

/// A whole reply from a replica.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Headers that describe one connection, not the message; never forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The end-to-end headers of `h`: without hop-by-hop headers (and those `Connection` names),
/// `Host`, `Content-Length` (recomputed from the whole body) and the names in `drop`.
pub fn end_to_end(h: &HeaderMap, drop: &[&str]) -> HeaderMap {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::new();
    for (k, v) in h {
        let n = k.as_str();
        if HOP_BY_HOP.contains(&n)
            || n == "host"
            || n == "content-length"
            || drop.contains(&n)
            || named.iter().any(|x| x == n)
        {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

/// A proxy-made JSON error reply.
pub fn error_reply(
    code: ErrorCode,
    message: impl Into<String>,
    leader: Option<LeaderHint>,
) -> Reply {
    let body = ErrorBody {
        error: code,
        message: message.into(),
        leader,
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Reply {
        status: StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY),
        headers,
        body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    }
}

impl Reply {
    /// The `error` code of a JSON error body.
    pub fn error_code(&self) -> Option<String> {
        if self.status.is_success() || !self.is_json() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v.get("error")?.as_str().map(str::to_string)
    }

    /// The label this reply is counted under in `baton_proxy_requests_total`.
    pub fn result_label(&self) -> String {
        if self.status.is_success() {
            return "ok".into();
        }
        match self.error_code() {
            // Codes come from a closed set; anything else is counted by status.
            Some(c) if serde_json::from_value::<ErrorCode>(c.clone().into()).is_ok() => c,
            _ => format!("http_{}", self.status.as_u16()),
        }
    }

    fn is_json(&self) -> bool {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"))
    }

    /// Epochs this reply reveals: the `Baton-Epoch` header, and in a JSON body the write
    /// reply's `epoch` or an error's `leader.epoch`.
    pub fn epochs(&self) -> Vec<u64> {
        let mut out = Vec::new();
        if let Some(e) = self
            .headers
            .get("baton-epoch")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            out.push(e);
        }
        if self.is_json() && self.body.len() <= 64 << 10 {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.body) {
                out.extend(v.get("epoch").and_then(serde_json::Value::as_u64));
                out.extend(
                    v.get("leader")
                        .and_then(|l| l.get("epoch"))
                        .and_then(serde_json::Value::as_u64),
                );
            }
        }
        out
    }

    pub fn into_response(self) -> Response {
        let mut r = Response::new(Body::from(self.body));
        *r.status_mut() = self.status;
        *r.headers_mut() = end_to_end(&self.headers, &[]);
        r
    }
}

/// One attempt: what it came to, the reply if there was one, and a detail for messages.
struct Tried {
    attempt: Attempt,
    reply: Option<Reply>,
    detail: String,
}

/// Where one attempt goes: a replica's base URL and the identity name its certificate must
/// carry.
struct Target {
    base: String,
    expect: String,
}

/// Sends `req` once to `to` with `min_epoch`.
async fn attempt(sh: &Shared, to: &Target, req: &Outgoing, min_epoch: u64) -> Tried {
    let base = to.base.as_str();
    let mut b = hyper::Request::builder()
        .method(req.method.clone())
        .uri(format!("{base}{}", req.path_and_query));
    if let Some(h) = b.headers_mut() {
        *h = req.headers.clone();
        h.insert(MIN_EPOCH, HeaderValue::from(min_epoch));
    }
    let out = match b.body(Full::new(req.body.clone())) {
        Ok(r) => r,
        Err(e) => {
            // Nothing was sent; the only way here is a target URL that is not a URL.
            return Tried {
                attempt: Attempt::ConnectFailed,
                reply: None,
                detail: format!("cannot build a request to {base}: {e}"),
            };
        }
    };
    let client = sh.client_for(base, &to.expect, Instant::now());
    let send = async {
        let resp = client.request(out).await.map_err(|e| {
            let what = if e.is_connect() {
                Attempt::ConnectFailed
            } else {
                Attempt::Broken
            };
            (what, error_chain(&e))
        })?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| (Attempt::Broken, format!("reply body cut: {e}")))?
            .to_bytes();
        Ok::<_, (Attempt, String)>(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    let budget = Duration::from_millis(sh.cfg.timing.request_timeout_ms);
    // A request to the leader stops waiting once the controllers have named another one for
    // `MOVED_GRACE`: the old leader may be cut off and never answer, and the client learns
    // "outcome unknown" in a failover's time instead of the whole request timeout (issue 12: a
    // leader cut from everyone held writes through the proxy for the whole cut). The grace
    // lets a reachable old leader answer first: after a switchover it refuses with a 503, which
    // is re-sent, so a rolling restart still fails no write.
    let mut view = sh.view.subscribe();
    let leader_moved = async {
        if req.any_read {
            return std::future::pending::<String>().await;
        }
        loop {
            if view.changed().await.is_err() {
                return std::future::pending::<String>().await;
            }
            let moved = view
                .borrow()
                .leader_url()
                .filter(|u| *u != base)
                .map(str::to_string);
            if let Some(url) = moved {
                tokio::time::sleep(MOVED_GRACE).await;
                return url;
            }
        }
    };
    let res = tokio::select! {
        res = tokio::time::timeout(budget, send) => res,
        to = leader_moved => {
            return Tried {
                attempt: Attempt::TimedOut,
                reply: None,
                detail: format!(
                    "the controllers named another leader ({to}) while waiting for {base}"
                ),
            };
        }
    };
    if let Ok(Err((Attempt::ConnectFailed | Attempt::Broken, _))) = &res {
        // Its other pooled connections are likely dead too (see `shared.rs`).
        sh.suspect(base, Instant::now());
    }
    match res {
        Err(_) => Tried {
            attempt: Attempt::TimedOut,
            reply: None,
            detail: format!(
                "no reply within timing.request_timeout_ms ({} ms)",
                budget.as_millis()
            ),
        },
        Ok(Err((attempt, detail))) => Tried {
            attempt,
            reply: None,
            detail,
        },
        Ok(Ok(reply)) => Tried {
            attempt: Attempt::Replied {
                status: reply.status.as_u16(),
                code: reply.error_code(),
            },
            detail: format!("{} answered {}", base, reply.status),
            reply: Some(reply),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How long a request to a leader keeps waiting after the controllers named another one.
const MOVED_GRACE: Duration = Duration::from_millis(500);

/// Forwards `req` and answers the client (see the file comment).
pub async fn forward(sh: &Shared, req: Outgoing) -> Response {
    let arrived = Instant::now();
    let buffer = Duration::from_millis(sh.cfg.timing.failover_buffer_ms);
    let deadline = arrived + buffer;
    let mut rx = sh.view.subscribe();
    let mut hold = None;
    // Re-sends since the view last changed (sets the delay), and `any` targets tried in a row.
    let mut resends = 0u32;
    let mut any_in_row = 0usize;
    let reply = loop {
        let (target, epoch, members, hint) = {
            let v = rx.borrow_and_update();
            let cluster = &sh.cfg.cluster;
            let target = if req.any_read {
                v.any_target(sh.next_any_turn()).map(|base| Target {
                    base: base.to_string(),
                    expect: replica_identity(cluster, None),
                })
            } else {
                v.leader.as_ref().map(|l| Target {
                    base: l.url.clone(),
                    expect: replica_identity(cluster, Some(&l.id)),
                })
            };
            let hint = v.leader.as_ref().map(|l| LeaderHint {
                id: NodeId(l.id.clone()),
                addr: addr_of(&l.url).to_string(),
                epoch: Epoch(v.epoch),
            });
            (target, v.epoch, v.members.len(), hint)
        };
        let tried = match &target {
            None => Tried {
                attempt: Attempt::NoTarget,
                reply: None,
                detail: "no leader is known".into(),
            },
            Some(to) => attempt(sh, to, &req, epoch.max(req.client_min_epoch)).await,
        };
        if let Some(r) = &tried.reply {
            for e in r.epochs() {
                sh.raise_epoch(e);
            }
        }
        match retry::classify(&tried.attempt) {
            Disposition::PassThrough => {
                break tried.reply.unwrap_or_else(|| {
                    error_reply(
                        ErrorCode::Fatal,
                        "internal: a pass-through without a reply",
                        None,
                    )
                })
            }
            Disposition::OutcomeUnknown => {
                let target = target.as_ref().map(|t| t.base.as_str());
                tracing::debug!(target = ?target, detail = %tried.detail, "outcome unknown");
                break error_reply(
                    ErrorCode::OutcomeUnknown,
                    format!(
                        "the request may have reached {} but no whole reply came back ({}); \
                         it was not re-sent",
                        target.unwrap_or("the leader"),
                        tried.detail
                    ),
                    None,
                );
            }
            Disposition::Resend => {}
        }
        let now = Instant::now();
        if now >= deadline {
            break match tried.reply {
                // The replica's own refusal says best why (not_leader, stale_epoch, ...).
                Some(r) => r,
                None => error_reply(
                    ErrorCode::NotLeader,
                    format!(
                        "no leader took the request within timing.failover_buffer_ms \
                         ({} ms): {}; it was not applied",
                        buffer.as_millis(),
                        tried.detail
                    ),
                    hint,
                ),
            };
        }
        if hold.is_none() {
            match sh.try_hold() {
                Some(g) => hold = Some(g),
                None => {
                    break error_reply(
                        ErrorCode::Overloaded,
                        format!(
                            "{} requests are already held waiting for a leader \
                             (limits.buffered_max); this one was not applied",
                            sh.cfg.limits.buffered_max
                        ),
                        None,
                    )
                }
            }
        }
        sh.metrics
            .retries
            .with_label_values(&[retry::resend_reason(&tried.attempt)])
            .inc();
        tracing::debug!(
            target = ?target.as_ref().map(|t| t.base.as_str()),
            detail = %tried.detail,
            "holding to re-send"
        );
        if req.any_read && target.is_some() && any_in_row + 1 < members {
            // Another member may answer at once.
            any_in_row += 1;
            continue;
        }
        any_in_row = 0;
        let remaining = deadline - now;
        let delay = match tried.attempt {
            // Nothing to try until the controllers name a leader.
            Attempt::NoTarget => remaining,
            _ => retry::resend_delay(resends).min(remaining),
        };
        resends += 1;
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_ok() {
                    resends = 0;
                } else {
                    // The view's sender lives as long as the proxy; wait out the delay anyway.
                    tokio::time::sleep(delay).await;
                }
            }
            _ = tokio::time::sleep(delay) => {}
        }
    };
    drop(hold);
    sh.metrics
        .requests
        .with_label_values(&[&reply.result_label()])
        .inc();
    sh.metrics
        .request_seconds
        .observe(arrived.elapsed().as_secs_f64());
    reply.into_response()
}

/// A proxy-made error answered before forwarding (a bad request, a limit), counted like any.
pub fn reject(sh: &Shared, code: ErrorCode, message: impl Into<String>) -> Response {
    let reply = error_reply(code, message, None);
    sh.metrics
        .requests
        .with_label_values(&[&reply.result_label()])
        .inc();
    reply.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderName;

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("host", HeaderValue::from_static("proxy:1"));
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("if-match", HeaderValue::from_static("3.7"));
        h.insert(MIN_EPOCH, HeaderValue::from_static("2"));
        h.insert("baton-version", HeaderValue::from_static("3.7"));
        let out = end_to_end(&h, &[MIN_EPOCH]);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["if-match", "baton-version"]);
    }

    #[test]
    fn credentials_are_forwarded_but_never_shown_in_debug_output() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cr3t-token"),
        );
        h.insert("if-match", HeaderValue::from_static("3.7"));
        let out = Outgoing {
            method: Method::PUT,
            path_and_query: "/v1/kv/k".into(),
            headers: end_to_end(&h, &[MIN_EPOCH]),
            body: Bytes::from_static(b"private value"),
            any_read: false,
            client_min_epoch: 0,
        };
        assert_eq!(
            out.headers.get(header::AUTHORIZATION),
            h.get(header::AUTHORIZATION)
        );
        let shown = format!("{out:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("private value"),
            "{shown}"
        );
    }

    #[test]
    fn replies_reveal_epochs_and_results() {
        let mut r = error_reply(
            ErrorCode::NotLeader,
            "x",
            Some(LeaderHint {
                id: NodeId("r2".into()),
                addr: "h:1".into(),
                epoch: Epoch(7),
            }),
        );
        r.headers
            .insert("baton-epoch", HeaderValue::from_static("6"));
        assert_eq!(r.epochs(), vec![6, 7]);
        assert_eq!(r.result_label(), "not_leader");
        assert_eq!(r.error_code().as_deref(), Some("not_leader"));
        let mut ok = Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(br#"{"version":"9.12","lsn":12,"epoch":9}"#),
        };
        ok.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert_eq!(ok.epochs(), vec![9]);
        assert_eq!(ok.result_label(), "ok");
        let odd = Reply {
            status: StatusCode::BAD_GATEWAY,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"nope"),
        };
        assert_eq!(odd.result_label(), "http_502");
        assert!(odd.epochs().is_empty());
    }

    /// Issue 12: a write waiting on a leader that stops answering (cut off from everyone) is
    /// answered `504 outcome_unknown` once the controllers have named another leader for
    /// `MOVED_GRACE`, not after the whole request timeout (10 s by default).
    #[tokio::test]
    async fn a_request_waiting_on_a_replaced_leader_is_answered_once_another_is_named() {
        use crate::config::ProxyConfig;
        use crate::view::LeaderAnswer;
        // A "leader" that accepts connections and never answers.
        let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = hang.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hang.accept().await {
                held.push(s);
            }
        });
        let cfg = ProxyConfig::parse(
            std::path::Path::new("p.toml"),
            "listen = \"127.0.0.1:0\"\ncontrollers = [\"http://127.0.0.1:1\"]\ninsecure = true\n",
        )
        .expect("config");
        assert!(cfg.timing.request_timeout_ms >= 5_000);
        let sh = Shared::new(cfg, None);
        let answer = |id: &str, addr: String, epoch: u64, rev: u64| LeaderAnswer {
            id: Some(id.into()),
            addr: Some(addr),
            epoch: Some(epoch),
            rev,
            from_active: true,
            state_id: None,
        };
        let now = sh.now_ms();
        sh.view.send_modify(|v| {
            assert!(matches!(
                v.on_leader_answer(now, &answer("r1", addr.clone(), 5, 10)),
                crate::view::Applied::Changed { .. }
            ))
        });
        let req = Outgoing {
            method: Method::PUT,
            path_and_query: "/v1/kv/k".into(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"v"),
            any_read: false,
            client_min_epoch: 0,
        };
        let t0 = Instant::now();
        let replace = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = sh.now_ms();
            sh.view.send_modify(|v| {
                let a = answer("r2", "127.0.0.1:9".into(), 6, 11);
                assert!(matches!(
                    v.on_leader_answer(now, &a),
                    crate::view::Applied::Changed { .. }
                ))
            });
        };
        let (resp, ()) = tokio::join!(forward(&sh, req), replace);
        let waited = t0.elapsed();
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("outcome_unknown"), "{text}");
        assert!(text.contains("named another leader"), "{text}");
        assert!(
            waited >= Duration::from_millis(300) + MOVED_GRACE && waited < Duration::from_secs(3),
            "answered after {waited:?}"
        );
    }
}
