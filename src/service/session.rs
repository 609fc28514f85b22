//! Sessions: starting one at a login (the stored session, then its first
//! tokens), the tokens answer every login and refresh gives, and ending the
//! other sessions of an account when its credentials or 2FA change.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::audit::ClientInfo;
use crate::clock::after;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::tokens::NewSession;
use crate::tokens::{new_refresh_token, refresh_token_hash};

/// Ends every session of `user` but `keep` (the caller's, if its token names
/// one): on 2FA on or off, and on any change of credentials. Their refresh and
/// access tokens stop working at once, in every process.
pub async fn end_other_sessions(
    state: &AppState,
    user: Uuid,
    keep: Option<Uuid>,
) -> Result<u64, AppError> {
    let now = state.clock().now();
    let ended = state.store().revoke_other_sessions(user, keep, now).await?;
    state.revocations().forget(user);
    tracing::info!(%user, ended, "other sessions ended");
    Ok(ended)
}

/// One session in `GET /account/sessions`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionBody {
    /// The session id (the access tokens' `sid` claim).
    pub id: Uuid,
    /// Whether the access token of this request belongs to this session.
    pub current: bool,
    /// How the login was authenticated (RFC 8176): `["pwd"]`, `["pwd","sms"]`
    /// or, with a recovery code, `["pwd","otp"]`.
    pub amr: Vec<String>,
    /// The login.
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub created_at: DateTime<Utc>,
    /// The login or the latest refresh.
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub last_used_at: DateTime<Utc>,
    /// The session's absolute end.
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub expires_at: DateTime<Utc>,
    /// The client's address at login (null for sessions older than this field).
    pub ip: Option<String>,
    /// The client's user agent at login, up to 256 characters.
    pub user_agent: Option<String>,
}

/// `GET /account/sessions`: the live sessions, most recently used first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionsBody {
    pub sessions: Vec<SessionBody>,
}

/// `POST /account/sessions/revoke-others`: how many sessions ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndedBody {
    pub ended: u64,
}

/// The live sessions of `user`; `current` is the caller's.
pub async fn list_sessions(
    state: &AppState,
    user: Uuid,
    current: Option<Uuid>,
) -> Result<SessionsBody, AppError> {
    let now = state.clock().now();
    let rows = state.store().sessions_of(user, now).await?;
    Ok(SessionsBody {
        sessions: rows
            .into_iter()
            .map(|r| SessionBody {
                current: Some(r.id) == current,
                id: r.id,
                amr: r.amr,
                created_at: r.created_at,
                last_used_at: r.last_used_at,
                expires_at: r.expires_at,
                ip: r.ip,
                user_agent: r.user_agent,
            })
            .collect(),
    })
}

/// Ends one session of `user` (the caller's own included): 404
/// `session_not_found` for an id that names no live session of theirs, so
/// another user's session ids can be neither ended nor confirmed to exist.
pub async fn end_session(state: &AppState, user: Uuid, session: Uuid) -> Result<(), AppError> {
    let now = state.clock().now();
    if !state.store().end_session_of(user, session, now).await? {
        return Err(AppError::SessionNotFound);
    }
    state.revocations().forget(user);
    tracing::info!(%user, "session ended by its user");
    Ok(())
}

/// The tokens answer of the REST contract.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"status": "authenticated", "accessToken": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIzYzkzMWY2ZCJ9.c2lnbmF0dXJl", "refreshToken": "Jx2lqM8yKQ0u3m9p5vXcN7bR1sT4wZ6aD8fG0hJ2kL4", "tokenType": "Bearer", "expiresIn": 900}))]
pub struct TokensBody {
    #[schema(pattern = "^authenticated$")]
    pub status: &'static str,
    /// A JWT signed with EdDSA (default), ES256 or HS256, naming its key in
    /// the header's `kid` (public keys: `/.well-known/jwks.json`). Claims:
    /// `iss`, `aud` (a string, or an array for several audiences), `sub` (the
    /// user id), `iat`, `nbf`, `exp`, `jti`, `amr` (RFC 8176: `["pwd"]`,
    /// `["pwd","sms"]` or `["pwd","otp"]`), `auth_time` (the login, in
    /// seconds; refreshing keeps it), `sid` (the session) and `iat_us` (the
    /// issue time in microseconds).
    pub access_token: String,
    /// 43 URL-safe base64 characters (256 bits); send it to `/auth/refresh`.
    pub refresh_token: String,
    #[schema(pattern = "^Bearer$")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// With a login (not a refresh): this device's token, 43 URL-safe base64
    /// characters. Send it back as `deviceToken` with later logins of this
    /// account: other clients' failed passwords then never lock this device out.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub device_token: Option<String>,
    /// Only when a recovery code finished this login (`amr` `["pwd","otp"]`):
    /// how many of the account's recovery codes remain unused. At 0, no
    /// recovery code is left: replace the set (`POST /account/2fa/recovery-codes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub recovery_codes_left: Option<u32>,
}

