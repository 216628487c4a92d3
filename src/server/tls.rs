//! TLS for the TCP listener (rustls, through tonic): reading the PEM certificate chain and
//! private key at start, with errors that name the file at fault, and the tonic server
//! builder that serves them. HTTP/2 is offered by ALPN, as tonic does; the Unix socket stays
//! plaintext (its file mode guards it, and nothing crosses a network).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::config::TlsConfig;

/// Longest a client may take over its TLS handshake; a stalled handshake holds no
/// connection slot past this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the certificate or key cannot be served. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{setting} {}: cannot read it: {error}", path.display())]
    Unreadable {
        /// `tls.cert` or `tls.key`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What reading it said.
        error: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a broken one.
    #[error("tls.cert {}: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file holds no PEM private key, or a broken one.
    #[error("tls.key {}: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Both parse, but rustls cannot serve them (the key is not the certificate's, or of a
    /// kind it does not support).
    #[error("tls.cert {} with tls.key {}: {reason}", cert.display(), key.display())]
    Unusable {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// A certificate chain and key that rustls accepted: a tonic server builder that serves TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    server: Server,
    /// The certificate file.
    cert: PathBuf,
    /// Certificates in the chain (the server's own first).
    chain_len: usize,
}

impl ServerTls {
    /// Reads and checks the files of `config`.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let cert_pem = read("tls.cert", &config.cert)?;
        let key_pem = read("tls.key", &config.key)?;
        let bad_cert = |reason: String| TlsError::BadCertificate {
            path: config.cert.clone(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                bad_cert(format!(
                    "not a valid PEM certificate chain: {}",
                    pem_problem(&e)
                ))
            })?;
        if chain.is_empty() {
            return Err(bad_cert(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
            path: config.key.clone(),
            reason: match e {
                rustls_pki_types::pem::Error::NoItemsFound => {
                    "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into()
                }
                e => format!("not a valid PEM private key: {}", pem_problem(&e)),
            },
        })?;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        let server = Server::builder()
            .tls_config(tls)
            .map_err(|e| TlsError::Unusable {
                cert: config.cert.clone(),
                key: config.key.clone(),
                reason: rustls_problem(&e),
            })?;
        Ok(Self {
            server,
            cert: config.cert.clone(),
            chain_len: chain.len(),
        })
    }

    /// A server builder with this certificate and key.
    pub fn server(&self) -> Server {
        self.server.clone()
    }

    /// The certificate file.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// How many certificates the chain holds.
    pub fn chain_len(&self) -> usize {
        self.chain_len
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Unreadable {
        setting,
        path: path.to_owned(),
        error,
    })
}

/// What is wrong with a PEM file, in words, without quoting the file (it may be a key).
fn pem_problem(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "a section has no \"-----END {}-----\" line (is the file cut short?)",
            String::from_utf8_lossy(end_marker)
        ),
        E::IllegalSectionStart { .. } => "a \"-----BEGIN\" line is malformed".into(),
        E::Base64Decode(_) => "a section is not valid base64".into(),
        e => e.to_string(),
    }
}

/// Why rustls would not take the certificate and key: tonic's own message only says
/// "transport error", so the rustls error is looked for among its sources.
fn rustls_problem(e: &tonic::transport::Error) -> String {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(error) = s.downcast_ref::<rustls::Error>() {
            return match error {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "the private key does not belong to the certificate".into()
                }
                error => error.to_string(),
            };
        }
        source = s.source();
    }
    e.to_string()
}
