//! The sockets the server accepts on, and the accept loops over them: TCP (with TLS when on)
//! and a Unix socket for gRPC, a TCP listener for the metrics endpoint.
//!
//! Binding is separate from serving so that the caller binds first, and tests bind port 0.
//! The daemon binds in two steps around opening its store ([`Listeners::reserve`], then
//! [`Reservation::bind`]): every address is bound or checked before anything is created, and
//! the Unix socket, whose accepting clients take for "ready", appears only once the store is
//! open. A Unix socket file belongs to the server from the moment it is bound: it is removed
//! when the server stops, and when the listeners are dropped without ever serving.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use super::admission::ConnectionLimit;
use super::auth::Transport;
use super::routes::Router;
use super::tls::ServerTls;
use crate::error::{Error, Result};

/// The sockets the server accepts on: TCP, a Unix socket or both for gRPC, and optionally
/// a TCP listener for the metrics endpoint.
#[derive(Debug)]
pub struct Listeners {
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, SocketFile)>,
    metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds TCP at `tcp` (`None` = no TCP) and a Unix socket at `unix` with file mode
    /// `socket_mode`: [`Listeners::reserve`] and [`Reservation::bind`] at once.
    ///
    /// A Unix socket path that is already a socket with a live server behind it is an error
    /// (never stolen); a stale socket file left by a dead process is replaced; any other file
    /// at the path is left alone and reported.
    pub async fn bind(tcp: Option<&str>, unix: Option<&Path>, socket_mode: u32) -> Result<Self> {
        Self::reserve(tcp, unix, socket_mode).await?.bind()
    }

    /// The first of two steps of [`Listeners::bind`], for a caller that must know it can
    /// listen before it creates anything, yet must not accept on the Unix socket before it is
    /// ready: binds TCP at `tcp` now (a port in use fails here), and checks the Unix socket
    /// path (no live server behind it, no other file there, a directory that can hold it)
    /// without creating anything. Connections to the TCP port wait in its backlog until the
    /// server runs.
    ///
    /// A client that sees the Unix socket accept may take the server as ready, so the socket
    /// is created by [`Reservation::bind`], once the caller is ready; and a second daemon
    /// starting meanwhile finds no socket file to take for a stale one.
    pub async fn reserve(
        tcp: Option<&str>,
        unix: Option<&Path>,
        socket_mode: u32,
    ) -> Result<Reservation> {
        if tcp.is_none() && unix.is_none() {
            return Err(Error::invalid(
                "listen",
                "TCP is off and no Unix socket is set: nothing to listen on",
            ));
        }
        let tcp = match tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| listen_error(addr, e))?,
            ),
            None => None,
        };
        if let Some(path) = unix {
            check_unix(path)?;
        }
        Ok(Reservation {
            tcp,
            unix: unix.map(|path| (path.to_owned(), socket_mode)),
            metrics: None,
        })
    }

    /// Listeners already bound by the caller (tests bind `127.0.0.1:0`). The socket file at
    /// the Unix listener's path is removed when the server stops.
    pub fn from_bound(tcp: Option<TcpListener>, unix: Option<(UnixListener, PathBuf)>) -> Self {
        Self {
            tcp,
            unix: unix.map(|(listener, path)| (listener, SocketFile(path))),
            metrics: None,
        }
    }

    /// Also serves Prometheus metrics at `GET /metrics` on `listener` (see [`bind_metrics`]).
    pub fn with_metrics(mut self, listener: TcpListener) -> Self {
        self.metrics = Some(listener);
        self
    }

    /// The Unix socket path, if any.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, file)| file.0.as_path())
    }

    /// The addresses of the TCP and metrics listeners, for the start-up warnings about what
    /// is reachable beyond loopback.
    pub(crate) fn tcp_addrs(&self) -> [Option<std::net::SocketAddr>; 2] {
        [&self.tcp, &self.metrics].map(|l| l.as_ref().and_then(|l| l.local_addr().ok()))
    }

    /// Takes the metrics listener out, to serve it apart from gRPC.
    pub(crate) fn take_metrics(&mut self) -> Option<TcpListener> {
        self.metrics.take()
    }

    /// Closes every listener and hands back the guard of the Unix socket file (if any), which
    /// removes the file when dropped.
    pub(crate) fn close(self) -> Option<SocketFile> {
        self.unix.map(|(listener, file)| {
            drop(listener);
            file
        })
    }

    /// Starts an accept loop on each gRPC listener, serving `router`'s routes, each until
    /// `stop_accepting` is cancelled. Every connection first takes a place in `connections`
    /// (over TCP, its peer's place first); over TCP, TLS (when on) is accepted after that, so
    /// the handshake counts against the preface deadline.
    pub(crate) fn serve(
        self,
        router: &Router,
        connections: &ConnectionLimit,
        tls: Option<&ServerTls>,
        stop_accepting: &CancellationToken,
    ) -> Accepting {
        let mut servers = JoinSet::new();
        let mut serving = Vec::new();
        if let Some(tcp) = self.tcp {
            let addr = tcp.local_addr().ok();
            // A peer over its share is closed before it takes a place or a TLS handshake.
            let accepted = connections.per_peer(TcpIncoming::from(tcp).with_nodelay(Some(true)));
            let stopped = stop_accepting.clone().cancelled_owned();
            let server = match tls {
                Some(tls) => Box::pin(router.serve(
                    Transport::Tcp,
                    tls.accept(connections, accepted),
                    stopped,
                )) as Pin<Box<dyn Future<Output = _> + Send>>,
                None => {
                    Box::pin(router.serve(Transport::Tcp, connections.limit(accepted), stopped))
                }
            };
            servers.spawn(async move { (format!("tcp {addr:?}"), server.await) });
            if let Some(addr) = addr {
                tracing::info!(%addr, "listening on tcp");
                serving.push(addr.to_string());
            }
            if let Some(tls) = tls {
                let cert = tls.cert().display();
                tracing::info!(%cert, chain = tls.chain_len(), "tcp serves TLS");
            }
        }
        let mut socket = None;
        if let Some((unix, file)) = self.unix {
            let path = file.0.clone();
            let incoming = connections.limit(UnixListenerStream::new(unix));
            let server = router.serve(
                Transport::Unix,
                incoming,
                stop_accepting.clone().cancelled_owned(),
            );
            tracing::info!(path = %path.display(), "listening on unix socket");
            serving.push(format!("unix:{}", path.display()));
            servers.spawn(async move { (format!("unix {}", path.display()), server.await) });
            socket = Some(file);
        }
        Accepting {
            servers,
            serving,
            socket,
        }
    }
}

