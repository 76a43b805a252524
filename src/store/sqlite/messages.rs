//! Messages and conversations on SQLite: the persister's batch append (the writer connection and
//! its caches), the read paths, recall and read cursors, and the final checkpoint at `close`.

use super::*;

pub(super) const MSG_COLS: &str =
    "msg_id, conv_id, seq, chat_type, from_id, to_id, msg_type, body, created_at";

/// `MSG_COLS` of `messages m` in a join with `message_runs r`.
const M_COLS: &str =
    "m.msg_id, m.conv_id, m.seq, m.chat_type, m.from_id, m.to_id, m.msg_type, m.body, m.created_at";

/// A conversation's messages through its runs (see `sql/sqlite/011_message_runs.sql`): each run
/// `r` of the conversation joined with the messages of its id range, in seq order when read in
/// `(r.first_seq, m.msg_id)` order. The row's own conv_id is checked, since a message of a run
/// may be gone and its id is never reused by another conversation's run, but checked all the same.
const RUN_JOIN: &str = "message_runs r JOIN messages m
     ON m.msg_id BETWEEN r.first_msg_id AND r.first_msg_id + r.count - 1 AND m.conv_id = r.conv_id";

/// `sync`: conversation ?1's messages after seq ?2, at most ?3, from the run that holds seq
/// ?2 + 1 (or the last one before it) on.
fn sync_sql() -> String {
    format!(
        "SELECT {M_COLS} FROM {RUN_JOIN}
         WHERE r.conv_id = ?1 AND r.first_seq >= COALESCE((SELECT first_seq
             FROM message_runs WHERE conv_id = ?1 AND first_seq <= ?2 + 1
             ORDER BY first_seq DESC LIMIT 1), 0)
           AND m.seq > ?2
         ORDER BY r.first_seq, m.msg_id LIMIT ?3"
    )
}

/// `history`: conversation ?1's messages before seq ?2, at most ?3, newest first.
fn history_sql() -> String {
    format!(
        "SELECT {M_COLS} FROM {RUN_JOIN}
         WHERE r.conv_id = ?1 AND r.first_seq < ?2 AND m.seq < ?2
         ORDER BY r.first_seq DESC, m.msg_id DESC LIMIT ?3"
    )
}

/// The message at (conversation ?1, seq ?2): the run that starts at or before the seq gives its
/// id. A seq past that run's end names another message, which the seq check rejects.
pub(super) fn message_at_seq_sql() -> String {
    format!(
        "SELECT {MSG_COLS} FROM messages WHERE msg_id = (SELECT first_msg_id + (?2 - first_seq)
           FROM message_runs WHERE conv_id = ?1 AND first_seq <= ?2
           ORDER BY first_seq DESC LIMIT 1) AND conv_id = ?1 AND seq = ?2"
    )
}

/// Deletes a conversation's messages (?1), then its runs.
pub(super) const DELETE_CONVERSATION_MESSAGES: [&str; 2] = [
    "DELETE FROM messages WHERE msg_id IN (SELECT m.msg_id FROM message_runs r JOIN messages m
       ON m.msg_id BETWEEN r.first_msg_id AND r.first_msg_id + r.count - 1
       WHERE r.conv_id = ?1 AND m.conv_id = ?1)",
    "DELETE FROM message_runs WHERE conv_id = ?1",
];

/// The largest msg id ever handed out: the largest in the table, or a larger one the visitor
/// purge deleted (it records it first), so no id is handed out twice. Numbering starts past it.
pub(super) const LAST_MSG_ID: &str = "SELECT MAX(COALESCE((SELECT MAX(msg_id) FROM messages), 0),
            COALESCE((SELECT value FROM counters WHERE name = 'msg_id_purged'), 0))";

/// Run by the visitor purge before it deletes messages (see `LAST_MSG_ID`).
pub(super) const RECORD_PURGED_MSG_ID: &str = "INSERT INTO counters (name, value)
     SELECT 'msg_id_purged', COALESCE(MAX(msg_id), 0) FROM messages WHERE true
     ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)";

