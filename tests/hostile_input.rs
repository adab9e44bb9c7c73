//! Hostile and malformed input against the real server, mostly as raw bytes
//! over `std::net::TcpStream`: oversized and malformed request heads,
//! request-smuggling shapes, odd request targets, header injection through
//! `{sub}`, junk, slow clients, HTTP/2 prior knowledge, and hostile admin
//! calls.
//!
//! After every case a normal redirect must still work and the server log
//! must not show a panic: a bad request may be refused, never take the
//! service (or a worker) down.
//!

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{client, Api, Server, BROWSER_UA};
use serde_json::{json, Value};

/// The link every case checks afterwards.
const CODE: &str = "ok-link";
const DESTINATION: &str = "https://shop.example/landing";
/// A link whose destination expands `{sub}`.
const SUB_CODE: &str = "subby";
/// How long to wait for an answer the server should give at once.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// Generous bound for the server to drop a slow client (its header read
/// timeout is 500 ms in those tests). Not a speed assertion.
const DISCONNECT_BOUND: Duration = Duration::from_secs(10);

// ---- fixture ------------------------------------------------------------------

struct Fixture {
    server: Server,
    token: String,
}

impl Fixture {
    async fn start() -> Fixture {
        Self::start_with(&[]).await
    }

    async fn start_with(env: &[(&str, &str)]) -> Fixture {
        let server = Server::start_with(env);
        let token = server.token("acme");
        let api = Api::new(&server, token.clone());
        api.link(json!({"code": CODE, "destination": DESTINATION}))
            .await;
        api.link(json!({"code": SUB_CODE, "destination": "https://shop.example/?s={sub}"}))
            .await;
        let f = Fixture { server, token };
        f.assert_healthy("start").await;
        f
    }

    fn api(&self) -> Api<'_> {
        Api::new(&self.server, self.token.clone())
    }

    /// A normal redirect still works and nothing has panicked.
    async fn assert_healthy(&self, after: &str) {
        let resp = client()
            .get(self.server.edge_url(&format!("/{CODE}")))
            .header("user-agent", BROWSER_UA)
            .send()
            .await
            .unwrap_or_else(|e| panic!("after {after}: the edge does not answer: {e}"));
        assert_eq!(resp.status(), 302, "after {after}: a normal redirect broke");
        assert_eq!(resp.headers()["location"], DESTINATION, "after {after}");
        self.assert_no_panic(after);
    }

    fn assert_no_panic(&self, after: &str) {
        let log = self.server.log_text();
        assert!(
            !log.contains("panicked"),
            "after {after}: the server panicked:\n{}",
            panic_excerpt(&log)
        );
    }

    /// The final check of every test: a redirect works, no panic anywhere.
    async fn finish(&self) {
        self.assert_healthy("all cases").await;
        // Give the log reader a moment to catch up with stderr.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.assert_no_panic("all cases");
    }
}

fn panic_excerpt(log: &str) -> String {
    let at = log.find("panicked").unwrap_or(0);
    let start = log[..at].rfind('\n').map_or(0, |i| i + 1);
    log[start..].chars().take(1500).collect()
}

// ---- raw HTTP/1 over TcpStream -------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The server closed the connection (FIN).
    Eof,
    /// The server reset the connection.
    Reset,
    /// Still open when we stopped waiting.
    Open,
}

struct Reply {
    bytes: Vec<u8>,
    end: End,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.bytes[..self.bytes.len().min(600)]);
        write!(f, "[{:?}] {text:?}", self.end)
    }
}

impl Reply {
    /// Status of the first response, if any arrived.
    fn status(&self) -> Option<u16> {
        let line = self.bytes.split(|&b| b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?;
        let mut parts = line.split(' ');
        parts.next().filter(|v| v.starts_with("HTTP/1."))?;
        parts.next()?.parse().ok()
    }

    /// The head of the first response, split into lines.
    fn head_lines(&self) -> Vec<String> {
        let end = find(&self.bytes, b"\r\n\r\n").unwrap_or(self.bytes.len());
        String::from_utf8_lossy(&self.bytes[..end])
            .split("\r\n")
            .map(str::to_owned)
            .collect()
    }

    /// Values of header `name` in the first response, raw.
    fn header(&self, name: &str) -> Vec<String> {
        self.head_lines()
            .iter()
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .collect()
    }

    /// How many responses arrived on the connection.
    fn responses(&self) -> usize {
        let mut n = usize::from(self.bytes.starts_with(b"HTTP/1."));
        n += self
            .bytes
            .windows(9)
            .filter(|w| w == b"\r\nHTTP/1." || w == b"\nHTTP/1.1")
            .count();
        n
    }

    fn closed(&self) -> bool {
        self.end != End::Open
    }

    /// Refused: a 4xx, or closed without any answer. Never a 2xx/3xx/5xx.
    #[track_caller]
    fn assert_refused(&self, case: &str) {
        match self.status() {
            Some(s) => assert!(
                (400..500).contains(&s),
                "{case}: expected a 4xx, got {self:?}"
            ),
            None => assert!(self.closed(), "{case}: no answer and not closed: {self:?}"),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(ANSWER_WAIT)).unwrap();
    s
}

/// Reads until the server closes, resets, or `wait` passes.
fn read_reply(stream: &mut TcpStream, wait: Duration) -> Reply {
    let deadline = Instant::now() + wait;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Reply {
                bytes,
                end: End::Open,
            };
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => {
                return Reply {
                    bytes,
                    end: End::Eof,
                }
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Reply {
                    bytes,
                    end: End::Open,
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                return Reply {
                    bytes,
                    end: End::Reset,
                }
            }
        }
    }
}

/// Sends `request` (write errors ignored: the server may hang up early) and
/// reads the answer.
fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = connect(addr);
    let _ = s.write_all(request);
    read_reply(&mut s, ANSWER_WAIT)
}

/// A well-formed GET for `target` that asks the server to close after.
fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A GET of the healthy link with extra raw header lines.
fn get_with_headers(extra: &[u8]) -> Vec<u8> {
    let mut r = format!("GET /{CODE} HTTP/1.1\r\nHost: edge.test\r\n").into_bytes();
    r.extend_from_slice(extra);
    r.extend_from_slice(b"Connection: close\r\n\r\n");
    r
}

