//! Bearer-token authentication and tenant scoping.
//!
//! The presented token is hashed and looked up by hash; the token itself is
//! never stored or logged.

use http::HeaderMap;

use super::error::ApiError;
use crate::store::Store;
use crate::tokens::hash_token;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `None` for an admin token (`*`): every tenant is visible.
    pub tenant: Option<String>,
}

impl Principal {
    pub fn can_see(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }
}

/// Tokens longer than this are refused without hashing.
const MAX_TOKEN_LEN: usize = 256;

pub fn authenticate(store: &Store, headers: &HeaderMap) -> Result<Principal, ApiError> {
    // Two credentials are ambiguous whichever would win: refused outright.
    if headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(ApiError::new(
            http::StatusCode::BAD_REQUEST,
            "duplicate_header",
            "more than one `Authorization` header; send exactly one",
        ));
    }
    let value = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(ApiError::unauthorized)?;
    let (scheme, token) = value.split_once(' ').ok_or_else(ApiError::unauthorized)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(ApiError::unauthorized());
    }
    principal_for_token(store, token).map(|(who, _)| who)
}

/// The caller a presented token stands for, and the token's hash (the
/// console keeps the hash to end a session when the token is revoked).
pub fn principal_for_token(store: &Store, token: &str) -> Result<(Principal, String), ApiError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(ApiError::unauthorized());
    }
    let hash = hash_token(token);
    let who = principal_for_hash(store, &hash).ok_or_else(ApiError::unauthorized)?;
    Ok((who, hash))
}

/// The caller of a token hash that is still valid.
pub fn principal_for_hash(store: &Store, hash: &str) -> Option<Principal> {
    let record = store.token_by_hash(hash)?;
    Some(Principal {
        tenant: (!record.is_admin()).then_some(record.tenant),
    })
}
