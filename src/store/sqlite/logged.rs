//! Log mode: while this process is the database's sole writer, a small batch is numbered in
//! memory, written to the commit log with one `write` and acknowledged; a thread of its own
//! applies the log to SQLite in large transactions a little later.
//!
//! Why: at 10,000 msg/s a batch holds one or two messages, and a SQLite commit of one message
//! writes every page it touched (about seven) and takes the WAL-index locks: it cost about
//! 60 us of CPU and set the latency tail (BENCHMARKS.md, issue 23). One `write` costs a few.
//!
//! What keeps it correct:
//! - **Numbering.** The sequencer hands out seqs and msg ids from its caches under its lock;
//!   the caches are authoritative because nothing else writes messages while the log is in use
//!   (`set_sole_writer`; the log's `flock` also keeps a second store out).
//! - **Resends.** A `(from_id, client_msg_id)` is looked for among the pending messages first,
//!   then in SQLite in a read snapshot opened after that look: a message leaves the pending set
//!   only after its commit, so it is always found in one or the other.
//! - **Reads.** Every read of messages, conversations or cursors first applies what is pending
//!   (`settle`): an acknowledged message is visible to any read that starts after the ack.
//!   Writes that must not race a numbering (a group join's seq, the visitor purge) hold the
//!   sequencer while they run (`exclusive_tx`).
//! - **Crashes.** The log is applied at the next start (`enter_log_mode`): records past the
//!   database's `MAX(msg_id)` are applied, the rest were already. The log is emptied only when
//!   nothing in it is pending, and before anything deletes messages (`exclusive_tx`).
//! - **Upgrades.** Before the listeners go to a successor, everything is applied and the log let
//!   go (`leave_log_mode`); the successor writes straight to SQLite (numbering inside SQLite's
//!   write lock, as two writers must) until its predecessor has exited.
//! - **Large batches** (saturating load) go straight to SQLite after what is pending: a large
//!   commit is already cheap per message, and the log would only add a copy.

use super::commit_log::{self, CommitLog, Logged};
use super::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Batches up to this many messages go through the log; larger ones straight to SQLite.
pub(super) const LOG_MAX_BATCH: usize = 256;

/// At most this many messages wait in the log: past it a batch goes straight to SQLite (after
/// applying the rest), which bounds the memory of the pending set if the apply thread lags.
const MAX_PENDING: usize = 16_384;

/// The apply thread gathers messages this long after the first one before it applies them...
const APPLY_EVERY: Duration = Duration::from_millis(50);

/// ...unless this many are pending.
const APPLY_AT: usize = 2048;

/// Most messages applied in one transaction.
const APPLY_CHUNK: usize = 8192;

/// A log longer than this starts over after the next apply round even under steady traffic
/// (see `start_over`): at 10,000 msg/s of 64-byte texts, about every 10 s.
const LOG_KEEP_BYTES: u64 = 8 << 20;

fn log_failed(e: std::io::Error) -> StoreError {
    StoreError::unavailable(format!("commit log: {e}"))
}

/// The messages in the log not yet in SQLite, oldest first, and their client ids for resends.
#[derive(Default)]
pub(super) struct Pending {
    queue: Mutex<PendingQueue>,
    /// The queue's length, read without its lock by `settle`'s fast path.
    count: AtomicUsize,
    /// Messages ever queued and ever applied (`settle` waits for the ones queued before it).
    queued: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
    /// Tests hold the apply thread off to see the pending state (and to leave a log behind).
    #[cfg(test)]
    paused: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct PendingQueue {
    messages: VecDeque<Logged>,
    /// sender -> client id -> msg id (the message is in `messages`, which is in msg id order).
    by_client: HashMap<u64, HashMap<String, u64>>,
}

impl PendingQueue {
    fn message(&self, msg_id: u64) -> Option<&StoredMessage> {
        let at = self
            .messages
            .binary_search_by_key(&msg_id, |l| l.message.msg_id)
            .ok()?;
        Some(&self.messages[at].message)
    }
}

impl Pending {
    fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// The apply thread is held off (tests only).
    fn paused(&self) -> bool {
        #[cfg(test)]
        return self.paused.load(Ordering::Acquire);
        #[cfg(not(test))]
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingQueue> {
        lock_ignoring_poison(&self.queue)
    }

    /// Up to `APPLY_CHUNK` of the oldest messages (copies: they stay visible until committed).
    fn oldest(&self) -> Vec<Logged> {
        self.lock()
            .messages
            .iter()
            .take(APPLY_CHUNK)
            .cloned()
            .collect()
    }

    /// The oldest `n` are in SQLite now.
    fn applied(&self, n: usize) {
        let mut q = self.lock();
        let n = n.min(q.messages.len());
        for _ in 0..n {
            let Some(l) = q.messages.pop_front() else {
                break;
            };
            if let Some(cmid) = &l.client_msg_id {
                if let Some(sent) = q.by_client.get_mut(&l.message.from_id) {
                    sent.remove(cmid.as_str());
                    if sent.is_empty() {
                        q.by_client.remove(&l.message.from_id);
                    }
                }
            }
        }
        self.done.fetch_add(n as u64, Ordering::AcqRel);
        self.count.store(q.messages.len(), Ordering::Release);
    }
}

impl SqliteStore {
    /// Whether a batch of `n` goes through the log.
    pub(super) fn fits_the_log(&self, seq: &Sequencer, n: usize) -> bool {
        seq.log.is_some() && n <= LOG_MAX_BATCH && self.pending.len() + n <= MAX_PENDING
    }

