//! Messages and conversations on MySQL: the persister's batch append (one transaction that
//! reserves its msg_ids and reads seqs under that lock), the read paths, recall and read cursors.

use super::*;

/// Bound on `Writer::listed` (cleared when reached; it only saves work).
const MAX_LISTED: usize = 1 << 20;

const MSG_COLS: &str =
    "msg_id, conv_id, seq, chat_type, from_id, to_id, msg_type, body, created_at";

/// The read paths that must be served by indexes (an integration test EXPLAINs each of them).
pub const SYNC_SQL: &str =
    "SELECT msg_id, conv_id, seq, chat_type, from_id, to_id, msg_type, body, created_at \
     FROM messages WHERE conv_id = ? AND seq > ? ORDER BY seq LIMIT ?";

pub const HISTORY_SQL: &str =
    "SELECT msg_id, conv_id, seq, chat_type, from_id, to_id, msg_type, body, created_at \
     FROM messages WHERE conv_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?";

pub const CONVERSATIONS_SQL: &str =
    "SELECT rc.conv_id, COALESCE(cv.chat_type, 1), COALESCE(cv.last_seq, 0), rc.read_seq, \
     m.msg_id, m.conv_id, m.seq, m.chat_type, m.from_id, m.to_id, m.msg_type, m.body, m.created_at \
     FROM read_cursors rc \
     LEFT JOIN conversations cv ON cv.conv_id = rc.conv_id \
     LEFT JOIN messages m ON m.conv_id = cv.conv_id AND m.seq = cv.last_seq \
     WHERE rc.user_id = ? \
     ORDER BY COALESCE(cv.updated_at, 0) DESC, rc.conv_id LIMIT ?";

pub const READ_COUNT_SQL: &str =
    "SELECT COUNT(*) FROM read_cursors WHERE conv_id = ? AND read_seq >= ?";

type MsgTuple = (u64, String, u64, u8, u64, u64, u8, String, i64);

fn msg_of(
    (msg_id, conv_id, seq, chat_type, from_id, to_id, msg_type, body, created_at): MsgTuple,
) -> StoredMessage {
    StoredMessage {
        msg_id,
        conv_id,
        seq,
        chat_type,
        from_id,
        to_id,
        msg_type,
        body,
        created_at,
    }
}

