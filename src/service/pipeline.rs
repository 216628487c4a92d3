//! `larder.v1.PipelineService`: many unary calls, each tagged with an id, on one bidirectional
//! stream. Each call is handed to the very service that answers its unary twin (the cache
//! behind its namespace check, sessions, rate limits), after the path check the auth layer
//! would have made of the twin, so validation, limits, scope, codes and messages are the
//! twin's by construction: nothing here validates or stores anything itself.
//!
//! Each call of a stream that does not complete when first polled runs as its own task, so
//! that it makes progress whatever the client reads: the response body is polled only while HTTP/2 lets the server send, and a call
//! polled only from there would stop mid-way, holding what it holds (a rate-limit write-behind
//! lock, a key being loaded) against every other client. The answer stream reads calls while
//! fewer than `max_inflight` are running or answered but not yet sent, and sends each answer
//! as its call completes. Writes read from the stream together are therefore submitted to the
//! writer together and share its commit. At the bound the stream stops reading until an
//! answer has been taken, so HTTP/2 flow control slows the client; a client that does not read
//! its answers stops being read from, and holds at most `max_inflight` calls and their
//! answers. When the stream is dropped (the client went away) its calls' tasks are aborted, as
//! a unary call's future is dropped when its client goes.
//!
//! Each call read is charged to the server's in-flight byte budget, by its encoded size, until
//! its answer is taken (the request frames themselves are charged only until decoded, so a
//! long-lived stream holds only what it has not answered); a call that does not fit is
//! answered `UNAVAILABLE` alone, as its unary twin would be refused.
//!
//! On shutdown the stream stops reading, answers the calls in flight, then ends with
//! `UNAVAILABLE`; calls the client sent but the server had not read are not run.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, Stream};
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::error::Error;
use crate::pb;
use crate::pb::cache_service_server::CacheService;
use crate::pb::pipeline_service_server::PipelineService;
use crate::pb::rate_limit_service_server::RateLimitService;
use crate::pb::run_request::Call;
use crate::pb::run_response::Result as Outcome;
use crate::pb::session_service_server::SessionService;
use crate::service::cache::CacheApi;
use crate::service::ratelimit::RateLimitApi;
use crate::service::scope::{Scope, Scoped};
use crate::service::session::SessionApi;

/// Where each pipelined call is reported once answered, under its unary twin's path (for the
/// per-method metrics, which live above this layer).
pub(crate) trait CallObserver: Send + Sync + fmt::Debug {
    /// The call to `path` (`/larder.v1.CacheService/Get`) ended with `code` after `elapsed`.
    fn finished(&self, path: &str, code: Code, elapsed: Duration);
}

/// The token a stream was opened with, as the auth layer (which sits above this layer) can
/// check it again once the accepted tokens change.
pub(crate) trait Credentials: Send + Sync + fmt::Debug {
    /// The generation of the accepted tokens the stream was admitted under.
    fn admitted(&self) -> u64;
    /// The generation of the accepted tokens now; changes on each reload.
    fn generation(&self) -> u64;
    /// The token's scope under the tokens now (`None`: full access), or the status that ends
    /// the stream (the token is no longer accepted, or no longer for this service).
    fn recheck(&self) -> Result<Option<Scope>, Status>;
}

/// Where a stream's calls are charged from when they are read until their answers are taken:
/// the server's in-flight byte budget, which sits above this layer.
pub(crate) trait CallBudget: Send + Sync + fmt::Debug {
    /// Charges `bytes` if they fit; `false` when the budget is full.
    fn charge(&self, bytes: usize) -> bool;
    /// Returns `bytes` charged before.
    fn release(&self, bytes: usize);
    /// Counts a call refused for want of room; the status it is answered with.
    fn refused(&self) -> Status;
}

/// The path a call with no `call` set is reported under.
const NO_CALL_PATH: &str = "/larder.v1.PipelineService/Run";

/// What every stream shares.
#[derive(Debug)]
struct Services {
    cache: Scoped<CacheApi>,
    sessions: SessionApi,
    ratelimit: RateLimitApi,
    max_inflight: usize,
    observer: Option<Arc<dyn CallObserver>>,
}

/// The PipelineService implementation.
#[derive(Debug, Clone)]
pub(crate) struct PipelineApi {
    services: Arc<Services>,
    stop: CancellationToken,
}

impl PipelineApi {
    /// Serves the calls of each stream with these services, at most `max_inflight` of one
    /// stream at once; streams wind down when `stop` is cancelled.
    pub(crate) fn new(
        cache: Scoped<CacheApi>,
        sessions: SessionApi,
        ratelimit: RateLimitApi,
        max_inflight: usize,
        stop: CancellationToken,
    ) -> Self {
        Self {
            services: Arc::new(Services {
                cache,
                sessions,
                ratelimit,
                max_inflight: max_inflight.max(1),
                observer: None,
            }),
            stop,
        }
    }

    /// Reports each answered call to `observer`.
    pub(crate) fn with_observer(mut self, observer: Option<Arc<dyn CallObserver>>) -> Self {
        if let Some(services) = Arc::get_mut(&mut self.services) {
            services.observer = observer;
        }
        self
    }
}

