//! `clickedge sink`: Kafka → ClickHouse.
//!
//! A consumer in group `[kafka] group_id` reads `clickedge.clicks` and
//! `clickedge.conversions` (the postback ledgers of the edge nodes), gathers
//! rows into a batch (`[sink] batch_rows`, `max_batch_bytes`,
//! `batch_interval_ms`, whichever first), inserts the batch, and only then
//! commits the batch's offsets. A failed insert is retried with backoff and
//! nothing is committed meanwhile, so a crash at any point re-delivers
//! rather than loses; queries count clicks by `click_id` and ledger records
//! by their `id`, so re-delivered rows never count twice.
//!
//! Records that cannot be loaded (not JSON, another schema version, missing
//! fields) go to the `dead_letters` table with the reason and the raw
//! payload; they never stop the sink. A retention task drops day partitions
//! older than `[retention] days`.

pub mod decode;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{ClickHouseConfig, KafkaConfig, RetentionConfig, SinkConfig};
use crate::server::{self, Body, HttpLimits};
use crate::ship::topics;
use crate::telemetry;
use crate::warehouse::conversions::{ConversionRow, CONVERSIONS_TABLE};
use crate::warehouse::{self, ClickRows, DeadLetterRow};
use decode::Decoded;

/// First pause after a failed insert; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
const RETENTION_TIMEOUT: Duration = Duration::from_secs(120);
const LAG_EVERY: Duration = Duration::from_secs(10);
/// The lag probe gives up quickly: it runs on the consuming task.
const LAG_CALL_TIMEOUT: Duration = Duration::from_millis(500);
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Records re-read per partition at start (see [`assign_all`]): more than a
/// producer batch holds (1 MB of ~300-byte events).
const RESUME_REWIND: i64 = 10_000;
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot listen on {addr} (sink.metrics_listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct SinkSettings {
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub sink: SinkConfig,
    pub retention: RetentionConfig,
    pub client_id: String,
}

/// Runs the sink until `shutdown`.
pub async fn run(
    cfg: SinkSettings,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), SinkError> {
    telemetry::pipeline_zero(true);
    let listener = server::bind(cfg.sink.metrics_listen).map_err(|source| SinkError::Bind {
        addr: cfg.sink.metrics_listen,
        source,
    })?;
    if let Ok(addr) = listener.local_addr() {
        // Tests and scripts read this line to learn the port.
        tracing::info!(listener = "sink.metrics_listen", %addr, "listening");
    }
    let upkeep = metrics
        .clone()
        .map(|handle| tokio::spawn(telemetry::run_upkeep(handle, shutdown.clone())));
    let metrics_task = tokio::spawn(server::serve(
        "sink_metrics",
        listener,
        HttpLimits {
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            idle_timeout: Duration::from_secs(30),
            h2_max_concurrent_streams: 16,
            h2_max_reset_streams: 32,
            h2_max_local_error_reset_streams: 32,
            connection_slots: Arc::new(tokio::sync::Semaphore::new(64)),
            shutdown_grace: Duration::from_secs(1),
        },
        None,
        shutdown.clone(),
        move |req, _| {
            let metrics = metrics.clone();
            async move { metrics_answer(req.uri().path(), metrics.as_ref()) }
        },
    ));

    // ClickHouse schema and Kafka topics, retried until both are there.
    let mut backoff = Backoff::default();
    while let Err(e) = warehouse::ensure_schema(&cfg.clickhouse).await {
        tracing::warn!(error = %e, "sink: cannot create the ClickHouse schema yet; retrying");
        if !backoff.wait(&shutdown).await {
            return Ok(());
        }
    }
    tracing::info!(database = %cfg.clickhouse.database, "sink: ClickHouse schema ready");
    let mut backoff = Backoff::default();
    loop {
        let (kafka, id) = (cfg.kafka.clone(), cfg.client_id.clone());
        let ok = tokio::task::spawn_blocking(move || {
            topics::ensure(&kafka, &id, &[topics::CLICKS, topics::CONVERSIONS])
        })
        .await
        .unwrap_or(false);
        if ok || !backoff.wait(&shutdown).await {
            break;
        }
    }
    if shutdown.is_cancelled() {
        return Ok(());
    }

    let consumer: StreamConsumer<SinkContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", &cfg.kafka.group_id)
        .set("client.id", &cfg.client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set_log_level(RDKafkaLogLevel::Warning)
        .create_with_context(SinkContext::default())?;
    let consumer = Arc::new(consumer);
    let Some(partitions) = assign_all(&consumer, &shutdown).await else {
        return Ok(());
    };
    tracing::info!(
        group = %cfg.kafka.group_id,
        topics = ?CONSUMED,
        partitions,
        "sink: consuming"
    );

    let ch = warehouse::client(&cfg.clickhouse);
    let retention = tokio::spawn(retention_task(
        ch.clone(),
        cfg.clickhouse.database.clone(),
        cfg.retention.days.get(),
        shutdown.clone(),
    ));
    let mut batch = Batch::default();
    let mut last_lag: Option<Instant> = None;
    let recv_errors = telemetry::Throttle::new(ERROR_LOG_EVERY);
    loop {
        let deadline = batch
            .first_at
            .map(|t| tokio::time::Instant::from_std(t + cfg.sink.batch_interval));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = sleep_until(deadline) => {}
            msg = consumer.recv() => match msg {
                Ok(m) => batch.add(&m),
                Err(e) => if recv_errors.allow() {
                    tracing::warn!(error = %e, "sink: kafka receive error");
                },
            },
        }
        let full = batch.rows() >= cfg.sink.batch_rows.get() as usize
            || batch.bytes >= cfg.sink.max_batch_bytes.get();
        let due = batch
            .first_at
            .is_some_and(|t| t.elapsed() >= cfg.sink.batch_interval);
        if (full || due) && !flush(&ch, &consumer, &mut batch, &shutdown).await {
            break;
        }
        if last_lag.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
            report_lag(&consumer);
            last_lag = Some(Instant::now());
        }
    }
    // Stopping: load what is gathered if ClickHouse takes it at once;
    // otherwise it is re-delivered at the next start.
    if batch.rows() > 0 && insert_batch(&ch, &batch).await.is_ok() {
        commit(&consumer, &batch);
    }
    let _ = retention.await;
    let _ = metrics_task.await;
    if let Some(upkeep) = upkeep {
        let _ = upkeep.await;
    }
    tracing::info!("sink: stopped");
    Ok(())
}

