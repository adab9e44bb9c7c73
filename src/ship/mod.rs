//! The click log → Kafka shipper (full mode).
//!
//! The click log stays the first hop: the edge never waits for Kafka. One
//! thread follows the log ([`source::Source`]: the writer's batches from
//! memory while fresh, the file after a restart or when behind), turns each
//! binary record into the contract's JSON, and produces it to
//! `clickedge.clicks` with an idempotent producer. Delivery reports arrive
//! in any order across partitions; the *confirmed* position only moves past
//! a record once it and every record before it are acknowledged. That
//! position is saved to `ship.position` and whole segments before it are
//! deleted, so a restart resumes where Kafka's acknowledgements ended.
//!
//! Failures never lose records, they only re-send them: when a delivery
//! fails (timeout while the broker is down, a fatal producer error), the
//! shipper lets everything in flight resolve, rewinds to the confirmed
//! position and reads the log again from there. Duplicates on the wire are
//! removed in ClickHouse by `click_id`.
//!
//! While Kafka is unreachable the log grows on disk; beyond
//! `kafka.max_backlog_bytes` the shipper raises the click log's backlog
//! flag and the edge applies `clicklog.overflow` (503 by default).

pub mod ledger;
pub mod source;
pub mod topics;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::clicklog::record::Record;
use crate::clicklog::segments::{self, Position};
use crate::config::KafkaConfig;
use crate::telemetry;
use source::{MemoryFeed, Source};

const POSITION_FILE: &str = "ship.position";
/// How long the shipper sleeps when it had nothing to send and no delivery
/// report came in.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// Lines read from the log per round, at most.
const READ_BATCH_LINES: usize = 10_000;
/// Saving the position, trimming, gauges and the reachability probe.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Pause after a failed log read or producer creation.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Between attempts to create missing topics.
const TOPICS_RETRY: Duration = Duration::from_secs(15);
/// Longest pause between re-sends of a record that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// 0.5 s, doubling with each failure in a row, up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    RETRY_PAUSE
        .saturating_mul(1 << failures.saturating_sub(1).min(6))
        .min(MAX_BACKOFF)
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("kafka producer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("ship position {path}: {source}")]
    Position {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the shipper thread: {0}")]
    Thread(std::io::Error),
}

/// What `serve` needs to run the shipper.
pub struct ShipperConfig {
    pub kafka: KafkaConfig,
    pub data_dir: PathBuf,
    pub client_id: String,
    /// Written as `edge_node` into each click's JSON.
    pub edge_node: String,
    /// How long shutdown waits for Kafka to acknowledge what is left.
    pub shutdown_grace: Duration,
}

/// State the admin API reads.
#[derive(Default)]
pub struct ShipStatus {
    /// The last reachability probe (or delivery) succeeded.
    pub kafka_reachable: AtomicBool,
}

/// Owns the shipper thread.
pub struct ShipperHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub status: Arc<ShipStatus>,
}

