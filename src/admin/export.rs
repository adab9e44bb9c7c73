//! `GET /v1/export/clicks` and `GET /v1/export/conversions`: a tenant's own
//! records over a time range, streamed as NDJSON (or CSV on
//! `Accept: text/csv`), in embedded mode.
//!
//! Owns the export answer only. Clicks are read from the local click log
//! (`clicklog::segments`), conversions from the postback ledger file
//! (`postback::ledger`), each on a blocking thread that hands the answer
//! to hyper in chunks of about [`CHUNK_BYTES`] through a channel of
//! [`CHUNKS_IN_FLIGHT`]: memory stays constant whatever the range, and a
//! client that reads slowly slows the reader instead of filling memory. A
//! client that goes away stops the reader at its next chunk.
//!
//! Scope: a tenant token exports its own tenant; an admin token must name
//! one with `tenant=` (an export is one tenant's data, never a mix). A
//! read error after the answer has begun aborts the body (the client sees
//! a truncated transfer, never a silently short file).

use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use hyper::body::Frame;
use serde::Serialize;
use tokio::sync::mpsc;

use super::auth::Principal;
use super::error::ApiError;
use crate::clicklog::record::Record;
use crate::clicklog::segments::{self, Position, Tail};
use crate::clicks::Rfc3339Millis;
use crate::postback::ledger::{LedgerRecord, FILE_NAME as LEDGER_FILE};
use crate::postback::Outcome;
use crate::time::{parse_range_bound, RangeEnd};

/// About this many bytes are handed to hyper at a time.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks produced ahead of the client.
pub const CHUNKS_IN_FLIGHT: usize = 4;
/// Exports streaming at once; more are answered 503 `too_many_exports`
/// (each holds a blocking-pool thread while it streams).
pub const MAX_CONCURRENT: usize = 4;
/// Exports streaming now.
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of the [`MAX_CONCURRENT`] slots, given back when dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        use std::sync::atomic::Ordering;
        RUNNING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CONCURRENT).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Records read from the log between checks that the client is still there.
const RECORDS_PER_READ: usize = 4096;

/// Which records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Clicks,
    Conversions,
}

/// How they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    /// CSV when the client asks for `text/csv`, else NDJSON.
    pub fn from_headers(headers: &HeaderMap) -> Format {
        let wants_csv = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv"))
            });
        if wants_csv {
            Format::Csv
        } else {
            Format::Ndjson
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// What one export covers: one tenant, `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub tenant: String,
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Scope {
    fn covers(&self, tenant: &str, ts_ms: i64) -> bool {
        tenant == self.tenant && ts_ms >= self.from_ms && ts_ms < self.to_ms
    }
}

/// Reads `tenant`, `from` and `to` (default: everything up to now).
pub fn scope(who: &Principal, query: Option<&str>) -> Result<Scope, ApiError> {
    let (mut tenant, mut from, mut to) = (None, None, None);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "tenant" => tenant = Some(v.into_owned()),
            "from" => from = Some(bound(&v, RangeEnd::From, "from")?),
            "to" => to = Some(bound(&v, RangeEnd::To, "to")?),
            _ => {}
        }
    }
    let tenant = match (&who.tenant, tenant) {
        (Some(own), None) => own.clone(),
        (Some(own), Some(asked)) if *own == asked => asked,
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_tenant",
                "a tenant token can only export its own tenant",
            ))
        }
        (None, Some(asked)) if !asked.is_empty() => asked,
        (None, _) => {
            return Err(ApiError::bad_query(
                "an admin token exports one tenant: name it with tenant=",
            ))
        }
    };
    let to = to.unwrap_or_else(|| crate::time::now_ms() + 1);
    let from = from.unwrap_or(0);
    if from >= to {
        return Err(ApiError::bad_query("from must be before to"));
    }
    Ok(Scope {
        tenant,
        from_ms: from,
        to_ms: to,
    })
}

fn bound(v: &str, end: RangeEnd, name: &str) -> Result<i64, ApiError> {
    parse_range_bound(v, end).ok_or_else(|| {
        ApiError::bad_query(format!(
            "{name} must be an RFC 3339 timestamp or a YYYY-MM-DD date"
        ))
    })
}

/// What the reader needs, owned (it runs on its own thread).
pub struct Source {
    pub data_dir: PathBuf,
    pub edge_node: String,
    /// Its click lookup finds the link of a conversion recorded before
    /// its click was.
    pub ledger: std::sync::Arc<crate::postback::Ledger>,
}

