//! `/account/sessions`: the caller's sessions (one per login, its refresh-token
//! family), listed, ended one at a time, or all but the caller's own.

use uuid::Uuid;
use warp::http::StatusCode;
use warp::Filter;

use super::auth::{bearer, AuthUser};
use super::errors::{concat, server};
use super::{any_of, json, no_content, with_state, Route};
use crate::error::AppError;
use crate::service::session::{end_other_sessions, end_session, list_sessions, EndedBody};
use crate::state::AppState;

pub fn routes(state: AppState) -> Route {
    let list = warp::path!("account" / "sessions")
        .and(warp::get())
        .and(bearer(state.clone()))
        .and(with_state(state.clone()))
        .then(|user: AuthUser, state: AppState| async move {
            let body = list_sessions(&state, user.id, user.claims.sid).await?;
            Ok(json(StatusCode::OK, &body))
        });
    // A segment that is not a UUID matches no route (404 `not_found`).
    let end_one = warp::path!("account" / "sessions" / Uuid)
        .and(warp::delete())
        .and(bearer(state.clone()))
        .and(with_state(state.clone()))
        .then(|id: Uuid, user: AuthUser, state: AppState| async move {
            end_session(&state, user.id, id).await?;
            Ok(no_content())
        });
    let end_others = warp::path!("account" / "sessions" / "revoke-others")
        .and(warp::post())
        .and(bearer(state.clone()))
        .and(with_state(state.clone()))
        .then(|user: AuthUser, state: AppState| async move {
            // A token from before sessions had ids keeps none: every session
            // ends, its own included.
            let ended = end_other_sessions(&state, user.id, user.claims.sid).await?;
            Ok(json(StatusCode::OK, &EndedBody { ended }))
        });
    any_of([end_others.boxed(), list.boxed(), end_one.boxed()])
}

/// The errors each route of this module may answer (see `super::errors`).
pub fn errors(method: &str, path: &str) -> Option<Vec<AppError>> {
    let errors = match (method, path) {
        ("GET", "/api/v1/account/sessions")
        | ("POST", "/api/v1/account/sessions/revoke-others") => {
            concat([vec![AppError::InvalidToken], server()])
        }
        ("DELETE", "/api/v1/account/sessions/{id}") => concat([
            vec![AppError::InvalidToken, AppError::SessionNotFound],
            server(),
        ]),
        _ => return None,
    };
    Some(errors)
}
