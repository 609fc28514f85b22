//! `/webhooks/twilio/status`: Twilio's message status callback.
//!
//! Only a request signed by Twilio is believed: the `X-Twilio-Signature` header
//! is checked against `TWILIO_STATUS_CALLBACK_URL` (the URL exactly as Twilio
//! calls it, which a proxy may have rewritten on its way here) and every form
//! parameter, keyed with the auth token. Anything else is 403 `invalid_signature`,
//! including every request when Twilio or the callback URL is not configured:
//! with no key there is nothing that could be verified.
//!
//! Updates only move a message forward in Twilio's lifecycle, so repeats and
//! callbacks arriving out of order are acknowledged and change nothing.

use secrecy::ExposeSecret;
use warp::http::StatusCode;
use warp::reply::Reply;
use warp::Filter;

use super::errors::{concat, server};
use super::{with_state, Outcome, Route, MAX_BODY_BYTES};
use crate::domain::FieldError;
use crate::error::AppError;
use crate::sms::{delivery_rank, signature};
use crate::state::AppState;
use crate::store::outbox::DeliveryUpdate;

pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

pub fn routes(state: AppState) -> Route {
    warp::path!("webhooks" / "twilio" / "status")
        .and(warp::post())
        .and(warp::header::optional::<String>(SIGNATURE_HEADER))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::form::<Vec<(String, String)>>())
        .and(with_state(state))
        .then(|signature: Option<String>, form, state| async move {
            twilio_status(state, signature, form).await
        })
        .boxed()
}

/// The errors of the status callback (see `super::errors`). Its form body is
/// warp's own filter: a missing length is 411, another type 415, an unparsable
/// form warp's generic 400.
pub fn errors(method: &str, path: &str) -> Option<Vec<AppError>> {
    use AppError as E;
    match (method, path) {
        ("POST", "/api/v1/webhooks/twilio/status") => Some(concat([
            vec![
                E::Forbidden,
                E::Validation(vec![FieldError::new(
                    "MessageStatus",
                    "required",
                    "MessageStatus is required",
                )]),
                E::BadRequest("the request could not be processed".to_owned()),
                E::LengthRequired,
                E::PayloadTooLarge {
                    limit: MAX_BODY_BYTES,
                },
                E::UnsupportedMediaType,
            ],
            server(),
        ])),
        _ => None,
    }
}

async fn twilio_status(
    state: AppState,
    signature_header: Option<String>,
    form: Vec<(String, String)>,
) -> Outcome {
    let twilio = state.config().sms.twilio.as_ref();
    let verified = match twilio.and_then(|t| Some((t, t.status_callback_url.as_deref()?))) {
        Some((t, url)) => signature::verify(
            t.auth_token.expose_secret(),
            url,
            &form,
            signature_header.as_deref(),
        ),
        None => false,
    };
    if !verified {
        return Err(AppError::Forbidden);
    }
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    let mut problems = Vec::new();
    let sid = field("MessageSid").or_else(|| field("SmsSid"));
    if sid.is_none() {
        problems.push(FieldError::new(
            "MessageSid",
            "required",
            "MessageSid is required",
        ));
    }
    let status = field("MessageStatus").or_else(|| field("SmsStatus"));
    if status.is_none() {
        problems.push(FieldError::new(
            "MessageStatus",
            "required",
            "MessageStatus is required",
        ));
    }
    let (Some(sid), Some(status)) = (sid, status) else {
        return Err(AppError::Validation(problems));
    };
    // A status authgate does not track (WhatsApp `read`, future additions) is
    // acknowledged so Twilio does not retry it, and otherwise ignored.
    if let Some(rank) = delivery_rank(status) {
        let update = DeliveryUpdate {
            provider_sid: sid,
            status,
            rank,
            error_code: field("ErrorCode").and_then(|c| c.parse::<i32>().ok()),
        };
        let changed = state
            .store()
            .update_delivery_status(&update, state.clock().now())
            .await?;
        tracing::info!(provider_sid = %sid, status, changed, "SMS delivery status callback");
    }
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}
