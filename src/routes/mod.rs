//! HTTP edge: warp filters under `/api/v1`, one thin handler per endpoint (parse,
//! call, map errors), and the one place where every failure, warp's own included,
//! becomes the JSON error envelope, checked there against its route's error
//! table (`errors`: declared next to each handler, rendered by `docs`).
//!
//! Each request gets a request id (the client's `X-Request-Id` when it is sane,
//! else a fresh one), echoed in the response and carried by its log line.

pub mod account;
pub mod admin;
pub mod auth;
pub mod body;
pub mod docs;
pub mod errors;
pub mod health;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod recovery;
pub mod sessions;
pub mod webhooks;
pub mod well_known;

use std::convert::Infallible;
use std::time::Instant;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::audit::ClientInfo;
use crate::domain::FieldError;
use crate::error::AppError;
use crate::state::AppState;

/// Every route the application serves, as (method, full path): the one list the
/// OpenAPI document is built from. `tests/api/openapi.rs` checks it both ways,
/// against the document and against the running filters, so a route added to
/// `app()` but not here (or the reverse) fails the build's tests.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/account/signup"),
    ("POST", "/api/v1/account/login"),
    ("POST", "/api/v1/account/login/verify"),
    ("POST", "/api/v1/account/login/resend"),
    ("GET", "/api/v1/account/me"),
    ("GET", "/api/v1/account/audit"),
    ("GET", "/api/v1/account/sessions"),
    ("DELETE", "/api/v1/account/sessions/{id}"),
    ("POST", "/api/v1/account/sessions/revoke-others"),
    ("POST", "/api/v1/account/phone/verify/send"),
    ("POST", "/api/v1/account/phone/verify/confirm"),
    ("POST", "/api/v1/account/2fa/enable"),
    ("POST", "/api/v1/account/2fa/enable/confirm"),
    ("POST", "/api/v1/account/2fa/disable"),
    ("POST", "/api/v1/account/2fa/disable/confirm"),
    ("POST", "/api/v1/account/2fa/recovery-codes"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/webhooks/twilio/status"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/.well-known/openid-configuration"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/account/phone/change"),
    ("POST", "/api/v1/account/phone/change/confirm"),
    ("POST", "/api/v1/account/password/reset"),
    ("POST", "/api/v1/account/password/reset/confirm"),
    ("GET", "/api/v1/admin/users"),
    ("GET", "/api/v1/admin/users/{id}"),
    ("DELETE", "/api/v1/admin/users/{id}"),
    ("POST", "/api/v1/admin/users/{id}/ban"),
    ("POST", "/api/v1/admin/users/{id}/unban"),
    ("POST", "/api/v1/admin/users/{id}/2fa/reset"),
];

/// Request bodies above this are refused with 413 before they are read in full.
pub const MAX_BODY_BYTES: u64 = 8 * 1024;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What a handler produces: a response, or an error the boundary renders.
pub type Outcome = Result<Response, AppError>;

/// Per-request facts captured before routing, used for the envelope and the log.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub id: String,
    pub method: Method,
    pub path: String,
    pub started: Instant,
}

fn request_ctx() -> impl Filter<Extract = (RequestCtx,), Error = Infallible> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .map(
            |method: Method, path: warp::path::FullPath, headers: warp::http::HeaderMap| {
                RequestCtx {
                    id: headers
                        .get(REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .filter(|id| is_sane_request_id(id))
                        .map(str::to_owned)
                        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
                    method,
                    path: path.as_str().to_owned(),
                    started: Instant::now(),
                }
            },
        )
}

