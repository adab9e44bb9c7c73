//! Full mode: postbacks are matched against, and reconciled from,
//! ClickHouse, where every node's ledger and every click end up.
//!
//! Matching first asks this node's click index (the clicks it recorded
//! lately), then ClickHouse's `click_ids`. A click not loaded yet (ingestion
//! lag) or a ClickHouse that does not answer makes the postback
//! `unknown_click`; it is matched again whenever reconciliation reads it.
//!
//! Reconciliation reads the per-status groups of each conversion (see
//! [`crate::warehouse::conversions`]), rebuilds each conversion by the same
//! rules one ledger applies (first status `accepted`, later ones
//! `status_change`, repeats `duplicate`, the latest first-received status
//! wins), looks up the clicks of unmatched ones, and then tallies exactly as
//! embedded mode does. Money is summed in Rust from the exact decimal text.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;

use super::click_index::{ClickIndex, ClickRef};
use super::decimal::Decimal;
use super::ledger::{Conversion, DAY_MS};
use super::reconcile::{totals, Money, Query, Reconciliation, Tally};
use super::{ClickLookup, Outcome, Status};
use crate::links::Link;
use crate::telemetry::Throttle;
use crate::warehouse::conversions::{self as wh, Scope, StatusGroup};
use crate::warehouse::WarehouseError;

/// How long a postback waits for ClickHouse to find its click.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// One line per this interval while ClickHouse lookups fail.
const LOOKUP_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// This node's click index, then ClickHouse.
pub struct WarehouseClicks {
    local: Arc<ClickIndex>,
    client: Client,
    runtime: tokio::runtime::Handle,
    errors: Throttle,
}

impl WarehouseClicks {
    /// `runtime` runs the queries; `find` is called from blocking threads.
    pub fn new(local: Arc<ClickIndex>, client: Client, runtime: tokio::runtime::Handle) -> Self {
        WarehouseClicks {
            local,
            client,
            runtime,
            errors: Throttle::new(LOOKUP_ERROR_LOG_EVERY),
        }
    }
}

impl ClickLookup for WarehouseClicks {
    fn find(&self, click_id: &str, ts_ms: i64) -> Option<ClickRef> {
        if let Some(c) = self.local.find(click_id, ts_ms) {
            return Some(c);
        }
        let ids = [click_id];
        let query = wh::find_clicks(&self.client, &ids, Some((ts_ms, ts_ms)));
        let found = self
            .runtime
            .block_on(tokio::time::timeout(LOOKUP_TIMEOUT, query))
            .unwrap_or(Err(WarehouseError::Timeout(LOOKUP_TIMEOUT)));
        match found {
            Ok(clicks) => clicks.into_iter().next().map(|f| ClickRef {
                link: Arc::new(Link::reference(&f.code, &f.tenant)),
                ts_ms: f.ts_ms,
                bot: f.bot != 0,
            }),
            Err(e) => {
                if self.errors.allow() {
                    tracing::warn!(error = %e, "postback: ClickHouse click lookup failed; recorded as unknown_click (matched again on read)");
                }
                None
            }
        }
    }
}

/// One conversion from its status groups, which come ordered by first
/// receipt. `None` when ClickHouse holds a status this build does not know.
fn conversion(groups: &[StatusGroup]) -> Option<Conversion> {
    let (first, last) = (groups.first()?, groups.last()?);
    let mut counts = [0u64; 8];
    let mut seen = 0u8;
    let mut status = Status::Pending;
    for (i, g) in groups.iter().enumerate() {
        let Some(s) = Status::parse(&g.status) else {
            tracing::warn!(network = %g.network, status = %g.status, "reconciliation: a conversion with a status this build does not know is left out");
            return None;
        };
        status = s;
        seen |= status.bit();
        let outcome = match (g.first_outcome.as_str(), i) {
            ("unknown_click", _) => Outcome::UnknownClick,
            (_, 0) => Outcome::Accepted,
            _ => Outcome::StatusChange,
        };
        counts[outcome as usize] += 1;
        counts[Outcome::Duplicate as usize] += g.records.saturating_sub(1);
    }
    // The link of the latest record that matched, as one ledger keeps it.
    let matched = groups
        .iter()
        .filter(|g| !g.matched_code.is_empty())
        .max_by_key(|g| g.matched_ms);
    Some(Conversion {
        network: first.network.clone(),
        txn_id: first.txn_id.clone(),
        click_id: first.first_click_id.clone(),
        click_ts_ms: first.first_click_ts_ms,
        first_ms: first.first_ms,
        status,
        payout: Decimal::parse(&last.first_payout).unwrap_or_default(),
        currency: last.first_currency.clone(),
        code: matched.map(|g| g.matched_code.clone()),
        tenant: matched.map(|g| g.matched_tenant.clone()),
        seen,
        counts,
    })
}

