-- Fixed-window counters for quotas that must hold across processes. One row per
-- key and window; incremented with an upsert inside the transaction that sends,
-- so a refused send (rolled back) costs nothing.
CREATE TABLE quota_counters (
    key           text        NOT NULL,
    window_start  timestamptz NOT NULL,
    count         integer     NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX quota_counters_expires ON quota_counters (expires_at);

-- Failed password logins in a row, and the lockout they caused.
ALTER TABLE users
    ADD COLUMN failed_logins integer     NOT NULL DEFAULT 0,
    ADD COLUMN locked_until  timestamptz;

-- Security-relevant moments, per user. No foreign key: the trail outlives the
-- account it describes.
CREATE TABLE audit_events (
    id          bigserial   PRIMARY KEY,
    user_id     uuid,
    kind        text        NOT NULL,
    ip          inet,
    user_agent  text,
    detail      jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL
);
CREATE INDEX audit_events_user ON audit_events (user_id, created_at DESC);
CREATE INDEX audit_events_kind ON audit_events (kind, created_at DESC);
