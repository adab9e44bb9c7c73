//! Embedded-mode stats: per-link hourly counters and visitor sets, fed by
//! the click-log writer after each batch is written.
//!
//! Each link's numbers sit in its [`Tally`], which the link itself points
//! to: counting a click follows the click's `Arc<Link>` to its tally and
//! looks nothing up by code (only a link version's first click does, to
//! attach the tally). [`StatsIndex`] also keeps every tally by code, for
//! queries and checkpoints. Unique visitors are distinct `ip_hash`es of
//! human clicks; as the salt changes every epoch, a visitor counts once per
//! epoch.
//!
//! Tallies survive restarts through a checkpoint, `stats.snapshot`, written
//! on a background thread while the writer goes on counting: each link's
//! entry records how far into the log it counts (`counted_to`), and the
//! whole file the synced position at which it was started. At start-up the
//! log from that position is replayed, each record added only to links
//! whose saved numbers stop before it, so stats always equal what the log
//! holds, even after `kill -9`, and the writer never pauses to copy them.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::clicklog::record::Record;
use crate::clicklog::{segments, Batch, Consumer, Position};
use crate::links::tally::{Breakdown, Counts as TallyCounts, Fast, Hours};
use crate::links::{Link, Route, Tally};

const SNAPSHOT_FILE: &str = "stats.snapshot";
/// The checkpoint's format: 2 since the log is binary and each link records
/// its own position (older checkpoints are ignored and the log replayed).
const SNAPSHOT_FORMAT: u32 = 2;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Most buckets one stats answer may hold.
pub const MAX_SERIES_POINTS: i64 = 24 * 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Hour,
    Day,
}

impl Interval {
    pub fn millis(self) -> i64 {
        match self {
            Interval::Hour => HOUR_MS,
            Interval::Day => DAY_MS,
        }
    }
}

#[derive(Deserialize)]
struct Snapshot {
    #[serde(default)]
    format: u32,
    watermark: Position,
    links: std::collections::BTreeMap<String, TallyCounts>,
}

/// Totals for one bucket or a whole range.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub clicks: u64,
    pub human_clicks: u64,
    pub bot_clicks: u64,
    pub unique_visitors: u64,
}

/// One bucket of a series: its start and its counts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SeriesPoint {
    #[schema(format = DateTime)]
    pub ts: String,
    #[serde(flatten)]
    pub counts: Counts,
}

fn raw(p: Position) -> (u64, u64) {
    (p.segment, p.offset)
}

#[derive(Default)]
pub struct StatsIndex {
    /// Every link's tally by code; links point at theirs.
    tallies: DashMap<Arc<str>, Arc<Tally>, Fast>,
}

impl StatsIndex {
    /// The tally of `code`, made if it has none yet.
    fn tally_of(&self, code: &str) -> Arc<Tally> {
        if let Some(t) = self.tallies.get(code) {
            return t.clone();
        }
        self.tallies.entry(code.into()).or_default().clone()
    }

    /// Counts one written click on `link`; `at` is the log position after
    /// its record.
    #[inline]
    pub fn count(&self, link: &Link, ts_ms: i64, bot: bool, visitor: u64, at: Position) {
        self.count_routed(link, ts_ms, bot, visitor, &Route::default(), at)
    }

    /// [`Self::count`] with the click's routing facts.
    #[inline]
    pub fn count_routed(
        &self,
        link: &Link,
        ts_ms: i64,
        bot: bool,
        visitor: u64,
        route: &Route,
        at: Position,
    ) {
        let tally = link.tally(|| self.tally_of(link.code()));
        add(&tally, ts_ms, bot, visitor, route, raw(at));
    }

    /// Counts one click known by its code only (tests, replay).
    pub fn record(&self, code: &str, ts_ms: i64, bot: bool, visitor: u64) {
        add(
            &self.tally_of(code),
            ts_ms,
            bot,
            visitor,
            &Route::default(),
            (0, 0),
        );
    }

    /// Clicks of `code` over `[from_ms, to_ms)` by variant, country and
    /// device (hour resolution, like the rest).
    pub fn breakdown(&self, code: &str, from_ms: i64, to_ms: i64) -> Breakdown {
        let mut total = Breakdown::default();
        let Some(tally) = self.tallies.get(code).map(|t| t.clone()) else {
            return total;
        };
        let lo = from_ms.div_euclid(HOUR_MS);
        let hi = (to_ms + HOUR_MS - 1).div_euclid(HOUR_MS);
        let counts = tally.lock();
        for (_, b) in counts.hours.range(lo, hi) {
            if let Some(r) = &b.routes {
                total.merge(r);
            }
            for (sum, n) in total.devices.iter_mut().zip(b.devices) {
                *sum += u64::from(n);
            }
        }
        total
    }

