//! Auto-pipelining of the asyncio client's calls: every call of one process's asyncio runtime
//! goes, tagged with an id, on one `larder.v1.PipelineService/Run` stream, and each answer is
//! matched back to its call by that id. The daemon answers them in any order, so a slow write
//! does not hold up the reads behind it.
//!
//! What a caller sees is what its unary twin would give: the answer, or a `Failure` with the
//! status the unary call would have had (a `CallError` carries it). When the stream breaks
//! (the daemon restarts, the connection drops, or it ends with an error of its own), every
//! call still waiting on it fails with the UNAVAILABLE a unary call gets when its connection
//! drops, never with the stream's status (which belongs to no one call), and the next call
//! opens a new stream. A call whose encoded request is past `MAX_PIPELINED_BYTES` goes unary,
//! so that no call can be too large for the stream that others share. A call that is
//! abandoned (its deadline passed, its Python task cancelled) leaves the stream alone: its
//! answer, when it comes, is dropped, and it is not written if it was still queued. At most
//! `MAX_QUEUED` calls wait to be written on a stream; past that a call goes unary. Each stream
//! takes new calls for `STREAM_LIFETIME`, then is half-closed and the next call opens another.
//! A daemon without the service (UNIMPLEMENTED on the stream) is remembered, and the calls go
//! unary from then on, each with what is left of its timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataValue, MetadataKey};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::POOL;
use crate::codec::DynamicCodec;
use crate::conn::{Failure, as_grpcio, deadline_exceeded, never_sent};

const RUN: &str = "/larder.v1.PipelineService/Run";

/// The services whose calls a Run stream carries.
const SERVICES: [&str; 3] = [
    "larder.v1.CacheService",
    "larder.v1.SessionService",
    "larder.v1.RateLimitService",
];

/// The fields of `RunRequest` and `RunResponse` that every call touches.
struct Shape {
    request: MessageDescriptor,
    response: MessageDescriptor,
    id: FieldDescriptor,
    answer_id: FieldDescriptor,
    error: FieldDescriptor,
}

static SHAPE: LazyLock<Shape> = LazyLock::new(|| {
    let message = |name: &str| {
        POOL.get_message_by_name(name)
            .expect("pipeline.proto is compiled in")
    };
    let (request, response) = (
        message("larder.v1.RunRequest"),
        message("larder.v1.RunResponse"),
    );
    let field = |desc: &MessageDescriptor, name: &str| {
        desc.get_field_by_name(name)
            .expect("pipeline.proto names this field")
    };
    Shape {
        id: field(&request, "id"),
        answer_id: field(&response, "id"),
        error: field(&response, "error"),
        request,
        response,
    }
});

/// Where one method's request goes in a `RunRequest`, and where its answer comes back in a
/// `RunResponse` (the field of the same name).
pub struct Slot {
    call: FieldDescriptor,
    result: FieldDescriptor,
    output: MessageDescriptor,
}

/// The slot of every method a Run stream carries, by its gRPC path: the `call` field whose
/// name is the method's in snake_case and whose type is the method's request.
static SLOTS: LazyLock<HashMap<String, Slot>> = LazyLock::new(|| {
    let mut slots = HashMap::new();
    for service in SERVICES {
        let Some(service) = POOL.get_service_by_name(service) else {
            continue;
        };
        for method in service.methods() {
            let name = snake_case(method.name());
            let (Some(call), Some(result)) = (
                SHAPE.request.get_field_by_name(&name),
                SHAPE.response.get_field_by_name(&name),
            ) else {
                continue;
            };
            let same = |field: &FieldDescriptor, desc: &MessageDescriptor| matches!(field.kind(), Kind::Message(m) if m == *desc);
            if same(&call, &method.input()) && same(&result, &method.output()) {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let output = method.output();
                slots.insert(
                    path,
                    Slot {
                        call,
                        result,
                        output,
                    },
                );
            }
        }
    }
    slots
});

fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The slot of `path`, when a Run stream carries it.
pub fn slot(path: &str) -> Option<&'static Slot> {
    SLOTS.get(path)
}

/// How a stream ended, for the calls still waiting on it.
#[derive(Clone)]
struct End {
    status: Status,
    /// The stream never opened because no connection could be made: nothing was sent.
    never_sent: bool,
}

type Answer = Result<DynamicMessage, End>;

