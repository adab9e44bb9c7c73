//! Reconciliation: what the ledger says, per network, day and link, in the
//! shape an operator compares with a network's own report.
//!
//! Conventions (also in the README):
//! - A conversion is one (network, txn_id). It belongs to the UTC day its
//!   first postback was received, and counts once, with its latest status,
//!   payout and currency, however often it was retried or changed.
//! - `received` counts postbacks (records); `accepted`, `status_changes`,
//!   `duplicates` and `unknown_clicks` count records by outcome;
//!   `unmatched` counts conversions whose click is still unknown now (a
//!   click that arrived later is matched when this is read).
//! - `conversions` and `conversion_rate` count pending and approved ones;
//!   `revenue` and `epc` (earnings per human click) use approved payouts,
//!   per currency.
//! - A tenant sees only conversions whose click went to one of its links;
//!   records with no conversion (`bad_auth`, `malformed`, `forged_click`,
//!   `out_of_window`) and unmatched conversions are visible to admins only.

use std::collections::BTreeMap;

use serde::Serialize;

use super::decimal::Decimal;
use super::ledger::{Conversion, Ledger, DAY_MS};
use super::{Outcome, Status};
use crate::stats::{Interval, StatsIndex};

/// Decimal places of the conversion rate.
const RATE_DIGITS: i32 = 4;

#[derive(Debug, Clone)]
pub struct Query {
    pub network: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    /// `None` for an admin (every tenant).
    pub tenant: Option<String>,
}

pub type Money = BTreeMap<String, Decimal>;

/// `GET /v1/reconciliation`: rows per network and UTC day.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reconciliation {
    #[schema(format = DateTime)]
    pub from: String,
    #[schema(format = DateTime)]
    pub to: String,
    pub network: Option<String>,
    pub days: Vec<DayRow>,
}

/// Conversions with one status, and their payouts per currency.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct StatusRow {
    count: u64,
    /// Decimal text per currency.
    #[schema(value_type = BTreeMap<String, String>)]
    payout: Money,
}

/// One link's conversions on one network and day.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct LinkRow {
    code: String,
    tenant: String,
    human_clicks: u64,
    conversions: u64,
    /// By status: `pending`, `approved`, `rejected`, ….
    #[schema(value_type = BTreeMap<String, StatusRow>)]
    by_status: BTreeMap<&'static str, StatusRow>,
    #[schema(value_type = BTreeMap<String, String>)]
    revenue: Money,
    /// Conversions per human click, 4 decimals; `null` without clicks.
    conversion_rate: Option<f64>,
    /// Earnings per human click, per currency.
    #[schema(value_type = BTreeMap<String, String>)]
    epc: Money,
}

/// One network's postbacks and conversions on one UTC day.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct DayRow {
    network: String,
    /// `YYYY-MM-DD`.
    #[schema(format = Date)]
    day: String,
    received: u64,
    accepted: u64,
    status_changes: u64,
    duplicates: u64,
    unknown_clicks: u64,
    unmatched: u64,
    /// Admins only: postbacks refused before they became a conversion.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, u64>>)]
    refused: Option<BTreeMap<&'static str, u64>>,
    conversions: u64,
    #[schema(value_type = BTreeMap<String, StatusRow>)]
    by_status: BTreeMap<&'static str, StatusRow>,
    #[schema(value_type = BTreeMap<String, String>)]
    revenue: Money,
    links: Vec<LinkRow>,
}

fn add(money: &mut Money, currency: &str, amount: Decimal) {
    let slot = money.entry(currency.to_owned()).or_default();
    *slot = slot.checked_add(amount).unwrap_or(*slot);
}

/// Reconciliation rows as they are gathered: per (network, day), and per
/// link within each. Fed by the ledger (embedded) or ClickHouse (full).
#[derive(Default)]
pub(crate) struct Tally {
    days: BTreeMap<(String, i64), DayRow>,
    links: BTreeMap<(String, i64), BTreeMap<(String, String), LinkRow>>,
}

impl Tally {
    /// Adds one conversion if `q` selects it.
    pub(crate) fn add_conversion(&mut self, c: &Conversion, q: &Query) {
        if q.network.as_deref().is_some_and(|w| w != c.network)
            || c.first_ms < q.from_ms
            || c.first_ms >= q.to_ms
        {
            return;
        }
        if let Some(t) = &q.tenant {
            if c.tenant.as_deref() != Some(t) {
                return;
            }
        }
        let day = c.first_ms.div_euclid(DAY_MS);
        let d = day_row(&mut self.days, &c.network, day, q.tenant.is_none());
        let n = |o: Outcome| c.counts[o as usize];
        d.received += c.counts.iter().sum::<u64>();
        d.accepted += n(Outcome::Accepted);
        d.status_changes += n(Outcome::StatusChange);
        d.duplicates += n(Outcome::Duplicate);
        d.unknown_clicks += n(Outcome::UnknownClick);
        count_status(&mut d.by_status, &mut d.conversions, &mut d.revenue, c);
        let (Some(code), Some(tenant)) = (&c.code, &c.tenant) else {
            d.unmatched += 1;
            return;
        };
        let l = self
            .links
            .entry((c.network.clone(), day))
            .or_default()
            .entry((code.clone(), tenant.clone()))
            .or_insert_with(|| LinkRow {
                code: code.clone(),
                tenant: tenant.clone(),
                ..LinkRow::default()
            });
        count_status(&mut l.by_status, &mut l.conversions, &mut l.revenue, c);
    }

