//! The click index: click id → (link, tenant, time, bot) for the clicks this
//! node recorded, so a postback can be matched without reading the log.
//!
//! Shape: per UTC hour, in a `BTreeMap` by hour, 256 hash maps split by
//! the id's tag (`SHARD_BITS`). A verified click id carries its own
//! timestamp, so a lookup goes straight to one hour; old clicks leave by
//! whole hours, with no per-entry bookkeeping. Hours rather than days: the
//! cap can drop the oldest clicks without dropping today's; shards: a map
//! that grows copies at most 1/256 of an hour's clicks at once.
//!
//! Memory bound: only clicks younger than `postback.click_index_days` are
//! kept, and never more than `postback.click_index_max_clicks`; past that
//! the oldest hour is dropped whole (even the current one, if it alone is
//! over the cap: the bound holds under any traffic). An entry is a 32-byte
//! key plus a 24-byte value (a shared link handle, the time, the bot flag)
//! in a hashbrown map: about 56 bytes of payload, ~64–130 bytes per click with
//! the map's load factor, ~90 on average. The default cap of 2,000,000
//! clicks is therefore ~180 MB at most; size it as clicks per day × window
//! days. Each hour that holds clicks adds ~12 KB of empty shards (30 days
//! of hours: ~9 MB). A click refers to its link through the edge's own
//! `Arc<Link>`: the writer hands it over with the click, so indexing a click looks
//! nothing up by code (at 100k links that lookup missed the cache on every
//! click). A link changed since keeps its old version alive only while
//! clicks on that version are held.
//!
//! Fed two ways: at start-up from the click-log segments younger than the
//! window (start-up reads them once), then by the click-log writer right
//! after each batch is on disk. A postback whose click is not (yet) here is
//! `unknown_click`; reconciliation looks those up again when it reads.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::clicklog::record::Record;
use crate::clicklog::{segments, Batch, Consumer, Position};
use crate::links::Link;

/// The span of one map.
const BUCKET_MS: i64 = 3_600_000;
/// An hour's clicks are split in `2^SHARD_BITS` maps: a growing map
/// rehashes (copies) all it holds at once, on the writer's thread, and a
/// 2M-click map took long enough that the click-log queue filled. The
/// shards fill evenly, so they grow at about the same time: what keeps a
/// batch short is how little one shard holds (`click_index_growth`, 1.9M
/// clicks: slowest batch 452 ms with one map, 40–42 ms with 16, 0.6–6 ms
/// with 256).
const SHARD_BITS: u32 = 8;
/// An hour this big is freed on a background thread: dropping it releases
/// one link reference per click (2M clicks: a stall the edge's core felt).
const FREE_ELSEWHERE: usize = 10_000;

/// One written click, as the index takes it.
#[derive(Debug, Clone, Copy)]
pub struct IndexedClick<'a> {
    pub click_id: &'a str,
    pub ts_ms: i64,
    pub link: &'a Arc<Link>,
    pub bot: bool,
}

#[derive(Debug, Clone)]
pub struct ClickRef {
    /// Only its code and tenant are read.
    pub link: Arc<Link>,
    pub ts_ms: i64,
    pub bot: bool,
}

/// foldhash rather than SipHash: the keys are ids this service minted and
/// link codes, not attacker-chosen, and the writer hashes one per click.
type Fast = foldhash::fast::RandomState;

#[derive(Default)]
struct Days {
    /// By hour since the epoch.
    hours: BTreeMap<i64, Hour>,
    /// [`Link::reference`]s by code, for clicks recorded by code and
    /// tenant (read back from the log): one per link, not one per click.
    /// A code never moves to another tenant (codes are not reused).
    references: HashMap<String, Arc<Link>, Fast>,
    /// The tenants' owners the references share (a handful).
    owners: HashMap<String, Arc<crate::links::Owner>, Fast>,
}

/// One hour's clicks.
struct Hour {
    /// Boxed: 256 empty maps are 12 KB, moved whole otherwise.
    shards: Box<[HashMap<[u8; 32], ClickRef, Fast>; 1 << SHARD_BITS]>,
    len: usize,
}

impl Default for Hour {
    fn default() -> Hour {
        Hour {
            shards: Box::new(std::array::from_fn(|_| HashMap::default())),
            len: 0,
        }
    }
}

impl Hour {
    /// From the id's last bytes (its tag, a keyed hash), mixed so that any
    /// ids spread evenly.
    fn shard(key: &[u8; 32]) -> usize {
        let tail = u32::from_le_bytes(key[28..].try_into().expect("4 bytes"));
        (tail.wrapping_mul(0x9E37_79B1) >> (32 - SHARD_BITS)) as usize
    }

    /// Adds or replaces; true if the id is new.
    fn insert(&mut self, key: [u8; 32], click: ClickRef) -> bool {
        let new = self.shards[Hour::shard(&key)].insert(key, click).is_none();
        self.len += usize::from(new);
        new
    }

    fn get(&self, key: &[u8; 32]) -> Option<&ClickRef> {
        self.shards[Hour::shard(key)].get(key)
    }
}

