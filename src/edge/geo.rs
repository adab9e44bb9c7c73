//! The visitor's country: from a header set by a trusted proxy
//! (`[geo] country_header`, e.g. `CF-IPCountry`) or from a MaxMind-format
//! database file (`[geo] mmdb`), reloaded when the file changes.
//!
//! The redirect path asks [`Geo::country`]: a header lookup, or one
//! `ArcSwap` load and a lookup in the database held in memory. Neither
//! configured, it answers "unknown" at once. The header counts only when
//! the socket peer is in `[edge] trusted_proxies` (anyone else could send
//! it); the database is asked about the client IP (`X-Forwarded-For` from
//! a trusted proxy, else the peer). The file is read into memory rather
//! than mapped: replacing a mapped file in place would crash the process,
//! and a country database is a few megabytes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use maxminddb::{PathElement, Reader};
use tokio_util::sync::CancellationToken;

use crate::links::Route;

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("geo database {path}: {message}")]
    Mmdb { path: String, message: String },
}

/// Where countries come from; see the module doc.
#[derive(Default)]
pub struct Geo {
    header: Option<HeaderName>,
    trusted_proxies: Vec<IpNet>,
    mmdb: Option<Arc<Mmdb>>,
}

/// A database file and the copy of it in use.
pub struct Mmdb {
    path: PathBuf,
    current: ArcSwapOption<Reader<Vec<u8>>>,
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            inode: m.ino(),
        })
    }
}

impl Mmdb {
    /// Opens the database at `path`; start-up fails if it cannot be read.
    pub fn open(path: &Path) -> Result<(Arc<Mmdb>, Stamp), GeoError> {
        let stamp = Stamp::of(path).map_err(|e| mmdb_err(path, e))?;
        let reader = read(path)?;
        let db = Arc::new(Mmdb {
            path: path.to_owned(),
            current: ArcSwapOption::from_pointee(reader),
        });
        Ok((db, stamp))
    }

    /// The country the database gives for `ip`, or zeros.
    #[inline]
    pub fn country(&self, ip: IpAddr) -> [u8; 2] {
        let guard = self.current.load();
        let Some(reader) = guard.as_deref() else {
            return [0, 0];
        };
        let Ok(found) = reader.lookup(ip) else {
            return [0, 0];
        };
        // Country databases have `country`; city ones too; an anycast or
        // satellite range may only have `registered_country`.
        for top in ["country", "registered_country"] {
            let path = [PathElement::Key(top), PathElement::Key("iso_code")];
            if let Ok(Some(code)) = found.decode_path::<&str>(&path) {
                let code = Route::country_code(code.as_bytes());
                if code != [0, 0] {
                    return code;
                }
            }
        }
        [0, 0]
    }
}

