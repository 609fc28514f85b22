-- Users with a live phone-verification code each, in a database migrated with
-- authgate's own migrations (run.sh applies them), for otp_confirm.sql. User i
-- has the id 00000000-0000-0000-0000-<i, 12 digits> and the code hash sha256(i).
INSERT INTO users (id, email, phone, password_hash, first_name, last_name)
SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid,
       'bench-' || i || '@example.com', '+1646' || lpad(i::text, 7, '0'),
       'not-a-hash', 'Bench', 'User'
FROM generate_series(1, :rows) AS i;
INSERT INTO otp_codes (id, user_id, purpose, code_hash, max_attempts, created_at, expires_at)
SELECT gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid,
       'phone_verify', sha256(i::text::bytea), 5, now(), now() + interval '1 day'
FROM generate_series(1, :rows) AS i;
VACUUM ANALYZE users;
VACUUM ANALYZE otp_codes;
