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
}
