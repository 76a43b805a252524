-- wxchat embedded store, schema version 3: WeChat identities. One wxchat user may have several
-- (an openid per mini-program / official account); they are merged by unionid. The session_key
-- of a mini-program login is kept here, server-side only, for decrypting wx.getPhoneNumber-style
-- data. (users.appid / users.openid of version 1 are unused; identities live here.)
CREATE TABLE wx_identities (
    appid       TEXT    NOT NULL,
    openid      TEXT    NOT NULL,
    user_id     INTEGER NOT NULL,
    unionid     TEXT,
    session_key TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (appid, openid)
) WITHOUT ROWID;
CREATE INDEX wx_identities_user ON wx_identities(user_id);

-- One user per unionid.
DROP INDEX users_unionid;
CREATE UNIQUE INDEX users_unionid ON users(unionid) WHERE unionid IS NOT NULL;
