//! First and last names: trimmed, 1 to 100 characters, no control characters.

use std::fmt;

/// A person's first or last name as shown back to them.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonName(String);

pub const MAX_NAME_CHARS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    ControlCharacter,
}

impl NameError {
    pub fn code(self) -> &'static str {
        match self {
            NameError::Empty => "required",
            NameError::TooLong => "too_long",
            NameError::ControlCharacter => "invalid_characters",
        }
    }
}

impl PersonName {
    pub fn parse(raw: &str) -> Result<PersonName, NameError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.chars().count() > MAX_NAME_CHARS {
            return Err(NameError::TooLong);
        }
        if s.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        Ok(PersonName(s.to_owned()))
    }

    pub fn from_trusted(s: String) -> PersonName {
        PersonName(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_bounds_length() {
        assert_eq!(PersonName::parse("  Ada ").unwrap().as_str(), "Ada");
        assert_eq!(PersonName::parse("  "), Err(NameError::Empty));
        assert!(PersonName::parse(&"é".repeat(100)).is_ok());
        assert_eq!(PersonName::parse(&"é".repeat(101)), Err(NameError::TooLong));
        assert_eq!(
            PersonName::parse("Ada\u{0}Lovelace"),
            Err(NameError::ControlCharacter)
        );
    }
}
