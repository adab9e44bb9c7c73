//! Line framing of the store file: `<crc32 hex> <json>\n` per record.
//!
//! A record is whole only when its newline is on disk and its CRC matches.
//! Only the tail can be torn (a crash mid-append); anything else that fails
//! to verify is corruption and is reported with its line number.

#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Whole(&'a str),
    /// An incomplete or damaged last line: safe to cut off.
    TornTail,
    Corrupt {
        line: usize,
    },
}

pub fn encode(json: &str, out: &mut Vec<u8>) {
    let crc = crc32fast::hash(json.as_bytes());
    out.extend_from_slice(format!("{crc:08x} ").as_bytes());
    out.extend_from_slice(json.as_bytes());
    out.push(b'\n');
}

/// Splits `buf` into frames. `first_line` numbers lines for error messages.
/// Returns the frames and the number of bytes that ended in a newline.
pub fn decode(buf: &[u8], first_line: usize) -> (Vec<Frame<'_>>, usize) {
    let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut frames = Vec::new();
    let lines: Vec<&[u8]> = buf[..complete].split(|&b| b == b'\n').collect();
    let n = lines.len().saturating_sub(1); // split leaves "" after the last \n
    for (i, line) in lines.into_iter().take(n).enumerate() {
        let last = i + 1 == n && complete == buf.len();
        match verify(line) {
            Some(json) => frames.push(Frame::Whole(json)),
            None if last => frames.push(Frame::TornTail),
            None => frames.push(Frame::Corrupt {
                line: first_line + i,
            }),
        }
    }
    (frames, complete)
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
    use std::io::{Read as _, Seek, SeekFrom};
    let mut buf = Vec::new();
    let mut file = std::fs::File::open(path).map_err(ReadError::Io)?;
    file.seek(SeekFrom::Start(offset)).map_err(ReadError::Io)?;
    file.read_to_end(&mut buf).map_err(ReadError::Io)?;
    let (frames, complete) = decode(&buf, first_line);
    let mut read = Read {
        consumed: 0,
        records: 0,
        torn: complete < buf.len(),
    };
    for frame in frames {
        match frame {
            Frame::Whole(json) => {
                if !f(first_line + read.records, json)? {
                    break;
                }
                read.consumed += (json.len() + FRAME_OVERHEAD) as u64;
                read.records += 1;
            }
            Frame::TornTail => read.torn = true,
            Frame::Corrupt { line } => return Err(ReadError::Corrupt { line }.into()),
        }
    }
    Ok(read)
}

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

    #[test]
    fn round_trips_and_detects_a_torn_tail() {
        let mut buf = Vec::new();
        encode("{\"a\":1}", &mut buf);
        encode("{\"b\":2}", &mut buf);
        let (frames, used) = decode(&buf, 1);
        assert_eq!(
            frames,
            vec![Frame::Whole("{\"a\":1}"), Frame::Whole("{\"b\":2}")]
        );
        assert_eq!(used, buf.len());

        // Half a record without its newline is simply not consumed.
        let mut torn = buf.clone();
        torn.extend_from_slice(b"deadbeef {\"c\"");
        let (frames, used) = decode(&torn, 1);
        assert_eq!(frames.len(), 2);
        assert_eq!(used, buf.len());

        // A damaged last line is a torn tail; a damaged middle line is corruption.
        let mut bad_last = buf.clone();
        bad_last.extend_from_slice(b"00000000 {}\n");
        assert_eq!(decode(&bad_last, 1).0[2], Frame::TornTail);
        let mut bad_mid = b"00000000 {}\n".to_vec();
        bad_mid.extend_from_slice(&buf);
        assert_eq!(decode(&bad_mid, 1).0[0], Frame::Corrupt { line: 1 });
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
