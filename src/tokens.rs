//! Access tokens (signed JWTs) and refresh tokens (256 random bits).
//!
//! Access tokens are signed by the key ring's active signing key (EdDSA by
//! default, ES256 or, when configured, HS256) and name it in `kid`; any
//! service can check them with the public keys of `/.well-known/jwks.json`.
//! Verification finds the key by `kid` and pins that key's algorithm, so
//! `alg: none`, an HMAC over a public key and every other substitution are
//! refused; it checks issuer, audience, `nbf` and expiry against the app clock
//! (not the system clock), with no leeway. Whether a valid token has since
//! been revoked is the bearer guard's question (`crate::revocation`), answered
//! from `sid` and `iat_us`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto::Keys;

/// `aud`: one audience as a string, several as an array (RFC 7519 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn of(audiences: &[String]) -> Audience {
        match audiences {
            [one] => Audience::One(one.clone()),
            many => Audience::Many(many.to_vec()),
        }
    }

    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub iat: i64,
    /// Not before: the issue time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
    pub jti: Uuid,
    /// RFC 8176 methods: `["pwd"]`, `["pwd","sms"]` or `["pwd","otp"]`.
    pub amr: Vec<String>,
    pub iss: String,
    pub aud: Audience,
    /// When the user authenticated (the login that started the session), in
    /// seconds: refreshing does not move it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The session (refresh-token family) this token belongs to; logging that
    /// session out refuses the token at once. Absent only in tokens made
    /// outside any session (tools), which only a user-wide revocation reaches.
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
    /// Well-formed, but signed by a key this process does not know (yet, after
    /// a rotation it has not seen; or no longer; or never).
    #[error("token names an unknown signing key")]
    UnknownKey,
    #[error("token has expired")]
    Expired,
}

#[derive(Clone)]
pub struct TokenIssuer {
    keys: Keys,
    issuer: String,
    audiences: Vec<String>,
    access_ttl: chrono::Duration,
    /// One per algorithm a key may have, built once: verification is on
    /// every authenticated request.
    validations: Vec<(Algorithm, Validation)>,
}

impl TokenIssuer {
    /// Signs with whatever key `keys` holds as active when a token is made.
    pub fn new(
        keys: &Keys,
        issuer: &str,
        audiences: &[String],
        access_ttl: std::time::Duration,
    ) -> Self {
        let validations = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::HS256]
            .into_iter()
            .map(|alg| {
                let mut v = Validation::new(alg);
                v.set_issuer(&[issuer]);
                v.set_audience(audiences);
                v.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
                // Expiry and not-before are checked against the app clock.
                v.validate_exp = false;
                v.validate_nbf = false;
                v.leeway = 0;
                (alg, v)
            })
            .collect();
        TokenIssuer {
            keys: keys.clone(),
            issuer: issuer.to_owned(),
            audiences: audiences.to_vec(),
            access_ttl: crate::clock::span(access_ttl),
            validations,
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
        self.sign(user, amr, None, now, now)
    }

    /// Signs an access token for `user` in `session`, which began (the
    /// login) at `auth_time`.
    pub fn issue_for_session(
        &self,
        user: Uuid,
        amr: &[&str],
        session: Uuid,
        auth_time: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(user, amr, Some(session), auth_time, now)
    }

