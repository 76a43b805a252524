-- wxchat embedded store, schema version 9: messages are stored in msg_id order.
-- Until version 8 the table was keyed by (conv_id, seq): every message was a full row inserted
-- into its conversation's leaf, so a batch over many conversations rewrote one page per
-- conversation and split them as they filled. Msg ids only grow, so keyed by msg_id (the rowid)
-- a batch appends its rows to the end of the table; (conv_id, seq) becomes a unique index of
-- small entries, which `sync` and `history` read in order. The separate msg_id index goes.
-- The copy takes a few seconds per million messages, once, at the first start of this version.
CREATE TABLE messages_by_id (
    msg_id        INTEGER PRIMARY KEY,
    conv_id       TEXT    NOT NULL,
    seq           INTEGER NOT NULL,            -- starts at 1 in each conversation, no gaps
    client_msg_id TEXT,
    from_id       INTEGER NOT NULL,
    to_id         INTEGER NOT NULL,
    chat_type     INTEGER NOT NULL,
    msg_type      INTEGER NOT NULL,
    body          TEXT    NOT NULL,            -- the `msg` field as JSON
    created_at    INTEGER NOT NULL
);
INSERT INTO messages_by_id (msg_id, conv_id, seq, client_msg_id, from_id, to_id, chat_type,
                            msg_type, body, created_at)
    SELECT msg_id, conv_id, seq, client_msg_id, from_id, to_id, chat_type, msg_type, body,
           created_at
    FROM messages ORDER BY msg_id;
DROP TABLE messages;
ALTER TABLE messages_by_id RENAME TO messages;
CREATE UNIQUE INDEX messages_conv_seq ON messages(conv_id, seq);
CREATE UNIQUE INDEX messages_client ON messages(from_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