pub(super) fn msg_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        msg_id: r.get::<_, i64>(0)? as u64,
        conv_id: r.get(1)?,
        seq: r.get::<_, i64>(2)? as u64,
        chat_type: r.get::<_, i64>(3)? as u8,
        from_id: r.get::<_, i64>(4)? as u64,
        to_id: r.get::<_, i64>(5)? as u64,
        msg_type: r.get::<_, i64>(6)? as u8,
        body: r.get(7)?,
        created_at: r.get(8)?,
    })
}

/// Binds one message to an `INSERT INTO messages` of `Writer::append` or the log's apply
/// (the same ten columns in the same order); returns the rows inserted.
pub(super) fn insert_row(
    insert: &mut rusqlite::CachedStatement<'_>,
    m: &StoredMessage,
    client_msg_id: Option<&str>,
) -> StoreResult<usize> {
    insert
        .execute(params![
            m.conv_id,
            m.seq as i64,
            m.msg_id as i64,
            client_msg_id,
            m.from_id as i64,
            m.to_id as i64,
            m.chat_type as i64,
            m.msg_type as i64,
            m.body,
            m.created_at
        ])
        .map_err(unavailable)
}

/// What a batch writes besides the messages, gathered while its runs (one conversation each,
/// in key order) are written: each conversation's new last message, the read-cursor rows of
/// one-to-one conversations that do not exist yet, and each sender's read cursor (a sender has
/// read their conversation up to what they sent). Shared by the direct path and the log's
/// apply; the keys borrow from the batch (no allocation per message).
#[derive(Default)]
pub(super) struct BatchTail<'a> {
    /// (conversation, chat_type, last seq, its msg id, its time), in key order.
    lasts: Vec<(&'a str, u8, u64, u64, i64)>,
    /// (conversation, first seq, first msg id, count): the `message_runs` rows, in key order.
    runs: Vec<(&'a str, u64, u64, u64)>,
    new_cursors: Vec<(u64, &'a str)>,
    sender_reads: Vec<(u64, &'a str, u64)>,
    /// Where the current run's cursors and sender reads start.
    run: (usize, usize),
}

impl<'a> BatchTail<'a> {
    pub(super) fn start_run(&mut self) {
        self.run = (self.new_cursors.len(), self.sender_reads.len());
    }

    /// A message of the current run, appended as `seq` with id `msg_id`; `known`: the
    /// conversation's users known to have a cursor row.
    pub(super) fn message(
        &mut self,
        conv: &'a str,
        known: &[u64],
        m: (u8, u64, u64),
        (seq, msg_id): (u64, u64),
    ) {
        let (chat_type, from, to) = m;
        // The direct path numbers a conversation's messages of a batch together, so they make
        // one run; the log's apply may see them split by other conversations' ids.
        match self.runs.last_mut() {
            Some(run) if run.0 == conv && run.1 + run.3 == seq && run.2 + run.3 == msg_id => {
                run.3 += 1
            }
            _ => self.runs.push((conv, seq, msg_id, 1)),
        }
        // Both sides of a one-to-one conversation list it from its first message on (a
        // group's members get their rows when they join).
        if chat_type != 1 {
            for uid in [from, to] {
                let added = self.new_cursors[self.run.0..].iter().any(|c| c.0 == uid);
                if uid != 0 && !known.contains(&uid) && !added {
                    self.new_cursors.push((uid, conv));
                }
            }
        }
        match self.sender_reads[self.run.1..]
            .iter_mut()
            .find(|r| r.0 == from)
        {
            Some(read) => read.2 = seq,
            None => self.sender_reads.push((from, conv, seq)),
        }
    }

    /// The current run's last message appended.
    pub(super) fn last(&mut self, conv: &'a str, m: &StoredMessage) {
        self.lasts
            .push((conv, m.chat_type, m.seq, m.msg_id, m.created_at));
    }

    /// Writes the rows gathered, in key order.
    pub(super) fn write(&mut self, tx: &Transaction) -> StoreResult<()> {
        let mut add_run = tx
            .prepare_cached(
                "INSERT INTO message_runs (conv_id, first_seq, first_msg_id, count)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(unavailable)?;
        for &(conv, seq, msg_id, count) in &self.runs {
            add_run
                .execute(params![conv, seq as i64, msg_id as i64, count as i64])
                .map_err(unavailable)?;
        }
        let mut add_cursor = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO read_cursors (user_id, conv_id, read_seq) VALUES (?1, ?2, 0)",
            )
            .map_err(unavailable)?;
        for &(uid, conv) in &self.new_cursors {
            add_cursor
                .execute(params![uid as i64, conv])
                .map_err(unavailable)?;
        }
        let mut upsert_conv = tx
            .prepare_cached(
                "INSERT INTO conversations (conv_id, chat_type, last_seq, last_msg_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(conv_id) DO UPDATE SET last_seq = excluded.last_seq,
                   last_msg_id = excluded.last_msg_id, updated_at = excluded.updated_at",
            )
            .map_err(unavailable)?;
        for &(conv, chat_type, seq, msg_id, at) in &self.lasts {
            upsert_conv
                .execute(params![
                    conv,
                    chat_type as i64,
                    seq as i64,
                    msg_id as i64,
                    at
                ])
                .map_err(unavailable)?;
        }
        let mut read = tx
            .prepare_cached(
                "UPDATE read_cursors SET read_seq = MAX(read_seq, ?3) WHERE user_id = ?1 AND conv_id = ?2",
            )
            .map_err(unavailable)?;
        self.sender_reads.sort_unstable();
        for &(uid, conv, seq) in &self.sender_reads {
            read.execute(params![uid as i64, conv, seq as i64])
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// After the commit: the cursor rows written are known from now on.
    pub(super) fn remember_cursors(&self, cursors: &mut HashMap<String, Vec<u64>>) {
        for &(uid, conv) in &self.new_cursors {
            let users = cursors.entry(conv.to_owned()).or_default();
            if !users.contains(&uid) {
                users.push(uid);
            }
        }
    }

    /// (conversation, new last seq), in key order.
    pub(super) fn last_seqs(&self) -> impl Iterator<Item = (&'a str, u64)> + '_ {
        self.lasts.iter().map(|l| (l.0, l.2))
    }
}

impl Writer {
    /// A batch straight into SQLite, in one transaction (numbered with `seq`'s caches): the path
    /// of large batches, and of every batch while the process is not the sole writer.
    ///
    /// `take_body(at)` gives the body of the batch's message `at` for its outcome, called once
    /// for each message of the batch (a resend's is then dropped: its outcome is the earlier
    /// message): a copy, or the body itself when the caller's batch is spent.
    fn append(
        &mut self,
        seq: &mut Sequencer,
        batch: &[NewMessage],
        mut take_body: impl FnMut(usize) -> String,
    ) -> StoreResult<Vec<Appended>> {
        let Writer { conn, cursors } = self;
        let Sequencer {
            last_seq,
            next_msg_id,
            ..
        } = seq;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        // Outcomes by the message's place in the batch, filled in conversation order (below).
        let mut out: Vec<Option<Appended>> = vec![None; batch.len()];
        // The caches hold while this writer is the only one. Another process may write to the
        // same file for a moment (a zero-downtime upgrade hands over while the old process
        // drains): every writer numbers messages from the last id + 1 inside its write lock,
        // so a last id that moved since this writer's last commit means someone else appended,
        // and the cached seqs and cursors are reloaded. Two index probes per batch.
        // (Prepared once: at 10,000 msg/s most batches hold one or two messages, and parsing
        // this statement again for each was a visible part of a small commit.)
        let last: i64 = tx
            .prepare_cached(LAST_MSG_ID)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(unavailable)?;
        let next_free = last as u64 + 1;
        if *next_msg_id != Some(next_free) {
            if next_msg_id.is_some() {
                log::info!("store: another writer appended to the database; caches reloaded");
            }
            last_seq.clear();
            cursors.clear();
        }
        let mut msg_id = next_free;
        // Seqs and ids handed out in this batch are kept only if the commit succeeds.
        let mut tail = BatchTail::default();
        {
            let mut find_dup = tx
                .prepare_cached(&format!(
                    "SELECT {MSG_COLS} FROM messages WHERE from_id = ?1 AND client_msg_id = ?2"
                ))
                .map_err(unavailable)?;
            let mut get_seq = tx
                .prepare_cached("SELECT last_seq FROM conversations WHERE conv_id = ?1")
                .map_err(unavailable)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO messages (conv_id, seq, msg_id, client_msg_id, from_id, to_id,
                     chat_type, msg_type, body, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (from_id, client_msg_id) WHERE client_msg_id IS NOT NULL
                     DO NOTHING",
                )
                .map_err(unavailable)?;
            // The batch is written in conversation order (a stable sort: a conversation's own
            // messages keep their order, so their seqs do): consecutive inserts then land on
            // the same or the next leaf of the `(conv_id, seq)` index, and the rows themselves,
            // keyed by msg ids handed out in this order, append to the end of the table. In
            // arrival order a large batch across many conversations touched its leaves at
            // random. Each conversation's run is handled as one: its last seq and its known
            // cursors are looked up once, not per message.
            // (Sorted as (conversation, place) pairs: the place breaks ties, so an unstable
            // sort keeps each conversation's order, without an indirection per comparison.)
            let mut order: Vec<(&str, usize)> = batch
                .iter()
                .enumerate()
                .map(|(at, m)| (m.conv_id.as_str(), at))
                .collect();
            order.sort_unstable();
            for run in order.chunk_by(|a, b| a.0 == b.0) {
                let conv = run[0].0;
                let mut seq = match last_seq.get(conv) {
                    Some(s) => *s,
                    None => get_seq
                        .query_row(params![conv], |r| r.get::<_, i64>(0))
                        .optional()
                        .map_err(unavailable)?
                        .unwrap_or(0) as u64,
                };
                let known: &[u64] = cursors.get(conv).map_or(&[], |users| users.as_slice());
                let mut last_at = None;
                tail.start_run();
                for &(_, at) in run {
                    let m = &batch[at];
                    // Insert first: the unique index on (from_id, client_msg_id) refuses a
                    // resend (also of a message earlier in this batch, already inserted), and
                    // only then is the earlier message looked up. A lookup before every insert
                    // cost more than the insert itself.
                    let stored = m.stored_with_body(msg_id, seq + 1, take_body(at));
                    let inserted = insert_row(&mut insert, &stored, m.client_msg_id.as_deref())?;
                    if inserted == 0 {
                        let cmid = m.client_msg_id.as_deref().unwrap_or_default();
                        let message = find_dup
                            .query_row(params![m.from_id as i64, cmid], msg_row)
                            .map_err(unavailable)?;
                        out[at] = Some(Appended {
                            message,
                            duplicate: true,
                        });
                        continue;
                    }
                    seq += 1;
                    tail.message(
                        conv,
                        known,
                        (m.chat_type, m.from_id, m.to_id),
                        (seq, msg_id),
                    );
                    out[at] = Some(Appended {
                        message: stored,
                        duplicate: false,
                    });
                    msg_id += 1;
                    last_at = Some(at);
                }
                if let Some(at) = last_at {
                    let last = &out[at].as_ref().expect("appended in this run").message;
                    tail.last(conv, last);
                }
            }
            tail.write(&tx)?;
        }
        tx.commit().map_err(unavailable)?;
        for (conv, seq) in tail.last_seqs() {
            match last_seq.get_mut(conv) {
                Some(last) => *last = seq,
                None => {
                    last_seq.insert(conv.to_owned(), seq);
                }
            }
        }
        *next_msg_id = Some(msg_id);
        tail.remember_cursors(cursors);
        // Every place is filled: each message was appended or matched an earlier one.
        out.into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| StoreError::unavailable("a batch's message got no outcome"))
    }
}

impl SqliteStore {
    /// A batch the commit log cannot take (too large, the log full, or no log): whatever the
    /// log holds goes first (its messages were numbered before this batch), then the batch in
    /// one transaction of its own (`Writer::append`, with `take_body` as there).
    fn append_direct(
        &self,
        seq: &mut Sequencer,
        batch: &[NewMessage],
        take_body: impl FnMut(usize) -> String,
    ) -> StoreResult<Vec<Appended>> {
        // In log mode a batch comes here only when it is too large for the log or the log is
        // full (the apply thread behind): either way a heavy load, which the checkpoint thread
        // must not make way through.
        let heavy = batch.len() > super::logged::LOG_MAX_BATCH || seq.log.is_some();
        let mut w = self.lock_writer();
        self.apply_all(&mut w, seq)?;
        // Nothing is pending now: the caches may start over.
        seq.bound(self.cached_conversations);
        w.bound(self.cached_conversations);
        let result = w.append(seq, batch, take_body);
        if heavy {
            self.heavy_load.store(true, Ordering::Relaxed);
        }
        self.wake_checkpointer();
        if result.is_err() {
            // What was handed out in the failed transaction is void: reload from disk next time
            // (nothing is pending: it was all applied above).
            seq.forget();
            w.cursors.clear();
        }
        result
    }
}

impl MessageStore for SqliteStore {
    fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        let mut seq = self.lock_sequencer();
        if self.fits_the_log(&seq, batch.len()) {
            return self.append_logged(&mut seq, batch);
        }
        self.append_direct(&mut seq, batch, |at| batch[at].body.clone())
    }

    /// On the direct path (large batches) each body moves into its outcome: one allocation and
    /// copy fewer per message, where copying them was a visible part of the persister's time.
    fn append_batch_spending(&self, batch: &mut [NewMessage]) -> StoreResult<Vec<Appended>> {
        let mut seq = self.lock_sequencer();
        if self.fits_the_log(&seq, batch.len()) {
            return self.append_logged(&mut seq, batch);
        }
        let mut bodies: Vec<String> = batch
            .iter_mut()
            .map(|m| std::mem::take(&mut m.body))
            .collect();
        self.append_direct(&mut seq, batch, |at| std::mem::take(&mut bodies[at]))
    }

    fn set_sole_writer(&self, sole: bool) -> StoreResult<()> {
        if sole {
            self.enter_log_mode()
        } else {
            self.leave_log_mode()
        }
    }

    /// Folds the whole WAL into the database file and empties it: after a clean stop the `.db`
    /// file alone holds everything (a backup may copy just that file), and the next start has no
    /// log to read.
    fn close(&self) {
        if let Err(e) = self.leave_log_mode() {
            log::error!("store: applying the commit log at close failed (it is applied at the next start): {e}");
        }
        let w = self.lock_writer();
        // The checkpoint thread or a worker's last read may still hold the log for a moment:
        // try again for up to a second (this runs once, after the reactor has stopped).
        for attempt in 0..50 {
            match w
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                }) {
                Ok(0) => return,
                Ok(_) if attempt < 49 => std::thread::sleep(std::time::Duration::from_millis(20)),
                Ok(_) => {
                    log::warn!("store: the sqlite log could not be emptied (a reader was busy)")
                }
                Err(e) => return log::warn!("store: final sqlite checkpoint failed: {e}"),
            }
        }
    }

    fn sync(&self, conv_id: &str, after_seq: u64, limit: u32) -> StoreResult<Vec<StoredMessage>> {
        self.settle()?;
        // Past the largest seq SQLite holds, nothing follows.
        let after = after_seq.min(i64::MAX as u64 - 1) as i64;
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&sync_sql())?;
            let rows = stmt.query_map(params![conv_id, after, limit], msg_row)?;
            rows.collect()
        })
    }

    fn history(
        &self,
        conv_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.settle()?;
        let before = if before_seq == 0 {
            i64::MAX
        } else {
            before_seq as i64
        };
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&history_sql())?;
            let rows = stmt.query_map(params![conv_id, before, limit], msg_row)?;
            rows.collect()
        })
    }

    fn message(&self, msg_id: u64) -> StoreResult<Option<StoredMessage>> {
        self.settle()?;
        self.with_conn(|c| {
            c.query_row(
                &format!("SELECT {MSG_COLS} FROM messages WHERE msg_id = ?1"),
                params![msg_id as i64],
                msg_row,
            )
            .optional()
        })
    }

    fn blank_message(&self, msg_id: u64) -> StoreResult<()> {
        self.settle()?;
        self.with_tx(|tx| {
            tx.execute(
                "UPDATE messages SET body = 'null' WHERE msg_id = ?1",
                params![msg_id as i64],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn conversations(&self, uid: u64, limit: u32) -> StoreResult<Vec<ConversationSummary>> {
        self.settle()?;
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT rc.conv_id, COALESCE(cv.chat_type, 1), COALESCE(cv.last_seq, 0), rc.read_seq
                 FROM read_cursors rc LEFT JOIN conversations cv ON cv.conv_id = rc.conv_id
                 WHERE rc.user_id = ?1
                 ORDER BY COALESCE(cv.updated_at, 0) DESC, rc.conv_id LIMIT ?2",
            )?;
            let rows: Vec<(String, i64, i64, i64)> = stmt
                .query_map(params![uid as i64, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut last = c.prepare_cached(&message_at_seq_sql())?;
            let mut out = Vec::with_capacity(rows.len());
            for (conv_id, chat_type, last_seq, read_seq) in rows {
                let last_msg = if last_seq > 0 {
                    last.query_row(params![conv_id, last_seq], msg_row)
                        .optional()?
                } else {
                    None
                };
                out.push(ConversationSummary {
                    conv_id,
                    chat_type: chat_type as u8,
                    last_seq: last_seq as u64,
                    read_seq: (read_seq as u64).min(last_seq as u64),
                    last: last_msg,
                });
            }
            let floors: Vec<(u64, u64)> = c
                .prepare_cached(GROUP_FLOORS_SQL)?
                .query_map(params![uid as i64], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<Result<_, _>>()?;
            hide_before_join(&mut out, &floors);
            Ok(out)
        })
    }

    fn mark_read(&self, uid: u64, conv_id: &str, seq: u64) -> StoreResult<ReadMark> {
        self.settle()?;
        self.with_tx(|tx| {
            // The write transaction holds SQLite's write lock: the last seq cannot move under it.
            let last: i64 = tx
                .query_row(
                    "SELECT last_seq FROM conversations WHERE conv_id = ?1",
                    params![conv_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?
                .unwrap_or(0);
            let current: Option<i64> = tx
                .query_row(
                    "SELECT read_seq FROM read_cursors WHERE user_id = ?1 AND conv_id = ?2",
                    params![uid as i64, conv_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let wanted = (seq.min(i64::MAX as u64) as i64).min(last);
            let (read_seq, moved) = match current {
                Some(c) if c >= wanted => (c, false),
                _ => {
                    tx.execute(
                        "INSERT INTO read_cursors (user_id, conv_id, read_seq) VALUES (?1, ?2, ?3)
                         ON CONFLICT(user_id, conv_id) DO UPDATE SET read_seq = excluded.read_seq",
                        params![uid as i64, conv_id, wanted],
                    )
                    .map_err(unavailable)?;
                    (wanted, current.unwrap_or(0) < wanted)
                }
            };
            Ok(ReadMark {
                read_seq: read_seq.max(0) as u64,
                moved,
            })
        })
    }

    fn read_count(&self, conv_id: &str, seq: u64) -> StoreResult<u64> {
        self.settle()?;
        self.with_conn(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM read_cursors WHERE conv_id = ?1 AND read_seq >= ?2",
                params![conv_id, seq as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::batch;
    use super::*;

    /// The behaviour is tested by `tests/store_suite.rs`; here, that the read paths use indexes.
    #[test]
    fn read_paths_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db"), false).unwrap();
        let plan = |sql: &str| -> String {
            s.with_conn(|c| {
                // The statements' parameters as literals: a conversation, a seq, a limit.
                let sql = sql
                    .replace("?1", "'p_1_2'")
                    .replace("?2", "5")
                    .replace("?3", "10");
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(3))?;
                rows.collect::<Result<Vec<_>, _>>().map(|v| v.join("; "))
            })
            .unwrap()
        };
        let p = plan("SELECT COUNT(*) FROM read_cursors WHERE conv_id = 'g_1' AND read_seq >= 3");
        assert!(p.contains("read_cursors_conv"), "{p}");
        // A conversation's runs by their key, then each run's messages by a rowid range, in
        // the order asked for: no scan, no sort.
        for sql in [sync_sql(), history_sql()] {
            let p = plan(&sql);
            assert!(
                p.contains("SEARCH r USING PRIMARY KEY (conv_id=? AND first_seq")
                    && p.contains("SEARCH m USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)")
                    && !p.contains("SCAN")
                    && !p.contains("TEMP B-TREE"),
                "{p}"
            );
        }
        let p = plan(&message_at_seq_sql());
        assert!(
            p.contains("SEARCH messages USING INTEGER PRIMARY KEY (rowid=?)")
                && p.contains("SEARCH message_runs USING PRIMARY KEY (conv_id=? AND first_seq<?)")
                && !p.contains("SCAN"),
            "{p}"
        );
        let p = plan(DELETE_CONVERSATION_MESSAGES[0]);
        assert!(!p.contains("SCAN"), "{p}");
        let p = plan(&format!("SELECT {MSG_COLS} FROM messages WHERE msg_id = 7"));
        assert!(p.contains("INTEGER PRIMARY KEY"), "{p}");
        let p = plan(LAST_MSG_ID);
        assert!(
            !p.contains("SCAN messages") && !p.contains("SCAN counters"),
            "{p}"
        );
    }

    /// The batch is written in conversation order, but its outcomes come back in the batch's
    /// order, each conversation's seqs follow its messages' arrival, and a resend inside the
    /// batch gets the first one's message, wherever the two sit.
    #[test]
    fn a_batch_written_in_conversation_order_answers_in_its_own_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db"), false).unwrap();
        let msg = |conv: &str, from: u64, cmid: &str| NewMessage {
            conv_id: conv.into(),
            chat_type: 0,
            from_id: from,
            to_id: 99,
            msg_type: 0,
            body: format!("\"{cmid}\""),
            client_msg_id: Some(cmid.into()),
            created_at: 1,
        };
        let batch = vec![
            msg("p_3_99", 3, "c1"),
            msg("p_1_99", 1, "a1"),
            msg("p_3_99", 3, "c2"),
            msg("p_2_99", 2, "b1"),
            msg("p_1_99", 1, "a2"),
            msg("p_3_99", 3, "c1"),
            msg("p_1_99", 1, "a3"),
        ];
        let out = s.append_batch(&batch).unwrap();
        let got: Vec<(&str, u64, bool, &str)> = out
            .iter()
            .map(|a| {
                let m = &a.message;
                (m.conv_id.as_str(), m.seq, a.duplicate, m.body.as_str())
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("p_3_99", 1, false, "\"c1\""),
                ("p_1_99", 1, false, "\"a1\""),
                ("p_3_99", 2, false, "\"c2\""),
                ("p_2_99", 1, false, "\"b1\""),
                ("p_1_99", 2, false, "\"a2\""),
                ("p_3_99", 1, true, "\"c1\""),
                ("p_1_99", 3, false, "\"a3\""),
            ]
        );
        assert_eq!(out[5].message.msg_id, out[0].message.msg_id);
        // The persister's call, which moves the bodies instead of copying them, answers the
        // same, to the byte.
        let other = SqliteStore::open(&dir.path().join("spent.db"), false).unwrap();
        let mut spent = batch.clone();
        assert_eq!(other.append_batch_spending(&mut spent).unwrap(), out);
        let stored: Vec<u64> = s
            .sync("p_1_99", 0, 10)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(stored, vec![1, 2, 3]);
    }

    /// Two stores on one file, as an old and a new process during an upgrade: appending in
    /// turn to the same conversations keeps every conversation's seqs contiguous and every
    /// msg_id unique (each writer notices the other's commits and reloads its caches).
    #[test]
    fn two_writers_on_one_file_keep_seqs_contiguous() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let old = SqliteStore::open(&path, false).unwrap();
        let new = SqliteStore::open(&path, false).unwrap();
        for round in 0..20u64 {
            let writer = if round % 2 == 0 { &old } else { &new };
            let out = writer
                .append_batch(&batch(7 + round % 3, 5, &format!("r{round}")))
                .unwrap();
            assert!(out.iter().all(|a| !a.duplicate));
        }
        let mut ids = std::collections::HashSet::new();
        for m in batch(7, 5, "x")
            .iter()
            .chain(&batch(8, 5, "x"))
            .chain(&batch(9, 5, "x"))
        {
            let ms = old.sync(&m.conv_id, 0, 1000).unwrap();
            let seqs: Vec<u64> = ms.iter().map(|m| m.seq).collect();
            assert_eq!(
                seqs,
                (1..=seqs.len() as u64).collect::<Vec<_>>(),
                "{}",
                m.conv_id
            );
            ids.extend(ms.iter().map(|m| m.msg_id));
        }
        assert_eq!(ids.len(), 100);
    }

    pub(in super::super) fn msg(conv: &str, from: u64, cmid: &str) -> NewMessage {
        NewMessage {
            conv_id: conv.into(),
            chat_type: 0,
            from_id: from,
            to_id: 9,
            msg_type: 0,
            body: format!("\"{cmid}\""),
            client_msg_id: Some(cmid.into()),
            created_at: 1,
        }
    }

    pub(in super::super) fn runs(s: &SqliteStore, conv: &str) -> Vec<(u64, u64, u64)> {
        s.with_conn(|c| {
            let mut stmt = c.prepare(
                "SELECT first_seq, first_msg_id, count FROM message_runs
                 WHERE conv_id = ?1 ORDER BY first_seq",
            )?;
            let rows = stmt.query_map(params![conv], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })?;
            rows.collect()
        })
        .unwrap()
    }

    fn seqs(ms: Vec<StoredMessage>) -> Vec<u64> {
        ms.into_iter().map(|m| m.seq).collect()
    }

    /// A batch writes one run per conversation however its messages were interleaved, and a
    /// resend inside it does not break the run; reads page across runs in both directions.
    #[test]
    fn a_batch_writes_one_run_per_conversation_and_reads_cross_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db"), false).unwrap();
        let mut first = Vec::new();
        for i in 0..5 {
            first.push(msg("p_1_9", 1, &format!("a{i}")));
            if i < 3 {
                first.push(msg("p_2_9", 2, &format!("b{i}")));
            }
        }
        first.push(msg("p_1_9", 1, "a1"));
        let out = s.append_batch(&first).unwrap();
        assert!(out[8].duplicate && out[8].message.seq == 2);
        s.append_batch(&[
            msg("p_2_9", 2, "b3"),
            msg("p_1_9", 1, "a5"),
            msg("p_1_9", 1, "a6"),
        ])
        .unwrap();
        // Ids go in conversation order inside a batch: p_1_9 (1-5), p_2_9 (6-8), then the
        // second batch's p_1_9 (9-10), p_2_9 (11).
        assert_eq!(runs(&s, "p_1_9"), vec![(1, 1, 5), (6, 9, 2)]);
        assert_eq!(runs(&s, "p_2_9"), vec![(1, 6, 3), (4, 11, 1)]);
        let ids: Vec<u64> = s
            .sync("p_1_9", 0, 100)
            .unwrap()
            .iter()
            .map(|m| m.msg_id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 9, 10]);
        assert_eq!(seqs(s.sync("p_1_9", 3, 3).unwrap()), vec![4, 5, 6]);
        assert_eq!(seqs(s.sync("p_1_9", 5, 100).unwrap()), vec![6, 7]);
        assert_eq!(seqs(s.sync("p_1_9", 6, 100).unwrap()), vec![7]);
        assert!(s.sync("p_1_9", 7, 100).unwrap().is_empty());
        assert!(s.sync("p_1_9", u64::MAX, 100).unwrap().is_empty());
        assert!(s.sync("p_3_9", 0, 100).unwrap().is_empty());
        assert_eq!(seqs(s.history("p_1_9", 7, 4).unwrap()), vec![6, 5, 4, 3]);
        assert_eq!(seqs(s.history("p_1_9", 0, 3).unwrap()), vec![7, 6, 5]);
        assert_eq!(seqs(s.history("p_1_9", 2, 100).unwrap()), vec![1]);
        assert_eq!(seqs(s.history("p_2_9", 0, 100).unwrap()), vec![4, 3, 2, 1]);
        let listed = s.conversations(1, 10).unwrap();
        let last = listed[0].last.as_ref().unwrap();
        assert_eq!(
            (last.conv_id.as_str(), last.seq, last.msg_id),
            ("p_1_9", 7, 10)
        );
    }
}
