//! Sending one SMS: the [`SmsSender`] abstraction the SMS actor drives, its
//! implementations ([`twilio`] and [`webhook`] for production, [`console`] for
//! development), the
//! pure retry policy ([`retry`]), Twilio's webhook signature ([`signature`]) and
//! the delivery counters ([`SmsMetrics`]).
//!
//! A sender performs one attempt and reports what happened; it never retries,
//! sleeps or touches the outbox. Deciding what an outcome means is `retry`'s job,
//! recording it is the actor's.

pub mod console;
pub mod retry;
pub mod signature;
pub mod test_phones;
pub mod twilio;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

/// One message, ready to go. The body is plaintext only for the time of the call.
#[derive(Clone, Copy)]
pub struct OutgoingSms<'a> {
    /// The outbox row: the same on every attempt at this message (the webhook
    /// derives its `webhook-id` from it, so receivers can drop duplicates).
    pub outbox_id: i64,
    /// E.164 recipient.
    pub to: &'a str,
    pub body: &'a str,
    /// When the content stops being useful (an OTP's expiry); the provider is asked
    /// to drop the message if it cannot deliver it by then.
    pub expires_at: Option<DateTime<Utc>>,
    /// The clock's now, so the validity period sent matches the rest of the system.
    pub now: DateTime<Utc>,
}

impl std::fmt::Debug for OutgoingSms<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the body: it carries a code.
        f.debug_struct("OutgoingSms")
            .field("outbox_id", &self.outbox_id)
            .field("to", &self.to)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkFailure {
    /// The connection could not be made: the provider never saw the request.
    Connect,
    /// No answer in time: the provider may or may not have accepted the message.
    Timeout,
    /// Anything else on the wire (reset, TLS, malformed answer).
    Other,
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The provider took the message. `sid` is its id (None when the provider gave
    /// none, e.g. the console, or its answer could not be read), `status` its
    /// initial status (`queued`, `accepted`, …).
    Accepted {
        sid: Option<String>,
        status: Option<String>,
    },
    /// The provider answered with an error.
    Rejected {
        http_status: u16,
        /// The provider's own error code (Twilio: 21211, 20429, …).
        code: Option<i32>,
        /// `Retry-After`, when the provider sent one.
        retry_after: Option<Duration>,
    },
    /// No HTTP answer.
    Network(NetworkFailure),
}

impl SendOutcome {
    /// A short description for `last_error`: never the body, never the provider's
    /// free-text message (it quotes the recipient and may change wording).
    pub fn describe(&self) -> String {
        match self {
            SendOutcome::Accepted { .. } => "accepted".to_owned(),
            SendOutcome::Rejected {
                http_status,
                code: Some(code),
                ..
            } => format!("provider answered HTTP {http_status} with error {code}"),
            SendOutcome::Rejected { http_status, .. } => {
                format!("provider answered HTTP {http_status}")
            }
            SendOutcome::Network(NetworkFailure::Connect) => "connection failed".to_owned(),
            SendOutcome::Network(NetworkFailure::Timeout) => "request timed out".to_owned(),
            SendOutcome::Network(NetworkFailure::Other) => "network error".to_owned(),
        }
    }
}

/// Something that can attempt to deliver one SMS.
pub trait SmsSender: Send + Sync + 'static {
    /// One attempt; never retries.
    fn send<'a>(&'a self, msg: OutgoingSms<'a>) -> BoxFuture<'a, SendOutcome>;

    /// For logs: `twilio`, `webhook` or `console`.
    fn name(&self) -> &'static str;
}

/// Where a Twilio message status sits in its lifecycle, for ordering callbacks
/// that arrive out of order. Final statuses share the top rank, so none replaces
/// another. `None` for statuses authgate does not track.
pub fn delivery_rank(status: &str) -> Option<i16> {
    Some(match status {
        "accepted" | "scheduled" => 1,
        "queued" => 2,
        "sending" => 3,
        "sent" => 4,
        "delivered" | "undelivered" | "failed" | "canceled" => FINAL_DELIVERY_RANK,
        _ => return None,
    })
}

/// The rank of `delivered`, `undelivered`, `failed` and `canceled`.
pub const FINAL_DELIVERY_RANK: i16 = 5;

/// Delivery counters since start, for the metrics endpoint. Lock-free: bumped
/// from the sending tasks.
#[derive(Debug, Default)]
pub struct SmsMetrics {
    /// Messages the provider accepted.
    pub sent: AtomicU64,
    /// Attempts that failed transiently and were rescheduled.
    pub retried: AtomicU64,
    /// Messages that ended failed (permanent error, out of attempts, unreadable).
    pub failed: AtomicU64,
    /// Messages dropped unsent because their content expired.
    pub expired: AtomicU64,
    /// Claim statements the SMS actor ran, and statements that recorded
    /// outcomes (each records many): how well the outbox work is batched.
    pub claim_statements: AtomicU64,
    pub record_statements: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmsMetricsSnapshot {
    pub sent: u64,
    pub retried: u64,
    pub failed: u64,
    pub expired: u64,
    pub claim_statements: u64,
    pub record_statements: u64,
}

impl SmsMetrics {
    pub fn snapshot(&self) -> SmsMetricsSnapshot {
        SmsMetricsSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            claim_statements: self.claim_statements.load(Ordering::Relaxed),
            record_statements: self.record_statements.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statuses_outrank_every_other_and_tie() {
        let finals = ["delivered", "undelivered", "failed", "canceled"];
        for f in finals {
            assert_eq!(delivery_rank(f), Some(FINAL_DELIVERY_RANK));
            for other in ["accepted", "scheduled", "queued", "sending", "sent"] {
                assert!(delivery_rank(other) < delivery_rank(f));
            }
        }
        assert!(delivery_rank("queued") < delivery_rank("sent"));
        assert_eq!(delivery_rank("read"), None);
    }

    #[test]
    fn descriptions_carry_codes_not_text() {
        let d = SendOutcome::Rejected {
            http_status: 400,
            code: Some(21211),
            retry_after: None,
        }
        .describe();
        assert!(d.contains("21211") && d.contains("400"));
    }
}
