-- One-time codes, stored only as keyed hashes (HMAC-SHA256 with a server key,
-- bound to user and purpose). Every rule that must hold across processes is a
-- single conditional UPDATE or this partial unique index: one live code per
-- user and purpose.
CREATE TABLE otp_codes (
    id            uuid        PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose       text        NOT NULL
                  CHECK (purpose IN ('phone_verify', 'login_2fa', 'enable_2fa', 'disable_2fa')),
    -- The login flow a login code belongs to; NULL for account codes.
    flow_id       uuid,
    code_hash     bytea       NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL CHECK (max_attempts > 0),
    -- live: can be tried; used: consumed by a right answer; dead: out of tries;
    -- superseded: a newer code for the same user and purpose replaced it.
    state         text        NOT NULL DEFAULT 'live'
                  CHECK (state IN ('live', 'used', 'dead', 'superseded')),
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    CHECK (attempts <= max_attempts)
);

CREATE UNIQUE INDEX otp_codes_one_live ON otp_codes (user_id, purpose) WHERE state = 'live';
CREATE INDEX otp_codes_latest ON otp_codes (user_id, purpose, created_at DESC);
-- Housekeeping deletes by age.
CREATE INDEX otp_codes_expires ON otp_codes (expires_at);
