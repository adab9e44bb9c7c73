//! Client-IP hashing with a forward-secret salt ratchet.
//!
//! `ip_hash = keyed_blake3(salt[epoch], ip)[..16]`, with
//! `epoch = floor(unix_time / salt_rotation)` and
//! `salt[n+1] = blake3::derive_key("clickedge 2026 ip salt v1", salt[n])`.
//!
//! The first salt is random. Only the current salt (and, for `salt_grace`
//! after a rotation, the previous one) is ever held, in memory and in
//! `<data_dir>/salt.state`; the state file is replaced atomically on every
//! step. Going forward is one hash; going back would need a blake3 preimage,
//! so once a salt is gone nobody, the operator included, can recompute the
//! hashes made under it. No long-lived secret derives salts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use arc_swap::ArcSwap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const RATCHET_CONTEXT: &str = "clickedge 2026 ip salt v1";
const STATE_FILE: &str = "salt.state";
/// More epochs than this behind and the hot path stops deriving on the fly.
const MAX_INLINE_STEPS: u64 = 4;

pub type Salt = Zeroizing<[u8; 32]>;

#[derive(Debug, thiserror::Error)]
pub enum SaltError {
    #[error("salt state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("salt state {path}: {message}")]
    Bad { path: PathBuf, message: String },
}

/// An IP hash and the salt epoch it was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpHash {
    pub epoch: u64,
    pub digest: [u8; 16],
}

impl IpHash {
    /// A compact key for counting distinct visitors.
    pub fn visitor_key(&self) -> u64 {
        u64::from_le_bytes(self.digest[..8].try_into().expect("8 bytes"))
    }
}

#[derive(Clone)]
struct Salts {
    epoch: u64,
    salt: Salt,
    previous: Option<(u64, Salt)>,
}

pub struct SaltRatchet {
    rotation_ms: u64,
    grace_ms: u64,
    current: ArcSwap<Salts>,
    path: PathBuf,
}

fn next_salt(salt: &[u8; 32]) -> Salt {
    Zeroizing::new(blake3::derive_key(RATCHET_CONTEXT, salt))
}

fn advance(salt: &[u8; 32], steps: u64) -> Salt {
    let mut s = Zeroizing::new(*salt);
    for _ in 0..steps {
        s = next_salt(&s);
    }
    s
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    rotation_ms: u64,
    epoch: u64,
    salt: String,
    previous: Option<(u64, String)>,
}

impl SaltRatchet {
    /// Loads `<data_dir>/salt.state` (creating a random first salt) and
    /// brings it to the epoch of `now_ms`.
    pub fn open(
        data_dir: &Path,
        rotation: std::time::Duration,
        grace: std::time::Duration,
        now_ms: u64,
    ) -> Result<SaltRatchet, SaltError> {
        let path = data_dir.join(STATE_FILE);
        let rotation_ms = rotation.as_millis() as u64;
        let epoch_now = now_ms / rotation_ms;
        let salts = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bad = |message: String| SaltError::Bad {
                    path: path.clone(),
                    message,
                };
                let text = Zeroizing::new(text);
                let state: StateFile =
                    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
                let salt = parse_salt(&state.salt).ok_or_else(|| bad("bad salt".into()))?;
                let previous = match &state.previous {
                    Some((e, s)) => {
                        Some((*e, parse_salt(s).ok_or_else(|| bad("bad salt".into()))?))
                    }
                    None => None,
                };
                if state.rotation_ms != rotation_ms {
                    // Epoch numbers mean something else now: step once and
                    // re-base, so nothing made under the old numbering matches.
                    tracing::warn!("privacy.salt_rotation changed: ratcheting the salt once");
                    Salts {
                        epoch: epoch_now,
                        salt: next_salt(&salt),
                        previous: None,
                    }
                } else {
                    Salts {
                        epoch: state.epoch,
                        salt,
                        previous,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut salt = Zeroizing::new([0u8; 32]);
                rand::rng().fill(&mut salt[..]);
                Salts {
                    epoch: epoch_now,
                    salt,
                    previous: None,
                }
            }
            Err(source) => return Err(SaltError::Io { path, source }),
        };
        let ratchet = SaltRatchet {
            rotation_ms,
            grace_ms: grace.as_millis() as u64,
            current: ArcSwap::from_pointee(salts),
            path,
        };
        ratchet.persist(&ratchet.current.load())?;
        ratchet.tick(now_ms)?;
        Ok(ratchet)
    }

