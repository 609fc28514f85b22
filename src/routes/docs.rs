//! The OpenAPI 3.1 document of every route in [`super::ROUTES`], built from the
//! code's own types so that it cannot drift from what the server does:
//!
//! - response schemas are derived (`utoipa::ToSchema`) on the very structs the
//!   handlers serialize (`User`, `TokensBody`, `ErrorBody`, …);
//! - error responses are rendered from each route's error table (declared next
//!   to its handler, see [`super::errors`]; the boundary flags any answer a
//!   table lacks) through `ErrorBody::new`, so each route's statuses, `code`s
//!   and example bodies come from `AppError::status`, `code` and
//!   `public_message`;
//! - request bodies are described by the small types below. The handlers still
//!   parse bodies by hand from `serde_json::Value` (to report every field problem
//!   at once and never echo a value); these types only document the fields those
//!   parsers read, and the tests send real bodies validated against them.
//!
//! Served at `GET /api/v1/openapi.json` and written to `openapi.json` by
//! `authgate openapi`. What this module must not do: handle a request other than
//! the document's own, or hold any state.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, ComponentsBuilder, ObjectBuilder, OneOfBuilder, Schema,
    Type,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr,
    Required, ResponseBuilder, ResponsesBuilder,
};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::Filter;

use super::account::{AuditTrailBody, CodeSentBody, OtpRequiredBody};
use super::health::{HealthBody, ReadyBody};
use super::well_known::{JwksBody, OpenIdConfigurationBody};
use super::{json, ErrorBody, Route, ROUTES};
use crate::crypto::Jwk;
use crate::domain::user::User;
use crate::domain::FieldError;
use crate::error::AppError;
use crate::service::admin::{AdminActionBody, AdminUserDetail, AdminUsersPage};
use crate::service::password_reset::{ResetDoneBody, ResetStartedBody};
use crate::service::recovery::{RecoveryCodesBody, TwoFaEnabledBody};
use crate::service::session::{EndedBody, SessionBody, SessionsBody, TokensBody};
use crate::store::admin::AdminUser;
use crate::store::audit::AuditRow;

/// Where the document is served (also one of `ROUTES`).
pub const DOCUMENT_PATH: &str = "/api/v1/openapi.json";

/// A fixed time for example bodies, so the committed `openapi.json` is stable.
const EXAMPLE_TIME: &str = "2026-11-27T10:42:17.665Z";

/// `POST /account/signup`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"email": "ada@example.com", "phone": "+1 (415) 555-0100", "password": "s3cure-passw0rd", "firstName": "Ada", "lastName": "Lovelace"}))]
pub struct SignupRequest {
    /// Compared case-insensitively; stored lower-cased.
    pub email: String,
    pub phone: String,
    pub password: String,
    pub first_name: String,
    pub last_name: String,
    /// Optional: the language of the account's SMS. Without it, the request's
    /// `Accept-Language` header picks the most preferred of these; otherwise
    /// English.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub locale: Option<String>,
}

/// `POST /account/login`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"email": "ada@example.com", "password": "s3cure-passw0rd", "deviceToken": "q8Zb1v0yXr4tN2mK6pLw9sD3fG7hJ5cA1eR8uI0oP2Y"}))]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// Optional: the `deviceToken` of an earlier login of this account on this
    /// device. A valid one is admitted against its own failure count, so other
    /// clients' failed passwords never lock it out; an unknown, expired or
    /// foreign one is ignored (the login counts as an untrusted client's).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub device_token: Option<String>,
}

/// `POST /account/login/verify`: the SMS code of a 2FA login, or one of the
/// account's recovery codes instead: exactly one of `code` and `recoveryCode`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"flowId": "7d0f0b5e-2b7e-4d7a-9c1e-5f6a8b9c0d1e", "code": "123456"}))]
pub struct LoginVerifyRequest {
    /// From the `otp_required` answer of `/account/login`.
    #[schema(format = Uuid)]
    pub flow_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code: Option<String>,
    /// Instead of `code`: one of the recovery codes shown when 2FA was turned
    /// on (or the set was last replaced). Single use.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub recovery_code: Option<String>,
}

/// `POST /account/login/resend`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"flowId": "7d0f0b5e-2b7e-4d7a-9c1e-5f6a8b9c0d1e"}))]
pub struct FlowRequest {
    #[schema(format = Uuid)]
    pub flow_id: String,
}

/// The `.../confirm` endpoints.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"code": "123456"}))]
pub struct CodeRequest {
    pub code: String,
}

/// `POST /auth/refresh`, and `POST /auth/logout` when it has a body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"refreshToken": "Jx2lqM8yKQ0u3m9p5vXcN7bR1sT4wZ6aD8fG0hJ2kL4"}))]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Twilio's message status callback, form-encoded. Only the fields authgate
/// reads are listed; Twilio sends more, and every one of them is covered by
/// the signature.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"MessageSid": "SM0123456789abcdef0123456789abcdef", "MessageStatus": "delivered", "AccountSid": "AC0123456789abcdef0123456789abcdef"}))]
#[allow(non_snake_case)] // Twilio's own field names
pub struct TwilioStatusForm {
    /// Required unless the legacy `SmsSid` is sent.
    pub MessageSid: Option<String>,
    /// `queued`, `sent`, `delivered`, `undelivered`, `failed`, …; required unless
    /// the legacy `SmsStatus` is sent.
    pub MessageStatus: Option<String>,
    pub SmsSid: Option<String>,
    pub SmsStatus: Option<String>,
    /// Twilio's error code for failed messages.
    pub ErrorCode: Option<String>,
}

/// `POST /account/phone/change`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"phone": "+1 (415) 555-0199"}))]
pub struct PhoneChangeRequest {
    /// The new number.
    pub phone: String,
}

/// `POST /account/password/reset`: exactly one of `email` and `phone`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"email": "ada@example.com"}))]
pub struct PasswordResetRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub email: Option<String>,
    /// The account's verified phone (an unverified number names no account).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub phone: Option<String>,
}

/// `POST /account/password/reset/confirm`: the identifier the code was asked
/// with (`email` or `phone`, exactly one), the code and the new password.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"email": "ada@example.com", "code": "123456", "password": "n3w-passw0rd"}))]
pub struct PasswordResetConfirmRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub phone: Option<String>,
    pub code: String,
    /// The new password.
    pub password: String,
}

/// How a route authenticates its caller.
enum Auth {
    None,
    Bearer,
    /// Logout: a refresh token in the body, or else a bearer token.
    BearerOptional,
    TwilioSignature,
    /// The admin API: `Authorization: Bearer <AUTHGATE_ADMIN_TOKEN>`.
    Admin,
}

