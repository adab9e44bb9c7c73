//! The postback ledger → `clickedge.conversions` (full mode).
//!
//! Each node's ledger file stays its record of truth (it answers retries
//! without a round trip); this thread follows the file and produces every
//! record, as written, to `clickedge.conversions`, which the sink loads
//! into ClickHouse. Postbacks are few next to clicks, so it works in
//! rounds: send everything new, wait until each record of the round has its
//! delivery report, and only when all were acknowledged save the byte
//! offset after them in `ship.ledger.position`. A round with a failure is
//! sent again from the saved offset after a backoff; a re-sent record
//! carries its `id`, which ClickHouse counts once.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use super::{backoff, load_json, producer_config, store_json, topics, ShipError, ShipperConfig};
use crate::postback::ledger::FILE_NAME;
use crate::store::record_log::{self, ReadError};
use crate::telemetry;

const POSITION_FILE: &str = "ship.ledger.position";
/// Pause between looks at the ledger when nothing is new.
const IDLE: Duration = Duration::from_millis(200);
/// Records per round: a round's progress is saved as a whole, so rounds
/// stay small enough that one bad record holds back little behind it.
const ROUND_MAX_RECORDS: usize = 1000;
/// How long one wait for delivery reports lasts before the stop flag is
/// looked at again.
const FLUSH_SLICE: Duration = Duration::from_secs(1);

/// Owns the ledger shipper thread.
pub struct LedgerShipperHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LedgerShipperHandle {
    /// Ships what the ledger holds (within the grace period) and stops.
    /// Call after the ledger's last sync.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn spawn(cfg: ShipperConfig) -> Result<LedgerShipperHandle, ShipError> {
    let position_path = cfg.data_dir.join(POSITION_FILE);
    let saved: u64 = load_json(&position_path)?;
    let ledger = cfg.data_dir.join(FILE_NAME);
    // A ledger cut shorter than the saved offset (restored from a backup,
    // or replaced) is shipped again from its start: re-sends, never gaps.
    let len = std::fs::metadata(&ledger).map_or(0, |m| m.len());
    let position = if saved > len {
        tracing::warn!(
            saved,
            len,
            "ship: the saved ledger position is past the ledger's end; shipping it again from the start"
        );
        0
    } else {
        saved
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut shipper = LedgerShipper {
        ledger,
        position_path,
        position,
        stop: stop.clone(),
        stopping_since: Cell::new(None),
        cfg,
    };
    let thread = std::thread::Builder::new()
        .name("ledger-shipper".into())
        .spawn(move || shipper.run())
        .map_err(ShipError::Thread)?;
    Ok(LedgerShipperHandle {
        stop,
        thread: Some(thread),
    })
}

/// Counts delivery reports of the current round.
struct LedgerContext {
    acked: AtomicUsize,
    failed: AtomicUsize,
    errors: telemetry::Throttle,
}

impl ClientContext for LedgerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        telemetry::librdkafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_client_error(
            &self.errors,
            &error,
            reason,
            "postback records wait in the ledger",
        );
    }
}

impl ProducerContext for LedgerContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

type LedgerProducer = BaseProducer<LedgerContext>;

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("reading the ledger: {0}")]
    Read(#[from] ReadError),
    #[error("the producer refused a record: {0}")]
    Refused(KafkaError),
    #[error("{0} of the round's records were not delivered")]
    Undelivered(usize),
    #[error("stopped before every record was acknowledged")]
    Stopped,
}

struct LedgerShipper {
    cfg: ShipperConfig,
    ledger: PathBuf,
    position_path: PathBuf,
    /// Bytes of the ledger Kafka has acknowledged.
    position: u64,
    stop: Arc<AtomicBool>,
    /// When the stop flag was first seen.
    stopping_since: Cell<Option<Instant>>,
}

