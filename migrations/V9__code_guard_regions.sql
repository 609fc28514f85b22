-- Wrong one-time codes in a row for an account, across every purpose and login
-- flow: each code allows a few tries, but resends and new flows bring new codes,
-- so only an account-wide count bounds guessing. Counted and reset inside the
-- check statement itself (store/otp.rs), under the user row's lock, so parallel
-- checks in any process cannot pass the ceiling.
--   code_failures      wrong codes since the last right code or the last lock;
--   code_locks         locks in a row since the last right code (each lasts
--                      twice the one before, up to a maximum);
--   code_locked_until  while in the future, no code is checked or sent.
-- The per-region SMS ceilings need no table: they are quota_counters keys.
ALTER TABLE users
    ADD COLUMN code_failures     integer     NOT NULL DEFAULT 0 CHECK (code_failures >= 0),
    ADD COLUMN code_locks        integer     NOT NULL DEFAULT 0 CHECK (code_locks >= 0),
    ADD COLUMN code_locked_until timestamptz;
