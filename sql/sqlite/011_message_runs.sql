-- wxchat embedded store, schema version 11: a conversation's messages are found through runs.
-- Until version 10 a unique index on messages (conv_id, seq) mapped each seq to its row: one
-- index entry per message, so a batch over 10,000 conversations inserted every message into
-- its conversation's leaf of the index and rewrote nearly every leaf of it at each commit.
-- A batch numbers each conversation's messages together: consecutive seqs get consecutive msg
-- ids. A run row says so once: seqs first_seq .. first_seq + count - 1 are the messages with ids
-- first_msg_id .. first_msg_id + count - 1 (a message of the range may be gone: readers check
-- the row's conv_id and seq). A batch writes one row per conversation it touches, not one entry
-- per message. Runs of one conversation never overlap, and seqs only grow with msg ids.
-- Existing messages get one run each (the old index's entries as they were), at the first start
-- of this version.
CREATE TABLE message_runs (
    conv_id      TEXT    NOT NULL,
    first_seq    INTEGER NOT NULL,
    first_msg_id INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (conv_id, first_seq)
) WITHOUT ROWID;
INSERT INTO message_runs (conv_id, first_seq, first_msg_id, count)
    SELECT conv_id, seq, msg_id, 1 FROM messages ORDER BY conv_id, seq;
DROP INDEX messages_conv_seq;
