//! Resident memory of one million links held by the store and published to
//! the edge, and the cost of one batch publish into them (issue 5 targets:
//! RSS with 1M links ≤ 250 MB for the whole process; no latency spike above
//! 10 ms while batches are published).
//! Run: `cargo bench --bench table_memory`.

use std::sync::Arc;
use std::time::Instant;

use clickedge::links::{Link, SharedLinkTable};
use clickedge::store::{NewLink, Store};

#[path = "support/mod.rs"]
mod support;

/// The allocator of the `clickedge` binary, so the figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LINKS: usize = 1_000_000;
/// As the admin batch API sends them.
const BATCH: usize = 1000;

fn destination(i: usize) -> String {
    format!("https://shop.example/p/{i:06}?utm_source=ce&cid={{click_id}}")
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(SharedLinkTable::default());
    let store = Store::open(dir.path(), 8, shared.clone(), false).unwrap();
    let base = support::rss_mb();
    // Minted the way the admin batch API does: 1000 links per durable
    // append and table swap.
    for start in (0..LINKS).step_by(BATCH) {
        let batch = (start..start + BATCH)
            .map(|i| NewLink {
                code: Some(format!("lt{i:06}")),
                record: support::record(String::new(), &destination(i)),
            })
            .collect();
        for result in store.create_links(batch) {
            result.unwrap();
        }
    }
    let with_links = support::rss_mb();
    println!(
        "table_memory: {LINKS} links in the store and the published table: {:.0} MB ({:.0} bytes/link)",
        with_links - base,
        (with_links - base) * 1024.0 * 1024.0 / LINKS as f64,
    );

    // One batch publish into the full table, without the file: what a
    // swap costs the core the edge shares.
    let mut took = Vec::new();
    for round in 0..20 {
        let links: Vec<Link> = (0..BATCH)
            .map(|i| {
                Link::compile(support::record(
                    format!("zz{round:02}{i:04}"),
                    &destination(i),
                ))
            })
            .collect();
        let started = Instant::now();
        shared.update(links);
        took.push(started.elapsed());
    }
    took.sort();
    println!(
        "  publish {BATCH} new links into {LINKS}: median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    std::hint::black_box((store.link_count(), shared.load().len()));
}
