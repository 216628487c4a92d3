//! Bearer-token authentication and TLS through the real server: over TCP every service but
//! health (reflection included) answers UNAUTHENTICATED without a token or with a wrong one
//! and serves with any token of the file; the Unix socket needs a token unless
//! `auth.unix_socket = false`; a bad token file or TLS file stops the start naming the file
//! (and the line), in the library and in the binary, whose log and `check-config` output
//! never show a token; SIGHUP swaps in a rewritten token file and keeps the old tokens when
//! the new file has a bad line (a file without tokens revokes them all: `security.rs`); TLS round trips with a client that trusts a self-signed certificate,
//! and a plaintext client gets nothing from the TLS port; SIGHUP swaps in a rewritten
//! certificate and key for new connections and keeps the old ones when the new file is bad.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use larder::AuthSettings;
use larder::ManualClock;
use larder::TlsSettings;
use larder::pb;
use larder::pb::cache_service_client::CacheServiceClient;
use larder::pb::rate_limit_service_client::RateLimitServiceClient;
use larder::pb::session_service_client::SessionServiceClient;
use larder::store::{Store, StoreConfig};
use larder::{Listeners, ServerSettings};
use tempfile::TempDir;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{START_MS, TestServer, assert_code, get, health, set, unix_channel};
use crate::suite::binary::{Daemon, POLL_PAUSE, POLLS, larder, read_log, refused, serve};

const TOKEN_A: &str = "alpha-0123456789abcdefghijklmnop";
const TOKEN_B: &str = "bravo-9876543210ZYXWVUTSRQPONMLK";
/// Not in any file: what a wrong guess sends.
const WRONG: &str = "alpha-0123456789abcdefghijklmnoq";

/// A token file holding `text`, in a directory of its own.
fn token_file(text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Server settings with auth on, reading `path`.
fn with_auth(path: &Path, unix_socket: bool) -> ServerSettings {
    ServerSettings {
        auth: Some(AuthSettings {
            token_file: path.to_owned(),
            unix_socket,
        }),
        ..ServerSettings::default()
    }
}

/// `message` with `authorization: Bearer <token>` when a token is given.
fn call<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn get_request(key: &str) -> pb::GetRequest {
    pb::GetRequest {
        namespace: String::new(),
        key: key.into(),
    }
}

fn set_request(key: &str, value: &str) -> pb::SetRequest {
    pb::SetRequest {
        key: key.into(),
        value: value.to_owned().into(),
        ..Default::default()
    }
}

fn inline_check(key: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        key: key.into(),
        limit: 10,
        period_ms: 60_000,
        ..Default::default()
    }
}

fn list_services() -> tonic_reflection::pb::v1::ServerReflectionRequest {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }
}

fn list_services_v1alpha() -> tonic_reflection::pb::v1alpha::ServerReflectionRequest {
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }
}

