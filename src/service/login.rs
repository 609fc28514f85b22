//! The password check of a login, and device tokens. A service room: it may use
//! `store`, `hasher`, `audit` and `domain`; routes and actors call it.
//!
//! [`check_password`] is the one path every login takes, whatever its input: one
//! admission statement, one argon2 verify, one settlement statement and one audit
//! row, for a wrong password, an unknown e-mail, a locked account and a malformed
//! e-mail alike, so none can be told apart by its answer, its timing or the work
//! it costs (issue 14, item 9). A refused admission verifies against the dummy
//! hash and answers exactly like a wrong password.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::{Rng, RngCore};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit::{self, AuditKind, ClientInfo};
use crate::domain::email::Email;
use crate::domain::password::Password;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::logins::{AdmissionRules, Settled, Settlement, Slot};
use crate::store::Store;

/// How long an admitted attempt holds its slot at most. Longer than the
/// longest queue wait (`AUTHGATE_HASH_QUEUE_TIMEOUT`, at most 30 s) plus a hash,
/// so a live attempt never loses its slot; a process that died frees it after
/// this.
pub const ADMISSION_LEASE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a device token stays valid after the login that issued it.
pub const DEVICE_TOKEN_TTL: chrono::Duration = chrono::Duration::days(90);
/// Devices kept per account; the oldest go first.
pub const MAX_DEVICES: i64 = 20;

/// What a login presents.
pub struct Attempt {
    /// As sent (trimmed and lower-cased here when it parses).
    pub email: String,
    pub password: Password,
    /// The `deviceToken` of an earlier login, if any.
    pub device_token: Option<String>,
}

/// A right password, with what the rest of the login needs.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user_id: Uuid,
    pub phone: String,
    pub two_fa: bool,
    pub password_hash: String,
}

/// The admission rules of this process's configuration.
pub fn rules(state: &AppState) -> AdmissionRules {
    let q = &state.config().quotas;
    AdmissionRules {
        ceiling: q.lockout_after,
        window: q.lockout_window,
        base: q.lockout_base,
        max: q.lockout_max,
    }
}

/// A reserved attempt. Settled explicitly; if the request is dropped first (its
/// client went away mid-hash), the slot is released in the background, so an
/// abandoned attempt neither counts as a failure nor holds the slot.
struct Reservation {
    store: Store,
    user: Option<Uuid>,
    device: Option<Uuid>,
    slot: Slot,
    rules: AdmissionRules,
    now: DateTime<Utc>,
    pending: bool,
}

impl Reservation {
    async fn settle(
        mut self,
        outcome: Settlement,
        now: DateTime<Utc>,
    ) -> Result<Settled, AppError> {
        self.pending = false;
        Ok(self
            .store
            .settle_login(self.user, self.device, self.slot, outcome, now, &self.rules)
            .await?)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.pending || (self.user.is_none() && self.device.is_none()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, user, device, slot, rules, now) = (
            self.store.clone(),
            self.user,
            self.device,
            self.slot,
            self.rules,
            self.now,
        );
        runtime.spawn(async move {
            if let Err(e) = store
                .settle_login(user, device, slot, Settlement::Release, now, &rules)
                .await
            {
                tracing::warn!(error = %e, "abandoned login slot not released; it expires");
            }
        });
    }
}

