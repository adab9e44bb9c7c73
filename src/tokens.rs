//! Admin API tokens: minted at random, stored only as a hash.
//!
//! A token is 256 random bits, so an unkeyed blake3 hash is enough to make
//! the stored form useless to a reader of the data directory.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

const TOKEN_PREFIX: &str = "ce_";
/// Tenant name that grants access to every tenant.
pub const ADMIN_TENANT: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public handle for listing and revoking; reveals nothing of the token.
    pub id: String,
    pub tenant: String,
    /// Hex blake3 of the token.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub revoked: bool,
}

impl TokenRecord {
    pub fn is_admin(&self) -> bool {
        self.tenant == ADMIN_TENANT
    }
}

/// A freshly minted token: the secret (shown once) and its record.
pub struct NewToken {
    pub secret: String,
    pub record: TokenRecord,
}

pub fn hash_token(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Tenants are what links and tokens are scoped to.
pub fn is_valid_tenant(tenant: &str) -> bool {
    tenant == ADMIN_TENANT
        || (!tenant.is_empty()
            && tenant.len() <= 64
            && tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
}

pub fn mint(tenant: &str, now: DateTime<Utc>) -> NewToken {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    let secret = format!(
        "{TOKEN_PREFIX}{}",
        data_encoding::BASE64URL_NOPAD.encode(&bytes)
    );
    let mut id_bytes = [0u8; 6];
    rand::rng().fill(&mut id_bytes);
    let record = TokenRecord {
        id: format!("tok_{}", hex::encode(id_bytes)),
        tenant: tenant.to_owned(),
        hash: hash_token(&secret),
        created_at: now,
        revoked: false,
    };
    NewToken { secret, record }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_stored_only_as_their_hash() {
        let t = mint("acme", Utc::now());
        assert!(t.secret.starts_with("ce_"));
        assert_eq!(t.record.hash, hash_token(&t.secret));
        let json = serde_json::to_string(&t.record).unwrap();
        assert!(!json.contains(&t.secret));
        assert_ne!(mint("acme", Utc::now()).secret, t.secret);
    }

    #[test]
    fn tenant_names_are_restricted() {
        assert!(is_valid_tenant("acme"));
        assert!(is_valid_tenant("*"));
        assert!(!is_valid_tenant(""));
        assert!(!is_valid_tenant("a b"));
        assert!(!is_valid_tenant("**"));
    }
}
