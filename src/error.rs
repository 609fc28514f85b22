//! `AppError`: every way a request can fail, and the one place that decides each
//! failure's HTTP status and stable machine-readable `code`.
//!
//! Codes are public API (clients branch on them): snake_case, never renamed.
//! Internal causes are carried for the log line at the boundary and never shown
//! to the client.

use std::time::Duration;

use warp::http::StatusCode;

use crate::domain::FieldError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: one or more fields are missing or invalid; all of them are listed.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// 400: the body is not JSON, or not a JSON object.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// 400: a header is missing or malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401: wrong e-mail or password; the same answer for both.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// 401: a bearer token is missing, malformed, forged or expired.
    #[error("invalid token")]
    InvalidToken,
    /// 401: a wrong one-time code; `attempts_left` more tries for this code.
    #[error("invalid code")]
    InvalidCode { attempts_left: u32 },
    /// 401: a refresh token that is unknown, expired or revoked.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// 401: the action needs a login with a second factor (SMS code or recovery
    /// code) within the step-up window; log in again (RFC 9470's
    /// `insufficient_user_authentication`, as an error code).
    #[error("step-up required")]
    StepUpRequired,
    /// 401: a refresh token presented again after rotation; its family is revoked.
    #[error("refresh token reused")]
    RefreshTokenReused,
    /// 401: a password reset whose identifier and code do not match a live
    /// reset code: the same for an unknown account, a wrong, used or expired
    /// code, and a locked account (`invalid_code`, without a count of tries).
    #[error("invalid reset code")]
    InvalidResetCode,
    /// 403: a webhook whose signature is missing or wrong.
    #[error("invalid signature")]
    Forbidden,
    /// 404: no such route.
    #[error("not found")]
    NotFound,
    /// 404: no live session of the caller has this id.
    #[error("session not found")]
    SessionNotFound,
    /// 401: an admin route without the admin token (`AUTHGATE_ADMIN_TOKEN`);
    /// a user's access token is not one.
    #[error("admin token required")]
    AdminTokenRequired,
    /// 404: the admin API found no account with this id.
    #[error("user not found")]
    UserNotFound,
    /// 404: no code was issued for this action; ask for one first.
    #[error("no active code")]
    NoActiveCode,
    /// 409: the account is not in the state the action needs.
    #[error("conflict: {0:?}")]
    State(StateConflict),
    /// 410: the code or flow can no longer be used.
    #[error("gone: {0:?}")]
    Gone(GoneReason),
    /// 422: SMS cannot go to this number (country not allowed, or not a mobile).
    #[error("sms not allowed: {0:?}")]
    SmsRefused(SmsRefusal),
    /// 429: a flow's resend budget is spent; start a new login.
    #[error("resend limit reached")]
    ResendLimit,
    /// 429: too many wrong codes in a row for this account (any purpose or
    /// flow): no code is checked or sent until `retry_after` has passed.
    #[error("code entry locked")]
    CodeEntryLocked { retry_after: Duration },
    /// 405: the route exists with another method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: sign-up with an e-mail address already registered.
    #[error("email taken")]
    EmailTaken,
    /// 409: sign-up with a phone number already registered.
    #[error("phone taken")]
    PhoneTaken,
    /// 411: a body without a length.
    #[error("length required")]
    LengthRequired,
    /// 413: body over the cap.
    #[error("payload too large")]
    PayloadTooLarge { limit: u64 },
    /// 415: body is not `application/json`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// 429: slow down.
    #[error("too many requests")]
    TooManyRequests { retry_after: Duration },
    /// 503: the database or an actor could not answer in time; retrying is safe.
    #[error("service unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// 503: the password hashing queue is full (or its wait too long); load is
    /// shed before any work, retry after `retry_after`.
    #[error("overloaded")]
    Overloaded { retry_after: Duration },
    /// 500: a bug or an unexpected failure; logged with the request id.
    #[error("internal error: {0}")]
    Internal(#[source] BoxError),
}

/// 409 reasons: the account's state does not allow the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateConflict {
    PhoneNotVerified,
    PhoneAlreadyVerified,
    TwoFaAlreadyEnabled,
    TwoFaNotEnabled,
    /// A phone change to the number the account already has.
    PhoneUnchanged,
    /// The account's phone changed while a phone change was being confirmed.
    PhoneChangeConflict,
}

/// 422 reasons: why no SMS may go to a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsRefusal {
    CountryNotAllowed,
    NotMobile,
}

/// 410 reasons: what can no longer be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    CodeExpired,
    CodeUsed,
    CodeAttemptsExhausted,
    CodeSuperseded,
    FlowExpired,
    FlowLocked,
    FlowFinished,
}

