//! Tokens any service can verify, and keys that rotate without failing
//! anything still within its lifetime: EdDSA/ES256/HS256 signing, the JWKS and
//! discovery documents, signing-key rotation with overlap across processes,
//! and the separate code, outbox, refresh and recovery keys.

use std::time::Duration;

use authgate::keyring::{Purpose, SigningAlg};
use authgate::store::keyring::Rotation;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::accounts::*;
use crate::helpers::*;

fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The header and the claims of a JWT, unverified.
fn parts(jwt: &str) -> (Value, Value) {
    let p: Vec<&str> = jwt.split('.').collect();
    assert_eq!(p.len(), 3, "not a JWS: {jwt}");
    (decode(p[0]), decode(p[1]))
}

fn kid(jwt: &str) -> String {
    parts(jwt).0["kid"].as_str().unwrap().to_owned()
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.http.get(app.url(path)).send().await.unwrap()
}

async fn jwks(app: &TestApp) -> Vec<Value> {
    let body = expect_json(get(app, "/.well-known/jwks.json").await, 200).await;
    body["keys"].as_array().unwrap().clone()
}

/// Checks a token's signature with nothing but the JWKS: the key its `kid`
/// names, raw signature verification (no JWT library involved).
fn verify_with_jwks(jwt: &str, keys: &[Value]) -> bool {
    let p: Vec<&str> = jwt.split('.').collect();
    let (header, _) = parts(jwt);
    let Some(jwk) = keys.iter().find(|k| k["kid"] == header["kid"]) else {
        return false;
    };
    assert_eq!(jwk["alg"], header["alg"]);
    let signed = format!("{}.{}", p[0], p[1]);
    let sig = URL_SAFE_NO_PAD.decode(p[2]).unwrap();
    let b64 = |f: &str| URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
    let (alg, public): (&dyn ring::signature::VerificationAlgorithm, Vec<u8>) =
        match jwk["kty"].as_str().unwrap() {
            "OKP" => (&ring::signature::ED25519, b64("x")),
            "EC" => {
                let mut point = vec![4u8];
                point.extend(b64("x"));
                point.extend(b64("y"));
                (&ring::signature::ECDSA_P256_SHA256_FIXED, point)
            }
            other => panic!("unexpected kty {other}"),
        };
    ring::signature::UnparsedPublicKey::new(alg, public)
        .verify(signed.as_bytes(), &sig)
        .is_ok()
}

#[tokio::test]
async fn tokens_are_eddsa_signed_by_a_published_key_and_carry_every_documented_claim() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let (header, claims) = parts(&a.access);
    assert_eq!(header["alg"], "EdDSA");
    let resp = get(&app, "/.well-known/jwks.json").await;
    let cache = resp.headers()["cache-control"].to_str().unwrap().to_owned();
    // Half the 30-day rotation period, capped at an hour.
    assert_eq!(cache, "public, max-age=3600");
    let keys = expect_json(resp, 200).await["keys"]
        .as_array()
        .unwrap()
        .clone();
    // The active key and the next one, both public only.
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0]["kid"], header["kid"]);
    for k in &keys {
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["crv"], "Ed25519");
        assert_eq!(k["use"], "sig");
        assert!(k.get("d").is_none(), "a private part is published: {k}");
    }
    assert!(verify_with_jwks(&a.access, &keys));
    // Any change to the payload breaks it.
    let p: Vec<&str> = a.access.split('.').collect();
    let mut forged = claims.clone();
    forged["amr"] = json!(["pwd", "sms"]);
    let forged = format!(
        "{}.{}.{}",
        p[0],
        URL_SAFE_NO_PAD.encode(forged.to_string()),
        p[2]
    );
    assert!(!verify_with_jwks(&forged, &keys));

    for claim in [
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
    ] {
        assert!(claims.get(claim).is_some(), "no {claim} in {claims}");
    }
    assert_eq!(claims["iss"], "authgate");
    assert_eq!(claims["aud"], "authgate");
    assert_eq!(claims["sub"], a.id);
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(claims["auth_time"], claims["iat"]);

    // A refresh keeps the login's auth_time and the session.
    app.clock.advance(Duration::from_secs(120));
    let r = expect_json(
        app.post_json("/api/v1/auth/refresh", &json!({"refreshToken": a.refresh}))
            .await,
        200,
    )
    .await;
    let (_, refreshed) = parts(r["accessToken"].as_str().unwrap());
    assert_eq!(refreshed["auth_time"], claims["auth_time"]);
    assert_eq!(refreshed["sid"], claims["sid"]);
    assert!(refreshed["iat"].as_i64() > claims["iat"].as_i64());
}