/// The twin's request, carrying the stream's scope the way the auth layer hands it to a
/// unary call (the cache's namespace check reads it from there).
fn request<T>(message: T, scope: Option<&Scope>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(scope) = scope {
        request.extensions_mut().insert(scope.clone());
    }
    request
}

/// One arm per call kind: the twin's path, the service and the method that answer it.
macro_rules! calls {
    ($($variant:ident => $service:ident.$method:ident, $path:literal;)*) => {
        /// Runs `call` as its unary twin; gives the twin's path and its answer.
        async fn dispatch(
            services: &Services,
            scope: Option<&Scope>,
            call: Call,
        ) -> (&'static str, Result<Outcome, Status>) {
            match call {
                $(Call::$variant(message) => {
                    let answer = match scope.map(|s| s.admits($path)) {
                        Some(Err(refusal)) => Err(Status::from(refusal)),
                        _ => services
                            .$service
                            .$method(request(message, scope))
                            .await
                            .map(|r| Outcome::$variant(r.into_inner())),
                    };
                    ($path, answer)
                })*
            }
        }
    };
}

calls! {
    Get => cache.get, "/larder.v1.CacheService/Get";
    Set => cache.set, "/larder.v1.CacheService/Set";
    Delete => cache.delete, "/larder.v1.CacheService/Delete";
    GetMany => cache.get_many, "/larder.v1.CacheService/GetMany";
    SetMany => cache.set_many, "/larder.v1.CacheService/SetMany";
    DeleteMany => cache.delete_many, "/larder.v1.CacheService/DeleteMany";
    DeletePrefix => cache.delete_prefix, "/larder.v1.CacheService/DeletePrefix";
    Touch => cache.touch, "/larder.v1.CacheService/Touch";
    Increment => cache.increment, "/larder.v1.CacheService/Increment";
    Clear => cache.clear, "/larder.v1.CacheService/Clear";
    Stats => cache.stats, "/larder.v1.CacheService/Stats";
    CreateSession => sessions.create_session, "/larder.v1.SessionService/CreateSession";
    GetSession => sessions.get_session, "/larder.v1.SessionService/GetSession";
    UpdateSession => sessions.update_session, "/larder.v1.SessionService/UpdateSession";
    RotateSession => sessions.rotate_session, "/larder.v1.SessionService/RotateSession";
    RevokeSession => sessions.revoke_session, "/larder.v1.SessionService/RevokeSession";
    RevokeUserSessions => sessions.revoke_user_sessions,
        "/larder.v1.SessionService/RevokeUserSessions";
    ListSessions => sessions.list_sessions, "/larder.v1.SessionService/ListSessions";
    Check => ratelimit.check, "/larder.v1.RateLimitService/Check";
    Peek => ratelimit.peek, "/larder.v1.RateLimitService/Peek";
    Reset => ratelimit.reset, "/larder.v1.RateLimitService/Reset";
}

/// Runs one call of a stream and makes its answer.
async fn run(
    services: Arc<Services>,
    scope: Option<Scope>,
    req: pb::RunRequest,
) -> pb::RunResponse {
    let started = services.observer.as_ref().map(|_| Instant::now());
    let (path, answer) = match req.call {
        Some(call) => dispatch(&services, scope.as_ref(), call).await,
        None => (
            NO_CALL_PATH,
            Err(Status::from(Error::invalid(
                "call",
                "must be set (one of the call fields)",
            ))),
        ),
    };
    if let (Some(observer), Some(started)) = (&services.observer, started) {
        let code = answer.as_ref().map_or_else(Status::code, |_| Code::Ok);
        observer.finished(path, code, started.elapsed());
    }
    match answer {
        Ok(result) => pb::RunResponse {
            id: req.id,
            error: None,
            result: Some(result),
        },
        Err(status) => pb::RunResponse {
            id: req.id,
            error: Some(pb::CallError {
                code: i32::from(status.code()),
                message: status.message().to_owned(),
            }),
            result: None,
        },
    }
}

/// One call running as its own task (aborted when dropped unanswered), or answered at once;
/// with the bytes it is charged.
struct Spawned {
    id: u64,
    charged: usize,
    task: Option<JoinHandle<pb::RunResponse>>,
    ready: Option<pb::RunResponse>,
}

