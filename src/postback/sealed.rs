//! Network secrets and tokens at rest: AES-256-GCM under a key derived from
//! the master key.
//!
//! A sealed value is `base64url(nonce ‖ ciphertext ‖ tag)` with a fresh
//! random 96-bit nonce. The associated data binds it to its network and
//! field (`secret`/`token`), so a ciphertext copied onto another network or
//! field does not open. Plaintexts live only in memory, in `Zeroizing`
//! buffers, and never reach a log line, a metric or an API answer.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::Rng;
use zeroize::Zeroizing;

use crate::keys::MasterKey;

const KEY_CONTEXT: &str = "clickedge 2026 postback secrets v1";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a sealed {field} of network `{network}` does not open under this master key")]
    Open {
        network: String,
        field: &'static str,
    },
}

/// Which field a sealed value belongs to (part of the associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Secret,
    Token,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Field::Secret => "secret",
            Field::Token => "token",
        }
    }
}

pub struct Sealer {
    cipher: Aes256Gcm,
}

impl Sealer {
    pub fn new(master: &MasterKey) -> Sealer {
        let key = Zeroizing::new(master.derive(KEY_CONTEXT));
        Sealer {
            cipher: Aes256Gcm::new_from_slice(&key[..]).expect("a 32-byte key"),
        }
    }

    pub fn seal(&self, network: &str, field: Field, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce);
        let aad = aad(network, field);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a short value cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        data_encoding::BASE64URL_NOPAD.encode(&out)
    }

    pub fn open(
        &self,
        network: &str,
        field: Field,
        sealed: &str,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let err = || SealError::Open {
            network: network.to_owned(),
            field: field.as_str(),
        };
        let raw = data_encoding::BASE64URL_NOPAD
            .decode(sealed.as_bytes())
            .map_err(|_| err())?;
        if raw.len() < NONCE_LEN {
            return Err(err());
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let aad = aad(network, field);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| err())
    }
}

fn aad(network: &str, field: Field) -> String {
    format!("clickedge network {network} {}", field.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_network_and_field() {
        let s = Sealer::new(&MasterKey::for_tests());
        let sealed = s.seal("kt", Field::Secret, b"top secret");
        assert!(!sealed.contains("top secret"));
        assert_eq!(
            &**s.open("kt", Field::Secret, &sealed).unwrap(),
            b"top secret"
        );
        assert!(s.open("kt", Field::Token, &sealed).is_err());
        assert!(s.open("other", Field::Secret, &sealed).is_err());
        // A fresh nonce every time.
        assert_ne!(sealed, s.seal("kt", Field::Secret, b"top secret"));
        let other = Sealer::new(
            &MasterKey::load(Some(&"33".repeat(32)), None, "/".as_ref(), true)
                .unwrap()
                .0,
        );
        assert!(other.open("kt", Field::Secret, &sealed).is_err());
    }
}
