//! `/account/...`: sign-up, the current user, phone verification and turning
//! 2FA on and off, each confirmed by a code from the OTP actors.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::Filter;

use super::auth::{bearer, AuthUser};
use super::body::{json_object, Fields};
use super::errors::{
    code_gone, code_locked, concat, json_body, missing, overloaded, server, sms_refusals, too_many,
};
use super::limits::{limit, RouteClass};
use super::{any_of, client_info, json, with_state, Outcome, Route};
use crate::audit::{self, AuditKind, ClientInfo};
use crate::domain::email::Email;
use crate::domain::login_flow::{self, Event, Reply};
use crate::domain::name::PersonName;
use crate::domain::password::Password;
use crate::domain::phone::PhoneE164;
use crate::domain::sms_text::Locale;
use crate::domain::user::NewUser;
use crate::domain::FieldError;
use crate::error::{AppError, GoneReason, StateConflict};
use crate::service::account::{self, CodeAction};
use crate::service::session::issue_tokens;
use crate::state::AppState;

pub fn routes(state: AppState) -> Route {
    let signup = warp::path!("account" / "signup")
        .and(warp::post())
        .and(limit(state.limits(), RouteClass::Signup))
        .and(json_object())
        .and(warp::header::optional::<String>("accept-language"))
        .and(with_state(state.clone()))
        .and(client_info(state.clone()))
        .then(
            |body, accept_language: Option<String>, state, client| async move {
                signup(state, client, body, accept_language).await
            },
        );
    let audit_trail = warp::path!("account" / "audit")
        .and(warp::get())
        .and(bearer(state.clone()))
        .and(with_state(state.clone()))
        .then(|user: AuthUser, state: AppState| async move {
            let events = state.store().audit_for_user(user.id, 100).await?;
            Ok(json(StatusCode::OK, &AuditTrailBody { events }))
        });
    let me = warp::path!("account" / "me")
        .and(warp::get())
        .and(bearer(state.clone()))
        .and(with_state(state.clone()))
        .then(|user: AuthUser, state: AppState| async move { me(state, user).await });
    // "Send a code" endpoints: no body.
    let send = |path: warp::filters::BoxedFilter<()>, action: CodeAction| {
        path.and(warp::post())
            .and(limit(state.limits(), RouteClass::CodeSend))
            .and(bearer(state.clone()))
            .and(with_state(state.clone()))
            .and(client_info(state.clone()))
            .then(move |user: AuthUser, state: AppState, client| async move {
                send_code(state, client, user, action).await
            })
            .boxed()
    };
    // "Confirm with a code" endpoints: `{ "code": "123456" }`.
    let confirm = |path: warp::filters::BoxedFilter<()>, action: CodeAction| {
        path.and(warp::post())
            .and(limit(state.limits(), RouteClass::CodeCheck))
            .and(bearer(state.clone()))
            .and(json_object())
            .and(with_state(state.clone()))
            .and(client_info(state.clone()))
            .then(
                move |user: AuthUser, body, state: AppState, client| async move {
                    confirm_code(state, client, user, action, body).await
                },
            )
            .boxed()
    };
    let phone_send = send(
        warp::path!("account" / "phone" / "verify" / "send").boxed(),
        CodeAction::VerifyPhone,
    );
    let phone_confirm = confirm(
        warp::path!("account" / "phone" / "verify" / "confirm").boxed(),
        CodeAction::VerifyPhone,
    );
    let enable = send(
        warp::path!("account" / "2fa" / "enable").boxed(),
        CodeAction::Enable2fa,
    );
    let enable_confirm = confirm(
        warp::path!("account" / "2fa" / "enable" / "confirm").boxed(),
        CodeAction::Enable2fa,
    );
    let disable = send(
        warp::path!("account" / "2fa" / "disable").boxed(),
        CodeAction::Disable2fa,
    );
    let disable_confirm = confirm(
        warp::path!("account" / "2fa" / "disable" / "confirm").boxed(),
        CodeAction::Disable2fa,
    );
    let login = warp::path!("account" / "login")
        .and(warp::post())
        // A login may send a 2FA code too; it counts as a login only.
        .and(limit(state.limits(), RouteClass::Login))
        .and(json_object())
        .and(with_state(state.clone()))
        .and(client_info(state.clone()))
        .then(|body, state, client| async move { login(state, client, body).await });
    let login_verify = warp::path!("account" / "login" / "verify")
        .and(warp::post())
        .and(limit(state.limits(), RouteClass::CodeCheck))
        .and(json_object())
        .and(with_state(state.clone()))
        .and(client_info(state.clone()))
        .then(|body, state, client| async move { login_verify(state, client, body).await });
    let login_resend = warp::path!("account" / "login" / "resend")
        .and(warp::post())
        .and(limit(state.limits(), RouteClass::CodeSend))
        .and(json_object())
        .and(with_state(state.clone()))
        .and(client_info(state.clone()))
        .then(|body, state, client| async move { login_resend(state, client, body).await });
    any_of([
        signup.boxed(),
        login.boxed(),
        login_verify.boxed(),
        login_resend.boxed(),
        me.boxed(),
        audit_trail.boxed(),
        phone_send,
        phone_confirm,
        enable,
        enable_confirm,
        disable,
        disable_confirm,
    ])
}

