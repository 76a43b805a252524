-- wxchat embedded store, schema version 4: where customer-service replies to a WeChat user go.
-- A mini-program / mini-game user who writes to customer service is answered through
-- cgi-bin/message/custom/send of the app they wrote from; this row remembers it (the latest
-- contact wins), so replies still reach them after a restart.
CREATE TABLE wx_cs_routes (
    user_id    INTEGER PRIMARY KEY,
    appid      TEXT    NOT NULL,
    openid     TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);
