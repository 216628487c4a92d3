//! The pipelined side of `larder bench --pipeline`: one PipelineService/Run stream per HTTP/2
//! connection, which every caller on that connection multiplexes its calls on. Each call
//! takes a fresh id; one reader task per stream hands each answer to the caller waiting on its
//! id, in whatever order the server answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use larder::pb;
use larder::pb::pipeline_service_client::PipelineServiceClient;
use larder::pb::run_request::Call;
use larder::pb::run_response::Result as Outcome;

use super::ops::Bearer;

/// Calls queued for the stream's sender before callers wait: more than the callers of a
/// connection ever have in flight, so a caller never waits here in a closed loop.
const QUEUE: usize = 4096;

/// The callers waiting for an answer, by call id; `None` once the stream has ended.
type Waiting = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<pb::RunResponse>>>>>;

/// One Run stream, shared by the callers of one connection.
pub(crate) struct Pipe {
    calls: mpsc::Sender<pb::RunRequest>,
    waiting: Waiting,
    next_id: AtomicU64,
    /// Why the stream ended, once it has.
    ended: Arc<Mutex<Option<Status>>>,
}

impl Pipe {
    /// Opens a Run stream on `channel`, its calls carrying `bearer`.
    pub(crate) async fn open(channel: Channel, bearer: Bearer) -> Result<Arc<Self>, Status> {
        let (calls, queued) = mpsc::channel(QUEUE);
        let mut client = PipelineServiceClient::new(InterceptedService::new(channel, bearer))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let mut answers = client.run(ReceiverStream::new(queued)).await?.into_inner();
        let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        let ended = Arc::new(Mutex::new(None));
        let pipe = Arc::new(Self {
            calls,
            waiting: waiting.clone(),
            next_id: AtomicU64::new(0),
            ended: ended.clone(),
        });
        tokio::spawn(async move {
            let end = loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let caller = lock(&waiting).as_mut().and_then(|w| w.remove(&answer.id));
                        if let Some(caller) = caller {
                            let _ = caller.send(answer);
                        }
                    }
                    Ok(None) => break Status::unavailable("the Run stream ended"),
                    Err(status) => break status,
                }
            };
            *lock(&ended) = Some(end);
            // Dropping the senders wakes every caller still waiting.
            lock(&waiting).take();
        });
        Ok(pipe)
    }

    fn ended(&self) -> Status {
        lock(&self.ended)
            .clone()
            .unwrap_or_else(|| Status::unavailable("the Run stream ended"))
    }

    /// Runs `call` on the stream and gives its answer, or its error as a status.
    pub(crate) async fn call(&self, call: Call) -> Result<Outcome, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.waiting).as_mut() {
            Some(waiting) => waiting.insert(id, tx),
            None => return Err(self.ended()),
        };
        let request = pb::RunRequest {
            id,
            call: Some(call),
        };
        if self.calls.send(request).await.is_err() {
            return Err(self.ended());
        }
        let answer = rx.await.map_err(|_| self.ended())?;
        match (answer.error, answer.result) {
            (Some(e), _) => Err(Status::new(tonic::Code::from(e.code), e.message)),
            (None, Some(result)) => Ok(result),
            (None, None) => Err(Status::internal(format!("call {id}: an empty answer"))),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