/// Checks a password under the admission rules. `Ok(None)`: the answer is 401
/// `invalid_credentials` (wrong password, unknown or malformed e-mail, locked
/// account or device, or the ceiling's worth of attempts already in flight).
pub async fn check_password(
    state: &AppState,
    client: &ClientInfo,
    attempt: Attempt,
) -> Result<Option<Verified>, AppError> {
    let rules = rules(state);
    let now = state.clock().now();
    // A malformed address cannot belong to an account: it looks up one that the
    // table's CHECK makes impossible, through the same statement.
    let email = Email::parse(&attempt.email)
        .map(|e| e.as_str().to_owned())
        .unwrap_or_default();
    let device_hash = attempt.device_token.as_deref().map(device_token_hash);
    let slot = Slot {
        id: Uuid::new_v4(),
        decoy: i16::from(rand::rngs::OsRng.gen::<u8>() % 64),
    };
    let admission = state
        .store()
        .admit_login(
            &email,
            device_hash.as_deref(),
            slot,
            now,
            ADMISSION_LEASE,
            &rules,
        )
        .await?;
    let admitted = admission.as_ref().filter(|a| a.admitted);
    let reservation = Reservation {
        store: state.store().clone(),
        user: admitted
            .filter(|a| a.device_id.is_none())
            .map(|a| a.user_id),
        device: admitted.and_then(|a| a.device_id),
        slot,
        rules,
        now,
        pending: true,
    };
    let stored_hash = admitted.map(|a| a.password_hash.clone());
    let password_ok = match state.hasher().verify(attempt.password, stored_hash).await {
        Ok(ok) => ok,
        Err(e) => {
            // Shed or failed before any verdict: the slot goes back unused.
            let _ = reservation
                .settle(Settlement::Release, state.clock().now())
                .await;
            return Err(e);
        }
    };
    let outcome = if password_ok {
        Settlement::Success
    } else {
        Settlement::Failure
    };
    let settled = reservation.settle(outcome, state.clock().now()).await?;
    let Some(found) = admission else {
        audit::record(
            state,
            None,
            AuditKind::LoginFailed,
            client,
            json!({ "reason": "unknown_email" }),
        )
        .await;
        return Ok(None);
    };
    let device = found.device_id.is_some();
    if !found.admitted {
        audit::record(
            state,
            Some(found.user_id),
            AuditKind::LoginFailed,
            client,
            json!({ "reason": "locked", "device": device }),
        )
        .await;
        return Ok(None);
    }
    if password_ok && found.banned {
        // Said only after the right password, and then as a wrong one would
        // be: the answer tells nobody that the account exists or is banned.
        audit::record(
            state,
            Some(found.user_id),
            AuditKind::LoginFailed,
            client,
            json!({ "reason": "banned", "device": device }),
        )
        .await;
        return Ok(None);
    }
    if password_ok {
        return Ok(Some(Verified {
            user_id: found.user_id,
            phone: found.phone,
            two_fa: found.two_fa,
            password_hash: found.password_hash,
        }));
    }
    audit::record(
        state,
        Some(found.user_id),
        AuditKind::LoginFailed,
        client,
        json!({ "reason": "wrong_password", "failuresInARow": settled.failures, "device": device }),
    )
    .await;
    if let Some(until) = settled.locked_until {
        // Only this device when it admitted the attempt; else untrusted clients.
        tracing::warn!(user_id = %found.user_id, %until, device, "login locked after failed passwords");
        audit::record(
            state,
            Some(found.user_id),
            AuditKind::LockedOut,
            client,
            json!({ "until": until, "failuresInARow": settled.failures, "device": device }),
        )
        .await;
    }
    Ok(None)
}

/// A new device token: 256 random bits, URL-safe base64. Only its hash is stored.
fn new_device_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a device token; domain-separated from refresh tokens, so
/// neither can stand in for the other even if their tables were mixed up.
pub fn device_token_hash(token: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"authgate/device/v1\0");
    h.update(token.trim().as_bytes());
    h.finalize().to_vec()
}

/// Issues a device token for `user` after a successful login.
pub async fn issue_device_token(state: &AppState, user: Uuid) -> Result<String, AppError> {
    let token = new_device_token();
    let now = state.clock().now();
    state
        .store()
        .insert_device_token(
            user,
            &device_token_hash(&token),
            now,
            now + DEVICE_TOKEN_TTL,
            MAX_DEVICES,
        )
        .await?;
    Ok(token)
}
