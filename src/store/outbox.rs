//! The `sms_outbox` table: enqueueing inside the caller's transaction. The SMS
//! actor's claiming and outcome recording live here too (see `actors::sms`), as
//! does the dedicated LISTEN connection that wakes it.
//!
//! Every outcome is recorded only while the recorder still holds the claim
//! (`state = 'sending' AND claimed_by = $claimer`), so a process whose lease ran
//! out cannot overwrite what the process that reclaimed the message did.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::StoreError;
use crate::crypto::{Keys, OutboxRow};
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
    // The id is drawn first because the seal authenticates it (with the
    // recipient): a body copied to another row then fails to open.
    let id: i64 = client
        .query_one(
            &client
                .prepare_cached("SELECT nextval(pg_get_serial_sequence('sms_outbox', 'id'))")
                .await?,
            &[],
        )
        .await?
        .try_get(0)?;
    let sealed = keys.seal(
        msg.body,
        OutboxRow {
            id,
            recipient: msg.to.as_str(),
        },
    );
    client
        .execute(
            &client.prepare_cached("INSERT INTO sms_outbox (id, recipient, body_sealed, purpose, expires_at, next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $6)").await?,
            &[&id, &msg.to.as_str(), &sealed, &msg.purpose, &msg.expires_at, &now],
        )
        .await?;
    client
        .execute(
            &client.prepare_cached("SELECT pg_notify($1, '')").await?,
            &[&OUTBOX_CHANNEL],
        )
        .await?;
    Ok(id)
}

/// A message claimed for sending by one SMS actor incarnation.
pub struct ClaimedSms {
    pub id: i64,
    pub recipient: String,
    /// None only if a row was tampered with; such a message fails.
    pub body_sealed: Option<Vec<u8>>,
    pub purpose: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// Attempts so far, this claim included.
    pub attempts: i32,
    /// The claim holds until then; after it, any process may take the message.
    pub claimed_until: DateTime<Utc>,
}

impl std::fmt::Debug for ClaimedSms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedSms")
            .field("id", &self.id)
            .field("purpose", &self.purpose)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// A Twilio status callback, already verified.
pub struct DeliveryUpdate<'a> {
    pub provider_sid: &'a str,
    pub status: &'a str,
    /// From `crate::sms::delivery_rank`.
    pub rank: i16,
    pub error_code: Option<i32>,
}

/// Listens for `NOTIFY authgate_outbox` on a dedicated connection (a pooled one
/// would be recycled, silently dropping the LISTEN).
pub struct OutboxListener {
    /// Kept so the connection stays open; dropping it ends the session.
    _client: tokio_postgres::Client,
    notifications: tokio::sync::mpsc::UnboundedReceiver<()>,
    driver: tokio::task::JoinHandle<()>,
}

impl OutboxListener {
    /// Connects and subscribes. Only `NoTls` is supported, as for the pool.
    pub async fn connect(pg: &tokio_postgres::Config) -> Result<OutboxListener, StoreError> {
        use futures::StreamExt;
        let (client, mut connection) = pg.connect(tokio_postgres::NoTls).await?;
        let (tx, notifications) = tokio::sync::mpsc::unbounded_channel();
        // The connection must be polled for LISTEN to complete and for
        // notifications to arrive; it ends (and closes the channel) when the
        // server goes away or the client is dropped.
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(_) = message {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            }
        });
        // The channel name is a constant identifier; LISTEN takes no parameters.
        client
            .batch_execute(&format!("LISTEN {OUTBOX_CHANNEL}"))
            .await?;
        Ok(OutboxListener {
            _client: client,
            notifications,
            driver,
        })
    }

    /// The next notification; None once the connection is gone.
    pub async fn next(&mut self) -> Option<()> {
        self.notifications.recv().await
    }
}

impl Drop for OutboxListener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn claimed_from_row(row: &tokio_postgres::Row) -> Result<ClaimedSms, tokio_postgres::Error> {
    Ok(ClaimedSms {
        id: row.try_get("id")?,
        recipient: row.try_get("recipient")?,
        body_sealed: row.try_get("body_sealed")?,
        purpose: row.try_get("purpose")?,
        expires_at: row.try_get("expires_at")?,
        attempts: row.try_get("attempts")?,
        claimed_until: row.try_get("claimed_until")?,
    })
}

