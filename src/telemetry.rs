//! Metrics and logging set-up, and the one place that names every metric.
//!
//! Hot-path metrics are registered once into handles ([`EdgeMetrics`]);
//! everything else goes through the small functions below, so each
//! observable event has its name, labels and log line defined here.
//! Labels never carry a raw IP, a token or a secret.

use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::{LogConfig, LogFormat, OverflowPolicy};

pub const HTTP_REQUESTS: &str = "clickedge_http_requests_total";
pub const REDIRECT_DURATION: &str = "clickedge_redirect_duration_seconds";
pub const LINK_TABLE_SIZE: &str = "clickedge_link_table_size";
pub const LINK_TABLE_SWAPS: &str = "clickedge_link_table_swaps_total";
pub const CONNECTIONS_ACTIVE: &str = "clickedge_connections_active";
pub const CONNECTIONS_REJECTED: &str = "clickedge_connections_rejected_total";
pub const CONNECTIONS_TIMED_OUT: &str = "clickedge_connections_timed_out_total";
pub const CLICKLOG_QUEUE_DEPTH: &str = "clickedge_clicklog_queue_depth";
pub const CLICKLOG_EVENTS: &str = "clickedge_clicklog_events_total";
pub const CLICKLOG_BYTES: &str = "clickedge_clicklog_bytes_total";
pub const CLICKLOG_FSYNC: &str = "clickedge_clicklog_fsync_duration_seconds";
pub const CLICKLOG_BATCH: &str = "clickedge_clicklog_batch_duration_seconds";
pub const STATS_SNAPSHOT: &str = "clickedge_stats_snapshot_duration_seconds";
pub const CLICKLOG_OVERFLOW: &str = "clickedge_clicklog_overflow_total";
pub const CLICKLOG_WRITE_ERRORS: &str = "clickedge_clicklog_write_errors_total";
pub const CLICKLOG_SEGMENTS: &str = "clickedge_clicklog_segments";
pub const CLICKLOG_DAMAGED: &str = "clickedge_clicklog_damaged_records_total";
pub const TLS_RELOADS: &str = "clickedge_tls_reloads_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "clickedge_tls_handshake_failures_total";
pub const POSTBACKS: &str = "clickedge_postbacks_total";
pub const POSTBACKS_UNKNOWN_NETWORK: &str = "clickedge_postbacks_unknown_network_total";
pub const POSTBACK_VERIFY: &str = "clickedge_postback_verify_duration_seconds";
pub const POSTBACK_LEDGER_ERRORS: &str = "clickedge_postback_ledger_errors_total";
pub const H2_RESET_LIMIT: &str = "clickedge_h2_reset_limit_total";
pub const REQUESTS_SHED: &str = "clickedge_requests_shed_total";
pub const POSTBACKS_SHED: &str = "clickedge_postbacks_shed_total";
pub const BODY_READS_REFUSED: &str = "clickedge_body_reads_refused_total";
pub const ADMIN_CODE_CONFLICTS: &str = "clickedge_admin_code_conflicts_total";
pub const RATE_LIMITED: &str = "clickedge_rate_limited_total";
pub const RATE_LIMIT_OVERFLOW: &str = "clickedge_rate_limit_overflow_total";
pub const RATE_LIMIT_KEYS: &str = "clickedge_rate_limit_keys";
pub const TLS_CERT_EXPIRY: &str = "clickedge_tls_certificate_expiry_timestamp_seconds";
pub const SALT_EPOCH_START: &str = "clickedge_ip_salt_epoch_start_timestamp_seconds";
pub const SALT_ROTATION: &str = "clickedge_ip_salt_rotation_seconds";
pub const SALT_STEP_FAILURES: &str = "clickedge_ip_salt_step_failures_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1,
];
const FSYNC_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Installs the Prometheus recorder; the handle renders `/metrics`.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REDIRECT_DURATION.into()), LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CLICKLOG_FSYNC.into()), FSYNC_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STATS_SNAPSHOT.into()), FSYNC_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CLICKLOG_BATCH.into()), FSYNC_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(POSTBACK_VERIFY.into()), LATENCY_BUCKETS)
        })
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    describe_and_zero();
    Ok(handle)
}

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds histogram samples into their buckets until `shutdown`. Without it
/// the recorder (built with `build_recorder`, which starts no upkeep of its
/// own) keeps every sample until the next scrape: 8 bytes per redirect,
/// hundreds of MB an hour under load when nobody scrapes.
pub async fn run_upkeep(handle: PrometheusHandle, shutdown: tokio_util::sync::CancellationToken) {
    let mut ticker = crate::time::Ticker::new(UPKEEP_EVERY, shutdown);
    while ticker.tick().await {
        handle.run_upkeep();
    }
}

