//! The social graph on MySQL: friendships, friend requests, groups and their members.

use super::*;

/// The columns `group_of` reads.
const GROUP_COLS: &str = "g.id, g.name, g.owner_id, g.created_at, g.history_for_new_members";

fn group_of((group_id, name, owner_id, created_at, history): (u64, String, u64, i64, u8)) -> Group {
    Group {
        group_id,
        name,
        owner_id,
        created_at,
        history_for_new_members: history != 0,
    }
}

/// Creates read-cursor rows so a group conversation shows in its members' lists.
fn join_group_conversation(tx: &mut Transaction<'_>, gid: u64, uids: &[u64]) -> Res<()> {
    let conv = format!("g_{gid}");
    let last: u64 = tx
        .exec_first(
            "SELECT last_seq FROM conversations WHERE conv_id = ?",
            (&conv,),
        )?
        .unwrap_or(0);
    let mut done = 0;
    for size in chunk_sizes(uids.len()) {
        let sql = format!(
            "INSERT IGNORE INTO read_cursors (user_id, conv_id, read_seq) VALUES {}",
            placeholders(size, "(?,?,?)")
        );
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 3);
        for uid in &uids[done..done + size] {
            params.push((*uid).into());
            params.push(conv.as_str().into());
            params.push(last.into());
        }
        tx.exec_drop(sql, params)?;
        done += size;
    }
    Ok(())
}

/// Adds members who join at `join_seq` (0 at the creation, else the conversation's last seq).
fn add_members_in(
    tx: &mut Transaction<'_>,
    gid: u64,
    uids: &[u64],
    owner: u64,
    join_seq: u64,
) -> Res<()> {
    let now = now_ms();
    let mut done = 0;
    for size in chunk_sizes(uids.len()) {
        let sql = format!(
            "INSERT IGNORE INTO group_members (group_id, user_id, role, joined_at, join_seq) VALUES {}",
            placeholders(size, "(?,?,?,?,?)")
        );
        let mut params: Vec<::mysql::Value> = Vec::with_capacity(size * 5);
        for uid in &uids[done..done + size] {
            params.push(gid.into());
            params.push((*uid).into());
            params.push(i64::from(*uid == owner).into());
            params.push(now.into());
            params.push(join_seq.into());
        }
        tx.exec_drop(sql, params)?;
        done += size;
    }
    join_group_conversation(tx, gid, uids)
}

impl SocialStore for MysqlStore {
    fn friends(&self, uid: u64) -> StoreResult<Vec<u64>> {
        self.run(|c| {
            Ok(c.exec(
                "SELECT friend_id FROM friends WHERE user_id = ? ORDER BY friend_id",
                (uid,),
            )?)
        })
    }

    fn add_friendship(&self, a: u64, b: u64) -> StoreResult<()> {
        let now = now_ms();
        self.tx(|tx| {
            for (x, y) in [(a, b), (b, a)] {
                tx.exec_drop(
                    "INSERT IGNORE INTO friends (user_id, friend_id, created_at) VALUES (?, ?, ?)",
                    (x, y, now),
                )?;
                tx.exec_drop(
                    "DELETE FROM friend_requests WHERE from_id = ? AND to_id = ?",
                    (x, y),
                )?;
            }
            Ok(())
        })
    }

    fn remove_friendship(&self, a: u64, b: u64) -> StoreResult<()> {
        self.run(|c| {
            Ok(c.exec_drop(
                "DELETE FROM friends WHERE (user_id = ? AND friend_id = ?) OR (user_id = ? AND friend_id = ?)",
                (a, b, b, a),
            )?)
        })
    }

    fn add_friend_request(&self, from: u64, to: u64, note: &str) -> StoreResult<()> {
        let now = now_ms();
        self.run(|c| {
            Ok(c.exec_drop(
                "INSERT INTO friend_requests (from_id, to_id, note, created_at) VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE note = VALUES(note), created_at = VALUES(created_at)",
                (from, to, note, now),
            )?)
        })
    }

