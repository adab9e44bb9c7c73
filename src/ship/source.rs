//! Where the shipper reads click records: the writer's batches in memory
//! while they are fresh, the click-log file otherwise.
//!
//! The writer hands each written batch to [`MemoryFeed`] (a click-log
//! consumer), which passes a copy to the shipper's thread, up to a bound in
//! bytes; past it the batch is dropped from memory (it is in the file).
//! [`Source`] takes batches from memory as long as each one continues
//! exactly where the shipper is; after a restart, a rewind to the
//! confirmed position, or a batch it did not get, it reads the file until
//! it reaches a batch that continues from there. Both give the same
//! records at the same positions, so the shipper's bookkeeping
//! (`Inflight`) cannot tell them apart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::clicklog::segments::{self, Position, Tail};
use crate::clicklog::{Batch, Consumer};

/// Batches held for the shipper, at most, in bytes.
pub const MEMORY_BOUND_BYTES: usize = 32 << 20;

/// A written batch, as the writer handed it over.
struct Chunk {
    follows: Position,
    start: Position,
    bytes: Vec<u8>,
}

impl Chunk {
    fn end(&self) -> Position {
        Position {
            segment: self.start.segment,
            offset: self.start.offset + self.bytes.len() as u64,
        }
    }

    /// Whether a reader at `at` can go on in this chunk.
    fn continues(&self, at: Position) -> bool {
        self.follows == at || (self.start <= at && at < self.end())
    }
}

#[derive(Default)]
struct Shared {
    bytes: AtomicUsize,
    /// A batch was not kept in memory: the file holds more than memory.
    dropped: AtomicBool,
}

/// The click-log consumer that hands batches to the shipper.
pub struct MemoryFeed {
    tx: Sender<Chunk>,
    shared: Arc<Shared>,
    bound: usize,
}

impl Consumer for MemoryFeed {
    fn written(&mut self, batch: &Batch<'_>) {
        let len = batch.bytes.len();
        if self.shared.bytes.load(Ordering::Relaxed) + len > self.bound {
            self.shared.dropped.store(true, Ordering::Relaxed);
            return;
        }
        self.shared.bytes.fetch_add(len, Ordering::Relaxed);
        let chunk = Chunk {
            follows: batch.follows,
            start: batch.start,
            bytes: batch.bytes.to_vec(),
        };
        if self.tx.send(chunk).is_err() {
            // The shipper has stopped; the file has it all.
            self.shared.dropped.store(true, Ordering::Relaxed);
        }
    }
}

/// The shipper's reader.
pub struct Source {
    dir: PathBuf,
    rx: Receiver<Chunk>,
    shared: Arc<Shared>,
    /// The chunk being read from memory, if any.
    current: Option<Chunk>,
    /// Reading the file (until a chunk continues from `at`).
    from_file: Option<Tail>,
    at: Position,
    /// Records taken from memory and from the file, since last asked.
    pub taken_from_memory: u64,
    pub taken_from_file: u64,
}

/// A memory feed for the writer and the source that reads it (and the
/// file in `log_dir`) from `from`.
pub fn channel(log_dir: &Path, from: Position, bound: usize) -> (MemoryFeed, Source) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared::default());
    let feed = MemoryFeed {
        tx,
        shared: shared.clone(),
        bound,
    };
    let source = Source {
        dir: log_dir.to_owned(),
        rx,
        shared,
        current: None,
        from_file: Some(Tail::new(log_dir, from)),
        at: from,
        taken_from_memory: 0,
        taken_from_file: 0,
    };
    (feed, source)
}

impl Source {
    /// The position after the last record handed out.
    pub fn position(&self) -> Position {
        self.at
    }

    /// Starts over at `at` (a rewind to the confirmed position): from the
    /// file, until memory continues from there.
    pub fn rewind(&mut self, at: Position) {
        self.at = at;
        self.from_file = Some(Tail::new(&self.dir, at));
    }

    /// The next chunk worth looking at: drops chunks wholly before `at`.
    fn front(&mut self) -> Option<&Chunk> {
        loop {
            if self.current.is_none() {
                self.current = self.rx.try_recv().ok();
            }
            let chunk = self.current.as_ref()?;
            if chunk.end() > self.at {
                break;
            }
            self.shared
                .bytes
                .fetch_sub(chunk.bytes.len(), Ordering::Relaxed);
            self.current = None;
        }
        self.current.as_ref()
    }

    /// Calls `f` with up to `max` records that follow the current position
    /// (their payloads) and the position after each, as [`Tail::read`]
    /// does: a record `f` refuses is handed out again next time. Returns
    /// how many were taken.
    pub fn read(
        &mut self,
        max: usize,
        mut f: impl FnMut(&[u8], Position) -> bool,
    ) -> std::io::Result<usize> {
        let mut n = 0;
        while n < max {
            let at = self.at;
            let continues = self.front().map(|c| c.continues(at));
            if continues == Some(true) {
                self.from_file = None;
                let chunk = self.current.as_ref().expect("front is current");
                let (taken, refused) = read_chunk(chunk, &mut self.at, max - n, &mut f);
                n += taken;
                self.taken_from_memory += taken as u64;
                // Read to its end: let go of it (and of its bytes' room).
                self.front();
                if refused {
                    return Ok(n);
                }
                continue;
            }
            if self.from_file.is_none() {
                // Memory has nothing that continues from here: a batch was
                // dropped (the next one shows a gap, or none is coming).
                let gap = continues == Some(false);
                if !gap && !self.shared.dropped.swap(false, Ordering::Relaxed) {
                    return Ok(n);
                }
                self.from_file = Some(Tail::new(&self.dir, self.at));
            }
            // From the file. It may run into what memory also holds: that
            // is harmless (the chunk is then read from the middle, or
            // dropped as already read).
            let tail = self.from_file.as_mut().expect("set above");
            let taken = tail.read(max - n, &mut f)?;
            self.at = tail.position();
            n += taken;
            self.taken_from_file += taken as u64;
            if taken == 0 {
                return Ok(n);
            }
        }
        Ok(n)
    }
}

/// Reads records out of `chunk` from `at` on; returns how many were taken
/// and whether `f` refused one.
fn read_chunk(
    chunk: &Chunk,
    at: &mut Position,
    max: usize,
    f: &mut impl FnMut(&[u8], Position) -> bool,
) -> (usize, bool) {
    if chunk.follows == *at && chunk.start != *at {
        // The segment rotated between the batches.
        *at = chunk.start;
    }
    let mut offset = (at.offset - chunk.start.offset) as usize;
    let mut taken = 0;
    while taken < max && offset < chunk.bytes.len() {
        let Some((payload, len)) = segments::first_frame(&chunk.bytes[offset..]) else {
            // Never: the writer framed these bytes. Stop taking from memory.
            return (taken, true);
        };
        let end = Position {
            segment: chunk.start.segment,
            offset: chunk.start.offset + (offset + len) as u64,
        };
        if !f(payload, end) {
            return (taken, true);
        }
        *at = end;
        offset += len;
        taken += 1;
    }
    (taken, false)
}
