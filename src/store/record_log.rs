//! Line framing of the store file: `<crc32 hex> <json>\n` per record.
//!
//! A record is whole only when its newline is on disk and its CRC matches.
//! Only the tail can be torn (a crash mid-append); anything else that fails
//! to verify is corruption and is reported with its line number.

pub fn encode(json: &str, out: &mut Vec<u8>) {
    let crc = crc32fast::hash(json.as_bytes());
    out.extend_from_slice(format!("{crc:08x} ").as_bytes());
    out.extend_from_slice(json.as_bytes());
    out.push(b'\n');
}

/// Why a framed file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("line {line} is corrupt (not a torn tail); refusing to guess")]
    Corrupt { line: usize },
    #[error("line {line}: {message}")]
    BadRecord { line: usize, message: String },
}

/// What [`read_from`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// Bytes of whole records read, from the offset.
    pub consumed: u64,
    /// Whole records read.
    pub records: usize,
    /// The file ends in a torn record; only the writer (holding the
    /// file's lock) may cut it off.
    pub torn: bool,
}

/// Decodes every whole record of `path` after byte `offset` as `T`, in
/// order, handing each to `f`. `first_line` is the number of the first
/// line read, for error messages.
pub fn read_from<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    offset: u64,
    first_line: usize,
    mut f: impl FnMut(T),
) -> Result<Read, ReadError> {
    read_raw_from(path, offset, first_line, |line, json| {
        let rec = serde_json::from_str(json).map_err(|e| ReadError::BadRecord {
            line,
            message: e.to_string(),
        })?;
        f(rec);
        Ok(true)
    })
}

/// Hands the JSON text of every whole record of `path` after byte
/// `offset` to `f`, in order, with its line number. `f` answers whether it
/// took the record; the first `false` or error ends the read, and only
/// the records taken before it count as read.
pub fn read_raw_from<E: From<ReadError>>(
    path: &std::path::Path,
    offset: u64,
    first_line: usize,
    mut f: impl FnMut(usize, &str) -> Result<bool, E>,
) -> Result<Read, E> {
    use std::io::{BufRead, Seek, SeekFrom};
    let io = |e: std::io::Error| E::from(ReadError::Io(e));
    let mut file = std::fs::File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    // Line by line: a store of a million links is hundreds of MB of text,
    // and memory handed back to the allocator is not always handed back
    // to the system.
    let mut reader = std::io::BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let mut line = Vec::new();
    let mut read = Read {
        consumed: 0,
        records: 0,
        torn: false,
    };
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
            break;
        }
        let Some(framed) = line.strip_suffix(b"\n") else {
            // No newline (yet): an interrupted or unfinished append.
            read.torn = true;
            break;
        };
        let json = match verify(framed) {
            Some(json) => json,
            // A damaged last line is a torn tail; one with lines after it
            // is corruption.
            None if reader.fill_buf().map_err(io)?.is_empty() => {
                read.torn = true;
                break;
            }
            None => {
                return Err(ReadError::Corrupt {
                    line: first_line + read.records,
                }
                .into())
            }
        };
        if !f(first_line + read.records, json)? {
            break;
        }
        read.consumed += (json.len() + FRAME_OVERHEAD) as u64;
        read.records += 1;
    }
    Ok(read)
}

const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Bytes a frame adds to its JSON: 8 hex digits, a space, a newline.
const FRAME_OVERHEAD: usize = 10;

fn verify(line: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(line).ok()?;
    let (crc_hex, json) = text.split_once(' ')?;
    let crc = u32::from_str_radix(crc_hex, 16).ok()?;
    (crc_hex.len() == 8 && crc32fast::hash(json.as_bytes()) == crc).then_some(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `bytes` as a framed file of JSON strings.
    fn read_all(bytes: &[u8]) -> (Result<Read, ReadError>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, bytes).unwrap();
        let mut got = Vec::new();
        let read = read_from(&path, 0, 1, |s: String| got.push(s));
        (read, got)
    }

    #[test]
    fn round_trips_and_detects_a_torn_tail() {
        let mut buf = Vec::new();
        encode("\"a\"", &mut buf);
        encode("\"b\"", &mut buf);
        let (read, got) = read_all(&buf);
        assert_eq!(got, ["a", "b"]);
        let read = read.unwrap();
        assert_eq!((read.consumed, read.torn), (buf.len() as u64, false));

        // Half a record without its newline is simply not consumed.
        let mut torn = buf.clone();
        torn.extend_from_slice(b"deadbeef \"c");
        let (read, got) = read_all(&torn);
        assert_eq!(got.len(), 2);
        let read = read.unwrap();
        assert_eq!((read.consumed, read.torn), (buf.len() as u64, true));

        // A damaged last line is a torn tail; a damaged middle line is corruption.
        let mut bad_last = buf.clone();
        bad_last.extend_from_slice(b"00000000 \"c\"\n");
        let (read, got) = read_all(&bad_last);
        assert_eq!(got.len(), 2);
        assert!(read.unwrap().torn);
        let mut bad_mid = buf.clone();
        bad_mid.extend_from_slice(b"00000000 \"c\"\n");
        bad_mid.extend_from_slice(&buf);
        let (read, _) = read_all(&bad_mid);
        assert!(
            matches!(read, Err(ReadError::Corrupt { line: 3 })),
            "{read:?}"
        );
    }

    #[test]
    fn read_from_decodes_after_an_offset_and_reports_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut buf = Vec::new();
        encode("1", &mut buf);
        let first = buf.len() as u64;
        encode("2", &mut buf);
        encode("3", &mut buf);
        buf.extend_from_slice(b"0000");
        std::fs::write(&path, &buf).unwrap();
        let mut got = Vec::new();
        let read = read_from(&path, first, 2, |n: u32| got.push(n)).unwrap();
        assert_eq!(got, [2, 3]);
        assert_eq!(read.records, 2);
        assert_eq!(read.consumed, buf.len() as u64 - first - 4);
        assert!(read.torn);
        // A record that is not the expected type names its line.
        let err = read_from(&path, 0, 1, |_: String| {}).unwrap_err();
        assert!(matches!(err, ReadError::BadRecord { line: 1, .. }), "{err}");
    }
}