    /// Adds a network's refused records of one day (admins only).
    pub(crate) fn add_refused(&mut self, network: &str, day: i64, counts: &[u64; 8], q: &Query) {
        let wanted = q.network.as_deref().is_none_or(|w| w == network);
        let start = day * DAY_MS;
        if q.tenant.is_some() || !wanted || start < q.from_ms || start >= q.to_ms {
            return;
        }
        let d = day_row(&mut self.days, network, day, true);
        let refused = d.refused.get_or_insert_with(BTreeMap::new);
        for o in [
            Outcome::ForgedClick,
            Outcome::OutOfWindow,
            Outcome::BadAuth,
            Outcome::Malformed,
        ] {
            let n = counts[o as usize];
            if n > 0 {
                *refused.entry(o.as_str()).or_default() += n;
                d.received += n;
            }
        }
    }

    /// The (tenant, code, day) of every link row, for the click counts.
    pub(crate) fn link_days(&self) -> Vec<(String, String, i64)> {
        self.links
            .iter()
            .flat_map(|((_, day), rows)| {
                rows.keys()
                    .map(move |(code, tenant)| (tenant.clone(), code.clone(), *day))
            })
            .collect()
    }

    /// The answer, with each link's human clicks of the day from
    /// `human_clicks(tenant, code, day)`.
    pub(crate) fn finish(
        mut self,
        q: &Query,
        mut human_clicks: impl FnMut(&str, &str, i64) -> u64,
    ) -> Reconciliation {
        for ((network, day), rows) in std::mem::take(&mut self.links) {
            let d = self
                .days
                .get_mut(&(network, day))
                .expect("a day row exists for each link row");
            for (_, mut l) in rows {
                l.human_clicks = human_clicks(&l.tenant, &l.code, day);
                if l.human_clicks > 0 {
                    let rate = l.conversions as f64 / l.human_clicks as f64;
                    let scale = 10f64.powi(RATE_DIGITS);
                    l.conversion_rate = Some((rate * scale).round() / scale);
                    for (cur, amount) in &l.revenue {
                        if let Some(epc) = amount.div_round(l.human_clicks) {
                            l.epc.insert(cur.clone(), epc);
                        }
                    }
                }
                d.links.push(l);
            }
        }
        Reconciliation {
            from: crate::time::rfc3339(q.from_ms),
            to: crate::time::rfc3339(q.to_ms),
            network: q.network.clone(),
            days: self.days.into_values().collect(),
        }
    }
}

/// Counts a conversion once, with its latest status, into a row's status
/// breakdown, conversion count and revenue.
fn count_status(
    by_status: &mut BTreeMap<&'static str, StatusRow>,
    conversions: &mut u64,
    revenue: &mut Money,
    c: &Conversion,
) {
    let s = by_status.entry(c.status.as_str()).or_default();
    s.count += 1;
    add(&mut s.payout, &c.currency, c.payout);
    if c.status.counts_as_conversion() {
        *conversions += 1;
    }
    if c.status == Status::Approved {
        add(revenue, &c.currency, c.payout);
    }
}

/// Answers `GET /v1/reconciliation` from this node's ledger (embedded mode).
pub fn reconcile(ledger: &Ledger, stats: &StatsIndex, q: &Query) -> Reconciliation {
    let mut tally = Tally::default();
    ledger.read(|state| {
        for c in state.conversions.values() {
            tally.add_conversion(c, q);
        }
        for ((network, day), counts) in &state.refused {
            tally.add_refused(network, *day, counts, q);
        }
    });
    tally.finish(q, |_, code, day| {
        let start = day * DAY_MS;
        stats
            .query(code, start, start + DAY_MS, Interval::Day)
            .0
            .human_clicks
    })
}

fn day_row<'a>(
    days: &'a mut BTreeMap<(String, i64), DayRow>,
    network: &str,
    day: i64,
    admin: bool,
) -> &'a mut DayRow {
    days.entry((network.to_owned(), day))
        .or_insert_with(|| DayRow {
            network: network.to_owned(),
            day: crate::time::rfc3339(day * DAY_MS)[..10].to_owned(),
            refused: admin.then(BTreeMap::new),
            ..DayRow::default()
        })
}

/// A link's conversions (pending + approved) and approved revenue per
/// currency, among conversions first received in `[from_ms, to_ms)`.
pub(crate) fn totals<'a>(
    conversions: impl IntoIterator<Item = &'a Conversion>,
    code: &str,
    from_ms: i64,
    to_ms: i64,
) -> (u64, Money) {
    let mut n = 0;
    let mut revenue = Money::new();
    let mut by_status = BTreeMap::new();
    for c in conversions {
        if c.code.as_deref() == Some(code) && c.first_ms >= from_ms && c.first_ms < to_ms {
            count_status(&mut by_status, &mut n, &mut revenue, c);
        }
    }
    (n, revenue)
}

/// [`totals`] from this node's ledger (embedded mode).
pub fn link_totals(ledger: &Ledger, code: &str, from_ms: i64, to_ms: i64) -> (u64, Money) {
    ledger.read(|state| totals(state.conversions.values(), code, from_ms, to_ms))
}