/// The errors each route of this module may answer (see `super::errors`):
/// the OpenAPI document renders them, and the boundary flags any other.
pub fn errors(method: &str, path: &str) -> Option<Vec<AppError>> {
    use AppError as E;
    // "Send a code": the bearer guard, the route's limits, its state
    // conflicts (`conflicts`), the SMS destination rules.
    let send = |conflicts: Vec<AppError>| {
        concat([
            vec![E::InvalidToken, too_many(), code_locked()],
            conflicts,
            sms_refusals(),
            server(),
        ])
    };
    // "Confirm with a code": the bearer guard, the body, the code's checks,
    // what confirming may conflict with (`conflicts`).
    let confirm = |conflicts: Vec<AppError>| {
        concat([
            vec![E::InvalidToken, too_many()],
            json_body(missing(&["code"])),
            vec![E::InvalidCode { attempts_left: 4 }, E::NoActiveCode],
            code_gone(),
            vec![code_locked()],
            conflicts,
            server(),
        ])
    };
    let flow_gone = || {
        vec![
            E::Gone(GoneReason::FlowExpired),
            E::Gone(GoneReason::FlowLocked),
            E::Gone(GoneReason::FlowFinished),
        ]
    };
    let errors = match (method, path) {
        ("POST", "/api/v1/account/signup") => concat([
            json_body(E::Validation(vec![
                FieldError::new(
                    "email",
                    "invalid_format",
                    "email must be a valid address like name@example.com",
                ),
                FieldError::new(
                    "password",
                    "too_short",
                    "password must be at least 8 characters",
                ),
            ])),
            vec![E::EmailTaken, E::PhoneTaken, too_many()],
            server(),
            vec![overloaded()],
        ]),
        ("POST", "/api/v1/account/login") => concat([
            json_body(missing(&["email", "password"])),
            vec![E::InvalidCredentials, too_many(), code_locked()],
            sms_refusals(),
            server(),
            vec![overloaded()],
        ]),
        ("POST", "/api/v1/account/login/verify") => concat([
            json_body(missing(&["flowId", "code"])),
            vec![
                E::InvalidCode { attempts_left: 4 },
                E::Gone(GoneReason::CodeExpired),
            ],
            flow_gone(),
            vec![too_many(), code_locked()],
            server(),
        ]),
        ("POST", "/api/v1/account/login/resend") => concat([
            json_body(missing(&["flowId"])),
            flow_gone(),
            vec![too_many(), E::ResendLimit, code_locked()],
            sms_refusals(),
            server(),
        ]),
        ("GET", "/api/v1/account/me") | ("GET", "/api/v1/account/audit") => {
            concat([vec![E::InvalidToken], server()])
        }
        ("POST", "/api/v1/account/phone/verify/send") => {
            send(vec![E::State(StateConflict::PhoneAlreadyVerified)])
        }
        ("POST", "/api/v1/account/phone/verify/confirm") => confirm(vec![E::PhoneTaken]),
        ("POST", "/api/v1/account/2fa/enable") => send(vec![
            E::State(StateConflict::TwoFaAlreadyEnabled),
            E::State(StateConflict::PhoneNotVerified),
        ]),
        ("POST", "/api/v1/account/2fa/enable/confirm") => {
            confirm(vec![E::State(StateConflict::PhoneNotVerified)])
        }
        ("POST", "/api/v1/account/2fa/disable") => {
            send(vec![E::State(StateConflict::TwoFaNotEnabled)])
        }
        ("POST", "/api/v1/account/2fa/disable/confirm") => confirm(vec![]),
        _ => return None,
    };
    Some(errors)
}

/// `GET /account/audit`: the user's newest events first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditTrailBody {
    pub events: Vec<crate::store::audit::AuditRow>,
}

async fn me(state: AppState, user: AuthUser) -> Outcome {
    Ok(json(
        StatusCode::OK,
        &account::current_user(&state, user.id).await?,
    ))
}

/// The answer to "a code was sent".
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"status": "code_sent", "expiresAt": "2026-11-27T10:52:17.628Z", "resendAfter": "2026-11-27T10:42:47.628Z"}))]
pub struct CodeSentBody {
    #[schema(pattern = "^code_sent$")]
    pub status: &'static str,
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub expires_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub resend_after: DateTime<Utc>,
}

