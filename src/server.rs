//! HTTP plumbing shared by the edge and admin listeners: binding, the
//! connection limit, hyper's limits in one place, and graceful shutdown.
//!
//! Every connection must start its first request (TLS handshake included)
//! within the header timeout, and is closed once idle for the idle timeout:
//! h1 and h2 alike. Shutdown order: stop accepting → ask every connection to finish
//! its in-flight requests → wait up to the grace period, then drop what is
//! left → return, so the caller can flush the click log.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::telemetry;

/// Accept backlog for both listeners.
const LISTEN_BACKLOG: i32 = 4096;
/// Pause after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// h2 PING interval and answer deadline, so dead peers free their slot.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

pub type Body = Full<Bytes>;

/// The limits every connection of one listener gets.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Nothing in flight this long: the connection is closed.
    pub idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    /// h2 streams a client may reset before they are answered.
    pub h2_max_reset_streams: usize,
    /// h2 streams the server may reset for the client's errors.
    pub h2_max_local_error_reset_streams: usize,
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

/// Requests in flight on one connection and when it was last busy, so an
/// idle connection is closed whatever its protocol (hyper does it for idle
/// h1 keep-alive, but an h2 client could otherwise sit on a slot forever).
struct Activity {
    epoch: tokio::time::Instant,
    started: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds after `epoch` when a request last began or ended.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: tokio::time::Instant::now(),
            started: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long nothing has been in flight (zero while a request is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Marks one request in flight until dropped (answered, or abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> InFlight {
        activity.started.store(true, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body that keeps its request in flight until hyper is done
/// with it: a streamed answer (an export) is not idle while it is sent.
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> hyper::body::Body for Tracked<B>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One accepted connection, ready to be served over any transport.
struct Conn {
    name: &'static str,
    builder: Arc<auto::Builder<TokioExecutor>>,
    activity: Arc<Activity>,
    /// The first request must have started by then.
    deadline: tokio::time::Instant,
    /// Idle this long (no request in flight) and the connection is closed
    /// (`idle_timeout_ms`, apart from the first-request deadline).
    idle: Duration,
    /// Shutdown began: finish in-flight requests, accept no new ones.
    drain: CancellationToken,
    /// The grace period is over: drop the connection.
    stop: CancellationToken,
}

impl Conn {
    async fn run<I, S, RB>(self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        RB: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        RB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S: hyper::service::Service<Request<Incoming>, Response = Response<RB>, Error = Infallible>
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let mut conn = std::pin::pin!(conn);
        let mut draining = false;
        let mut closing_idle = false;
        let first_request = tokio::time::sleep_until(self.deadline);
        let mut first_request = std::pin::pin!(first_request);
        let mut first_request_due = true;
        let start = tokio::time::Instant::now() + self.idle;
        let mut check = tokio::time::interval_at(start, self.idle);
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        if is_h2_reset_flood(&*e) {
                            telemetry::h2_reset_limit(self.name);
                        }
                        tracing::debug!(listener = self.name, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.drain.cancelled(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = self.stop.cancelled() => return,
                _ = &mut first_request, if first_request_due => {
                    first_request_due = false;
                    if !self.activity.started.load(Ordering::Relaxed) {
                        // hyper's version sniff has no deadline of its own.
                        telemetry::connection_timed_out(self.name);
                        return;
                    }
                }
                _ = check.tick() => {
                    if !self.activity.started.load(Ordering::Relaxed) {
                        // Not started yet: the first-request deadline rules.
                        continue;
                    }
                    let idle = self.activity.idle_for() >= self.idle;
                    if idle && closing_idle {
                        // Told to go away a period ago and still here (an h2
                        // peer that never acknowledges the GOAWAY): drop it.
                        return;
                    }
                    if idle && !draining {
                        telemetry::connection_timed_out(self.name);
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                        closing_idle = true;
                    }
                }
            }
        }
    }
}

/// The connection was closed because the client reset too many h2 streams
/// or made the server reset too many (h2 sends GOAWAY ENHANCE_YOUR_CALM).
fn is_h2_reset_flood(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_go_away()
                && h2.is_library()
                && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        cur = err.source();
    }
    false
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
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(H2_KEEP_ALIVE);
    b
}

/// Serves `listener` until `shutdown`, then drains connections gracefully.
/// `handler` is called per request with the peer address.
pub async fn serve<H, F, RB>(
    name: &'static str,
    listener: TcpListener,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<RB>> + Send + 'static,
    RB: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    RB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(builder(&limits));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
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
        // The first request (TLS handshake included) must start within the
        // header timeout; a connection idle for the idle timeout is closed.
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let activity = Activity::new();
        let tracked = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |req| {
            let in_flight = InFlight::begin(&tracked);
            let fut = handler(req, peer);
            async move {
                let resp = fut.await;
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    body,
                    _in_flight: in_flight,
                }))
            }
        });
        let conn = Conn {
            name,
            builder: Arc::clone(&builder),
            activity,
            deadline,
            idle: limits.idle_timeout,
            drain: shutdown.clone(),
            stop: stop.clone(),
        };
        let tls = tls.clone();
        telemetry::connection_opened(name);
        connections.spawn(async move {
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
    connections.close();
    tokio::select! {
        _ = connections.wait() => {
            tracing::info!(listener = name, "all connections finished");
        }
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(listener = name, "grace period over; closing remaining connections");
            stop.cancel();
            connections.wait().await;
        }
    }
}
