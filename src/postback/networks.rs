//! Affiliate networks: their settings, their (sealed) secrets and tokens,
//! and the table the edge reads.
//!
//! Records live in `<data_dir>/networks.log`, framed like the link store
//! (`<crc32> <json>\n`), appended under `flock` and `fdatasync`ed by the
//! CLI (`clickedge network …`). A running `serve` tails the file on the
//! store's reload interval, opens the sealed values in memory and swaps a
//! new [`NetworkTable`] in: a network added, rotated or removed from the CLI
//! is live within `links.reload_interval_ms`. Records are full states keyed
//! by name, so the last one wins. Secrets and tokens are only ever written
//! sealed (see `sealed.rs`); nothing here logs one.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::sealed::{Field, Sealer};
use super::{Outcome, Status};
use crate::store::record_log;
use crate::telemetry::PostbackCounters;

const FILE_NAME: &str = "networks.log";
/// Default attribution window (CONTRACT: 30 days).
pub const DEFAULT_WINDOW_SECS: u64 = 30 * 86_400;
const DEFAULT_CURRENCY: &str = "USD";
const MAX_NAME_LEN: usize = 64;
/// Most names one parameter or status may be given.
const MAX_ALIASES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("networks {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file could not be read back: I/O, a corrupt line (not a torn
    /// tail), or a record that does not decode.
    #[error("networks {path}: {source}")]
    Read {
        path: PathBuf,
        source: record_log::ReadError,
    },
    #[error("network `{0}` already exists")]
    Exists(String),
    #[error("no network named `{0}`")]
    NotFound(String),
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// `POST` with `X-Clickedge-Signature`.
    Hmac,
    /// `GET` with `token=`.
    Token,
}

/// Which request field holds each postback value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParamMap {
    pub click_id: String,
    pub txn_id: String,
    pub status: String,
    pub payout: String,
    pub currency: String,
    pub occurred_at: String,
}

impl Default for ParamMap {
    fn default() -> ParamMap {
        ParamMap {
            click_id: "click_id".into(),
            txn_id: "txn_id".into(),
            status: "status".into(),
            payout: "payout".into(),
            currency: "currency".into(),
            occurred_at: "occurred_at".into(),
        }
    }
}

impl ParamMap {
    /// Sets the field `canonical` (e.g. `click_id`) to be read from `name`.
    pub fn set(&mut self, canonical: &str, name: &str) -> Result<(), NetworkError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name == "token" {
            return Err(invalid(
                "--param",
                format!("`{name}` is not a usable parameter name (1-64 chars, not `token`)"),
            ));
        }
        let slot = match canonical {
            "click_id" => &mut self.click_id,
            "txn_id" => &mut self.txn_id,
            "status" => &mut self.status,
            "payout" => &mut self.payout,
            "currency" => &mut self.currency,
            "occurred_at" => &mut self.occurred_at,
            other => {
                return Err(invalid(
                    "--param",
                    format!("`{other}` is not one of click_id, txn_id, status, payout, currency, occurred_at"),
                ))
            }
        };
        *slot = name.to_owned();
        Ok(())
    }
}

/// Everything about a network except its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    #[serde(default = "default_auth")]
    pub auth: Vec<AuthMode>,
    /// CIDRs; empty = any address (then the secret or token is the only factor).
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    #[serde(default)]
    pub params: ParamMap,
    /// Network status values, per status, besides the status names themselves.
    #[serde(default)]
    pub statuses: BTreeMap<Status, Vec<String>>,
    /// Status of a postback that carries none (e.g. Voluum's).
    #[serde(default = "default_status")]
    pub default_status: Status,
    #[serde(default = "default_window")]
    pub attribution_window_secs: u64,
    /// Currency of a postback that carries none.
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_auth() -> Vec<AuthMode> {
    vec![AuthMode::Hmac, AuthMode::Token]
}
fn default_status() -> Status {
    Status::Approved
}
fn default_window() -> u64 {
    DEFAULT_WINDOW_SECS
}
fn default_currency() -> String {
    DEFAULT_CURRENCY.into()
}

