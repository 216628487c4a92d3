//! Security bounds through the real server.
//!
//! [`tokens`]: scoped bearer tokens. Each scope word of the token file (`services=`,
//! `read_only`, `namespace=`) refuses every call outside it with PERMISSION_DENIED, naming
//! the scope word and never the token, and lets every call inside it reach its service; a
//! refused batch writes nothing; a bare token line keeps full access. A token file without
//! tokens revokes every token on SIGHUP, a missing one keeps the tokens; refused calls are
//! counted in `larder_auth_refused_total{reason}` and logged at warn with the peer, throttled;
//! the daemon warns at start when it is reachable beyond loopback without TLS or auth, and
//! when metrics are.

mod tokens {
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};

    use larder::pb;
    use larder::pb::cache_service_client::CacheServiceClient;
    use larder::pb::rate_limit_service_client::RateLimitServiceClient;
    use larder::pb::session_service_client::SessionServiceClient;
    use larder::{AuthSettings, ServerSettings};
    use tempfile::TempDir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tonic::transport::Channel;
    use tonic::{Code, Request, Status};

    use crate::common::{TestServer, assert_code, health};
    use crate::suite::auth::until_logged;
    use crate::suite::binary::{Daemon, POLL_PAUSE, POLLS, larder, read_log};

    /// A bare line: full access.
    const FULL: &str = "full-0123456789abcdefghijklmnop";
    const CACHE: &str = "cache-0123456789abcdefghijklmno";
    const SESSION: &str = "session-0123456789abcdefghijklm";
    const LIMITER: &str = "limiter-0123456789abcdefghijklm";
    const READER: &str = "reader-0123456789abcdefghijklmn";
    const SHOP: &str = "shop-0123456789abcdefghijklmnop";

    /// One token of each scope, as an operator would write them.
    fn token_text() -> String {
        format!(
            "# full access, as before scopes existed\n{FULL}\n\
             {CACHE} services=cache   # the web app's cache\n\
             {SESSION}\tservices=session\n\
             {LIMITER} services=ratelimit\n\
             {READER} read_only\n\
             {SHOP} services=cache namespace=shop:\n"
        )
    }

    fn token_file(text: &str) -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn with_auth(path: &Path) -> ServerSettings {
        ServerSettings {
            auth: Some(AuthSettings {
                token_file: path.to_owned(),
                unix_socket: true,
            }),
            ..ServerSettings::default()
        }
    }

    fn call<T>(message: T, token: &str) -> Request<T> {
        let mut request = Request::new(message);
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
        request
    }

    /// How a call ended, as far as the scope is concerned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Outcome {
        /// The service answered (any status but the two auth ones: the request reached it).
        Reached,
        /// PERMISSION_DENIED, with its message.
        Denied(String),
        /// UNAUTHENTICATED.
        Unauthenticated,
    }

    fn outcome<T>(result: Result<T, Status>) -> Outcome {
        match result {
            Err(s) if s.code() == Code::PermissionDenied => Outcome::Denied(s.message().into()),
            Err(s) if s.code() == Code::Unauthenticated => Outcome::Unauthenticated,
            _ => Outcome::Reached,
        }
    }

    /// Every method of the three services, called once with `token` on cache namespace `ns`;
    /// each method's outcome, by name.
    async fn every_method(
        channel: &Channel,
        token: &str,
        ns: &str,
    ) -> Vec<(&'static str, Outcome)> {
        let mut c = CacheServiceClient::new(channel.clone());
        let mut s = SessionServiceClient::new(channel.clone());
        let mut r = RateLimitServiceClient::new(channel.clone());
        let ns = ns.to_owned();
        let key = || "k".to_owned();
        let mut out = Vec::new();
        macro_rules! each {
            ($($name:literal => $call:expr;)*) => {
                $( out.push(($name, outcome($call.await))); )*
            };
        }
        each! {
            "Get" => c.get(call(pb::GetRequest { namespace: ns.clone(), key: key() }, token));
            "Set" => c.set(call(pb::SetRequest { namespace: ns.clone(), key: key(), value: b"v".to_vec().into(), ..Default::default() }, token));
            "Delete" => c.delete(call(pb::DeleteRequest { namespace: ns.clone(), key: key(), ..Default::default() }, token));
            "GetMany" => c.get_many(call(pb::GetManyRequest { namespace: ns.clone(), keys: vec![key()] }, token));
            "SetMany" => c.set_many(call(pb::SetManyRequest { namespace: ns.clone(), entries: vec![pb::SetEntry { key: key(), value: b"v".to_vec().into(), ttl_ms: 0 }] }, token));
            "DeleteMany" => c.delete_many(call(pb::DeleteManyRequest { namespace: ns.clone(), keys: vec![key()] }, token));
            "DeletePrefix" => c.delete_prefix(call(pb::DeletePrefixRequest { namespace: ns.clone(), prefix: "x".into() }, token));
            "Touch" => c.touch(call(pb::TouchRequest { namespace: ns.clone(), key: key(), ttl_ms: 1000 }, token));
            "Increment" => c.increment(call(pb::IncrementRequest { namespace: ns.clone(), key: "n".into(), delta: 1, ..Default::default() }, token));
            "Clear" => c.clear(call(pb::ClearRequest { namespace: ns.clone() }, token));
            "Stats" => c.stats(call(pb::StatsRequest { namespace: ns.clone() }, token));
            "Scan" => c.scan(call(pb::ScanRequest { namespace: ns.clone(), ..Default::default() }, token));
            "CreateSession" => s.create_session(call(pb::CreateSessionRequest { user_id: "u1".into(), ..Default::default() }, token));
            "GetSession" => s.get_session(call(pb::GetSessionRequest { token: "lds_nope".into() }, token));
            "UpdateSession" => s.update_session(call(pb::UpdateSessionRequest { token: "lds_nope".into(), ..Default::default() }, token));
            "RotateSession" => s.rotate_session(call(pb::RotateSessionRequest { token: "lds_nope".into() }, token));
            "RevokeSession" => s.revoke_session(call(pb::RevokeSessionRequest { target: Some(pb::revoke_session_request::Target::SessionId("nope".into())) }, token));
            "RevokeUserSessions" => s.revoke_user_sessions(call(pb::RevokeUserSessionsRequest { user_id: "u1".into(), ..Default::default() }, token));
            "ListSessions" => s.list_sessions(call(pb::ListSessionsRequest { user_id: "u1".into(), ..Default::default() }, token));
            "Check" => r.check(call(pb::CheckRequest { key: "ip:1".into(), limit: 10, period_ms: 60_000, ..Default::default() }, token));
            "Peek" => r.peek(call(pb::PeekRequest { key: "ip:1".into(), limit: 10, period_ms: 60_000, ..Default::default() }, token));
            "Reset" => r.reset(call(pb::ResetRequest { key: "ip:1".into(), ..Default::default() }, token));
        }
        out
    }

    const CACHE_METHODS: [&str; 12] = [
        "Get",
        "Set",
        "Delete",
        "GetMany",
        "SetMany",
        "DeleteMany",
        "DeletePrefix",
        "Touch",
        "Increment",
        "Clear",
        "Stats",
        "Scan",
    ];
    const SESSION_METHODS: [&str; 7] = [
        "CreateSession",
        "GetSession",
        "UpdateSession",
        "RotateSession",
        "RevokeSession",
        "RevokeUserSessions",
        "ListSessions",
    ];
    const RATELIMIT_METHODS: [&str; 3] = ["Check", "Peek", "Reset"];
    /// The methods a `read_only` token may call.
    const READS: [&str; 7] = [
        "Get",
        "GetMany",
        "Stats",
        "Scan",
        "GetSession",
        "ListSessions",
        "Peek",
    ];

    /// Asserts that exactly the methods in `allowed` reached their service, and that every
    /// other one was denied with a message naming `scope_word` and no token.
    #[track_caller]
    fn assert_scope(results: &[(&str, Outcome)], allowed: &[&str], scope_word: &str) {
        for (method, outcome) in results {
            if allowed.contains(method) {
                assert_eq!(*outcome, Outcome::Reached, "{method} should be served");
                continue;
            }
            let Outcome::Denied(message) = outcome else {
                panic!("{method} should be PERMISSION_DENIED, got {outcome:?}");
            };
            assert!(message.contains(scope_word), "{method}: {message}");
            for token in [FULL, CACHE, SESSION, LIMITER, READER, SHOP] {
                assert!(!message.contains(token), "{method}: {message}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_bare_token_line_keeps_full_access() {
        let (_dir, path) = token_file(&token_text());
        let server = TestServer::with_settings(with_auth(&path)).await;
        let channel = server.channel().await;
        let all: Vec<&str> = [&CACHE_METHODS[..], &SESSION_METHODS, &RATELIMIT_METHODS].concat();
        assert_scope(&every_method(&channel, FULL, "").await, &all, "");
        assert_scope(&every_method(&channel, FULL, "any").await, &all, "");
        // An unknown token is still unauthenticated, whatever the scopes of the others.
        let unknown = every_method(&channel, "unknown-0123456789abcdefghij", "").await;
        assert!(
            unknown.iter().all(|(_, o)| *o == Outcome::Unauthenticated),
            "{unknown:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn each_service_scope_refuses_the_other_services() {
        let (_dir, path) = token_file(&token_text());
        let server = TestServer::with_settings(with_auth(&path)).await;
        let channel = server.channel().await;
        for (token, allowed) in [
            (CACHE, &CACHE_METHODS[..]),
            (SESSION, &SESSION_METHODS[..]),
            (LIMITER, &RATELIMIT_METHODS[..]),
        ] {
            assert_scope(
                &every_method(&channel, token, "").await,
                allowed,
                "services=",
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_read_only_token_reads_and_never_writes() {
        let (_dir, path) = token_file(&token_text());
        let server = TestServer::with_settings(with_auth(&path)).await;
        let channel = server.channel().await;
        let mut c = CacheServiceClient::new(channel.clone());
        c.set(call(
            pb::SetRequest {
                key: "kept".into(),
                value: b"before".to_vec().into(),
                ..Default::default()
            },
            FULL,
        ))
        .await
        .unwrap();

        assert_scope(
            &every_method(&channel, READER, "").await,
            &READS,
            "read_only",
        );

        // Nothing was written: the entry is as it was, and no other key appeared.
        let kept = c
            .get(call(
                pb::GetRequest {
                    namespace: String::new(),
                    key: "kept".into(),
                },
                READER,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&kept.value[..], b"before");
        let stats = c
            .stats(call(
                pb::StatsRequest {
                    namespace: String::new(),
                },
                READER,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.entries, 1, "{stats:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_namespace_prefix_confines_every_cache_call_batches_included() {
        let (_dir, path) = token_file(&token_text());
        let server = TestServer::with_settings(with_auth(&path)).await;
        let channel = server.channel().await;
        let mut c = CacheServiceClient::new(channel.clone());

        // Inside the prefix: every cache call reaches the cache.
        let inside = every_method(&channel, SHOP, "shop:carts").await;
        assert_scope(&inside, &CACHE_METHODS, "services=");
        // Outside it, the default namespace (an empty one) included: every cache call is
        // refused, naming namespace=.
        for ns in ["blog", "sho", "", "default"] {
            let outside: Vec<_> = every_method(&channel, SHOP, ns)
                .await
                .into_iter()
                .filter(|(m, _)| CACHE_METHODS.contains(m))
                .collect();
            assert_scope(&outside, &[], "namespace=");
        }

        // A refused batch writes nothing, and a refused Clear removes nothing.
        let entries = (0..50)
            .map(|i| pb::SetEntry {
                key: format!("k{i}"),
                value: b"v".to_vec().into(),
                ttl_ms: 0,
            })
            .collect::<Vec<_>>();
        let blog = pb::SetManyRequest {
            namespace: "blog".into(),
            entries: entries.clone(),
        };
        assert_code(c.set_many(call(blog, SHOP)).await, Code::PermissionDenied);
        let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
        let found = c
            .get_many(call(
                pb::GetManyRequest {
                    namespace: "blog".into(),
                    keys: keys.clone(),
                },
                FULL,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(
            found.entries.iter().all(|e| !e.found),
            "a refused SetMany wrote"
        );
        let shop = pb::SetManyRequest {
            namespace: "shop:x".into(),
            entries,
        };
        c.set_many(call(shop, SHOP)).await.unwrap();
        c.set_many(call(
            pb::SetManyRequest {
                namespace: "blog".into(),
                entries: vec![pb::SetEntry {
                    key: "k0".into(),
                    value: b"v".to_vec().into(),
                    ttl_ms: 0,
                }],
            },
            FULL,
        ))
        .await
        .unwrap();
        assert_code(
            c.clear(call(
                pb::ClearRequest {
                    namespace: "blog".into(),
                },
                SHOP,
            ))
            .await,
            Code::PermissionDenied,
        );
        assert_code(
            c.get_many(call(
                pb::GetManyRequest {
                    namespace: "blog".into(),
                    keys: keys.clone(),
                },
                SHOP,
            ))
            .await,
            Code::PermissionDenied,
        );
        let blog_left = c
            .get_many(call(
                pb::GetManyRequest {
                    namespace: "blog".into(),
                    keys: vec!["k0".into()],
                },
                FULL,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(
            blog_left.entries[0].found,
            "a refused Clear removed an entry"
        );
        let shop_read = c
            .get_many(call(
                pb::GetManyRequest {
                    namespace: "shop:x".into(),
                    keys,
                },
                SHOP,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(shop_read.entries.iter().all(|e| e.found));
        // Stats over every namespace (an empty one) is beyond any prefix.
        assert_code(
            c.stats(call(
                pb::StatsRequest {
                    namespace: String::new(),
                },
                SHOP,
            ))
            .await,
            Code::PermissionDenied,
        );
    }

    /// The value of `larder_auth_refused_total{reason="<reason>"}` at the metrics address.
    async fn refused_metric(addr: SocketAddr, reason: &str) -> Option<f64> {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: larder\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        let sample = format!("larder_auth_refused_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&sample))
            .map(|v| v.trim().parse().unwrap())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn refused_calls_are_counted_by_reason() {
        let (_dir, path) = token_file(&token_text());
        let server = TestServer::start_with_metrics(with_auth(&path)).await;
        let mut c = CacheServiceClient::new(server.channel().await);
        let get = |ns: &str| pb::GetRequest {
            namespace: ns.into(),
            key: "k".into(),
        };
        let addr = server.metrics_addr();
        assert_eq!(
            refused_metric(addr, "missing").await,
            None,
            "nothing refused yet"
        );

        for _ in 0..2 {
            assert_code(c.get(Request::new(get(""))).await, Code::Unauthenticated);
        }
        assert_code(
            c.get(call(get(""), "unknown-0123456789abcdefghij")).await,
            Code::Unauthenticated,
        );
        assert_code(c.get(call(get(""), LIMITER)).await, Code::PermissionDenied);
        for _ in 0..3 {
            let set = pb::SetRequest {
                key: "k".into(),
                ..Default::default()
            };
            assert_code(c.set(call(set, READER)).await, Code::PermissionDenied);
        }
        assert_code(c.get(call(get("blog"), SHOP)).await, Code::PermissionDenied);
        c.get(call(get("shop:a"), SHOP)).await.unwrap();
        c.get(call(get(""), FULL)).await.unwrap();

        for (reason, count) in [
            ("missing", 2.0),
            ("invalid", 1.0),
            ("service", 1.0),
            ("read_only", 3.0),
            ("namespace", 1.0),
        ] {
            assert_eq!(refused_metric(addr, reason).await, Some(count), "{reason}");
        }
    }

    /// Calls CacheService/Get with `token` until its outcome is `want`, a bounded number of
    /// times (a SIGHUP is handled asynchronously).
    async fn until(cache: &mut CacheServiceClient<Channel>, token: &str, want: Code) {
        for _ in 0..POLLS {
            let get = pb::GetRequest {
                namespace: String::new(),
                key: "k".into(),
            };
            let code = match cache.get(call(get, token)).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            };
            if code == want {
                return;
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
        panic!("a Get never ended with {want:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sighup_with_a_file_without_tokens_revokes_every_token_and_a_missing_file_keeps_them() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("l.sock");
        let tokens = tmp.path().join("tokens");
        std::fs::write(&tokens, format!("{FULL}\n{READER} read_only\n")).unwrap();
        let log = tmp.path().join("serve.log");
        let flags = ["--auth-token-file".as_ref(), tokens.as_os_str()];
        let mut daemon = Daemon::spawn_with(&tmp.path().join("data"), &socket, log.clone(), &flags);
        let channel = daemon.channel(&socket).await;
        let mut cache = CacheServiceClient::new(channel.clone());
        until(&mut cache, FULL, Code::Ok).await;

        // Missing: an error in the log, and the tokens stay.
        std::fs::remove_file(&tokens).unwrap();
        daemon.send("-HUP");
        until_logged(&log, "reloading the auth token file failed").await;
        until(&mut cache, FULL, Code::Ok).await;
        until(&mut cache, READER, Code::Ok).await;

        // Emptied on purpose: every token is revoked, health still answers.
        std::fs::write(&tokens, "# revoked: every token leaked\n").unwrap();
        daemon.send("-HUP");
        until_logged(&log, "every token is revoked").await;
        for token in [FULL, READER] {
            let get = pb::GetRequest {
                namespace: String::new(),
                key: "k".into(),
            };
            let refused = assert_code(cache.get(call(get, token)).await, Code::Unauthenticated);
            assert_eq!(refused.message(), "invalid bearer token");
        }
        assert_eq!(health(channel.clone(), "").await.unwrap(), 1, "SERVING");

        // Tokens added back: served again.
        std::fs::write(&tokens, format!("{SHOP}\n")).unwrap();
        daemon.send("-HUP");
        until(&mut cache, SHOP, Code::Ok).await;
        assert_code(
            cache
                .get(call(
                    pb::GetRequest {
                        namespace: String::new(),
                        key: "k".into(),
                    },
                    FULL,
                ))
                .await,
            Code::Unauthenticated,
        );
        drop((cache, channel));
        daemon.terminate().await;
        let logged = read_log(&log);
        for secret in [FULL, READER, SHOP] {
            assert!(!logged.contains(secret), "a token is in the log:\n{logged}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn refused_calls_are_logged_at_warn_with_the_peer_and_throttled() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("l.sock");
        let tokens = tmp.path().join("tokens");
        std::fs::write(&tokens, format!("{READER} read_only\n")).unwrap();
        let log = tmp.path().join("serve.log");
        let flags = ["--auth-token-file".as_ref(), tokens.as_os_str()];
        let mut daemon = Daemon::spawn_with(&tmp.path().join("data"), &socket, log.clone(), &flags);
        daemon.channel(&socket).await;
        let addr = daemon.tcp_addr().await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut cache = CacheServiceClient::new(channel);
        const CALLS: usize = 40;
        for _ in 0..CALLS {
            let get = pb::GetRequest {
                namespace: String::new(),
                key: "k".into(),
            };
            assert_code(cache.get(Request::new(get)).await, Code::Unauthenticated);
            let set = pb::SetRequest {
                key: "k".into(),
                ..Default::default()
            };
            assert_code(cache.set(call(set, READER)).await, Code::PermissionDenied);
        }
        drop(cache);
        daemon.terminate().await;
        let logged = read_log(&log);
        for reason in ["missing", "read_only"] {
            let lines: Vec<&str> = logged
                .lines()
                .filter(|l| {
                    l.contains("call refused") && l.contains(&format!("reason=\"{reason}\""))
                })
                .collect();
            assert!(!lines.is_empty(), "no {reason} line:\n{logged}");
            // Throttled: one line per few seconds per reason, not one per call.
            assert!(
                lines.len() < CALLS / 2,
                "{reason}: {} lines:\n{logged}",
                lines.len()
            );
            let first = lines[0];
            assert!(first.contains("WARN"), "{first}");
            assert!(first.contains("peer=127.0.0.1:"), "{first}");
            assert!(first.contains("CacheService"), "{first}");
        }
        assert!(!logged.contains(READER), "a token is in the log:\n{logged}");
    }

    /// `host:port` with a port that was free a moment ago.
    fn free_port(host: &str) -> String {
        let free = std::net::TcpListener::bind(format!("{host}:0")).unwrap();
        format!("{host}:{}", free.local_addr().unwrap().port())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_daemon_warns_at_start_when_reachable_beyond_loopback() {
        let tmp = tempfile::tempdir().unwrap();
        let warnings = [
            "listening beyond loopback without TLS",
            "listening beyond loopback without auth",
            "metrics listening beyond loopback",
        ];

        // Beyond loopback, without TLS, auth or a private metrics port: one line each.
        let socket = tmp.path().join("open.sock");
        let log = tmp.path().join("open.log");
        let data = tmp.path().join("open");
        // The two addresses must differ: a free port for metrics, and port 0 for gRPC.
        let metrics = free_port("0.0.0.0");
        let args = [
            "serve".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--listen".as_ref(),
            "0.0.0.0:0".as_ref(),
            "--unix-socket".as_ref(),
            socket.as_os_str(),
            "--metrics-listen".as_ref(),
            metrics.as_ref(),
        ];
        let mut open = Daemon::start(larder(&args, &log), log.clone());
        open.channel(&socket).await;
        open.terminate().await;
        let logged = read_log(&log);
        for (warning, setting) in
            warnings
                .iter()
                .zip(["tls.cert", "auth.token_file", "metrics.listen"])
        {
            let lines: Vec<&str> = logged.lines().filter(|l| l.contains(warning)).collect();
            assert_eq!(lines.len(), 1, "{warning}:\n{logged}");
            assert!(
                lines[0].contains("WARN") && lines[0].contains(setting),
                "{}",
                lines[0]
            );
        }

        // On loopback (the test default), with auth and metrics: none.
        let tokens = tmp.path().join("tokens");
        std::fs::write(&tokens, format!("{FULL}\n")).unwrap();
        let metrics = free_port("127.0.0.1");
        let socket = tmp.path().join("closed.sock");
        let log = tmp.path().join("closed.log");
        let flags = [
            "--auth-token-file".as_ref(),
            tokens.as_os_str(),
            "--metrics-listen".as_ref(),
            metrics.as_ref(),
        ];
        let mut closed =
            Daemon::spawn_with(&tmp.path().join("closed"), &socket, log.clone(), &flags);
        closed.channel(&socket).await;
        closed.terminate().await;
        let logged = read_log(&log);
        for warning in warnings {
            assert!(!logged.contains(warning), "{warning}:\n{logged}");
        }
    }
}
