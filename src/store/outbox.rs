//! The `sms_outbox` table: enqueueing inside the caller's transaction. The SMS
//! actor's claiming and outcome recording live here too (see `actors::sms`), as
//! does the dedicated LISTEN connection that wakes it.
//!
//! Enqueueing sends no `NOTIFY`. PostgreSQL queues a transaction's
//! notifications at commit under one cluster-wide lock held until the commit
//! is durable, so transactions that notify commit one after another, never in
//! a shared WAL flush: with a NOTIFY in every send transaction, every code
//! issued in the cluster waited for every other (`scripts/pgbench/notify.sh`:
//! about a fifth of the throughput of the same INSERT without it). The process
//! that queued a message wakes its own SMS actor after commit instead
//! (`SmsHandle::nudge`); other processes hear [`Store::notify_sms_backlog`],
//! which the actor sends in a transaction of its own only when it claimed a
//! full batch, and the actor's periodic sweep catches anything else.
//!
//! Every outcome is recorded only while the recorder still holds the claim
//! (`state = 'sending' AND claimed_by = $claimer`), so a process whose lease ran
//! out cannot overwrite what the process that reclaimed the message did. The
//! outcomes of many messages are recorded by one statement
//! ([`Store::record_sms_outcomes`]): one commit per batch, not per message.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::{Store, StoreError};
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

/// Inserts a message using the caller's client or transaction. It notifies no
/// one (see the module doc): after commit, the caller wakes its process's SMS
/// actor (`SmsHandle::nudge`).
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

/// What became of one claimed message, for [`Store::record_sms_outcomes`].
/// Each variant keeps the meaning the per-message statements had: a retry or a
/// release keeps the sealed body for the next attempt; sent, failed and
/// expired erase it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsOutcome {
    /// The provider accepted it. The delivery status and rank fill only what no
    /// status callback has set yet (a callback may beat the recording).
    Sent {
        provider_sid: Option<String>,
        delivery_status: Option<String>,
        delivery_rank: Option<i16>,
    },
    /// A transient failure: back to `pending` until `next_attempt_at`.
    Retry {
        next_attempt_at: DateTime<Utc>,
        last_error: String,
        error_code: Option<i32>,
    },
    /// A final failure, with the provider's error code when there is one.
    Failed {
        error_code: Option<i32>,
        last_error: String,
    },
    /// The content expired before it could be sent: dropped.
    Expired,
    /// Never attempted (the actor is stopping, or too little of the claim was
    /// left): back to `pending`, due at once, the claim's attempt given back.
    Released,
}

impl SmsOutcome {
    /// The `kind` column of the recording statement.
    fn kind(&self) -> &'static str {
        match self {
            SmsOutcome::Sent { .. } => "sent",
            SmsOutcome::Retry { .. } => "retry",
            SmsOutcome::Failed { .. } => "failed",
            SmsOutcome::Expired => "expired",
            SmsOutcome::Released => "released",
        }
    }
}

