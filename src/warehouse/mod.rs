//! ClickHouse: the client, the schema, retention, and the stats queries
//! (conversions and the click-id lookup are in [`conversions`]).
//!
//! Everything here must run on ClickHouse 18.16 (Debian's package) and on
//! current releases alike: no `DateTime64`, `LowCardinality`, `Bool` or TTL
//! clauses, and retention drops whole day partitions. Delivery is
//! at-least-once, so `clicks` is a `ReplacingMergeTree` keyed by click id
//! and every count is an exact distinct count of `click_id`: a re-delivered
//! click never counts twice, merged yet or not.

pub mod conversions;

use std::future::Future;
use std::time::Duration;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use crate::config::ClickHouseConfig;
use crate::stats::{Counts, Interval, SeriesPoint};

pub const CLICKS_TABLE: &str = "clicks";
pub const DEAD_LETTERS_TABLE: &str = "dead_letters";
/// Tables whose day partitions retention drops.
const RETAINED_TABLES: &[&str] = &[
    CLICKS_TABLE,
    DEAD_LETTERS_TABLE,
    conversions::CONVERSIONS_TABLE,
    conversions::CLICK_IDS_TABLE,
];
/// Longest a stats query may take before the admin API answers 503.
const QUERY_TIMEOUT: Duration = Duration::from_secs(8);
/// An insert whose chunks or final answer take longer fails and is retried:
/// a server that accepts connections and never answers must not hang the
/// sink.
const INSERT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
const INSERT_END_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("clickhouse: query timed out after {0:?}")]
    Timeout(Duration),
}

/// A client for the configured database. Validation is off: it reads
/// `system` tables that ClickHouse 18.16 does not have.
pub fn client(cfg: &ClickHouseConfig) -> Client {
    server_client(cfg).with_database(&cfg.database)
}

/// A client without a default database (to create it).
fn server_client(cfg: &ClickHouseConfig) -> Client {
    Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        .with_validation(false)
}

/// Columns added to `clicks` after its first release (routing facts), in
/// order, with their types and defaults: tables made before them get them
/// from [`add_missing_columns_sql`] (18.16 has no `ADD COLUMN IF NOT
/// EXISTS`). `rule`/`variant` are -1 for none.
pub const ADDED_CLICK_COLUMNS: &[(&str, &str)] = &[
    ("country", "String DEFAULT ''"),
    ("device", "String DEFAULT ''"),
    ("os", "String DEFAULT ''"),
    ("rule", "Int16 DEFAULT -1"),
    ("variant", "Int16 DEFAULT -1"),
];

/// The migration of an existing `clicks` table whose columns are `existing`.
pub fn add_missing_columns_sql(database: &str, existing: &[String]) -> Vec<String> {
    ADDED_CLICK_COLUMNS
        .iter()
        .filter(|(name, _)| !existing.iter().any(|e| e == name))
        .map(|(name, ty)| format!("ALTER TABLE {database}.{CLICKS_TABLE} ADD COLUMN {name} {ty}"))
        .collect()
}

/// The DDL, in order. Idempotent.
pub fn schema(database: &str) -> Vec<String> {
    let routing = ADDED_CLICK_COLUMNS
        .iter()
        .map(|(name, ty)| format!("{name} {ty}"))
        .collect::<Vec<_>>()
        .join(",\n                ");
    let mut ddl = vec![
        format!("CREATE DATABASE IF NOT EXISTS {database}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.{CLICKS_TABLE} (
                click_id String,
                ts DateTime('UTC'),
                ts_ms UInt64,
                tenant String,
                code String,
                destination String,
                ip_hash String,
                user_agent String,
                referer String,
                sub String,
                bot UInt8,
                bot_reason String,
                edge_node String,
                salt_epoch UInt64,
                {routing}
            ) ENGINE = ReplacingMergeTree()
            PARTITION BY toYYYYMMDD(ts)
            ORDER BY (tenant, code, click_id)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.{DEAD_LETTERS_TABLE} (
                received_at DateTime('UTC'),
                topic String,
                kafka_partition Int32,
                kafka_offset Int64,
                reason String,
                payload String
            ) ENGINE = MergeTree()
            PARTITION BY toYYYYMMDD(received_at)
            ORDER BY (topic, kafka_partition, kafka_offset)"
        ),
    ];
    ddl.extend(conversions::schema(database));
    ddl
}