    pub(super) fn wake_checkpointer(&self) {
        if let Some(wake) = &self.checkpointer {
            // Full: a wake-up is already pending, which covers this commit too.
            let _ = wake.try_send(());
        }
    }

    fn wake_applier(&self) {
        if let Some(wake) = lock_ignoring_poison(&self.applier).as_ref() {
            let _ = wake.try_send(());
        }
    }

    /// Numbers a small batch, writes it to the log and returns the outcomes (see the module).
    pub(super) fn append_logged(
        &self,
        seq: &mut Sequencer,
        batch: &[NewMessage],
    ) -> StoreResult<Vec<Appended>> {
        let Sequencer {
            last_seq,
            next_msg_id,
            log,
            probe,
            record,
        } = seq;
        let (Some(log), Some(probe)) = (log.as_mut(), probe.as_mut()) else {
            return Err(StoreError::unavailable("the commit log is not open"));
        };
        // Resends among the pending messages first (see the module on the order).
        let mut earlier: Vec<Option<StoredMessage>> = {
            let q = self.pending.lock();
            batch
                .iter()
                .map(|m| {
                    let cmid = m.client_msg_id.as_deref()?;
                    let id = *q.by_client.get(&m.from_id)?.get(cmid)?;
                    q.message(id).cloned()
                })
                .collect()
        };
        let mut undo: Vec<(&str, Option<u64>)> = Vec::new();
        // The lookups run in one read snapshot. (BEGIN and ROLLBACK as cached statements:
        // rusqlite's `transaction()` parses both again for every batch.)
        probe
            .prepare_cached("BEGIN")
            .and_then(|mut b| b.execute([]))
            .map_err(unavailable)?;
        let looked_up = lookups(
            probe,
            batch,
            &mut earlier,
            last_seq,
            &mut undo,
            *next_msg_id,
        );
        let ended = probe
            .prepare_cached("ROLLBACK")
            .and_then(|mut r| r.execute([]));
        let first_id = looked_up?;
        ended.map_err(unavailable)?;
        // Number in arrival order; a resend of a message earlier in this batch gets that one.
        let mut out: Vec<Appended> = Vec::with_capacity(batch.len());
        let mut fresh: Vec<(usize, u64, u64)> = Vec::with_capacity(batch.len());
        let mut id = first_id;
        for (at, m) in batch.iter().enumerate() {
            if let Some(message) = earlier[at].take() {
                out.push(Appended {
                    message,
                    duplicate: true,
                });
                continue;
            }
            let twin = m.client_msg_id.as_deref().and_then(|cmid| {
                fresh.iter().find(|&&(i, _, _)| {
                    batch[i].from_id == m.from_id && batch[i].client_msg_id.as_deref() == Some(cmid)
                })
            });
            if let Some(&(i, _, _)) = twin {
                let message = out[i].message.clone();
                out.push(Appended {
                    message,
                    duplicate: true,
                });
                continue;
            }
            let last = last_seq
                .get_mut(m.conv_id.as_str())
                .expect("looked up above");
            if !undo.iter().any(|(c, _)| *c == m.conv_id) {
                undo.push((m.conv_id.as_str(), Some(*last)));
            }
            *last += 1;
            fresh.push((at, id, *last));
            out.push(Appended {
                message: m.stored(id, *last),
                duplicate: false,
            });
            id += 1;
        }
        if fresh.is_empty() {
            return Ok(out);
        }
        commit_log::encode(record, fresh.iter().map(|&(at, id, s)| (&batch[at], id, s)));
        if let Err(e) = log.append(record) {
            // Not acknowledged: the numbers go back.
            for (conv, before) in undo {
                match before {
                    Some(s) => {
                        last_seq.insert(conv.to_owned(), s);
                    }
                    None => {
                        last_seq.remove(conv);
                    }
                }
            }
            return Err(log_failed(e));
        }
        *next_msg_id = Some(id);
        let was_empty = {
            let mut q = self.pending.lock();
            let was_empty = q.messages.is_empty();
            for &(at, _, _) in &fresh {
                let m = &batch[at];
                let stored = out[at].message.clone();
                if let Some(cmid) = &m.client_msg_id {
                    q.by_client
                        .entry(m.from_id)
                        .or_default()
                        .insert(cmid.clone(), stored.msg_id);
                }
                q.messages.push_back(Logged {
                    message: stored,
                    client_msg_id: m.client_msg_id.clone(),
                });
            }
            self.pending
                .queued
                .fetch_add(fresh.len() as u64, Ordering::AcqRel);
            self.pending
                .count
                .store(q.messages.len(), Ordering::Release);
            was_empty
        };
        let len = self.pending.len();
        if was_empty || (len >= APPLY_AT && len.saturating_sub(fresh.len()) < APPLY_AT) {
            self.wake_applier();
        }
        Ok(out)
    }

