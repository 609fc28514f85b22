//! Sign-up: one hash, one statement that creates the account (or, for a taken
//! e-mail or verified phone, creates nothing), and an answer of the same shape
//! either way, so sign-up does not tell which details are registered. The
//! owner of taken details is told by SMS, off the request.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::ClientInfo;
use crate::domain::phone::PhoneE164;
use crate::domain::sms_text::NoticeKind;
use crate::domain::user::{NewUser, User};
use crate::error::AppError;
use crate::service::notice::{self, Notice};
use crate::state::AppState;
use crate::store::users::{Holder, Signup, Taken};

/// Notices about sign-ups with a registered identifier, per phone and day: the
/// owner learns of an attempt, and no one can flood a phone through sign-ups.
const NOTICES_PER_PHONE_DAY: i32 = 3;
/// A notice that could not go out within this long is dropped.
const NOTICE_TTL: chrono::Duration = chrono::Duration::hours(1);

/// Signs `new_user` up. By default a registered e-mail (or a phone another
/// account verified) answers like a fresh sign-up ([`look_alike`]);
/// `AUTHGATE_SIGNUP_REVEAL_TAKEN` turns that into 409 `email_taken` /
/// `phone_taken`.
pub async fn sign_up(
    state: &AppState,
    new_user: NewUser,
    client: &ClientInfo,
) -> Result<User, AppError> {
    let hash = state.hasher().hash(new_user.password.clone()).await?;
    let now = state.clock().now();
    // The statement also writes the audit row of either outcome.
    match state
        .store()
        .insert_user(&new_user, &hash, now, client)
        .await?
    {
        Signup::Created(user) => {
            tracing::info!(user_id = %user.id, "user signed up");
            Ok(user)
        }
        Signup::Taken { by, .. } if state.config().signup_reveal_taken => Err(match by {
            Taken::Email => AppError::EmailTaken,
            Taken::Phone => AppError::PhoneTaken,
        }),
        Signup::Taken { by, holder } => {
            let matched = match by {
                Taken::Email => "email",
                Taken::Phone => "phone",
            };
            tracing::info!(
                matched,
                "sign-up with a registered identifier; answered as new"
            );
            if let Some(holder) = holder {
                notify_owner(state, holder, now);
            }
            Ok(look_alike(new_user, now))
        }
    }
}

/// The body a fresh sign-up of `new_user` would have answered: a random id,
/// the submitted (normalised) fields, nothing verified.
fn look_alike(new_user: NewUser, now: DateTime<Utc>) -> User {
    User {
        id: Uuid::new_v4(),
        email: new_user.email.as_str().to_owned(),
        phone: new_user.phone.as_str().to_owned(),
        first_name: new_user.first_name.as_str().to_owned(),
        last_name: new_user.last_name.as_str().to_owned(),
        two_fa: false,
        is_phone_verified: false,
        created_at: now,
        updated_at: now,
    }
}

/// Queues the "someone tried to sign up with your details" SMS to the owner's
/// verified phone, off the request so the answer takes no longer than a fresh
/// sign-up's. A notice counts against the regional and global SMS ceilings, or
/// sign-ups with taken details could pump SMS past them.
fn notify_owner(state: &AppState, holder: Holder, now: DateTime<Utc>) {
    let Some(phone) = holder.verified_phone else {
        return;
    };
    let state = state.clone();
    tokio::spawn(async move {
        let notice = Notice {
            to: PhoneE164::from_trusted(phone),
            kind: NoticeKind::SignupAttempt,
            locale: holder.locale,
            per_phone_day: NOTICES_PER_PHONE_DAY,
            ttl: NOTICE_TTL,
        };
        if !notice::queue(&state, notice, now).await {
            tracing::info!(user_id = %holder.id, "sign-up notice not queued");
        }
    });
}
