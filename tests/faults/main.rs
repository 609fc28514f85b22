//! Fault tests: the real `authgate` binary as child processes, under load, while
//! things break: a process is SIGKILLed and restarted, PostgreSQL restarts, the
//! SMS provider is down for a minute, three processes share one database, and
//! (ignored unless `scripts/ha/test.sh` runs it) a Patroni cluster fails over.
//! Each test checks what must survive: no outbox message lost or sent twice, no
//! code or login flow accepted twice, limits that hold across processes, and a
//! service that fails fast and recovers by itself. See `harness.rs` and `load.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The api tests' fake Twilio and database helpers, shared as they are.
#[allow(dead_code)]
#[path = "../api/fake_twilio.rs"]
mod fake_twilio;
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod harness;
mod load;

mod ha;
mod key_rotation;
mod kill9;
mod pg_restart;
mod three_processes;
mod twilio_outage;
