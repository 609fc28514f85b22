//! Passwords: the acceptance rule and argon2id hashing and verification.
//!
//! These functions are CPU-bound (tens of milliseconds, 19 MiB each) and must never
//! run on an async worker: callers go through `crate::hasher`, which runs them on
//! its own few threads. Each of those threads keeps one argon2 working memory
//! (`Memory`) and passes it to every hash, so a login neither allocates nor
//! page-faults 19 MiB, and the process holds at most one per thread.

use std::fmt;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// A password that passed the rule. Its `Debug` never shows the text.
#[derive(Clone)]
pub struct Password(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordError {
    Empty,
    TooShort,
    TooLong,
    NeedsLetterAndDigit,
    ControlCharacter,
}

impl PasswordError {
    pub fn code(self) -> &'static str {
        match self {
            PasswordError::Empty => "required",
            PasswordError::TooShort => "too_short",
            PasswordError::TooLong => "too_long",
            PasswordError::NeedsLetterAndDigit => "too_weak",
            PasswordError::ControlCharacter => "invalid_characters",
        }
    }

    pub fn message(self) -> String {
        match self {
            PasswordError::Empty => "password is required".to_owned(),
            PasswordError::TooShort => {
                format!("password must be at least {MIN_PASSWORD_CHARS} characters")
            }
            PasswordError::TooLong => {
                format!("password must be at most {MAX_PASSWORD_CHARS} characters")
            }
            PasswordError::NeedsLetterAndDigit => {
                "password must contain at least one letter and one digit".to_owned()
            }
            PasswordError::ControlCharacter => {
                "password must not contain control characters".to_owned()
            }
        }
    }
}

impl Password {
    /// Applies the sign-up rule: 8 to 128 characters, at least one letter and one
    /// digit, any printable character (spaces and non-ASCII included).
    pub fn parse_new(raw: &str) -> Result<Password, PasswordError> {
        if raw.is_empty() {
            return Err(PasswordError::Empty);
        }
        let n = raw.chars().count();
        if n < MIN_PASSWORD_CHARS {
            return Err(PasswordError::TooShort);
        }
        if n > MAX_PASSWORD_CHARS {
            return Err(PasswordError::TooLong);
        }
        if raw.chars().any(char::is_control) {
            return Err(PasswordError::ControlCharacter);
        }
        if !(raw.chars().any(char::is_alphabetic) && raw.chars().any(char::is_numeric)) {
            return Err(PasswordError::NeedsLetterAndDigit);
        }
        Ok(Password(raw.to_owned()))
    }

