//! Password reset by SMS (issue 16, item 3). Asking for a code answers the
//! same whether or not an account exists, and the look-up and the code are done
//! off the request, so neither the answer nor its timing tells. Confirming hashes
//! the new password first (the same work for every identifier), then one
//! statement accepts the code, sets the hash, clears the login lockouts and the
//! code lock, ends every session, refresh token and access token of the account
//! and writes the audit row.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::actors::otp::Confirms;
use crate::audit::{AuditKind, ClientInfo};
use crate::domain::email::Email;
use crate::domain::otp::Purpose;
use crate::domain::password::Password;
use crate::domain::phone::PhoneE164;
use crate::error::AppError;
use crate::service::codes::code_lock_started;
use crate::state::AppState;
use crate::store::otp::CheckOutcome;
use crate::store::users::AccountChange;

/// Who asks: exactly one of the account's e-mail or its verified phone.
#[derive(Debug, Clone)]
pub enum Identifier {
    Email(Email),
    Phone(PhoneE164),
}

impl Identifier {
    fn parts(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Identifier::Email(e) => (Some(e.as_str()), None),
            Identifier::Phone(p) => (None, Some(p.as_str())),
        }
    }
}

/// `POST /account/password/reset`: always this, whoever asked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"status": "code_sent_if_account_exists", "resendAfter": "2026-11-27T10:42:47.628Z"}))]
pub struct ResetStartedBody {
    #[schema(pattern = "^code_sent_if_account_exists$")]
    pub status: &'static str,
    /// When asking again may send another code (the resend cooldown from now,
    /// whether or not a code was sent).
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub resend_after: DateTime<Utc>,
}

/// `POST /account/password/reset/confirm`: the password was reset.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResetDoneBody {
    #[schema(pattern = "^password_reset$")]
    pub status: &'static str,
}

/// Answers at once and sends the code in the background: to the account's
/// verified phone, if the identifier names an account that has one. Refusals
/// (cooldown, quotas, code lock, destination) are logged, not answered: they
/// would tell that the account exists. Only the per-IP limit of the route
/// (429, the same for everyone) shows.
pub fn start(state: &AppState, who: Identifier, client: ClientInfo) -> ResetStartedBody {
    let now = state.clock().now();
    let resend_after = crate::clock::after(now, state.config().otp_resend_cooldown);
    let state = state.clone();
    tokio::spawn(async move { send_code(&state, who, client).await });
    ResetStartedBody {
        status: "code_sent_if_account_exists",
        resend_after,
    }
}

async fn send_code(state: &AppState, who: Identifier, client: ClientInfo) {
    let (email, phone) = who.parts();
    let account = match state.store().reset_account(email, phone).await {
        Ok(account) => account,
        Err(e) => {
            tracing::warn!(error = %e, "password reset: account look-up failed");
            return;
        }
    };
    let Some(account) = account else {
        tracing::info!("password reset asked for no account");
        return;
    };
    let Some(phone) = account.verified_phone else {
        tracing::info!(user_id = %account.id, "password reset asked; no verified phone, no code");
        return;
    };
    let issued = state
        .otp()
        .issue(
            account.id,
            Purpose::PasswordReset,
            None,
            PhoneE164::from_trusted(phone),
            client,
        )
        .await;
    match issued {
        Ok(_) => tracing::info!(user_id = %account.id, "password reset code sent"),
        Err(e) => {
            tracing::info!(user_id = %account.id, refused = e.code(), "password reset code not sent")
        }
    }
}

/// Sets `password` if `code` is the live reset code of the account `who`
/// names. Every failure (unknown account, no code, wrong, used, expired or
/// superseded code, code entry locked) is 401 `invalid_code` alike; a wrong
/// code still counts toward the account's ceiling of wrong codes.
pub async fn confirm(
    state: &AppState,
    who: Identifier,
    code: String,
    password: Password,
    client: ClientInfo,
) -> Result<ResetDoneBody, AppError> {
    // First, for every identifier: the same bounded work whoever it names.
    let hash = state.hasher().hash(password).await?;
    let (email, phone) = who.parts();
    let account = state.store().reset_account(email, phone).await?;
    // An unknown identifier still costs a check statement (which finds no
    // code for the nil id and writes nothing), so it takes as long as a wrong code.
    let user_id = account.map(|a| a.id).unwrap_or(uuid::Uuid::nil());
    let confirms = Confirms {
        change: AccountChange::PasswordReset,
        audit: AuditKind::PasswordReset,
        client,
        recovery_set: None,
        keep: None,
    };
    let (outcome, updated) = state
        .otp()
        .confirm_bound(user_id, Purpose::PasswordReset, code, confirms, hash)
        .await?;
    if outcome != CheckOutcome::Accepted || updated.is_none() {
        code_lock_started(user_id, outcome);
        return Err(AppError::InvalidResetCode);
    }
    // The statement ended every session and notified the other processes.
    state.revocations().forget(user_id);
    tracing::info!(%user_id, "password reset");
    Ok(ResetDoneBody {
        status: "password_reset",
    })
}