/// HELP texts, and zero values for the counters ops alert on, so a rate
/// query works before the first overflow or rejected connection.
fn describe_and_zero() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS,
        "Requests answered, by listener, route and status."
    );
    describe_histogram!(
        REDIRECT_DURATION,
        Unit::Seconds,
        "Time to answer a redirect, click-log hand-off included."
    );
    describe_gauge!(LINK_TABLE_SIZE, "Links in the edge's link table.");
    describe_counter!(
        LINK_TABLE_SWAPS,
        "Link-table publications (each admin change is one)."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Open connections, by listener.");
    describe_counter!(
        POSTBACKS_SHED,
        "Postbacks answered 503 at once because edge.postback_max_in_flight were in flight (their own pool: redirects are not affected)."
    );
    describe_counter!(
        ADMIN_CODE_CONFLICTS,
        "Tenant custom codes found taken by another tenant (outcome=taken_by_other_tenant, charged to the tenant's admin.code_conflicts budget) and custom codes refused 429 unlooked because that budget was spent (outcome=refused)."
    );
    for outcome in ["taken_by_other_tenant", "refused"] {
        counter!(ADMIN_CODE_CONFLICTS, "outcome" => outcome).absolute(0);
    }
    describe_counter!(
        BODY_READS_REFUSED,
        "Request bodies refused while being read, by listener and why (too_large, timeout, too_slow, unreadable)."
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Connections closed at once because the listener was at max_connections."
    );
    describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "Connections closed for starting no request, or for idling, longer than header_read_timeout_ms."
    );
    describe_gauge!(
        CLICKLOG_QUEUE_DEPTH,
        "Click events waiting for the click-log writer."
    );
    describe_counter!(CLICKLOG_EVENTS, "Click events written to the click log.");
    describe_counter!(
        CLICKLOG_BYTES,
        Unit::Bytes,
        "Bytes written to the click log."
    );
    describe_histogram!(
        CLICKLOG_FSYNC,
        Unit::Seconds,
        "Click-log fdatasync latency."
    );
    describe_histogram!(
        CLICKLOG_BATCH,
        Unit::Seconds,
        "Time the click-log writer spent on one batch: encoding, writing, indexing and counting its clicks (not the fsync). Batches over 10 ms are logged."
    );
    describe_histogram!(
        STATS_SNAPSHOT,
        Unit::Seconds,
        "Time one embedded-stats checkpoint took to write, on its low-priority thread (the writer goes on counting meanwhile)."
    );
    describe_counter!(CLICKLOG_OVERFLOW, "Clicks that met a full click-log queue, by policy and outcome (waited, refused = 503, dropped = redirected without an event).");
    describe_counter!(
        CLICKLOG_WRITE_ERRORS,
        "Failed click-log writes (retried; the batch is kept)."
    );
    describe_gauge!(CLICKLOG_SEGMENTS, "Click-log segment files on disk.");
    describe_counter!(
        CLICKLOG_DAMAGED,
        "Damaged click-log records met in closed segments (the rest of such a segment is skipped)."
    );
    describe_gauge!(
        TLS_CERT_EXPIRY,
        "When the edge's served certificate expires (its notAfter), Unix seconds."
    );
    describe_gauge!(
        SALT_EPOCH_START,
        "When the IP-hash salt in use began its epoch, Unix seconds; older than privacy.salt_rotation means the ratchet is stuck."
    );
    describe_gauge!(SALT_ROTATION, "privacy.salt_rotation, in seconds.");
    describe_counter!(
        SALT_STEP_FAILURES,
        "Salt steps whose state could not be persisted."
    );
    counter!(SALT_STEP_FAILURES).absolute(0);
    describe_counter!(TLS_RELOADS, "Certificate reloads after the files changed, by result (ok, failed: the old certificate keeps serving).");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed or timed out."
    );
    describe_counter!(
        POSTBACKS,
        "Postbacks by network and outcome (each is one ledger record)."
    );
    describe_counter!(
        POSTBACKS_UNKNOWN_NETWORK,
        "Postbacks for a network that is not registered (404, not recorded)."
    );
    describe_histogram!(
        POSTBACK_VERIFY,
        Unit::Seconds,
        "Time to authenticate a postback and read its fields (body included)."
    );
    describe_counter!(
        POSTBACK_LEDGER_ERRORS,
        "Postbacks answered 503 because the ledger could not be written."
    );
    describe_counter!(H2_RESET_LIMIT, "HTTP/2 connections closed (GOAWAY ENHANCE_YOUR_CALM) for too many reset streams, by listener.");
    describe_counter!(
        REQUESTS_SHED,
        "Edge requests answered 503 at once because edge.max_in_flight were in flight."
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests answered 429 by the per-client rate limiter, by class."
    );
    describe_counter!(RATE_LIMIT_OVERFLOW, "Requests of untracked clients checked against the shared overflow bucket because the key table was at edge.rate_limit.max_keys, by class.");
    describe_gauge!(
        RATE_LIMIT_KEYS,
        "Client buckets tracked by the rate limiter after the last sweep."
    );
    for listener in ["edge", "admin"] {
        counter!(CONNECTIONS_REJECTED, "listener" => listener).absolute(0);
        counter!(CONNECTIONS_TIMED_OUT, "listener" => listener).absolute(0);
        counter!(H2_RESET_LIMIT, "listener" => listener).absolute(0);
    }
    counter!(CLICKLOG_WRITE_ERRORS).absolute(0);
    counter!(CLICKLOG_EVENTS).absolute(0);
    describe_pipeline();
}