/// Deterministic junk (xorshift), so a failure is reproducible.
fn junk(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

// ---- oversized and malformed heads ---------------------------------------------------------

#[tokio::test]
async fn a_20_kb_request_target_is_refused_with_a_4xx_or_a_close() {
    let f = Fixture::start().await;
    let target = format!("/{}", "a".repeat(20 * 1024));
    let reply = exchange(f.server.edge, &get(&target));
    reply.assert_refused("20 KB path");
    let target = format!("/{CODE}?q={}", "b".repeat(20 * 1024));
    let reply = exchange(f.server.edge, &get(&target));
    reply.assert_refused("20 KB query");
    f.assert_healthy("20 KB target").await;
    f.finish().await;
}

#[tokio::test]
async fn more_than_64_headers_is_431_and_64_are_fine() {
    let f = Fixture::start().await;
    let hundred: Vec<u8> = (0..100)
        .flat_map(|i| format!("X-Header-{i}: v\r\n").into_bytes())
        .collect();
    let reply = exchange(f.server.edge, &get_with_headers(&hundred));
    assert_eq!(reply.status(), Some(431), "{reply:?}");
    f.assert_healthy("100 headers").await;

    // Host + Connection + 62 = 64 header fields: the limit itself is allowed.
    let sixty_two: Vec<u8> = (0..62)
        .flat_map(|i| format!("X-Header-{i}: v\r\n").into_bytes())
        .collect();
    let reply = exchange(f.server.edge, &get_with_headers(&sixty_two));
    assert_eq!(reply.status(), Some(302), "{reply:?}");
    f.assert_healthy("64 headers").await;
    f.finish().await;
}

#[tokio::test]
async fn one_20_kb_header_is_431() {
    let f = Fixture::start().await;
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    let reply = exchange(f.server.edge, &get_with_headers(big.as_bytes()));
    assert_eq!(reply.status(), Some(431), "{reply:?}");
    f.assert_healthy("20 KB header").await;
    let cookie = format!("Cookie: {}\r\n", "c=1; ".repeat(4 * 1024));
    let reply = exchange(f.server.edge, &get_with_headers(cookie.as_bytes()));
    assert_eq!(reply.status(), Some(431), "{reply:?}");
    f.assert_healthy("20 KB cookie").await;
    f.finish().await;
}

#[tokio::test]
async fn an_invalid_method_token_is_400() {
    let f = Fixture::start().await;
    for method in ["G@T", "GE T", "G(T)", "GET\x00", "\x01GET"] {
        let req = format!("{method} /{CODE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = exchange(f.server.edge, req.as_bytes());
        match reply.status() {
            Some(s) => assert_eq!(s, 400, "{method:?}: {reply:?}"),
            None => assert!(reply.closed(), "{method:?}: {reply:?}"),
        }
        f.assert_healthy(&format!("method {method:?}")).await;
    }
    // The G@T case specifically gets a clear 400.
    let reply = exchange(
        f.server.edge,
        format!("G@T /{CODE} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert_eq!(reply.status(), Some(400), "{reply:?}");
    f.finish().await;
}

#[tokio::test]
async fn control_characters_in_header_values_are_refused() {
    let f = Fixture::start().await;
    let cases: [(&str, &[u8]); 4] = [
        ("bare CR", b"X-Test: a\rb\r\n"),
        ("NUL", b"X-Test: a\x00b\r\n"),
        (
            "bare CR in user agent",
            b"User-Agent: Mozilla\rSet-Cookie: x=1\r\n",
        ),
        ("DEL", b"X-Test: a\x7fb\r\n"),
    ];
    for (case, line) in cases {
        let reply = exchange(f.server.edge, &get_with_headers(line));
        match reply.status() {
            Some(s) => assert_eq!(s, 400, "{case}: {reply:?}"),
            None => assert!(reply.closed(), "{case}: {reply:?}"),
        }
        f.assert_healthy(case).await;
    }
    f.finish().await;
}

#[tokio::test]
async fn header_names_with_spaces_and_obs_folds_are_400() {
    let f = Fixture::start().await;
    let cases: [(&str, &[u8]); 5] = [
        ("space in a name", b"Bad Name: x\r\n"),
        ("space before the colon", b"X-Test : x\r\n"),
        ("obs-fold", b"X-Test: a\r\n folded\r\n"),
        ("obs-fold with a tab", b"X-Test: a\r\n\tfolded\r\n"),
        ("no colon", b"JustAName\r\n"),
    ];
    for (case, line) in cases {
        let reply = exchange(f.server.edge, &get_with_headers(line));
        assert_eq!(reply.status(), Some(400), "{case}: {reply:?}");
        f.assert_healthy(case).await;
    }
    f.finish().await;
}

#[tokio::test]
async fn malformed_request_lines_are_refused() {
    let f = Fixture::start().await;
    let cases: [(&str, Vec<u8>); 6] = [
        ("HTTP/0.9", format!("GET /{CODE}\r\n\r\n").into_bytes()),
        (
            "unknown version",
            format!("GET /{CODE} HTTP/9.9\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        (
            "HTTP/2.0 in an HTTP/1 line",
            format!("GET /{CODE} HTTP/2.0\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        (
            "raw space in the target",
            format!("GET /{CODE} x HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        (
            "raw CR in the target",
            format!("GET /{CODE}\rX HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
        ),
        ("empty line only", b"\r\n\r\n\r\n".to_vec()),
    ];
    for (case, req) in cases {
        let reply = exchange(f.server.edge, &req);
        reply.assert_refused(case);
        f.assert_healthy(case).await;
    }
    f.finish().await;
}

// ---- request smuggling shapes -------------------------------------------------------

#[tokio::test]
async fn conflicting_content_lengths_are_refused_and_never_smuggle_a_request() {
    let f = Fixture::start().await;
    let req = format!(
        "GET /{CODE} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 30\r\n\r\n\
         xGET /_smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let reply = exchange(f.server.edge, req.as_bytes());
    reply.assert_refused("duplicate different Content-Length");
    assert!(
        reply.responses() <= 1,
        "a second request was answered: {reply:?}"
    );
    f.assert_healthy("duplicate Content-Length").await;

    let req = format!("GET /{CODE} HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab");
    let reply = exchange(f.server.edge, req.as_bytes());
    reply.assert_refused("list Content-Length");
    f.assert_healthy("list Content-Length").await;

    let req = format!("GET /{CODE} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n");
    let reply = exchange(f.server.edge, req.as_bytes());
    reply.assert_refused("negative Content-Length");
    f.assert_healthy("negative Content-Length").await;

    let req = format!(
        "GET /{CODE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n"
    );
    let reply = exchange(f.server.edge, req.as_bytes());
    reply.assert_refused("Transfer-Encoding without chunked last");
    f.assert_healthy("Transfer-Encoding gzip").await;
    f.finish().await;
}

/// A request carrying both `Content-Length` and `Transfer-Encoding:
/// chunked` is read by the chunked framing alone and the connection is
/// closed after the answer, as RFC 9112 §6.1 requires. Whatever hides behind
/// the chunked body is never parsed as a second request.
#[tokio::test]
async fn content_length_with_transfer_encoding_closes_the_connection_and_never_smuggles_a_request()
{
    let f = Fixture::start().await;
    let req = format!(
        "GET /{CODE} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /_smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let reply = exchange(f.server.edge, req.as_bytes());
    assert!(
        reply.responses() <= 1,
        "the smuggled request was answered: {reply:?}"
    );
    assert!(reply.closed(), "the connection stayed open: {reply:?}");
    f.assert_healthy("CL + TE").await;
    // And the other order of the two headers.
    let req = format!(
        "GET /{CODE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
         0\r\n\r\nGET /_smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let reply2 = exchange(f.server.edge, req.as_bytes());
    assert!(
        reply2.responses() <= 1,
        "the smuggled request was answered: {reply2:?}"
    );
    assert!(reply2.closed(), "the connection stayed open: {reply2:?}");
    f.assert_healthy("TE + CL").await;
    f.finish().await;
}

// ---- request targets -------------------------------------------------------------------

#[tokio::test]
async fn an_absolute_form_target_is_never_a_5xx() {
    let f = Fixture::start().await;
    for target in [
        format!("http://example.com/{CODE}"),
        format!("https://evil.example/{CODE}?sub=x"),
        "http://example.com".to_owned(),
        "http://example.com/_reserved".to_owned(),
    ] {
        let reply = exchange(f.server.edge, &get(&target));
        let status = reply
            .status()
            .unwrap_or_else(|| panic!("{target}: no answer: {reply:?}"));
        assert!(status < 500, "{target}: {reply:?}");
        if (300..400).contains(&status) {
            // The redirect goes to the link's destination, whatever the host.
            let loc = reply.header("location");
            assert!(
                loc.len() == 1 && loc[0].starts_with(DESTINATION),
                "{target}: {reply:?}"
            );
        }
        assert_eq!(
            reply.header("cache-control"),
            ["private, no-store"],
            "{target}: {reply:?}"
        );
        f.assert_healthy(&target).await;
    }
    f.finish().await;
}

/// An authority-form target on GET or HEAD (`GET example.com:443
/// HTTP/1.1`) has an empty path; it is a 404 like any target that is not
/// `/{code}`, never a panic.
#[tokio::test]
async fn an_authority_form_target_on_get_or_head_is_refused_without_a_panic() {
    let f = Fixture::start().await;
    for (method, target) in [
        ("GET", "example.com:443"),
        ("GET", "example.com"),
        ("HEAD", "example.com:80"),
        ("GET", CODE),
    ] {
        let req = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = exchange(f.server.edge, req.as_bytes());
        assert!(
            reply.status().is_some_and(|s| (400..500).contains(&s)),
            "{method} {target}: expected a 4xx answer, got {reply:?}"
        );
        f.assert_healthy(&format!("{method} {target}")).await;
    }
    f.finish().await;
}

#[tokio::test]
async fn connect_is_a_4xx() {
    let f = Fixture::start().await;
    let req =
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n";
    let reply = exchange(f.server.edge, req);
    let status = reply
        .status()
        .unwrap_or_else(|| panic!("no answer: {reply:?}"));
    assert!((400..500).contains(&status), "{reply:?}");
    f.assert_healthy("CONNECT").await;
    // Asterisk-form is no way in either.
    for method in ["OPTIONS", "GET"] {
        let req = format!("{method} * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = exchange(f.server.edge, req.as_bytes());
        reply.assert_refused(&format!("{method} *"));
        f.assert_healthy(&format!("{method} *")).await;
    }
    f.finish().await;
}

#[tokio::test]
async fn hostile_paths_are_404_and_never_a_5xx() {
    let f = Fixture::start().await;
    let paths = [
        "/%00".to_owned(),
        format!("/{CODE}%00"),
        "/..".to_owned(),
        "/../etc/passwd".to_owned(),
        format!("/../{CODE}"),
        format!("/./{CODE}"),
        "//".to_owned(),
        format!("//{CODE}"),
        "/%2e%2e/".to_owned(),
        format!("/%2e%2e/{CODE}"),
        format!("/{CODE}/"),
        format!("/{CODE}/.."),
        format!("/{CODE}%0d%0aX:y"),
        format!("/{CODE}%0aSet-Cookie:%20evil=1"),
        format!("/{CODE};x=1"),
        "/%ff%fe".to_owned(),
        format!("/{}", "x".repeat(65)),
        "/".to_owned(),
    ];
    for path in &paths {
        let reply = exchange(f.server.edge, &get(path));
        assert_eq!(reply.status(), Some(404), "{path}: {reply:?}");
        assert_eq!(
            reply.header("cache-control"),
            ["private, no-store"],
            "{path}: {reply:?}"
        );
        assert!(reply.header("set-cookie").is_empty(), "{path}: {reply:?}");
        f.assert_healthy(path).await;
    }
    f.finish().await;
}

#[tokio::test]
async fn reserved_paths_are_404() {
    let f = Fixture::start().await;
    for path in ["/_anything", "/_", "/_/x", &format!("/_{CODE}")] {
        let reply = exchange(f.server.edge, &get(path));
        assert_eq!(reply.status(), Some(404), "{path}: {reply:?}");
        assert_eq!(
            reply.header("cache-control"),
            ["private, no-store"],
            "{path}: {reply:?}"
        );
        f.assert_healthy(path).await;
    }
    f.finish().await;
}

#[tokio::test]
async fn post_to_a_code_is_405_with_allow_get_head() {
    let f = Fixture::start().await;
    for req in [
        format!("POST /{CODE} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        format!("POST /{CODE} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
        format!("POST /{CODE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ] {
        let reply = exchange(f.server.edge, req.as_bytes());
        assert_eq!(reply.status(), Some(405), "{reply:?}");
        assert_eq!(reply.header("allow"), ["GET, HEAD"], "{reply:?}");
        assert_eq!(reply.header("cache-control"), ["private, no-store"], "{reply:?}");
        assert!(reply.header("location").is_empty(), "{reply:?}");
        f.assert_healthy("POST").await;
    }
    f.finish().await;
}

#[tokio::test]
async fn every_edge_answer_carries_private_no_store() {
    let f = Fixture::start().await;
    let api = f.api();
    api.link(json!({"code": "off", "destination": "https://x.example/"}))
        .await;
    api.patch("/v1/links/off", json!({"disabled": true})).await;
    let cases = [
        ("GET", format!("/{CODE}"), 302),
        ("HEAD", format!("/{CODE}"), 302),
        ("GET", "/no-such-code".to_owned(), 404),
        ("HEAD", "/no-such-code".to_owned(), 404),
        ("GET", "/a_b".to_owned(), 404),
        ("GET", "/_reserved".to_owned(), 404),
        ("GET", "/off".to_owned(), 410),
        ("POST", format!("/{CODE}"), 405),
        ("DELETE", format!("/{CODE}"), 405),
        ("OPTIONS", format!("/{CODE}"), 405),
    ];
    for (method, path, status) in cases {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let reply = exchange(f.server.edge, req.as_bytes());
        assert_eq!(reply.status(), Some(status), "{method} {path}: {reply:?}");
        assert_eq!(
            reply.header("cache-control"),
            ["private, no-store"],
            "{method} {path}: {reply:?}"
        );
        f.assert_healthy(&format!("{method} {path}")).await;
    }
    f.finish().await;
}

// ---- header injection through macros -------------------------------------------------------

#[tokio::test]
async fn crlf_in_sub_never_injects_a_header() {
    let f = Fixture::start().await;
    let subs = [
        "%0d%0aSet-Cookie:%20evil=1",
        "%0aSet-Cookie:%20evil=1",
        "%0d%0a%0d%0a%3Chtml%3E",
        "x%00y",
        "%E2%80%A8Set-Cookie:%20evil=1",
    ];
    for sub in subs {
        let target = format!("/{SUB_CODE}?sub={sub}");
        let reply = exchange(f.server.edge, &get(&target));
        assert_eq!(reply.status(), Some(302), "{sub}: {reply:?}");
        let cookies = reply.header("set-cookie");
        assert_eq!(cookies.len(), 1, "{sub}: exactly one Set-Cookie: {reply:?}");
        assert!(cookies[0].starts_with("ce_click="), "{sub}: {reply:?}");
        assert!(!cookies[0].contains("evil"), "{sub}: {reply:?}");
        // No header line other than ours appeared.
        for line in reply.head_lines().iter().skip(1) {
            let name = line.split_once(':').map(|(k, _)| k.to_ascii_lowercase());
            assert!(
                matches!(
                    name.as_deref(),
                    Some(
                        "location"
                            | "set-cookie"
                            | "cache-control"
                            | "connection"
                            | "content-length"
                            | "date"
                    )
                ),
                "{sub}: unexpected header line {line:?} in {reply:?}"
            );
        }
        let loc = reply.header("location");
        assert_eq!(loc.len(), 1, "{sub}: {reply:?}");
        let loc = &loc[0];
        assert!(loc.starts_with("https://shop.example/?s="), "{sub}: {loc}");
        assert!(
            loc.bytes().all(|b| b.is_ascii_graphic()),
            "{sub}: raw bytes in {loc:?}"
        );
        // The `{sub}` expansion is percent-encoded (CR LF as %0D%0A).
        let expanded = loc["https://shop.example/?s=".len()..]
            .split('&')
            .next()
            .unwrap();
        if sub.to_ascii_lowercase().contains("%0d%0a") {
            assert!(expanded.contains("%0D%0A"), "{sub}: {loc}");
        }
        assert!(
            !expanded.contains(':') && !expanded.contains('='),
            "{sub}: {loc}"
        );
        f.assert_healthy(&format!("sub {sub}")).await;
    }
    // The same over reqwest, as a browser would see it.
    let resp = client()
        .get(
            f.server
                .edge_url(&format!("/{SUB_CODE}?sub=%0d%0aSet-Cookie:%20evil=1")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers().get_all("set-cookie").iter().count(), 1);
    let loc = resp.headers()["location"].to_str().unwrap();
    assert!(
        loc.starts_with("https://shop.example/?s=%0D%0ASet-Cookie%3A%20evil%3D1"),
        "{loc}"
    );
    f.finish().await;
}

#[tokio::test]
async fn a_sub_cannot_add_parameters_or_paths_to_the_destination() {
    let f = Fixture::start().await;
    let reply = exchange(
        f.server.edge,
        &get(&format!("/{SUB_CODE}?sub=a%26admin%3D1%2F..%2F%3Fx%23frag")),
    );
    assert_eq!(reply.status(), Some(302), "{reply:?}");
    let loc = &reply.header("location")[0];
    let expanded = loc["https://shop.example/?s=".len()..]
        .split('&')
        .next()
        .unwrap();
    assert_eq!(expanded, "a%26admin%3D1%2F..%2F%3Fx%23frag", "{loc}");
    assert!(!loc.contains('#'), "{loc}");
    f.assert_healthy("sub with & = / ? #").await;
    f.finish().await;
}

/// hyper accepts bytes outside US-ASCII in a request query, but a
/// `Location` is an ASCII URI reference (RFC 9110 §10.2.2, RFC 3986), so
/// passthrough percent-encodes them.
#[tokio::test]
async fn non_ascii_bytes_in_the_query_never_reach_the_location_raw() {
    let f = Fixture::start().await;
    let mut req = format!("GET /{CODE}?x=a").into_bytes();
    req.extend_from_slice(b"\xc3\xa9b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let reply = exchange(f.server.edge, &req);
    let status = reply
        .status()
        .unwrap_or_else(|| panic!("no answer: {reply:?}"));
    assert!(status < 500, "{reply:?}");
    if (300..400).contains(&status) {
        let end = find(&reply.bytes, b"\r\n\r\n").unwrap_or(reply.bytes.len());
        let head = &reply.bytes[..end];
        let at = find(head, b"location: ").expect("a redirect has a location");
        let line_end = head[at..]
            .iter()
            .position(|&b| b == b'\r')
            .map_or(head.len(), |i| at + i);
        let loc = &head[at + "location: ".len()..line_end];
        assert!(
            loc.iter().all(u8::is_ascii_graphic),
            "Location carries raw non-ASCII bytes: {:?}",
            String::from_utf8_lossy(loc)
        );
    }
    f.assert_healthy("non-ASCII query").await;
    f.finish().await;
}

// ---- junk and slow clients ----------------------------------------------------------------

#[tokio::test]
async fn a_megabyte_of_junk_is_closed_or_refused() {
    let f = Fixture::start().await;
    for seed in [0x9E37_79B9_7F4A_7C15_u64, 42, 7] {
        let reply = exchange(f.server.edge, &junk(1024 * 1024, seed));
        reply.assert_refused(&format!("1 MB junk (seed {seed})"));
        assert!(reply.closed(), "junk kept the connection open: {reply:?}");
        f.assert_healthy(&format!("junk {seed}")).await;
    }
    // A plausible start followed by a megabyte without a line end.
    let mut req = format!("GET /{CODE} HTTP/1.1\r\nX-Junk: ").into_bytes();
    req.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    let reply = exchange(f.server.edge, &req);
    reply.assert_refused("1 MB header line");
    f.assert_healthy("1 MB header line").await;
    // A megabyte of NULs and one of CRLFs.
    for (case, byte) in [("NULs", 0u8), ("line ends", b'\n')] {
        let reply = exchange(f.server.edge, &vec![byte; 1024 * 1024]);
        reply.assert_refused(case);
        f.assert_healthy(case).await;
    }
    f.finish().await;
}

#[tokio::test]
async fn a_slowloris_client_with_a_partial_head_is_disconnected() {
    let f = Fixture::start_with(&[("CLICKEDGE_EDGE__HEADER_READ_TIMEOUT_MS", "500")]).await;
    let mut s = connect(f.server.edge);
    s.write_all(format!("GET /{CODE} HTTP/1.1\r\nHost: x\r\nUser-Agent: slow").as_bytes())
        .unwrap();
    let reply = read_reply(&mut s, DISCONNECT_BOUND);
    assert!(
        reply.closed(),
        "the server kept a stalled request head open: {reply:?}"
    );
    if let Some(status) = reply.status() {
        assert!((400..500).contains(&status), "{reply:?}");
    }
    f.assert_healthy("slowloris").await;
    f.finish().await;
}

#[tokio::test]
async fn a_client_dripping_its_head_a_byte_at_a_time_is_disconnected() {
    let f = Fixture::start_with(&[("CLICKEDGE_EDGE__HEADER_READ_TIMEOUT_MS", "500")]).await;
    let mut s = connect(f.server.edge);
    let mut writer = s.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        let head = format!(
            "GET /{CODE} HTTP/1.1\r\nHost: x\r\nX-Slow: {}",
            "z".repeat(200)
        );
        for b in head.bytes() {
            if writer.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let reply = read_reply(&mut s, DISCONNECT_BOUND);
    assert!(
        reply.closed(),
        "the server kept a dripping client: {reply:?}"
    );
    if let Some(status) = reply.status() {
        assert!((400..500).contains(&status), "{reply:?}");
    }
    drop(s);
    dripper.join().unwrap();
    f.assert_healthy("drip").await;
    f.finish().await;
}

/// A client that connects and sends nothing is disconnected after the
/// header read timeout: idle sockets must not hold `edge.max_connections`
/// slots (hyper's protocol sniff has no deadline of its own).
#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_is_disconnected() {
    let f = Fixture::start_with(&[("CLICKEDGE_EDGE__HEADER_READ_TIMEOUT_MS", "500")]).await;
    let mut s = connect(f.server.edge);
    let reply = read_reply(&mut s, DISCONNECT_BOUND);
    assert!(
        reply.closed(),
        "an idle connection was never closed: {reply:?}"
    );
    f.assert_healthy("idle connection").await;
    f.finish().await;
}

/// Likewise a client that stalls inside the HTTP/2 preface.
#[tokio::test]
async fn a_client_that_stalls_inside_the_http2_preface_is_disconnected() {
    let f = Fixture::start_with(&[("CLICKEDGE_EDGE__HEADER_READ_TIMEOUT_MS", "500")]).await;
    let mut s = connect(f.server.edge);
    s.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let reply = read_reply(&mut s, DISCONNECT_BOUND);
    assert!(
        reply.closed(),
        "a stalled HTTP/2 preface was never closed: {reply:?}"
    );
    f.assert_healthy("stalled preface").await;
    f.finish().await;
}

// ---- HTTP/2 prior knowledge ----------------------------------------------------------------

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_HEADERS: u8 = 0x1;
const H2_SETTINGS: u8 = 0x4;
const H2_GOAWAY: u8 = 0x7;
const H2_END_STREAM: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET request header block in HPACK, literals without indexing.
fn h2_get(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (index, value) in [(4u8, path), (1u8, "edge.test")] {
        block.push(index); // literal without indexing, indexed name
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// The `:status` of a response header block (the first field hyper emits).
fn h2_status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    let indexed = [
        (0x88, 200),
        (0x89, 204),
        (0x8a, 206),
        (0x8b, 304),
        (0x8c, 400),
        (0x8d, 404),
        (0x8e, 500),
    ];
    if let Some((_, s)) = indexed.iter().find(|(b, _)| *b == first) {
        return Some(*s);
    }
    // A literal with the indexed name `:status` (8), in any of its forms.
    if !matches!(first, 0x48 | 0x08 | 0x18) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = usize::from(len_byte & 0x7f);
    let value = block.get(2..2 + len)?;
    let digits = if len_byte & 0x80 == 0 {
        String::from_utf8(value.to_vec()).ok()?
    } else {
        huffman_digits(value)?
    };
    digits.parse().ok()
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541 appendix B).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let take = |at: usize, n: usize| -> Option<u32> {
        bits.get(at..at + n)
            .map(|s| s.iter().fold(0u32, |acc, &b| (acc << 1) | u32::from(b)))
    };
    let mut out = String::new();
    let mut at = 0;
    while bits.len() - at >= 5 {
        let five = take(at, 5)?;
        if five <= 2 {
            // '0' 00000, '1' 00001, '2' 00010
            out.push(char::from(b'0' + five as u8));
            at += 5;
            continue;
        }
        match take(at, 6) {
            // '3' 011001 .. '9' 011111
            Some(six @ 0b011001..=0b011111) => {
                out.push(char::from(b'3' + (six - 0b011001) as u8));
                at += 6;
            }
            _ => break,
        }
    }
    // What is left must be EOS padding: fewer than 8 one-bits.
    (bits.len() - at < 8 && bits[at..].iter().all(|&b| b == 1)).then_some(out)
}

/// Reads frames until both streams have their response headers.
fn h2_read_statuses(s: &mut TcpStream, streams: &[u32]) -> Vec<(u32, Option<u16>)> {
    s.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + ANSWER_WAIT;
    while got.len() < streams.len() && Instant::now() < deadline {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).is_err() {
            break;
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let kind = head[3];
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            break;
        }
        if kind == H2_GOAWAY {
            panic!("the server sent GOAWAY: {payload:?}");
        }
        if kind == H2_HEADERS && streams.contains(&stream) {
            got.push((stream, h2_status(&payload)));
        }
    }
    got
}

/// An h2 connection (prior knowledge) that has been answered one redirect
/// and is left open.
fn h2_one_redirect(edge: SocketAddr) -> TcpStream {
    let mut s = connect(edge);
    let mut out = H2_PREFACE.to_vec();
    out.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    out.extend(h2_frame(
        H2_HEADERS,
        H2_END_STREAM | H2_END_HEADERS,
        1,
        &h2_get(&format!("/{CODE}")),
    ));
    s.write_all(&out).unwrap();
    assert_eq!(h2_read_statuses(&mut s, &[1]), [(1, Some(302))]);
    s
}

/// hyper closes idle h1 keep-alive connections itself; an h2 client that
/// got its answer and then sits idle must not keep its slot either. (The
/// idle check runs every `idle_timeout_ms` and drops a connection that
/// ignored its GOAWAY at the next one: with the 5 s default that is ~10 s,
/// the test's whole bound, so the test sets both deadlines short.)
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let f = Fixture::start_with(&[
        ("CLICKEDGE_EDGE__HEADER_READ_TIMEOUT_MS", "500"),
        ("CLICKEDGE_EDGE__IDLE_TIMEOUT_MS", "500"),
    ])
    .await;
    let mut s = h2_one_redirect(f.server.edge);
    let started = Instant::now();
    let reply = read_reply(&mut s, DISCONNECT_BOUND);
    assert!(
        reply.closed(),
        "an idle h2 connection stayed open: {reply:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed at once"
    );
    f.assert_healthy("idle h2").await;
    f.finish().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let f = Fixture::start().await;
    let mut s = connect(f.server.edge);
    let mut out = H2_PREFACE.to_vec();
    out.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    out.extend(h2_frame(
        H2_HEADERS,
        H2_END_STREAM | H2_END_HEADERS,
        1,
        &h2_get(&format!("/{CODE}")),
    ));
    out.extend(h2_frame(
        H2_HEADERS,
        H2_END_STREAM | H2_END_HEADERS,
        3,
        &h2_get("/no-such-code"),
    ));
    s.write_all(&out).unwrap();
    let mut statuses = h2_read_statuses(&mut s, &[1, 3]);
    statuses.sort();
    assert_eq!(statuses, [(1, Some(302)), (3, Some(404))], "h2 answers");
    drop(s);
    f.assert_healthy("h2 prior knowledge").await;

    // Junk after a valid preface is a protocol error, not a crash.
    let mut s = connect(f.server.edge);
    let mut out = H2_PREFACE.to_vec();
    out.extend(junk(64 * 1024, 99));
    let _ = s.write_all(&out);
    let reply = read_reply(&mut s, ANSWER_WAIT);
    assert!(reply.closed(), "junk h2 frames kept the connection open");
    f.assert_healthy("h2 junk").await;

    // A header block that is not valid HPACK.
    let mut s = connect(f.server.edge);
    let mut out = H2_PREFACE.to_vec();
    out.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    out.extend(h2_frame(
        H2_HEADERS,
        H2_END_STREAM | H2_END_HEADERS,
        1,
        &[0xff; 32],
    ));
    let _ = s.write_all(&out);
    let _ = read_reply(&mut s, ANSWER_WAIT);
    f.assert_healthy("h2 bad hpack").await;
    f.finish().await;
}

// ---- admin ----------------------------------------------------------------------------------

/// One admin call with raw body bytes; returns status and parsed JSON.
async fn admin_raw(
    f: &Fixture,
    method: &str,
    path: &str,
    token: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let resp = client()
        .request(method.parse().unwrap(), f.server.admin_url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[track_caller]
fn assert_json_error(got: &(u16, Value), status: u16, code: &str, case: &str) {
    assert_eq!(got.0, status, "{case}: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{case}: {}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{case}: {}",
        got.1
    );
}

#[tokio::test]
async fn hostile_admin_bodies_get_clear_json_4xx_errors() {
    let f = Fixture::start().await;
    let token = f.token.clone();
    let bodies: [(&str, Vec<u8>); 7] = [
        ("truncated", b"{\"destination\":".to_vec()),
        (
            "raw NUL byte",
            b"{\"destination\":\"https://x.example/\x00\"}".to_vec(),
        ),
        (
            "raw newline in a string",
            b"{\"destination\":\"https://x.example/\nx\"}".to_vec(),
        ),
        (
            "not UTF-8",
            b"{\"destination\":\"https://x.example/\xff\"}".to_vec(),
        ),
        (
            "trailing garbage",
            b"{\"destination\":\"https://x.example/\"} x".to_vec(),
        ),
        (
            "huge number",
            b"{\"destination\":\"https://x.example/\",\"redirect\":1e400}".to_vec(),
        ),
        ("wrong type", b"{\"destination\":42}".to_vec()),
    ];
    for (case, body) in bodies {
        let got = admin_raw(&f, "POST", "/v1/links", &token, body).await;
        assert_json_error(&got, 400, "invalid_json", case);
        f.assert_healthy(case).await;
    }
    // Nesting deeper than any parser should recurse.
    let deep = format!(
        "{{\"links\":[{}{}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let got = admin_raw(&f, "POST", "/v1/links/batch", &token, deep.into_bytes()).await;
    assert_json_error(&got, 400, "invalid_json", "100 000 nested arrays");
    f.assert_healthy("deep nesting").await;

    // Escaped NULs are valid JSON but never valid values.
    let api = f.api();
    let nul_cases = [
        (
            json!({"destination": "https://x.example/\u{0}"}),
            "invalid_destination",
        ),
        (
            json!({"destination": "https://x.example/", "code": "a\u{0}b"}),
            "invalid_code",
        ),
        (
            json!({"destination": "https://x.example/", "tags": ["a\u{0}"]}),
            "invalid_tags",
        ),
        (
            json!({"destination": "https://x.example/", "expires_at": "2099-01-01T00:00:00Z\u{0}"}),
            "invalid_expires_at",
        ),
    ];
    for (body, code) in nul_cases {
        let got = api.post("/v1/links", body.clone()).await;
        assert_json_error(&got, 422, code, &body.to_string());
        f.assert_healthy(code).await;
    }
    let got = api
        .patch(
            &format!("/v1/links/{CODE}"),
            json!({"destination": "https://evil.example/\u{0}"}),
        )
        .await;
    assert_json_error(&got, 422, "invalid_destination", "PATCH with NUL");
    let got = api.get("/v1/links/a%00b").await;
    assert_eq!(got.0, 404, "{}", got.1);
    f.assert_healthy("NUL in admin input").await;
    f.finish().await;
}

/// Writes `request` from a second thread while reading the answer, so an
/// early answer (and the close after it) is seen even mid-upload.
fn exchange_while_sending(addr: SocketAddr, request: Vec<u8>) -> Reply {
    let mut s = connect(addr);
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for chunk in request.chunks(64 * 1024) {
            if writer.write_all(chunk).is_err() {
                return;
            }
        }
    });
    let reply = read_reply(&mut s, ANSWER_WAIT * 2);
    let _ = s.shutdown(std::net::Shutdown::Both);
    sender.join().unwrap();
    reply
}

/// The JSON body of a raw reply (after the head; chunked framing undone for
/// a single chunk).
fn reply_json(reply: &Reply) -> Value {
    let at = find(&reply.bytes, b"\r\n\r\n").map_or(reply.bytes.len(), |i| i + 4);
    let body = String::from_utf8_lossy(&reply.bytes[at..]).into_owned();
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |i| i + 1);
    serde_json::from_str(&body[start..end]).unwrap_or(Value::String(body))
}

#[tokio::test]
async fn a_10_mb_admin_body_is_413_payload_too_large() {
    let f = Fixture::start().await;
    let size = 10 * 1024 * 1024;
    // Valid JSON, 10 MB: one long string, with a Content-Length.
    let mut body = b"{\"destination\":\"https://x.example/".to_vec();
    body.extend(std::iter::repeat_n(b'a', size));
    body.extend_from_slice(b"\"}");
    let mut req = format!(
        "POST /v1/links HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        f.token,
        body.len()
    )
    .into_bytes();
    req.extend(body);
    let reply = exchange_while_sending(f.server.admin, req);
    assert_eq!(reply.status(), Some(413), "{reply:?}");
    assert_json_error(
        &(413, reply_json(&reply)),
        413,
        "payload_too_large",
        "10 MB create",
    );
    f.assert_healthy("10 MB admin body").await;

    // The same size chunked, with no Content-Length.
    let mut req = format!(
        "POST /v1/links/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        f.token
    )
    .into_bytes();
    for _ in 0..10 {
        req.extend(format!("{:x}\r\n", 1024 * 1024).into_bytes());
        req.extend(std::iter::repeat_n(b' ', 1024 * 1024));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let reply = exchange_while_sending(f.server.admin, req);
    assert_eq!(reply.status(), Some(413), "{reply:?}");
    assert_json_error(
        &(413, reply_json(&reply)),
        413,
        "payload_too_large",
        "10 MB chunked",
    );
    f.assert_healthy("10 MB chunked admin body").await;
    f.finish().await;
}

#[tokio::test]
async fn admin_calls_with_a_wrong_token_are_401_json() {
    let f = Fixture::start().await;
    for token in [
        "wrong",
        "ce_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "ce_\u{e9}",
        "",
    ] {
        let got = admin_raw(
            &f,
            "POST",
            "/v1/links",
            token,
            br#"{"destination":"https://x.example/"}"#.to_vec(),
        )
        .await;
        assert_json_error(&got, 401, "unauthorized", token);
        f.assert_healthy(&format!("token {token:?}")).await;
    }
    // A DEL byte in the Authorization header: refused, never a 2xx.
    let req = format!(
        "GET /v1/links HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\x7f\r\nConnection: close\r\n\r\n",
        f.token
    );
    let reply = exchange(f.server.admin, req.as_bytes());
    assert!(matches!(reply.status(), Some(400 | 401)), "{reply:?}");
    // Raw bytes on the admin socket: junk and an unknown method.
    let reply = exchange(f.server.admin, &junk(64 * 1024, 5));
    reply.assert_refused("admin junk");
    let reply = exchange(
        f.server.admin,
        b"G@T /v1/links HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status(), Some(400), "{reply:?}");
    let reply = exchange(
        f.server.admin,
        b"GET example.com:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        reply.status().is_some_and(|s| (400..500).contains(&s)),
        "{reply:?}"
    );
    f.assert_healthy("admin raw").await;
    f.finish().await;
}

// ---- code enumeration -----------------------------------------------------------------

/// The answer without its `Date` line, which is the only thing allowed to
/// differ between two answers.
fn without_date(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.bytes)
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A scanner learns nothing from a 404 beyond "not a live code": the answer
/// for a code that never existed is byte-for-byte the one for a malformed
/// code or a reserved path. Deleted, disabled and expired links answer the
/// same 410 (the contract's status), so a 410 does not tell them apart.
#[tokio::test]
async fn every_404_is_the_same_answer_whatever_the_code() {
    let f = Fixture::start().await;
    let api = f.api();
    for code in ["was-deleted", "is-disabled", "has-expired"] {
        api.link(json!({"code": code, "destination": DESTINATION}))
            .await;
    }
    let (status, _) = api.delete("/v1/links/was-deleted").await;
    assert_eq!(status, 204);
    let (status, _) = api
        .patch("/v1/links/is-disabled", json!({"disabled": true}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = api
        .patch(
            "/v1/links/has-expired",
            json!({"expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let never = without_date(&exchange(f.server.edge, &get("/neverminted")));
    assert!(never.starts_with("HTTP/1.1 404"), "{never}");
    for target in ["/Zz9aQ3xT", "/bad_code", "/_reserved", "/%00", "/x/y"] {
        let reply = without_date(&exchange(f.server.edge, &get(target)));
        assert_eq!(reply, never, "{target}");
    }
    let gone = without_date(&exchange(f.server.edge, &get("/was-deleted")));
    assert!(gone.starts_with("HTTP/1.1 410"), "{gone}");
    for target in ["/is-disabled", "/has-expired"] {
        let reply = without_date(&exchange(f.server.edge, &get(target)));
        assert_eq!(reply, gone, "{target}");
    }
    f.finish().await;
}

// ---- more limits ------------------------------------------------------------------------

/// The `(listener, route, status)` counter of the edge, from `/metrics`.
async fn metric_value(f: &Fixture, name: &str, labels: &[&str]) -> Option<u64> {
    let text = f.server.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn a_request_target_over_the_limit_is_414_and_counted() {
    let f = Fixture::start_with(&[("CLICKEDGE_EDGE__MAX_REQUEST_TARGET_BYTES", "1024")]).await;
    let long = format!("/{CODE}?q={}", "a".repeat(1100));
    let reply = exchange(f.server.edge, &get(&long));
    assert_eq!(reply.status(), Some(414), "{reply:?}");
    assert_eq!(reply.header("cache-control"), ["private, no-store"]);
    let fits = format!("/{CODE}?q={}", "a".repeat(1000));
    assert_eq!(exchange(f.server.edge, &get(&fits)).status(), Some(302));
    let long_reserved = format!("/_x?q={}", "a".repeat(1100));
    assert_eq!(
        exchange(f.server.edge, &get(&long_reserved)).status(),
        Some(414)
    );
    let counted = metric_value(
        &f,
        "clickedge_http_requests_total",
        &["listener=\"edge\"", "status=\"414\""],
    )
    .await;
    assert_eq!(counted, Some(2));
    f.finish().await;
}

const H2_RST_STREAM: u8 = 0x3;
const H2_CANCEL: u32 = 0x8;
const H2_ENHANCE_YOUR_CALM: u32 = 0xb;

/// HTTP/2 rapid reset (CVE-2023-44487): a client that opens streams and
/// cancels them at once is cut off with GOAWAY ENHANCE_YOUR_CALM once it
/// has reset `edge.h2_max_reset_streams`, and the edge keeps serving.
#[tokio::test]
async fn http2_rapid_reset_is_cut_off_with_enhance_your_calm_and_counted() {
    let f = Fixture::start_with(&[("CLICKEDGE_EDGE__H2_MAX_RESET_STREAMS", "8")]).await;
    let mut s = connect(f.server.edge);
    let mut out = H2_PREFACE.to_vec();
    out.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    for i in 0..500u32 {
        let stream = 2 * i + 1;
        out.extend(h2_frame(
            H2_HEADERS,
            H2_END_STREAM | H2_END_HEADERS,
            stream,
            &h2_get(&format!("/{CODE}")),
        ));
        out.extend(h2_frame(H2_RST_STREAM, 0, stream, &H2_CANCEL.to_be_bytes()));
    }
    let _ = s.write_all(&out);
    // Read frames until GOAWAY (or the connection ends).
    s.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    let mut goaway = None;
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).is_err() {
            break;
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            break;
        }
        if head[3] == H2_GOAWAY && payload.len() >= 8 {
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            break;
        }
    }
    assert_eq!(goaway, Some(H2_ENHANCE_YOUR_CALM));
    drop(s);
    f.assert_healthy("h2 rapid reset").await;
    let counted = metric_value(&f, "clickedge_h2_reset_limit_total", &["listener=\"edge\""]);
    let counted = {
        let mut n = counted.await;
        // The connection task records its end a moment after the GOAWAY.
        for _ in 0..100 {
            if n == Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            n = metric_value(&f, "clickedge_h2_reset_limit_total", &["listener=\"edge\""]).await;
        }
        n
    };
    assert_eq!(counted, Some(1));
    f.finish().await;
}

/// The idle timeout is its own knob: with a long head deadline and a short
/// idle timeout, an idle h2 connection is closed after the latter.
#[tokio::test]
async fn an_idle_connection_is_closed_after_idle_timeout_ms_not_the_head_deadline() {
    let f = Fixture::start_with(&[
        ("CLICKEDGE_EDGE__HEADER_READ_TIMEOUT_MS", "600000"),
        ("CLICKEDGE_EDGE__IDLE_TIMEOUT_MS", "300"),
    ])
    .await;
    let mut s = h2_one_redirect(f.server.edge);
    let reply = read_reply(&mut s, DISCONNECT_BOUND);
    assert!(
        reply.closed(),
        "an idle h2 connection stayed open: {reply:?}"
    );
    f.finish().await;
}

// ---- slow bodies ---------------------------------------------------------------------------

/// `clickedge network add NAME`; waits until the edge knows it (a PUT on
/// its path is 405, not 404). Returns the secret.
fn add_network(f: &Fixture, name: &str) -> String {
    let out = f.server.cli(&["network", "add", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let put = format!("PUT /_postback/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let deadline = Instant::now() + DISCONNECT_BOUND;
    while exchange(f.server.edge, put.as_bytes()).status() != Some(405) {
        assert!(
            Instant::now() < deadline,
            "network {name} never became live"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    v["secret"].as_str().unwrap().to_owned()
}

/// A signed postback head announcing a 1000-byte body, and one body byte.
fn slow_postback(network: &str, secret: &str) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{{").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    format!(
        "POST /_postback/{network} HTTP/1.1\r\nHost: edge.test\r\nContent-Type: application/json\r\n\
         X-Clickedge-Signature: t={t},v1={sig}\r\nContent-Length: 1000\r\n\r\n{{"
    )
    .into_bytes()
}

#[tokio::test]
async fn slow_body_postbacks_from_one_client_never_stop_redirects_and_are_cut_at_the_deadline() {
    // A tiny instance: 4 redirect slots, 4 postback slots, 1.5 s for a
    // body (the deadline alone: no rate check).
    let f = Fixture::start_with(&[
        ("CLICKEDGE_EDGE__MAX_IN_FLIGHT", "4"),
        ("CLICKEDGE_EDGE__POSTBACK_MAX_IN_FLIGHT", "4"),
        ("CLICKEDGE_EDGE__BODY_READ_TIMEOUT_MS", "1500"),
        ("CLICKEDGE_EDGE__MIN_BODY_BYTES_PER_SEC", "0"),
    ])
    .await;
    let secret = add_network(&f, "slowpb");
    // Far more slow postbacks than slots, all from one client, all held.
    let mut held: Vec<TcpStream> = (0..24)
        .map(|_| {
            let mut s = connect(f.server.edge);
            s.write_all(&slow_postback("slowpb", &secret)).unwrap();
            s
        })
        .collect();
    // Meanwhile redirects run at full speed (as many at once as there are
    // redirect slots): not one of them may fail.
    let http = client();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let http = http.clone();
        let url = f.server.edge_url(&format!("/{CODE}"));
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..50 {
                let r = http.get(&url).header("user-agent", BROWSER_UA).send().await;
                statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
            }
            statuses
        }));
    }
    for t in tasks {
        let statuses = t.await.unwrap();
        assert!(
            statuses.iter().all(|&s| s == 302),
            "a redirect failed while postbacks were held: {statuses:?}"
        );
    }
    // Every held postback is answered: 400 `malformed` (field `body`,
    // deadline named) for those that got a slot, 503 for the rest.
    let (mut cut, mut shed) = (0, 0);
    for s in &mut held {
        let reply = read_reply(s, DISCONNECT_BOUND);
        match reply.status() {
            Some(400) => {
                let v = reply_json(&reply);
                assert_eq!(v["result"], "malformed", "{v}");
                assert_eq!(v["field"], "body", "{v}");
                assert!(
                    v["reason"].as_str().unwrap().contains("within 1500 ms"),
                    "{v}"
                );
                cut += 1;
            }
            Some(503) => shed += 1,
            _ => panic!("a slow postback got {reply:?}"),
        }
    }
    assert!((1..=4).contains(&cut), "at most the postback slots: {cut}");
    assert_eq!(cut + shed, 24);
    assert!(metric_value(&f, "clickedge_postbacks_shed_total", &[]).await >= Some(1));
    assert!(
        metric_value(
            &f,
            "clickedge_body_reads_refused_total",
            &["why=\"timeout\""]
        )
        .await
            >= Some(cut)
    );
    // The slots came back: a postback with a whole body is answered again.
    let reply = exchange(f.server.edge, &slow_postback("slowpb", &secret)[..]);
    assert!(reply.status().is_some(), "{reply:?}");
    f.finish().await;
}

#[tokio::test]
async fn a_postback_body_trickling_below_the_minimum_rate_is_cut_before_the_deadline() {
    let f = Fixture::start_with(&[
        ("CLICKEDGE_EDGE__BODY_READ_TIMEOUT_MS", "60000"),
        ("CLICKEDGE_EDGE__MIN_BODY_BYTES_PER_SEC", "100"),
    ])
    .await;
    let secret = add_network(&f, "drip");
    let mut s = connect(f.server.edge);
    s.write_all(&slow_postback("drip", &secret)).unwrap();
    // One byte every 200 ms: 5 bytes/s against 100 required.
    let mut reply = None;
    for _ in 0..100 {
        if s.write_all(b" ").is_err() {
            break;
        }
        let r = read_reply(&mut s, Duration::from_millis(200));
        if r.status().is_some() {
            reply = Some(r);
            break;
        }
    }
    let reply = reply.expect("the trickling body was never cut");
    assert_eq!(reply.status(), Some(400), "{reply:?}");
    let v = reply_json(&reply);
    assert_eq!(v["field"], "body", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("slower than 100 bytes/s"),
        "{v}"
    );
    f.finish().await;
}

#[tokio::test]
async fn an_admin_body_that_never_arrives_is_408_body_timeout() {
    let f = Fixture::start_with(&[("CLICKEDGE_ADMIN__BODY_READ_TIMEOUT_MS", "500")]).await;
    let mut s = connect(f.server.admin);
    write!(
        s,
        "POST /v1/links HTTP/1.1\r\nHost: admin.test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        f.token
    )
    .unwrap();
    let reply = read_reply(&mut s, DISCONNECT_BOUND);
    assert_eq!(reply.status(), Some(408), "{reply:?}");
    assert_eq!(reply_json(&reply)["error"]["code"], "body_timeout");
    f.finish().await;
}
