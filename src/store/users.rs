//! The `users` table.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::sms_text::Locale;
use crate::domain::user::{NewUser, User};

/// What a confirmed code changes on an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChange {
    PhoneVerified,
    /// 2FA on (it needs a verified phone) or off; ends the other sessions.
    TwoFa(bool),
    /// The phone becomes the number the code was sent to (`otp_codes.target_phone`),
    /// verified. Binds `$14`: the phone the caller saw, which must still be the
    /// account's (so the notice of the change goes to the number it replaced).
    /// Ends the other sessions.
    PhoneChanged,
    /// A new password (`$14`, its hash); login lockouts cleared; every session,
    /// refresh token and access token of the account ended.
    PasswordReset,
}

/// How the check statement applies a change (see `store::otp::check_sql`).
pub(super) struct ChangeSql {
    /// Columns of the user row `u` and their new values.
    pub sets: &'static [(&'static str, &'static str)],
    /// The guard the change needs, over `u`, `tried` and `gate`. A guard must not
    /// read a column its change writes.
    pub guard: &'static str,
    /// The audit event's detail: `$13`, or an expression that adds to it.
    pub detail: &'static str,
    /// More CTEs, run only when the change is applied (they read `changed`).
    pub effect: &'static str,
    /// Whether the statement binds `$14`.
    pub binds: bool,
    /// Whether an applied change ends every session of the account but the
    /// caller's (`OnAccept::keep`; every one when that is None) and tells the
    /// other processes, in the same statement (see
    /// `store::otp::check_sql`): a connection lost after the commit cannot
    /// leave the change made and the sessions of the old rule alive (the
    /// retry answers `code_used`, and nothing would end them then).
    pub ends_other_sessions: bool,
}

/// A number as `PhoneE164::masked` shows it, in SQL (for audit details).
macro_rules! masked_sql {
    ($e:expr) => {
        concat!(
            "'+' || repeat('•', greatest(length(",
            $e,
            ") - 3, 0)) || right(",
            $e,
            ", 2)"
        )
    };
}

impl AccountChange {
    /// The column the change sets, its new value, and the guard the change
    /// needs, an expression over the row `u` (2FA on requires a verified phone,
    /// checked in the same statement so a concurrent phone change cannot slip
    /// between). A guard must not read the column its change writes.
    /// Verifying a phone requires that no other account verified it first:
    /// unverified accounts may share a phone, so a squatter never blocks its
    /// owner, and the first to prove it wins (the partial unique index
    /// `users_phone_verified_key` settles two verifying at once).
    pub(super) fn sql(self) -> ChangeSql {
        let plain = |sets, guard| ChangeSql {
            sets,
            guard,
            detail: "$13",
            effect: "",
            binds: false,
            ends_other_sessions: false,
        };
        match self {
            AccountChange::PhoneVerified => plain(
                &[("phone_verified", "true")],
                "NOT EXISTS (SELECT 1 FROM users AS other
                     WHERE other.phone = u.phone AND other.phone_verified
                       AND other.id <> u.id)",
            ),
            AccountChange::TwoFa(on) => ChangeSql {
                sets: if on {
                    &[("two_fa", "true")]
                } else {
                    &[("two_fa", "false")]
                },
                guard: if on { "u.phone_verified" } else { "true" },
                ends_other_sessions: true,
                ..plain(&[], "true")
            },
            // Same rule as verifying: refused while another account has the
            // new number verified (and the unique index settles a race).
            AccountChange::PhoneChanged => ChangeSql {
                sets: &[("phone", "tried.target_phone"), ("phone_verified", "true")],
                guard: "tried.target_phone IS NOT NULL
                     AND (SELECT old_phone FROM gate) = $14::text
                     AND NOT EXISTS (SELECT 1 FROM users AS other
                         WHERE other.phone = tried.target_phone AND other.phone_verified
                           AND other.id <> u.id)",
                detail: concat!(
                    "$13::jsonb || jsonb_build_object('old', ",
                    masked_sql!("(SELECT old_phone FROM gate)"),
                    ", 'new', ",
                    masked_sql!("changed.phone"),
                    ")"
                ),
                effect: "",
                binds: true,
                ends_other_sessions: true,
            },
            AccountChange::PasswordReset => ChangeSql {
                sets: &[
                    ("password_hash", "$14::text"),
                    ("locked_until", "NULL"),
                    ("login_failures", "'{}'::timestamptz[]"),
                    ("login_lockouts", "0"),
                ],
                guard: "true",
                detail: "$13",
                // Every session ends (no session is kept: `OnAccept::keep` is None).
                effect: ", unlocked AS (
                         UPDATE device_tokens
                         SET login_failures = '{}', login_lockouts = 0, locked_until = NULL
                         WHERE user_id = $1 AND EXISTS (SELECT 1 FROM changed)
                         RETURNING id
                     )",
                binds: true,
                ends_other_sessions: true,
            },
        }
    }
}

/// Which unique field a sign-up collided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Email,
    Phone,
}

/// The account that already holds a sign-up's e-mail or verified phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub id: Uuid,
    /// Its phone if verified: where its owner can be told of the attempt.
    pub verified_phone: Option<String>,
    /// The language the owner is told in.
    pub locale: Locale,
}

