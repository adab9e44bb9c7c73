//! Segment files: `<data_dir>/clicklog/<seq:020>.log`, a run of framed
//! records. Only the newest segment is ever appended to.
//!
//! A frame is `[payload length: u32 LE][CRC-32 of the payload: u32 LE]`
//! then the payload ([`super::record`]). A frame that runs past the end of
//! the file is a write in progress (readers wait for it) or an interrupted
//! one (cut off when the log is reopened); one whose checksum does not
//! match is damage, and everything from it on is cut at reopening too.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::record::MAX_PAYLOAD;

pub const DIR_NAME: &str = "clicklog";
const SUFFIX: &str = ".log";
/// Bytes of a frame's header.
pub const FRAME_HEADER: usize = 8;

/// A point in the log: everything before it is on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SUFFIX}"))
}

/// Segment numbers present in `dir`, oldest first.
pub fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    list_with_suffix(dir, SUFFIX)
}

pub(super) fn list_with_suffix(dir: &Path, suffix: &str) -> std::io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Starts a frame in `out`: call [`end_frame`] with the returned mark once
/// the payload is appended.
pub fn begin_frame(out: &mut Vec<u8>) -> usize {
    let mark = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    mark
}

/// Fills in the header of the frame begun at `mark`.
pub fn end_frame(out: &mut [u8], mark: usize) {
    let payload = &out[mark + FRAME_HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[mark..mark + 4].copy_from_slice(&len.to_le_bytes());
    out[mark + 4..mark + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one whole frame holding `payload`.
pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let mark = begin_frame(out);
    out.extend_from_slice(payload);
    end_frame(out, mark);
}

/// What the bytes at the start of `data` hold.
enum Parsed<'a> {
    /// A whole, intact frame: its payload and its length with the header.
    Frame(&'a [u8], usize),
    /// Too few bytes yet.
    Incomplete,
    /// A length no writer makes, or a checksum that does not match.
    Damaged,
}

fn parse(data: &[u8]) -> Parsed<'_> {
    let Some(header) = data.get(..FRAME_HEADER) else {
        return Parsed::Incomplete;
    };
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD {
        return Parsed::Damaged;
    }
    let Some(payload) = data.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Parsed::Incomplete;
    };
    if crc32fast::hash(payload) != crc {
        return Parsed::Damaged;
    }
    Parsed::Frame(payload, FRAME_HEADER + len)
}

/// The first frame in `data`, if whole and intact: its payload and its
/// length with the header.
pub fn first_frame(data: &[u8]) -> Option<(&[u8], usize)> {
    match parse(data) {
        Parsed::Frame(payload, len) => Some((payload, len)),
        _ => None,
    }
}

/// Calls `f` with each whole frame's payload in `data` and the offset
/// after it (relative to `data`); returns the length of the intact prefix.
pub fn frames(data: &[u8], mut f: impl FnMut(&[u8], usize)) -> usize {
    let mut at = 0;
    while let Parsed::Frame(payload, len) = parse(&data[at..]) {
        at += len;
        f(payload, at);
    }
    at
}

/// Cuts an interrupted or damaged tail off; returns the kept length.
pub fn repair_tail(path: &Path) -> std::io::Result<u64> {
    let data = std::fs::read(path)?;
    let keep = frames(&data, |_, _| {});
    if keep < data.len() {
        tracing::warn!(
            path = %path.display(),
            cut_bytes = data.len() - keep,
            "clicklog: cutting off an interrupted or damaged tail"
        );
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(keep as u64)?;
        f.sync_all()?;
    }
    Ok(keep as u64)
}

/// Calls `f` with every whole record at or after `from`, in log order, and
/// the position after it; returns the position after the last.
pub fn read_from(
    dir: &Path,
    from: Position,
    mut f: impl FnMut(&[u8], Position),
) -> std::io::Result<Position> {
    let mut tail = Tail::new(dir, from);
    loop {
        let n = tail.read(usize::MAX, |payload, end| {
            f(payload, end);
            true
        })?;
        if n == 0 {
            return Ok(tail.position());
        }
    }
}

/// Follows the log from a position: whole records only, across segment
/// rotation. A segment is left only once a newer one exists and a last read
/// after seeing it found nothing more (the writer never appends to a segment
/// after it has created the next one).
pub struct Tail {
    dir: PathBuf,
    at: Position,
    reader: Option<BufReader<File>>,
    payload: Vec<u8>,
}

