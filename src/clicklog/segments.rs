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
