//! Conversions in ClickHouse: the postback ledger as loaded by the sink, the
//! narrow click-id table that matches a postback to its click, and the
//! queries reconciliation and link stats read in full mode.
//!
//! `conversions` keeps every ledger record (one per postback, refusals
//! included), so the audit trail is whole. Re-delivered records share their
//! `id` and count once (`uniqExact(id)`); a conversion counts once per
//! (network, txn_id, status) however many nodes or retries recorded it,
//! because the queries group by that key. Which status is a conversion's
//! latest is decided by when each status was *first* received, the same
//! rule one node's ledger applies, so a late retry of an old status never
//! moves a conversion back.
//!
//! `click_ids` holds (click id → link, time, bot) for every loaded click,
//! ordered by click id: a point lookup reads one granule instead of a day
//! of `clicks`, which is ordered for stats by (tenant, code).

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use super::{quote, run_query, WarehouseError, CLICKS_TABLE};

pub const CONVERSIONS_TABLE: &str = "conversions";
pub const CLICK_IDS_TABLE: &str = "click_ids";
const DAY_MS: i64 = 86_400_000;
/// Ledger outcomes that carry a conversion.
const VALID: &str = "('accepted', 'status_change', 'duplicate', 'unknown_click')";
/// Ledger outcomes refused before they became a conversion.
const REFUSED: &str = "('forged_click', 'out_of_window', 'bad_auth', 'malformed')";
/// Click ids per lookup query (the `IN` list stays a few tens of KB).
const LOOKUP_CHUNK: usize = 1000;

pub fn schema(database: &str) -> [String; 2] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.{CONVERSIONS_TABLE} (
                id String,
                received_at DateTime('UTC'),
                received_ms Int64,
                outcome String,
                network String,
                txn_id String,
                status String,
                payout String,
                currency String,
                click_id String,
                click_ts_ms Int64,
                code String,
                tenant String,
                occurred_ms Int64,
                reason String,
                edge_node String
            ) ENGINE = ReplacingMergeTree()
            PARTITION BY toYYYYMMDD(received_at)
            ORDER BY (network, txn_id, status, id)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.{CLICK_IDS_TABLE} (
                click_id String,
                ts DateTime('UTC'),
                ts_ms UInt64,
                tenant String,
                code String,
                bot UInt8
            ) ENGINE = ReplacingMergeTree()
            PARTITION BY toYYYYMMDD(ts)
            ORDER BY click_id"
        ),
    ]
}

/// Fills `click_ids` from `clicks`: once, when the table is new (clicks
/// loaded before it existed must match too).
pub fn backfill_click_ids_sql(database: &str) -> String {
    format!(
        "INSERT INTO {database}.{CLICK_IDS_TABLE} \
         SELECT click_id, ts, ts_ms, tenant, code, bot FROM {database}.{CLICKS_TABLE}"
    )
}

/// One ledger record as stored. Absent fields are empty strings and zeros
/// (no `Nullable`, which costs a column per field on old servers).
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConversionRow {
    pub id: String,
    /// Unix seconds (`DateTime`).
    pub received_at: u32,
    pub received_ms: i64,
    pub outcome: String,
    pub network: String,
    pub txn_id: String,
    pub status: String,
    /// Exact decimal text; sums are made in Rust, never in floats.
    pub payout: String,
    pub currency: String,
    pub click_id: String,
    pub click_ts_ms: i64,
    pub code: String,
    pub tenant: String,
    pub occurred_ms: i64,
    pub reason: String,
    pub edge_node: String,
}

/// One click's lookup entry, borrowed from the click row being loaded.
#[derive(Debug, Row, Serialize)]
pub struct ClickIdRow<'a> {
    pub click_id: &'a str,
    pub ts: u32,
    pub ts_ms: u64,
    pub tenant: &'a str,
    pub code: &'a str,
    pub bot: u8,
}

/// Which conversions a query reads.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub network: Option<&'a str>,
    /// Conversions first received in `[from_ms, to_ms)`.
    pub from_ms: i64,
    pub to_ms: i64,
    /// Conversions matched to this tenant, plus the unmatched ones (whose
    /// click may have arrived since; the caller resolves and filters them).
    pub tenant: Option<&'a str>,
    /// Narrower still: matched to this link (tenant, code), plus unmatched.
    pub link: Option<(&'a str, &'a str)>,
}

