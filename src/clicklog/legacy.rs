//! The click log as older versions wrote it, one JSON line per click in
//! `<seq>.jsonl`, converted to binary segments when the log is opened.
//!
//! Each `.jsonl` segment becomes the `.log` segment of the same number
//! (written whole, synced, then the old file removed), so a conversion cut
//! short by a crash is simply done again. Offsets change with the format:
//! positions saved against the old files (the stats checkpoint, the
//! shipper's confirmed position) carry no format mark, and their owners
//! treat them as the start of their segment (stats recount, the shipper
//! re-sends that segment; ClickHouse removes the duplicates by click id).

use std::path::Path;

use super::record::encode_wire;
use super::segments::{self, frame, segment_path, DIR_NAME};
use crate::clicks::WireClick;

const OLD_SUFFIX: &str = ".jsonl";

/// Converts every old segment in `data_dir`'s click log; returns how many.
pub fn convert(data_dir: &Path) -> std::io::Result<usize> {
    let dir = data_dir.join(DIR_NAME);
    let old = segments::list_with_suffix(&dir, OLD_SUFFIX)?;
    for &seq in &old {
        let path = dir.join(format!("{seq:020}{OLD_SUFFIX}"));
        let text = std::fs::read(&path)?;
        let (mut out, mut payload) = (Vec::with_capacity(text.len()), Vec::new());
        let (mut converted, mut unreadable) = (0u64, 0u64);
        // A last line without its newline was an interrupted write.
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in text[..whole]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            match serde_json::from_slice::<WireClick<'_>>(line) {
                Ok(ev) => {
                    payload.clear();
                    encode_wire(&ev, &mut payload);
                    frame(&payload, &mut out);
                    converted += 1;
                }
                Err(_) => unreadable += 1,
            }
        }
        crate::fsutil::write_atomic(&segment_path(&dir, seq), &out)?;
        std::fs::remove_file(&path)?;
        crate::fsutil::sync_parent(&path)?;
        tracing::info!(
            segment = seq,
            converted,
            unreadable,
            "clicklog: converted a JSON-lines segment to the binary format"
        );
    }
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clicklog::record::Record;

    #[test]
    fn an_old_json_log_becomes_binary_segments_with_the_same_clicks() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(DIR_NAME);
        std::fs::create_dir_all(&log).unwrap();
        let line = |id: &str| {
            format!(
                r#"{{"v":1,"click_id":"{id}","ts":"2026-09-21T14:13:20.123Z","tenant":"acme","code":"abc","destination":"https://example.com/","ip_hash":"{}","user_agent":"UA","referer":"","sub":"s","bot":true,"bot_reason":"head","edge_node":"n","salt_epoch":3}}"#,
                "ab".repeat(16)
            )
        };
        let old = format!("{}\n{}\n{{\"torn", line("one"), line("two"));
        std::fs::write(log.join("00000000000000000002.jsonl"), old).unwrap();
        assert_eq!(convert(dir.path()).unwrap(), 1);
        assert_eq!(convert(dir.path()).unwrap(), 0, "done once");
        let mut ids = Vec::new();
        segments::read_from(&log, Default::default(), |p, _| {
            let r = Record::decode(p).unwrap();
            assert_eq!(r.bot, Some(crate::clicks::BotReason::Head));
            assert_eq!((r.salt_epoch, r.ip_digest), (3, [0xab; 16]));
            ids.push(r.click_id.to_owned());
        })
        .unwrap();
        assert_eq!(ids, ["one", "two"]);
        assert_eq!(segments::list(&log).unwrap(), [2]);
    }
}
