//! TLS for the TCP listener (rustls): reading the PEM certificate chain and private key at
//! start and again on SIGHUP ([`reload`]: new connections get the new certificate, open ones
//! keep theirs, a bad file keeps the old one), with errors that name the file at fault, and
//! the TLS accept of each connection in Larder's own accept stream ([`ServerTls::accept`]), so
//! that the connection limit's preface deadline counts the decrypted bytes. HTTP/2 is offered
//! by ALPN, as tonic does; the Unix socket stays plaintext (its file mode guards it, and
//! nothing crosses a network).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;

use super::admission::{Admission, ConnectionLimit, Limited};

/// TLS on the TCP listener: the PEM files to serve with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The ALPN protocol offered: HTTP/2, the only one gRPC speaks.
const ALPN_H2: &[u8] = b"h2";

/// Most connections taken from the listener in one poll of [`TlsIncoming`] before finished
/// handshakes are handed on, so that a flood of new connections cannot starve them.
const ACCEPT_BATCH: usize = 64;

/// Why the certificate or key cannot be served. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
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

/// A certificate chain and key that rustls accepted, as the rustls server configuration that
/// serves them. Clones share it: a [`ServerTls::reload`] reaches every accept stream made from
/// any of them.
#[derive(Debug, Clone)]
pub(crate) struct ServerTls {
    /// The files, read again on reload.
    files: TlsSettings,
    /// What the files held when last read successfully; read once per accepted connection.
    current: Arc<RwLock<Loaded>>,
}

/// One successful read of the files.
#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// Certificates in the chain (the server's own first).
    chain_len: usize,
}

impl ServerTls {
    /// Reads and checks the files of `config`.
    pub(crate) fn load(config: &TlsSettings) -> Result<Self, TlsError> {
        let loaded = build(config)?;
        Ok(Self {
            files: config.clone(),
            current: Arc::new(RwLock::new(loaded)),
        })
    }

    /// Reads the files again and, if rustls accepts them, serves them to connections accepted
    /// from now on (open connections keep the certificate they were accepted with). Returns
    /// how many certificates the new chain holds. On error nothing changes. Blocks on the
    /// file reads: call it off the runtime's threads.
    pub(crate) fn reload(&self) -> Result<usize, TlsError> {
        let loaded = build(&self.files)?;
        let chain_len = loaded.chain_len;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(chain_len)
    }

    /// The connections of `incoming` that fit `limit`, each once its TLS handshake is done.
    /// Each takes its place at accept, and the handshake and then the HTTP/2 preface (read
    /// through TLS) must arrive within the limit's handshake timeout. Handshakes run
    /// concurrently; one that fails or runs out of time closes only its own connection
    /// (logged at debug). Each connection is served the certificate loaded when it was
    /// accepted. Accept errors pass through.
    pub(crate) fn accept<S, IO>(&self, limit: &ConnectionLimit, incoming: S) -> TlsIncoming<S, IO>
    where
        S: Stream<Item = io::Result<IO>>,
    {
        TlsIncoming {
            incoming,
            tls: self.clone(),
            limit: limit.clone(),
            handshakes: JoinSet::new(),
            ended: false,
        }
    }

    /// The acceptor for a connection accepted now.
    fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(current.config.clone())
    }

    /// The certificate file.
    pub(crate) fn cert(&self) -> &Path {
        &self.files.cert
    }

    /// The key file.
    pub(crate) fn key(&self) -> &Path {
        &self.files.key
    }

    /// How many certificates the chain being served holds.
    pub(crate) fn chain_len(&self) -> usize {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .chain_len
    }
}

/// Reads `tls`'s certificate and key again (on SIGHUP, in the daemon) with
/// [`ServerTls::reload`], on a blocking thread: a success is logged at info with the files and
/// the chain's length (never the key), a failure as one warning naming the file at fault, and
/// the certificate served before stays.
pub(crate) async fn reload(tls: &ServerTls) {
    let reloading = tls.clone();
    let reloaded = tokio::task::spawn_blocking(move || reloading.reload()).await;
    match reloaded {
        Err(e) => tracing::error!(error = %e, "the TLS certificate reload task failed"),
        Ok(Ok(chain)) => tracing::info!(
            cert = %tls.cert().display(),
            key = %tls.key().display(),
            chain,
            "reloaded the TLS certificate; new connections are served it"
        ),
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "reloading the TLS certificate failed; keeping the certificate loaded before"
        ),
    }
}

