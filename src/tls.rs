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
use std::time::{Duration, SystemTime};

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

impl CertStore {
    /// Loads the pair; any problem is an error naming the config key.
    pub fn open(cert_path: &Path, key_path: &Path) -> Result<CertStore, TlsError> {
        let key = load(cert_path, key_path)?;
        Ok(CertStore {
            current: ArcSwap::from_pointee(key),
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// Re-reads the files; on error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// The newest modification time of the two files (None if unreadable).
    fn stamp(&self) -> Option<SystemTime> {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some(m(&self.cert_path)?.max(m(&self.key_path)?))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert_path.display().to_string(),
        message,
    };
    let key_err = |message: String| TlsError::Key {
        path: key_path.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_err(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| key_err(format!("not usable with the certificate: {e}")))
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

/// Reloads the certificate whenever its files change, until `shutdown`.
pub async fn watch(certs: Arc<CertStore>, every: Duration, shutdown: CancellationToken) {
    let mut seen = certs.stamp();
    let mut ticker = crate::time::Ticker::new(every, shutdown);
    while ticker.tick().await {
        let stamp = certs.stamp();
        if stamp == seen {
            continue;
        }
        // A pair caught half-written fails here and is read again when the
        // writer's next change moves the modification time.
        seen = stamp;
        match certs.reload() {
            Ok(()) => {
                crate::telemetry::tls_reloaded(true);
                tracing::info!("tls: certificate reloaded");
            }
            Err(e) => {
                crate::telemetry::tls_reloaded(false);
                tracing::warn!(error = %e, "tls: reload failed; the previous certificate keeps serving");
            }
        }
    }
}
