-- The database bound of an OTP check: the single-row conditional UPDATE that
-- counts or consumes a code (src/store/otp.rs, check_code), as one transaction
-- (autocommit), on a random one of 100,000 codes. The row stays live (the huge
-- max_attempts) so the script can run for as long as wanted.
--   bash scripts/pgbench/run.sh        (setup, then 64 clients for 10 s)
\set id random(1, 100000)
UPDATE otp_bench
   SET attempts = attempts + 1,
       finished_at = CASE WHEN attempts + 1 >= max_attempts THEN now() END
 WHERE id = :id AND state = 'live' AND expires_at > now() AND attempts < max_attempts
RETURNING attempts, max_attempts;
