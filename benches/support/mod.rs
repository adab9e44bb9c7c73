//! Builds a real `Edge` (link table, click ids, salt ratchet, click log)
//! for the benches, without any listener.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use clickedge::clicklog::{spawn_writer, WriterConfig, WriterHandle};
use clickedge::clicks::{CachedClassifier, ClickIds, SaltRatchet};
use clickedge::config::{Config, CookieConfig, OverflowPolicy};
use clickedge::edge::ratelimit::RateLimiter;
use clickedge::edge::redirect::{decide, Decision};
use clickedge::edge::shed::InFlightLimit;
use clickedge::edge::{CookieTemplate, Edge};
use clickedge::keys::MasterKey;
use clickedge::links::{Link, LinkRecord, LinkTable, SharedLinkTable};
use clickedge::stats::{StatsFeed, StatsIndex};
use clickedge::telemetry::EdgeMetrics;

pub const BROWSER_UA: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

const HIGH_LIMITS: &str =
    "[edge.rate_limit]\nredirect_per_sec = 1000000\nredirect_burst = 10000000";

pub fn record(code: String, destination: &str) -> LinkRecord {
    let now = Utc::now();
    LinkRecord {
        code,
        tenant: "bench".into(),
        destination: destination.into(),
        redirect: 302,
        created_at: now,
        updated_at: now,
        expires_at: None,
        disabled: false,
        deleted: false,
        tags: vec![],
        passthrough: true,
        rules: vec![],
        variants: vec![],
    }
}

pub fn table(n: usize) -> LinkTable {
    let mut t = LinkTable::default();
    for i in 0..n {
        t.insert(Link::compile(record(
            format!("c{i:07}"),
            "https://shop.example.com/product/12345?aff=77&cid={click_id}",
        )));
    }
    t
}

pub struct Fixture {
    pub edge: Edge,
    pub writer: WriterHandle,
    _dir: tempfile::TempDir,
}

pub fn fixture(links: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(SharedLinkTable::default());
    shared.replace(table(links));
    let master = MasterKey::for_tests();
    let salts = SaltRatchet::open(
        dir.path(),
        Duration::from_secs(86_400),
        Duration::from_secs(300),
        clickedge::time::now_ms() as u64,
    )
    .unwrap();
    let (clicklog, writer) = spawn_writer(
        WriterConfig {
            data_dir: dir.path().to_owned(),
            queue_capacity: 1024,
            overflow: OverflowPolicy::Backpressure,
            overflow_wait: Duration::from_millis(50),
            fsync_interval: Duration::from_millis(50),
            segment_bytes: 64 << 20,
            retention: Duration::from_secs(90 * 86_400),
            delete_old_segments: true,
        },
        vec![Box::new(StatsFeed::new(
            Arc::new(StatsIndex::default()),
            dir.path(),
            Duration::from_secs(3600),
            Duration::from_secs(90 * 86_400),
        ))],
    )
    .unwrap();
    let cookie_cfg = CookieConfig {
        name: "ce_click".into(),
        max_age_secs: 604_800,
    };
    let salts = Arc::new(salts);
    let limiter = Arc::new(RateLimiter::new(
        // High limits: the benches measure the allowed path.
        &Config::from_toml(HIGH_LIMITS).unwrap().edge.rate_limit,
        vec![],
        salts.clone(),
    ));
    let edge = Edge {
        links: shared,
        ids: ClickIds::new(&master),
        salts,
        clicklog,
        trusted_proxies: vec![],
        geo: Default::default(),
        cookie: CookieTemplate::new(&cookie_cfg, false),
        secure_cookie: CookieTemplate::new(&cookie_cfg, true),
        metrics: EdgeMetrics::register(),
        postbacks: None,
        limiter,
        max_request_target_bytes: 8192,
        in_flight: InFlightLimit::new(10_000),
        postback_in_flight: InFlightLimit::new(1000),
        https_redirect: None,
    };
    Fixture {
        edge,
        writer,
        _dir: dir,
    }
}

/// One whole redirect as the server does it: the edge's decision, then the
/// click-log writer's classification and encoding of the event's record
/// into `buf`.
/// Returns the headers the edge would send.
pub fn redirect_and_encode(
    fx: &Fixture,
    req: &http::Request<()>,
    ip: std::net::IpAddr,
    now_ms: i64,
    classifier: &mut CachedClassifier,
    buf: &mut Vec<u8>,
) -> (http::HeaderValue, http::HeaderValue) {
    let Decision::Redirect {
        event,
        location,
        cookie,
        ..
    } = decide(&fx.edge, req, ip, false, now_ms)
    else {
        panic!("expected a redirect")
    };
    buf.clear();
    // As the click-log writer does it: device and OS from the cached
    // classifier unless the edge already parsed them.
    let (bot, agent) = classifier.classify_with_agent(event.user_agent(), event.signals);
    let mut route = event.route;
    if !route.has_agent() {
        route.set_agent(agent);
    }
    clickedge::clicklog::record::encode(&event, bot, route, buf);
    (location, cookie)
}

pub fn request(code: &str) -> http::Request<()> {
    http::Request::get(format!(
        "/{code}?sub=spring-sale&utm_source=newsletter&gclid=abc123"
    ))
    .header("user-agent", BROWSER_UA)
    .header("referer", "https://news.example.org/article/42")
    .body(())
    .unwrap()
}

/// This process's resident set in MB (0 where `/proc` has none).
pub fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
