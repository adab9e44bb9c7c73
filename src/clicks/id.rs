//! Click ids: 32 chars, URL-safe, time-ordered, self-authenticating.
//!
//! Layout (20 bytes, then Crockford base32 in lowercase, whose alphabet is in
//! ASCII order, so string order is time order):
//!
//! ```text
//! | unix ms, 48 bit BE | 64 random bits | 48-bit tag = keyed blake3(first 14 bytes) |
//! ```
//!
//! The tag key is derived from the master key, so every node of a fleet can
//! tell a minted id from a forged one without a lookup; guessing a tag takes
//! 2^48 tries.

use rand::Rng;
use subtle::ConstantTimeEq;

pub const CLICK_ID_LEN: usize = 32;
const RAW_LEN: usize = 20;
const BODY_LEN: usize = 14;
const TAG_KEY_CONTEXT: &str = "clickedge 2026 click-id tag v1";
const ALPHABET: &str = "0123456789abcdefghjkmnpqrstvwxyz";

/// An encoded click id (ASCII, always valid UTF-8).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClickId([u8; CLICK_ID_LEN]);

impl ClickId {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("click ids are ASCII")
    }
}

impl std::fmt::Debug for ClickId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a presented click id turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Minted by a node holding our key, at this unix-ms time.
    Genuine { ts_ms: u64 },
    /// Well-formed but the tag does not verify.
    Forged,
    /// Not a click id at all.
    Malformed,
}

pub struct ClickIds {
    key: [u8; 32],
    encoding: data_encoding::Encoding,
}

impl ClickIds {
    pub fn new(master: &crate::keys::MasterKey) -> ClickIds {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str(ALPHABET);
        ClickIds {
            key: master.derive(TAG_KEY_CONTEXT),
            encoding: spec.encoding().expect("a valid base32 spec"),
        }
    }

    /// Mints an id for a click at `now_ms`. No heap allocation.
    pub fn mint(&self, now_ms: u64) -> ClickId {
        let mut raw = [0u8; RAW_LEN];
        raw[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
        rand::rng().fill(&mut raw[6..BODY_LEN]);
        let tag = self.tag(&raw[..BODY_LEN]);
        raw[BODY_LEN..].copy_from_slice(&tag);
        let mut out = [0u8; CLICK_ID_LEN];
        self.encoding.encode_mut(&raw, &mut out);
        ClickId(out)
    }

    pub fn verify(&self, id: &str) -> Verdict {
        if id.len() != CLICK_ID_LEN {
            return Verdict::Malformed;
        }
        let mut raw = [0u8; RAW_LEN];
        if self.encoding.decode_mut(id.as_bytes(), &mut raw).is_err() {
            return Verdict::Malformed;
        }
        let tag = self.tag(&raw[..BODY_LEN]);
        if bool::from(tag.ct_eq(&raw[BODY_LEN..])) {
            let mut ts = [0u8; 8];
            ts[2..].copy_from_slice(&raw[..6]);
            Verdict::Genuine {
                ts_ms: u64::from_be_bytes(ts),
            }
        } else {
            Verdict::Forged
        }
    }

    fn tag(&self, body: &[u8]) -> [u8; RAW_LEN - BODY_LEN] {
        let hash = blake3::keyed_hash(&self.key, body);
        let mut tag = [0u8; RAW_LEN - BODY_LEN];
        tag.copy_from_slice(&hash.as_bytes()[..RAW_LEN - BODY_LEN]);
        tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use proptest::prelude::*;

    fn ids() -> ClickIds {
        ClickIds::new(&MasterKey::for_tests())
    }

    #[test]
    fn minted_ids_are_url_safe_and_verify_with_their_time() {
        let ids = ids();
        let id = ids.mint(1_790_000_000_123);
        assert_eq!(id.as_str().len(), CLICK_ID_LEN);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(
            ids.verify(id.as_str()),
            Verdict::Genuine {
                ts_ms: 1_790_000_000_123
            }
        );
    }

    #[test]
    fn ids_sort_by_time() {
        let ids = ids();
        let a = ids.mint(1_000);
        let b = ids.mint(1_001);
        let c = ids.mint(999_999_999_999);
        assert!(a.as_str() < b.as_str() && b.as_str() < c.as_str());
    }

    #[test]
    fn another_key_or_a_flipped_char_is_a_forgery() {
        let id = ids().mint(5);
        let other = ClickIds::new(
            &MasterKey::load(Some(&"22".repeat(32)), None, "/".as_ref(), true)
                .unwrap()
                .0,
        );
        assert_eq!(other.verify(id.as_str()), Verdict::Forged);
        let mut s = id.as_str().to_owned();
        let last = if s.ends_with('0') { "1" } else { "0" };
        s.replace_range(31..32, last);
        assert_eq!(ids().verify(&s), Verdict::Forged);
        assert_eq!(ids().verify("short"), Verdict::Malformed);
        assert_eq!(ids().verify(&"u".repeat(32)), Verdict::Malformed);
    }

    proptest! {
        #[test]
        fn random_strings_never_verify(s in "[0-9a-z]{32}") {
            let genuine = matches!(ids().verify(&s), Verdict::Genuine { .. });
            prop_assert!(!genuine);
        }
    }
}