/// Logs go to stderr, one line per event, text or JSON.
pub fn init_tracing(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Pre-registered handles for the redirect path.
#[derive(Clone)]
pub struct EdgeMetrics {
    redirect: [Counter; 4],
    pub not_found: Counter,
    pub gone: Counter,
    pub method_not_allowed: Counter,
    pub bad_request: Counter,
    pub unavailable: Counter,
    pub reserved: Counter,
    pub rate_limited: Counter,
    pub uri_too_long: Counter,
    pub shed: Counter,
    /// Postbacks refused because their own pool was full.
    pub postback_shed: Counter,
    pub https_redirect: Counter,
    pub duration: Histogram,
}

impl EdgeMetrics {
    pub fn register() -> EdgeMetrics {
        let c = |route: &'static str, status: &'static str| counter!(HTTP_REQUESTS, "listener" => "edge", "route" => route, "status" => status);
        EdgeMetrics {
            redirect: [
                c("redirect", "301"),
                c("redirect", "302"),
                c("redirect", "307"),
                c("redirect", "308"),
            ],
            not_found: c("redirect", "404"),
            gone: c("redirect", "410"),
            method_not_allowed: c("redirect", "405"),
            bad_request: c("redirect", "400"),
            unavailable: c("redirect", "503"),
            reserved: c("reserved", "404"),
            rate_limited: c("redirect", "429"),
            uri_too_long: c("redirect", "414"),
            shed: {
                let shed = counter!(REQUESTS_SHED);
                shed.absolute(0);
                shed
            },
            postback_shed: {
                let shed = counter!(POSTBACKS_SHED);
                shed.absolute(0);
                shed
            },
            https_redirect: c("https_redirect", "308"),
            duration: histogram!(REDIRECT_DURATION),
        }
    }

    pub fn redirected(&self, status: http::StatusCode) -> &Counter {
        match status.as_u16() {
            301 => &self.redirect[0],
            307 => &self.redirect[2],
            308 => &self.redirect[3],
            _ => &self.redirect[1],
        }
    }
}

/// Pre-registered handles for the rate limiter, indexed by class
/// (redirect, not_found, postback).
#[derive(Clone)]
pub struct RateLimitMetrics {
    pub limited: [Counter; 3],
    pub overflow: [Counter; 3],
    pub keys: Gauge,
}

impl RateLimitMetrics {
    pub fn register() -> RateLimitMetrics {
        let classes = ["redirect", "not_found", "postback"];
        let zeroed = |name: &'static str, class: &'static str| {
            let c = counter!(name, "class" => class);
            c.absolute(0);
            c
        };
        RateLimitMetrics {
            limited: classes.map(|c| zeroed(RATE_LIMITED, c)),
            overflow: classes.map(|c| zeroed(RATE_LIMIT_OVERFLOW, c)),
            keys: gauge!(RATE_LIMIT_KEYS),
        }
    }
}

pub fn admin_request(route: &'static str, status: u16) {
    counter!(HTTP_REQUESTS, "listener" => "admin", "route" => route, "status" => status.to_string())
        .increment(1);
}

/// Custom codes of a tenant taken by another tenant, or refused unlooked
/// because the tenant's conflict budget was spent.
pub fn admin_code_conflicts(outcome: &'static str, n: usize) {
    if n > 0 {
        counter!(ADMIN_CODE_CONFLICTS, "outcome" => outcome).increment(n as u64);
    }
}

/// A request body was refused while being read (`why`: the
/// `body::BodyError` kind).
pub fn body_read_refused(listener: &'static str, why: &'static str) {
    counter!(BODY_READS_REFUSED, "listener" => listener, "why" => why).increment(1);
}

pub fn connection_opened(listener: &'static str) {
    gauge!(CONNECTIONS_ACTIVE, "listener" => listener).increment(1.0);
}

pub fn connection_closed(listener: &'static str) {
    gauge!(CONNECTIONS_ACTIVE, "listener" => listener).decrement(1.0);
}

pub fn connection_rejected(listener: &'static str) {
    counter!(CONNECTIONS_REJECTED, "listener" => listener).increment(1);
}

pub fn h2_reset_limit(listener: &'static str) {
    counter!(H2_RESET_LIMIT, "listener" => listener).increment(1);
}

/// A connection closed because no request arrived within the header timeout.
pub fn connection_timed_out(listener: &'static str) {
    counter!(CONNECTIONS_TIMED_OUT, "listener" => listener).increment(1);
}

pub fn link_table_swapped(len: usize) {
    counter!(LINK_TABLE_SWAPS).increment(1);
    gauge!(LINK_TABLE_SIZE).set(len as f64);
}

/// `outcome`: `waited` (queued after a wait), `dropped` or `refused`.
pub fn clicklog_overflow(policy: OverflowPolicy, outcome: &'static str) {
    counter!(CLICKLOG_OVERFLOW, "policy" => policy.as_str(), "outcome" => outcome).increment(1);
    // One line per power of two, not per event: an overload must not also
    // flood the logs.
    static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if outcome == "dropped" {
        let n = DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                policy = policy.as_str(),
                dropped_so_far = n,
                "clicklog: queue full, click events dropped"
            );
        }
    }
}