/// Creates the database and tables if missing.
pub async fn ensure_schema(cfg: &ClickHouseConfig) -> Result<(), WarehouseError> {
    let server = server_client(cfg);
    let had_click_ids: u64 = server
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
        .bind(&cfg.database)
        .bind(conversions::CLICK_IDS_TABLE)
        .fetch_one()
        .await?;
    for ddl in schema(&cfg.database) {
        server.query(&ddl).execute().await?;
    }
    let columns: Vec<String> = server
        .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
        .bind(&cfg.database)
        .bind(CLICKS_TABLE)
        .fetch_all()
        .await?;
    for ddl in add_missing_columns_sql(&cfg.database, &columns) {
        server.query(&ddl).execute().await?;
        tracing::info!(sql = %ddl, "warehouse: clicks migrated");
    }
    if had_click_ids == 0 {
        server
            .query(&conversions::backfill_click_ids_sql(&cfg.database))
            .execute()
            .await?;
        tracing::info!("warehouse: click_ids created and filled from clicks");
    }
    Ok(())
}

/// One click as stored, borrowing its text (from the sink's batch).
#[derive(Debug, Clone, Copy, Row, Serialize, PartialEq, Eq)]
pub struct ClickRow<'a> {
    pub click_id: &'a str,
    /// Unix seconds (`DateTime`).
    pub ts: u32,
    pub ts_ms: u64,
    pub tenant: &'a str,
    pub code: &'a str,
    pub destination: &'a str,
    pub ip_hash: &'a str,
    pub user_agent: &'a str,
    pub referer: &'a str,
    pub sub: &'a str,
    pub bot: u8,
    pub bot_reason: &'a str,
    pub edge_node: &'a str,
    pub salt_epoch: u64,
    /// Two letters, or empty.
    pub country: &'a str,
    pub device: &'a str,
    pub os: &'a str,
    /// Index of the rule taken, -1 for none.
    pub rule: i16,
    /// Index of the variant taken, -1 for none.
    pub variant: i16,
}

/// Text fields of a [`ClickRow`], in column order.
const CLICK_TEXTS: usize = 13;

/// A batch of click rows: all their text in one buffer, so a row costs no
/// allocation of its own (the sink held ten `String`s per row before).
#[derive(Debug, Default)]
pub struct ClickRows {
    text: String,
    rows: Vec<RowAt>,
}

#[derive(Debug, Clone, Copy)]
struct RowAt {
    /// End of each text field in `text`.
    ends: [u32; CLICK_TEXTS],
    ts: u32,
    ts_ms: u64,
    bot: u8,
    salt_epoch: u64,
    rule: i16,
    variant: i16,
}

impl ClickRows {
    pub fn push(&mut self, r: &ClickRow<'_>) {
        let mut ends = [0u32; CLICK_TEXTS];
        let texts = [
            r.click_id,
            r.tenant,
            r.code,
            r.destination,
            r.ip_hash,
            r.user_agent,
            r.referer,
            r.sub,
            r.bot_reason,
            r.edge_node,
            r.country,
            r.device,
            r.os,
        ];
        for (end, t) in ends.iter_mut().zip(texts) {
            self.text.push_str(t);
            *end = self.text.len() as u32;
        }
        self.rows.push(RowAt {
            ends,
            ts: r.ts,
            ts_ms: r.ts_ms,
            bot: r.bot,
            salt_epoch: r.salt_epoch,
            rule: r.rule,
            variant: r.variant,
        });
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.rows.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = ClickRow<'_>> {
        let mut start = 0usize;
        self.rows.iter().map(move |r| {
            let mut t = [""; CLICK_TEXTS];
            for (field, end) in t.iter_mut().zip(r.ends) {
                *field = &self.text[start..end as usize];
                start = end as usize;
            }
            let [click_id, tenant, code, destination, ip_hash, user_agent, referer, sub, bot_reason, edge_node, country, device, os] =
                t;
            ClickRow {
                click_id,
                ts: r.ts,
                ts_ms: r.ts_ms,
                tenant,
                code,
                destination,
                ip_hash,
                user_agent,
                referer,
                sub,
                bot: r.bot,
                bot_reason,
                edge_node,
                salt_epoch: r.salt_epoch,
                country,
                device,
                os,
                rule: r.rule,
                variant: r.variant,
            }
        })
    }
}