#[tokio::test]
async fn es256_is_a_configurable_choice_and_several_audiences_make_an_array() {
    let app = spawn_app_with(|c| {
        c.jwt_algorithm = SigningAlg::ES256;
        c.jwt_audience = vec!["api".to_owned(), "billing".to_owned()];
    })
    .await;
    let a = account(&app).await;
    let (header, claims) = parts(&a.access);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["aud"], json!(["api", "billing"]));
    let keys = jwks(&app).await;
    assert!(keys.iter().all(|k| k["kty"] == "EC" && k["crv"] == "P-256"));
    assert!(verify_with_jwks(&a.access, &keys));
    assert_eq!(me_status(&app, &a.access).await, 200);
    let discovery = expect_json(get(&app, "/.well-known/openid-configuration").await, 200).await;
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
}

#[tokio::test]
async fn a_changed_algorithm_takes_over_at_start_and_older_tokens_stay_valid() {
    let app = spawn_app().await;
    let a = account(&app).await;
    assert_eq!(parts(&a.access).0["alg"], "EdDSA");
    let es = spawn_on(app.db.clone(), |c| c.jwt_algorithm = SigningAlg::ES256).await;
    let b = relogin(&es, &a).await;
    assert_eq!(parts(&b).0["alg"], "ES256");
    // The EdDSA token, signed before the switch, is still accepted by both.
    assert_eq!(me_status(&es, &a.access).await, 200);
    assert_eq!(me_status(&app, &b).await, 200);
}

#[tokio::test]
async fn hs256_only_when_asked_signs_with_jwt_secret_and_publishes_no_key() {
    let secret = "a-shared-secret-for-the-tutorial-clients-0001";
    let app = spawn_app_with(|c| {
        c.jwt_algorithm = SigningAlg::HS256;
        c.jwt_secret = Some(secrecy::SecretString::from(secret.to_owned()));
        c.master_key = Some(secrecy::SecretString::from(
            "the-master-key-is-not-the-hs256-secret-01".to_owned(),
        ));
    })
    .await;
    let a = account(&app).await;
    assert_eq!(parts(&a.access).0["alg"], "HS256");
    // A client holding only the shared secret verifies it.
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_audience(&["authgate"]);
    jsonwebtoken::decode::<Value>(
        &a.access,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .unwrap();
    assert!(jwks(&app).await.is_empty());
    assert_eq!(me_status(&app, &a.access).await, 200);
    // The code keys are not the shared secret's: the ring holds its own.
    let ring = app.state.keyring().list().await.unwrap();
    assert!(ring
        .iter()
        .any(|k| k.purpose == "codes" && k.state == "active"));
    assert!(ring.iter().all(|k| k.purpose != "signing"));
    let refused = app
        .state
        .keyring()
        .rotate(Purpose::Signing, true)
        .await
        .unwrap_err();
    assert!(refused.contains("HS256"), "{refused}");
}

#[tokio::test]
async fn the_discovery_document_links_the_jwks_with_the_same_cache_policy() {
    let app = spawn_app_with(|c| {
        c.key_rotation = Some(Duration::from_secs(3600));
        c.jwt_issuer = "https://auth.example.com".to_owned();
    })
    .await;
    let base = format!("http://{}", app.addr);
    let resp = get(&app, "/.well-known/openid-configuration").await;
    // A rotation every hour: caches keep the set at most half of that.
    assert_eq!(resp.headers()["cache-control"], "public, max-age=1800");
    let d = expect_json(resp, 200).await;
    assert_eq!(d["issuer"], "https://auth.example.com");
    // AUTHGATE_PUBLIC_URL unset: the listening address.
    assert_eq!(d["jwks_uri"], format!("{base}/.well-known/jwks.json"));
    let keys: Value = app
        .http
        .get(d["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    assert!(d["claims_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("auth_time")));
}

#[tokio::test]
async fn tokens_signed_before_a_rotation_verify_until_expiry_then_fail_with_401() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let old_kid = kid(&a.access);
    // What the old key signs, with a lifetime longer than its overlap: only
    // the end of the overlap can refuse it.
    let old = app.state.keys().snapshot().signing.active.clone();
    let long_lived = |now: chrono::DateTime<chrono::Utc>| {
        let (_, mut claims) = parts(&a.access);
        claims["iat"] = json!(now.timestamp());
        claims["nbf"] = json!(now.timestamp());
        claims["iat_us"] = json!(now.timestamp_micros());
        claims["exp"] = json!(now.timestamp() + 7 * 86_400);
        let mut h = jsonwebtoken::Header::new(old.alg);
        h.kid = Some(old.kid.clone());
        jsonwebtoken::encode(&h, &claims, &old.encoding).unwrap()
    };
    let before = long_lived(app.clock.now());

    let next_kid = jwks(&app).await[1]["kid"].as_str().unwrap().to_owned();
    let r = app
        .state
        .keyring()
        .rotate(Purpose::Signing, true)
        .await
        .unwrap();
    assert_eq!(
        r,
        Rotation::Rotated {
            active: next_kid.clone()
        }
    );
    let b = relogin(&app, &a).await;
    assert_eq!(kid(&b), next_kid, "the published next key signs now");
    assert_eq!(
        me_status(&app, &a.access).await,
        200,
        "signed before the rotation"
    );
    assert_eq!(me_status(&app, &b).await, 200);
    assert_eq!(me_status(&app, &before).await, 200, "within the overlap");
    let kids: Vec<Value> = jwks(&app).await.iter().map(|k| k["kid"].clone()).collect();
    assert_eq!(kids[0], json!(next_kid));
    assert!(
        kids.contains(&json!(old_kid)),
        "the retired key is still published"
    );
    assert_eq!(kids.len(), 3, "active, next and retired: {kids:?}");

    // The overlap is the access-token lifetime plus two reloads and 5 s.
    app.clock
        .advance(Duration::from_secs(15 * 60) + Duration::from_secs(6));
    app.state.keyring().reload().await.unwrap();
    assert_eq!(me_status(&app, &a.access).await, 401, "expired anyway");
    assert_eq!(me_status(&app, &before).await, 401, "its key is gone");
    let kids: Vec<Value> = jwks(&app).await.iter().map(|k| k["kid"].clone()).collect();
    assert!(!kids.contains(&json!(old_kid)));
    let fresh = relogin(&app, &a).await;
    assert_eq!(me_status(&app, &fresh).await, 200);
}

