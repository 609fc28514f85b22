//! The `sms_outbox` table: enqueueing inside the caller's transaction. The SMS
//! actor's claiming and outcome recording live here too (see `actors::sms`).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::StoreError;
use crate::crypto::Keys;
use crate::domain::phone::PhoneE164;

/// The channel `NOTIFY` wakes SMS actors on, in this and every other process.
pub const OUTBOX_CHANNEL: &str = "authgate_outbox";

/// A message to queue.
pub struct NewSms<'a> {
    pub to: &'a PhoneE164,
    /// The text; sealed before it is written.
    pub body: &'a str,
    /// What the message carries (`phone_verify`, `login_2fa`, …), for metrics and audit.
    pub purpose: &'a str,
    /// After this the message is useless (an expired code) and is dropped unsent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Inserts a message using the caller's client or transaction, and notifies the
/// SMS actors. Inside a transaction, the notification is delivered at commit, so
/// no actor wakes for a message that was rolled back.
pub async fn enqueue<C: GenericClient>(
    client: &C,
    keys: &Keys,
    now: DateTime<Utc>,
    msg: NewSms<'_>,
) -> Result<i64, StoreError> {
    let sealed = keys.seal(msg.body);
    let row = client
        .query_one(
            "INSERT INTO sms_outbox (recipient, body_sealed, purpose, expires_at, next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5, $5)
             RETURNING id",
            &[&msg.to.as_str(), &sealed, &msg.purpose, &msg.expires_at, &now],
        )
        .await?;
    client
        .execute("SELECT pg_notify($1, '')", &[&OUTBOX_CHANNEL])
        .await?;
    Ok(row.try_get(0)?)
}
