-- A login flow's deadline as a column, so each process's expiry sweep finds the
-- pending flows that are due with one indexed query, whichever process started
-- them and whether it still runs. Set when the flow is created and never moved
-- (the state machine never extends a deadline); kept after the flow ends.
ALTER TABLE login_flows ADD COLUMN expires_at timestamptz;
UPDATE login_flows SET expires_at = (state->>'expires_at')::timestamptz
    WHERE state ? 'expires_at';
-- Only pending flows: the sweep's predicate, word for word (store/flows.rs).
CREATE INDEX login_flows_pending_expiry ON login_flows (expires_at)
    WHERE state->>'state' IN ('password_pending', 'otp_pending');
