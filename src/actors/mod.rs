//! The supervised actor tree (ractor). Actors own stateful, serialised work and
//! call down into `store`; routes call actors, never the other way round.
//!
//! - [`supervisor`]: the root; restarts long-lived children at a bounded rate.
//! - [`sms`]: drains the SMS outbox through Twilio or the console.
//! - [`purge`]: deletes what outlived its retention, on a schedule.
//! - [`keys`]: reloads the key ring and rotates keys on their schedule.

pub mod flow;
pub mod keys;
pub mod otp;
pub mod purge;
pub mod sms;
pub mod supervisor;