/// A client-supplied id is echoed only if it cannot inject into logs or headers.
fn is_sane_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The caller's address (see `limits::client_ip`) and user agent, for audit.
pub fn client_info(state: AppState) -> BoxedFilter<(ClientInfo,)> {
    warp::addr::remote()
        .and(warp::header::headers_cloned())
        .and(with_state(state))
        .map(
            |peer: Option<std::net::SocketAddr>,
             headers: warp::http::HeaderMap,
             state: AppState| {
                let rl = &state.config().rate_limits;
                let trusted = rl.trusted_proxy_header.as_ref();
                ClientInfo {
                    ip: Some(limits::client_ip(
                        peer,
                        &headers,
                        trusted,
                        rl.trusted_proxies,
                    )),
                    user_agent: headers
                        .get(header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .map(|s| s.chars().take(256).collect()),
                }
            },
        )
        .boxed()
}

/// One endpoint (or a group of them), boxed. Routes are combined with
/// [`any_of`], never by chaining `.or()` over unboxed filters: such a chain
/// nests one type per route, and normalising those types was most of the
/// crate's compile time (issue 20). Boxing costs an allocation per route
/// tried, nothing next to the request's database round trip.
pub type Route = BoxedFilter<(Outcome,)>;

/// The first of `routes` that matches, tried in order (as chained `.or()`s
/// are), its rejection merged with the others' like `.or()` merges them.
pub fn any_of<const N: usize>(routes: [Route; N]) -> Route {
    routes
        .into_iter()
        .reduce(|tried, next| tried.or(next).unify().boxed())
        .unwrap_or_else(|| {
            warp::any()
                .and_then(|| async { Err::<Outcome, Rejection>(warp::reject::not_found()) })
                .boxed()
        })
}

/// Shares the application state with handlers.
pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The whole HTTP application: every route, the envelope, the request id, logging.
pub fn app(state: AppState) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let registry = state.metrics().clone();
    let tally = errors::tally(&state);
    let api = warp::path!("api" / "v1" / ..).and(any_of([
        account::routes(state.clone()),
        auth::routes(state.clone()),
        sessions::routes(state.clone()),
        webhooks::routes(state.clone()),
        recovery::routes(state.clone()),
        docs::routes(state.config().otp_length),
        lifecycle::routes(state.clone()),
        admin::routes(state.clone()),
    ]));
    let routes = any_of([
        api.boxed(),
        health::routes(state.clone()),
        well_known::routes(state.clone()),
        metrics::routes(state),
    ])
    // After a route matched, handlers never reject; what reaches here is
    // warp's own refusal (no route, wrong method, body problems).
    .or_else(|rejection: Rejection| async move {
        Ok::<(Outcome,), Infallible>((Err(from_rejection(rejection)),))
    });
    request_ctx()
        .and(routes)
        .map(move |ctx, outcome| finish(&registry, &tally, ctx, outcome))
}

/// Turns any result into the final response: renders errors as the envelope
/// (flagging one its route's error table lacks, see [`errors`]), adds the
/// request id, writes the one log line per request and counts it in the
/// metrics (by route pattern, never by raw path).
fn finish(
    registry: &crate::metrics::Metrics,
    tally: &errors::Tally,
    ctx: RequestCtx,
    outcome: Outcome,
) -> Response {
    let mut response = match outcome {
        Ok(r) => r,
        Err(e) => {
            tally.check(ctx.method.as_str(), &ctx.path, &ctx.id, &e);
            if e.is_server_side() {
                tracing::error!(request_id = %ctx.id, error = %error_chain(&e), "request failed");
            }
            error_response(&e, &ctx.path)
        }
    };
    // RFC 9110 15.5.6: a 405 lists the methods the target does accept.
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = allowed_methods(&ctx.path);
        if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
            if !allowed.is_empty() {
                response.headers_mut().insert(header::ALLOW, v);
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let latency = ctx.started.elapsed();
    let status = response.status().as_u16();
    registry.observe_request(&ctx.path, status, latency);
    tracing::info!(
        request_id = %ctx.id,
        method = %ctx.method,
        path = %ctx.path,
        status,
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// The methods `ROUTES` declares for `path`: those of the routes written out
/// exactly when any matches (`/sessions/revoke-others`), else those whose
/// `{id}` segments match (`/sessions/{id}`).
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let matching = |exact: bool| -> Vec<&'static str> {
        let mut methods: Vec<&'static str> = ROUTES
            .iter()
            .filter(|(_, p)| p.contains('{') != exact && crate::metrics::matches_pattern(p, path))
            .map(|(m, _)| *m)
            .collect();
        methods.sort_unstable();
        methods.dedup();
        methods
    };
    let exact = matching(true);
    if exact.is_empty() {
        matching(false)
    } else {
        exact
    }
}

/// An error and its causes on one line ("db error" alone says nothing).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The JSON error envelope of the REST contract.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody<'a> {
    pub status_code: u16,
    /// The status's reason phrase (`Bad Request`, `Unauthorized`, …).
    pub error: &'a str,
    /// Stable and machine-readable: branch on this, never on `message`.
    pub code: &'a str,
    pub message: String,
    pub path: &'a str,
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// With `validation_failed`: every problem, one per field.
    // Absent rather than null when empty, so the schema does not allow null.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub details: Option<&'a [FieldError]>,
    /// With `invalid_code`: tries left for the current code.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub attempts_left: Option<u32>,
}

