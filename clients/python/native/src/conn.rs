//! Where the native core connects and how a call is made: the target (TCP, TLS or a Unix
//! socket), the per-process runtime and channel, deadlines, waiting for a daemon to come
//! back, and which failures never reached it.

use std::error::Error as StdError;
use std::io;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataValue, MetadataKey};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::codec::DynamicCodec;

/// Where the daemon listens.
#[derive(Clone, Debug)]
pub enum Address {
    /// `host:port`, bracketed for IPv6.
    Tcp(String),
    Unix(PathBuf),
}

impl Address {
    /// Reads a gRPC target: `host:port`, `[v6]:port`, a bare host (port 443, as grpc-core),
    /// `dns:[//authority/]host:port`, `ipv4:`/`ipv6:` with one address, `unix:path` or
    /// `unix:///absolute/path`. Lists of addresses and abstract sockets are grpc-core's alone.
    pub fn parse(target: &str) -> Result<Address, String> {
        if let Some(path) = target.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(format!("target {target:?} names no socket path"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if target.starts_with("unix-abstract:") || target.starts_with("vsock:") {
            return Err(format!(
                "target {target:?}: only grpcio connects to this kind"
            ));
        }
        let mut rest = target;
        for scheme in ["dns:", "ipv4:", "ipv6:"] {
            if let Some(r) = rest.strip_prefix(scheme) {
                rest = r;
                break;
            }
        }
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.split_once('/').map(|(_, hp)| hp).unwrap_or("");
        }
        if rest.is_empty() || rest.contains(',') || rest.contains('/') {
            return Err(format!("target {target:?}: expected one host:port"));
        }
        let has_port = if rest.starts_with('[') {
            rest.contains("]:")
        } else if rest.matches(':').count() > 1 {
            // A bare IPv6 address.
            return Ok(Address::Tcp(format!("[{rest}]:443")));
        } else {
            rest.contains(':')
        };
        Ok(Address::Tcp(if has_port {
            rest.to_owned()
        } else {
            format!("{rest}:443")
        }))
    }

    /// Whether a connection can be opened now (the daemon accepts).
    async fn accepts(&self) -> bool {
        match self {
            Address::Tcp(hostport) => tokio::net::TcpStream::connect(hostport.as_str())
                .await
                .is_ok(),
            Address::Unix(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
        }
    }
}

/// What a channel is made from; fixed when the client is made.
pub struct Settings {
    pub address: Address,
    pub tls: Option<ClientTlsConfig>,
    /// The HTTP/2 `:authority` to send instead of the target's.
    pub authority: Option<String>,
    pub authorization: Option<AsciiMetadataValue>,
}

impl Settings {
    pub fn tls_config(
        root_certificates: Option<&[u8]>,
        certificate_chain: Option<&[u8]>,
        private_key: Option<&[u8]>,
        server_name: Option<String>,
    ) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        tls = match root_certificates {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_webpki_roots(),
        };
        if let (Some(chain), Some(key)) = (certificate_chain, private_key) {
            tls = tls.identity(Identity::from_pem(chain, key));
        }
        if let Some(name) = server_name {
            tls = tls.domain_name(name);
        }
        tls
    }

    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = match &self.address {
            Address::Tcp(hostport) => format!("{scheme}://{hostport}"),
            Address::Unix(_) => "http://localhost".to_owned(),
        };
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| format!("target {uri:?}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(authority) = &self.authority {
            let origin = format!("{scheme}://{authority}")
                .parse()
                .map_err(|e| format!("authority {authority:?}: {e}"))?;
            endpoint = endpoint.origin(origin);
        }
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS settings: {e}"))?;
        }
        Ok(endpoint)
    }
}