fn mmdb_err(path: &Path, e: impl std::fmt::Display) -> GeoError {
    GeoError::Mmdb {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn read(path: &Path) -> Result<Reader<Vec<u8>>, GeoError> {
    Reader::open_readfile(path).map_err(|e| mmdb_err(path, e))
}

impl Geo {
    pub fn new(
        header: Option<HeaderName>,
        trusted_proxies: Vec<IpNet>,
        mmdb: Option<Arc<Mmdb>>,
    ) -> Geo {
        Geo {
            header,
            trusted_proxies,
            mmdb,
        }
    }

    /// The visitor's country (zeros when unknown). `peer` is the socket
    /// peer, `client` the client IP worked out from it.
    #[inline]
    pub fn country(&self, peer: IpAddr, client: IpAddr, headers: &HeaderMap) -> [u8; 2] {
        if let Some(name) = &self.header {
            let peer = peer.to_canonical();
            if self.trusted_proxies.iter().any(|net| net.contains(&peer)) {
                if let Some(v) = headers.get(name) {
                    let code = Route::country_code(v.as_bytes());
                    // `XX` is how proxies say "unknown".
                    if code != [0, 0] && code != *b"XX" {
                        return code;
                    }
                }
            }
        }
        match &self.mmdb {
            Some(db) => db.country(client),
            None => [0, 0],
        }
    }
}

/// Reloads the database whenever the file changes, until `shutdown`. A
/// file that does not load (a half-copied one) leaves the previous copy
/// serving and is tried again when it changes once more.
pub async fn watch(db: Arc<Mmdb>, mut loaded: Stamp, every: Duration, shutdown: CancellationToken) {
    let mut failed: Option<Stamp> = None;
    let mut ticker = crate::time::Ticker::new(every, shutdown);
    while ticker.tick().await {
        let Ok(seen) = Stamp::of(&db.path) else {
            continue;
        };
        if seen == loaded || Some(seen) == failed {
            continue;
        }
        let path = db.path.clone();
        match tokio::task::spawn_blocking(move || read(&path)).await {
            Ok(Ok(reader)) => {
                db.current.store(Some(Arc::new(reader)));
                loaded = seen;
                failed = None;
                tracing::info!(path = %db.path.display(), "geo: database reloaded");
            }
            Ok(Err(e)) => {
                failed = Some(seen);
                tracing::warn!(error = %e, "geo: reload failed; the previous database keeps serving");
            }
            Err(e) => tracing::warn!(error = %e, "geo: reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    /// A small database: 192.0.2.0/24 is DE, 198.51.100.0/24 only has a
    /// registered country (FR), 2001:db8::/32 is JP.
    pub(crate) fn tiny_mmdb() -> Vec<u8> {
        use serde::Serialize;
        #[derive(Serialize)]
        struct Country {
            iso_code: &'static str,
        }
        #[derive(Serialize)]
        struct Record {
            #[serde(skip_serializing_if = "Option::is_none")]
            country: Option<Country>,
            registered_country: Country,
        }
        let mut w = mmdb_writer::Writer::new("clickedge-test-country");
        let mut put = |net: &str, country: Option<&'static str>, registered: &'static str| {
            let rec = Record {
                country: country.map(|iso_code| Country { iso_code }),
                registered_country: Country {
                    iso_code: registered,
                },
            };
            w.insert(net.parse::<IpNet>().unwrap(), &rec).unwrap();
        };
        put("192.0.2.0/24", Some("DE"), "DE");
        put("198.51.100.0/24", None, "FR");
        put("2001:db8::/32", Some("JP"), "JP");
        w.to_bytes().unwrap()
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let geo = Geo::new(
            Some(HeaderName::from_static("cf-ipcountry")),
            vec!["10.0.0.0/8".parse().unwrap()],
            None,
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let h = headers("cf-ipcountry", "de");
        assert_eq!(geo.country(proxy, stranger, &h), *b"DE");
        assert_eq!(geo.country(stranger, stranger, &h), [0, 0]);
        for junk in ["XX", "T1", "DEU", "", "d"] {
            let h = headers("cf-ipcountry", junk);
            assert_eq!(geo.country(proxy, stranger, &h), [0, 0], "{junk:?}");
        }
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            geo.country(mapped, stranger, &headers("cf-ipcountry", "US")),
            *b"US"
        );
    }

    #[test]
    fn the_database_gives_the_country_or_the_registered_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        std::fs::write(&path, tiny_mmdb()).unwrap();
        let (db, _) = Mmdb::open(&path).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(db.country(ip("192.0.2.77")), *b"DE");
        assert_eq!(db.country(ip("198.51.100.1")), *b"FR");
        assert_eq!(db.country(ip("2001:db8::5")), *b"JP");
        assert_eq!(db.country(ip("203.0.113.1")), [0, 0]);
        // The header, when trusted, wins; otherwise the database answers.
        let geo = Geo::new(
            Some(HeaderName::from_static("cf-ipcountry")),
            vec!["10.0.0.0/8".parse().unwrap()],
            Some(db),
        );
        let h = headers("cf-ipcountry", "US");
        assert_eq!(geo.country(ip("10.1.1.1"), ip("192.0.2.1"), &h), *b"US");
        assert_eq!(geo.country(ip("192.0.2.1"), ip("192.0.2.1"), &h), *b"DE");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.mmdb");
        std::fs::write(&path, b"not a database").unwrap();
        let err = Mmdb::open(&path).err().unwrap().to_string();
        assert!(err.contains("junk.mmdb"), "{err}");
        let err = Mmdb::open(&dir.path().join("missing.mmdb")).err().unwrap();
        assert!(err.to_string().contains("missing.mmdb"));
    }

    #[tokio::test]
    async fn a_replaced_file_is_picked_up_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        let mut w = mmdb_writer::Writer::new("clickedge-test-country");
        #[derive(serde::Serialize)]
        struct C {
            country: std::collections::BTreeMap<&'static str, &'static str>,
        }
        let c = |code| C {
            country: [("iso_code", code)].into(),
        };
        w.insert("192.0.2.0/24".parse::<IpNet>().unwrap(), &c("NL"))
            .unwrap();
        std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
        let (db, stamp) = Mmdb::open(&path).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(db.country(ip), *b"NL");
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch(
            db.clone(),
            stamp,
            Duration::from_millis(20),
            stop.clone(),
        ));
        // Broken on disk: the old copy keeps serving.
        std::fs::write(dir.path().join("tmp"), b"garbage").unwrap();
        std::fs::rename(dir.path().join("tmp"), &path).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(db.country(ip), *b"NL");
        // Replaced with a good one (atomically, as operators should).
        std::fs::write(&path, tiny_mmdb()).unwrap();
        let mut seen = [0, 0];
        for _ in 0..100 {
            seen = db.country(ip);
            if seen == *b"DE" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen, *b"DE");
        stop.cancel();
        task.await.unwrap();
    }
}