/// Registers the overflow counters of `policy` at zero.
pub fn clicklog_overflow_zero(policy: OverflowPolicy) {
    let outcomes: &[&'static str] = match policy {
        OverflowPolicy::Backpressure => &["waited", "refused"],
        OverflowPolicy::Shed => &["refused"],
        OverflowPolicy::Drop => &["dropped"],
    };
    for &outcome in outcomes {
        counter!(CLICKLOG_OVERFLOW, "policy" => policy.as_str(), "outcome" => outcome).absolute(0);
    }
}

pub fn clicklog_queue_depth(depth: usize) {
    gauge!(CLICKLOG_QUEUE_DEPTH).set(depth as f64);
}

pub fn clicklog_written(bytes: usize) {
    counter!(CLICKLOG_BYTES).increment(bytes as u64);
}

pub fn clicklog_events(n: u64) {
    counter!(CLICKLOG_EVENTS).increment(n);
}

pub fn clicklog_fsynced(took: Duration) {
    histogram!(CLICKLOG_FSYNC).record(took.as_secs_f64());
}

pub fn clicklog_batch_took(took: Duration) {
    histogram!(CLICKLOG_BATCH).record(took.as_secs_f64());
}

pub fn stats_snapshot_took(took: Duration) {
    histogram!(STATS_SNAPSHOT).record(took.as_secs_f64());
}

