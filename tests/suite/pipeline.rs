//! PipelineService/Run against the real daemon: each call kind is answered like its unary
//! twin (errors included), answers come back as calls complete, a bad call fails alone, the
//! token's scope holds per call, one stream's calls in flight are bounded without refusing
//! any, pipelined writes are durable, pipelined calls are counted under their twin's method,
//! and reflection lists the service.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use larder::pb;
use larder::pb::pipeline_service_client::PipelineServiceClient;
use larder::pb::run_request::Call;
use larder::pb::run_response::Result as Outcome;
use larder::{AuthSettings, ServerSettings};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

use crate::common::{TestServer, get};

/// One open Run stream.
struct Pipe {
    calls: mpsc::Sender<pb::RunRequest>,
    answers: Streaming<pb::RunResponse>,
}

impl Pipe {
    async fn open(channel: Channel) -> Self {
        Self::open_with(channel, None).await
    }

    /// A stream carrying `authorization: Bearer <token>` when a token is given.
    async fn open_with(channel: Channel, token: Option<&str>) -> Self {
        let (calls, rx) = mpsc::channel(16);
        let mut request = Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        let answers = PipelineServiceClient::new(channel)
            .run(request)
            .await
            .expect("opening a Run stream")
            .into_inner();
        Self { calls, answers }
    }

    async fn send(&self, id: u64, call: Option<Call>) {
        self.calls
            .send(pb::RunRequest { id, call })
            .await
            .expect("the stream is open");
    }

    async fn answer(&mut self) -> pb::RunResponse {
        self.answers
            .next()
            .await
            .expect("an answer")
            .expect("the stream goes on")
    }

    /// Sends `calls` (ids 0, 1, ...) and collects their answers by id.
    async fn run_all(&mut self, calls: Vec<Call>) -> HashMap<u64, pb::RunResponse> {
        let n = calls.len();
        for (id, call) in calls.into_iter().enumerate() {
            self.send(id as u64, Some(call)).await;
        }
        let mut answers = HashMap::new();
        for _ in 0..n {
            let a = self.answer().await;
            assert!(answers.insert(a.id, a).is_none(), "one answer per id");
        }
        answers
    }

    /// Runs one call and gives its answer.
    async fn one(&mut self, call: Call) -> pb::RunResponse {
        self.send(u64::MAX, Some(call)).await;
        let a = self.answer().await;
        assert_eq!(a.id, u64::MAX);
        a
    }

    /// Runs one call and gives its answer as the unary call would give it.
    async fn unary_like(&mut self, call: Call) -> Result<Outcome, (Code, String)> {
        let a = self.one(call).await;
        match (a.error, a.result) {
            (Some(e), None) => Err((Code::from(e.code), e.message)),
            (None, Some(r)) => Ok(r),
            other => panic!("an answer is a result or an error: {other:?}"),
        }
    }
}

fn set(key: &str, value: &str) -> Call {
    Call::Set(pb::SetRequest {
        key: key.into(),
        value: value.to_owned().into(),
        ..Default::default()
    })
}

fn get_call(key: &str) -> Call {
    Call::Get(pb::GetRequest {
        key: key.into(),
        ..Default::default()
    })
}

/// The unary clients of one server.
struct Unary {
    cache: pb::cache_service_client::CacheServiceClient<Channel>,
    sessions: pb::session_service_client::SessionServiceClient<Channel>,
    limits: pb::rate_limit_service_client::RateLimitServiceClient<Channel>,
}

fn split<T>(
    r: Result<tonic::Response<T>, Status>,
    wrap: fn(T) -> Outcome,
) -> Result<Outcome, (Code, String)> {
    r.map(|r| wrap(r.into_inner()))
        .map_err(|s| (s.code(), s.message().to_owned()))
}

impl Unary {
    async fn new(server: &TestServer) -> Self {
        let channel = server.channel().await;
        Self {
            cache: pb::cache_service_client::CacheServiceClient::new(channel.clone()),
            sessions: pb::session_service_client::SessionServiceClient::new(channel.clone()),
            limits: pb::rate_limit_service_client::RateLimitServiceClient::new(channel),
        }
    }

