-- wxchat production store, schema version 2: WeChat identities. One wxchat user may have several
-- (an openid per mini-program / official account); they are merged by unionid. The session_key
-- of a mini-program login is kept here, server-side only, for decrypting wx.getPhoneNumber-style
-- data. (users.appid / users.openid of version 1 are unused; identities live here.)
CREATE TABLE wx_identities (
    appid       VARCHAR(32)     NOT NULL,
    openid      VARCHAR(64)     NOT NULL,
    user_id     BIGINT UNSIGNED NOT NULL,
    unionid     VARCHAR(64)     NULL,
    session_key VARCHAR(64)     NULL,
    created_at  BIGINT          NOT NULL,
    updated_at  BIGINT          NOT NULL,
    PRIMARY KEY (appid, openid),
    KEY wx_identities_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One user per unionid (NULLs do not collide).
ALTER TABLE users DROP INDEX users_unionid, ADD UNIQUE KEY users_unionid (unionid);

INSERT INTO schema_version (version, applied_at) VALUES (2, UNIX_TIMESTAMP() * 1000);
