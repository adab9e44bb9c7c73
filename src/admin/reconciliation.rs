//! `GET /v1/reconciliation?network=&from=&to=`: the postback ledger per
//! network, day and link, scoped to the caller's tenant; read from this
//! node's ledger (embedded) or ClickHouse (full mode).

use super::auth::Principal;
use super::error::ApiError;
use super::Admin;
use crate::postback::networks::is_valid_name;
use crate::postback::reconcile::{reconcile, Query, Reconciliation};
use crate::time::{parse_range_bound, RangeEnd};

const DEFAULT_DAYS: i64 = 30;
/// Longest range one answer covers.
const MAX_DAYS: i64 = 400;
const DAY_MS: i64 = 86_400_000;

impl Admin {
    pub(super) fn reconciliation(
        &self,
        who: &Principal,
        query: Option<&str>,
    ) -> Result<Reconciliation, ApiError> {
        let mut network = None;
        let mut from = None;
        let mut to = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "network" if !v.is_empty() => {
                    if !is_valid_name(&v) {
                        return Err(ApiError::bad_query("network is not a network name"));
                    }
                    network = Some(v.into_owned());
                }
                "from" => from = Some(bound(&v, RangeEnd::From, "from")?),
                "to" => to = Some(bound(&v, RangeEnd::To, "to")?),
                _ => {}
            }
        }
        let to = to.unwrap_or_else(crate::time::now_ms);
        let from = from.unwrap_or(to - DEFAULT_DAYS * DAY_MS);
        if from >= to {
            return Err(ApiError::bad_query("from must be before to"));
        }
        if to - from > MAX_DAYS * DAY_MS {
            return Err(ApiError::bad_query(format!(
                "range too large: at most {MAX_DAYS} days"
            )));
        }
        let q = Query {
            network,
            from_ms: from,
            to_ms: to,
            tenant: who.tenant.clone(),
        };
        match &self.warehouse {
            // Every node's ledger meets in ClickHouse. On the blocking pool
            // (see `route`), so waiting here is fine.
            Some(w) => tokio::runtime::Handle::current()
                .block_on(crate::postback::full::reconcile(&w.client, &q))
                .map_err(|e| super::warehouse_unavailable("reconciliation_unavailable", &e)),
            None => Ok(reconcile(&self.ledger, &self.stats, &q)),
        }
    }
}

fn bound(v: &str, end: RangeEnd, name: &str) -> Result<i64, ApiError> {
    parse_range_bound(v, end).ok_or_else(|| {
        ApiError::bad_query(format!(
            "{name} must be an RFC 3339 timestamp or a YYYY-MM-DD date"
        ))
    })
}