/// What a sign-up did.
#[derive(Debug, Clone)]
pub enum Signup {
    Created(User),
    /// Nothing was written. `holder` is None only when a concurrent sign-up
    /// won the race and is not yet visible.
    Taken {
        by: Taken,
        holder: Option<Holder>,
    },
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
    /// Inserts a user unless its e-mail is registered or its phone verified by
    /// another account; either way one statement, so a taken identifier costs
    /// the same round trip as a fresh sign-up and changes nothing. An
    /// unverified holder of the phone does not block: the first to verify it
    /// wins. The unique indexes still decide a race between two identical
    /// sign-ups: one row, and the loser sees `Taken`.
    pub async fn insert_user(
        &self,
        user: &NewUser,
        password_hash: &str,
        now: DateTime<Utc>,
        client_info: &crate::audit::ClientInfo,
    ) -> Result<Signup, StoreError> {
        let detail = serde_json::Value::Null;
        let entry = super::audit::AuditEntry {
            kind: "signup",
            client: client_info,
            detail: &detail,
        };
        let client = self.client().await?;
        let sql = format!(
            "WITH holder AS (
                 SELECT id, phone, phone_verified, locale, lower(email) = lower($2) AS by_email
                 FROM users
                 WHERE lower(email) = lower($2) OR (phone = $3 AND phone_verified)
                 ORDER BY by_email DESC
                 LIMIT 1
             ), ins AS (
                 INSERT INTO users (id, email, phone, password_hash, first_name, last_name,
                                    created_at, updated_at, locale)
                 SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text, $6::text,
                        $7::timestamptz, $7::timestamptz, $10::text
                 WHERE NOT EXISTS (SELECT 1 FROM holder)
                 ON CONFLICT DO NOTHING
                 RETURNING {USER_COLUMNS}
             ), logged AS (
                 -- The audit row of either outcome, in this one statement: a
                 -- fresh and a taken sign-up each commit once, with writes, so
                 -- their latencies cannot tell them apart.
                 INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
                 SELECT coalesce((SELECT id FROM ins), (SELECT id FROM holder)),
                        CASE WHEN EXISTS (SELECT 1 FROM ins) THEN 'signup'
                             ELSE 'signup_attempted' END,
                        $8::text::inet, $9::text,
                        CASE WHEN EXISTS (SELECT 1 FROM ins) THEN '{{}}'::jsonb
                             WHEN coalesce((SELECT by_email FROM holder), true)
                                 THEN '{{\"matched\": \"email\"}}'::jsonb
                             ELSE '{{\"matched\": \"phone\"}}'::jsonb END,
                        $7::timestamptz
             )
             SELECT ins.*, holder.id AS holder_id, holder.phone AS holder_phone,
                    holder.phone_verified AS holder_verified, holder.by_email AS holder_by_email,
                    holder.locale AS holder_locale
             FROM (SELECT 1) AS one LEFT JOIN ins ON true LEFT JOIN holder ON true"
        );
        let row = client
            .query_one(
                &client.prepare_cached(&sql).await?,
                &[
                    &Uuid::new_v4(),
                    &user.email.as_str(),
                    &user.phone.as_str(),
                    &password_hash,
                    &user.first_name.as_str(),
                    &user.last_name.as_str(),
                    &now,
                    &entry.ip(),
                    &entry.user_agent(),
                    &user.locale.unwrap_or_default().as_str(),
                ],
            )
            .await?;
        if row.try_get::<_, Option<Uuid>>("id")?.is_some() {
            return Ok(Signup::Created(user_from_row(&row)?));
        }
        let Some(id) = row.try_get::<_, Option<Uuid>>("holder_id")? else {
            // Lost a race to an identical sign-up not yet visible here: only the
            // e-mail index can refuse an unverified row.
            return Ok(Signup::Taken {
                by: Taken::Email,
                holder: None,
            });
        };
        let by_email: bool = row.try_get("holder_by_email")?;
        let verified: bool = row.try_get("holder_verified")?;
        let phone: String = row.try_get("holder_phone")?;
        // The column's CHECK admits only shipped tags; anything else reads as English.
        let locale = Locale::parse(row.try_get("holder_locale")?).unwrap_or_default();
        Ok(Signup::Taken {
            by: if by_email { Taken::Email } else { Taken::Phone },
            holder: Some(Holder {
                id,
                verified_phone: verified.then_some(phone),
                locale,
            }),
        })
    }

    /// Looks a user up by id.
    pub async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        super::retry::read(|| async move {
            let client = self.client().await?;
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
            let row = client
                .query_opt(&client.prepare_cached(&sql).await?, &[&id])
                .await?;
            Ok(row.as_ref().map(user_from_row).transpose()?)
        })
        .await
    }

    /// The language of a user's SMS (`users.locale`); `None` for no such user.
    pub async fn user_locale(&self, id: Uuid) -> Result<Option<Locale>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT locale FROM users WHERE id = $1")
                    .await?,
                &[&id],
            )
            .await?;
        // The column's CHECK admits only shipped tags; anything else reads as English.
        Ok(row
            .map(|r| r.try_get::<_, String>(0))
            .transpose()?
            .map(|tag| Locale::parse(&tag).unwrap_or_default()))
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

impl Store {
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
