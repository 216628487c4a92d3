//! The runtimes and channels of one process. A blocking call runs on the caller's own
//! thread (`block_on` of a current-thread runtime: no hand-off to another thread and back),
//! and a housekeeping thread turns that runtime over once a second while nobody calls, so an
//! idle connection still answers the daemon's keepalive pings and notices a closed
//! connection before the next call is written to it. Asyncio calls are spawned on a second,
//! one-worker runtime, which drives its own channel all the time. Each is made on first use.
//!
//! After a fork the child makes its own (`Core::live`): the parent's threads do not exist in
//! it, so the parent's runtimes are left alone there, never used and never dropped.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};
use tonic::client::Grpc;
use tonic::transport::Channel;

use crate::conn::{Settings, open_channel};
use crate::pipeline::Pipeline;

/// How often an idle blocking runtime is turned over.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// A runtime that is shut down without waiting for anything: its tasks may be waiting for
/// the GIL that the dropping thread holds.
pub struct Rt(ManuallyDrop<Runtime>);

impl std::ops::Deref for Rt {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.0
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and never used after.
        let runtime = unsafe { ManuallyDrop::take(&mut self.0) };
        runtime.shutdown_background();
    }
}

/// A runtime and the channel that lives on it.
pub struct Driven {
    pub runtime: Arc<Rt>,
    pub grpc: Grpc<Channel>,
    /// The Run stream that pipelined calls share (asyncio runtime only).
    pub pipeline: Option<Arc<Pipeline>>,
}

/// How many times this process has been forked into the one running now: 0 in the process
/// that loaded the module, one more in each child (counted by a `pthread_atfork` handler,
/// so that telling whether a fork happened costs no system call).
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked_child() {
    FORKS.fetch_add(1, Ordering::SeqCst);
}

/// Counts forks from now on (`generation`); called once, when the module loads.
pub fn count_forks() -> Result<(), String> {
    // SAFETY: registers a handler that only increments an atomic, which is fork-safe.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("pthread_atfork failed ({rc})"))
    }
}

/// The process generation: it changes in a forked child.
pub fn generation() -> u64 {
    FORKS.load(Ordering::SeqCst)
}

/// This process's runtimes and channels, each opened on first use.
pub struct Live {
    /// The `generation` that made them; in any other they must not be touched.
    pub generation: u64,
    settings: Arc<Settings>,
    // Dropped only in the generation that made them (see `Drop`).
    blocking: ManuallyDrop<OnceLock<Driven>>,
    spawned: ManuallyDrop<OnceLock<Driven>>,
    /// Tells the housekeeping thread to stop (also stops when the runtime is gone).
    stop: Arc<AtomicBool>,
}

impl Live {
    pub fn new(settings: Arc<Settings>) -> Live {
        Live {
            generation: generation(),
            settings,
            blocking: ManuallyDrop::new(OnceLock::new()),
            spawned: ManuallyDrop::new(OnceLock::new()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The runtime and channel of blocking calls (`block_on` from the caller's thread).
    pub fn blocking(&self) -> Result<&Driven, String> {
        if let Some(driven) = self.blocking.get() {
            return Ok(driven);
        }
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the client's runtime: {e}"))?;
        let runtime = Arc::new(Rt(ManuallyDrop::new(runtime)));
        let grpc = open_channel(&self.settings, &runtime)?;
        let weak = Arc::downgrade(&runtime);
        let driven = Driven {
            runtime,
            grpc,
            pipeline: None,
        };
        if self.blocking.set(driven).is_ok() {
            let stop = self.stop.clone();
            std::thread::Builder::new()
                .name("larder-client-idle".to_owned())
                .spawn(move || housekeep(weak, stop))
                .map_err(|e| format!("starting the client's housekeeping thread: {e}"))?;
        }
        Ok(self
            .blocking
            .get()
            .expect("set just now, by this thread or another"))
    }

    /// The runtime and channel of asyncio calls (spawned; one worker thread drives them).
    pub fn spawned(&self) -> Result<&Driven, String> {
        if let Some(driven) = self.spawned.get() {
            return Ok(driven);
        }
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("larder-client")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the client's runtime: {e}"))?;
        let runtime = Arc::new(Rt(ManuallyDrop::new(runtime)));
        let grpc = open_channel(&self.settings, &runtime)?;
        let pipeline = Pipeline::new(grpc.clone(), self.settings.authorization.clone());
        let _ = self.spawned.set(Driven {
            runtime,
            grpc,
            pipeline: Some(Arc::new(pipeline)),
        });
        Ok(self
            .spawned
            .get()
            .expect("set just now, by this thread or another"))
    }
}

impl Live {
    /// How many Run streams the asyncio runtime's pipeline has opened (0 before any).
    pub fn pipeline_streams(&self) -> u64 {
        self.spawned
            .get()
            .and_then(|driven| driven.pipeline.as_ref())
            .map_or(0, |pipeline| pipeline.opened())
    }

    /// The most calls the asyncio runtime's pipeline has held queued on one stream at once.
    pub fn pipeline_queue_peak(&self) -> usize {
        self.spawned
            .get()
            .and_then(|driven| driven.pipeline.as_ref())
            .map_or(0, |pipeline| pipeline.queue_peak())
    }
}

impl Drop for Live {
    /// In the process that made them, stops the housekeeping thread and shuts the runtimes
    /// down. In a forked child they are left alone: their threads do not exist there, and
    /// closing their sockets would take the parent's registrations out of the epoll
    /// instance the two processes share.
    fn drop(&mut self) {
        if self.generation != generation() {
            return;
        }
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: each is taken once, here, and never used after.
        unsafe {
            ManuallyDrop::drop(&mut self.blocking);
            ManuallyDrop::drop(&mut self.spawned);
        }
    }
}

/// Turns the blocking runtime over every `HOUSEKEEPING` (for a millisecond: the connection
/// task reads what arrived, answers pings, sees a GOAWAY or a closed socket) until told to
/// stop or the runtime is gone.
fn housekeep(runtime: Weak<Rt>, stop: Arc<AtomicBool>) {
    loop {
        std::thread::sleep(HOUSEKEEPING);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
    }
}
