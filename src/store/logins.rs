//! Password-login admission and device tokens (tables `users`, `device_tokens`).
//!
//! Every login attempt runs the same two statements, whatever its e-mail or
//! password: [`Store::admit_login`] before the argon2 verify, [`Store::settle_login`]
//! after it. Admission is one conditional UPDATE: it reserves a slot unless the
//! account (or the presented device) is locked or its live reservations plus
//! recent failures reach the ceiling; the row lock it takes makes concurrent
//! admissions in any process queue on that one account's row, and PostgreSQL
//! re-checks the condition on the newest row version, so no burst can slip past.
//! Reservations expire on their own, so a process that dies mid-hash frees them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};

/// What one attempt is checked against.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRules {
    /// Live reservations plus failures in the window allowed at once.
    pub ceiling: i32,
    /// Failures older than this stop counting.
    pub window: std::time::Duration,
    /// A lock lasts `base`, doubled per lock since the last success, up to `max`.
    pub base: std::time::Duration,
    pub max: std::time::Duration,
}

/// What admission found.
#[derive(Debug, Clone)]
pub struct Admission {
    pub user_id: Uuid,
    pub password_hash: String,
    pub phone: String,
    pub two_fa: bool,
    /// The presented device token's row, when it is valid for this account.
    pub device_id: Option<Uuid>,
    /// False: locked, or at the ceiling. The caller still verifies (against the
    /// dummy hash) so that a refusal costs and looks like a wrong password.
    pub admitted: bool,
    /// The account is banned (admin API): a right password still logs nothing in.
    pub banned: bool,
}

/// How an admitted attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Right password: clears the failures and any lock of what admitted it.
    Success,
    /// Wrong password: counts, and may lock.
    Failure,
    /// Never evaluated (the client went away, or the hash was shed): frees the slot.
    Release,
}

impl Settlement {
    fn as_str(self) -> &'static str {
        match self {
            Settlement::Success => "success",
            Settlement::Failure => "failure",
            Settlement::Release => "release",
        }
    }
}

/// One attempt's reservation: its key in `login_inflight`, and the
/// `login_decoys` row it writes instead when it reserves nothing (so every
/// attempt commits the same writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub id: Uuid,
    pub decoy: i16,
}

/// After a settlement: failures in a row, and the lock it started (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settled {
    pub failures: i32,
    pub locked_until: Option<DateTime<Utc>>,
}

/// Reservations of `t` still live at `$2`, and failures since `$7`.
fn live_and_recent(t: &str) -> String {
    format!(
        "(SELECT count(*) FROM jsonb_each_text({t}.login_inflight) AS r(k, v) \
           WHERE r.v::timestamptz > $2) \
         + (SELECT count(*) FROM unnest({t}.login_failures) AS f(at) WHERE f.at > $7)"
    )
}

/// `t`'s live reservations with reservation `$4` (expiring at `$5`) added.
fn reserve(t: &str) -> String {
    format!(
        "(SELECT coalesce(jsonb_object_agg(r.k, r.v), '{{}}'::jsonb) \
           FROM jsonb_each_text({t}.login_inflight) AS r(k, v) WHERE r.v::timestamptz > $2) \
         || jsonb_build_object($4::text, $5::timestamptz)"
    )
}

