//! PipelineService/Run against the real daemon: each call kind is answered like its unary
//! twin, answers come back as calls complete, a bad call fails alone, the token's scope holds
//! per call, one stream's calls in flight are bounded without refusing any, and pipelined
//! writes are durable.

use std::collections::HashMap;

use larder::pb;
use larder::pb::pipeline_service_client::PipelineServiceClient;
use larder::pb::run_request::Call;
use larder::pb::run_response::Result as Outcome;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::common::{TestServer, get};

/// One open Run stream.
struct Pipe {
    calls: mpsc::Sender<pb::RunRequest>,
    answers: Streaming<pb::RunResponse>,
}

impl Pipe {
    async fn open(channel: Channel) -> Self {
        let (calls, rx) = mpsc::channel(16);
        let answers = PipelineServiceClient::new(channel)
            .run(ReceiverStream::new(rx))
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
