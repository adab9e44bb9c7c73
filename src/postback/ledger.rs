//! The postback ledger: one record per postback, durable before a 200, and
//! the idempotency index that makes retries `duplicate`s.
//!
//! Embedded mode keeps it in `<data_dir>/postbacks.ledger`, framed like the
//! store (`<crc32> <json>\n`): a torn tail is cut at start-up, damage in the
//! middle stops start-up. Each record is the `"v":1` conversion event a
//! full-mode `clickedge.conversions` topic carries.
//!
//! Order of checks for a postback whose fields parsed: the click id's tag
//! (forged → `forged_click`, no lookup), the attribution window (the click
//! time is in the id), the idempotency key (network, txn_id, status), and
//! only then the click lookup. The lookup runs outside the ledger's mutex
//! (in full mode it may ask ClickHouse); the final decision and the append
//! happen under it, with the idempotency key checked again, so 100
//! identical postbacks at once give exactly one `accepted`.
//! Records that answer 200 are fsynced before the answer; the others
//! (`bad_auth`, `malformed`, `forged_click`, `out_of_window`) are written
//! at once but synced with the next durable record, so a flood of junk
//! cannot turn into a flood of fsyncs.
//!
//! In memory the ledger keeps one entry per conversion (network, txn_id):
//! its latest status, payout and currency (latest wins), the statuses seen
//! (the idempotency index), the click and link, and counts per outcome;
//! plus per-network, per-day counts of the records that carry no conversion.
//! About 200 bytes per conversion; the file is replayed at start-up.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::decimal::Decimal;
use super::networks::Network;
use super::params::Fields;
use super::{ClickLookup, LedgerSink, Outcome, Status};
use crate::clicks::id::Verdict;
use crate::clicks::{ClickIds, Rfc3339Millis};
use crate::store::record_log;

pub const FILE_NAME: &str = "postbacks.ledger";
pub const RECORD_VERSION: u8 = 1;
pub const DAY_MS: i64 = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file could not be read back: I/O, a corrupt line (not a torn
    /// tail), or a record that does not decode.
    #[error("ledger {path}: {source}")]
    Read {
        path: PathBuf,
        source: record_log::ReadError,
    },
}

/// One ledger entry; also the `clickedge.conversions` event (schema v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRecord {
    pub v: u8,
    /// Random, unique per record: re-deliveries of the record through Kafka
    /// share it, so ClickHouse counts the record once. Absent in records
    /// written before ids existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outcome: Outcome,
    pub network: String,
    pub txn_id: Option<String>,
    pub status: Option<Status>,
    pub payout: Option<Decimal>,
    pub currency: Option<String>,
    pub click_id: Option<String>,
    /// Time carried in the (verified) click id.
    pub click_ts: Option<Rfc3339Millis>,
    pub code: Option<String>,
    pub tenant: Option<String>,
    pub received_at: Rfc3339Millis,
    pub occurred_at: Option<Rfc3339Millis>,
    /// Why, for every outcome but `accepted` (never a secret).
    pub reason: Option<String>,
    pub edge_node: String,
}

/// What a postback amounted to before the ledger saw it.
#[derive(Debug)]
pub enum Submission {
    /// Refused before its fields were read (`bad_auth`, `malformed`).
    Refused {
        outcome: Outcome,
        reason: String,
    },
    Fields(Fields),
}

/// The ledger's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub reason: Option<String>,
}

/// One conversion: everything the ledger says about (network, txn_id).
#[derive(Debug, Clone)]
pub struct Conversion {
    pub network: String,
    pub txn_id: String,
    pub click_id: String,
    pub click_ts_ms: i64,
    /// When the first postback for it was received: its reconciliation day.
    pub first_ms: i64,
    pub status: Status,
    pub payout: Decimal,
    pub currency: String,
    pub code: Option<String>,
    pub tenant: Option<String>,
    /// Statuses recorded (the idempotency index), one bit each.
    pub(super) seen: u8,
    /// Records per outcome (accepted, status_change, duplicate, unknown_click).
    pub counts: [u64; 8],
}

