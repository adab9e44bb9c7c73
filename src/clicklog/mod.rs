//! The durable local click log: the first hop of every click.
//!
//! The edge hands each event to [`ClickLog::record`], which never does I/O:
//! it pushes onto a bounded queue drained by one writer thread. The writer
//! classifies each click, encodes it as a binary [`record`], writes each
//! batch as it comes (group commit), fsyncs at `fsync_interval`, rotates
//! segments by size and deletes segments past retention (embedded mode).
//!
//! What happens to a click after it is written is not the log's business:
//! the writer hands each written batch to its [`Consumer`]s (the embedded
//! stats, the postback click index, the Kafka shipper), which depend on
//! this module and never the reverse.
//!
//! When the queue is full the configured [`OverflowPolicy`] decides, and
//! every outcome is counted: by default the redirect waits briefly and then
//! answers 503, so no redirect is ever answered without its click recorded.

pub mod cli;
pub mod legacy;
pub mod record;
pub mod segments;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::clicks::{BotReason, ClickEvent};
use crate::config::OverflowPolicy;
use crate::telemetry;
pub use segments::Position;
pub use writer::{spawn_writer, WriterConfig, WriterHandle};

/// One click as written: the event the edge handed over, the writer's bot
/// verdict, and the log position right after its record.
pub struct Written {
    pub event: ClickEvent,
    pub bot: Option<BotReason>,
    pub end: Position,
}

/// One batch the writer has just written (not yet fsynced).
pub struct Batch<'a> {
    pub clicks: &'a [Written],
    /// The batch's frames, byte for byte as in the segment.
    pub bytes: &'a [u8],
    /// Where `bytes` start in the log.
    pub start: Position,
    /// The end of the batch written before this one: equal to `start`
    /// unless the segment rotated in between (then it is the old
    /// segment's end). A reader that had reached `follows` can go on with
    /// this batch without reading the file.
    pub follows: Position,
}

impl Batch<'_> {
    /// The position after the batch.
    pub fn end(&self) -> Position {
        Position {
            segment: self.start.segment,
            offset: self.start.offset + self.bytes.len() as u64,
        }
    }
}

/// What the writer feeds. Every method runs on the writer's thread, which
/// shares a core with the edge: keep each call's work bounded (per click, a
/// few map or counter updates; anything long goes to another thread).
pub trait Consumer: Send {
    /// Before the writer starts, once the log is opened (its damaged tail
    /// cut): catch up with what the log holds up to `end`.
    fn recover(&mut self, _log_dir: &std::path::Path, _end: Position) -> std::io::Result<()> {
        Ok(())
    }

    /// A batch is written.
    fn written(&mut self, batch: &Batch<'_>);

    /// Everything before `at` is fsynced.
    fn synced(&mut self, _at: Position) {}

    /// The writer is stopping; everything before `at` is written and synced.
    fn close(&mut self, _at: Position) {}
}

/// Granularity of the bounded wait under the backpressure policy.
const BACKPRESSURE_POLL: Duration = Duration::from_millis(1);

pub(crate) enum Msg {
    Click(ClickEvent),
    Shutdown,
}

/// What happened to a click handed to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Queued for the writer: redirect.
    Queued,
    /// Lost under the `drop` policy (counted): redirect anyway.
    Dropped,
    /// Not recorded (full or closed): answer 503, do not redirect.
    Refused,
}

/// The edge's handle on the click log.
#[derive(Clone)]
pub struct ClickLog {
    tx: Sender<Msg>,
    policy: OverflowPolicy,
    wait: Duration,
    alive: Arc<AtomicBool>,
    /// Set by the Kafka shipper while the unshipped log is over its bound:
    /// the log then counts as full and the overflow policy applies.
    backlog_full: Arc<AtomicBool>,
}

impl ClickLog {
    pub(crate) fn new(
        tx: Sender<Msg>,
        policy: OverflowPolicy,
        wait: Duration,
        alive: Arc<AtomicBool>,
    ) -> ClickLog {
        telemetry::clicklog_overflow_zero(policy);
        ClickLog {
            tx,
            policy,
            wait,
            alive,
            backlog_full: Arc::default(),
        }
    }

    /// The flag the shipper raises while its backlog is over the bound.
    pub fn backlog_flag(&self) -> Arc<AtomicBool> {
        self.backlog_full.clone()
    }

    fn try_send(&self, msg: Msg) -> Result<(), TrySendError<Msg>> {
        if self.backlog_full.load(Ordering::Relaxed) {
            return Err(TrySendError::Full(msg));
        }
        self.tx.try_send(msg)
    }

    /// Hands one click to the writer, applying the overflow policy.
    pub async fn record(&self, event: ClickEvent) -> Recorded {
        let event = match self.try_send(Msg::Click(event)) {
            Ok(()) => return Recorded::Queued,
            Err(TrySendError::Disconnected(_)) => return Recorded::Refused,
            Err(TrySendError::Full(msg)) => msg,
        };
        let outcome = match self.policy {
            OverflowPolicy::Drop => Recorded::Dropped,
            OverflowPolicy::Shed => Recorded::Refused,
            OverflowPolicy::Backpressure => self.wait_for_room(event).await,
        };
        let label = match outcome {
            Recorded::Queued => "waited",
            Recorded::Dropped => "dropped",
            Recorded::Refused => "refused",
        };
        telemetry::clicklog_overflow(self.policy, label);
        outcome
    }

    async fn wait_for_room(&self, mut msg: Msg) -> Recorded {
        let deadline = Instant::now() + self.wait;
        while Instant::now() < deadline {
            tokio::time::sleep(BACKPRESSURE_POLL).await;
            match self.try_send(msg) {
                Ok(()) => return Recorded::Queued,
                Err(TrySendError::Disconnected(_)) => return Recorded::Refused,
                Err(TrySendError::Full(m)) => msg = m,
            }
        }
        Recorded::Refused
    }

    /// Whether the writer thread is running (readiness).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    pub fn queue_depth(&self) -> usize {
        self.tx.len()
    }
}
