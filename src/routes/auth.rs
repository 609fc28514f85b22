//! Authentication plumbing at the edge: the bearer-token guard every account
//! endpoint uses (signature, then revocation), `/auth/refresh` and
//! `/auth/logout`.

use serde_json::{Map, Value};
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::Filter;

use super::body::{json_object, Fields};
use super::errors::{body_read, concat, json_body, missing, server, too_many};
use super::{any_of, json, no_content, with_state, Outcome, Route};
use crate::audit::{AuditKind, ClientInfo};
use crate::clock::after;
use crate::error::AppError;
use crate::service::session::{end_other_sessions, tokens_body};
use crate::state::AppState;
use crate::store::tokens::{Presented, RotateOutcome};
use crate::tokens::{
    looks_like_refresh_token, refresh_token_hash, successor_refresh_tokens, Claims, TokenError,
};

/// The caller, as proven by a valid access token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub claims: Claims,
}

/// Requires `Authorization: Bearer <access token>`; rejects with 401 `invalid_token`.
/// Put it after path and method matching, so unknown routes stay 404.
pub fn bearer(state: AppState) -> BoxedFilter<(AuthUser,)> {
    warp::header::headers_cloned()
        .and(with_state(state))
        .and_then(
            |headers: warp::http::HeaderMap, state: AppState| async move {
                authenticate(&state, &headers)
                    .await
                    .map_err(warp::reject::custom)
            },
        )
        .boxed()
}

/// Checks the bearer token: signature, claims, expiry, then revocation (a
/// logged-out session, or every token of the user up to a logout-all).
async fn authenticate(
    state: &AppState,
    headers: &warp::http::HeaderMap,
) -> Result<AuthUser, AppError> {
    let token = headers
        .get(warp::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(AppError::InvalidToken)?;
    verify_access_token(state, token).await
}

/// Checks an access token: signature, claims, expiry, then revocation; 401
/// `invalid_token` for any failure.
pub(super) async fn verify_access_token(
    state: &AppState,
    token: &str,
) -> Result<AuthUser, AppError> {
    let now = state.clock().now();
    let claims = match state.tokens().verify(token, now) {
        // Signed by a key a rotation made that this process has not loaded
        // yet: reload (throttled) and look again.
        Err(TokenError::UnknownKey) if state.keyring().reload_for_unknown_kid().await => {
            state.tokens().verify(token, now)
        }
        other => other,
    }
    .map_err(|_| AppError::InvalidToken)?;
    let issued = claims.issued_at().ok_or(AppError::InvalidToken)?;
    if state
        .revocations()
        .is_revoked(claims.sub, claims.sid, issued, now)
        .await?
    {
        return Err(AppError::InvalidToken);
    }
    Ok(AuthUser {
        id: claims.sub,
        claims,
    })
}

pub fn routes(state: AppState) -> Route {
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
    any_of([refresh.boxed(), logout.boxed()])
}

/// The errors each route of this module may answer (see `super::errors`).
pub fn errors(method: &str, path: &str) -> Option<Vec<AppError>> {
    use AppError as E;
    let errors = match (method, path) {
        ("POST", "/api/v1/auth/refresh") => concat([
            json_body(missing(&["refreshToken"])),
            vec![E::InvalidRefreshToken, E::RefreshTokenReused, too_many()],
            server(),
        ]),
        // The body is optional, so it is read whatever its type.
        ("POST", "/api/v1/auth/logout") => concat([
            body_read(missing(&["refreshToken"])),
            vec![E::InvalidRefreshToken, E::InvalidToken],
            server(),
        ]),
        _ => return None,
    };
    Some(errors)
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
    let config = state.config();
    // The successor under each accepted refresh key, the active key's first:
    // a retry after a rotation still finds the one it was given.
    let successors = successor_refresh_tokens(state.keys(), &token);
    let hashes: Vec<Vec<u8>> = successors.iter().map(|s| refresh_token_hash(s)).collect();
    let (Some(successor), Some(successor_hash)) = (successors.first(), hashes.first()) else {
        return Err(AppError::internal("no refresh key"));
    };
    let grace =
        chrono::Duration::from_std(config.refresh_grace).unwrap_or(chrono::Duration::zero());
    let outcome = state
        .store()
        .rotate_refresh(Presented {
            token_hash: &refresh_token_hash(&token),
            successor_hash,
            retry_hashes: &hashes,
            now,
            idle_until: after(now, config.session_idle_timeout),
            grace_since: now - grace,
        })
        .await?;
    match outcome {
        RotateOutcome::Rotated {
            session_id,
            user_id,
            amr,
            auth_time,
        } => {
            let amr: Vec<&str> = amr.iter().map(String::as_str).collect();
            let tokens = tokens_body(
                &state,
                user_id,
                &amr,
                session_id,
                auth_time,
                successor.clone(),
                now,
            )?;
            Ok(json(StatusCode::OK, &tokens))
        }
        RotateOutcome::Retried {
            session_id,
            user_id,
            amr,
            auth_time,
            successor_hash,
        } => {
            tracing::info!(%user_id, "refresh retried within the grace window");
            let Some(given) = hashes
                .iter()
                .position(|h| *h == successor_hash)
                .and_then(|i| successors.get(i))
            else {
                return Err(AppError::InvalidRefreshToken);
            };
            let amr: Vec<&str> = amr.iter().map(String::as_str).collect();
            let tokens = tokens_body(
                &state,
                user_id,
                &amr,
                session_id,
                auth_time,
                given.clone(),
                now,
            )?;
            Ok(json(StatusCode::OK, &tokens))
        }
        RotateOutcome::Reused { user_id } => {
            state.revocations().forget(user_id);
            tracing::warn!(%user_id, "refresh token reuse detected; session revoked");
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

/// Logout with a refresh token in the body ends that session (its access tokens
/// too); with only a bearer access token it ends every session of the user and
/// refuses every access token issued so far.
async fn logout(state: AppState, headers: warp::http::HeaderMap, body: bytes::Bytes) -> Outcome {
    let now = state.clock().now();
    let has_body = !body.iter().all(u8::is_ascii_whitespace);
    if has_body {
        let token = parse_refresh_field(super::body::parse_object(&body)?)?;
        if !looks_like_refresh_token(&token) {
            return Err(AppError::InvalidRefreshToken);
        }
        let Some((session, _)) = state
            .store()
            .refresh_family(&refresh_token_hash(&token))
            .await?
        else {
            return Err(AppError::InvalidRefreshToken);
        };
        if let Some(user) = state.store().revoke_session(session, now).await? {
            state.revocations().forget(user);
        }
        return Ok(no_content());
    }
    let user = authenticate(&state, &headers).await?;
    end_other_sessions(&state, user.id, None).await?;
    Ok(no_content())
}
