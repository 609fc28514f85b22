//! `POST /account/2fa/recovery-codes`: a new set of recovery codes for the
//! caller, replacing the old one (`service::recovery::replace`). Parsing and
//! answering only.

use warp::http::StatusCode;
use warp::Filter;

use super::auth::{bearer, AuthUser};
use super::errors::{concat, server, too_many};
use super::limits::{limit, RouteClass};
use super::{client_info, json, with_state, Route};
use crate::audit::ClientInfo;
use crate::error::{AppError, StateConflict};
use crate::state::AppState;

pub fn routes(state: AppState) -> Route {
    warp::path!("account" / "2fa" / "recovery-codes")
        .and(warp::post())
        // A new set is a secret-bearing answer: held to the code-check budget.
        .and(limit(state.limits(), RouteClass::CodeCheck))
        .and(bearer(state.clone()))
        .and(with_state(state.clone()))
        .and(client_info(state))
        .then(
            |user: AuthUser, state: AppState, client: ClientInfo| async move {
                let body =
                    crate::service::recovery::replace(&state, user.id, user.claims.sid, &client)
                        .await?;
                Ok(json(StatusCode::OK, &body))
            },
        )
        .boxed()
}

/// The errors of `POST /account/2fa/recovery-codes` (see `super::errors`).
pub fn errors(method: &str, path: &str) -> Option<Vec<AppError>> {
    use AppError as E;
    match (method, path) {
        ("POST", "/api/v1/account/2fa/recovery-codes") => Some(concat([
            vec![
                E::InvalidToken,
                E::StepUpRequired,
                E::State(StateConflict::TwoFaNotEnabled),
                too_many(),
            ],
            server(),
        ])),
        _ => None,
    }
}
