-- wxchat production store, schema version 6: what a new group member may read. join_seq is the
-- group conversation's last seq when the member joined (0 for the founding members, who joined
-- at seq 0); `sync` and `history` serve a member only messages after it, unless the group was
-- created with history_for_new_members = 1. Rows from before this version keep 0: they see all.
ALTER TABLE `groups` ADD COLUMN history_for_new_members TINYINT UNSIGNED NOT NULL DEFAULT 0;
ALTER TABLE group_members ADD COLUMN join_seq BIGINT UNSIGNED NOT NULL DEFAULT 0;

INSERT INTO schema_version (version, applied_at) VALUES (6, UNIX_TIMESTAMP() * 1000);
