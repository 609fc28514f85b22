//! The `users` table.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::user::{NewUser, User};

/// What a confirmed code changes on an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChange {
    PhoneVerified,
    TwoFa(bool),
}

impl AccountChange {
    /// The column the change sets, its new value, and the guard the change
    /// needs, an expression over the row `u` (2FA on requires a verified phone,
    /// checked in the same statement so a concurrent phone change cannot slip
    /// between). A guard must not read the column its change writes.
    pub(super) fn sql(self) -> (&'static str, &'static str, &'static str) {
        match self {
            AccountChange::PhoneVerified => ("phone_verified", "true", "true"),
            AccountChange::TwoFa(true) => ("two_fa", "true", "u.phone_verified"),
            AccountChange::TwoFa(false) => ("two_fa", "false", "true"),
        }
    }
}

/// Which unique field a sign-up collided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Email,
    Phone,
}

pub(super) const USER_COLUMNS: &str =
    "id, email, phone, first_name, last_name, two_fa, phone_verified, created_at, updated_at";

pub(super) fn user_from_row(row: &Row) -> Result<User, tokio_postgres::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        phone: row.try_get("phone")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        two_fa: row.try_get("two_fa")?,
        is_phone_verified: row.try_get("phone_verified")?,
        created_at: row.try_get::<_, DateTime<Utc>>("created_at")?,
        updated_at: row.try_get::<_, DateTime<Utc>>("updated_at")?,
    })
}

impl Store {
    /// Inserts a user. The unique indexes decide duplicates, so two identical
    /// sign-ups racing each other give one row and one `Taken`.
    pub async fn insert_user(
        &self,
        user: &NewUser,
        password_hash: &str,
    ) -> Result<Result<User, Taken>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO users (id, email, phone, password_hash, first_name, last_name)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING {USER_COLUMNS}"
        );
        let result = client
            .query_one(
                &client.prepare_cached(&sql).await?,
                &[
                    &Uuid::new_v4(),
                    &user.email.as_str(),
                    &user.phone.as_str(),
                    &password_hash,
                    &user.first_name.as_str(),
                    &user.last_name.as_str(),
                ],
            )
            .await;
        match result.map_err(StoreError::from) {
            Ok(row) => Ok(Ok(user_from_row(&row)?)),
            Err(StoreError::Unique(index)) if index == "users_email_key" => Ok(Err(Taken::Email)),
            Err(StoreError::Unique(index)) if index == "users_phone_key" => Ok(Err(Taken::Phone)),
            Err(e) => Err(e),
        }
    }

    /// Looks a user up by id.
    pub async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id])
            .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    /// The stored password hash of a user, for tests and the login path.
    pub async fn password_hash(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT password_hash FROM users WHERE id = $1")
                    .await?,
                &[&id],
            )
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }
}

/// What login needs of a user.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: Uuid,
    pub password_hash: String,
    pub phone: String,
    pub two_fa: bool,
    /// Set while failed passwords keep the account locked.
    pub locked_until: Option<chrono::DateTime<Utc>>,
}

/// After a failed password: the count in a row, and the lockout it started (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedLogin {
    pub failures: i32,
    pub locked_until: Option<chrono::DateTime<Utc>>,
}

impl Store {
    /// The credentials for an e-mail (already normalised), if such a user exists.
    pub async fn credentials_by_email(
        &self,
        email: &str,
    ) -> Result<Option<Credentials>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client.prepare_cached("SELECT id, password_hash, phone, two_fa, locked_until FROM users WHERE lower(email) = lower($1)").await?,
                &[&email],
            )
            .await?;
        Ok(match row {
            Some(r) => Some(Credentials {
                id: r.try_get(0)?,
                password_hash: r.try_get(1)?,
                phone: r.try_get(2)?,
                two_fa: r.try_get(3)?,
                locked_until: r.try_get(4)?,
            }),
            None => None,
        })
    }

    /// Counts a failed password in one statement. From the `after`-th failure in a
    /// row the account locks for `base`, doubling per further failure up to `max`:
    /// growing, but bounded, so an attacker cannot lock the owner out for long.
    pub async fn record_failed_login(
        &self,
        id: Uuid,
        now: chrono::DateTime<Utc>,
        after: i32,
        base: std::time::Duration,
        max: std::time::Duration,
    ) -> Result<FailedLogin, StoreError> {
        let client = self.client().await?;
        let base_s = base.as_secs_f64();
        let max_s = max.as_secs_f64();
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "UPDATE users SET
                     failed_logins = failed_logins + 1,
                     locked_until = CASE WHEN failed_logins + 1 >= $3
                         THEN $2::timestamptz + make_interval(secs => least($5::float8,
                              $4::float8 * power(2::float8, least(failed_logins + 1 - $3, 30))))
                         ELSE locked_until END
                 WHERE id = $1
                 RETURNING failed_logins, locked_until",
                    )
                    .await?,
                &[&id, &now, &after, &base_s, &max_s],
            )
            .await?;
        Ok(FailedLogin {
            failures: row.try_get(0)?,
            locked_until: row.try_get(1)?,
        })
    }

    /// A right password clears the failure count and any lockout.
    pub async fn record_successful_login(&self, id: Uuid) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE users SET failed_logins = 0, locked_until = NULL
                 WHERE id = $1 AND (failed_logins <> 0 OR locked_until IS NOT NULL)",
                    )
                    .await?,
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// Replaces a password hash made with older parameters, unless it changed meanwhile.
    pub async fn upgrade_password_hash(
        &self,
        id: Uuid,
        old: &str,
        new: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                    )
                    .await?,
                &[&id, &old, &new],
            )
            .await?;
        Ok(())
    }
}
