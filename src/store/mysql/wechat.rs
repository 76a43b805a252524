//! WeChat identities on MySQL: logins by openid / unionid, session keys, customer-service
//! reply routes.

use super::*;

impl WechatStore for MysqlStore {
    fn wechat_login(&self, id: &WechatIdentity, login: bool) -> StoreResult<(User, bool)> {
        let now = now_ms();
        // A concurrent first login of the same identity or unionid meets a unique key, and the
        // retry finds what the other one created. The lookups are plain reads, not FOR UPDATE:
        // locking a row that does not exist locks the gap in the index, and first logins of
        // different users falling in one gap then deadlock on their inserts.
        self.tx(|tx| {
            let known: Option<u64> = tx.exec_first(
                "SELECT user_id FROM wx_identities WHERE appid = ? AND openid = ?",
                (&id.appid, &id.openid),
            )?;
            let (uid, created) =
                match known {
                    Some(uid) => {
                        tx.exec_drop(
                            "UPDATE wx_identities SET session_key = COALESCE(?, session_key),
                         unionid = COALESCE(?, unionid), updated_at = ?
                         WHERE appid = ? AND openid = ?",
                            (&id.session_key, &id.unionid, now, &id.appid, &id.openid),
                        )?;
                        (uid, false)
                    }
                    None => {
                        let by_union: Option<u64> = match &id.unionid {
                            Some(u) => tx.exec_first(
                                "SELECT id FROM users WHERE unionid = ?",
                                (u,),
                            )?,
                            None => None,
                        };
                        let (uid, created) = match by_union {
                            Some(uid) => (uid, false),
                            None => {
                                tx.exec_drop(
                                "INSERT INTO users (name, created_at, unionid) VALUES ('', ?, ?)",
                                (now, &id.unionid),
                            )?;
                                (tx.last_insert_id().unwrap_or(0), true)
                            }
                        };
                        tx.exec_drop(
                        "INSERT INTO wx_identities (appid, openid, user_id, unionid, session_key,
                         created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (&id.appid, &id.openid, uid, &id.unionid, &id.session_key, now, now),
                    )?;
                        (uid, created)
                    }
                };
            if let Some(u) = &id.unionid {
                let holder: Option<u64> =
                    tx.exec_first("SELECT id FROM users WHERE unionid = ?", (u,))?;
                if holder.is_none() {
                    tx.exec_drop(
                        "UPDATE users SET unionid = ? WHERE id = ? AND unionid IS NULL",
                        (u, uid),
                    )?;
                }
            }
            if login {
                tx.exec_drop(
                    "UPDATE users SET last_login_at = ?, login_count = login_count + 1 WHERE id = ?",
                    (now, uid),
                )?;
            }
            let user = self
                .user_in(tx, uid)?
                .ok_or(Fail::Store(StoreError::NotFound("user")))?;
            Ok((user, created))
        })
    }

    fn set_cs_route(&self, uid: u64, appid: &str, openid: &str) -> StoreResult<()> {
        let now = now_ms();
        self.run(|c| {
            c.exec_drop(
                "INSERT INTO wx_cs_routes (user_id, appid, openid, updated_at) VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE appid = VALUES(appid), openid = VALUES(openid),
                 updated_at = VALUES(updated_at)",
                (uid, appid, openid, now),
            )?;
            Ok(())
        })
    }

    fn cs_route(&self, uid: u64) -> StoreResult<Option<(String, String)>> {
        self.run(|c| {
            Ok(c.exec_first(
                "SELECT appid, openid FROM wx_cs_routes WHERE user_id = ?",
                (uid,),
            )?)
        })
    }

    fn wechat_session_key(&self, uid: u64, appid: &str) -> StoreResult<Option<String>> {
        self.run(|c| {
            Ok(c.exec_first(
                "SELECT session_key FROM wx_identities WHERE user_id = ? AND appid = ?
                 AND session_key IS NOT NULL ORDER BY updated_at DESC LIMIT 1",
                (uid, appid),
            )?)
        })
    }
}
