-- The server's keys, one ring per purpose (see src/keyring.rs). Secret parts
-- are sealed (ChaCha20-Poly1305) under a key-encryption key derived from
-- AUTHGATE_MASTER_KEY; nothing here is usable without it.
--
-- A key is "next" (activated_at NULL: known to every process, accepted, not
-- yet used), "active" (makes new material: tokens, code hashes, sealed SMS)
-- or "retired" (still accepted until verify_until; NULL keeps it for good).
CREATE TABLE keyring (
    purpose      text        NOT NULL CHECK (purpose IN ('signing', 'codes', 'outbox', 'refresh', 'recovery')),
    version      integer     NOT NULL CHECK (version >= 0),
    kid          text        NOT NULL UNIQUE,
    alg          text        NOT NULL,
    public_jwk   jsonb,
    sealed       bytea       NOT NULL,
    created_at   timestamptz NOT NULL,
    activated_at timestamptz,
    retired_at   timestamptz,
    verify_until timestamptz,
    PRIMARY KEY (purpose, version),
    CHECK (retired_at IS NULL OR activated_at IS NOT NULL)
);

-- One active and one next key per purpose, whatever several processes do at once.
CREATE UNIQUE INDEX keyring_one_active ON keyring (purpose)
    WHERE activated_at IS NOT NULL AND retired_at IS NULL;
CREATE UNIQUE INDEX keyring_one_next ON keyring (purpose)
    WHERE activated_at IS NULL;