impl ShipperHandle {
    /// Ships what the log holds (until the grace period ends), saves the
    /// confirmed position and stops. Call after the click-log writer has
    /// flushed, so the last clicks are in the log.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The click-log consumer that hands the writer's batches to the shipper,
/// and the shipper's end of it: give the first to the writer, the second
/// to [`spawn`].
pub fn feed(cfg: &ShipperConfig) -> (MemoryFeed, Source) {
    let log_dir = cfg.data_dir.join(segments::DIR_NAME);
    source::channel(&log_dir, Position::default(), source::MEMORY_BOUND_BYTES)
}

/// Starts the shipper thread, once the click log is open. `backlog_full` is
/// the click log's flag.
pub fn spawn(
    cfg: ShipperConfig,
    mut source: Source,
    backlog_full: Arc<AtomicBool>,
) -> Result<ShipperHandle, ShipError> {
    let log_dir = cfg.data_dir.join(segments::DIR_NAME);
    let saved = load_position(&cfg.data_dir)?;
    let confirmed = clamp_to_log(&log_dir, saved).map_err(|source| ShipError::Position {
        path: log_dir.display().to_string(),
        source,
    })?;
    if confirmed != saved {
        tracing::warn!(
            saved = ?saved,
            resuming = ?confirmed,
            "ship: the saved position is past the end of the click log (a power loss cut it, or it was replaced); resuming earlier, which may re-send"
        );
    }
    tracing::info!(from = ?confirmed, "ship: resuming from the confirmed position");
    source.rewind(confirmed);
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(ShipStatus::default());
    let mut shipper = Shipper {
        log_dir: cfg.data_dir.join(segments::DIR_NAME),
        source,
        scratch: Vec::with_capacity(2048),
        inflight: Inflight::new(confirmed),
        saved: confirmed,
        rewinding: false,
        refusals: 0,
        rewinds: 0,
        errors: telemetry::Throttle::new(ERROR_LOG_EVERY),
        backlog_full,
        status: status.clone(),
        stop: stop.clone(),
        cfg,
    };
    let thread = std::thread::Builder::new()
        .name("kafka-shipper".into())
        .spawn(move || shipper.run())
        .map_err(ShipError::Thread)?;
    Ok(ShipperHandle {
        stop,
        thread: Some(thread),
        status,
    })
}

/// Records sent and not yet confirmed, in log order.
struct Inflight {
    /// (position after the record, its delivery state)
    queue: VecDeque<(Position, Delivery)>,
    /// Sequence number of `queue[0]`.
    first_no: usize,
    next_no: usize,
    /// Records without a delivery report yet.
    unresolved: usize,
    confirmed: Position,
    failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Pending,
    Acked,
    Failed,
}

impl Inflight {
    fn new(confirmed: Position) -> Inflight {
        Inflight {
            queue: VecDeque::new(),
            first_no: 0,
            next_no: 0,
            unresolved: 0,
            confirmed,
            failed: false,
        }
    }

    fn push(&mut self, end: Position) -> usize {
        let no = self.next_no;
        self.queue.push_back((end, Delivery::Pending));
        self.next_no += 1;
        self.unresolved += 1;
        no
    }

    /// A record that is not sent (unreadable): it counts as delivered, so
    /// the confirmed position moves past it in order.
    fn push_skipped(&mut self, end: Position) {
        self.queue.push_back((end, Delivery::Acked));
        self.next_no += 1;
        self.advance();
    }

    fn advance(&mut self) {
        while let Some(&(end, Delivery::Acked)) = self.queue.front() {
            self.queue.pop_front();
            self.first_no += 1;
            self.confirmed = end;
        }
    }

    /// Applies a delivery report. Reports from before a [`reset`] are
    /// ignored.
    fn delivered(&mut self, no: usize, ok: bool) {
        let Some(slot) = no
            .checked_sub(self.first_no)
            .and_then(|i| self.queue.get_mut(i))
        else {
            return;
        };
        if slot.1 != Delivery::Pending {
            return;
        }
        slot.1 = if ok {
            Delivery::Acked
        } else {
            Delivery::Failed
        };
        self.unresolved -= 1;
        self.failed |= !ok;
        self.advance();
    }

    /// Records sent and not yet confirmed.
    fn len(&self) -> usize {
        self.queue.len()
    }

    /// After a failure, once every record has its report: forget them and
    /// start over from the confirmed position with fresh sequence numbers.
    fn reset(&mut self) {
        self.queue.clear();
        self.first_no = self.next_no;
        self.unresolved = 0;
        self.failed = false;
    }
}

/// Collects delivery reports; the shipper drains them after each poll.
struct ShipContext {
    reports: Mutex<Vec<(usize, bool)>>,
    errors: telemetry::Throttle,
}

/// librdkafka repeats connection errors every few hundred ms while a broker
/// is down; one line per this interval is enough.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

impl ClientContext for ShipContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        telemetry::librdkafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_client_error(&self.errors, &error, reason, "clicks wait in the local log");
    }
}

impl ProducerContext for ShipContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, no: usize) {
        let ok = result.is_ok();
        if let Err((e, _)) = result {
            telemetry::ship_delivery_failed(e);
        }
        self.reports.lock().expect("not poisoned").push((no, ok));
    }
}

type ClickProducer = BaseProducer<ShipContext>;

/// The producer settings both shippers use: idempotent, acknowledged by
/// all replicas, no delivery deadline by default (see `kafka.message_timeout_ms`).
fn producer_config(k: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", k.linger.as_millis().to_string())
        .set(
            "queue.buffering.max.messages",
            k.queue_max_messages.to_string(),
        )
        .set("queue.buffering.max.kbytes", QUEUE_MAX_KBYTES.to_string())
        .set(
            "message.timeout.ms",
            k.message_timeout.map_or(0, |t| t.as_millis()).to_string(),
        )
        .set_log_level(RDKafkaLogLevel::Warning);
    c
}

