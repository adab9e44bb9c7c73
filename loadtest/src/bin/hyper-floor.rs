//! The floor under any hyper + tokio redirect server: every request gets the
//! same static 302 (`Location`, `Set-Cookie`, `Cache-Control`), with no
//! lookup, no click id and no click recorded. `loadtest/vs-nginx --floor`
//! runs it beside nginx and clickedge, so the ratios show how much of the
//! gap to nginx is the HTTP stack and the kernel, and how much is
//! clickedge's own work.
//!
//!     hyper-floor 127.0.0.1:8099

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, LOCATION, SET_COOKIE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

static DEST: HeaderValue = HeaderValue::from_static(
    "https://shop.example/p/000001?utm_source=ce&cid=06h0aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
);
static COOKIE: HeaderValue = HeaderValue::from_static(
    "ce_click=06h0aaaaaaaaaaaaaaaaaaaaaaaaaaaa; Max-Age=604800; Path=/; HttpOnly; SameSite=Lax",
);
static NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");

async fn answer(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(LOCATION, DEST.clone());
    h.insert(SET_COOKIE, COOKIE.clone());
    h.insert(CACHE_CONTROL, NO_STORE.clone());
    Ok(resp)
}

fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into())
        .parse()?;
    // As `clickedge serve` with `edge.workers = 1`.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait, as a server would.
                    eprintln!("hyper-floor: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .keep_alive(true);
                let _ = b
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                    .await;
            });
        }
    })
}
