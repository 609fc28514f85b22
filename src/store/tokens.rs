//! The `refresh_tokens` table. Rotation is one conditional UPDATE: of several
//! concurrent uses of one token, exactly one rotates it; the others see a
//! rotated token, which is reuse, and revoke the whole family.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};

/// A refresh token to store (its hash; the token itself goes to the client).
pub struct NewRefresh<'a> {
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub token_hash: &'a [u8],
    pub amr: &'a [&'a str],
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The presented token is now rotated; issue its successor in this family.
    Rotated {
        family_id: Uuid,
        user_id: Uuid,
        amr: Vec<String>,
    },
    /// The token was already rotated or revoked: reuse. The family is now revoked.
    Reused { user_id: Uuid },
    /// Unknown or expired.
    Invalid,
}

impl Store {
    pub async fn insert_refresh(&self, t: NewRefresh<'_>) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &client.prepare_cached("INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, amr, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)").await?,
                &[
                    &Uuid::new_v4(),
                    &t.family_id,
                    &t.user_id,
                    &t.token_hash,
                    &t.amr,
                    &t.now,
                    &t.expires_at,
                ],
            )
            .await?;
        Ok(())
    }

    /// Marks a token rotated if it is current; detects reuse otherwise.
    pub async fn rotate_refresh(
        &self,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<RotateOutcome, StoreError> {
        let client = self.client().await?;
        let rotated = client
            .query_opt(
                &client.prepare_cached("UPDATE refresh_tokens SET rotated_at = $2
                 WHERE token_hash = $1 AND rotated_at IS NULL AND revoked_at IS NULL AND expires_at > $2
                 RETURNING family_id, user_id, amr").await?,
                &[&token_hash, &now],
            )
            .await?;
        if let Some(r) = rotated {
            return Ok(RotateOutcome::Rotated {
                family_id: r.try_get(0)?,
                user_id: r.try_get(1)?,
                amr: r.try_get(2)?,
            });
        }
        let known = client
            .query_opt(
                &client.prepare_cached("SELECT family_id, user_id, rotated_at IS NOT NULL OR revoked_at IS NOT NULL
                 FROM refresh_tokens WHERE token_hash = $1").await?,
                &[&token_hash],
            )
            .await?;
        match known {
            Some(r) if r.try_get::<_, bool>(2)? => {
                let family: Uuid = r.try_get(0)?;
                self.revoke_family(family, now).await?;
                Ok(RotateOutcome::Reused {
                    user_id: r.try_get(1)?,
                })
            }
            _ => Ok(RotateOutcome::Invalid),
        }
    }

    /// Revokes every token of a family (logout, or reuse detected).
    pub async fn revoke_family(
        &self,
        family_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                &client.prepare_cached("UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL").await?,
                &[&family_id, &now],
            )
            .await?)
    }

    /// The family of a token (for logout), if the token is known.
    pub async fn refresh_family(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = $1",
                    )
                    .await?,
                &[&token_hash],
            )
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    /// Revokes every refresh token of a user (logout with an access token only).
    pub async fn revoke_user_tokens(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                &client.prepare_cached("UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL").await?,
                &[&user_id, &now],
            )
            .await?)
    }

    /// Deletes tokens expired before `cutoff`.
    pub async fn purge_refresh(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                &client
                    .prepare_cached("DELETE FROM refresh_tokens WHERE expires_at < $1")
                    .await?,
                &[&cutoff],
            )
            .await?)
    }
}
