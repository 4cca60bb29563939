//! The client half of TLS for Baton's own HTTP clients (heartbeats, replication streams, the
//! proxy, `batonctl`, the tests): dialling `http://` or `https://` with the process's [`Tls`]
//! and the identity the far end must carry, as one stream type, and a hyper connector around
//! it. A client with TLS configured refuses `http://` URLs, and one without refuses `https://`
//! ones, each with an error naming the URL: nothing falls back to plain text quietly.

use crate::tls::Tls;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection to a Baton node: plain TCP (insecure mode) or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What a client uses to reach nodes: the process's TLS (`None`: insecure, plain HTTP) and the
/// identity name the server must carry (`""`: any certificate of the CA).
#[derive(Clone, Debug)]
pub struct Dialer {
    pub tls: Option<Arc<Tls>>,
    pub expect: String,
    /// Also speak plain HTTP to `http://` URLs while TLS is configured (the tests' client,
    /// which talks to etcd's plain port too); Baton's own nodes never set it.
    pub allow_plain: bool,
}

impl Dialer {
    pub fn new(tls: Option<Arc<Tls>>, expect: impl Into<String>) -> Dialer {
        Dialer {
            tls,
            expect: expect.into(),
            allow_plain: false,
        }
    }

    /// See [`Dialer::allow_plain`].
    pub fn allowing_plain(mut self) -> Dialer {
        self.allow_plain = true;
        self
    }

    /// The URL scheme this dialer speaks.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Wraps a connected TCP stream to `host`, over TLS when this dialer has it.
    pub async fn wrap(&self, tcp: TcpStream, host: &str) -> Result<Stream, String> {
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        self.wrap_tls(tls, tcp, host).await
    }

    async fn wrap_tls(&self, tls: &Tls, tcp: TcpStream, host: &str) -> Result<Stream, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a host name TLS can check: {e}"))?;
        let c = tokio_rustls::TlsConnector::from(tls.client_config(&self.expect));
        let s = c
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
        Ok(Stream::Tls(Box::new(s)))
    }

    /// Connects to `addr` (`host:port`) within `timeout`, TLS included.
    pub async fn dial(&self, addr: &str, timeout: Duration) -> Result<Stream, String> {
        let host = host_of(addr);
        let fut = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            self.wrap(tcp, host).await
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
    }
}

/// `https://` with TLS configured, `http://` without; anything else is an error naming the URL.
pub fn check_scheme(tls: bool, url: &str) -> Result<(), String> {
    match (tls, url.split_once("://").map(|(s, _)| s)) {
        (true, Some("https")) | (false, Some("http")) => Ok(()),
        (true, _) => Err(format!(
            "{url}: TLS is configured, so this must be an https:// URL (plain HTTP is used only \
             with `insecure = true`)"
        )),
        (false, _) => Err(format!(
            "{url}: without [tls] this must be an http:// URL (an https:// one needs [tls])"
        )),
    }
}

/// The host part of `host:port` (brackets kept off an IPv6 address).
pub fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// [`Stream`] as hyper's legacy client wants it.
pub struct Conn(TokioIo<Stream>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// A hyper legacy-client connector over [`Dialer`]: DNS and TCP by hyper's own
/// [`HttpConnector`], then TLS when the URL is `https://`, both within the connect timeout.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    dialer: Dialer,
    /// Bounds the TLS handshake as the connect timeout bounds the TCP connect: a request
    /// that never got a session was never sent, so the caller may safely send it elsewhere.
    handshake_timeout: Option<Duration>,
}

impl Connector {
    /// `connect_timeout` bounds the TCP connect (the TLS handshake is bounded by the request's
    /// own timeout).
    pub fn new(dialer: Dialer, connect_timeout: Option<Duration>) -> Connector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(connect_timeout);
        Connector {
            http,
            dialer,
            handshake_timeout: connect_timeout,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.dialer.clone();
        let plain = dialer.allow_plain && uri.scheme_str() == Some("http");
        let checked = if plain {
            Ok(())
        } else {
            check_scheme(dialer.tls.is_some(), &uri.to_string())
        };
        let host = uri.host().unwrap_or_default().to_string();
        let connecting = tower::Service::<Uri>::call(&mut self.http, uri);
        let handshake_timeout = self.handshake_timeout;
        Box::pin(async move {
            checked?;
            let tcp = connecting.await?.into_inner();
            let s = match (&dialer.tls, plain) {
                (Some(tls), false) => {
                    let shake = dialer.wrap_tls(tls, tcp, &host);
                    match handshake_timeout {
                        Some(t) => tokio::time::timeout(t, shake)
                            .await
                            .map_err(|_| format!("TLS handshake with {host} timed out"))??,
                        None => shake.await?,
                    }
                }
                _ => {
                    let _ = tcp.set_nodelay(true);
                    Stream::Plain(tcp)
                }
            };
            Ok(Conn(TokioIo::new(s)))
        })
    }
}
