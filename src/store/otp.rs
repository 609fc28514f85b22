//! The `otp_codes` table. Issuing is one transaction holding a per-(user,
//! purpose) lock (advisory, or a `lock_rows` row: `store::LockMode`): cooldown check, supersede, insert, and the SMS into
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
use super::quotas::{self, Quota};
use super::users::{user_from_row, AccountChange, USER_COLUMNS};
use super::{LockKey, Store, StoreError};
use crate::audit::ClientInfo;
use crate::crypto::{Keys, OutboxRow};
use crate::domain::otp::{CodeFacts, CodeState, Purpose};
use crate::domain::phone::PhoneE164;
use crate::domain::sms_text::Locale;
use crate::domain::user::User;

/// A code to issue. `code` is the clear text, only hashed and sealed here.
pub struct IssueRequest<'a> {
    pub user_id: Uuid,
    pub purpose: Purpose,
    pub flow_id: Option<Uuid>,
    pub code: &'a str,
    /// The SMS in each shipped language: the statement sends the account's
    /// (`users.locale`), English if it has none.
    pub sms_bodies: &'a [(Locale, String)],
    pub phone: &'a PhoneE164,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_attempts: i32,
    pub cooldown: chrono::Duration,
    /// Per-subject send quotas (phone, account), counted in the issue
    /// statement (see `store::quotas`).
    pub quotas: &'a [Quota],
    /// Quotas every send in the cluster shares (global, region), taken in
    /// blocks (see `store::reserved`).
    pub shared: &'a [Quota],
    /// The `code_sent` event, recorded in the same commit.
    pub audit: AuditEntry<'a>,
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
    /// With an applied change, the account's recovery codes become exactly
    /// these keyed hashes (`Keys::recovery_hash`), in the same statement: a
    /// new set when 2FA turns on, an empty one when it turns off.
    pub recovery_set: Option<&'a [Vec<u8>]>,
    /// The change's own parameter (`$14`), for the changes that bind one.
    pub bound: Option<&'a str>,
    /// For a change that ends the other sessions: the caller's, which goes
    /// on (`None`: every session ends and every access token issued so far
    /// is fenced).
    pub keep: Option<Uuid>,
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
    /// Issues a code in one transaction and one commit: after the (user,
    /// purpose) lock, one statement refuses while code entry is locked or inside
    /// the cooldown, counts the per-subject quotas, and, when everything
    /// admits, supersedes the live code, stores the new one's keyed hash, queues
    /// its SMS and records the audit event. Units of the shared quotas come from
    /// this process's blocks (`store::reserved`), taken before the transaction so
    /// no row every sender shares is locked until a commit.
    ///
    /// Round trips: a new block now and then, `BEGIN`, the lock and the
    /// statement pipelined together, and `COMMIT` (or `ROLLBACK` when refused,
    /// undoing the counts).
    pub async fn issue_code(
        &self,
        keys: &Keys,
        req: IssueRequest<'_>,
    ) -> Result<IssueOutcome, StoreError> {
        let mut client = self.client().await?;
        // Shared quotas first, each unit taken in its own short statement. A
        // refusal is reported only if nothing checked before it refuses (the
        // order of the old single transaction: lock, cooldown, own quotas, shared).
        let mut units = Vec::new();
        let mut shared_refusal = None;
        for q in req.shared {
            match self.take_unit(&client, q, req.now).await {
                Ok(Ok(unit)) => units.push(unit),
                Ok(Err(refusal)) => {
                    shared_refusal = Some(refusal);
                    break;
                }
                Err(e) => {
                    self.release_units(units);
                    return Err(e);
                }
            }
        }
        let verdict = self
            .issue_in_tx(&mut client, keys, &req, shared_refusal.is_none())
            .await;
        let outcome = match verdict {
            Ok(Verdict::Done(outcome)) => outcome,
            Ok(Verdict::SharedRefused) => match shared_refusal {
                Some(r) => IssueOutcome::QuotaExceeded {
                    quota: r.key,
                    retry_after: r.retry_after,
                },
                None => {
                    self.release_units(units);
                    return Err(StoreError::Database(
                        "issue refused for a shared quota that admitted".into(),
                    ));
                }
            },
            Err(e) => {
                self.release_units(units);
                return Err(e);
            }
        };
        if outcome != IssueOutcome::Issued {
            self.release_units(units);
        }
        Ok(outcome)
    }

    fn release_units(&self, units: Vec<super::reserved::Unit>) {
        for unit in units {
            self.release_unit(unit);
        }
    }

    /// The transaction of [`Store::issue_code`]. `shared_ok`: every shared
    /// quota gave a unit; if not, nothing is written and the verdict says so
    /// unless something checked earlier refused first.
    async fn issue_in_tx(
        &self,
        client: &mut deadpool_postgres::Object,
        keys: &Keys,
        req: &IssueRequest<'_>,
        shared_ok: bool,
    ) -> Result<Verdict, StoreError> {
        let hash = keys.otp_hash(&req.user_id, req.purpose.as_str(), req.code);
        let outbox_id = self.outbox_id(&*client).await?;
        let row = OutboxRow {
            id: outbox_id,
            recipient: req.phone.as_str(),
        };
        let sealed: Vec<Vec<u8>> = req
            .sms_bodies
            .iter()
            .map(|(_, body)| keys.seal(body, row))
            .collect();
        let locales: Vec<&str> = req.sms_bodies.iter().map(|(l, _)| l.as_str()).collect();
        let q = req.quotas;
        let q_keys: Vec<&str> = q.iter().map(|q| q.key.as_str()).collect();
        let windows: Vec<quotas::Windows> = q.iter().map(|q| q.windows(req.now)).collect();
        let starts: Vec<DateTime<Utc>> = windows.iter().map(|w| w.start).collect();
        let previous_starts: Vec<DateTime<Utc>> =
            windows.iter().map(|w| w.previous_start).collect();
        let expires: Vec<DateTime<Utc>> = windows.iter().map(|w| w.expires_at).collect();
        let limits: Vec<i32> = q.iter().map(|q| q.limit).collect();
        let fractions: Vec<f64> = q
            .iter()
            .zip(&starts)
            .map(|(q, s)| quotas::elapsed_fraction(req.now, *s, q.window))
            .collect();
        let cooldown = req.cooldown.num_milliseconds() as f64 / 1000.0;
        let (purpose, hash) = (req.purpose.as_str(), hash.as_slice());
        let (ip, user_agent) = (req.audit.ip(), req.audit.user_agent());
        // A phone-change code is bound to the number it is sent to.
        let target_phone = (req.purpose == Purpose::PhoneChange).then(|| req.phone.as_str());
        let params: [&(dyn ToSql + Sync); 25] = [
            &req.user_id,
            &purpose,
            &req.flow_id,
            &hash,
            &req.max_attempts,
            &req.now,
            &req.expires_at,
            &cooldown,
            &Uuid::new_v4(),
            &q_keys,
            &starts,
            &previous_starts,
            &expires,
            &limits,
            &fractions,
            &outbox_id,
            &req.phone.as_str(),
            &sealed,
            &shared_ok,
            &req.audit.kind,
            &ip,
            &user_agent,
            req.audit.detail,
            &target_phone,
            &locales,
        ];
        let tx = client.transaction().await?;
        let key = lock_key(&req.user_id, req.purpose);
        let lock = self.prepare_lock(&tx, LockKey::Hashed(&key)).await?;
        let issue = tx.prepare_cached(ISSUE_SQL).await?;
        // Pipelined: sent together, run in order. The statement's snapshot is
        // taken after the lock is held, so it sees every earlier issuer's code.
        let (_, row) = futures::try_join!(lock.take(&tx), async {
            tx.query_one(&issue, &params)
                .await
                .map_err(StoreError::from)
        })?;
        let verdict: String = row.try_get("verdict")?;
        let done = |outcome| Ok(Verdict::Done(outcome));
        match verdict.as_str() {
            "issued" => {
                let written: i64 = row.try_get("written")?;
                if written != 2 {
                    return Err(StoreError::Database(
                        format!("issue wrote {written} of its SMS and audit rows").into(),
                    ));
                }
                tx.commit().await?;
                done(IssueOutcome::Issued)
            }
            // Dropping the transaction rolls back whatever was counted.
            "locked" => done(IssueOutcome::Locked {
                until: row.try_get("locked_until")?,
            }),
            "too_soon" => {
                let last: DateTime<Utc> = row.try_get("last_issued")?;
                done(IssueOutcome::TooSoon {
                    retry_after: last + req.cooldown,
                })
            }
            "quota" => {
                let current: Vec<i32> = row.try_get("currents")?;
                let previous: Vec<i32> = row.try_get("previouses")?;
                for (i, q) in q.iter().enumerate() {
                    let (c, p) = (current[i], previous[i]);
                    if !quotas::sliding_admits(p, c, fractions[i], q.limit) {
                        let retry = quotas::sliding_retry_at(p, c, q.limit, starts[i], q.window);
                        return done(IssueOutcome::QuotaExceeded {
                            quota: q.key.clone(),
                            retry_after: retry.max(req.now),
                        });
                    }
                }
                Err(StoreError::Database(
                    "a quota refused in SQL admits in Rust".into(),
                ))
            }
            "shared" => Ok(Verdict::SharedRefused),
            other => Err(StoreError::Database(
                format!("unknown issue verdict {other}").into(),
            )),
        }
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
        client_info: &ClientInfo,
        on_accept: Option<&OnAccept<'_>>,
    ) -> Result<(CheckOutcome, Option<User>), StoreError> {
        // One candidate per accepted code key: a code issued before a rotation
        // (or by a process that has not seen it) still matches.
        let candidates = keys.otp_hashes(&user_id, purpose.as_str(), code);
        let client = self.client().await?;
        // A wrong code's events carry who asked, the purpose and the flow.
        let asker = AuditEntry {
            kind: "code_failed",
            client: client_info,
            detail: &serde_json::Value::Null,
        };
        let (ip, user_agent) = (asker.ip(), asker.user_agent());
        let mut failed = serde_json::json!({ "purpose": purpose.as_str() });
        if let Some(flow_id) = flow_id {
            failed["flowId"] = serde_json::json!(flow_id);
        }
        let kind = on_accept.map(|a| a.audit.kind);
        let detail = on_accept.map(|a| a.audit.detail);
        let (purpose_str, hash) = (purpose.as_str(), &candidates);
        let (lock_base, lock_max) = (guard.lock_base.as_secs_f64(), guard.lock_max.as_secs_f64());
        let base: [&(dyn ToSql + Sync); 11] = [
            &user_id,
            &purpose_str,
            &flow_id,
            &hash,
            &now,
            &guard.max_failures,
            &lock_base,
            &lock_max,
            &ip,
            &user_agent,
            &failed,
        ];
        let bound = on_accept.and_then(|a| a.bound);
        let recovery_set = on_accept.and_then(|a| a.recovery_set);
        let effect: [&(dyn ToSql + Sync); 3] = [&kind, &detail, &bound];
        // A change that ends sessions tells the other processes (NULL: no one listens).
        let channel = self.notify_channel(super::tokens::REVOCATION_CHANNEL);
        let mut params: Vec<&(dyn ToSql + Sync)> = match on_accept {
            Some(a) if a.change.sql().binds => base.iter().chain(&effect).copied().collect(),
            Some(_) => base.iter().chain(&effect[..2]).copied().collect(),
            None => base.to_vec(),
        };
        let ends_sessions = on_accept.is_some_and(|a| a.change.sql().ends_other_sessions);
        let channel_at = ends_sessions.then(|| {
            params.push(&channel);
            params.len()
        });
        let keep = on_accept.and_then(|a| a.keep);
        let keep_at = ends_sessions.then(|| {
            params.push(&keep);
            params.len()
        });
        // The recovery set is the statement's last parameter, whichever came before.
        let recovery_at = recovery_set.map(|_| params.len() + 1);
        if let Some(set) = &recovery_set {
            params.push(set);
        }
        let sql = check_sql(
            on_accept.map(|a| a.change),
            channel_at,
            keep_at,
            recovery_at,
        );
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

/// What the issue transaction decided.
enum Verdict {
    Done(IssueOutcome),
    /// Everything else admitted; a shared quota had refused beforehand.
    SharedRefused,
}

/// The issue statement, run under the (user, purpose) lock. Parameters: $1
/// user, $2 purpose, $3 flow or NULL, $4 the code's keyed hash, $5 its tries,
/// $6 now, $7 its expiry, $8 the cooldown in seconds, $9 the new code's id;
/// per-subject quotas as arrays: $10 keys, $11 window starts, $12 previous
/// window starts, $13 counter expiries, $14 limits, $15 how far into its window
/// now is; the SMS: $16 outbox id, $17 recipient, $18 the sealed body in each
/// language of $25 (the account's `locale` picks one); $19 the shared quotas
/// gave their units; the audit event: $20 kind, $21 IP, $22 user agent, $23
/// detail; $24 the number a phone-change code is bound to, or NULL.
///
/// The verdict is, in this order: `locked` (code entry locked: nothing counted),
/// `too_soon` (inside the cooldown of a code still live: a used, dead or expired
/// code delays nothing, so a second login right after a finished one gets its
/// code; nothing counted), `quota` (a per-subject
/// quota refused: the caller rolls the counts back), `shared`, or `issued`
/// (everything written). Data-modifying CTEs share one snapshot and run in an
/// order PostgreSQL chooses, except that a CTE runs before one that reads it:
/// `inserted` reads `superseded`, so the old live code is out of the one-live
/// index before the new one goes in.
const ISSUE_SQL: &str = "WITH seen AS (
        SELECT (SELECT code_locked_until FROM users WHERE id = $1) AS locked_until,
               (SELECT max(created_at) FROM otp_codes
                WHERE user_id = $1 AND purpose = $2 AND state = 'live' AND expires_at > $6) AS last_issued
    ), gate AS (
        SELECT CASE WHEN locked_until > $6 THEN 'locked'
                    WHEN last_issued + make_interval(secs => $8) > $6 THEN 'too_soon'
                    ELSE 'open' END AS state
        FROM seen
    ), q AS (
        SELECT * FROM unnest($10::text[], $11::timestamptz[], $12::timestamptz[],
                             $13::timestamptz[], $14::int[], $15::float8[])
                 WITH ORDINALITY AS q(key, window_start, previous_start, expires_at, lim, fraction, ord)
    ), counted AS (
        INSERT INTO quota_counters (key, window_start, count, expires_at)
        SELECT key, window_start, 1, expires_at FROM q WHERE (SELECT state FROM gate) = 'open'
        ON CONFLICT (key, window_start) DO UPDATE SET count = quota_counters.count + 1
        RETURNING key, count
    ), judged AS (
        SELECT q.ord, counted.count AS current, COALESCE(p.count, 0) AS previous,
               COALESCE(p.count, 0) * (1 - q.fraction) + counted.count <= q.lim AS admits
        FROM q JOIN counted ON counted.key = q.key
        LEFT JOIN quota_counters p ON p.key = q.key AND p.window_start = q.previous_start
    ), verdict AS (
        SELECT CASE WHEN g.state <> 'open' THEN g.state
                    WHEN NOT (SELECT COALESCE(bool_and(admits), true) FROM judged) THEN 'quota'
                    WHEN NOT $19::bool THEN 'shared'
                    ELSE 'issued' END AS v
        FROM gate g
    ), superseded AS (
        UPDATE otp_codes SET state = 'superseded', finished_at = $6
        WHERE user_id = $1 AND purpose = $2 AND state = 'live'
          AND (SELECT v FROM verdict) = 'issued'
        RETURNING id
    ), inserted AS (
        INSERT INTO otp_codes (id, user_id, purpose, flow_id, code_hash, max_attempts, created_at, expires_at,
                               target_phone)
        SELECT $9, $1, $2, $3, $4, $5, $6, $7, $24
        WHERE (SELECT v FROM verdict) = 'issued' AND (SELECT count(*) FROM superseded) >= 0
        RETURNING id
    ), queued AS (
        INSERT INTO sms_outbox (id, recipient, body_sealed, purpose, expires_at, next_attempt_at, created_at, updated_at)
        SELECT $16, $17,
               ($18::bytea[])[coalesce(array_position($25::text[],
                                               (SELECT locale FROM users WHERE id = $1)),
                                       array_position($25::text[], 'en'))],
               $2, $7, $6, $6, $6
        FROM inserted
        RETURNING id
    ), logged AS (
        INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
        SELECT $1, $20, $21::text::inet, $22, $23, $6 FROM inserted
        RETURNING id
    )
    SELECT v.v AS verdict, s.locked_until, s.last_issued,
           (SELECT array_agg(current ORDER BY ord) FROM judged) AS currents,
           (SELECT array_agg(previous ORDER BY ord) FROM judged) AS previouses,
           (SELECT count(*) FROM queued) + (SELECT count(*) FROM logged) AS written
    FROM verdict v, seen s";

