//! The click-log writer thread: queue → binary records → segment → fsync,
//! then each written batch to the consumers.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::segments::{self, Position};
use super::{record, Batch, ClickLog, Consumer, Msg, Written};
use crate::clicks::{BotClassifier, CachedClassifier, ClickEvent};
use crate::config::OverflowPolicy;
use crate::telemetry;

/// Write once this much is buffered even if more events are waiting.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Wake-up when idle, to run timers (snapshot, retention, gauges).
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// Pause between retries after a failed write (disk full, I/O error).
const WRITE_RETRY: Duration = Duration::from_millis(100);
/// Give up flushing at shutdown after this many failed writes in a row.
const MAX_FAILURES_AT_SHUTDOWN: u32 = 50;
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// How long the writer lets clicks gather between batches while busy.
const BATCH_GATHER: Duration = Duration::from_millis(1);
/// User agents whose bot verdict the writer remembers.
const UA_CACHE_ENTRIES: usize = 8192;
/// A batch that kept the writer this long is logged: on a core shared with
/// the edge, the writer's time is taken from the redirects.
const SLOW_BATCH: Duration = Duration::from_millis(10);
/// At most one slow-batch line per this interval (a slow disk would
/// otherwise log every batch).
const SLOW_BATCH_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct WriterConfig {
    pub data_dir: PathBuf,
    pub queue_capacity: usize,
    pub overflow: OverflowPolicy,
    pub overflow_wait: Duration,
    pub fsync_interval: Duration,
    pub segment_bytes: u64,
    /// Segments older than this are deleted when `delete_old_segments`.
    pub retention: Duration,
    /// False in full mode, where the shipper deletes segments once Kafka
    /// has them (never one it has not shipped, however old).
    pub delete_old_segments: bool,
}

/// Owns the writer thread; `shutdown` flushes, fsyncs and checkpoints.
pub struct WriterHandle {
    tx: crossbeam_channel::Sender<Msg>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl WriterHandle {
    /// Asks the writer to drain everything queued, fsync, snapshot and exit.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.tx.send(Msg::Shutdown);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("click-log writer panicked")),
            None => Ok(()),
        }
    }
}

/// Opens the log (cutting a torn tail, converting an old JSON log), lets
/// each consumer catch up with it, and starts the writer thread.
pub fn spawn_writer(
    cfg: WriterConfig,
    mut consumers: Vec<Box<dyn Consumer>>,
) -> std::io::Result<(ClickLog, WriterHandle)> {
    let dir = cfg.data_dir.join(segments::DIR_NAME);
    crate::fsutil::create_private_dir(&dir)?;
    super::legacy::convert(&cfg.data_dir)?;
    let seqs = segments::list(&dir)?;
    let (seq, len) = match seqs.last() {
        Some(&seq) => (
            seq,
            segments::repair_tail(&segments::segment_path(&dir, seq))?,
        ),
        None => (1, 0),
    };
    let end = Position {
        segment: seq,
        offset: len,
    };
    for consumer in &mut consumers {
        consumer.recover(&dir, end)?;
    }
    let (seq, len) = if len >= cfg.segment_bytes {
        (seq + 1, 0)
    } else {
        (seq, len)
    };
    let file = open_segment(&dir, seq)?;
    let (tx, rx) = crossbeam_channel::bounded(cfg.queue_capacity);
    let alive = Arc::new(AtomicBool::new(true));
    let log = ClickLog::new(tx.clone(), cfg.overflow, cfg.overflow_wait, alive.clone());
    let mut writer = Writer {
        dir,
        rx,
        file,
        position: Position {
            segment: seq,
            offset: len,
        },
        last_end: end,
        synced: true,
        classifier: CachedClassifier::new(BotClassifier::default(), UA_CACHE_ENTRIES),
        consumers,
        alive,
        cfg,
        newest_ms: Default::default(),
    };
    let thread = std::thread::Builder::new()
        .name("clicklog-writer".into())
        .spawn(move || {
            let result = writer.run();
            writer.alive.store(false, Ordering::Relaxed);
            if let Err(e) = &result {
                tracing::error!(error = %e, "clicklog: writer stopped");
            }
            result
        })?;
    Ok((
        log,
        WriterHandle {
            tx,
            thread: Some(thread),
        },
    ))
}