/// What a route reads from the body.
enum Body {
    None,
    Json(&'static str),
    OptionalJson(&'static str),
    Form(&'static str),
}

/// What a route answers on success.
enum Reply {
    Json(&'static str),
    OneOf(&'static [&'static str]),
    Empty,
    /// The OpenAPI document itself.
    Document,
    /// Prometheus text exposition.
    Prometheus,
}

struct Spec {
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: Option<&'static str>,
    auth: Auth,
    body: Body,
    ok: Vec<(StatusCode, &'static str, Reply)>,
}

const USER: &str = "User";
const TOKENS: &str = "TokensBody";
const CODE_SENT: &str = "CodeSentBody";

/// The document's description of one route, or `None` for a route it does not
/// know (which the tests then report as missing from the document).
fn spec(method: &str, path: &str) -> Option<Spec> {
    let confirm = |id, summary| Spec {
        id,
        tag: "account",
        summary,
        description: Some("Confirms with the code of the SMS sent by the matching send endpoint."),
        auth: Auth::Bearer,
        body: Body::Json("CodeRequest"),
        ok: vec![(StatusCode::OK, "The updated user.", Reply::Json(USER))],
    };
    let send = |id, summary, description| Spec {
        id,
        tag: "account",
        summary,
        description: Some(description),
        auth: Auth::Bearer,
        body: Body::None,
        ok: vec![(
            StatusCode::ACCEPTED,
            "A code was sent by SMS.",
            Reply::Json(CODE_SENT),
        )],
    };
    let spec = match (method, path) {
        ("POST", "/api/v1/account/signup") => Spec {
            id: "signup",
            tag: "account",
            summary: "Create an account",
            description: Some(
                "By default an e-mail already registered, or a phone another account \
                 verified, answers 201 with a body of the same shape as a new account \
                 (a random id; nothing is created or changed) and the owner is told by \
                 SMS, so the answer does not reveal who is registered. 409 email_taken / \
                 phone_taken only with AUTHGATE_SIGNUP_REVEAL_TAKEN=true (enumerable). \
                 A phone held only by unverified accounts is not taken: the first \
                 account to verify it keeps it.",
            ),
            auth: Auth::None,
            body: Body::Json("SignupRequest"),
            ok: vec![(StatusCode::CREATED, "The new user.", Reply::Json(USER))],
        },
        ("POST", "/api/v1/account/login") => Spec {
            id: "login",
            tag: "account",
            summary: "Log in with e-mail and password",
            description: Some(
                "Tokens, or `otp_required` with a flow id when 2FA is on (a code is sent by SMS). \
                 A wrong password, an unknown e-mail and a locked account answer the same 401 \
                 after the same work. Each attempt is admitted atomically before the password \
                 is checked: once `AUTHGATE_LOGIN_LOCKOUT_AFTER` attempts are failing or in \
                 flight, further ones answer 401 until the lock passes. Tokens carry a \
                 `deviceToken`; sent back with later logins, it exempts this device from the \
                 account's lockout (it has its own).",
            ),
            auth: Auth::None,
            body: Body::Json("LoginRequest"),
            ok: vec![(
                StatusCode::OK,
                "Tokens (`status: authenticated`), or `status: otp_required`.",
                Reply::OneOf(&[TOKENS, "OtpRequiredBody"]),
            )],
        },
        ("POST", "/api/v1/account/login/verify") => Spec {
            id: "loginVerify",
            tag: "account",
            summary: "Finish a 2FA login with the SMS code or a recovery code",
            description: Some(
                "With `code`, the access token's `amr` is `[\"pwd\",\"sms\"]`. With \
                 `recoveryCode` instead (a lost phone), it is `[\"pwd\",\"otp\"]` (RFC 8176: \
                 a one-time password), the code is spent, and the tokens carry \
                 `recoveryCodesLeft`. Send exactly one of the two. A wrong recovery code \
                 costs one of the login's tries like a wrong SMS code (`attemptsLeft` is \
                 what the login has left) and counts toward the account's ceiling of wrong \
                 codes (`code_entry_locked`); a used or replaced code is a wrong code. The \
                 SMS code's expiry does not apply to a recovery code, the login's does.",
            ),
            auth: Auth::None,
            body: Body::Json("LoginVerifyRequest"),
            ok: vec![(StatusCode::OK, "Tokens.", Reply::Json(TOKENS))],
        },
        ("POST", "/api/v1/account/login/resend") => Spec {
            id: "loginResend",
            tag: "account",
            summary: "Send a new code for a 2FA login",
            description: None,
            auth: Auth::None,
            body: Body::Json("FlowRequest"),
            ok: vec![(
                StatusCode::ACCEPTED,
                "A new code was sent by SMS.",
                Reply::Json(CODE_SENT),
            )],
        },
        ("GET", "/api/v1/account/me") => Spec {
            id: "me",
            tag: "account",
            summary: "The current user",
            description: None,
            auth: Auth::Bearer,
            body: Body::None,
            ok: vec![(StatusCode::OK, "The current user.", Reply::Json(USER))],
        },
        ("GET", "/api/v1/account/audit") => Spec {
            id: "auditTrail",
            tag: "account",
            summary: "The current user's newest 100 security events",
            description: None,
            auth: Auth::Bearer,
            body: Body::None,
            ok: vec![(
                StatusCode::OK,
                "Events, newest first.",
                Reply::Json("AuditTrailBody"),
            )],
        },
        ("GET", "/api/v1/account/sessions") => Spec {
            id: "sessionsList",
            tag: "sessions",
            summary: "The current user's live sessions",
            description: Some(
                "One session per login (its refresh-token family), most recently used first: \
                 when it began and was last refreshed, the client's address and user agent \
                 at login, how it was authenticated (`amr`), and whether it is the caller's.",
            ),
            auth: Auth::Bearer,
            body: Body::None,
            ok: vec![(
                StatusCode::OK,
                "The live sessions.",
                Reply::Json("SessionsBody"),
            )],
        },
        ("DELETE", "/api/v1/account/sessions/{id}") => Spec {
            id: "sessionEnd",
            tag: "sessions",
            summary: "End one session",
            description: Some(
                "Its refresh tokens are refused and its access tokens fail at once, in every \
                 process. The caller's own session may be ended too (a logout). An id that is \
                 not a UUID matches no route.",
            ),
            auth: Auth::Bearer,
            body: Body::None,
            ok: vec![(StatusCode::NO_CONTENT, "Ended.", Reply::Empty)],
        },
        ("POST", "/api/v1/account/sessions/revoke-others") => Spec {
            id: "sessionsRevokeOthers",
            tag: "sessions",
            summary: "End every session but the caller's",
            description: Some(
                "\"Log out my other devices\": every other session's refresh and access tokens \
                 stop working at once. Answers how many sessions ended.",
            ),
            auth: Auth::Bearer,
            body: Body::None,
            ok: vec![(
                StatusCode::OK,
                "The number of sessions ended.",
                Reply::Json("EndedBody"),
            )],
        },
        ("POST", "/api/v1/account/phone/verify/send") => send(
            "phoneVerifySend",
            "Send a phone verification code",
            "Sends a code to the account's phone.",
        ),
        ("POST", "/api/v1/account/phone/verify/confirm") => {
            confirm("phoneVerifyConfirm", "Confirm the phone with its code")
        }
        ("POST", "/api/v1/account/2fa/enable") => send(
            "twoFaEnable",
            "Start turning 2FA on",
            "Sends a code to the account's phone, which must be verified.",
        ),
        ("POST", "/api/v1/account/2fa/enable/confirm") => Spec {
            description: Some(
                "Confirms with the code of the SMS sent by the matching send endpoint. The \
                 answer is the user with `recoveryCodes`: ten single-use codes, each able to \
                 finish one 2FA login instead of the SMS code. They are shown only here \
                 (only keyed hashes are stored); `POST /account/2fa/recovery-codes` \
                 replaces them.",
            ),
            ok: vec![(
                StatusCode::OK,
                "The updated user and its recovery codes.",
                Reply::Json("TwoFaEnabledBody"),
            )],
            ..confirm(
                "twoFaEnableConfirm",
                "Turn 2FA on with the code (ends every other login)",
            )
        },
        ("POST", "/api/v1/account/2fa/disable") => send(
            "twoFaDisable",
            "Start turning 2FA off",
            "Sends a code to the account's phone.",
        ),
        ("POST", "/api/v1/account/2fa/disable/confirm") => confirm(
            "twoFaDisableConfirm",
            "Turn 2FA off with the code (ends every other login)",
        ),
        ("POST", "/api/v1/account/2fa/recovery-codes") => Spec {
            id: "recoveryCodesReplace",
            tag: "account",
            summary: "Replace the recovery codes",
            description: Some(
                "A new set of ten single-use recovery codes, shown only in this answer; the \
                 old codes stop working at once. Needs 2FA on and a login with a second \
                 factor (`sms` or `otp`) no older than `AUTHGATE_STEP_UP_WINDOW` (a refresh \
                 keeps the login's time): else 401 `step_up_required`, log in again. Turning \
                 2FA off deletes the codes.",
            ),
            auth: Auth::Bearer,
            body: Body::None,
            ok: vec![(
                StatusCode::OK,
                "The new recovery codes.",
                Reply::Json("RecoveryCodesBody"),
            )],
        },
        ("POST", "/api/v1/auth/refresh") => Spec {
            id: "refresh",
            tag: "auth",
            summary: "Rotate a refresh token",
            description: Some(
                "The old refresh token stops working. Presenting it again within the grace \
                 window (`AUTHGATE_REFRESH_GRACE`, 10 s), while its successor is unused, \
                 answers with the same new refresh token and a fresh access token (a retry \
                 after a lost answer); later, it ends that login, its access tokens \
                 included (`refresh_token_reused`). A login lives at most \
                 `AUTHGATE_SESSION_MAX_LIFETIME` (30 days) and ends after \
                 `AUTHGATE_SESSION_IDLE_TIMEOUT` (7 days) without a refresh.",
            ),
            auth: Auth::None,
            body: Body::Json("RefreshRequest"),
            ok: vec![(StatusCode::OK, "New tokens.", Reply::Json(TOKENS))],
        },
        ("POST", "/api/v1/auth/logout") => Spec {
            id: "logout",
            tag: "auth",
            summary: "Log out",
            description: Some(
                "With a refresh token in the body, ends that login: its refresh tokens and \
                 its access tokens stop working at once. With no body and a bearer token, \
                 ends every login of the user and refuses every access token issued so far.",
            ),
            auth: Auth::BearerOptional,
            body: Body::OptionalJson("RefreshRequest"),
            ok: vec![(StatusCode::NO_CONTENT, "Logged out.", Reply::Empty)],
        },
        ("POST", "/api/v1/webhooks/twilio/status") => Spec {
            id: "twilioStatusCallback",
            tag: "webhooks",
            summary: "Twilio message status callback",
            description: Some(
                "Called by Twilio, form-encoded, signed with `X-Twilio-Signature` over \
                 `TWILIO_STATUS_CALLBACK_URL` and every form parameter. Unsigned or \
                 wrongly signed requests, and every request when Twilio is not \
                 configured, answer 403.",
            ),
            auth: Auth::TwilioSignature,
            body: Body::Form("TwilioStatusForm"),
            ok: vec![(StatusCode::NO_CONTENT, "Acknowledged.", Reply::Empty)],
        },
        ("GET", DOCUMENT_PATH) => Spec {
            id: "openapi",
            tag: "operations",
            summary: "This OpenAPI document",
            description: None,
            auth: Auth::None,
            body: Body::None,
            ok: vec![(StatusCode::OK, "The document.", Reply::Document)],
        },
        ("GET", "/metrics") => Spec {
            id: "metrics",
            tag: "operations",
            summary: "Prometheus metrics",
            description: Some("The text exposition format; see the README for every series."),
            auth: Auth::None,
            body: Body::None,
            ok: vec![(StatusCode::OK, "The metrics.", Reply::Prometheus)],
        },
        ("GET", "/.well-known/jwks.json") => Spec {
            id: "jwks",
            tag: "tokens",
            summary: "The public keys that sign access tokens (JWKS)",
            description: Some(
                "RFC 7517. The active key first, then the next key (published before it \
                 signs, so a cached copy already knows it) and retired keys whose tokens may \
                 still be live. Verify a token with the key its header's `kid` names, in that \
                 key's `alg`; check `iss`, `aud` and `exp`. `Cache-Control: max-age` is half \
                 the rotation period, at most an hour. Empty with `JWT_ALGORITHM=HS256`.",
            ),
            auth: Auth::None,
            body: Body::None,
            ok: vec![(StatusCode::OK, "The key set.", Reply::Json("JwksBody"))],
        },
        ("GET", "/.well-known/openid-configuration") => Spec {
            id: "openidConfiguration",
            tag: "tokens",
            summary: "Discovery: the issuer and where its keys are",
            description: Some(
                "The fields of OpenID Connect Discovery that concern access tokens: \
                 `issuer` (the tokens' `iss`), `jwks_uri`, the signature algorithm and \
                 the claims.",
            ),
            auth: Auth::None,
            body: Body::None,
            ok: vec![(
                StatusCode::OK,
                "The discovery document.",
                Reply::Json("OpenIdConfigurationBody"),
            )],
        },
        ("GET", "/healthz") => Spec {
            id: "healthz",
            tag: "operations",
            summary: "Liveness",
            description: None,
            auth: Auth::None,
            body: Body::None,
            ok: vec![(StatusCode::OK, "Alive.", Reply::Json("HealthBody"))],
        },
        ("GET", "/readyz") => Spec {
            id: "readyz",
            tag: "operations",
            summary: "Readiness: the database answers",
            description: None,
            auth: Auth::None,
            body: Body::None,
            ok: vec![
                (StatusCode::OK, "Ready.", Reply::Json("ReadyBody")),
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The database does not answer.",
                    Reply::Json("ReadyBody"),
                ),
            ],
        },
        ("POST", "/api/v1/account/phone/change") => Spec {
            id: "phoneChange",
            tag: "account",
            summary: "Start changing the phone number",
            description: Some(
                "Sends a code to the new number, which follows the sign-up rules (and the \
                 SMS destination rules: 422). 409 phone_unchanged for the current number, \
                 409 phone_taken for a number another account verified. With 2FA on, the \
                 caller's login must be recent (`AUTHGATE_STEP_UP_WINDOW`) and made with a \
                 second factor (401 step_up_required). Cooldown and quotas as for every code.",
            ),
            auth: Auth::Bearer,
            body: Body::Json("PhoneChangeRequest"),
            ok: vec![(
                StatusCode::ACCEPTED,
                "A code was sent to the new number.",
                Reply::Json(CODE_SENT),
            )],
        },
        ("POST", "/api/v1/account/phone/change/confirm") => Spec {
            id: "phoneChangeConfirm",
            tag: "account",
            summary: "Switch to the new number with its code (ends every other login)",
            description: Some(
                "The number becomes the one the code was sent to, verified, in the statement \
                 that accepts the code; refused (409 phone_taken) if another account verified \
                 that number meanwhile. The old number, if it was verified, is told by SMS; \
                 every other session of the account ends.",
            ),
            auth: Auth::Bearer,
            body: Body::Json("CodeRequest"),
            ok: vec![(StatusCode::OK, "The updated user.", Reply::Json(USER))],
        },
        ("POST", "/api/v1/account/password/reset") => Spec {
            id: "passwordReset",
            tag: "account",
            summary: "Ask for a password reset code",
            description: Some(
                "With `email` or `phone` (exactly one). Always 202 with the same body, \
                 whether or not an account exists, has a verified phone, is on cooldown, \
                 over a quota or locked: the code, if any, is sent in the background and \
                 only to the account's verified phone. Only the per-address rate limit \
                 (429) shows.",
            ),
            auth: Auth::None,
            body: Body::Json("PasswordResetRequest"),
            ok: vec![(
                StatusCode::ACCEPTED,
                "Accepted; a code was sent if the account exists and has a verified phone.",
                Reply::Json("ResetStartedBody"),
            )],
        },
        ("POST", "/api/v1/account/password/reset/confirm") => Spec {
            id: "passwordResetConfirm",
            tag: "account",
            summary: "Set a new password with the reset code (ends every login)",
            description: Some(
                "With the identifier the code was asked with, the code and the new password \
                 (the sign-up rules). Sets the password, clears login lockouts and the code \
                 lock, and ends every session, refresh token and access token of the \
                 account. An unknown identifier and every kind of wrong code answer the same \
                 401 invalid_code; a wrong code counts toward the account's ceiling.",
            ),
            auth: Auth::None,
            body: Body::Json("PasswordResetConfirmRequest"),
            ok: vec![(
                StatusCode::OK,
                "The password was reset.",
                Reply::Json("ResetDoneBody"),
            )],
        },
        ("GET", "/api/v1/admin/users") => Spec {
            id: "adminUsersList",
            tag: "admin",
            summary: "List and search accounts",
            description: Some(
                "Newest first, a page at a time (`limit`, 1 to 100, default 20); pass the \
                 answer's `nextCursor` as `cursor` for the next page (keyset: no account \
                 is skipped or repeated while accounts are added). `query`: digits, spaces \
                 and `+()-.` only, with at least three digits, searches phone numbers by \
                 their digits; anything else is a case-insensitive part of the e-mail \
                 address. Audited (`admin_users_searched`, without the query).",
            ),
            auth: Auth::Admin,
            body: Body::None,
            ok: vec![(
                StatusCode::OK,
                "One page of accounts.",
                Reply::Json("AdminUsersPage"),
            )],
        },
        ("GET", "/api/v1/admin/users/{id}") => Spec {
            id: "adminUserShow",
            tag: "admin",
            summary: "One account, its live sessions and its newest 50 events",
            description: Some("Audited (`admin_user_viewed`)."),
            auth: Auth::Admin,
            body: Body::None,
            ok: vec![(
                StatusCode::OK,
                "The account.",
                Reply::Json("AdminUserDetail"),
            )],
        },
        ("DELETE", "/api/v1/admin/users/{id}") => Spec {
            id: "adminUserDelete",
            tag: "admin",
            summary: "Delete an account",
            description: Some(
                "In one transaction: the account and everything tied to it (sessions, \
                 refresh and device tokens, codes, recovery codes, login flows) are \
                 deleted, its audit events are kept without address, user agent or \
                 detail, and an `admin_user_deleted` event naming only the account's id is \
                 written. Its access tokens fail at once; its e-mail and phone are free \
                 to sign up again.",
            ),
            auth: Auth::Admin,
            body: Body::None,
            ok: vec![(StatusCode::NO_CONTENT, "Deleted.", Reply::Empty)],
        },
        ("POST", "/api/v1/admin/users/{id}/ban") => Spec {
            id: "adminUserBan",
            tag: "admin",
            summary: "Ban an account",
            description: Some(
                "Every session, refresh token and access token of the account ends at \
                 once, and it can neither log in (a right password answers 401 \
                 invalid_credentials, like a wrong one) nor refresh until unbanned. \
                 Banning a banned account keeps the first ban's time. Audited \
                 (`admin_user_banned`).",
            ),
            auth: Auth::Admin,
            body: Body::None,
            ok: vec![(
                StatusCode::OK,
                "The account, and how many sessions ended.",
                Reply::Json("AdminActionBody"),
            )],
        },
        ("POST", "/api/v1/admin/users/{id}/unban") => Spec {
            id: "adminUserUnban",
            tag: "admin",
            summary: "Unban an account",
            description: Some(
                "It can log in again (its ended sessions stay ended). Audited \
                 (`admin_user_unbanned`).",
            ),
            auth: Auth::Admin,
            body: Body::None,
            ok: vec![(
                StatusCode::OK,
                "The account (`sessionsEnded` is 0).",
                Reply::Json("AdminActionBody"),
            )],
        },
        ("POST", "/api/v1/admin/users/{id}/2fa/reset") => Spec {
            id: "adminUserTwoFaReset",
            tag: "admin",
            summary: "Force a 2FA reset",
            description: Some(
                "For an owner who lost both phone and recovery codes: 2FA is turned off, \
                 the recovery codes are deleted, and every session and access token ends. \
                 The next login is password-only; the owner can turn 2FA on again. \
                 Audited (`admin_two_fa_reset`).",
            ),
            auth: Auth::Admin,
            body: Body::None,
            ok: vec![(
                StatusCode::OK,
                "The account, and how many sessions ended.",
                Reply::Json("AdminActionBody"),
            )],
        },
        _ => return None,
    };
    Some(spec)
}

fn schema_ref(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn http_method(method: &str) -> Option<HttpMethod> {
    match method {
        "GET" => Some(HttpMethod::Get),
        "POST" => Some(HttpMethod::Post),
        "PUT" => Some(HttpMethod::Put),
        "PATCH" => Some(HttpMethod::Patch),
        "DELETE" => Some(HttpMethod::Delete),
        _ => None,
    }
}

/// The error responses of one route and status: the envelope with `code`
/// narrowed to the codes this route can give, one example per code.
fn error_response(
    status: StatusCode,
    errors: &[&AppError],
    path: &str,
) -> utoipa::openapi::Response {
    let mut codes: Vec<&'static str> = errors.iter().map(|e| e.code()).collect();
    codes.dedup();
    let narrowed = ObjectBuilder::new()
        .property(
            "statusCode",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([status.as_u16()])),
        )
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes.clone())),
        );
    let schema = AllOfBuilder::new()
        .item(schema_ref("ErrorBody"))
        .item(narrowed);
    let examples = errors.iter().filter_map(|e| {
        let value = serde_json::to_value(ErrorBody::new(e, path, EXAMPLE_TIME.to_owned())).ok()?;
        Some((
            e.code().to_owned(),
            ExampleBuilder::new().value(Some(value)).build(),
        ))
    });
    let content = ContentBuilder::new()
        .schema(Some(schema))
        .examples_from_iter(examples)
        .build();
    let description = format!(
        "{}: {}",
        status.canonical_reason().unwrap_or("Error"),
        codes
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", content);
    if status == StatusCode::TOO_MANY_REQUESTS || codes.contains(&"overloaded") {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("Seconds to wait before retrying."))
                .build(),
        );
    }
    if codes.contains(&"invalid_token") {
        response = response.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(
                    "`Bearer error=\"invalid_token\"` with `invalid_token`.",
                ))
                .build(),
        );
    }
    response.build()
}