/// One (network, txn_id, status) of a conversion: what its first record
/// said, and how many distinct records carried it.
#[derive(Debug, Clone, Row, Deserialize, PartialEq, Eq)]
pub struct StatusGroup {
    pub network: String,
    pub txn_id: String,
    pub status: String,
    pub first_ms: i64,
    pub first_outcome: String,
    pub first_payout: String,
    pub first_currency: String,
    pub first_click_id: String,
    pub first_click_ts_ms: i64,
    /// The link named by the group's latest record that had matched its
    /// click (empty when none had), and when that record was received.
    pub matched_code: String,
    pub matched_tenant: String,
    pub matched_ms: i64,
    pub records: u64,
}

/// The status groups of every conversion in `scope`, ordered by
/// conversion and first receipt.
///
/// Which conversions: those with a record in `[from, to)` and none before
/// `from`. Both subqueries are bounded by partition (`received_at`) and,
/// for the earlier records, by the table's key `(network, txn_id, …)`, so a
/// query reads the range's days plus index lookups, not the whole table.
/// Their records from `from` on (later status changes included) are then
/// grouped by status.
pub fn status_groups_sql(scope: &Scope<'_>) -> String {
    let network = scope
        .network
        .map(|n| format!(" AND network = {}", quote(n)))
        .unwrap_or_default();
    let (from_s, to_s) = (
        scope.from_ms.div_euclid(1000).max(0),
        scope.to_ms.div_euclid(1000).max(0),
    );
    let (from, to) = (scope.from_ms, scope.to_ms);
    // Conversion-level scope: the link of the latest matched record, or
    // none yet (the caller looks those up again and filters them).
    let latest = |col: &str| format!("argMaxIf({col}, received_ms, code != '')");
    let having = match (scope.link, scope.tenant) {
        (Some((tenant, code)), _) => format!(
            " HAVING ({} = {} AND {} = {}) OR max(code) = ''",
            latest("tenant"),
            quote(tenant),
            latest("code"),
            quote(code)
        ),
        (None, Some(tenant)) => format!(" HAVING {} IN ({}, '')", latest("tenant"), quote(tenant)),
        (None, None) => String::new(),
    };
    let candidates = format!(
        "SELECT network, txn_id FROM {CONVERSIONS_TABLE} \
         WHERE outcome IN {VALID}{network} \
           AND received_at >= toDateTime({from_s}, 'UTC') AND received_at <= toDateTime({to_s}, 'UTC') \
           AND received_ms >= {from} AND received_ms < {to} \
         GROUP BY network, txn_id{having}"
    );
    format!(
        "SELECT network, txn_id, status, \
           toInt64(min(received_ms)) AS first_ms, \
           argMin(outcome, received_ms) AS first_outcome, \
           argMin(payout, received_ms) AS first_payout, \
           argMin(currency, received_ms) AS first_currency, \
           argMin(click_id, received_ms) AS first_click_id, \
           toInt64(argMin(click_ts_ms, received_ms)) AS first_click_ts_ms, \
           {} AS matched_code, \
           {} AS matched_tenant, \
           toInt64(maxIf(received_ms, code != '')) AS matched_ms, \
           uniqExact(id) AS records \
         FROM {CONVERSIONS_TABLE} \
         WHERE outcome IN {VALID}{network} AND received_at >= toDateTime({from_s}, 'UTC') \
           AND (network, txn_id) IN ({candidates}) \
           AND (network, txn_id) NOT IN ( \
             SELECT network, txn_id FROM {CONVERSIONS_TABLE} \
             WHERE outcome IN {VALID}{network} \
               AND received_at <= toDateTime({from_s}, 'UTC') AND received_ms < {from} \
               AND (network, txn_id) IN ({candidates})) \
         GROUP BY network, txn_id, status \
         ORDER BY network, txn_id, first_ms",
        latest("code"),
        latest("tenant"),
    )
}

/// Records refused before they became a conversion, per network, UTC day
/// (starting in `[from_ms, to_ms)`) and outcome.
#[derive(Debug, Clone, Row, Deserialize, PartialEq, Eq)]
pub struct RefusedDay {
    pub network: String,
    pub day: i64,
    pub outcome: String,
    pub records: u64,
}

