//! The writer's worst pause from the click index: 1.9M clicks in one hour
//! recorded in batches of 64 (a busy writer's batch), and the slowest
//! batches. A growing hash map copies everything it holds when it
//! rehashes; this shows how long the writer waits when that happens.
//! Run: `cargo bench --bench click_index_growth`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickedge::links::Link;
use clickedge::postback::click_index::{ClickIndex, IndexedClick};

#[path = "support/mod.rs"]
mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLICKS: usize = 1_900_000;
const BATCH: usize = 64;

fn main() {
    // As `serve` runs by default (`edge.transparent_huge_pages = false`).
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    // `cargo bench` passes `--bench`; nothing to parse.
    let index = ClickIndex::new(Duration::from_secs(30 * 86_400), 2_000_000);
    let links: Vec<Arc<Link>> = (0..1000)
        .map(|i| Arc::new(Link::reference(&format!("c{i:05}"), "bench")))
        .collect();
    let now = 1_790_000_000_000 / 3_600_000 * 3_600_000;
    let ids: Vec<String> = (0..CLICKS as u64)
        .map(|i| format!("{:016x}{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i))
        .collect();
    let mut pauses = Vec::with_capacity(CLICKS / BATCH + 1);
    // The index is the only thing that grows from here on.
    let rss_before = support::rss_mb();
    for (b, chunk) in ids.chunks(BATCH).enumerate() {
        let clicks = chunk.iter().enumerate().map(|(j, id)| IndexedClick {
            click_id: id,
            ts_ms: now,
            link: &links[(b * BATCH + j) % links.len()],
            bot: false,
        });
        let started = Instant::now();
        index.record_all(clicks, now);
        pauses.push(started.elapsed());
    }
    assert_eq!(index.len(), CLICKS);
    let index_mb = support::rss_mb() - rss_before;
    let total: Duration = pauses.iter().sum();
    pauses.sort_unstable();
    let at = |q: f64| pauses[((pauses.len() - 1) as f64 * q) as usize];
    println!(
        "{CLICKS} clicks in batches of {BATCH}: {:.0} ns per click; batch p50 {:?}, p99.9 {:?}, slowest {:?} {:?} {:?}; index RSS {index_mb:.0} MB",
        total.as_nanos() as f64 / CLICKS as f64,
        at(0.5),
        at(0.999),
        pauses[pauses.len() - 3],
        pauses[pauses.len() - 2],
        pauses[pauses.len() - 1],
    );
}
