-- The admin role (issue 18): with AUTHGATE_ADMIN_JWT=on the admin API also
-- accepts the access token of an account whose role is 'admin'. The column is
-- read on every admin call, so revoking the role (`authgate admin revoke`)
-- takes effect at once; it is granted only from the command line.
ALTER TABLE users ADD COLUMN role text NOT NULL DEFAULT 'user'
    CHECK (role IN ('user', 'admin'));