/// The topics the sink loads.
const CONSUMED: [&str; 2] = [topics::CLICKS, topics::CONVERSIONS];

/// Takes every partition of the consumed topics, each from a little before
/// the group's committed offset (the earliest when there is none).
///
/// Partitions are assigned, not balanced by the group protocol: a sink that
/// crashes mid-session would otherwise leave a member that some brokers
/// (Tansu among them) wait for before any rebalance completes, and the
/// restarted sink would load nothing until then. Offsets are still stored
/// under `[kafka] group_id`, so a restart resumes where the last commit
/// ended. Run one sink per cluster; a second one only loads duplicates,
/// which ClickHouse removes.
///
/// Resuming [`RESUME_REWIND`] records early: a committed offset can point
/// into the middle of a producer's record batch, and a broker that answers
/// such a fetch from the next batch on (Tansu 0.6 does) would skip the
/// batch's tail. Re-reading a few records only loads duplicates.
async fn assign_all(
    consumer: &Arc<StreamConsumer<SinkContext>>,
    shutdown: &CancellationToken,
) -> Option<usize> {
    let mut backoff = Backoff::default();
    loop {
        let c = consumer.clone();
        let assigned = tokio::task::spawn_blocking(move || {
            let mut all = TopicPartitionList::new();
            for topic in CONSUMED {
                let md = c.fetch_metadata(Some(topic), KAFKA_CALL_TIMEOUT)?;
                let n = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map_or(0, |t| t.partitions().len());
                if n == 0 {
                    return Err(KafkaError::MetadataFetch(
                        rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
                    ));
                }
                for p in 0..n as i32 {
                    all.add_partition(topic, p);
                }
            }
            let n = all.count();
            let committed = c.committed_offsets(all, KAFKA_CALL_TIMEOUT)?;
            let mut tpl = TopicPartitionList::new();
            for e in committed.elements() {
                let (low, _) = c.fetch_watermarks(e.topic(), e.partition(), KAFKA_CALL_TIMEOUT)?;
                let start = match e.offset() {
                    Offset::Offset(o) => {
                        if o < low {
                            // Kafka's retention dropped records this group
                            // never loaded: they cannot be recovered here.
                            tracing::error!(
                                partition = e.partition(),
                                committed = o,
                                earliest = low,
                                "sink: records expired from Kafka before they were loaded"
                            );
                        }
                        Offset::Offset((o - RESUME_REWIND).max(low))
                    }
                    _ => Offset::Beginning,
                };
                tpl.add_partition_offset(e.topic(), e.partition(), start)?;
            }
            c.assign(&tpl)?;
            Ok::<_, KafkaError>(n)
        })
        .await;
        match assigned {
            Ok(Ok(n)) => return Some(n),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "sink: cannot assign the partitions yet; retrying")
            }
            Err(e) => tracing::warn!(error = %e, "sink: assignment task failed; retrying"),
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Rows gathered since the last commit, and the offsets they cover.
#[derive(Default)]
struct Batch {
    clicks: ClickRows,
    conversions: Vec<ConversionRow>,
    dead: Vec<DeadLetterRow>,
    /// Highest offset seen per (topic, partition): a short list (a few
    /// partitions), searched without allocating a key per record.
    offsets: Vec<(String, i32, i64)>,
    bytes: usize,
    first_at: Option<Instant>,
}

impl Batch {
    fn add(&mut self, m: &impl Message) {
        let payload = m.payload().unwrap_or_default();
        match decode::record(m.topic(), payload, &mut self.clicks) {
            Decoded::Click => {}
            Decoded::Conversion(row) => self.conversions.push(*row),
            Decoded::Poison(reason) => {
                telemetry::sink_dead_letter(reason.label());
                self.dead.push(DeadLetterRow {
                    received_at: (crate::time::now_ms() / 1000) as u32,
                    topic: m.topic().to_owned(),
                    kafka_partition: m.partition(),
                    kafka_offset: m.offset(),
                    reason: reason.to_string(),
                    payload: decode::payload_text(payload),
                });
            }
        }
        self.bytes += payload.len();
        self.first_at.get_or_insert_with(Instant::now);
        let (topic, partition) = (m.topic(), m.partition());
        match self
            .offsets
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some((_, _, at)) => *at = (*at).max(m.offset()),
            None => self.offsets.push((topic.to_owned(), partition, m.offset())),
        }
    }

    fn rows(&self) -> usize {
        self.clicks.len() + self.conversions.len() + self.dead.len()
    }

    fn clear(&mut self) {
        self.clicks.clear();
        self.conversions.clear();
        self.dead.clear();
        self.offsets.clear();
        self.bytes = 0;
        self.first_at = None;
    }
}

