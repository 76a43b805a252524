-- wxchat embedded store, schema version 7: what a new group member may read. join_seq is the
-- group conversation's last seq when the member joined (0 for the founding members, who joined
-- at seq 0); `sync` and `history` serve a member only messages after it, unless the group was
-- created with history_for_new_members = 1. Rows from before this version keep 0: they see all.
ALTER TABLE groups ADD COLUMN history_for_new_members INTEGER NOT NULL DEFAULT 0;
ALTER TABLE group_members ADD COLUMN join_seq INTEGER NOT NULL DEFAULT 0;