    /// `call` made as its unary twin.
    async fn call(&mut self, call: Call) -> Result<Outcome, (Code, String)> {
        match call {
            Call::Get(r) => split(self.cache.get(r).await, Outcome::Get),
            Call::Set(r) => split(self.cache.set(r).await, Outcome::Set),
            Call::Delete(r) => split(self.cache.delete(r).await, Outcome::Delete),
            Call::GetMany(r) => split(self.cache.get_many(r).await, Outcome::GetMany),
            Call::SetMany(r) => split(self.cache.set_many(r).await, Outcome::SetMany),
            Call::DeleteMany(r) => split(self.cache.delete_many(r).await, Outcome::DeleteMany),
            Call::DeletePrefix(r) => {
                split(self.cache.delete_prefix(r).await, Outcome::DeletePrefix)
            }
            Call::Touch(r) => split(self.cache.touch(r).await, Outcome::Touch),
            Call::Increment(r) => split(self.cache.increment(r).await, Outcome::Increment),
            Call::Clear(r) => split(self.cache.clear(r).await, Outcome::Clear),
            Call::Stats(r) => split(self.cache.stats(r).await, Outcome::Stats),
            Call::CreateSession(r) => split(
                self.sessions.create_session(r).await,
                Outcome::CreateSession,
            ),
            Call::GetSession(r) => split(self.sessions.get_session(r).await, Outcome::GetSession),
            Call::UpdateSession(r) => split(
                self.sessions.update_session(r).await,
                Outcome::UpdateSession,
            ),
            Call::RotateSession(r) => split(
                self.sessions.rotate_session(r).await,
                Outcome::RotateSession,
            ),
            Call::RevokeSession(r) => split(
                self.sessions.revoke_session(r).await,
                Outcome::RevokeSession,
            ),
            Call::RevokeUserSessions(r) => split(
                self.sessions.revoke_user_sessions(r).await,
                Outcome::RevokeUserSessions,
            ),
            Call::ListSessions(r) => {
                split(self.sessions.list_sessions(r).await, Outcome::ListSessions)
            }
            Call::Check(r) => split(self.limits.check(r).await, Outcome::Check),
            Call::Peek(r) => split(self.limits.peek(r).await, Outcome::Peek),
            Call::Reset(r) => split(self.limits.reset(r).await, Outcome::Reset),
        }
    }
}

/// Step `step` of the script both servers run, one call at a time: every call kind, and an
/// error of each service. `token` is the newest session token the server gave.
fn script(step: usize, token: &str) -> Option<Call> {
    let session = |token: &str| token.to_owned();
    Some(match step {
        0 => set("k", "v"),
        1 => get_call("k"),
        2 => get_call("missing"),
        3 => set("", "no key"),
        4 => Call::Delete(pb::DeleteRequest {
            key: "k".into(),
            ..Default::default()
        }),
        5 => Call::SetMany(pb::SetManyRequest {
            namespace: "ns".into(),
            entries: (0..3)
                .map(|i| pb::SetEntry {
                    key: format!("m{i}"),
                    value: format!("{i}").into(),
                    ttl_ms: 0,
                })
                .collect(),
        }),
        6 => Call::GetMany(pb::GetManyRequest {
            namespace: "ns".into(),
            keys: vec!["m0".into(), "m1".into(), "nope".into()],
        }),
        7 => Call::DeleteMany(pb::DeleteManyRequest {
            namespace: "ns".into(),
            keys: vec!["m0".into()],
        }),
        8 => Call::DeletePrefix(pb::DeletePrefixRequest {
            namespace: "ns".into(),
            prefix: "m".into(),
        }),
        9 => Call::Touch(pb::TouchRequest {
            key: "missing".into(),
            ttl_ms: 1000,
            ..Default::default()
        }),
        10 => Call::Increment(pb::IncrementRequest {
            key: "n".into(),
            delta: 5,
            ..Default::default()
        }),
        11 => set("text", "not a number"),
        12 => Call::Increment(pb::IncrementRequest {
            key: "text".into(),
            delta: 1,
            ..Default::default()
        }),
        13 => Call::Clear(pb::ClearRequest {
            namespace: "ns".into(),
        }),
        14 => Call::Stats(pb::StatsRequest::default()),
        15 => Call::CreateSession(pb::CreateSessionRequest {
            user_id: "u1".into(),
            data: [("a".to_owned(), "b".to_owned())].into(),
            ..Default::default()
        }),
        16 => Call::GetSession(pb::GetSessionRequest {
            token: session(token),
        }),
        17 => Call::UpdateSession(pb::UpdateSessionRequest {
            token: session(token),
            set: [("c".to_owned(), "d".to_owned())].into(),
            ..Default::default()
        }),
        18 => Call::RotateSession(pb::RotateSessionRequest {
            token: session(token),
        }),
        19 => Call::ListSessions(pb::ListSessionsRequest {
            user_id: "u1".into(),
            ..Default::default()
        }),
        20 => Call::RevokeSession(pb::RevokeSessionRequest {
            target: Some(pb::revoke_session_request::Target::Token(session(token))),
        }),
        21 => Call::RevokeUserSessions(pb::RevokeUserSessionsRequest {
            user_id: "u1".into(),
            ..Default::default()
        }),
        22 => Call::CreateSession(pb::CreateSessionRequest::default()),
        23 => Call::GetSession(pb::GetSessionRequest {
            token: "not a token".into(),
        }),
        24 => Call::Check(pb::CheckRequest {
            key: "ip:1".into(),
            limit: 10,
            period_ms: 60_000,
            ..Default::default()
        }),
        25 => Call::Peek(pb::PeekRequest {
            key: "ip:1".into(),
            limit: 10,
            period_ms: 60_000,
            ..Default::default()
        }),
        26 => Call::Reset(pb::ResetRequest {
            key: "ip:1".into(),
            ..Default::default()
        }),
        27 => Call::Check(pb::CheckRequest {
            key: "ip:1".into(),
            limit: 0,
            period_ms: 60_000,
            ..Default::default()
        }),
        _ => return None,
    })
}

