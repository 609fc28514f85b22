//! The `recovery_codes` table: replacing an account's set, and consuming one
//! code at a login. Only keyed hashes come here (`Keys::recovery_hash`); the
//! codes themselves never reach the database.
//!
//! Both take the user row's lock first, as the code check does (`store::otp`),
//! so the set, its use and the account's wrong-code count change in one order
//! in every process. Turning 2FA on and off writes the set in the code check's
//! own statement (`OnAccept::recovery_set`).

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::audit::AuditEntry;
use super::otp::{CodeGuard, SETTLE_CODE_GUARD};
use super::{Store, StoreError};
use crate::audit::ClientInfo;

/// What trying a recovery code did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryUse {
    /// The code was unused and is now used; this many remain unused.
    Used { remaining: u32 },
    /// No unused code of the account has this hash (a wrong code, a used one,
    /// one from a replaced set, or 2FA is off): counted as a wrong code.
    Wrong,
    /// Code entry is locked for the account until `until`. `by_this_try`: this
    /// wrong code reached the ceiling; else nothing was compared.
    Locked {
        until: DateTime<Utc>,
        by_this_try: bool,
    },
}

impl Store {
    /// Replaces the account's recovery codes with `hashes`, if 2FA is on: one
    /// transaction that locks the user row (and reads its 2FA state) first,
    /// then deletes the old set, inserts the new one and records `audit`, so the
    /// old codes stop working in the commit that brings the new ones. The
    /// second statement runs after the lock is held, so under READ COMMITTED it
    /// sees every set committed before (a concurrent replacement's included):
    /// exactly one set survives any number of replacements at once. False, and
    /// nothing written, when 2FA is off (or the account is gone).
    pub async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        hashes: &[Vec<u8>],
        now: DateTime<Utc>,
        audit: AuditEntry<'_>,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let locked = tx
            .query_opt(
                &tx.prepare_cached("SELECT two_fa FROM users WHERE id = $1 FOR UPDATE")
                    .await?,
                &[&user_id],
            )
            .await?;
        let two_fa = match locked {
            Some(row) => row.try_get::<_, bool>("two_fa")?,
            None => false,
        };
        if !two_fa {
            tx.rollback().await?;
            return Ok(false);
        }
        let (ip, user_agent) = (audit.ip(), audit.user_agent());
        tx.execute(
            &tx.prepare_cached(
                "WITH gone AS (
                     DELETE FROM recovery_codes WHERE user_id = $1 RETURNING id
                 ), added AS (
                     INSERT INTO recovery_codes (user_id, code_hash, created_at)
                     SELECT $1, h, $3 FROM unnest($2::bytea[]) AS h
                     RETURNING id
                 )
                 INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
                 SELECT $1, $4, $5::text::inet, $6,
                        $7::jsonb || jsonb_build_object(
                            'replaced', (SELECT count(*) FROM gone),
                            'issued', (SELECT count(*) FROM added)),
                        $3",
            )
            .await?,
            &[
                &user_id,
                &hashes,
                &now,
                &audit.kind,
                &ip,
                &user_agent,
                audit.detail,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Tries a recovery code (its keyed hash) for a login, in one statement:
    /// under the user row's lock, refuses while code entry is locked; else
    /// marks the matching unused code used (2FA on) and clears the account's
    /// wrong-code count, or counts a wrong code toward the same ceiling the SMS
    /// codes count toward (`SETTLE_CODE_GUARD`, `guard`), starting the lock at
    /// it. Records `recovery_code_used` (with how many remain, never the code)
    /// or `code_failed` (and `locked_out`) in the same commit. `detail` goes
    /// into either event (the flow); `code_failed` adds `purpose: recovery`.
    ///
    /// Why one code is used once: the `UPDATE ... WHERE used_at IS NULL` of a
    /// second use, in any process, waits for the first one's row lock and then
    /// re-checks the row, which is used by then; and both wait on the user row
    /// first, so the count they settle is serial too.
    #[allow(clippy::too_many_arguments)]
    pub async fn use_recovery_code(
        &self,
        user_id: Uuid,
        flow_id: Uuid,
        hashes: &[Vec<u8>],
        now: DateTime<Utc>,
        guard: CodeGuard,
        client_info: &ClientInfo,
        detail: &serde_json::Value,
    ) -> Result<RecoveryUse, StoreError> {
        let client = self.client().await?;
        let asker = AuditEntry {
            kind: "code_failed",
            client: client_info,
            detail,
        };
        let (ip, user_agent) = (asker.ip(), asker.user_agent());
        let (lock_base, lock_max) = (guard.lock_base.as_secs_f64(), guard.lock_max.as_secs_f64());
        let mut failed = detail.clone();
        if let Some(map) = failed.as_object_mut() {
            map.insert("purpose".into(), serde_json::json!("recovery"));
        }
        let params: [&(dyn ToSql + Sync); 11] = [
            &user_id,
            &hashes,
            detail,
            &failed,
            &now,
            &guard.max_failures,
            &lock_base,
            &lock_max,
            &ip,
            &user_agent,
            &flow_id,
        ];
        let row = client
            .query_opt(&client.prepare_cached(&use_sql()).await?, &params)
            .await?;
        let Some(row) = row else {
            // No such account: nothing to use, nothing to count.
            return Ok(RecoveryUse::Wrong);
        };
        let new_state: Option<String> = row.try_get("new_state")?;
        match new_state.as_deref() {
            Some("used") => {
                let remaining: i64 = row.try_get("remaining")?;
                Ok(RecoveryUse::Used {
                    remaining: u32::try_from(remaining).unwrap_or(0),
                })
            }
            Some(_) => {
                let after: Option<DateTime<Utc>> = row.try_get("locked_after")?;
                Ok(match after.filter(|u| *u > now) {
                    Some(until) => RecoveryUse::Locked {
                        until,
                        by_this_try: true,
                    },
                    None => RecoveryUse::Wrong,
                })
            }
            None => {
                let before: Option<DateTime<Utc>> = row.try_get("locked_before")?;
                Ok(RecoveryUse::Locked {
                    until: before.unwrap_or(now),
                    by_this_try: false,
                })
            }
        }
    }
}

/// The use statement. Parameters: $1 user, $2 the candidate's keyed hashes
/// (one per accepted recovery key), $3
/// the detail of `recovery_code_used` (the flow), $4 that of `code_failed`
/// (the flow, `purpose: recovery`), $5 now (the guard's parameters keep the
/// code check's numbers, so `SETTLE_CODE_GUARD` reads the same), $6 wrong
/// codes in a row that lock, $7 and $8 the first and the longest lock in
/// seconds, $9 the asker's IP, $10 user agent, $11 the login flow.
///
/// A used recovery code also retires the flow's SMS code (`retired`): it can
/// no longer finish anything, and a live code would hold the resend cooldown
/// against the user's next login.
///
/// `gate` is `FOR UPDATE` and everything else joins `open`, which reads it, so
/// nothing is compared before the row lock is held, and nothing at all while
/// code entry is locked (`tried` is then empty: no row of `settled`, no event).
/// `unused` counts what remains: it locks the account's unused rows, so a
/// concurrent use that committed first is seen, and leaves out the one used
/// here (same statement, same snapshot).
fn use_sql() -> String {
    format!(
        "WITH gate AS (
             SELECT code_locked_until, two_fa FROM users WHERE id = $1 FOR UPDATE
         ), open AS (
             SELECT two_fa FROM gate
             WHERE code_locked_until IS NULL OR code_locked_until <= $5
         ), used AS (
             UPDATE recovery_codes r SET used_at = $5
             FROM open
             WHERE open.two_fa AND r.user_id = $1 AND r.code_hash = ANY($2) AND r.used_at IS NULL
             RETURNING r.id
         ), tried AS (
             SELECT CASE WHEN EXISTS (SELECT 1 FROM used) THEN 'used' ELSE 'wrong' END
                    AS new_state
             FROM open
         ), unused AS (
             SELECT count(*) AS n FROM (
                 SELECT r.id FROM recovery_codes r, open
                 WHERE r.user_id = $1 AND r.used_at IS NULL
                 FOR UPDATE OF r
             ) AS left_over
             WHERE left_over.id NOT IN (SELECT id FROM used)
         ), retired AS (
             UPDATE otp_codes SET state = 'superseded', finished_at = $5
             WHERE user_id = $1 AND purpose = 'login_2fa' AND flow_id = $11
               AND state = 'live' AND EXISTS (SELECT 1 FROM used)
             RETURNING id
         ), settled AS (
             UPDATE users u
             SET {SETTLE_CODE_GUARD}
             FROM tried
             WHERE u.id = $1
             RETURNING u.code_locked_until AS locked_after
         ), failed AS (
             INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
             SELECT $1, e.kind, $9::text::inet, $10, e.detail, $5
             FROM tried, settled, LATERAL (VALUES
                 ('code_failed', $4::jsonb, true),
                 ('locked_out',
                  jsonb_build_object('what', 'code_entry', 'purpose', 'recovery', 'until',
                      to_char(settled.locked_after AT TIME ZONE 'UTC',
                              'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')),
                  settled.locked_after IS NOT NULL AND settled.locked_after > $5)
             ) AS e(kind, detail, wanted)
             WHERE tried.new_state <> 'used' AND e.wanted
             RETURNING id
         ), logged AS (
             INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
             SELECT $1, 'recovery_code_used', $9::text::inet, $10,
                    $3::jsonb || jsonb_build_object('remaining', unused.n), $5
             FROM tried, unused
             WHERE tried.new_state = 'used'
             RETURNING id
         )
         SELECT gate.code_locked_until AS locked_before, tried.new_state,
                settled.locked_after, unused.n AS remaining,
                (SELECT count(*) FROM failed) + (SELECT count(*) FROM logged) AS events
         FROM gate LEFT JOIN tried ON true LEFT JOIN settled ON true
              LEFT JOIN unused ON true"
    )
}