/// The operation of one route: `spec`, and `errors`, the route's error table.
fn operation(path: &str, spec: Spec, errors: &[AppError]) -> utoipa::openapi::path::Operation {
    let mut op = OperationBuilder::new()
        .operation_id(Some(spec.id))
        .tag(spec.tag)
        .summary(Some(spec.summary))
        .description(spec.description);
    op = match spec.auth {
        Auth::None => op,
        Auth::Bearer => op.security(SecurityRequirement::new("bearer", Vec::<String>::new())),
        // An empty requirement makes the bearer token optional.
        Auth::BearerOptional => op
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .security(SecurityRequirement::default()),
        Auth::Admin => op.security(SecurityRequirement::new("adminToken", Vec::<String>::new())),
        Auth::TwilioSignature => op.parameter(
            ParameterBuilder::new()
                .name("X-Twilio-Signature")
                .parameter_in(ParameterIn::Header)
                .required(Required::True)
                .description(Some(
                    "Base64 HMAC-SHA1, keyed with the Twilio auth token, of the callback \
                     URL followed by every form parameter sorted by name.",
                ))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
        ),
    };
    if path.contains("{id}") {
        let what = if path.starts_with("/api/v1/admin/") {
            "The account's id (a UUID). An id that is not a UUID matches no route."
        } else {
            "The session id (a UUID; the access tokens' `sid`)."
        };
        op = op.parameter(
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(what))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String).format(
                    Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Uuid,
                    )),
                ))),
        );
    }
    if path == "/api/v1/admin/users" {
        let query = |name: &str, description: &str, schema: ObjectBuilder| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(schema))
        };
        op = op
            .parameter(query(
                "query",
                &format!(
                    "A part of the e-mail address, or of the phone number's digits (a \
                     query of digits and `+()-. ` with at least three digits), at most \
                     {ADMIN_QUERY_MAX_CHARS} characters after trimming; empty: every account."
                ),
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(ADMIN_QUERY_MAX_CHARS)),
            ))
            .parameter(query(
                "limit",
                &format!(
                    "Accounts per page, a whole number from 1 to {} (default {}).",
                    crate::service::admin::MAX_LIMIT,
                    crate::service::admin::DEFAULT_LIMIT
                ),
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(crate::service::admin::MAX_LIMIT))
                    .default(Some(crate::service::admin::DEFAULT_LIMIT.into())),
            ))
            .parameter(query(
                "createdAfter",
                "Only accounts created at or after this instant: an RFC 3339 time \
                 (`2026-11-30T12:00:00Z`) or a date (`2026-11-30`, midnight UTC); must \
                 be a real calendar time, and earlier than `createdBefore`.",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(crate::service::admin::CREATED_PATTERN)),
            ))
            .parameter(query(
                "createdBefore",
                "Only accounts created strictly before this instant, written as \
                 `createdAfter`.",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(crate::service::admin::CREATED_PATTERN)),
            ))
            .parameter(query(
                "cursor",
                "The `nextCursor` of the previous page, as given (opaque; an altered \
                 one is refused with 400).",
                ObjectBuilder::new().schema_type(Type::String),
            ));
    }
    let body = |media: &str, name: &str, required: Required| {
        RequestBodyBuilder::new()
            .required(Some(required))
            .content(
                media,
                ContentBuilder::new().schema(Some(schema_ref(name))).build(),
            )
            .build()
    };
    op = op.request_body(match spec.body {
        Body::None => None,
        Body::Json(name) => Some(body("application/json", name, Required::True)),
        Body::OptionalJson(name) => Some(body("application/json", name, Required::False)),
        Body::Form(name) => Some(body(
            "application/x-www-form-urlencoded",
            name,
            Required::True,
        )),
    });
    let mut responses = ResponsesBuilder::new();
    for (status, description, reply) in spec.ok {
        let mut r = ResponseBuilder::new().description(description);
        let schema = match reply {
            Reply::Json(name) => Some(schema_ref(name)),
            Reply::OneOf(names) => {
                let mut one_of = OneOfBuilder::new();
                for name in names {
                    one_of = one_of.item(schema_ref(name));
                }
                Some(one_of.into())
            }
            Reply::Document => Some(ObjectBuilder::new().schema_type(Type::Object).into()),
            Reply::Empty => None,
            Reply::Prometheus => {
                r = r.content(
                    crate::metrics::CONTENT_TYPE,
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .build(),
                );
                None
            }
        };
        if let Some(schema) = schema {
            r = r.content(
                "application/json",
                ContentBuilder::new().schema(Some(schema)).build(),
            );
        }
        responses = responses.response(status.as_str(), r.build());
    }
    // Group the errors by status, in status order, keeping each code once.
    let mut of_route: Vec<&AppError> = Vec::new();
    for e in errors {
        if !of_route.iter().any(|seen| seen.code() == e.code()) {
            of_route.push(e);
        }
    }
    let mut errors = of_route;
    errors.sort_by_key(|e| e.status().as_u16());
    let mut statuses: Vec<StatusCode> = errors.iter().map(|e| e.status()).collect();
    statuses.dedup();
    for status in statuses {
        let of_status: Vec<&AppError> = errors
            .iter()
            .copied()
            .filter(|e| e.status() == status)
            .collect();
        responses = responses.response(status.as_str(), error_response(status, &of_status, path));
    }
    op.responses(responses.build()).build()
}