/// One call to each service (reflection both versions) over `channel` with `token`; each
/// result's status, or `Ok` for a success.
async fn call_every_service(
    channel: &Channel,
    token: Option<&str>,
) -> Vec<(&'static str, Result<(), Status>)> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1Alpha;

    let mut cache = CacheServiceClient::new(channel.clone());
    let mut sessions = SessionServiceClient::new(channel.clone());
    let mut limits = RateLimitServiceClient::new(channel.clone());
    let cache_set = cache
        .set(call(set_request("k", "v"), token))
        .await
        .map(drop);
    let cache_get = cache.get(call(get_request("k"), token)).await.map(drop);
    let session = sessions
        .create_session(call(
            pb::CreateSessionRequest {
                user_id: "u1".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(drop);
    let check = limits
        .check(call(inline_check("ip:1"), token))
        .await
        .map(drop);
    let v1 = async {
        let mut answers = V1::new(channel.clone())
            .server_reflection_info(call(tokio_stream::once(list_services()), token))
            .await?
            .into_inner();
        answers.next().await.expect("an answer").map(drop)
    }
    .await;
    let v1alpha = async {
        let mut answers = V1Alpha::new(channel.clone())
            .server_reflection_info(call(tokio_stream::once(list_services_v1alpha()), token))
            .await?
            .into_inner();
        answers.next().await.expect("an answer").map(drop)
    }
    .await;
    vec![
        ("CacheService/Set", cache_set),
        ("CacheService/Get", cache_get),
        ("SessionService/CreateSession", session),
        ("RateLimitService/Check", check),
        ("ServerReflection v1", v1),
        ("ServerReflection v1alpha", v1alpha),
    ]
}

/// Asserts that every call was refused as UNAUTHENTICATED with `message`.
#[track_caller]
fn assert_all_refused(results: Vec<(&str, Result<(), Status>)>, message: &str) {
    for (name, result) in results {
        let status = assert_code(result, Code::Unauthenticated);
        assert_eq!(status.message(), message, "{name}");
    }
}

/// Asserts that every call succeeded.
#[track_caller]
fn assert_all_served(results: Vec<(&str, Result<(), Status>)>) {
    for (name, result) in results {
        if let Err(status) = result {
            panic!("{name} was not served: {status:?}");
        }
    }
}

/// Health's overall status over `channel`, without a token.
#[tokio::test(flavor = "multi_thread")]
async fn over_tcp_every_service_but_health_needs_a_token_of_the_file() {
    let (_dir, path) = token_file(&format!("# two clients\n{TOKEN_A}\n\n{TOKEN_B}\n"));
    let server = TestServer::start_with(|_| {}, with_auth(&path, true)).await;
    let channel = server.channel().await;

    assert_all_refused(
        call_every_service(&channel, None).await,
        "missing bearer token",
    );
    assert_all_refused(
        call_every_service(&channel, Some(WRONG)).await,
        "invalid bearer token",
    );
    assert_all_served(call_every_service(&channel, Some(TOKEN_A)).await);
    assert_all_served(call_every_service(&channel, Some(TOKEN_B)).await);

    // Nothing a refused call carried was written.
    let mut cache = CacheServiceClient::new(channel.clone());
    cache
        .set(call(set_request("refused", "x"), Some(WRONG)))
        .await
        .unwrap_err();
    let g = cache
        .get(call(get_request("refused"), Some(TOKEN_B)))
        .await
        .unwrap()
        .into_inner();
    assert!(!g.found, "{g:?}");

    assert_eq!(
        health(channel.clone(), "").await.unwrap(),
        ServingStatus::Serving as i32
    );
    let watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    let first = watch
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_unix_socket_needs_a_token_by_default() {
    let (_dir, path) = token_file(TOKEN_A);
    let server = TestServer::start_with(|_| {}, with_auth(&path, true)).await;
    let channel = unix_channel(&server.socket_path()).await;
    assert_all_refused(
        call_every_service(&channel, None).await,
        "missing bearer token",
    );
    assert_all_refused(
        call_every_service(&channel, Some(TOKEN_B)).await,
        "invalid bearer token",
    );
    assert_all_served(call_every_service(&channel, Some(TOKEN_A)).await);
    assert_eq!(
        health(channel, "").await.unwrap(),
        ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_unix_socket_false_the_socket_needs_no_token_but_tcp_still_does() {
    let (_dir, path) = token_file(TOKEN_A);
    let server = TestServer::start_with(|_| {}, with_auth(&path, false)).await;
    let unix = unix_channel(&server.socket_path()).await;
    assert_all_served(call_every_service(&unix, None).await);
    // A wrong token on the socket is not checked either: the file mode is the guard.
    assert_all_served(call_every_service(&unix, Some(WRONG)).await);

    let tcp = server.channel().await;
    assert_all_refused(call_every_service(&tcp, None).await, "missing bearer token");
    assert_all_served(call_every_service(&tcp, Some(TOKEN_A)).await);

    let mut c = server.unix_client().await;
    set(&mut c, "", "over unix", "no token", 0).await;
    let mut tcp_cache = CacheServiceClient::new(tcp);
    let g = tcp_cache
        .get(call(get_request("over unix"), Some(TOKEN_A)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.value, "no token");
}

/// Runs the server on a fresh store and listeners with `settings`, told to stop at once, and
/// returns its error. Also checks that the failed start let go of the store and the socket.
async fn start_error(settings: ServerSettings) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::new(dir.path().join("data"));
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Store::open(config.clone(), clock.clone()).unwrap();
    let socket = dir.path().join("l.sock");
    let unix = larder::bind_unix(&socket, 0o660).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listeners = Listeners::from_bound(Some(tcp), Some((unix, socket.clone())));
    let result = larder::Server::new(store, settings)
        .run(listeners, std::future::ready(()))
        .await;
    let err = result.expect_err("the server started").to_string();
    assert!(!socket.exists(), "the socket file is left behind: {err}");
    // The lock is released with the store.
    let again = crate::common::open_store(&config, clock)
        .await
        .unwrap_or_else(|e| panic!("the failed start kept the data directory: {e} ({err})"));
    again.close().await.unwrap();
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_token_file_stops_the_start_naming_the_file_and_line() {
    let (dir, _) = token_file("");
    let missing = dir.path().join("no-such-file");
    let err = start_error(with_auth(&missing, true)).await;
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("cannot read"), "{err}");

    for text in ["", "\n  \n", "# nothing yet\n#\n"] {
        let (_dir, path) = token_file(text);
        let err = start_error(with_auth(&path, true)).await;
        assert!(err.contains(&path.display().to_string()), "{text:?}: {err}");
        assert!(err.contains("holds no token"), "{text:?}: {err}");
    }

    let short = "abc123short";
    let (_dir, path) = token_file(&format!("# first\n{TOKEN_A}\n\n{short}\n"));
    let err = start_error(with_auth(&path, true)).await;
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("at least 16"), "{err}");
    assert!(!err.contains(short) && !err.contains(TOKEN_A), "{err}");

    // A token mistyped with a space: the second half is not a scope word.
    let (_dir, path) = token_file(&format!("{TOKEN_A}\n{TOKEN_B} {TOKEN_A}\n"));
    let err = start_error(with_auth(&path, true)).await;
    assert!(
        err.contains("line 2") && err.contains("not a scope"),
        "{err}"
    );
    assert!(!err.contains(TOKEN_A) && !err.contains(TOKEN_B), "{err}");
}

/// `larder check-config` with `args`; its exit status, stdout and stderr.
fn check_config(tmp: &Path, args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let log = tmp.join("check-config.err");
    let mut cmd = larder(&[&["check-config".as_ref()], args].concat(), &log);
    let out = cmd.stdout(Stdio::piped()).output().expect("running larder");
    let stdout = String::from_utf8(out.stdout).unwrap();
    (out.status.success(), stdout, read_log(&log))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_refuses_a_bad_token_file_and_never_shows_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let socket = tmp.path().join("l.sock");
    let tokens = tmp.path().join("tokens");

    // A short token: both commands fail, naming the file and line, not the token.
    let short = "s3cr3t-but-short";
    std::fs::write(&tokens, format!("{TOKEN_A}\n{}\n", &short[..12])).unwrap();
    let flags = ["--auth-token-file".as_ref(), tokens.as_os_str()];
    let (ok, stdout, stderr) = check_config(tmp.path(), &flags);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains(&tokens.display().to_string()) && stderr.contains("line 2"),
        "{stderr}"
    );
    let log = tmp.path().join("refused.log");
    let mut cmd = serve(&data_dir, &socket, &log);
    cmd.args(flags);
    let (status, stderr) = refused(cmd, &log).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("auth.token_file {}, line 2", tokens.display())),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&short[..12]) && !stderr.contains(TOKEN_A),
        "{stderr}"
    );
    assert!(!data_dir.exists(), "a refused start left a data directory");
    assert!(!socket.exists(), "a refused start left a socket");

    // A good file: check-config counts the tokens and shows none.
    std::fs::write(&tokens, format!("# ops, 2024\n{TOKEN_A}\n{TOKEN_B}\n")).unwrap();
    let (ok, stdout, stderr) = check_config(tmp.path(), &flags);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("# auth: 2 tokens in {}\n", tokens.display())),
        "{stdout}"
    );
    assert!(
        !stdout.contains(TOKEN_A) && !stdout.contains(TOKEN_B),
        "{stdout}"
    );

    // The daemon, logging everything, refuses and serves calls without logging a token.
    let log = tmp.path().join("serve.log");
    let debug = [
        "--auth-token-file".as_ref(),
        tokens.as_os_str(),
        "--log-level".as_ref(),
        "debug".as_ref(),
    ];
    let mut daemon = Daemon::spawn_with(&data_dir, &socket, log.clone(), &debug);
    let channel = daemon.channel(&socket).await;
    assert_all_refused(
        call_every_service(&channel, None).await,
        "missing bearer token",
    );
    assert_all_refused(
        call_every_service(&channel, Some(WRONG)).await,
        "invalid bearer token",
    );
    assert_all_served(call_every_service(&channel, Some(TOKEN_B)).await);
    drop(channel);
    daemon.terminate().await;
    let logged = read_log(&log);
    assert!(
        logged.contains("call refused"),
        "refusals are logged:\n{logged}"
    );
    for secret in [TOKEN_A, TOKEN_B, WRONG] {
        assert!(!logged.contains(secret), "a token is in the log:\n{logged}");
    }
}

