-- authgate's own check statement for a phone-verification code with the right
-- code (src/store/otp.rs, check_sql with AccountChange::PhoneVerified): find the
-- newest code, consume it, mark the phone verified and write the audit row, as
-- one transaction. Each user's code can be used once: with 500,000 users a
-- 10-second run at a few thousand tps repeats about 5% of them (a repeat only
-- reads). The database bound of a real confirm, beside otp_check.sql's
-- single-row UPDATE.
--   bash scripts/pgbench/run.sh confirm
\set id random(1, 500000)
WITH latest AS (
     SELECT id, state, attempts, max_attempts, expires_at
     FROM otp_codes
     WHERE user_id = ('00000000-0000-0000-0000-' || lpad(:id::text, 12, '0'))::uuid
       AND purpose = 'phone_verify' AND (NULL::uuid IS NULL OR flow_id = NULL::uuid)
     ORDER BY created_at DESC, (state = 'live') DESC
     LIMIT 1
 ), tried AS (
     UPDATE otp_codes c
     SET attempts = c.attempts + CASE WHEN c.code_hash = sha256(:id::text::bytea) THEN 0 ELSE 1 END,
         state = CASE WHEN c.code_hash = sha256(:id::text::bytea) THEN 'used'
                      WHEN c.attempts + 1 >= c.max_attempts THEN 'dead'
                      ELSE 'live' END,
         finished_at = CASE WHEN c.code_hash = sha256(:id::text::bytea) OR c.attempts + 1 >= c.max_attempts
                            THEN now() END
     FROM latest
     WHERE c.id = latest.id AND c.state = 'live' AND c.expires_at > now()
       AND c.attempts < c.max_attempts
     RETURNING c.state AS new_state, c.attempts AS new_attempts
 ), changed AS (
     UPDATE users SET phone_verified = true, updated_at = now()
     WHERE id = ('00000000-0000-0000-0000-' || lpad(:id::text, 12, '0'))::uuid
       AND EXISTS (SELECT 1 FROM tried WHERE new_state = 'used')
     RETURNING id, email, phone, first_name, last_name, two_fa, phone_verified, created_at, updated_at
 ), logged AS (
     INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
     SELECT id, 'phone_verified', '127.0.0.1'::text::inet, 'authgate-load', '{}'::jsonb, now() FROM changed
 )
 SELECT latest.id AS code_id, latest.state, latest.attempts, latest.max_attempts,
        latest.expires_at, tried.new_state, tried.new_attempts, changed.*
 FROM latest LEFT JOIN tried ON true LEFT JOIN changed ON true;
