//! The link table the edge reads: an immutable persistent hash table
//! published through one `ArcSwap`.
//!
//! The redirect path does one atomic load and one hash lookup; the writer
//! (the store, serialised by its own lock) keeps its own copy, changes it
//! with copy-on-write and publishes a clone. Readers never wait and never
//! see a half-applied batch.
//!
//! Layout: extendible hashing. A directory of `2^depth` entries points to
//! buckets of at most [`BUCKET_SLOTS`] links; entry `i` holds the links
//! whose hash starts with the bits of `i`, and a bucket that needs fewer
//! bits is shared by neighbouring entries. A full bucket splits in two
//! (doubling the directory only when it was already as deep), so growing
//! never rehashes the table. The directory is cut into shared chunks:
//! cloning a table copies the list of chunks and shares everything else;
//! changing a link copies one chunk and one bucket. A million links take
//! about 19 bytes each here; a batch of 1000 new codes copies most chunks
//! (they are spread by hash) and about 1000 small buckets.

use std::hash::BuildHasher;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Link;

/// Most links in a bucket before it splits: lookups scan at most this many
/// hashes.
const BUCKET_SLOTS: usize = 32;
/// The directory stops doubling here (16M entries, about 500M links);
/// buckets then grow past `BUCKET_SLOTS` instead.
const MAX_DEPTH: u32 = 24;

#[derive(Clone)]
struct Slot {
    hash: u64,
    link: Arc<Link>,
}

#[derive(Clone)]
struct Entry {
    bucket: Arc<[Slot]>,
    /// How many leading hash bits the bucket's links share.
    depth: u32,
}

/// The directory is cut into shared chunks of this many entries, so one
/// change copies one chunk, not the whole directory.
const CHUNK_BITS: u32 = 8;
const CHUNK_MASK: usize = (1 << CHUNK_BITS) - 1;

#[derive(Clone)]
pub struct LinkTable {
    /// `2^depth` entries, in chunks of `2^CHUNK_BITS` (one smaller chunk
    /// while the directory is smaller).
    dir: Vec<Arc<[Entry]>>,
    depth: u32,
    len: usize,
    hasher: std::hash::RandomState,
}

