//! Redirect-path micro-benchmarks.
//!
//! Targets (issue 2): the full redirect decision — lookup, click id, IP hash,
//! `Location`, cookie and event encoding — at most 1 µs per request; and the
//! cost of publishing a change to a 1M-link table (a persistent map: one
//! O(log n) path copy, not a rebuild).

use std::hint::black_box;
use std::net::IpAddr;

use clickedge::clicks::{BotClassifier, CachedClassifier};
use clickedge::edge::ratelimit::Class;
use clickedge::edge::redirect::{decide, Decision};
use clickedge::links::{Link, SharedLinkTable};
use criterion::{criterion_group, criterion_main, Criterion};

#[path = "support/mod.rs"]
mod support;

/// The allocator of the `clickedge` binary, so the figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn redirect_decision(c: &mut Criterion) {
    let fx = support::fixture(100_000);
    let req = support::request("c0004242");
    let ip: IpAddr = "203.0.113.77".parse().unwrap();
    // The click-log writer's classifier: verdicts cached per user agent.
    let mut classifier = CachedClassifier::new(BotClassifier::default(), 8192);
    let mut buf = Vec::with_capacity(4096);
    let now = clickedge::time::now_ms();
    c.bench_function("redirect_decision_and_event_encode", |b| {
        b.iter(|| {
            let headers =
                support::redirect_and_encode(&fx, &req, ip, now, &mut classifier, &mut buf);
            black_box((headers, &buf));
        })
    });
    let uncached = BotClassifier::default();
    let ua = support::BROWSER_UA;
    c.bench_function("bot_classify_uncached", |b| {
        b.iter(|| black_box(uncached.classify(black_box(ua), Default::default())))
    });
    c.bench_function("redirect_decision_only", |b| {
        b.iter(|| black_box(decide(&fx.edge, &req, ip, false, now)))
    });
    // What `handle` adds per request since issue 6: one rate-limit check
    // (client IP, salted hash, bucket lookup and CAS), on its own and with
    // the decision. The fixture's limits never trip (the allowed path); the
    // many-clients case cycles through 65536 tracked buckets.
    let headers = req.headers();
    c.bench_function("rate_limit_check_one_client", |b| {
        b.iter(|| black_box(fx.edge.limiter.check(Class::Redirect, ip, headers, now)))
    });
    let mut n = 0u32;
    c.bench_function("rate_limit_check_many_clients", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let ip = IpAddr::from((0x0a00_0000 | (n & 0xffff)).to_be_bytes());
            black_box(fx.edge.limiter.check(Class::Redirect, ip, headers, now))
        })
    });
    // As `handle` does it: the limiter reuses the event's IP hash.
    c.bench_function("redirect_decision_and_rate_limit", |b| {
        b.iter(|| {
            let d = decide(&fx.edge, &req, ip, false, now);
            let hashed = match &d {
                Decision::Redirect { event, .. } => Some(event.ip_hash),
                _ => None,
            };
            let started = std::time::Instant::now();
            let limiter = &fx.edge.limiter;
            black_box(limiter.check_client(Class::Redirect, ip, hashed, now, started));
            black_box(d)
        })
    });
}

fn table_at_one_million(c: &mut Criterion) {
    let shared = SharedLinkTable::default();
    shared.replace(support::table(1_000_000));
    let mut g = c.benchmark_group("table_1m");
    g.bench_function("lookup", |b| {
        b.iter(|| black_box(shared.load().get(black_box("c0777777")).is_some()))
    });
    let mut i = 0u64;
    g.bench_function("publish_one_change", |b| {
        b.iter(|| {
            i += 1;
            let rec = support::record(format!("c{:07}", i % 1_000_000), "https://changed.example/");
            shared.update([Link::compile(rec)])
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = redirect_decision, table_at_one_million
}
criterion_main!(benches);
