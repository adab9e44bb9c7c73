//! HTTPS for the edge: rustls (ring provider, TLS 1.2 and 1.3 only), ALPN
//! `h2` and `http/1.1`, and a certificate that is reloaded when its files
//! change.
//!
//! The certificate lives behind an `ArcSwap` that the rustls resolver reads
//! on every handshake, so a reload affects new handshakes only; open
//! connections keep the session they negotiated. A reload that fails (a
//! half-written file, a key that does not match) is logged and the old
//! certificate keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("edge.tls.cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("edge.tls.key {path}: {message}")]
    Key { path: String, message: String },
    #[error("edge.tls: {0}")]
    Config(String),
}

/// The certificate currently served, and where it came from.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

/// A digest of both files' contents. Contents, not modification times: a
/// renewal writes the two files separately, possibly within one timestamp
/// tick, and a check between the writes must not hide the second one.
type Fingerprint = blake3::Hash;

/// Both files as read at one moment.
struct Pair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Pair {
    fn read(cert_path: &Path, key_path: &Path) -> Result<Pair, TlsError> {
        let cert = std::fs::read(cert_path).map_err(|e| TlsError::Cert {
            path: cert_path.display().to_string(),
            message: e.to_string(),
        })?;
        let key = std::fs::read(key_path).map_err(|e| TlsError::Key {
            path: key_path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Pair { cert, key })
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut h = blake3::Hasher::new();
        h.update(&(self.cert.len() as u64).to_le_bytes());
        h.update(&self.cert);
        h.update(&self.key);
        h.finalize()
    }
}

impl CertStore {
    /// Loads the pair; any problem is an error naming the config key.
    /// Returns the store and the fingerprint of what it loaded.
    pub fn open(cert_path: &Path, key_path: &Path) -> Result<(CertStore, Fingerprint), TlsError> {
        let pair = Pair::read(cert_path, key_path)?;
        let key = certified_key(&pair, cert_path, key_path)?;
        let store = CertStore {
            current: ArcSwap::from_pointee(key),
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        };
        Ok((store, pair.fingerprint()))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(pair: &Pair, cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert_path.display().to_string(),
        message,
    };
    let key_err = |message: String| TlsError::Key {
        path: key_path.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(&pair.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&pair.key).map_err(|e| key_err(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let not_after = not_after_secs(&chain[0]).map_err(cert_err)?;
    let key = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| key_err(format!("not usable with the certificate: {e}")))?;
    crate::telemetry::tls_certificate_expiry(not_after);
    Ok(key)
}

/// The leaf certificate's notAfter, Unix seconds.
fn not_after_secs(leaf: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the first certificate is not X.509 DER: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The rustls server configuration for the edge's TLS listener.
pub fn server_config(certs: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reloads the certificate whenever its files' contents change, until
/// `shutdown`. `loaded` is the fingerprint [`CertStore::open`] returned.
pub async fn watch(
    certs: Arc<CertStore>,
    mut loaded: Fingerprint,
    every: Duration,
    shutdown: CancellationToken,
) {
    // The contents that last failed to load: not retried (nor logged again)
    // until the files change once more, e.g. the second half of a renewal.
    let mut failed: Option<Fingerprint> = None;
    let mut ticker = crate::time::Ticker::new(every, shutdown);
    while ticker.tick().await {
        let pair = match Pair::read(&certs.cert_path, &certs.key_path) {
            Ok(pair) => pair,
            Err(e) => {
                if failed.is_none() {
                    crate::telemetry::tls_reloaded(false);
                    tracing::warn!(error = %e, "tls: cannot read the certificate files; the previous certificate keeps serving");
                }
                failed = Some(Fingerprint::from([0; 32]));
                continue;
            }
        };
        let seen = pair.fingerprint();
        if seen == loaded || Some(seen) == failed {
            continue;
        }
        match certified_key(&pair, &certs.cert_path, &certs.key_path) {
            Ok(key) => {
                certs.current.store(Arc::new(key));
                loaded = seen;
                failed = None;
                crate::telemetry::tls_reloaded(true);
                tracing::info!("tls: certificate reloaded");
            }
            Err(e) => {
                failed = Some(seen);
                crate::telemetry::tls_reloaded(false);
                tracing::warn!(error = %e, "tls: reload failed; the previous certificate keeps serving");
            }
        }
    }
}