struct Writer {
    dir: PathBuf,
    rx: Receiver<Msg>,
    file: File,
    position: Position,
    /// The end of the last batch written (in an older segment if the log
    /// rotated since): what the next batch follows.
    last_end: Position,
    synced: bool,
    classifier: CachedClassifier,
    consumers: Vec<Box<dyn Consumer>>,
    alive: Arc<AtomicBool>,
    cfg: WriterConfig,
    /// Newest record time of closed segments scanned by retention.
    newest_ms: std::collections::HashMap<u64, i64>,
}

impl Writer {
    fn run(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(MAX_BATCH_BYTES + 64 * 1024);
        let mut pending: Vec<Written> = Vec::with_capacity(4096);
        let mut last_fsync = Instant::now();
        let mut last_retention: Option<Instant> = None;
        let mut stopping = false;
        let mut failures = 0u32;
        let mut busy = false;
        let mut slow = SlowBatches::default();
        loop {
            if buf.is_empty() && !stopping {
                if busy {
                    // Under load, let clicks gather briefly instead of
                    // blocking in `recv`: a blocked receiver is woken by
                    // every send, and on a core shared with the request
                    // workers each wake-up preempts them mid-request.
                    std::thread::sleep(BATCH_GATHER);
                } else {
                    let wait = if self.synced {
                        IDLE_WAKE
                    } else {
                        self.cfg.fsync_interval.saturating_sub(last_fsync.elapsed())
                    };
                    match self.rx.recv_timeout(wait) {
                        Ok(Msg::Click(ev)) => self.encode(ev, &mut buf, &mut pending),
                        Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => stopping = true,
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                }
            }
            let started = Instant::now();
            let cpu_started = thread_cpu_time();
            // Drain what else is waiting; on shutdown, drain everything.
            while buf.len() < MAX_BATCH_BYTES || stopping {
                match self.rx.try_recv() {
                    Ok(Msg::Click(ev)) => self.encode(ev, &mut buf, &mut pending),
                    Ok(Msg::Shutdown) => stopping = true,
                    Err(_) => break,
                }
            }
            telemetry::clicklog_queue_depth(self.rx.len());
            busy = !buf.is_empty();
            if !buf.is_empty() {
                let start = self.position;
                if let Err(e) = self.append(&buf) {
                    // Keep the batch; the queue fills and the overflow policy
                    // takes over at the edge. Nothing is dropped here.
                    back_off(e, &mut failures, stopping)?;
                    continue;
                }
                failures = 0;
                let written = Instant::now();
                telemetry::clicklog_events(pending.len() as u64);
                let batch = Batch {
                    clicks: &pending,
                    bytes: &buf,
                    start,
                    follows: self.last_end,
                };
                for consumer in &mut self.consumers {
                    consumer.written(&batch);
                }
                self.last_end = batch.end();
                slow.observe(BatchTimes {
                    events: pending.len(),
                    cpu: thread_cpu_time().saturating_sub(cpu_started),
                    started,
                    written,
                    done: Instant::now(),
                    queued: self.rx.len(),
                });
                buf.clear();
                pending.clear();
            }
            let fsync_due = last_fsync.elapsed() >= self.cfg.fsync_interval;
            if !self.synced && (fsync_due || stopping) {
                if let Err(e) = self.fsync() {
                    // Not fatal: the bytes stay written and the next round
                    // syncs again; meanwhile the queue absorbs the traffic.
                    back_off(e, &mut failures, stopping)?;
                    continue;
                }
                last_fsync = Instant::now();
                for consumer in &mut self.consumers {
                    consumer.synced(self.position);
                }
            }
            self.rotate_if_full();
            if stopping {
                for consumer in &mut self.consumers {
                    consumer.close(self.position);
                }
                tracing::info!(position = ?self.position, "clicklog: flushed and closed");
                return Ok(());
            }
            if self.cfg.delete_old_segments
                && last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
            {
                self.apply_retention();
                last_retention = Some(Instant::now());
            }
        }
    }

    /// Classifies `ev` and appends its framed record to `buf`.
    fn encode(&mut self, mut ev: ClickEvent, buf: &mut Vec<u8>, pending: &mut Vec<Written>) {
        let (bot, agent) = self
            .classifier
            .classify_with_agent(ev.user_agent(), ev.signals);
        let mut route = ev.route;
        if !route.has_agent() {
            route.set_agent(agent);
        }
        // Consumers (the embedded stats) see the route as written.
        ev.route = route;
        let mark = segments::begin_frame(buf);
        record::encode(&ev, bot, route, buf);
        segments::end_frame(buf, mark);
        let end = Position {
            segment: self.position.segment,
            offset: self.position.offset + buf.len() as u64,
        };
        pending.push(Written {
            event: ev,
            bot,
            end,
        });
    }

    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Err(e) = self.file.write_all(buf) {
            // Cut a partial write, so the retry neither duplicates events
            // nor leaves a torn line behind the stats watermark.
            if let Err(cut) = self.file.set_len(self.position.offset) {
                tracing::error!(error = %cut, "clicklog: cannot cut a partial write");
            }
            return Err(e);
        }
        self.position.offset += buf.len() as u64;
        self.synced = false;
        telemetry::clicklog_written(buf.len());
        Ok(())
    }