#[tokio::test]
async fn another_process_accepts_a_rotation_at_once_and_signs_with_it_after_its_reload() {
    let app = spawn_app().await;
    // The second process reloads only every hour: what it accepts right after
    // the rotation it knew beforehand (the next key).
    let slow = spawn_on(app.db.clone(), |c| c.key_reload = Duration::from_secs(3600)).await;
    let quick = spawn_on(app.db.clone(), |_| {}).await;
    let a = account(&app).await;
    app.state
        .keyring()
        .rotate(Purpose::Signing, true)
        .await
        .unwrap();
    let b = relogin(&app, &a).await;
    assert_ne!(kid(&b), kid(&a.access));
    assert_eq!(me_status(&slow, &b).await, 200, "the next key was known");
    assert_eq!(me_status(&slow, &a.access).await, 200);
    // A second rotation at once (forced): a key the slow process never saw;
    // the unknown kid makes it reload.
    app.state
        .keyring()
        .rotate(Purpose::Signing, true)
        .await
        .unwrap();
    let c = relogin(&app, &a).await;
    assert_eq!(
        me_status(&slow, &c).await,
        200,
        "reloaded for an unknown kid"
    );
    // The quick one (200 ms reloads) signs with the new key within a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let t = relogin(&quick, &a).await;
        if kid(&t) == kid(&c) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rotating_the_code_key_keeps_a_live_code_checkable_even_in_a_process_that_has_not_reloaded()
{
    let (app, fake) = spawn_app_with_twilio().await;
    let slow = spawn_on(app.db.clone(), |c| c.key_reload = Duration::from_secs(3600)).await;
    let a = account(&app).await;
    let r = post_auth(&app, "/api/v1/account/phone/verify/send", &a.access, None).await;
    expect_json(r, 202).await;
    let code = code_for(&fake, &a.phone, 0).await;
    let before = app.state.keyring().list().await.unwrap();
    app.state
        .keyring()
        .rotate(Purpose::Codes, true)
        .await
        .unwrap();
    let after = app.state.keyring().list().await.unwrap();
    // Only the code key moved.
    let active = |l: &[authgate::keyring::KeyInfo], p: &str| {
        l.iter()
            .find(|k| k.purpose == p && k.state == "active")
            .unwrap()
            .kid
            .clone()
    };
    assert_ne!(active(&before, "codes"), active(&after, "codes"));
    for p in ["signing", "outbox", "refresh", "recovery"] {
        assert_eq!(active(&before, p), active(&after, p), "{p} moved");
    }
    // Issued under the old key, checked after the rotation: accepted.
    let r = post_auth(
        &app,
        "/api/v1/account/phone/verify/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;

    // A code issued under the new key, checked by a process that has not
    // reloaded since: it knew the key as the next one.
    let b = account(&app).await;
    let r = post_auth(&app, "/api/v1/account/phone/verify/send", &b.access, None).await;
    expect_json(r, 202).await;
    let code = code_for(&fake, &b.phone, 0).await;
    let r = post_auth(
        &slow,
        "/api/v1/account/phone/verify/confirm",
        &b.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;
}

#[tokio::test]
async fn rotating_the_outbox_key_keeps_a_queued_message_readable() {
    // Enough tries to outlast the outage at the tests' short backoff.
    let (app, fake) = spawn_app_with_twilio_and(|c| c.sms.max_attempts = 1000).await;
    let a = account(&app).await;
    // Twilio is down: the code's SMS is tried, fails and waits in the outbox.
    fake.outage_for(Duration::from_secs(3));
    let r = post_auth(&app, "/api/v1/account/phone/verify/send", &a.access, None).await;
    expect_json(r, 202).await;
    fake.wait_for_attempts(1, Duration::from_secs(10)).await;
    assert_eq!(count_to(&fake, &a.phone), 0);
    app.state
        .keyring()
        .rotate(Purpose::Outbox, true)
        .await
        .unwrap();
    // Sealed under the retired key, still opened and sent once Twilio is back.
    let code = code_for(&fake, &a.phone, 0).await;
    let r = post_auth(
        &app,
        "/api/v1/account/phone/verify/confirm",
        &a.access,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;
    // The retired outbox key stays accepted for the outbox retention.
    let ring = app.state.keyring().list().await.unwrap();
    let retired = ring
        .iter()
        .find(|k| k.purpose == "outbox" && k.state == "retired")
        .unwrap();
    let kept = retired.verify_until.unwrap() - retired.retired_at.unwrap();
    assert!(kept >= chrono::Duration::days(7), "{kept}");
}

#[tokio::test]
async fn a_refresh_retried_across_a_refresh_key_rotation_gets_the_same_token() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let first = expect_json(
        app.post_json("/api/v1/auth/refresh", &json!({"refreshToken": a.refresh}))
            .await,
        200,
    )
    .await;
    app.state
        .keyring()
        .rotate(Purpose::Refresh, true)
        .await
        .unwrap();
    let retry = expect_json(
        app.post_json("/api/v1/auth/refresh", &json!({"refreshToken": a.refresh}))
            .await,
        200,
    )
    .await;
    assert_eq!(retry["refreshToken"], first["refreshToken"]);
    // And the successor rotates on under the new key.
    let next = expect_json(
        app.post_json(
            "/api/v1/auth/refresh",
            &json!({"refreshToken": first["refreshToken"]}),
        )
        .await,
        200,
    )
    .await;
    assert_ne!(next["refreshToken"], first["refreshToken"]);
}

#[tokio::test]
async fn recovery_codes_survive_a_recovery_key_rotation() {
    let (app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    let recovery = enable_2fa_with_codes(&app, &fake, &a).await[0].clone();
    app.state
        .keyring()
        .rotate(Purpose::Recovery, true)
        .await
        .unwrap();
    let flow = expect_json(
        app.post_json(
            "/api/v1/account/login",
            &json!({"email": a.email, "password": a.password}),
        )
        .await,
        200,
    )
    .await;
    let tokens = expect_json(
        app.post_json(
            "/api/v1/account/login/verify",
            &json!({"flowId": flow["flowId"], "recoveryCode": recovery}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        parts(tokens["accessToken"].as_str().unwrap()).1["amr"],
        json!(["pwd", "otp"])
    );
    // Retired recovery keys are kept for good: the codes never expire.
    let ring = app.state.keyring().list().await.unwrap();
    assert!(ring
        .iter()
        .any(|k| k.purpose == "recovery" && k.state == "retired" && k.verify_until.is_none()));
}

#[tokio::test]
async fn the_scheduled_rotation_happens_once_across_processes_and_spares_recovery_keys() {
    let app = spawn_app_with(|c| c.key_rotation = Some(Duration::from_secs(3600))).await;
    let other = spawn_on(app.db.clone(), |c| {
        c.key_rotation = Some(Duration::from_secs(3600))
    })
    .await;
    let a = account(&app).await;
    let old_kid = kid(&a.access);
    let hour = Duration::from_secs(3601);
    app.clock.advance(hour);
    other.clock.advance(hour);
    // Both processes' keys actors tick every 200 ms and find the keys due.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ring = loop {
        let ring = app.state.keyring().list().await.unwrap();
        let retired = |p: &str| {
            ring.iter()
                .filter(|k| k.purpose == p && k.state == "retired")
                .count()
        };
        if ["signing", "codes", "outbox", "refresh"]
            .iter()
            .all(|p| retired(p) >= 1)
        {
            break ring;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not rotated: {ring:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ring_later = app.state.keyring().list().await.unwrap();
    assert_eq!(
        ring.len(),
        ring_later.len(),
        "rotated twice: {ring_later:?}"
    );
    for p in ["signing", "codes", "outbox", "refresh"] {
        let retired = ring_later
            .iter()
            .filter(|k| k.purpose == p && k.state == "retired")
            .count();
        assert_eq!(retired, 1, "{p}: {ring_later:?}");
    }
    assert!(ring_later
        .iter()
        .all(|k| k.purpose != "recovery" || k.state != "retired"));
    let b = relogin(&app, &a).await;
    assert_ne!(kid(&b), old_kid);
    assert_eq!(me_status(&other, &b).await, 200);
}

#[tokio::test]
async fn the_ring_opens_only_with_its_master_key_and_a_new_master_key_reseals_it() {
    let app = spawn_app().await;
    let a = account(&app).await;
    let sealed: Vec<Vec<u8>> = app
        .db_client()
        .await
        .query("SELECT sealed FROM keyring", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(sealed.len() >= 10);
    let new_master = "a-new-master-key-a-new-master-key-0000000";
    let mut config = test_config();
    config.master_key = Some(secrecy::SecretString::from(new_master.to_owned()));
    let refused =
        authgate::startup::Application::build(config, app.db.clone(), std::future::pending::<()>())
            .await
            .err()
            .expect("a process with another master key started on this ring")
            .to_string();
    assert!(refused.contains("AUTHGATE_MASTER_KEY"), "{refused}");
    // With the old key as AUTHGATE_MASTER_KEY_PREVIOUS it starts and reseals.
    let moved = spawn_on(app.db.clone(), |c| {
        c.master_key = Some(secrecy::SecretString::from(new_master.to_owned()));
        c.master_key_previous = c.jwt_secret.clone();
    })
    .await;
    assert_eq!(me_status(&moved, &a.access).await, 200);
    let resealed: Vec<Vec<u8>> = app
        .db_client()
        .await
        .query("SELECT sealed FROM keyring", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(sealed.iter().all(|s| !resealed.contains(s)));
    let only_new = spawn_on(app.db.clone(), |c| {
        c.master_key = Some(secrecy::SecretString::from(new_master.to_owned()));
    })
    .await;
    assert_eq!(me_status(&only_new, &a.access).await, 200);
}

#[tokio::test]
async fn an_upgrade_from_the_single_secret_keeps_pending_codes_checkable() {
    let (mut app, fake) = spawn_app_with_twilio().await;
    let a = account(&app).await;
    let r = post_auth(&app, "/api/v1/account/phone/verify/send", &a.access, None).await;
    expect_json(r, 202).await;
    let code = code_for(&fake, &a.phone, 0).await;
    app.stop().await;
    // As an earlier version left it: no key ring, the code hashed under the
    // key derived from JWT_SECRET.
    let secret = test_config().jwt_secret.unwrap();
    let legacy = authgate::crypto::legacy_key(
        secrecy::ExposeSecret::expose_secret(&secret).as_bytes(),
        "codes",
    )
    .unwrap();
    let base = authgate::crypto::Keys::derive(&secret).snapshot();
    let old = authgate::crypto::Keys::new(authgate::crypto::KeySet {
        codes: authgate::crypto::SymmetricKeys::new(legacy, []),
        ..(*base).clone()
    });
    let user: uuid::Uuid = a.id.parse().unwrap();
    let hash = old.otp_hash(&user, "phone_verify", &code).to_vec();
    let db = app.db_client().await;
    db.batch_execute("DELETE FROM keyring").await.unwrap();
    let n = db
        .execute(
            "UPDATE otp_codes SET code_hash = $2 WHERE user_id = $1 AND state = 'live'",
            &[&user, &hash],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let upgraded = spawn_on(app.db.clone(), |c| {
        c.sms.twilio = Some(twilio_config(&fake.base_url()))
    })
    .await;
    let ring = upgraded.state.keyring().list().await.unwrap();
    assert!(ring
        .iter()
        .any(|k| k.kid == "codes-legacy-v0" && k.state == "retired"));
    // The old access token was signed by a key that is gone: log in again.
    let token = relogin(&upgraded, &a).await;
    let r = post_auth(
        &upgraded,
        "/api/v1/account/phone/verify/confirm",
        &token,
        Some(json!({"code": code})),
    )
    .await;
    expect_json(r, 200).await;
}
