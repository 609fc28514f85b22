//! One-time code rules, pure: purposes, generation without modulo bias, the
//! format check of what users type, the expiry and attempt rules, and the SMS
//! text. The atomic enforcement across processes is in `store::otp`.

use chrono::{DateTime, Utc};
use rand::Rng;

/// What a code is for. A code issued for one purpose never works for another:
/// the purpose is part of its keyed hash and of every lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    PhoneVerify,
    Login2fa,
    Enable2fa,
    Disable2fa,
    /// Confirms a new number; sent to that new number.
    PhoneChange,
    /// Proves the owner of a verified phone, to set a new password.
    PasswordReset,
}

impl Purpose {
    pub const ALL: [Purpose; 6] = [
        Purpose::PhoneVerify,
        Purpose::Login2fa,
        Purpose::Enable2fa,
        Purpose::Disable2fa,
        Purpose::PhoneChange,
        Purpose::PasswordReset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::PhoneVerify => "phone_verify",
            Purpose::Login2fa => "login_2fa",
            Purpose::Enable2fa => "enable_2fa",
            Purpose::Disable2fa => "disable_2fa",
            Purpose::PhoneChange => "phone_change",
            Purpose::PasswordReset => "password_reset",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// `length` decimal digits, each drawn uniformly (`gen_range` rejects rather than
/// reduces modulo, so no digit is more likely than another).
pub fn generate_code<R: Rng + ?Sized>(rng: &mut R, length: u8) -> String {
    (0..length)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// A submitted code, checked for shape only: exactly `length` ASCII digits after
/// trimming. Whether it is right is the store's business.
pub fn parse_code(raw: &str, length: u8) -> Result<String, String> {
    let s = raw.trim();
    if s.len() == usize::from(length) && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_owned())
    } else {
        Err(format!("code must be {length} digits"))
    }
}

/// The stored facts of a code that the rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeFacts {
    pub state: CodeState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeState {
    Live,
    Used,
    Dead,
    Superseded,
}

impl CodeState {
    pub fn parse(s: &str) -> Option<CodeState> {
        match s {
            "live" => Some(CodeState::Live),
            "used" => Some(CodeState::Used),
            "dead" => Some(CodeState::Dead),
            "superseded" => Some(CodeState::Superseded),
            _ => None,
        }
    }
}

/// Why a code cannot be tried (any more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    Expired,
    Used,
    Exhausted,
    Superseded,
}

/// Whether a code can still be tried at `now`: live, within its validity (the
/// instant of expiry counts as expired) and with tries left.
pub fn usable(c: &CodeFacts, now: DateTime<Utc>) -> Result<(), Unusable> {
    match c.state {
        CodeState::Used => Err(Unusable::Used),
        CodeState::Dead => Err(Unusable::Exhausted),
        CodeState::Superseded => Err(Unusable::Superseded),
        CodeState::Live if c.attempts >= c.max_attempts => Err(Unusable::Exhausted),
        CodeState::Live if now >= c.expires_at => Err(Unusable::Expired),
        CodeState::Live => Ok(()),
    }
}

/// Tries left after one more wrong answer.
pub fn attempts_left_after_miss(c: &CodeFacts) -> u32 {
    u32::try_from(c.max_attempts - c.attempts - 1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn facts(state: CodeState, attempts: i32, expires_in_s: i64) -> (CodeFacts, DateTime<Utc>) {
        let now = Utc::now();
        (
            CodeFacts {
                state,
                attempts,
                max_attempts: 5,
                expires_at: now + chrono::Duration::seconds(expires_in_s),
            },
            now,
        )
    }

    #[test]
    fn usable_rules() {
        let (c, now) = facts(CodeState::Live, 0, 60);
        assert_eq!(usable(&c, now), Ok(()));
        let (c, now) = facts(CodeState::Live, 4, 60);
        assert_eq!(usable(&c, now), Ok(()));
        assert_eq!(attempts_left_after_miss(&c), 0);
        let (c, now) = facts(CodeState::Live, 5, 60);
        assert_eq!(usable(&c, now), Err(Unusable::Exhausted));
        let (c, now) = facts(CodeState::Live, 0, 0);
        assert_eq!(usable(&c, now), Err(Unusable::Expired));
        let (c, now) = facts(CodeState::Used, 0, 60);
        assert_eq!(usable(&c, now), Err(Unusable::Used));
        let (c, now) = facts(CodeState::Dead, 5, 60);
        assert_eq!(usable(&c, now), Err(Unusable::Exhausted));
        let (c, now) = facts(CodeState::Superseded, 0, 60);
        assert_eq!(usable(&c, now), Err(Unusable::Superseded));
    }

    #[test]
    fn code_format() {
        assert_eq!(parse_code(" 012345 ", 6), Ok("012345".to_owned()));
        for bad in ["12345", "1234567", "12345a", "１２３４５６", "", "12 456"] {
            assert!(parse_code(bad, 6).is_err(), "{bad}");
        }
        assert_eq!(parse_code("1234", 4), Ok("1234".to_owned()));
    }

    #[test]
    fn digits_are_uniform() {
        // 60,000 digits: each of 10 should appear 6,000 times; a modulo-biased
        // generator over bytes (256 % 10 = 6) would push 0..=5 up by about 2.3%.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            for b in generate_code(&mut rng, 6).bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        let expected = 6_000.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        // 9 degrees of freedom: 27.88 is the 0.1% critical value.
        assert!(chi2 < 27.88, "chi2 = {chi2}, counts = {counts:?}");
    }

    proptest! {
        #[test]
        fn generated_codes_have_the_requested_length_and_parse(len in 4u8..=10, seed: u64) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let code = generate_code(&mut rng, len);
            prop_assert_eq!(parse_code(&code, len), Ok(code.clone()));
        }
    }
}
