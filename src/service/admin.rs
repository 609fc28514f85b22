//! The admin API's use cases (issue 18): find accounts, show one with its
//! sessions and recent events, ban and unban, force a 2FA reset, delete.
//! Every action is audited with the admin's address; the ones that change an
//! account write their audit row with the change.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::session::{end_other_sessions, list_sessions, SessionBody, SECOND_FACTORS};
use crate::audit::{self, AuditKind, ClientInfo};
use crate::domain::FieldError;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::admin::{AdminUser, UserSearch};
use crate::store::audit::{AuditEntry, AuditRow};
use crate::store::Store;

/// Who is using the admin API, and from where: the holder of the admin token,
/// or an admin signed in as themselves (`AUTHGATE_ADMIN_JWT=on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub client: ClientInfo,
    /// The admin's own account; None for the admin token.
    pub user: Option<Uuid>,
}

impl Admin {
    /// An action's audit detail `extra`, with who acted: `"by": "token"` or
    /// the admin's account id.
    fn detail(&self, mut extra: Value) -> Value {
        if let Value::Object(map) = &mut extra {
            let by = match self.user {
                Some(id) => json!(id),
                None => json!("token"),
            };
            map.insert("by".to_owned(), by);
        }
        extra
    }
}

/// Whether an access token's session may use the admin API: a live session
/// of an unbanned account with the admin role, from a login that passed a
/// second factor (a stolen password alone never reaches the admin API). Read
/// from the database on every call, so a revoked role counts at once.
pub async fn is_admin_session(
    state: &AppState,
    user: Uuid,
    session: Option<Uuid>,
) -> Result<bool, AppError> {
    let Some(session) = session else {
        return Ok(false);
    };
    Ok(state
        .store()
        .is_admin_session(user, session, &SECOND_FACTORS)
        .await?)
}

/// `authgate admin grant|revoke EMAIL`: gives or takes the admin role,
/// audited. False when no account has that e-mail.
pub async fn set_role(store: &Store, email: &str, admin: bool) -> Result<bool, AppError> {
    let kind = if admin {
        AuditKind::AdminRoleGranted
    } else {
        AuditKind::AdminRoleRevoked
    };
    let changed = store
        .set_role(
            email.trim(),
            admin,
            chrono::Utc::now(),
            AuditEntry {
                kind: kind.as_str(),
                client: &ClientInfo::default(),
                detail: &json!({"by": "command line"}),
            },
        )
        .await?;
    Ok(changed.is_some())
}

/// Page size when `limit` is not given, and its bounds.
pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;
/// The longest search: an e-mail address's longest.
pub const MAX_QUERY_CHARS: usize = crate::domain::email::MAX_EMAIL_CHARS;
/// The shape `createdAfter` and `createdBefore` take: an RFC 3339 time or a
/// date (empty: no bound). The calendar check is `parse_instant`'s.
pub const CREATED_PATTERN: &str = "^([0-9]{4}-[0-9]{2}-[0-9]{2}\
     (T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))?)?$";
/// Events shown with one account.
pub const AUDIT_SHOWN: i64 = 50;

