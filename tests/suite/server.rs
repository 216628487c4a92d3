//! The server around the services: TCP and the Unix socket serve one store, gRPC health
//! reports SERVING for each service (and NOT_SERVING once shutdown starts), both reflection
//! versions list every service, the Unix socket replaces a stale
//! socket file but never a live socket or another file, and a stopped server removes its
//! socket and answers no more.

use std::os::unix::fs::PermissionsExt;

use larder::{Listeners, bind_unix};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{TestServer, assert_code, get, set, unix_channel};

const CACHE_SERVICE: &str = "larder.v1.CacheService";
const SESSION_SERVICE: &str = "larder.v1.SessionService";
const RATE_LIMIT_SERVICE: &str = "larder.v1.RateLimitService";

/// Larder's own services, each with a health status.
const LARDER_SERVICES: [&str; 3] = [CACHE_SERVICE, SESSION_SERVICE, RATE_LIMIT_SERVICE];

/// Every service the server exposes, as reflection should list them.
const SERVICES: [&str; 6] = [
    CACHE_SERVICE,
    SESSION_SERVICE,
    RATE_LIMIT_SERVICE,
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[tokio::test(flavor = "multi_thread")]
async fn tcp_and_the_unix_socket_serve_the_same_store() {
    let server = TestServer::start().await;
    let mut tcp = server.client().await;
    let mut unix = server.unix_client().await;

    let written = set(&mut tcp, "", "k", "over tcp", 0).await;
    let g = get(&mut unix, "", "k").await;
    assert_eq!((g.value, g.version), ("over tcp".into(), written.version));

    let written = set(&mut unix, "ns", "u", "over unix", 0).await;
    let g = get(&mut tcp, "ns", "u").await;
    assert_eq!((g.value, g.version), ("over unix".into(), written.version));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_unix_socket_is_group_accessible_only() {
    let server = TestServer::start().await;
    let mode = std::fs::metadata(server.socket_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving() {
    let server = TestServer::start().await;
    for channel in [
        server.channel().await,
        unix_channel(&server.socket_path()).await,
    ] {
        let mut health = HealthClient::new(channel);
        for service in LARDER_SERVICES.into_iter().chain([""]) {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
        }
        assert_code(
            health
                .check(HealthCheckRequest {
                    service: "no.such.Service".into(),
                })
                .await,
            Code::NotFound,
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1_lists_every_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let ask = |request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(CACHE_SERVICE.into())),
        ask(MessageRequest::FileContainingSymbol(
            RATE_LIMIT_SERVICE.into(),
        )),
    ];
    let answers: Vec<ServerReflectionResponse> = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    assert_eq!(answers.len(), 3);

    let Some(MessageResponse::ListServicesResponse(list)) = &answers[0].message_response else {
        panic!("not a list of services: {:?}", answers[0]);
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in SERVICES {
        assert!(names.contains(&service), "{service} missing from {names:?}");
    }
    for (answer, service) in answers[1..].iter().zip([CACHE_SERVICE, RATE_LIMIT_SERVICE]) {
        let Some(MessageResponse::FileDescriptorResponse(files)) = &answer.message_response else {
            panic!("no file for {service}: {answer:?}");
        };
        assert!(!files.file_descriptor_proto.is_empty(), "{service}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1alpha_lists_every_service() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(unix_channel(&server.socket_path()).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let answer = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .expect("one answer")
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a list of services: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in SERVICES {
        assert!(names.contains(&service), "{service} missing from {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(
        path.exists(),
        "a dropped listener leaves its socket file behind"
    );
    // Another test's daemon starting at this moment may hold a copy of the listener between
    // its fork and its exec (the descriptor closes on exec): wait that out.
    let mut tries = 0;
    while std::os::unix::net::UnixStream::connect(&path).is_ok() {
        tries += 1;
        assert!(tries < 200, "nobody listens");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let listener = bind_unix(&path, 0o660).expect("a stale socket is replaced");
    let (connected, accepted) =
        tokio::join!(tokio::net::UnixStream::connect(&path), listener.accept());
    connected.expect("the new socket accepts connections");
    accepted.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_socket_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.sock");
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();

    let err = bind_unix(&path, 0o660).expect_err("a live socket must not be replaced");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "the error names the socket: {err}"
    );
    // The first listener still owns the path: a new connection reaches it.
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    live.set_nonblocking(true).unwrap();
    live.accept().expect("the live listener got the connection");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious.txt");
    std::fs::write(&path, "keep me").unwrap();
    let err = bind_unix(&path, 0o660).expect_err("a regular file is not replaced");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

#[tokio::test(flavor = "multi_thread")]
async fn binding_nothing_is_refused() {
    let err = Listeners::bind(None, None, 0o660)
        .await
        .expect_err("nothing to listen on");
    assert!(err.to_string().contains("listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_server_removes_its_socket_and_answers_no_more() {
    let mut server = TestServer::start().await;
    let mut c = server.client().await;
    set(&mut c, "", "k", "v", 0).await;
    let socket = server.socket_path();
    assert!(socket.exists());

    server.stop().await;
    assert!(!socket.exists(), "the socket file is removed on shutdown");
    let status = c
        .get(larder::pb::GetRequest {
            namespace: String::new(),
            key: "k".into(),
        })
        .await
        .expect_err("a stopped server answers nothing");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_turns_not_serving_when_shutdown_starts() {
    // A health Watch stream never ends by itself, so this shutdown drains until the deadline;
    // keep it short.
    let mut server = TestServer::start_with(
        |_| {},
        larder::ServerSettings {
            drain_timeout: std::time::Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await;
    let mut health = HealthClient::new(server.channel().await);
    let mut watches = Vec::new();
    for service in LARDER_SERVICES {
        let mut watch = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().expect("a first status");
        assert_eq!(first.status(), ServingStatus::Serving, "{service}");
        watches.push((service, watch));
    }

    // Bounded so that a missing status fails the test instead of hanging it.
    let next_statuses = async {
        let mut next = Vec::new();
        for (service, watch) in &mut watches {
            let status = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
                .await
                .unwrap_or_else(|_| panic!("{service}: no status change after shutdown started"))
                .unwrap_or_else(|e| {
                    panic!("{service}: the watch stream carries the change before it ends: {e:?}")
                })
                .unwrap_or_else(|| panic!("{service}: a status after shutdown started"));
            next.push((*service, status.status()));
        }
        next
    };
    let (_, next) = tokio::join!(server.stop(), next_statuses);
    for (service, status) in next {
        assert_eq!(status, ServingStatus::NotServing, "{service}");
    }
}
