-- Row locks for AUTHGATE_LOCKS=rows (issue 19): engines without advisory
-- locks (a PostgreSQL-compatible distributed SQL engine) serialise key ring
-- changes, code issuing and migrations by upserting one row here and holding
-- its lock until the transaction ends. `key` is the advisory lock's key (a
-- fixed number, or hashtextextended of a text). Unused under the default
-- advisory locks. authgate creates the same table before migrating in rows
-- mode (the migration lock is a row here), hence IF NOT EXISTS; keep the two
-- identical (store::LOCK_ROWS_DDL, checked by a unit test).
CREATE TABLE IF NOT EXISTS lock_rows (
    key bigint PRIMARY KEY,
    touched_at timestamptz NOT NULL DEFAULT now()
);
