//! The master key and the keys derived from it.
//!
//! The master key never leaves this module: callers get purpose-bound keys
//! derived with `blake3::derive_key`, so a leaked click-id tag key reveals
//! nothing about the secret-encryption key. The IP-hash salt is deliberately
//! *not* derived from the master key (see `clicks::iphash`): anything derived
//! from a long-lived secret could be re-derived later, defeating rotation.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Env var holding the master key as 64 hex chars.
pub const MASTER_KEY_ENV: &str = "CLICKEDGE_MASTER_KEY";
const KEY_FILE_NAME: &str = "master.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{source_name}: master key must be 64 hex characters")]
    Malformed { source_name: String },
    #[error("master key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("full mode needs a shared master key: set {MASTER_KEY_ENV} or `master_key_file`")]
    MissingInFullMode,
}

/// The 32-byte master key; zeroed on drop.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Where the key came from, for the start-up log line (never the key itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File,
    Generated,
}

impl MasterKey {
    /// Env var first, then the configured file, then (embedded mode only) a
    /// key generated once into `data_dir/master.key` with 0600 permissions.
    pub fn load(
        env_value: Option<&str>,
        key_file: Option<&Path>,
        data_dir: &Path,
        embedded: bool,
    ) -> Result<(MasterKey, KeySource), KeyError> {
        if let Some(hex) = env_value {
            return Ok((Self::parse(hex, MASTER_KEY_ENV)?, KeySource::Env));
        }
        if let Some(path) = key_file {
            return Ok((Self::read(path)?, KeySource::File));
        }
        if !embedded {
            return Err(KeyError::MissingInFullMode);
        }
        let path = data_dir.join(KEY_FILE_NAME);
        if path.exists() {
            return Ok((Self::read(&path)?, KeySource::File));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        rand::Rng::fill(&mut rand::rng(), &mut key[..]);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let text = Zeroizing::new(hex::encode(*key));
        f.write_all(text.as_bytes()).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok((MasterKey(key), KeySource::Generated))
    }

    fn read(path: &Path) -> Result<MasterKey, KeyError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| KeyError::Io {
                    path: path.to_owned(),
                    source,
                })?,
            );
        Self::parse(text.trim(), &path.display().to_string())
    }

    fn parse(hex_text: &str, source_name: &str) -> Result<MasterKey, KeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_text.trim(), &mut key[..]).map_err(|_| KeyError::Malformed {
            source_name: source_name.to_owned(),
        })?;
        Ok(MasterKey(key))
    }

    /// A key for one purpose; `context` must be a fixed, versioned string.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0[..])
    }

    /// A fixed key for tests and benches.
    pub fn for_tests() -> MasterKey {
        MasterKey(Zeroizing::new([7u8; 32]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn embedded_mode_generates_a_private_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, src) = MasterKey::load(None, None, dir.path(), true).unwrap();
        assert_eq!(src, KeySource::Generated);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, src) = MasterKey::load(None, None, dir.path(), true).unwrap();
        assert_eq!(src, KeySource::File);
        assert_eq!(a.derive("t"), b.derive("t"));
    }

    #[test]
    fn env_key_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "11".repeat(32);
        let (k, src) = MasterKey::load(Some(&hex), None, dir.path(), true).unwrap();
        assert_eq!(src, KeySource::Env);
        assert_ne!(k.derive("a"), k.derive("b"));
        assert!(MasterKey::load(Some("abc"), None, dir.path(), true).is_err());
        assert!(matches!(
            MasterKey::load(None, None, dir.path(), false),
            Err(KeyError::MissingInFullMode)
        ));
    }
}
