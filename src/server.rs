//! HTTP plumbing shared by the edge and admin listeners: binding, the
//! connection limit, hyper's limits in one place, and graceful shutdown.
//!
//! Shutdown order: stop accepting → ask every connection to finish its
//! in-flight requests (`GracefulShutdown`) → wait up to the grace period →
//! return, so the caller can flush the click log.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// Accept backlog for both listeners.
const LISTEN_BACKLOG: i32 = 4096;
/// Pause after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Concurrent h2 streams per connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// h2 streams a client may reset before its connection is closed.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 64;
/// h2 PING interval and answer deadline, so dead peers free their slot.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

pub type Body = Full<Bytes>;

/// The limits every connection of one listener gets.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Open-connection slots; listeners that share a limit share this.
    pub connection_slots: Arc<Semaphore>,
    pub shutdown_grace: Duration,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The connection came in over TLS.
    pub tls: bool,
}

/// One accepted connection, ready to be served over any transport.
struct Conn {
    name: &'static str,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    first_request: Arc<AtomicBool>,
    /// The first request must have started by then.
    deadline: tokio::time::Instant,
}

impl Conn {
    async fn run<I, S>(self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                Request<Incoming>,
                Response = Response<Body>,
                Error = Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = self.watcher.watch(conn);
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = tokio::time::sleep_until(self.deadline) => {
                if self.first_request.load(Ordering::Relaxed) {
                    conn.as_mut().await
                } else {
                    telemetry::connection_timed_out(self.name);
                    Ok(())
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(listener = self.name, error = %e, "connection ended with an error");
        }
    }
}

/// Binds a listener with `SO_REUSEADDR` (fast restarts) and a deep backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

fn builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(H2_KEEP_ALIVE);
    b
}

/// Serves `listener` until `shutdown`, then drains connections gracefully.
/// `handler` is called per request with the peer address.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let builder = Arc::new(builder(&limits));
    let graceful = GracefulShutdown::new();
    let slots = Arc::clone(&limits.connection_slots);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the limit: close at once rather than queue without bound.
            telemetry::connection_rejected(name);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let peer = Peer {
            addr: peer,
            tls: tls.is_some(),
        };
        // hyper's version sniff (h1 or the h2 preface) has no deadline of its
        // own, so a client that sends nothing would hold its slot forever.
        // The TLS handshake counts against the same deadline.
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let first_request = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&first_request);
        let service = hyper::service::service_fn(move |req| {
            seen.store(true, Ordering::Relaxed);
            let fut = handler(req, peer);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = Conn {
            name,
            builder: Arc::clone(&builder),
            watcher: graceful.watcher(),
            first_request,
            deadline,
        };
        let tls = tls.clone();
        telemetry::connection_opened(name);
        tokio::spawn(async move {
            match tls {
                None => conn.run(stream, service).await,
                Some(acceptor) => {
                    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => conn.run(stream, service).await,
                        Ok(Err(e)) => {
                            telemetry::tls_handshake_failed();
                            tracing::debug!(listener = name, error = %e, "tls handshake failed");
                        }
                        Err(_) => {
                            telemetry::tls_handshake_failed();
                            telemetry::connection_timed_out(name);
                        }
                    }
                }
            }
            telemetry::connection_closed(name);
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {
            tracing::info!(listener = name, "all connections finished");
        }
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(listener = name, "grace period over; closing remaining connections");
        }
    }
}