/// The check statement: lock the user row and read its code lock, find the
/// newest code, try it unless locked, count the outcome on the account, record
/// a wrong code's events, and (with a change) apply the change and its audit
/// event when the code was right: one statement, one commit. Parameters: $1
/// user, $2 purpose, $3 flow or NULL, $4 the candidate's keyed hashes (one per
/// accepted code key), $5 now, $6
/// wrong codes in a row that lock, $7 and $8 the first and the longest lock in
/// seconds, $9 the asker's IP, $10 user agent, $11 the detail of a wrong code's
/// event (purpose, flow); with a change also $12 its audit kind and $13 detail,
/// and for some changes $14 (`AccountChange::sql`); then, for a change that
/// ends the other sessions, the revocation channel at `channel_at` (NULL: no
/// notification) and the session to keep at `keep_at` (NULL: none, and every
/// access token issued so far is fenced).
///
/// Why it holds under concurrency: `gate` is `FOR UPDATE`, so a second check of
/// the same account waits there and then reads the row as the first left it
/// (READ COMMITTED re-reads a row it waited for); `tried` joins `gate`, so no code
/// is compared before that lock is held; `settled` updates that same locked row.
/// The users row is updated once (a statement cannot update a row twice), so
/// the confirmed change rides on the counter's update.
///
/// With `recovery_at` (and a change), that parameter is an array of keyed
/// hashes: when the change applied, the account's recovery codes are replaced
/// by them, under the row lock `gate` holds, in this same commit.
fn check_sql(
    change: Option<AccountChange>,
    channel_at: Option<usize>,
    keep_at: Option<usize>,
    recovery_at: Option<usize>,
) -> String {
    let (change_set, applied, effect, columns) = match change {
        Some(change) => {
            let c = change.sql();
            let when = format!("tried.new_state = 'used' AND {}", c.guard);
            // Keeping no session fences every access token issued until now,
            // as `Store::revoke_other_sessions` does.
            let fence = keep_at.map(|at| {
                (
                    "tokens_valid_after",
                    format!(
                        "CASE WHEN ${at}::uuid IS NULL THEN greatest(u.tokens_valid_after, $5)
                              ELSE u.tokens_valid_after END"
                    ),
                )
            });
            let sets: String = c
                .sets
                .iter()
                .map(|(column, value)| (*column, (*value).to_owned()))
                .chain(fence)
                .map(|(column, value)| {
                    format!(", {column} = CASE WHEN {when} THEN {value} ELSE u.{column} END")
                })
                .collect();
            let ends = match (keep_at, channel_at) {
                (Some(keep), Some(channel)) => ends_other_sessions(keep, channel),
                _ => String::new(),
            };
            (
                format!(
                    "{sets},
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
                         SELECT id, $12, $9::text::inet, $10, {}, $5 FROM changed
                     ){}",
                    c.detail,
                    c.effect.to_owned() + &ends
                ),
                // A CTE that only reads runs only if read.
                if ends.is_empty() {
                    ", changed.*".to_owned()
                } else {
                    ", changed.*, (SELECT count(*) FROM told_ended) AS told_ended".to_owned()
                },
            )
        }
        None => (String::new(), String::new(), String::new(), String::new()),
    };
    let effect = if let (Some(_), Some(at)) = (change, recovery_at) {
        format!(
            "{effect}, recovery_gone AS (
                 DELETE FROM recovery_codes WHERE user_id IN (SELECT id FROM changed)
             ), recovery_new AS (
                 INSERT INTO recovery_codes (user_id, code_hash, created_at)
                 SELECT changed.id, h, $5 FROM changed, unnest(${at}::bytea[]) AS h
             )"
        )
    } else {
        effect
    };
    let join = if change.is_some() {
        " LEFT JOIN changed ON true"
    } else {
        ""
    };
    format!(
        "WITH gate AS (
             SELECT code_locked_until, phone AS old_phone FROM users WHERE id = $1 FOR UPDATE
         ), latest AS (
             SELECT id, state, attempts, max_attempts, expires_at
             FROM otp_codes
             WHERE user_id = $1 AND purpose = $2 AND ($3::uuid IS NULL OR flow_id = $3)
             ORDER BY created_at DESC, (state = 'live') DESC
             LIMIT 1
         ), tried AS (
             UPDATE otp_codes c
             SET attempts = c.attempts + CASE WHEN c.code_hash = ANY($4) THEN 0 ELSE 1 END,
                 state = CASE WHEN c.code_hash = ANY($4) THEN 'used'
                              WHEN c.attempts + 1 >= c.max_attempts THEN 'dead'
                              ELSE 'live' END,
                 finished_at = CASE WHEN c.code_hash = ANY($4) OR c.attempts + 1 >= c.max_attempts
                                    THEN $5 END
             FROM latest, gate
             WHERE c.id = latest.id AND c.state = 'live' AND c.expires_at > $5
               AND c.attempts < c.max_attempts
               AND (gate.code_locked_until IS NULL OR gate.code_locked_until <= $5)
             RETURNING c.state AS new_state, c.attempts AS new_attempts,
                       c.max_attempts AS new_max_attempts, c.target_phone
         ), settled AS (
             UPDATE users u
             SET {SETTLE_CODE_GUARD}{change_set}
             FROM tried
             WHERE u.id = $1
             RETURNING u.code_locked_until AS locked_after{applied}
         ), failed AS (
             INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
             SELECT $1, e.kind, $9::text::inet, $10, e.detail, $5
             FROM tried, settled, LATERAL (VALUES
                 ('code_failed',
                  $11::jsonb || jsonb_build_object('attemptsLeft',
                      GREATEST(tried.new_max_attempts - tried.new_attempts, 0)),
                  true),
                 ('locked_out',
                  jsonb_build_object('what', 'code_entry', 'purpose', $2::text, 'until',
                      to_char(settled.locked_after AT TIME ZONE 'UTC',
                              'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')),
                  settled.locked_after IS NOT NULL AND settled.locked_after > $5)
             ) AS e(kind, detail, wanted)
             WHERE tried.new_state <> 'used' AND e.wanted
             RETURNING id
         ){effect}
         SELECT gate.code_locked_until AS locked_before, settled.locked_after,
                latest.id AS code_id, latest.state, latest.attempts, latest.max_attempts,
                latest.expires_at, tried.new_state, tried.new_attempts,
                (SELECT count(*) FROM failed) AS failed_events{columns}
         FROM gate LEFT JOIN latest ON true LEFT JOIN tried ON true
              LEFT JOIN settled ON true{join}"
    )
}