    /// Starts the next segment once this one is full and synced. On failure
    /// the current segment keeps growing and rotation is retried later.
    fn rotate_if_full(&mut self) {
        if self.position.offset < self.cfg.segment_bytes || !self.synced {
            return;
        }
        let next = self.position.segment + 1;
        match open_segment(&self.dir, next) {
            Ok(file) => {
                self.file = file;
                self.position = Position {
                    segment: next,
                    offset: 0,
                };
            }
            Err(e) => telemetry::clicklog_write_failed(&e),
        }
    }

    fn fsync(&mut self) -> std::io::Result<()> {
        if self.synced {
            return Ok(());
        }
        let started = Instant::now();
        self.file.sync_data()?;
        telemetry::clicklog_fsynced(started.elapsed());
        self.synced = true;
        Ok(())
    }

    /// Deletes closed segments whose newest record is older than the
    /// retention window ([`segments::expired`]).
    fn apply_retention(&mut self) {
        let cutoff_ms = crate::time::now_ms() - self.cfg.retention.as_millis() as i64;
        match segments::expired(
            &self.dir,
            self.position.segment,
            cutoff_ms,
            &mut self.newest_ms,
        ) {
            Ok(old) => {
                for seq in old {
                    let path = segments::segment_path(&self.dir, seq);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            tracing::info!(
                                segment = seq,
                                "clicklog: segment past retention deleted"
                            )
                        }
                        Err(e) => {
                            tracing::warn!(segment = seq, error = %e, "clicklog: cannot delete old segment")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "clicklog: retention could not list segments"),
        }
        if let Ok(seqs) = segments::list(&self.dir) {
            telemetry::clicklog_segments(seqs.len());
        }
    }
}

/// Where one batch's time went: read, encode and write, then the consumers.
struct BatchTimes {
    events: usize,
    /// On-CPU time: wall time minus the time the edge (or anything else)
    /// had the core. A batch slow in wall time but not in CPU time was
    /// preempted or waited for the disk; one slow in CPU time took the
    /// edge's time.
    cpu: Duration,
    started: Instant,
    written: Instant,
    done: Instant,
    /// Clicks waiting when the batch was done.
    queued: usize,
}

/// Times every batch; logs the slow ones, at most one line per
/// `SLOW_BATCH_LOG_EVERY`, with how many more there were.
#[derive(Default)]
struct SlowBatches {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl SlowBatches {
    fn observe(&mut self, t: BatchTimes) {
        let took = t.done - t.started;
        telemetry::clicklog_batch_took(took);
        if took < SLOW_BATCH {
            return;
        }
        if self
            .last_logged
            .is_some_and(|at| at.elapsed() < SLOW_BATCH_LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::warn!(
            events = t.events,
            took_ms = ms(took),
            cpu_ms = ms(t.cpu),
            encode_write_ms = ms(t.written - t.started),
            consumers_ms = ms(t.done - t.written),
            queued = t.queued,
            slow_since_last_line = self.unlogged,
            "clicklog: slow batch"
        );
        self.last_logged = Some(t.done);
        self.unlogged = 0;
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Counts a failed write or sync and pauses before the retry. Gives up
/// only when shutting down, after `MAX_FAILURES_AT_SHUTDOWN` attempts.
fn back_off(e: std::io::Error, failures: &mut u32, stopping: bool) -> std::io::Result<()> {
    telemetry::clicklog_write_failed(&e);
    *failures += 1;
    if stopping && *failures >= MAX_FAILURES_AT_SHUTDOWN {
        return Err(e);
    }
    std::thread::sleep(WRITE_RETRY);
    Ok(())
}

fn open_segment(dir: &std::path::Path, seq: u64) -> std::io::Result<File> {
    let path = segments::segment_path(dir, seq);
    let file = crate::fsutil::open_private_append(&path)?;
    crate::fsutil::sync_parent(&path)?;
    Ok(file)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clicks::{ClickIds, ClientText, IpHash, Signals};
    use crate::links::{Link, LinkRecord};
    use std::sync::Mutex;

    pub(crate) fn config(dir: &std::path::Path) -> WriterConfig {
        WriterConfig {
            data_dir: dir.to_owned(),
            queue_capacity: 16,
            overflow: OverflowPolicy::Backpressure,
            overflow_wait: Duration::from_millis(50),
            fsync_interval: Duration::from_millis(10),
            segment_bytes: 1 << 20,
            retention: Duration::from_secs(86_400),
            delete_old_segments: true,
        }
    }

    pub(crate) fn click() -> ClickEvent {
        let link = Arc::new(Link::compile(LinkRecord::for_tests(
            "abc",
            "acme",
            "https://example.com/",
        )));
        let now = crate::time::now_ms();
        ClickEvent::new(
            ClickIds::new(&crate::keys::MasterKey::for_tests()).mint(now as u64),
            now,
            link,
            IpHash {
                epoch: 1,
                digest: [7; 16],
            },
            Signals::default(),
            ClientText {
                user_agent: b"Mozilla/5.0",
                referer: b"",
                sub: "",
            },
        )
    }

    /// What a consumer was told, in order.
    #[derive(Default)]
    struct Seen {
        recovered_to: Option<Position>,
        batches: Vec<(Position, Position, usize, Vec<u8>)>,
        synced: Vec<Position>,
        closed: Option<Position>,
    }

    struct Recorder(Arc<Mutex<Seen>>);

    impl Consumer for Recorder {
        fn recover(&mut self, _: &std::path::Path, end: Position) -> std::io::Result<()> {
            self.0.lock().unwrap().recovered_to = Some(end);
            Ok(())
        }
        fn written(&mut self, b: &Batch<'_>) {
            let entry = (b.follows, b.start, b.clicks.len(), b.bytes.to_vec());
            self.0.lock().unwrap().batches.push(entry);
        }
        fn synced(&mut self, at: Position) {
            self.0.lock().unwrap().synced.push(at);
        }
        fn close(&mut self, at: Position) {
            self.0.lock().unwrap().closed = Some(at);
        }
    }

    fn log_bytes(dir: &std::path::Path) -> Vec<u8> {
        let log = dir.join(segments::DIR_NAME);
        segments::list(&log)
            .unwrap()
            .iter()
            .flat_map(|seq| std::fs::read(segments::segment_path(&log, *seq)).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn consumers_see_each_batch_as_written_then_synced_then_closed() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (log, writer) =
            spawn_writer(config(dir.path()), vec![Box::new(Recorder(seen.clone()))]).unwrap();
        for _ in 0..3 {
            assert_eq!(log.record(click()).await, super::super::Recorded::Queued);
        }
        writer.shutdown().unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.recovered_to,
            Some(Position {
                segment: 1,
                offset: 0
            })
        );
        let on_disk = log_bytes(dir.path());
        let handed: Vec<u8> = seen.batches.iter().flat_map(|b| b.3.clone()).collect();
        assert_eq!(handed, on_disk, "consumers get the bytes as written");
        assert_eq!(seen.batches.iter().map(|b| b.2).sum::<usize>(), 3);
        for pair in seen.batches.windows(2) {
            let end = Position {
                segment: 1,
                offset: pair[0].1.offset + pair[0].3.len() as u64,
            };
            assert_eq!(pair[1].0, end, "each batch follows the one before");
        }
        let end = Position {
            segment: 1,
            offset: on_disk.len() as u64,
        };
        assert_eq!(seen.synced.last(), Some(&end));
        assert_eq!(seen.closed, Some(end));
        let mut records = 0;
        segments::frames(&on_disk, |p, _| {
            let r = record::Record::decode(p).unwrap();
            assert_eq!((r.code, r.tenant, r.bot), ("abc", "acme", None));
            records += 1;
        });
        assert_eq!(records, 3);
    }
}
