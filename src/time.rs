//! Clock and time-format helpers: one place that reads the wall clock.
//!
//! The clock can be moved for tests ([`set_offset`], from
//! `[retention] test_clock_offset_secs`): everything that reads
//! [`now_ms`] (click times and ids, postback windows, stats ranges,
//! retention) then sees the moved time.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// Milliseconds added to the system clock (tests only; 0 otherwise).
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Moves the service's clock `offset_ms` ahead of the system clock. Set
/// once at start-up, before anything reads the time.
pub fn set_offset(offset_ms: i64) {
    OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// A periodic tick for background chores that ends at shutdown. Missed
/// ticks are delayed, not bunched up after a stall.
pub struct Ticker {
    interval: tokio::time::Interval,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Ticker {
    pub fn new(
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Ticker {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker { interval, shutdown }
    }

    /// Waits for the next tick; `false` once shutdown has begun.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

/// How far [`now_ms`] is from the system clock (see [`set_offset`]).
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis() + OFFSET_MS.load(Ordering::Relaxed)
}

/// RFC 3339 UTC with a `Z`, seconds precision.
pub fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Which end of a range a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeEnd {
    From,
    /// A date `to` is inclusive: it means the end of that day.
    To,
}

/// Parses an RFC 3339 timestamp or a UTC date `YYYY-MM-DD` into unix ms.
pub fn parse_range_bound(s: &str, end: RangeEnd) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let date = match end {
        RangeEnd::From => date,
        RangeEnd::To => date.succ_opt()?,
    };
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_timestamps_parse_and_to_dates_are_inclusive() {
        let from = parse_range_bound("2026-11-01", RangeEnd::From).unwrap();
        let to = parse_range_bound("2026-11-01", RangeEnd::To).unwrap();
        assert_eq!(to - from, 86_400_000);
        assert_eq!(rfc3339(from), "2026-11-01T00:00:00Z");
        assert_eq!(
            parse_range_bound("2026-11-01T10:00:00+01:00", RangeEnd::To).unwrap(),
            from + 9 * 3_600_000
        );
        assert!(parse_range_bound("yesterday", RangeEnd::From).is_none());
        assert!(parse_range_bound("2026-13-01", RangeEnd::From).is_none());
    }
}
