//! Pure domain types and rules: parsing and validating what users send, with no IO.
//!
//! Everything that crosses the HTTP edge is parsed here into a newtype that can
//! only hold a valid value (`Email`, `PhoneE164`, `Password`, `PersonName`), so the
//! layers below never re-check.

pub mod email;
pub mod login_flow;
pub mod name;
pub mod otp;
pub mod password;
pub mod phone;
pub mod recovery;
pub mod sms_text;
pub mod user;

use serde::Serialize;

/// One problem with one field of a request, as listed in a 400 `validation_failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The request field, as the client spelled it (camelCase).
    pub field: &'static str,
    /// Stable machine-readable reason (`required`, `invalid_format`, `too_short`, …).
    pub code: &'static str,
    /// Human-readable explanation; never echoes the submitted value.
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        FieldError {
            field,
            code,
            message: message.into(),
        }
    }
}