/// The ledger's in-memory view, rebuilt from the file at start-up.
#[derive(Default)]
pub struct State {
    pub conversions: HashMap<(String, String), Conversion>,
    /// Records that carry no conversion, per (network, day): counts per outcome.
    pub refused: BTreeMap<(String, i64), [u64; 8]>,
}

impl State {
    fn apply(&mut self, rec: &LedgerRecord) {
        let received = rec.received_at.0;
        let o = rec.outcome as usize;
        let conversion_key = || Some((rec.network.clone(), rec.txn_id.clone()?));
        match rec.outcome {
            Outcome::Accepted | Outcome::StatusChange | Outcome::UnknownClick => {
                let (Some(key), Some(status)) = (conversion_key(), rec.status) else {
                    return;
                };
                let c = self.conversions.entry(key).or_insert_with(|| Conversion {
                    network: rec.network.clone(),
                    txn_id: rec.txn_id.clone().unwrap_or_default(),
                    click_id: rec.click_id.clone().unwrap_or_default(),
                    click_ts_ms: rec.click_ts.map_or(0, |t| t.0),
                    first_ms: received,
                    status,
                    payout: Decimal::ZERO,
                    currency: String::new(),
                    code: None,
                    tenant: None,
                    seen: 0,
                    counts: [0; 8],
                });
                c.seen |= status.bit();
                c.status = status;
                c.payout = rec.payout.unwrap_or_default();
                c.currency = rec.currency.clone().unwrap_or_default();
                if rec.code.is_some() {
                    c.code = rec.code.clone();
                    c.tenant = rec.tenant.clone();
                }
                c.counts[o] += 1;
            }
            Outcome::Duplicate => {
                if let Some(c) = conversion_key().and_then(|k| self.conversions.get_mut(&k)) {
                    c.counts[o] += 1;
                }
            }
            _ => {
                let day = received.div_euclid(DAY_MS);
                self.refused
                    .entry((rec.network.clone(), day))
                    .or_insert([0; 8])[o] += 1;
            }
        }
    }

    /// Looks up again the clicks of conversions that had none: a click
    /// recorded after its postback is matched here (`unknown_click`
    /// re-matched on read).
    pub fn rematch(&mut self, clicks: &dyn ClickLookup) {
        for c in self.conversions.values_mut().filter(|c| c.code.is_none()) {
            if let Some(click) = clicks.find(&c.click_id, c.click_ts_ms) {
                c.code = Some(click.link.code().to_owned());
                c.tenant = Some(click.link.tenant().to_owned());
            }
        }
    }
}

/// How far a network's clock may be off ours (the signature's `t` has the
/// same tolerance): an `occurred_at` beyond it either way is refused.
pub const CLOCK_SKEW_TOLERANCE_MS: i64 = 300_000;

/// Why `occurred_at` cannot be true, if it cannot: in the future beyond
/// the clock-skew tolerance, or before the click it converts (by more
/// than the tolerance: the network's clock may run behind ours).
fn implausible_time(occurred_ms: i64, click_ts: i64, now_ms: i64) -> Option<String> {
    let tol = CLOCK_SKEW_TOLERANCE_MS;
    if occurred_ms > now_ms.saturating_add(tol) {
        return Some(format!(
            "clock_skew: occurred_at is {} s in the future, beyond the {} s clock-skew tolerance",
            (occurred_ms - now_ms) / 1000,
            tol / 1000
        ));
    }
    if occurred_ms < click_ts.saturating_sub(tol) {
        return Some(format!(
            "before_click: occurred_at is {} s before the click it converts (tolerance {} s)",
            (click_ts - occurred_ms) / 1000,
            tol / 1000
        ));
    }
    None
}

