//! Deleting rows that outlived their retention: old audit events, expired quota
//! windows, outbox rows in a final state, and sign-ups whose phone was never
//! verified. Driven by `actors::purge`.
//!
//! Each call deletes at most one batch, found through an index and locked with
//! `SKIP LOCKED`, in its own short statement: a purge never waits on a row a
//! request holds, never holds many locks, and several processes purging at
//! once split the work instead of queueing on each other.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// What the purge deletes. `label` is the metric's `table` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purgeable {
    /// `audit_events` older than the audit retention.
    AuditEvents,
    /// `quota_counters` whose window ended before the cutoff.
    QuotaCounters,
    /// `sms_outbox` rows sent, failed or expired (body already erased), last
    /// updated before the cutoff.
    SmsOutbox,
    /// `users` whose phone is still unverified, signed up before the cutoff;
    /// their codes, flows and refresh tokens go with them (foreign keys cascade).
    UnverifiedUsers,
}

impl Purgeable {
    pub const ALL: [Purgeable; 4] = [
        Purgeable::AuditEvents,
        Purgeable::QuotaCounters,
        Purgeable::SmsOutbox,
        Purgeable::UnverifiedUsers,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Purgeable::AuditEvents => "audit_events",
            Purgeable::QuotaCounters => "quota_counters",
            Purgeable::SmsOutbox => "sms_outbox",
            Purgeable::UnverifiedUsers => "users_unverified",
        }
    }

    /// One batch: $1 the cutoff, $2 the batch size.
    fn sql(self) -> &'static str {
        match self {
            Purgeable::AuditEvents => {
                "DELETE FROM audit_events WHERE id IN (
                     SELECT id FROM audit_events WHERE created_at < $1
                     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            // No single-column key: the physical row id, read and deleted in
            // one statement under the row lock, is stable for that long.
            Purgeable::QuotaCounters => {
                "DELETE FROM quota_counters WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM quota_counters WHERE expires_at < $1
                     ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED))"
            }
            Purgeable::SmsOutbox => {
                "DELETE FROM sms_outbox WHERE id IN (
                     SELECT id FROM sms_outbox
                     WHERE state IN ('sent', 'failed', 'expired') AND updated_at < $1
                     ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            // The predicate is repeated outside: a user who verified meanwhile stays.
            Purgeable::UnverifiedUsers => {
                // Never an account that has logged in: only sign-ups nobody
                // ever used (a squatter's, typically) expire.
                "DELETE FROM users WHERE NOT phone_verified AND first_login_at IS NULL AND id IN (
                     SELECT id FROM users
                     WHERE NOT phone_verified AND first_login_at IS NULL AND created_at < $1
                     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
        }
    }
}

impl Store {
    /// Deletes up to `batch` rows of `what` older than `cutoff`; returns how many.
    /// Fewer than `batch` means nothing more was due (or the rest is locked).
    pub async fn purge_batch(
        &self,
        what: Purgeable,
        cutoff: DateTime<Utc>,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                &client.prepare_cached(what.sql()).await?,
                &[&cutoff, &batch],
            )
            .await?)
    }
}
