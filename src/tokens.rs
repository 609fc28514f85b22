//! Access tokens (HS256 JWTs) and refresh tokens (256 random bits).
//!
//! Verification pins HS256, so `alg: none` and every other algorithm are refused,
//! and checks issuer, audience and expiry against the app clock (not the system
//! clock), with no leeway. Whether a valid token has since been revoked is the
//! bearer guard's question (`crate::revocation`), answered from `sid` and `iat_us`.

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
    /// The session (refresh-token family) this token belongs to; logging that
    /// session out refuses the token at once. Absent in tokens issued before
    /// sessions existed (and in the load tool's), which only a user-wide
    /// revocation reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// The issue time in microseconds: `iat` has whole seconds, too coarse to
    /// tell a token issued just before a revocation from one issued just after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat_us: Option<i64>,
}

impl Claims {
    /// When the token was issued, as precisely as it says.
    pub fn issued_at(&self) -> Option<DateTime<Utc>> {
        match self.iat_us {
            Some(us) => DateTime::from_timestamp_micros(us),
            None => DateTime::from_timestamp(self.iat, 0),
        }
    }
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

    /// Signs an access token for `user` outside any session (tools and tests).
    pub fn issue(
        &self,
        user: Uuid,
        amr: &[&str],
        now: DateTime<Utc>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(user, amr, None, now)
    }

    /// Signs an access token for `user` in `session`.
    pub fn issue_for_session(
        &self,
        user: Uuid,
        amr: &[&str],
        session: Uuid,
        now: DateTime<Utc>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(user, amr, Some(session), now)
    }

    fn sign(
        &self,
        user: Uuid,
        amr: &[&str],
        sid: Option<Uuid>,
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
            sid,
            iat_us: Some(now.timestamp_micros()),
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

/// The successor `/auth/refresh` hands out for `token`: derived, not random, so
/// a retry within the grace window gets the very same token back.
pub fn successor_refresh_token(keys: &Keys, token: &str) -> String {
    URL_SAFE_NO_PAD.encode(keys.refresh_successor(token))
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
    fn session_tokens_carry_sid_and_a_precise_issue_time() {
        let t = issuer(SECRET, "authgate", "api");
        let now = Utc::now();
        let sid = Uuid::new_v4();
        let jwt = t
            .issue_for_session(Uuid::new_v4(), &["pwd"], sid, now)
            .unwrap();
        let c = t.verify(&jwt, now).unwrap();
        assert_eq!(c.sid, Some(sid));
        assert_eq!(
            c.issued_at().unwrap().timestamp_micros(),
            now.timestamp_micros()
        );
        // Without the precise claim, the whole second is all we know.
        let legacy = Claims {
            iat_us: None,
            sid: None,
            ..c
        };
        assert_eq!(legacy.issued_at().unwrap().timestamp(), now.timestamp());
    }

    #[test]
    fn successors_are_deterministic_recognisable_and_keyed() {
        let keys = Keys::derive(&SecretString::from(SECRET.to_owned()));
        let other = Keys::derive(&SecretString::from("x".repeat(40)));
        let a = new_refresh_token();
        let next = successor_refresh_token(&keys, &a);
        assert_eq!(next, successor_refresh_token(&keys, &a));
        assert!(looks_like_refresh_token(&next));
        assert_ne!(next, a);
        assert_ne!(next, successor_refresh_token(&other, &a));
        assert_ne!(next, successor_refresh_token(&keys, &new_refresh_token()));
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