fn admit_sql() -> String {
    format!(
        "WITH target AS (
             SELECT id FROM users WHERE lower(email) = lower($1)
         ),
         known_device AS (
             SELECT d.id FROM device_tokens d
             WHERE d.token_hash = $3 AND d.user_id = (SELECT id FROM target) AND d.expires_at > $2
         ),
         device AS (
             UPDATE device_tokens d SET login_inflight = {reserve_d}
             WHERE d.id = (SELECT id FROM known_device)
               AND (d.locked_until IS NULL OR d.locked_until <= $2)
               AND {count_d} < $6
             RETURNING d.id
         ),
         account AS (
             UPDATE users u SET login_inflight = {reserve_u}
             WHERE u.id = (SELECT id FROM target)
               AND NOT EXISTS (SELECT 1 FROM known_device)
               AND (u.locked_until IS NULL OR u.locked_until <= $2)
               AND {count_u} < $6
             RETURNING u.id
         ),
         -- No slot reserved: write a decoy row instead, so that this attempt
         -- commits the same write as one that reserved.
         decoy AS (
             UPDATE login_decoys SET login_inflight = jsonb_build_object($4::text, $5::timestamptz)
             WHERE slot = $8
               AND NOT EXISTS (SELECT 1 FROM device) AND NOT EXISTS (SELECT 1 FROM account)
         )
         SELECT u.id, u.password_hash, u.phone, u.two_fa,
                (SELECT id FROM known_device),
                EXISTS (SELECT 1 FROM device) OR EXISTS (SELECT 1 FROM account),
                u.banned_at IS NOT NULL
         FROM users u WHERE u.id = (SELECT id FROM target)",
        reserve_d = reserve("d"),
        count_d = live_and_recent("d"),
        reserve_u = reserve("u"),
        count_u = live_and_recent("u"),
    )
}

/// The SET list settling reservation `$3` of row `t` (its pre-update values in
/// `o`) with outcome `$4` at `$5`: failures since `$6` count, `$7` of them lock
/// for `$8` seconds doubled per earlier lock, at most `$9`. Failures that land
/// during a lock are not counted: the lock already holds them off, and a lock
/// that passed starts from zero.
fn settle_set(t: &str, o: &str) -> String {
    let failing = format!("($4 = 'failure' AND NOT coalesce({o}.locked_until > $5, false))");
    let recent =
        format!("ARRAY(SELECT f.at FROM unnest({t}.login_failures) AS f(at) WHERE f.at > $6)");
    let locks = format!("({failing} AND cardinality({recent}) + 1 >= $7)");
    format!(
        "login_inflight = {t}.login_inflight - $3::text,
         login_failures = CASE WHEN {locks} THEN '{{}}'::timestamptz[]
                               WHEN {failing} THEN {recent} || $5::timestamptz
                               WHEN $4 = 'success' THEN '{{}}'::timestamptz[]
                               ELSE {t}.login_failures END,
         locked_until = CASE WHEN {locks} THEN $5::timestamptz + make_interval(secs => least($9::float8,
                                 $8::float8 * power(2::float8, least({t}.login_lockouts, 30))))
                             WHEN $4 = 'success' THEN NULL
                             ELSE {t}.locked_until END,
         login_lockouts = CASE WHEN {locks} THEN {t}.login_lockouts + 1
                               WHEN $4 = 'success' THEN 0
                               ELSE {t}.login_lockouts END"
    )
}

fn settle_sql() -> String {
    format!(
        "WITH old_u AS (
             SELECT id, locked_until FROM users WHERE id = $1 FOR UPDATE
         ),
         acc AS (
             UPDATE users u SET {set_u},
                 failed_logins = CASE WHEN $4 = 'failure' THEN u.failed_logins + 1
                                      WHEN $4 = 'success' THEN 0 ELSE u.failed_logins END,
                 first_login_at = CASE WHEN $4 = 'success' THEN coalesce(u.first_login_at, $5)
                                       ELSE u.first_login_at END
             FROM old_u o WHERE u.id = o.id
             RETURNING u.failed_logins,
                 CASE WHEN coalesce(o.locked_until <= $5, true) AND u.locked_until > $5
                      THEN u.locked_until END
         ),
         old_d AS (
             SELECT id, locked_until FROM device_tokens WHERE id = $2 FOR UPDATE
         ),
         dev AS (
             UPDATE device_tokens d SET {set_d}
             FROM old_d o WHERE d.id = o.id
             RETURNING cardinality(d.login_failures),
                 CASE WHEN coalesce(o.locked_until <= $5, true) AND d.locked_until > $5
                      THEN d.locked_until END
         ),
         -- Neither account nor device: the attempt was refused or unknown;
         -- it still writes, so its settlement costs what a real one does.
         decoy AS (
             UPDATE login_decoys SET login_inflight = login_inflight - $3::text
             WHERE slot = $10 AND $1::uuid IS NULL AND $2::uuid IS NULL
         )
         SELECT * FROM acc UNION ALL SELECT * FROM dev",
        set_u = settle_set("u", "o"),
        set_d = settle_set("d", "o"),
    )
}

