//! The social graph on SQLite: friendships, friend requests, groups and their members.

use super::*;

fn group_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Group> {
    Ok(Group {
        group_id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        owner_id: r.get::<_, i64>(2)? as u64,
        created_at: r.get(3)?,
        history_for_new_members: r.get::<_, i64>(4)? != 0,
    })
}

/// The columns `group_row` reads.
const GROUP_COLS: &str = "g.id, g.name, g.owner_id, g.created_at, g.history_for_new_members";

/// Creates read-cursor rows so a group conversation shows in its members' lists.
fn join_group_conversation(tx: &Transaction, gid: u64, uids: &[u64]) -> rusqlite::Result<()> {
    let conv = format!("g_{gid}");
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO read_cursors (user_id, conv_id, read_seq)
         VALUES (?1, ?2, COALESCE((SELECT last_seq FROM conversations WHERE conv_id = ?2), 0))",
    )?;
    for uid in uids {
        stmt.execute(params![*uid as i64, conv])?;
    }
    Ok(())
}

impl SocialStore for SqliteStore {
    fn friends(&self, uid: u64) -> StoreResult<Vec<u64>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT friend_id FROM friends WHERE user_id = ?1 ORDER BY friend_id",
            )?;
            let rows = stmt.query_map(params![uid as i64], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|v| v as u64)).collect()
        })
    }

    fn add_friendship(&self, a: u64, b: u64) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            for (x, y) in [(a, b), (b, a)] {
                tx.execute(
                    "INSERT OR IGNORE INTO friends (user_id, friend_id, created_at) VALUES (?1, ?2, ?3)",
                    params![x as i64, y as i64, now],
                )
                .map_err(unavailable)?;
                tx.execute(
                    "DELETE FROM friend_requests WHERE from_id = ?1 AND to_id = ?2",
                    params![x as i64, y as i64],
                )
                .map_err(unavailable)?;
            }
            Ok(())
        })
    }

    fn remove_friendship(&self, a: u64, b: u64) -> StoreResult<()> {
        self.with_tx(|tx| {
            tx.execute(
                "DELETE FROM friends WHERE (user_id = ?1 AND friend_id = ?2) OR (user_id = ?2 AND friend_id = ?1)",
                params![a as i64, b as i64],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn add_friend_request(&self, from: u64, to: u64, note: &str) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO friend_requests (from_id, to_id, note, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(from_id, to_id) DO UPDATE SET note = excluded.note, created_at = excluded.created_at",
                params![from as i64, to as i64, note, now],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn take_friend_request(&self, from: u64, to: u64) -> StoreResult<bool> {
        self.with_tx(|tx| {
            let n = tx
                .execute(
                    "DELETE FROM friend_requests WHERE from_id = ?1 AND to_id = ?2",
                    params![from as i64, to as i64],
                )
                .map_err(unavailable)?;
            Ok(n > 0)
        })
    }

    fn friend_requests(&self, uid: u64) -> StoreResult<Vec<(u64, String, i64)>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT from_id, note, created_at FROM friend_requests WHERE to_id = ?1 ORDER BY created_at",
            )?;
            let rows = stmt.query_map(params![uid as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
            })?;
            rows.collect()
        })
    }

    fn create_group(
        &self,
        owner: u64,
        name: &str,
        members: &[u64],
        history_for_new_members: bool,
    ) -> StoreResult<Group> {
        let now = now_ms();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO groups (name, owner_id, created_at, history_for_new_members)
                 VALUES (?1, ?2, ?3, ?4)",
                params![name, owner as i64, now, i64::from(history_for_new_members)],
            )
            .map_err(unavailable)?;
            let gid = tx.last_insert_rowid() as u64;
            let mut all: Vec<u64> = vec![owner];
            all.extend(members.iter().copied().filter(|m| *m != owner));
            all.sort_unstable();
            all.dedup();
            {
                let mut add = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO group_members (group_id, user_id, role, joined_at) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(unavailable)?;
                for uid in &all {
                    add.execute(params![
                        gid as i64,
                        *uid as i64,
                        i64::from(*uid == owner),
                        now
                    ])
                    .map_err(unavailable)?;
                }
            }
            join_group_conversation(tx, gid, &all).map_err(unavailable)?;
            Ok(Group {
                group_id: gid,
                name: name.to_string(),
                owner_id: owner,
                created_at: now,
                history_for_new_members,
            })
        })
    }

    fn group(&self, gid: u64) -> StoreResult<Option<Group>> {
        self.with_conn(|c| {
            c.query_row(
                &format!("SELECT {GROUP_COLS} FROM groups g WHERE g.id = ?1"),
                params![gid as i64],
                group_row,
            )
            .optional()
        })
    }

    fn group_members(&self, gid: u64) -> StoreResult<Option<Vec<u64>>> {
        self.with_conn(|c| {
            if !c
                .prepare_cached("SELECT 1 FROM groups WHERE id = ?1")?
                .exists(params![gid as i64])?
            {
                return Ok(None);
            }
            let mut stmt = c.prepare_cached(
                "SELECT user_id FROM group_members WHERE group_id = ?1 ORDER BY user_id",
            )?;
            let rows = stmt.query_map(params![gid as i64], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|v| v as u64))
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        })
    }

    fn add_group_members(&self, gid: u64, uids: &[u64]) -> StoreResult<()> {
        let now = now_ms();
        // No message is numbered while the join seq is read (below).
        self.exclusive_tx(false, |tx| {
            let exists: bool = tx
                .prepare_cached("SELECT 1 FROM groups WHERE id = ?1")
                .and_then(|mut s| s.exists(params![gid as i64]))
                .map_err(unavailable)?;
            if !exists {
                return Err(StoreError::NotFound("group"));
            }
            {
                // The join seq is read in the write transaction, with the commit log applied and
                // no message being numbered (`exclusive`): it is exactly the last seq.
                let mut add = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO group_members (group_id, user_id, role, joined_at, join_seq)
                         VALUES (?1, ?2, 0, ?3, COALESCE((SELECT last_seq FROM conversations WHERE conv_id = ?4), 0))",
                    )
                    .map_err(unavailable)?;
                let conv = format!("g_{gid}");
                for uid in uids {
                    add.execute(params![gid as i64, *uid as i64, now, conv])
                        .map_err(unavailable)?;
                }
            }
            join_group_conversation(tx, gid, uids).map_err(unavailable)?;
            Ok(())
        })
    }

    fn group_history_floor(&self, gid: u64, uid: u64) -> StoreResult<u64> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT CASE WHEN g.history_for_new_members <> 0 THEN 0 ELSE m.join_seq END
                 FROM group_members m JOIN groups g ON g.id = m.group_id
                 WHERE m.group_id = ?1 AND m.user_id = ?2",
                params![gid as i64, uid as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map_or(0, |v| v.max(0) as u64))
        })
    }

    fn remove_group_member(&self, gid: u64, uid: u64) -> StoreResult<()> {
        self.with_tx(|tx| {
            tx.execute(
                "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2",
                params![gid as i64, uid as i64],
            )
            .map_err(unavailable)?;
            tx.execute(
                "DELETE FROM read_cursors WHERE user_id = ?1 AND conv_id = ?2",
                params![uid as i64, format!("g_{gid}")],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn groups_of(&self, uid: u64) -> StoreResult<Vec<Group>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {GROUP_COLS} FROM group_members m
                 JOIN groups g ON g.id = m.group_id WHERE m.user_id = ?1 ORDER BY g.id"
            ))?;
            let rows = stmt.query_map(params![uid as i64], group_row)?;
            rows.collect()
        })
    }
}