/// The answer without what is random by design (session tokens and ids), and the newest
/// token it carries, if any.
fn normalised(answer: &mut Result<Outcome, (Code, String)>) -> Option<String> {
    let forget = |s: &mut Option<pb::Session>| {
        if let Some(s) = s {
            s.session_id.clear();
        }
    };
    match answer {
        Ok(Outcome::CreateSession(r)) => {
            forget(&mut r.session);
            Some(std::mem::take(&mut r.token))
        }
        Ok(Outcome::RotateSession(r)) => {
            forget(&mut r.session);
            Some(std::mem::take(&mut r.token))
        }
        Ok(Outcome::GetSession(r)) => {
            forget(&mut r.session);
            None
        }
        Ok(Outcome::UpdateSession(r)) => {
            forget(&mut r.session);
            None
        }
        Ok(Outcome::ListSessions(r)) => {
            for s in &mut r.sessions {
                s.session_id.clear();
            }
            None
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_kind_is_answered_like_its_unary_twin() {
    // Two servers with the same clock run the same script, one unary, one pipelined.
    let unary_server = TestServer::start().await;
    let pipe_server = TestServer::start().await;
    let mut unary = Unary::new(&unary_server).await;
    let mut pipe = Pipe::open(pipe_server.channel().await).await;
    let (mut unary_token, mut pipe_token) = (String::new(), String::new());
    let mut kinds = std::collections::HashSet::new();
    let mut errors = 0;
    for step in 0.. {
        let Some(call) = script(step, &unary_token) else {
            break;
        };
        kinds.insert(std::mem::discriminant(&call));
        let mut want = unary.call(call).await;
        let mut got = pipe
            .unary_like(script(step, &pipe_token).expect("the same script"))
            .await;
        if let Some(t) = normalised(&mut want) {
            unary_token = t;
        }
        if let Some(t) = normalised(&mut got) {
            pipe_token = t;
        }
        assert_eq!(got, want, "step {step}");
        errors += usize::from(want.is_err());
    }
    assert_eq!(kinds.len(), 21, "every call kind ran");
    assert!(errors >= 4, "an error of each service: {errors}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_write_does_not_hold_up_the_reads_behind_it() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    crate::common::set(&mut c, "", "fast", "here", 0).await;
    let mut pipe = Pipe::open(server.channel().await).await;
    // Four megabytes in one SetMany: a commit that takes far longer than a read from memory.
    let big = vec![b'x'; 4096];
    let slow = Call::SetMany(pb::SetManyRequest {
        namespace: "bulk".into(),
        entries: (0..1000)
            .map(|i| pb::SetEntry {
                key: format!("b{i}"),
                value: big.clone().into(),
                ttl_ms: 0,
            })
            .collect(),
    });
    pipe.send(0, Some(slow)).await;
    for id in 1..=50 {
        pipe.send(id, Some(get_call("fast"))).await;
    }
    let mut order = Vec::new();
    for _ in 0..=50 {
        let a = pipe.answer().await;
        assert_eq!(a.error, None, "call {}", a.id);
        order.push(a.id);
    }
    let write_at = order.iter().position(|id| *id == 0).unwrap();
    assert!(
        write_at > 0,
        "some read was answered before the write: {order:?}"
    );
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..=50).collect::<Vec<_>>(),
        "every call answered once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_call_fails_alone_amid_good_ones() {
    let server = TestServer::start().await;
    let mut pipe = Pipe::open(server.channel().await).await;
    let answers = pipe
        .run_all(vec![
            set("a", "1"),
            set("", "no key"),
            Call::SetMany(pb::SetManyRequest {
                namespace: String::new(),
                entries: vec![
                    pb::SetEntry {
                        key: "ok".into(),
                        value: "1".into(),
                        ttl_ms: 0,
                    },
                    pb::SetEntry {
                        key: String::new(),
                        value: "2".into(),
                        ttl_ms: 0,
                    },
                ],
            }),
            get_call("b"),
        ])
        .await;
    assert_eq!(answers[&0].error, None);
    let e = answers[&1].error.as_ref().expect("an empty key fails");
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(e.message.contains("key"), "{}", e.message);
    assert_eq!(answers[&1].result, None);
    let e = answers[&2].error.as_ref().expect("a bad batch fails");
    assert!(e.message.contains("entries[1].key"), "{}", e.message);
    assert!(
        matches!(answers[&3].result, Some(Outcome::Get(_))),
        "{:?}",
        answers[&3]
    );
    // The good write was made, and nothing of the refused batch.
    let g = pipe.unary_like(get_call("a")).await;
    assert!(
        matches!(g, Ok(Outcome::Get(pb::GetResponse { found: true, .. }))),
        "{g:?}"
    );
    let g = pipe.unary_like(get_call("ok")).await;
    assert!(
        matches!(g, Ok(Outcome::Get(pb::GetResponse { found: false, .. }))),
        "{g:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_token_reads_on_the_stream_and_each_write_is_refused() {
    const WRITER: &str = "writer-0123456789abcdefghijklmn";
    const READER: &str = "reader-0123456789abcdefghijklmn";
    const SHOP: &str = "shop-0123456789abcdefghijklmnop";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(
        &path,
        format!("{WRITER}\n{READER} read_only\n{SHOP} services=cache namespace=shop:\n"),
    )
    .unwrap();
    let server = TestServer::with_settings(ServerSettings {
        auth: Some(AuthSettings {
            token_file: path,
            unix_socket: true,
        }),
        ..ServerSettings::default()
    })
    .await;
    let mut writer = Pipe::open_with(server.channel().await, Some(WRITER)).await;
    assert_eq!(writer.one(set("k", "v")).await.error, None);

    let mut reader = Pipe::open_with(server.channel().await, Some(READER)).await;
    let answers = reader
        .run_all(vec![get_call("k"), set("k", "changed"), get_call("k")])
        .await;
    for id in [0, 2] {
        let Some(Outcome::Get(g)) = &answers[&id].result else {
            panic!("{:?}", answers[&id]);
        };
        assert_eq!(&g.value[..], b"v", "the write was refused, call {id}");
    }
    let e = answers[&1].error.as_ref().expect("a write is refused");
    assert_eq!(e.code, Code::PermissionDenied as i32);
    assert!(e.message.contains("read_only"), "{}", e.message);

    // services= and namespace= hold per call too.
    let mut shop = Pipe::open_with(server.channel().await, Some(SHOP)).await;
    let answers = shop
        .run_all(vec![
            Call::Set(pb::SetRequest {
                namespace: "shop:carts".into(),
                key: "c".into(),
                value: "1".into(),
                ..Default::default()
            }),
            set("k", "elsewhere"),
            Call::Check(pb::CheckRequest {
                key: "ip:1".into(),
                limit: 1,
                period_ms: 1000,
                ..Default::default()
            }),
        ])
        .await;
    assert_eq!(answers[&0].error, None);
    for (id, word) in [(1, "namespace="), (2, "services=")] {
        let e = answers[&id].error.as_ref().expect("refused");
        assert_eq!(e.code, Code::PermissionDenied as i32, "call {id}");
        assert!(e.message.contains(word), "{}", e.message);
    }

    // Without a token the stream itself is refused, as a unary call is.
    let refused = PipelineServiceClient::new(server.channel().await)
        .run(tokio_stream::iter(Vec::<pb::RunRequest>::new()))
        .await;
    let code = match refused {
        Err(s) => s.code(),
        Ok(r) => r.into_inner().message().await.unwrap_err().code(),
    };
    assert_eq!(code, Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reads_nothing_is_not_read_and_then_gets_every_answer() {
    const CALLS: usize = 10_000;
    let server = TestServer::with_settings(ServerSettings {
        max_pipeline_inflight: 16,
        ..ServerSettings::default()
    })
    .await;
    let mut c = server.client().await;
    // Calls of a kilobyte fill the server's window (hyper's 1 MiB) in about a thousand;
    // answers of 8 KiB fill the client's (2 MiB) in a few hundred.
    let key = "k".repeat(1000);
    crate::common::set(&mut c, "", &key, vec![b'v'; 8192], 0).await;

    let (calls, rx) = mpsc::channel(1);
    let mut answers = PipelineServiceClient::new(server.channel().await)
        .run(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let sender = tokio::spawn(async move {
        for id in 0..CALLS as u64 {
            let call = Some(get_call(&key));
            if calls.send(pb::RunRequest { id, call }).await.is_err() {
                return;
            }
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Wait until the sender makes no progress for a while: the server stopped reading.
    let mut last = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let stalled = sent.load(Ordering::Relaxed);
    assert!(
        stalled < CALLS / 2,
        "the server kept reading a client that reads nothing: {stalled} calls taken"
    );

    let mut seen = vec![false; CALLS];
    for _ in 0..CALLS {
        let a = answers.next().await.expect("an answer").expect("no error");
        assert!(
            matches!(a.result, Some(Outcome::Get(ref g)) if g.value.len() == 8192),
            "call {}",
            a.id
        );
        assert!(!std::mem::replace(&mut seen[a.id as usize], true), "once");
    }
    sender.await.unwrap();
    assert!(
        answers.next().await.is_none(),
        "the stream ends with its calls"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_pipeline_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let server = TestServer::start().await;
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(server.channel().await)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a list of services");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "larder.v1.PipelineService"),
        "{list:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_sets_and_gets_are_answered_and_survive_a_restart() {
    let mut server = TestServer::start().await;
    let mut pipe = Pipe::open(server.channel().await).await;
    let answers = pipe
        .run_all(
            (0..50)
                .map(|i| set(&format!("k{i}"), &format!("v{i}")))
                .collect(),
        )
        .await;
    for (id, a) in &answers {
        assert_eq!(a.error, None, "call {id}");
        let Some(Outcome::Set(s)) = &a.result else {
            panic!("call {id}: {a:?}");
        };
        assert!(s.stored && s.version > 0, "call {id}");
    }
    let answers = pipe
        .run_all((0..50).map(|i| get_call(&format!("k{i}"))).collect())
        .await;
    for (id, a) in &answers {
        let Some(Outcome::Get(g)) = &a.result else {
            panic!("call {id}: {a:?}");
        };
        assert_eq!((g.found, &g.value[..]), (true, format!("v{id}").as_bytes()));
    }
    drop(pipe);

    server.restart().await;
    let mut c = server.client().await;
    for i in 0..50 {
        assert_eq!(
            get(&mut c, "", &format!("k{i}")).await.value,
            format!("v{i}")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_with_nothing_set_fails_alone_naming_call() {
    let server = TestServer::start().await;
    let mut pipe = Pipe::open(server.channel().await).await;
    pipe.send(1, None).await;
    let a = pipe.answer().await;
    assert_eq!(a.id, 1);
    let e = a.error.expect("an error");
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(e.message.contains("call"), "{}", e.message);
    assert!(
        pipe.one(get_call("x")).await.error.is_none(),
        "the stream goes on"
    );
}
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_answers_the_calls_read_then_ends_the_stream_unavailable() {
    let mut server = TestServer::start().await;
    let mut pipe = Pipe::open(server.channel().await).await;
    assert_eq!(pipe.one(set("before", "1")).await.error, None);
    let Pipe { calls, mut answers } = pipe;
    let ending = async {
        // Every answer until the stream ends: the shutdown must end it, or stop() waits out
        // the drain timeout and the calls in flight are cut.
        let mut got = Vec::new();
        let end = loop {
            match answers.next().await {
                Some(Ok(a)) => got.push(a),
                Some(Err(status)) => break Some(status),
                None => break None,
            }
        };
        (got, end)
    };
    let ((got, end), ()) = tokio::join!(ending, server.stop());
    assert!(got.iter().all(|a| a.error.is_none()), "{got:?}");
    let end = end.expect("the stream ends with a status");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    drop(calls);
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_calls_are_counted_under_their_twins_method() {
    let server = TestServer::start_with_metrics(ServerSettings::default()).await;
    let mut pipe = Pipe::open(server.channel().await).await;
    pipe.run_all(vec![
        set("k", "v"),
        get_call("k"),
        get_call("k"),
        set("", "bad"),
    ])
    .await;
    pipe.send(9, None).await;
    pipe.answer().await;
    let text = scrape(server.metrics_addr()).await;
    let count = |service: &str, method: &str, code: &str| -> f64 {
        let labels = format!(
            "larder_grpc_requests_total{{service=\"{service}\",method=\"{method}\",code=\"{code}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&labels))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    assert_eq!(count("larder.v1.CacheService", "Get", "OK"), 2.0, "{text}");
    assert_eq!(count("larder.v1.CacheService", "Set", "OK"), 1.0, "{text}");
    assert_eq!(
        count("larder.v1.CacheService", "Set", "InvalidArgument"),
        1.0
    );
    assert_eq!(
        count("larder.v1.PipelineService", "Run", "InvalidArgument"),
        1.0,
        "a call with nothing set"
    );
}

/// The metrics endpoint's text, over plain HTTP/1.1.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

/// A Run stream over a connection whose client grants only HTTP/2's default 64 KiB window and
/// never reads, so no WINDOW_UPDATE ever reaches the server.
async fn stingy_pipe(server: &TestServer) -> Pipe {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.tcp_addr()))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    Pipe::open(channel).await
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_of_a_client_that_grants_no_window_still_finish_and_release_what_they_hold() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    crate::common::set(&mut c, "", "big", vec![b'v'; 64 * 1024], 0).await;
    let mut limits = server.rate_limits().await;
    let check = |key: &str| pb::CheckRequest {
        key: key.into(),
        limit: 10,
        period_ms: 60_000,
        ..Default::default()
    };
    limits.check(check("held")).await.unwrap();

    // The big answers exhaust the window; the Reset and the Check of a key the server must
    // load are read with them and must still run to their end.
    let stuck = stingy_pipe(&server).await;
    stuck
        .send(
            0,
            Some(Call::Reset(pb::ResetRequest {
                key: "held".into(),
                ..Default::default()
            })),
        )
        .await;
    stuck.send(1, Some(Call::Check(check("cold")))).await;
    for id in 2..5 {
        stuck.send(id, Some(get_call("big"))).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Failure detector only: another client's Reset and Check are answered.
    let other = tokio::time::timeout(Duration::from_secs(20), async {
        limits
            .reset(pb::ResetRequest {
                key: "held".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        limits.check(check("cold")).await.unwrap();
        limits
            .reset(pb::ResetRequest {
                key: "cold".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    })
    .await;
    assert!(
        other.is_ok(),
        "a stream its client stopped reading held up other clients' calls"
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_run_stream_counts_as_one_call_in_progress() {
    let server = TestServer::with_settings(ServerSettings {
        max_concurrent_requests: 1,
        ..ServerSettings::default()
    })
    .await;
    let mut c = server.client().await;
    let mut pipe = Pipe::open(server.channel().await).await;
    assert!(pipe.one(set("k", "v")).await.error.is_none());

    // The stream holds the only place, between calls as well as during them.
    let busy = c
        .get(pb::GetRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await;
    crate::common::assert_code(busy, Code::Unavailable);

    // Ended, it gives the place back.
    let Pipe { calls, mut answers } = pipe;
    drop(calls);
    assert!(answers.next().await.is_none());
    drop(answers);
    let mut freed = false;
    for _ in 0..100 {
        let again = c
            .get(pb::GetRequest {
                key: "k".into(),
                ..Default::default()
            })
            .await;
        if again.is_ok_and(|r| r.into_inner().found) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the place came back once the stream ended");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_reaches_open_streams_revoking_or_narrowing_their_token() {
    use crate::suite::binary::{Daemon, POLL_PAUSE, POLLS};
    const KEPT: &str = "kept-0123456789abcdefghijklmnop";
    const GONE: &str = "gone-0123456789abcdefghijklmnop";
    const NEW: &str = "new-0123456789abcdefghijklmnopq";
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("l.sock");
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("{KEPT}\n{GONE}\n")).unwrap();
    let flags = ["--auth-token-file".as_ref(), tokens.as_os_str()];
    let log = tmp.path().join("serve.log");
    let mut daemon = Daemon::spawn_with(&tmp.path().join("data"), &socket, log, &flags);
    let channel = daemon.channel(&socket).await;
    let mut gone = Pipe::open_with(channel.clone(), Some(GONE)).await;
    let mut kept = Pipe::open_with(channel.clone(), Some(KEPT)).await;
    assert_eq!(gone.one(set("k", "v")).await.error, None);
    assert_eq!(kept.one(set("k", "v")).await.error, None);

    // GONE is revoked and KEPT narrowed to reads; NEW being served shows the reload is done.
    let next = tmp.path().join("tokens.new");
    std::fs::write(&next, format!("{KEPT} read_only\n{NEW}\n")).unwrap();
    std::fs::rename(&next, &tokens).unwrap();
    daemon.send("-HUP");
    let mut cache = pb::cache_service_client::CacheServiceClient::new(channel.clone());
    let mut reloaded = false;
    for _ in 0..POLLS {
        let mut req = Request::new(pb::GetRequest {
            key: "k".into(),
            ..Default::default()
        });
        let value = format!("Bearer {NEW}").parse().unwrap();
        req.metadata_mut().insert("authorization", value);
        if cache.get(req).await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    assert!(reloaded, "the new token file was never read");

    // The revoked token's stream ends at its next call, which is not run.
    gone.send(1, Some(set("k", "by a revoked token"))).await;
    let ended = gone
        .answers
        .next()
        .await
        .expect("the stream ends with a status");
    assert_eq!(ended.unwrap_err().code(), Code::Unauthenticated);
    // The narrowed token's stream goes on under its new scope.
    let refused = kept.one(set("k", "by a read-only token")).await;
    assert_eq!(
        refused.error.map(|e| e.code),
        Some(Code::PermissionDenied as i32)
    );
    let Some(Outcome::Get(g)) = kept.one(get_call("k")).await.result else {
        panic!("a read is still served");
    };
    assert_eq!(
        &g.value[..],
        b"v",
        "neither write after the reload was made"
    );

    drop((gone, kept, cache, channel));
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_stream_sends_far_more_than_the_byte_budget_and_unary_calls_beside_it_are_served() {
    const BUDGET: u64 = 256 << 10;
    let server = TestServer::with_settings(ServerSettings {
        max_inflight_bytes: BUDGET,
        ..ServerSettings::default()
    })
    .await;
    let mut c = server.client().await;
    let mut pipe = Pipe::open(server.channel().await).await;
    let value = "v".repeat(8 << 10);
    // Eight times the budget in all, a call at a time, each answer read as it comes.
    for i in 0..(8 * BUDGET as usize / value.len()) {
        let answer = pipe.one(set(&format!("k{}", i % 8), &value)).await;
        assert_eq!(answer.error, None, "call {i}");
        if i % 64 == 0 {
            assert!(get(&mut c, "", "k0").await.found, "unary beside call {i}");
        }
    }
    assert!(get(&mut c, "", "k0").await.found);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_call_ends_the_stream_after_the_calls_read_before_it() {
    let limits = larder::RequestLimits {
        max_value_bytes: 1024,
        max_batch: 1,
        ..larder::RequestLimits::default()
    };
    let too_big = limits.max_message_bytes() + 1;
    let server = TestServer::with_limits(limits).await;
    let mut c = server.client().await;
    let mut pipe = Pipe::open(server.channel().await).await;
    assert_eq!(pipe.one(set("before", "v")).await.error, None);
    pipe.send(1, Some(set("big", &"v".repeat(too_big)))).await;
    pipe.send(2, Some(set("after", "v"))).await;
    let ended = loop {
        match pipe
            .answers
            .next()
            .await
            .expect("the stream ends with a status")
        {
            Ok(a) => assert_ne!(a.id, 1, "the oversized call is not answered"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::OutOfRange, "{ended:?}");
    assert!(ended.message().contains("too large"), "{ended:?}");
    assert!(get(&mut c, "", "before").await.found);
    assert!(!get(&mut c, "", "big").await.found);
    assert!(
        !get(&mut c, "", "after").await.found,
        "calls behind it are not run"
    );
}
