//! Who may do what on a Baton server (DESIGN §9): bearer tokens with a role (`read` < `write` <
//! `admin`), stored as SHA-256 hashes in the config and compared in constant time; node
//! identities from the connection's client certificate ([`Peer::is`]); one middleware that holds
//! every request to what its route needs, answering 401 without credentials and 403 with the
//! wrong ones, counting every refusal and logging it once per peer per minute.
//!
//! A server in insecure mode (`insecure = true`, no TLS) has an open [`Auth`]: nothing is
//! checked, as before security existed.

use crate::tls::Peer;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// What a token lets its holder do. Each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GETs: reading keys, status, views, history, metrics.
    Read,
    /// Also PUT and DELETE of keys.
    Write,
    /// Also the controller's operations (switchover, failover, pause, resume, init) and, in
    /// test builds, fault points.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// One `[[tokens]]` entry of a server's config.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, for the logs (never the token itself).
    pub name: String,
    pub role: Role,
    /// The token's SHA-256, 64 hex digits (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
}

/// The SHA-256 of `token`, in hex: what a config stores.
pub fn hash_token(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// A new random token: 32 bytes from the system's CSPRNG, hex.
pub fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source works");
    hex(&b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What a route needs.
#[derive(Clone, Debug)]
pub enum Need {
    /// Anyone (health checks).
    Open,
    /// A token with at least this role, or a node certificate carrying one of these names.
    Role(Role, Vec<String>),
    /// A node certificate carrying one of these names; tokens do not help.
    Node(Vec<String>),
}

struct Token {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The credentials a server accepts, and its refusal counter.
pub struct Auth {
    /// `false`: insecure mode, nothing checked.
    on: bool,
    tokens: Vec<Token>,
    refused: IntCounterVec,
    logged: Mutex<HashMap<IpAddr, Instant>>,
}

/// How often one peer's refusals are logged (the counter counts every one).
const LOG_EVERY: Duration = Duration::from_secs(60);
/// How many addresses the once-a-minute log remembers (beyond, refusals are only counted).
const LOG_PEERS_MAX: usize = 10_000;

impl Auth {
    /// Registers `baton_{component}_auth_refused_total{reason}` in `registry`. `on = false` is
    /// insecure mode. A token entry that cannot be used is an error naming its index and field.
    pub fn new(
        on: bool,
        tokens: &[TokenConfig],
        registry: &Registry,
        component: &str,
    ) -> Result<Arc<Auth>, (String, String)> {
        let mut out = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let hash = unhex(&t.sha256.to_ascii_lowercase()).ok_or_else(|| {
                (
                    format!("tokens[{i}].sha256"),
                    "must be the token's SHA-256 as 64 hex digits".to_string(),
                )
            })?;
            if t.name.is_empty() {
                return Err((format!("tokens[{i}].name"), "is empty".into()));
            }
            out.push(Token {
                name: t.name.clone(),
                role: t.role,
                hash,
            });
        }
        let refused = IntCounterVec::new(
            Opts::new(
                format!("baton_{component}_auth_refused_total"),
                "Requests refused for missing or wrong credentials, by reason",
            ),
            &["reason"],
        )
        .expect("valid counter");
        let _ = registry.register(Box::new(refused.clone()));
        Ok(Arc::new(Auth {
            on,
            tokens: out,
            refused,
            logged: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether credentials are checked at all (not insecure mode).
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The role of the bearer token in `headers`, if it is one of ours.
    fn token_role(&self, headers: &HeaderMap) -> Result<Option<(Role, &str)>, ()> {
        let Some(v) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let v = v.to_str().map_err(|_| ())?;
        let basic;
        let t = match v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            Some(t) => t.trim(),
            None => {
                // A browser (the status page) sends a token as the password of HTTP Basic
                // credentials; the user name is ignored.
                basic = basic_password(v).ok_or(())?;
                basic.as_str()
            }
        };
        let h = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        // Every stored hash is compared, whichever matches: the time taken says nothing.
        let mut found = None;
        for tok in &self.tokens {
            if bool::from(tok.hash.ct_eq(h.as_ref())) {
                found = Some((tok.role, tok.name.as_str()));
            }
        }
        found.map(Some).ok_or(())
    }

    /// Holds one request to `need`: `Ok` or the refusal to answer with (counted and logged).
    pub fn check(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
        need: &Need,
        what: &dyn std::fmt::Display,
    ) -> Result<(), Refused> {
        if !self.on {
            return Ok(());
        }
        let r = match need {
            Need::Open => return Ok(()),
            Need::Node(names) => {
                if names.iter().any(|n| peer.is(n)) {
                    return Ok(());
                }
                if peer.cert.is_none() && headers.get(header::AUTHORIZATION).is_none() {
                    Refused::unauthorized(format!("{what} needs a node certificate"))
                } else {
                    Refused::forbidden(
                        "wrong_identity",
                        format!("{what} is only for {}", names.join(" or ")),
                    )
                }
            }
            Need::Role(role, names) => {
                if names.iter().any(|n| peer.is(n)) {
                    return Ok(());
                }
                match self.token_role(headers) {
                    Ok(Some((have, _))) if have >= *role => return Ok(()),
                    Ok(Some((have, name))) => Refused::forbidden(
                        "wrong_role",
                        format!(
                            "{what} needs the {} role; token {name:?} has {}",
                            role.as_str(),
                            have.as_str()
                        ),
                    ),
                    Ok(None) => Refused::unauthorized(format!(
                        "{what} needs a bearer token with the {} role (Authorization: Bearer TOKEN)",
                        role.as_str()
                    )),
                    Err(()) => Refused {
                        status: StatusCode::UNAUTHORIZED,
                        reason: "bad_token",
                        message: "the bearer token is not one this server knows".into(),
                    },
                }
            }
        };
        self.note(peer, &r, what);
        Err(r)
    }

    /// Counts a refusal made elsewhere (a handler's own identity check) and logs it as
    /// [`Auth::check`] does.
    pub fn note(&self, peer: &Peer, r: &Refused, what: &dyn std::fmt::Display) {
        self.refused.with_label_values(&[r.reason]).inc();
        let ip = peer.addr.ip();
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() >= LOG_PEERS_MAX && !logged.contains_key(&ip) {
            logged.retain(|_, t| now.duration_since(*t) < LOG_EVERY);
            if logged.len() >= LOG_PEERS_MAX {
                // Refused by more addresses than we remember within a minute: count only, and
                // say so once a minute (under the entry of the unspecified address).
                let key = IpAddr::from([0u8; 16]);
                if logged
                    .get(&key)
                    .is_none_or(|t| now.duration_since(*t) >= LOG_EVERY)
                {
                    logged.insert(key, now);
                    tracing::warn!(
                        peers = LOG_PEERS_MAX,
                        reason = r.reason,
                        "refusing requests from more addresses than are logged one by one; \
                         see baton_*_auth_refused_total"
                    );
                }
                return;
            }
        }
        let due = logged
            .get(&ip)
            .is_none_or(|t| now.duration_since(*t) >= LOG_EVERY);
        if due {
            logged.insert(ip, now);
            tracing::warn!(peer = %peer.addr, reason = r.reason, status = r.status.as_u16(), what = %what,
                message = %r.message,
                "refused a request (further refusals from this address in the next minute are only counted)");
        }
    }
}

/// The password of `Basic BASE64(user:password)` credentials.
fn basic_password(v: &str) -> Option<String> {
    use base64::Engine;
    let b = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    s.split_once(':').map(|(_, p)| p.to_string())
}

/// A refused request: 401 (no or unknown credentials) or 403 (the wrong ones).
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: StatusCode,
    /// The metric label: `no_credentials`, `bad_token`, `wrong_role`, `wrong_identity`.
    pub reason: &'static str,
    pub message: String,
}

impl Refused {
    pub fn unauthorized(message: String) -> Refused {
        Refused {
            status: StatusCode::UNAUTHORIZED,
            reason: "no_credentials",
            message,
        }
    }
    pub fn forbidden(reason: &'static str, message: String) -> Refused {
        Refused {
            status: StatusCode::FORBIDDEN,
            reason,
            message,
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let error = if self.status == StatusCode::UNAUTHORIZED {
            "unauthorized"
        } else {
            "forbidden"
        };
        let body = serde_json::json!({ "error": error, "message": self.message }).to_string();
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"baton\""),
            );
            // A browser asks its user for credentials on a Basic challenge only (the token
            // as the password).
            r.headers_mut().append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"baton\", charset=\"UTF-8\""),
            );
        }
        r
    }
}

