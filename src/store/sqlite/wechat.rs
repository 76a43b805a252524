//! WeChat identities on SQLite: logins by openid / unionid, session keys, customer-service
//! reply routes.

use super::*;

impl WechatStore for SqliteStore {
    fn wechat_login(&self, id: &WechatIdentity, login: bool) -> StoreResult<(User, bool)> {
        let now = now_ms();
        self.with_tx(|tx| {
            let known: Option<i64> = tx
                .query_row(
                    "SELECT user_id FROM wx_identities WHERE appid = ?1 AND openid = ?2",
                    params![id.appid, id.openid],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let (uid, created) = match known {
                Some(uid) => {
                    tx.execute(
                        "UPDATE wx_identities SET session_key = COALESCE(?3, session_key),
                         unionid = COALESCE(?4, unionid), updated_at = ?5
                         WHERE appid = ?1 AND openid = ?2",
                        params![id.appid, id.openid, id.session_key, id.unionid, now],
                    )
                    .map_err(unavailable)?;
                    (uid, false)
                }
                None => {
                    let by_union: Option<i64> = match &id.unionid {
                        Some(u) => tx
                            .query_row("SELECT id FROM users WHERE unionid = ?1", params![u], |r| {
                                r.get(0)
                            })
                            .optional()
                            .map_err(unavailable)?,
                        None => None,
                    };
                    let (uid, created) = match by_union {
                        Some(uid) => (uid, false),
                        None => {
                            tx.execute(
                                "INSERT INTO users (name, created_at) VALUES ('', ?1)",
                                params![now],
                            )
                            .map_err(unavailable)?;
                            (tx.last_insert_rowid(), true)
                        }
                    };
                    tx.execute(
                        "INSERT INTO wx_identities (appid, openid, user_id, unionid, session_key,
                         created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                        params![id.appid, id.openid, uid, id.unionid, id.session_key, now],
                    )
                    .map_err(unavailable)?;
                    (uid, created)
                }
            };
            if let Some(u) = &id.unionid {
                // Learn the unionid (WeChat gives it only once the app is bound to an open
                // platform account); another user holding it already keeps it.
                tx.execute(
                    "UPDATE users SET unionid = ?2 WHERE id = ?1 AND unionid IS NULL
                     AND NOT EXISTS (SELECT 1 FROM users WHERE unionid = ?2)",
                    params![uid, u],
                )
                .map_err(unavailable)?;
            }
            if login {
                tx.execute(
                    "UPDATE users SET last_login_at = ?2, login_count = login_count + 1 WHERE id = ?1",
                    params![uid, now],
                )
                .map_err(unavailable)?;
            }
            let user = tx
                .query_row(
                    &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                    params![uid],
                    user_row,
                )
                .map_err(unavailable)?;
            Ok((user, created))
        })
    }

    fn set_cs_route(&self, uid: u64, appid: &str, openid: &str) -> StoreResult<()> {
        let now = now_ms();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO wx_cs_routes (user_id, appid, openid, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id) DO UPDATE SET appid = excluded.appid,
                 openid = excluded.openid, updated_at = excluded.updated_at",
                params![uid, appid, openid, now],
            )
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn cs_route(&self, uid: u64) -> StoreResult<Option<(String, String)>> {
        self.with_tx(|tx| {
            tx.query_row(
                "SELECT appid, openid FROM wx_cs_routes WHERE user_id = ?1",
                params![uid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn wechat_session_key(&self, uid: u64, appid: &str) -> StoreResult<Option<String>> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT session_key FROM wx_identities WHERE user_id = ?1 AND appid = ?2
                 AND session_key IS NOT NULL ORDER BY updated_at DESC LIMIT 1",
                params![uid as i64, appid],
                |r| r.get(0),
            )
            .optional()
        })
    }
}