    /// A password offered at login: no strength rule (old accounts may predate it),
    /// only the length cap, so an attacker cannot make us hash megabytes.
    pub fn for_login(raw: &str) -> Option<Password> {
        (!raw.is_empty() && raw.chars().count() <= MAX_PASSWORD_CHARS)
            .then(|| Password(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The argon2id parameters in force: OWASP's minimum (m = 19 MiB, t = 2, p = 1).
pub fn argon2() -> Argon2<'static> {
    // These constants are valid by construction; `Params::DEFAULT` is the fallback
    // that can never be reached.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Stored hashes asking for more memory than this (1 GiB) are refused: they
/// are not ours, and would let one row exhaust the server.
const MAX_BLOCKS: usize = 1024 * 1024;

/// Argon2 working memory, reused from hash to hash. Argon2 overwrites every
/// block before reading it, so what a previous hash left there does not matter.
#[derive(Default)]
pub struct Memory(Vec<Block>);

impl Memory {
    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        let n = params.block_count();
        if self.0.len() < n {
            self.0.resize(n, Block::default());
        }
        &mut self.0[..n]
    }
}

/// Hashes with a fresh random salt; returns the PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash(password: &Password) -> Result<String, HashError> {
    hash_in(password, &mut Memory::default())
}

/// `hash`, in the given working memory.
pub fn hash_in(password: &Password, memory: &mut Memory) -> Result<String, HashError> {
    let err = |e: &dyn fmt::Display| HashError(e.to_string());
    let argon = argon2();
    let params = argon.params().clone();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(|e| err(&e))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon
        .hash_password_into_with_memory(
            password.expose().as_bytes(),
            salt_bytes,
            &mut out,
            memory.blocks(&params),
        )
        .map_err(|e| err(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| err(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| err(&e))?),
    };
    Ok(phc.to_string())
}

/// Checks a password against a stored PHC string, in the hash's own parameters.
/// A malformed stored hash verifies as false rather than erroring to the client.
pub fn verify(password: &Password, phc: &str) -> bool {
    verify_in(password, phc, &mut Memory::default())
}

/// `verify`, in the given working memory. The comparison is in constant time.
pub fn verify_in(password: &Password, phc: &str, memory: &mut Memory) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.block_count() > MAX_BLOCKS {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = [0u8; Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params.clone());
    argon
        .hash_password_into_with_memory(
            password.expose().as_bytes(),
            salt_bytes,
            out,
            memory.blocks(&params),
        )
        .is_ok()
        && bool::from(out.ct_eq(expected.as_bytes()))
}

/// True when a stored hash was made with weaker or other parameters than today's,
/// so a successful login should re-hash it.
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return true;
    };
    let current = argon2();
    let p = current.params();
    parsed.algorithm.as_str() != "argon2id"
        || Params::try_from(&parsed).map_or(true, |old| {
            old.m_cost() < p.m_cost() || old.t_cost() < p.t_cost() || old.p_cost() < p.p_cost()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn rule_requires_letter_digit_and_length() {
        assert_eq!(Password::parse_new("").unwrap_err(), PasswordError::Empty);
        assert_eq!(
            Password::parse_new("abc123").unwrap_err(),
            PasswordError::TooShort
        );
        assert_eq!(
            Password::parse_new("abcdefghij").unwrap_err(),
            PasswordError::NeedsLetterAndDigit
        );
        assert_eq!(
            Password::parse_new("1234567890").unwrap_err(),
            PasswordError::NeedsLetterAndDigit
        );
        assert_eq!(
            Password::parse_new(&format!("a1{}", "x".repeat(127))).unwrap_err(),
            PasswordError::TooLong
        );
        assert_eq!(
            Password::parse_new("abc\n12345").unwrap_err(),
            PasswordError::ControlCharacter
        );
        // Spaces, symbols and non-ASCII are all allowed.
        assert!(Password::parse_new("correct horse 9 ✓").is_ok());
        assert!(Password::parse_new(&format!("a1{}", "x".repeat(126))).is_ok());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let p = Password::parse_new("hunter2hunter2").unwrap();
        assert!(!format!("{p:?}").contains("hunter"));
    }

    #[test]
    fn hash_is_argon2id_with_owasp_parameters_and_verifies() {
        let p = Password::parse_new("s3cretpassword").unwrap();
        let phc = hash(&p).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify(&p, &phc));
        assert!(!verify(
            &Password::parse_new("s3cretpasswore").unwrap(),
            &phc
        ));
        assert!(!verify(&p, "not a hash"));
        assert!(!needs_rehash(&phc));
    }

    #[test]
    fn reused_memory_gives_the_same_answers_as_fresh_memory() {
        let right = Password::parse_new("s3cretpassword").unwrap();
        let wrong = Password::parse_new("s3cretpasswore").unwrap();
        // Made by the crate's own hasher: our PHC reading must agree with it.
        let theirs = argon2()
            .hash_password(right.expose().as_bytes(), &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        let mut memory = Memory::default();
        let ours = hash_in(&right, &mut memory).unwrap();
        assert!(PasswordHash::new(&ours).is_ok(), "{ours}");
        for phc in [&theirs, &ours, &theirs] {
            // A wrong password first leaves its blocks behind in the memory.
            assert!(!verify_in(&wrong, phc, &mut memory));
            assert!(verify_in(&right, phc, &mut memory));
            assert!(verify(&right, phc));
        }
        // The crate verifies what we produce.
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon2()
            .verify_password(right.expose().as_bytes(), &parsed)
            .is_ok());
        assert!(!verify_in(
            &right,
            "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            &mut memory
        ));
    }

    #[test]
    fn weaker_hashes_are_flagged_for_rehash() {
        let p = Password::parse_new("s3cretpassword").unwrap();
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        );
        let salt = SaltString::generate(&mut OsRng);
        let phc = weak
            .hash_password(p.expose().as_bytes(), &salt)
            .unwrap()
            .to_string();
        assert!(verify(&p, &phc));
        assert!(needs_rehash(&phc));
        assert!(needs_rehash("garbage"));
    }
}
