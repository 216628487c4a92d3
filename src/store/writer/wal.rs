//! When the writer checkpoints the WAL itself, between two batches, so that the WAL restarts
//! from its start under a steady write load.
//!
//! SQLite restarts the WAL (writes from its first frame again) only when a write transaction
//! begins with every frame already copied into the database. The background checkpointer
//! (`checkpoint.rs`) copies every frame it saw, but under a steady load frames arrive while it
//! copies, so the WAL is never fully copied when the next write begins and it would grow until
//! the writer's backstop at [`WRITER_CHECKPOINT_PAGES`] copies a large remainder while every
//! queued write waits. Only the writer can close that gap: nothing is appended between its
//! own checkpoint and its next `BEGIN`. So the two threads share a [`WalProgress`]: the writer
//! publishes the WAL's length after each commit, the checkpointer how far its last checkpoint
//! copied. Once the WAL is [`LONG_WAL_FRAMES`] long and at most [`SMALL_GAP_FRAMES`] are left
//! to copy, the writer runs a PASSIVE checkpoint of that small tail, and its next transaction
//! restarts the WAL. While more than that is left, the checkpointer runs again at once, and
//! each run copies only what arrived during the one before, so the gap shrinks.
//!
//! Durability is untouched: these are ordinary PASSIVE checkpoints, after the batch is
//! committed and answered; the backstop stays for when readers hold the WAL back.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;

use crate::store::schema::WRITER_CHECKPOINT_PAGES;

/// WAL length from which the writer closes a small gap itself. Each restart costs the writer
/// two fsyncs (and the next commit one for the WAL header) whatever the gap, a few ms under
/// load, against 15-60 ms for a backstop at twice this length: restarting from 1,024 frames
/// made restarts seven times as frequent as the backstops they replaced, more stall in total.
pub(crate) const LONG_WAL_FRAMES: i64 = 4096;

/// Most frames the writer copies in its own checkpoint before a backstop is due: with the
/// WAL synced up to the checkpointer's last run, this is a few hundred KiB to sync and copy.
pub(crate) const SMALL_GAP_FRAMES: i64 = 128;

/// What the writer does after a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WalAction {
    /// Nothing: the checkpointer keeps up, or the WAL is short.
    None,
    /// Copy the small tail the checkpointer left, so the next transaction restarts the WAL.
    CopyTail,
    /// The WAL reached the backstop length: checkpoint whatever is left.
    Backstop,
}

/// The writer's decision from the WAL's length after a commit and, when known for this
/// generation of the WAL, how many frames the last checkpoint copied.
pub(crate) fn decide(frames: i64, copied: Option<i64>) -> WalAction {
    if frames >= i64::from(WRITER_CHECKPOINT_PAGES) {
        return WalAction::Backstop;
    }
    match copied {
        Some(copied)
            if frames >= LONG_WAL_FRAMES
                && copied > 0
                && copied <= frames
                && frames - copied <= SMALL_GAP_FRAMES =>
        {
            WalAction::CopyTail
        }
        _ => WalAction::None,
    }
}

/// Whether the checkpointer runs again at once rather than after its pause: its last run
/// copied everything it saw (readers did not hold it back), the WAL is long, and the writer
/// would not take what is left yet. Never once the backstop is due: a PASSIVE checkpoint
/// does not wait for the checkpoint lock, so back-to-back runs would keep the writer's
/// backstop out and let the WAL grow.
pub(crate) fn run_again(frames: i64, seen: i64, copied: i64) -> bool {
    copied == seen
        && frames >= LONG_WAL_FRAMES
        && frames < i64::from(WRITER_CHECKPOINT_PAGES)
        && frames - copied > SMALL_GAP_FRAMES
}

/// The WAL's length and checkpoint progress, shared by the writer and the checkpointer.
///
/// A restart makes frame numbers start again from 1, so the checkpointer's figure counts only
/// for the generation of the WAL it was read in: the writer bumps the generation when the
/// length it sees after a commit falls, and a checkpoint's figure is tagged with the
/// generation read before it began. A figure tagged with an old generation is ignored, which
/// at worst leaves a gap to the next checkpoint or the backstop.
#[derive(Debug, Default)]
pub(crate) struct WalProgress {
    /// Frames in the WAL after the writer's last commit.
    frames: AtomicI64,
    /// Generation in the high 32 bits; frames copied by the last checkpoint in the low 32.
    copied: AtomicU64,
    /// Bumped by the writer (its only writer) when it sees the WAL restart.
    generation: AtomicU64,
}

impl WalProgress {
    /// Frames in the WAL after the writer's last commit.
    pub(crate) fn frames(&self) -> i64 {
        self.frames.load(Ordering::Acquire)
    }

    /// The generation a checkpoint about to begin tags its figure with.
    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire) as u32
    }

    /// Records how far a checkpoint begun in `generation` copied.
    pub(crate) fn copied(&self, generation: u32, copied: i64) {
        let copied = u32::try_from(copied.max(0)).unwrap_or(u32::MAX);
        self.copied.store(
            (u64::from(generation) << 32) | u64::from(copied),
            Ordering::Release,
        );
    }

    /// Records the WAL's length after a commit (the writer's WAL hook figure) and returns what
    /// the writer should do.
    pub(crate) fn committed(&self, frames: i64) -> WalAction {
        let before = self.frames.swap(frames, Ordering::AcqRel);
        if frames < before {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        let generation = self.generation();
        let packed = self.copied.load(Ordering::Acquire);
        let copied = ((packed >> 32) as u32 == generation).then_some((packed & 0xffff_ffff) as i64);
        decide(frames, copied)
    }
}

