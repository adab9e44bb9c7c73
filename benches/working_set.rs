//! What a click costs when its link is cold: every step of a redirect over
//! 2,000 links (they stay in cache) and over 100,000 (they do not), codes
//! taken in a shuffled order as uniform traffic would.
//!
//! `loadtest/vs-nginx` showed clickedge answering about a quarter fewer
//! requests with 100k links than with 2k; these benches say which step's
//! data is the one that misses.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use clickedge::clicks::{BotClassifier, CachedClassifier};
use clickedge::edge::redirect::{decide, Decision};
use clickedge::postback::click_index::{ClickIndex, IndexedClick};
use clickedge::stats::StatsIndex;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

#[path = "support/mod.rs"]
mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Requests for every code of a `links`-link fixture, in a shuffled order.
fn requests(links: usize) -> Vec<http::Request<()>> {
    let mut order: Vec<usize> = (0..links).collect();
    // A fixed LCG shuffle: the same order every run.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..order.len()).rev() {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    order
        .into_iter()
        .map(|i| support::request(&format!("c{i:07}")))
        .collect()
}

fn working_set(c: &mut Criterion) {
    let ip: IpAddr = "203.0.113.77".parse().unwrap();
    let now = clickedge::time::now_ms();
    let mut g = c.benchmark_group("cold_link");
    for links in [2_000, 100_000] {
        let fx = support::fixture(links);
        let reqs = requests(links);
        let codes: Vec<String> = reqs
            .iter()
            .map(|r| r.uri().path()[1..].to_owned())
            .collect();
        let mut i = 0;
        let mut next = || {
            i = (i + 1) % reqs.len();
            i
        };
        g.bench_function(BenchmarkId::new("table_lookup", links), |b| {
            b.iter(|| black_box(fx.edge.links.load().get(&codes[next()]).is_some()))
        });
        g.bench_function(BenchmarkId::new("decide", links), |b| {
            b.iter(|| black_box(decide(&fx.edge, &reqs[next()], ip, false, now)))
        });
        // The writer's per-click work, as `Writer::encode` and the batch
        // after it do it: classify, encode, then stats and the click index.
        let stats = StatsIndex::default();
        let index = ClickIndex::new(std::time::Duration::from_secs(30 * 86_400), 2_000_000);
        let mut classifier = CachedClassifier::new(BotClassifier::default(), 8192);
        let mut buf = Vec::with_capacity(1 << 20);
        let events: Vec<_> = (0..reqs.len())
            .map(|j| match decide(&fx.edge, &reqs[j], ip, false, now) {
                Decision::Redirect { event, .. } => Arc::new(event),
                _ => unreachable!("every code is a link"),
            })
            .collect();
        g.bench_function(BenchmarkId::new("writer_encode", links), |b| {
            b.iter(|| {
                let ev = &events[next()];
                if buf.len() > 1 << 19 {
                    buf.clear();
                }
                let bot = classifier.classify(ev.user_agent(), ev.signals);
                clickedge::clicklog::record::encode(ev, bot, Default::default(), &mut buf);
            })
        });
        let at = clickedge::clicklog::Position::default();
        g.bench_function(BenchmarkId::new("writer_stats", links), |b| {
            b.iter(|| {
                let ev = &events[next()];
                stats.count(&ev.link, ev.ts_ms, false, ev.ip_hash.visitor_key(), at);
            })
        });
        g.bench_function(BenchmarkId::new("writer_click_index", links), |b| {
            b.iter(|| {
                let ev = &events[next()];
                let click = IndexedClick {
                    click_id: ev.click_id.as_str(),
                    ts_ms: ev.ts_ms,
                    link: &ev.link,
                    bot: false,
                };
                // Ids repeat once the events wrap: a replace, as costly.
                index.record_all([click], now);
            })
        });
        drop(fx.writer.shutdown());
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = working_set
}
criterion_main!(benches);
