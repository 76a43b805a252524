-- wxchat production store (MySQL 5.7+ / MariaDB 10.3+), schema version 1.
-- Applied automatically at start; to import by hand into an existing database:
--   mysql -u root wxchat < sql/mysql/001_init.sql
-- The same tables and meaning as sql/sqlite/001_init.sql. Times are Unix milliseconds.
-- utf8mb4 everywhere: names and messages carry emoji.

CREATE TABLE IF NOT EXISTS schema_version (
    version    INT    NOT NULL PRIMARY KEY,
    applied_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE users (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    app_uid       VARCHAR(64)  NULL,            -- the business system's id (doLogin, server API)
    appid         VARCHAR(32)  NULL,            -- WeChat app the openid belongs to
    openid        VARCHAR(64)  NULL,
    unionid       VARCHAR(64)  NULL,
    name          VARCHAR(255) NOT NULL DEFAULT '',
    head_img      VARCHAR(1024) NOT NULL DEFAULT '',
    user_type     INT          NOT NULL DEFAULT 0, -- 0 user, 1 agent, 2 consultant
    created_at    BIGINT       NOT NULL,
    last_login_at BIGINT       NOT NULL DEFAULT 0,
    login_count   BIGINT       NOT NULL DEFAULT 0,
    UNIQUE KEY users_app_uid (app_uid),
    UNIQUE KEY users_openid (appid, openid),
    KEY users_unionid (unionid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Tokens are stored hashed (SHA-256): a copy of the database does not log anyone in.
-- Used when no Redis is configured; with Redis, tokens live there with a TTL.
CREATE TABLE tokens (
    token_hash BINARY(32)      NOT NULL PRIMARY KEY,
    user_id    BIGINT UNSIGNED NOT NULL,
    expires_at BIGINT          NOT NULL,
    created_at BIGINT          NOT NULL,
    KEY tokens_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Friendship is stored in both directions.
CREATE TABLE friends (
    user_id    BIGINT UNSIGNED NOT NULL,
    friend_id  BIGINT UNSIGNED NOT NULL,
    created_at BIGINT          NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE friend_requests (
    from_id    BIGINT UNSIGNED NOT NULL,
    to_id      BIGINT UNSIGNED NOT NULL,
    note       VARCHAR(255)    NOT NULL DEFAULT '',
    created_at BIGINT          NOT NULL,
    PRIMARY KEY (from_id, to_id),
    KEY friend_requests_to (to_id, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE `groups` (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name       VARCHAR(255)    NOT NULL,
    owner_id   BIGINT UNSIGNED NOT NULL,
    created_at BIGINT          NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE group_members (
    group_id  BIGINT UNSIGNED NOT NULL,
    user_id   BIGINT UNSIGNED NOT NULL,
    role      INT             NOT NULL DEFAULT 0, -- 0 member, 1 owner
    joined_at BIGINT          NOT NULL,
    PRIMARY KEY (group_id, user_id),
    KEY group_members_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per conversation: its last seq serves `conversations` without scanning messages, and
-- the persister allocates seqs from it under a row lock (several wxchat processes may write).
CREATE TABLE conversations (
    conv_id     VARCHAR(64)     NOT NULL PRIMARY KEY,
    chat_type   TINYINT UNSIGNED NOT NULL,
    last_seq    BIGINT UNSIGNED NOT NULL DEFAULT 0,
    last_msg_id BIGINT UNSIGNED NULL,
    updated_at  BIGINT          NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Messages: (conv_id, seq) is the order a client syncs by; seq starts at 1 and has no gaps.
CREATE TABLE messages (
    conv_id       VARCHAR(64)      NOT NULL,
    seq           BIGINT UNSIGNED  NOT NULL,
    msg_id        BIGINT UNSIGNED  NOT NULL,
    client_msg_id VARCHAR(64)      NULL,
    from_id       BIGINT UNSIGNED  NOT NULL,
    to_id         BIGINT UNSIGNED  NOT NULL,
    chat_type     TINYINT UNSIGNED NOT NULL,
    msg_type      TINYINT UNSIGNED NOT NULL,
    body          MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, -- the `msg` field as JSON
    created_at    BIGINT           NOT NULL,
    PRIMARY KEY (conv_id, seq),
    UNIQUE KEY messages_msg_id (msg_id),
    UNIQUE KEY messages_client (from_id, client_msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Which conversations a user is in, and how far they have read.
CREATE TABLE read_cursors (
    user_id  BIGINT UNSIGNED NOT NULL,
    conv_id  VARCHAR(64)     NOT NULL,
    read_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conv_id),
    KEY read_cursors_conv (conv_id, read_seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Id allocation shared by every wxchat process writing to this database: the persister takes
-- `msg_id` ranges from here inside its batch transaction (the row lock also orders batches).
CREATE TABLE counters (
    name  VARCHAR(32)     NOT NULL PRIMARY KEY,
    value BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT INTO counters (name, value) VALUES ('msg_id', 0);

INSERT INTO schema_version (version, applied_at) VALUES (1, UNIX_TIMESTAMP() * 1000);