/// Starts a session (`session_id`, new per login) and issues its first tokens.
/// The session is stored first, by a statement that re-reads the account's 2FA
/// state: if 2FA was turned on while a password-only login was being checked,
/// nothing is stored or issued and the login answers 401 `invalid_credentials`,
/// like any login that did not complete (the client logs in again and meets
/// the 2FA step).
pub async fn issue_tokens(
    state: &AppState,
    user_id: Uuid,
    amr: &[&str],
    session_id: Uuid,
    client: &ClientInfo,
) -> Result<TokensBody, AppError> {
    let now = state.clock().now();
    let refresh = new_refresh_token();
    let config = state.config();
    let expires_at = after(now, config.refresh_ttl);
    let created = state
        .store()
        .create_session(NewSession {
            session_id,
            user_id,
            token_hash: &refresh_token_hash(&refresh),
            amr,
            now,
            expires_at,
            token_expires_at: after(now, config.session_idle_timeout).min(expires_at),
            client,
        })
        .await?;
    if !created {
        tracing::warn!(%user_id, "login refused: 2FA turned on while the password was checked");
        return Err(AppError::InvalidCredentials);
    }
    tokens_body(state, user_id, amr, session_id, now, refresh, now)
}

/// The tokens answer for a session that began (its login) at `auth_time`.
pub fn tokens_body(
    state: &AppState,
    user_id: Uuid,
    amr: &[&str],
    session_id: Uuid,
    auth_time: DateTime<Utc>,
    refresh: String,
    now: DateTime<Utc>,
) -> Result<TokensBody, AppError> {
    let access = state
        .tokens()
        .issue_for_session(user_id, amr, session_id, auth_time, now)
        .map_err(AppError::internal)?;
    Ok(TokensBody {
        status: "authenticated",
        access_token: access,
        refresh_token: refresh,
        token_type: "Bearer",
        expires_in: state.tokens().access_ttl_secs(),
        device_token: None,
        recovery_codes_left: None,
    })
}

/// The methods of RFC 8176 that count as a second factor in a session's `amr`:
/// an SMS code (`sms`) or a recovery code (`otp`).
pub const SECOND_FACTORS: [&str; 2] = ["sms", "otp"];

/// Step-up for sensitive changes on an account with 2FA on: the caller's
/// session must come from a login with a second factor no longer ago than
/// `AUTHGATE_STEP_UP_WINDOW` (the session's creation is the login, its
/// `auth_time`; refreshing does not renew it). An account without 2FA needs
/// nothing more than its bearer token. 401 `step_up_required` otherwise.
pub async fn require_step_up(
    state: &AppState,
    user_id: Uuid,
    session: Option<Uuid>,
    two_fa: bool,
) -> Result<(), AppError> {
    if !two_fa {
        return Ok(());
    }
    let Some(sid) = session else {
        return Err(AppError::StepUpRequired);
    };
    let Some(login) = state.store().session_login(user_id, sid).await? else {
        return Err(AppError::StepUpRequired);
    };
    let now = state.clock().now();
    let fresh = after(login.created_at, state.config().step_up_window) >= now;
    let second = login
        .amr
        .iter()
        .any(|m| SECOND_FACTORS.contains(&m.as_str()));
    if fresh && second {
        Ok(())
    } else {
        Err(AppError::StepUpRequired)
    }
}
