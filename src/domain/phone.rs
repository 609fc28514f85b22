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

/// The line types of the numbering plan (libphonenumber's), as configuration
/// names them (`AUTHGATE_SMS_ALLOWED_NUMBER_TYPES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NumberType {
    Mobile,
    /// Where the plan cannot tell the two apart (the whole North American plan).
    FixedLineOrMobile,
    FixedLine,
    TollFree,
    PremiumRate,
    SharedCost,
    Personal,
    Voip,
    Pager,
    Uan,
    Voicemail,
    Emergency,
    ShortCode,
    StandardRate,
    Carrier,
    NoInternational,
    Unknown,
}

impl NumberType {
    pub const ALL: [NumberType; 17] = [
        NumberType::Mobile,
        NumberType::FixedLineOrMobile,
        NumberType::FixedLine,
        NumberType::TollFree,
        NumberType::PremiumRate,
        NumberType::SharedCost,
        NumberType::Personal,
        NumberType::Voip,
        NumberType::Pager,
        NumberType::Uan,
        NumberType::Voicemail,
        NumberType::Emergency,
        NumberType::ShortCode,
        NumberType::StandardRate,
        NumberType::Carrier,
        NumberType::NoInternational,
        NumberType::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NumberType::Mobile => "mobile",
            NumberType::FixedLineOrMobile => "fixed_line_or_mobile",
            NumberType::FixedLine => "fixed_line",
            NumberType::TollFree => "toll_free",
            NumberType::PremiumRate => "premium_rate",
            NumberType::SharedCost => "shared_cost",
            NumberType::Personal => "personal",
            NumberType::Voip => "voip",
            NumberType::Pager => "pager",
            NumberType::Uan => "uan",
            NumberType::Voicemail => "voicemail",
            NumberType::Emergency => "emergency",
            NumberType::ShortCode => "short_code",
            NumberType::StandardRate => "standard_rate",
            NumberType::Carrier => "carrier",
            NumberType::NoInternational => "no_international",
            NumberType::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<NumberType> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        NumberType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl From<phonenumber::Type> for NumberType {
    fn from(t: phonenumber::Type) -> NumberType {
        use phonenumber::Type;
        match t {
            Type::Mobile => NumberType::Mobile,
            Type::FixedLineOrMobile => NumberType::FixedLineOrMobile,
            Type::FixedLine => NumberType::FixedLine,
            Type::TollFree => NumberType::TollFree,
            Type::PremiumRate => NumberType::PremiumRate,
            Type::SharedCost => NumberType::SharedCost,
            Type::PersonalNumber => NumberType::Personal,
            Type::Voip => NumberType::Voip,
            Type::Pager => NumberType::Pager,
            Type::Uan => NumberType::Uan,
            Type::Voicemail => NumberType::Voicemail,
            Type::Emergency => NumberType::Emergency,
            Type::ShortCode => NumberType::ShortCode,
            Type::StandardRate => NumberType::StandardRate,
            Type::Carrier => NumberType::Carrier,
            Type::NoInternational => NumberType::NoInternational,
            Type::Unknown => NumberType::Unknown,
        }
    }
}

/// Test phone numbers (`AUTHGATE_TEST_PHONES`): numbers whose codes are fixed
/// and whose SMS never reach a provider, for staging and automated checks.
/// Never in production (the configuration refuses them there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestPhones {
    /// E.164 number to its fixed code.
    codes: std::collections::BTreeMap<String, String>,
}

impl TestPhones {
    /// `+15005550006=123456,+15005550007=654321`: each number valid, each
    /// code exactly `code_length` digits, no number twice.
    pub fn parse(s: &str, code_length: u8) -> Result<TestPhones, String> {
        let mut codes = std::collections::BTreeMap::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((number, code)) = entry.split_once('=') else {
                return Err(format!("`{entry}` is not NUMBER=CODE"));
            };
            let phone = PhoneE164::parse(number)
                .map_err(|e| format!("`{}`: {}", number.trim(), e.message()))?;
            let code = code.trim();
            if code.len() != usize::from(code_length) || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "the code of {} must be {code_length} digits (OTP_LENGTH)",
                    phone.as_str()
                ));
            }
            if codes
                .insert(phone.as_str().to_owned(), code.to_owned())
                .is_some()
            {
                return Err(format!("{} is listed twice", phone.as_str()));
            }
        }
        Ok(TestPhones { codes })
    }

    /// The fixed code of `phone`, if it is a test number.
    pub fn code_for(&self, phone: &PhoneE164) -> Option<&str> {
        self.codes.get(phone.as_str()).map(String::as_str)
    }

    /// Whether `e164` (as stored) is a test number.
    pub fn contains(&self, e164: &str) -> bool {
        self.codes.contains_key(e164)
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
}

