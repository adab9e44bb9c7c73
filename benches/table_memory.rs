//! Resident memory of the link table at one million links, by layer
//! (issue 5 target: RSS with 1M links ≤ 250 MB for the whole process).
//! Run: `cargo bench --bench table_memory`.

use clickedge::links::{Link, SharedLinkTable};

#[path = "support/mod.rs"]
mod support;

/// The allocator of the `clickedge` binary, so the figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LINKS: usize = 1_000_000;

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let base = rss_mb();
    let records: Vec<_> = (0..LINKS)
        .map(|i| {
            support::record(
                format!("lt{i:06}"),
                &format!("https://shop.example/p/{i:06}?utm_source=ce&cid={{click_id}}"),
            )
        })
        .collect();
    let with_records = rss_mb();
    let shared = SharedLinkTable::default();
    // Published the way the admin batch API does: 1000 links per swap.
    for chunk in records.chunks(1000) {
        shared.update(chunk.iter().cloned().map(Link::compile));
    }
    let with_table = rss_mb();
    println!(
        "table_memory: {LINKS} links: store records {:.0} MB, edge table {:.0} MB ({:.0} bytes/link), total {:.0} MB",
        with_records - base,
        with_table - with_records,
        (with_table - with_records) * 1024.0 * 1024.0 / LINKS as f64,
        with_table - base,
    );
    std::hint::black_box((records, shared.load().len()));
}
