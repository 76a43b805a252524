-- wxchat embedded store, schema version 8: the periodic purge of idle anonymous visitors
-- ([service] visitor_purge_after_s) finds them by type and age without scanning every user.
CREATE INDEX users_type_login ON users(user_type, last_login_at);