/// Calls CacheService/Get with `token` until it is served, a bounded number of times.
async fn until_served(cache: &mut CacheServiceClient<Channel>, token: &str) {
    for _ in 0..POLLS {
        match cache.get(call(get_request("k"), Some(token))).await {
            Ok(_) => return,
            Err(s) if s.code() == Code::Unauthenticated => tokio::time::sleep(POLL_PAUSE).await,
            Err(s) => panic!("{s:?}"),
        }
    }
    panic!("the reloaded token was never accepted");
}

/// Waits, a bounded number of times, until the log holds `line`.
pub(crate) async fn until_logged(log: &Path, line: &str) -> String {
    for _ in 0..POLLS {
        let text = read_log(log);
        if text.contains(line) {
            return text;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    panic!("{line:?} never logged:\n{}", read_log(log));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_token_file_and_a_bad_line_keeps_the_old_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("l.sock");
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN_A}\n")).unwrap();
    let log = tmp.path().join("serve.log");
    let flags = ["--auth-token-file".as_ref(), tokens.as_os_str()];
    let mut daemon = Daemon::spawn_with(&tmp.path().join("data"), &socket, log.clone(), &flags);
    let mut cache = CacheServiceClient::new(daemon.channel(&socket).await);
    cache
        .get(call(get_request("k"), Some(TOKEN_A)))
        .await
        .unwrap();
    assert_code(
        cache.get(call(get_request("k"), Some(TOKEN_B))).await,
        Code::Unauthenticated,
    );

    // Rotate as an operator would: write the new file beside it, rename it over the old.
    let next = tmp.path().join("tokens.new");
    std::fs::write(&next, format!("# rotated\n{TOKEN_B}\n")).unwrap();
    std::fs::rename(&next, &tokens).unwrap();
    daemon.send("-HUP");
    until_served(&mut cache, TOKEN_B).await;
    let old = assert_code(
        cache.get(call(get_request("k"), Some(TOKEN_A))).await,
        Code::Unauthenticated,
    );
    assert_eq!(old.message(), "invalid bearer token");

    // A broken file is reported and changes nothing.
    std::fs::write(&tokens, "# a token cut short\nbravo-98\n").unwrap();
    daemon.send("-HUP");
    let logged = until_logged(&log, "reloading the auth token file failed").await;
    assert!(logged.contains(&tokens.display().to_string()), "{logged}");
    cache
        .get(call(get_request("k"), Some(TOKEN_B)))
        .await
        .unwrap();
    assert_code(
        cache.get(call(get_request("k"), Some(TOKEN_A))).await,
        Code::Unauthenticated,
    );
    drop(cache);
    daemon.terminate().await;
    let logged = read_log(&log);
    assert!(
        !logged.contains(TOKEN_A) && !logged.contains(TOKEN_B),
        "{logged}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_without_auth_leaves_the_daemon_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("l.sock");
    let log = tmp.path().join("serve.log");
    let mut daemon = Daemon::spawn_with(&tmp.path().join("data"), &socket, log.clone(), &[]);
    let mut c = daemon.client(&socket).await;
    daemon.send("-HUP");
    until_logged(&log, "no auth.token_file to read").await;
    set(&mut c, "", "k", "still here", 0).await;
    assert_eq!(get(&mut c, "", "k").await.value, "still here");
    drop(c);
    daemon.terminate().await;
}

/// A self-signed certificate for `localhost` and 127.0.0.1 and its key, as PEM files in `dir`.
pub(crate) fn self_signed(dir: &Path, name: &str) -> (TlsSettings, String) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names).unwrap();
    let cert_pem = generated.cert.pem();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (TlsSettings { cert, key }, cert_pem)
}