/// Starts the export and answers with its streaming body; 503 when
/// [`MAX_CONCURRENT`] exports are streaming already.
pub fn start(
    source: Source,
    kind: Kind,
    format: Format,
    scope: Scope,
) -> Result<Response<ExportBody>, ApiError> {
    let slot = Slot::take().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_exports",
            format!("{MAX_CONCURRENT} exports are streaming already; retry when one is done"),
        )
    })?;
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let chunks = ChunkWriter::new(tx.clone());
        let columns = match kind {
            Kind::Clicks => CLICK_COLUMNS,
            Kind::Conversions => CONVERSION_COLUMNS,
        };
        let result = Out::new(chunks, format, columns).and_then(|mut out| {
            match kind {
                Kind::Clicks => write_clicks(&source, &scope, &mut out)?,
                Kind::Conversions => write_conversions(&source, &scope, &mut out)?,
            }
            out.finish()
        });
        match result {
            Ok(()) => {}
            // The client went away: nobody to tell.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                tracing::warn!(error = %e, ?kind, "export: read failed; aborting the answer");
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    let mut resp = Response::new(ExportBody { rx });
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(resp)
}

/// The streamed answer: chunks as the reader makes them.
pub struct ExportBody {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
}

impl hyper::body::Body for ExportBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(Frame::data)))
    }
}