/// What one accept loop ends with: its name for the log, and how it ended.
pub(crate) type Served = (String, std::result::Result<(), tonic::transport::Error>);

/// The accept loops running, and the socket file to remove once they and the store are done.
pub(crate) struct Accepting {
    /// One task per listener.
    pub(crate) servers: JoinSet<Served>,
    /// What is served, for the READY status (`127.0.0.1:7400`, `unix:/run/larder.sock`).
    pub(crate) serving: Vec<String>,
    /// The Unix socket file, removed when this is dropped.
    pub(crate) socket: Option<SocketFile>,
}

/// A Unix socket file the server bound: removed when this is dropped, so that a server that
/// stops, or never starts serving, leaves no file behind. Teardown drops it last, after the
/// store is closed.
#[derive(Debug)]
pub(crate) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the metrics endpoint's listener at `addr` (`HOST:PORT`), with an error that says
/// what to do when it cannot.
pub async fn bind_metrics(addr: &str) -> Result<TcpListener> {
    crate::metrics::bind(addr).await
}

/// Why the TCP address cannot be listened on, and what to do about it.
fn listen_error(addr: &str, e: std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    let hint = match e.kind() {
        K::AddrInUse => {
            "the address is already in use (another larder, or another program); \
             stop it or choose another --listen"
        }
        K::PermissionDenied => {
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE); \
             choose another --listen"
        }
        K::AddrNotAvailable => {
            "no interface of this machine has that address; choose another \
             --listen"
        }
        _ => "",
    };
    if hint.is_empty() {
        Error::Setup(format!("cannot listen on {addr}: {e}"))
    } else {
        Error::Setup(format!("cannot listen on {addr}: {hint} ({e})"))
    }
}

/// The second step of [`Listeners::bind`]: TCP bound, the Unix socket path checked.
#[derive(Debug)]
pub struct Reservation {
    tcp: Option<TcpListener>,
    unix: Option<(PathBuf, u32)>,
    metrics: Option<TcpListener>,
}

impl Reservation {
    /// Also serves Prometheus metrics on `listener`, as [`Listeners::with_metrics`].
    pub fn with_metrics(mut self, listener: TcpListener) -> Self {
        self.metrics = Some(listener);
        self
    }

    /// Binds the Unix socket, if any (see [`bind_unix`]), and returns every listener.
    pub fn bind(self) -> Result<Listeners> {
        let unix = match self.unix {
            Some((path, mode)) => Some((bind_unix(&path, mode)?, path)),
            None => None,
        };
        let listeners = Listeners::from_bound(self.tcp, unix);
        Ok(match self.metrics {
            Some(listener) => listeners.with_metrics(listener),
            None => listeners,
        })
    }
}