    /// Totals and series over `[from_ms, to_ms)`, buckets aligned to UTC.
    pub fn query(
        &self,
        code: &str,
        from_ms: i64,
        to_ms: i64,
        interval: Interval,
    ) -> (Counts, Vec<SeriesPoint>) {
        let step = interval.millis();
        let first = from_ms.div_euclid(step) * step;
        let mut series = Vec::new();
        let mut total = Counts::default();
        let mut all_visitors = HashSet::new();
        // Copy the range out and let go at once: the click-log writer
        // counts into this tally, and the unions below can take a while.
        let tally = self.tallies.get(code).map(|t| t.clone());
        let hours: Hours = tally
            .map(|t| {
                let lo = from_ms.div_euclid(HOUR_MS);
                let hi = (to_ms + HOUR_MS - 1).div_euclid(HOUR_MS);
                Hours(t.lock().hours.range(lo, hi).to_vec())
            })
            .unwrap_or_default();
        let mut start = first;
        while start < to_ms {
            let end = start + step;
            let mut c = Counts::default();
            let mut visitors = HashSet::new();
            let lo = start.max(from_ms).div_euclid(HOUR_MS);
            let hi = (end.min(to_ms) + HOUR_MS - 1).div_euclid(HOUR_MS);
            for (_, b) in hours.range(lo, hi) {
                c.clicks += b.clicks;
                c.bot_clicks += b.bots;
                visitors.extend(b.visitors.iter().copied());
            }
            c.human_clicks = c.clicks - c.bot_clicks;
            c.unique_visitors = visitors.len() as u64;
            total.clicks += c.clicks;
            total.bot_clicks += c.bot_clicks;
            total.human_clicks += c.human_clicks;
            all_visitors.extend(visitors);
            series.push(SeriesPoint {
                ts: crate::time::rfc3339(start),
                counts: c,
            });
            start = end;
        }
        total.unique_visitors = all_visitors.len() as u64;
        (total, series)
    }

    /// Loads `stats.snapshot` if present; returns the log position from
    /// which the log must be replayed. A checkpoint of an older format
    /// (its positions were in the old JSON log) is ignored: the whole log
    /// is replayed instead.
    pub fn load_snapshot(&self, data_dir: &Path) -> std::io::Result<Position> {
        let path = data_dir.join(SNAPSHOT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Position::default()),
            Err(e) => return Err(e),
        };
        let snap: Snapshot = serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        self.tallies.clear();
        if snap.format != SNAPSHOT_FORMAT {
            tracing::info!(
                format = snap.format,
                "stats: a checkpoint of an older format; recounting from the click log"
            );
            return Ok(Position::default());
        }
        for (code, counts) in snap.links {
            self.tallies
                .insert(code.into(), Arc::new(Tally::new(counts)));
        }
        Ok(snap.watermark)
    }

    /// Adds every record in the log from `from` on that a link's saved
    /// numbers do not already hold; returns the end.
    pub fn replay(&self, log_dir: &Path, from: Position) -> std::io::Result<Position> {
        let mut skipped = 0u64;
        let end =
            segments::read_from(log_dir, from, |payload, at| match Record::decode(payload) {
                Ok(r) => {
                    let tally = self.tally_of(r.code);
                    if tally.lock().counted_to < raw(at) {
                        let (bot, visitor) = (r.bot.is_some(), r.visitor_key());
                        add(&tally, r.ts_ms, bot, visitor, &r.route, raw(at));
                    }
                }
                Err(_) => skipped += 1,
            })?;
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "stats: unreadable click-log records skipped in replay"
            );
        }
        Ok(end)
    }

    /// Drops every link's buckets older than `cutoff_ms` (retention).
    pub fn drop_before(&self, cutoff_ms: i64) {
        let cutoff_hour = cutoff_ms.div_euclid(HOUR_MS);
        for entry in self.tallies.iter() {
            entry.value().lock().hours.drop_before(cutoff_hour);
        }
    }

    /// Writes a checkpoint: `watermark` is a position every click before
    /// which is counted (the writer's synced position when it was called);
    /// buckets older than `cutoff_ms` are dropped first (retention). Runs
    /// anywhere: each link is locked only while its own entry is written.
    pub fn write_checkpoint(
        &self,
        data_dir: &Path,
        watermark: Position,
        cutoff_ms: i64,
    ) -> std::io::Result<()> {
        let cutoff_hour = cutoff_ms.div_euclid(HOUR_MS);
        let tallies: Vec<(Arc<str>, Arc<Tally>)> = self
            .tallies
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut out = Vec::with_capacity(64 * 1024);
        out.extend_from_slice(b"{\"format\":");
        out.extend_from_slice(SNAPSHOT_FORMAT.to_string().as_bytes());
        out.extend_from_slice(b",\"watermark\":");
        serde_json::to_writer(&mut out, &watermark).map_err(std::io::Error::other)?;
        out.extend_from_slice(b",\"links\":{");
        let mut first = true;
        for (code, tally) in &tallies {
            let mut counts = tally.lock();
            counts.hours.drop_before(cutoff_hour);
            if counts.hours.is_empty() {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut out, &**code).map_err(std::io::Error::other)?;
            out.push(b':');
            serde_json::to_writer(&mut out, &*counts).map_err(std::io::Error::other)?;
        }
        out.extend_from_slice(b"}}");
        crate::fsutil::write_atomic(&data_dir.join(SNAPSHOT_FILE), &out)
    }
}

