//! Look-ups of the phone change and the password reset (issue 16). The changes
//! themselves commit in the code check's statement (`AccountChange::PhoneChanged`,
//! `AccountChange::PasswordReset` in `store::users`, applied by `store::otp`).

use uuid::Uuid;

use super::{Store, StoreError};

/// Whose account a password reset names, and where its code may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetAccount {
    pub id: Uuid,
    /// The account's phone when verified: the only number a reset code goes to.
    pub verified_phone: Option<String>,
}

impl Store {
    /// The account that has verified `phone`, if any (at most one: the unique
    /// index `users_phone_verified_key`).
    pub async fn verified_phone_holder(&self, phone: &str) -> Result<Option<Uuid>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT id FROM users WHERE phone = $1 AND phone_verified")
                    .await?,
                &[&phone],
            )
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// The account a password reset names: by e-mail (case-insensitive, as
    /// logins match it) or by a verified phone (an unverified number names no
    /// one: several accounts may claim it). One statement either way.
    pub async fn reset_account(
        &self,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Option<ResetAccount>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT id, CASE WHEN phone_verified THEN phone END AS verified_phone
                         FROM users
                         WHERE ($1::text IS NOT NULL AND lower(email) = lower($1::text))
                            OR ($2::text IS NOT NULL AND phone = $2::text AND phone_verified)
                         LIMIT 1",
                    )
                    .await?,
                &[&email, &phone],
            )
            .await?;
        row.map(|r| -> Result<ResetAccount, StoreError> {
            Ok(ResetAccount {
                id: r.try_get("id")?,
                verified_phone: r.try_get("verified_phone")?,
            })
        })
        .transpose()
    }
}