async fn send_code(
    state: AppState,
    client: ClientInfo,
    user: AuthUser,
    action: CodeAction,
) -> Outcome {
    let issued = account::send_code(&state, user.id, action, client).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &CodeSentBody {
            status: "code_sent",
            expires_at: issued.expires_at,
            resend_after: issued.resend_after,
        },
    ))
}

/// Parses `{ "code": "123456" }` with the configured length.
pub fn parse_code_body(body: Map<String, Value>, length: u8) -> Result<String, AppError> {
    let mut f = Fields::new(body);
    let code = f.parse("code", |s| {
        crate::domain::otp::parse_code(s, length).map_err(|m| ("invalid_format", m))
    });
    f.finish()?;
    code.ok_or_else(|| AppError::internal("code missing after validation"))
}

async fn confirm_code(
    state: AppState,
    client: ClientInfo,
    user: AuthUser,
    action: CodeAction,
    body: Map<String, Value>,
) -> Outcome {
    let code = parse_code_body(body, state.config().otp_length)?;
    let confirmed =
        account::confirm_code(&state, user.id, user.claims.sid, action, code, client).await?;
    Ok(match confirmed.recovery_codes {
        // Turning 2FA on: the user's fields and its recovery codes, shown once.
        Some(codes) => json(
            StatusCode::OK,
            &crate::service::recovery::TwoFaEnabledBody::new(confirmed.user, codes),
        ),
        None => json(StatusCode::OK, &confirmed.user),
    })
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
    let locale = f.optional("locale", |s| {
        Locale::ALL.into_iter().find(|l| l.as_str() == s).ok_or((
            "invalid_format",
            "locale must be one of en, es, fr, de, pt".to_owned(),
        ))
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
                locale,
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

/// `POST /account/signup`. By default a registered e-mail (or a phone another
/// account verified) answers exactly like a fresh sign-up, after the same hash
/// and the same statement, so the answer does not tell who is registered; the
/// owner is told by SMS instead. `AUTHGATE_SIGNUP_REVEAL_TAKEN` restores 409.
/// The SMS language is the body's `locale`, else the `Accept-Language` header's
/// preferred shipped language, else English.
async fn signup(
    state: AppState,
    client: ClientInfo,
    body: Map<String, Value>,
    accept_language: Option<String>,
) -> Outcome {
    let mut new_user = parse_signup(body)?;
    if new_user.locale.is_none() {
        new_user.locale = accept_language
            .as_deref()
            .and_then(Locale::from_accept_language);
    }
    let user = crate::service::signup::sign_up(&state, new_user, &client).await?;
    Ok(json(StatusCode::CREATED, &user))
}

/// The answer when a password was right and 2FA is on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"status": "otp_required", "flowId": "7d0f0b5e-2b7e-4d7a-9c1e-5f6a8b9c0d1e", "phoneHint": "+•••••••••00", "expiresAt": "2026-11-27T10:52:17.628Z", "resendAfter": "2026-11-27T10:42:47.628Z"}))]
pub struct OtpRequiredBody {
    #[schema(pattern = "^otp_required$")]
    pub status: &'static str,
    /// Send it with the code to `/account/login/verify`.
    pub flow_id: Uuid,
    /// The phone the code went to, all but the last two digits masked.
    pub phone_hint: String,
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub expires_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub resend_after: DateTime<Utc>,
}

/// `POST /account/login`. A wrong password, an unknown or malformed e-mail and a
/// locked account answer alike, after the same work (`login::check_password`).
async fn login(state: AppState, client: ClientInfo, body: Map<String, Value>) -> Outcome {
    let mut f = Fields::new(body);
    let email = f.parse("email", |s| {
        if s.trim().is_empty() {
            Err(("required", "email is required".to_owned()))
        } else {
            Ok(s.to_owned())
        }
    });
    let password = f.parse("password", |s| {
        Password::for_login(s).ok_or((
            "invalid_format",
            "password must be 1 to 128 characters".to_owned(),
        ))
    });
    let device_token = f.optional("deviceToken", |s| {
        if s.len() <= 256 {
            Ok(s.to_owned())
        } else {
            Err((
                "too_long",
                "deviceToken must be at most 256 characters".to_owned(),
            ))
        }
    });
    f.finish()?;
    let (Some(email), Some(password)) = (email, password) else {
        return Err(AppError::internal("login fields missing after validation"));
    };
    let attempt = crate::service::login::Attempt {
        email,
        password: password.clone(),
        device_token,
    };
    let verified = crate::service::login::check_password(&state, &client, attempt).await?;
    let now = state.clock().now();
    let limits = crate::actors::flow::limits(state.config());
    let flow = login_flow::start(now, &limits);
    let two_fa = verified.as_ref().is_some_and(|v| v.two_fa);
    let ok = verified.is_some();
    let step = login_flow::transition(&flow, Event::PasswordChecked { ok, two_fa }, now, &limits);
    let (reply, creds) = match (step.reply, verified) {
        (Err(e), _) => {
            tracing::info!("login refused: invalid credentials");
            return Err(crate::actors::flow::flow_error(e, now));
        }
        (Ok(_), None) => return Err(AppError::internal("login accepted without an account")),
        (Ok(reply), Some(creds)) => (reply, creds),
    };
    let old = &creds.password_hash;
    if crate::domain::password::needs_rehash(old) {
        // Upgrading is best effort: the login succeeds either way.
        match state.hasher().hash(password).await {
            Ok(new) => {
                if let Err(e) = state
                    .store()
                    .upgrade_password_hash(creds.user_id, old, &new)
                    .await
                {
                    tracing::warn!(error = %e, "password hash upgrade failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "password re-hash failed"),
        }
    }
    match reply {
        Reply::Tokens(amr) => {
            tracing::info!(user_id = %creds.user_id, "login succeeded (password)");
            audit::record(
                &state,
                Some(creds.user_id),
                AuditKind::LoginSucceeded,
                &client,
                json!({ "amr": amr.as_strs() }),
            )
            .await;
            let mut tokens = issue_tokens(
                &state,
                creds.user_id,
                amr.as_strs(),
                Uuid::new_v4(),
                &client,
            )
            .await?;
            tokens.device_token =
                Some(crate::service::login::issue_device_token(&state, creds.user_id).await?);
            Ok(json(StatusCode::OK, &tokens))
        }
        Reply::OtpRequired { .. } => {
            let started = state
                .flows()
                .start(&state, creds.user_id, creds.phone, step.state, now, &client)
                .await?;
            Ok(json(
                StatusCode::OK,
                &OtpRequiredBody {
                    status: "otp_required",
                    flow_id: started.flow_id,
                    phone_hint: started.phone_hint,
                    expires_at: started.expires_at,
                    resend_after: started.resend_after,
                },
            ))
        }
        Reply::CodeResent { .. } | Reply::Unchanged => {
            Err(AppError::internal("password step answered out of order"))
        }
    }
}

fn parse_flow_id(f: &mut Fields) -> Option<Uuid> {
    f.parse("flowId", |s| {
        Uuid::parse_str(s.trim())
            .map_err(|_| ("invalid_format", "flowId must be a UUID".to_owned()))
    })
}

/// `POST /account/login/verify`: the SMS code of a 2FA login, or one of the
/// account's recovery codes instead (`recoveryCode`): exactly one of the two.
async fn login_verify(state: AppState, client: ClientInfo, body: Map<String, Value>) -> Outcome {
    let length = state.config().otp_length;
    let mut f = Fields::new(body);
    let flow_id = parse_flow_id(&mut f);
    let (has_code, has_recovery) = (f.present("code"), f.present("recoveryCode"));
    let code = f.optional("code", |s| {
        crate::domain::otp::parse_code(s, length).map_err(|m| ("invalid_format", m))
    });
    let recovery = f.optional("recoveryCode", |s| {
        crate::domain::recovery::RecoveryCode::parse(s).map_err(|m| ("invalid_format", m))
    });
    match (has_code, has_recovery) {
        (false, false) => f.problem("code", "required", "code or recoveryCode is required"),
        (true, true) => f.problem(
            "recoveryCode",
            "not_allowed",
            "send either code or recoveryCode, not both",
        ),
        _ => {}
    }
    f.finish()?;
    let tokens = match (flow_id, code, recovery) {
        (Some(flow_id), Some(code), None) => {
            state.flows().verify(&state, flow_id, code, client).await?
        }
        (Some(flow_id), None, Some(recovery)) => {
            state
                .flows()
                .verify_recovery(&state, flow_id, recovery, client)
                .await?
        }
        _ => return Err(AppError::internal("verify fields missing after validation")),
    };
    Ok(json(StatusCode::OK, &tokens))
}

/// `POST /account/login/resend`: a new code for a 2FA login.
async fn login_resend(state: AppState, client: ClientInfo, body: Map<String, Value>) -> Outcome {
    let mut f = Fields::new(body);
    let flow_id = parse_flow_id(&mut f);
    f.finish()?;
    let Some(flow_id) = flow_id else {
        return Err(AppError::internal("flowId missing after validation"));
    };
    let resent = state.flows().resend(&state, flow_id, client).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &CodeSentBody {
            status: "code_sent",
            expires_at: resent.expires_at,
            resend_after: resent.resend_after,
        },
    ))
}
