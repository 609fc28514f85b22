//! The `login_flows` table: each flow's state as JSON and a version for
//! compare-and-set, so two processes continuing one flow cannot both win.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::login_flow::FlowState;

/// A stored flow.
#[derive(Debug, Clone)]
pub struct StoredFlow {
    pub user_id: Uuid,
    pub phone: String,
    pub state: FlowState,
    pub version: i32,
}

fn to_json(state: &FlowState) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(state).map_err(|e| StoreError::Database(Box::new(e)))
}

impl Store {
    pub async fn insert_flow(
        &self,
        id: Uuid,
        user_id: Uuid,
        state: &FlowState,
        now: DateTime<Utc>,
        purge_after: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO login_flows (id, user_id, state, created_at, updated_at, purge_after)
                 VALUES ($1, $2, $3, $4, $4, $5)",
                &[&id, &user_id, &to_json(state)?, &now, &purge_after],
            )
            .await?;
        Ok(())
    }

    /// A flow with its user's phone (needed to resend).
    pub async fn load_flow(&self, id: Uuid) -> Result<Option<StoredFlow>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT f.user_id, u.phone, f.state, f.version
                 FROM login_flows f JOIN users u ON u.id = f.user_id
                 WHERE f.id = $1",
                &[&id],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let json: serde_json::Value = row.try_get(2)?;
        let state: FlowState =
            serde_json::from_value(json).map_err(|e| StoreError::Database(Box::new(e)))?;
        Ok(Some(StoredFlow {
            user_id: row.try_get(0)?,
            phone: row.try_get(1)?,
            state,
            version: row.try_get(3)?,
        }))
    }

    /// Writes a new state if the stored version is still `version`; returns the
    /// new version, or None when another writer got there first.
    pub async fn update_flow(
        &self,
        id: Uuid,
        version: i32,
        state: &FlowState,
        now: DateTime<Utc>,
        purge_after: DateTime<Utc>,
    ) -> Result<Option<i32>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE login_flows SET state = $3, version = version + 1, updated_at = $4, purge_after = $5
                 WHERE id = $1 AND version = $2
                 RETURNING version",
                &[&id, &version, &to_json(state)?, &now, &purge_after],
            )
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }
}
