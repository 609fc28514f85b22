-- Recovery codes (issue 16): ten single-use codes per account with 2FA on,
-- shown once when 2FA is turned on or the set is replaced. Only a keyed hash
-- is stored (HMAC-SHA256 with a server key, bound to the user), never the code
-- or anything that decrypts to it.
--
-- A set is written and replaced in one statement under the user row's lock
-- (store/recovery.rs, store/otp.rs): the old rows are deleted and the new ones
-- inserted in the same commit, so no moment has two sets or none. A code is
-- consumed by a conditional UPDATE (`used_at IS NULL`) under that same lock,
-- so two concurrent uses of one code, in any processes, succeed once.
CREATE TABLE recovery_codes (
    id          bigserial   PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash   bytea       NOT NULL CHECK (length(code_hash) = 32),
    created_at  timestamptz NOT NULL,
    -- When the code was used to finish a login; NULL while unused.
    used_at     timestamptz
);
-- The lookup of a submitted code, and what keeps a hash from appearing twice.
CREATE UNIQUE INDEX recovery_codes_user_hash ON recovery_codes (user_id, code_hash);
