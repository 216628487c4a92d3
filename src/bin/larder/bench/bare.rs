//! The bare baseline of `scripts/bench.sh` (`larder bench --bare-server ADDR`, hidden): a
//! CacheService doing nothing but a `HashMap` behind a `Mutex` (Get and Set, and SetMany for
//! the preload; every other RPC is UNIMPLEMENTED), served by bare tonic with the same worker thread count and TCP_NODELAY
//! as larder, so that larder's cost over the gRPC stack itself can be read off side by side.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use anyhow::{Context, bail};
use bytes::Bytes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use larder::pb;
use larder::pb::cache_service_server::{CacheService, CacheServiceServer};

/// The baseline: what a CacheService costs with no store behind it at all.
#[derive(Debug, Default)]
struct Bare {
    map: Mutex<HashMap<String, Bytes>>,
}

#[tonic::async_trait]
impl CacheService for Bare {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let value = self
            .map
            .lock()
            .map_err(|_| Status::internal("map lock poisoned"))?
            .get(&req.key)
            .cloned();
        Ok(Response::new(match value {
            Some(value) => pb::GetResponse {
                found: true,
                value,
                version: 1,
                ttl_ms: 0,
            },
            None => pb::GetResponse::default(),
        }))
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let req = req.into_inner();
        self.map
            .lock()
            .map_err(|_| Status::internal("map lock poisoned"))?
            .insert(req.key, req.value);
        Ok(Response::new(pb::SetResponse {
            stored: true,
            version: 1,
        }))
    }

    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(not_served())
    }

    async fn get_many(
        &self,
        _: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        Err(not_served())
    }

    /// The preload of `larder bench` writes the key space with SetMany.
    async fn set_many(
        &self,
        req: Request<pb::SetManyRequest>,
    ) -> Result<Response<pb::SetManyResponse>, Status> {
        let entries = req.into_inner().entries;
        let versions = vec![1; entries.len()];
        let mut map = self
            .map
            .lock()
            .map_err(|_| Status::internal("map lock poisoned"))?;
        map.extend(entries.into_iter().map(|e| (e.key, e.value)));
        Ok(Response::new(pb::SetManyResponse { versions }))
    }

    async fn delete_many(
        &self,
        _: Request<pb::DeleteManyRequest>,
    ) -> Result<Response<pb::DeleteManyResponse>, Status> {
        Err(not_served())
    }

    async fn delete_prefix(
        &self,
        _: Request<pb::DeletePrefixRequest>,
    ) -> Result<Response<pb::DeletePrefixResponse>, Status> {
        Err(not_served())
    }

    async fn touch(
        &self,
        _: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::TouchResponse>, Status> {
        Err(not_served())
    }

    async fn increment(
        &self,
        _: Request<pb::IncrementRequest>,
    ) -> Result<Response<pb::IncrementResponse>, Status> {
        Err(not_served())
    }

    async fn clear(
        &self,
        _: Request<pb::ClearRequest>,
    ) -> Result<Response<pb::ClearResponse>, Status> {
        Err(not_served())
    }

    async fn scan(
        &self,
        _: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        Err(not_served())
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Err(not_served())
    }
}

/// Serves the baseline on `listen` with `worker_threads` tokio workers until SIGINT.
pub fn serve(listen: SocketAddr, worker_threads: usize) -> anyhow::Result<()> {
    if worker_threads == 0 {
        bail!("--bare-worker-threads must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .thread_name("bare-worker")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        eprintln!("bare-server: listening on {listen} with {worker_threads} worker threads");
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        Server::builder()
            .add_service(CacheServiceServer::new(Bare::default()))
            .serve_with_incoming_shutdown(incoming, async {
                // An error here means no signal handler could be set up: then run until killed.
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
            .await
            .context("serving")?;
        Ok(())
    })
}

/// What the baseline answers to every RPC but Get, Set and SetMany.
fn not_served() -> Status {
    Status::unimplemented("bare baseline: Get, Set and SetMany only")
}