pub fn clicklog_write_failed(e: &std::io::Error) {
    counter!(CLICKLOG_WRITE_ERRORS).increment(1);
    tracing::error!(error = %e, "clicklog: write or fsync failed; retrying, queued clicks kept");
}

/// The served certificate's notAfter (Unix seconds), on load and reload.
pub fn tls_certificate_expiry(not_after_secs: i64) {
    gauge!(TLS_CERT_EXPIRY).set(not_after_secs as f64);
}

/// The IP-hash salt ratchet's state after a tick: when its epoch began,
/// the rotation period, and whether the step failed to persist.
pub fn salt_state(epoch_start_secs: u64, rotation_secs: u64, step_failed: bool) {
    gauge!(SALT_EPOCH_START).set(epoch_start_secs as f64);
    gauge!(SALT_ROTATION).set(rotation_secs as f64);
    if step_failed {
        counter!(SALT_STEP_FAILURES).increment(1);
    }
}

pub fn tls_reloaded(ok: bool) {
    counter!(TLS_RELOADS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

pub fn tls_handshake_failed() {
    counter!(TLS_HANDSHAKE_FAILURES).increment(1);
}

/// A reader met a damaged record in a closed segment and skipped the rest
/// of that segment.
pub fn clicklog_damaged() {
    counter!(CLICKLOG_DAMAGED).increment(1);
}

pub fn clicklog_segments(n: usize) {
    gauge!(CLICKLOG_SEGMENTS).set(n as f64);
}

// ---- full mode: the shipper (serve) and the sink ---------------------------

pub const SHIP_BACKLOG_BYTES: &str = "clickedge_ship_backlog_bytes";
pub const SHIP_INFLIGHT: &str = "clickedge_ship_inflight_records";
pub const SHIP_OLDEST_AGE: &str = "clickedge_ship_oldest_unshipped_age_seconds";
pub const SHIP_BACKLOG_FULL: &str = "clickedge_ship_backlog_full";
pub const SHIP_SENT: &str = "clickedge_ship_sent_total";
pub const SHIP_DELIVERED: &str = "clickedge_ship_delivered_total";
pub const SHIP_DELIVERY_ERRORS: &str = "clickedge_ship_delivery_errors_total";
pub const SHIP_FROM_MEMORY: &str = "clickedge_ship_records_total";
pub const SHIP_LEDGER_DELIVERED: &str = "clickedge_ship_ledger_delivered_total";
pub const SHIP_LEDGER_BACKLOG_BYTES: &str = "clickedge_ship_ledger_backlog_bytes";
pub const KAFKA_CLIENT_ERRORS: &str = "clickedge_kafka_client_errors_total";
pub const SINK_ROWS: &str = "clickedge_sink_rows_inserted_total";
pub const SINK_BATCH_ROWS: &str = "clickedge_sink_batch_rows";
pub const SINK_INSERT_DURATION: &str = "clickedge_sink_insert_duration_seconds";
pub const SINK_INSERT_FAILURES: &str = "clickedge_sink_insert_failures_total";
pub const SINK_DEAD_LETTERS: &str = "clickedge_sink_dead_letters_total";
pub const SINK_LAST_INSERT: &str = "clickedge_sink_last_insert_timestamp_seconds";
pub const SINK_LAG: &str = "clickedge_sink_consumer_lag_records";
pub const SINK_PARTITIONS_DROPPED: &str = "clickedge_sink_partitions_dropped_total";

fn describe_pipeline() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        SHIP_BACKLOG_BYTES,
        Unit::Bytes,
        "Click-log bytes not yet acknowledged by Kafka."
    );
    describe_gauge!(
        SHIP_INFLIGHT,
        "Records sent to Kafka and not yet confirmed."
    );
    describe_gauge!(
        SHIP_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest click not yet acknowledged by Kafka (0 when none)."
    );
    describe_gauge!(SHIP_BACKLOG_FULL, "1 while the unshipped log is over kafka.max_backlog_bytes (the edge applies clicklog.overflow).");
    describe_counter!(
        SHIP_SENT,
        "Click records handed to the Kafka producer (re-sends included)."
    );
    describe_counter!(SHIP_DELIVERED, "Click records acknowledged by Kafka.");
    describe_counter!(
        SHIP_FROM_MEMORY,
        "Click records the shipper read, by source: memory (the writer's fresh batches) or file (after a restart, a rewind, or when it fell behind)."
    );
    describe_counter!(
        SHIP_DELIVERY_ERRORS,
        "Failed deliveries (the records are re-sent from the click log)."
    );
    describe_counter!(
        SHIP_LEDGER_DELIVERED,
        "Postback ledger records acknowledged by Kafka (clickedge.conversions)."
    );
    describe_gauge!(
        SHIP_LEDGER_BACKLOG_BYTES,
        Unit::Bytes,
        "Postback ledger bytes not yet acknowledged by Kafka."
    );
    describe_counter!(
        KAFKA_CLIENT_ERRORS,
        "Errors reported by the Kafka client (broker down, connection refused, ...)."
    );
    describe_counter!(SINK_ROWS, "Rows inserted into ClickHouse, by table.");
    describe_histogram!(SINK_BATCH_ROWS, "Rows per ClickHouse insert.");
    describe_histogram!(
        SINK_INSERT_DURATION,
        Unit::Seconds,
        "ClickHouse insert latency."
    );
    describe_counter!(
        SINK_INSERT_FAILURES,
        "Failed ClickHouse inserts (retried with backoff; offsets not committed)."
    );
    describe_counter!(
        SINK_DEAD_LETTERS,
        "Undecodable or wrong-version records written to dead_letters, by reason."
    );
    describe_gauge!(
        SINK_LAST_INSERT,
        Unit::Seconds,
        "Unix time of the last successful ClickHouse insert."
    );
    describe_gauge!(
        SINK_LAG,
        "Records in the subscribed partitions not yet committed by the sink."
    );
    describe_counter!(
        SINK_PARTITIONS_DROPPED,
        "ClickHouse partitions dropped by retention."
    );
}

