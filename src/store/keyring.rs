//! The key ring's rows (`keyring`, V17): loading the keys still accepted,
//! creating the first ones, and rotating a purpose in one transaction. Only
//! sealed secrets come here; sealing and unsealing is `crate::keyring`'s.

use chrono::{DateTime, Utc};

use super::{LockKey, Store, StoreError};

/// Serialises bootstrap and rotations across processes (a transaction lock in
/// the store's `LockMode`).
const KEYRING_LOCK_KEY: i64 = 0x6b65_7972_696e_6731; // "keyring1"

/// A stored key.
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub purpose: String,
    pub version: i32,
    pub kid: String,
    pub alg: String,
    pub public_jwk: Option<serde_json::Value>,
    pub sealed: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
    pub verify_until: Option<DateTime<Utc>>,
}

impl KeyRow {
    pub fn is_active(&self) -> bool {
        self.activated_at.is_some() && self.retired_at.is_none()
    }

    pub fn is_next(&self) -> bool {
        self.activated_at.is_none()
    }
}

/// `(kek, purpose, kid, alg, secret)` to the stored form of a key.
pub type SealFn = fn(&[u8; 32], &str, &str, &str, &[u8]) -> Vec<u8>;

/// A key to store: made by the caller, numbered by the store (the version
/// is appended to `kid_prefix`), sealed by `seal` once its kid is known (the
/// kid is part of what the seal authenticates).
#[derive(Clone)]
pub struct NewKey {
    pub kid_prefix: String,
    pub alg: String,
    pub public_jwk: Option<serde_json::Value>,
    pub secret: Vec<u8>,
    pub kek: [u8; 32],
    pub seal: SealFn,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewKey({}*, {}, <redacted>)", self.kid_prefix, self.alg)
    }
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The next key is active now (its kid), and a new next key was made.
    Rotated { active: String },
    /// `due_before` was given and the active key is younger than that.
    NotDue,
    /// The next key was made so recently that some process may not know it
    /// yet; promoting it could fail what it makes there. Retry later or force.
    TooSoon { next_created: DateTime<Utc> },
    /// The purpose has no keys yet (the server has never started on this database).
    Empty,
}

