//! Recovery codes, the use cases: minting a set (when 2FA turns on, and on
//! request), and spending one code to finish a 2FA login without the phone.
//! A service room: it uses `store`, `crypto`, `domain` and the session step-up;
//! routes and the flow actor call it.
//!
//! The codes are shown once, in the answer that creates them; only their keyed
//! hashes are stored (`Keys::recovery_hash`), and neither form is ever logged.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::audit::{AuditKind, ClientInfo};
use crate::domain::recovery::{generate_set, RecoveryCode};
use crate::domain::user::User;
use crate::error::{AppError, StateConflict};
use crate::service::account::current_user;
use crate::service::session::require_step_up;
use crate::state::AppState;
use crate::store::audit::AuditEntry;
use crate::store::otp::CodeGuard;
use crate::store::recovery::RecoveryUse;

/// A fresh set: what the user is shown, and what is stored.
pub struct NewSet {
    /// `xxxxx-xxxxx`, in the order shown.
    pub codes: Vec<String>,
    /// `Keys::recovery_hash` of each code, bound to the user.
    pub hashes: Vec<Vec<u8>>,
}

/// Draws a set of codes for `user_id` from the OS CSPRNG.
pub fn new_set(state: &AppState, user_id: Uuid) -> NewSet {
    let set = generate_set(&mut rand::rngs::OsRng);
    NewSet {
        hashes: set
            .iter()
            .map(|c| state.keys().recovery_hash(&user_id, c.as_str()).to_vec())
            .collect(),
        codes: set.iter().map(RecoveryCode::display).collect(),
    }
}

/// `POST /account/2fa/recovery-codes`: a new set, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"recoveryCodes": ["7kq4m-x2hpt", "c9rzw-4nfa8", "m3v6y-pq2ke", "h8tjd-5wxc3", "b2nfr-q7m9s", "x5kpe-3zh4v", "t9wqa-6rcm2", "f4yhn-8dk5p", "r6mzc-2tbx9", "w3jq8-v5nka"]}))]
pub struct RecoveryCodesBody {
    /// Ten single-use codes, `xxxxx-xxxxx`; case, spaces and hyphens are
    /// ignored when one is typed. Shown only in this answer: store them.
    pub recovery_codes: Vec<String>,
}

/// `POST /account/2fa/enable/confirm`: the user (2FA on) and its first
/// recovery codes, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "3c931f6d-b04b-41e8-b991-036f086d9090", "email": "ada@example.com", "phone": "+14155550100", "firstName": "Ada", "lastName": "Lovelace", "twoFA": true, "isPhoneVerified": true, "createdAt": "2026-11-27T10:42:17.628Z", "updatedAt": "2026-11-27T10:44:02.311Z", "recoveryCodes": ["7kq4m-x2hpt", "c9rzw-4nfa8", "m3v6y-pq2ke", "h8tjd-5wxc3", "b2nfr-q7m9s", "x5kpe-3zh4v", "t9wqa-6rcm2", "f4yhn-8dk5p", "r6mzc-2tbx9", "w3jq8-v5nka"]}))]
pub struct TwoFaEnabledBody {
    pub id: Uuid,
    pub email: String,
    pub phone: String,
    pub first_name: String,
    pub last_name: String,
    #[serde(rename = "twoFA")]
    pub two_fa: bool,
    pub is_phone_verified: bool,
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::user::iso8601")]
    pub updated_at: DateTime<Utc>,
    /// Ten single-use codes, `xxxxx-xxxxx`, each able to finish one 2FA login
    /// instead of the SMS code. Shown only in this answer: store them.
    pub recovery_codes: Vec<String>,
}

impl TwoFaEnabledBody {
    pub fn new(user: User, recovery_codes: Vec<String>) -> TwoFaEnabledBody {
        TwoFaEnabledBody {
            id: user.id,
            email: user.email,
            phone: user.phone,
            first_name: user.first_name,
            last_name: user.last_name,
            two_fa: user.two_fa,
            is_phone_verified: user.is_phone_verified,
            created_at: user.created_at,
            updated_at: user.updated_at,
            recovery_codes,
        }
    }
}

/// Replaces the caller's recovery codes: 409 `two_fa_not_enabled` without 2FA;
/// 401 `step_up_required` unless the caller's session is a login with a second
/// factor within `AUTHGATE_STEP_UP_WINDOW`. The old codes stop working in the
/// commit that stores the new ones; the event `recovery_codes_replaced` is
/// written in it.
pub async fn replace(
    state: &AppState,
    user_id: Uuid,
    session: Option<Uuid>,
    client: &ClientInfo,
) -> Result<RecoveryCodesBody, AppError> {
    let user = current_user(state, user_id).await?;
    if !user.two_fa {
        return Err(AppError::State(StateConflict::TwoFaNotEnabled));
    }
    require_step_up(state, user_id, session, user.two_fa).await?;
    let set = new_set(state, user_id);
    let detail = serde_json::json!({});
    let replaced = state
        .store()
        .replace_recovery_codes(
            user_id,
            &set.hashes,
            state.clock().now(),
            AuditEntry {
                kind: AuditKind::RecoveryCodesReplaced.as_str(),
                client,
                detail: &detail,
            },
        )
        .await?;
    if !replaced {
        // 2FA went off between the read above and the locked re-read.
        return Err(AppError::State(StateConflict::TwoFaNotEnabled));
    }
    tracing::info!(%user_id, "recovery codes replaced");
    Ok(RecoveryCodesBody {
        recovery_codes: set.codes,
    })
}

/// Spends `code` for a login of `user_id` (flow `flow_id`), in one statement
/// that also settles the account's wrong-code count and writes the event.
pub async fn use_code(
    state: &AppState,
    user_id: Uuid,
    flow_id: Uuid,
    code: &RecoveryCode,
    client: &ClientInfo,
) -> Result<RecoveryUse, AppError> {
    let q = &state.config().quotas;
    let guard = CodeGuard {
        max_failures: q.code_failures_max,
        lock_base: q.code_lock_base,
        lock_max: q.code_lock_max,
    };
    let hashes = state.keys().recovery_hashes(&user_id, code.as_str());
    let detail = serde_json::json!({ "flowId": flow_id });
    let outcome = state
        .store()
        .use_recovery_code(
            user_id,
            flow_id,
            &hashes,
            state.clock().now(),
            guard,
            client,
            &detail,
        )
        .await?;
    if let RecoveryUse::Used { remaining } = outcome {
        tracing::info!(%user_id, remaining, "recovery code used");
    }
    Ok(outcome)
}
