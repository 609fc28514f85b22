//! Phone numbers, parsed with a real numbering-plan library (`phonenumber`, a port of
//! libphonenumber) and normalised to E.164, so `+1 (415) 555-0100` and
//! `+14155550100` are one phone.

use std::fmt;

use phonenumber::{Mode, PhoneNumber};

/// A valid phone number in E.164 form (`+` and up to 15 digits).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneE164(String);

/// Why a phone number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneError {
    Empty,
    /// Not parseable: no country code, letters, wrong length.
    Unparsable,
    /// Parses, but no such number can exist in its country's numbering plan.
    Impossible,
}

impl PhoneError {
    pub fn message(self) -> &'static str {
        match self {
            PhoneError::Empty => "phone is required",
            PhoneError::Unparsable => {
                "phone must be in international format with a country code, like +14155550100"
            }
            PhoneError::Impossible => "phone is not a valid number for its country",
        }
    }
}

impl PhoneE164 {
    pub fn parse(raw: &str) -> Result<PhoneE164, PhoneError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(PhoneError::Empty);
        }
        // The library accepts very long inputs slowly; no real number is this long.
        if s.len() > 40 || !s.starts_with('+') {
            return Err(PhoneError::Unparsable);
        }
        // Digits and the usual separators only: the library would read letters as
        // a vanity number's keypad digits, which no one types at sign-up.
        if !s[1..]
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
        {
            return Err(PhoneError::Unparsable);
        }
        let number: PhoneNumber =
            phonenumber::parse(None, s).map_err(|_| PhoneError::Unparsable)?;
        if !phonenumber::is_valid(&number) {
            return Err(PhoneError::Impossible);
        }
        let e164 = number.format().mode(Mode::E164).to_string();
        // E.164 caps a number at 15 digits (and the users table checks it), but
        // the library's plans accept some longer ones (German `+49` numbers of 16
        // digits, found by fuzzing): those cannot be stored or dialled as E.164.
        if e164.len() > 16 {
            return Err(PhoneError::Impossible);
        }
        // The stored form must mean the same number when read again (the
        // library's national-prefix handling can turn an odd input into a number
        // that is itself invalid; found by fuzzing).
        let again = phonenumber::parse(None, &e164).map_err(|_| PhoneError::Impossible)?;
        if !phonenumber::is_valid(&again) || again.format().mode(Mode::E164).to_string() != e164 {
            return Err(PhoneError::Impossible);
        }
        Ok(PhoneE164(e164))
    }

    /// Rebuilds from a value the database stored (already normalised).
    pub fn from_trusted(s: String) -> PhoneE164 {
        PhoneE164(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The country calling code, e.g. `1` for `+14155550100`.
    pub fn country_code(&self) -> Option<u16> {
        phonenumber::parse(None, &self.0)
            .ok()
            .map(|n| n.code().value())
    }

    /// Whether SMS may go to this number: refused when the numbering plan says it is
    /// premium-rate, shared-cost, toll-free or otherwise not a mobile (SMS pumping
    /// uses such numbers to bill us). Numbers the plan cannot classify pass.
    pub fn sms_capable(&self) -> bool {
        use phonenumber::Type;
        let Ok(n) = phonenumber::parse(None, &self.0) else {
            return false;
        };
        !matches!(
            n.number_type(&phonenumber::metadata::DATABASE),
            Type::FixedLine
                | Type::TollFree
                | Type::PremiumRate
                | Type::SharedCost
                | Type::Pager
                | Type::Uan
                | Type::Emergency
                | Type::Voicemail
                | Type::ShortCode
                | Type::StandardRate
                | Type::Carrier
                | Type::NoInternational
        )
    }

    /// A hint safe to show before the user is authenticated: `+1 ••• ••• 0100`-like,
    /// only the last two digits.
    pub fn masked(&self) -> String {
        let digits = self.0.len().saturating_sub(1);
        let tail = &self.0[self.0.len().saturating_sub(2)..];
        format!("+{}{}", "•".repeat(digits.saturating_sub(2)), tail)
    }
}

impl fmt::Debug for PhoneE164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneE164({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_are_normalised_to_e164() {
        let a = PhoneE164::parse("+1 (415) 555-0100").unwrap();
        let b = PhoneE164::parse("+14155550100").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "+14155550100");
        assert_eq!(
            PhoneE164::parse(" +44 20 7946 0958 ").unwrap().as_str(),
            "+442079460958"
        );
        assert_eq!(a.country_code(), Some(1));
    }

    #[test]
    fn impossible_and_unparsable_numbers_are_refused() {
        assert_eq!(PhoneE164::parse(""), Err(PhoneError::Empty));
        assert_eq!(PhoneE164::parse("4155550100"), Err(PhoneError::Unparsable));
        assert_eq!(PhoneE164::parse("+1 phone"), Err(PhoneError::Unparsable));
        // Area code 011 does not exist in the North American plan.
        assert_eq!(
            PhoneE164::parse("+1 011 555 0100"),
            Err(PhoneError::Impossible)
        );
        assert_eq!(PhoneE164::parse("+1 415"), Err(PhoneError::Impossible));
    }

    /// Regression (fuzz target `normalise`): the numbering plan calls this
    /// 16-digit German number valid, but E.164 (and the users table's CHECK)
    /// allow 15 digits at most, so sign-up failed in the database.
    #[test]
    fn numbers_longer_than_e164_allows_are_refused() {
        assert_eq!(
            PhoneE164::parse("+4948080914944291"),
            Err(PhoneError::Impossible)
        );
        // The fuzzer's original input: the NULs are now refused before parsing.
        assert_eq!(
            PhoneE164::parse("+4948080914944291\0\0\0"),
            Err(PhoneError::Unparsable)
        );
    }

    /// Regression (fuzz target `normalise`, a 90-second run): letters were read
    /// as keypad digits and the result normalised to a number that is itself
    /// invalid, so normalising was not idempotent.
    #[test]
    fn letters_are_refused_and_the_stored_form_reads_back_the_same() {
        assert_eq!(
            PhoneE164::parse("+78881Bgf880Bf"),
            Err(PhoneError::Unparsable)
        );
        assert_eq!(
            PhoneE164::parse("+1 415 555 O1OO"),
            Err(PhoneError::Unparsable)
        );
        for raw in ["+1 (415) 555-0100", "+1.415.555.0100", "+7 812 438-80-23"] {
            if let Ok(p) = PhoneE164::parse(raw) {
                assert_eq!(PhoneE164::parse(p.as_str()), Ok(p.clone()), "{raw}");
            }
        }
    }

    #[test]
    fn premium_rate_and_landlines_cannot_take_sms() {
        // US numbers are "fixed line or mobile": allowed.
        assert!(PhoneE164::parse("+14155550100").unwrap().sms_capable());
        // UK mobile, UK landline, UK premium rate, US toll-free.
        assert!(PhoneE164::parse("+447400123456").unwrap().sms_capable());
        assert!(!PhoneE164::parse("+442079460958").unwrap().sms_capable());
        assert!(!PhoneE164::parse("+449098790000").unwrap().sms_capable());
        assert!(!PhoneE164::parse("+18005550100").unwrap().sms_capable());
    }

    #[test]
    fn mask_shows_only_the_last_two_digits() {
        let p = PhoneE164::parse("+14155550100").unwrap();
        assert_eq!(p.masked(), "+•••••••••00");
        assert!(!format!("{p:?}").contains("555"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,50}") {
            let _ = PhoneE164::parse(&s);
        }

        #[test]
        fn parse_is_idempotent(s in "\\+[0-9 ()-]{6,20}") {
            if let Ok(p) = PhoneE164::parse(&s) {
                prop_assert_eq!(PhoneE164::parse(p.as_str()), Ok(p.clone()));
            }
        }
    }
}
