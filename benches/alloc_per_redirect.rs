//! Heap allocations per redirect decision (target, issue 2: at most 3).
//!
//! Counts with dhat's allocator over many decisions and prints the mean.
//! Run: `cargo bench --bench alloc_per_redirect`.

use std::net::IpAddr;

use clickedge::clicks::{BotClassifier, CachedClassifier};
use clickedge::edge::redirect::{decide, Decision};

#[path = "support/mod.rs"]
mod support;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const ROUNDS: u64 = 10_000;

fn main() {
    let fx = support::fixture(10_000);
    let req = support::request("c0004242");
    let ip: IpAddr = "203.0.113.77".parse().unwrap();
    // The click-log writer's classifier: verdicts cached per user agent.
    let mut classifier = CachedClassifier::new(BotClassifier::default(), 8192);
    let mut buf = Vec::with_capacity(4096);
    let now = clickedge::time::now_ms();
    let mut run = |buf: &mut Vec<u8>| {
        let headers = support::redirect_and_encode(&fx, &req, ip, now, &mut classifier, buf);
        std::hint::black_box(headers);
    };
    // Warm thread-locals (RNG, arc-swap debts) outside the measurement.
    for _ in 0..100 {
        run(&mut buf);
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    let (per, bytes) = measure(|| run(&mut buf));
    println!("alloc_per_redirect: {per:.2} allocations, {bytes:.0} bytes per redirect decision (target <= 3)");
    let (per, _) = measure(|| {
        std::hint::black_box(decide(&fx.edge, &req, ip, false, now));
    });
    println!("  of which decide(): {per:.2}");
    let Decision::Redirect { event, .. } = decide(&fx.edge, &req, ip, false, now) else {
        panic!()
    };
    let (per, _) = measure(|| {
        buf.clear();
        let bot = classifier.classify(event.user_agent(), event.signals);
        clickedge::clicklog::record::encode(&event, bot, Default::default(), &mut buf);
    });
    println!("  of which classify + record encode: {per:.2}");
}

/// Mean (allocations, bytes) per call of `f`.
fn measure(mut f: impl FnMut()) -> (f64, f64) {
    let before = dhat::HeapStats::get();
    for _ in 0..ROUNDS {
        f();
    }
    let after = dhat::HeapStats::get();
    (
        (after.total_blocks - before.total_blocks) as f64 / ROUNDS as f64,
        (after.total_bytes - before.total_bytes) as f64 / ROUNDS as f64,
    )
}