/// A postback found to repeat a recorded (network, txn_id, status).
struct Duplicate {
    code: Option<String>,
    tenant: Option<String>,
    reason: String,
}

impl Duplicate {
    fn applied_to(self, mut rec: LedgerRecord) -> LedgerRecord {
        rec.outcome = Outcome::Duplicate;
        rec.code = self.code;
        rec.tenant = self.tenant;
        rec.reason = Some(self.reason);
        rec
    }
}

/// The embedded sink: the ledger file.
pub struct FileSink {
    path: PathBuf,
    file: File,
    len: u64,
    unsynced: bool,
}

impl LedgerSink for FileSink {
    fn append(&mut self, json: &str, durable: bool) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(json.len() + 10);
        record_log::encode(json, &mut buf);
        if let Err(e) = self.file.write_all(&buf) {
            // Cut a partial write so the file stays whole lines.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        if durable {
            if let Err(e) = self.file.sync_data() {
                // Answered 503 ("nothing recorded"): make it so, or the
                // network's retry would be a second record of one postback.
                let _ = self.file.set_len(self.len);
                return Err(e);
            }
            self.unsynced = false;
        } else {
            self.unsynced = true;
        }
        self.len += buf.len() as u64;
        Ok(())
    }
}

impl FileSink {
    /// Opens the ledger file, replaying every record into `state`.
    fn open(data_dir: &Path, state: &mut State) -> Result<FileSink, LedgerError> {
        let path = data_dir.join(FILE_NAME);
        let io = |source| LedgerError::Io {
            path: path.clone(),
            source,
        };
        let file = crate::fsutil::open_private_append(&path).map_err(io)?;
        let read = record_log::read_from(&path, 0, 1, |rec: LedgerRecord| state.apply(&rec))
            .map_err(|source| LedgerError::Read {
                path: path.clone(),
                source,
            })?;
        let (kept, torn) = (read.consumed, read.torn);
        if torn {
            tracing::warn!(path = %path.display(), "ledger: cutting off a torn record at the tail");
            file.set_len(kept).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok(FileSink {
            path,
            file,
            len: kept,
            unsynced: false,
        })
    }

    /// Syncs records written without `durable` (at shutdown).
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }
}

struct Inner {
    sink: FileSink,
    state: State,
}

pub struct Ledger {
    inner: Mutex<Inner>,
    /// `[retention] days` in ms: a click older than that is out of window
    /// whatever the network's window, as its records may be gone.
    retention_ms: std::sync::atomic::AtomicI64,
    clicks: Arc<dyn ClickLookup>,
    ids: ClickIds,
    edge_node: String,
}

impl Ledger {
    pub fn open(
        data_dir: &Path,
        clicks: Arc<dyn ClickLookup>,
        ids: ClickIds,
        edge_node: String,
    ) -> Result<Ledger, LedgerError> {
        let mut state = State::default();
        let sink = FileSink::open(data_dir, &mut state)?;
        tracing::info!(
            conversions = state.conversions.len(),
            path = %sink.path.display(),
            "ledger: loaded"
        );
        Ok(Ledger {
            inner: Mutex::new(Inner { sink, state }),
            retention_ms: std::sync::atomic::AtomicI64::new(i64::MAX),
            clicks,
            ids,
            edge_node,
        })
    }

