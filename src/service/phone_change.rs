//! Changing the account's phone number (issue 16, item 2): a code goes to the
//! new number; the right code switches to exactly that number, verified, in the
//! statement that accepts it (with its audit row), so the number cannot change
//! without its code and the code cannot be used without the change; every
//! other session ends in that statement too. Then the old number is told by SMS.

use uuid::Uuid;

use crate::actors::otp::{Confirms, Issued};
use crate::audit::{AuditKind, ClientInfo};
use crate::domain::otp::Purpose;
use crate::domain::phone::PhoneE164;
use crate::domain::sms_text::{Locale, NoticeKind};
use crate::domain::user::User;
use crate::error::{AppError, StateConflict};
use crate::service::account::current_user;
use crate::service::codes::{check_failure, code_lock_started};
use crate::service::notice::{self, Notice};
use crate::service::session::require_step_up;
use crate::state::AppState;
use crate::store::otp::CheckOutcome;
use crate::store::users::AccountChange;

/// Notices of a change per old number and day.
const NOTICES_PER_PHONE_DAY: i32 = 3;
/// A notice that could not go out within this long is dropped.
const NOTICE_TTL: chrono::Duration = chrono::Duration::hours(1);

/// `POST /account/phone/change`: sends a code to `phone`, after the step-up
/// an account with 2FA needs. 409 `phone_unchanged` for the account's own
/// number, 409 `phone_taken` for a number another account verified; the
/// destination rules (422) and every quota and cooldown of codes apply.
pub async fn start(
    state: &AppState,
    user_id: Uuid,
    session: Option<Uuid>,
    phone: PhoneE164,
    client: ClientInfo,
) -> Result<Issued, AppError> {
    let user = current_user(state, user_id).await?;
    require_step_up(state, user.id, session, user.two_fa).await?;
    if user.phone == phone.as_str() {
        return Err(AppError::State(StateConflict::PhoneUnchanged));
    }
    // Checked again, atomically, by the statement that switches the number.
    if state
        .store()
        .verified_phone_holder(phone.as_str())
        .await?
        .is_some_and(|holder| holder != user.id)
    {
        return Err(AppError::PhoneTaken);
    }
    state
        .otp()
        .issue(user.id, Purpose::PhoneChange, None, phone, client)
        .await
}

/// `POST /account/phone/change/confirm`: the right code switches the number
/// to the one it was sent to, verified, unless another account verified that
/// number meanwhile (409 `phone_taken`). Every session but `keep` ends.
pub async fn confirm(
    state: &AppState,
    user_id: Uuid,
    keep: Option<Uuid>,
    code: String,
    client: ClientInfo,
) -> Result<User, AppError> {
    let before = current_user(state, user_id).await?;
    let confirms = Confirms {
        change: AccountChange::PhoneChanged,
        audit: AuditKind::PhoneChanged,
        client,
        recovery_set: None,
        keep,
    };
    // Bound to the number read here: the notice goes to the number the change
    // replaced, never to one another request put in between.
    let (outcome, updated) = state
        .otp()
        .confirm_bound(
            user_id,
            Purpose::PhoneChange,
            code,
            confirms,
            before.phone.clone(),
        )
        .await?;
    if outcome != CheckOutcome::Accepted {
        code_lock_started(user_id, outcome);
        return Err(check_failure(outcome, state.clock().now()));
    }
    let user = match updated {
        Some(user) => user,
        None => {
            // The guard refused; the code is used either way.
            return Err(match state.store().user_by_id(user_id).await? {
                None => AppError::InvalidToken,
                Some(now) if now.phone != before.phone => {
                    AppError::State(StateConflict::PhoneChangeConflict)
                }
                Some(_) => AppError::PhoneTaken,
            });
        }
    };
    tracing::info!(
        user_id = %user.id,
        old = %PhoneE164::from_trusted(before.phone.clone()).masked(),
        new = %PhoneE164::from_trusted(user.phone.clone()).masked(),
        "phone number changed"
    );
    // Only a number the account had proved is told: an unverified one may
    // belong to someone else.
    if before.is_phone_verified {
        // The language is read only here, where a notice goes out: a rare
        // path, unlike the code paths the `User` body serves.
        let locale = match state.store().user_locale(user.id).await {
            Ok(locale) => locale.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "account language unreadable: notice in English");
                Locale::default()
            }
        };
        let now = state.clock().now();
        notice::queue(
            state,
            Notice {
                to: PhoneE164::from_trusted(before.phone),
                kind: NoticeKind::PhoneChanged,
                locale,
                per_phone_day: NOTICES_PER_PHONE_DAY,
                ttl: NOTICE_TTL,
            },
            now,
        )
        .await;
    }
    // The statement ended the other sessions and told the other processes.
    state.revocations().forget(user.id);
    Ok(user)
}
