//! `X-Clickedge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`.
//!
//! The MAC covers `"<t>.<raw body>"`, so neither the timestamp nor a single
//! byte of the body can change without the signature failing, and a captured
//! request replays only within the ±300 s window (replays inside it are
//! `duplicate`s by the ledger's idempotency key). Several `v1=` entries are
//! allowed so a network can sign with the old and the new secret while a
//! rotation is under way. Comparison is constant-time (`hmac`'s
//! `verify_slice`); nothing here logs or returns a secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "x-clickedge-signature";
/// Largest accepted distance between `t` and now, either direction.
pub const MAX_SKEW_SECS: i64 = 300;
/// Longest header value looked at.
const MAX_HEADER_BYTES: usize = 1024;
/// Most `v1=` entries looked at (a rotation needs two).
const MAX_SIGNATURES: usize = 8;
const MAC_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Clickedge-Signature header is missing")]
    Missing,
    #[error("the X-Clickedge-Signature header is not `t=<unix seconds>,v1=<hex>`")]
    Garbled,
    #[error("the signature timestamp is more than 300 s from now")]
    OutOfWindow,
    #[error("no signature matches")]
    Mismatch,
}

/// A parsed header: the timestamp and every `v1` MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    pub t: i64,
    pub v1: Vec<[u8; MAC_LEN]>,
}

impl SignatureHeader {
    /// Parses `t=…,v1=…[,v1=…]`; unknown keys (a future `v2`) are ignored.
    pub fn parse(value: &str) -> Result<SignatureHeader, SignatureError> {
        if value.len() > MAX_HEADER_BYTES {
            return Err(SignatureError::Garbled);
        }
        let mut t = None;
        let mut v1 = Vec::new();
        for item in value.split(',') {
            let (k, v) = item.trim().split_once('=').ok_or(SignatureError::Garbled)?;
            match k {
                "t" => {
                    if t.is_some()
                        || v.is_empty()
                        || v.len() > 12
                        || !v.bytes().all(|b| b.is_ascii_digit())
                    {
                        return Err(SignatureError::Garbled);
                    }
                    t = Some(v.parse::<i64>().map_err(|_| SignatureError::Garbled)?);
                }
                "v1" => {
                    let mut mac = [0u8; MAC_LEN];
                    hex::decode_to_slice(v, &mut mac).map_err(|_| SignatureError::Garbled)?;
                    if v1.len() < MAX_SIGNATURES {
                        v1.push(mac);
                    }
                }
                _ => {}
            }
        }
        match t {
            Some(t) if !v1.is_empty() => Ok(SignatureHeader { t, v1 }),
            _ => Err(SignatureError::Garbled),
        }
    }

    /// Checks the window, then every `v1` against every secret.
    pub fn verify(
        &self,
        secrets: &[&[u8]],
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), SignatureError> {
        if (now_secs - self.t).abs() > MAX_SKEW_SECS {
            return Err(SignatureError::OutOfWindow);
        }
        let mut matched = false;
        for secret in secrets {
            let mac = signer(secret, self.t, body);
            for v in &self.v1 {
                // No early exit: the work does not depend on which matched.
                matched |= mac.clone().verify_slice(v).is_ok();
            }
        }
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

fn signer(secret: &[u8], t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value a network would send (tests, docs, the CLI's `sign`).
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mac = signer(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"click_id":"x","txn_id":"1"}"#;
    const T: i64 = 1_790_000_000;
    /// HMAC-SHA256("whsec_test", "1790000000.{\"click_id\":\"x\",\"txn_id\":\"1\"}"),
    /// computed independently with `openssl dgst -sha256 -hmac`.
    const KNOWN: &str = "3da0023f073f64894a456df899da47995497118c27fff6c91b50017f2aecc05d";

    #[test]
    fn a_signature_made_with_the_secret_verifies_within_the_window() {
        let h = SignatureHeader::parse(&sign(SECRET, T, BODY)).unwrap();
        assert_eq!(h.verify(&[SECRET], BODY, T), Ok(()));
        assert_eq!(h.verify(&[SECRET], BODY, T + 300), Ok(()));
        assert_eq!(h.verify(&[SECRET], BODY, T - 300), Ok(()));
        assert_eq!(
            h.verify(&[SECRET], BODY, T + 301),
            Err(SignatureError::OutOfWindow)
        );
        assert_eq!(
            h.verify(&[SECRET], BODY, T - 301),
            Err(SignatureError::OutOfWindow)
        );
        assert_eq!(
            h.verify(&[b"other"], BODY, T),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(h.verify(&[SECRET], b"{}", T), Err(SignatureError::Mismatch));
        // Either of two secrets (rotation) is enough.
        assert_eq!(h.verify(&[b"other", SECRET], BODY, T), Ok(()));
    }

    #[test]
    fn the_known_answer_vector_matches() {
        assert_eq!(sign(SECRET, T, BODY), format!("t={T},v1={KNOWN}"));
    }

    #[test]
    fn garbled_headers_are_refused() {
        for bad in [
            "",
            "t=1",
            "v1=00",
            "t=abc,v1=00",
            "t=1,v1=zz",
            "t=1,t=2,v1=",
            "nonsense",
            "t=-5,v1=aa",
        ] {
            assert_eq!(
                SignatureHeader::parse(bad),
                Err(SignatureError::Garbled),
                "{bad:?}"
            );
        }
        let two = format!(
            "t=5, v1={}, v1={}, v0=ignored",
            "aa".repeat(32),
            "bb".repeat(32)
        );
        assert_eq!(SignatureHeader::parse(&two).unwrap().v1.len(), 2);
    }

    proptest! {
        #[test]
        fn any_header_text_parses_or_is_refused_without_panicking(s in "\\PC{0,200}") {
            let _ = SignatureHeader::parse(&s);
        }

        #[test]
        fn well_formed_headers_round_trip(t in 0i64..100_000_000_000, macs in proptest::collection::vec(any::<[u8; 32]>(), 1..4)) {
            let text = std::iter::once(format!("t={t}"))
                .chain(macs.iter().map(|m| format!("v1={}", hex::encode(m))))
                .collect::<Vec<_>>()
                .join(",");
            let h = SignatureHeader::parse(&text).unwrap();
            prop_assert_eq!(h.t, t);
            prop_assert_eq!(h.v1, macs);
        }
    }
}