/// Listens for `NOTIFY authgate_outbox` on a dedicated connection (a pooled one
/// would be recycled, silently dropping the LISTEN).
pub struct OutboxListener {
    /// Kept so the connection stays open; dropping it ends the session.
    _client: tokio_postgres::Client,
    /// The payloads: who notified (see [`Store::notify_sms_backlog`]).
    notifications: tokio::sync::mpsc::UnboundedReceiver<String>,
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
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    if tx.send(n.payload().to_owned()).is_err() {
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

    /// The next notification's payload; None once the connection is gone.
    pub async fn next(&mut self) -> Option<String> {
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

impl Store {
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

    /// Records the outcomes of claimed messages, any mix of kinds, in one
    /// statement (one commit however many there are). Each is applied only
    /// while `claimer` still holds the message's claim; returns the ids that
    /// were recorded, so a missing id is a claim lost to another process (whose
    /// work is left as it is). An id must appear at most once.
    pub async fn record_sms_outcomes(
        &self,
        claimer: &str,
        outcomes: &[(i64, SmsOutcome)],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, StoreError> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let n = outcomes.len();
        let mut ids = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut sids: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut statuses: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut ranks: Vec<Option<i16>> = Vec::with_capacity(n);
        let mut next_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
        let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut codes: Vec<Option<i32>> = Vec::with_capacity(n);
        for (id, outcome) in outcomes {
            ids.push(*id);
            kinds.push(outcome.kind());
            let (mut sid, mut status, mut rank, mut at, mut error, mut code) =
                (None, None, None, None, None, None);
            match outcome {
                SmsOutcome::Sent {
                    provider_sid,
                    delivery_status,
                    delivery_rank,
                } => {
                    sid = provider_sid.as_deref();
                    status = delivery_status.as_deref();
                    rank = *delivery_rank;
                }
                SmsOutcome::Retry {
                    next_attempt_at,
                    last_error,
                    error_code,
                } => {
                    at = Some(*next_attempt_at);
                    error = Some(last_error.as_str());
                    code = *error_code;
                }
                SmsOutcome::Failed {
                    error_code,
                    last_error,
                } => {
                    error = Some(last_error.as_str());
                    code = *error_code;
                }
                SmsOutcome::Expired | SmsOutcome::Released => {}
            }
            sids.push(sid);
            statuses.push(status);
            ranks.push(rank);
            next_at.push(at);
            errors.push(error);
            codes.push(code);
        }
        let client = self.client().await?;
        // One row of `r` per outcome, joined to its message by primary key.
        // Each SET column spells out, per kind, what the per-message statement
        // of that kind did; a column a kind does not touch keeps its value.
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "UPDATE sms_outbox o
                 SET state = CASE WHEN r.kind IN ('retry', 'released') THEN 'pending' ELSE r.kind END,
                     body_sealed = CASE WHEN r.kind IN ('retry', 'released') THEN o.body_sealed END,
                     attempts = CASE WHEN r.kind = 'released' THEN GREATEST(o.attempts - 1, 0)
                                     ELSE o.attempts END,
                     next_attempt_at = CASE r.kind WHEN 'retry' THEN r.next_attempt_at
                                                   WHEN 'released' THEN LEAST(o.next_attempt_at, $2)
                                                   ELSE o.next_attempt_at END,
                     provider_sid = CASE WHEN r.kind = 'sent' THEN r.sid ELSE o.provider_sid END,
                     delivery_status = CASE WHEN r.kind = 'sent'
                                            THEN COALESCE(o.delivery_status, r.status)
                                            ELSE o.delivery_status END,
                     delivery_rank = CASE WHEN r.kind = 'sent'
                                          THEN COALESCE(o.delivery_rank, r.rank)
                                          ELSE o.delivery_rank END,
                     last_error = CASE r.kind WHEN 'sent' THEN NULL
                                              WHEN 'retry' THEN r.error
                                              WHEN 'failed' THEN r.error
                                              ELSE o.last_error END,
                     error_code = CASE r.kind WHEN 'sent' THEN NULL
                                              WHEN 'retry' THEN r.code
                                              WHEN 'failed' THEN r.code
                                              ELSE o.error_code END,
                     sent_at = CASE WHEN r.kind = 'sent' THEN $2 ELSE o.sent_at END,
                     claimed_by = NULL, claimed_until = NULL, updated_at = $2
                 FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::smallint[],
                             $8::timestamptz[], $9::text[], $10::integer[])
                      AS r(id, kind, sid, status, rank, next_attempt_at, error, code)
                 WHERE o.id = r.id AND o.state = 'sending' AND o.claimed_by = $1
                 RETURNING o.id",
                    )
                    .await?,
                &[
                    &claimer, &now, &ids, &kinds, &sids, &statuses, &ranks, &next_at, &errors,
                    &codes,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<i64>, _>>()?)
    }

    /// Wakes the SMS actors of every process (this one's too) on
    /// `authgate_outbox`, in a transaction of its own: the actor calls it when it
    /// claimed a full batch, so that idle processes help with the backlog.
    /// `from` (the claimer) is the payload, so the sender can ignore its own.
    pub async fn notify_sms_backlog(&self, from: &str) -> Result<(), StoreError> {
        // No listeners (`DATABASE_LISTEN_URL=off`): the other processes' sweeps
        // find the backlog instead.
        if !self.notify {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                &client.prepare_cached("SELECT pg_notify($1, $2)").await?,
                &[&OUTBOX_CHANNEL, &from],
            )
            .await?;
        Ok(())
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
