//! `GET /metrics` (outside `/api/v1`): the Prometheus text exposition of
//! [`crate::metrics`], plus the figures read at scrape time.
//!
//! The one database read (outbox depth) has its own short timeout, so a dead
//! database makes the scrape report the depth as unknown instead of hanging it
//! (Prometheus would otherwise lose every other number too).

use std::time::Duration;

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::limits::RouteClass;
use super::{with_state, Route};
use crate::metrics::{Live, CONTENT_TYPE};
use crate::state::AppState;

/// Longest a scrape waits for the outbox depth; well under Prometheus's default
/// 10 s scrape timeout.
const OUTBOX_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

pub fn routes(state: AppState) -> Route {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: AppState| async move { Ok(scrape(&state).await) })
        .boxed()
}

async fn scrape(state: &AppState) -> Response {
    let outbox_depth =
        match tokio::time::timeout(OUTBOX_QUERY_TIMEOUT, state.sms().outbox_depth()).await {
            Ok(Ok(depth)) => Some(depth),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "metrics: outbox depth unavailable");
                None
            }
            Err(_) => {
                tracing::debug!("metrics: outbox depth query timed out");
                None
            }
        };
    let (pool_size, pool_available) = state.store().pool_status();
    let live = Live {
        flow_actors: state.flows().live(),
        outbox_depth,
        sms: state.sms().metrics().snapshot(),
        pool_size,
        pool_available,
        pool_max: state.config().db_pool_size,
        rate_limited: RouteClass::ALL
            .iter()
            .map(|c| (*c, state.limits().refused(*c)))
            .collect(),
    };
    let body = state.metrics().render(&live);
    let mut response = warp::reply::with_status(body, StatusCode::OK).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