/// Response schemas describe exactly what the server writes, so an extra field
/// is a contract change: refuse it. (Request schemas stay open, as the parsers
/// ignore unknown fields.)
const CLOSED_SCHEMAS: &[&str] = &[
    "User",
    "TokensBody",
    "CodeSentBody",
    "OtpRequiredBody",
    "AuditRow",
    "AuditTrailBody",
    "SessionBody",
    "SessionsBody",
    "EndedBody",
    "TwoFaEnabledBody",
    "RecoveryCodesBody",
    "ErrorBody",
    "FieldError",
    "HealthBody",
    "ReadyBody",
    "Jwk",
    "JwksBody",
    "OpenIdConfigurationBody",
    "ResetStartedBody",
    "ResetDoneBody",
    "AdminUser",
    "AdminUsersPage",
    "AdminUserDetail",
    "AdminActionBody",
];

/// What the server checks of one string field of a request body, in JSON
/// Schema terms: set on the derived schemas by `components`, with every number
/// taken from the constants the parsers use, so the document cannot state a
/// bound the server does not enforce (tests/api/contract.rs sends values at and
/// just past each one).
struct Rule {
    min_length: Option<usize>,
    max_length: Option<usize>,
    /// ECMA-262, anchored when the whole value is meant.
    pattern: Option<String>,
    enum_values: Option<Vec<&'static str>>,
    /// The rule in words, with what the keywords cannot say.
    text: String,
}