    /// Applies every pending message and empties the log (the caller holds the sequencer, so
    /// nothing new arrives meanwhile).
    pub(super) fn apply_all(&self, w: &mut Writer, seq: &mut Sequencer) -> StoreResult<()> {
        apply_everything(w, &self.pending, self.checkpointer.as_ref())?;
        if let Some(log) = seq.log.as_mut() {
            log.truncate().map_err(log_failed)?;
        }
        Ok(())
    }

    /// Makes every message acknowledged so far visible to SQLite reads. (Only those: under a
    /// steady stream of new ones, applying until nothing is pending might never end.)
    pub(super) fn settle(&self) -> StoreResult<()> {
        if self.pending.len() == 0 {
            return Ok(());
        }
        let target = self.pending.queued.load(Ordering::Acquire);
        let mut w = self.lock_writer();
        while self.pending.done.load(Ordering::Acquire) < target {
            if apply_pending(&mut w, &self.pending, self.checkpointer.as_ref())? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Runs `f` in a write transaction (`with_tx`) with the log applied and no message being
    /// numbered; `forget`: `f` deletes messages or conversations, so the sequencer reads its
    /// numbers afresh afterwards.
    pub(super) fn exclusive_tx<T>(
        &self,
        forget: bool,
        f: impl FnOnce(&Transaction) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut seq = self.lock_sequencer();
        {
            let mut w = self.lock_writer();
            self.apply_all(&mut w, &mut seq)?;
        }
        let result = self.with_tx(f);
        if forget {
            seq.forget();
        }
        result
    }

    /// Log mode on: lock the log, apply what a previous process left in it, start the apply
    /// thread. Stays off (logged) if another store holds the log.
    pub(super) fn enter_log_mode(&self) -> StoreResult<()> {
        let mut seq = self.lock_sequencer();
        if seq.log.is_some() {
            return Ok(());
        }
        let Some(mut log) =
            CommitLog::lock(&self.path, self.synchronous_full).map_err(log_failed)?
        else {
            log::warn!(
                "store: {} is held by another store on this database; writing straight to SQLite",
                CommitLog::path_for(&self.path).display()
            );
            return Ok(());
        };
        let left = log.read_all().map_err(log_failed)?;
        let mut w = self.lock_writer();
        if !left.is_empty() {
            self.replay(&mut w, left)?;
        }
        log.truncate().map_err(log_failed)?;
        seq.forget();
        seq.probe = Some(Self::connect(&self.path, self.synchronous_full)?);
        seq.log = Some(log);
        drop(w);
        let mut applier = lock_ignoring_poison(&self.applier);
        if applier.is_none() {
            *applier = Some(self.start_applier()?);
        }
        log::debug!("store: commit log on");
        Ok(())
    }

    /// Applies what a previous process left in the log (see `enter_log_mode`).
    fn replay(&self, w: &mut Writer, left: Vec<Logged>) -> StoreResult<()> {
        let max: Option<i64> = w
            .conn
            .query_row("SELECT MAX(msg_id) FROM messages", [], |r| r.get(0))
            .map_err(unavailable)?;
        let max = max.unwrap_or(0) as u64;
        // Records up to MAX(msg_id) were applied before the log could be emptied: each must
        // be in the table as numbered. One that is not was numbered by someone else too.
        let (applied, missing): (Vec<Logged>, Vec<Logged>) =
            left.into_iter().partition(|l| l.message.msg_id <= max);
        let mut foreign = 0;
        {
            // (Not the body: a recall blanks it.)
            let mut stored = w
                .conn
                .prepare_cached(
                    "SELECT 1 FROM messages WHERE msg_id = ?1 AND conv_id = ?2 AND seq = ?3
                     AND from_id = ?4 AND created_at = ?5 AND client_msg_id IS ?6",
                )
                .map_err(unavailable)?;
            for l in &applied {
                let m = &l.message;
                let same = stored
                    .exists(params![
                        m.msg_id as i64,
                        m.conv_id,
                        m.seq as i64,
                        m.from_id as i64,
                        m.created_at,
                        l.client_msg_id
                    ])
                    .map_err(unavailable)?;
                if !same {
                    foreign += 1;
                }
            }
        }
        if foreign > 0 || !missing.is_empty() {
            log::warn!(
                "store: applying {} acknowledged messages from the commit log (the last run did not stop cleanly)",
                missing.len()
            );
            let replayed = if foreign > 0 {
                Err(StoreError::Conflict(
                    "messages in the log were numbered again by another writer",
                ))
            } else {
                missing
                    .chunks(APPLY_CHUNK)
                    .try_for_each(|chunk| apply_records(w, chunk))
            };
            if let Err(e) = replayed {
                // Only another writer numbering the same messages gets here (an older
                // version run on this data after a crash, say). The records are kept aside
                // for the operator rather than holding up the start.
                let aside = CommitLog::path_for(&self.path)
                    .with_extension(format!("commitlog.unapplied-{}", now_ms() / 1000));
                std::fs::copy(CommitLog::path_for(&self.path), &aside).map_err(log_failed)?;
                log::error!(
                    "store: the commit log could not be applied ({e}); its records are kept in {}",
                    aside.display()
                );
            }
        }
        Ok(())
    }

    /// Log mode off: everything applied, the log emptied and let go.
    pub(super) fn leave_log_mode(&self) -> StoreResult<()> {
        let mut seq = self.lock_sequencer();
        if seq.log.is_none() {
            return Ok(());
        }
        let mut w = self.lock_writer();
        self.apply_all(&mut w, &mut seq)?;
        seq.log = None;
        seq.probe = None;
        log::debug!("store: commit log off");
        Ok(())
    }

    /// The apply thread: after the first pending message it waits `APPLY_EVERY` (less if
    /// `APPLY_AT` are pending), applies everything, and empties the log when nothing new came
    /// meanwhile. It runs at a lower priority than the reactor and the persister, and in a
    /// round of a light load it steps off the core while they have work: it is off every
    /// message's path, and on a shared core its transactions would delay them.
    fn start_applier(&self) -> StoreResult<mpsc::SyncSender<()>> {
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let writer = self.writer.clone();
        let sequencer = self.sequencer.clone();
        let pending = self.pending.clone();
        let checkpointer = self.checkpointer.clone();
        let cached = self.cached_conversations;
        std::thread::Builder::new()
            .name("sqlite-apply".into())
            .spawn(move || {
                lower_thread_priority();
                let mut open = true;
                while open {
                    if pending.len() == 0 && woken.recv().is_err() {
                        break;
                    }
                    let since = Instant::now();
                    while pending.len() < APPLY_AT {
                        let left = APPLY_EVERY.saturating_sub(since.elapsed());
                        match woken.recv_timeout(left) {
                            Ok(()) => {}
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => {
                                open = false;
                                break;
                            }
                        }
                    }
                    while !pending.paused() {
                        // A round of a light load makes way for the reactor and the persister
                        // (`pacing`): they are waiting for the core, not for this round. Under a
                        // heavy load the rounds run straight through, and keep up.
                        super::pacing::set_background(pending.len() < APPLY_AT);
                        let applied = {
                            let mut w = lock_ignoring_poison(&writer);
                            apply_pending(&mut w, &pending, checkpointer.as_ref())
                        };
                        match applied {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) => {
                                // Still in the log and still pending: tried again next round,
                                // and reads report the failure meanwhile.
                                log::error!("store: applying the commit log failed: {e}");
                                std::thread::sleep(APPLY_EVERY);
                                break;
                            }
                        }
                    }
                    // Straight through: `start_over` may apply with the sequencer held.
                    super::pacing::set_background(false);
                    if !pending.paused() {
                        start_over(&writer, &sequencer, &pending, checkpointer.as_ref(), cached);
                    }
                }
            })
            .map_err(|e| StoreError::unavailable(format!("apply thread: {e}")))?;
        Ok(wake)
    }
}

/// A batch's lookups in SQLite, in the probe's snapshot: the stored original of each resend not
/// found pending (into `earlier`), the last seq of conversations the cache lacks (inserted,
/// noted in `undo`), and the first free msg id. Returns that id.
fn lookups<'b>(
    probe: &Connection,
    batch: &'b [NewMessage],
    earlier: &mut [Option<StoredMessage>],
    last_seq: &mut HashMap<String, u64>,
    undo: &mut Vec<(&'b str, Option<u64>)>,
    next_msg_id: Option<u64>,
) -> StoreResult<u64> {
    let mut find_dup = probe
        .prepare_cached(&format!(
            "SELECT {} FROM messages WHERE from_id = ?1 AND client_msg_id = ?2",
            super::messages::MSG_COLS
        ))
        .map_err(unavailable)?;
    for (m, found) in batch.iter().zip(earlier.iter_mut()) {
        if let (None, Some(cmid)) = (&found, m.client_msg_id.as_deref()) {
            *found = find_dup
                .query_row(params![m.from_id as i64, cmid], super::messages::msg_row)
                .optional()
                .map_err(unavailable)?;
        }
    }
    let mut get_seq = probe
        .prepare_cached("SELECT last_seq FROM conversations WHERE conv_id = ?1")
        .map_err(unavailable)?;
    for m in batch {
        if !last_seq.contains_key(m.conv_id.as_str()) {
            // Nothing of this conversation is pending (the cache is only emptied with nothing
            // pending), so the table has its last seq.
            let s = get_seq
                .query_row(params![m.conv_id], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(unavailable)?
                .unwrap_or(0) as u64;
            last_seq.insert(m.conv_id.clone(), s);
            undo.push((m.conv_id.as_str(), None));
        }
    }
    match next_msg_id {
        Some(id) => Ok(id),
        None => {
            let last: i64 = probe
                .prepare_cached(super::messages::LAST_MSG_ID)
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(unavailable)?;
            Ok(last as u64 + 1)
        }
    }
}

/// After an apply round: empties the log if nothing is pending. Under steady traffic something
/// always is (what arrived while the round applied), so once the log is past `LOG_KEEP_BYTES`
/// those few are applied with the sequencer held, and the log starts over: otherwise it would
/// only grow (about 100 bytes per message, for as long as the traffic lasts). With nothing
/// pending, the caches are bounded to `cached` conversations too.
fn start_over(
    writer: &Mutex<Writer>,
    sequencer: &Mutex<Sequencer>,
    pending: &Pending,
    checkpointer: Option<&mpsc::SyncSender<()>>,
    cached: usize,
) {
    // The sequencer first, then the writer: the order every path takes them in.
    let mut seq = lock_ignoring_poison(sequencer);
    let Some(log) = seq.log.as_mut() else {
        return;
    };
    if pending.len() > 0 && log.len() > LOG_KEEP_BYTES {
        let mut w = lock_ignoring_poison(writer);
        if let Err(e) = apply_everything(&mut w, pending, checkpointer) {
            log::error!("store: applying the commit log failed: {e}");
            return;
        }
    }
    if pending.len() == 0 {
        if let Err(e) = log.truncate() {
            log::warn!("store: emptying the commit log failed: {e}");
        }
        seq.bound(cached);
        lock_ignoring_poison(writer).bound(cached);
    }
}

/// Applies everything pending, a transaction per `APPLY_CHUNK`.
fn apply_everything(
    w: &mut Writer,
    pending: &Pending,
    checkpointer: Option<&mpsc::SyncSender<()>>,
) -> StoreResult<()> {
    while apply_pending(w, pending, checkpointer)? > 0 {}
    Ok(())
}

/// Applies up to `APPLY_CHUNK` of `pending`'s oldest messages; returns how many.
fn apply_pending(
    w: &mut Writer,
    pending: &Pending,
    checkpointer: Option<&mpsc::SyncSender<()>>,
) -> StoreResult<usize> {
    let chunk = pending.oldest();
    if chunk.is_empty() {
        return Ok(0);
    }
    apply_records(w, &chunk)?;
    pending.applied(chunk.len());
    if let Some(wake) = checkpointer {
        let _ = wake.try_send(());
    }
    Ok(chunk.len())
}

/// Writes numbered messages to SQLite in one transaction, with their conversations' last seqs,
/// the read-cursor rows of one-to-one conversations and each sender's read cursor (what the
/// direct path does for a batch it numbers itself).
fn apply_records(w: &mut Writer, records: &[Logged]) -> StoreResult<()> {
    let Writer { conn, cursors } = w;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let mut tail = super::messages::BatchTail::default();
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO messages (conv_id, seq, msg_id, client_msg_id, from_id, to_id,
                 chat_type, msg_type, body, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(unavailable)?;
        // In conversation order, as the direct path writes (see there).
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.sort_by(|&a, &b| records[a].message.conv_id.cmp(&records[b].message.conv_id));
        for run in order.chunk_by(|&a, &b| records[a].message.conv_id == records[b].message.conv_id)
        {
            let conv = records[run[0]].message.conv_id.as_str();
            let known: &[u64] = cursors.get(conv).map_or(&[], |users| users.as_slice());
            tail.start_run();
            for &at in run {
                let (m, cmid) = (&records[at].message, &records[at].client_msg_id);
                super::messages::insert_row(&mut insert, m, cmid.as_deref())?;
                // Between rows too: binding and the row's bookkeeping are ours, not SQLite's.
                super::pacing::pace();
                tail.message(
                    conv,
                    known,
                    (m.chat_type, m.from_id, m.to_id),
                    (m.seq, m.msg_id),
                );
            }
            tail.last(conv, &records[run[run.len() - 1]].message);
        }
        tail.write(&tx)?;
    }
    tx.commit().map_err(unavailable)?;
    tail.remember_cursors(cursors);
    Ok(())
}

/// Lowers the calling thread's scheduling priority (nice 10). Unprivileged and per thread on
/// Linux; a failure only leaves the default.
fn lower_thread_priority() {
    // SAFETY: setpriority on the calling thread's own id.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if rc != 0 {
        log::debug!(
            "store: could not lower the apply thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::messages::tests::{msg, runs};
    use super::super::tests::batch;
    use super::*;

    impl SqliteStore {
        fn pause_applier(&self) {
            self.pending.paused.store(true, Ordering::Release);
        }

        /// As if the process died now: the log is let go as it is, nothing pending applied.
        fn crash(&self) {
            self.pause_applier();
            self.lock_sequencer().log = None;
        }

        /// What the apply thread does after an apply round.
        fn end_round(&self) {
            start_over(
                &self.writer,
                &self.sequencer,
                &self.pending,
                None,
                self.cached_conversations,
            );
        }

        /// Waits until the apply thread has applied everything and emptied the log.
        fn wait_for_the_apply_thread(&self) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while (self.pending.len() > 0 || self.log_bytes() > 0) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!((self.pending.len(), self.log_bytes()), (0, 0));
        }

        fn log_bytes(&self) -> u64 {
            std::fs::metadata(CommitLog::path_for(&self.path)).map_or(0, |m| m.len())
        }
    }

    fn logged(dir: &tempfile::TempDir) -> SqliteStore {
        let s = SqliteStore::open(&dir.path().join("t.db"), false).unwrap();
        s.set_sole_writer(true).unwrap();
        s
    }

    fn seqs(s: &SqliteStore, conv: &str) -> Vec<(u64, u64)> {
        let ms = s.sync(conv, 0, 1000).unwrap();
        ms.iter().map(|m| (m.seq, m.msg_id)).collect()
    }

    #[test]
    fn a_small_batch_is_logged_then_read_back_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(&dir);
        s.pause_applier();
        let out = s.append_batch(&batch(1, 3, "a")).unwrap();
        let out2 = s.append_batch(&batch(1, 2, "b")).unwrap();
        assert_eq!(s.pending.len(), 5);
        assert!(s.log_bytes() > 0);
        assert_eq!(
            (out[0].message.msg_id, out[0].message.seq),
            (1, 1),
            "numbered from the empty database"
        );
        assert_eq!(
            (out2[1].message.msg_id, out2[1].message.seq),
            (5, 2),
            "the second batch continues ids and the conversation's seqs"
        );
        // A read applies what is pending first.
        assert_eq!(seqs(&s, "p_1_1001"), vec![(1, 2), (2, 5)]);
        assert_eq!(s.pending.len(), 0);
        let listed = s.conversations(1, 10).unwrap();
        assert_eq!(listed.len(), 3);
        assert!(
            listed.iter().all(|c| c.read_seq == c.last_seq),
            "the sender read what they sent"
        );
        assert_eq!(s.conversations(1_001, 10).unwrap()[0].last_seq, 2);
        assert_eq!(s.read_count("p_1_1001", 2).unwrap(), 1);
    }

    #[test]
    fn resends_are_found_pending_and_applied() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(&dir);
        s.pause_applier();
        let first = s.append_batch(&batch(1, 1, "a")).unwrap();
        let again = s.append_batch(&batch(1, 1, "a")).unwrap();
        assert!(again[0].duplicate);
        assert_eq!(again[0].message, first[0].message);
        // Twice in one batch: the second gets the first.
        let twins = [batch(2, 1, "t"), batch(2, 1, "t")].concat();
        let out = s.append_batch(&twins).unwrap();
        assert!(!out[0].duplicate && out[1].duplicate);
        assert_eq!(out[1].message, out[0].message);
        s.settle().unwrap();
        let after = s.append_batch(&batch(1, 1, "a")).unwrap();
        assert!(after[0].duplicate);
        assert_eq!(after[0].message, first[0].message);
        assert_eq!(seqs(&s, "p_1_1000"), vec![(1, 1)]);
        assert_eq!(seqs(&s, "p_2_1000"), vec![(1, 2)]);
    }

