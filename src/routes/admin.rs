//! `/admin/...`: the admin API (issue 18), behind `Authorization: Bearer
//! <AUTHGATE_ADMIN_TOKEN>`, or with `AUTHGATE_ADMIN_JWT=on` an admin's own
//! access token (a user's is refused like a wrong token). With neither
//! configured every admin route answers 404 `not_found`, as if it did not
//! exist. Rate-limited per client address (the
//! `admin` route class) before the token is checked.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::Filter;

use super::errors::{concat, server, too_many};
use super::limits::{limit, RouteClass};
use super::{any_of, client_info, json, no_content, with_state, Route};
use crate::audit::ClientInfo;
use crate::domain::FieldError;
use crate::error::AppError;
use crate::service::admin::{self, Admin};
use crate::state::AppState;

/// Who is calling, by `headers`: the admin token, or (with
/// `AUTHGATE_ADMIN_JWT=on`) an admin's access token (see
/// `admin::is_admin_session`). `NotFound` when the admin API is off; one 401
/// for every other refusal, so it never tells a user token from a bad one.
async fn check_admin(
    state: &AppState,
    headers: &HeaderMap,
    client: ClientInfo,
) -> Result<Admin, AppError> {
    use secrecy::ExposeSecret;
    let config = state.config();
    if config.admin_token.is_none() && !config.admin_jwt {
        return Err(AppError::NotFound);
    }
    let presented = headers
        .get(warp::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(AppError::AdminTokenRequired)?;
    if let Some(expected) = config.admin_token.as_ref() {
        // Compared as digests, in constant time: neither the token's bytes nor
        // its length show in the timing.
        let a = Sha256::digest(presented.as_bytes());
        let b = Sha256::digest(expected.expose_secret().as_bytes());
        if bool::from(a.ct_eq(&b)) {
            return Ok(Admin { client, user: None });
        }
    }
    if config.admin_jwt {
        match super::auth::verify_access_token(state, presented).await {
            Ok(user) => {
                if admin::is_admin_session(state, user.id, user.claims.sid).await? {
                    return Ok(Admin {
                        client,
                        user: Some(user.id),
                    });
                }
            }
            Err(AppError::InvalidToken) => {}
            Err(other) => return Err(other),
        }
    }
    Err(AppError::AdminTokenRequired)
}

/// The admin guard: the route class's rate limit, then the caller. Put it
/// after path and method matching, so unknown routes stay 404.
fn guard(state: AppState) -> BoxedFilter<(Admin,)> {
    limit(state.limits(), RouteClass::Admin)
        .and(warp::header::headers_cloned())
        .and(client_info(state.clone()))
        .and(with_state(state))
        .and_then(
            |headers: HeaderMap, client: ClientInfo, state: AppState| async move {
                check_admin(&state, &headers, client)
                    .await
                    .map_err(warp::reject::custom)
            },
        )
        .boxed()
}

pub fn routes(state: AppState) -> Route {
    let list = warp::path!("admin" / "users")
        .and(warp::get())
        .and(guard(state.clone()))
        .and(warp::query::<Vec<(String, String)>>())
        .and(with_state(state.clone()))
        .then(
            |admin: Admin, query: Vec<(String, String)>, state: AppState| async move {
                let params = admin::parse_list_params(&query)?;
                let page = admin::list_users(&state, &admin, params).await?;
                Ok(json(StatusCode::OK, &page))
            },
        );
    // A segment that is not a UUID matches no route (404 `not_found`).
    let show = warp::path!("admin" / "users" / Uuid)
        .and(warp::get())
        .and(guard(state.clone()))
        .and(with_state(state.clone()))
        .then(|id: Uuid, admin: Admin, state: AppState| async move {
            let body = admin::show_user(&state, &admin, id).await?;
            Ok(json(StatusCode::OK, &body))
        });
    let delete = warp::path!("admin" / "users" / Uuid)
        .and(warp::delete())
        .and(guard(state.clone()))
        .and(with_state(state.clone()))
        .then(|id: Uuid, admin: Admin, state: AppState| async move {
            admin::delete_user(&state, &admin, id).await?;
            Ok(no_content())
        });
    let ban = warp::path!("admin" / "users" / Uuid / "ban")
        .and(warp::post())
        .and(guard(state.clone()))
        .and(with_state(state.clone()))
        .then(|id: Uuid, admin: Admin, state: AppState| async move {
            let body = admin::set_banned(&state, &admin, id, true).await?;
            Ok(json(StatusCode::OK, &body))
        });
    let unban = warp::path!("admin" / "users" / Uuid / "unban")
        .and(warp::post())
        .and(guard(state.clone()))
        .and(with_state(state.clone()))
        .then(|id: Uuid, admin: Admin, state: AppState| async move {
            let body = admin::set_banned(&state, &admin, id, false).await?;
            Ok(json(StatusCode::OK, &body))
        });
    let reset = warp::path!("admin" / "users" / Uuid / "2fa" / "reset")
        .and(warp::post())
        .and(guard(state.clone()))
        .and(with_state(state))
        .then(|id: Uuid, admin: Admin, state: AppState| async move {
            let body = admin::reset_two_fa(&state, &admin, id).await?;
            Ok(json(StatusCode::OK, &body))
        });
    any_of([
        list.boxed(),
        show.boxed(),
        delete.boxed(),
        ban.boxed(),
        unban.boxed(),
        reset.boxed(),
    ])
}

/// The errors each route of this module may answer (see `super::errors`).
/// 404 `not_found` is also every admin route's answer while the admin API is
/// off.
pub fn errors(method: &str, path: &str) -> Option<Vec<AppError>> {
    use AppError as E;
    let guard = || vec![E::AdminTokenRequired, E::NotFound, too_many()];
    let errors = match (method, path) {
        ("GET", "/api/v1/admin/users") => concat([
            vec![E::Validation(vec![FieldError::new(
                "limit",
                "out_of_range",
                "limit must be a whole number from 1 to 100",
            )])],
            guard(),
            server(),
        ]),
        ("GET", "/api/v1/admin/users/{id}")
        | ("DELETE", "/api/v1/admin/users/{id}")
        | ("POST", "/api/v1/admin/users/{id}/ban")
        | ("POST", "/api/v1/admin/users/{id}/unban")
        | ("POST", "/api/v1/admin/users/{id}/2fa/reset") => {
            concat([vec![E::UserNotFound], guard(), server()])
        }
        _ => return None,
    };
    Some(errors)
}
