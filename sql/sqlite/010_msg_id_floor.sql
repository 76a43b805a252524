-- wxchat embedded store, schema version 10: a msg id is never handed out twice.
-- Msg ids are numbered from the largest one in the messages table. The visitor purge deletes
-- messages, and when it deleted the newest one, that id went to the next message (a client
-- holding the old id for a receipt or a recall would have named the new one). The purge now
-- records the largest id in the table before it deletes (`msg_id_purged`), and numbering starts
-- past both. The same shape as the MySQL store's counters table.
CREATE TABLE counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