impl Store {
    /// Looks the e-mail up and reserves an attempt, in one statement. `email` is
    /// compared as given (a malformed one simply matches nothing, after the same
    /// statement). With a `device_hash` valid for the account, the device's own
    /// counters decide; otherwise the account's. None: no such account.
    pub async fn admit_login(
        &self,
        email: &str,
        device_hash: Option<&[u8]>,
        slot: Slot,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        rules: &AdmissionRules,
    ) -> Result<Option<Admission>, StoreError> {
        let expires = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let since = now - chrono::Duration::from_std(rules.window).unwrap_or(chrono::Duration::MAX);
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client.prepare_cached(&admit_sql()).await?,
                &[
                    &email,
                    &now,
                    &device_hash,
                    &slot.id.simple().to_string(),
                    &expires,
                    &i64::from(rules.ceiling),
                    &since,
                    &slot.decoy,
                ],
            )
            .await?;
        Ok(match row {
            Some(r) => Some(Admission {
                user_id: r.try_get(0)?,
                password_hash: r.try_get(1)?,
                phone: r.try_get(2)?,
                two_fa: r.try_get(3)?,
                device_id: r.try_get(4)?,
                admitted: r.try_get::<_, Option<bool>>(5)?.unwrap_or(false),
                banned: r.try_get(6)?,
            }),
            None => None,
        })
    }

    /// Settles a reservation on the account (`user`) or on the device that
    /// admitted it. Refused and unknown attempts pass neither and run the same
    /// statement, which then changes nothing.
    pub async fn settle_login(
        &self,
        user: Option<Uuid>,
        device: Option<Uuid>,
        slot: Slot,
        outcome: Settlement,
        now: DateTime<Utc>,
        rules: &AdmissionRules,
    ) -> Result<Settled, StoreError> {
        let since = now - chrono::Duration::from_std(rules.window).unwrap_or(chrono::Duration::MAX);
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached(&settle_sql()).await?,
                &[
                    &user,
                    &device,
                    &slot.id.simple().to_string(),
                    &outcome.as_str(),
                    &now,
                    &since,
                    &rules.ceiling,
                    &rules.base.as_secs_f64(),
                    &rules.max.as_secs_f64(),
                    &slot.decoy,
                ],
            )
            .await?;
        Ok(match rows.first() {
            Some(r) => Settled {
                failures: r.try_get(0)?,
                locked_until: r.try_get(1)?,
            },
            None => Settled::default(),
        })
    }

    /// Stores a new device token of `user` (its hash only), and keeps only the
    /// account's `keep` newest unexpired devices, so tokens cannot pile up.
    pub async fn insert_device_token(
        &self,
        user: Uuid,
        token_hash: &[u8],
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        keep: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "WITH ins AS (
                             INSERT INTO device_tokens (id, user_id, token_hash, created_at, expires_at)
                             VALUES ($1, $2, $3, $4, $5)
                         )
                         DELETE FROM device_tokens
                         WHERE user_id = $2 AND (expires_at <= $4 OR id NOT IN (
                             SELECT id FROM device_tokens WHERE user_id = $2
                             ORDER BY created_at DESC, id LIMIT $6))",
                    )
                    .await?,
                &[
                    &Uuid::new_v4(),
                    &user,
                    &token_hash,
                    &now,
                    &expires_at,
                    &(keep - 1).max(0),
                ],
            )
            .await?;
        Ok(())
    }
}
