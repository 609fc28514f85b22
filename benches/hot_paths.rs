//! Criterion benchmarks of the request hot paths that involve no IO.
//! Run: `cargo bench --bench hot_paths`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use authgate::domain::email::Email;
use authgate::domain::password::{self, Password};
use authgate::domain::phone::PhoneE164;
use authgate::routes::{account::parse_signup, body::parse_object};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

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

criterion_group!(benches, parsing, hashing);
criterion_main!(benches);
