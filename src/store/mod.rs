//! The embedded store: links and tokens in one append-only file,
//! `<data_dir>/store.log`.
//!
//! Every change is one or more framed records appended under an exclusive
//! `flock` and made durable with `fdatasync` before the caller is answered.
//! Records are full states (upserts), so replaying the file in order rebuilds
//! the store. `serve` and the CLI may both append: before appending, and on a
//! timer, a process first applies what others appended since its last read
//! (its offset), so every process applies every record once, in file order.
//!
//! The store owns the authoritative link table and publishes it to the
//! edge's [`SharedLinkTable`] after every change. Each link exists once, as
//! an `Arc<Link>` shared by the store's table, its per-tenant index and the
//! published table; [`LinkRecord`]s are made only at the boundary (the file
//! and the admin API). It is the one interface a future fleet store (links
//! shared through Kafka) replaces; the edge only sees the table.

pub(crate) mod record_log;

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::links::{Link, LinkRecord, LinkTable, Owner, SharedLinkTable};
use crate::tokens::TokenRecord;

const STORE_FILE: &str = "store.log";
/// Compact at start-up once superseded records outnumber live ones by this.
const COMPACT_RATIO: usize = 2;
const COMPACT_MIN_RECORDS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file could not be read back: I/O, a corrupt line (not a torn
    /// tail), or a record that does not decode.
    #[error("store {path}: {source}")]
    Read {
        path: PathBuf,
        source: record_log::ReadError,
    },
    #[error("code `{0}` is taken")]
    CodeTaken(String),
    /// The caller's budget of conflicts with other tenants' codes was
    /// spent: this custom code was not looked up.
    #[error("custom code `{0}` not tried: too many taken codes")]
    ConflictBudget(String),
    #[error("no such record")]
    NotFound,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    Link(LinkRecord),
    Token(TokenRecord),
}

/// A link to create: `code` is `None` for a random one.
pub struct NewLink {
    pub code: Option<String>,
    pub record: LinkRecord,
}

pub struct Store {
    path: PathBuf,
    random_code_len: usize,
    inner: Mutex<Inner>,
    table: Arc<SharedLinkTable>,
}

struct Inner {
    file: File,
    /// Bytes of the file already applied.
    offset: u64,
    /// Lines already applied, for error messages.
    lines: usize,
    inode: u64,
    records: usize,
    /// Every link, tombstones included: the next table to publish.
    links: LinkTable,
    /// Every tenant seen, with its live (not deleted) links by code.
    by_tenant: BTreeMap<String, Tenant>,
    tokens: HashMap<String, TokenRecord>,
}

struct Tenant {
    /// The owner the tenant's untagged links share.
    owner: Arc<Owner>,
    live: BTreeSet<ByCode>,
}

/// A link ordered (and looked up) by its code.
#[derive(Clone)]
struct ByCode(Arc<Link>);

impl Borrow<str> for ByCode {
    fn borrow(&self) -> &str {
        self.0.code()
    }
}

impl PartialEq for ByCode {
    fn eq(&self, other: &Self) -> bool {
        self.0.code() == other.0.code()
    }
}

impl Eq for ByCode {}

impl PartialOrd for ByCode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByCode {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.code().cmp(other.0.code())
    }
}

impl Store {
    /// Opens (creating) the store in `data_dir` and publishes its links.
    /// `compact` rewrites a mostly-superseded file; only `serve` asks for it.
    pub fn open(
        data_dir: &Path,
        random_code_len: usize,
        table: Arc<SharedLinkTable>,
        compact: bool,
    ) -> Result<Store, StoreError> {
        let path = data_dir.join(STORE_FILE);
        let file = open_append(&path)?;
        file.lock().map_err(io_err(&path))?;
        let mut inner = Inner {
            inode: file.metadata().map_err(io_err(&path))?.ino(),
            file,
            offset: 0,
            lines: 0,
            records: 0,
            links: LinkTable::default(),
            by_tenant: BTreeMap::new(),
            tokens: HashMap::new(),
        };
        let store_path = path.clone();
        let result = (|| {
            inner.catch_up(&store_path, true)?;
            if compact && inner.records > COMPACT_MIN_RECORDS {
                let live = inner.links.len() + inner.tokens.len();
                if inner.records > live * COMPACT_RATIO {
                    inner.compact(&store_path)?;
                }
            }
            Ok(())
        })();
        inner.file.unlock().map_err(io_err(&path))?;
        result?;
        table.replace(inner.links.clone());
        Ok(Store {
            path,
            random_code_len,
            inner: Mutex::new(inner),
            table,
        })
    }