/// Read-ahead of a [`Tail`].
const TAIL_BUFFER_BYTES: usize = 1 << 20;

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// One step of a [`Tail`].
enum Step {
    /// A record was read into the tail's payload buffer; its end.
    Record(Position),
    /// Nothing whole after the current position (yet).
    End,
    /// The record at the current position is damaged.
    Damaged,
}

impl Tail {
    pub fn new(dir: &Path, from: Position) -> Tail {
        Tail {
            dir: dir.to_owned(),
            at: from,
            reader: None,
            payload: Vec::with_capacity(1024),
        }
    }

    /// The position after the last record handed out.
    pub fn position(&self) -> Position {
        self.at
    }

    fn step(&mut self) -> std::io::Result<Step> {
        let reader = self.reader.as_mut().expect("opened by the caller");
        let mut header = [0u8; FRAME_HEADER];
        let got = read_full(reader, &mut header)?;
        if got < FRAME_HEADER {
            if got > 0 {
                reader.seek(SeekFrom::Start(self.at.offset))?;
            }
            return Ok(Step::End);
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            reader.seek(SeekFrom::Start(self.at.offset))?;
            return Ok(Step::Damaged);
        }
        self.payload.resize(len, 0);
        if read_full(reader, &mut self.payload)? < len {
            // A record still being written: read it again next time.
            reader.seek(SeekFrom::Start(self.at.offset))?;
            return Ok(Step::End);
        }
        if crc32fast::hash(&self.payload) != crc {
            reader.seek(SeekFrom::Start(self.at.offset))?;
            return Ok(Step::Damaged);
        }
        Ok(Step::Record(Position {
            segment: self.at.segment,
            offset: self.at.offset + (FRAME_HEADER + len) as u64,
        }))
    }

    /// Calls `f` with up to `max` whole records that follow the current
    /// position (their payloads), and the position after each. When `f`
    /// returns false the record is not taken: the tail stays before it and
    /// stops. Returns how many records were taken.
    pub fn read(
        &mut self,
        max: usize,
        mut f: impl FnMut(&[u8], Position) -> bool,
    ) -> std::io::Result<usize> {
        let mut n = 0;
        let mut saw_next = false;
        while n < max {
            if !self.open()? {
                return Ok(n);
            }
            let step = self.step()?;
            let next_exists = || segment_path(&self.dir, self.at.segment + 1).exists();
            match step {
                Step::Record(end) => {
                    if !f(&self.payload, end) {
                        let reader = self.reader.as_mut().expect("opened above");
                        reader.seek(SeekFrom::Start(self.at.offset))?;
                        return Ok(n);
                    }
                    self.at = end;
                    n += 1;
                    saw_next = false;
                }
                // End of this segment: move on only if a newer one exists,
                // and only after one more read that started after seeing it.
                Step::End if saw_next => self.next_segment(),
                Step::End if next_exists() => saw_next = true,
                Step::End => return Ok(n),
                // Damage in a segment the writer has left (reopening cuts
                // it in the newest one): what follows it in this segment
                // cannot be framed, so skip to the next.
                Step::Damaged if next_exists() => {
                    tracing::error!(
                        at = ?self.at,
                        "clicklog: a damaged record; skipping the rest of its segment"
                    );
                    crate::telemetry::clicklog_damaged();
                    self.next_segment();
                }
                Step::Damaged => return Ok(n),
            }
        }
        Ok(n)
    }

    fn next_segment(&mut self) {
        self.at = Position {
            segment: self.at.segment + 1,
            offset: 0,
        };
        self.reader = None;
    }