/// Inserts the batch (retrying until ClickHouse takes it), then commits.
/// Returns false if shutdown came first (nothing committed).
async fn flush(
    ch: &clickhouse::Client,
    consumer: &StreamConsumer<SinkContext>,
    batch: &mut Batch,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::default();
    loop {
        let inserted = tokio::select! {
            r = insert_batch(ch, batch) => r,
            // Nothing committed: the batch is loaded again at the next start.
            _ = shutdown.cancelled() => return false,
        };
        match inserted {
            Ok(()) => break,
            Err(e) => {
                telemetry::sink_insert_failed();
                tracing::warn!(
                    error = %e,
                    rows = batch.rows(),
                    retry_in = ?backoff.next,
                    "sink: insert failed; retrying (offsets not committed)"
                );
                if !backoff.wait(shutdown).await {
                    return false;
                }
            }
        }
    }
    commit(consumer, batch);
    batch.clear();
    true
}

/// Dead letters last: a retry re-inserts clicks, click ids and ledger
/// records, which all de-duplicate; dead letters are counted plainly.
async fn insert_batch(
    ch: &clickhouse::Client,
    batch: &Batch,
) -> Result<(), warehouse::WarehouseError> {
    if !batch.clicks.is_empty() {
        let started = Instant::now();
        warehouse::insert_clicks(ch, warehouse::CLICKS_TABLE, &batch.clicks).await?;
        telemetry::sink_inserted("clicks", batch.clicks.len(), started.elapsed());
        let started = Instant::now();
        warehouse::insert_click_ids(ch, &batch.clicks).await?;
        telemetry::sink_inserted("click_ids", batch.clicks.len(), started.elapsed());
    }
    if !batch.conversions.is_empty() {
        let started = Instant::now();
        warehouse::insert(ch, CONVERSIONS_TABLE, &batch.conversions).await?;
        telemetry::sink_inserted("conversions", batch.conversions.len(), started.elapsed());
    }
    if !batch.dead.is_empty() {
        let started = Instant::now();
        warehouse::insert(ch, warehouse::DEAD_LETTERS_TABLE, &batch.dead).await?;
        telemetry::sink_inserted("dead_letters", batch.dead.len(), started.elapsed());
    }
    Ok(())
}

