//! Notices: SMS that tell an account's owner something happened (not codes).
//! Like codes, they count against the regional and global SMS ceilings, and
//! each kind has its own per-phone daily quota so no one can flood a number
//! through them. They are written in the account's language (the operator's
//! override files apply as to codes). Best effort: a refused or failed notice
//! is logged, never answered.

use chrono::{DateTime, Utc};

use crate::domain::phone::PhoneE164;
use crate::domain::sms_text::{Locale, NoticeKind};
use crate::state::AppState;
use crate::store::quotas::Quota;

/// One notice to queue.
pub struct Notice {
    pub to: PhoneE164,
    /// What it tells; its name is the outbox purpose and the per-phone
    /// quota's name.
    pub kind: NoticeKind,
    /// The language of the account it is about.
    pub locale: Locale,
    pub per_phone_day: i32,
    /// Dropped if it could not go out within this long.
    pub ttl: chrono::Duration,
}

/// Queues `notice` now: a unit of each shared ceiling, then the outbox row and
/// its per-phone quota in one transaction. Returns whether it was queued.
pub async fn queue(state: &AppState, notice: Notice, now: DateTime<Utc>) -> bool {
    let phone = &notice.to;
    let purpose = notice.kind.as_str();
    let sms = &state.config().sms;
    let body = sms
        .templates
        .render_notice(notice.locale, notice.kind, &sms.sender_name);
    let units = match units(state, phone, now).await {
        Ok(units) => units,
        Err(why) => {
            tracing::info!(purpose, why, "notice skipped");
            return false;
        }
    };
    let quota = Quota {
        key: format!("notice:{purpose}:{}:d", phone.as_str()),
        window: chrono::Duration::days(1),
        limit: notice.per_phone_day,
    };
    let msg = crate::store::outbox::NewSms {
        to: phone,
        body: &body,
        purpose,
        expires_at: Some(now + notice.ttl),
    };
    match state
        .store()
        .enqueue_sms_within(state.keys(), now, msg, std::slice::from_ref(&quota))
        .await
    {
        Ok(true) => {
            state.sms().nudge();
            true
        }
        Ok(false) => {
            release(state, units);
            tracing::info!(purpose, "notice skipped: daily notices spent");
            false
        }
        Err(e) => {
            release(state, units);
            tracing::warn!(purpose, error = %e, "notice not queued");
            false
        }
    }
}

/// A unit of each shared SMS quota for a notice to `phone`, or why not.
async fn units(
    state: &AppState,
    phone: &PhoneE164,
    now: DateTime<Utc>,
) -> Result<Vec<crate::store::reserved::Unit>, &'static str> {
    let q = &state.config().quotas;
    let region = phone
        .sms_destination(&q.sms_destinations)
        .map_err(|_| "destination no longer allowed")?;
    let store = state.store();
    let client = store.client().await.map_err(|_| "database unavailable")?;
    let mut units = Vec::new();
    for quota in crate::actors::otp::shared_quotas(q, &region) {
        match store.take_unit(&client, &quota, now).await {
            Ok(Ok(unit)) => units.push(unit),
            Ok(Err(_)) => {
                release(state, units);
                return Err("regional or global SMS ceiling reached");
            }
            Err(_) => {
                release(state, units);
                return Err("database unavailable");
            }
        }
    }
    Ok(units)
}

fn release(state: &AppState, units: Vec<crate::store::reserved::Unit>) {
    for unit in units {
        state.store().release_unit(unit);
    }
}
