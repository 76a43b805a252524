-- wxchat embedded store, schema version 5: customer-service sessions. A customer has at most one
-- open session (closed_at NULL), queued (agent_id NULL) or assigned to an agent; closed sessions
-- keep their rating. At start the open ones rebuild the desk (queue order = created_at, id).
CREATE TABLE service_sessions (
    id          INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    agent_id    INTEGER,
    created_at  INTEGER NOT NULL,
    assigned_at INTEGER,
    closed_at   INTEGER,
    rating      INTEGER,
    comment     TEXT    NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX service_sessions_open ON service_sessions(customer_id) WHERE closed_at IS NULL;
CREATE INDEX service_sessions_customer ON service_sessions(customer_id, id);
