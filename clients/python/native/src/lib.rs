//! `larder_client._native`: the native core of Larder's Python client. A `Core` holds one
//! tonic channel on a small runtime of its own and runs each call with the GIL released,
//! encoding and decoding with prost by the descriptors of the repository's `proto/` (the
//! daemon's own), so no Python protobuf object is made on the way. The Python package keeps
//! the API, the retry policy and the call definitions; this module only carries calls.

mod codec;
mod conn;
mod convert;
mod live;
mod pipeline;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::AsciiMetadataValue;

use conn::{Address, Failure, Settings};
use convert::{message_from_py, message_to_py};
use live::Live;

/// The descriptors of `proto/larder/v1/*.proto` and `google/protobuf/wrappers.proto`.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"))[..])
        .expect("the embedded descriptors decode")
});

/// A method the core can call: its path and its input and output types.
struct Method {
    path: PathAndQuery,
    input: MessageDescriptor,
    output: MessageDescriptor,
}

/// Every method of every service in `POOL` by its gRPC path (`/larder.v1.CacheService/Get`),
/// and the health check, whose request and answer have the wire form of `StringValue` and
/// `Int32Value`.
static METHODS: LazyLock<HashMap<String, Method>> = LazyLock::new(|| {
    let mut methods = HashMap::new();
    for service in POOL.services() {
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let entry = Method {
                path: PathAndQuery::try_from(path.clone())
                    .expect("a method path is a valid URI path"),
                input: method.input(),
                output: method.output(),
            };
            methods.insert(path, entry);
        }
    }
    let wrapper = |name: &str| {
        POOL.get_message_by_name(name)
            .expect("wrappers.proto is compiled in")
    };
    methods.insert(
        "/grpc.health.v1.Health/Check".to_owned(),
        Method {
            path: PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            input: wrapper("google.protobuf.StringValue"),
            output: wrapper("google.protobuf.Int32Value"),
        },
    );
    methods
});

