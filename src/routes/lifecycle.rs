//! `/account/phone/change` and `/account/password/reset`: changing the phone
//! number and resetting a forgotten password, each confirmed by an SMS code
//! (issue 16, items 2 and 3). Parsing and answers only; the use cases are
//! `service::phone_change` and `service::password_reset`.

use serde_json::{Map, Value};
use warp::http::StatusCode;
use warp::Filter;

use super::account::{parse_code_body, CodeSentBody};
use super::auth::{bearer, AuthUser};
use super::body::{json_object, Fields};
use super::errors::{
    code_gone, code_locked, concat, json_body, missing, overloaded, server, sms_refusals, too_many,
};
use super::limits::{limit, RouteClass};
use super::{any_of, client_info, json, with_state, Outcome, Route};
use crate::audit::ClientInfo;
use crate::domain::email::Email;
use crate::domain::password::Password;
use crate::domain::phone::PhoneE164;
use crate::domain::FieldError;
use crate::error::{AppError, StateConflict};
use crate::service::password_reset::{self, Identifier};
use crate::service::phone_change;
use crate::state::AppState;

pub fn routes(state: AppState) -> Route {
    let change =
        warp::path!("account" / "phone" / "change")
            .and(warp::post())
            .and(limit(state.limits(), RouteClass::CodeSend))
            .and(bearer(state.clone()))
            .and(json_object())
            .and(with_state(state.clone()))
            .and(client_info(state.clone()))
            .then(|user, body, state, client| async move {
                change_start(state, client, user, body).await
            });
    let change_confirm = warp::path!("account" / "phone" / "change" / "confirm")
        .and(warp::post())
        .and(limit(state.limits(), RouteClass::CodeCheck))
        .and(bearer(state.clone()))
        .and(json_object())
        .and(with_state(state.clone()))
        .and(client_info(state.clone()))
        .then(|user, body, state, client| async move {
            change_confirm(state, client, user, body).await
        });
    let reset = warp::path!("account" / "password" / "reset")
        .and(warp::post())
        .and(limit(state.limits(), RouteClass::CodeSend))
        .and(json_object())
        .and(with_state(state.clone()))
        .and(client_info(state.clone()))
        .then(|body, state, client| async move { reset_start(state, client, body).await });
    let reset_confirm = warp::path!("account" / "password" / "reset" / "confirm")
        .and(warp::post())
        .and(limit(state.limits(), RouteClass::CodeCheck))
        .and(json_object())
        .and(with_state(state.clone()))
        .and(client_info(state.clone()))
        .then(|body, state, client| async move { reset_confirm(state, client, body).await });
    any_of([
        change.boxed(),
        change_confirm.boxed(),
        reset.boxed(),
        reset_confirm.boxed(),
    ])
}

/// The errors each route of this module may answer (see `super::errors`).
pub fn errors(method: &str, path: &str) -> Option<Vec<AppError>> {
    use AppError as E;
    let errors = match (method, path) {
        ("POST", "/api/v1/account/phone/change") => concat([
            vec![
                E::InvalidToken,
                E::StepUpRequired,
                too_many(),
                code_locked(),
            ],
            json_body(missing(&["phone"])),
            vec![E::State(StateConflict::PhoneUnchanged), E::PhoneTaken],
            sms_refusals(),
            server(),
        ]),
        ("POST", "/api/v1/account/phone/change/confirm") => concat([
            vec![E::InvalidToken, too_many()],
            json_body(missing(&["code"])),
            vec![E::InvalidCode { attempts_left: 4 }, E::NoActiveCode],
            code_gone(),
            vec![
                code_locked(),
                E::PhoneTaken,
                E::State(StateConflict::PhoneChangeConflict),
            ],
            server(),
        ]),
        ("POST", "/api/v1/account/password/reset") => concat([
            json_body(E::Validation(vec![FieldError::new(
                "email",
                "required",
                "email or phone is required",
            )])),
            vec![too_many()],
            server(),
        ]),
        ("POST", "/api/v1/account/password/reset/confirm") => concat([
            json_body(E::Validation(vec![FieldError::new(
                "password",
                "too_short",
                "password must be at least 8 characters",
            )])),
            vec![E::InvalidResetCode, too_many(), overloaded()],
            server(),
        ]),
        _ => return None,
    };
    Some(errors)
}

