-- wxchat embedded store, schema version 2: read receipts (`read_count`) count a conversation's
-- read cursors through an index instead of scanning every user's cursors.
CREATE INDEX read_cursors_conv ON read_cursors(conv_id, read_seq);