impl LedgerShipper {
    fn run(&mut self) {
        let mut producer: Option<LedgerProducer> = None;
        let mut failures = 0u32;
        loop {
            let out_of_time = self.out_of_time();
            let stopping = self.stopping_since.get().is_some();
            let Some(p) = producer.as_ref() else {
                match self.producer() {
                    Ok(p) => producer = Some(p),
                    Err(e) => {
                        tracing::error!(error = %e, "ship: cannot create the ledger producer");
                        if out_of_time {
                            break;
                        }
                        std::thread::sleep(backoff(1));
                    }
                }
                continue;
            };
            match self.round(p) {
                Ok(0) if stopping => break,
                Ok(0) => std::thread::sleep(IDLE),
                Ok(_) => failures = 0,
                Err(RoundError::Stopped) => break,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "ship: ledger round failed; sending it again from the last acknowledged record");
                    if out_of_time {
                        break;
                    }
                    if p.client().fatal_error().is_some() {
                        producer = None;
                    }
                    std::thread::sleep(backoff(failures));
                }
            }
        }
        let left = std::fs::metadata(&self.ledger)
            .map_or(0, |m| m.len())
            .saturating_sub(self.position);
        tracing::info!(
            position = self.position,
            unshipped_bytes = left,
            "ship: ledger shipper stopped (anything unshipped is sent at the next start)"
        );
    }

    fn producer(&self) -> Result<LedgerProducer, KafkaError> {
        producer_config(&self.cfg.kafka, &format!("{}-ledger", self.cfg.client_id))
            .create_with_context(LedgerContext {
                acked: AtomicUsize::new(0),
                failed: AtomicUsize::new(0),
                errors: telemetry::Throttle::new(super::ERROR_LOG_EVERY),
            })
    }

    /// Sends every record after the acknowledged position and waits for all
    /// their reports. Returns how many were shipped.
    fn round(&mut self, p: &LedgerProducer) -> Result<usize, RoundError> {
        let ctx = p.context();
        ctx.acked.store(0, Ordering::Relaxed);
        ctx.failed.store(0, Ordering::Relaxed);
        let out_of_time = || self.out_of_time();
        let mut sent = 0usize;
        let read = record_log::read_raw_from(&self.ledger, self.position, 0, |_, json| {
            if sent == ROUND_MAX_RECORDS {
                return Ok(false);
            }
            send(p, json, &out_of_time)?;
            sent += 1;
            Ok::<_, RoundError>(true)
        });
        // Every record handed over resolves before anything is decided, so
        // the next round's reports are its own.
        while ctx.acked.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) < sent {
            let _ = p.flush(FLUSH_SLICE);
            if out_of_time() {
                return Err(RoundError::Stopped);
            }
        }
        let read = match read {
            // No ledger yet: nothing to ship.
            Err(RoundError::Read(ReadError::Io(e))) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(0)
            }
            other => other?,
        };
        let failed = ctx.failed.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(RoundError::Undelivered(failed));
        }
        if read.records > 0 {
            self.position += read.consumed;
            if let Err(e) = store_json(&self.position_path, &self.position) {
                tracing::warn!(error = %e, "ship: cannot save the ledger position (re-sent at the next start)");
            }
        }
        telemetry::ship_ledger(read.records as u64, self.backlog());
        Ok(read.records)
    }

    /// Stopping, and the grace period is over.
    fn out_of_time(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) && self.stopping_since.get().is_none() {
            self.stopping_since.set(Some(Instant::now()));
        }
        self.stopping_since
            .get()
            .is_some_and(|t| t.elapsed() >= self.cfg.shutdown_grace)
    }

    fn backlog(&self) -> u64 {
        std::fs::metadata(&self.ledger)
            .map_or(0, |m| m.len())
            .saturating_sub(self.position)
    }
}

/// Hands one record to the producer, waiting while its queue is full.
fn send(p: &LedgerProducer, json: &str, out_of_time: &impl Fn() -> bool) -> Result<(), RoundError> {
    loop {
        let record = BaseRecord::<(), str, ()>::to(topics::CONVERSIONS).payload(json);
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                if out_of_time() {
                    return Err(RoundError::Stopped);
                }
                p.poll(Duration::from_millis(100));
            }
            Err((e, _)) => return Err(RoundError::Refused(e)),
        }
    }
}
