//! TLS at the front (rustls, ring): the certificate and key come from PEM
//! files and are read again on SIGHUP; connections already open keep the
//! certificate they were made with, new handshakes get the new one. ALPN
//! offers `h2` and `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The PEM file cannot be read or holds nothing usable.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not fit the certificate (or is of an unsupported kind).
    #[error("the key in {key} does not fit the certificate in {cert}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where the certificate chain and key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads and checks both files.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let read_error = |path: &Path, reason: String| TlsError::Read {
            path: path.to_owned(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|err| read_error(&self.cert, err.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| read_error(&self.cert, err.to_string()))?;
        if chain.is_empty() {
            return Err(read_error(&self.cert, "no certificate in it".into()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|err| read_error(&self.key, err.to_string()))?;
        CertifiedKey::from_der(chain, key, &provider())
            .map(Arc::new)
            .map_err(|err| TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
                reason: err.to_string(),
            })
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The served certificate, swappable while serving.
#[derive(Debug)]
pub struct Certificate {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
}

impl Certificate {
    /// Loads `files`.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let current = ArcSwap::new(files.load()?);
        Ok(Arc::new(Self { files, current }))
    }

    /// Reads the files again; on an error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.current.store(self.files.load()?);
        Ok(())
    }

    /// The acceptor of client connections.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