/// A channel over TLS to `server`'s TCP port, trusting `ca_pem` for the name `localhost`.
pub(crate) async fn tls_channel(server: &TestServer, ca_pem: &str) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{}", server.tcp_addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connecting over TLS")
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_round_trips_on_tcp_and_the_unix_socket_stays_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let (tls, ca_pem) = self_signed(tmp.path(), "server");
    let server = TestServer::start_with(
        |_| {},
        ServerSettings {
            tls: Some(tls),
            ..ServerSettings::default()
        },
    )
    .await;

    let mut c = CacheServiceClient::new(tls_channel(&server, &ca_pem).await);
    let written = set(&mut c, "", "secret", "over tls", 0).await;
    let g = get(&mut c, "", "secret").await;
    assert_eq!((g.value, g.version), ("over tls".into(), written.version));
    let mut unix = server.unix_client().await;
    assert_eq!(get(&mut unix, "", "secret").await.value, "over tls");

    // A plaintext client to the TLS port gets nothing: the connection or the call fails.
    let plain = Endpoint::from_shared(format!("http://{}", server.tcp_addr()))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let answer = CacheServiceClient::new(channel)
            .get(get_request("secret"))
            .await;
        assert!(answer.is_err(), "a plaintext call was served: {answer:?}");
    }

    // A client that does not trust the certificate is refused too.
    let (_, other_ca) = self_signed(tmp.path(), "other");
    let untrusted = Endpoint::from_shared(format!("https://{}", server.tcp_addr()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(other_ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await;
    assert!(untrusted.is_err(), "an untrusted certificate was accepted");
}

/// A Get over a new TLS connection to `addr`, trusting only `ca_pem` for `localhost`.
async fn get_over_new_tls_connection(addr: &str, ca_pem: &str) -> Result<(), String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(10))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    CacheServiceClient::new(channel)
        .get(get_request("k"))
        .await
        .map(drop)
        .map_err(|s| format!("get: {s:?}"))
}