impl Rule {
    fn new(text: String) -> Rule {
        Rule {
            min_length: None,
            max_length: None,
            pattern: None,
            enum_values: None,
            text,
        }
    }

    fn length(mut self, min: Option<usize>, max: Option<usize>) -> Rule {
        self.min_length = min;
        self.max_length = max;
        self
    }

    fn pattern(mut self, pattern: String) -> Rule {
        self.pattern = Some(pattern);
        self
    }
}

/// `chars` inside a regex character class, escaping the class's own syntax.
fn class_of(chars: &str) -> String {
    chars
        .chars()
        .map(|c| {
            if "\\]^-[".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Control characters (Unicode `Cc`, which is what `char::is_control` tests).
const CONTROL: &str = "\\x00-\\x1F\\x7F-\\x9F";

/// Whitespace as the server trims and skips it (Unicode `White_Space`, what
/// `char::is_whitespace` tests), spelled out: ECMA-262's `\s` differs (it
/// takes U+FEFF, not U+0085).
const WHITE_SPACE: &str =
    "\\x09-\\x0D \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";

fn email_rule() -> Rule {
    use crate::domain::email::*;
    let atom = format!("[A-Za-z0-9{}]+", class_of(LOCAL_SPECIALS));
    let inner = MAX_LABEL_CHARS - 2;
    let label = format!("[A-Za-z0-9](?:[A-Za-z0-9-]{{0,{inner}}}[A-Za-z0-9])?");
    let tld = format!(
        "[A-Za-z0-9][A-Za-z0-9-]{{{},{inner}}}[A-Za-z0-9]",
        MIN_TLD_CHARS - 2
    );
    Rule::new(format!(
        "An e-mail address of at most {MAX_EMAIL_CHARS} characters: a local part of at \
         most {MAX_LOCAL_CHARS} characters (dot-separated runs of ASCII letters, digits \
         and `` {LOCAL_SPECIALS} ``), `@`, and a domain of at most {MAX_DOMAIN_CHARS} \
         characters: two or more dot-separated labels of at most {MAX_LABEL_CHARS} ASCII \
         letters, digits and inner hyphens, the last of at least {MIN_TLD_CHARS} and not \
         all digits. The pattern states all but the part lengths and the all-digit last \
         label. Surrounding whitespace is ignored."
    ))
    .length(None, Some(MAX_EMAIL_CHARS))
    .pattern(format!("^{atom}(?:\\.{atom})*@(?:{label}\\.)+{tld}$"))
}

fn phone_rule() -> Rule {
    use crate::domain::phone::*;
    Rule::new(format!(
        "International format: `+`, then the country code and number in digits and the \
         separators `{PHONE_SEPARATORS}`, at most {MAX_PHONE_INPUT} characters in all, \
         such as `+1 (415) 555-0100`. Beyond the pattern, it must be a number that can \
         exist in its country's numbering plan (libphonenumber's metadata) and have at \
         most {MAX_E164_DIGITS} digits as E.164, the form it is stored in. Surrounding \
         whitespace is ignored."
    ))
    .length(None, Some(MAX_PHONE_INPUT))
    .pattern(format!("^\\+[0-9{}]+$", class_of(PHONE_SEPARATORS)))
}

/// A password being set (sign-up, reset).
fn new_password_rule() -> Rule {
    use crate::domain::password::*;
    Rule::new(format!(
        "{MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters (code points), spaces \
         and any script allowed, no control character, with at least one letter and one \
         digit. Taken as sent (not trimmed). The server counts as a letter any Unicode \
         alphabetic character, a little more than the pattern's `\\p{{L}}`."
    ))
    .length(Some(MIN_PASSWORD_CHARS), Some(MAX_PASSWORD_CHARS))
    .pattern(format!(
        "^[^{CONTROL}]*(?:\\p{{L}}[^{CONTROL}]*\\p{{N}}|\\p{{N}}[^{CONTROL}]*\\p{{L}})[^{CONTROL}]*$"
    ))
}

fn login_password_rule() -> Rule {
    use crate::domain::password::MAX_PASSWORD_CHARS;
    Rule::new(format!(
        "The account's password, 1 to {MAX_PASSWORD_CHARS} characters; only its length \
         is checked (an account may predate the current password rule)."
    ))
    .length(Some(1), Some(MAX_PASSWORD_CHARS))
}

fn login_email_rule() -> Rule {
    Rule::new(
        "The account's e-mail address. Only its presence is checked: an address that \
         names no account (or is no address) answers like a wrong password."
            .to_owned(),
    )
    .length(Some(1), None)
    .pattern(format!("[^{WHITE_SPACE}]"))
}

fn name_rule() -> Rule {
    use crate::domain::name::MAX_NAME_CHARS;
    Rule::new(format!(
        "1 to {MAX_NAME_CHARS} characters, not all whitespace, no control character. \
         Surrounding whitespace is trimmed (and not counted)."
    ))
    .length(Some(1), Some(MAX_NAME_CHARS))
    .pattern(format!(
        "^[^{CONTROL}]*[^{WHITE_SPACE}{CONTROL}][^{CONTROL}]*$"
    ))
}

fn locale_rule() -> Rule {
    use crate::domain::sms_text::Locale;
    let all: Vec<&'static str> = Locale::ALL.iter().map(|l| l.as_str()).collect();
    let mut rule = Rule::new(format!("One of {}.", all.join(", ")));
    rule.enum_values = Some(all);
    rule
}

/// An SMS code: `otp_length` is the configured `OTP_LENGTH`.
fn otp_rule(otp_length: u8) -> Rule {
    let n = usize::from(otp_length);
    Rule::new(format!(
        "The {n} digits of the SMS (`OTP_LENGTH` of the server that serves this \
         document; the `openapi.json` of the repository states the default). \
         Surrounding whitespace is ignored."
    ))
    .length(Some(n), Some(n))
    .pattern(format!("^[0-9]{{{n}}}$"))
}

fn recovery_code_rule() -> Rule {
    use crate::domain::recovery::*;
    let lower = String::from_utf8_lossy(ALPHABET).into_owned();
    let class = format!("{lower}{}", lower.to_ascii_uppercase());
    let class: String = {
        let mut seen = String::new();
        for c in class.chars() {
            if !seen.contains(c) {
                seen.push(c);
            }
        }
        seen
    };
    Rule::new(format!(
        "{CODE_CHARS} characters of `{lower}` in either case, shown as `xxxxx-xxxxx`; \
         whitespace and hyphens anywhere are ignored; at most {MAX_INPUT} bytes in all."
    ))
    .length(None, Some(MAX_INPUT))
    .pattern(format!(
        "^[{WHITE_SPACE}-]*(?:[{}][{WHITE_SPACE}-]*){{{CODE_CHARS}}}$",
        class_of(&class)
    ))
}

fn flow_id_rule() -> Rule {
    Rule::new("A UUID, as `/account/login` gave it.".to_owned()).pattern(
        "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$".to_owned(),
    )
}

fn refresh_token_rule() -> Rule {
    // As long as the tokens the server makes (every one has the same length).
    let n = crate::tokens::new_refresh_token().len();
    Rule::new(format!(
        "The `refreshToken` of the last answer that gave one: {n} URL-safe base64 \
         characters. A malformed token and an unknown one are both answered 401 \
         `invalid_refresh_token`."
    ))
    .length(Some(n), Some(n))
    .pattern(format!("^[A-Za-z0-9_-]{{{n}}}$"))
}

/// The admin search's cap on `query`: the longest e-mail address, as the
/// service has it.
const ADMIN_QUERY_MAX_CHARS: usize = crate::service::admin::MAX_QUERY_CHARS;

/// The login handler's cap on `deviceToken` (in bytes).
pub const MAX_DEVICE_TOKEN_BYTES: usize = 256;

fn device_token_rule() -> Rule {
    Rule::new(format!(
        "Opaque, as given; at most {MAX_DEVICE_TOKEN_BYTES} bytes (the tokens the server \
         gives are {} URL-safe characters).",
        crate::tokens::new_refresh_token().len()
    ))
    .length(None, Some(MAX_DEVICE_TOKEN_BYTES))
}

/// Every checked field of every request body: (schema, property, rule).
fn request_rules(otp_length: u8) -> Vec<(&'static str, &'static str, Rule)> {
    vec![
        ("SignupRequest", "email", email_rule()),
        ("SignupRequest", "phone", phone_rule()),
        ("SignupRequest", "password", new_password_rule()),
        ("SignupRequest", "firstName", name_rule()),
        ("SignupRequest", "lastName", name_rule()),
        ("SignupRequest", "locale", locale_rule()),
        ("LoginRequest", "email", login_email_rule()),
        ("LoginRequest", "password", login_password_rule()),
        ("LoginRequest", "deviceToken", device_token_rule()),
        ("LoginVerifyRequest", "flowId", flow_id_rule()),
        ("LoginVerifyRequest", "code", otp_rule(otp_length)),
        ("LoginVerifyRequest", "recoveryCode", recovery_code_rule()),
        ("FlowRequest", "flowId", flow_id_rule()),
        ("CodeRequest", "code", otp_rule(otp_length)),
        ("RefreshRequest", "refreshToken", refresh_token_rule()),
        ("PhoneChangeRequest", "phone", phone_rule()),
        ("PasswordResetRequest", "email", email_rule()),
        ("PasswordResetRequest", "phone", phone_rule()),
        ("PasswordResetConfirmRequest", "email", email_rule()),
        ("PasswordResetConfirmRequest", "phone", phone_rule()),
        ("PasswordResetConfirmRequest", "code", otp_rule(otp_length)),
        (
            "PasswordResetConfirmRequest",
            "password",
            new_password_rule(),
        ),
    ]
}

/// Sets each rule on its property; returns the (schema, property) pairs it
/// found no property for (a renamed field: the unit tests require none).
fn apply_rules(
    components: &mut utoipa::openapi::Components,
    otp_length: u8,
) -> Vec<(&'static str, &'static str)> {
    let mut missing = Vec::new();
    for (schema, property, rule) in request_rules(otp_length) {
        let target = match components.schemas.get_mut(schema) {
            Some(RefOr::T(Schema::Object(o))) => match o.properties.get_mut(property) {
                Some(RefOr::T(Schema::Object(p))) => Some(p),
                _ => None,
            },
            _ => None,
        };
        let Some(p) = target else {
            missing.push((schema, property));
            continue;
        };
        p.min_length = rule.min_length;
        p.max_length = rule.max_length;
        p.pattern = rule.pattern;
        p.enum_values = rule
            .enum_values
            .map(|v| v.into_iter().map(Value::from).collect());
        p.description = Some(match p.description.take() {
            Some(d) => format!("{} {}", rule.text, d.replace('\n', " ")),
            None => rule.text,
        });
    }
    missing
}

fn components(otp_length: u8) -> utoipa::openapi::Components {
    let mut components = ComponentsBuilder::new()
        .schema_from::<User>()
        .schema_from::<TokensBody>()
        .schema_from::<CodeSentBody>()
        .schema_from::<OtpRequiredBody>()
        .schema_from::<AuditRow>()
        .schema_from::<AuditTrailBody>()
        .schema_from::<SessionBody>()
        .schema_from::<SessionsBody>()
        .schema_from::<EndedBody>()
        .schema_from::<TwoFaEnabledBody>()
        .schema_from::<RecoveryCodesBody>()
        .schema_from::<ErrorBody>()
        .schema_from::<FieldError>()
        .schema_from::<HealthBody>()
        .schema_from::<Jwk>()
        .schema_from::<JwksBody>()
        .schema_from::<OpenIdConfigurationBody>()
        .schema_from::<ReadyBody>()
        .schema_from::<SignupRequest>()
        .schema_from::<LoginRequest>()
        .schema_from::<LoginVerifyRequest>()
        .schema_from::<FlowRequest>()
        .schema_from::<CodeRequest>()
        .schema_from::<RefreshRequest>()
        .schema_from::<TwilioStatusForm>()
        .schema_from::<PhoneChangeRequest>()
        .schema_from::<PasswordResetRequest>()
        .schema_from::<PasswordResetConfirmRequest>()
        .schema_from::<ResetStartedBody>()
        .schema_from::<ResetDoneBody>()
        .schema_from::<AdminUser>()
        .schema_from::<AdminUsersPage>()
        .schema_from::<AdminUserDetail>()
        .schema_from::<AdminActionBody>()
        .security_scheme(
            "adminToken",
            SecurityScheme::Http(Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The admin API's token, `AUTHGATE_ADMIN_TOKEN`: not a user's access token."))
                .build()),
        )
        .security_scheme(
            "bearer",
            SecurityScheme::Http(Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("An access token from `/account/login`, `/account/login/verify` or `/auth/refresh`: a JWT (EdDSA by default) whose `kid` names its key in `/.well-known/jwks.json`."))
                .build()),
        )
        .build();
    for name in CLOSED_SCHEMAS {
        if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(*name) {
            o.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
    }
    let missing = apply_rules(&mut components, otp_length);
    if !missing.is_empty() {
        tracing::warn!(?missing, "request rules without a property");
    }
    components
}

/// The `OTP_LENGTH` the committed `openapi.json` states: the default, since
/// `authgate openapi` reads no configuration.
pub fn default_otp_length() -> u8 {
    crate::config::Config::default().otp_length
}

/// The whole document, as a server with the default configuration serves it.
pub fn document() -> OpenApi {
    document_for(default_otp_length())
}

/// The whole document for a server whose SMS codes have `otp_length` digits.
pub fn document_for(otp_length: u8) -> OpenApi {
    let mut paths = PathsBuilder::new();
    for (method, path) in ROUTES {
        if let (Some(m), Some(s)) = (http_method(method), spec(method, path)) {
            let errors = super::errors::of_route(method, path).unwrap_or_default();
            paths = paths.path(*path, PathItem::new(m, operation(path, s, &errors)));
        }
    }
    let info = InfoBuilder::new()
        .title("authgate")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Self-hosted SMS two-factor authentication: sign-up, password login with JWTs, \
             phone verification and SMS 2FA. Every error is the JSON envelope `ErrorBody`; \
             branch on its `code`.",
        ))
        .license(Some(LicenseBuilder::new().name("MIT").build()))
        .build();
    let tag = |name: &str, description: &str| {
        TagBuilder::new()
            .name(name)
            .description(Some(description))
            .build()
    };
    OpenApiBuilder::new()
        .info(info)
        .paths(paths.build())
        .components(Some(components(otp_length)))
        .tags(Some([
            tag("account", "Sign-up, login, phone verification and 2FA."),
            tag("auth", "Refresh tokens and logout."),
            tag(
                "sessions",
                "The current user's sessions: list, end one, end the others.",
            ),
            tag("webhooks", "Callbacks from Twilio."),
            tag(
                "tokens",
                "What another service needs to verify access tokens: the public keys \
                 (JWKS) and the issuer. Claims: `iss`, `aud` (a string, or an array for \
                 several audiences), `sub`, `iat`, `nbf`, `exp`, `jti`, `amr`, `auth_time`, \
                 `sid`; the header names the key in `kid`.",
            ),
            tag("operations", "Health, readiness and this document."),
            tag(
                "admin",
                "The admin API, with `AUTHGATE_ADMIN_TOKEN` as bearer token (off, every route \
                 404, while it is unset): find accounts, see their sessions and events, ban \
                 and unban, force a 2FA reset, delete. Every action is audited with the \
                 admin's address and rate-limited per address (`AUTHGATE_LIMIT_ADMIN`).",
            ),
        ]))
        .build()
}

/// The document as JSON (the default configuration).
pub fn document_json() -> Value {
    document_json_for(default_otp_length())
}

/// The document as JSON for a server whose SMS codes have `otp_length` digits.
pub fn document_json_for(otp_length: u8) -> Value {
    serde_json::to_value(document_for(otp_length)).unwrap_or(Value::Null)
}

/// The document as written to `openapi.json`: pretty, with a final newline, so
/// that diffs of the committed file are readable.
pub fn document_pretty() -> Result<String, serde_json::Error> {
    let mut s = serde_json::to_string_pretty(&document())?;
    s.push('\n');
    Ok(s)
}

/// The document's own route answers no error (see `super::errors`).
pub fn errors(method: &str, path: &str) -> Option<Vec<AppError>> {
    match (method, path) {
        ("GET", DOCUMENT_PATH) => Some(vec![]),
        _ => None,
    }
}

/// `GET /openapi.json` under `/api/v1`. The document is built once, at start,
/// for the running `OTP_LENGTH`.
pub fn routes(otp_length: u8) -> Route {
    let doc = document_json_for(otp_length);
    warp::path!("openapi.json")
        .and(warp::get())
        .map(move || Ok(json(StatusCode::OK, &doc)))
        .boxed()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The documented request examples are what the hand-written parsers accept,
    /// field names included.
    #[test]
    fn request_examples_parse() {
        let signup = serde_json::json!({"email": "ada@example.com", "phone": "+1 (415) 555-0100",
            "password": "s3cure-passw0rd", "firstName": "Ada", "lastName": "Lovelace"});
        let typed: SignupRequest = serde_json::from_value(signup.clone()).unwrap();
        assert_eq!(serde_json::to_value(typed).unwrap(), signup);
        let Value::Object(map) = signup else {
            panic!("object")
        };
        assert!(super::super::account::parse_signup(map).is_ok());
        let Value::Object(code) = serde_json::to_value(CodeRequest {
            code: "123456".into(),
        })
        .unwrap() else {
            panic!("object")
        };
        assert!(super::super::account::parse_code_body(code, 6).is_ok());
    }

    /// A rule whose field was renamed would silently state nothing.
    #[test]
    fn every_request_rule_finds_its_property() {
        let mut components = ComponentsBuilder::new()
            .schema_from::<SignupRequest>()
            .schema_from::<LoginRequest>()
            .schema_from::<LoginVerifyRequest>()
            .schema_from::<FlowRequest>()
            .schema_from::<CodeRequest>()
            .schema_from::<RefreshRequest>()
            .schema_from::<PhoneChangeRequest>()
            .schema_from::<PasswordResetRequest>()
            .schema_from::<PasswordResetConfirmRequest>()
            .build();
        assert_eq!(apply_rules(&mut components, 6), []);
        let doc = document_json_for(8);
        let code = &doc["components"]["schemas"]["CodeRequest"]["properties"]["code"];
        assert_eq!(code["pattern"], "^[0-9]{8}$");
        assert_eq!(code["minLength"], 8);
        assert_eq!(code["maxLength"], 8);
    }

    #[test]
    fn every_route_has_a_spec() {
        for (method, path) in ROUTES {
            assert!(spec(method, path).is_some(), "{method} {path}");
            assert!(http_method(method).is_some(), "{method}");
        }
        let doc = document_json();
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
