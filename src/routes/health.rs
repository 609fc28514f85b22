//! Liveness and readiness, outside the `/api/v1` prefix.

use serde_json::json;
use warp::http::StatusCode;
use warp::Filter;

use super::{json, with_state, Outcome};
use crate::state::AppState;

pub fn routes(
    state: AppState,
) -> impl warp::Filter<Extract = (Outcome,), Error = warp::Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| Ok(json(StatusCode::OK, &json!({"status": "ok"}))));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: AppState| async move {
            let database = state.store().ping().await;
            let status = if database {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Ok(json(
                status,
                &json!({
                    "status": if database { "ready" } else { "unavailable" },
                    "database": database,
                }),
            ))
        });
    healthz.or(readyz).unify()
}
