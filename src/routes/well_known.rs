//! `/.well-known/jwks.json` and `/.well-known/openid-configuration`: what any
//! service needs to verify authgate's access tokens with a standard JWT
//! library and nothing secret. Outside the `/api/v1` prefix, where verifiers
//! look for them.

use serde::Serialize;
use warp::http::{header, HeaderValue, StatusCode};
use warp::Filter;

use super::{any_of, json, with_state, Route};
use crate::crypto::Jwk;
use crate::state::AppState;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// `GET /.well-known/jwks.json` (RFC 7517): the public keys that sign access
/// tokens: the active key, the next one (published before it signs, so a
/// cached copy knows it) and retired ones whose tokens may still be live.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JwksBody {
    pub keys: Vec<Jwk>,
}

/// `GET /.well-known/openid-configuration`: the discovery document's fields
/// that concern access tokens (authgate is not an OpenID provider: it issues
/// no ID tokens and has no authorization endpoint).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"issuer": "authgate", "jwks_uri": "https://auth.example.com/.well-known/jwks.json", "token_endpoint": "https://auth.example.com/api/v1/auth/refresh", "id_token_signing_alg_values_supported": ["EdDSA"], "token_endpoint_auth_methods_supported": ["none"], "claims_supported": ["iss", "aud", "sub", "iat", "nbf", "exp", "jti", "amr", "auth_time", "sid"]}))]
pub struct OpenIdConfigurationBody {
    /// `JWT_ISSUER`: the `iss` of every access token.
    pub issuer: String,
    /// Where the signing keys are: `AUTHGATE_PUBLIC_URL` + `/.well-known/jwks.json`.
    pub jwks_uri: String,
    /// Where a refresh token gets new tokens.
    pub token_endpoint: String,
    /// The access tokens' signature algorithm (the name OpenID gives this list).
    pub id_token_signing_alg_values_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// The claims of an access token.
    pub claims_supported: Vec<String>,
}

/// The claims every access token carries (`sid` for session tokens).
pub const CLAIMS: [&str; 10] = [
    "iss",
    "aud",
    "sub",
    "iat",
    "nbf",
    "exp",
    "jti",
    "amr",
    "auth_time",
    "sid",
];

fn cached(mut response: warp::reply::Response, state: &AppState) -> warp::reply::Response {
    let max_age = state.keyring().settings().jwks_max_age().as_secs();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    response
}

/// Neither route answers an error: both are read from memory.
pub fn errors(method: &str, path: &str) -> Option<Vec<crate::error::AppError>> {
    match (method, path) {
        ("GET", "/.well-known/jwks.json") | ("GET", "/.well-known/openid-configuration") => {
            Some(vec![])
        }
        _ => None,
    }
}

pub fn routes(state: AppState) -> Route {
    let jwks = warp::path!(".well-known" / "jwks.json")
        .and(warp::get())
        .and(with_state(state.clone()))
        .map(|state: AppState| {
            let body = JwksBody {
                keys: state.keyring().jwks(),
            };
            Ok(cached(json(StatusCode::OK, &body), &state))
        });
    let discovery = warp::path!(".well-known" / "openid-configuration")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: AppState| {
            let config = state.config();
            let base = state.public_url();
            let body = OpenIdConfigurationBody {
                issuer: config.jwt_issuer.clone(),
                jwks_uri: format!("{base}{JWKS_PATH}"),
                token_endpoint: format!("{base}/api/v1/auth/refresh"),
                id_token_signing_alg_values_supported: vec![config
                    .jwt_algorithm
                    .as_str()
                    .to_owned()],
                token_endpoint_auth_methods_supported: vec!["none".to_owned()],
                claims_supported: CLAIMS.iter().map(|c| (*c).to_owned()).collect(),
            };
            Ok(cached(json(StatusCode::OK, &body), &state))
        });
    any_of([jwks.boxed(), discovery.boxed()])
}