struct Shipper {
    cfg: ShipperConfig,
    log_dir: PathBuf,
    source: Source,
    /// The JSON of the record being sent.
    scratch: Vec<u8>,
    inflight: Inflight,
    saved: Position,
    /// A delivery failed: send nothing until in-flight records resolve.
    rewinding: bool,
    /// Rewinds (or refused sends) in a row, for the backoff.
    refusals: u32,
    rewinds: u32,
    errors: telemetry::Throttle,
    backlog_full: Arc<AtomicBool>,
    status: Arc<ShipStatus>,
    stop: Arc<AtomicBool>,
}

impl Shipper {
    fn run(&mut self) {
        let mut topics_ready = false;
        let mut topics_tried: Option<Instant> = None;
        let mut last_housekeeping: Option<Instant> = None;
        let mut reports = Vec::new();
        let mut producer = None;
        let mut stopping_since: Option<Instant> = None;
        loop {
            let Some(p) = producer.as_ref() else {
                match self.producer() {
                    Ok(p) => producer = Some(p),
                    Err(e) => {
                        tracing::error!(error = %e, "ship: cannot create the kafka producer");
                        if self.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(RETRY_PAUSE);
                    }
                }
                continue;
            };
            // 1. Send what the log holds beyond what is in flight.
            let mut sent = 0;
            if !self.rewinding {
                sent = self.send_from_log(p);
            }
            // 2. Delivery reports, without waiting in librdkafka: rdkafka's
            // `poll(timeout)` polls until the deadline with the time left
            // rounded down to whole milliseconds, so every timed poll ends
            // in a busy spin of up to 1 ms (under load, 5.8 % of the edge's
            // core in `clock_gettime`). One event per call; sleep only when
            // there was nothing to do.
            p.poll(Duration::ZERO);
            std::mem::swap(
                &mut reports,
                &mut *p.context().reports.lock().expect("not poisoned"),
            );
            if sent == 0 && reports.is_empty() {
                std::thread::sleep(IDLE_POLL);
            }
            let mut delivered = 0u64;
            for (no, ok) in reports.drain(..) {
                self.inflight.delivered(no, ok);
                delivered += u64::from(ok);
            }
            if delivered > 0 {
                self.rewinds = 0;
                telemetry::ship_delivered(delivered);
                self.status.kafka_reachable.store(true, Ordering::Relaxed);
            }
            if self.inflight.failed && !self.rewinding {
                tracing::warn!(
                    confirmed = ?self.inflight.confirmed,
                    "ship: a delivery failed; re-sending from the confirmed position once in-flight records resolve"
                );
                self.rewinding = true;
            }
            if self.rewinding && self.inflight.unresolved == 0 {
                self.inflight.reset();
                self.source.rewind(self.inflight.confirmed);
                self.rewinding = false;
                // A record that keeps failing must not turn into a storm
                // of re-sends.
                self.rewinds += 1;
                std::thread::sleep(backoff(self.rewinds));
            }
            if self.inflight.unresolved == 0 {
                if let Some((code, reason)) = p.client().fatal_error() {
                    tracing::error!(
                        ?code,
                        reason,
                        "ship: fatal producer error; starting a new producer"
                    );
                    producer = None;
                    continue;
                }
            }
            // 3. Housekeeping.
            if last_housekeeping.is_none_or(|t| t.elapsed() >= HOUSEKEEPING_EVERY) {
                let stopping = stopping_since.is_some();
                self.housekeeping(p, stopping);
                if !topics_ready
                    && !stopping
                    && topics_tried.is_none_or(|t| t.elapsed() >= TOPICS_RETRY)
                {
                    // Blocks for a few seconds while the broker is down;
                    // clicks keep accumulating in the log meanwhile.
                    topics_ready =
                        topics::ensure(&self.cfg.kafka, &self.cfg.client_id, topics::SERVE_TOPICS);
                    topics_tried = Some(Instant::now());
                }
                last_housekeeping = Some(Instant::now());
            }
            // 4. Shutdown: everything read and confirmed, or out of time.
            if self.stop.load(Ordering::Relaxed) {
                let since = *stopping_since.get_or_insert_with(Instant::now);
                let drained = self.inflight.len() == 0 && sent == 0 && !self.inflight.failed;
                if drained || since.elapsed() >= self.cfg.shutdown_grace {
                    break;
                }
            }
        }
        self.save_position();
        let left = segments::bytes_after(&self.log_dir, self.inflight.confirmed).unwrap_or(0);
        tracing::info!(
            confirmed = ?self.inflight.confirmed,
            unshipped_bytes = left,
            "ship: stopped (anything unshipped is sent at the next start)"
        );
    }