    pub fn table(&self) -> &Arc<SharedLinkTable> {
        &self.table
    }

    /// Applies records appended by other processes since the last read.
    pub fn poll(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.catch_up(&self.path, false)? {
            self.table.replace(inner.links.clone());
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends records durably, then applies them. `build` runs under the
    /// lock, after catching up, so it sees every other process's writes.
    fn write<T>(
        &self,
        build: impl FnOnce(&mut Inner) -> Result<(Vec<Record>, T), StoreError>,
    ) -> Result<T, StoreError> {
        let mut inner = self.lock();
        inner.file.lock().map_err(io_err(&self.path))?;
        let result = (|| {
            let mut changed = inner.catch_up(&self.path, true)?;
            let (records, out) = build(&mut inner)?;
            if !records.is_empty() {
                let mut buf = Vec::with_capacity(records.len() * 256);
                for r in &records {
                    let json = serde_json::to_string(r).expect("records serialise");
                    record_log::encode(&json, &mut buf);
                }
                inner.file.write_all(&buf).map_err(io_err(&self.path))?;
                inner.file.sync_data().map_err(io_err(&self.path))?;
                inner.offset += buf.len() as u64;
                inner.lines += records.len();
                for r in records {
                    changed |= inner.apply(r);
                }
            }
            Ok((changed, out))
        })();
        inner.file.unlock().map_err(io_err(&self.path))?;
        let (changed, out) = result?;
        if changed {
            self.table.replace(inner.links.clone());
        }
        Ok(out)
    }

    // ---- links ------------------------------------------------------------

    /// Creates links in one durable append; results are in input order.
    pub fn create_links(&self, new: Vec<NewLink>) -> Vec<Result<LinkRecord, StoreError>> {
        self.create_links_within(new, usize::MAX).0
    }

    /// [`Store::create_links`], where at most `budget` custom codes may
    /// turn out taken by another tenant: once they have, every later
    /// custom code is refused with [`StoreError::ConflictBudget`] without
    /// being looked up (so the refusal says nothing about it). Also
    /// returns how many such conflicts there were.
    pub fn create_links_within(
        &self,
        new: Vec<NewLink>,
        budget: usize,
    ) -> (Vec<Result<LinkRecord, StoreError>>, usize) {
        let len = self.random_code_len;
        let count = new.len();
        let mut foreign = 0usize;
        let outcome = self.write(|inner| {
            let mut records = Vec::new();
            let mut results = Vec::with_capacity(new.len());
            let mut taken_now = BTreeSet::new();
            for NewLink { code, mut record } in new {
                let code = match code {
                    Some(c) if foreign >= budget => {
                        results.push(Err(StoreError::ConflictBudget(c)));
                        continue;
                    }
                    Some(c) if taken_now.contains(&c) => {
                        results.push(Err(StoreError::CodeTaken(c)));
                        continue;
                    }
                    Some(c) if inner.links.get(&c).is_some() => {
                        if inner
                            .links
                            .get(&c)
                            .is_some_and(|l| l.tenant() != record.tenant)
                        {
                            foreign += 1;
                        }
                        results.push(Err(StoreError::CodeTaken(c)));
                        continue;
                    }
                    Some(c) => c,
                    None => loop {
                        let c = crate::links::validate::random_code(len);
                        if inner.links.get(&c).is_none() && !taken_now.contains(&c) {
                            break c;
                        }
                    },
                };
                taken_now.insert(code.clone());
                record.code = code;
                records.push(Record::Link(record.clone()));
                results.push(Ok(record));
            }
            Ok((records, results))
        });
        let results = outcome.unwrap_or_else(|e| {
            // Nothing was applied: every input fails with the same I/O error.
            let msg = e.to_string();
            (0..count)
                .map(|_| {
                    Err(StoreError::Io {
                        path: self.path.clone(),
                        source: std::io::Error::other(msg.clone()),
                    })
                })
                .collect()
        });
        (results, foreign)
    }

    /// The live (not deleted) link with this code.
    pub fn get_link(&self, code: &str) -> Option<LinkRecord> {
        let inner = self.lock();
        let link = inner.links.get(code).filter(|l| !l.is_deleted())?;
        Some(link.to_record())
    }

    /// Changes a live link; `change` may refuse by returning an error.
    pub fn update_link<E: From<StoreError>>(
        &self,
        code: &str,
        change: impl FnOnce(&mut LinkRecord) -> Result<(), E>,
    ) -> Result<LinkRecord, E> {
        let mut refused = None;
        let result = self.write(|inner| {
            let mut rec = match inner.links.get(code) {
                Some(l) if !l.is_deleted() => l.to_record(),
                _ => return Err(StoreError::NotFound),
            };
            if let Err(e) = change(&mut rec) {
                refused = Some(e);
                return Ok((Vec::new(), None));
            }
            Ok((vec![Record::Link(rec.clone())], Some(rec)))
        });
        if let Some(e) = refused {
            return Err(e);
        }
        Ok(result?.expect("a written update returns its record"))
    }

    /// Live links of `tenant` (all tenants for `None`) after `cursor`, by code.
    pub fn list_links(
        &self,
        tenant: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Vec<LinkRecord> {
        use std::ops::Bound::{Excluded, Unbounded};
        let inner = self.lock();
        let after = cursor.map_or(Unbounded, Excluded);
        // `ByCode` orders by the link's code, which never changes; the
        // tally cell inside the link is not part of the key.
        #[allow(clippy::mutable_key_type)]
        fn page<'a>(
            set: &'a BTreeSet<ByCode>,
            after: std::ops::Bound<&str>,
            limit: usize,
        ) -> impl Iterator<Item = &'a ByCode> {
            set.range::<str, _>((after, Unbounded)).take(limit)
        }
        match tenant {
            Some(t) => inner
                .by_tenant
                .get(t)
                .into_iter()
                .flat_map(|t| page(&t.live, after, limit))
                .map(|l| l.0.to_record())
                .collect(),
            None => {
                // Merge the tenants' pages by code.
                let mut pages: Vec<_> = inner
                    .by_tenant
                    .values()
                    .map(|t| page(&t.live, after, limit))
                    .collect();
                let mut heads: BinaryHeap<_> = pages
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, p)| Some(Reverse((p.next()?, i))))
                    .collect();
                let mut out = Vec::new();
                while out.len() < limit {
                    let Some(Reverse((link, i))) = heads.pop() else {
                        break;
                    };
                    out.push(link.0.to_record());
                    if let Some(next) = pages[i].next() {
                        heads.push(Reverse((next, i)));
                    }
                }
                out
            }
        }
    }

    pub fn link_count(&self) -> usize {
        self.lock().links.len()
    }

    // ---- tokens -----------------------------------------------------------

    pub fn add_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.write(|_| Ok((vec![Record::Token(token)], ())))
    }

    /// Revokes by id; returns the revoked record.
    pub fn revoke_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        self.write(|inner| {
            let mut t = inner
                .tokens
                .values()
                .find(|t| t.id == id && !t.revoked)
                .cloned()
                .ok_or(StoreError::NotFound)?;
            t.revoked = true;
            Ok((vec![Record::Token(t.clone())], t))
        })
    }

    pub fn list_tokens(&self) -> Vec<TokenRecord> {
        let mut v: Vec<_> = self.lock().tokens.values().cloned().collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    /// The live token with this hash.
    pub fn token_by_hash(&self, hash: &str) -> Option<TokenRecord> {
        self.lock().tokens.get(hash).filter(|t| !t.revoked).cloned()
    }
}

