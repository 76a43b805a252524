-- wxchat embedded store, schema version 6: timed consultations (chat_type 3, conversation
-- c_<id>). The business backend sells the time (server API consult_create / consult_extend);
-- remaining_ms runs down only while both sides are connected and is saved as it runs.
-- state: 0 active, 1 ended (time used up).
CREATE TABLE consultations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL,
    consultant_id INTEGER NOT NULL,
    total_ms      INTEGER NOT NULL,
    remaining_ms  INTEGER NOT NULL,
    state         INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    ended_at      INTEGER
);
CREATE INDEX consultations_user ON consultations(user_id, state);
CREATE INDEX consultations_consultant ON consultations(consultant_id, state);
