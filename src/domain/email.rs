//! E-mail addresses: trimmed, lower-cased, checked against a conservative subset of
//! RFC 5321 (ASCII, dot-atom local part, a dotted domain of LDH labels).
//!
//! Lower-casing the whole address makes uniqueness case-insensitive in one place;
//! the database also enforces it on `lower(email)`.

use std::fmt;

/// A syntactically valid, normalised e-mail address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why an e-mail address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailError {
    Empty,
    TooLong,
    Invalid,
}

impl EmailError {
    pub fn message(self) -> &'static str {
        match self {
            EmailError::Empty => "email is required",
            EmailError::TooLong => "email must be at most 254 characters",
            EmailError::Invalid => "email must be a valid address like name@example.com",
        }
    }
}

/// The longest address accepted (RFC 5321's path limit, less the brackets).
pub const MAX_EMAIL_CHARS: usize = 254;
/// The longest local part (before the `@`).
pub const MAX_LOCAL_CHARS: usize = 64;
/// The longest domain (after the `@`).
pub const MAX_DOMAIN_CHARS: usize = 253;
/// The longest label of the domain (between dots).
pub const MAX_LABEL_CHARS: usize = 63;
/// The shortest top-level label.
pub const MIN_TLD_CHARS: usize = 2;

/// What a local part's dot-separated atoms may hold besides ASCII letters and digits.
pub const LOCAL_SPECIALS: &str = "!#$%&'*+/=?^_`{|}~-";

impl Email {
    pub fn parse(raw: &str) -> Result<Email, EmailError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if s.len() > MAX_EMAIL_CHARS {
            return Err(EmailError::TooLong);
        }
        let s = s.to_ascii_lowercase();
        let (local, domain) = s.rsplit_once('@').ok_or(EmailError::Invalid)?;
        if !valid_local(local) || !valid_domain(domain) {
            return Err(EmailError::Invalid);
        }
        Ok(Email(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_local(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= MAX_LOCAL_CHARS
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(c))
        })
}

fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && domain.len() <= MAX_DOMAIN_CHARS
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= MAX_LABEL_CHARS
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        // The top-level domain is never all digits (that would be an IP address).
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= MIN_TLD_CHARS && !tld.chars().all(|c| c.is_ascii_digit()))
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_case_and_whitespace() {
        let e = Email::parse("  Alice.Smith+tag@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "alice.smith+tag@example.com");
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "plainaddress",
            "@example.com",
            "a@",
            "a@b",
            "a@-b.com",
            "a@b-.com",
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a b@example.com",
            "a@exa mple.com",
            "a@example.123",
            "ü@example.com",
            "a@@example.com",
            "a@example..com",
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError::Invalid), "{bad}");
        }
        assert_eq!(Email::parse("   "), Err(EmailError::Empty));
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_is_idempotent(s in "\\PC{0,80}") {
            if let Ok(e) = Email::parse(&s) {
                prop_assert_eq!(Email::parse(e.as_str()), Ok(e.clone()));
            }
        }
    }
}
