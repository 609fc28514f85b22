-- A login flow's state, so a flow begun on one process can finish on another.
-- `version` makes each transition a compare-and-set across processes.
CREATE TABLE login_flows (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    state       jsonb       NOT NULL,
    version     integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    -- When the row may be purged: the flow's expiry, or soon after it ended.
    purge_after timestamptz NOT NULL
);
CREATE INDEX login_flows_purge ON login_flows (purge_after);

-- Refresh tokens: only a SHA-256 of the 256-bit random token is stored. Tokens
-- rotate on every use; all tokens of one login share a family, revoked whole
-- when a rotated token is presented again.
CREATE TABLE refresh_tokens (
    id          uuid        PRIMARY KEY,
    family_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  bytea       NOT NULL UNIQUE,
    amr         text[]      NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);
