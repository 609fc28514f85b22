//! Liveness and readiness, outside the `/api/v1` prefix.

use serde::Serialize;
use warp::http::StatusCode;
use warp::Filter;

use super::{any_of, json, with_state, Route};
use crate::state::AppState;

/// `GET /healthz`: the process is alive.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct HealthBody {
    #[schema(pattern = "^ok$")]
    pub status: &'static str,
}

/// `GET /readyz`: 200 `ready` when the database answers, else 503 `unavailable`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "ready", "database": true}))]
pub struct ReadyBody {
    #[schema(pattern = "^(ready|unavailable)$")]
    pub status: &'static str,
    pub database: bool,
}

/// Neither route answers an error: readiness reports the database as a body.
pub fn errors(method: &str, path: &str) -> Option<Vec<crate::error::AppError>> {
    match (method, path) {
        ("GET", "/healthz") | ("GET", "/readyz") => Some(vec![]),
        _ => None,
    }
}

pub fn routes(state: AppState) -> Route {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| Ok(json(StatusCode::OK, &HealthBody { status: "ok" })));
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
                &ReadyBody {
                    status: if database { "ready" } else { "unavailable" },
                    database,
                },
            ))
        });
    any_of([healthz.boxed(), readyz.boxed()])
}