pub fn ship_backlog(bytes: u64, inflight: usize, oldest_age_secs: f64, full: bool) {
    gauge!(SHIP_BACKLOG_BYTES).set(bytes as f64);
    gauge!(SHIP_INFLIGHT).set(inflight as f64);
    gauge!(SHIP_OLDEST_AGE).set(oldest_age_secs);
    gauge!(SHIP_BACKLOG_FULL).set(if full { 1.0 } else { 0.0 });
}

/// Records the shipper took from the writer's batches in memory and from
/// the file.
pub fn ship_read(from_memory: u64, from_file: u64) {
    if from_memory > 0 {
        counter!(SHIP_FROM_MEMORY, "source" => "memory").increment(from_memory);
    }
    if from_file > 0 {
        counter!(SHIP_FROM_MEMORY, "source" => "file").increment(from_file);
    }
}

pub fn ship_sent(n: u64) {
    counter!(SHIP_SENT).increment(n);
}

pub fn ship_delivered(n: u64) {
    counter!(SHIP_DELIVERED).increment(n);
}

pub fn ship_delivery_failed(e: &rdkafka::error::KafkaError) {
    counter!(SHIP_DELIVERY_ERRORS).increment(1);
    tracing::debug!(error = %e, "ship: delivery failed");
}

pub fn ship_ledger(delivered: u64, backlog_bytes: u64) {
    counter!(SHIP_LEDGER_DELIVERED).increment(delivered);
    gauge!(SHIP_LEDGER_BACKLOG_BYTES).set(backlog_bytes as f64);
}

