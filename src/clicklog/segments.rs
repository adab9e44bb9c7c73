//! Segment files: `<data_dir>/clicklog/<seq:020>.jsonl`, one JSON event per
//! line. Only the newest segment is ever appended to; a line without its
//! newline is an interrupted write and is cut off when the log is reopened.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DIR_NAME: &str = "clicklog";
const SUFFIX: &str = ".jsonl";

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
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Cuts an interrupted last line off; returns the kept length.
pub fn repair_tail(path: &Path) -> std::io::Result<u64> {
    let data = std::fs::read(path)?;
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < data.len() {
        tracing::warn!(
            path = %path.display(),
            cut_bytes = data.len() - keep,
            "clicklog: cutting off an interrupted last line"
        );
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(keep as u64)?;
        f.sync_all()?;
    }
    Ok(keep as u64)
}

/// Calls `f` with every complete line at or after `from`, in log order.
pub fn read_from(
    dir: &Path,
    from: Position,
    mut f: impl FnMut(&[u8], Position),
) -> std::io::Result<Position> {
    let mut at = from;
    for seq in list(dir)?.into_iter().filter(|s| *s >= from.segment) {
        let mut file = File::open(segment_path(dir, seq))?;
        let start = if seq == from.segment { from.offset } else { 0 };
        file.seek(SeekFrom::Start(start))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut offset = start;
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            offset += n as u64;
            at = Position {
                segment: seq,
                offset,
            };
            f(&line[..n - 1], at);
        }
        if seq > from.segment || offset > start {
            at = Position {
                segment: seq,
                offset,
            };
        }
    }
    Ok(at)
}

/// Follows the log from a position: complete lines only, across segment
/// rotation. A segment is left only once a newer one exists and a last read
/// after seeing it found nothing more (the writer never appends to a segment
/// after it has created the next one).
pub struct Tail {
    dir: PathBuf,
    at: Position,
    reader: Option<BufReader<File>>,
    line: Vec<u8>,
}

/// Read-ahead of a [`Tail`].
const TAIL_BUFFER_BYTES: usize = 1 << 20;

impl Tail {
    pub fn new(dir: &Path, from: Position) -> Tail {
        Tail {
            dir: dir.to_owned(),
            at: from,
            reader: None,
            line: Vec::with_capacity(1024),
        }
    }

    /// The position after the last line handed out.
    pub fn position(&self) -> Position {
        self.at
    }

    /// Calls `f` with up to `max_lines` complete lines that follow the
    /// current position, and the position after each. When `f` returns
    /// false the line is not taken: the tail stays before it and stops.
    /// Returns how many lines were taken.
    pub fn read(
        &mut self,
        max_lines: usize,
        mut f: impl FnMut(&[u8], Position) -> bool,
    ) -> std::io::Result<usize> {
        let mut n = 0;
        let mut saw_next = false;
        while n < max_lines {
            if !self.open()? {
                return Ok(n);
            }
            let reader = self.reader.as_mut().expect("opened above");
            self.line.clear();
            let got = reader.read_until(b'\n', &mut self.line)?;
            if got > 0 && self.line.last() == Some(&b'\n') {
                let end = Position {
                    segment: self.at.segment,
                    offset: self.at.offset + got as u64,
                };
                if !f(&self.line[..got - 1], end) {
                    reader.seek(SeekFrom::Start(self.at.offset))?;
                    return Ok(n);
                }
                self.at = end;
                n += 1;
                saw_next = false;
                continue;
            }
            if got > 0 {
                // A line still being written: read it again next time.
                reader.seek(SeekFrom::Start(self.at.offset))?;
                return Ok(n);
            }
            // End of this segment: move on only if a newer one exists, and
            // only after one more read that started after seeing it.
            if saw_next {
                self.at = Position {
                    segment: self.at.segment + 1,
                    offset: 0,
                };
                self.reader = None;
                saw_next = false;
            } else if segment_path(&self.dir, self.at.segment + 1).exists() {
                saw_next = true;
            } else {
                return Ok(n);
            }
        }
        Ok(n)
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

/// Reads the one complete line at `at`, if there is one.
pub fn line_at(dir: &Path, at: Position) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    Tail::new(dir, at).read(1, |l, _| {
        line = l.to_vec();
        true
    })?;
    Ok((!line.is_empty()).then_some(line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(dir: &Path, seq: u64, text: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, seq))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
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

    #[test]
    fn tail_hands_out_complete_lines_and_waits_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 1, "a\nb\npart");
        let mut tail = Tail::new(dir.path(), Position::default());
        assert_eq!(read_all(&mut tail), ["a", "b"]);
        assert_eq!(
            tail.position(),
            Position {
                segment: 1,
                offset: 4
            }
        );
        append(dir.path(), 1, "ial\n");
        assert_eq!(read_all(&mut tail), ["partial"]);
        assert!(read_all(&mut tail).is_empty());
    }

    #[test]
    fn a_line_not_taken_is_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 1, "a\nb\nc\n");
        let mut tail = Tail::new(dir.path(), Position::default());
        let mut seen = Vec::new();
        let n = tail
            .read(10, |l, _| {
                seen.push(l.to_vec());
                l != b"b"
            })
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(read_all(&mut tail), ["b", "c"]);
    }

    #[test]
    fn tail_follows_rotation_and_skips_trimmed_segments() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), 3, "x\n");
        append(dir.path(), 4, "y\n");
        // Position 1 was trimmed away: the tail starts at the oldest left.
        let mut tail = Tail::new(
            dir.path(),
            Position {
                segment: 1,
                offset: 9,
            },
        );
        assert_eq!(read_all(&mut tail), ["x", "y"]);
        append(dir.path(), 4, "z\n");
        append(dir.path(), 5, "w\n");
        assert_eq!(read_all(&mut tail), ["z", "w"]);
        assert_eq!(
            tail.position(),
            Position {
                segment: 5,
                offset: 2
            }
        );
        assert_eq!(
            bytes_after(
                dir.path(),
                Position {
                    segment: 4,
                    offset: 2
                }
            )
            .unwrap(),
            4
        );
        assert_eq!(
            line_at(
                dir.path(),
                Position {
                    segment: 4,
                    offset: 2
                }
            )
            .unwrap()
            .unwrap(),
            b"z"
        );
    }
}