/// `GET /admin/users`: one page of accounts, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminUsersPage {
    pub users: Vec<AdminUser>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /admin/users/{id}`: the account, its live sessions and its newest events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdminUserDetail {
    pub user: AdminUser,
    pub sessions: Vec<SessionBody>,
    /// The newest 50 events, admin actions included, newest first.
    pub audit: Vec<AuditRow>,
}

/// The answer of ban, unban and the 2FA reset: the account after the change,
/// and how many sessions ended with it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminActionBody {
    pub user: AdminUser,
    pub sessions_ended: u64,
}

/// The list's query parameters, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParams {
    pub search: UserSearch,
    pub limit: i64,
}

/// A cursor: the last row's `created_at` (microseconds) and id, as
/// `<micros>.<uuid>`. Opaque to clients.
fn encode_cursor(u: &AdminUser) -> String {
    format!("{}.{}", u.created_at.timestamp_micros(), u.id.simple())
}

fn decode_cursor(s: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = s.split_once('.')?;
    let at = DateTime::<Utc>::from_timestamp_micros(micros.parse().ok()?)?;
    Some((at, Uuid::try_parse(id).ok()?))
}

/// An instant of `createdAfter`/`createdBefore`: RFC 3339 (`2026-11-30T12:00:00Z`)
/// or a date (`2026-11-30`, midnight UTC).
fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc())
}

/// Parses `query`, `createdAfter`, `createdBefore`, `limit` and `cursor`;
/// every problem is reported at once. A `query` made only of digits, spaces
/// and `+()-.` with at least three digits searches phone numbers (by their
/// digits); anything else searches e-mail addresses (case-insensitive
/// substring). `createdAfter` is inclusive, `createdBefore` exclusive.
pub fn parse_list_params(pairs: &[(String, String)]) -> Result<ListParams, AppError> {
    let mut errors = Vec::new();
    let mut params = ListParams {
        search: UserSearch::default(),
        limit: DEFAULT_LIMIT,
    };
    let get = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    };
    if let Some(q) = get("query").filter(|q| !q.is_empty()) {
        let digits: String = q.chars().filter(char::is_ascii_digit).collect();
        let phone_like = q
            .chars()
            .all(|c| c.is_ascii_digit() || " +()-.".contains(c));
        if q.chars().count() > MAX_QUERY_CHARS {
            errors.push(FieldError::new(
                "query",
                "too_long",
                format!("query must be at most {MAX_QUERY_CHARS} characters"),
            ));
        } else if phone_like && digits.len() >= 3 {
            params.search.phone_digits = Some(digits);
        } else {
            params.search.email = Some(q.to_lowercase());
        }
    }
    for (name, slot) in [
        ("createdAfter", &mut params.search.created_from),
        ("createdBefore", &mut params.search.created_until),
    ] {
        if let Some(v) = get(name).filter(|v| !v.is_empty()) {
            match parse_instant(v) {
                Some(t) => *slot = Some(t),
                None => errors.push(FieldError::new(
                    name,
                    "invalid_format",
                    format!("{name} must be an RFC 3339 time or a date like 2026-11-30"),
                )),
            }
        }
    }
    if let (Some(from), Some(until)) = (params.search.created_from, params.search.created_until) {
        if from >= until {
            errors.push(FieldError::new(
                "createdBefore",
                "out_of_range",
                "createdBefore must be later than createdAfter",
            ));
        }
    }
    if let Some(l) = get("limit") {
        match l.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => params.limit = n,
            _ => errors.push(FieldError::new(
                "limit",
                "out_of_range",
                format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
            )),
        }
    }
    if let Some(c) = get("cursor").filter(|c| !c.is_empty()) {
        match decode_cursor(c) {
            Some(before) => params.search.before = Some(before),
            None => errors.push(FieldError::new(
                "cursor",
                "invalid_format",
                "cursor must be a nextCursor value from an earlier page",
            )),
        }
    }
    if errors.is_empty() {
        Ok(params)
    } else {
        Err(AppError::Validation(errors))
    }
}

/// One page of accounts.
pub async fn list_users(
    state: &AppState,
    admin: &Admin,
    params: ListParams,
) -> Result<AdminUsersPage, AppError> {
    // One more than the page, to know whether another page follows.
    let mut users = state
        .store()
        .search_users(&params.search, params.limit + 1)
        .await?;
    let more = i64::try_from(users.len()).unwrap_or(i64::MAX) > params.limit;
    users.truncate(usize::try_from(params.limit).unwrap_or(0));
    let next_cursor = if more {
        users.last().map(encode_cursor)
    } else {
        None
    };
    // Never the query itself: it may be someone's address or number.
    audit::record(
        state,
        None,
        AuditKind::AdminUsersSearched,
        &admin.client,
        admin.detail(json!({
            "byEmail": params.search.email.is_some(),
            "byPhone": params.search.phone_digits.is_some(),
            "byCreated": params.search.created_from.is_some()
                || params.search.created_until.is_some(),
            "page": params.search.before.is_some(),
            "results": users.len(),
        })),
    )
    .await;
    Ok(AdminUsersPage { users, next_cursor })
}

/// One account with its live sessions and newest events.
pub async fn show_user(
    state: &AppState,
    admin: &Admin,
    id: Uuid,
) -> Result<AdminUserDetail, AppError> {
    let user = state
        .store()
        .admin_user(id)
        .await?
        .ok_or(AppError::UserNotFound)?;
    audit::record(
        state,
        Some(id),
        AuditKind::AdminUserViewed,
        &admin.client,
        admin.detail(json!({})),
    )
    .await;
    let sessions = list_sessions(state, id, None).await?.sessions;
    let audit = state.store().admin_audit_of(id, AUDIT_SHOWN).await?;
    Ok(AdminUserDetail {
        user,
        sessions,
        audit,
    })
}

/// Bans (its sessions and access tokens end at once) or unbans an account.
pub async fn set_banned(
    state: &AppState,
    admin: &Admin,
    id: Uuid,
    banned: bool,
) -> Result<AdminActionBody, AppError> {
    let now = state.clock().now();
    let kind = if banned {
        AuditKind::AdminUserBanned
    } else {
        AuditKind::AdminUserUnbanned
    };
    let user = state
        .store()
        .set_banned(
            id,
            banned,
            now,
            AuditEntry {
                kind: kind.as_str(),
                client: &admin.client,
                detail: &admin.detail(json!({})),
            },
        )
        .await?
        .ok_or(AppError::UserNotFound)?;
    // After the ban committed: no login can start a session any more, so
    // this ends every session there will be.
    let sessions_ended = if banned {
        end_other_sessions(state, id, None).await?
    } else {
        0
    };
    tracing::info!(user = %id, banned, sessions_ended, "account ban changed by an admin");
    Ok(AdminActionBody {
        user,
        sessions_ended,
    })
}

/// Turns 2FA off, deletes the recovery codes and ends every session.
pub async fn reset_two_fa(
    state: &AppState,
    admin: &Admin,
    id: Uuid,
) -> Result<AdminActionBody, AppError> {
    let now = state.clock().now();
    let user = state
        .store()
        .reset_two_fa(
            id,
            now,
            AuditEntry {
                kind: AuditKind::AdminTwoFaReset.as_str(),
                client: &admin.client,
                detail: &admin.detail(json!({})),
            },
        )
        .await?
        .ok_or(AppError::UserNotFound)?;
    let sessions_ended = end_other_sessions(state, id, None).await?;
    tracing::info!(user = %id, sessions_ended, "2FA reset by an admin");
    Ok(AdminActionBody {
        user,
        sessions_ended,
    })
}

/// Deletes an account (see `Store::delete_user`); its tokens die at once.
pub async fn delete_user(state: &AppState, admin: &Admin, id: Uuid) -> Result<(), AppError> {
    let now = state.clock().now();
    let deleted = state
        .store()
        .delete_user(
            id,
            now,
            AuditEntry {
                kind: AuditKind::AdminUserDeleted.as_str(),
                client: &admin.client,
                detail: &admin.detail(json!({})),
            },
        )
        .await?;
    if !deleted {
        return Err(AppError::UserNotFound);
    }
    state.revocations().forget(id);
    tracing::info!(user = %id, "account deleted by an admin");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn query_picks_email_or_phone() {
        let p = parse_list_params(&pairs(&[("query", "Ada@Example")])).unwrap();
        assert_eq!(p.search.email.as_deref(), Some("ada@example"));
        assert_eq!(p.search.phone_digits, None);
        let p = parse_list_params(&pairs(&[("query", "+1 (415) 555-01")])).unwrap();
        assert_eq!(p.search.phone_digits.as_deref(), Some("141555501"));
        assert_eq!(p.limit, DEFAULT_LIMIT);
    }

    #[test]
    fn created_bounds_take_rfc3339_or_a_date_and_must_be_ordered() {
        let p = parse_list_params(&pairs(&[
            ("createdAfter", "2026-11-30"),
            ("createdBefore", "2026-12-01T10:00:00+01:00"),
        ]))
        .unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(p.search.created_from, Some(at("2026-11-30T00:00:00Z")));
        assert_eq!(p.search.created_until, Some(at("2026-12-01T09:00:00Z")));
        let fields = |list: &[(&str, &str)]| match parse_list_params(&pairs(list)) {
            Err(AppError::Validation(errors)) => {
                errors.iter().map(|e| (e.field, e.code)).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fields(&[
                ("createdAfter", "yesterday"),
                ("createdBefore", "2026-13-01")
            ]),
            [
                ("createdAfter", "invalid_format"),
                ("createdBefore", "invalid_format")
            ]
        );
        assert_eq!(
            fields(&[
                ("createdAfter", "2026-12-01"),
                ("createdBefore", "2026-12-01")
            ]),
            [("createdBefore", "out_of_range")]
        );
    }

    #[test]
    fn bad_params_are_all_reported() {
        let Err(AppError::Validation(list)) =
            parse_list_params(&pairs(&[("limit", "0"), ("cursor", "nope")]))
        else {
            panic!("expected a validation error");
        };
        let fields: Vec<_> = list.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["limit", "cursor"]);
        assert!(parse_list_params(&pairs(&[("limit", "101")])).is_err());
    }

    #[test]
    fn cursor_round_trips() {
        let at = DateTime::<Utc>::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        let s = format!("{}.{}", at.timestamp_micros(), id.simple());
        assert_eq!(decode_cursor(&s), Some((at, id)));
    }
}
