//! The API's accept loop: HTTP/1.1 and HTTP/2 over TCP with named connection limits.
//!
//! `axum::serve` keeps every connection for as long as its peer wants, so idle or half-sent
//! connections once used up a validator's file descriptors and took consensus down with them.
//! Here every connection is counted, in total and per peer address, and is closed when it
//! sends no complete header within [`Limits::header_read_timeout`] or moves no byte for
//! [`Limits::idle_timeout`]. A connection over a cap is closed at once, before any byte is
//! read. The caps are also bounded by the process's file-descriptor limit minus
//! [`FD_RESERVE`], which stays free for consensus storage and peers.

use axum::Router;
use commonware_runtime::telemetry::metrics::{Counter, Gauge, MetricsExt as _, Registered};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use std::{
    collections::HashMap,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most API connections a node holds at once, by default.
pub const CONNECTIONS_MAX: usize = 8_192;
/// Most API connections from one peer address, by default (load generators and gateways on one
/// host open many; an attacker on one address gets no more).
pub const CONNECTIONS_PER_PEER_MAX: usize = 2_048;
/// Longest a client may take to send a request's headers, by default.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection may move no byte before it is closed, by default.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// File descriptors kept free of API connections, for consensus storage, blobs and peers.
pub const FD_RESERVE: usize = 4_096;
/// Most concurrent HTTP/2 streams on one connection.
pub const HTTP2_STREAMS_MAX: u32 = 128;

/// The connection limits of one API listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connections_max: usize,
    pub connections_per_peer_max: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX,
            connections_per_peer_max: CONNECTIONS_PER_PEER_MAX,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

impl Limits {
    /// These limits, with the total cut to what `fd_limit` descriptors allow after the reserve.
    pub fn within_fd_limit(mut self, fd_limit: u64) -> Self {
        let room = (fd_limit as usize).saturating_sub(FD_RESERVE).max(16);
        self.connections_max = self.connections_max.min(room);
        self.connections_per_peer_max = self.connections_per_peer_max.min(self.connections_max);
        self
    }
}

/// Raise the soft file-descriptor limit to the hard one; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1_024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Open connections, in total and by peer address, and what the accept loop counts.
pub struct Connections {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Connections open now (the gauge of `open`).
    open_now: Gauge,
    /// Connections closed at accept because a cap was reached.
    pub refused: Counter,
    /// Connections closed for sending no complete request or no byte in time.
    pub timed_out: Counter,
}

impl Default for Connections {
    /// Counted, not exported.
    fn default() -> Self {
        Self {
            open: Mutex::default(),
            open_now: Registered::detached(Default::default()),
            refused: Registered::detached(Default::default()),
            timed_out: Registered::detached(Default::default()),
        }
    }
}

/// One counted connection; dropping it frees its slot.
struct Slot {
    connections: Arc<Connections>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().expect("connection count");
        open.0 -= 1;
        self.connections.open_now.dec();
        if let Some(n) = open.1.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.peer);
            }
        }
    }
}

impl Connections {
    /// Connections counted and exported through `context` (the node's metrics registry).
    pub fn registered(context: &impl commonware_runtime::Metrics) -> Self {
        Self {
            open: Mutex::default(),
            open_now: context.gauge("connections", "API connections open now."),
            refused: context.counter(
                "connections_refused",
                "API connections closed at accept because a connection cap was reached.",
            ),
            timed_out: context.counter(
                "connections_timed_out",
                "API connections closed for sending no complete request, or no byte, in time.",
            ),
        }
    }

