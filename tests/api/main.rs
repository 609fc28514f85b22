//! Integration tests over real HTTP and a real PostgreSQL. One binary, so the
//! template database is built once per run. See `helpers.rs` for the harness.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod abuse;
mod accounts;
mod admin;
mod helpers;

mod cli;
mod contract;
mod fake_twilio;
mod fallbacks;
mod first_run;
mod http_envelope;
mod issuing;
mod jwks_verifier;
mod keys;
mod layers;
mod locale;
mod lockout;
mod login;
mod login_work;
mod logs;
mod metrics;
mod multi_host;
mod openapi;
mod otp;
mod private_pg;
mod purge;
mod rate_limits;
mod recovery;
mod sessions;
mod signup;
mod sms;
mod sms_batching;
mod sms_webhook;
mod test_phones;
mod webhooks;

mod password_reset;
mod phone_change;
