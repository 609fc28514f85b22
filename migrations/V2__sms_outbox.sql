-- The durable SMS outbox. A message is inserted in the same transaction as what
-- it carries (an OTP), so a code is never stored without its message. The body
-- is sealed (ChaCha20-Poly1305 with a server key) because it contains a code, and
-- cleared once the message reaches a final state.
CREATE TABLE sms_outbox (
    id               bigserial   PRIMARY KEY,
    recipient        text        NOT NULL CHECK (recipient ~ '^\+[1-9][0-9]{5,14}$'),
    body_sealed      bytea,
    purpose          text        NOT NULL,
    -- pending: waiting to be sent (or retried); sending: claimed by a process
    -- until claimed_until; sent: accepted by the provider; failed: permanent
    -- error or out of attempts; expired: content outlived its validity unsent.
    state            text        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'expired')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,
    claimed_by       text,
    claimed_until    timestamptz,
    provider_sid     text        UNIQUE,
    -- Twilio's own status (queued, sent, delivered, undelivered, failed, ...),
    -- and its rank in Twilio's lifecycle: callbacks arrive out of order, and a
    -- status only ever replaces one of lower rank (finals rank highest, equal).
    delivery_status  text,
    delivery_rank    smallint,
    error_code       integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz
);

-- What the drainer scans: due pending messages, and expired leases.
CREATE INDEX sms_outbox_due ON sms_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX sms_outbox_leases ON sms_outbox (claimed_until) WHERE state = 'sending';
-- Releasing a stopping process's claims.
CREATE INDEX sms_outbox_claimer ON sms_outbox (claimed_by) WHERE state = 'sending';