/// One connection to a daemon. Made once per `Larder` client; shared by its threads (sync)
/// or its tasks (asyncio). The channel connects on the first call and again after a lost
/// connection; a process forked from the one that made it opens its own on its first call.
#[pyclass(frozen, module = "larder_client._native")]
struct Core {
    settings: Arc<Settings>,
    live: ArcSwapOption<Live>,
    closed: AtomicBool,
    /// Called as `error(code, details, never_sent)` to make the exception of a failed call.
    error: Py<PyAny>,
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (target, token, error, *, tls=false, root_certificates=None,
        certificate_chain=None, private_key=None, authority=None, server_name=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        target: &str,
        token: Option<&str>,
        error: Py<PyAny>,
        tls: bool,
        root_certificates: Option<&[u8]>,
        certificate_chain: Option<&[u8]>,
        private_key: Option<&[u8]>,
        authority: Option<String>,
        server_name: Option<String>,
    ) -> PyResult<Core> {
        let address = Address::parse(target).map_err(PyValueError::new_err)?;
        let authorization = token
            .map(|t| {
                AsciiMetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| PyValueError::new_err("token must be printable ASCII"))
            })
            .transpose()?;
        // As grpc-core: the TLS name override is also the `:authority` when none is given,
        // and the certificate is checked against the authority's host when no override is.
        let authority = authority.or_else(|| server_name.clone().filter(|_| tls));
        let server_name = server_name.or_else(|| authority.as_deref().map(host_of));
        let root_certificates = match root_certificates {
            Some(pem) => Some(pem.to_vec()),
            None => default_roots()?,
        };
        let tls = tls.then(|| {
            Settings::tls_config(
                root_certificates.as_deref(),
                certificate_chain,
                private_key,
                server_name,
            )
        });
        let settings = Settings {
            address,
            tls,
            authority,
            authorization,
        };
        // Bad TLS material or a bad authority is refused now, not at the first call.
        settings.endpoint().map_err(PyValueError::new_err)?;
        Ok(Core {
            settings: Arc::new(settings),
            live: ArcSwapOption::empty(),
            closed: AtomicBool::new(false),
            error,
        })
    }

    /// Calls `path` with the request `fields` (a dict) and returns the answer as a
    /// namespace of its fields, or raises `error(...)`. Blocks this thread, not the others: the GIL is
    /// released while the call is in flight.
    fn call(
        &self,
        py: Python<'_>,
        path: &str,
        fields: &Bound<'_, PyDict>,
        timeout: f64,
        wait_for_ready: bool,
    ) -> PyResult<Py<PyAny>> {
        let live = self.live()?;
        let driven = live.blocking().map_err(PyRuntimeError::new_err)?;
        let call = self.prepare(driven, path, fields, timeout, wait_for_ready)?;
        let result = py.detach(|| driven.runtime.block_on(call.run()));
        self.answer(py, result)
    }

    /// Starts the call (as `call`) and returns at once; when it ends, `schedule(settle, ok,
    /// value)` is called from the core's thread: `loop.call_soon_threadsafe` and a function
    /// that settles the asyncio future awaiting it. With `pipelined`, a call that a
    /// `PipelineService/Run` stream carries goes on the one stream this runtime shares
    /// (see `pipeline`), unless it waits for ready (which only a unary call can). Returns a
    /// `Pending` whose `cancel()` drops the call (its awaiting task was cancelled).
    #[pyo3(signature = (path, fields, timeout, wait_for_ready, schedule, settle, pipelined=false))]
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        path: &str,
        fields: &Bound<'_, PyDict>,
        timeout: f64,
        wait_for_ready: bool,
        schedule: Py<PyAny>,
        settle: Py<PyAny>,
        pipelined: bool,
    ) -> PyResult<Pending> {
        let live = self.live()?;
        let driven = live.spawned().map_err(PyRuntimeError::new_err)?;
        let error = Python::attach(|py| self.error.clone_ref(py));
        let keep = live.clone(); // a close() meanwhile does not drop the runtime under the call
        let piped = match (&driven.pipeline, pipeline::slot(path)) {
            (Some(pipe), Some(slot)) if pipelined && !wait_for_ready && pipe.supported() => {
                Some((pipe.clone(), slot))
            }
            _ => None,
        };
        let future = match piped {
            Some((pipe, slot)) => {
                let (_, request) = request(path, fields)?;
                let timeout = duration(timeout)?;
                let unary = self.unary(driven, path, timeout, wait_for_ready)?;
                futures_boxed(async move {
                    match pipe.call(slot, request, timeout).await {
                        pipeline::Outcome::Done(result) => result,
                        pipeline::Outcome::Unary(request, left) => {
                            let mut unary = unary;
                            unary.timeout = left;
                            unary.with(request).run().await
                        }
                    }
                })
            }
            None => {
                let call = self.prepare(driven, path, fields, timeout, wait_for_ready)?;
                futures_boxed(call.run())
            }
        };
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        driven.runtime.spawn(async move {
            let Some(result) = unless_cancelled(future, cancelled).await else {
                return; // nobody awaits the answer
            };
            drop(keep);
            Python::attach(|py| {
                let (ok, value) = match result {
                    Ok(message) => match message_to_py(py, &message) {
                        Ok(m) => (true, m),
                        Err(e) => (false, e.into_value(py).into_any()),
                    },
                    Err(failure) => (false, failure_value(py, &error, failure)),
                };
                // Fails only when the loop is closed: then nobody awaits the answer.
                let _ = schedule.call1(py, (settle, ok, value));
            });
        });
        Ok(Pending {
            cancel: std::sync::Mutex::new(Some(cancel)),
        })
    }

    /// Whether the daemon accepts a connection within `seconds` (waiting with the GIL
    /// released): what a retry waits for after an UNAVAILABLE.
    fn ready(&self, py: Python<'_>, seconds: f64) -> PyResult<bool> {
        let address = &self.settings.address;
        let wait = duration(seconds.max(0.0))?;
        Ok(py.detach(|| conn::reachable(address, wait)))
    }

    /// How many `PipelineService/Run` streams this process's asyncio calls have opened: one,
    /// and one more each time a stream broke and a later call opened another.
    fn pipeline_streams(&self) -> u64 {
        self.live
            .load_full()
            .filter(|live| live.generation == live::generation())
            .map_or(0, |live| live.pipeline_streams())
    }

    /// The most asyncio calls that have waited at once to be written on one Run stream (at
    /// most the pipeline's bound; calls past it went unary).
    fn pipeline_queue_peak(&self) -> usize {
        self.live
            .load_full()
            .filter(|live| live.generation == live::generation())
            .map_or(0, |live| live.pipeline_queue_peak())
    }

    /// Closes the channel; calls after this raise `ValueError`.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // In-flight calls keep their own reference; a forked child's copy is left alone
        // (see `Live`'s `Drop`).
        self.live.swap(None);
    }
}

impl Core {
    /// The call of `path` with the request `fields`, on this process's channel.
    fn prepare(
        &self,
        driven: &live::Driven,
        path: &str,
        fields: &Bound<'_, PyDict>,
        timeout: f64,
        wait_for_ready: bool,
    ) -> PyResult<conn::UnaryCall> {
        let (_, request) = request(path, fields)?;
        let unary = self.unary(driven, path, duration(timeout)?, wait_for_ready)?;
        Ok(unary.with(request))
    }

    /// A unary call of `path` on this process's channel, waiting for its request.
    fn unary(
        &self,
        driven: &live::Driven,
        path: &str,
        timeout: Duration,
        wait_for_ready: bool,
    ) -> PyResult<conn::Unary> {
        let method = METHODS.get(path).ok_or_else(|| {
            PyValueError::new_err(format!("no method {path:?} in larder's protos"))
        })?;
        Ok(conn::Unary {
            grpc: driven.grpc.clone(),
            address: self.settings.address.clone(),
            authorization: self.settings.authorization.clone(),
            path: method.path.clone(),
            output: method.output.clone(),
            timeout,
            wait_for_ready,
        })
    }

