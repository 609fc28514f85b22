-- One queued SMS as authgate writes it since #15 (src/store/outbox.rs, enqueue):
-- draw the id, insert the sealed row, commit. No NOTIFY. See notify.sh.
\set n random(1, 1000000000)
BEGIN;
INSERT INTO sms_outbox (id, recipient, body_sealed, purpose, expires_at, next_attempt_at, created_at, updated_at)
VALUES (nextval('sms_outbox_id_seq'), '+1415' || lpad((:n % 10000000)::text, 7, '0'),
        sha256(:n::text::bytea) || sha256(:n::text::bytea), 'login_2fa',
        now() + interval '10 minutes', now(), now(), now());
COMMIT;
