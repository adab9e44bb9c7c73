//! The click index on the click-log writer's thread: one `record` per
//! written click (postback matching in embedded mode and for recent clicks
//! in full mode), and one `find` per postback.

use std::hint::black_box;

use clickedge::postback::{ClickIndex, ClickLookup};
use criterion::{criterion_group, criterion_main, Criterion};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY_MS: i64 = 86_400_000;
const BASE_MS: i64 = 1_790_000_000_000;
/// Clicks per simulated day: days roll over, so old ones leave whole and
/// the index stays at its steady size rather than growing with the run.
const PER_DAY: u64 = 100_000;
const IDS: u64 = 1 << 20;

/// A 32-byte id unique to `i` (the index only needs the length and the
/// bytes; ids here are not tagged).
fn id(i: u64) -> String {
    format!("{:016x}{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i)
}

fn click_index(c: &mut Criterion) {
    let index = ClickIndex::new(std::time::Duration::from_secs(30 * 86_400), 2_000_000);
    let codes: Vec<String> = (0..2000).map(|i| format!("c{i:07}")).collect();
    // Ids made up front: the loop measures the index, not formatting.
    let ids: Vec<String> = (0..IDS).map(id).collect();
    let mut i = 0u64;
    c.bench_function("click_index_record", |b| {
        b.iter(|| {
            i += 1;
            let ts = BASE_MS + (i / PER_DAY) as i64 * DAY_MS;
            let id = &ids[(i % IDS) as usize];
            index.record(id, ts, &codes[(i % 2000) as usize], "acme", false, ts);
        })
    });
    let last = i;
    let mut j = 0u64;
    c.bench_function("click_index_find", |b| {
        b.iter(|| {
            j = (j + 7919) % 50_000;
            let n = last - j;
            let ts = BASE_MS + (n / PER_DAY) as i64 * DAY_MS;
            black_box(index.find(&ids[(n % IDS) as usize], ts).is_some())
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = click_index
}
criterion_main!(benches);
