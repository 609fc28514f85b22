//! What each route may answer as an error: the sets route tables are built
//! from, the lookup from a route to its table, and the check at the boundary.
//!
//! Each route's table is declared next to its handler, in its route module's
//! `errors(method, path)`, as example `AppError`s (the examples the OpenAPI
//! document shows). The same table serves twice:
//!
//! - `docs` renders the route's error responses from it (statuses, `code`s,
//!   example bodies), so nothing lists errors by hand;
//! - `finish` (in `super`) checks every error answer against it: an answer
//!   whose `code` the route's table lacks is logged at `error`, counted in
//!   [`undocumented_total`] and recorded for its app ([`undocumented`]), which
//!   the test harness asserts empty whenever a test app is dropped. A handler
//!   that starts returning a new error thus fails the tests that reach it until
//!   its table (and so the document) says so. Clients get the same answer
//!   either way.
//!
//! What this module must not do: change an answer, or hold more than the
//! tallies of undocumented answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use super::ROUTES;
use crate::domain::FieldError;
use crate::error::{AppError, GoneReason, SmsRefusal};
use crate::metrics::Metrics;
use crate::state::AppState;

/// A 400 listing each of `fields` as missing, as the parsers report it.
pub fn missing(fields: &[&'static str]) -> AppError {
    AppError::Validation(
        fields
            .iter()
            .map(|f| FieldError::new(f, "required", format!("{f} is required")))
            .collect(),
    )
}

/// What the JSON body filter (`body::json_object`) refuses before the handler
/// runs, with `validation` as the example of the handler's own 400.
pub fn json_body(validation: AppError) -> Vec<AppError> {
    let mut errors = body_read(validation);
    errors.push(AppError::UnsupportedMediaType);
    errors
}

/// What reading a capped body refuses (`body::bytes_capped`), whatever its
/// type, with `validation` as the example of the handler's own 400.
pub fn body_read(validation: AppError) -> Vec<AppError> {
    vec![
        validation,
        AppError::MalformedJson("syntax error at line 1, column 12".to_owned()),
        AppError::BadRequest("Invalid request header \"content-length\"".to_owned()),
        AppError::PayloadTooLarge {
            limit: super::MAX_BODY_BYTES,
        },
    ]
}

/// What any route touching the database or the actors may answer.
pub fn server() -> Vec<AppError> {
    vec![
        AppError::Unavailable("database unreachable".into()),
        AppError::Internal("bug".into()),
    ]
}

/// The password hashing queue is full (routes that hash a password).
pub fn overloaded() -> AppError {
    AppError::Overloaded {
        retry_after: Duration::from_secs(1),
    }
}

/// A rate limit: the local per-address one, or a code's cooldown or quota.
pub fn too_many() -> AppError {
    AppError::TooManyRequests {
        retry_after: Duration::from_secs(30),
    }
}

/// Too many wrong codes for the account: no code is checked or sent for a while.
pub fn code_locked() -> AppError {
    AppError::CodeEntryLocked {
        retry_after: Duration::from_secs(3600),
    }
}

/// Why no SMS may go to a number.
pub fn sms_refusals() -> Vec<AppError> {
    vec![
        AppError::SmsRefused(SmsRefusal::CountryNotAllowed),
        AppError::SmsRefused(SmsRefusal::NotMobile),
    ]
}

/// A code that can no longer be used.
pub fn code_gone() -> Vec<AppError> {
    vec![
        AppError::Gone(GoneReason::CodeExpired),
        AppError::Gone(GoneReason::CodeUsed),
        AppError::Gone(GoneReason::CodeAttemptsExhausted),
        AppError::Gone(GoneReason::CodeSuperseded),
    ]
}

/// The sets and errors of `parts`, in order: a route's table. (`AppError` is
/// not `Clone`, so slices' `concat` does not apply.)
pub fn concat<const N: usize>(parts: [Vec<AppError>; N]) -> Vec<AppError> {
    parts.into_iter().flatten().collect()
}

/// The table of the route `method` `path` (a pattern of `ROUTES`), or `None`
/// for a route no module declares one for.
pub fn of_route(method: &str, path: &str) -> Option<Vec<AppError>> {
    super::account::errors(method, path)
        .or_else(|| super::auth::errors(method, path))
        .or_else(|| super::sessions::errors(method, path))
        .or_else(|| super::recovery::errors(method, path))
        .or_else(|| super::lifecycle::errors(method, path))
        .or_else(|| super::admin::errors(method, path))
        .or_else(|| super::webhooks::errors(method, path))
        .or_else(|| super::docs::errors(method, path))
        .or_else(|| super::health::errors(method, path))
        .or_else(|| super::well_known::errors(method, path))
        .or_else(|| match (method, path) {
            // The scrape reports what it cannot read instead of failing.
            ("GET", "/metrics") => Some(vec![]),
            _ => None,
        })
}

/// Each route's codes, by (method, pattern), built once from the tables.
fn codes() -> &'static HashMap<(&'static str, &'static str), Vec<&'static str>> {
    static CODES: OnceLock<HashMap<(&'static str, &'static str), Vec<&'static str>>> =
        OnceLock::new();
    CODES.get_or_init(|| {
        ROUTES
            .iter()
            .map(|(m, p)| {
                let codes = of_route(m, p)
                    .unwrap_or_default()
                    .iter()
                    .map(AppError::code)
                    .collect();
                ((*m, *p), codes)
            })
            .collect()
    })
}

/// The pattern of `ROUTES` a request for `method` `path` was routed to, if
/// any: a route written out exactly first (`/sessions/revoke-others`), else
/// one whose `{id}` segments are UUIDs, as the filters' `Uuid` parameters
/// require (another segment matches no route: the router's own 404).
fn route_of(method: &str, path: &str) -> Option<&'static str> {
    let matches = |pattern: &str, exact: bool| {
        let (mut a, mut b) = (pattern.split('/'), path.split('/'));
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(p), Some(s)) if p == s => {}
                (Some("{id}"), Some(s)) if !exact && uuid::Uuid::parse_str(s).is_ok() => {}
                _ => return false,
            }
        }
    };
    let of_method = || ROUTES.iter().filter(|(m, _)| *m == method);
    of_method()
        .find(|(_, p)| matches(p, true))
        .or_else(|| of_method().find(|(_, p)| matches(p, false)))
        .map(|(_, p)| *p)
}