/// How long one stream takes new calls. After that the next call opens a new stream and the
/// old one is half-closed, so it ends once its calls are answered. A stream that lived as long
/// as its connection would be cut with calls in flight when the daemon retires the connection
/// (`server.max_connection_age`: GOAWAY, then at most `server.max_connection_age_grace`, 30 s
/// by default, for the streams still open), which a unary call never is: a new stream goes on
/// a new connection after a GOAWAY.
const STREAM_LIFETIME: Duration = Duration::from_secs(1);

/// The largest call (its request, encoded) that goes on the stream; a larger one goes unary.
/// The daemon's message limit (`max_message_bytes`) is its largest value plus a batch of keys
/// plus 64 KiB of slack, so a call of at most 64 KiB fits it however the daemon is
/// configured, whereas a larger one may not, and a message past the limit ends the whole
/// stream. For calls this large, one HTTP/2 stream more costs little beside the bytes.
pub const MAX_PIPELINED_BYTES: usize = 64 * 1024;

/// The most calls queued on one stream and not yet taken by its writer; a call past it goes
/// unary. The daemon stops reading a stream that has `server.max_pipeline_inflight` calls in
/// flight, so under a stall the queue would otherwise grow without bound.
pub const MAX_QUEUED: usize = 1024;

/// A call queued for writing: its id, its deadline and its `RunRequest`.
type Queued = (u64, tokio::time::Instant, DynamicMessage);

/// One Run stream: where calls are written, and who waits for which id.
struct Stream {
    opened: Instant,
    state: Mutex<StreamState>,
}

struct StreamState {
    /// Where calls are written; `None` once the stream is half-closed or has ended, so that no
    /// call is sent on a stream that will not answer it.
    outbound: Option<mpsc::UnboundedSender<Queued>>,
    /// The calls sent and not yet answered.
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    /// How many calls are queued and not yet taken by the writer (at most `MAX_QUEUED`).
    queued: usize,
}

impl Stream {
    fn answer(&self, mut response: DynamicMessage) {
        let id = match response.take_field(&SHAPE.answer_id) {
            Some(Value::U64(id)) => id,
            _ => 0,
        };
        let waiter = lock(&self.state).waiting.remove(&id);
        if let Some(waiter) = waiter {
            // Fails only when the call was abandoned: nobody wants the answer.
            let _ = waiter.send(Ok(response));
        }
    }

    /// Takes no more calls: the request stream ends once what was written is sent, and the
    /// daemon ends the stream once it has answered them.
    fn half_close(&self) {
        lock(&self.state).outbound = None;
    }

    fn end(&self, end: End) {
        let waiting = {
            let mut state = lock(&self.state);
            state.outbound = None;
            std::mem::take(&mut state.waiting)
        };
        for (_, waiter) in waiting {
            let _ = waiter.send(Err(end.clone()));
        }
    }

    fn forget(&self, id: u64) {
        lock(&self.state).waiting.remove(&id);
    }

    /// Whether the queued call `id` is still to be written: it is still waited on (not timed
    /// out, not cancelled) and its deadline has not passed. Counts it out of the queue.
    fn take(&self, id: u64, deadline: tokio::time::Instant) -> bool {
        let mut state = lock(&self.state);
        state.queued = state.queued.saturating_sub(1);
        // Past its deadline, its caller gets DEADLINE_EXCEEDED (its timer forgets it): the call
        // must not run after that.
        tokio::time::Instant::now() < deadline && state.waiting.contains_key(&id)
    }
}

/// Forgets a call on its stream when dropped armed.
struct Forget<'a> {
    stream: &'a Arc<Stream>,
    id: u64,
    armed: bool,
}

impl Forget<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.stream.forget(self.id);
        }
    }
}

/// The mutexes here guard a map or a pointer for a few instructions, never across an await;
/// a panic while one is held cannot leave them half-changed, so a poisoned one is used as is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The pipelined calls of one asyncio runtime: at most one open stream at a time.
pub struct Pipeline {
    grpc: Grpc<Channel>,
    authorization: Option<AsciiMetadataValue>,
    current: Mutex<Option<Arc<Stream>>>,
    next_id: AtomicU64,
    /// How many streams have been opened (what `Core.pipeline_streams` reports).
    opened: AtomicU64,
    /// The most calls queued on one stream at once (what `Core.pipeline_queue_peak` reports).
    queue_peak: AtomicUsize,
    /// A stream has opened once: the daemon has the service.
    confirmed: AtomicBool,
    /// The daemon answered the stream with UNIMPLEMENTED: calls go unary.
    unsupported: AtomicBool,
}

