//! Audit events: the security-relevant moments of an account (sign-up, logins,
//! codes sent and failed, lockouts, 2FA changes, refresh-token reuse), with the
//! client's address and user agent, kept in PostgreSQL and readable per user.
//!
//! Recording never fails a request: a lost audit row is logged, the answer stands.

use std::net::IpAddr;

use serde::Serialize;
use uuid::Uuid;

use crate::state::AppState;

/// Who made a request, as far as the edge can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    /// Truncated to 256 characters.
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Signup,
    /// Someone signed up with this account's e-mail or verified phone.
    SignupAttempted,
    LoginSucceeded,
    LoginFailed,
    LockedOut,
    CodeSent,
    CodeFailed,
    PhoneVerified,
    TwoFaEnabled,
    TwoFaDisabled,
    RefreshReuseDetected,
    /// A recovery code finished a login (detail: how many remain, the flow).
    RecoveryCodeUsed,
    /// The recovery codes were replaced by a new set.
    RecoveryCodesReplaced,
    /// The phone number was changed (detail: old and new, masked).
    PhoneChanged,
    /// The password was reset with an SMS code.
    PasswordReset,
    /// Admin API (the address is the admin's): a search of accounts (detail:
    /// how many matched, never the query), and one account viewed.
    AdminUsersSearched,
    AdminUserViewed,
    /// Admin API: the account was banned (its sessions end) or unbanned.
    AdminUserBanned,
    AdminUserUnbanned,
    /// Admin API: 2FA turned off and recovery codes deleted.
    AdminTwoFaReset,
    /// Admin API: the account was deleted; the row keeps only its id.
    AdminUserDeleted,
    /// `authgate admin grant|revoke`: the account's admin role changed.
    AdminRoleGranted,
    AdminRoleRevoked,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Signup => "signup",
            AuditKind::SignupAttempted => "signup_attempted",
            AuditKind::LoginSucceeded => "login_succeeded",
            AuditKind::LoginFailed => "login_failed",
            AuditKind::LockedOut => "locked_out",
            AuditKind::CodeSent => "code_sent",
            AuditKind::CodeFailed => "code_failed",
            AuditKind::PhoneVerified => "phone_verified",
            AuditKind::TwoFaEnabled => "two_fa_enabled",
            AuditKind::TwoFaDisabled => "two_fa_disabled",
            AuditKind::RefreshReuseDetected => "refresh_reuse_detected",
            AuditKind::RecoveryCodeUsed => "recovery_code_used",
            AuditKind::RecoveryCodesReplaced => "recovery_codes_replaced",
            AuditKind::PhoneChanged => "phone_changed",
            AuditKind::PasswordReset => "password_reset",
            AuditKind::AdminUsersSearched => "admin_users_searched",
            AuditKind::AdminUserViewed => "admin_user_viewed",
            AuditKind::AdminUserBanned => "admin_user_banned",
            AuditKind::AdminUserUnbanned => "admin_user_unbanned",
            AuditKind::AdminTwoFaReset => "admin_two_fa_reset",
            AuditKind::AdminUserDeleted => "admin_user_deleted",
            AuditKind::AdminRoleGranted => "admin_role_granted",
            AuditKind::AdminRoleRevoked => "admin_role_revoked",
        }
    }
}

/// Records an event; failures are logged, never returned.
pub async fn record(
    state: &AppState,
    user_id: Option<Uuid>,
    kind: AuditKind,
    client: &ClientInfo,
    detail: serde_json::Value,
) {
    let now = state.clock().now();
    if let Err(e) = state
        .store()
        .insert_audit(user_id, kind.as_str(), client, &detail, now)
        .await
    {
        tracing::warn!(kind = kind.as_str(), error = %e, "audit event not recorded");
    }
}