impl Inner {
    /// Reads and applies what was appended since `offset`. With `exclusive`
    /// (the file lock is held) a torn tail is cut off; without, an incomplete
    /// last line is left for the next read, as its writer may still be busy.
    /// Returns whether any link changed.
    fn catch_up(&mut self, path: &Path, exclusive: bool) -> Result<bool, StoreError> {
        let io = io_err(path);
        let on_disk = std::fs::metadata(path).map_err(io)?;
        let mut changed = false;
        if on_disk.ino() != self.inode || on_disk.len() < self.offset {
            // Replaced underneath us (compaction by a restarted serve).
            self.file = open_append(path)?;
            self.inode = on_disk.ino();
            self.offset = 0;
            self.lines = 0;
            self.records = 0;
            changed = !self.links.is_empty();
            self.links = LinkTable::default();
            self.by_tenant.clear();
            self.tokens.clear();
        }
        if on_disk.len() == self.offset {
            return Ok(changed);
        }
        let read = record_log::read_from(path, self.offset, self.lines + 1, |rec: Record| {
            changed |= self.apply(rec);
        })
        .map_err(|source| StoreError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.lines += read.records;
        let (consumed, torn) = (read.consumed, read.torn);
        self.offset += consumed;
        if torn && exclusive {
            tracing::warn!(
                path = %path.display(),
                kept_bytes = self.offset,
                "store: cutting off a torn record at the tail (an interrupted write)"
            );
            self.file.set_len(self.offset).map_err(io_err(path))?;
            self.file.sync_all().map_err(io_err(path))?;
        }
        Ok(changed)
    }

    /// Applies one record; returns whether it was a link.
    fn apply(&mut self, rec: Record) -> bool {
        self.records += 1;
        match rec {
            Record::Link(rec) => {
                if let Some(old) = self.links.get(&rec.code) {
                    if let Some(t) = self.by_tenant.get_mut(old.tenant()) {
                        t.live.remove(old.code());
                    }
                }
                let tenant = match self.by_tenant.get_mut(rec.tenant.as_str()) {
                    Some(t) => t,
                    None => self
                        .by_tenant
                        .entry(rec.tenant.clone())
                        .or_insert_with(|| Tenant {
                            owner: Owner::tenant(rec.tenant.clone()),
                            live: BTreeSet::new(),
                        }),
                };
                // Links of one tenant share its name.
                let link = Arc::new(Link::compile_for(rec, &tenant.owner));
                if !link.is_deleted() {
                    tenant.live.insert(ByCode(link.clone()));
                }
                self.links.insert(link);
                true
            }
            Record::Token(t) => {
                self.tokens.insert(t.hash.clone(), t);
                false
            }
        }
    }

    /// Rewrites the file with only current states: temp file, fsync, rename.
    fn compact(&mut self, path: &Path) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        let mut count = 0;
        let mut links: Vec<&Arc<Link>> = self.links.iter().collect();
        links.sort_unstable_by(|a, b| a.code().cmp(b.code()));
        for l in links {
            let json = serde_json::to_string(&Record::Link(l.to_record())).expect("serialise");
            record_log::encode(&json, &mut buf);
            count += 1;
        }
        for t in self.tokens.values() {
            let json = serde_json::to_string(&Record::Token(t.clone())).expect("serialise");
            record_log::encode(&json, &mut buf);
            count += 1;
        }
        let io = io_err(path);
        crate::fsutil::write_atomic(path, &buf).map_err(io)?;
        tracing::info!(before = self.records, after = count, "store: compacted");
        self.file = open_append(path)?;
        self.file.lock().map_err(io_err(path))?;
        self.inode = self.file.metadata().map_err(io_err(path))?.ino();
        self.offset = buf.len() as u64;
        self.lines = count;
        self.records = count;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, StoreError> {
    crate::fsutil::open_private_append(path).map_err(io_err(path))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::fs::OpenOptions;

    fn record(code: &str, tenant: &str) -> LinkRecord {
        LinkRecord::for_tests(code, tenant, "https://example.com/")
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir, 8, Arc::new(SharedLinkTable::default()), true).unwrap()
    }

    fn create(store: &Store, code: Option<&str>, tenant: &str) -> Result<LinkRecord, StoreError> {
        store
            .create_links(vec![NewLink {
                code: code.map(Into::into),
                record: record("", tenant),
            }])
            .remove(0)
    }

    #[test]
    fn links_survive_reopen_and_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        create(&store, Some("abc"), "t1").unwrap();
        let random = create(&store, None, "t1").unwrap();
        assert_eq!(random.code.len(), 8);
        assert!(matches!(
            create(&store, Some("abc"), "t2"),
            Err(StoreError::CodeTaken(_))
        ));
        drop(store);
        let store = open(dir.path());
        assert!(store.get_link("abc").is_some());
        assert!(store.table().load().get(&random.code).is_some());
    }

