-- Login admission (issue 14, items 2 and 3). Every password attempt reserves a
-- slot in one conditional UPDATE before its argon2 verify and settles it after,
-- so parallel guesses in any number of processes cannot exceed the ceiling.
--
-- `login_inflight`: reservations not yet settled, {reservation id: expiry}. A
-- process that dies mid-hash leaves its key behind; it stops counting at its
-- expiry and is pruned by the next admission.
-- `login_failures`: when each recent failure happened; only those inside the
-- failure window count, and the list is cleared when it locks (so a lock that
-- passed starts from zero) and on success.
-- `login_lockouts`: locks since the last success; each doubles the next lock,
-- up to the maximum.
ALTER TABLE users
    ADD COLUMN login_inflight jsonb         NOT NULL DEFAULT '{}',
    ADD COLUMN login_failures timestamptz[] NOT NULL DEFAULT '{}',
    ADD COLUMN login_lockouts integer       NOT NULL DEFAULT 0;

-- Device tokens (OWASP "device cookies"): issued by every successful login,
-- stored only as a SHA-256 of the 256-bit random token. A login presenting a
-- valid one for its account is admitted against the device's own counters, so
-- an attacker's failures lock other clients out, never the owner's device.
CREATE TABLE device_tokens (
    id              uuid          PRIMARY KEY,
    user_id         uuid          NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash      bytea         NOT NULL UNIQUE,
    created_at      timestamptz   NOT NULL,
    expires_at      timestamptz   NOT NULL,
    login_inflight  jsonb         NOT NULL DEFAULT '{}',
    login_failures  timestamptz[] NOT NULL DEFAULT '{}',
    login_lockouts  integer       NOT NULL DEFAULT 0,
    locked_until    timestamptz
);
-- Keeping each account's newest devices, and deleting with the account.
CREATE INDEX device_tokens_user ON device_tokens (user_id, created_at DESC);