/// The writer's end of the checkpointer: the hint it sends after a commit and the progress
/// both share.
#[derive(Debug)]
pub(crate) struct CheckpointLink {
    /// Tells the checkpointer a commit happened (never blocks: a pending hint is enough).
    pub(crate) hint: SyncSender<()>,
    /// The WAL's length and how far checkpoints copied.
    pub(crate) progress: Arc<WalProgress>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_wal_is_left_to_the_checkpointer() {
        assert_eq!(decide(100, Some(90)), WalAction::None);
        assert_eq!(
            decide(LONG_WAL_FRAMES - 1, Some(LONG_WAL_FRAMES - 2)),
            WalAction::None
        );
    }

    #[test]
    fn a_long_wal_with_a_small_gap_is_closed_by_the_writer() {
        assert_eq!(
            decide(5000, Some(5000 - SMALL_GAP_FRAMES)),
            WalAction::CopyTail
        );
        assert_eq!(decide(5000, Some(4990)), WalAction::CopyTail);
        assert_eq!(decide(5000, Some(5000)), WalAction::CopyTail);
    }

    #[test]
    fn a_large_gap_or_an_unknown_figure_waits_for_the_checkpointer() {
        assert_eq!(
            decide(5000, Some(5000 - SMALL_GAP_FRAMES - 1)),
            WalAction::None
        );
        assert_eq!(decide(5000, None), WalAction::None);
        assert_eq!(decide(5000, Some(0)), WalAction::None);
        // A figure larger than the WAL is from before a restart.
        assert_eq!(decide(5000, Some(7000)), WalAction::None);
    }

    #[test]
    fn the_backstop_stays_whatever_the_progress() {
        let full = i64::from(WRITER_CHECKPOINT_PAGES);
        assert_eq!(decide(full, None), WalAction::Backstop);
        assert_eq!(decide(full + 10, Some(full)), WalAction::Backstop);
    }

    #[test]
    fn the_checkpointer_runs_again_only_while_it_keeps_up_with_a_long_wal() {
        assert!(run_again(5000, 4500, 4500));
        assert!(!run_again(5000, 4950, 4950), "the writer takes a small gap");
        assert!(!run_again(5000, 4500, 1000), "readers held it back");
        assert!(!run_again(500, 300, 300), "a short WAL waits for the pause");
        let full = i64::from(WRITER_CHECKPOINT_PAGES);
        assert!(!run_again(full, 5000, 5000), "the backstop is due");
    }

    #[test]
    fn a_figure_from_before_a_restart_is_ignored() {
        let p = WalProgress::default();
        assert_eq!(p.committed(4500), WalAction::None);
        let generation = p.generation();
        p.copied(generation, 4500);
        assert_eq!(p.committed(4510), WalAction::CopyTail);
        // The writer's next transaction restarted the WAL.
        assert_eq!(p.committed(3), WalAction::None);
        assert_ne!(p.generation(), generation);
        // A checkpoint begun before the restart reports late: its figure does not count.
        p.copied(generation, 4500);
        assert_eq!(p.committed(4520), WalAction::None);
        p.copied(p.generation(), 4500);
        assert_eq!(p.committed(4530), WalAction::CopyTail);
    }

    /// The premise, on a real WAL: a background checkpoint leaves a gap once more frames
    /// arrive, the WAL then does not restart, and the writer's own checkpoint of the small
    /// gap makes its next transaction restart it.
    #[test]
    fn the_writers_tail_checkpoint_restarts_the_wal() {
        use rusqlite::Connection;
        use std::cell::Cell;

        thread_local! {
            static FRAMES: Cell<i64> = const { Cell::new(0) };
        }
        fn hook(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
            FRAMES.set(i64::from(frames));
            Ok(())
        }
        fn passive(conn: &Connection) -> (i64, i64, i64) {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap()
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
                 CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);",
            )
            .unwrap();
        writer.wal_hook(Some(hook));
        let checkpointer = Connection::open(&path).unwrap();
        let progress = WalProgress::default();
        let mut k = 0;
        let mut commit = |rows: usize| {
            for _ in 0..rows {
                k += 1;
                writer
                    .execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [k])
                    .unwrap();
            }
            progress.committed(FRAMES.get())
        };
        // A long WAL, which the checkpointer copies as far as it sees it.
        while FRAMES.get() < LONG_WAL_FRAMES {
            assert_eq!(commit(50), WalAction::None);
        }
        // A reader's snapshot stands for the point the checkpoint reached when the next
        // frames arrived: it copies up to there.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(commit(5), WalAction::None);
        let generation = progress.generation();
        let (busy, seen, copied) = passive(&checkpointer);
        assert_eq!(busy, 0);
        assert!(
            copied < seen && seen - copied <= SMALL_GAP_FRAMES,
            "{seen} {copied}"
        );
        progress.copied(generation, copied);
        reader.execute_batch("COMMIT").unwrap();
        // The WAL does not restart by itself: frames are left to copy.
        let before = FRAMES.get();
        assert_eq!(commit(1), WalAction::CopyTail);
        assert!(FRAMES.get() > before);
        // The writer copies the small tail; its next transaction starts the WAL again.
        let (busy, seen, copied) = passive(&writer);
        assert_eq!((busy, copied), (0, seen));
        progress.copied(progress.generation(), copied);
        assert_eq!(commit(1), WalAction::None);
        assert!(
            FRAMES.get() < 10,
            "the WAL restarted: {} frames",
            FRAMES.get()
        );
        assert_ne!(progress.generation(), generation);
    }
}