/// `{ "phone": "+15551234567" }`, parsed as sign-up parses it.
fn parse_phone_body(body: Map<String, Value>) -> Result<PhoneE164, AppError> {
    let mut f = Fields::new(body);
    let phone = f.parse("phone", |s| {
        PhoneE164::parse(s).map_err(|e| ("invalid_format", e.message().to_owned()))
    });
    f.finish()?;
    phone.ok_or_else(|| AppError::internal("phone missing after validation"))
}

async fn change_start(
    state: AppState,
    client: ClientInfo,
    user: AuthUser,
    body: Map<String, Value>,
) -> Outcome {
    let phone = parse_phone_body(body)?;
    let issued = phone_change::start(&state, user.id, user.claims.sid, phone, client).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &CodeSentBody {
            status: "code_sent",
            expires_at: issued.expires_at,
            resend_after: issued.resend_after,
        },
    ))
}

async fn change_confirm(
    state: AppState,
    client: ClientInfo,
    user: AuthUser,
    body: Map<String, Value>,
) -> Outcome {
    let code = parse_code_body(body, state.config().otp_length)?;
    let user = phone_change::confirm(&state, user.id, user.claims.sid, code, client).await?;
    Ok(json(StatusCode::OK, &user))
}

/// Exactly one of `email` and `phone`, each parsed as sign-up parses it.
fn identifier(f: &mut Fields) -> Option<Identifier> {
    let email = f.optional("email", |s| {
        Email::parse(s).map_err(|e| ("invalid_format", e.message().to_owned()))
    });
    let phone = f.optional("phone", |s| {
        PhoneE164::parse(s).map_err(|e| ("invalid_format", e.message().to_owned()))
    });
    match (email, phone) {
        (Some(e), None) => Some(Identifier::Email(e)),
        (None, Some(p)) => Some(Identifier::Phone(p)),
        _ => None,
    }
}

/// The 400 for a body that names no account, or two ways.
fn one_identifier(body: &Map<String, Value>) -> AppError {
    let given = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    let (code, message) = if given("email") && given("phone") {
        ("ambiguous", "send either email or phone, not both")
    } else {
        ("required", "email or phone is required")
    };
    AppError::Validation(vec![FieldError::new("email", code, message)])
}

async fn reset_start(state: AppState, client: ClientInfo, body: Map<String, Value>) -> Outcome {
    let mut f = Fields::new(body.clone());
    let who = identifier(&mut f);
    f.finish()?;
    let who = who.ok_or_else(|| one_identifier(&body))?;
    let answer = password_reset::start(&state, who, client);
    Ok(json(StatusCode::ACCEPTED, &answer))
}

async fn reset_confirm(state: AppState, client: ClientInfo, body: Map<String, Value>) -> Outcome {
    let length = state.config().otp_length;
    let mut f = Fields::new(body.clone());
    let who = identifier(&mut f);
    let code = f.parse("code", |s| {
        crate::domain::otp::parse_code(s, length).map_err(|m| ("invalid_format", m))
    });
    let password = f.parse("password", |s| {
        Password::parse_new(s).map_err(|e| (e.code(), e.message()))
    });
    f.finish()?;
    let who = who.ok_or_else(|| one_identifier(&body))?;
    let (Some(code), Some(password)) = (code, password) else {
        return Err(AppError::internal("reset fields missing after validation"));
    };
    let done = password_reset::confirm(&state, who, code, password, client).await?;
    Ok(json(StatusCode::OK, &done))
}