    fn take_friend_request(&self, from: u64, to: u64) -> StoreResult<bool> {
        self.run(|c| {
            c.exec_drop(
                "DELETE FROM friend_requests WHERE from_id = ? AND to_id = ?",
                (from, to),
            )?;
            Ok(c.affected_rows() > 0)
        })
    }

    fn friend_requests(&self, uid: u64) -> StoreResult<Vec<(u64, String, i64)>> {
        self.run(|c| {
            Ok(c.exec(
                "SELECT from_id, note, created_at FROM friend_requests WHERE to_id = ? ORDER BY created_at",
                (uid,),
            )?)
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
        let mut all: Vec<u64> = vec![owner];
        all.extend(members.iter().copied().filter(|m| *m != owner));
        all.sort_unstable();
        all.dedup();
        self.tx(|tx| {
            tx.exec_drop(
                "INSERT INTO `groups` (name, owner_id, created_at, history_for_new_members)
                 VALUES (?, ?, ?, ?)",
                (name, owner, now, u8::from(history_for_new_members)),
            )?;
            let gid = tx.last_insert_id().unwrap_or(0);
            add_members_in(tx, gid, &all, owner, 0)?;
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
        self.run(|c| {
            Ok(c.exec_first(
                format!("SELECT {GROUP_COLS} FROM `groups` g WHERE g.id = ?"),
                (gid,),
            )?
            .map(group_of))
        })
    }

    fn group_members(&self, gid: u64) -> StoreResult<Option<Vec<u64>>> {
        self.run(|c| {
            let exists: Option<u64> =
                c.exec_first("SELECT id FROM `groups` WHERE id = ?", (gid,))?;
            if exists.is_none() {
                return Ok(None);
            }
            Ok(Some(c.exec(
                "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id",
                (gid,),
            )?))
        })
    }

    fn add_group_members(&self, gid: u64, uids: &[u64]) -> StoreResult<()> {
        self.tx(|tx| {
            let exists: Option<u64> =
                tx.exec_first("SELECT id FROM `groups` WHERE id = ? FOR UPDATE", (gid,))?;
            if exists.is_none() {
                return Err(Fail::Store(StoreError::NotFound("group")));
            }
            // Read under the persister's lock on the conversation row, so that a message
            // committing meanwhile is either before the join (its seq is the join seq) or after.
            let join_seq: u64 = tx
                .exec_first(
                    "SELECT last_seq FROM conversations WHERE conv_id = ? FOR UPDATE",
                    (format!("g_{gid}"),),
                )?
                .unwrap_or(0);
            add_members_in(tx, gid, uids, 0, join_seq)
        })
    }

    fn group_history_floor(&self, gid: u64, uid: u64) -> StoreResult<u64> {
        self.run(|c| {
            Ok(c.exec_first(
                "SELECT CASE WHEN g.history_for_new_members <> 0 THEN 0 ELSE m.join_seq END
                 FROM group_members m JOIN `groups` g ON g.id = m.group_id
                 WHERE m.group_id = ? AND m.user_id = ?",
                (gid, uid),
            )?
            .unwrap_or(0))
        })
    }

    fn remove_group_member(&self, gid: u64, uid: u64) -> StoreResult<()> {
        let conv = format!("g_{gid}");
        self.tx(|tx| {
            tx.exec_drop(
                "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
                (gid, uid),
            )?;
            tx.exec_drop(
                "DELETE FROM read_cursors WHERE user_id = ? AND conv_id = ?",
                (uid, &conv),
            )?;
            Ok(())
        })
    }

    fn groups_of(&self, uid: u64) -> StoreResult<Vec<Group>> {
        self.run(|c| {
            Ok(c.exec(
                format!(
                    "SELECT {GROUP_COLS} FROM group_members m
                     JOIN `groups` g ON g.id = m.group_id WHERE m.user_id = ? ORDER BY g.id"
                ),
                (uid,),
            )?
            .into_iter()
            .map(group_of)
            .collect())
        })
    }
}
