//! `clickedge log tail`: the local click log as the contract's JSON lines.
//!
//! The log on disk is binary ([`super::record`]); this prints each record
//! as the JSON line Kafka would get, so `tail -f`-style inspection and
//! `jq` keep working. It only reads: it may run beside `serve`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::record::Record;
use super::segments::{self, Position, Tail};

/// How often `--follow` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// What `log tail` prints.
#[derive(Debug, Clone, Copy)]
pub struct TailOptions {
    /// The last this many records (`None`: all of them).
    pub last: Option<usize>,
    /// Keep printing records as they are written, until interrupted.
    pub follow: bool,
}

/// Prints the log under `data_dir` to `out`; `edge_node` fills the JSON's
/// `edge_node` (a record does not carry it: a log is one node's).
pub fn tail(
    data_dir: &Path,
    edge_node: &str,
    opts: TailOptions,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let dir = data_dir.join(segments::DIR_NAME);
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no click log at {}", dir.display()),
        ));
    }
    let mut line = Vec::with_capacity(1024);
    let mut print = |payload: &[u8], out: &mut dyn Write| -> std::io::Result<()> {
        line.clear();
        match Record::decode(payload) {
            Ok(r) => r.write_json(edge_node, &mut line),
            Err(e) => {
                line.extend_from_slice(b"{\"error\":");
                line.extend_from_slice(serde_json::to_string(&e.to_string())?.as_bytes());
                line.push(b'}');
            }
        }
        line.push(b'\n');
        out.write_all(&line)
    };
    let mut kept: VecDeque<Vec<u8>> = VecDeque::new();
    let mut failed = None;
    let end = segments::read_from(&dir, Position::default(), |payload, _| {
        if failed.is_some() {
            return;
        }
        match opts.last {
            Some(0) => {}
            Some(n) => {
                if kept.len() == n {
                    kept.pop_front();
                }
                kept.push_back(payload.to_vec());
            }
            None => {
                if let Err(e) = print(payload, out) {
                    failed = Some(e);
                }
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    for payload in &kept {
        print(payload, out)?;
    }
    out.flush()?;
    if !opts.follow {
        return Ok(());
    }
    let mut tail = Tail::new(&dir, end);
    loop {
        let mut result = Ok(());
        let n = tail.read(usize::MAX, |payload, _| {
            result = print(payload, out);
            result.is_ok()
        })?;
        result?;
        if n == 0 {
            out.flush()?;
            std::thread::sleep(FOLLOW_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_prints_the_last_records_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) =
            super::super::spawn_writer(super::super::writer::tests::config(dir.path()), vec![])
                .unwrap();
        for _ in 0..3 {
            log.record(super::super::writer::tests::click()).await;
        }
        writer.shutdown().unwrap();
        let mut out = Vec::new();
        let opts = TailOptions {
            last: Some(2),
            follow: false,
        };
        tail(dir.path(), "node-7", opts, &mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["code"], "abc");
        assert_eq!(lines[0]["edge_node"], "node-7");
        assert_eq!(lines[1]["v"], 1);
    }
}