/// `METHOD /path`, written out only when a refusal names it.
struct Described<'a>(&'a axum::http::Method, &'a str);

impl std::fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// A server's rule: what each request needs, from its method and path.
pub type Policy = Arc<dyn Fn(&axum::http::Method, &str) -> Need + Send + Sync>;

/// The middleware every secured router runs first (`axum::middleware::from_fn_with_state`
/// with `(auth, policy)`): checks the request against the policy with the connection's
/// [`Peer`] (which the accept loop inserts; a request without one is refused).
pub async fn guard(
    axum::extract::State((auth, policy)): axum::extract::State<(Arc<Auth>, Policy)>,
    req: Request,
    next: Next,
) -> Response {
    if !auth.is_on() {
        return next.run(req).await;
    }
    let need = policy(req.method(), req.uri().path());
    let Some(peer) = req.extensions().get::<Peer>().cloned() else {
        return Refused::unauthorized("no connection identity".into()).into_response();
    };
    // Rendered only into a refusal: an admitted request formats nothing.
    let what = Described(req.method(), req.uri().path());
    match auth.check(&peer, req.headers(), &need, &what) {
        Ok(()) => next.run(req).await,
        Err(r) => {
            // A stranger's body is not read, but some of it is thrown away first (bounded
            // tighter than an authorised one's), so that a client that sends it all before
            // reading gets the 401/403 rather than a reset; then the connection closes.
            let unread = req.headers().contains_key(header::CONTENT_LENGTH)
                || req.headers().contains_key(header::TRANSFER_ENCODING);
            if unread {
                crate::body::discard(req.into_body(), 0, REFUSED_DRAIN_BYTES, REFUSED_DRAIN_TIME)
                    .await;
                crate::body::closing(r.into_response())
            } else {
                r.into_response()
            }
        }
    }
}

