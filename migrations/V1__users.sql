-- Accounts. E-mail is stored normalised (trimmed, lower-cased) and unique
-- case-insensitively; phone is stored in E.164 and unique as written.
CREATE TABLE users (
    id              uuid        PRIMARY KEY,
    email           text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    phone           text        NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{5,14}$'),
    password_hash   text        NOT NULL,
    first_name      text        NOT NULL CHECK (length(first_name) BETWEEN 1 AND 100),
    last_name       text        NOT NULL CHECK (length(last_name) BETWEEN 1 AND 100),
    two_fa          boolean     NOT NULL DEFAULT false,
    phone_verified  boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_phone_key ON users (phone);
