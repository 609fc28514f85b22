-- When an account first logged in with its password. The purge deletes only
-- sign-ups that stay unverified AND never logged in: an account in use is
-- never deleted for an unverified phone. Accounts made before this rule are
-- taken as used, so none of them is ever purged by it.
ALTER TABLE users ADD COLUMN first_login_at timestamptz;
UPDATE users SET first_login_at = created_at;
