//! The `otp_codes` table. Issuing is one transaction holding a per-(user,
//! purpose) advisory lock: cooldown check, supersede, insert, and the SMS into
//! the outbox. Checking is one statement that finds the newest code and consumes
//! it or counts the wrong try under the row lock, so concurrent checks, in this
//! process or others, can never consume a code twice or count more wrong tries
//! than allowed.
//!
//! The same statement keeps the account's count of wrong codes in a row (every
//! purpose and flow) under the user row's lock, and locks code entry when it
//! reaches the ceiling: a code's own tries bound one code, this bounds the
//! account however many codes resends and new flows bring.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::audit::AuditEntry;
use super::outbox::{self, NewSms};
use super::quotas::{self, Quota};
use super::users::{user_from_row, AccountChange, USER_COLUMNS};
use super::{Store, StoreError};
use crate::crypto::Keys;
use crate::domain::otp::{CodeFacts, CodeState, Purpose};
use crate::domain::phone::PhoneE164;
use crate::domain::user::User;

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
    /// Code entry is locked for the account (too many wrong codes) until then;
    /// no code is sent while none could be entered.
    Locked {
        until: DateTime<Utc>,
    },
}

/// The account-wide ceiling on wrong codes in a row (`QuotaConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodeGuard {
    /// Wrong codes in a row that lock code entry.
    pub max_failures: i32,
    /// The first lock; each further lock without a right code in between
    /// doubles, up to `lock_max`.
    pub lock_base: std::time::Duration,
    pub lock_max: std::time::Duration,
}