/// A channel on `runtime`: it connects on its first call, and again after a lost
/// connection.
pub fn open_channel(settings: &Settings, runtime: &Runtime) -> Result<Grpc<Channel>, String> {
    let endpoint = settings.endpoint()?;
    let _entered = runtime.enter(); // the channel spawns its worker on this runtime
    let channel = match &settings.address {
        Address::Tcp(_) => endpoint.connect_lazy(),
        Address::Unix(path) => {
            let path = path.clone();
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, io::Error>(TokioIo::new(stream))
                }
            }))
        }
    };
    Ok(Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// A failed call: its status, and whether the request certainly never reached the daemon
/// (no connection could be made), which makes any call safe to try again.
pub struct Failure {
    pub status: Status,
    pub never_sent: bool,
}

/// A unary call of `path` before its request is made.
pub struct Unary {
    pub grpc: Grpc<Channel>,
    pub address: Address,
    pub authorization: Option<AsciiMetadataValue>,
    pub path: PathAndQuery,
    pub output: MessageDescriptor,
    pub timeout: Duration,
    pub wait_for_ready: bool,
}

impl Unary {
    /// The call, sending `request`.
    pub fn with(self, request: DynamicMessage) -> UnaryCall {
        UnaryCall {
            grpc: self.grpc,
            address: self.address,
            authorization: self.authorization,
            path: self.path,
            request,
            output: self.output,
            timeout: self.timeout,
            wait_for_ready: self.wait_for_ready,
        }
    }
}

/// One unary call of `path` with `request`, within `timeout`. With `wait_for_ready`, a call
/// that finds no connection waits for the daemon (within the deadline) instead of failing.
pub struct UnaryCall {
    pub grpc: Grpc<Channel>,
    pub address: Address,
    pub authorization: Option<AsciiMetadataValue>,
    pub path: PathAndQuery,
    pub request: DynamicMessage,
    pub output: MessageDescriptor,
    pub timeout: Duration,
    pub wait_for_ready: bool,
}

impl UnaryCall {
    pub async fn run(self) -> Result<DynamicMessage, Failure> {
        let UnaryCall {
            grpc,
            address,
            authorization,
            path,
            request,
            output,
            timeout,
            wait_for_ready,
        } = self;
        let deadline = Instant::now() + timeout;
        let mut request = Some(request);
        let attempt = async {
            loop {
                let mut grpc = grpc.clone();
                // Only a call that waits for the daemon may go out more than once.
                let message = if wait_for_ready {
                    request.clone().expect("kept while waiting for ready")
                } else {
                    request.take().expect("sent once")
                };
                let mut req = Request::new(message);
                req.set_timeout(deadline.saturating_duration_since(Instant::now()));
                if let Some(value) = &authorization {
                    req.metadata_mut()
                        .insert(MetadataKey::from_static("authorization"), value.clone());
                }
                let result = async {
                    grpc.ready()
                        .await
                        .map_err(|e| Status::from_error(e.into()))?;
                    grpc.unary(
                        req,
                        path.clone(),
                        DynamicCodec {
                            output: output.clone(),
                        },
                    )
                    .await
                }
                .await;
                match result {
                    Ok(response) => return Ok(response.into_inner()),
                    // tonic's channel ends a call at its grpc-timeout with CANCELLED.
                    Err(status)
                        if status.code() == Code::Cancelled
                            && status.message() == "Timeout expired" =>
                    {
                        return Err(Failure {
                            status: deadline_exceeded(),
                            never_sent: false,
                        });
                    }
                    Err(status) => {
                        let status = as_grpcio(status);
                        let never_sent = never_sent(&status);
                        if !(wait_for_ready && never_sent) {
                            return Err(Failure { status, never_sent });
                        }
                        while !address.accepts().await {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure {
                status: deadline_exceeded(),
                never_sent: false,
            }),
        }
    }
}

/// What grpcio answers a call whose deadline passed.
pub fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("Deadline Exceeded")
}

/// Whether the daemon becomes reachable (accepts a connection) within `wait`; blocks this
/// thread, trying every 50 ms.
pub fn reachable(address: &Address, wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let accepted = match address {
            Address::Tcp(hostport) => hostport
                .to_socket_addrs()
                .map(|mut addrs| {
                    addrs.any(|addr| {
                        std::net::TcpStream::connect_timeout(
                            &addr,
                            left.max(Duration::from_millis(10)),
                        )
                        .is_ok()
                    })
                })
                .unwrap_or(false),
            Address::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
        };
        if accepted {
            return true;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Whether `status` is a failure to connect: the request was never written to the daemon.
/// Only a refused or impossible connect counts; a connection lost later may have carried it.
pub fn never_sent(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            use io::ErrorKind::*;
            return matches!(io.kind(), ConnectionRefused | NotFound | AddrNotAvailable);
        }
        source = err.source();
    }
    false
}

/// The status of a failed call as grpcio reports it: a failure of the connection itself
/// (TLS refused, the peer is not HTTP/2, the connection dropped), which tonic reports as
/// UNKNOWN or CANCELLED with the transport's error as source, is UNAVAILABLE. A status the
/// daemon sent has no source and is kept as it is.
pub fn as_grpcio(status: Status) -> Status {
    match status.source() {
        Some(source) if matches!(status.code(), Code::Unknown | Code::Cancelled) => {
            Status::unavailable(format!("{}: {source}", status.message()))
        }
        _ => status,
    }
}