/// How much of a refused request's body is thrown away before the answer, at most.
const REFUSED_DRAIN_BYTES: u64 = 1 << 20;
const REFUSED_DRAIN_TIME: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn auth() -> Arc<Auth> {
        let tokens = [
            TokenConfig {
                name: "reader".into(),
                role: Role::Read,
                sha256: hash_token("r-token"),
            },
            TokenConfig {
                name: "admin".into(),
                role: Role::Admin,
                sha256: hash_token("a-token"),
            },
        ];
        Auth::new(true, &tokens, &Registry::new(), "test").expect("valid tokens")
    }

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(v).expect("header"),
        );
        h
    }

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn a_token_is_taken_as_bearer_or_as_a_basic_password() {
        let a = auth();
        let peer = Peer {
            addr: "127.0.0.1:1".parse().expect("addr"),
            cert: None,
        };
        let read = Need::Role(Role::Read, vec![]);
        let admin = Need::Role(Role::Admin, vec![]);
        let ok = |h: &HeaderMap, n: &Need| a.check(&peer, h, n, &"GET /ui").is_ok();
        assert!(ok(&with("Bearer r-token"), &read));
        assert!(ok(&with(&basic("anyone:r-token")), &read));
        assert!(ok(&with(&basic(":a-token")), &admin));
        // The role still counts, and a wrong or malformed password is refused.
        assert!(!ok(&with(&basic("baton:r-token")), &admin));
        assert!(!ok(&with(&basic("baton:nope")), &read));
        assert!(!ok(&with(&basic("no-colon")), &read));
        assert!(!ok(&with("Basic !!!"), &read));
        // A 401 challenges for both schemes, so a browser asks for credentials.
        let r = a
            .check(&peer, &HeaderMap::new(), &read, &"GET /ui")
            .expect_err("refused")
            .into_response();
        let schemes: Vec<_> = r
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(' ').next().map(String::from))
            .collect();
        assert_eq!(schemes, ["Bearer", "Basic"]);
    }
}
