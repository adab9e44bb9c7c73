//! A link's click tally: the per-link cell embedded stats count into.
//!
//! It lives with the link ([`super::Link::tally`]) so that counting a click
//! looks nothing up: the click carries its `Arc<Link>`, and the link points
//! at its tally. Only the click-log writer's thread adds to it; stats
//! queries and checkpoints read it. The lock is therefore never contended
//! except by a query or a checkpoint of that one link, and it is needed at
//! all only for the visitor sets, which no atomic can hold.
//!
//! This module only holds the numbers; the `stats` module fills, reads, saves
//! and restores them.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// foldhash rather than SipHash for the visitor sets: the writer inserts
/// into one for every human click, and the keys are salted hashes, not the
/// client's to choose.
pub type Fast = foldhash::fast::RandomState;

/// One hour of one link.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Bucket {
    pub clicks: u64,
    pub bots: u64,
    pub visitors: HashSet<u64, Fast>,
    /// Clicks by device code (0 = unknown, then desktop, mobile, tablet).
    /// In the bucket rather than in `routes`: nearly every click has a
    /// device, and a box per clicked hour would cost 80 bytes more.
    #[serde(default, skip_serializing_if = "no_devices")]
    pub devices: [u32; 4],
    /// Clicks by variant and country; `None` until a click with either
    /// (absent in checkpoints written before they existed; checkpoints of
    /// the first version of this field also hold devices here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Box<Breakdown>>,
}

fn no_devices(d: &[u32; 4]) -> bool {
    d.iter().all(|n| *n == 0)
}

/// An hour's clicks by routing fact.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakdown {
    /// By variant index: `[clicks, bot clicks]`.
    #[serde(default)]
    pub variants: Vec<[u64; 2]>,
    /// By country (two upper-case letters): clicks, in first-seen order.
    #[serde(default)]
    pub countries: Vec<([u8; 2], u64)>,
    /// By device code (0 = unknown, then desktop, mobile, tablet): clicks.
    #[serde(default)]
    pub devices: [u64; 4],
}

impl Breakdown {
    /// Counts one click that took `variant` (if any), from `country`
    /// (zeros: unknown) on `device` (its code).
    pub fn add(&mut self, variant: Option<u8>, bot: bool, country: [u8; 2], device: u8) {
        self.add_routed(variant, bot, country);
        self.devices[usize::from(device).min(3)] += 1;
    }

    /// [`Self::add`] without the device (a [`Bucket`] counts that itself).
    pub fn add_routed(&mut self, variant: Option<u8>, bot: bool, country: [u8; 2]) {
        if let Some(v) = variant {
            let v = usize::from(v);
            if self.variants.len() <= v {
                self.variants.resize(v + 1, [0, 0]);
            }
            self.variants[v][0] += 1;
            self.variants[v][1] += u64::from(bot);
        }
        if country != [0, 0] {
            match self.countries.iter_mut().find(|(c, _)| *c == country) {
                Some((_, n)) => *n += 1,
                None => self.countries.push((country, 1)),
            }
        }
    }

    /// Adds another hour's numbers to these.
    pub fn merge(&mut self, other: &Breakdown) {
        if self.variants.len() < other.variants.len() {
            self.variants.resize(other.variants.len(), [0, 0]);
        }
        for (mine, theirs) in self.variants.iter_mut().zip(&other.variants) {
            mine[0] += theirs[0];
            mine[1] += theirs[1];
        }
        for (country, n) in &other.countries {
            match self.countries.iter_mut().find(|(c, _)| c == country) {
                Some((_, m)) => *m += n,
                None => self.countries.push((*country, *n)),
            }
        }
        for (mine, theirs) in self.devices.iter_mut().zip(other.devices) {
            *mine += theirs;
        }
    }
}

/// Hourly buckets in hour order. A sorted `Vec` rather than a `BTreeMap`:
/// most links have few buckets, and a B-tree leaf reserves room for eleven
/// (about 1 KB per clicked link). Serialised as a map.
#[derive(Debug, Default, Clone)]
pub struct Hours(pub Vec<(i64, Bucket)>);

impl Hours {
    pub fn entry(&mut self, hour: i64) -> &mut Bucket {
        // Clicks arrive in time order, so the last bucket is the usual hit.
        let at = if self.0.last().is_some_and(|(h, _)| *h == hour) {
            self.0.len() - 1
        } else {
            let at = self.0.partition_point(|(h, _)| *h < hour);
            if self.0.get(at).is_none_or(|(h, _)| *h != hour) {
                self.0.insert(at, (hour, Bucket::default()));
            }
            at
        };
        &mut self.0[at].1
    }

    /// Buckets of hours in `[lo, hi)`.
    pub fn range(&self, lo: i64, hi: i64) -> &[(i64, Bucket)] {
        let start = self.0.partition_point(|(h, _)| *h < lo);
        let end = self.0.partition_point(|(h, _)| *h < hi).max(start);
        &self.0[start..end]
    }

    pub fn drop_before(&mut self, hour: i64) {
        let end = self.0.partition_point(|(h, _)| *h < hour);
        self.0.drain(..end);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Hours {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(h, b)| (h, b)))
    }
}

impl<'de> Deserialize<'de> for Hours {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<i64, Bucket>::deserialize(d)?;
        Ok(Hours(map.into_iter().collect()))
    }
}

/// What a tally holds: the hours, and how far into the click log they
/// count (the log position after the last click added, as
/// `(segment, offset)`): a checkpoint saves both, so a replay after it adds
/// exactly the clicks this link's saved hours lack.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counts {
    pub hours: Hours,
    #[serde(default)]
    pub counted_to: (u64, u64),
}

#[derive(Debug, Default)]
pub struct Tally(Mutex<Counts>);

impl Tally {
    pub fn new(counts: Counts) -> Tally {
        Tally(Mutex::new(counts))
    }

    pub fn lock(&self) -> MutexGuard<'_, Counts> {
        // A panic while counting leaves numbers, not broken invariants.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