    /// Sets the retention window (`[retention] days`).
    pub fn set_retention(&self, window: std::time::Duration) {
        let ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        self.retention_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn clicks(&self) -> &dyn ClickLookup {
        &*self.clicks
    }

    /// Decides and records one postback. Blocking (file I/O): call it off
    /// the async workers. An error means nothing was recorded: answer 503
    /// so the network retries.
    pub fn process(
        &self,
        network: &Network,
        submission: Submission,
        now_ms: i64,
    ) -> std::io::Result<Decision> {
        let mut rec = LedgerRecord {
            v: RECORD_VERSION,
            id: Some(format!("{:032x}", rand::random::<u128>())),
            outcome: Outcome::Malformed,
            network: network.name.clone(),
            txn_id: None,
            status: None,
            payout: None,
            currency: None,
            click_id: None,
            click_ts: None,
            code: None,
            tenant: None,
            received_at: Rfc3339Millis(now_ms),
            occurred_at: None,
            reason: None,
            edge_node: self.edge_node.clone(),
        };
        let fields = match submission {
            Submission::Refused { outcome, reason } => {
                rec.outcome = outcome;
                rec.reason = Some(reason);
                return self.record(rec);
            }
            Submission::Fields(f) => f,
        };
        rec.txn_id = Some(fields.txn_id.clone());
        rec.status = Some(fields.status);
        rec.payout = Some(fields.payout);
        rec.currency = Some(fields.currency.clone());
        rec.click_id = Some(fields.click_id.clone());
        rec.occurred_at = fields.occurred_at_ms.map(Rfc3339Millis);
        let click_ts = match self.ids.verify(&fields.click_id) {
            Verdict::Genuine { ts_ms } => ts_ms as i64,
            Verdict::Forged => {
                rec.outcome = Outcome::ForgedClick;
                rec.reason = Some("the click id's tag does not verify".into());
                return self.record(rec);
            }
            Verdict::Malformed => {
                rec.outcome = Outcome::ForgedClick;
                rec.reason = Some("not a click id this service issued".into());
                return self.record(rec);
            }
        };
        rec.click_ts = Some(Rfc3339Millis(click_ts));
        if let Some(reason) = fields
            .occurred_at_ms
            .and_then(|t| implausible_time(t, click_ts, now_ms))
        {
            rec.outcome = Outcome::OutOfWindow;
            rec.reason = Some(reason);
            return self.record(rec);
        }
        let window_ms = (network.settings.attribution_window_secs as i64).saturating_mul(1000);
        let converted = fields.occurred_at_ms.unwrap_or(now_ms);
        if converted - click_ts > window_ms {
            rec.outcome = Outcome::OutOfWindow;
            rec.reason = Some(format!(
                "the click is older than the network's {} s attribution window",
                network.settings.attribution_window_secs
            ));
            return self.record(rec);
        }
        let retention_ms = self.retention_ms.load(std::sync::atomic::Ordering::Relaxed);
        if now_ms.saturating_sub(click_ts) > retention_ms {
            // Its earlier records may have been removed: idempotency
            // cannot be told, so it is never counted.
            rec.outcome = Outcome::OutOfWindow;
            rec.reason = Some(format!(
                "the click is older than the {} day retention window",
                retention_ms / DAY_MS
            ));
            return self.record(rec);
        }
        let key = (network.name.clone(), fields.txn_id.clone());
        {
            let mut inner = self.lock();
            // The common retry is answered from memory, without a lookup.
            if let Some(dup) = Self::duplicate(&inner.state, &key, &fields) {
                return Self::append(&mut inner, dup.applied_to(rec));
            }
            // A new status of a conversion already matched to this click
            // keeps its link: no lookup (and no ClickHouse round trip).
            let known = inner.state.conversions.get(&key);
            if let Some(c) = known.filter(|c| c.code.is_some() && c.click_id == fields.click_id) {
                rec.outcome = Outcome::StatusChange;
                rec.code = c.code.clone();
                rec.tenant = c.tenant.clone();
                return Self::append(&mut inner, rec);
            }
        }
        // The lookup may ask ClickHouse (full mode): never under the lock.
        let click = self.clicks.find(&fields.click_id, click_ts);
        let mut inner = self.lock();
        // Decided again under the lock: an identical postback may have
        // been recorded while this one looked its click up.
        if let Some(dup) = Self::duplicate(&inner.state, &key, &fields) {
            return Self::append(&mut inner, dup.applied_to(rec));
        }
        let known = inner.state.conversions.contains_key(&key);
        match click {
            None => {
                rec.outcome = Outcome::UnknownClick;
                rec.reason =
                    Some("no recorded click has this id yet; matched when it arrives".into());
            }
            Some(click) => {
                rec.outcome = if known {
                    Outcome::StatusChange
                } else {
                    Outcome::Accepted
                };
                rec.code = Some(click.link.code().to_owned());
                rec.tenant = Some(click.link.tenant().to_owned());
            }
        }
        Self::append(&mut inner, rec)
    }

    /// The duplicate this postback is, if its (network, txn_id, status)
    /// is recorded already.
    fn duplicate(state: &State, key: &(String, String), fields: &Fields) -> Option<Duplicate> {
        let c = state
            .conversions
            .get(key)
            .filter(|c| c.seen & fields.status.bit() != 0)?;
        Some(Duplicate {
            code: c.code.clone(),
            tenant: c.tenant.clone(),
            reason: format!(
                "already recorded: {} {}",
                fields.txn_id,
                fields.status.as_str()
            ),
        })
    }

    fn record(&self, rec: LedgerRecord) -> std::io::Result<Decision> {
        let mut inner = self.lock();
        Self::append(&mut inner, rec)
    }

    fn append(inner: &mut Inner, rec: LedgerRecord) -> std::io::Result<Decision> {
        let json = serde_json::to_string(&rec).expect("ledger records serialise");
        inner.sink.append(&json, rec.outcome.is_valid())?;
        inner.state.apply(&rec);
        Ok(Decision {
            outcome: rec.outcome,
            reason: rec.reason,
        })
    }

    /// Runs `f` on the state after re-matching unknown clicks.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let mut inner = self.lock();
        inner.state.rematch(&*self.clicks);
        f(&inner.state)
    }