pub struct ClickIndex {
    window_ms: i64,
    max_clicks: usize,
    inner: RwLock<Days>,
    len: AtomicUsize,
}

impl ClickIndex {
    pub fn new(window: std::time::Duration, max_clicks: usize) -> ClickIndex {
        ClickIndex {
            window_ms: window.as_millis() as i64,
            max_clicks: max_clicks.max(1),
            inner: RwLock::default(),
            len: AtomicUsize::new(0),
        }
    }

    /// Clicks held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds one click known by its link's code and tenant (read back from
    /// the log). Ids that are not 32 bytes are ignored.
    pub fn record(
        &self,
        click_id: &str,
        ts_ms: i64,
        code: &str,
        tenant: &str,
        bot: bool,
        now_ms: i64,
    ) {
        let link = {
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            match inner.references.get(code) {
                Some(l) if l.tenant() == tenant => l.clone(),
                _ => {
                    // One owner per tenant, shared by its references.
                    let owner = match inner.owners.get(tenant) {
                        Some(o) => o.clone(),
                        None => {
                            let o = crate::links::Owner::tenant(tenant.to_owned());
                            inner.owners.insert(tenant.to_owned(), o.clone());
                            o
                        }
                    };
                    let l = Arc::new(Link::reference_for(code, &owner));
                    inner.references.insert(code.to_owned(), l.clone());
                    l
                }
            }
        };
        let click = IndexedClick {
            click_id,
            ts_ms,
            link: &link,
            bot,
        };
        self.record_all([click], now_ms);
    }

    /// Adds written clicks under one lock: the click-log writer's batch.
    pub fn record_all<'a>(&self, clicks: impl IntoIterator<Item = IndexedClick<'a>>, now_ms: i64) {
        let mut guard = None;
        for click in clicks {
            let Ok(key) = <[u8; 32]>::try_from(click.click_id.as_bytes()) else {
                continue;
            };
            if click.ts_ms < now_ms - self.window_ms {
                continue;
            }
            let inner =
                guard.get_or_insert_with(|| self.inner.write().unwrap_or_else(|p| p.into_inner()));
            self.insert(inner, key, &click, now_ms);
        }
    }

    fn insert(&self, inner: &mut Days, key: [u8; 32], click: &IndexedClick<'_>, now_ms: i64) {
        let hour = click.ts_ms.div_euclid(BUCKET_MS);
        let new_hour = !inner.hours.contains_key(&hour);
        let value = ClickRef {
            link: click.link.clone(),
            ts_ms: click.ts_ms,
            bot: click.bot,
        };
        if inner.hours.entry(hour).or_default().insert(key, value) {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        if new_hour {
            self.expire(inner, now_ms);
        }
        while self.len() > self.max_clicks && !inner.hours.is_empty() {
            let dropped = self.drop_oldest(inner);
            tracing::info!(
                clicks = dropped,
                max_clicks = self.max_clicks,
                "click index: over postback.click_index_max_clicks; its oldest hour dropped"
            );
        }
    }

    fn expire(&self, inner: &mut Days, now_ms: i64) {
        let oldest = (now_ms - self.window_ms).div_euclid(BUCKET_MS);
        while inner
            .hours
            .first_key_value()
            .is_some_and(|(h, _)| *h < oldest)
        {
            self.drop_oldest(inner);
        }
        // References no click refers to any more.
        inner.references.retain(|_, l| Arc::strong_count(l) > 1);
    }

    /// Returns how many clicks went.
    fn drop_oldest(&self, inner: &mut Days) -> usize {
        let Some((_, hour)) = inner.hours.pop_first() else {
            return 0;
        };
        let dropped = hour.len;
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        if dropped >= FREE_ELSEWHERE {
            // Not under the lock, nor in the writer's or the edge's time
            // (if the thread cannot start, the hour is dropped here).
            let _ = crate::background::spawn("click-index-free", move || drop(hour));
        }
        dropped
    }

    /// Rebuilds from the click log in `log_dir`: every event younger than
    /// the window. Returns how many clicks were indexed.
    pub fn load_log(&self, log_dir: &Path, now_ms: i64) -> std::io::Result<usize> {
        if !log_dir.is_dir() {
            return Ok(0);
        }
        let cutoff =
            std::time::SystemTime::now() - std::time::Duration::from_millis(self.window_ms as u64);
        // Segments last written before the window hold nothing we keep.
        let first = segments::list(log_dir)?.into_iter().find(|seq| {
            std::fs::metadata(segments::segment_path(log_dir, *seq))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= cutoff)
        });
        let Some(first) = first else { return Ok(0) };
        let before = self.len();
        segments::read_from(
            log_dir,
            Position {
                segment: first,
                offset: 0,
            },
            |payload, _| {
                if let Ok(r) = Record::decode(payload) {
                    self.record(
                        r.click_id,
                        r.ts_ms,
                        r.code,
                        r.tenant,
                        r.bot.is_some(),
                        now_ms,
                    );
                }
            },
        )?;
        Ok(self.len() - before.min(self.len()))
    }
}