    #[test]
    fn a_crash_leaves_the_log_to_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let a = logged(&dir);
        a.append_batch(&batch(1, 2, "applied")).unwrap();
        a.settle().unwrap();
        a.pause_applier();
        let mut acked = Vec::new();
        for round in 0..3 {
            acked.extend(a.append_batch(&batch(1, 2, &format!("r{round}"))).unwrap());
        }
        assert_eq!(a.pending.len(), 6);
        a.crash();
        let b = logged(&dir);
        assert_eq!(b.log_bytes(), 0, "applied at the start and emptied");
        let got = b.sync("p_1_1000", 0, 100).unwrap();
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        for m in acked.iter().map(|a| &a.message) {
            let stored = b
                .message(m.msg_id)
                .unwrap()
                .expect("acknowledged before the crash");
            assert_eq!(&stored, m);
        }
        // A resend of a replayed message is still a duplicate; new ones continue.
        let again = b.append_batch(&batch(1, 1, "r2")).unwrap();
        assert!(again[0].duplicate);
        let next = b.append_batch(&batch(1, 1, "new")).unwrap();
        assert_eq!(next[0].message.seq, 5);
        assert_eq!(
            next[0].message.msg_id,
            acked.last().unwrap().message.msg_id + 1
        );
        assert_eq!(b.conversations(1_000, 10).unwrap()[0].last_seq, 5);
        drop(a);
    }

