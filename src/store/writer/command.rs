//! The writer's queue and its typed replies.
//!
//! Each domain's commands (`cache::write::CacheOp`, `session::write::SessionOp`,
//! `ratelimit::write::RateLimitOp`, `queue::write::QueueOp`) carry a [`Reply<T>`] whose `T` is what that command
//! answers, and [`WriteQueue::submit`] returns that `T`: a command that answered the wrong
//! type, or a caller that expected one, does not compile. The writer holds each answer in its
//! reply from the statement that produced it until its transaction committed; only then is it
//! sent (or, if the batch is rolled back, replaced by the batch's error).
//!
//! A new domain adds its command enum as a variant of [`Op`] and its arm in
//! `Writer::apply`; the engine needs nothing else of it.

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::store::cache::write::CacheOp;
use crate::store::queue::write::QueueOp;
use crate::store::ratelimit::write::RateLimitOp;
use crate::store::session::write::SessionOp;
use crate::store::upkeep::Upkept;

/// A command's way back to its caller, holding the answer until its commit.
#[derive(Debug)]
pub(crate) struct Reply<T> {
    /// `None` once answered.
    tx: Option<oneshot::Sender<Result<T>>>,
    /// The answer, held until the transaction that produced it committed.
    held: Option<Result<T>>,
}

impl<T> Reply<T> {
    /// A reply and the receiver its caller waits on.
    pub(crate) fn new() -> (Self, oneshot::Receiver<Result<T>>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                tx: Some(tx),
                held: None,
            },
            rx,
        )
    }

    /// Holds the command's answer until its commit.
    pub(crate) fn hold(&mut self, answer: T) {
        self.held = Some(Ok(answer));
    }

    /// Whether its caller has gone (a cancelled request): nobody will read the answer.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(|tx| tx.is_closed())
    }
}

/// A reply of any type, as the batch loop handles it.
pub(crate) trait Pending {
    /// Holds the command's own failure until the batch ends (it fails alone).
    fn hold_err(&mut self, err: Error);
    /// Sends what is held: the batch committed.
    fn answer(&mut self);
    /// Sends `err` instead of anything held: the command was not committed.
    fn fail(&mut self, err: Error);
}

impl<T> Pending for Reply<T> {
    fn hold_err(&mut self, err: Error) {
        self.held = Some(Err(err));
    }

    fn answer(&mut self) {
        let answer = self.held.take().unwrap_or_else(|| {
            Err(Error::Internal(
                "the writer committed a command it did not run".into(),
            ))
        });
        if let Some(tx) = self.tx.take() {
            // The caller may have gone (a cancelled request); the write stands regardless.
            let _ = tx.send(answer);
        }
    }

    fn fail(&mut self, err: Error) {
        self.held = None;
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(err));
        }
    }
}

/// A mutation, as queued for the writer: one domain's command with its reply.
#[derive(Debug)]
pub(crate) enum Op {
    /// A command on the cache table.
    Cache(CacheOp),
    /// A command on the sessions table (boxed: its records are several times the size of a
    /// cache command, which every queue slot would otherwise carry).
    Session(Box<SessionOp>),
    /// A write-behind of rate-limit state.
    RateLimit(RateLimitOp),
    /// A command on the job queues (boxed, as sessions are: a Dequeue carries its ask).
    Queue(Box<QueueOp>),
    /// Background upkeep: record reads for eviction order, delete a batch of expired rows of
    /// every table, and evict if over the disk bound.
    Upkeep(Reply<Upkept>),
}

impl Op {
    /// Bytes of values this command writes (a batch is bounded by them).
    pub(crate) fn payload_bytes(&self) -> usize {
        match self {
            Op::Cache(op) => op.payload_bytes(),
            Op::Session(op) => op.payload_bytes(),
            Op::Queue(op) => op.payload_bytes(),
            Op::RateLimit(_) | Op::Upkeep(_) => 0,
        }
    }