fn add(tally: &Tally, ts_ms: i64, bot: bool, visitor: u64, route: &Route, at: (u64, u64)) {
    let mut counts = tally.lock();
    let b = counts.hours.entry(ts_ms.div_euclid(HOUR_MS));
    b.clicks += 1;
    // Unknown devices (code 0) are listed nowhere, so they are not counted.
    if route.device != 0 {
        b.devices[usize::from(route.device).min(3)] += 1;
    }
    if route.variant().is_some() || route.country != [0, 0] {
        b.routes.get_or_insert_with(Default::default).add_routed(
            route.variant(),
            bot,
            Route::country_code(&route.country),
        );
    }
    if bot {
        b.bots += 1;
    } else {
        b.visitors.insert(visitor);
    }
    if at > counts.counted_to {
        counts.counted_to = at;
    }
}

/// The embedded stats as a click-log consumer: counts each written click,
/// replays the log at start-up, and checkpoints on a background thread.
pub struct StatsFeed {
    index: Arc<StatsIndex>,
    data_dir: std::path::PathBuf,
    every: Duration,
    retention: Duration,
    last: Instant,
    running: Option<JoinHandle<std::io::Result<()>>>,
}

impl StatsFeed {
    pub fn new(
        index: Arc<StatsIndex>,
        data_dir: &Path,
        every: Duration,
        retention: Duration,
    ) -> StatsFeed {
        StatsFeed {
            index,
            data_dir: data_dir.to_owned(),
            every,
            retention,
            last: Instant::now(),
            running: None,
        }
    }

    fn cutoff_ms(&self) -> i64 {
        crate::time::now_ms() - self.retention.as_millis() as i64
    }
}

/// Logs a checkpoint that failed: that only means a longer replay at
/// start-up.
fn report_checkpoint(result: std::thread::Result<std::io::Result<()>>) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "stats: checkpoint failed; the log will be replayed")
        }
        Err(_) => tracing::error!("stats: the checkpoint thread panicked"),
    }
}

impl Consumer for StatsFeed {
    fn recover(&mut self, log_dir: &Path, _end: Position) -> std::io::Result<()> {
        let watermark = self.index.load_snapshot(&self.data_dir)?;
        let replayed_to = self.index.replay(log_dir, watermark)?;
        // The snapshot and the log may hold hours past retention (the
        // clock moved while the service was down): not counted again.
        self.index.drop_before(self.cutoff_ms());
        tracing::info!(
            from = ?watermark,
            to = ?replayed_to,
            "stats: caught up with the click log"
        );
        Ok(())
    }

    fn written(&mut self, batch: &Batch<'_>) {
        for w in batch.clicks {
            let ev = &w.event;
            self.index.count_routed(
                &ev.link,
                ev.ts_ms,
                w.bot.is_some(),
                ev.ip_hash.visitor_key(),
                &ev.route,
                w.end,
            );
        }
    }

    fn synced(&mut self, at: Position) {
        if self.last.elapsed() < self.every {
            return;
        }
        if let Some(running) = self.running.take() {
            if !running.is_finished() {
                self.running = Some(running);
                return;
            }
            report_checkpoint(running.join());
        }
        let (index, dir, cutoff) = (self.index.clone(), self.data_dir.clone(), self.cutoff_ms());
        let spawned = crate::background::spawn("stats-checkpoint", move || {
            let started = Instant::now();
            let result = index.write_checkpoint(&dir, at, cutoff);
            crate::telemetry::stats_snapshot_took(started.elapsed());
            result
        });
        match spawned {
            Ok(handle) => self.running = Some(handle),
            Err(e) => report_checkpoint(Ok(Err(e))),
        }
        self.last = Instant::now();
    }