    /// If something else numbered the same messages meanwhile (an older version run on the
    /// data after a crash), the log cannot be applied: it is kept aside and the start goes on.
    #[test]
    fn a_log_that_no_longer_fits_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let a = logged(&dir);
        a.pause_applier();
        a.append_batch(&batch(1, 2, "logged")).unwrap();
        a.crash();
        let older = SqliteStore::open(&a.path, false).unwrap();
        older.append_batch(&batch(1, 2, "direct")).unwrap();
        drop(older);
        let b = logged(&dir);
        assert_eq!(b.log_bytes(), 0);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(".commitlog.unapplied-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(aside[0].metadata().unwrap().len() > 0);
        let bodies: Vec<String> = b
            .sync("p_1_1000", 0, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(bodies, vec!["\"direct 0\""]);
        assert!(b.lock_sequencer().log.is_some(), "log mode on");
        drop(a);
    }

    #[test]
    fn a_large_batch_goes_straight_to_sqlite_after_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(&dir);
        s.pause_applier();
        s.append_batch(&batch(1, 2, "small")).unwrap();
        let big = batch(1, LOG_MAX_BATCH as u64 + 10, "big");
        let out = s.append_batch(&big).unwrap();
        assert_eq!(s.pending.len(), 0);
        assert_eq!(s.log_bytes(), 0);
        assert_eq!(
            out[0].message.seq, 2,
            "after the pending message of its conversation"
        );
        assert_eq!(out[0].message.msg_id, 3);
        s.append_batch(&batch(1, 1, "after")).unwrap();
        assert_eq!(s.pending.len(), 1, "small batches use the log again");
        assert_eq!(
            seqs(&s, "p_1_1000"),
            vec![(1, 1), (2, 3), (3, 3 + big.len() as u64)]
        );
    }