/// An error answer whose code its route's table lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undocumented {
    pub method: String,
    /// The route's pattern in `ROUTES`.
    pub route: &'static str,
    pub code: &'static str,
    pub request_id: String,
}

/// One app's undocumented answers (every one, in order).
#[derive(Debug, Default)]
pub struct Tally {
    found: Mutex<Vec<Undocumented>>,
}

impl Tally {
    /// Checks `e`, the error answer to `method` `path`, against its route's
    /// table; logs, counts and records it if the table lacks its code. A
    /// request that matched no route (404, 405) has no table to check.
    pub fn check(&self, method: &str, path: &str, request_id: &str, e: &AppError) {
        let Some(route) = route_of(method, path) else {
            return;
        };
        let code = e.code();
        let documented = codes()
            .get(&(method, route))
            .is_some_and(|codes| codes.contains(&code));
        if documented {
            return;
        }
        TOTAL.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            request_id,
            method,
            route,
            code,
            "error answer missing from the route's error table (and the OpenAPI document): \
             declare it next to the handler"
        );
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Undocumented {
                method: method.to_owned(),
                route,
                code,
                request_id: request_id.to_owned(),
            });
    }

    fn list(&self) -> Vec<Undocumented> {
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Undocumented answers since the process started, every app together.
static TOTAL: AtomicU64 = AtomicU64::new(0);

/// Every app's tally, found by the app's metrics registry: one per app (one
/// per `AppState`), alive as long as the app. Held weakly, so an ended app's
/// entry is dropped and its registry's address cannot be mistaken for a new
/// app's.
static TALLIES: Mutex<Vec<(Weak<Metrics>, Arc<Tally>)>> = Mutex::new(Vec::new());

/// The tally of the app `state` belongs to (made on first use).
pub fn tally(state: &AppState) -> Arc<Tally> {
    let metrics = state.metrics();
    let mut all = TALLIES.lock().unwrap_or_else(PoisonError::into_inner);
    all.retain(|(app, _)| app.strong_count() > 0);
    if let Some((_, t)) = all
        .iter()
        .find(|(app, _)| std::ptr::eq(app.as_ptr(), Arc::as_ptr(metrics)))
    {
        return t.clone();
    }
    let t = Arc::new(Tally::default());
    all.push((Arc::downgrade(metrics), t.clone()));
    t
}

/// The undocumented answers the app `state` belongs to gave, in order.
pub fn undocumented(state: &AppState) -> Vec<Undocumented> {
    tally(state).list()
}

/// Undocumented answers since the process started, every app together.
pub fn undocumented_total() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn every_route_has_a_table() {
        for (method, path) in ROUTES {
            assert!(of_route(method, path).is_some(), "{method} {path}");
        }
    }

    #[test]
    fn requests_find_their_route() {
        let id = "7d0f0b5e-2b7e-4d7a-9c1e-5f6a8b9c0d1e";
        assert_eq!(
            route_of("POST", "/api/v1/account/login"),
            Some("/api/v1/account/login")
        );
        assert_eq!(
            route_of("DELETE", &format!("/api/v1/account/sessions/{id}")),
            Some("/api/v1/account/sessions/{id}")
        );
        // Written out exactly beats `{id}`, and `{id}` needs a UUID.
        assert_eq!(
            route_of("POST", "/api/v1/account/sessions/revoke-others"),
            Some("/api/v1/account/sessions/revoke-others")
        );
        assert_eq!(route_of("DELETE", "/api/v1/account/sessions/nope"), None);
        assert_eq!(
            route_of("POST", &format!("/api/v1/admin/users/{id}/2fa/reset")),
            Some("/api/v1/admin/users/{id}/2fa/reset")
        );
        // Another method, or a path near a route, is no route.
        assert_eq!(route_of("GET", "/api/v1/account/login"), None);
        assert_eq!(route_of("POST", "/api/v1/account/login/x"), None);
        assert_eq!(route_of("POST", "/api/v1/account"), None);
    }

    #[test]
    fn only_answers_missing_from_the_table_are_recorded() {
        let tally = Tally::default();
        let before = undocumented_total();
        tally.check("GET", "/api/v1/account/me", "r1", &AppError::InvalidToken);
        tally.check("POST", "/api/v1/account/nope", "r2", &AppError::NotFound);
        tally.check(
            "GET",
            "/api/v1/account/login",
            "r3",
            &AppError::MethodNotAllowed,
        );
        assert!(tally.list().is_empty(), "{:?}", tally.list());
        tally.check("GET", "/api/v1/account/me", "r4", &AppError::PhoneTaken);
        assert_eq!(
            tally.list(),
            vec![Undocumented {
                method: "GET".into(),
                route: "/api/v1/account/me",
                code: "phone_taken",
                request_id: "r4".into(),
            }]
        );
        assert!(undocumented_total() > before);
    }
}