/// Where SMS may go: the operator's allow-lists (`QuotaConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsDestinations {
    /// ISO regions (`US`, `GB`); `None` (`*`): every region.
    pub regions: Option<Vec<String>>,
    /// Line types SMS may go to.
    pub number_types: Vec<NumberType>,
}

impl Default for SmsDestinations {
    /// Where authgate's own tests and walk-through send, and the large markets
    /// with mature SMS regulation and low pumping exposure; the operator widens
    /// it on purpose. Only lines that certainly take SMS.
    fn default() -> Self {
        SmsDestinations {
            regions: Some(
                DEFAULT_SMS_REGIONS
                    .iter()
                    .map(|r| (*r).to_owned())
                    .collect(),
            ),
            number_types: vec![NumberType::Mobile, NumberType::FixedLineOrMobile],
        }
    }
}

/// The default allow-list of `AUTHGATE_SMS_ALLOWED_REGIONS`.
pub const DEFAULT_SMS_REGIONS: [&str; 10] =
    ["US", "CA", "GB", "IE", "DE", "FR", "ES", "IT", "NL", "AU"];

/// Whether `code` is a region of the numbering plan (`US`, `JE`; not `UK`).
pub fn is_known_region(code: &str) -> bool {
    phonenumber::metadata::DATABASE.by_id(code).is_some()
}

/// Why SMS may not go to a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationRefusal {
    /// Its region is not on the allow-list.
    Region,
    /// Its line type is not allowed (VoIP, premium-rate, landline, ...).
    NumberType(NumberType),
}

/// The longest input looked at (after trimming), separators included.
pub const MAX_PHONE_INPUT: usize = 40;
/// What may follow the leading `+`: digits and these separators.
pub const PHONE_SEPARATORS: &str = " -.()";
/// E.164's cap on a number's digits (country code included).
pub const MAX_E164_DIGITS: usize = 15;