impl Default for NetworkSettings {
    fn default() -> NetworkSettings {
        NetworkSettings {
            auth: default_auth(),
            allowed_ips: Vec::new(),
            params: ParamMap::default(),
            statuses: BTreeMap::new(),
            default_status: default_status(),
            attribution_window_secs: default_window(),
            currency: default_currency(),
        }
    }
}

impl NetworkSettings {
    /// Checks every setting, naming the CLI flag that set it.
    pub fn validate(&self) -> Result<(), NetworkError> {
        if self.auth.is_empty() {
            return Err(invalid("--auth", "at least one of hmac, token"));
        }
        for ip in &self.allowed_ips {
            parse_cidr(ip)?;
        }
        if self.attribution_window_secs == 0 {
            return Err(invalid("--window", "must be at least 1s"));
        }
        normalize_currency(&self.currency)
            .ok_or_else(|| invalid("--currency", "must be a 3-letter currency code such as USD"))?;
        let mut seen: HashMap<String, Status> = HashMap::new();
        for (status, values) in &self.statuses {
            if values.len() > MAX_ALIASES {
                return Err(invalid(
                    "--status",
                    format!("at most {MAX_ALIASES} values per status"),
                ));
            }
            for v in values {
                if v.is_empty() || v.len() > MAX_NAME_LEN {
                    return Err(invalid("--status", "values must be 1-64 characters"));
                }
                if let Some(other) = seen.insert(v.to_ascii_lowercase(), *status) {
                    if other != *status {
                        return Err(invalid(
                            "--status",
                            format!(
                                "`{v}` is mapped to both {} and {}",
                                other.as_str(),
                                status.as_str()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

pub fn parse_cidr(s: &str) -> Result<IpNet, NetworkError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            invalid(
                "--allowed-ip",
                format!("`{s}` is not an IP address or CIDR"),
            )
        })
}

/// `usd` → `USD`; `None` unless three ASCII letters.
pub fn normalize_currency(s: &str) -> Option<String> {
    (s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic())).then(|| s.to_ascii_uppercase())
}

/// Network names: 1-64 of `[A-Za-z0-9._-]` (they appear in URLs and labels).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// One network as stored: settings plus sealed secret(s) and token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRecord {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub removed: bool,
    /// Sealed current secret.
    pub secret: String,
    /// Sealed previous secret, valid until `previous_valid_until`.
    #[serde(default)]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub previous_valid_until: Option<DateTime<Utc>>,
    /// Sealed GET token.
    pub token: String,
    pub settings: NetworkSettings,
}

// ---- the file ------------------------------------------------------------

pub struct NetworkStore {
    path: PathBuf,
    inner: Mutex<StoreInner>,
}

struct StoreInner {
    file: File,
    offset: u64,
    lines: usize,
    records: BTreeMap<String, NetworkRecord>,
}

impl NetworkStore {
    pub fn open(data_dir: &Path) -> Result<NetworkStore, NetworkError> {
        let path = data_dir.join(FILE_NAME);
        let file = crate::fsutil::open_private_append(&path).map_err(io_err(&path))?;
        let mut inner = StoreInner {
            file,
            offset: 0,
            lines: 0,
            records: BTreeMap::new(),
        };
        inner.file.lock().map_err(io_err(&path))?;
        let result = inner.catch_up(&path, true);
        inner.file.unlock().map_err(io_err(&path))?;
        result?;
        Ok(NetworkStore {
            path,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> MutexGuard<'_, StoreInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies what other processes appended; `true` if anything changed.
    pub fn poll(&self) -> Result<bool, NetworkError> {
        self.lock().catch_up(&self.path, false)
    }

    /// The live (not removed) network `name`.
    pub fn get(&self, name: &str) -> Option<NetworkRecord> {
        self.lock()
            .records
            .get(name)
            .filter(|r| !r.removed)
            .cloned()
    }

    /// Live networks by name.
    pub fn list(&self) -> Vec<NetworkRecord> {
        self.lock()
            .records
            .values()
            .filter(|r| !r.removed)
            .cloned()
            .collect()
    }

    /// Appends the record `build` makes from the current state, durably.
    pub fn write(
        &self,
        build: impl FnOnce(&BTreeMap<String, NetworkRecord>) -> Result<NetworkRecord, NetworkError>,
    ) -> Result<NetworkRecord, NetworkError> {
        let mut inner = self.lock();
        let io = io_err(&self.path);
        inner.lock_current(&self.path)?;
        let result = (|| {
            inner.catch_up(&self.path, true)?;
            let rec = build(&inner.records)?;
            let json = serde_json::to_string(&rec).expect("records serialise");
            let mut buf = Vec::with_capacity(json.len() + 16);
            record_log::encode(&json, &mut buf);
            inner.file.write_all(&buf).map_err(&io)?;
            inner.file.sync_data().map_err(&io)?;
            inner.offset += buf.len() as u64;
            inner.lines += 1;
            inner.records.insert(rec.name.clone(), rec.clone());
            Ok(rec)
        })();
        inner.file.unlock().map_err(&io)?;
        result
    }

    /// Removes network `name` and every sealed value it ever had from the
    /// file at once: the file is rewritten with only the latest record of
    /// each live network (temp file, fsync, rename, fsync of the
    /// directory), so no older record of it (or of any network removed
    /// before, or any rotated-out secret) is left in it. Other processes
    /// see the new file by its inode on their next poll.
    pub fn remove(&self, name: &str) -> Result<(), NetworkError> {
        let mut inner = self.lock();
        let io = io_err(&self.path);
        inner.lock_current(&self.path)?;
        let result = (|| {
            inner.catch_up(&self.path, true)?;
            if inner.records.get(name).is_none_or(|r| r.removed) {
                return Err(NetworkError::NotFound(name.to_owned()));
            }
            inner.records.retain(|n, r| n != name && !r.removed);
            let mut buf = Vec::new();
            for rec in inner.records.values() {
                let json = serde_json::to_string(rec).expect("records serialise");
                record_log::encode(&json, &mut buf);
            }
            crate::fsutil::write_atomic(&self.path, &buf).map_err(&io)?;
            // Our lock is on the old inode: the new file is the one now.
            inner.file = crate::fsutil::open_private_append(&self.path).map_err(&io)?;
            inner.offset = buf.len() as u64;
            inner.lines = inner.records.len();
            Ok(())
        })();
        inner.file.unlock().map_err(&io)?;
        result
    }
}

/// Whether `file` is the file at `path` now (not one renamed over).
fn is_current(file: &File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (open, now) = (file.metadata()?, std::fs::metadata(path)?);
    Ok(open.ino() == now.ino() && open.dev() == now.dev())
}

impl StoreInner {
    /// Takes the file's lock on the file that is at `path` now, reopening
    /// it (and re-reading it) if it was replaced by a rewrite.
    fn lock_current(&mut self, path: &Path) -> Result<(), NetworkError> {
        let io = io_err(path);
        loop {
            self.file.lock().map_err(&io)?;
            if is_current(&self.file, path).map_err(&io)? {
                return Ok(());
            }
            self.file.unlock().map_err(&io)?;
            self.reopen(path)?;
        }
    }

    /// Starts over on the file now at `path`.
    fn reopen(&mut self, path: &Path) -> Result<(), NetworkError> {
        self.file = crate::fsutil::open_private_append(path).map_err(io_err(path))?;
        self.offset = 0;
        self.lines = 0;
        self.records.clear();
        Ok(())
    }

    fn catch_up(&mut self, path: &Path, exclusive: bool) -> Result<bool, NetworkError> {
        let mut reset = false;
        if !exclusive && !is_current(&self.file, path).map_err(io_err(path))? {
            // Rewritten by a removal: read the new file from the start.
            self.reopen(path)?;
            reset = true;
        }
        let len = std::fs::metadata(path).map_err(io_err(path))?.len();
        if len <= self.offset {
            return Ok(reset);
        }
        let mut changed = reset;
        let records = &mut self.records;
        let read =
            record_log::read_from(path, self.offset, self.lines + 1, |rec: NetworkRecord| {
                records.insert(rec.name.clone(), rec);
                changed = true;
            })
            .map_err(|source| NetworkError::Read {
                path: path.to_owned(),
                source,
            })?;
        self.lines += read.records;
        let (consumed, torn) = (read.consumed, read.torn);
        self.offset += consumed;
        if torn && exclusive {
            tracing::warn!(path = %path.display(), "networks: cutting off a torn record at the tail");
            self.file.set_len(self.offset).map_err(io_err(path))?;
            self.file.sync_all().map_err(io_err(path))?;
        }
        Ok(changed)
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> NetworkError + '_ {
    move |source| NetworkError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Rotates `name`'s HMAC secret to `secret` (the old one keeps verifying
/// for `grace`), durably; used by `clickedge network rotate` and the
/// console. The caller shows `secret` once and keeps it nowhere.
pub fn rotate_secret(
    store: &NetworkStore,
    sealer: &super::sealed::Sealer,
    name: &str,
    grace: std::time::Duration,
    secret: &str,
) -> Result<NetworkRecord, NetworkError> {
    store.write(|all| {
        let mut r = all
            .get(name)
            .filter(|r| !r.removed)
            .cloned()
            .ok_or_else(|| NetworkError::NotFound(name.to_owned()))?;
        let now = Utc::now();
        r.previous_secret = Some(r.secret.clone());
        r.previous_valid_until =
            Some(now + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX));
        r.secret = sealer.seal(name, super::sealed::Field::Secret, secret.as_bytes());
        r.updated_at = now;
        Ok(r)
    })
}

// ---- what the edge reads -------------------------------------------------

/// A network ready for verification: secrets opened, maps compiled.
pub struct Network {
    pub name: String,
    pub settings: NetworkSettings,
    pub allowed_ips: Vec<IpNet>,
    statuses: HashMap<String, Status>,
    secret: Zeroizing<Vec<u8>>,
    /// The previous secret and the unix ms it stays valid until.
    previous: Option<(Zeroizing<Vec<u8>>, i64)>,
    /// blake3 of the token: compared in constant time whatever the length.
    token_hash: [u8; 32],
    pub counters: PostbackCounters<{ super::Outcome::ALL.len() }>,
}

impl Network {
    pub(crate) fn open(
        rec: &NetworkRecord,
        sealer: &Sealer,
    ) -> Result<Network, Box<dyn std::error::Error>> {
        let secret = sealer.open(&rec.name, Field::Secret, &rec.secret)?;
        let previous = match (&rec.previous_secret, rec.previous_valid_until) {
            (Some(p), Some(until)) => Some((
                sealer.open(&rec.name, Field::Secret, p)?,
                until.timestamp_millis(),
            )),
            _ => None,
        };
        let token = sealer.open(&rec.name, Field::Token, &rec.token)?;
        let allowed_ips = rec
            .settings
            .allowed_ips
            .iter()
            .map(|s| parse_cidr(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut statuses = HashMap::new();
        for s in Status::ALL {
            statuses.insert(s.as_str().to_owned(), s);
        }
        for (status, values) in &rec.settings.statuses {
            for v in values {
                statuses.insert(v.to_ascii_lowercase(), *status);
            }
        }
        Ok(Network {
            name: rec.name.clone(),
            settings: rec.settings.clone(),
            allowed_ips,
            statuses,
            secret,
            previous,
            token_hash: *blake3::hash(&token).as_bytes(),
            counters: PostbackCounters::register(
                &rec.name,
                super::Outcome::ALL.map(|o| o.as_str()),
            ),
        })
    }

    pub fn accepts(&self, mode: AuthMode) -> bool {
        self.settings.auth.contains(&mode)
    }

    /// The secrets a signature may be made with at `now_ms`.
    pub fn secrets_at(&self, now_ms: i64) -> Vec<&[u8]> {
        let mut v = vec![&self.secret[..]];
        if let Some((p, until)) = &self.previous {
            if now_ms < *until {
                v.push(&p[..]);
            }
        }
        v
    }

    pub fn token_matches(&self, presented: &str) -> bool {
        let h = blake3::hash(presented.as_bytes());
        bool::from(h.as_bytes().ct_eq(&self.token_hash))
    }

    pub fn ip_allowed(&self, ip: std::net::IpAddr) -> bool {
        self.allowed_ips.is_empty() || self.allowed_ips.iter().any(|n| n.contains(&ip))
    }

    /// Maps a network's status value (case-insensitive) onto ours.
    pub fn status(&self, value: &str) -> Option<Status> {
        self.statuses.get(&value.to_ascii_lowercase()).copied()
    }

    pub fn count(&self, outcome: Outcome) {
        self.counters.get(outcome as usize).increment(1);
    }
}

/// The live networks, swapped whole when the file changes.
pub struct NetworkTable {
    store: NetworkStore,
    sealer: Sealer,
    live: ArcSwap<HashMap<String, Arc<Network>>>,
}

impl NetworkTable {
    pub fn open(data_dir: &Path, sealer: Sealer) -> Result<NetworkTable, NetworkError> {
        let table = NetworkTable {
            store: NetworkStore::open(data_dir)?,
            sealer,
            live: ArcSwap::default(),
        };
        table.rebuild();
        Ok(table)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Network>> {
        self.live.load().get(name).cloned()
    }

    /// Picks up changes made by the CLI.
    pub fn poll(&self) -> Result<(), NetworkError> {
        if self.store.poll()? {
            self.rebuild();
        }
        Ok(())
    }

    fn rebuild(&self) {
        let mut map = HashMap::new();
        for rec in self.store.list() {
            match Network::open(&rec, &self.sealer) {
                Ok(n) => {
                    map.insert(rec.name.clone(), Arc::new(n));
                }
                // Names the network and the reason, never a secret.
                Err(e) => {
                    tracing::error!(network = %rec.name, error = %e, "postback: network skipped")
                }
            }
        }
        tracing::info!(networks = map.len(), "postback: networks loaded");
        self.live.store(Arc::new(map));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    fn record(sealer: &Sealer, name: &str, secret: &str) -> NetworkRecord {
        let now = Utc::now();
        NetworkRecord {
            name: name.into(),
            created_at: now,
            updated_at: now,
            removed: false,
            secret: sealer.seal(name, Field::Secret, secret.as_bytes()),
            previous_secret: None,
            previous_valid_until: None,
            token: sealer.seal(name, Field::Token, b"tok"),
            settings: NetworkSettings::default(),
        }
    }

    #[test]
    fn networks_written_by_one_process_reach_another_on_poll() {
        let dir = tempfile::tempdir().unwrap();
        let serve = NetworkTable::open(dir.path(), Sealer::new(&MasterKey::for_tests())).unwrap();
        assert!(serve.get("kt").is_none());
        let cli = NetworkStore::open(dir.path()).unwrap();
        let sealer = Sealer::new(&MasterKey::for_tests());
        cli.write(|_| Ok(record(&sealer, "kt", "s3cret"))).unwrap();
        serve.poll().unwrap();
        let kt = serve.get("kt").unwrap();
        assert_eq!(kt.secrets_at(0), vec![&b"s3cret"[..]]);
        assert!(kt.token_matches("tok"));
        assert!(!kt.token_matches("tok2"));
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains("s3cret"));
        cli.write(|m| {
            let mut r = m["kt"].clone();
            r.removed = true;
            Ok(r)
        })
        .unwrap();
        serve.poll().unwrap();
        assert!(serve.get("kt").is_none());
    }

    #[test]
    fn status_maps_are_case_insensitive_and_include_the_names_themselves() {
        let sealer = Sealer::new(&MasterKey::for_tests());
        let mut rec = record(&sealer, "kt", "s");
        rec.settings
            .statuses
            .insert(Status::Approved, vec!["sale".into(), "1".into()]);
        let n = Network::open(&rec, &sealer).unwrap();
        assert_eq!(n.status("SALE"), Some(Status::Approved));
        assert_eq!(n.status("1"), Some(Status::Approved));
        assert_eq!(n.status("reversed"), Some(Status::Reversed));
        assert_eq!(n.status("bogus"), None);
    }

    #[test]
    fn conflicting_status_values_are_refused_naming_the_flag() {
        let mut s = NetworkSettings::default();
        s.statuses.insert(Status::Approved, vec!["x".into()]);
        s.statuses.insert(Status::Rejected, vec!["X".into()]);
        assert!(s.validate().unwrap_err().to_string().contains("--status"));
    }
}
