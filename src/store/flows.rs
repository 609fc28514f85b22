//! The `login_flows` table: each flow's state as JSON and a version for
//! compare-and-set, so two processes continuing one flow cannot both win, and the
//! flow's deadline as a column (`expires_at`, V6) so the expiry sweep finds the
//! pending flows that are due with one indexed query.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::login_flow::FlowState;

/// Pending flows whose deadline passed, oldest first, locked; rows another
/// sweeper holds are skipped. The `state->>'state'` predicate is the one of the
/// partial index `login_flows_pending_expiry` (V6), word for word, so the planner
/// uses it: the query reads only due rows, however many flows are pending.
const DUE_FLOWS: &str = "SELECT id, user_id, state, version FROM login_flows
     WHERE state->>'state' IN ('password_pending', 'otp_pending') AND expires_at <= $1
     ORDER BY expires_at
     LIMIT $2
     FOR UPDATE SKIP LOCKED";

/// A due flow's new state, as the sweep's caller computed it.
pub struct SweptState {
    pub state: FlowState,
    pub purge_after: DateTime<Utc>,
    /// The audit event (kind, detail) recorded with the transition, if any.
    pub audit: Option<(&'static str, serde_json::Value)>,
}

/// A flow the sweep moved on.
#[derive(Debug, Clone)]
pub struct SweptFlow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub state: FlowState,
}

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
                &client
                    .prepare_cached(
                        "INSERT INTO login_flows (id, user_id, state, created_at, updated_at, purge_after, expires_at)
                         VALUES ($1, $2, $3, $4, $4, $5, $6)",
                    )
                    .await?,
                &[&id, &user_id, &to_json(state)?, &now, &purge_after, &state.expires_at()],
            )
            .await?;
        Ok(())
    }

    /// A flow with its user's phone (needed to resend).
    pub async fn load_flow(&self, id: Uuid) -> Result<Option<StoredFlow>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT f.user_id, u.phone, f.state, f.version
                 FROM login_flows f JOIN users u ON u.id = f.user_id
                 WHERE f.id = $1",
                    )
                    .await?,
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
                &client.prepare_cached("UPDATE login_flows SET state = $3, version = version + 1, updated_at = $4, purge_after = $5
                 WHERE id = $1 AND version = $2
                 RETURNING version").await?,
                &[&id, &version, &to_json(state)?, &now, &purge_after],
            )
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    /// One batch of the expiry sweep: locks up to `limit` pending flows whose
    /// deadline is at or before `now` (skipping rows another process holds),
    /// asks `next` for each one's new state, and writes those with
    /// compare-and-set on `version`, with their audit rows, in one transaction.
    /// Returns the flows moved on; fewer than `limit` rows seen means none due
    /// are left. The deadline column is left as it was (the flow's deadline).
    pub async fn sweep_due_flows(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        next: impl Fn(Uuid, &FlowState) -> Option<SweptState>,
    ) -> Result<(Vec<SweptFlow>, usize), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = tx.query(DUE_FLOWS, &[&now, &limit]).await?;
        let seen = rows.len();
        let (mut ids, mut versions, mut states, mut purges) = (vec![], vec![], vec![], vec![]);
        let mut moved = Vec::with_capacity(seen);
        for row in &rows {
            let json: serde_json::Value = row.try_get(2)?;
            let Ok(state) = serde_json::from_value::<FlowState>(json) else {
                continue;
            };
            let id: Uuid = row.try_get(0)?;
            let Some(swept) = next(id, &state) else {
                continue;
            };
            ids.push(id);
            versions.push(row.try_get::<_, i32>(3)?);
            states.push(to_json(&swept.state)?);
            purges.push(swept.purge_after);
            let flow = SweptFlow {
                id,
                user_id: row.try_get(1)?,
                state: swept.state,
            };
            moved.push((flow, swept.audit));
        }
        if moved.is_empty() {
            tx.commit().await?;
            return Ok((Vec::new(), seen));
        }
        // The rows are locked, so every version still matches; the check keeps
        // the write a compare-and-set like every other transition.
        let updated = tx
            .query(
                "UPDATE login_flows f
                 SET state = u.state, version = f.version + 1, updated_at = $5,
                     purge_after = u.purge_after
                 FROM unnest($1::uuid[], $2::int4[], $3::jsonb[], $4::timestamptz[])
                      AS u(id, version, state, purge_after)
                 WHERE f.id = u.id AND f.version = u.version
                 RETURNING f.id",
                &[&ids, &versions, &states, &purges, &now],
            )
            .await?;
        let won: HashSet<Uuid> = updated
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        moved.retain(|(f, _)| won.contains(&f.id));
        let (mut users, mut kinds, mut details) = (vec![], vec![], vec![]);
        for (flow, audit) in &moved {
            if let Some((kind, detail)) = audit {
                users.push(flow.user_id);
                kinds.push(*kind);
                details.push(detail);
            }
        }
        if !users.is_empty() {
            tx.execute(
                "INSERT INTO audit_events (user_id, kind, detail, created_at)
                 SELECT u.user_id, u.kind, u.detail, $4
                 FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) AS u(user_id, kind, detail)",
                &[&users, &kinds, &details, &now],
            )
            .await?;
        }
        tx.commit().await?;
        Ok((moved.into_iter().map(|(f, _)| f).collect(), seen))
    }
}