    /// This process's runtime and channel, opened on first use (and again in a forked child,
    /// where the parent's are left untouched: their threads do not exist here).
    fn live(&self) -> PyResult<Arc<Live>> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(PyValueError::new_err("the Larder client is closed"));
        }
        let generation = live::generation();
        let current = self.live.load_full();
        if let Some(live) = &current
            && live.generation == generation
        {
            return Ok(live.clone());
        }
        let fresh = Arc::new(Live::new(self.settings.clone()));
        let previous = self.live.compare_and_swap(&current, Some(fresh.clone()));
        let won = match (&*previous, &current) {
            (Some(p), Some(c)) => Arc::ptr_eq(p, c),
            (None, None) => true,
            _ => false,
        };
        if !won {
            // Another thread opened one first: use it (this one is dropped, unused).
            return self.live();
        }
        if self.closed.load(Ordering::SeqCst) {
            // Closed while this one was being opened: it must not outlive the close.
            self.live.swap(None);
            return Err(PyValueError::new_err("the Larder client is closed"));
        }
        Ok(fresh)
    }

    fn answer(
        &self,
        py: Python<'_>,
        result: Result<prost_reflect::DynamicMessage, Failure>,
    ) -> PyResult<Py<PyAny>> {
        match result {
            Ok(message) => message_to_py(py, &message),
            Err(failure) => {
                let value = failure_value(py, &self.error, failure);
                Err(PyErr::from_value(value.into_bound(py)))
            }
        }
    }
}

/// The host of an authority (`host`, `host:port`, `[v6]:port`).
fn host_of(authority: &str) -> String {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host.to_owned(),
        _ => authority.to_owned(),
    }
}

/// The CA certificates a TLS connection trusts when the client names none: the PEM file that
/// `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH` names, as grpcio reads it, else (None) the Mozilla roots
/// built in, as grpcio's own bundled roots are.
fn default_roots() -> PyResult<Option<Vec<u8>>> {
    match std::env::var_os("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH") {
        Some(path) if !path.is_empty() => std::fs::read(&path).map(Some).map_err(|e| {
            PyValueError::new_err(format!(
                "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH {}: {e}",
                std::path::Path::new(&path).display()
            ))
        }),
        _ => Ok(None),
    }
}

/// A call started by `Core.start`.
#[pyclass(module = "larder_client._native")]
struct Pending {
    cancel: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

#[pymethods]
impl Pending {
    /// Drops the call: a pipelined one not yet written is then never written, a unary one is
    /// cancelled. Called when the task awaiting it is cancelled.
    fn cancel(&self) {
        let sender = self
            .cancel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }
}

/// The output of `future`, or `None` once `cancelled` fires first (a `Pending` dropped
/// without `cancel()` lets the call run to its end).
async fn unless_cancelled<F: Future + Unpin>(
    mut future: F,
    cancelled: tokio::sync::oneshot::Receiver<()>,
) -> Option<F::Output> {
    let mut cancelled = Some(cancelled);
    std::future::poll_fn(|cx| {
        if let Some(receiver) = cancelled.as_mut() {
            match Pin::new(receiver).poll(cx) {
                std::task::Poll::Ready(Ok(())) => return std::task::Poll::Ready(None),
                // The `Pending` was dropped: not cancelled, and never will be.
                std::task::Poll::Ready(Err(_)) => cancelled = None,
                std::task::Poll::Pending => {}
            }
        }
        Pin::new(&mut future).poll(cx).map(Some)
    })
    .await
}

/// A call's future, boxed so that both kinds of call spawn as one type.
fn futures_boxed<F>(
    future: F,
) -> Pin<Box<dyn Future<Output = Result<DynamicMessage, Failure>> + Send>>
where
    F: Future<Output = Result<DynamicMessage, Failure>> + Send + 'static,
{
    Box::pin(future)
}

/// The method of `path` and its request built from `fields`.
fn request(
    path: &str,
    fields: &Bound<'_, PyDict>,
) -> PyResult<(&'static Method, prost_reflect::DynamicMessage)> {
    let method = METHODS
        .get(path)
        .ok_or_else(|| PyValueError::new_err(format!("no method {path:?} in larder's protos")))?;
    Ok((method, message_from_py(&method.input, fields)?))
}

/// The longest wait taken as it is; anything longer (`sys.maxsize`, say, for "no limit")
/// waits this long.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

fn duration(seconds: f64) -> PyResult<Duration> {
    let wait = Duration::try_from_secs_f64(seconds).map_err(|_| {
        PyValueError::new_err(format!("timeout must be positive seconds, not {seconds}"))
    })?;
    Ok(wait.min(LONGEST_WAIT))
}

/// The exception of a failed call, made by the client's `error` class; if that fails, the
/// error it raised.
fn failure_value(py: Python<'_>, error: &Py<PyAny>, failure: Failure) -> Py<PyAny> {
    let code = failure.status.code() as i32;
    let details = failure.status.message().to_owned();
    match error.call1(py, (code, details, failure.never_sent)) {
        Ok(value) => value,
        Err(e) => e.into_value(py).into_any(),
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    live::count_forks().map_err(PyRuntimeError::new_err)?;
    m.add_class::<Core>()?;
    m.add_class::<Pending>()?;
    Ok(())
}
