//! Recovery codes, the pure part: how a code is drawn, shown and read back.
//!
//! A code is [`CODE_CHARS`] characters from an alphabet without look-alikes
//! (no `0`/`o`, `1`/`i`/`l`, no `u`), drawn uniformly from a CSPRNG the caller
//! passes in, shown as `xxxxx-xxxxx`. Reading one back ignores case, spaces and
//! hyphens, so `ABCDE-FGHJK`, `abcde fghjk` and `abcdefghjk` are one code (the
//! canonical form, the one that is hashed, is the ten lower-case characters).
//! Storing, hashing and consuming live in `store::recovery` and `crypto`.

use rand::Rng;

/// Codes in a set: enabling 2FA or replacing the set gives this many.
pub const SET_SIZE: usize = 10;
/// Characters in one code (about 49 bits with [`ALPHABET`]).
pub const CODE_CHARS: usize = 10;
/// Lower-case letters and digits that cannot be mistaken for one another.
pub const ALPHABET: &[u8; 30] = b"23456789abcdefghjkmnpqrstvwxyz";
/// Longer input (in bytes) is refused before it is looked at (spaces and
/// hyphens included).
pub const MAX_INPUT: usize = 64;

/// A code in canonical form: exactly [`CODE_CHARS`] characters of [`ALPHABET`].
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl std::fmt::Debug for RecoveryCode {
    // A code is a credential: never in a log line, even by accident.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

impl RecoveryCode {
    /// A fresh code, each character drawn uniformly (`gen_range` rejects
    /// rather than reduces modulo, so no character is likelier than another).
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> RecoveryCode {
        let s = (0..CODE_CHARS)
            .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
            .collect();
        RecoveryCode(s)
    }

    /// A submitted code, checked for shape only: case, spaces and hyphens are
    /// ignored. Whether it is one of the account's is the store's business.
    pub fn parse(raw: &str) -> Result<RecoveryCode, String> {
        let message = || {
            format!("recoveryCode must be {CODE_CHARS} letters and digits, as shown (xxxxx-xxxxx)")
        };
        if raw.len() > MAX_INPUT {
            return Err(message());
        }
        let s: String = raw
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if s.len() == CODE_CHARS && s.bytes().all(|b| ALPHABET.contains(&b)) {
            Ok(RecoveryCode(s))
        } else {
            Err(message())
        }
    }

    /// The canonical form: what is hashed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How the user is shown the code: two groups of five.
    pub fn display(&self) -> String {
        let (a, b) = self.0.split_at(CODE_CHARS / 2);
        format!("{a}-{b}")
    }
}

/// A new set of [`SET_SIZE`] codes, all different.
pub fn generate_set<R: Rng + ?Sized>(rng: &mut R) -> Vec<RecoveryCode> {
    let mut set: Vec<RecoveryCode> = Vec::with_capacity(SET_SIZE);
    // A repeat is astronomically unlikely; drawing again keeps the set exact.
    while set.len() < SET_SIZE {
        let code = RecoveryCode::generate(rng);
        if !set.contains(&code) {
            set.push(code);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn a_set_has_ten_distinct_codes_of_the_alphabet_shown_in_two_groups() {
        let set = generate_set(&mut rand::rngs::OsRng);
        assert_eq!(set.len(), SET_SIZE);
        for (i, c) in set.iter().enumerate() {
            assert_eq!(c.as_str().len(), CODE_CHARS);
            assert!(c.as_str().bytes().all(|b| ALPHABET.contains(&b)));
            let shown = c.display();
            assert_eq!(shown.len(), CODE_CHARS + 1);
            assert_eq!(shown.as_bytes()[5], b'-');
            assert!(set[i + 1..].iter().all(|other| other != c));
        }
    }

    #[test]
    fn the_alphabet_has_no_look_alikes_and_no_repeats() {
        for b in b"01ilou" {
            assert!(!ALPHABET.contains(b), "{}", char::from(*b));
        }
        let mut sorted = ALPHABET.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), ALPHABET.len());
    }

    #[test]
    fn parsing_ignores_case_spaces_and_hyphens() {
        let c = RecoveryCode::parse("abcde-fghjk").unwrap();
        for variant in [
            "ABCDE-FGHJK",
            " abcde fghjk ",
            "abcdefghjk",
            "a-b-c-d-e-f-g-h-j-k",
        ] {
            assert_eq!(RecoveryCode::parse(variant).unwrap(), c, "{variant}");
        }
        assert_eq!(c.as_str(), "abcdefghjk");
        assert_eq!(c.display(), "abcde-fghjk");
    }

    #[test]
    fn parsing_refuses_wrong_shapes_without_echoing_them() {
        for bad in [
            "",
            "abcde-fghj",
            "abcde-fghjkm",
            "abcde-fghj1",
            "abcde-fghjo",
            "abcde_fghjk",
            "ábcde-fghjk",
            "123456",
            &"a".repeat(65),
        ] {
            let err = RecoveryCode::parse(bad).unwrap_err();
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_the_code() {
        let c = RecoveryCode::parse("abcde-fghjk").unwrap();
        assert!(!format!("{c:?}").contains("abcde"));
    }

    #[test]
    fn every_character_is_drawn() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = [0u32; 30];
        for _ in 0..3_000 {
            for b in RecoveryCode::generate(&mut rng).as_str().bytes() {
                if let Some(i) = ALPHABET.iter().position(|a| *a == b) {
                    seen[i] += 1;
                }
            }
        }
        // 30,000 draws, 1,000 expected per character.
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "{seen:?}");
    }

    proptest! {
        #[test]
        fn prop_what_is_shown_parses_back(seed in any::<u64>()) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let c = RecoveryCode::generate(&mut rng);
            prop_assert_eq!(RecoveryCode::parse(&c.display()).unwrap(), c.clone());
            prop_assert_eq!(RecoveryCode::parse(&c.display().to_uppercase()).unwrap(), c);
        }

        #[test]
        fn prop_parse_never_panics(raw in ".{0,80}") {
            let _ = RecoveryCode::parse(&raw);
        }
    }
}