    fn sign(
        &self,
        user: Uuid,
        amr: &[&str],
        sid: Option<Uuid>,
        auth_time: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: user,
            iat: now.timestamp(),
            nbf: Some(now.timestamp()),
            exp: (now + self.access_ttl).timestamp(),
            jti: Uuid::new_v4(),
            amr: amr.iter().map(|s| (*s).to_owned()).collect(),
            iss: self.issuer.clone(),
            aud: Audience::of(&self.audiences),
            auth_time: Some(auth_time.timestamp()),
            sid,
            iat_us: Some(now.timestamp_micros()),
        };
        let set = self.keys.snapshot();
        let key = &set.signing.active;
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding)
    }

    /// Verifies signature (by the key `kid` names, in that key's algorithm),
    /// issuer, audience, not-before and expiry.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        // A JWT over a few KiB is not ours; do not spend time parsing it.
        if token.len() > 4096 {
            return Err(TokenError::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let set = self.keys.snapshot();
        let key = match &header.kid {
            Some(kid) => match set.signing.by_kid.get(kid) {
                Some(k) => k,
                None if kid.len() <= 64 => return Err(TokenError::UnknownKey),
                None => return Err(TokenError::Invalid),
            },
            None if set.signing.accept_no_kid => &set.signing.active,
            None => return Err(TokenError::Invalid),
        };
        // The key's own algorithm, never the header's choice.
        if header.alg != key.alg {
            return Err(TokenError::Invalid);
        }
        let Some((_, validation)) = self.validations.iter().find(|(alg, _)| *alg == key.alg) else {
            return Err(TokenError::Invalid);
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
            .map_err(|_| TokenError::Invalid)?;
        // A minute's leeway for clocks of several hosts; `nbf` is the issue time.
        if data
            .claims
            .nbf
            .is_some_and(|nbf| now.timestamp() + 60 < nbf)
        {
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

/// The successors `token` may have been given, one per accepted refresh key,
/// the active key's first (the one a new rotation hands out).
pub fn successor_refresh_tokens(keys: &Keys, token: &str) -> Vec<String> {
    keys.refresh_successors(token)
        .iter()
        .map(|s| URL_SAFE_NO_PAD.encode(s))
        .collect()
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
    use crate::crypto::{KeySet, Signing};
    use jsonwebtoken::{Algorithm, EncodingKey};
    use secrecy::SecretString;

    fn keys(secret: &str) -> Keys {
        Keys::derive(&SecretString::from(secret.to_owned()))
    }

    fn issuer(secret: &str, iss: &str, aud: &str) -> TokenIssuer {
        TokenIssuer::new(
            &keys(secret),
            iss,
            &[aud.to_owned()],
            std::time::Duration::from_secs(900),
        )
    }

    const SECRET: &str = "unit-test-secret-unit-test-secret-0001";

    fn parts(jwt: &str) -> (serde_json::Value, serde_json::Value) {
        let p: Vec<&str> = jwt.split('.').collect();
        let dec = |s: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap();
        (dec(p[0]), dec(p[1]))
    }

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
        assert_eq!(claims.nbf, Some(claims.iat));
        let (header, _) = parts(&jwt);
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], "derived");
        assert_eq!(
            t.verify(&jwt, now + chrono::Duration::seconds(900)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn several_audiences_make_an_array_and_each_is_accepted() {
        let auds = ["api".to_owned(), "billing".to_owned()];
        let t = TokenIssuer::new(
            &keys(SECRET),
            "authgate",
            &auds,
            std::time::Duration::from_secs(900),
        );
        let now = Utc::now();
        let jwt = t.issue(Uuid::new_v4(), &["pwd"], now).unwrap();
        assert_eq!(parts(&jwt).1["aud"], serde_json::json!(["api", "billing"]));
        assert!(t.verify(&jwt, now).is_ok());
        // A verifier of one of them accepts it; a third audience does not.
        assert!(issuer(SECRET, "authgate", "billing")
            .verify(&jwt, now)
            .is_ok());
        assert_eq!(
            issuer(SECRET, "authgate", "other").verify(&jwt, now),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            parts(
                &issuer(SECRET, "a", "api")
                    .issue(Uuid::new_v4(), &[], now)
                    .unwrap()
            )
            .1["aud"],
            "api"
        );
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let t = issuer(SECRET, "authgate", "api");
        let now = Utc::now();
        let jwt = t.issue(Uuid::new_v4(), &["pwd"], now).unwrap();
        // Another issuer or audience; another key under the same kid.
        for other in [
            issuer("another-secret-another-secret-another-1", "authgate", "api"),
            issuer(SECRET, "someone-else", "api"),
            issuer(SECRET, "authgate", "other-api"),
        ] {
            assert_eq!(other.verify(&jwt, now), Err(TokenError::Invalid));
        }
        // Tampered payload.
        let p: Vec<&str> = jwt.split('.').collect();
        let (_, mut claims) = parts(&jwt);
        claims["amr"] = serde_json::json!(["pwd", "sms"]);
        let forged = format!(
            "{}.{}.{}",
            p[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            p[2]
        );
        assert_eq!(t.verify(&forged, now), Err(TokenError::Invalid));
        // alg: none, with and without a signature, with and without the kid.
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"none","typ":"JWT","kid":"derived"}"#,
        ] {
            let none = URL_SAFE_NO_PAD.encode(header);
            assert_eq!(
                t.verify(&format!("{none}.{}.", p[1]), now),
                Err(TokenError::Invalid)
            );
            assert_eq!(
                t.verify(&format!("{none}.{}.{}", p[1], p[2]), now),
                Err(TokenError::Invalid)
            );
        }
        // HS256 keyed with the public key (the classic confusion), naming our kid.
        let set = keys(SECRET).snapshot();
        let x = set.signing.active.jwk.as_ref().unwrap().x.clone();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("derived".to_owned());
        let confused = jsonwebtoken::encode(
            &h,
            &t.verify(&jwt, now).unwrap(),
            &EncodingKey::from_secret(x.as_bytes()),
        )
        .unwrap();
        assert_eq!(t.verify(&confused, now), Err(TokenError::Invalid));
        // No kid at all, or one we never made.
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = None;
        let no_kid = jsonwebtoken::encode(
            &h,
            &t.verify(&jwt, now).unwrap(),
            &set.signing.active.encoding,
        )
        .unwrap();
        assert_eq!(t.verify(&no_kid, now), Err(TokenError::Invalid));
        h.kid = Some("someone-elses".to_owned());
        let unknown = jsonwebtoken::encode(
            &h,
            &t.verify(&jwt, now).unwrap(),
            &set.signing.active.encoding,
        )
        .unwrap();
        assert_eq!(t.verify(&unknown, now), Err(TokenError::UnknownKey));
        for junk in ["", "a.b.c", "not a token", &"x".repeat(5000)] {
            assert_eq!(t.verify(junk, now), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn hs256_signs_with_the_shared_secret_and_accepts_tokens_without_kid() {
        let secret = b"a-shared-secret-of-thirty-two-bytes!!";
        let base = keys(SECRET).snapshot();
        let hs = Keys::new(KeySet {
            signing: Signing::hs256(secret),
            ..(*base).clone()
        });
        let t = TokenIssuer::new(
            &hs,
            "authgate",
            &["api".to_owned()],
            std::time::Duration::from_secs(900),
        );
        let now = Utc::now();
        let jwt = t.issue(Uuid::new_v4(), &["pwd"], now).unwrap();
        let (header, _) = parts(&jwt);
        assert_eq!(header["alg"], "HS256");
        assert!(header["kid"].as_str().unwrap().starts_with("hs256-"));
        // A client verifying with the shared secret alone.
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&["api"]);
        assert!(jsonwebtoken::decode::<Claims>(
            &jwt,
            &jsonwebtoken::DecodingKey::from_secret(secret),
            &v
        )
        .is_ok());
        // A token from before kids (HS256, no kid) still verifies.
        let claims = t.verify(&jwt, now).unwrap();
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        assert!(t.verify(&old, now).is_ok());
        // An EdDSA token is not accepted by an HS256 server.
        let ed = issuer(SECRET, "authgate", "api")
            .issue(Uuid::new_v4(), &["pwd"], now)
            .unwrap();
        assert_ne!(t.verify(&ed, now).map(|_| ()), Ok(()));
    }

    #[test]
    fn session_tokens_carry_sid_auth_time_and_a_precise_issue_time() {
        let t = issuer(SECRET, "authgate", "api");
        let now = Utc::now();
        let login = now - chrono::Duration::minutes(7);
        let sid = Uuid::new_v4();
        let jwt = t
            .issue_for_session(Uuid::new_v4(), &["pwd"], sid, login, now)
            .unwrap();
        let c = t.verify(&jwt, now).unwrap();
        assert_eq!(c.sid, Some(sid));
        assert_eq!(c.auth_time, Some(login.timestamp()));
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
        let keys_a = keys(SECRET);
        let other = keys(&"x".repeat(40));
        let a = new_refresh_token();
        let next = successor_refresh_token(&keys_a, &a);
        assert_eq!(next, successor_refresh_token(&keys_a, &a));
        assert!(looks_like_refresh_token(&next));
        assert_ne!(next, a);
        assert_ne!(next, successor_refresh_token(&other, &a));
        assert_ne!(next, successor_refresh_token(&keys_a, &new_refresh_token()));
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
