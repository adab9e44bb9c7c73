//! The HTTPS edge: `[edge.tls]` with a generated self-signed certificate,
//! h1 and h2 over ALPN, `Secure` cookies, certificate rotation without
//! dropping open connections, and bad certificates refused at start.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{client, Api, Server, BROWSER_UA};
use http_body_util::Empty;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

struct Pem {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
}

fn self_signed() -> Pem {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    Pem {
        cert: ck.cert.pem(),
        key: ck.key_pair.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

fn write_pair(dir: &Path, pem: &Pem) {
    // Key first, then the certificate: the reload fires on the newer one.
    std::fs::write(dir.join("key.pem"), &pem.key).unwrap();
    std::fs::write(dir.join("cert.pem"), &pem.cert).unwrap();
}

fn start_tls(dir: &Path, header_timeout_ms: &str) -> Server {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    Server::start_with(&[
        ("CLICKEDGE_EDGE__TLS__LISTEN", "127.0.0.1:0"),
        ("CLICKEDGE_EDGE__TLS__CERT", cert.to_str().unwrap()),
        ("CLICKEDGE_EDGE__TLS__KEY", key.to_str().unwrap()),
        ("CLICKEDGE_EDGE__TLS__RELOAD_INTERVAL_MS", "100"),
        ("CLICKEDGE_EDGE__HEADER_READ_TIMEOUT_MS", header_timeout_ms),
    ])
}

fn connector(trusted: &CertificateDer<'static>, alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn handshake(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector(trusted, alpn).connect(name, tcp).await
}

/// One HTTP/1.1 request on an open TLS connection; returns the response head.
async fn get_h1(tls: &mut TlsStream<TcpStream>, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {BROWSER_UA}\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).to_lowercase()
}

/// A server with a TLS listener on a fresh self-signed pair in `dir`, and
/// one link, `/tls`.
struct Fixture {
    dir: tempfile::TempDir,
    pem: Pem,
    server: Server,
    tls_addr: SocketAddr,
}

impl Fixture {
    /// Idle connections are kept for a minute, so that tests holding one
    /// open across slow steps are not timed out by the server.
    async fn start() -> Fixture {
        Fixture::start_with_header_timeout("60000").await
    }

    async fn start_with_header_timeout(ms: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pem = self_signed();
        write_pair(dir.path(), &pem);
        let server = start_tls(dir.path(), ms);
        let tls_addr = server.edge_tls.expect("the TLS listener is announced");
        let api = Api::new(&server, server.token("acme"));
        api.link(json!({"code": "tls", "destination": "https://shop.example/p"}))
            .await;
        Fixture {
            dir,
            pem,
            server,
            tls_addr,
        }
    }
}

#[tokio::test]
async fn https_answers_h1_and_h2_redirects_with_a_secure_cookie() {
    // `_dir` keeps the certificate files alive for the whole test.
    let Fixture {
        dir: _dir,
        pem,
        server,
        tls_addr,
    } = Fixture::start().await;

    let mut h1 = handshake(tls_addr, &pem.der, b"http/1.1").await.unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let head = get_h1(&mut h1, "/tls?sub=a").await;
    assert!(head.starts_with("http/1.1 302"), "{head}");
    assert!(
        head.contains("location: https://shop.example/p?sub=a"),
        "{head}"
    );
    let cookie = head.lines().find(|l| l.starts_with("set-cookie:")).unwrap();
    assert!(cookie.contains("; secure"), "{cookie}");

    let h2 = handshake(tls_addr, &pem.der, b"h2").await.unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/tls")
        .header("user-agent", BROWSER_UA)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 302);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");

    // The plain listener does not mark its cookies Secure.
    let plain = client()
        .get(server.edge_url("/tls"))
        .header("user-agent", BROWSER_UA)
        .send()
        .await
        .unwrap();
    let cookie = plain.headers()["set-cookie"].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
    server.stop();
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_open_connections_stay() {
    let Fixture {
        dir,
        pem: old,
        server,
        tls_addr,
    } = Fixture::start().await;

    let mut open = handshake(tls_addr, &old.der, b"http/1.1").await.unwrap();
    assert!(get_h1(&mut open, "/tls").await.starts_with("http/1.1 302"));

    let new = self_signed();
    // A distinct modification time even on coarse-grained file systems.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_pair(dir.path(), &new);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Trusting only the new certificate: succeeds once it is served.
        if let Ok(mut fresh) = handshake(tls_addr, &new.der, b"http/1.1").await {
            let served = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
            assert_eq!(served, new.der);
            assert!(get_h1(&mut fresh, "/tls").await.starts_with("http/1.1 302"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection made under the old certificate still works.
    assert!(get_h1(&mut open, "/tls").await.starts_with("http/1.1 302"));
    server.stop();
}

#[tokio::test]
async fn a_broken_pair_on_disk_is_logged_and_the_old_certificate_keeps_serving() {
    let Fixture {
        dir,
        pem,
        server,
        tls_addr,
    } = Fixture::start().await;
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("reload failed") {
        assert!(
            Instant::now() < deadline,
            "no reload failure logged:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut tls = handshake(tls_addr, &pem.der, b"http/1.1").await.unwrap();
    assert!(get_h1(&mut tls, "/tls").await.starts_with("http/1.1 302"));
    server.stop();
}

#[tokio::test]
async fn garbage_on_the_tls_port_is_dropped_and_the_edge_keeps_serving() {
    // `_dir` keeps the certificate files alive for the whole test.
    let Fixture {
        dir: _dir,
        pem,
        server,
        tls_addr,
    } = Fixture::start().await;
    for junk in [
        &b"GET /tls HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0][..],
    ] {
        let mut tcp = TcpStream::connect(tls_addr).await.unwrap();
        tcp.write_all(junk).await.unwrap();
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
        // An alert or a close, never an HTTP answer, never a hang.
        let n = read.expect("the server answered or closed").unwrap_or(0);
        assert!(!buf[..n].starts_with(b"HTTP/"), "{:?}", &buf[..n]);
    }
    let mut tls = handshake(tls_addr, &pem.der, b"http/1.1").await.unwrap();
    assert!(get_h1(&mut tls, "/tls").await.starts_with("http/1.1 302"));
    server.stop();
}

#[tokio::test]
async fn a_client_that_stalls_in_the_handshake_is_disconnected_at_the_header_deadline() {
    let Fixture {
        dir: _dir,
        pem,
        server,
        tls_addr,
    } = Fixture::start_with_header_timeout("500").await;
    // Silent, then a ClientHello record header with no body.
    for stall in [&b""[..], &[0x16, 0x03, 0x01][..]] {
        let mut tcp = TcpStream::connect(tls_addr).await.unwrap();
        tcp.write_all(stall).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{stall:?}: expected a close, got {read:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{stall:?}: closed before the deadline"
        );
    }
    let mut tls = handshake(tls_addr, &pem.der, b"http/1.1").await.unwrap();
    assert!(get_h1(&mut tls, "/tls").await.starts_with("http/1.1 302"));
    server.stop();
}

#[test]
fn bad_certificate_files_stop_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed();
    let b = self_signed();
    let cases = [
        (
            "garbage certificate",
            "not a pem".to_owned(),
            a.key.clone(),
            "edge.tls.cert",
        ),
        (
            "key of another certificate",
            a.cert.clone(),
            b.key.clone(),
            "edge.tls.key",
        ),
        (
            "garbage key",
            a.cert.clone(),
            "nope".to_owned(),
            "edge.tls.key",
        ),
    ];
    for (case, cert, key, named) in cases {
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        let env = [
            ("CLICKEDGE_EDGE__TLS__LISTEN", "127.0.0.1:0".to_owned()),
            (
                "CLICKEDGE_EDGE__TLS__CERT",
                dir.path().join("cert.pem").display().to_string(),
            ),
            (
                "CLICKEDGE_EDGE__TLS__KEY",
                dir.path().join("key.pem").display().to_string(),
            ),
            ("CLICKEDGE_EDGE__LISTEN", "127.0.0.1:0".to_owned()),
            ("CLICKEDGE_ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
        ];
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let data = tempfile::tempdir().unwrap();
        let mut child = common::command(data.path(), &env)
            .arg("serve")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A regression that starts anyway fails here instead of hanging.
        let status = common::wait_timeout(&mut child, Duration::from_secs(20));
        assert!(!status.success(), "{case}: started");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(err.contains(named), "{case}: {err}");
    }
}

/// `edge.tls.redirect_http`: the plain listener sends everyone to HTTPS
/// with a 308 (method and body kept) and records no click; the click is
/// recorded once, on the HTTPS request.
#[tokio::test]
async fn with_redirect_http_the_plain_listener_answers_308_to_https_and_records_no_click() {
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed();
    write_pair(dir.path(), &pem);
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let server = Server::start_with(&[
        ("CLICKEDGE_EDGE__TLS__LISTEN", "127.0.0.1:0"),
        ("CLICKEDGE_EDGE__TLS__CERT", cert.to_str().unwrap()),
        ("CLICKEDGE_EDGE__TLS__KEY", key.to_str().unwrap()),
        ("CLICKEDGE_EDGE__TLS__REDIRECT_HTTP", "true"),
    ]);
    let tls_addr = server.edge_tls.unwrap();
    let api = Api::new(&server, server.token("acme"));
    api.link(json!({"code": "tls", "destination": "https://shop.example/p"}))
        .await;

    let raw = |request: String| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(server.edge).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf.to_lowercase()
    };
    let host = format!("localhost:{}", server.edge.port());
    for method in ["GET", "HEAD", "POST"] {
        let head = raw(format!(
            "{method} /tls?sub=a%20b&x=1 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        assert!(head.starts_with("http/1.1 308"), "{method}: {head}");
        let want = format!(
            "location: https://localhost:{}/tls?sub=a%20b&x=1\r\n",
            tls_addr.port()
        );
        assert!(head.contains(&want), "{method}: {head}");
        assert!(head.contains("cache-control: private, no-store"), "{head}");
        assert!(!head.contains("set-cookie"), "{head}");
    }
    // Unknown codes and reserved paths are sent over too: nothing is looked up.
    let head = raw(format!(
        "GET /_postback/net?token=t HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ));
    assert!(head.contains("/_postback/net?token=t\r\n"), "{head}");
    // No Host, no redirect.
    let head = raw("GET /tls HTTP/1.0\r\n\r\n".to_owned());
    assert!(head.starts_with("http/1.0 400"), "{head}");

    // The HTTPS request that follows is the click.
    let mut tls = handshake(tls_addr, &pem.der, b"http/1.1").await.unwrap();
    let head = get_h1(&mut tls, "/tls?sub=a%20b&x=1").await;
    assert!(head.starts_with("http/1.1 302"), "{head}");
    assert!(head.contains("; secure"), "{head}");
    // Events are written in order: once the HTTPS click is on disk, any
    // click of the plain hops would be too.
    let written = common::eventually(Duration::from_secs(10), || {
        !server.click_log_lines().is_empty()
    })
    .await;
    assert!(written);
    assert_eq!(server.click_log_lines().len(), 1);
    server.stop();
}
