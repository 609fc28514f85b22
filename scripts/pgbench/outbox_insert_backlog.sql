-- As outbox_insert.sql, plus what the SMS actor costs the database under a
-- backlog since #15: one NOTIFY, in its own transaction, per full claim of 50
-- messages (modelled as one in 50 transactions). See notify.sh.
\set n random(1, 1000000000)
\set k random(1, 50)
BEGIN;
INSERT INTO sms_outbox (id, recipient, body_sealed, purpose, expires_at, next_attempt_at, created_at, updated_at)
VALUES (nextval('sms_outbox_id_seq'), '+1415' || lpad((:n % 10000000)::text, 7, '0'),
        sha256(:n::text::bytea) || sha256(:n::text::bytea), 'login_2fa',
        now() + interval '10 minutes', now(), now(), now());
COMMIT;
\if :k = 1
SELECT pg_notify('authgate_outbox', '');
\endif
