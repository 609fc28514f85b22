//! What the admin API reads and changes in `users` (issue 18): the list and
//! search of accounts, ban and unban, the forced 2FA reset and the deletion of
//! an account. Each change writes its audit row in the same statement or
//! transaction, so no change commits without its trail.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::audit::{audit_rows, AuditEntry, AuditRow};
use super::{Store, StoreError};

/// An account as the admin API shows it: the user and its ban.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminUser {
    pub id: Uuid,
    pub email: String,
    /// E.164.
    pub phone: String,
    pub first_name: String,
    pub last_name: String,
    #[serde(rename = "twoFA")]
    pub two_fa: bool,
    pub is_phone_verified: bool,
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub updated_at: DateTime<Utc>,
    /// When the account was banned; null when it is not.
    #[serde(serialize_with = "iso8601_opt")]
    #[schema(required = true)]
    pub banned_at: Option<DateTime<Utc>>,
    /// `user`, or `admin` for an account whose access tokens open the admin
    /// API (with `AUTHGATE_ADMIN_JWT=on`).
    #[schema(pattern = "^(user|admin)$")]
    pub role: String,
}

fn iso8601_opt<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => crate::domain::user::iso8601(t, s),
        None => s.serialize_none(),
    }
}

const ADMIN_COLUMNS: &str = "id, email, phone, first_name, last_name, two_fa, phone_verified, \
                             created_at, updated_at, banned_at, role";

fn admin_user(row: &Row) -> Result<AdminUser, tokio_postgres::Error> {
    Ok(AdminUser {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        phone: row.try_get("phone")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        two_fa: row.try_get("two_fa")?,
        is_phone_verified: row.try_get("phone_verified")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        banned_at: row.try_get("banned_at")?,
        role: row.try_get("role")?,
    })
}

/// What the list of accounts is filtered by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSearch {
    /// A part of the e-mail address, lower-cased.
    pub email: Option<String>,
    /// A run of digits of the phone number.
    pub phone_digits: Option<String>,
    /// Only accounts strictly before this (created_at, id): the keyset cursor.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// Only accounts created at or after this instant.
    pub created_from: Option<DateTime<Utc>>,
    /// Only accounts created strictly before this instant.
    pub created_until: Option<DateTime<Utc>>,
}