    /// The checkpointer's rounds make way only under a light load: a batch too large
    /// for the log tells it the load is heavy (it clears the mark at its next round), and so
    /// does a small one that finds the log full.
    #[test]
    fn a_batch_the_log_cannot_take_marks_a_heavy_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("t.db"), false).unwrap();
        s.checkpointer = None; // nothing clears the mark
        s.set_sole_writer(true).unwrap();
        let heavy = || s.heavy_load.load(Ordering::Relaxed);
        s.append_batch(&batch(1, LOG_MAX_BATCH as u64, "fits"))
            .unwrap();
        assert!(!heavy(), "a batch the log takes is not a heavy load");
        s.append_batch(&batch(2, LOG_MAX_BATCH as u64 + 1, "big"))
            .unwrap();
        assert!(heavy());
        s.heavy_load.store(false, Ordering::Relaxed);
        // The apply thread held off until the log is full.
        s.pause_applier();
        let mut conv = 3;
        while s.pending.len() < MAX_PENDING {
            let n = (MAX_PENDING - s.pending.len()).min(LOG_MAX_BATCH);
            s.append_batch(&batch(conv, n as u64, "fill")).unwrap();
            conv += 1;
        }
        assert_eq!(s.pending.len(), MAX_PENDING, "the log is full");
        assert!(!heavy(), "batches the log took");
        s.append_batch(&batch(conv, 1, "small")).unwrap();
        assert_eq!(
            s.pending.len(),
            0,
            "the small batch went straight to SQLite"
        );
        assert!(heavy(), "a full log is a heavy load");
    }

    /// The persister's call gives the same bodies on both paths: the log's (which reads the
    /// batch's bodies) and the direct one (which moves them into the outcomes).
    #[test]
    fn a_spent_batch_answers_with_its_bodies_on_either_path() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(&dir);
        s.pause_applier();
        for n in [2, LOG_MAX_BATCH as u64 + 10] {
            let expected = batch(1, n, &format!("n{n}"));
            let mut spent = expected.clone();
            let out = s.append_batch_spending(&mut spent).unwrap();
            let bodies: Vec<&str> = out.iter().map(|a| a.message.body.as_str()).collect();
            let sent: Vec<&str> = expected.iter().map(|m| m.body.as_str()).collect();
            assert_eq!(bodies, sent, "{n}");
            assert!(out.iter().all(|a| !a.duplicate));
        }
        assert_eq!(
            s.pending.len(),
            0,
            "the large batch applied the small one first"
        );
        let stored: Vec<String> = s
            .sync("p_1_1000", 0, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        let big = LOG_MAX_BATCH + 10;
        assert_eq!(
            stored,
            vec!["\"n2 0\"".to_string(), format!("\"n{big} 0\"")]
        );
    }

    #[test]
    fn leaving_log_mode_applies_everything_and_lets_the_log_go() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(&dir);
        s.pause_applier();
        s.append_batch(&batch(1, 3, "a")).unwrap();
        s.set_sole_writer(false).unwrap();
        assert_eq!(s.pending.len(), 0);
        assert_eq!(s.log_bytes(), 0);
        assert!(CommitLog::lock(&s.path, false).unwrap().is_some(), "let go");
        // Another store on the file now writes beside this one, both straight to SQLite.
        let other = SqliteStore::open(&s.path, false).unwrap();
        other.append_batch(&batch(1, 1, "b")).unwrap();
        s.append_batch(&batch(1, 1, "c")).unwrap();
        assert_eq!(s.pending.len(), 0);
        assert_eq!(seqs(&s, "p_1_1000"), vec![(1, 1), (2, 4), (3, 5)]);
        drop(other);
        // And takes the log back once it is alone.
        s.set_sole_writer(true).unwrap();
        s.append_batch(&batch(1, 1, "d")).unwrap();
        assert_eq!(s.pending.len(), 1);
        assert_eq!(seqs(&s, "p_1_1000").last(), Some(&(4, 6)));
    }

    /// Under steady traffic something is always pending after a round: past its size bound the
    /// log still starts over, with nothing acknowledged lost.
    #[test]
    fn the_log_starts_over_under_steady_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(&dir);
        s.pause_applier();
        let body = "x".repeat(2000);
        let mut n = 0;
        while s.log_bytes() <= LOG_KEEP_BYTES {
            let mut b = batch(1, 200, &format!("r{n}"));
            b.iter_mut().for_each(|m| m.body = format!("\"{body}\""));
            s.append_batch(&b).unwrap();
            n += 1;
        }
        // A round applied all of those; two more batches came in meanwhile.
        s.settle().unwrap();
        s.append_batch(&batch(2, 3, "late")).unwrap();
        s.append_batch(&batch(3, 3, "late")).unwrap();
        assert!(s.log_bytes() > LOG_KEEP_BYTES);
        s.end_round();
        assert_eq!((s.pending.len(), s.log_bytes()), (0, 0));
        assert_eq!(seqs(&s, "p_3_1002"), vec![(1, n * 200 + 6)]);
        // Below the bound, a round that leaves something pending keeps the log.
        s.pause_applier();
        s.append_batch(&batch(4, 2, "a")).unwrap();
        s.settle().unwrap();
        s.append_batch(&batch(4, 2, "b")).unwrap();
        s.end_round();
        assert_eq!(s.pending.len(), 2);
        assert!(s.log_bytes() > 0);
    }

    #[test]
    fn a_second_store_cannot_take_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(&dir);
        let other = logged(&dir);
        assert!(s.lock_sequencer().log.is_some());
        assert!(other.lock_sequencer().log.is_none());
    }

    /// The last-seq and cursor-row caches start over past their bound (in log mode once nothing
    /// is pending, after an apply round; on the direct path before a batch), and numbering goes
    /// on from the tables.
    #[test]
    fn the_caches_start_over_past_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("t.db"), false).unwrap();
        s.cached_conversations = 4;
        s.set_sole_writer(true).unwrap();
        let ten = |tag: &str| batch(1, 10, tag);
        for i in 0..10 {
            s.append_batch(&ten(&format!("a{i}"))[i..=i]).unwrap();
        }
        s.wait_for_the_apply_thread();
        assert!(s.lock_sequencer().last_seq.len() <= 4);
        assert!(s.lock_writer().cursors.len() <= 4);
        let next = s.append_batch(&ten("b")[..1]).unwrap();
        assert_eq!((next[0].message.seq, next[0].message.msg_id), (2, 11));

        // The direct path (a store that is not the sole writer).
        s.close();
        drop(s);
        let mut s = SqliteStore::open(&dir.path().join("t.db"), false).unwrap();
        s.cached_conversations = 4;
        for i in 0..10 {
            s.append_batch(&ten(&format!("c{i}"))[i..=i]).unwrap();
        }
        // Bounded before each batch: never more than the bound and the batch.
        assert!(s.lock_sequencer().last_seq.len() <= 5);
        let next = s.append_batch(&ten("d")[1..2]).unwrap();
        assert_eq!(next[0].message.seq, 3, "p_1_1001: a1, c1, then this");
        assert_eq!(s.lock_sequencer().last_seq.len(), 1, "started over");
        assert!(s.lock_writer().cursors.len() <= 1);
    }

    #[test]
    fn the_apply_thread_applies_and_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(&dir);
        s.append_batch(&batch(1, 3, "a")).unwrap();
        s.wait_for_the_apply_thread();
        // Read on a connection of the pool, without `settle`.
        let n: i64 = s
            .with_conn(|c| c.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 3);
    }

    /// The commit log numbers small batches as they come: their runs are split where another
    /// conversation's message took the next id, and joined where none did.
    #[test]
    fn logged_batches_write_runs_where_ids_follow_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let s = logged(&dir);
        // Applied together at the end, whatever the apply thread's timing.
        s.pause_applier();
        for (conv, from, cmid) in [
            ("p_1_9", 1, "a0"),
            ("p_1_9", 1, "a1"),
            ("p_2_9", 2, "b0"),
            ("p_1_9", 1, "a2"),
            ("p_1_9", 1, "a3"),
        ] {
            s.append_batch(&[msg(conv, from, cmid)]).unwrap();
        }
        s.set_sole_writer(false).unwrap();
        assert_eq!(runs(&s, "p_1_9"), vec![(1, 1, 2), (3, 4, 2)]);
        assert_eq!(runs(&s, "p_2_9"), vec![(1, 3, 1)]);
        assert_eq!(seqs(&s, "p_1_9"), vec![(1, 1), (2, 2), (3, 4), (4, 5)]);
        let after_1: Vec<u64> = s
            .sync("p_1_9", 1, 2)
            .unwrap()
            .iter()
            .map(|m| m.msg_id)
            .collect();
        assert_eq!(after_1, vec![2, 4]);
        let before_4: Vec<u64> = s
            .history("p_1_9", 4, 2)
            .unwrap()
            .iter()
            .map(|m| m.msg_id)
            .collect();
        assert_eq!(before_4, vec![4, 2]);
    }
}