/// Inserts a batch of clicks into `table`.
pub async fn insert_clicks(
    client: &Client,
    table: &str,
    rows: &ClickRows,
) -> Result<(), WarehouseError> {
    let mut insert = client
        .insert::<ClickRow<'static>>(table)
        .await?
        .with_timeouts(Some(INSERT_SEND_TIMEOUT), Some(INSERT_END_TIMEOUT));
    for row in rows.iter() {
        insert.write(&row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// A record the sink could not load, kept with the reason.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct DeadLetterRow {
    pub received_at: u32,
    pub topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub reason: String,
    pub payload: String,
}

/// Inserts `rows` into `table` as one INSERT.
pub async fn insert<T>(client: &Client, table: &str, rows: &[T]) -> Result<(), WarehouseError>
where
    T: Row + Serialize,
    for<'a> T: Row<Value<'a> = T>,
{
    let mut insert = client
        .insert::<T>(table)
        .await?
        .with_timeouts(Some(INSERT_SEND_TIMEOUT), Some(INSERT_END_TIMEOUT));
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// The active partitions of the retained tables: `(table, partition)` rows.
pub fn retained_parts_sql(database: &str) -> String {
    format!(
        "SELECT DISTINCT table, partition FROM system.parts \
         WHERE database = {} AND active AND table IN ({}) ORDER BY table, partition",
        quote(database),
        RETAINED_TABLES
            .iter()
            .map(|t| quote(t))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Drops one day partition (`YYYYMMDD`, checked by the caller).
pub fn drop_partition_sql(database: &str, table: &str, partition: &str) -> String {
    format!("ALTER TABLE {database}.{table} DROP PARTITION {partition}")
}

/// Drops day partitions of the retained tables older than `days` before
/// `now_ms`. Returns the partitions dropped.
pub async fn apply_retention(
    client: &Client,
    database: &str,
    days: u32,
    now_ms: i64,
) -> Result<Vec<String>, WarehouseError> {
    #[derive(Row, Deserialize)]
    struct Part {
        table: String,
        partition: String,
    }
    let cutoff = chrono::DateTime::from_timestamp_millis(now_ms - i64::from(days) * 86_400_000)
        .unwrap_or_default()
        .format("%Y%m%d")
        .to_string();
    let parts: Vec<Part> = client
        .query(&retained_parts_sql(database))
        .fetch_all()
        .await?;
    let mut dropped = Vec::new();
    for p in parts {
        // Day partitions are YYYYMMDD; anything else is not ours to drop.
        if p.partition.len() != 8 || !p.partition.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if p.partition < cutoff {
            client
                .query(&drop_partition_sql(database, &p.table, &p.partition))
                .execute()
                .await?;
            dropped.push(format!("{}/{}", p.table, p.partition));
        }
    }
    Ok(dropped)
}

/// Runs one read within [`QUERY_TIMEOUT`].
async fn run_query<T>(
    query: impl Future<Output = Result<T, clickhouse::error::Error>>,
) -> Result<T, WarehouseError> {
    tokio::time::timeout(QUERY_TIMEOUT, query)
        .await
        .map_err(|_| WarehouseError::Timeout(QUERY_TIMEOUT))?
        .map_err(WarehouseError::from)
}

/// Inserts the click-id lookup entries of `clicks` as one INSERT.
pub async fn insert_click_ids(client: &Client, clicks: &ClickRows) -> Result<(), WarehouseError> {
    let mut insert = client
        .insert::<conversions::ClickIdRow<'static>>(conversions::CLICK_IDS_TABLE)
        .await?
        .with_timeouts(Some(INSERT_SEND_TIMEOUT), Some(INSERT_END_TIMEOUT));
    for c in clicks.iter() {
        let row = conversions::ClickIdRow {
            click_id: c.click_id,
            ts: c.ts,
            ts_ms: c.ts_ms,
            tenant: c.tenant,
            code: c.code,
            bot: c.bot,
        };
        insert.write(&row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// A ClickHouse string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The two stats queries for one link over `[from_ms, to_ms)`: totals, and
/// one row per bucket, each `(bucket, clicks, human, visitors)`. Exact
/// distinct counts, so re-delivered clicks count once.
pub fn stats_sql(
    tenant: &str,
    code: &str,
    from_ms: i64,
    to_ms: i64,
    interval: Interval,
) -> (String, String) {
    let step = interval.millis();
    let counts = "uniqExact(click_id) AS clicks, \
         uniqExactIf(click_id, bot = 0) AS human, \
         uniqExactIf(salt_epoch, ip_hash, bot = 0) AS visitors";
    let filter = link_filter(tenant, code, from_ms, to_ms);
    (
        format!("SELECT toInt64(0) AS bucket, {counts} FROM {CLICKS_TABLE} {filter}"),
        format!(
            "SELECT toInt64(intDiv(ts_ms, {step}) * {step}) AS bucket, {counts} \
             FROM {CLICKS_TABLE} {filter} GROUP BY bucket ORDER BY bucket"
        ),
    )
}

/// The `WHERE` of one link's clicks over `[from_ms, to_ms)`: `ts` bounds
/// prune partitions; `ts_ms` bounds are exact.
fn link_filter(tenant: &str, code: &str, from_ms: i64, to_ms: i64) -> String {
    format!(
        "WHERE tenant = {} AND code = {} \
         AND ts >= toDateTime({}, 'UTC') AND ts <= toDateTime({}, 'UTC') \
         AND ts_ms >= {} AND ts_ms < {}",
        quote(tenant),
        quote(code),
        from_ms.div_euclid(1000).max(0),
        to_ms.div_euclid(1000).max(0),
        from_ms.max(0),
        to_ms.max(0),
    )
}

/// One link's clicks over `[from_ms, to_ms)` by variant, country and
/// device: rows of `(kind, key, clicks, human)`, exact distinct counts.
pub fn routing_sql(tenant: &str, code: &str, from_ms: i64, to_ms: i64) -> String {
    let filter = link_filter(tenant, code, from_ms, to_ms);
    let part = |kind: &str, key: &str, only: &str| {
        format!(
            "SELECT '{kind}' AS kind, {key} AS key, uniqExact(click_id) AS clicks, \
             uniqExactIf(click_id, bot = 0) AS human FROM {CLICKS_TABLE} {filter} AND {only} \
             GROUP BY key"
        )
    };
    format!(
        "SELECT kind, key, clicks, human FROM ({} UNION ALL {} UNION ALL {}) ORDER BY kind, key",
        part("variant", "toString(variant)", "variant >= 0"),
        part("country", "country", "country != ''"),
        part("device", "device", "device != ''"),
    )
}

/// [`routing_sql`]'s answer as the embedded stats' [`Breakdown`].
pub async fn link_routing(
    client: &Client,
    tenant: &str,
    code: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<crate::links::tally::Breakdown, WarehouseError> {
    #[derive(Row, Deserialize)]
    struct Part {
        kind: String,
        key: String,
        clicks: u64,
        human: u64,
    }
    let query = client.query(&routing_sql(tenant, code, from_ms, to_ms));
    let parts: Vec<Part> = run_query(query.fetch_all()).await?;
    let mut b = crate::links::tally::Breakdown::default();
    for p in parts {
        match p.kind.as_str() {
            "variant" => {
                if let Ok(i) = p.key.parse::<usize>() {
                    if b.variants.len() <= i {
                        b.variants.resize(i + 1, [0, 0]);
                    }
                    b.variants[i] = [p.clicks, p.clicks.saturating_sub(p.human)];
                }
            }
            "country" => {
                let code = crate::links::Route::country_code(p.key.as_bytes());
                if code != [0, 0] {
                    b.countries.push((code, p.clicks));
                }
            }
            _ => {
                if let Some(d) = crate::links::agent::Device::parse(&p.key) {
                    b.devices[d as usize] += p.clicks;
                }
            }
        }
    }
    Ok(b)
}

/// Stats for one link over `[from_ms, to_ms)`, the same shape as embedded
/// mode: exact distinct clicks, human clicks and visitors (distinct IP
/// hashes of human clicks, per salt epoch).
pub async fn link_stats(
    client: &Client,
    tenant: &str,
    code: &str,
    from_ms: i64,
    to_ms: i64,
    interval: Interval,
) -> Result<(Counts, Vec<SeriesPoint>), WarehouseError> {
    #[derive(Row, Deserialize)]
    struct Bucket {
        bucket: i64,
        clicks: u64,
        human: u64,
        visitors: u64,
    }
    let step = interval.millis();
    let (totals, series) = stats_sql(tenant, code, from_ms, to_ms, interval);
    let (totals, series) = (client.query(&totals), client.query(&series));
    let run = async {
        let total: Bucket = totals.fetch_one().await?;
        let buckets: Vec<Bucket> = series.fetch_all().await?;
        Ok::<_, WarehouseError>((total, buckets))
    };
    let (total, buckets) = tokio::time::timeout(QUERY_TIMEOUT, run)
        .await
        .map_err(|_| WarehouseError::Timeout(QUERY_TIMEOUT))??;
    let counts = |clicks: u64, human: u64, visitors: u64| Counts {
        clicks,
        human_clicks: human,
        bot_clicks: clicks - human.min(clicks),
        unique_visitors: visitors,
    };
    // Every bucket of the range, zeros included, as embedded mode answers.
    let mut series = Vec::new();
    let mut found = buckets.into_iter().peekable();
    let mut start = from_ms.div_euclid(step) * step;
    while start < to_ms {
        let c = match found.peek() {
            Some(b) if b.bucket == start => {
                let b = found.next().expect("peeked");
                counts(b.clicks, b.human, b.visitors)
            }
            _ => Counts::default(),
        };
        series.push(SeriesPoint {
            ts: crate::time::rfc3339(start),
            counts: c,
        });
        start += step;
    }
    Ok((counts(total.clicks, total.human, total.visitors), series))
}