/// Waits, a bounded number of times, until a new connection trusting only `ca_pem` is served.
async fn until_served_over_tls(addr: &str, ca_pem: &str) {
    let mut last = String::new();
    for _ in 0..POLLS {
        match get_over_new_tls_connection(addr, ca_pem).await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    panic!("the reloaded certificate was never served: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_tls_certificate_for_new_connections_and_a_bad_one_keeps_the_old() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("l.sock");
    let log = tmp.path().join("serve.log");
    let (a, a_pem) = self_signed(tmp.path(), "a");
    let (b, b_pem) = self_signed(tmp.path(), "b");
    // The daemon serves these two paths; each step writes other contents into them.
    let cert = tmp.path().join("server.crt");
    let key = tmp.path().join("server.key");
    let install = |from: &TlsSettings| {
        std::fs::copy(&from.cert, &cert).unwrap();
        std::fs::copy(&from.key, &key).unwrap();
    };
    install(&a);
    let flags = [
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ];
    let mut daemon = Daemon::spawn_with(&tmp.path().join("data"), &socket, log.clone(), &flags);
    drop(daemon.channel(&socket).await);
    let addr = daemon.tcp_addr().await;
    get_over_new_tls_connection(&addr, &a_pem).await.unwrap();
    assert!(
        get_over_new_tls_connection(&addr, &b_pem).await.is_err(),
        "certificate B was served before any reload"
    );
    // A connection made before the reload keeps certificate A's session.
    let tls_a = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&a_pem))
        .domain_name("localhost");
    let mut open = CacheServiceClient::new(
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls_a)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    open.get(get_request("k")).await.unwrap();

    // Renewed: new files in place, then SIGHUP.
    install(&b);
    daemon.send("-HUP");
    until_served_over_tls(&addr, &b_pem).await;
    let refused = get_over_new_tls_connection(&addr, &a_pem).await;
    assert!(refused.is_err(), "a new connection still got certificate A");
    open.get(get_request("k")).await.unwrap();
    let logged = until_logged(&log, "reloaded the TLS certificate").await;
    assert!(logged.contains(&cert.display().to_string()), "{logged}");

    // A broken certificate file is reported, naming it, and changes nothing.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ncut short\n").unwrap();
    daemon.send("-HUP");
    let logged = until_logged(&log, "reloading the TLS certificate failed").await;
    let warning = logged
        .lines()
        .find(|l| l.contains("reloading the TLS certificate failed"))
        .unwrap();
    assert!(
        warning.contains("WARN") && warning.contains(&format!("tls.cert {}", cert.display())),
        "{warning}"
    );
    get_over_new_tls_connection(&addr, &b_pem).await.unwrap();
    assert!(get_over_new_tls_connection(&addr, &a_pem).await.is_err());
    drop(open);
    daemon.terminate().await;
    let logged = read_log(&log);
    for pem in [&a.key, &b.key] {
        let pem = std::fs::read_to_string(pem).unwrap();
        let body = pem.lines().nth(1).unwrap();
        assert!(!logged.contains(body), "{logged}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_a_token_together() {
    let tmp = tempfile::tempdir().unwrap();
    let (tls, ca_pem) = self_signed(tmp.path(), "server");
    let (_dir, path) = token_file(TOKEN_A);
    let server = TestServer::start_with(
        |_| {},
        ServerSettings {
            tls: Some(tls),
            ..with_auth(&path, true)
        },
    )
    .await;
    let channel = tls_channel(&server, &ca_pem).await;
    assert_all_refused(
        call_every_service(&channel, None).await,
        "missing bearer token",
    );
    assert_all_served(call_every_service(&channel, Some(TOKEN_A)).await);
    assert_eq!(
        health(channel, "").await.unwrap(),
        ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_tls_files_stop_the_start_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (good, _) = self_signed(tmp.path(), "good");
    let (other, _) = self_signed(tmp.path(), "other");
    let missing = tmp.path().join("missing.crt");
    let not_pem = tmp.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let tls = |cert: &Path, key: &Path| ServerSettings {
        tls: Some(TlsSettings {
            cert: cert.to_owned(),
            key: key.to_owned(),
        }),
        ..ServerSettings::default()
    };
    let cases = [
        (
            tls(&missing, &good.key),
            "tls.cert",
            &missing,
            "cannot read",
        ),
        (
            tls(&good.cert, &missing),
            "tls.key",
            &missing,
            "cannot read",
        ),
        (
            tls(&not_pem, &good.key),
            "tls.cert",
            &not_pem,
            "no PEM certificate",
        ),
        (
            tls(&good.cert, &not_pem),
            "tls.key",
            &not_pem,
            "no PEM private key",
        ),
        (
            tls(&good.cert, &other.key),
            "tls.key",
            &other.key,
            "tls.cert",
        ),
    ];
    for (settings, setting, file, reason) in cases {
        let err = start_error(settings).await;
        let named = format!("{setting} {}", file.display());
        assert!(
            err.contains(&named) && err.contains(reason),
            "{named}: {err}"
        );
    }

    // check-config reads the same files and says the same.
    let flags = [
        "--tls-cert".as_ref(),
        good.cert.as_os_str(),
        "--tls-key".as_ref(),
        other.key.as_os_str(),
    ];
    let (ok, stdout, stderr) = check_config(tmp.path(), &flags);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains(&other.key.display().to_string()),
        "{stderr}"
    );
    let flags = [
        "--tls-cert".as_ref(),
        good.cert.as_os_str(),
        "--tls-key".as_ref(),
        good.key.as_os_str(),
    ];
    let (ok, stdout, stderr) = check_config(tmp.path(), &flags);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("# tls: 1 certificate in {}", good.cert.display())),
        "{stdout}"
    );
}
