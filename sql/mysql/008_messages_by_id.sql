-- wxchat production store, schema version 8: messages are stored in msg_id order.
-- Until version 7 InnoDB clustered the rows by (conv_id, seq), so a batch across many
-- conversations wrote a full row into one leaf per conversation: with 10,000 active
-- conversations the hot leaves outgrew the buffer pool and every commit waited on page reads
-- and flushes. Msg ids only grow, so keyed by msg_id a batch's rows append to the end of the
-- table; (conv_id, seq) becomes a unique secondary index of small entries, which `sync` and
-- `history` read in order (the rows then by primary key). The separate msg_id index goes.
-- InnoDB rebuilds the table once, at the first start of this version (the server logs how many
-- rows it holds first); reads and writes of other tables go on meanwhile.
ALTER TABLE messages
    DROP PRIMARY KEY,
    ADD PRIMARY KEY (msg_id),
    DROP INDEX messages_msg_id,
    ADD UNIQUE KEY messages_conv_seq (conv_id, seq);

INSERT INTO schema_version (version, applied_at) VALUES (8, UNIX_TIMESTAMP() * 1000);
