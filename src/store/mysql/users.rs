//! Users and tokens on MySQL: registered users, profiles, login tokens, anonymous visitors.

use super::*;

impl UserStore for MysqlStore {
    fn upsert_app_user(
        &self,
        app_uid: &str,
        profile: &Profile,
        login: bool,
    ) -> StoreResult<(User, bool)> {
        let now = now_ms();
        self.tx(|tx| {
            // A plain read, not FOR UPDATE: locking a row that does not exist locks the gap in
            // the index, and first logins of different app_uids falling in one gap then deadlock
            // on their inserts. The UPDATE below locks an existing row; a concurrent insert of
            // the same app_uid is a duplicate key, retried.
            let existing: Option<u64> =
                tx.exec_first("SELECT id FROM users WHERE app_uid = ?", (app_uid,))?;
            let created = existing.is_none();
            let id = match existing {
                Some(id) => {
                    tx.exec_drop(
                        "UPDATE users SET name = COALESCE(?, name), head_img = COALESCE(?, head_img),
                         user_type = COALESCE(?, user_type) WHERE id = ?",
                        (&profile.name, &profile.head_img, profile.user_type, id),
                    )?;
                    id
                }
                None => {
                    // A concurrent first login of the same app_uid makes this a duplicate key,
                    // and the retry finds the row.
                    tx.exec_drop(
                        "INSERT INTO users (app_uid, name, head_img, user_type, created_at)
                         VALUES (?, COALESCE(?, ''), COALESCE(?, ''), COALESCE(?, 0), ?)",
                        (
                            app_uid,
                            &profile.name,
                            &profile.head_img,
                            profile.user_type,
                            now,
                        ),
                    )?;
                    tx.last_insert_id().unwrap_or(0)
                }
            };
            if login {
                tx.exec_drop(
                    "UPDATE users SET last_login_at = ?, login_count = login_count + 1 WHERE id = ?",
                    (now, id),
                )?;
            }
            let user = tx
                .exec_first(format!("SELECT {USER_COLS} FROM users WHERE id = ?"), (id,))?
                .map(user_of)
                .ok_or(Fail::Store(StoreError::NotFound("user")))?;
            Ok((user, created))
        })
    }

    fn user(&self, uid: u64) -> StoreResult<Option<User>> {
        self.run(|c| self.user_in(c, uid))
    }

    fn existing_users(&self, uids: &[u64]) -> StoreResult<Vec<u64>> {
        self.run(|c| {
            let mut found = Vec::new();
            let mut done = 0;
            for size in chunk_sizes(uids.len()) {
                let sql = format!(
                    "SELECT id FROM users WHERE id IN ({})",
                    placeholders(size, "?")
                );
                let params: Vec<::mysql::Value> = uids[done..done + size]
                    .iter()
                    .map(|u| (*u).into())
                    .collect();
                found.extend(c.exec::<u64, _, _>(sql, params)?);
                done += size;
            }
            // In the input order, like the embedded store.
            let set: std::collections::HashSet<u64> = found.into_iter().collect();
            Ok(uids.iter().copied().filter(|u| set.contains(u)).collect())
        })
    }

    fn users(&self, uids: &[u64]) -> StoreResult<Vec<User>> {
        self.run(|c| {
            let mut found = Vec::with_capacity(uids.len());
            let mut done = 0;
            for size in chunk_sizes(uids.len()) {
                let sql = format!(
                    "SELECT {USER_COLS} FROM users WHERE id IN ({})",
                    placeholders(size, "?")
                );
                let params: Vec<::mysql::Value> = uids[done..done + size]
                    .iter()
                    .map(|u| (*u).into())
                    .collect();
                found.extend(c.exec(sql, params)?.into_iter().map(user_of));
                done += size;
            }
            Ok(found)
        })
    }

    fn update_profile(
        &self,
        uid: u64,
        name: Option<&str>,
        head_img: Option<&str>,
    ) -> StoreResult<Option<(User, bool)>> {
        self.tx(|tx| {
            let Some(before) = tx
                .exec_first(
                    format!("SELECT {USER_COLS} FROM users WHERE id = ? FOR UPDATE"),
                    (uid,),
                )?
                .map(user_of)
            else {
                return Ok(None);
            };
            let changed = name.is_some_and(|n| n != before.name)
                || head_img.is_some_and(|h| h != before.head_img);
            if !changed {
                return Ok(Some((before, false)));
            }
            tx.exec_drop(
                "UPDATE users SET name = COALESCE(?, name), head_img = COALESCE(?, head_img) WHERE id = ?",
                (name, head_img, uid),
            )?;
            let after = self
                .user_in(tx, uid)?
                .ok_or(Fail::Store(StoreError::NotFound("user")))?;
            Ok(Some((after, true)))
        })
    }