/// The persister's batch, in one transaction (see the module comment for the locking).
///
/// Resends of stored messages are rare, so the first attempt does not look for them: the unique
/// index on (from_id, client_msg_id) refuses such a row, the transaction is rolled back, and the
/// retry (`check_stored`) looks them up first. Returns the messages and the newly listed cursors.
fn append_in(
    tx: &mut Transaction<'_>,
    batch: &[NewMessage],
    check_stored: bool,
    listed: &HashSet<(u64, String)>,
) -> Res<(Vec<Appended>, Vec<CursorKey>)> {
    if batch.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // 1. Reserve msg ids; the row lock orders this batch against every other writer's.
    tx.exec_drop(
        "UPDATE counters SET value = LAST_INSERT_ID(value + ?) WHERE name = 'msg_id'",
        (batch.len() as u64,),
    )?;
    if tx.affected_rows() != 1 {
        return Err(Fail::Store(StoreError::unavailable(
            "the counters table has no msg_id row",
        )));
    }
    let last_id = tx.last_insert_id().unwrap_or(0);
    let mut next_id = last_id + 1 - batch.len() as u64;

    // 2. Client ids already stored (a resend after a lost ack, possibly through another node).
    let mut wanted: Vec<(u64, &str)> = if check_stored {
        batch
            .iter()
            .filter_map(|m| m.client_msg_id.as_deref().map(|c| (m.from_id, c)))
            .collect()
    } else {
        Vec::new()
    };
    wanted.sort_unstable();
    wanted.dedup();
    let mut stored: HashMap<(u64, String), StoredMessage> = HashMap::new();
    let mut done = 0;
    for size in chunk_sizes(wanted.len()) {
        let cond = placeholders(size, "(from_id = ? AND client_msg_id = ?)").replace(",", " OR ");
        let sql = format!("SELECT {MSG_COLS}, client_msg_id FROM messages WHERE {cond}");
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 2);
        for (from, cmid) in &wanted[done..done + size] {
            params.push((*from).into());
            params.push((*cmid).into());
        }
        for row in tx.exec::<Row, _, _>(sql, params)? {
            let m = StoredMessage {
                msg_id: col(&row, 0)?,
                conv_id: col(&row, 1)?,
                seq: col(&row, 2)?,
                chat_type: col(&row, 3)?,
                from_id: col(&row, 4)?,
                to_id: col(&row, 5)?,
                msg_type: col(&row, 6)?,
                body: col(&row, 7)?,
                created_at: col(&row, 8)?,
            };
            let cmid: String = col(&row, 9)?;
            stored.insert((m.from_id, cmid), m);
        }
        done += size;
    }

    // 3. Current last seq of every conversation in the batch, locked.
    let mut convs: Vec<&str> = batch.iter().map(|m| m.conv_id.as_str()).collect();
    convs.sort_unstable();
    convs.dedup();
    let mut last_seq: HashMap<String, u64> = HashMap::with_capacity(convs.len());
    let mut done = 0;
    for size in chunk_sizes(convs.len()) {
        let sql = format!(
            "SELECT conv_id, last_seq FROM conversations WHERE conv_id IN ({}) FOR UPDATE",
            placeholders(size, "?")
        );
        let params: Vec<::mysql::Value> = convs[done..done + size]
            .iter()
            .map(|c| (*c).into())
            .collect();
        for (conv, seq) in tx.exec::<(String, u64), _, _>(sql, params)? {
            last_seq.insert(conv, seq);
        }
        done += size;
    }

    // 4. Assign seqs and ids.
    let mut out: Vec<Appended> = Vec::with_capacity(batch.len());
    let mut in_batch: HashMap<(u64, &str), usize> = HashMap::new();
    let mut fresh: Vec<usize> = Vec::with_capacity(batch.len());
    for m in batch {
        if let Some(cmid) = m.client_msg_id.as_deref() {
            if let Some(&i) = in_batch.get(&(m.from_id, cmid)) {
                let message = out[i].message.clone();
                out.push(Appended {
                    message,
                    duplicate: true,
                });
                continue;
            }
            if let Some(message) = stored.get(&(m.from_id, cmid.to_string())) {
                out.push(Appended {
                    message: message.clone(),
                    duplicate: true,
                });
                continue;
            }
            in_batch.insert((m.from_id, cmid), out.len());
        }
        let seq = last_seq.entry(m.conv_id.clone()).or_insert(0);
        *seq += 1;
        let id = next_id;
        next_id += 1;
        fresh.push(out.len());
        out.push(Appended {
            message: m.stored(id, *seq),
            duplicate: false,
        });
    }
    if fresh.is_empty() {
        return Ok((out, Vec::new()));
    }

    // 5. The messages, in multi-row inserts.
    let mut done = 0;
    for size in chunk_sizes(fresh.len()) {
        let sql = format!(
            "INSERT INTO messages (conv_id, seq, msg_id, client_msg_id, from_id, to_id,
             chat_type, msg_type, body, created_at) VALUES {}",
            placeholders(size, "(?,?,?,?,?,?,?,?,?,?)")
        );
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 10);
        for &i in &fresh[done..done + size] {
            let m = &out[i].message;
            params.push(m.conv_id.as_str().into());
            params.push(m.seq.into());
            params.push(m.msg_id.into());
            params.push(batch[i].client_msg_id.as_deref().into());
            params.push(m.from_id.into());
            params.push(m.to_id.into());
            params.push(m.chat_type.into());
            params.push(m.msg_type.into());
            params.push(m.body.as_str().into());
            params.push(m.created_at.into());
        }
        tx.exec_drop(sql, params)?;
        done += size;
    }

    // 6. Each conversation's new last seq.
    let mut last_of: HashMap<&str, &StoredMessage> = HashMap::new();
    for &i in &fresh {
        last_of.insert(&out[i].message.conv_id, &out[i].message);
    }
    let lasts: Vec<&StoredMessage> = last_of.into_values().collect();
    let mut done = 0;
    for size in chunk_sizes(lasts.len()) {
        let sql = format!(
            "INSERT INTO conversations (conv_id, chat_type, last_seq, last_msg_id, updated_at)
             VALUES {} ON DUPLICATE KEY UPDATE last_seq = VALUES(last_seq),
             last_msg_id = VALUES(last_msg_id), updated_at = VALUES(updated_at)",
            placeholders(size, "(?,?,?,?,?)")
        );
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 5);
        for m in &lasts[done..done + size] {
            params.push(m.conv_id.as_str().into());
            params.push(m.chat_type.into());
            params.push(m.seq.into());
            params.push(m.msg_id.into());
            params.push(m.created_at.into());
        }
        tx.exec_drop(sql, params)?;
        done += size;
    }

    // 7. Read cursors: both sides of a one-to-one conversation list it from its first message
    // on; a sender has read their conversation up to what they sent.
    let mut cursors: HashMap<(u64, &str), u64> = HashMap::new();
    let mut group_reads: HashMap<(u64, &str), u64> = HashMap::new();
    let mut newly_listed: Vec<(u64, String)> = Vec::new();
    for &i in &fresh {
        let m = &out[i].message;
        if m.chat_type == 1 {
            group_reads.insert((m.from_id, &m.conv_id), m.seq);
            continue;
        }
        for uid in [m.from_id, m.to_id] {
            if uid == 0 {
                continue;
            }
            let key = (uid, m.conv_id.clone());
            if uid == m.from_id {
                let e = cursors.entry((uid, &m.conv_id)).or_insert(0);
                *e = (*e).max(m.seq);
            } else if !listed.contains(&key) {
                cursors.entry((uid, &m.conv_id)).or_insert(0);
            }
            if !listed.contains(&key) {
                newly_listed.push(key);
            }
        }
    }
    let rows: Vec<((u64, &str), u64)> = cursors.into_iter().collect();
    let mut done = 0;
    for size in chunk_sizes(rows.len()) {
        let sql = format!(
            "INSERT INTO read_cursors (user_id, conv_id, read_seq) VALUES {}
             ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))",
            placeholders(size, "(?,?,?)")
        );
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 3);
        for ((uid, conv), seq) in &rows[done..done + size] {
            params.push((*uid).into());
            params.push((*conv).into());
            params.push((*seq).into());
        }
        tx.exec_drop(sql, params)?;
        done += size;
    }
    for ((uid, conv), seq) in group_reads {
        tx.exec_drop(
            "UPDATE read_cursors SET read_seq = GREATEST(read_seq, ?) WHERE user_id = ? AND conv_id = ?",
            (seq, uid, conv),
        )?;
    }
    Ok((out, newly_listed))
}

