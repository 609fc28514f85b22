//! Authentication plumbing at the edge: the bearer-token guard every account
//! endpoint uses, and `/auth/refresh` and `/auth/logout`.

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::body::{json_object, Fields};
use super::{json, with_state, Outcome};
use crate::audit::{AuditKind, ClientInfo};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::tokens::{NewRefresh, RotateOutcome};
use crate::tokens::{looks_like_refresh_token, new_refresh_token, refresh_token_hash, Claims};

/// The caller, as proven by a valid access token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub claims: Claims,
}

/// Requires `Authorization: Bearer <access token>`; rejects with 401 `invalid_token`.
/// Put it after path and method matching, so unknown routes stay 404.
pub fn bearer(state: AppState) -> impl Filter<Extract = (AuthUser,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(with_state(state))
        .and_then(
            |headers: warp::http::HeaderMap, state: AppState| async move {
                let token = headers
                    .get(warp::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        let (scheme, token) = v.trim().split_once(' ')?;
                        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                    })
                    .ok_or_else(|| warp::reject::custom(AppError::InvalidToken))?;
                let claims = state
                    .tokens()
                    .verify(token, state.clock().now())
                    .map_err(|_| warp::reject::custom(AppError::InvalidToken))?;
                Ok::<_, Rejection>(AuthUser {
                    id: claims.sub,
                    claims,
                })
            },
        )
}

/// The tokens answer of the REST contract.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"status": "authenticated", "accessToken": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIzYzkzMWY2ZCJ9.c2lnbmF0dXJl", "refreshToken": "Jx2lqM8yKQ0u3m9p5vXcN7bR1sT4wZ6aD8fG0hJ2kL4", "tokenType": "Bearer", "expiresIn": 900}))]
pub struct TokensBody {
    #[schema(pattern = "^authenticated$")]
    pub status: &'static str,
    /// An HS256 JWT with `sub`, `iat`, `exp`, `jti`, `iss`, `aud` and `amr`.
    pub access_token: String,
    /// 43 URL-safe base64 characters (256 random bits); send it to `/auth/refresh`.
    pub refresh_token: String,
    #[schema(pattern = "^Bearer$")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

/// Issues an access token and a refresh token in `family` (a new family per login).
pub async fn issue_tokens(
    state: &AppState,
    user_id: Uuid,
    amr: &[&str],
    family_id: Uuid,
) -> Result<TokensBody, AppError> {
    let now = state.clock().now();
    let access = state
        .tokens()
        .issue(user_id, amr, now)
        .map_err(AppError::internal)?;
    let refresh = new_refresh_token();
    let ttl = crate::clock::span(state.config().refresh_ttl);
    state
        .store()
        .insert_refresh(NewRefresh {
            family_id,
            user_id,
            token_hash: &refresh_token_hash(&refresh),
            amr,
            now,
            expires_at: now + ttl,
        })
        .await?;
    Ok(TokensBody {
        status: "authenticated",
        access_token: access,
        refresh_token: refresh,
        token_type: "Bearer",
        expires_in: state.tokens().access_ttl_secs(),
    })
}

pub fn routes(state: AppState) -> impl Filter<Extract = (Outcome,), Error = Rejection> + Clone {
    let refresh = warp::path!("auth" / "refresh")
        .and(warp::post())
        // A refresh token is a secret a script could guess, like a code.
        .and(super::limits::limit(
            state.limits(),
            super::limits::RouteClass::CodeCheck,
        ))
        .and(json_object())
        .and(with_state(state.clone()))
        .and(super::client_info(state.clone()))
        .then(|body, state, client| async move { refresh(state, client, body).await });
    let logout = warp::path!("auth" / "logout")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(super::body::bytes_capped())
        .and(with_state(state))
        .then(|headers, body, state| async move { logout(state, headers, body).await });
    refresh.or(logout).unify()
}

fn parse_refresh_field(body: Map<String, Value>) -> Result<String, AppError> {
    let mut f = Fields::new(body);
    let token = f.parse("refreshToken", |s| Ok(s.trim().to_owned()));
    f.finish()?;
    token.ok_or_else(|| AppError::internal("refreshToken missing after validation"))
}

async fn refresh(state: AppState, client: ClientInfo, body: Map<String, Value>) -> Outcome {
    let token = parse_refresh_field(body)?;
    if !looks_like_refresh_token(&token) {
        return Err(AppError::InvalidRefreshToken);
    }
    let now = state.clock().now();
    match state
        .store()
        .rotate_refresh(&refresh_token_hash(&token), now)
        .await?
    {
        RotateOutcome::Rotated {
            family_id,
            user_id,
            amr,
        } => {
            let amr: Vec<&str> = amr.iter().map(String::as_str).collect();
            let tokens = issue_tokens(&state, user_id, &amr, family_id).await?;
            Ok(json(StatusCode::OK, &tokens))
        }
        RotateOutcome::Reused { user_id } => {
            tracing::warn!(%user_id, "refresh token reuse detected; token family revoked");
            crate::audit::record(
                &state,
                Some(user_id),
                AuditKind::RefreshReuseDetected,
                &client,
                serde_json::json!({}),
            )
            .await;
            Err(AppError::RefreshTokenReused)
        }
        RotateOutcome::Invalid => Err(AppError::InvalidRefreshToken),
    }
}

/// Logout with a refresh token in the body revokes that login's family; with only
/// a bearer access token it revokes every refresh token of the user.
async fn logout(state: AppState, headers: warp::http::HeaderMap, body: bytes::Bytes) -> Outcome {
    let now = state.clock().now();
    let has_body = !body.iter().all(u8::is_ascii_whitespace);
    if has_body {
        let token = parse_refresh_field(super::body::parse_object(&body)?)?;
        if !looks_like_refresh_token(&token) {
            return Err(AppError::InvalidRefreshToken);
        }
        return match state
            .store()
            .refresh_family(&refresh_token_hash(&token))
            .await?
        {
            Some((family, _user)) => {
                state.store().revoke_family(family, now).await?;
                Ok(no_content())
            }
            None => Err(AppError::InvalidRefreshToken),
        };
    }
    let token = headers
        .get(warp::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned())
        .ok_or(AppError::InvalidToken)?;
    let claims = state
        .tokens()
        .verify(&token, now)
        .map_err(|_| AppError::InvalidToken)?;
    state.store().revoke_user_tokens(claims.sub, now).await?;
    Ok(no_content())
}

fn no_content() -> warp::reply::Response {
    let mut r = warp::reply::Response::new(warp::hyper::Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}