/// Collects output into chunks and hands each to the body; a closed body
/// (the client left) is `BrokenPipe`.
struct ChunkWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<std::io::Result<Bytes>>) -> ChunkWriter {
        ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES * 2),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::copy_from_slice(&self.buf);
        self.buf.clear();
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }

    /// Whether the client is still reading.
    fn open(&self) -> bool {
        !self.tx.is_closed()
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Where rows go: JSON lines, or CSV rows (the header written first, so
/// an empty export is still a CSV file with its columns).
enum Out {
    Json { out: ChunkWriter, line: Vec<u8> },
    Csv(Box<csv::Writer<ChunkWriter>>),
}

impl Out {
    fn new(out: ChunkWriter, format: Format, columns: &[&str]) -> std::io::Result<Out> {
        Ok(match format {
            Format::Ndjson => Out::Json {
                out,
                line: Vec::with_capacity(1024),
            },
            Format::Csv => {
                let mut w = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(out);
                w.write_record(columns).map_err(std::io::Error::other)?;
                Out::Csv(Box::new(w))
            }
        })
    }

    /// Whether the client is still reading.
    fn open(&self) -> bool {
        match self {
            Out::Json { out, .. } => out.open(),
            Out::Csv(w) => w.get_ref().open(),
        }
    }

    /// One JSON line made by `json`, or one CSV row of `row()`.
    fn row<R: Serialize>(
        &mut self,
        json: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
        row: impl FnOnce() -> R,
    ) -> std::io::Result<()> {
        match self {
            Out::Json { out, line } => {
                line.clear();
                json(line)?;
                line.push(b'\n');
                out.write_all(line)
            }
            Out::Csv(w) => w.serialize(row()).map_err(csv_io),
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Out::Json { mut out, .. } => out.flush(),
            Out::Csv(w) => w.into_inner().map_err(|e| e.into_error())?.flush(),
        }
    }
}

/// A CSV error as I/O, keeping a closed body recognisable.
fn csv_io(e: csv::Error) -> std::io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

/// Every click of the scope in the local log, in log order.
fn write_clicks(source: &Source, scope: &Scope, out: &mut Out) -> std::io::Result<()> {
    let dir = source.data_dir.join(segments::DIR_NAME);
    let first = match segments::list(&dir) {
        Ok(seqs) => seqs.first().copied(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let Some(first) = first else {
        return Ok(());
    };
    let mut tail = Tail::new(
        &dir,
        Position {
            segment: first,
            offset: 0,
        },
    );
    let mut hex = [0u8; 32];
    let mut failed = None;
    loop {
        let n = tail.read(RECORDS_PER_READ, |payload, _| {
            let Ok(r) = Record::decode(payload) else {
                // Unreadable records are counted by the log's other readers.
                return true;
            };
            if !scope.covers(r.tenant, r.ts_ms) {
                return true;
            }
            let written = out.row(
                |line| {
                    r.write_json(&source.edge_node, line);
                    Ok(())
                },
                || {
                    hex::encode_to_slice(r.ip_digest, &mut hex).expect("32 hex chars");
                    let ip = std::str::from_utf8(&hex).expect("hex is ASCII");
                    r.to_wire(&source.edge_node, ip)
                },
            );
            match written {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if n == 0 {
            return Ok(());
        }
        if !out.open() {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
    }
}

/// Columns of a click row: the fields of the click event, in its order.
const CLICK_COLUMNS: &[&str] = &[
    "v",
    "click_id",
    "ts",
    "tenant",
    "code",
    "destination",
    "ip_hash",
    "user_agent",
    "referer",
    "sub",
    "bot",
    "bot_reason",
    "edge_node",
    "salt_epoch",
    "country",
    "device",
    "os",
    "rule",
    "variant",
];

/// A conversion row (CSV): the ledger record's fields, flat.
#[derive(Serialize)]
struct ConversionRow<'a> {
    id: &'a str,
    outcome: Outcome,
    network: &'a str,
    txn_id: &'a str,
    status: Option<crate::postback::Status>,
    payout: String,
    currency: &'a str,
    click_id: &'a str,
    click_ts: Option<Rfc3339Millis>,
    code: &'a str,
    tenant: &'a str,
    received_at: Rfc3339Millis,
    occurred_at: Option<Rfc3339Millis>,
    reason: &'a str,
    edge_node: &'a str,
}

const CONVERSION_COLUMNS: &[&str] = &[
    "id",
    "outcome",
    "network",
    "txn_id",
    "status",
    "payout",
    "currency",
    "click_id",
    "click_ts",
    "code",
    "tenant",
    "received_at",
    "occurred_at",
    "reason",
    "edge_node",
];

/// Every conversion record of the scope in the ledger: `accepted`,
/// `status_change`, `duplicate` and `unknown_click` records (the others
/// name no click of anyone's), by the time they were received. A record
/// kept before its click was seen is the tenant's once the click is.
fn write_conversions(source: &Source, scope: &Scope, out: &mut Out) -> std::io::Result<()> {
    let path = source.data_dir.join(LEDGER_FILE);
    if !path.exists() {
        return Ok(());
    }
    let mut seen = 0usize;
    let read = crate::store::record_log::read_raw_from(&path, 0, 1, |_, json| {
        seen += 1;
        if seen.is_multiple_of(RECORDS_PER_READ) && !out.open() {
            return Err(ExportError::Io(std::io::ErrorKind::BrokenPipe.into()));
        }
        let Ok(mut rec) = serde_json::from_str::<LedgerRecord>(json) else {
            return Ok(true);
        };
        if !matches!(
            rec.outcome,
            Outcome::Accepted | Outcome::StatusChange | Outcome::Duplicate | Outcome::UnknownClick
        ) {
            return Ok(true);
        }
        if rec.tenant.is_none() {
            if let (Some(id), Some(ts)) = (&rec.click_id, rec.click_ts) {
                if let Some(click) = source.ledger.clicks().find(id, ts.0) {
                    rec.code = Some(click.link.code().to_owned());
                    rec.tenant = Some(click.link.tenant().to_owned());
                }
            }
        }
        let Some(tenant) = rec.tenant.as_deref() else {
            return Ok(true);
        };
        if !scope.covers(tenant, rec.received_at.0) {
            return Ok(true);
        }
        let written = out.row(
            |line| serde_json::to_writer(line, &rec).map_err(std::io::Error::other),
            || ConversionRow {
                id: rec.id.as_deref().unwrap_or(""),
                outcome: rec.outcome,
                network: &rec.network,
                txn_id: rec.txn_id.as_deref().unwrap_or(""),
                status: rec.status,
                payout: rec.payout.map(|p| p.to_string()).unwrap_or_default(),
                currency: rec.currency.as_deref().unwrap_or(""),
                click_id: rec.click_id.as_deref().unwrap_or(""),
                click_ts: rec.click_ts,
                code: rec.code.as_deref().unwrap_or(""),
                tenant,
                received_at: rec.received_at,
                occurred_at: rec.occurred_at,
                reason: rec.reason.as_deref().unwrap_or(""),
                edge_node: &rec.edge_node,
            },
        );
        written.map(|()| true).map_err(ExportError::Io)
    });
    match read {
        Ok(_) => {}
        Err(ExportError::Io(e)) => return Err(e),
        Err(ExportError::Read(e)) => return Err(std::io::Error::other(e)),
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Read(#[from] crate::store::record_log::ReadError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_click_columns_are_the_event_fields() {
        let event = r#"{"v":1,"click_id":"c","ts":"2026-12-04T00:00:00.000Z","tenant":"t","code":"x",
            "destination":"https://d.example/","ip_hash":"00","user_agent":"","referer":"","sub":"",
            "bot":false,"bot_reason":null,"edge_node":"n","salt_epoch":1}"#;
        let wire: crate::clicks::WireClick<'_> = serde_json::from_str(event).unwrap();
        let value = serde_json::to_value(&wire).unwrap();
        let mut fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut columns = CLICK_COLUMNS.to_vec();
        fields.sort_unstable();
        columns.sort_unstable();
        assert_eq!(
            fields, columns,
            "a CSV row must have one column per event field"
        );
    }
}