    fn create_visitor(&self) -> StoreResult<User> {
        let now = now_ms();
        self.tx(|tx| {
            tx.exec_drop(
                "INSERT INTO users (name, user_type, created_at, last_login_at, login_count)
                 VALUES ('访客', ?, ?, ?, 1)",
                (USER_TYPE_VISITOR, now, now),
            )?;
            let id = tx.last_insert_id().unwrap_or(0);
            tx.exec_first(format!("SELECT {USER_COLS} FROM users WHERE id = ?"), (id,))?
                .map(user_of)
                .ok_or(Fail::Store(StoreError::NotFound("user")))
        })
    }

    fn purge_idle_visitors(&self, idle_before: i64, limit: u32) -> StoreResult<Vec<u64>> {
        self.tx(|tx| {
            let ids: Vec<u64> = tx.exec(
                "SELECT u.id FROM users u
                 LEFT JOIN conversations c ON c.conv_id = CONCAT('s_', u.id)
                 WHERE u.user_type = ? AND u.last_login_at < ?
                   AND COALESCE(c.updated_at, 0) < ?
                   AND NOT EXISTS (SELECT 1 FROM service_sessions s
                                   WHERE s.customer_id = u.id AND s.closed_at IS NULL)
                 ORDER BY u.last_login_at, u.id LIMIT ?",
                (USER_TYPE_VISITOR, idle_before, idle_before, limit),
            )?;
            for id in &ids {
                let conv = format!("s_{id}");
                for sql in [
                    "DELETE FROM messages WHERE conv_id = ?",
                    "DELETE FROM conversations WHERE conv_id = ?",
                    "DELETE FROM read_cursors WHERE conv_id = ?",
                ] {
                    tx.exec_drop(sql, (&conv,))?;
                }
                for sql in [
                    "DELETE FROM tokens WHERE user_id = ?",
                    "DELETE FROM read_cursors WHERE user_id = ?",
                    "DELETE FROM users WHERE id = ?",
                ] {
                    tx.exec_drop(sql, (id,))?;
                }
            }
            Ok(ids)
        })
    }

    fn convert_visitor(&self, visitor: u64, uid: u64) -> StoreResult<()> {
        let now = now_ms();
        self.tx(|tx| {
            let kind: Option<i64> = tx.exec_first(
                "SELECT user_type FROM users WHERE id = ? FOR UPDATE",
                (visitor,),
            )?;
            match kind {
                None => return Err(Fail::Store(StoreError::NotFound("visitor"))),
                Some(USER_TYPE_VISITOR) => {}
                Some(_) => {
                    return Err(Fail::Store(StoreError::Conflict(
                        "not a visitor (or already converted)",
                    )))
                }
            }
            tx.exec_drop(
                "UPDATE users SET user_type = ? WHERE id = ?",
                (USER_TYPE_CONVERTED, visitor),
            )?;
            let uid_has_open: Option<u64> = tx.exec_first(
                "SELECT id FROM service_sessions WHERE open_customer = ? FOR UPDATE",
                (uid,),
            )?;
            if uid_has_open.is_some() {
                tx.exec_drop(
                    "UPDATE service_sessions SET closed_at = ? WHERE open_customer = ?",
                    (now, visitor),
                )?;
            }
            tx.exec_drop(
                "UPDATE service_sessions SET customer_id = ? WHERE customer_id = ?",
                (uid, visitor),
            )?;
            Ok(())
        })
    }

    fn put_token(&self, token_hash: &[u8], uid: u64, expires_at: i64) -> StoreResult<()> {
        let now = now_ms();
        self.tx(|tx| {
            // Expired tokens of this user go at the same time: the table does not grow forever.
            // Looked for first with a plain read: a DELETE that finds nothing still locks the
            // index gap where the rows would be, and two new users (adjacent ids, the same gap
            // at the end of `tokens_user`) then deadlocked on their inserts, often enough that
            // creating users from four threads failed with 503.
            let expired: Option<u8> = tx.exec_first(
                "SELECT 1 FROM tokens WHERE user_id = ? AND expires_at <= ? LIMIT 1",
                (uid, now),
            )?;
            if expired.is_some() {
                tx.exec_drop(
                    "DELETE FROM tokens WHERE user_id = ? AND expires_at <= ?",
                    (uid, now),
                )?;
            }
            tx.exec_drop(
                "INSERT INTO tokens (token_hash, user_id, expires_at, created_at) VALUES (?, ?, ?, ?)",
                (token_hash, uid, expires_at, now),
            )?;
            Ok(())
        })
    }

    fn token_user(&self, token_hash: &[u8], now: i64) -> StoreResult<Option<u64>> {
        self.run(|c| {
            Ok(c.exec_first(
                "SELECT user_id FROM tokens WHERE token_hash = ? AND expires_at > ?",
                (token_hash, now),
            )?)
        })
    }

    fn delete_token(&self, token_hash: &[u8]) -> StoreResult<()> {
        self.run(|c| Ok(c.exec_drop("DELETE FROM tokens WHERE token_hash = ?", (token_hash,))?))
    }
}