impl Future for Spawned {
    type Output = (pb::RunResponse, usize);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (id, charged) = (self.id, self.charged);
        if let Some(answer) = self.ready.take() {
            return Poll::Ready((answer, charged));
        }
        let Some(task) = self.task.as_mut() else {
            return Poll::Pending;
        };
        Pin::new(task).poll(cx).map(|joined| {
            // A call's task ends unanswered only if it panicked: that call alone fails, as
            // its unary twin would.
            let answer = joined.unwrap_or_else(|_| pb::RunResponse {
                id,
                error: Some(pb::CallError {
                    code: i32::from(Code::Internal),
                    message: "internal error".to_owned(),
                }),
                result: None,
            });
            (answer, charged)
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts one call: polled once here, and only if that does not answer it (a read from
/// memory usually does) handed to a task of its own, which is what it costs.
fn spawn(
    services: Arc<Services>,
    scope: Option<Scope>,
    req: pb::RunRequest,
    cx: &mut Context<'_>,
) -> Spawned {
    let id = req.id;
    let mut call = Box::pin(run(services, scope, req));
    let (task, ready) = match call.as_mut().poll(cx) {
        Poll::Ready(answer) => (None, Some(answer)),
        Poll::Pending => (Some(tokio::spawn(call)), None),
    };
    Spawned {
        id,
        charged: 0,
        task,
        ready,
    }
}

/// The answer stream of one Run: reads calls, starts each with `spawn`, yields their answers.
/// `running` holds the calls started and not yet answered to the client (finished or not).
struct Answers {
    services: Arc<Services>,
    scope: Option<Scope>,
    /// Where the calls read are charged until answered (`None`: not bounded).
    budget: Option<Arc<dyn CallBudget>>,
    /// What the calls in `running` are charged, all told.
    charged: usize,
    /// The stream's token and the generation its scope was last checked under (`None`: no
    /// auth on this listener).
    credentials: Option<(Arc<dyn Credentials>, u64)>,
    /// The calls still to read; `None` once the client half-closed, the stream failed, or
    /// shutdown began.
    requests: Option<Streaming<pb::RunRequest>>,
    running: FuturesUnordered<Spawned>,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    stopped: bool,
    /// How the stream ends once every call read has been answered (`None`: OK).
    end: Option<Status>,
    ended: bool,
}

impl Stream for Answers {
    type Item = Result<pb::RunResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if !this.stopped && this.stopping.as_mut().poll(cx).is_ready() {
            this.stopped = true;
            if this.requests.take().is_some() {
                this.end = Some(Status::unavailable("server shutting down"));
            }
        }
        while this.running.len() < this.services.max_inflight {
            let Some(requests) = this.requests.as_mut() else {
                break;
            };
            match Pin::new(requests).poll_next(cx) {
                Poll::Ready(Some(Ok(req))) => {
                    // One atomic load per call; the token is checked again only after a
                    // reload, and a refusal ends the stream before this call runs.
                    if let Some((credentials, seen)) = &mut this.credentials {
                        let now = credentials.generation();
                        if now != *seen {
                            *seen = now;
                            match credentials.recheck() {
                                Ok(scope) => this.scope = scope,
                                Err(status) => {
                                    this.requests = None;
                                    this.end = Some(status);
                                    break;
                                }
                            }
                        }
                    }
                    let call = match &this.budget {
                        None => spawn(this.services.clone(), this.scope.clone(), req, cx),
                        Some(budget) => {
                            let bytes = req.encoded_len();
                            if budget.charge(bytes) {
                                this.charged += bytes;
                                let mut call =
                                    spawn(this.services.clone(), this.scope.clone(), req, cx);
                                call.charged = bytes;
                                call
                            } else {
                                // Refused alone, as its unary twin would be.
                                let status = budget.refused();
                                Spawned {
                                    id: req.id,
                                    charged: 0,
                                    task: None,
                                    ready: Some(pb::RunResponse {
                                        id: req.id,
                                        error: Some(pb::CallError {
                                            code: i32::from(status.code()),
                                            message: status.message().to_owned(),
                                        }),
                                        result: None,
                                    }),
                                }
                            }
                        }
                    };
                    this.running.push(call);
                }
                Poll::Ready(Some(Err(status))) => {
                    this.requests = None;
                    this.end = Some(status);
                }
                Poll::Ready(None) => this.requests = None,
                Poll::Pending => break,
            }
        }
        if let Poll::Ready(Some((answer, charged))) = Pin::new(&mut this.running).poll_next(cx) {
            if let Some(budget) = &this.budget {
                this.charged -= charged;
                budget.release(charged);
            }
            return Poll::Ready(Some(Ok(answer)));
        }
        if this.running.is_empty() && this.requests.is_none() {
            this.ended = true;
            return Poll::Ready(this.end.take().map(Err));
        }
        Poll::Pending
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        // The calls not answered (aborted with the stream) give their bytes back.
        if let Some(budget) = &self.budget {
            budget.release(self.charged);
        }
    }
}

#[tonic::async_trait]
impl PipelineService for PipelineApi {
    type RunStream = Pin<Box<dyn Stream<Item = Result<pb::RunResponse, Status>> + Send>>;

    async fn run(
        &self,
        req: Request<Streaming<pb::RunRequest>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let scope = req.extensions().get::<Scope>().cloned();
        let credentials = req
            .extensions()
            .get::<Arc<dyn Credentials>>()
            .map(|c| (c.clone(), c.admitted()));
        let answers = Answers {
            services: self.services.clone(),
            scope,
            credentials,
            budget: req.extensions().get::<Arc<dyn CallBudget>>().cloned(),
            charged: 0,
            requests: Some(req.into_inner()),
            running: FuturesUnordered::new(),
            stopping: Box::pin(self.stop.clone().cancelled_owned()),
            stopped: false,
            end: None,
            ended: false,
        };
        Ok(Response::new(Box::pin(answers)))
    }
}