    #[test]
    fn a_torn_tail_loses_nothing_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        create(&store, Some("keep"), "t").unwrap();
        drop(store);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(STORE_FILE))
            .unwrap();
        f.write_all(b"1234abcd {\"kind\":\"link\",\"co").unwrap();
        drop(f);
        let store = open(dir.path());
        assert!(store.get_link("keep").is_some());
        create(&store, Some("after"), "t").unwrap();
        drop(store);
        let store = open(dir.path());
        assert!(store.get_link("after").is_some());
    }

    #[test]
    fn corruption_in_the_middle_stops_start_up_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        create(&store, Some("a"), "t").unwrap();
        create(&store, Some("b"), "t").unwrap();
        drop(store);
        let path = dir.path().join(STORE_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"a\"", "\"x\"", 1)).unwrap();
        let err = Store::open(dir.path(), 8, Arc::default(), true)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                StoreError::Read {
                    source: record_log::ReadError::Corrupt { line: 1 },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn another_process_appends_are_picked_up_by_poll() {
        let dir = tempfile::tempdir().unwrap();
        let serve = open(dir.path());
        let cli = Store::open(dir.path(), 8, Arc::default(), false).unwrap();
        create(&cli, Some("from-cli"), "t").unwrap();
        assert!(serve.table().load().get("from-cli").is_none());
        serve.poll().unwrap();
        assert!(serve.table().load().get("from-cli").is_some());
        // And the serve side's own write still sees the CLI's record first.
        create(&serve, Some("from-serve"), "t").unwrap();
        cli.poll().unwrap();
        assert!(cli.get_link("from-serve").is_some());
    }

    #[test]
    fn listing_is_per_tenant_and_paged_by_code() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for c in ["a1", "a2", "a3"] {
            create(&store, Some(c), "A").unwrap();
        }
        create(&store, Some("b1"), "B").unwrap();
        let page = store.list_links(Some("A"), None, 2);
        assert_eq!(
            page.iter().map(|l| l.code.as_str()).collect::<Vec<_>>(),
            ["a1", "a2"]
        );
        let rest = store.list_links(Some("A"), Some("a2"), 2);
        assert_eq!(rest.len(), 1);
        assert_eq!(store.list_links(None, None, 10).len(), 4);
        store
            .update_link::<StoreError>("a1", |l| {
                l.deleted = true;
                Ok(())
            })
            .unwrap();
        assert_eq!(store.list_links(Some("A"), None, 10).len(), 2);
        assert!(store.get_link("a1").is_none());
        // The tombstone keeps the code taken.
        assert!(matches!(
            create(&store, Some("a1"), "A"),
            Err(StoreError::CodeTaken(_))
        ));
    }

    #[test]
    fn listing_all_tenants_merges_them_in_code_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for (code, tenant) in [("d", "B"), ("a", "A"), ("e", "C"), ("b", "B"), ("c", "A")] {
            create(&store, Some(code), tenant).unwrap();
        }
        let codes = |page: Vec<LinkRecord>| page.into_iter().map(|l| l.code).collect::<Vec<_>>();
        assert_eq!(codes(store.list_links(None, None, 3)), ["a", "b", "c"]);
        assert_eq!(codes(store.list_links(None, Some("c"), 3)), ["d", "e"]);
        assert_eq!(codes(store.list_links(Some("B"), Some("b"), 3)), ["d"]);
        assert!(store.list_links(Some("nobody"), None, 3).is_empty());
    }

    #[test]
    fn a_changed_link_moves_between_tenants_and_keeps_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        create(&store, Some("x"), "A").unwrap();
        store
            .update_link::<StoreError>("x", |l| {
                l.tenant = "B".into();
                l.destination = "https://changed.example/".into();
                Ok(())
            })
            .unwrap();
        assert!(store.list_links(Some("A"), None, 10).is_empty());
        assert_eq!(store.list_links(Some("B"), None, 10).len(), 1);
        let published = store.table().load_full();
        let link = published.get("x").unwrap();
        assert_eq!(link.destination(), "https://changed.example/");
        // The store's table and the published one hold the same `Link`.
        assert!(Arc::ptr_eq(link, store.lock().links.get("x").unwrap()));
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.get_link("x").unwrap().tenant, "B");
    }

    #[test]
    fn tokens_are_found_by_hash_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let t = crate::tokens::mint("acme", Utc::now());
        store.add_token(t.record.clone()).unwrap();
        let hash = crate::tokens::hash_token(&t.secret);
        assert_eq!(store.token_by_hash(&hash).unwrap().tenant, "acme");
        store.revoke_token(&t.record.id).unwrap();
        assert!(store.token_by_hash(&hash).is_none());
        assert!(matches!(
            store.revoke_token(&t.record.id),
            Err(StoreError::NotFound)
        ));
    }
}
