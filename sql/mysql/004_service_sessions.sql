-- wxchat production store, schema version 4: customer-service sessions. A customer has at most
-- one open session (closed_at NULL: the generated column open_customer is then the customer and
-- unique), queued (agent_id NULL) or assigned to an agent; closed sessions keep their rating.
-- At start the open ones rebuild the desk (queue order = created_at, id).
CREATE TABLE service_sessions (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id   BIGINT UNSIGNED NOT NULL,
    agent_id      BIGINT UNSIGNED NULL,
    created_at    BIGINT          NOT NULL,
    assigned_at   BIGINT          NULL,
    closed_at     BIGINT          NULL,
    rating        TINYINT UNSIGNED NULL,
    comment       VARCHAR(1024)   NOT NULL DEFAULT '',
    open_customer BIGINT UNSIGNED AS (IF(closed_at IS NULL, customer_id, NULL)) STORED,
    UNIQUE KEY service_sessions_open (open_customer),
    KEY service_sessions_customer (customer_id, id),
    KEY service_sessions_closed (closed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT INTO schema_version (version, applied_at) VALUES (4, UNIX_TIMESTAMP() * 1000);
