//! The files the server reads besides the store: the bearer-token file and the TLS
//! certificate and key. [`ServerFiles::load`] reads them once (the daemon does it before it
//! touches the data directory, so that a bad file stops the start there); [`reload_on`] reads
//! them again on each reload request. A file that cannot be used on reload keeps what was
//! loaded from it before, and says why in the log; a token file that holds no token is
//! usable, and revokes every token (see `auth`).

use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::ServerSettings;
use super::auth::{self, Authenticator};
use super::tls::{self, ServerTls};
use crate::error::{Error, Result};

/// The bearer tokens and the TLS certificate that [`ServerSettings`] name, read and checked.
#[derive(Debug)]
pub struct ServerFiles {
    pub(crate) auth: Option<Authenticator>,
    pub(crate) tls: Option<ServerTls>,
}

impl ServerFiles {
    /// Reads the auth token file and the TLS files `settings` name; the error names the file
    /// at fault.
    pub fn load(settings: &ServerSettings) -> Result<Self> {
        let auth = settings
            .auth
            .as_ref()
            .map(Authenticator::load)
            .transpose()
            .map_err(|e| Error::Setup(e.to_string()))?;
        let tls = settings
            .tls
            .as_ref()
            .map(ServerTls::load)
            .transpose()
            .map_err(|e| Error::Setup(e.to_string()))?;
        Ok(Self { auth, tls })
    }

    /// One `# …` line per file read, saying what it holds (for `larder check-config`).
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(auth) = &self.auth {
            let n = auth.token_count();
            let tokens = if n == 1 { "token" } else { "tokens" };
            lines.push(format!(
                "# auth: {n} {tokens} in {}",
                auth.token_file().display()
            ));
        }
        if let Some(tls) = &self.tls {
            let n = tls.chain_len();
            let certificates = if n == 1 {
                "certificate"
            } else {
                "certificates"
            };
            lines.push(format!(
                "# tls: {n} {certificates} in {}, key in {}",
                tls.cert().display(),
                tls.key().display()
            ));
        }
        lines
    }
}

/// The one task that answers `reloads` (SIGHUP, in the daemon), until `stop` is cancelled or
/// `reloads` ends: each time, the auth token file ([`auth::reload`]) and the TLS certificate
/// and key ([`tls::reload`]) are read again, side by side.
pub(crate) async fn reload_on(
    auth: Option<Authenticator>,
    tls: Option<ServerTls>,
    mut reloads: impl Stream<Item = ()> + Unpin,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = reloads.next() => next,
        };
        if next.is_none() {
            return;
        }
        let tokens = async {
            match &auth {
                Some(auth) => auth::reload(auth).await,
                None => {
                    tracing::info!("reload requested, but there is no auth.token_file to read")
                }
            }
        };
        let certificate = async {
            if let Some(tls) = &tls {
                tls::reload(tls).await;
            }
        };
        tokio::join!(tokens, certificate);
    }
}
