-- wxchat production store, schema version 7: the periodic purge of idle anonymous visitors
-- ([service] visitor_purge_after_s) finds them by type and age without scanning every user.
ALTER TABLE users ADD KEY users_type_login (user_type, last_login_at);

INSERT INTO schema_version (version, applied_at) VALUES (7, UNIX_TIMESTAMP() * 1000);