    fn producer(&self) -> Result<ClickProducer, KafkaError> {
        producer_config(&self.cfg.kafka, &self.cfg.client_id).create_with_context(ShipContext {
            reports: Mutex::new(Vec::new()),
            errors: telemetry::Throttle::new(ERROR_LOG_EVERY),
        })
    }

    /// Produces up to one read batch of records; returns how many were sent.
    fn send_from_log(&mut self, p: &ClickProducer) -> usize {
        let room = (self.cfg.kafka.queue_max_messages as usize)
            .saturating_sub(self.inflight.len())
            .min(READ_BATCH_LINES);
        if room == 0 {
            return 0;
        }
        let mut sent = 0;
        let mut refused = None;
        let inflight = &mut self.inflight;
        let (scratch, edge_node) = (&mut self.scratch, &self.cfg.edge_node);
        let mut unreadable = 0u64;
        let (memory_before, file_before) =
            (self.source.taken_from_memory, self.source.taken_from_file);
        let read = self.source.read(room, |payload, end| {
            scratch.clear();
            match Record::decode(payload) {
                Ok(r) => r.write_json(edge_node, scratch),
                Err(e) => {
                    // Framed and checksummed, yet not a record this build
                    // reads (written by a newer version): skip it, loudly.
                    unreadable += 1;
                    tracing::error!(error = %e, at = ?end, "ship: skipping an unreadable click-log record");
                    inflight.push_skipped(end);
                    return true;
                }
            }
            let no = inflight.next_no;
            let record = BaseRecord::<(), [u8], usize>::with_opaque_to(topics::CLICKS, no)
                .payload(&scratch[..]);
            // Refused: the source stays before this record and reads it again.
            match p.send(record) {
                Ok(()) => {
                    inflight.push(end);
                    sent += 1;
                    true
                }
                Err((e, _)) => {
                    refused = Some(e);
                    false
                }
            }
        });
        match refused {
            // The producer's queue is full: the next round retries.
            Some(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {}
            Some(e) => {
                // Anything else will not clear by itself at once (a fatal
                // producer error, an unknown topic): pause, and let the
                // loop rebuild the producer if it is fatal.
                telemetry::ship_delivery_failed(&e);
                if self.errors.allow() {
                    tracing::warn!(error = %e, "ship: the producer refused a record; retrying");
                }
                self.refusals += 1;
                std::thread::sleep(backoff(self.refusals));
            }
            None => self.refusals = 0,
        }
        if let Err(e) = read {
            tracing::error!(error = %e, "ship: cannot read the click log");
            std::thread::sleep(RETRY_PAUSE);
        }
        telemetry::ship_sent(sent as u64);
        telemetry::ship_read(
            self.source.taken_from_memory - memory_before,
            self.source.taken_from_file - file_before,
        );
        let _ = unreadable;
        sent
    }

    fn housekeeping(&mut self, p: &ClickProducer, stopping: bool) {
        self.save_position();
        self.trim();
        let backlog = match segments::bytes_after(&self.log_dir, self.inflight.confirmed) {
            Ok(b) => b,
            // Keep the last verdict rather than clear the flag on a hiccup.
            Err(_) => return,
        };
        let over = backlog > self.cfg.kafka.max_backlog_bytes;
        if over != self.backlog_full.swap(over, Ordering::Relaxed) {
            if over {
                tracing::error!(
                    backlog,
                    max = self.cfg.kafka.max_backlog_bytes,
                    "ship: unshipped click log over kafka.max_backlog_bytes; the edge applies clicklog.overflow"
                );
            } else {
                tracing::info!(backlog, "ship: backlog back under its bound");
            }
        }
        let oldest_age = segments::record_at(&self.log_dir, self.inflight.confirmed)
            .ok()
            .flatten()
            .and_then(|payload| Record::decode(&payload).ok().map(|r| r.ts_ms))
            .map(|ts| (crate::time::now_ms() - ts).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        telemetry::ship_backlog(backlog, self.inflight.len(), oldest_age, over);
        if !stopping {
            let reachable = p
                .client()
                .fetch_metadata(Some(topics::CLICKS), PROBE_TIMEOUT)
                .is_ok();
            self.status
                .kafka_reachable
                .store(reachable, Ordering::Relaxed);
        }
    }

    fn save_position(&mut self) {
        let at = self.inflight.confirmed;
        if at == self.saved {
            return;
        }
        match store_position(&self.cfg.data_dir, at) {
            Ok(()) => self.saved = at,
            Err(e) => tracing::warn!(error = %e, "ship: cannot save the confirmed position"),
        }
    }

    /// Deletes segments wholly confirmed (and so in Kafka).
    fn trim(&self) {
        let Ok(seqs) = segments::list(&self.log_dir) else {
            return;
        };
        let kept = seqs.iter().filter(|s| **s >= self.saved.segment).count();
        telemetry::clicklog_segments(kept);
        // Only once the position is saved: a restart must never resume
        // inside a deleted segment it has not confirmed.
        for seq in seqs.into_iter().filter(|s| *s < self.saved.segment) {
            match std::fs::remove_file(segments::segment_path(&self.log_dir, seq)) {
                Ok(()) => tracing::debug!(segment = seq, "ship: shipped segment deleted"),
                Err(e) => {
                    tracing::warn!(segment = seq, error = %e, "ship: cannot delete a shipped segment")
                }
            }
        }
    }
}

/// A saved position the log on disk cannot have reached (its tail was cut
/// after a power loss, or the log was replaced) would skip new clicks:
/// resume at the end of that segment, or at the oldest segment when the
/// saved one is gone and nothing newer exists. Duplicates at worst.
fn clamp_to_log(log_dir: &Path, at: Position) -> std::io::Result<Position> {
    let seqs = segments::list(log_dir)?;
    let Some(&last) = seqs.last() else {
        return Ok(Position::default());
    };
    if at.segment > last {
        return Ok(Position {
            segment: seqs[0],
            offset: 0,
        });
    }
    if seqs.contains(&at.segment) {
        let len = std::fs::metadata(segments::segment_path(log_dir, at.segment))?.len();
        if at.offset > len {
            return Ok(Position {
                segment: at.segment,
                offset: len,
            });
        }
    }
    Ok(at)
}

/// librdkafka's in-memory bound besides the record count (256 MiB).
const QUEUE_MAX_KBYTES: u32 = 256 * 1024;

/// The confirmed position as saved, with the click log's format: a
/// position saved by a version that wrote JSON lines (no format) points
/// into a segment since converted, so the shipper resumes at that
/// segment's start (re-sends it; ClickHouse drops the duplicates).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedPosition {
    #[serde(flatten)]
    at: Position,
    #[serde(default)]
    format: u8,
}

fn load_position(data_dir: &Path) -> Result<Position, ShipError> {
    let saved: SavedPosition = load_json(&data_dir.join(POSITION_FILE))?;
    if saved.format == crate::clicklog::record::FORMAT {
        return Ok(saved.at);
    }
    Ok(Position {
        segment: saved.at.segment,
        offset: 0,
    })
}

fn store_position(data_dir: &Path, at: Position) -> std::io::Result<()> {
    let saved = SavedPosition {
        at,
        format: crate::clicklog::record::FORMAT,
    };
    store_json(&data_dir.join(POSITION_FILE), &saved)
}

/// A saved position, or the default when none was saved yet.
fn load_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T, ShipError> {
    let err = |source| ShipError::Position {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(std::io::Error::other(e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(err(e)),
    }
}

fn store_json<T: serde::Serialize>(path: &Path, at: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(at).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64) -> Position {
        Position { segment: 1, offset }
    }

    #[test]
    fn confirmed_moves_only_over_a_contiguous_acknowledged_prefix() {
        let mut f = Inflight::new(pos(0));
        let a = f.push(pos(10));
        let b = f.push(pos(20));
        let c = f.push(pos(30));
        f.delivered(b, true);
        f.delivered(c, true);
        assert_eq!(f.confirmed, pos(0));
        f.delivered(a, true);
        assert_eq!(f.confirmed, pos(30));
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn a_failure_holds_confirmed_before_the_failed_record() {
        let mut f = Inflight::new(pos(0));
        let a = f.push(pos(10));
        let b = f.push(pos(20));
        let c = f.push(pos(30));
        f.delivered(a, true);
        f.delivered(b, false);
        assert_eq!(f.unresolved, 1);
        f.delivered(c, true);
        assert!(f.failed);
        assert_eq!(f.unresolved, 0);
        assert_eq!(f.confirmed, pos(10));
        assert_eq!(f.len(), 2);
        f.reset();
        assert_eq!(f.len(), 0);
        // Sequence numbers after a reset never collide with old reports.
        let d = f.push(pos(20));
        f.delivered(c, true);
        assert_eq!(f.confirmed, pos(10));
        f.delivered(d, true);
        assert_eq!(f.confirmed, pos(20));
    }

    #[test]
    fn a_saved_position_past_the_log_is_pulled_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segments::segment_path(dir.path(), 3), b"a\nb\n").unwrap();
        std::fs::write(segments::segment_path(dir.path(), 4), b"c\n").unwrap();
        // (clamping looks at file lengths only, whatever the bytes)
        let at = |segment, offset| Position { segment, offset };
        // Inside the log: kept.
        assert_eq!(clamp_to_log(dir.path(), at(3, 2)).unwrap(), at(3, 2));
        // Past the end of its segment (tail cut): the segment's end.
        assert_eq!(clamp_to_log(dir.path(), at(4, 99)).unwrap(), at(4, 2));
        // A segment the log never reached (log replaced): the oldest.
        assert_eq!(clamp_to_log(dir.path(), at(9, 5)).unwrap(), at(3, 0));
        // An older, trimmed segment: the tail skips to what exists.
        assert_eq!(clamp_to_log(dir.path(), at(1, 7)).unwrap(), at(1, 7));
    }

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    /// What the model test can do to the log, the shipper and the broker.
    #[derive(Debug, Clone)]
    enum Step {
        /// The writer appends a batch of this many records (rotating when
        /// the segment is over 64 bytes, as `rotate_if_full` does), and
        /// hands it to the memory feed.
        Write(u8),
        /// The shipper reads and sends up to this many records.
        Send(u8),
        /// The broker reports on the in-flight record at this index.
        Report { index: u8, ok: bool },
        /// Housekeeping: trim what is confirmed.
        Trim,
        /// The process restarts from the confirmed position (memory lost).
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u8..6).prop_map(Step::Write),
            (1u8..6).prop_map(Step::Send),
            (any::<u8>(), prop::bool::weighted(0.85))
                .prop_map(|(index, ok)| Step::Report { index, ok }),
            Just(Step::Trim),
            Just(Step::Restart),
        ]
    }

    use crate::clicklog::{Batch, Consumer};
    use proptest::prelude::*;

    proptest! {
        /// The shipper's bookkeeping, against a model: whatever the order
        /// of writes, rotations, sends, acknowledgements, failures, trims
        /// and restarts, and whichever batches the memory feed keeps (its
        /// bound in bytes is drawn too), once the broker acknowledges
        /// everything, every record written has been delivered at least
        /// once, and nothing was delivered that was not written.
        #[test]
        fn no_written_record_is_lost(
            steps in prop::collection::vec(step(), 1..120),
            memory_bound in 0usize..200,
        ) {
            check_no_loss(steps, memory_bound);
        }
    }

    fn check_no_loss(steps: Vec<Step>, memory_bound: usize) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path();
        let mut seq = 1u64;
        let mut written: Vec<String> = Vec::new();
        let mut delivered: std::collections::HashSet<String> = Default::default();
        let mut inflight = Inflight::new(Position::default());
        let mut sent: Vec<(usize, String)> = Vec::new();
        let (mut feed, mut source) = source::channel(log, Position::default(), memory_bound);
        let mut last_end = Position {
            segment: 1,
            offset: 0,
        };
        let mut trimmed_to = 0u64;
        let ship = |source: &mut Source,
                    inflight: &mut Inflight,
                    sent: &mut Vec<(usize, String)>,
                    n: usize| {
            source
                .read(n, |payload, end| {
                    let no = inflight.push(end);
                    sent.push((no, String::from_utf8(payload.to_vec()).unwrap()));
                    true
                })
                .unwrap();
        };
        let mut report = |inflight: &mut Inflight,
                          sent: &mut Vec<(usize, String)>,
                          source: &mut Source,
                          i: usize,
                          ok: bool| {
            if sent.is_empty() {
                return;
            }
            let (no, record) = sent.remove(i % sent.len());
            if ok {
                delivered.insert(record);
            }
            inflight.delivered(no, ok);
            // The shipper's rewind: once every report is in.
            if inflight.failed && inflight.unresolved == 0 {
                inflight.reset();
                source.rewind(inflight.confirmed);
            }
        };
        for s in steps {
            match s {
                Step::Write(n) => {
                    let path = segments::segment_path(log, seq);
                    let start = Position {
                        segment: seq,
                        offset: std::fs::metadata(&path).map_or(0, |m| m.len()),
                    };
                    let mut bytes = Vec::new();
                    for _ in 0..n {
                        let record = format!("click-{}", written.len());
                        segments::frame(record.as_bytes(), &mut bytes);
                        written.push(record);
                    }
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .unwrap();
                    std::io::Write::write_all(&mut f, &bytes).unwrap();
                    let batch = Batch {
                        clicks: &[],
                        bytes: &bytes,
                        start,
                        follows: last_end,
                    };
                    feed.written(&batch);
                    last_end = batch.end();
                    if std::fs::metadata(&path).unwrap().len() > 64 {
                        seq += 1;
                    }
                }
                Step::Send(n) => ship(&mut source, &mut inflight, &mut sent, n as usize),
                Step::Report { index, ok } => {
                    report(&mut inflight, &mut sent, &mut source, index as usize, ok)
                }
                Step::Trim => {
                    for old in segments::list(log)
                        .unwrap()
                        .into_iter()
                        .filter(|s| *s < inflight.confirmed.segment)
                    {
                        std::fs::remove_file(segments::segment_path(log, old)).unwrap();
                        trimmed_to = trimmed_to.max(old);
                    }
                }
                Step::Restart => {
                    // In-flight records and memory are gone with the
                    // process; the saved (confirmed) position survives.
                    let at = clamp_to_log(log, inflight.confirmed).unwrap();
                    inflight = Inflight::new(at);
                    sent.clear();
                    (feed, source) = source::channel(log, Position::default(), memory_bound);
                    source.rewind(at);
                }
            }
        }
        // Drain: the broker acknowledges everything from now on.
        for _ in 0..10_000 {
            ship(&mut source, &mut inflight, &mut sent, 1000);
            while !sent.is_empty() {
                report(&mut inflight, &mut sent, &mut source, 0, true);
            }
            if source.read(1, |_, _| false).unwrap() == 0
                && inflight.len() == 0
                && segments::bytes_after(log, inflight.confirmed).unwrap() == 0
            {
                break;
            }
        }
        let written_set: std::collections::HashSet<String> = written.iter().cloned().collect();
        let lost: Vec<&String> = written.iter().filter(|l| !delivered.contains(*l)).collect();
        assert!(
            lost.is_empty(),
            "lost {:?} (trimmed up to segment {})",
            lost,
            trimmed_to
        );
        assert!(delivered.is_subset(&written_set));
    }

    #[test]
    fn fresh_batches_are_shipped_from_memory_and_a_dropped_one_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut feed, mut source) = source::channel(dir.path(), Position::default(), 20);
        source.rewind(Position {
            segment: 1,
            offset: 0,
        });
        let mut at = Position {
            segment: 1,
            offset: 0,
        };
        let mut write = |word: &str| {
            let mut bytes = Vec::new();
            segments::frame(word.as_bytes(), &mut bytes);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(segments::segment_path(dir.path(), 1))
                .unwrap();
            std::io::Write::write_all(&mut f, &bytes).unwrap();
            let batch = Batch {
                clicks: &[],
                bytes: &bytes,
                start: at,
                follows: at,
            };
            feed.written(&batch);
            at = batch.end();
        };
        let read = |source: &mut Source| {
            let mut got = Vec::new();
            source
                .read(100, |p, _| {
                    got.push(String::from_utf8(p.to_vec()).unwrap());
                    true
                })
                .unwrap();
            got
        };
        write("one");
        assert_eq!(read(&mut source), ["one"]);
        assert_eq!(source.taken_from_memory, 1, "a fresh batch, from memory");
        // Twelve bytes fit the bound of 20; a second batch while the first
        // is still held does not, and must come from the file.
        write("two");
        write("three");
        assert_eq!(read(&mut source), ["two", "three"]);
        assert_eq!((source.taken_from_memory, source.taken_from_file), (2, 1));
        write("four");
        assert_eq!(read(&mut source), ["four"]);
        assert_eq!(source.taken_from_memory, 3, "back on memory once caught up");
    }
}