/// A Kafka client's error callback: counted always, logged at most once
/// per `throttle` interval (librdkafka repeats them while a broker is down).
pub fn kafka_client_error(
    throttle: &Throttle,
    error: &rdkafka::error::KafkaError,
    reason: &str,
    meanwhile: &'static str,
) {
    counter!(KAFKA_CLIENT_ERRORS).increment(1);
    if throttle.allow() {
        tracing::warn!(%error, reason, meanwhile, "kafka client error");
    }
}

pub fn sink_inserted(table: &'static str, rows: usize, took: Duration) {
    counter!(SINK_ROWS, "table" => table).increment(rows as u64);
    histogram!(SINK_BATCH_ROWS).record(rows as f64);
    histogram!(SINK_INSERT_DURATION).record(took.as_secs_f64());
    gauge!(SINK_LAST_INSERT).set(crate::time::now_ms() as f64 / 1000.0);
}

pub fn sink_insert_failed() {
    counter!(SINK_INSERT_FAILURES).increment(1);
}

pub fn sink_dead_letter(reason: &'static str) {
    counter!(SINK_DEAD_LETTERS, "reason" => reason).increment(1);
}

pub fn sink_lag(records: i64) {
    gauge!(SINK_LAG).set(records as f64);
}

pub fn sink_partition_dropped() {
    counter!(SINK_PARTITIONS_DROPPED).increment(1);
}

/// Counters of the pipeline registered at zero, so rates work from the start.
pub fn pipeline_zero(sink: bool) {
    if sink {
        counter!(SINK_INSERT_FAILURES).absolute(0);
        counter!(SINK_PARTITIONS_DROPPED).absolute(0);
    } else {
        counter!(SHIP_DELIVERY_ERRORS).absolute(0);
        counter!(SHIP_SENT).absolute(0);
        counter!(SHIP_FROM_MEMORY, "source" => "memory").absolute(0);
        counter!(SHIP_FROM_MEMORY, "source" => "file").absolute(0);
        counter!(SHIP_DELIVERED).absolute(0);
        counter!(SHIP_LEDGER_DELIVERED).absolute(0);
    }
    counter!(KAFKA_CLIENT_ERRORS).absolute(0);
}

/// One counter per postback outcome for one network, registered when the
/// network is loaded (labels: the registered name, never request input).
#[derive(Clone)]
/// Indexed like the `outcomes` names it was registered with (the postback
/// module's outcomes, in their order).
pub struct PostbackCounters<const N: usize>([Counter; N]);

impl<const N: usize> PostbackCounters<N> {
    pub fn register(network: &str, outcomes: [&'static str; N]) -> PostbackCounters<N> {
        PostbackCounters(
            outcomes.map(|o| counter!(POSTBACKS, "network" => network.to_owned(), "outcome" => o)),
        )
    }

    pub fn get(&self, index: usize) -> &Counter {
        &self.0[index]
    }
}

/// Handles for the postback endpoint, registered once.
pub struct PostbackMetrics {
    pub verify: Histogram,
    pub unknown_network: Counter,
    pub ledger_errors: Counter,
}

impl PostbackMetrics {
    pub fn register() -> PostbackMetrics {
        let m = PostbackMetrics {
            verify: histogram!(POSTBACK_VERIFY),
            unknown_network: counter!(POSTBACKS_UNKNOWN_NETWORK),
            ledger_errors: counter!(POSTBACK_LEDGER_ERRORS),
        };
        m.unknown_network.absolute(0);
        m.ledger_errors.absolute(0);
        m
    }
}

/// Lets one log line through per interval: for errors a client library
/// repeats many times a second while a service is down.
pub struct Throttle {
    every: Duration,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Whether a line may be logged now.
    pub fn allow(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= self.every) {
            *last = Some(std::time::Instant::now());
            true
        } else {
            false
        }
    }
}

/// librdkafka's own log lines (warnings and worse), at debug level: what
/// matters reaches the error callbacks, which log throttled warnings.
pub fn librdkafka_log(level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    if (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Warning as i32) {
        tracing::debug!(facility, "librdkafka: {message}");
    }
}