/// Commits the batch's offsets. A failed commit (a rebalance took the
/// partition) only means the rows are loaded again, and de-duplicated.
fn commit(consumer: &StreamConsumer<SinkContext>, batch: &Batch) {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in &batch.offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1)) {
            tracing::warn!(error = %e, "sink: bad offset");
        }
    }
    if tpl.count() == 0 {
        return;
    }
    let result = tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync));
    if let Err(e) = result {
        tracing::warn!(error = %e, "sink: offset commit failed; the batch will be loaded again (and de-duplicated)");
    }
}

/// Records in the assigned partitions not yet committed.
fn report_lag(consumer: &StreamConsumer<SinkContext>) {
    tokio::task::block_in_place(|| {
        let Ok(assigned) = consumer.assignment() else {
            return;
        };
        let Ok(committed) = consumer.committed_offsets(assigned, LAG_CALL_TIMEOUT) else {
            return;
        };
        let mut lag = 0i64;
        for e in committed.elements() {
            let Ok((low, high)) =
                consumer.fetch_watermarks(e.topic(), e.partition(), LAG_CALL_TIMEOUT)
            else {
                return;
            };
            let from = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            lag += (high - from).max(0);
        }
        telemetry::sink_lag(lag);
    });
}

async fn retention_task(
    ch: clickhouse::Client,
    database: String,
    days: u32,
    shutdown: CancellationToken,
) {
    let mut ticker = crate::time::Ticker::new(RETENTION_EVERY, shutdown);
    loop {
        let run = warehouse::apply_retention(&ch, &database, days, crate::time::now_ms());
        match tokio::time::timeout(RETENTION_TIMEOUT, run)
            .await
            .unwrap_or(Err(warehouse::WarehouseError::Timeout(RETENTION_TIMEOUT)))
        {
            Ok(dropped) => {
                for p in dropped {
                    telemetry::sink_partition_dropped();
                    tracing::info!(partition = %p, "sink: partition past retention dropped");
                }
            }
            Err(e) => tracing::warn!(error = %e, "sink: retention check failed; retried later"),
        }
        if !ticker.tick().await {
            return;
        }
    }
}

fn metrics_answer(path: &str, metrics: Option<&PrometheusHandle>) -> Response<Body> {
    let (status, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            metrics.map(PrometheusHandle::render).unwrap_or_default(),
        ),
        "/healthz" => (StatusCode::OK, "{\"status\":\"ok\"}".to_owned()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Exponential backoff that gives way to shutdown.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    /// Sleeps; false if shutdown came first.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

struct SinkContext {
    errors: telemetry::Throttle,
}

impl Default for SinkContext {
    fn default() -> SinkContext {
        SinkContext {
            errors: telemetry::Throttle::new(ERROR_LOG_EVERY),
        }
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        telemetry::librdkafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_client_error(&self.errors, &error, reason, "the sink retries");
    }
}

impl ConsumerContext for SinkContext {}