    fn close(&mut self, at: Position) {
        if let Some(running) = self.running.take() {
            report_checkpoint(running.join());
        }
        let cutoff = self.cutoff_ms();
        report_checkpoint(Ok(self.index.write_checkpoint(&self.data_dir, at, cutoff)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_790_000_000_000 / DAY_MS * DAY_MS; // a UTC midnight

    #[test]
    fn clicks_are_broken_down_by_variant_country_and_device_and_survive_a_checkpoint() {
        let s = StatsIndex::default();
        let link = Link::compile(crate::links::LinkRecord::for_tests(
            "ab",
            "t",
            "https://x.example/",
        ));
        let route = |variant: u8, country: &[u8; 2], device: u8| Route {
            country: *country,
            device,
            variant,
            ..Route::default()
        };
        let clicks = [
            (route(0, b"DE", 2), false, T0),
            (route(0, b"DE", 1), true, T0 + 1),
            (route(1, b"US", 1), false, T0 + HOUR_MS),
            (
                route(crate::links::routing::NONE, &[0, 0], 0),
                false,
                T0 + 2 * HOUR_MS,
            ),
            (route(2, b"US", 3), false, T0 + 30 * HOUR_MS),
        ];
        for (r, bot, ts) in &clicks {
            s.count_routed(&link, *ts, *bot, 7, r, Position::default());
        }
        let b = s.breakdown("ab", T0, T0 + DAY_MS);
        assert_eq!(b.variants, vec![[2, 1], [1, 0]]);
        assert_eq!(b.countries, vec![(*b"DE", 2), (*b"US", 1)]);
        assert_eq!(
            b.devices,
            [0, 2, 1, 0],
            "the routeless click counts nowhere"
        );
        let dir = tempfile::tempdir().unwrap();
        s.write_checkpoint(dir.path(), Position::default(), 0)
            .unwrap();
        let back = StatsIndex::default();
        back.load_snapshot(dir.path()).unwrap();
        assert_eq!(
            back.breakdown("ab", T0, T0 + 2 * DAY_MS),
            s.breakdown("ab", T0, T0 + 2 * DAY_MS)
        );
        assert_eq!(
            back.breakdown("ab", T0, T0 + 2 * DAY_MS).variants[2],
            [1, 0]
        );
        assert_eq!(s.breakdown("none", T0, T0 + DAY_MS), Breakdown::default());
    }

    #[test]
    fn counts_split_humans_bots_and_unique_visitors() {
        let s = StatsIndex::default();
        s.record("a", T0 + 1, false, 1);
        s.record("a", T0 + 2, false, 1);
        s.record("a", T0 + HOUR_MS + 5, false, 2);
        s.record("a", T0 + 3, true, 3);
        s.record("b", T0, false, 9);
        let (total, series) = s.query("a", T0, T0 + DAY_MS, Interval::Hour);
        assert_eq!(
            total,
            Counts {
                clicks: 4,
                human_clicks: 3,
                bot_clicks: 1,
                unique_visitors: 2
            }
        );
        assert_eq!(series.len(), 24);
        assert_eq!(series[0].counts.clicks, 3);
        assert_eq!(series[1].counts.unique_visitors, 1);
        let (day, series) = s.query("a", T0, T0 + 2 * DAY_MS, Interval::Day);
        assert_eq!(day, total);
        assert_eq!(series.len(), 2);
        assert_eq!(
            s.query("none", T0, T0 + DAY_MS, Interval::Day).0,
            Counts::default()
        );
    }

    #[test]
    fn late_and_out_of_order_clicks_land_in_their_own_hour() {
        let s = StatsIndex::default();
        for hour in [5, 2, 9, 2, 5, 0] {
            s.record("a", T0 + hour * HOUR_MS, false, hour as u64);
        }
        let (total, series) = s.query("a", T0, T0 + 10 * HOUR_MS, Interval::Hour);
        assert_eq!(total.clicks, 6);
        let clicks: Vec<u64> = series.iter().map(|p| p.counts.clicks).collect();
        assert_eq!(clicks, [1, 0, 2, 0, 0, 2, 0, 0, 0, 1]);
        assert_eq!(total.unique_visitors, 4);
    }

    /// A click-log directory holding one record per `(code, ts, bot, visitor)`.
    fn log_of(dir: &Path, clicks: &[(&str, i64, bool, u8)]) -> Vec<Position> {
        let log = dir.join(segments::DIR_NAME);
        std::fs::create_dir_all(&log).unwrap();
        let ids = crate::clicks::ClickIds::new(&crate::keys::MasterKey::for_tests());
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (code, ts, bot, visitor) in clicks {
            let link = Arc::new(Link::compile(crate::links::LinkRecord::for_tests(
                code,
                "t",
                "https://example.com/",
            )));
            let ev = crate::clicks::ClickEvent::new(
                ids.mint(*ts as u64),
                *ts,
                link,
                crate::clicks::IpHash {
                    epoch: 0,
                    digest: [*visitor; 16],
                },
                crate::clicks::Signals::default(),
                crate::clicks::ClientText {
                    user_agent: b"ua",
                    referer: b"",
                    sub: "",
                },
            );
            let mark = segments::begin_frame(&mut bytes);
            let bot = bot.then_some(crate::clicks::BotReason::Crawler);
            crate::clicklog::record::encode(&ev, bot, Default::default(), &mut bytes);
            segments::end_frame(&mut bytes, mark);
            ends.push(Position {
                segment: 1,
                offset: bytes.len() as u64,
            });
        }
        std::fs::write(segments::segment_path(&log, 1), &bytes).unwrap();
        ends
    }

    #[test]
    fn a_checkpoint_taken_while_clicks_are_counted_replays_to_exactly_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let clicks = [
            ("a", T0, false, 1),
            ("b", T0, false, 2),
            ("a", T0 + 1, true, 3),
            ("b", T0 + 2, false, 4),
        ];
        let ends = log_of(dir.path(), &clicks);
        let s = StatsIndex::default();
        let links: Vec<Arc<Link>> = ["a", "b"]
            .iter()
            .map(|c| {
                Arc::new(Link::compile(crate::links::LinkRecord::for_tests(
                    c,
                    "t",
                    "https://example.com/",
                )))
            })
            .collect();
        let link = |code: &str| &links[usize::from(code == "b")];
        // The first two clicks are synced when the checkpoint starts; the
        // third is counted before `a` is saved, the fourth after `b` is:
        // both lie after the checkpoint's watermark.
        for (i, (code, ts, bot, v)) in clicks.iter().enumerate().take(3) {
            s.count(link(code), *ts, *bot, u64::from_le_bytes([*v; 8]), ends[i]);
        }
        s.write_checkpoint(dir.path(), ends[1], T0 - DAY_MS)
            .unwrap();
        let (code, ts, bot, v) = clicks[3];
        s.count(link(code), ts, bot, u64::from_le_bytes([v; 8]), ends[3]);

        let t = StatsIndex::default();
        let from = t.load_snapshot(dir.path()).unwrap();
        assert_eq!(from, ends[1]);
        t.replay(&dir.path().join(segments::DIR_NAME), from)
            .unwrap();
        for code in ["a", "b"] {
            let day = |ix: &StatsIndex| ix.query(code, T0, T0 + DAY_MS, Interval::Day).0;
            assert_eq!(day(&t), day(&s), "link {code}");
            assert_eq!(day(&t).clicks, 2);
        }
    }

    #[test]
    fn snapshots_round_trip_and_drop_expired_hours() {
        let dir = tempfile::tempdir().unwrap();
        let s = StatsIndex::default();
        s.record("a", T0, false, 1);
        s.record("a", T0 - 100 * DAY_MS, false, 1);
        s.record("old", T0 - 100 * DAY_MS, false, 1);
        let wm = Position {
            segment: 3,
            offset: 77,
        };
        s.write_checkpoint(dir.path(), wm, T0 - DAY_MS).unwrap();
        let t = StatsIndex::default();
        assert_eq!(t.load_snapshot(dir.path()).unwrap(), wm);
        let (c, _) = t.query("a", T0 - 200 * DAY_MS, T0 + DAY_MS, Interval::Day);
        assert_eq!(c.clicks, 1);
        assert!(!t.tallies.contains_key("old"));
    }

    #[test]
    fn a_checkpoint_of_the_old_format_means_a_full_replay() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SNAPSHOT_FILE),
            br#"{"watermark":{"segment":4,"offset":10},"links":{}}"#,
        )
        .unwrap();
        let t = StatsIndex::default();
        assert_eq!(t.load_snapshot(dir.path()).unwrap(), Position::default());
    }
}
