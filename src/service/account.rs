//! Account changes confirmed by a code sent to the account's phone: verifying
//! the phone, turning 2FA on and off. Each change commits in the statement that
//! accepts the code (with its audit row); a 2FA change also ends the other
//! sessions, opened under the old rule, there. Turning 2FA on also stores a new
//! set of recovery codes in that statement, and turning it off deletes them.

use uuid::Uuid;

use crate::actors::otp::{Confirms, Issued};
use crate::audit::{AuditKind, ClientInfo};
use crate::domain::otp::Purpose;
use crate::domain::phone::PhoneE164;
use crate::domain::user::User;
use crate::error::{AppError, StateConflict};
use crate::service::codes::{check_failure, code_lock_started};
use crate::state::AppState;
use crate::store::otp::CheckOutcome;
use crate::store::users::AccountChange;

/// A change of the account that a code confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeAction {
    VerifyPhone,
    Enable2fa,
    Disable2fa,
}

impl CodeAction {
    pub fn purpose(self) -> Purpose {
        match self {
            CodeAction::VerifyPhone => Purpose::PhoneVerify,
            CodeAction::Enable2fa => Purpose::Enable2fa,
            CodeAction::Disable2fa => Purpose::Disable2fa,
        }
    }
}

/// The current user, or 401 if the token outlived its account.
pub async fn current_user(state: &AppState, user_id: Uuid) -> Result<User, AppError> {
    state
        .store()
        .user_by_id(user_id)
        .await?
        .ok_or(AppError::InvalidToken)
}

/// Sends the code for `action`, when the account's state allows it.
pub async fn send_code(
    state: &AppState,
    user_id: Uuid,
    action: CodeAction,
    client: ClientInfo,
) -> Result<Issued, AppError> {
    let u = current_user(state, user_id).await?;
    match action {
        CodeAction::VerifyPhone if u.is_phone_verified => {
            return Err(AppError::State(StateConflict::PhoneAlreadyVerified))
        }
        CodeAction::Enable2fa if u.two_fa => {
            return Err(AppError::State(StateConflict::TwoFaAlreadyEnabled))
        }
        CodeAction::Enable2fa if !u.is_phone_verified => {
            return Err(AppError::State(StateConflict::PhoneNotVerified))
        }
        CodeAction::Disable2fa if !u.two_fa => {
            return Err(AppError::State(StateConflict::TwoFaNotEnabled))
        }
        _ => {}
    }
    state
        .otp()
        .issue(
            u.id,
            action.purpose(),
            None,
            PhoneE164::from_trusted(u.phone),
            client,
        )
        .await
}

/// What a confirmed code changed.
#[derive(Debug)]
pub struct Confirmed {
    /// The user as changed.
    pub user: User,
    /// With [`CodeAction::Enable2fa`]: the new recovery codes, to be shown once.
    pub recovery_codes: Option<Vec<String>>,
}

/// Checks `code` for `action` and applies the change; `keep_session` (the
/// caller's) survives a 2FA change, every other session ends.
pub async fn confirm_code(
    state: &AppState,
    user_id: Uuid,
    keep_session: Option<Uuid>,
    action: CodeAction,
    code: String,
    client: ClientInfo,
) -> Result<Confirmed, AppError> {
    let (change, kind) = match action {
        CodeAction::VerifyPhone => (AccountChange::PhoneVerified, AuditKind::PhoneVerified),
        CodeAction::Enable2fa => (AccountChange::TwoFa(true), AuditKind::TwoFaEnabled),
        CodeAction::Disable2fa => (AccountChange::TwoFa(false), AuditKind::TwoFaDisabled),
    };
    // Drawn before the check so they are stored by its statement; shown only
    // if the change applied.
    let (recovery_set, recovery_codes) = match action {
        CodeAction::Enable2fa => {
            let set = crate::service::recovery::new_set(state, user_id);
            (Some(set.hashes), Some(set.codes))
        }
        CodeAction::Disable2fa => (Some(Vec::new()), None),
        CodeAction::VerifyPhone => (None, None),
    };
    let confirms = Confirms {
        change,
        audit: kind,
        client,
        recovery_set,
        keep: keep_session,
    };
    let (outcome, updated) = state
        .otp()
        .confirm(user_id, action.purpose(), code, confirms)
        .await?;
    if outcome != CheckOutcome::Accepted {
        code_lock_started(user_id, outcome);
        return Err(check_failure(outcome, state.clock().now()));
    }
    let user = match (updated, change) {
        (Some(u), _) => u,
        (None, AccountChange::TwoFa(true)) => {
            return Err(AppError::State(StateConflict::PhoneNotVerified))
        }
        // The guard refused: another account verified this phone first.
        (None, AccountChange::PhoneVerified)
            if state.store().user_by_id(user_id).await?.is_some() =>
        {
            return Err(AppError::PhoneTaken)
        }
        (None, _) => return Err(AppError::InvalidToken),
    };
    if let AccountChange::TwoFa(_) = change {
        // The statement ended the other sessions and told the other processes.
        state.revocations().forget(user.id);
    }
    tracing::info!(user_id = %user.id, purpose = action.purpose().as_str(), "code confirmed");
    Ok(Confirmed {
        user,
        recovery_codes,
    })
}
