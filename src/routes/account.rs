//! `/account/...`: sign-up (and, in later issues, login, phone and 2FA).

use serde_json::{Map, Value};
use warp::http::StatusCode;
use warp::Filter;

use super::body::{json_object, Fields};
use super::{json, with_state, Outcome};
use crate::domain::email::Email;
use crate::domain::name::PersonName;
use crate::domain::password::Password;
use crate::domain::phone::PhoneE164;
use crate::domain::user::NewUser;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::users::Taken;

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Outcome,), Error = warp::Rejection> + Clone {
    warp::path!("account" / "signup")
        .and(warp::post())
        .and(json_object())
        .and(with_state(state))
        .then(|body, state| async move { signup(state, body).await })
}

/// Parses a sign-up body, reporting every invalid field at once.
pub fn parse_signup(body: Map<String, Value>) -> Result<NewUser, AppError> {
    let mut f = Fields::new(body);
    let email = f.parse("email", |s| {
        Email::parse(s).map_err(|e| ("invalid_format", e.message().to_owned()))
    });
    let phone = f.parse("phone", |s| {
        PhoneE164::parse(s).map_err(|e| ("invalid_format", e.message().to_owned()))
    });
    let password = f.parse("password", |s| {
        Password::parse_new(s).map_err(|e| (e.code(), e.message()))
    });
    let first_name = f.parse("firstName", |s| {
        PersonName::parse(s).map_err(|e| (e.code(), name_message("firstName", e.code())))
    });
    let last_name = f.parse("lastName", |s| {
        PersonName::parse(s).map_err(|e| (e.code(), name_message("lastName", e.code())))
    });
    f.finish()?;
    match (email, phone, password, first_name, last_name) {
        (Some(email), Some(phone), Some(password), Some(first_name), Some(last_name)) => {
            Ok(NewUser {
                email,
                phone,
                password,
                first_name,
                last_name,
            })
        }
        // `finish` returned Ok, so every field parsed.
        _ => Err(AppError::internal(
            "sign-up fields missing after validation",
        )),
    }
}

fn name_message(field: &str, code: &str) -> String {
    match code {
        "required" => format!("{field} is required"),
        "too_long" => format!("{field} must be at most 100 characters"),
        _ => format!("{field} must not contain control characters"),
    }
}

async fn signup(state: AppState, body: Map<String, Value>) -> Outcome {
    let new_user = parse_signup(body)?;
    let hash = state.hasher().hash(new_user.password.clone()).await?;
    match state.store().insert_user(&new_user, &hash).await? {
        Ok(user) => {
            tracing::info!(user_id = %user.id, "user signed up");
            Ok(json(StatusCode::CREATED, &user))
        }
        Err(Taken::Email) => Err(AppError::EmailTaken),
        Err(Taken::Phone) => Err(AppError::PhoneTaken),
    }
}
