-- Sessions: one row per login, shared by every refresh token of that login (its
-- family; the row's id is the family id and the access tokens' `sid` claim).
-- `expires_at` is absolute (set at login, never moved by rotation); idleness is
-- bounded by each refresh token's own `expires_at`. A revoked session's refresh
-- tokens are refused and its access tokens fail the bearer guard at once.
CREATE TABLE sessions (
    id           uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    amr          text[]      NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    last_used_at timestamptz NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Families issued before this migration become sessions: their absolute end is
-- 30 days after the login (the old default lifetime), or sooner if their newest
-- token already ends sooner; a family with no usable token is revoked.
INSERT INTO sessions (id, user_id, amr, created_at, expires_at, last_used_at, revoked_at)
SELECT f.family_id, first.user_id, first.amr, f.created_at, f.expires_at, f.last_used_at,
       f.revoked_at
FROM (
    SELECT family_id,
           min(created_at) AS created_at,
           least(max(expires_at), min(created_at) + interval '30 days') AS expires_at,
           max(created_at) AS last_used_at,
           CASE WHEN bool_or(rotated_at IS NULL AND revoked_at IS NULL) THEN NULL
                ELSE max(coalesce(revoked_at, rotated_at)) END AS revoked_at
    FROM refresh_tokens
    GROUP BY family_id
) f
CROSS JOIN LATERAL (
    SELECT user_id, amr FROM refresh_tokens r
    WHERE r.family_id = f.family_id
    ORDER BY created_at
    LIMIT 1
) first;

ALTER TABLE refresh_tokens
    ADD CONSTRAINT refresh_tokens_session
    FOREIGN KEY (family_id) REFERENCES sessions (id) ON DELETE CASCADE;

-- Access tokens issued at or before this instant are refused (logout of every
-- session, a change of credentials that keeps no session).
ALTER TABLE users ADD COLUMN tokens_valid_after timestamptz;
