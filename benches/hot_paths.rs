//! Criterion benchmarks of the request hot paths that involve no IO: request
//! parsing and validation, one login state-machine transition, code generation
//! and hashing, code verification, JWT signing and verification, and argon2id.
//! Run: `cargo bench --bench hot_paths` (one group: `cargo bench --bench
//! hot_paths -- jwt`).
// A benchmark that cannot set itself up should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use authgate::crypto::{KeySet, Keys, Signing};
use authgate::domain::email::Email;
use authgate::domain::login_flow::{self, Event, Limits};
use authgate::domain::otp::{generate_code, parse_code, Purpose};
use authgate::domain::password::{self, Password};
use authgate::domain::phone::PhoneE164;
use authgate::keyring::signing_key_from_pkcs8;
use authgate::routes::{
    account::{parse_code_body, parse_signup},
    body::parse_object,
};
use authgate::tokens::TokenIssuer;
use chrono::{DateTime, Duration, Utc};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use secrecy::SecretString;

fn keys() -> Keys {
    Keys::derive(&SecretString::from(
        "bench-secret-bench-secret-bench-secret-0".to_owned(),
    ))
}

fn parsing(c: &mut Criterion) {
    let body = br#"{"email":" Ada@Example.com ","phone":"+1 (415) 555-0100",
        "password":"s3cure-passw0rd","firstName":"Ada","lastName":"Lovelace"}"#;
    c.bench_function("signup body: parse and validate", |b| {
        b.iter(|| parse_signup(parse_object(black_box(body)).unwrap()).unwrap())
    });
    c.bench_function("phone: parse to E.164", |b| {
        b.iter(|| PhoneE164::parse(black_box("+1 (415) 555-0100")).unwrap())
    });
    c.bench_function("email: parse and normalise", |b| {
        b.iter(|| Email::parse(black_box(" Ada.Lovelace@Example.com ")).unwrap())
    });
    let body = br#"{"code":" 123456 "}"#;
    c.bench_function("code body: parse and validate", |b| {
        b.iter(|| parse_code_body(parse_object(black_box(body)).unwrap(), 6).unwrap())
    });
}

fn login_flow(c: &mut Criterion) {
    let limits = Limits {
        max_code_attempts: 5,
        max_resends: 3,
        resend_cooldown: Duration::seconds(30),
        code_ttl: Duration::minutes(10),
        flow_ttl: Duration::minutes(15),
    };
    let t0: DateTime<Utc> = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let fresh = login_flow::start(t0, &limits);
    let pending = login_flow::transition(
        &fresh,
        Event::PasswordChecked {
            ok: true,
            two_fa: true,
        },
        t0,
        &limits,
    )
    .state;
    let now = t0 + Duration::seconds(20);
    c.bench_function("login flow: password checked (2FA on)", |b| {
        b.iter(|| {
            login_flow::transition(
                black_box(&fresh),
                Event::PasswordChecked {
                    ok: true,
                    two_fa: true,
                },
                now,
                &limits,
            )
        })
    });
    c.bench_function("login flow: right code", |b| {
        b.iter(|| {
            login_flow::transition(
                black_box(&pending),
                Event::CodeSubmitted { correct: true },
                now,
                &limits,
            )
        })
    });
}

fn codes(c: &mut Criterion) {
    let keys = keys();
    let user = uuid::Uuid::from_u128(0x5eed);
    let purpose = Purpose::Login2fa.as_str();
    let mut rng = rand::rngs::OsRng;
    c.bench_function("code: generate (OS CSPRNG)", |b| {
        b.iter(|| generate_code(&mut rng, 6))
    });
    c.bench_function("code: generate and hash", |b| {
        b.iter(|| {
            let code = generate_code(&mut rng, 6);
            keys.otp_hash(black_box(&user), purpose, &code)
        })
    });
    // What a check does besides the database: shape and keyed hash (the
    // comparison of keyed hashes is PostgreSQL's, in the check's statement).
    c.bench_function("code: verify (parse, keyed hash)", |b| {
        b.iter(|| {
            let code = parse_code(black_box(" 123456 "), 6).unwrap();
            keys.otp_hash(&user, purpose, &code)
        })
    });
}

/// The same key set, signing with `alg`: a generated P-256 key for ES256, a
/// shared secret for HS256, the derived Ed25519 key for EdDSA.
fn keys_for(alg: jsonwebtoken::Algorithm) -> Keys {
    let base = keys().snapshot();
    let signing = match alg {
        jsonwebtoken::Algorithm::HS256 => Signing::hs256(&[7u8; 32]),
        jsonwebtoken::Algorithm::ES256 => {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rng,
            )
            .unwrap();
            Signing::single(signing_key_from_pkcs8("es", alg, pkcs8.as_ref()).unwrap())
        }
        _ => base.signing.clone(),
    };
    Keys::new(KeySet {
        signing,
        ..(*base).clone()
    })
}

fn jwt(c: &mut Criterion) {
    // Back to back, so the cost of a public-key signature (what lets other
    // services verify without being able to mint) is read against HS256.
    for alg in [
        jsonwebtoken::Algorithm::EdDSA,
        jsonwebtoken::Algorithm::ES256,
        jsonwebtoken::Algorithm::HS256,
    ] {
        let keys = keys_for(alg);
        let issuer = TokenIssuer::new(
            &keys,
            "authgate",
            &["authgate".to_owned()],
            std::time::Duration::from_secs(900),
        );
        let user = uuid::Uuid::from_u128(0x5eed);
        let now = Utc::now();
        let token = issuer.issue(user, &["pwd", "sms"], now).unwrap();
        c.bench_function(&format!("jwt: sign ({alg:?})"), |b| {
            b.iter(|| issuer.issue(black_box(user), &["pwd", "sms"], now).unwrap())
        });
        c.bench_function(&format!("jwt: verify ({alg:?})"), |b| {
            b.iter(|| issuer.verify(black_box(&token), now).unwrap())
        });
    }
}

fn hashing(c: &mut Criterion) {
    let pw = Password::parse_new("s3cure-passw0rd").unwrap();
    let phc = password::hash(&pw).unwrap();
    let mut group = c.benchmark_group("argon2id m=19MiB t=2 p=1");
    group.sample_size(10);
    group.bench_function("hash", |b| {
        b.iter(|| password::hash(black_box(&pw)).unwrap())
    });
    group.bench_function("verify", |b| {
        b.iter(|| password::verify(black_box(&pw), black_box(&phc)))
    });
    group.finish();
}

criterion_group!(benches, parsing, login_flow, codes, jwt, hashing);
criterion_main!(benches);