    /// Syncs what is written but not yet durable (shutdown).
    pub fn sync(&self) -> std::io::Result<()> {
        self.lock().sink.sync()
    }

    /// Removes the records received before `cutoff_ms` (retention,
    /// embedded mode only: full mode ships the file by offset). The kept
    /// records are copied to a temporary file, fsynced and renamed over the
    /// ledger, and the in-memory state is rebuilt from them, so a re-sent
    /// postback whose records are gone is decided afresh (by then its click
    /// is past the attribution window: `out_of_window`). Postbacks wait on
    /// the ledger's lock meanwhile. Returns how many records were removed.
    pub fn apply_retention(&self, cutoff_ms: i64) -> Result<usize, LedgerError> {
        let mut inner = self.lock();
        let path = inner.sink.path.clone();
        let io = |source| LedgerError::Io {
            path: path.clone(),
            source,
        };
        let read_err = |source| LedgerError::Read {
            path: path.clone(),
            source,
        };
        inner.sink.sync().map_err(io)?;
        // Records are appended in the order received: look at the first.
        let mut oldest = None;
        record_log::read_raw_from::<record_log::ReadError>(&path, 0, 1, |_, json| {
            oldest = serde_json::from_str::<LedgerRecord>(json)
                .ok()
                .map(|r| r.received_at.0);
            Ok(false)
        })
        .map_err(read_err)?;
        if oldest.is_none_or(|ms| ms >= cutoff_ms) {
            return Ok(0);
        }
        let tmp = path.with_extension("ledger.tmp");
        let mut state = State::default();
        let mut removed = 0usize;
        {
            let file = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(crate::fsutil::PRIVATE_FILE_MODE)
                    .open(&tmp)
                    .map_err(io)?
            };
            let mut out = std::io::BufWriter::new(file);
            let mut failed = None;
            let mut buf = Vec::new();
            // Kept records are copied byte for byte.
            let copied = record_log::read_raw_from(&path, 0, 1, |line, json| {
                let rec: LedgerRecord =
                    serde_json::from_str(json).map_err(|e| record_log::ReadError::BadRecord {
                        line,
                        message: e.to_string(),
                    })?;
                if rec.received_at.0 < cutoff_ms {
                    removed += 1;
                    return Ok(true);
                }
                buf.clear();
                record_log::encode(json, &mut buf);
                if let Err(e) = out.write_all(&buf) {
                    failed = Some(e);
                    return Ok(false);
                }
                state.apply(&rec);
                Ok(true)
            });
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&tmp);
                return Err(read_err(e));
            }
            if let Some(e) = failed {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(e));
            }
            let file = out.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        crate::fsutil::sync_parent(&path).map_err(io)?;
        let file = crate::fsutil::open_private_append(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        inner.sink = FileSink {
            path: path.clone(),
            file,
            len,
            unsynced: false,
        };
        inner.state = state;
        tracing::info!(removed, path = %path.display(), "ledger: records past retention removed");
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::click_index::ClickRef;
    use super::super::networks::{NetworkRecord, NetworkSettings};
    use super::super::sealed::{Field, Sealer};
    use super::*;
    use crate::keys::MasterKey;
    use proptest::prelude::*;

    /// Every click is known, on link `c` of tenant `t`.
    struct AllKnown;

    impl ClickLookup for AllKnown {
        fn find(&self, _id: &str, ts_ms: i64) -> Option<ClickRef> {
            Some(ClickRef {
                link: Arc::new(crate::links::Link::reference("c", "t")),
                ts_ms,
                bot: false,
            })
        }
    }

    const NOW: i64 = 1_790_000_000_000;

    fn network() -> Network {
        let sealer = Sealer::new(&MasterKey::for_tests());
        let now = chrono::Utc::now();
        let rec = NetworkRecord {
            name: "n".into(),
            created_at: now,
            updated_at: now,
            removed: false,
            secret: sealer.seal("n", Field::Secret, b"s"),
            previous_secret: None,
            previous_valid_until: None,
            token: sealer.seal("n", Field::Token, b"t"),
            settings: NetworkSettings::default(),
        };
        Network::open(&rec, &sealer).unwrap()
    }

    fn ledger(dir: &Path) -> Ledger {
        Ledger::open(
            dir,
            Arc::new(AllKnown),
            ClickIds::new(&MasterKey::for_tests()),
            "node".into(),
        )
        .unwrap()
    }

    fn fields(txn: &str, status: Status, payout: &str) -> Submission {
        let ids = ClickIds::new(&MasterKey::for_tests());
        Submission::Fields(Fields {
            click_id: ids.mint(NOW as u64 - 1000).as_str().to_owned(),
            txn_id: txn.into(),
            status,
            payout: Decimal::parse(payout).unwrap(),
            currency: "USD".into(),
            occurred_at_ms: None,
        })
    }

    #[test]
    fn concurrent_identical_postbacks_are_accepted_once() {
        let dir = tempfile::tempdir().unwrap();
        let l = Arc::new(ledger(dir.path()));
        let net = Arc::new(network());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (l, net) = (l.clone(), net.clone());
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| {
                            l.process(&net, fields("x", Status::Approved, "1.00"), NOW)
                                .unwrap()
                                .outcome
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Outcome> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.iter().filter(|o| **o == Outcome::Accepted).count(), 1);
        assert_eq!(
            all.iter().filter(|o| **o == Outcome::Duplicate).count(),
            199
        );
    }

    #[test]
    fn an_occurred_at_in_the_future_or_before_its_click_has_its_own_reason() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path());
        let net = network();
        let at = |txn: &str, occurred: i64| {
            let Submission::Fields(f) = fields(txn, Status::Approved, "1") else {
                unreachable!()
            };
            Submission::Fields(Fields {
                occurred_at_ms: Some(occurred),
                ..f
            })
        };
        let click = NOW - 1000;
        let tol = CLOCK_SKEW_TOLERANCE_MS;
        let future = l.process(&net, at("f", NOW + tol + 1000), NOW).unwrap();
        assert_eq!(future.outcome, Outcome::OutOfWindow);
        assert!(future.reason.unwrap().starts_with("clock_skew:"));
        let early = l.process(&net, at("e", click - tol - 1000), NOW).unwrap();
        assert_eq!(early.outcome, Outcome::OutOfWindow);
        assert!(early.reason.unwrap().starts_with("before_click:"));
        // Within the tolerance either way: accepted.
        for (txn, t) in [("a", NOW + tol), ("b", click - tol), ("c", click)] {
            assert_eq!(
                l.process(&net, at(txn, t), NOW).unwrap().outcome,
                Outcome::Accepted,
                "{txn}"
            );
        }
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.contains("clock_skew:") && text.contains("before_click:"));
    }

    /// Finds every click once; asked again, finds nothing (a ClickHouse
    /// that stopped answering).
    struct FoundOnce(std::sync::atomic::AtomicUsize);

    impl ClickLookup for FoundOnce {
        fn find(&self, id: &str, ts_ms: i64) -> Option<ClickRef> {
            let asked = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (asked == 0).then(|| AllKnown.find(id, ts_ms)).flatten()
        }
    }

    #[test]
    fn a_status_change_keeps_the_link_its_conversion_matched_without_a_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let lookups = Arc::new(FoundOnce(Default::default()));
        let l = Ledger::open(
            dir.path(),
            lookups.clone(),
            ClickIds::new(&MasterKey::for_tests()),
            "node".into(),
        )
        .unwrap();
        let net = network();
        let Submission::Fields(first) = fields("a", Status::Pending, "1") else {
            unreachable!()
        };
        let later = Fields {
            status: Status::Approved,
            ..first.clone()
        };
        let pending = l.process(&net, Submission::Fields(first), NOW).unwrap();
        assert_eq!(pending.outcome, Outcome::Accepted);
        let approved = l.process(&net, Submission::Fields(later), NOW).unwrap();
        assert_eq!(approved.outcome, Outcome::StatusChange);
        assert_eq!(lookups.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        l.read(|s| {
            assert_eq!(
                s.conversions[&("n".into(), "a".into())].code.as_deref(),
                Some("c")
            )
        });
    }

    #[test]
    fn retention_removes_old_records_from_file_and_memory_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let net = network();
        let l = ledger(dir.path());
        l.process(&net, fields("old", Status::Approved, "1"), NOW)
            .unwrap();
        l.process(&net, fields("new", Status::Approved, "2"), NOW + 60_000)
            .unwrap();
        let path = dir.path().join(FILE_NAME);
        let before = std::fs::read(&path).unwrap();
        // Nothing older than the cut-off: the file is left as it is.
        assert_eq!(l.apply_retention(NOW - 1).unwrap(), 0);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(l.apply_retention(NOW + 1).unwrap(), 1);
        let after = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        assert!(!after.contains("\"old\"") && after.contains("\"new\""));
        // The kept record is copied byte for byte.
        assert!(String::from_utf8(before).unwrap().ends_with(&after));
        l.read(|s| {
            assert!(!s.conversions.contains_key(&("n".into(), "old".into())));
            assert!(s.conversions.contains_key(&("n".into(), "new".into())));
        });
        // Appends go on in the new file, and it reopens whole.
        l.process(&net, fields("later", Status::Approved, "3"), NOW + 120_000)
            .unwrap();
        drop(l);
        let l = ledger(dir.path());
        l.read(|s| assert_eq!(s.conversions.len(), 2));
        assert!(!dir.path().join("postbacks.ledger.tmp").exists());
    }

    #[test]
    fn a_click_older_than_the_retention_window_is_out_of_window() {
        let dir = tempfile::tempdir().unwrap();
        let net = network();
        let l = ledger(dir.path());
        l.set_retention(std::time::Duration::from_millis(500));
        let d = l
            .process(&net, fields("a", Status::Approved, "1"), NOW)
            .unwrap();
        assert_eq!(d.outcome, Outcome::OutOfWindow);
        assert!(d.reason.unwrap().contains("retention"));
    }

    #[test]
    fn a_torn_tail_is_cut_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let net = network();
        {
            let l = ledger(dir.path());
            l.process(&net, fields("a", Status::Pending, "1"), NOW)
                .unwrap();
        }
        let path = dir.path().join(FILE_NAME);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"0badc0de {\"v\":1,\"outc").unwrap();
        drop(f);
        let l = ledger(dir.path());
        let d = l
            .process(&net, fields("a", Status::Pending, "1"), NOW)
            .unwrap();
        assert_eq!(d.outcome, Outcome::Duplicate);
        drop(l);
        let l = ledger(dir.path());
        l.read(|s| assert_eq!(s.conversions[&("n".into(), "a".into())].counts[2], 1));
    }

    #[test]
    fn refusals_carry_no_conversion_and_are_counted_per_day() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path());
        let net = network();
        let refused = Submission::Refused {
            outcome: Outcome::BadAuth,
            reason: "no".into(),
        };
        assert_eq!(
            l.process(&net, refused, NOW).unwrap().outcome,
            Outcome::BadAuth
        );
        let mut forged = fields("f", Status::Approved, "1");
        if let Submission::Fields(f) = &mut forged {
            f.click_id = "0".repeat(32);
        }
        assert_eq!(
            l.process(&net, forged, NOW).unwrap().outcome,
            Outcome::ForgedClick
        );
        let mut old = fields("o", Status::Approved, "1");
        if let Submission::Fields(f) = &mut old {
            f.occurred_at_ms = Some(NOW + 31 * DAY_MS);
        }
        assert_eq!(
            l.process(&net, old, NOW).unwrap().outcome,
            Outcome::OutOfWindow
        );
        l.read(|s| {
            assert!(s.conversions.is_empty());
            let day = s.refused[&("n".into(), NOW.div_euclid(DAY_MS))];
            assert_eq!(
                (
                    day[Outcome::BadAuth as usize],
                    day[Outcome::ForgedClick as usize],
                    day[Outcome::OutOfWindow as usize]
                ),
                (1, 1, 1)
            );
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// The ledger against a model: a (txn, status) seen before is a
        /// duplicate, a txn seen before is a status change, anything else
        /// accepted; the latest status wins; a reopened ledger agrees.
        #[test]
        fn outcomes_and_latest_status_follow_the_model(
            ops in proptest::collection::vec((0u8..3, 0usize..4), 1..12)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let net = network();
            let l = ledger(dir.path());
            let mut seen = std::collections::HashSet::new();
            let mut latest = std::collections::HashMap::new();
            for (txn, s) in &ops {
                let status = Status::ALL[*s];
                let txn = format!("t{txn}");
                let want = if seen.contains(&(txn.clone(), status)) {
                    Outcome::Duplicate
                } else if latest.contains_key(&txn) {
                    Outcome::StatusChange
                } else {
                    Outcome::Accepted
                };
                let got = l.process(&net, fields(&txn, status, "1"), NOW).unwrap().outcome;
                prop_assert_eq!(got, want);
                if want != Outcome::Duplicate {
                    latest.insert(txn.clone(), status);
                }
                seen.insert((txn, status));
            }
            drop(l);
            let l = ledger(dir.path());
            l.read(|state| {
                let got: std::collections::HashMap<String, Status> = state
                    .conversions
                    .values()
                    .map(|c| (c.txn_id.clone(), c.status))
                    .collect();
                assert_eq!(got, latest);
            });
            for (txn, s) in ops {
                let d = l.process(&net, fields(&format!("t{txn}"), Status::ALL[s], "1"), NOW).unwrap();
                prop_assert_eq!(d.outcome, Outcome::Duplicate);
            }
        }
    }
}
