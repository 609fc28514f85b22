-- Sign-up must not let an unverified account squat a phone: only a verified
-- phone is unique, so several unverified accounts may hold one and the first
-- to verify it wins (the verify statement refuses a phone another verified
-- account holds; this index settles a race between two verifiers).
DROP INDEX users_phone_key;
CREATE UNIQUE INDEX users_phone_verified_key ON users (phone) WHERE phone_verified;
CREATE INDEX users_phone ON users (phone);
-- The purge actor's scans: expired unverified sign-ups, old audit events and
-- outbox rows in a final state, each by age so a batch is an index range.
CREATE INDEX users_unverified_created ON users (created_at) WHERE NOT phone_verified;
CREATE INDEX audit_events_created ON audit_events (created_at);
CREATE INDEX sms_outbox_final ON sms_outbox (updated_at)
    WHERE state IN ('sent', 'failed', 'expired');
