//! Users and tokens on SQLite: registered users, profiles, login tokens, anonymous visitors.

use super::*;

impl UserStore for SqliteStore {
    fn upsert_app_user(
        &self,
        app_uid: &str,
        profile: &Profile,
        login: bool,
    ) -> StoreResult<(User, bool)> {
        let now = now_ms();
        self.with_tx(|tx| {
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT id FROM users WHERE app_uid = ?1",
                    params![app_uid],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let created = existing.is_none();
            let id = match existing {
                Some(id) => {
                    tx.execute(
                        "UPDATE users SET name = COALESCE(?2, name), head_img = COALESCE(?3, head_img),
                         user_type = COALESCE(?4, user_type) WHERE id = ?1",
                        params![id, profile.name, profile.head_img, profile.user_type],
                    )
                    .map_err(unavailable)?;
                    id
                }
                None => {
                    tx.execute(
                        "INSERT INTO users (app_uid, name, head_img, user_type, created_at)
                         VALUES (?1, COALESCE(?2, ''), COALESCE(?3, ''), COALESCE(?4, 0), ?5)",
                        params![app_uid, profile.name, profile.head_img, profile.user_type, now],
                    )
                    .map_err(unavailable)?;
                    tx.last_insert_rowid()
                }
            };
            if login {
                tx.execute(
                    "UPDATE users SET last_login_at = ?2, login_count = login_count + 1 WHERE id = ?1",
                    params![id, now],
                )
                .map_err(unavailable)?;
            }
            let user = tx
                .query_row(
                    &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                    params![id],
                    user_row,
                )
                .map_err(unavailable)?;
            Ok((user, created))
        })
    }