impl<'a> ErrorBody<'a> {
    /// The envelope for `e` at `path`; the OpenAPI examples are rendered by this
    /// same function, so they cannot differ from what clients get.
    pub fn new(e: &'a AppError, path: &'a str, timestamp: String) -> ErrorBody<'a> {
        let status = e.status();
        ErrorBody {
            status_code: status.as_u16(),
            error: status.canonical_reason().unwrap_or("Error"),
            code: e.code(),
            message: e.public_message(),
            path,
            timestamp,
            details: match e {
                AppError::Validation(list) => Some(list),
                _ => None,
            },
            attempts_left: match e {
                AppError::InvalidCode { attempts_left } => Some(*attempts_left),
                _ => None,
            },
        }
    }
}

pub fn error_response(e: &AppError, path: &str) -> Response {
    let status = e.status();
    let body = ErrorBody::new(
        e,
        path,
        Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    if let AppError::TooManyRequests { retry_after }
    | AppError::Overloaded { retry_after }
    | AppError::CodeEntryLocked { retry_after } = e
    {
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    if matches!(e, AppError::InvalidToken) {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    response
}

/// Maps warp's rejections (and ours, from body parsing) to `AppError`.
fn from_rejection(r: Rejection) -> AppError {
    use warp::reject;
    if let Some(e) = r.find::<AppError>() {
        // Our body filter's errors carry no source; rebuild the same variant.
        return clone_client_error(e);
    }
    if r.find::<reject::PayloadTooLarge>().is_some() {
        return AppError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        };
    }
    if r.find::<reject::LengthRequired>().is_some() {
        return AppError::LengthRequired;
    }
    if r.find::<reject::UnsupportedMediaType>().is_some() {
        return AppError::UnsupportedMediaType;
    }
    if let Some(e) = r.find::<reject::InvalidHeader>() {
        return AppError::BadRequest(e.to_string());
    }
    if let Some(e) = r.find::<reject::MissingHeader>() {
        return AppError::BadRequest(e.to_string());
    }
    if r.find::<reject::MethodNotAllowed>().is_some() {
        return AppError::MethodNotAllowed;
    }
    if r.is_not_found() {
        return AppError::NotFound;
    }
    AppError::BadRequest("the request could not be processed".to_owned())
}

fn clone_client_error(e: &AppError) -> AppError {
    match e {
        AppError::MalformedJson(m) => AppError::MalformedJson(m.clone()),
        AppError::BadRequest(m) => AppError::BadRequest(m.clone()),
        AppError::Validation(v) => AppError::Validation(v.clone()),
        AppError::PayloadTooLarge { limit } => AppError::PayloadTooLarge { limit: *limit },
        AppError::UnsupportedMediaType => AppError::UnsupportedMediaType,
        AppError::LengthRequired => AppError::LengthRequired,
        AppError::InvalidToken => AppError::InvalidToken,
        // The admin guard: no admin token, or the admin API is off.
        AppError::AdminTokenRequired => AppError::AdminTokenRequired,
        AppError::NotFound => AppError::NotFound,
        // The local rate limit filter refuses before the handler runs.
        AppError::TooManyRequests { retry_after } => AppError::TooManyRequests {
            retry_after: *retry_after,
        },
        // The bearer guard looks revocations up in PostgreSQL before the
        // handler runs: an outage there is a 503 like anywhere else.
        AppError::Unavailable(cause) => AppError::Unavailable(cause.to_string().into()),
        other => AppError::internal(format!("unexpected rejection: {other}")),
    }
}

/// A JSON reply with a status.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// An empty `204 No Content` reply.
pub fn no_content() -> Response {
    let mut r = Response::default();
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}
