//! Access tokens (HS256 JWTs) and refresh tokens (256 random bits).
//!
//! Verification pins HS256, so `alg: none` and every other algorithm are refused,
//! and checks issuer, audience and expiry against the app clock (not the system
//! clock), with no leeway.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto::Keys;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
    /// RFC 8176 methods: `["pwd"]` or `["pwd","sms"]`.
    pub amr: Vec<String>,
    pub iss: String,
    pub aud: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed, forged, or for another issuer or audience")]
    Invalid,
    #[error("token has expired")]
    Expired,
}

#[derive(Clone)]
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    access_ttl: chrono::Duration,
}

impl TokenIssuer {
    pub fn new(keys: &Keys, issuer: &str, audience: &str, access_ttl: std::time::Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        // Expiry is checked against the app clock below.
        validation.validate_exp = false;
        validation.leeway = 0;
        TokenIssuer {
            encoding: EncodingKey::from_secret(keys.jwt_secret()),
            decoding: DecodingKey::from_secret(keys.jwt_secret()),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            access_ttl: crate::clock::span(access_ttl),
        }
    }

    pub fn access_ttl_secs(&self) -> i64 {
        self.access_ttl.num_seconds()
    }

    /// Signs an access token for `user`.
    pub fn issue(
        &self,
        user: Uuid,
        amr: &[&str],
        now: DateTime<Utc>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: user,
            iat: now.timestamp(),
            exp: (now + self.access_ttl).timestamp(),
            jti: Uuid::new_v4(),
            amr: amr.iter().map(|s| (*s).to_owned()).collect(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Verifies signature, algorithm, issuer, audience and expiry.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        // A JWT over a few KiB is not ours; do not spend time parsing it.
        if token.len() > 4096 {
            return Err(TokenError::Invalid);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        if data.header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid);
        }
        if now.timestamp() >= data.claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(data.claims)
    }
}

/// A new refresh token: 256 random bits, URL-safe base64. Only its hash is stored.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a refresh token. The token has 256 bits of entropy, so an
/// unkeyed hash is enough: nothing can be guessed from it.
pub fn refresh_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Whether a string could be one of our refresh tokens (43 URL-safe characters).
pub fn looks_like_refresh_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn issuer(secret: &str, iss: &str, aud: &str) -> TokenIssuer {
        let keys = Keys::derive(&SecretString::from(secret.to_owned()));
        TokenIssuer::new(&keys, iss, aud, std::time::Duration::from_secs(900))
    }

    const SECRET: &str = "unit-test-secret-unit-test-secret-0001";

    #[test]
    fn round_trip_and_expiry() {
        let t = issuer(SECRET, "authgate", "api");
        let now = Utc::now();
        let user = Uuid::new_v4();
        let jwt = t.issue(user, &["pwd", "sms"], now).unwrap();
        let claims = t.verify(&jwt, now).unwrap();
        assert_eq!(claims.sub, user);
        assert_eq!(claims.amr, ["pwd", "sms"]);
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(
            t.verify(&jwt, now + chrono::Duration::seconds(900)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let t = issuer(SECRET, "authgate", "api");
        let now = Utc::now();
        let jwt = t.issue(Uuid::new_v4(), &["pwd"], now).unwrap();
        // Another key, issuer or audience.
        for other in [
            issuer("another-secret-another-secret-another-1", "authgate", "api"),
            issuer(SECRET, "someone-else", "api"),
            issuer(SECRET, "authgate", "other-api"),
        ] {
            assert_eq!(other.verify(&jwt, now), Err(TokenError::Invalid));
        }
        // Tampered payload.
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["amr"] = serde_json::json!(["pwd", "sms"]);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(t.verify(&forged, now), Err(TokenError::Invalid));
        // alg: none, with and without a signature.
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            t.verify(&format!("{none}.{}.", parts[1]), now),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            t.verify(&format!("{none}.{}.{}", parts[1], parts[2]), now),
            Err(TokenError::Invalid)
        );
        // HS512 with the same key.
        let keys = Keys::derive(&SecretString::from(SECRET.to_owned()));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &t.verify(&jwt, now).unwrap(),
            &EncodingKey::from_secret(keys.jwt_secret()),
        )
        .unwrap();
        assert_eq!(t.verify(&hs512, now), Err(TokenError::Invalid));
        for junk in ["", "a.b.c", "not a token", &"x".repeat(5000)] {
            assert_eq!(t.verify(junk, now), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn refresh_tokens_are_random_and_recognisable() {
        let a = new_refresh_token();
        let b = new_refresh_token();
        assert_ne!(a, b);
        assert!(looks_like_refresh_token(&a));
        assert!(!looks_like_refresh_token("short"));
        assert_eq!(refresh_token_hash(&a).len(), 32);
    }
}