impl Store {
    /// Accounts, newest first, at most `limit`, matching `search`.
    pub async fn search_users(
        &self,
        search: &UserSearch,
        limit: i64,
    ) -> Result<Vec<AdminUser>, StoreError> {
        let client = self.client().await?;
        let (before_at, before_id) = search.before.unzip();
        let sql = format!(
            "SELECT {ADMIN_COLUMNS} FROM users
             WHERE ($1::text IS NULL OR strpos(lower(email), $1) > 0)
               AND ($2::text IS NULL OR strpos(phone, $2) > 0)
               AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
               AND ($6::timestamptz IS NULL OR created_at >= $6)
               AND ($7::timestamptz IS NULL OR created_at < $7)
             ORDER BY created_at DESC, id DESC
             LIMIT $5"
        );
        let rows = client
            .query(
                &client.prepare_cached(&sql).await?,
                &[
                    &search.email,
                    &search.phone_digits,
                    &before_at,
                    &before_id,
                    &limit,
                    &search.created_from,
                    &search.created_until,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(admin_user)
            .collect::<Result<_, tokio_postgres::Error>>()?)
    }

    /// One account, or None.
    pub async fn admin_user(&self, id: Uuid) -> Result<Option<AdminUser>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {ADMIN_COLUMNS} FROM users WHERE id = $1");
        let row = client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id])
            .await?;
        Ok(row.as_ref().map(admin_user).transpose()?)
    }

    /// Every event of `user`, admin actions included, newest first.
    pub async fn admin_audit_of(
        &self,
        user: Uuid,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &c.prepare_cached(
                    "SELECT kind, host(ip), user_agent, detail, created_at FROM audit_events
                     WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
                )
                .await?,
                &[&user, &limit],
            )
            .await?;
        audit_rows(&rows)
    }

    /// Bans (`banned`) or unbans an account, with its audit row, in one
    /// statement; None when there is no such account. Banning again keeps the
    /// first ban's time. The row lock it takes orders it with a login's session
    /// insert (`create_session` reads `banned_at` under `FOR SHARE`): a login
    /// either finished before the ban, and the sessions it made are ended next,
    /// or it sees the ban and makes none.
    pub async fn set_banned(
        &self,
        id: Uuid,
        banned: bool,
        now: DateTime<Utc>,
        entry: AuditEntry<'_>,
    ) -> Result<Option<AdminUser>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "WITH u AS (
                 UPDATE users
                 SET banned_at = CASE WHEN $2 THEN coalesce(banned_at, $3) ELSE NULL END,
                     updated_at = $3
                 WHERE id = $1
                 RETURNING {ADMIN_COLUMNS}
             ), logged AS (
                 INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
                 SELECT id, $4, $5::text::inet, $6, $7, $3 FROM u
             )
             SELECT * FROM u"
        );
        let row = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[
                    &id,
                    &banned,
                    &now,
                    &entry.kind,
                    &entry.ip(),
                    &entry.user_agent(),
                    entry.detail,
                ],
            )
            .await?;
        Ok(row.as_ref().map(admin_user).transpose()?)
    }

    /// Turns 2FA off and deletes the recovery codes, with the audit row, in
    /// one statement; None when there is no such account. The caller ends the
    /// account's sessions next.
    pub async fn reset_two_fa(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        entry: AuditEntry<'_>,
    ) -> Result<Option<AdminUser>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "WITH u AS (
                 UPDATE users SET two_fa = false, updated_at = $2
                 WHERE id = $1
                 RETURNING {ADMIN_COLUMNS}
             ), codes AS (
                 DELETE FROM recovery_codes WHERE user_id IN (SELECT id FROM u)
                 RETURNING id
             ), logged AS (
                 INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
                 SELECT id, $3, $4::text::inet, $5,
                        $6::jsonb || jsonb_build_object('recoveryCodesDeleted',
                                                        (SELECT count(*) FROM codes)),
                        $2
                 FROM u
             )
             SELECT * FROM u"
        );
        let row = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[
                    &id,
                    &now,
                    &entry.kind,
                    &entry.ip(),
                    &entry.user_agent(),
                    entry.detail,
                ],
            )
            .await?;
        Ok(row.as_ref().map(admin_user).transpose()?)
    }

    /// Deletes an account in one transaction: its row goes, and with it (ON
    /// DELETE CASCADE) its sessions, refresh tokens, device tokens, codes,
    /// recovery codes and login flows. Its audit events have no foreign key
    /// (the trail outlives the account): they are kept, anonymized (no
    /// address, user agent or detail), except the admin actions on it, whose
    /// address is the admin's. The deletion's own audit row names only the
    /// account's id. Every process is told its tokens are dead. False when
    /// there is no such account.
    pub async fn delete_user(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        entry: AuditEntry<'_>,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let deleted = tx
            .execute(
                &tx.prepare_cached("DELETE FROM users WHERE id = $1").await?,
                &[&id],
            )
            .await?;
        if deleted == 0 {
            return Ok(false);
        }
        tx.execute(
            &tx.prepare_cached(
                "UPDATE audit_events SET ip = NULL, user_agent = NULL, detail = '{}'
                 WHERE user_id = $1 AND kind NOT LIKE 'admin\\_%'",
            )
            .await?,
            &[&id],
        )
        .await?;
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
                 VALUES ($1, $2, $3::text::inet, $4, $5, $6)",
            )
            .await?,
            &[
                &id,
                &entry.kind,
                &entry.ip(),
                &entry.user_agent(),
                entry.detail,
                &now,
            ],
        )
        .await?;
        super::tokens::notify(self, &tx, id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Whether `session` is a live session of `user`, an unbanned account
    /// with the admin role, started by a login that used one of
    /// `second_factors` (an `amr` value): asked on every admin call made with
    /// an access token, so a revoked role or an ended session counts at once.
    pub async fn is_admin_session(
        &self,
        user: Uuid,
        session: Uuid,
        second_factors: &[&str],
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let factors: Vec<&str> = second_factors.to_vec();
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT 1 FROM users u JOIN sessions s ON s.user_id = u.id
                         WHERE u.id = $1 AND s.id = $2 AND s.revoked_at IS NULL
                           AND u.role = 'admin' AND u.banned_at IS NULL
                           AND s.amr && $3::text[]",
                    )
                    .await?,
                &[&user, &session, &factors],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Sets the role of the account with `email` (case-insensitive), with its
    /// audit row, in one statement; None when there is no such account.
    pub async fn set_role(
        &self,
        email: &str,
        admin: bool,
        now: DateTime<Utc>,
        entry: AuditEntry<'_>,
    ) -> Result<Option<Uuid>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "WITH u AS (
                             UPDATE users
                             SET role = CASE WHEN $2 THEN 'admin' ELSE 'user' END, updated_at = $3
                             WHERE lower(email) = lower($1)
                             RETURNING id
                         ), logged AS (
                             INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
                             SELECT id, $4, $5::text::inet, $6, $7, $3 FROM u
                         )
                         SELECT id FROM u",
                    )
                    .await?,
                &[
                    &email,
                    &admin,
                    &now,
                    &entry.kind,
                    &entry.ip(),
                    &entry.user_agent(),
                    entry.detail,
                ],
            )
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }
}
