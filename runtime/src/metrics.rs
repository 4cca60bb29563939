//! Prometheus plumbing shared by the servers: the text exposition of a registry, the `/metrics`
//! response around it, the connection metrics the accept loop keeps, and what every server
//! exports about itself (build info, `process_*`). Which metrics a
//! server has, and when its gauges are refreshed, stays with the server.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The revision the binaries were built from: `BATON_REVISION` at build time (the image
/// builds and CI set it to the git commit), else "unknown".
pub const REVISION: &str = match option_env!("BATON_REVISION") {
    Some(r) => r,
    None => "unknown",
};

/// Registers what every server exports besides its own metrics: `baton_build_info{component,
/// version, revision}` (always 1) and the standard `process_*` series of this process (CPU
/// seconds, resident memory, open and maximum file descriptors, start time).
pub fn register_process(registry: &Registry, component: &str) {
    let info = IntGaugeVec::new(
        Opts::new(
            "baton_build_info",
            "Always 1; the labels say which build runs",
        ),
        &["component", "version", "revision"],
    )
    .expect("valid gauge");
    info.with_label_values(&[component, env!("CARGO_PKG_VERSION"), REVISION])
        .set(1);
    registry
        .register(Box::new(info))
        .expect("metric registers once");
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("metric registers once");
}

/// The metric families `registry` exports, each counter without its `_total`, or the name of
/// the first two that clash under that rule (OpenMetrics: a gauge `X` beside a counter
/// `X_total` is one family). Only families with at least one series are seen. For tests.
pub fn families(registry: &Registry) -> Result<std::collections::BTreeSet<String>, String> {
    let mut seen = std::collections::BTreeSet::new();
    for f in registry.gather() {
        let name = f.name();
        let family = name.strip_suffix("_total").unwrap_or(name).to_string();
        if !seen.insert(family.clone()) {
            return Err(format!("two metrics are family {family}"));
        }
    }
    Ok(seen)
}

/// The text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(%e, "cannot encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// A `/metrics` answer: `text` with the Prometheus content type.
pub fn response(text: String) -> Response {
    let mut r = text.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

/// What the accept loop counts (`server::serve`): open connections, and connections refused
/// over the cap. Cheap to clone (handles onto the registered metrics).
#[derive(Clone)]
pub struct ConnMetrics {
    /// Connections open right now.
    pub open: IntGauge,
    /// Connections answered 503 `overloaded` and closed because `connections_max` were open.
    pub rejected: IntCounter,
    /// Connections closed because their TLS handshake failed or did not finish in time (plain
    /// HTTP on a TLS port, a certificate from another CA, a silent client).
    pub tls_failed: IntCounter,
}

impl ConnMetrics {
    /// Registers `baton_{component}_connections`,
    /// `baton_{component}_connections_rejected_total` and
    /// `baton_{component}_tls_handshakes_failed_total` in `registry`.
    pub fn register(registry: &Registry, component: &str) -> ConnMetrics {
        let open = IntGauge::new(
            format!("baton_{component}_connections"),
            "Open client connections",
        )
        .expect("valid gauge");
        let rejected = IntCounter::new(
            format!("baton_{component}_connections_rejected_total"),
            "Connections refused over limits.connections_max",
        )
        .expect("valid counter");
        let tls_failed = IntCounter::new(
            format!("baton_{component}_tls_handshakes_failed_total"),
            "Connections closed because their TLS handshake failed or timed out",
        )
        .expect("valid counter");
        registry
            .register(Box::new(tls_failed.clone()))
            .expect("metric registers once");
        registry
            .register(Box::new(open.clone()))
            .expect("metric registers once");
        registry
            .register(Box::new(rejected.clone()))
            .expect("metric registers once");
        ConnMetrics {
            open,
            rejected,
            tls_failed,
        }
    }
}
