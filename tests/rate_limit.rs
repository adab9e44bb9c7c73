//! Per-client rate limiting on the public edge, against the real server.
//!
//! Clients are told apart by their source address: the tests connect from
//! 127.0.0.1 and 127.0.0.2 (all of 127/8 is loopback on Linux), or through
//! a trusted proxy with `X-Forwarded-For`. Limits are set so low that no
//! bucket refills while a test runs (one token per 1000 s), so every
//! assertion is a count, never a timing.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use common::{Api, Server};
use serde_json::json;

const CODE: &str = "promo";
/// One token per 1000 s: nothing refills during a test.
const SLOW: &str = "0.001";
const REDIRECT_BURST: usize = 40;
const NOT_FOUND_BURST: usize = 5;
// The test of "much sooner" needs a wide gap.
const _: () = assert!(REDIRECT_BURST >= 8 * NOT_FOUND_BURST);

struct Answer {
    status: u16,
    head: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// One `GET target` on a fresh connection from `source`, with extra raw
/// header lines.
fn get_from(edge: SocketAddr, source: IpAddr, target: &str, extra: &str) -> Answer {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind a loopback source address");
    socket.connect(&edge.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: edge.test\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    Answer { status, head }
}

const ONE: &str = "127.0.0.1";
const TWO: &str = "127.0.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn start(extra: &[(&str, &str)]) -> Server {
    let burst_r = REDIRECT_BURST.to_string();
    let burst_n = NOT_FOUND_BURST.to_string();
    let mut env = vec![
        ("CLICKEDGE_EDGE__RATE_LIMIT__REDIRECT_PER_SEC", SLOW),
        (
            "CLICKEDGE_EDGE__RATE_LIMIT__REDIRECT_BURST",
            burst_r.as_str(),
        ),
        ("CLICKEDGE_EDGE__RATE_LIMIT__NOT_FOUND_PER_SEC", SLOW),
        (
            "CLICKEDGE_EDGE__RATE_LIMIT__NOT_FOUND_BURST",
            burst_n.as_str(),
        ),
    ];
    env.extend_from_slice(extra);
    let server = Server::start_with(&env);
    let api = Api::new(&server, server.token("acme"));
    api.link(json!({"code": CODE, "destination": "https://shop.example/"}))
        .await;
    server
}

/// How many answers with `status` come before the first 429 (at most `limit` tries).
fn answered_before_429(
    edge: SocketAddr,
    source: &str,
    target: &str,
    status: u16,
    limit: usize,
) -> usize {
    for n in 0..limit {
        let a = get_from(edge, ip(source), target, "");
        if a.status == 429 {
            return n;
        }
        assert_eq!(a.status, status, "request {n} to {target}");
    }
    limit
}

async fn metrics(server: &Server) -> String {
    server.metrics_text().await
}

#[tokio::test]
async fn a_redirect_flood_gets_429_with_retry_after_and_no_store_and_is_counted() {
    let server = start(&[]).await;
    let target = format!("/{CODE}");
    let served = answered_before_429(server.edge, ONE, &target, 302, 10 * REDIRECT_BURST);
    assert_eq!(served, REDIRECT_BURST);
    let limited = get_from(server.edge, ip(ONE), &target, "");
    assert_eq!(limited.status, 429);
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(retry >= 1, "{retry}");
    assert_eq!(
        limited.header("cache-control").as_deref(),
        Some("private, no-store")
    );
    assert!(
        limited.header("set-cookie").is_none(),
        "no click, no cookie"
    );
    let text = metrics(&server).await;
    assert!(
        text.contains("clickedge_rate_limited_total{class=\"redirect\"} 2"),
        "{text}"
    );
    // A refused redirect is not a click: only the served ones are logged.
    let logged = common::eventually(Duration::from_secs(10), || {
        server.click_log_lines().len() == REDIRECT_BURST
    })
    .await;
    assert!(logged, "{} events", server.click_log_lines().len());
}

#[tokio::test]
async fn a_404_scan_is_throttled_much_sooner_than_redirects() {
    let server = start(&[]).await;
    let scanned = (0..)
        .map(|i| get_from(server.edge, ip(ONE), &format!("/guess{i:04}"), ""))
        .take_while(|a| a.status == 404)
        .count();
    assert_eq!(scanned, NOT_FOUND_BURST);
    // The scanner's redirects have their own, generous bucket.
    let target = format!("/{CODE}");
    assert_eq!(get_from(server.edge, ip(ONE), &target, "").status, 302);
    // Gone links, reserved paths and other methods count as scanning too.
    assert_eq!(get_from(server.edge, ip(ONE), "/_anything", "").status, 429);
    let text = metrics(&server).await;
    assert!(
        text.contains("clickedge_rate_limited_total{class=\"not_found\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn other_clients_keep_being_served_while_one_is_limited() {
    let server = start(&[]).await;
    let target = format!("/{CODE}");
    answered_before_429(server.edge, ONE, &target, 302, 10 * REDIRECT_BURST);
    answered_before_429(server.edge, ONE, "/nope", 404, 10 * NOT_FOUND_BURST);
    assert_eq!(get_from(server.edge, ip(ONE), &target, "").status, 429);
    assert_eq!(get_from(server.edge, ip(TWO), &target, "").status, 302);
    assert_eq!(get_from(server.edge, ip(TWO), "/nope", "").status, 404);
}

#[tokio::test]
async fn an_allow_listed_client_is_never_limited() {
    let server = start(&[("CLICKEDGE_EDGE__RATE_LIMIT__ALLOW", "[\"127.0.0.2/32\"]")]).await;
    for i in 0..(4 * NOT_FOUND_BURST) {
        let a = get_from(server.edge, ip(TWO), &format!("/guess{i}"), "");
        assert_eq!(a.status, 404, "404 number {i}");
    }
    let target = format!("/{CODE}");
    for i in 0..(2 * REDIRECT_BURST) {
        assert_eq!(
            get_from(server.edge, ip(TWO), &target, "").status,
            302,
            "redirect {i}"
        );
    }
    // Everyone else still is.
    assert_eq!(
        answered_before_429(server.edge, ONE, "/nope", 404, 10 * NOT_FOUND_BURST),
        NOT_FOUND_BURST
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket_and_ipv6_counts_by_64() {
    let server = start(&[("CLICKEDGE_EDGE__TRUSTED_PROXIES", "[\"127.0.0.1/32\"]")]).await;
    let via = |client: &str| format!("X-Forwarded-For: {client}, 127.0.0.1\r\n");
    let scan = |client: &str| {
        (0..10 * NOT_FOUND_BURST)
            .map(|i| get_from(server.edge, ip(ONE), &format!("/g{i}"), &via(client)).status)
            .take_while(|&s| s == 404)
            .count()
    };
    assert_eq!(scan("198.51.100.7"), NOT_FOUND_BURST);
    assert_eq!(scan("198.51.100.8"), NOT_FOUND_BURST, "another client");
    assert_eq!(scan("2001:db8:1:2::1"), NOT_FOUND_BURST);
    // Same /64, another address: the same bucket, already empty.
    assert_eq!(scan("2001:db8:1:2:ffff::9"), 0);
    assert_eq!(scan("2001:db8:1:3::1"), NOT_FOUND_BURST, "another /64");
    // The proxy itself, naming no client, is not one client: not limited.
    for i in 0..(3 * NOT_FOUND_BURST) {
        assert_eq!(
            get_from(server.edge, ip(ONE), &format!("/p{i}"), "").status,
            404
        );
    }
}

#[tokio::test]
async fn postbacks_have_their_own_bucket_apart_from_scans_and_redirects() {
    const POSTBACK_BURST: usize = 3;
    let server = start(&[
        ("CLICKEDGE_EDGE__RATE_LIMIT__POSTBACK_PER_SEC", SLOW),
        ("CLICKEDGE_EDGE__RATE_LIMIT__POSTBACK_BURST", "3"),
    ])
    .await;
    let out = server.cli(&["network", "add", "net"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Wait until `serve` knows the network (a wrong token is then 401
    // rather than 404), asking from a new address each time so the waiting
    // spends no bucket of the clients under test.
    let mut pollers = (10..=250).map(|n| IpAddr::from([127, 0, 0, n]));
    let known = common::eventually(Duration::from_secs(10), || {
        let from = pollers.next().expect("enough loopback addresses");
        get_from(server.edge, from, "/_postback/net?token=wrong", "").status == 401
    })
    .await;
    assert!(known);
    let target = "/_postback/net?token=wrong";
    assert_eq!(
        answered_before_429(server.edge, ONE, target, 401, 20),
        POSTBACK_BURST
    );
    // The same client's scan and redirect buckets are untouched.
    assert_eq!(get_from(server.edge, ip(ONE), "/nope", "").status, 404);
    assert_eq!(
        get_from(server.edge, ip(ONE), &format!("/{CODE}"), "").status,
        302
    );
    assert!(metrics(&server)
        .await
        .contains("clickedge_rate_limited_total{class=\"postback\"} 1"));
}