/// What a right code confirms: applied in the check's own statement.
pub struct OnAccept<'a> {
    pub change: AccountChange,
    pub audit: AuditEntry<'a>,
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
    /// Code entry is locked for the account until `until`: nothing was
    /// compared. `by_this_try`: this wrong code reached the ceiling.
    Locked {
        until: DateTime<Utc>,
        by_this_try: bool,
    },
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
            &tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .await?,
            &[&lock_key(&req.user_id, req.purpose)],
        )
        .await?;
        let row = tx
            .query_one(
                &tx.prepare_cached(
                    "SELECT (SELECT max(created_at) FROM otp_codes WHERE user_id = $1 AND purpose = $2),
                            (SELECT code_locked_until FROM users WHERE id = $1)",
                )
                .await?,
                &[&req.user_id, &req.purpose.as_str()],
            )
            .await?;
        let last: Option<DateTime<Utc>> = row.try_get(0)?;
        let locked_until: Option<DateTime<Utc>> = row.try_get(1)?;
        // Before the quotas: a locked account costs no SMS and no quota. (A lock
        // taken while this runs is harmless: the code could not be entered.)
        if let Some(until) = locked_until.filter(|u| *u > req.now) {
            return Ok(IssueOutcome::Locked { until });
        }
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
            &tx.prepare_cached(
                "UPDATE otp_codes SET state = 'superseded', finished_at = $3
             WHERE user_id = $1 AND purpose = $2 AND state = 'live'",
            )
            .await?,
            &[&req.user_id, &req.purpose.as_str(), &req.now],
        )
        .await?;
        let hash = keys.otp_hash(&req.user_id, req.purpose.as_str(), req.code);
        tx.execute(
            &tx.prepare_cached("INSERT INTO otp_codes (id, user_id, purpose, flow_id, code_hash, max_attempts, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)").await?,
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
    /// `flow_id` when given, in one statement: it finds the newest code and, if
    /// it is live, either consumes it (right code) or counts a wrong try, under
    /// the row lock, so concurrent checks in any process can neither use a code
    /// twice nor count more tries than allowed.
    ///
    /// The statement first takes the user row's lock and reads the account's
    /// code lock: while locked, nothing is compared. A wrong code counts toward
    /// `guard.max_failures` and a right one resets the count, in that same
    /// statement, so parallel wrong codes for one account, over any codes and
    /// processes, are compared at most up to the ceiling.
    ///
    /// With `on_accept`, a right code also applies the account change it
    /// confirms and records its audit event in that same statement: one round
    /// trip and one commit, and the change exists exactly when the code was used
    /// (a crash cannot leave a used code without its effect). The user, as
    /// changed, is returned then (`None` if the change's guard refused, e.g. 2FA
    /// on without a verified phone).
    ///
    /// The comparison PostgreSQL makes is between two keyed hashes: the submitted
    /// code is hashed with the server's OTP key here first. Its timing can at most
    /// tell how many leading bytes of two MACs the caller cannot compute agree,
    /// which says nothing about the code (the "double HMAC" argument), and every
    /// comparison costs one of the code's few tries.
    #[allow(clippy::too_many_arguments)]
    pub async fn check_code(
        &self,
        keys: &Keys,
        user_id: Uuid,
        purpose: Purpose,
        flow_id: Option<Uuid>,
        code: &str,
        now: DateTime<Utc>,
        guard: CodeGuard,
        on_accept: Option<&OnAccept<'_>>,
    ) -> Result<(CheckOutcome, Option<User>), StoreError> {
        let candidate = keys.otp_hash(&user_id, purpose.as_str(), code);
        let client = self.client().await?;
        let (ip, user_agent) =
            on_accept.map_or((None, None), |a| (a.audit.ip(), a.audit.user_agent()));
        let kind = on_accept.map(|a| a.audit.kind);
        let detail = on_accept.map(|a| a.audit.detail);
        let (purpose_str, hash) = (purpose.as_str(), candidate.as_slice());
        let (lock_base, lock_max) = (guard.lock_base.as_secs_f64(), guard.lock_max.as_secs_f64());
        let base: [&(dyn ToSql + Sync); 8] = [
            &user_id,
            &purpose_str,
            &flow_id,
            &hash,
            &now,
            &guard.max_failures,
            &lock_base,
            &lock_max,
        ];
        let effect: [&(dyn ToSql + Sync); 4] = [&kind, &ip, &user_agent, &detail];
        let params: Vec<&(dyn ToSql + Sync)> = match on_accept {
            Some(_) => base.iter().chain(&effect).copied().collect(),
            None => base.to_vec(),
        };
        let sql = check_sql(on_accept.map(|a| a.change));
        let row = client
            .query_opt(&client.prepare_cached(&sql).await?, &params)
            .await?;
        let Some(row) = row else {
            return Ok((CheckOutcome::NoCode, None));
        };
        let new_state: Option<String> = row.try_get("new_state")?;
        if let Some(new_state) = new_state {
            if new_state == "used" {
                let changed: Option<Uuid> = match on_accept {
                    Some(_) => row.try_get("id")?,
                    None => None,
                };
                let user = match changed {
                    Some(_) => Some(user_from_row(&row)?),
                    None => None,
                };
                return Ok((CheckOutcome::Accepted, user));
            }
            // The lock was open when this try was compared: a lock in the
            // future now is the one this wrong code started.
            let locked_after: Option<DateTime<Utc>> = row.try_get("locked_after")?;
            if let Some(until) = locked_after.filter(|u| *u > now) {
                return Ok((
                    CheckOutcome::Locked {
                        until,
                        by_this_try: true,
                    },
                    None,
                ));
            }
            let attempts: i32 = row.try_get("new_attempts")?;
            let max: i32 = row.try_get("max_attempts")?;
            let attempts_left = u32::try_from(max - attempts).unwrap_or(0);
            return Ok((CheckOutcome::Rejected { attempts_left }, None));
        }
        let locked_before: Option<DateTime<Utc>> = row.try_get("locked_before")?;
        if let Some(until) = locked_before.filter(|u| *u > now) {
            return Ok((
                CheckOutcome::Locked {
                    until,
                    by_this_try: false,
                },
                None,
            ));
        }
        let id: Option<Uuid> = row.try_get("code_id")?;
        let Some(id) = id else {
            return Ok((CheckOutcome::NoCode, None));
        };
        let facts = facts_from(&row)?;
        if crate::domain::otp::usable(&facts, now).is_err() {
            return Ok((CheckOutcome::Unusable(facts), None));
        }
        // Live in our snapshot, yet not updatable: another check changed it
        // after the snapshot was taken. Its current state is the answer.
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT state, attempts, max_attempts, expires_at FROM otp_codes WHERE id = $1",
                    )
                    .await?,
                &[&id],
            )
            .await?;
        Ok((CheckOutcome::Unusable(facts_from(&row)?), None))
    }

    /// Deletes codes that can no longer matter: expired or finished before `cutoff`.
    pub async fn purge_codes(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                &client
                    .prepare_cached(
                        "DELETE FROM otp_codes WHERE expires_at < $1 OR finished_at < $1",
                    )
                    .await?,
                &[&cutoff],
            )
            .await?)
    }
}

