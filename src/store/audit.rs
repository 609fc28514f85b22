//! The `audit_events` table.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::audit::ClientInfo;

/// One event as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"kind": "login_succeeded", "ip": "203.0.113.7", "userAgent": "curl/8.5.0", "detail": {"amr": ["pwd"]}, "createdAt": "2026-11-27T10:42:17.628Z"}))]
pub struct AuditRow {
    /// What happened (`signup`, `login_succeeded`, `login_failed`, `code_sent`, …).
    pub kind: String,
    // Always present, null when unknown: listed as required so clients can rely on it.
    #[schema(required = true)]
    pub ip: Option<String>,
    #[schema(required = true)]
    pub user_agent: Option<String>,
    /// Event-specific facts (purpose, reason, amr…); never secrets.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub created_at: DateTime<Utc>,
}

/// An event to record in the same statement as the change it describes.
pub struct AuditEntry<'a> {
    pub kind: &'a str,
    pub client: &'a ClientInfo,
    pub detail: &'a serde_json::Value,
}

impl AuditEntry<'_> {
    pub(super) fn ip(&self) -> Option<String> {
        self.client.ip.map(|ip| ip.to_string())
    }

    /// At most 256 characters are kept.
    pub(super) fn user_agent(&self) -> Option<String> {
        self.client
            .user_agent
            .as_ref()
            .map(|u| u.chars().take(256).collect())
    }
}

impl Store {
    pub async fn insert_audit(
        &self,
        user_id: Option<Uuid>,
        kind: &str,
        client: &ClientInfo,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let entry = AuditEntry {
            kind,
            client,
            detail,
        };
        let c = self.client().await?;
        c.execute(
            &c.prepare_cached(
                "INSERT INTO audit_events (user_id, kind, ip, user_agent, detail, created_at)
             VALUES ($1, $2, $3::text::inet, $4, $5, $6)",
            )
            .await?,
            &[
                &user_id,
                &entry.kind,
                &entry.ip(),
                &entry.user_agent(),
                entry.detail,
                &now,
            ],
        )
        .await?;
        Ok(())
    }

    /// A user's newest events first, without the admin API's actions on the
    /// account (their address is the admin's; the admin API shows them).
    pub async fn audit_for_user(
        &self,
        user_id: Uuid,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        super::retry::read(|| async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    &c.prepare_cached(
                        "SELECT kind, host(ip), user_agent, detail, created_at FROM audit_events
                     WHERE user_id = $1 AND kind NOT LIKE 'admin\\_%'
                     ORDER BY created_at DESC, id DESC LIMIT $2",
                    )
                    .await?,
                    &[&user_id, &limit],
                )
                .await?;
            audit_rows(&rows)
        })
        .await
    }
}

/// Rows of `SELECT kind, host(ip), user_agent, detail, created_at`, in order.
pub(crate) fn audit_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<AuditRow>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok(AuditRow {
                kind: r.try_get(0)?,
                ip: r.try_get(1)?,
                user_agent: r.try_get(2)?,
                detail: r.try_get(3)?,
                created_at: r.try_get(4)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(StoreError::from)
}