/// What a pipelined call gives its caller.
pub enum Outcome {
    Done(Result<DynamicMessage, Failure>),
    /// Make the call unary, with this request and this timeout (what is left of the call's):
    /// the daemon has no PipelineService, the call is too large for the stream, or too many
    /// calls wait to be written.
    Unary(DynamicMessage, Duration),
}

impl Pipeline {
    pub fn new(grpc: Grpc<Channel>, authorization: Option<AsciiMetadataValue>) -> Pipeline {
        Pipeline {
            grpc,
            authorization,
            current: Mutex::new(None),
            next_id: AtomicU64::new(1),
            opened: AtomicU64::new(0),
            queue_peak: AtomicUsize::new(0),
            confirmed: AtomicBool::new(false),
            unsupported: AtomicBool::new(false),
        }
    }

    /// How many Run streams have been opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The most calls queued on one stream at once so far (at most `MAX_QUEUED`).
    pub fn queue_peak(&self) -> usize {
        self.queue_peak.load(Ordering::Relaxed)
    }

    /// Whether calls still go on the stream (the daemon is not known to lack the service).
    pub fn supported(&self) -> bool {
        !self.unsupported.load(Ordering::Relaxed)
    }

    /// Sends `request` on the stream (opening one if none is open) and waits, at most
    /// `timeout`, for its answer. Runs on the runtime of `Live::spawned`.
    pub async fn call(
        self: Arc<Self>,
        slot: &'static Slot,
        request: DynamicMessage,
        timeout: Duration,
    ) -> Outcome {
        let deadline = tokio::time::Instant::now() + timeout;
        if request.encoded_len() > MAX_PIPELINED_BYTES {
            return Outcome::Unary(request, timeout);
        }
        // Until a stream has opened, the request is kept for a unary retry in case the
        // daemon turns out to lack the service (it then never ran the call).
        let fallback = (!self.confirmed.load(Ordering::Relaxed)).then(|| request.clone());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = DynamicMessage::new(SHAPE.request.clone());
        message.set_field(&SHAPE.id, Value::U64(id));
        message.set_field(&slot.call, Value::Message(request));
        let (stream, answer) = match self.send(id, deadline, message) {
            Ok(sent) => sent,
            Err(mut message) => match message.take_field(&slot.call) {
                Some(Value::Message(request)) => return Outcome::Unary(request, timeout),
                _ => unreachable!("the call's field was set above"),
            },
        };
        // Dropped before the answer (the awaiting task was cancelled), the call is forgotten,
        // so that the stream's writer skips it if it is still queued.
        let forget = Forget {
            stream: &stream,
            id,
            armed: true,
        };
        let answer = match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => {
                forget.disarm();
                answer
            }
            // The waiter was dropped unanswered: the runtime is going away.
            Ok(Err(_)) => Err(End {
                status: Status::unavailable("the pipeline stream closed"),
                never_sent: false,
            }),
            Err(_) => {
                drop(forget);
                return Outcome::Done(Err(Failure {
                    status: deadline_exceeded(),
                    never_sent: false,
                }));
            }
        };
        Outcome::Done(match answer {
            Ok(response) => result(response, slot),
            Err(end) if end.status.code() == Code::Unimplemented => match fallback {
                Some(request) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Outcome::Done(Err(Failure {
                            status: deadline_exceeded(),
                            never_sent: true,
                        }));
                    }
                    return Outcome::Unary(request, left);
                }
                None => Err(Failure {
                    status: end.status,
                    never_sent: false,
                }),
            },
            Err(end) => Err(Failure {
                status: end.status,
                never_sent: end.never_sent,
            }),
        })
    }

    /// Registers `id` on the open stream (or a new one) and queues `message` on it; gives
    /// `message` back when `MAX_QUEUED` calls already wait to be written.
    #[allow(clippy::result_large_err)]
    fn send(
        self: &Arc<Self>,
        id: u64,
        deadline: tokio::time::Instant,
        message: DynamicMessage,
    ) -> Result<(Arc<Stream>, oneshot::Receiver<Answer>), DynamicMessage> {
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        loop {
            let stream = self.stream();
            let mut state = lock(&stream.state);
            let Some(outbound) = state.outbound.clone() else {
                drop(state);
                self.retire(&stream);
                continue; // closed just now: open another
            };
            if state.queued >= MAX_QUEUED {
                return Err(message);
            }
            state.queued += 1;
            self.queue_peak.fetch_max(state.queued, Ordering::Relaxed);
            state
                .waiting
                .insert(id, tx.take().expect("registered once"));
            // Sent under the lock, so that a half-close or an end cannot come between the
            // registration and the write.
            let sent = outbound.send((id, deadline, message)).is_ok();
            drop(state);
            if !sent {
                // The stream's task is gone: `end` answers the waiter.
                self.retire(&stream);
            }
            return Ok((stream, rx));
        }
    }

    /// The open stream, or a new one.
    fn stream(self: &Arc<Self>) -> Arc<Stream> {
        let mut current = lock(&self.current);
        if let Some(stream) = &*current {
            if stream.opened.elapsed() < STREAM_LIFETIME {
                return stream.clone();
            }
            stream.half_close();
        }
        let (outbound, inbound) = mpsc::unbounded_channel();
        let stream = Arc::new(Stream {
            opened: Instant::now(),
            state: Mutex::new(StreamState {
                outbound: Some(outbound),
                waiting: HashMap::new(),
                queued: 0,
            }),
        });
        *current = Some(stream.clone());
        self.opened.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(self.clone().drive(stream.clone(), inbound));
        stream
    }

    /// Makes sure `stream` is no longer the one new calls go to.
    fn retire(&self, stream: &Arc<Stream>) {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, stream)) {
            *current = None;
        }
    }

    /// Opens the Run stream, writes what `outbound` yields to it, and hands each answer to
    /// its waiter until the stream ends; then fails the calls still waiting.
    async fn drive(
        self: Arc<Self>,
        stream: Arc<Stream>,
        outbound: mpsc::UnboundedReceiver<Queued>,
    ) {
        let mut grpc = self.grpc.clone();
        // Each call is looked at as the writer takes it: one abandoned meanwhile is skipped.
        let gate = stream.clone();
        let outbound = UnboundedReceiverStream::new(outbound)
            .filter_map(move |(id, deadline, message)| gate.take(id, deadline).then_some(message));
        let mut request = Request::new(outbound);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert(MetadataKey::from_static("authorization"), value.clone());
        }
        let opened = async {
            grpc.ready()
                .await
                .map_err(|e| Status::from_error(e.into()))?;
            let codec = DynamicCodec {
                output: SHAPE.response.clone(),
            };
            grpc.streaming(request, PathAndQuery::from_static(RUN), codec)
                .await
        }
        .await;
        let end = match opened {
            Err(status) => {
                if status.code() == Code::Unimplemented {
                    self.unsupported.store(true, Ordering::Relaxed);
                }
                let never_sent = never_sent(&status);
                End {
                    status: as_grpcio(status),
                    never_sent,
                }
            }
            Ok(response) => {
                self.confirmed.store(true, Ordering::Relaxed);
                let mut answers = response.into_inner();
                loop {
                    match answers.message().await {
                        Ok(Some(answer)) => stream.answer(answer),
                        Ok(None) => {
                            break End {
                                status: Status::unavailable(
                                    "the daemon closed the pipeline stream",
                                ),
                                never_sent: false,
                            };
                        }
                        // The stream's own status (RESOURCE_EXHAUSTED for a message past the
                        // daemon's limit, say) is no one waiting call's: each gets what a
                        // unary call gets when its connection drops.
                        Err(status) => {
                            break End {
                                status: Status::unavailable(format!(
                                    "the pipeline stream broke: {}",
                                    as_grpcio(status).message()
                                )),
                                never_sent: false,
                            };
                        }
                    }
                }
            }
        };
        self.retire(&stream);
        stream.end(end);
    }
}

/// The answer of one call from its `RunResponse`: the result in the call's own field, or the
/// status of its `error`.
fn result(mut response: DynamicMessage, slot: &Slot) -> Result<DynamicMessage, Failure> {
    if let Some(Value::Message(error)) = response.take_field(&SHAPE.error) {
        let code = match error.get_field_by_name("code").as_deref() {
            Some(Value::I32(code)) => *code,
            _ => Code::Unknown as i32,
        };
        let message = match error.get_field_by_name("message").as_deref() {
            Some(Value::String(message)) => message.clone(),
            _ => String::new(),
        };
        return Err(Failure {
            status: Status::new(Code::from_i32(code), message),
            never_sent: false,
        });
    }
    match response.take_field(&slot.result) {
        Some(Value::Message(answer)) => Ok(answer),
        // An answer with no field set is the result message with every field at its default.
        _ => Ok(DynamicMessage::new(slot.output.clone())),
    }
}