    /// Hashes `ip` under the salt of `now_ms`'s epoch. No allocation, no lock.
    pub fn hash(&self, ip: IpAddr, now_ms: u64) -> IpHash {
        let salts = self.current.load();
        let epoch = now_ms / self.rotation_ms;
        let owned;
        let (epoch, salt): (u64, &[u8; 32]) = if epoch == salts.epoch {
            (epoch, &salts.salt)
        } else if epoch > salts.epoch && epoch - salts.epoch <= MAX_INLINE_STEPS {
            // The ticker has not stepped yet; derive forward without storing.
            owned = advance(&salts.salt, epoch - salts.epoch);
            (epoch, &owned)
        } else {
            match &salts.previous {
                Some((e, s)) if *e == epoch => (epoch, s),
                _ => (salts.epoch, &salts.salt),
            }
        };
        let digest = match ip.to_canonical() {
            IpAddr::V4(v4) => blake3::keyed_hash(salt, &v4.octets()),
            IpAddr::V6(v6) => blake3::keyed_hash(salt, &v6.octets()),
        };
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest.as_bytes()[..16]);
        IpHash { epoch, digest: out }
    }

    /// Steps the ratchet when an epoch has passed and forgets the previous
    /// salt once its grace period is over. Returns whether anything changed.
    pub fn tick(&self, now_ms: u64) -> Result<bool, SaltError> {
        let salts = self.current.load_full();
        let epoch = now_ms / self.rotation_ms;
        let next = if epoch > salts.epoch {
            let prev = advance(&salts.salt, epoch - salts.epoch - 1);
            let salt = next_salt(&prev);
            let in_grace = now_ms < epoch * self.rotation_ms + self.grace_ms;
            Salts {
                epoch,
                salt,
                previous: in_grace.then_some((epoch - 1, prev)),
            }
        } else if salts.previous.is_some()
            && now_ms >= salts.epoch * self.rotation_ms + self.grace_ms
        {
            Salts {
                previous: None,
                ..Salts::clone(&salts)
            }
        } else {
            return Ok(false);
        };
        // Forget the old salt in memory first: a disk that refuses the new
        // state must not keep an expired salt alive.
        let next = std::sync::Arc::new(next);
        self.current.store(std::sync::Arc::clone(&next));
        if let Err(e) = self.persist(&next) {
            // And not on disk either. A restart then starts a fresh chain
            // (uniques restart too), which is the private failure mode.
            let _ = std::fs::remove_file(&self.path);
            return Err(e);
        }
        tracing::info!(epoch, "privacy: ip-hash salt stepped");
        Ok(true)
    }

    /// Writes the state atomically: temp file, fsync, rename, fsync dir.
    fn persist(&self, salts: &Salts) -> Result<(), SaltError> {
        let state = StateFile {
            rotation_ms: self.rotation_ms,
            epoch: salts.epoch,
            salt: hex::encode(*salts.salt),
            previous: salts.previous.as_ref().map(|(e, s)| (*e, hex::encode(**s))),
        };
        let text = Zeroizing::new(serde_json::to_string(&state).expect("serialise"));
        let _wipe = Zeroizing::new(state.salt);
        crate::fsutil::write_atomic(&self.path, text.as_bytes()).map_err(|source| SaltError::Io {
            path: self.path.clone(),
            source,
        })
    }

    pub fn current_epoch(&self) -> u64 {
        self.current.load().epoch
    }

    /// When the salt in use began its epoch, Unix ms.
    pub fn epoch_start_ms(&self) -> u64 {
        self.current.load().epoch * self.rotation_ms
    }

    pub fn rotation_ms(&self) -> u64 {
        self.rotation_ms
    }
}

fn parse_salt(hex_text: &str) -> Option<Salt> {
    let mut salt = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_text, &mut salt[..]).ok()?;
    Some(salt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const HOUR_MS: u64 = 3_600_000;

    fn open(dir: &Path, now_ms: u64) -> SaltRatchet {
        SaltRatchet::open(
            dir,
            Duration::from_secs(3600),
            Duration::from_secs(300),
            now_ms,
        )
        .unwrap()
    }

    #[test]
    fn same_ip_same_epoch_same_hash_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let t = 100 * HOUR_MS + 10;
        let a = open(dir.path(), t).hash(ip, t);
        let b = open(dir.path(), t + 1000).hash(ip, t + 1000);
        assert_eq!(a, b);
        assert_ne!(
            a.digest,
            open(dir.path(), t)
                .hash("203.0.113.10".parse().unwrap(), t)
                .digest
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_hashes_like_ipv4() {
        let dir = tempfile::tempdir().unwrap();
        let r = open(dir.path(), HOUR_MS);
        assert_eq!(
            r.hash("192.0.2.1".parse().unwrap(), HOUR_MS),
            r.hash("::ffff:192.0.2.1".parse().unwrap(), HOUR_MS)
        );
    }

    #[test]
    fn rotation_changes_hashes_and_forgets_old_salts_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let t0 = 10 * HOUR_MS + 5;
        let r = open(dir.path(), t0);
        let before = r.hash(ip, t0);
        let old_state = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();

        // Next epoch, inside the grace period: the previous salt is kept.
        let t1 = 11 * HOUR_MS + 1000;
        assert!(r.tick(t1).unwrap());
        let after = r.hash(ip, t1);
        assert_ne!(before.digest, after.digest);
        assert_eq!(after.epoch, before.epoch + 1);
        assert_eq!(r.hash(ip, t0), before, "grace: old epoch still hashable");

        // After the grace period the old salt is gone from memory and disk.
        let t2 = 11 * HOUR_MS + 301_000;
        assert!(r.tick(t2).unwrap());
        assert_ne!(r.hash(ip, t0).digest, before.digest);
        let new_state = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        let old_salt: StateFile = serde_json::from_str(&old_state).unwrap();
        assert!(!new_state.contains(&old_salt.salt));
    }

    #[test]
    fn the_ratchet_only_goes_forward() {
        let s0 = Zeroizing::new([1u8; 32]);
        let s1 = next_salt(&s0);
        assert_eq!(*advance(&s0, 2), *next_salt(&s1));
        assert_ne!(*s1, *s0);
    }

    #[test]
    fn a_long_downtime_catches_up_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "192.0.2.55".parse().unwrap();
        let r = open(dir.path(), HOUR_MS);
        let later = 500 * HOUR_MS + 7;
        let expected = r.hash(ip, later); // derived forward lazily? (too far: uses current)
        drop(r);
        let r = open(dir.path(), later);
        assert_eq!(r.current_epoch(), 500);
        assert_eq!(r.hash(ip, later).epoch, 500);
        assert_ne!(r.hash(ip, later).digest, expected.digest);
    }
}