    /// Whether the command writes several rows, so that a failure part way must undo the
    /// rows before it.
    pub(crate) fn needs_savepoint(&self) -> bool {
        match self {
            Op::Cache(op) => op.needs_savepoint(),
            Op::Session(op) => op.needs_savepoint(),
            Op::RateLimit(op) => op.needs_savepoint(),
            Op::Queue(op) => op.needs_savepoint(),
            Op::Upkeep(_) => true,
        }
    }

    /// The command's reply, whatever its type.
    pub(crate) fn pending(&mut self) -> &mut dyn Pending {
        match self {
            Op::Cache(op) => op.pending(),
            Op::Session(op) => op.pending(),
            Op::RateLimit(op) => op.pending(),
            Op::Queue(op) => op.pending(),
            Op::Upkeep(reply) => reply,
        }
    }
}

/// A message to the writer thread.
#[derive(Debug)]
pub(crate) enum Command {
    /// Run a write and answer when it committed (or failed).
    Write(Op),
    /// Finish what was queued before, checkpoint the WAL and stop.
    Shutdown { reply: oneshot::Sender<Result<()>> },
    /// Answer as soon as the writer takes this from its queue: it is alive and has got
    /// through every batch before it (the watchdog's check).
    Ping { reply: oneshot::Sender<()> },
}

/// The sending end of the writer's queue. Clones share one queue.
#[derive(Debug, Clone)]
pub(crate) struct WriteQueue(mpsc::Sender<Command>);

fn shutting_down() -> Error {
    Error::Unavailable("larder is shutting down".into())
}

impl WriteQueue {
    /// A queue of `capacity` commands, and its receiving end for the writer thread.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self(tx), rx)
    }

    /// Queues the command `make` builds around its reply, and waits until the writer answers
    /// (after its transaction committed).
    pub(crate) async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T> {
        let (reply, answer) = Reply::new();
        self.0
            .send(Command::Write(make(reply)))
            .await
            .map_err(|_| shutting_down())?;
        answer.await.map_err(|_| shutting_down())?
    }

    /// Queues the command `make` builds, and waits until the writer answers it (after its
    /// transaction committed). The receiver is returned at once so that several commands can
    /// be queued before any is waited for, and share commits.
    pub(crate) async fn queue<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let (reply, answer) = Reply::new();
        self.0
            .send(Command::Write(make(reply)))
            .await
            .map_err(|_| shutting_down())?;
        Ok(answer)
    }

    /// Queues a write without waiting for room or for its commit; returns false when the
    /// queue is full or the writer has stopped (the write is then not made).
    pub(crate) fn submit_nowait<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> bool {
        let (reply, _) = Reply::new();
        self.0.try_send(Command::Write(make(reply))).is_ok()
    }

    /// Answers once the writer has taken a ping from its queue (so it has got through every
    /// batch queued before).
    pub(crate) async fn ping(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let gone = || Error::Unavailable("the writer has stopped".into());
        self.0
            .send(Command::Ping { reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    /// Has the writer finish what was queued before, checkpoint the WAL and stop.
    pub(crate) async fn shutdown(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        match self.0.send(Command::Shutdown { reply }).await {
            Ok(()) => done
                .await
                .unwrap_or_else(|_| Err(Error::Internal("writer thread died".into()))),
            Err(_) => Err(Error::Internal("writer thread already stopped".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_sent_only_once_committed() {
        let (mut reply, mut rx) = Reply::<u64>::new();
        reply.hold(7);
        assert!(rx.try_recv().is_err(), "held, not sent");
        reply.answer();
        assert_eq!(rx.try_recv().unwrap().unwrap(), 7);
    }

    #[test]
    fn a_failed_batch_replaces_what_was_held() {
        let (mut reply, mut rx) = Reply::<u64>::new();
        reply.hold(7);
        reply.fail(Error::Unavailable("rolled back".into()));
        assert!(matches!(rx.try_recv().unwrap(), Err(Error::Unavailable(_))));
        // Answering again sends nothing more (and does not panic).
        reply.answer();
    }

    #[test]
    fn a_commands_own_failure_is_its_answer() {
        let (mut reply, mut rx) = Reply::<u64>::new();
        reply.hold_err(Error::FailedPrecondition("not a counter".into()));
        reply.answer();
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(Error::FailedPrecondition(_))
        ));
    }
}
