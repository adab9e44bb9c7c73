//! Routing micro-benchmarks (issue 17).
//!
//! Target: the redirect decision for a link with 8 rules and 4 variants
//! costs at most 150 ns more than a plain link's, side by side on the same
//! table; a plain link's cost does not change. The routed link is the
//! worst case: every rule asks about the device (so the agent is parsed)
//! and none matches (so all eight are tried and then a variant is drawn).
//!
//! Also the device/OS matcher against the `woothee` crate on a mix of
//! agents (uap-core's parsers need its regex file, which the project does
//! not ship: not measured).

use std::hint::black_box;
use std::net::IpAddr;

use clickedge::edge::redirect::decide;
use clickedge::links::routing::{parse_rules, parse_variants, Visit};
use clickedge::links::{agent, Link};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

#[path = "support/mod.rs"]
mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AGENTS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Instagram 300.0.0.0 (iPhone14,2; iOS 17_0; en_US)",
];

/// A link with 8 rules (each on country and device) and 4 variants.
fn routed(code: &str) -> Link {
    let countries = ["DE", "AT", "CH", "FR", "IT", "ES", "NL", "BE"];
    let rules: Vec<_> = countries
        .iter()
        .map(|c| {
            json!({"if": {"country": [c], "device": ["mobile", "tablet"]},
                   "destination": format!("https://{c}.shop.example.com/p?cid={{click_id}}")})
        })
        .collect();
    let variants: Vec<_> = (0..4)
        .map(|i| json!({"destination": format!("https://v{i}.shop.example.com/p?cid={{click_id}}"), "weight": 25 * (i + 1)}))
        .collect();
    let mut rec = support::record(
        code.to_owned(),
        "https://shop.example.com/product/12345?aff=77&cid={click_id}",
    );
    rec.rules = parse_rules(&json!(rules)).unwrap();
    rec.variants = parse_variants(&json!(variants)).unwrap();
    Link::compile(rec)
}

fn decision(c: &mut Criterion) {
    let fx = support::fixture(100_000);
    fx.edge.links.update([routed("routed1")]);
    let plain = support::request("c0004242");
    let routed_req = support::request("routed1");
    let ip: IpAddr = "203.0.113.77".parse().unwrap();
    let now = clickedge::time::now_ms();
    let mut g = c.benchmark_group("redirect_decision");
    g.bench_function("plain_link", |b| {
        b.iter(|| black_box(decide(&fx.edge, &plain, ip, false, now)))
    });
    g.bench_function("8_rules_4_variants", |b| {
        b.iter(|| black_box(decide(&fx.edge, &routed_req, ip, false, now)))
    });
    g.finish();
    // The routing step alone (what a routed link adds), without the rest
    // of the decision's noise.
    let link = routed("routed2");
    let routing = link.routing().unwrap();
    let digest = [0x5a; 16];
    let visit = Visit {
        now_ms: now,
        country: [0, 0],
        user_agent: support::BROWSER_UA.as_bytes(),
        accept_language: b"en-US,en;q=0.9",
        ip_digest: &digest,
    };
    c.bench_function("routing_choose_8_rules_4_variants", |b| {
        b.iter(|| black_box(routing.choose(black_box(&visit))))
    });
}

fn agents(c: &mut Criterion) {
    let mut g = c.benchmark_group("user_agent_6_mixed");
    g.bench_function("hand_ordered_matcher", |b| {
        b.iter(|| {
            for ua in AGENTS {
                black_box(agent::parse(black_box(ua.as_bytes())));
            }
        })
    });
    let parser = woothee::parser::Parser::new();
    g.bench_function("woothee", |b| {
        b.iter(|| {
            for ua in AGENTS {
                black_box(parser.parse(black_box(ua)));
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = decision, agents
}
criterion_main!(benches);
