-- The admin API (issue 18). A banned account cannot log in or refresh: the
-- login's password check and the statement that creates a session both read
-- `banned_at`, and banning ends every session and access token of the account.
-- NULL: not banned.
ALTER TABLE users ADD COLUMN banned_at timestamptz;

-- The admin list of users: newest first, paged by (created_at, id).
CREATE INDEX users_created_id ON users (created_at DESC, id DESC);
