//! The user as the API shows it: never the password hash.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use uuid::Uuid;

use super::email::Email;
use super::name::PersonName;
use super::password::Password;
use super::phone::PhoneE164;

/// A validated sign-up, ready to hash and store.
#[derive(Debug)]
pub struct NewUser {
    pub email: Email,
    pub phone: PhoneE164,
    pub password: Password,
    pub first_name: PersonName,
    pub last_name: PersonName,
    /// The language of the account's SMS: the body's `locale`, else the
    /// request's `Accept-Language` (filled in by the route); `None` is English.
    pub locale: Option<super::sms_text::Locale>,
}

/// A stored user, as the REST contract shows it (camelCase, ISO-8601 times).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "3c931f6d-b04b-41e8-b991-036f086d9090", "email": "ada@example.com", "phone": "+14155550100", "firstName": "Ada", "lastName": "Lovelace", "twoFA": false, "isPhoneVerified": false, "createdAt": "2026-11-27T10:42:17.628Z", "updatedAt": "2026-11-27T10:42:17.628Z"}))]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub phone: String,
    pub first_name: String,
    pub last_name: String,
    #[serde(rename = "twoFA")]
    pub two_fa: bool,
    pub is_phone_verified: bool,
    #[serde(serialize_with = "iso8601")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "iso8601")]
    pub updated_at: DateTime<Utc>,
}

/// Millisecond ISO-8601 in UTC, as JavaScript's `toISOString` writes it, which is
/// what the tutorial's clients parse.
pub fn iso8601<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}
