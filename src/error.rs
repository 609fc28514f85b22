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
    /// 404: no such route.
    #[error("not found")]
    NotFound,
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
    /// 500: a bug or an unexpected failure; logged with the request id.
    #[error("internal error: {0}")]
    Internal(#[source] BoxError),
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
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::EmailTaken | AppError::PhoneTaken => StatusCode::CONFLICT,
            AppError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AppError::Validation(_) => "validation_failed",
            AppError::MalformedJson(_) => "malformed_json",
            AppError::BadRequest(_) => "bad_request",
            AppError::NotFound => "not_found",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::EmailTaken => "email_taken",
            AppError::PhoneTaken => "phone_taken",
            AppError::LengthRequired => "length_required",
            AppError::PayloadTooLarge { .. } => "payload_too_large",
            AppError::UnsupportedMediaType => "unsupported_media_type",
            AppError::TooManyRequests { .. } => "too_many_requests",
            AppError::Unavailable(_) => "unavailable",
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
            AppError::NotFound => "no such route".to_owned(),
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
            AppError::Internal(_) => "an internal error occurred".to_owned(),
        }
    }

    /// Whether the boundary should log this error's internal cause.
    pub fn is_server_side(&self) -> bool {
        self.status().is_server_error()
    }
}

impl warp::reject::Reject for AppError {}
