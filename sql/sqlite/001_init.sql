-- wxchat embedded store (SQLite), schema version 1.
-- Applied automatically at start (the version is kept in PRAGMA user_version).
-- Times are Unix milliseconds.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    app_uid       TEXT UNIQUE,                 -- the business system's id (doLogin, server API)
    appid         TEXT,                        -- WeChat app the openid belongs to
    openid        TEXT,
    unionid       TEXT,
    name          TEXT    NOT NULL DEFAULT '',
    head_img      TEXT    NOT NULL DEFAULT '',
    user_type     INTEGER NOT NULL DEFAULT 0,  -- 0 user, 1 agent, 2 consultant (see protocol-spec.md)
    created_at    INTEGER NOT NULL,
    last_login_at INTEGER NOT NULL DEFAULT 0,
    login_count   INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX users_openid ON users(appid, openid) WHERE openid IS NOT NULL;
CREATE INDEX users_unionid ON users(unionid) WHERE unionid IS NOT NULL;

-- Tokens are stored hashed (SHA-256): a copy of the database does not log anyone in.
CREATE TABLE tokens (
    token_hash BLOB    PRIMARY KEY,
    user_id    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX tokens_user ON tokens(user_id);

-- Friendship is stored in both directions.
CREATE TABLE friends (
    user_id    INTEGER NOT NULL,
    friend_id  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) WITHOUT ROWID;

CREATE TABLE friend_requests (
    from_id    INTEGER NOT NULL,
    to_id      INTEGER NOT NULL,
    note       TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    PRIMARY KEY (from_id, to_id)
) WITHOUT ROWID;
CREATE INDEX friend_requests_to ON friend_requests(to_id);

CREATE TABLE groups (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    owner_id   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_id  INTEGER NOT NULL,
    user_id   INTEGER NOT NULL,
    role      INTEGER NOT NULL DEFAULT 0,      -- 0 member, 1 owner
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX group_members_user ON group_members(user_id);

-- One row per conversation: its last seq serves `conversations` without scanning messages.
CREATE TABLE conversations (
    conv_id     TEXT    PRIMARY KEY,
    chat_type   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL DEFAULT 0,
    last_msg_id INTEGER,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Messages: (conv_id, seq) is the order a client syncs by; seq starts at 1 and has no gaps.
CREATE TABLE messages (
    conv_id       TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    msg_id        INTEGER NOT NULL,
    client_msg_id TEXT,
    from_id       INTEGER NOT NULL,
    to_id         INTEGER NOT NULL,
    chat_type     INTEGER NOT NULL,
    msg_type      INTEGER NOT NULL,
    body          TEXT    NOT NULL,            -- the `msg` field as JSON
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (conv_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_msg_id ON messages(msg_id);
CREATE UNIQUE INDEX messages_client ON messages(from_id, client_msg_id) WHERE client_msg_id IS NOT NULL;

-- Which conversations a user is in, and how far they have read.
CREATE TABLE read_cursors (
    user_id  INTEGER NOT NULL,
    conv_id  TEXT    NOT NULL,
    read_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conv_id)
) WITHOUT ROWID;