/// What is at a Unix socket path before binding it: nothing, or a stale socket file (to be
/// replaced). A live socket, or a file that is not a socket, is an error.
fn existing_socket(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::Unavailable(format!(
                    "unix socket {} is in use by a running server; stop it or choose another path",
                    path.display()
                )));
            }
            Ok(true)
        }
        Ok(_) => Err(Error::Setup(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ))),
        Err(_) => Ok(false),
    }
}

/// Checks, creating nothing, that a Unix socket can be bound at `path`: see
/// [`existing_socket`], and the nearest directory above it that exists must let this
/// process create what is missing below it.
fn check_unix(path: &Path) -> Result<()> {
    existing_socket(path)?;
    let mut dir = path.parent().unwrap_or(Path::new("."));
    while !dir.as_os_str().is_empty() && !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("."));
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Setup(format!("{} holds a NUL byte", path.display())))?;
    // SAFETY: access only reads the NUL-terminated path it is given.
    if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Setup(format!(
            "cannot listen on {}: cannot create files in {} ({e})",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Binds a Unix socket at `path` with file mode `mode` (0660 lets the daemon's user and
/// group connect, nobody else), replacing a stale socket file but never a live one.
pub fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener> {
    if existing_socket(path)? {
        std::fs::remove_file(path).map_err(|e| {
            Error::Setup(format!(
                "cannot remove stale socket {}: {e}",
                path.display()
            ))
        })?;
        tracing::info!(path = %path.display(), "replaced a stale unix socket");
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Setup(format!("cannot create {}: {e}", parent.display())))?;
    }
    let listener = bind_private(path)
        .map_err(|e| Error::Setup(format!("cannot listen on {}: {e}", path.display())))?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        // The socket is ours and will not serve: leave no file behind.
        drop(listener);
        let _ = std::fs::remove_file(path);
        return Err(Error::Setup(format!(
            "cannot set the mode of {}: {e}",
            path.display()
        )));
    }
    Ok(listener)
}

/// Serialises the umask windows of [`bind_private`]: two at once (tests start servers in
/// parallel in one process) could each restore the other's mask and leave 0077 behind.
static UMASK_WINDOW: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Binds `path` under umask 0077, so that the socket file is born 0700 (only the daemon's user
/// may connect) instead of `0777 & !umask`, and nobody else can connect in the moment before
/// [`bind_unix`] sets `unix_socket.mode`. `fchmod` on the socket before `bind` does not reach
/// the file, and binding in a private directory then renaming would lengthen a path that
/// must fit 108 bytes; so the umask it is. The umask is the process's: while this window is
/// open (one `bind` call), a file another thread creates gets no group or other bits. That is
/// harmless by construction: 0077 only ever takes permissions away and leaves the owner's
/// (a directory made meanwhile is still 0700, usable), and by then the only threads that
/// create files are SQLite's, which set the modes of its `-wal` and `-shm` with `fchmod`
/// whatever the umask.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let _window = UMASK_WINDOW
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    let previous = unsafe { libc::umask(0o077) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, putting the previous mask back.
    unsafe { libc::umask(previous) };
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's umask, read under the window lock (reading it means setting it).
    fn current_umask() -> libc::mode_t {
        let _window = UMASK_WINDOW.lock().unwrap();
        // SAFETY: swaps the mask and puts it straight back.
        unsafe {
            let mask = libc::umask(0o077);
            libc::umask(mask);
            mask
        }
    }

    #[tokio::test]
    async fn a_unix_socket_is_born_owner_only_and_the_umask_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let before = current_umask();
        let _listener = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o700,
            "{mode:04o}: only the owner may connect before the chmod"
        );
        assert_eq!(current_umask(), before);
    }

    #[tokio::test]
    async fn a_reservation_creates_nothing_until_it_is_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let path = dir.join("l.sock");
        let reservation = Listeners::reserve(Some("127.0.0.1:0"), Some(&path), 0o660)
            .await
            .unwrap();
        assert!(!dir.exists(), "the check created the socket's directory");

        let listeners = reservation.bind().unwrap();
        assert!(path.exists(), "the socket is bound");
        assert_eq!(listeners.unix_path(), Some(path.as_path()));
        drop(listeners);
        assert!(
            !path.exists(),
            "listeners dropped unused remove their socket file"
        );
    }

    #[tokio::test]
    async fn a_reservation_refuses_a_live_socket_and_a_port_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live.sock");
        let _server = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let err = Listeners::reserve(None, Some(&live), 0o660)
            .await
            .expect_err("a live socket is never taken");
        assert!(
            err.to_string().contains("in use by a running server"),
            "{err}"
        );

        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let other = tmp.path().join("other.sock");
        let err = Listeners::reserve(Some(&addr), Some(&other), 0o660)
            .await
            .expect_err("the port is taken");
        assert!(err.to_string().contains("already in use"), "{err}");
        assert!(!other.exists());
    }
}