pub fn refused_sql(network: Option<&str>, from_ms: i64, to_ms: i64) -> String {
    let network = network
        .map(|n| format!(" AND network = {}", quote(n)))
        .unwrap_or_default();
    format!(
        "SELECT network, toInt64(intDiv(received_ms, {DAY_MS})) AS day, outcome, \
           uniqExact(id) AS records \
         FROM {CONVERSIONS_TABLE} \
         WHERE outcome IN {REFUSED}{network} \
           AND received_at >= toDateTime({from_s}, 'UTC') \
           AND received_at < toDateTime({to_s}, 'UTC') + 86400 \
           AND intDiv(received_ms, {DAY_MS}) * {DAY_MS} >= {from_ms} \
           AND intDiv(received_ms, {DAY_MS}) * {DAY_MS} < {to_ms} \
         GROUP BY network, day, outcome \
         ORDER BY network, day, outcome",
        from_s = from_ms.div_euclid(DAY_MS).max(0) * (DAY_MS / 1000),
        to_s = to_ms.div_euclid(1000).max(0),
    )
}

/// A click found by id.
#[derive(Debug, Clone, Row, Deserialize, PartialEq, Eq)]
pub struct FoundClick {
    pub click_id: String,
    pub tenant: String,
    pub code: String,
    pub ts_ms: i64,
    pub bot: u8,
}

/// Looks clicks up by id; `near_ms` (the time the ids carry, when known)
/// prunes to the partitions around it.
pub fn find_clicks_sql(ids: &[&str], near_ms: Option<(i64, i64)>) -> String {
    let list = ids
        .iter()
        .map(|id| quote(id))
        .collect::<Vec<_>>()
        .join(", ");
    let near = near_ms
        .map(|(lo, hi)| {
            format!(
                " AND ts >= toDateTime({}, 'UTC') AND ts <= toDateTime({}, 'UTC')",
                (lo.div_euclid(1000) - 60).max(0),
                hi.div_euclid(1000).max(0) + 60
            )
        })
        .unwrap_or_default();
    format!(
        "SELECT click_id, any(tenant) AS tenant, any(code) AS code, \
           toInt64(any(ts_ms)) AS ts_ms, any(bot) AS bot \
         FROM {CLICK_IDS_TABLE} WHERE click_id IN ({list}){near} \
         GROUP BY click_id"
    )
}

/// Human clicks per link and UTC day over `[from_ms, to_ms)`.
#[derive(Debug, Clone, Row, Deserialize, PartialEq, Eq)]
pub struct HumanDay {
    pub tenant: String,
    pub code: String,
    pub day: i64,
    pub human: u64,
}

pub fn human_clicks_sql(links: &[(&str, &str)], from_ms: i64, to_ms: i64) -> String {
    let list = links
        .iter()
        .map(|(t, c)| format!("({}, {})", quote(t), quote(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT tenant, code, toInt64(intDiv(ts_ms, {DAY_MS})) AS day, \
           uniqExactIf(click_id, bot = 0) AS human \
         FROM {CLICKS_TABLE} \
         WHERE (tenant, code) IN ({list}) \
           AND ts >= toDateTime({}, 'UTC') AND ts <= toDateTime({}, 'UTC') \
           AND ts_ms >= {} AND ts_ms < {} \
         GROUP BY tenant, code, day \
         ORDER BY tenant, code, day",
        from_ms.div_euclid(1000).max(0),
        to_ms.div_euclid(1000).max(0),
        from_ms.max(0),
        to_ms.max(0),
    )
}

pub async fn status_groups(
    client: &Client,
    scope: &Scope<'_>,
) -> Result<Vec<StatusGroup>, WarehouseError> {
    run_query(client.query(&status_groups_sql(scope)).fetch_all()).await
}

pub async fn refused(
    client: &Client,
    network: Option<&str>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<RefusedDay>, WarehouseError> {
    run_query(
        client
            .query(&refused_sql(network, from_ms, to_ms))
            .fetch_all(),
    )
    .await
}

/// Finds the clicks among `ids`, in chunks.
pub async fn find_clicks(
    client: &Client,
    ids: &[&str],
    near_ms: Option<(i64, i64)>,
) -> Result<Vec<FoundClick>, WarehouseError> {
    let mut found = Vec::new();
    for chunk in ids.chunks(LOOKUP_CHUNK) {
        let sql = find_clicks_sql(chunk, near_ms);
        found.extend(run_query(client.query(&sql).fetch_all::<FoundClick>()).await?);
    }
    Ok(found)
}

pub async fn human_clicks(
    client: &Client,
    links: &[(&str, &str)],
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<HumanDay>, WarehouseError> {
    if links.is_empty() {
        return Ok(Vec::new());
    }
    let mut days = Vec::new();
    for chunk in links.chunks(LOOKUP_CHUNK) {
        let sql = human_clicks_sql(chunk, from_ms, to_ms);
        days.extend(run_query(client.query(&sql).fetch_all::<HumanDay>()).await?);
    }
    Ok(days)
}
