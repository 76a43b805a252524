-- wxchat production store, schema version 5: timed consultations (chat_type 3, conversation
-- c_<id>). The business backend sells the time (server API consult_create / consult_extend);
-- remaining_ms runs down only while both sides are connected and is saved as it runs.
-- state: 0 active, 1 ended (time used up).
CREATE TABLE consultations (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id       BIGINT UNSIGNED NOT NULL,
    consultant_id BIGINT UNSIGNED NOT NULL,
    total_ms      BIGINT UNSIGNED NOT NULL,
    remaining_ms  BIGINT UNSIGNED NOT NULL,
    state         TINYINT UNSIGNED NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    ended_at      BIGINT NULL,
    KEY consultations_user (user_id, state),
    KEY consultations_consultant (consultant_id, state)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT INTO schema_version (version, applied_at) VALUES (5, UNIX_TIMESTAMP() * 1000);