impl MessageStore for MysqlStore {
    fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        self.backoff.check().map_err(StoreError::unavailable)?;
        let mut guard = match self.writer.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let w = &mut *guard;
        let r = (|| -> Res<Vec<Appended>> {
            let mut attempt = 1;
            loop {
                if w.conn.is_none() {
                    w.conn = Some(Conn::new(self.opts.clone())?);
                }
                let conn = w.conn.as_mut().expect("connected above");
                let check_stored = attempt > 1;
                let result = (|| {
                    let mut tx = conn.start_transaction(TxOpts::default())?;
                    let out = append_in(&mut tx, batch, check_stored, &w.listed)?;
                    tx.commit()?;
                    Ok(out)
                })();
                match result {
                    Ok((out, listed)) => {
                        if w.listed.len() + listed.len() > MAX_LISTED {
                            w.listed.clear();
                        }
                        w.listed.extend(listed);
                        return Ok(out);
                    }
                    Err(Fail::Db(e)) if is_retryable(&e) && attempt < ATTEMPTS => attempt += 1,
                    Err(Fail::Db(e)) => {
                        if is_connection_error(&e) {
                            // The commit's outcome may be unknown: nothing is acknowledged, and
                            // a resend with the same client_msg_id finds the message if it landed.
                            w.conn = None;
                        }
                        return Err(Fail::Db(e));
                    }
                    Err(other) => return Err(other),
                }
            }
        })();
        self.settle(r)
    }

    fn sync(&self, conv_id: &str, after_seq: u64, limit: u32) -> StoreResult<Vec<StoredMessage>> {
        self.run(|c| {
            Ok(
                c.exec::<MsgTuple, _, _>(SYNC_SQL, (conv_id, after_seq, limit))?
                    .into_iter()
                    .map(msg_of)
                    .collect(),
            )
        })
    }

    fn history(
        &self,
        conv_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        let before = if before_seq == 0 {
            u64::MAX
        } else {
            before_seq
        };
        self.run(|c| {
            Ok(
                c.exec::<MsgTuple, _, _>(HISTORY_SQL, (conv_id, before, limit))?
                    .into_iter()
                    .map(msg_of)
                    .collect(),
            )
        })
    }

    fn message(&self, msg_id: u64) -> StoreResult<Option<StoredMessage>> {
        self.run(|c| {
            Ok(c.exec_first::<MsgTuple, _, _>(
                format!("SELECT {MSG_COLS} FROM messages WHERE msg_id = ?"),
                (msg_id,),
            )?
            .map(msg_of))
        })
    }

    fn blank_message(&self, msg_id: u64) -> StoreResult<()> {
        self.run(|c| {
            Ok(c.exec_drop(
                "UPDATE messages SET body = 'null' WHERE msg_id = ?",
                (msg_id,),
            )?)
        })
    }

    fn conversations(&self, uid: u64, limit: u32) -> StoreResult<Vec<ConversationSummary>> {
        self.run(|c| {
            let rows: Vec<Row> = c.exec(CONVERSATIONS_SQL, (uid, limit))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let last_seq: u64 = col(&row, 2)?;
                let read_seq: u64 = col(&row, 3)?;
                let msg_id: Option<u64> = col(&row, 4)?;
                let last = match msg_id {
                    Some(msg_id) if last_seq > 0 => Some(StoredMessage {
                        msg_id,
                        conv_id: col(&row, 5)?,
                        seq: col(&row, 6)?,
                        chat_type: col(&row, 7)?,
                        from_id: col(&row, 8)?,
                        to_id: col(&row, 9)?,
                        msg_type: col(&row, 10)?,
                        body: col(&row, 11)?,
                        created_at: col(&row, 12)?,
                    }),
                    _ => None,
                };
                out.push(ConversationSummary {
                    conv_id: col(&row, 0)?,
                    chat_type: col(&row, 1)?,
                    last_seq,
                    read_seq: read_seq.min(last_seq),
                    last,
                });
            }
            let floors: Vec<(u64, u64)> = c.exec(GROUP_FLOORS_SQL, (uid,))?;
            hide_before_join(&mut out, &floors);
            Ok(out)
        })
    }

    fn mark_read(&self, uid: u64, conv_id: &str, seq: u64) -> StoreResult<ReadMark> {
        self.tx(|tx| {
            // Committed messages only: a seq being written now is not yet readable anyway.
            let last: u64 = tx
                .exec_first(
                    "SELECT last_seq FROM conversations WHERE conv_id = ?",
                    (conv_id,),
                )?
                .unwrap_or(0);
            // Locks the cursor row, so that two reads at once decide "moved" one after the other.
            let current: Option<u64> = tx.exec_first(
                "SELECT read_seq FROM read_cursors WHERE user_id = ? AND conv_id = ? FOR UPDATE",
                (uid, conv_id),
            )?;
            let wanted = seq.min(last);
            if current.is_some_and(|c| c >= wanted) {
                return Ok(ReadMark {
                    read_seq: current.unwrap_or(wanted),
                    moved: false,
                });
            }
            tx.exec_drop(
                "INSERT INTO read_cursors (user_id, conv_id, read_seq) VALUES (?, ?, ?)
                 ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))",
                (uid, conv_id, wanted),
            )?;
            Ok(ReadMark {
                read_seq: wanted,
                moved: current.unwrap_or(0) < wanted,
            })
        })
    }

    fn read_count(&self, conv_id: &str, seq: u64) -> StoreResult<u64> {
        self.run(|c| Ok(c.exec_first(READ_COUNT_SQL, (conv_id, seq))?.unwrap_or(0)))
    }
}