/// The CTEs that end every other session of the changed account (all but
/// `$keep`) in the check's statement, and tell the other processes
/// (`$channel`, NULL when nobody listens) only when a session or refresh
/// token ended or every token was fenced: a NOTIFY makes PostgreSQL commit
/// the transaction in line with every other notifying one, and a change of an
/// account with no other session, the common case, changes nothing another
/// process caches.
fn ends_other_sessions(keep: usize, channel: usize) -> String {
    format!(
        ", sessions_ended AS (
             UPDATE sessions SET revoked_at = $5
             WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM ${keep}::uuid
               AND EXISTS (SELECT 1 FROM changed)
             RETURNING id
         ), tokens_ended AS (
             UPDATE refresh_tokens SET revoked_at = $5
             WHERE user_id = $1 AND revoked_at IS NULL AND family_id IS DISTINCT FROM ${keep}::uuid
               AND EXISTS (SELECT 1 FROM changed)
             RETURNING id
         ), told_ended AS (
             SELECT pg_notify(${channel}, $1::text) FROM changed
             WHERE ${channel}::text IS NOT NULL
               AND (${keep}::uuid IS NULL OR EXISTS (SELECT 1 FROM sessions_ended)
                    OR EXISTS (SELECT 1 FROM tokens_ended))
         )"
    )
}

/// How a code check settles the account's wrong-code count (the one ceiling,
/// shared by SMS and recovery codes), as the `SET` list of an `UPDATE users u
/// ... FROM tried`: a right code (`tried.new_state = 'used'`) clears the count
/// and the locks; a wrong one counts, and the one reaching $6 starts a lock of
/// $7 seconds doubled per lock in a row, at most $8; $5 is now.
pub(super) const SETTLE_CODE_GUARD: &str =
    "code_failures = CASE WHEN tried.new_state = 'used' OR u.code_failures + 1 >= $6
                                      THEN 0 ELSE u.code_failures + 1 END,
                 code_locks = CASE WHEN tried.new_state = 'used' THEN 0
                                   WHEN u.code_failures + 1 >= $6 THEN u.code_locks + 1
                                   ELSE u.code_locks END,
                 code_locked_until = CASE
                     WHEN tried.new_state = 'used' THEN NULL
                     WHEN u.code_failures + 1 >= $6 THEN $5 + make_interval(secs => LEAST(
                         $7::float8 * power(2::float8, LEAST(u.code_locks, 30)::float8),
                         $8::float8))
                     ELSE u.code_locked_until END";

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