    fn admit(self: &Arc<Self>, peer: IpAddr, limits: &Limits) -> Option<Slot> {
        let mut open = self.open.lock().expect("connection count");
        let from_peer = open.1.get(&peer).copied().unwrap_or(0);
        if open.0 >= limits.connections_max || from_peer >= limits.connections_per_peer_max {
            drop(open);
            self.refused.inc();
            return None;
        }
        open.0 += 1;
        self.open_now.inc();
        *open.1.entry(peer).or_default() += 1;
        Some(Slot {
            connections: self.clone(),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("connection count").0
    }
}

/// A stream that notes when it last moved a byte.
struct Watched<S> {
    inner: S,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Watched<S> {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Something that turns an accepted TCP stream into the stream HTTP runs over (TLS, or none).
pub trait Handshake: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn handshake(
        &self,
        stream: tokio::net::TcpStream,
    ) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Plain TCP.
pub struct Plain;

impl Handshake for Plain {
    type Stream = tokio::net::TcpStream;
    async fn handshake(&self, stream: tokio::net::TcpStream) -> std::io::Result<Self::Stream> {
        Ok(stream)
    }
}

/// TLS through rustls, with a certificate that can be replaced while the node runs
/// ([`Tls::reload`], on SIGHUP). HTTP/2 and HTTP/1.1 are offered by ALPN.
pub struct Tls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: std::sync::RwLock<tokio_rustls::TlsAcceptor>,
}

impl Tls {
    /// The certificate chain and private key in these PEM files.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, String> {
        let acceptor = Self::acceptor(cert, key)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: std::sync::RwLock::new(acceptor),
        })
    }

    /// Read the files again; on any error the certificate in use stays, and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let acceptor = Self::acceptor(&self.cert, &self.key)?;
        *self.current.write().expect("tls acceptor") = acceptor;
        Ok(())
    }

    fn acceptor(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<tokio_rustls::TlsAcceptor, String> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!("no certificate in {}", cert.display()));
        }
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("cannot read the private key {}: {e}", key.display()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

impl Handshake for Tls {
    type Stream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    async fn handshake(&self, stream: tokio::net::TcpStream) -> std::io::Result<Self::Stream> {
        let acceptor = self.current.read().expect("tls acceptor").clone();
        acceptor.accept(stream).await
    }
}

/// Serve `app` on `listener` under `limits` until the listener fails; `connections` counts
/// what is open (for metrics).
pub async fn serve<H: Handshake>(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    handshake: Arc<H>,
    connections: Arc<Connections>,
) {
    let mut warned = Instant::now() - Duration::from_secs(60);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors or a connection reset before accept: wait a little, keep
                // serving. The reserve keeps consensus storage clear of this.
                if warned.elapsed() > Duration::from_secs(10) {
                    tracing::warn!(%error, "API accept failed; retrying");
                    warned = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = connections.admit(peer.ip(), &limits) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let handshake = handshake.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream =
                match tokio::time::timeout(limits.header_read_timeout, handshake.handshake(stream))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        connections.timed_out.inc();
                        return;
                    }
                };
            let epoch = Instant::now();
            let last = Arc::new(AtomicU64::new(0));
            let io = Watched {
                inner: stream,
                last: last.clone(),
                epoch,
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(HTTP2_STREAMS_MAX);
            let service = TowerToHyperService::new(app);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            let tick = (limits.idle_timeout / 4).max(Duration::from_millis(100));
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    _ = tokio::time::sleep(tick), if !closing => {
                        let idle = epoch.elapsed().saturating_sub(Duration::from_millis(
                            last.load(Ordering::Relaxed),
                        ));
                        if idle >= limits.idle_timeout {
                            // Lets a request in flight finish, then closes.
                            connections.timed_out.inc();
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_follow_the_descriptor_limit() {
        let limits = Limits::default().within_fd_limit(1_024);
        assert_eq!(limits.connections_max, 16);
        assert_eq!(limits.connections_per_peer_max, 16);
        let limits = Limits::default().within_fd_limit(1 << 20);
        assert_eq!(limits.connections_max, CONNECTIONS_MAX);
    }

    #[test]
    fn slots_are_counted_per_peer_and_freed() {
        let connections = Arc::new(Connections::default());
        let limits = Limits {
            connections_max: 3,
            connections_per_peer_max: 2,
            ..Limits::default()
        };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = connections.admit(a, &limits).unwrap();
        let _second = connections.admit(a, &limits).unwrap();
        assert!(connections.admit(a, &limits).is_none(), "per-peer cap");
        let _third = connections.admit(b, &limits).unwrap();
        assert!(connections.admit(b, &limits).is_none(), "total cap");
        drop(first);
        assert!(connections.admit(b, &limits).is_some());
        assert_eq!(connections.refused.get(), 2);
    }
}