/// The conversions in `scope`, each once, unmatched ones looked up again.
async fn conversions(
    client: &Client,
    scope: &Scope<'_>,
) -> Result<Vec<Conversion>, WarehouseError> {
    let groups = wh::status_groups(client, scope).await?;
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=groups.len() {
        let same = i < groups.len()
            && groups[i].network == groups[start].network
            && groups[i].txn_id == groups[start].txn_id;
        if !same {
            out.extend(conversion(&groups[start..i]));
            start = i;
        }
    }
    let unmatched: Vec<&Conversion> = out.iter().filter(|c| c.code.is_none()).collect();
    if !unmatched.is_empty() {
        let ids: Vec<&str> = unmatched.iter().map(|c| c.click_id.as_str()).collect();
        let lo = unmatched.iter().map(|c| c.click_ts_ms).min().unwrap_or(0);
        let hi = unmatched.iter().map(|c| c.click_ts_ms).max().unwrap_or(0);
        let found: HashMap<String, (String, String)> =
            wh::find_clicks(client, &ids, Some((lo, hi)))
                .await?
                .into_iter()
                .map(|f| (f.click_id, (f.code, f.tenant)))
                .collect();
        for c in out.iter_mut().filter(|c| c.code.is_none()) {
            if let Some((code, tenant)) = found.get(&c.click_id) {
                c.code = Some(code.clone());
                c.tenant = Some(tenant.clone());
            }
        }
    }
    Ok(out)
}

/// Answers `GET /v1/reconciliation` from ClickHouse.
pub async fn reconcile(client: &Client, q: &Query) -> Result<Reconciliation, WarehouseError> {
    let scope = Scope {
        network: q.network.as_deref(),
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        tenant: q.tenant.as_deref(),
        link: None,
    };
    let mut tally = Tally::default();
    for c in conversions(client, &scope).await? {
        tally.add_conversion(&c, q);
    }
    if q.tenant.is_none() {
        let mut refused: BTreeMap<(String, i64), [u64; 8]> = BTreeMap::new();
        for r in wh::refused(client, scope.network, q.from_ms, q.to_ms).await? {
            let Some(o) = Outcome::ALL.into_iter().find(|o| o.as_str() == r.outcome) else {
                continue;
            };
            refused.entry((r.network, r.day)).or_insert([0; 8])[o as usize] += r.records;
        }
        for ((network, day), counts) in &refused {
            tally.add_refused(network, *day, counts, q);
        }
    }
    let link_days = tally.link_days();
    let mut human = HashMap::new();
    if let (Some(lo), Some(hi)) = (
        link_days.iter().map(|l| l.2).min(),
        link_days.iter().map(|l| l.2).max(),
    ) {
        let mut links: Vec<(&str, &str)> = link_days
            .iter()
            .map(|(t, c, _)| (t.as_str(), c.as_str()))
            .collect();
        links.sort_unstable();
        links.dedup();
        for d in wh::human_clicks(client, &links, lo * DAY_MS, (hi + 1) * DAY_MS).await? {
            human.insert((d.tenant, d.code, d.day), d.human);
        }
    }
    Ok(tally.finish(q, |tenant, code, day| {
        human
            .get(&(tenant.to_owned(), code.to_owned(), day))
            .copied()
            .unwrap_or(0)
    }))
}

/// A link's conversions and revenue from ClickHouse (see
/// [`super::reconcile::totals`]).
pub async fn link_totals(
    client: &Client,
    tenant: &str,
    code: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<(u64, Money), WarehouseError> {
    let scope = Scope {
        network: None,
        from_ms,
        to_ms,
        tenant: Some(tenant),
        link: Some((tenant, code)),
    };
    let all = conversions(client, &scope).await?;
    let mine = all.iter().filter(|c| c.tenant.as_deref() == Some(tenant));
    Ok(totals(mine, code, from_ms, to_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(
        status: &str,
        first_ms: i64,
        outcome: &str,
        payout: &str,
        code: &str,
        records: u64,
    ) -> StatusGroup {
        StatusGroup {
            network: "kt".into(),
            txn_id: "t1".into(),
            status: status.into(),
            first_ms,
            first_outcome: outcome.into(),
            first_payout: payout.into(),
            first_currency: "USD".into(),
            first_click_id: "c".into(),
            first_click_ts_ms: 5,
            matched_code: code.into(),
            matched_tenant: if code.is_empty() { "" } else { "acme" }.into(),
            matched_ms: if code.is_empty() { 0 } else { first_ms },
            records,
        }
    }

    #[test]
    fn a_conversion_is_rebuilt_by_the_rules_one_ledger_applies() {
        // Pending seen by two nodes (one repeat), then approved.
        let c = conversion(&[
            group("pending", 10, "accepted", "1.50", "x", 2),
            group("approved", 20, "accepted", "2.25", "x", 1),
        ])
        .unwrap();
        let n = |o: Outcome| c.counts[o as usize];
        assert_eq!(
            (
                n(Outcome::Accepted),
                n(Outcome::StatusChange),
                n(Outcome::Duplicate)
            ),
            (1, 1, 1)
        );
        assert_eq!(
            (c.status, c.payout.to_string().as_str()),
            (Status::Approved, "2.25")
        );
        assert_eq!(
            (c.first_ms, c.code.as_deref(), c.tenant.as_deref()),
            (10, Some("x"), Some("acme"))
        );
    }

    #[test]
    fn an_unknown_click_stays_a_conversion_and_waits_for_its_click() {
        let c = conversion(&[group("pending", 10, "unknown_click", "3", "", 1)]).unwrap();
        assert_eq!(c.counts[Outcome::UnknownClick as usize], 1);
        assert_eq!(c.counts.iter().sum::<u64>(), 1);
        assert_eq!(c.code, None);
    }

    #[test]
    fn a_status_this_build_does_not_know_skips_the_conversion() {
        assert!(conversion(&[group("refunded", 10, "accepted", "1", "x", 1)]).is_none());
    }
}
