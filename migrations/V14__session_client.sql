-- Where each session was opened, for the user's list of sessions
-- (`GET /account/sessions`): the client's address and user agent at login.
-- Sessions from before this migration show neither.
ALTER TABLE sessions ADD COLUMN ip inet, ADD COLUMN user_agent text;
