-- Issue 16, items 2 and 3: two more code purposes, and the number a
-- phone-change code was sent to, so confirming it switches to exactly that
-- number (NULL for every other purpose).
--
-- If another migration widened this CHECK since V3, its purposes must be
-- listed here too: this replaces the constraint as a whole.
ALTER TABLE otp_codes
    DROP CONSTRAINT otp_codes_purpose_check,
    ADD CONSTRAINT otp_codes_purpose_check
        CHECK (purpose IN ('phone_verify', 'login_2fa', 'enable_2fa', 'disable_2fa',
                           'phone_change', 'password_reset')),
    ADD COLUMN target_phone text,
    ADD CONSTRAINT otp_codes_target_phone
        CHECK ((purpose = 'phone_change') = (target_phone IS NOT NULL));
