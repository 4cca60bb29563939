//! Reading a request body under a size limit so that the client sees the answer: a body over
//! the limit is read on and thrown away (within bounds) before the 413 goes out, because
//! clients such as Python's `urllib` send the whole body before they read anything, and a
//! server that closes with unread bytes in its socket makes the kernel answer with a reset
//! that destroys the 413 on its way.

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use std::time::Duration;

/// At most this many bytes of an oversized body are read and thrown away before answering.
pub const DRAIN_MAX_BYTES: u64 = 64 << 20;
/// At most this long is spent throwing an oversized body away before answering.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Over the limit (`announced`: the Content-Length, when the client sent one). The rest
    /// was drained as far as the bounds allow; answer 413 with `Connection: close`.
    TooLarge { announced: Option<u64> },
    /// The body broke off or was malformed (the message says how).
    Read(String),
}

/// Reads `body` whole if it holds at most `max` bytes (`content_length`: the request's
/// Content-Length header, if any, which lets an oversized body be refused before any of it is
/// buffered). An oversized body is drained, never buffered.
pub async fn read_limited(
    body: Body,
    content_length: Option<u64>,
    max: usize,
) -> Result<Bytes, BodyError> {
    if let Some(len) = content_length.filter(|l| *l > max as u64) {
        drain(body, 0).await;
        return Err(BodyError::TooLarge {
            announced: Some(len),
        });
    }
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                drain(body, buf.len() as u64 + data.len() as u64).await;
                return Err(BodyError::TooLarge { announced: None });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads and discards the rest of `body`, `already` bytes having been read, until its end,
/// [`DRAIN_MAX_BYTES`] in all, [`DRAIN_MAX_TIME`], or an error.
async fn drain(body: Body, already: u64) {
    discard(body, already, DRAIN_MAX_BYTES, DRAIN_MAX_TIME).await
}

/// Reads and discards `body` until its end, `max_bytes` in all (`already` counted), `max_time`,
/// or an error: a request refused before its body was read (401/403, 413) is answered after
/// this, with `Connection: close`, so that the client reads the answer instead of a reset.
pub async fn discard(mut body: Body, already: u64, max_bytes: u64, max_time: Duration) {
    let mut seen = already;
    let _ = tokio::time::timeout(max_time, async {
        while seen < max_bytes {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        seen += d.len() as u64;
                    }
                }
                _ => break,
            }
        }
    })
    .await;
}

/// The request's Content-Length, if it sent a valid one.
pub fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
}

/// Marks a refusal sent before the whole body was read: the connection closes after it.
pub fn closing(mut r: axum::response::Response) -> axum::response::Response {
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}
