//! The `otp_codes` table. Issuing is one transaction holding a per-(user,
//! purpose) advisory lock: cooldown check, supersede, insert, and the SMS into
//! the outbox. Checking is one conditional UPDATE per outcome, so concurrent
//! checks, in this process or others, can never consume a code twice or count
//! more wrong tries than allowed.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::outbox::{self, NewSms};
use super::quotas::{self, Quota};
use super::{Store, StoreError};
use crate::crypto::Keys;
use crate::domain::otp::{CodeFacts, CodeState, Purpose};
use crate::domain::phone::PhoneE164;

/// A code to issue. `code` is the clear text, only hashed and sealed here.
pub struct IssueRequest<'a> {
    pub user_id: Uuid,
    pub purpose: Purpose,
    pub flow_id: Option<Uuid>,
    pub code: &'a str,
    pub sms_body: &'a str,
    pub phone: &'a PhoneE164,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_attempts: i32,
    pub cooldown: chrono::Duration,
    /// Send quotas this code counts against (see `store::quotas`).
    pub quotas: &'a [Quota],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    Issued,
    /// The previous code is younger than the cooldown.
    TooSoon {
        retry_after: DateTime<Utc>,
    },
    /// A send quota is spent until `retry_after`; nothing was stored or sent.
    QuotaExceeded {
        quota: String,
        retry_after: DateTime<Utc>,
    },
}

/// The result of checking a submitted code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Right code: it is now used.
    Accepted,
    /// Wrong code; this many tries remain (0: the code is now dead).
    Rejected { attempts_left: u32 },
    /// No code was ever issued for this user and purpose (or flow).
    NoCode,
    /// The newest code cannot be tried: why, in the facts.
    Unusable(CodeFacts),
}

fn lock_key(user_id: &Uuid, purpose: Purpose) -> String {
    format!("otp:{user_id}:{}", purpose.as_str())
}

impl Store {
    /// Issues a code: within one transaction, refuses inside the cooldown,
    /// supersedes the live code, stores the new one's keyed hash, and queues its SMS.
    pub async fn issue_code(
        &self,
        keys: &Keys,
        req: IssueRequest<'_>,
    ) -> Result<IssueOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Serialises issuers of one (user, purpose) across processes; released at commit.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&lock_key(&req.user_id, req.purpose)],
        )
        .await?;
        let last: Option<DateTime<Utc>> = tx
            .query_one(
                "SELECT max(created_at) FROM otp_codes WHERE user_id = $1 AND purpose = $2",
                &[&req.user_id, &req.purpose.as_str()],
            )
            .await?
            .try_get(0)?;
        if let Some(last) = last {
            let retry_after = last + req.cooldown;
            // A clock that went backwards (another process) must not unlock resends.
            if req.now < retry_after {
                return Ok(IssueOutcome::TooSoon { retry_after });
            }
        }
        if let Some((quota, retry_after)) = quotas::take(&tx, req.quotas, req.now).await? {
            // Dropping the transaction rolls the counters back.
            return Ok(IssueOutcome::QuotaExceeded { quota, retry_after });
        }
        tx.execute(
            "UPDATE otp_codes SET state = 'superseded', finished_at = $3
             WHERE user_id = $1 AND purpose = $2 AND state = 'live'",
            &[&req.user_id, &req.purpose.as_str(), &req.now],
        )
        .await?;
        let hash = keys.otp_hash(&req.user_id, req.purpose.as_str(), req.code);
        tx.execute(
            "INSERT INTO otp_codes (id, user_id, purpose, flow_id, code_hash, max_attempts, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &Uuid::new_v4(),
                &req.user_id,
                &req.purpose.as_str(),
                &req.flow_id,
                &hash.as_slice(),
                &req.max_attempts,
                &req.now,
                &req.expires_at,
            ],
        )
        .await?;
        outbox::enqueue(
            &tx,
            keys,
            req.now,
            NewSms {
                to: req.phone,
                body: req.sms_body,
                purpose: req.purpose.as_str(),
                expires_at: Some(req.expires_at),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(IssueOutcome::Issued)
    }

    /// Checks a submitted code against the newest code of (user, purpose), and of
    /// `flow_id` when given. The comparison is in constant time in Rust; the state
    /// change is one conditional UPDATE that re-checks liveness under the row lock.
    pub async fn check_code(
        &self,
        keys: &Keys,
        user_id: Uuid,
        purpose: Purpose,
        flow_id: Option<Uuid>,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<CheckOutcome, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, code_hash, state, attempts, max_attempts, expires_at
                 FROM otp_codes
                 WHERE user_id = $1 AND purpose = $2 AND ($3::uuid IS NULL OR flow_id = $3)
                 ORDER BY created_at DESC, (state = 'live') DESC
                 LIMIT 1",
                &[&user_id, &purpose.as_str(), &flow_id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(CheckOutcome::NoCode);
        };
        let id: Uuid = row.try_get("id")?;
        let stored: Vec<u8> = row.try_get("code_hash")?;
        let facts = facts_from(&row)?;
        if crate::domain::otp::usable(&facts, now).is_err() {
            return Ok(CheckOutcome::Unusable(facts));
        }
        let candidate = keys.otp_hash(&user_id, purpose.as_str(), code);
        if Keys::hashes_equal(&stored, &candidate) {
            let consumed = client
                .query_opt(
                    "UPDATE otp_codes SET state = 'used', finished_at = $2
                     WHERE id = $1 AND state = 'live' AND expires_at > $2 AND attempts < max_attempts
                     RETURNING id",
                    &[&id, &now],
                )
                .await?;
            if consumed.is_some() {
                return Ok(CheckOutcome::Accepted);
            }
        } else {
            let counted = client
                .query_opt(
                    "UPDATE otp_codes
                     SET attempts = attempts + 1,
                         state = CASE WHEN attempts + 1 >= max_attempts THEN 'dead' ELSE 'live' END,
                         finished_at = CASE WHEN attempts + 1 >= max_attempts THEN $2 END
                     WHERE id = $1 AND state = 'live' AND expires_at > $2 AND attempts < max_attempts
                     RETURNING attempts, max_attempts",
                    &[&id, &now],
                )
                .await?;
            if let Some(r) = counted {
                let attempts: i32 = r.try_get(0)?;
                let max: i32 = r.try_get(1)?;
                return Ok(CheckOutcome::Rejected {
                    attempts_left: u32::try_from(max - attempts).unwrap_or(0),
                });
            }
        }
        // Another request changed the code between our read and our update.
        let row = client
            .query_one(
                "SELECT state, attempts, max_attempts, expires_at FROM otp_codes WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(CheckOutcome::Unusable(facts_from(&row)?))
    }

    /// Deletes codes that can no longer matter: expired or finished before `cutoff`.
    pub async fn purge_codes(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM otp_codes WHERE expires_at < $1 OR finished_at < $1",
                &[&cutoff],
            )
            .await?)
    }
}

fn facts_from(row: &tokio_postgres::Row) -> Result<CodeFacts, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(CodeFacts {
        state: CodeState::parse(&state)
            .ok_or_else(|| StoreError::Database(format!("unknown code state {state}").into()))?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        expires_at: row.try_get("expires_at")?,
    })
}