impl super::Store {
    /// Queues a message unless one of `quotas` is spent (counted in the same
    /// transaction, so a refused message costs nothing). False when refused.
    pub async fn enqueue_sms_within(
        &self,
        keys: &Keys,
        now: DateTime<Utc>,
        msg: NewSms<'_>,
        quotas: &[super::quotas::Quota],
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if super::quotas::take(&tx, quotas, now).await?.is_some() {
            // Dropping the transaction rolls the counters back.
            return Ok(false);
        }
        enqueue(&tx, keys, now, msg).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Queues a message outside any caller transaction (tests, tools).
    pub async fn enqueue_sms(
        &self,
        keys: &Keys,
        now: DateTime<Utc>,
        msg: NewSms<'_>,
    ) -> Result<i64, StoreError> {
        let client = self.client().await?;
        enqueue(&client, keys, now, msg).await
    }

    /// Claims up to `limit` messages for `claimer` until `lease_until`: due
    /// pending ones, and ones whose claim expired (their process died). One
    /// statement; `SKIP LOCKED` lets several processes claim side by side
    /// without waiting on or double-claiming each other's rows. Each claim
    /// counts as an attempt, so a message that crashes its sender every time
    /// still runs out of attempts.
    pub async fn claim_sms(
        &self,
        claimer: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ClaimedSms>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached("UPDATE sms_outbox
                 SET state = 'sending', claimed_by = $1, claimed_until = $2,
                     attempts = attempts + 1, updated_at = $3
                 WHERE id IN (
                     SELECT id FROM sms_outbox
                     WHERE (state = 'pending' AND next_attempt_at <= $3)
                        OR (state = 'sending' AND claimed_until < $3)
                     ORDER BY next_attempt_at, id
                     LIMIT $4
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, recipient, body_sealed, purpose, expires_at, attempts, claimed_until").await?,
                &[&claimer, &lease_until, &now, &limit],
            )
            .await?;
        let mut claimed = rows
            .iter()
            .map(claimed_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING has no order; send oldest first.
        claimed.sort_by_key(|m| m.id);
        Ok(claimed)
    }

    /// The provider accepted the message. The body is no longer needed.
    /// False when the claim was lost (another process reclaimed the message).
    pub async fn record_sms_sent(
        &self,
        id: i64,
        claimer: &str,
        provider_sid: Option<&str>,
        delivery_status: Option<&str>,
        delivery_rank: Option<i16>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE sms_outbox
                 SET state = 'sent', body_sealed = NULL, provider_sid = $3,
                     delivery_status = COALESCE(delivery_status, $4),
                     delivery_rank = COALESCE(delivery_rank, $5),
                     claimed_by = NULL, claimed_until = NULL, last_error = NULL, error_code = NULL,
                     sent_at = $6, updated_at = $6
                 WHERE id = $1 AND state = 'sending' AND claimed_by = $2",
                    )
                    .await?,
                &[
                    &id,
                    &claimer,
                    &provider_sid,
                    &delivery_status,
                    &delivery_rank,
                    &now,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// A transient failure: back to pending until `next_attempt_at`.
    pub async fn record_sms_retry(
        &self,
        id: i64,
        claimer: &str,
        next_attempt_at: DateTime<Utc>,
        last_error: &str,
        error_code: Option<i32>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE sms_outbox
                 SET state = 'pending', next_attempt_at = $3, last_error = $4,
                     error_code = $5, claimed_by = NULL, claimed_until = NULL, updated_at = $6
                 WHERE id = $1 AND state = 'sending' AND claimed_by = $2",
                    )
                    .await?,
                &[
                    &id,
                    &claimer,
                    &next_attempt_at,
                    &last_error,
                    &error_code,
                    &now,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// A final failure, with the provider's error code when there is one.
    pub async fn record_sms_failed(
        &self,
        id: i64,
        claimer: &str,
        error_code: Option<i32>,
        last_error: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE sms_outbox
                 SET state = 'failed', body_sealed = NULL, error_code = $3, last_error = $4,
                     claimed_by = NULL, claimed_until = NULL, updated_at = $5
                 WHERE id = $1 AND state = 'sending' AND claimed_by = $2",
                    )
                    .await?,
                &[&id, &claimer, &error_code, &last_error, &now],
            )
            .await?;
        Ok(n == 1)
    }

    /// The content expired before it could be sent: dropped, body erased.
    pub async fn record_sms_expired(
        &self,
        id: i64,
        claimer: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE sms_outbox
                 SET state = 'expired', body_sealed = NULL,
                     claimed_by = NULL, claimed_until = NULL, updated_at = $3
                 WHERE id = $1 AND state = 'sending' AND claimed_by = $2",
                    )
                    .await?,
                &[&id, &claimer, &now],
            )
            .await?;
        Ok(n == 1)
    }

    /// Returns claimed but unsent messages to pending, due at once. `ids` None:
    /// everything `claimer` holds (shutdown). The claim's attempt is given back,
    /// since nothing was sent.
    pub async fn release_sms(
        &self,
        claimer: &str,
        ids: Option<&[i64]>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE sms_outbox
                 SET state = 'pending', attempts = GREATEST(attempts - 1, 0),
                     next_attempt_at = LEAST(next_attempt_at, $3),
                     claimed_by = NULL, claimed_until = NULL, updated_at = $3
                 WHERE state = 'sending' AND claimed_by = $1
                   AND ($2::bigint[] IS NULL OR id = ANY($2))",
                    )
                    .await?,
                &[&claimer, &ids, &now],
            )
            .await?;
        Ok(n)
    }

    /// When the outbox next has work: the earliest due pending message or
    /// expiring claim. None when there is nothing to send.
    pub async fn next_sms_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT LEAST(
                     (SELECT min(next_attempt_at) FROM sms_outbox WHERE state = 'pending'),
                     (SELECT min(claimed_until) FROM sms_outbox WHERE state = 'sending'))",
                    )
                    .await?,
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Messages not yet in a final state (pending or being sent).
    pub async fn outbox_depth(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT count(*) FROM sms_outbox WHERE state IN ('pending', 'sending')",
                    )
                    .await?,
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Applies a delivery status callback. Only moves forward: a status replaces
    /// one of lower rank, so a late `sent` never overwrites `delivered`, a final
    /// status is never replaced, and a repeat changes nothing. Returns whether a
    /// row changed (false: unknown sid, repeat, or out of order).
    pub async fn update_delivery_status(
        &self,
        update: &DeliveryUpdate<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE sms_outbox
                 SET delivery_status = $2, delivery_rank = $3,
                     error_code = COALESCE($4, error_code), updated_at = $5
                 WHERE provider_sid = $1
                   AND (delivery_rank IS NULL OR delivery_rank < $3)",
                    )
                    .await?,
                &[
                    &update.provider_sid,
                    &update.status,
                    &update.rank,
                    &update.error_code,
                    &now,
                ],
            )
            .await?;
        Ok(n == 1)
    }
}
