-- Decoy rows for login timing (issue 14, item 9). An attempt that reserves no
-- slot (unknown or malformed e-mail, locked account) writes one of these
-- instead, in admission and in settlement, so every refused login commits the
-- same writes as a wrong password and cannot be told apart by its latency.
-- 64 rows spread the writes so that no row becomes a point every such login
-- waits on.
CREATE TABLE login_decoys (
    slot           smallint    PRIMARY KEY,
    login_inflight jsonb       NOT NULL DEFAULT '{}'
);
INSERT INTO login_decoys (slot) SELECT generate_series(0, 63);
