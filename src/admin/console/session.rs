//! Console sessions and CSRF tokens.
//!
//! Signing in with an API token makes a session: a random id in an
//! `HttpOnly; SameSite=Strict` cookie (`Secure` when the console is reached
//! over HTTPS), kept here only as its BLAKE3 digest, with the token's hash
//! (a revoked token ends its sessions), an expiry, and the session's CSRF
//! token, which every form carries back. Sessions live in memory: a
//! restart signs everyone out. Signing out removes the session, so a
//! replayed cookie is refused.
//!
//! The sign-in form has no session yet; it is protected by a double-submit
//! token: a random cookie whose value the form must repeat.

use std::time::Duration;

use dashmap::DashMap;
use rand::Rng;
use subtle::ConstantTimeEq;

use crate::admin::auth::Principal;

pub const SESSION_COOKIE: &str = "ce_console";
pub const SIGN_IN_COOKIE: &str = "ce_console_signin";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most sessions held at once; the oldest expired ones are purged first,
/// and beyond this sign-in is refused until some expire.
const MAX_SESSIONS: usize = 10_000;
const ID_BYTES: usize = 32;

#[derive(Debug, Clone)]
pub struct Session {
    pub who: Principal,
    pub token_hash: String,
    pub csrf: String,
    expires_at_ms: i64,
}

#[derive(Default)]
pub struct Sessions {
    by_digest: DashMap<[u8; 32], Session>,
}

/// A fresh random value, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; ID_BYTES];
    rand::rng().fill(&mut bytes[..]);
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}

fn digest(id: &str) -> [u8; 32] {
    *blake3::hash(id.as_bytes()).as_bytes()
}

/// Constant-time equality of two presented secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    /// Starts a session; returns its cookie value, or `None` when full.
    pub fn create(&self, who: Principal, token_hash: String, now_ms: i64) -> Option<String> {
        if self.by_digest.len() >= MAX_SESSIONS {
            self.by_digest.retain(|_, s| s.expires_at_ms > now_ms);
            if self.by_digest.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let id = random_token();
        let session = Session {
            who,
            token_hash,
            csrf: random_token(),
            expires_at_ms: now_ms + SESSION_TTL.as_millis() as i64,
        };
        self.by_digest.insert(digest(&id), session);
        Some(id)
    }

    /// The live session of a cookie value; expired ones are removed.
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        if id.len() > 2 * ID_BYTES {
            return None;
        }
        let key = digest(id);
        let session = self.by_digest.get(&key)?.clone();
        if session.expires_at_ms <= now_ms {
            self.by_digest.remove(&key);
            return None;
        }
        Some(session)
    }

    /// Ends a session (sign-out, or its token was revoked).
    pub fn revoke(&self, id: &str) {
        self.by_digest.remove(&digest(id));
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the console's path.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/console; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Principal {
        Principal {
            tenant: Some("acme".into()),
        }
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_expires_or_is_revoked() {
        let s = Sessions::default();
        let id = s.create(who(), "h".into(), 0).unwrap();
        assert_eq!(s.get(&id, 1).unwrap().who, who());
        assert!(s.get("not-the-id", 1).is_none());
        assert!(s.get(&id, SESSION_TTL.as_millis() as i64).is_none());
        let id = s.create(who(), "h".into(), 0).unwrap();
        s.revoke(&id);
        assert!(s.get(&id, 1).is_none());
    }

    #[test]
    fn cookies_are_read_by_exact_name_and_set_strict_and_http_only() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "ce_console_signin=a; ce_console=b".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("b"));
        assert_eq!(cookie(&h, SIGN_IN_COOKIE), Some("a"));
        let c = set_cookie(SESSION_COOKIE, "v", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie(SESSION_COOKIE, "v", 60, false).contains("Secure"));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
    }
}