    /// Opens the reader at the current position, skipping segments that are
    /// gone (trimmed); false when the current segment does not exist yet.
    fn open(&mut self) -> std::io::Result<bool> {
        if self.reader.is_none() {
            let path = segment_path(&self.dir, self.at.segment);
            match File::open(&path) {
                Ok(mut file) => {
                    file.seek(SeekFrom::Start(self.at.offset))?;
                    self.reader = Some(BufReader::with_capacity(TAIL_BUFFER_BYTES, file));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match list(&self.dir)?.into_iter().find(|s| *s > self.at.segment) {
                        Some(seq) => {
                            self.at = Position {
                                segment: seq,
                                offset: 0,
                            };
                            return self.open();
                        }
                        None => return Ok(false),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Bytes of the log at and after `from` (what a reader there has left).
pub fn bytes_after(dir: &Path, from: Position) -> std::io::Result<u64> {
    let mut total = 0;
    for seq in list(dir)?.into_iter().filter(|s| *s >= from.segment) {
        let len = std::fs::metadata(segment_path(dir, seq))?.len();
        total += if seq == from.segment {
            len.saturating_sub(from.offset)
        } else {
            len
        };
    }
    Ok(total)
}

/// Closed segments (numbered below `current`) whose newest record is older
/// than `cutoff_ms`, oldest first. The first record of the segment after
/// a segment is no older than its newest (records are written in the order
/// the edge stamped them, give or take the queue's few milliseconds), so
/// most segments cost one record read; only the segment that straddles the
/// cut-off is scanned for its newest record, once (`newest` caches it:
/// closed segments never change).
pub fn expired(
    dir: &Path,
    current: u64,
    cutoff_ms: i64,
    newest: &mut std::collections::HashMap<u64, i64>,
) -> std::io::Result<Vec<u64>> {
    let seqs = list(dir)?;
    newest.retain(|seq, _| seqs.binary_search(seq).is_ok());
    let mut old = Vec::new();
    for (i, &seq) in seqs.iter().enumerate() {
        if seq >= current {
            break;
        }
        let next_first_ms = match seqs.get(i + 1) {
            Some(&next) => record_at(
                dir,
                Position {
                    segment: next,
                    offset: 0,
                },
            )?
            .and_then(|p| super::record::Record::decode(&p).ok().map(|r| r.ts_ms)),
            None => None,
        };
        let is_old = match next_first_ms {
            Some(ms) if ms < cutoff_ms => true,
            _ => {
                let ms = match newest.get(&seq) {
                    Some(&ms) => ms,
                    None => {
                        let ms = newest_record_ms(&segment_path(dir, seq))?;
                        newest.insert(seq, ms);
                        ms
                    }
                };
                ms < cutoff_ms
            }
        };
        if !is_old {
            // Later segments hold later records.
            break;
        }
        old.push(seq);
    }
    Ok(old)
}

/// The newest record time in a segment (`i64::MIN` when it holds none
/// that decodes).
fn newest_record_ms(path: &Path) -> std::io::Result<i64> {
    let data = std::fs::read(path)?;
    let mut newest = i64::MIN;
    frames(&data, |payload, _| {
        if let Ok(r) = super::record::Record::decode(payload) {
            newest = newest.max(r.ts_ms);
        }
    });
    Ok(newest)
}

/// The payload of the one whole record at `at`, if there is one.
pub fn record_at(dir: &Path, at: Position) -> std::io::Result<Option<Vec<u8>>> {
    let mut found = None;
    Tail::new(dir, at).read(1, |p, _| {
        found = Some(p.to_vec());
        true
    })?;
    Ok(found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Appends one click record per time in `ts_ms` to segment `seq`.
    fn append_clicks(dir: &Path, seq: u64, ts_ms: &[i64]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, seq))
            .unwrap();
        for &ts in ts_ms {
            let text = serde_json::json!({
                "v": 1, "click_id": "c", "ts": crate::time::rfc3339(ts), "tenant": "t",
                "code": "x", "destination": "https://e.example/", "ip_hash": "00".repeat(16),
                "user_agent": "", "referer": "", "sub": "", "bot": false, "bot_reason": null,
                "edge_node": "n", "salt_epoch": 0
            })
            .to_string();
            let wire: crate::clicks::WireClick = serde_json::from_str(&text).unwrap();
            let (mut payload, mut framed) = (Vec::new(), Vec::new());
            super::super::record::encode_wire(&wire, &mut payload);
            frame(&payload, &mut framed);
            f.write_all(&framed).unwrap();
        }
    }

    #[test]
    fn segments_expire_by_their_newest_record_and_the_current_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        const H: i64 = 3_600_000;
        append_clicks(d, 1, &[0, H]);
        append_clicks(d, 2, &[2 * H, 5 * H]);
        append_clicks(d, 3, &[6 * H]);
        append_clicks(d, 4, &[7 * H]);
        let mut cache = std::collections::HashMap::new();
        // Segment 2 straddles 4 h: its newest (5 h) keeps it, found by a scan.
        assert_eq!(expired(d, 4, 4 * H, &mut cache).unwrap(), vec![1]);
        assert_eq!(cache.get(&2), Some(&(5 * H)));
        assert_eq!(expired(d, 4, 5 * H + 1, &mut cache).unwrap(), vec![1, 2]);
        // The current segment stays whatever its age.
        assert_eq!(expired(d, 4, 100 * H, &mut cache).unwrap(), vec![1, 2, 3]);
        assert_eq!(expired(d, 3, 100 * H, &mut cache).unwrap(), vec![1, 2]);
        // Nothing old: nothing, and the cache forgets removed segments.
        assert!(expired(d, 4, 0, &mut cache).unwrap().is_empty());
        std::fs::remove_file(segment_path(d, 2)).unwrap();
        expired(d, 4, 0, &mut cache).unwrap();
        assert!(!cache.contains_key(&2));
    }

    /// Appends one framed record per `;`-separated word.
    pub(crate) fn append(dir: &Path, seq: u64, words: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, seq))
            .unwrap();
        let mut buf = Vec::new();
        for w in words.split(';').filter(|w| !w.is_empty()) {
            frame(w.as_bytes(), &mut buf);
        }
        f.write_all(&buf).unwrap();
    }

    fn read_all(tail: &mut Tail) -> Vec<String> {
        let mut out = Vec::new();
        tail.read(usize::MAX, |l, _| {
            out.push(String::from_utf8(l.to_vec()).unwrap());
            true
        })
        .unwrap();
        out
    }

    fn raw_append(dir: &Path, seq: u64, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, seq))
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn tail_hands_out_whole_records_and_waits_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 1, "a;b");
        let mut partial = Vec::new();
        frame(b"partial", &mut partial);
        raw_append(dir.path(), 1, &partial[..10]);
        let mut tail = Tail::new(dir.path(), Position::default());
        assert_eq!(read_all(&mut tail), ["a", "b"]);
        assert_eq!(
            tail.position(),
            Position {
                segment: 1,
                offset: 18
            }
        );
        raw_append(dir.path(), 1, &partial[10..]);
        assert_eq!(read_all(&mut tail), ["partial"]);
        assert!(read_all(&mut tail).is_empty());
    }

    #[test]
    fn a_record_not_taken_is_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 1, "a;b;c");
        let mut tail = Tail::new(dir.path(), Position::default());
        let n = tail.read(10, |l, _| l != b"b").unwrap();
        assert_eq!(n, 1);
        assert_eq!(read_all(&mut tail), ["b", "c"]);
    }

    #[test]
    fn tail_follows_rotation_and_skips_trimmed_segments() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 3, "x");
        append(dir.path(), 4, "y");
        // Position 1 was trimmed away: the tail starts at the oldest left.
        let mut tail = Tail::new(
            dir.path(),
            Position {
                segment: 1,
                offset: 9,
            },
        );
        assert_eq!(read_all(&mut tail), ["x", "y"]);
        append(dir.path(), 4, "z");
        append(dir.path(), 5, "w");
        assert_eq!(read_all(&mut tail), ["z", "w"]);
        assert_eq!(
            tail.position(),
            Position {
                segment: 5,
                offset: 9
            }
        );
        let after_y = Position {
            segment: 4,
            offset: 9,
        };
        assert_eq!(bytes_after(dir.path(), after_y).unwrap(), 18);
        assert_eq!(record_at(dir.path(), after_y).unwrap().unwrap(), b"z");
    }

    #[test]
    fn reopening_cuts_a_torn_or_damaged_tail_and_keeps_what_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 1, "keep;this");
        let mut torn = Vec::new();
        frame(b"torn", &mut torn);
        raw_append(dir.path(), 1, &torn[..torn.len() - 1]);
        assert_eq!(repair_tail(&segment_path(dir.path(), 1)).unwrap(), 24);

        let mut damaged = Vec::new();
        frame(b"flip", &mut damaged);
        *damaged.last_mut().unwrap() ^= 1;
        raw_append(dir.path(), 1, &damaged);
        append(dir.path(), 1, "after");
        assert_eq!(repair_tail(&segment_path(dir.path(), 1)).unwrap(), 24);
        let mut tail = Tail::new(dir.path(), Position::default());
        assert_eq!(read_all(&mut tail), ["keep", "this"]);
    }

    #[test]
    fn a_damaged_record_in_a_closed_segment_skips_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 1, "a");
        raw_append(dir.path(), 1, &[0xff; 12]);
        append(dir.path(), 2, "b");
        let mut tail = Tail::new(dir.path(), Position::default());
        assert_eq!(read_all(&mut tail), ["a", "b"]);
    }
}
