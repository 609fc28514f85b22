-- As outbox_insert.sql, plus the NOTIFY authgate used to send in the same
-- transaction (before #15). The notification is queued at commit under a
-- cluster-wide lock held until the commit is durable. See notify.sh.
\set n random(1, 1000000000)
BEGIN;
INSERT INTO sms_outbox (id, recipient, body_sealed, purpose, expires_at, next_attempt_at, created_at, updated_at)
VALUES (nextval('sms_outbox_id_seq'), '+1415' || lpad((:n % 10000000)::text, 7, '0'),
        sha256(:n::text::bytea) || sha256(:n::text::bytea), 'login_2fa',
        now() + interval '10 minutes', now(), now(), now());
SELECT pg_notify('authgate_outbox', '');
COMMIT;