impl Default for LinkTable {
    fn default() -> Self {
        LinkTable {
            dir: vec![Arc::new([Entry {
                bucket: Arc::new([]),
                depth: 0,
            }])],
            depth: 0,
            len: 0,
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl LinkTable {
    #[inline]
    pub fn get(&self, code: &str) -> Option<&Arc<Link>> {
        let hash = self.hasher.hash_one(code);
        self.entry(self.index(hash))
            .bucket
            .iter()
            .find(|s| s.hash == hash && s.link.code() == code)
            .map(|s| &s.link)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every link, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Link>> {
        let depth = self.depth;
        self.dir
            .iter()
            .flat_map(|chunk| chunk.iter())
            .enumerate()
            // A bucket shared by 2^k entries is visited at the first one.
            .filter(move |(i, e)| i % (1usize << (depth - e.depth)) == 0)
            .flat_map(|(_, e)| e.bucket.iter().map(|s| &s.link))
    }

    /// Adds a link, or replaces the one with the same code (returned).
    pub fn insert(&mut self, link: impl Into<Arc<Link>>) -> Option<Arc<Link>> {
        let link = link.into();
        let hash = self.hasher.hash_one(link.code());
        loop {
            let i = self.index(hash);
            let entry = self.entry(i);
            let found = entry
                .bucket
                .iter()
                .position(|s| s.hash == hash && s.link.code() == link.code());
            if let Some(pos) = found {
                let mut slots = entry.bucket.to_vec();
                let old = std::mem::replace(&mut slots[pos].link, link);
                self.set_bucket(i, slots.into());
                return Some(old);
            }
            if entry.bucket.len() < BUCKET_SLOTS || entry.depth >= MAX_DEPTH {
                let mut slots = Vec::with_capacity(entry.bucket.len() + 1);
                slots.extend_from_slice(&entry.bucket);
                slots.push(Slot { hash, link });
                self.set_bucket(i, slots.into());
                self.len += 1;
                return None;
            }
            self.split(i);
        }
    }

    #[inline]
    fn index(&self, hash: u64) -> usize {
        // The leading `depth` bits (`checked_shr`: none at depth 0).
        hash.checked_shr(64 - self.depth).unwrap_or(0) as usize
    }

    #[inline]
    fn entry(&self, i: usize) -> &Entry {
        &self.dir[i >> CHUNK_BITS][i & CHUNK_MASK]
    }

    /// Entry `i`, copying its chunk first if another table shares it.
    fn entry_mut(&mut self, i: usize) -> &mut Entry {
        let chunk = &mut self.dir[i >> CHUNK_BITS];
        if Arc::get_mut(chunk).is_none() {
            *chunk = Arc::from(chunk.to_vec());
        }
        &mut Arc::get_mut(chunk).expect("the chunk was just copied")[i & CHUNK_MASK]
    }

    /// The directory entries sharing entry `i`'s bucket.
    fn aliases(&self, i: usize) -> std::ops::Range<usize> {
        let shared = 1usize << (self.depth - self.entry(i).depth);
        let first = i & !(shared - 1);
        first..first + shared
    }

    fn set_bucket(&mut self, i: usize, bucket: Arc<[Slot]>) {
        for j in self.aliases(i) {
            self.entry_mut(j).bucket = bucket.clone();
        }
    }

    /// Splits entry `i`'s bucket in two by its next hash bit.
    fn split(&mut self, i: usize) {
        let mut i = i;
        if self.entry(i).depth == self.depth {
            let doubled: Vec<Entry> = self
                .dir
                .iter()
                .flat_map(|chunk| chunk.iter())
                .flat_map(|e| [e.clone(), e.clone()])
                .collect();
            self.dir = doubled.chunks(1 << CHUNK_BITS).map(Arc::from).collect();
            self.depth += 1;
            i *= 2;
        }
        let depth = self.entry(i).depth;
        let bit = 63 - depth;
        let (high, low): (Vec<Slot>, Vec<Slot>) = self
            .entry(i)
            .bucket
            .iter()
            .cloned()
            .partition(|s| (s.hash >> bit) & 1 == 1);
        let (low, high): (Arc<[Slot]>, Arc<[Slot]>) = (low.into(), high.into());
        let aliases = self.aliases(i);
        let half = aliases.start + aliases.len() / 2;
        for j in aliases {
            let e = self.entry_mut(j);
            e.bucket = if j < half { low.clone() } else { high.clone() };
            e.depth = depth + 1;
        }
    }
}

/// The published table plus a swap counter for metrics.
pub struct SharedLinkTable {
    current: ArcSwap<LinkTable>,
}

impl Default for SharedLinkTable {
    fn default() -> Self {
        SharedLinkTable {
            current: ArcSwap::from_pointee(LinkTable::default()),
        }
    }
}

impl SharedLinkTable {
    /// One atomic load; never hold the guard across an `.await`.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<LinkTable>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<LinkTable> {
        self.current.load_full()
    }

    /// Applies `changes` to a copy of the current table and publishes it.
    /// Callers serialise writes.
    pub fn update(&self, changes: impl IntoIterator<Item = Link>) -> usize {
        let mut next = LinkTable::clone(&self.current.load());
        for link in changes {
            next.insert(link);
        }
        let len = next.len();
        self.replace(next);
        len
    }

    /// Publishes `table` in place of the current one.
    pub fn replace(&self, table: LinkTable) {
        let len = table.len();
        self.current.store(Arc::new(table));
        crate::telemetry::link_table_swapped(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::LinkRecord;
    use proptest::prelude::*;

    fn link(code: &str, destination: &str) -> Link {
        Link::compile(LinkRecord::for_tests(code, "t", destination))
    }

    #[test]
    fn a_published_table_does_not_see_later_changes() {
        let shared = SharedLinkTable::default();
        shared.update([link("a", "https://one.example/")]);
        let before = shared.load_full();
        shared.update([
            link("a", "https://two.example/"),
            link("b", "https://b.example/"),
        ]);
        assert_eq!(before.len(), 1);
        assert_eq!(
            before.get("a").unwrap().destination(),
            "https://one.example/"
        );
        assert!(before.get("b").is_none());
        let after = shared.load();
        assert_eq!(after.len(), 2);
        assert_eq!(
            after.get("a").unwrap().destination(),
            "https://two.example/"
        );
    }

    #[test]
    fn many_links_split_buckets_and_stay_findable() {
        let mut table = LinkTable::default();
        let mut snapshots = Vec::new();
        for i in 0..5000 {
            table.insert(link(&format!("c{i}"), "https://x.example/"));
            if i % 1000 == 0 {
                snapshots.push((i + 1, table.clone()));
            }
        }
        assert_eq!(table.len(), 5000);
        assert_eq!(table.iter().count(), 5000);
        assert!((0..5000).all(|i| table.get(&format!("c{i}")).is_some()));
        assert!(table.get("c5000").is_none());
        // Older versions still hold exactly what they held.
        for (len, snap) in snapshots {
            assert_eq!(snap.len(), len);
            assert_eq!(snap.iter().count(), len);
            assert!((0..len).all(|i| snap.get(&format!("c{i}")).is_some()));
            assert!(snap.get(&format!("c{len}")).is_none());
        }
    }

    proptest! {
        /// The table answers like a plain map under any mix of inserts
        /// and replacements.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u16..300, 0u8..4), 0..600)) {
            let mut table = LinkTable::default();
            let mut model = std::collections::HashMap::new();
            for (code, version) in ops {
                let code = format!("k{code}");
                let dest = format!("https://v{version}.example/");
                let old = table.insert(link(&code, &dest)).map(|l| l.destination().to_owned());
                prop_assert_eq!(old, model.insert(code, dest));
            }
            prop_assert_eq!(table.len(), model.len());
            prop_assert_eq!(table.iter().count(), model.len());
            for (code, dest) in &model {
                prop_assert_eq!(table.get(code).map(|l| l.destination()), Some(dest.as_str()));
            }
        }
    }
}