impl AppError {
    pub fn internal(e: impl Into<BoxError>) -> Self {
        AppError::Internal(e.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Validation(_) | AppError::MalformedJson(_) | AppError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            AppError::InvalidCredentials
            | AppError::InvalidToken
            | AppError::InvalidCode { .. }
            | AppError::InvalidRefreshToken
            | AppError::StepUpRequired
            | AppError::RefreshTokenReused
            | AppError::InvalidResetCode
            | AppError::AdminTokenRequired => StatusCode::UNAUTHORIZED,
            AppError::Forbidden => StatusCode::FORBIDDEN,
            AppError::NotFound
            | AppError::NoActiveCode
            | AppError::SessionNotFound
            | AppError::UserNotFound => StatusCode::NOT_FOUND,
            AppError::State(_) => StatusCode::CONFLICT,
            AppError::Gone(_) => StatusCode::GONE,
            AppError::SmsRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::ResendLimit => StatusCode::TOO_MANY_REQUESTS,
            AppError::CodeEntryLocked { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::EmailTaken | AppError::PhoneTaken => StatusCode::CONFLICT,
            AppError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AppError::Validation(_) => "validation_failed",
            AppError::MalformedJson(_) => "malformed_json",
            AppError::BadRequest(_) => "bad_request",
            AppError::InvalidCredentials => "invalid_credentials",
            AppError::InvalidToken => "invalid_token",
            AppError::InvalidCode { .. } => "invalid_code",
            AppError::InvalidResetCode => "invalid_code",
            AppError::InvalidRefreshToken => "invalid_refresh_token",
            AppError::RefreshTokenReused => "refresh_token_reused",
            AppError::StepUpRequired => "step_up_required",
            AppError::Forbidden => "invalid_signature",
            AppError::NotFound => "not_found",
            AppError::NoActiveCode => "no_active_code",
            AppError::SessionNotFound => "session_not_found",
            AppError::AdminTokenRequired => "admin_token_required",
            AppError::UserNotFound => "user_not_found",
            AppError::State(StateConflict::PhoneNotVerified) => "phone_not_verified",
            AppError::State(StateConflict::PhoneAlreadyVerified) => "phone_already_verified",
            AppError::State(StateConflict::TwoFaAlreadyEnabled) => "two_fa_already_enabled",
            AppError::State(StateConflict::TwoFaNotEnabled) => "two_fa_not_enabled",
            AppError::State(StateConflict::PhoneUnchanged) => "phone_unchanged",
            AppError::State(StateConflict::PhoneChangeConflict) => "phone_change_conflict",
            AppError::Gone(GoneReason::CodeExpired) => "code_expired",
            AppError::Gone(GoneReason::CodeUsed) => "code_used",
            AppError::Gone(GoneReason::CodeAttemptsExhausted) => "code_attempts_exhausted",
            AppError::Gone(GoneReason::CodeSuperseded) => "code_superseded",
            AppError::Gone(GoneReason::FlowExpired) => "flow_expired",
            AppError::Gone(GoneReason::FlowLocked) => "flow_locked",
            AppError::Gone(GoneReason::FlowFinished) => "flow_finished",
            AppError::ResendLimit => "resend_limit_reached",
            AppError::CodeEntryLocked { .. } => "code_entry_locked",
            AppError::SmsRefused(SmsRefusal::CountryNotAllowed) => "phone_country_not_allowed",
            AppError::SmsRefused(SmsRefusal::NotMobile) => "phone_not_mobile",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::EmailTaken => "email_taken",
            AppError::PhoneTaken => "phone_taken",
            AppError::LengthRequired => "length_required",
            AppError::PayloadTooLarge { .. } => "payload_too_large",
            AppError::UnsupportedMediaType => "unsupported_media_type",
            AppError::TooManyRequests { .. } => "too_many_requests",
            AppError::Unavailable(_) => "unavailable",
            AppError::Overloaded { .. } => "overloaded",
            AppError::Internal(_) => "internal_error",
        }
    }

    /// The message the client sees: specific where it helps the client, generic
    /// where details would leak internals.
    pub fn public_message(&self) -> String {
        match self {
            AppError::Validation(errors) => errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            AppError::MalformedJson(why) => format!("request body is not valid JSON: {why}"),
            AppError::BadRequest(why) => why.clone(),
            AppError::InvalidCredentials => "invalid email or password".to_owned(),
            AppError::InvalidToken => {
                "a valid bearer access token is required (Authorization: Bearer <token>)".to_owned()
            }
            AppError::InvalidCode { attempts_left: 0 } => {
                "the code is wrong and no tries remain; ask for a new code".to_owned()
            }
            AppError::InvalidCode { attempts_left } => {
                format!("the code is wrong; {attempts_left} tries remain")
            }
            AppError::InvalidResetCode => {
                "the code is wrong or expired, or was not sent for this account".to_owned()
            }
            AppError::InvalidRefreshToken => {
                "the refresh token is invalid, expired or revoked; log in again".to_owned()
            }
            AppError::RefreshTokenReused => {
                "this refresh token was already used; every session of this login is revoked"
                    .to_owned()
            }
            AppError::StepUpRequired => {
                "this action needs a recent login with a second factor (an SMS code or a recovery code); log in again".to_owned()
            }
            AppError::Forbidden => "the request signature is missing or invalid".to_owned(),
            AppError::NotFound => "no such route".to_owned(),
            AppError::SessionNotFound => {
                "no live session of yours has this id".to_owned()
            }
            AppError::AdminTokenRequired => {
                "the admin token or an admin's access token is required \
                 (Authorization: Bearer <token>)"
                    .to_owned()
            }
            AppError::UserNotFound => "no account has this id".to_owned(),
            AppError::NoActiveCode => {
                "no code was sent for this action; ask for one first".to_owned()
            }
            AppError::State(StateConflict::PhoneNotVerified) => {
                "verify your phone number before turning on two-factor authentication".to_owned()
            }
            AppError::State(StateConflict::PhoneAlreadyVerified) => {
                "the phone number is already verified".to_owned()
            }
            AppError::State(StateConflict::TwoFaAlreadyEnabled) => {
                "two-factor authentication is already on".to_owned()
            }
            AppError::State(StateConflict::TwoFaNotEnabled) => {
                "two-factor authentication is not on".to_owned()
            }
            AppError::State(StateConflict::PhoneUnchanged) => {
                "this is already the account's phone number".to_owned()
            }
            AppError::State(StateConflict::PhoneChangeConflict) => {
                "the account's phone number changed meanwhile; start the change again".to_owned()
            }
            AppError::Gone(GoneReason::CodeExpired) => {
                "the code has expired; ask for a new one".to_owned()
            }
            AppError::Gone(GoneReason::CodeUsed) => {
                "the code was already used; ask for a new one".to_owned()
            }
            AppError::Gone(GoneReason::CodeAttemptsExhausted) => {
                "too many wrong tries for this code; ask for a new one".to_owned()
            }
            AppError::Gone(GoneReason::CodeSuperseded) => {
                "a newer code replaced this one; use the newest code".to_owned()
            }
            AppError::Gone(GoneReason::FlowExpired) => {
                "this login has expired or does not exist; log in again".to_owned()
            }
            AppError::Gone(GoneReason::FlowLocked) => {
                "too many wrong codes; this login is locked, log in again".to_owned()
            }
            AppError::Gone(GoneReason::FlowFinished) => "this login is already complete".to_owned(),
            AppError::SmsRefused(SmsRefusal::CountryNotAllowed) => {
                "SMS cannot be sent to numbers in this country".to_owned()
            }
            AppError::SmsRefused(SmsRefusal::NotMobile) => {
                "SMS can only be sent to mobile numbers; this number is a landline, VoIP, premium-rate, toll-free or other non-mobile line".to_owned()
            }
            AppError::ResendLimit => {
                "no more codes can be sent for this login; log in again".to_owned()
            }
            AppError::CodeEntryLocked { retry_after } => format!(
                "too many wrong codes for this account; no code can be entered or sent for {} seconds",
                retry_after.as_secs().max(1)
            ),
            AppError::MethodNotAllowed => "this route does not accept that method".to_owned(),
            AppError::EmailTaken => "an account with this email already exists".to_owned(),
            AppError::PhoneTaken => "an account with this phone number already exists".to_owned(),
            AppError::LengthRequired => "request body needs a Content-Length".to_owned(),
            AppError::PayloadTooLarge { limit } => {
                format!("request body is larger than {limit} bytes")
            }
            AppError::UnsupportedMediaType => {
                "request body must be JSON (Content-Type: application/json)".to_owned()
            }
            AppError::TooManyRequests { retry_after } => format!(
                "too many requests; retry after {} seconds",
                retry_after.as_secs().max(1)
            ),
            AppError::Unavailable(_) => {
                "the service is temporarily unavailable; retry shortly".to_owned()
            }
            AppError::Overloaded { retry_after } => format!(
                "the server is busy; retry after {} seconds",
                retry_after.as_secs().max(1)
            ),
            AppError::Internal(_) => "an internal error occurred".to_owned(),
        }
    }

    /// Whether the boundary should log this error's internal cause.
    pub fn is_server_side(&self) -> bool {
        // Shed load has no cause to log, and a flood must not flood the log too.
        self.status().is_server_error() && !matches!(self, AppError::Overloaded { .. })
    }
}

impl warp::reject::Reject for AppError {}