/// The check statement: lock the user row and read its code lock, find the
/// newest code, try it unless locked, count the outcome on the account, and
/// (with a change) apply the change and its audit event when the code was
/// right. Parameters: $1 user, $2 purpose, $3 flow or NULL, $4 the candidate's
/// keyed hash, $5 now, $6 wrong codes in a row that lock, $7 and $8 the first
/// and the longest lock in seconds; with a change also $9 audit kind, $10 IP,
/// $11 user agent, $12 detail.
///
/// Why it holds under concurrency: `gate` is `FOR UPDATE`, so a second check of
/// the same account waits there and then reads the row as the first left it
/// (READ COMMITTED re-reads a row it waited for); `tried` joins `gate`, so no code
/// is compared before that lock is held; `settled` updates that same locked row.
/// The users row is updated once (a statement cannot update a row twice), so
/// the confirmed change rides on the counter's update.
fn check_sql(change: Option<AccountChange>) -> String {
    let (change_set, applied, effect, columns) = match change {
        Some(change) => {
            let (column, value, guard) = change.sql();
            let when = format!("tried.new_state = 'used' AND {guard}");
            (
                format!(
                    ", {column} = CASE WHEN {when} THEN {value} ELSE u.{column} END,
                       updated_at = CASE WHEN {when} THEN $5 ELSE u.updated_at END"
                ),
                // The guard reads a column the change does not write, so it is
                // the same before and after the update.
                format!(", ({when}) AS applied, {}", qualified_user_columns()),
                format!(
                    ", changed AS (
                         SELECT {USER_COLUMNS} FROM settled WHERE applied
                     ), logged AS (
                         INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
                         SELECT id, $9, $10::text::inet, $11, $12, $5 FROM changed
                     )"
                ),
                ", changed.*",
            )
        }
        None => (String::new(), String::new(), String::new(), ""),
    };
    let join = if change.is_some() {
        " LEFT JOIN changed ON true"
    } else {
        ""
    };
    format!(
        "WITH gate AS (
             SELECT code_locked_until FROM users WHERE id = $1 FOR UPDATE
         ), latest AS (
             SELECT id, state, attempts, max_attempts, expires_at
             FROM otp_codes
             WHERE user_id = $1 AND purpose = $2 AND ($3::uuid IS NULL OR flow_id = $3)
             ORDER BY created_at DESC, (state = 'live') DESC
             LIMIT 1
         ), tried AS (
             UPDATE otp_codes c
             SET attempts = c.attempts + CASE WHEN c.code_hash = $4 THEN 0 ELSE 1 END,
                 state = CASE WHEN c.code_hash = $4 THEN 'used'
                              WHEN c.attempts + 1 >= c.max_attempts THEN 'dead'
                              ELSE 'live' END,
                 finished_at = CASE WHEN c.code_hash = $4 OR c.attempts + 1 >= c.max_attempts
                                    THEN $5 END
             FROM latest, gate
             WHERE c.id = latest.id AND c.state = 'live' AND c.expires_at > $5
               AND c.attempts < c.max_attempts
               AND (gate.code_locked_until IS NULL OR gate.code_locked_until <= $5)
             RETURNING c.state AS new_state, c.attempts AS new_attempts
         ), settled AS (
             UPDATE users u
             SET code_failures = CASE WHEN tried.new_state = 'used' OR u.code_failures + 1 >= $6
                                      THEN 0 ELSE u.code_failures + 1 END,
                 code_locks = CASE WHEN tried.new_state = 'used' THEN 0
                                   WHEN u.code_failures + 1 >= $6 THEN u.code_locks + 1
                                   ELSE u.code_locks END,
                 code_locked_until = CASE
                     WHEN tried.new_state = 'used' THEN NULL
                     WHEN u.code_failures + 1 >= $6 THEN $5 + make_interval(secs => LEAST(
                         $7::float8 * power(2::float8, LEAST(u.code_locks, 30)::float8),
                         $8::float8))
                     ELSE u.code_locked_until END{change_set}
             FROM tried
             WHERE u.id = $1
             RETURNING u.code_locked_until AS locked_after{applied}
         ){effect}
         SELECT gate.code_locked_until AS locked_before, settled.locked_after,
                latest.id AS code_id, latest.state, latest.attempts, latest.max_attempts,
                latest.expires_at, tried.new_state, tried.new_attempts{columns}
         FROM gate LEFT JOIN latest ON true LEFT JOIN tried ON true
              LEFT JOIN settled ON true{join}"
    )
}

/// `USER_COLUMNS` as the `u` of the settle statement (`tried` has no such
/// names, but being explicit keeps it so).
fn qualified_user_columns() -> String {
    USER_COLUMNS
        .split(',')
        .map(|c| format!("u.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
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