/// The click index as a click-log consumer: built from the log at start-up,
/// then fed each written batch under one lock.
pub struct ClickIndexFeed(pub Arc<ClickIndex>);

impl Consumer for ClickIndexFeed {
    fn recover(&mut self, log_dir: &Path, _end: Position) -> std::io::Result<()> {
        let indexed = self.0.load_log(log_dir, crate::time::now_ms())?;
        tracing::info!(
            clicks = indexed,
            "postback: click index built from the click log"
        );
        Ok(())
    }

    fn written(&mut self, batch: &Batch<'_>) {
        let now_ms = crate::time::now_ms();
        self.0.record_all(
            batch.clicks.iter().map(|w| IndexedClick {
                click_id: w.event.click_id.as_str(),
                ts_ms: w.event.ts_ms,
                link: &w.event.link,
                bot: w.bot.is_some(),
            }),
            now_ms,
        );
    }
}

impl super::ClickLookup for ClickIndex {
    fn find(&self, click_id: &str, ts_ms: i64) -> Option<ClickRef> {
        let key = <[u8; 32]>::try_from(click_id.as_bytes()).ok()?;
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .hours
            .get(&ts_ms.div_euclid(BUCKET_MS))
            .and_then(|h| h.get(&key))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::ClickLookup;
    use super::*;
    use std::time::Duration;

    const NOW: i64 = 1_790_000_000_000;
    const DAY_MS: i64 = 86_400_000;

    fn id(n: u32) -> String {
        format!("{n:032}")
    }

    #[test]
    fn recorded_clicks_are_found_by_id_and_time() {
        let ix = ClickIndex::new(Duration::from_secs(30 * 86_400), 100);
        ix.record(&id(1), NOW - 5, "spring", "acme", false, NOW);
        let c = ix.find(&id(1), NOW - 5).unwrap();
        assert_eq!(c.link.code(), "spring");
        assert_eq!(c.link.tenant(), "acme");
        assert!(ix.find(&id(2), NOW).is_none());
        assert!(ix.find("short", NOW).is_none());
    }

    #[test]
    fn clicks_older_than_the_window_are_not_kept() {
        let ix = ClickIndex::new(Duration::from_secs(86_400), 100);
        ix.record(&id(1), NOW - 3 * DAY_MS, "a", "t", false, NOW);
        assert!(ix.is_empty());
        ix.record(&id(2), NOW - DAY_MS / 2, "a", "t", false, NOW);
        assert_eq!(ix.len(), 1);
        // Days later, a new hour's first click expires the old hours.
        ix.record(&id(3), NOW + 3 * DAY_MS, "a", "t", false, NOW + 3 * DAY_MS);
        assert_eq!(ix.len(), 1);
        assert!(ix.find(&id(2), NOW - DAY_MS / 2).is_none());
    }

    #[test]
    fn the_cap_drops_whole_oldest_hours() {
        let ix = ClickIndex::new(Duration::from_secs(30 * 86_400), 3);
        for (n, day) in [(1, 5), (2, 5), (3, 4), (4, 3)] {
            ix.record(&id(n), NOW - day * DAY_MS, "a", "t", false, NOW);
        }
        // Day -5's hour (two clicks) went when the fourth click passed the cap.
        assert_eq!(ix.len(), 2);
        assert!(ix.find(&id(1), NOW - 5 * DAY_MS).is_none());
        assert!(ix.find(&id(4), NOW - 3 * DAY_MS).is_some());
    }

    #[test]
    fn an_hour_spreads_its_clicks_over_its_shards() {
        let mut hour = Hour::default();
        let link = Arc::new(Link::reference("a", "t"));
        for n in 0..25_600 {
            let key: [u8; 32] = id(n).as_bytes().try_into().unwrap();
            let click = ClickRef {
                link: link.clone(),
                ts_ms: NOW,
                bot: false,
            };
            assert!(hour.insert(key, click.clone()));
            assert!(!hour.insert(key, click), "a second insert replaces");
        }
        assert_eq!(hour.len, 25_600);
        for shard in hour.shards.iter() {
            assert!(
                (50..=150).contains(&shard.len()),
                "{} in a shard",
                shard.len()
            );
        }
    }

    #[test]
    fn the_cap_holds_even_when_every_click_is_in_the_current_hour() {
        let ix = ClickIndex::new(Duration::from_secs(30 * 86_400), 3);
        for n in 0..10 {
            ix.record(&id(n), NOW - 10 + i64::from(n), "a", "t", false, NOW);
            assert!(ix.len() <= 3, "{} clicks held", ix.len());
        }
        // The older hour goes first: an hour ago's click, then today's.
        let ix = ClickIndex::new(Duration::from_secs(30 * 86_400), 2);
        ix.record(&id(1), NOW - BUCKET_MS, "a", "t", false, NOW);
        ix.record(&id(2), NOW, "a", "t", false, NOW);
        ix.record(&id(3), NOW, "a", "t", false, NOW);
        assert!(ix.find(&id(1), NOW - BUCKET_MS).is_none());
        assert!(ix.find(&id(3), NOW).is_some());
    }
}