    fn user(&self, uid: u64) -> StoreResult<Option<User>> {
        self.with_conn(|c| {
            c.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                params![uid as i64],
                user_row,
            )
            .optional()
        })
    }

    fn existing_users(&self, uids: &[u64]) -> StoreResult<Vec<u64>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
            let mut found = Vec::new();
            for &uid in uids {
                if stmt.exists(params![uid as i64])? {
                    found.push(uid);
                }
            }
            Ok(found)
        })
    }

    fn users(&self, uids: &[u64]) -> StoreResult<Vec<User>> {
        self.with_conn(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE id = ?1"))?;
            let mut found = Vec::with_capacity(uids.len());
            for &uid in uids {
                if let Some(u) = stmt.query_row(params![uid as i64], user_row).optional()? {
                    found.push(u);
                }
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
        self.with_tx(|tx| {
            let select = format!("SELECT {USER_COLS} FROM users WHERE id = ?1");
            let Some(before) = tx
                .query_row(&select, params![uid as i64], user_row)
                .optional()
                .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let changed = name.is_some_and(|n| n != before.name)
                || head_img.is_some_and(|h| h != before.head_img);
            if !changed {
                return Ok(Some((before, false)));
            }
            tx.execute(
                "UPDATE users SET name = COALESCE(?2, name), head_img = COALESCE(?3, head_img) WHERE id = ?1",
                params![uid as i64, name, head_img],
            )
            .map_err(unavailable)?;
            let after = tx
                .query_row(&select, params![uid as i64], user_row)
                .map_err(unavailable)?;
            Ok(Some((after, true)))
        })
    }

    fn create_visitor(&self) -> StoreResult<User> {
        let now = now_ms();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO users (name, user_type, created_at, last_login_at, login_count)
                 VALUES ('访客', ?1, ?2, ?2, 1)",
                params![USER_TYPE_VISITOR, now],
            )
            .map_err(unavailable)?;
            tx.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                params![tx.last_insert_rowid()],
                user_row,
            )
            .map_err(unavailable)
        })
    }

    fn purge_idle_visitors(&self, idle_before: i64, limit: u32) -> StoreResult<Vec<u64>> {
        // Deletes conversations: the sequencer reads what is left afresh afterwards.
        self.exclusive_tx(true, |tx| {
            let ids: Vec<i64> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT u.id FROM users u
                         LEFT JOIN conversations c ON c.conv_id = 's_' || u.id
                         WHERE u.user_type = ?1 AND u.last_login_at < ?2
                           AND COALESCE(c.updated_at, 0) < ?2
                           AND NOT EXISTS (SELECT 1 FROM service_sessions s
                                           WHERE s.customer_id = u.id AND s.closed_at IS NULL)
                         ORDER BY u.last_login_at, u.id LIMIT ?3",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![USER_TYPE_VISITOR, idle_before, limit], |r| r.get(0))
                    .map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            };
            if !ids.is_empty() {
                // Their messages may include the newest: its id must not be handed out again.
                tx.prepare_cached(super::messages::RECORD_PURGED_MSG_ID)
                    .and_then(|mut s| s.execute([]))
                    .map_err(unavailable)?;
            }
            for id in &ids {
                let conv = format!("s_{id}");
                let [messages, runs] = super::messages::DELETE_CONVERSATION_MESSAGES;
                for sql in [
                    messages,
                    runs,
                    "DELETE FROM conversations WHERE conv_id = ?1",
                    "DELETE FROM read_cursors WHERE conv_id = ?1",
                ] {
                    tx.prepare_cached(sql)
                        .and_then(|mut s| s.execute(params![conv]))
                        .map_err(unavailable)?;
                }
                for sql in [
                    "DELETE FROM tokens WHERE user_id = ?1",
                    "DELETE FROM read_cursors WHERE user_id = ?1",
                    "DELETE FROM users WHERE id = ?1",
                ] {
                    tx.prepare_cached(sql)
                        .and_then(|mut s| s.execute(params![id]))
                        .map_err(unavailable)?;
                }
            }
            Ok(ids.into_iter().map(|v| v as u64).collect())
        })
    }

    fn convert_visitor(&self, visitor: u64, uid: u64) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            let kind: Option<i64> = tx
                .query_row(
                    "SELECT user_type FROM users WHERE id = ?1",
                    params![visitor as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            match kind {
                None => return Err(StoreError::NotFound("visitor")),
                Some(USER_TYPE_VISITOR) => {}
                Some(_) => return Err(StoreError::Conflict("not a visitor (or already converted)")),
            }
            tx.execute(
                "UPDATE users SET user_type = ?2 WHERE id = ?1",
                params![visitor as i64, USER_TYPE_CONVERTED],
            )
            .map_err(unavailable)?;
            let uid_has_open: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM service_sessions WHERE customer_id = ?1 AND closed_at IS NULL)",
                    params![uid as i64],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            if uid_has_open {
                tx.execute(
                    "UPDATE service_sessions SET closed_at = ?2 WHERE customer_id = ?1 AND closed_at IS NULL",
                    params![visitor as i64, now],
                )
                .map_err(unavailable)?;
            }
            tx.execute(
                "UPDATE service_sessions SET customer_id = ?2 WHERE customer_id = ?1",
                params![visitor as i64, uid as i64],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn put_token(&self, token_hash: &[u8], uid: u64, expires_at: i64) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            // Expired tokens of this user go at the same time: the table does not grow forever.
            tx.execute(
                "DELETE FROM tokens WHERE user_id = ?1 AND expires_at <= ?2",
                params![uid as i64, now],
            )
            .map_err(unavailable)?;
            tx.execute(
                "INSERT INTO tokens (token_hash, user_id, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash, uid as i64, expires_at, now],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn token_user(&self, token_hash: &[u8], now: i64) -> StoreResult<Option<u64>> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT user_id FROM tokens WHERE token_hash = ?1 AND expires_at > ?2",
                params![token_hash, now],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(|u| u as u64))
        })
    }

    fn delete_token(&self, token_hash: &[u8]) -> StoreResult<()> {
        self.with_tx(|tx| {
            tx.execute(
                "DELETE FROM tokens WHERE token_hash = ?1",
                params![token_hash],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }
}