impl PhoneE164 {
    pub fn parse(raw: &str) -> Result<PhoneE164, PhoneError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(PhoneError::Empty);
        }
        // The library accepts very long inputs slowly; no real number is this long.
        if s.len() > MAX_PHONE_INPUT || !s.starts_with('+') {
            return Err(PhoneError::Unparsable);
        }
        // Digits and the usual separators only: the library would read letters as
        // a vanity number's keypad digits, which no one types at sign-up.
        if !s[1..]
            .chars()
            .all(|c| c.is_ascii_digit() || PHONE_SEPARATORS.contains(c))
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
        if e164.len() > 1 + MAX_E164_DIGITS {
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

    /// The ISO 3166 region the numbering plan assigns this number to: `US` for
    /// `+14155550100`, `JM` for `+18762101234`, `JE` for `+447797712345`. A
    /// calling code is shared by many regions (+1 by the US, Canada and twenty
    /// Caribbean countries), so destination rules go by this, not by the code.
    /// `None` for numbers of no single region (`+800` freephone and the like).
    pub fn region(&self) -> Option<String> {
        let n = phonenumber::parse(None, &self.0).ok()?;
        let id = n.country().id()?;
        Some(id.as_ref().to_owned())
    }

    /// What kind of line the numbering plan says this is.
    pub fn number_type(&self) -> NumberType {
        match phonenumber::parse(None, &self.0) {
            Ok(n) => NumberType::from(n.number_type(&phonenumber::metadata::DATABASE)),
            Err(_) => NumberType::Unknown,
        }
    }

    /// Whether SMS may go to this number under `rules`: its line type first (so
    /// a VoIP or premium number is named as such wherever it is), then its region.
    /// Returns the region, which keys the per-region ceilings.
    pub fn sms_destination(&self, rules: &SmsDestinations) -> Result<String, DestinationRefusal> {
        let kind = self.number_type();
        if !rules.number_types.contains(&kind) {
            return Err(DestinationRefusal::NumberType(kind));
        }
        let region = self.region();
        match (&rules.regions, region) {
            (None, Some(r)) => Ok(r),
            // Non-geographic numbers have no region; only `*` admits them.
            (None, None) => Ok("001".to_owned()),
            (Some(allowed), Some(r)) if allowed.contains(&r) => Ok(r),
            (Some(_), _) => Err(DestinationRefusal::Region),
        }
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

    fn kind(raw: &str) -> NumberType {
        PhoneE164::parse(raw).unwrap().number_type()
    }

    #[test]
    fn line_types_come_from_the_numbering_plan() {
        // US numbers are "fixed line or mobile"; UK mobile, landline, premium
        // rate, VoIP and personal; US toll-free.
        assert_eq!(kind("+14155550100"), NumberType::FixedLineOrMobile);
        assert_eq!(kind("+447400123456"), NumberType::Mobile);
        assert_eq!(kind("+442079460958"), NumberType::FixedLine);
        assert_eq!(kind("+449098790000"), NumberType::PremiumRate);
        assert_eq!(kind("+445612345678"), NumberType::Voip);
        assert_eq!(kind("+447012345678"), NumberType::Personal);
        assert_eq!(kind("+18005550100"), NumberType::TollFree);
        for t in NumberType::ALL {
            assert_eq!(NumberType::parse(t.as_str()), Some(t));
        }
        assert_eq!(
            NumberType::parse(" Fixed-Line-Or-Mobile"),
            Some(NumberType::FixedLineOrMobile)
        );
        assert_eq!(NumberType::parse("landline"), None);
    }

    /// Regions, not calling codes: +1 876 is Jamaica and +44 7797 is Jersey,
    /// though their calling codes are those of the US and the UK.
    #[test]
    fn regions_come_from_the_numbering_plan_not_the_calling_code() {
        let region = |raw: &str| PhoneE164::parse(raw).unwrap().region();
        assert_eq!(region("+14155550100").as_deref(), Some("US"));
        assert_eq!(region("+16137827274").as_deref(), Some("CA"));
        assert_eq!(region("+18762101234").as_deref(), Some("JM"));
        assert_eq!(region("+447400123456").as_deref(), Some("GB"));
        assert_eq!(region("+447797712345").as_deref(), Some("JE"));
        assert!(is_known_region("JE") && is_known_region("US"));
        assert!(!is_known_region("UK") && !is_known_region("XX"));
    }

    #[test]
    fn destinations_refuse_other_regions_and_non_mobile_lines() {
        let rules = SmsDestinations {
            regions: Some(vec!["US".to_owned(), "CA".to_owned(), "GB".to_owned()]),
            ..SmsDestinations::default()
        };
        let check = |raw: &str| PhoneE164::parse(raw).unwrap().sms_destination(&rules);
        assert_eq!(check("+14155550100"), Ok("US".to_owned()));
        assert_eq!(check("+447400123456"), Ok("GB".to_owned()));
        assert_eq!(check("+18762101234"), Err(DestinationRefusal::Region));
        assert_eq!(check("+447797712345"), Err(DestinationRefusal::Region));
        assert_eq!(
            check("+445612345678"),
            Err(DestinationRefusal::NumberType(NumberType::Voip))
        );
        assert_eq!(
            check("+442079460958"),
            Err(DestinationRefusal::NumberType(NumberType::FixedLine))
        );
        assert_eq!(
            check("+18005550100"),
            Err(DestinationRefusal::NumberType(NumberType::TollFree))
        );
        // `*` admits every region, still not every line type.
        let all = SmsDestinations {
            regions: None,
            ..SmsDestinations::default()
        };
        let jm = PhoneE164::parse("+18762101234").unwrap();
        assert_eq!(jm.sms_destination(&all), Ok("JM".to_owned()));
        let voip = PhoneE164::parse("+445612345678").unwrap();
        assert!(voip.sms_destination(&all).is_err());
        let types = SmsDestinations {
            number_types: vec![NumberType::Voip],
            ..SmsDestinations::default()
        };
        assert_eq!(voip.sms_destination(&types), Ok("GB".to_owned()));
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

    #[test]
    fn test_phones_parse_strictly_and_answer_their_fixed_code() {
        let t = TestPhones::parse("+1 500 555 0006=123456, +15005550007=654321", 6).unwrap();
        assert_eq!(t.len(), 2);
        let p = PhoneE164::parse("+15005550006").unwrap();
        assert_eq!(t.code_for(&p), Some("123456"));
        assert!(t.contains("+15005550007"));
        assert!(!t.contains("+14155550100"));
        assert!(TestPhones::parse("", 6).unwrap().is_empty());
        for bad in [
            "+15005550006",
            "+15005550006=12345",
            "+15005550006=12345a",
            "12=123456",
            "+15005550006=123456,+15005550006=654321",
        ] {
            assert!(TestPhones::parse(bad, 6).is_err(), "{bad}");
        }
    }
}
