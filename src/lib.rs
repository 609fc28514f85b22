//! authgate: a self-hosted SMS two-factor authentication engine.
//!
//! The data flow is the module layout:
//!
//! - [`routes`]: the HTTP edge (warp). Parses requests, calls down, renders every
//!   failure as the JSON error envelope.
//! - `actors`: the supervised actor tree (ractor) that owns stateful work: login
//!   flows, one-time codes, SMS delivery.
//! - [`service`]: the use cases routes and actors share (password check, sessions,
//!   account lifecycle), below both; it never calls a route.
//! - [`store`]: persistence (tokio-postgres over a deadpool pool). The only module
//!   that speaks SQL; cross-process rules are atomic statements here.
//! - PostgreSQL: the one source of truth, external (`DATABASE_URL`) or the private
//!   server of [`store::private_pg`].
//!
//! [`domain`] holds the pure rules (parsing, validation, password hashing) used by
//! every layer; [`config`] the typed configuration; [`error`] the one error type;
//! [`sms`] sending one SMS (Twilio or the console) and the retry policy;
//! [`cli`] the command line that `src/main.rs` runs.

pub mod actors;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod hasher;
pub mod keyring;
pub mod metrics;
pub mod revocation;
pub mod routes;
pub mod service;
pub mod sms;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tokens;
