-- The language of the account's SMS: chosen at sign-up (an explicit `locale`,
-- else the request's Accept-Language), English otherwise. Only the languages
-- the server ships texts for.
ALTER TABLE users
    ADD COLUMN locale text NOT NULL DEFAULT 'en'
        CHECK (locale IN ('en', 'es', 'fr', 'de', 'pt'));
