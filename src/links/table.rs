//! The link table the edge reads: an immutable persistent map published
//! through one `ArcSwap`.
//!
//! The redirect path does one atomic load and one hash lookup; writers (the
//! store, serialised by its own lock) clone the map in O(1), apply their
//! changes with path copying, and swap. Readers never wait and never see a
//! half-applied batch.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Link;

type Map = imbl::HashMap<Arc<str>, Arc<Link>>;

#[derive(Clone, Default)]
pub struct LinkTable {
    map: Map,
}

impl LinkTable {
    pub fn get(&self, code: &str) -> Option<&Arc<Link>> {
        self.map.get(code)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn insert(&mut self, link: Link) {
        let link = Arc::new(link);
        self.map.insert(Arc::from(link.code()), link);
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
    /// Callers serialise writes (the store holds its lock across this).
    pub fn update(&self, changes: impl IntoIterator<Item = Link>) -> usize {
        let mut next = LinkTable::clone(&self.current.load());
        for link in changes {
            next.insert(link);
        }
        let len = next.len();
        self.current.store(Arc::new(next));
        crate::telemetry::link_table_swapped(len);
        len
    }

    /// Replaces the whole table (start-up, full reload).
    pub fn replace(&self, table: LinkTable) {
        let len = table.len();
        self.current.store(Arc::new(table));
        crate::telemetry::link_table_swapped(len);
    }
}