/// Reads and checks the files of `config`, as the rustls configuration that serves them.
fn build(config: &TlsSettings) -> Result<Loaded, TlsError> {
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
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: config.key.clone(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into()
            }
            e => format!("not a valid PEM private key: {}", pem_problem(&e)),
        },
    })?;
    let chain_len = chain.len();
    // As tonic builds it: rustls' default protocol versions and crypto provider (ring, from
    // tonic's `tls-ring`), no client certificates, and HTTP/2 by ALPN.
    let mut server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Unusable {
            cert: config.cert.clone(),
            key: config.key.clone(),
            reason: rustls_problem(&e),
        })?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Loaded {
        config: Arc::new(server),
        chain_len,
    })
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

/// Why rustls would not take the certificate and key, in words.
fn rustls_problem(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "the private key does not belong to the certificate".into()
        }
        e => e.to_string(),
    }
}

pin_project_lite::pin_project! {
    /// The stream [`ServerTls::accept`] makes: accepted connections in, TLS connections
    /// counted against the connection limit out.
    pub(crate) struct TlsIncoming<S, IO> {
        #[pin]
        incoming: S,
        // The certificate in force, read as each connection is accepted.
        tls: ServerTls,
        limit: ConnectionLimit,
        // Dropped with the stream when the server stops accepting: handshakes still running
        // are aborted, and their places freed.
        handshakes: JoinSet<Option<Limited<TlsStream<IO>>>>,
        // The listener has ended.
        ended: bool,
    }
}

/// The TLS handshake of one connection, within its deadline; `None` (logged at debug) when it
/// fails or runs out of time, and the connection is dropped, which closes it.
async fn handshake<IO>(
    acceptor: TlsAcceptor,
    mut admission: Admission,
    io: IO,
) -> Option<Limited<TlsStream<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match admission.before_deadline(acceptor.accept(io)).await {
        Some(Ok(tls)) => Some(admission.wrap(tls)),
        Some(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed; closing the connection");
            None
        }
        None => {
            tracing::debug!(
                "TLS handshake not finished within the handshake timeout; closing the connection"
            );
            None
        }
    }
}

impl<S, IO> Stream for TlsIncoming<S, IO>
where
    S: Stream<Item = io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Item = io::Result<Limited<TlsStream<IO>>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let mut taken = 0;
        while !*this.ended {
            if taken == ACCEPT_BATCH {
                // More may be waiting: come back for them after handing on what is done.
                cx.waker().wake_by_ref();
                break;
            }
            match this.incoming.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(io))) => {
                    taken += 1;
                    // Past the limit the connection is dropped, which closes it.
                    let Some(admission) = this.limit.admit() else {
                        continue;
                    };
                    this.handshakes
                        .spawn(handshake(this.tls.acceptor(), admission, io));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => *this.ended = true,
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(tls)))) => return Poll::Ready(Some(Ok(tls))),
                Poll::Ready(Some(Ok(None))) => {}
                Poll::Ready(Some(Err(error))) => {
                    tracing::warn!(%error, "a TLS handshake task failed");
                }
                Poll::Ready(None) if *this.ended => return Poll::Ready(None),
                // Nothing in progress: the listener will wake this task.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, written to `dir` as `name`.crt
    /// and `name`.key.
    fn self_signed(dir: &Path, name: &str) -> TlsSettings {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        TlsSettings { cert, key }
    }

    fn served(tls: &ServerTls) -> Arc<ServerConfig> {
        tls.current.read().unwrap().config.clone()
    }

    #[test]
    fn a_reload_serves_new_files_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let files = self_signed(dir.path(), "server");
        let tls = ServerTls::load(&files).unwrap();
        let clone = tls.clone();
        let first = served(&tls);

        let next = self_signed(dir.path(), "next");
        std::fs::copy(&next.cert, &files.cert).unwrap();
        std::fs::copy(&next.key, &files.key).unwrap();
        assert_eq!(tls.reload().unwrap(), 1);
        let second = served(&tls);
        assert!(!Arc::ptr_eq(&first, &second));
        // Clones share what is served: every accept stream sees the reload.
        assert!(Arc::ptr_eq(&served(&clone), &second));

        // A key that is not the certificate's: an error naming both files, nothing changes.
        let other = self_signed(dir.path(), "other");
        std::fs::copy(&other.key, &files.key).unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Unusable { .. })));
        assert!(Arc::ptr_eq(&served(&tls), &second));
        // A broken certificate file: the error names it.
        std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ncut short\n").unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("tls.cert {}", files.cert.display())),
            "{err}"
        );
        std::fs::remove_file(&files.key).unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Unreadable { .. })));
        assert!(Arc::ptr_eq(&served(&tls), &second));
    }
}
