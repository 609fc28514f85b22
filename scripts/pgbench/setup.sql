-- A table shaped like otp_codes (migrations/V3__otp_codes.sql), 100,000 live
-- codes, for scripts/pgbench/otp_check.sql. Run in a scratch database:
--   createdb -h 127.0.0.1 -U postgres authgate_pgbench
--   psql -h 127.0.0.1 -U postgres -d authgate_pgbench -f scripts/pgbench/setup.sql
DROP TABLE IF EXISTS otp_bench;
CREATE TABLE otp_bench (
    id            bigint      PRIMARY KEY,
    user_id       uuid        NOT NULL,
    purpose       text        NOT NULL,
    flow_id       uuid,
    code_hash     bytea       NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL,
    state         text        NOT NULL DEFAULT 'live',
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    finished_at   timestamptz
);
INSERT INTO otp_bench (id, user_id, purpose, code_hash, max_attempts, created_at, expires_at)
SELECT i, gen_random_uuid(), 'login_2fa', sha256(i::text::bytea), 1000000000, now(), now() + interval '10 years'
FROM generate_series(1, 100000) AS i;
CREATE INDEX otp_bench_latest ON otp_bench (user_id, purpose, created_at DESC);
CREATE INDEX otp_bench_expires ON otp_bench (expires_at);
VACUUM ANALYZE otp_bench;