impl Store {
    /// Every key still accepted at `now`, oldest first.
    pub async fn keyring_rows(&self, now: DateTime<Utc>) -> Result<Vec<KeyRow>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT purpose, version, kid, alg, public_jwk, sealed, created_at,
                                activated_at, retired_at, verify_until
                         FROM keyring
                         WHERE verify_until IS NULL OR verify_until > $1
                         ORDER BY purpose, version",
                    )
                    .await?,
                &[&now],
            )
            .await?;
        rows.iter().map(key_row).collect()
    }

    /// Makes sure `purpose` has an active and a next key, making them with
    /// `make` (called with the role, "active" or "next"); `legacy`, when the
    /// purpose had no key at all and the database already holds users, is
    /// stored first as a retired key (until `legacy_until`; None: for good).
    /// Returns whether anything was stored.
    pub async fn keyring_ensure(
        &self,
        purpose: &str,
        now: DateTime<Utc>,
        make: &(dyn Fn() -> NewKey + Sync),
        legacy: Option<(NewKey, Option<DateTime<Utc>>)>,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        self.lock_xact(&tx, LockKey::Id(KEYRING_LOCK_KEY)).await?;
        let rows = tx
            .query(
                "SELECT activated_at IS NULL AS next FROM keyring
                 WHERE purpose = $1 AND retired_at IS NULL",
                &[&purpose],
            )
            .await?;
        let has_next = rows.iter().any(|r| r.get::<_, bool>(0));
        let has_active = rows.iter().any(|r| !r.get::<_, bool>(0));
        if has_next && has_active {
            tx.commit().await?;
            return Ok(false);
        }
        let any: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM keyring WHERE purpose = $1)",
                &[&purpose],
            )
            .await?
            .get(0);
        if !any {
            if let Some((key, until)) = legacy {
                let has_users: bool = tx
                    .query_one("SELECT EXISTS (SELECT 1 FROM users)", &[])
                    .await?
                    .get(0);
                if has_users {
                    insert(&tx, purpose, &key, now, Some(now), Some(now), until).await?;
                }
            }
        }
        if !has_active {
            insert(&tx, purpose, &make(), now, Some(now), None, None).await?;
        }
        if !has_next {
            insert(&tx, purpose, &make(), now, None, None, None).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces the next key of `purpose` with one `make` makes, when the
    /// next key's algorithm is not `alg` (a changed `JWT_ALGORITHM`). The next
    /// key has made nothing yet, so nothing is lost.
    pub async fn keyring_replace_next(
        &self,
        purpose: &str,
        alg: &str,
        now: DateTime<Utc>,
        make: &(dyn Fn() -> NewKey + Sync),
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        self.lock_xact(&tx, LockKey::Id(KEYRING_LOCK_KEY)).await?;
        let n = tx
            .execute(
                "DELETE FROM keyring WHERE purpose = $1 AND activated_at IS NULL AND alg <> $2",
                &[&purpose, &alg],
            )
            .await?;
        if n > 0 {
            insert(&tx, purpose, &make(), now, None, None, None).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Rotates `purpose` in one transaction: the active key retires (accepted
    /// until `now + retention`, or for good when None), the next key becomes
    /// active, a new next key is stored, and keys past their acceptance are
    /// deleted. `due_before`: rotate only if the active key was activated
    /// before it (the schedule; several processes may ask at once, one
    /// rotates). `min_next_age`: refuse while the next key is younger.
    pub async fn keyring_rotate(
        &self,
        purpose: &str,
        now: DateTime<Utc>,
        retention: Option<chrono::Duration>,
        due_before: Option<DateTime<Utc>>,
        min_next_age: chrono::Duration,
        new_next: &NewKey,
    ) -> Result<Rotation, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        self.lock_xact(&tx, LockKey::Id(KEYRING_LOCK_KEY)).await?;
        let rows = tx
            .query(
                "SELECT activated_at, created_at FROM keyring
                 WHERE purpose = $1 AND retired_at IS NULL",
                &[&purpose],
            )
            .await?;
        let active = rows
            .iter()
            .find_map(|r| r.get::<_, Option<DateTime<Utc>>>(0));
        let next_created = rows
            .iter()
            .find(|r| r.get::<_, Option<DateTime<Utc>>>(0).is_none())
            .map(|r| r.get::<_, DateTime<Utc>>(1));
        let (Some(active), Some(next_created)) = (active, next_created) else {
            return Ok(Rotation::Empty);
        };
        if due_before.is_some_and(|due| active >= due) {
            return Ok(Rotation::NotDue);
        }
        if next_created > now - min_next_age {
            return Ok(Rotation::TooSoon { next_created });
        }
        let until = retention.map(|r| now + r);
        tx.execute(
            "UPDATE keyring SET retired_at = $2, verify_until = $3
             WHERE purpose = $1 AND activated_at IS NOT NULL AND retired_at IS NULL",
            &[&purpose, &now, &until],
        )
        .await?;
        let promoted = tx
            .query_one(
                "UPDATE keyring SET activated_at = $2
                 WHERE purpose = $1 AND activated_at IS NULL RETURNING kid",
                &[&purpose, &now],
            )
            .await?;
        insert(&tx, purpose, new_next, now, None, None, None).await?;
        tx.execute(
            "DELETE FROM keyring WHERE purpose = $1 AND verify_until <= $2",
            &[&purpose, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(Rotation::Rotated {
            active: promoted.get(0),
        })
    }

    /// Rewrites the sealed secret of one key (resealed under a new master key).
    pub async fn keyring_reseal(&self, kid: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE keyring SET sealed = $2 WHERE kid = $1",
                &[&kid, &sealed],
            )
            .await?;
        Ok(())
    }
}

async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    purpose: &str,
    key: &NewKey,
    created: DateTime<Utc>,
    activated: Option<DateTime<Utc>>,
    retired: Option<DateTime<Utc>>,
    verify_until: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    let version: i32 = tx
        .query_one(
            "SELECT coalesce(max(version) + 1, 0) FROM keyring WHERE purpose = $1",
            &[&purpose],
        )
        .await?
        .get(0);
    let kid = format!("{}{version}", key.kid_prefix);
    let sealed = (key.seal)(&key.kek, purpose, &kid, &key.alg, &key.secret);
    tx.execute(
        "INSERT INTO keyring (purpose, version, kid, alg, public_jwk, sealed, created_at,
                              activated_at, retired_at, verify_until)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &purpose,
            &version,
            &kid,
            &key.alg,
            &key.public_jwk,
            &sealed,
            &created,
            &activated,
            &retired,
            &verify_until,
        ],
    )
    .await?;
    Ok(())
}

fn key_row(r: &tokio_postgres::Row) -> Result<KeyRow, StoreError> {
    Ok(KeyRow {
        purpose: r.try_get("purpose")?,
        version: r.try_get("version")?,
        kid: r.try_get("kid")?,
        alg: r.try_get("alg")?,
        public_jwk: r.try_get("public_jwk")?,
        sealed: r.try_get("sealed")?,
        created_at: r.try_get("created_at")?,
        activated_at: r.try_get("activated_at")?,
        retired_at: r.try_get("retired_at")?,
        verify_until: r.try_get("verify_until")?,
    })
}
