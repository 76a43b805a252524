-- wxchat production store, schema version 3: where customer-service replies to a WeChat user go.
-- A mini-program / mini-game user who writes to customer service is answered through
-- cgi-bin/message/custom/send of the app they wrote from; this row remembers it (the latest
-- contact wins), so replies still reach them after a restart.
CREATE TABLE wx_cs_routes (
    user_id    BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    appid      VARCHAR(32)     NOT NULL,
    openid     VARCHAR(64)     NOT NULL,
    updated_at BIGINT          NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT INTO schema_version (version, applied_at) VALUES (3, UNIX_TIMESTAMP() * 1000);
