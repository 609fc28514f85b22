//! The OTP actors: issue and check one-time codes for a (user, purpose).
//!
//! Work is sharded by key: a user's codes always go to the same shard, so requests
//! for one key are handled in order, while unrelated users proceed in parallel on
//! other shards (a shard awaits the database inside its handler). The rules that
//! must hold across processes are enforced by `store::otp` in single statements;
//! the shards add ordering and a bounded queue, not correctness.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use uuid::Uuid;

use super::supervisor::{start_child, ChildSpec, Slot, SupervisorMsg};
use crate::audit::{AuditKind, ClientInfo};
use crate::clock::Clock;
use crate::crypto::Keys;
use crate::domain::otp::{self, Purpose};
use crate::domain::phone::{DestinationRefusal, PhoneE164};
use crate::domain::sms_text::Locale;
use crate::domain::user::User;
use crate::error::{AppError, SmsRefusal};
use crate::metrics::QuotaRefusal;
use crate::store::audit::AuditEntry;
use crate::store::otp::{CheckOutcome, CodeGuard, IssueOutcome, IssueRequest, OnAccept};
use crate::store::quotas::Quota;
use crate::store::users::AccountChange;
use crate::store::Store;

/// How long a caller waits for a shard before answering 503.
const CALL_TIMEOUT_MS: u64 = 10_000;
/// How often shard 0 purges finished codes, flows and expired refresh tokens.
const PURGE_EVERY: Duration = Duration::from_secs(300);
/// How long finished codes are kept, so "already used" / "expired" answers stay
/// precise for a while after the fact.
const KEEP_FINISHED: chrono::Duration = chrono::Duration::hours(1);

/// A code was issued: when it expires, and when another may be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    pub expires_at: DateTime<Utc>,
    pub resend_after: DateTime<Utc>,
}

pub enum OtpMsg {
    Issue {
        user_id: Uuid,
        purpose: Purpose,
        flow_id: Option<Uuid>,
        phone: PhoneE164,
        /// Who asked: the `code_sent` event is written with the code.
        client: ClientInfo,
        reply: RpcReplyPort<Result<Issued, AppError>>,
    },
    Check {
        user_id: Uuid,
        purpose: Purpose,
        flow_id: Option<Uuid>,
        code: String,
        /// Who asked: a wrong code's `code_failed` event (and the `locked_out`
        /// one it may start) is written by the check's own statement.
        client: ClientInfo,
        /// The account change a right code confirms, applied with the check.
        confirms: Option<Confirms>,
        /// The change's own parameter, for the changes that bind one.
        bound: Option<String>,
        reply: RpcReplyPort<Result<(CheckOutcome, Option<User>), AppError>>,
    },
    Purge,
    /// Give shared-quota units this process took but did not use back to
    /// their counters, so other processes can have them.
    ReturnUnits,
}

/// The account change a right code confirms, and who asked (for the audit event).
pub struct Confirms {
    pub change: AccountChange,
    pub audit: AuditKind,
    pub client: ClientInfo,
    /// The keyed hashes the account's recovery codes become when the change
    /// applies (see `OnAccept::recovery_set`).
    pub recovery_set: Option<Vec<Vec<u8>>>,
    /// For a change that ends the other sessions: the caller's, which goes on.
    pub keep: Option<Uuid>,
}

/// Settings the shards share.
#[derive(Clone)]
pub struct OtpSettings {
    pub store: Store,
    pub keys: Keys,
    pub clock: Clock,
    pub code_length: u8,
    pub ttl: Duration,
    pub max_attempts: u32,
    pub cooldown: Duration,
    pub sender_name: String,
    /// The code texts per language and purpose (`AUTHGATE_SMS_TEMPLATES_DIR`).
    pub templates: Arc<crate::domain::sms_text::Templates>,
    /// `SMS_WEBOTP_DOMAIN`: adds the `@domain #code` last line.
    pub webotp_domain: Option<String>,
    /// Send quotas and the destination rules.
    pub quotas: crate::config::QuotaConfig,
    /// Codes issued and checked, quota refusals (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Numbers whose code is fixed (`AUTHGATE_TEST_PHONES`).
    pub test_phones: Arc<crate::domain::phone::TestPhones>,
    /// Called after a code and its SMS are committed: wakes the SMS actor at once.
    pub on_enqueued: Arc<dyn Fn() + Send + Sync>,
}

pub struct OtpActor;

pub struct OtpState {
    settings: OtpSettings,
}

impl Actor for OtpActor {
    type Msg = OtpMsg;
    type State = OtpState;
    type Arguments = (OtpSettings, bool);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (settings, purger): (OtpSettings, bool),
    ) -> Result<Self::State, ActorProcessingErr> {
        if purger {
            myself.send_interval(PURGE_EVERY, || OtpMsg::Purge);
            myself.send_interval(crate::store::reserved::HOLD / 2, || OtpMsg::ReturnUnits);
        }
        Ok(OtpState { settings })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let s = &state.settings;
        match msg {
            OtpMsg::Issue {
                user_id,
                purpose,
                flow_id,
                phone,
                client,
                reply,
            } => {
                let result = issue(s, user_id, purpose, flow_id, &phone, &client).await;
                if result.is_ok() {
                    s.metrics.code_issued(purpose);
                }
                let _ = reply.send(result);
            }
            OtpMsg::Check {
                user_id,
                purpose,
                flow_id,
                code,
                client,
                confirms,
                bound,
                reply,
            } => {
                let now = s.clock.now();
                let guard = CodeGuard {
                    max_failures: s.quotas.code_failures_max,
                    lock_base: s.quotas.code_lock_base,
                    lock_max: s.quotas.code_lock_max,
                };
                let detail = serde_json::json!({});
                let on_accept = confirms.as_ref().map(|c| OnAccept {
                    change: c.change,
                    audit: AuditEntry {
                        kind: c.audit.as_str(),
                        client: &c.client,
                        detail: &detail,
                    },
                    recovery_set: c.recovery_set.as_deref(),
                    bound: bound.as_deref(),
                    keep: c.keep,
                });
                let result = s
                    .store
                    .check_code(
                        &s.keys,
                        user_id,
                        purpose,
                        flow_id,
                        &code,
                        now,
                        guard,
                        &client,
                        on_accept.as_ref(),
                    )
                    .await
                    .map_err(AppError::from);
                if let Ok((outcome, _)) = &result {
                    s.metrics.code_checked(purpose, outcome);
                }
                let _ = reply.send(result);
            }
            OtpMsg::ReturnUnits => {
                if let Err(e) = s.store.return_idle_units(s.clock.now()).await {
                    tracing::warn!(error = %e, "could not return unused quota units; they lapse with their window");
                }
            }
            OtpMsg::Purge => {
                let cutoff = s.clock.now() - KEEP_FINISHED;
                match s.store.purge(cutoff).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(rows = n, "purged finished codes, flows and tokens")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purge failed; will retry"),
                }
            }
        }
        Ok(())
    }
}

/// The quotas every SMS to `region` shares with every other send in the
/// cluster (the region's hourly ceiling, the global per-minute one): taken in
/// blocks, so no row that every sender shares is locked until a commit
/// (`store::reserved`). Codes and notices alike count against them.
pub fn shared_quotas(q: &crate::config::QuotaConfig, region: &str) -> [Quota; 2] {
    [
        Quota {
            key: format!("sms:region:{region}:h"),
            window: chrono::Duration::hours(1),
            limit: q.sms_region_limit(region),
        },
        Quota {
            key: "sms:global:m".to_owned(),
            window: chrono::Duration::minutes(1),
            limit: q.sms_global_per_minute,
        },
    ]
}

fn chrono_of(d: Duration) -> chrono::Duration {
    crate::clock::span(d)
}

async fn issue(
    s: &OtpSettings,
    user_id: Uuid,
    purpose: Purpose,
    flow_id: Option<Uuid>,
    phone: &PhoneE164,
    client: &ClientInfo,
) -> Result<Issued, AppError> {
    // Refuse before anything is stored or queued. A test number's SMS goes
    // nowhere, so no destination rule applies (Twilio's +1 500 numbers are
    // not mobile lines); the quotas still do.
    let q = &s.quotas;
    let fixed = s.test_phones.code_for(phone);
    let region = match fixed {
        Some(_) => phone.region().unwrap_or_else(|| "ZZ".to_owned()),
        None => phone
            .sms_destination(&q.sms_destinations)
            .map_err(|refusal| {
                AppError::SmsRefused(match refusal {
                    DestinationRefusal::Region => SmsRefusal::CountryNotAllowed,
                    DestinationRefusal::NumberType(_) => SmsRefusal::NotMobile,
                })
            })?,
    };
    let quotas = [
        Quota {
            key: format!("sms:phone:{}:h", phone.as_str()),
            window: chrono::Duration::hours(1),
            limit: q.sms_per_phone_hour,
        },
        Quota {
            key: format!("sms:phone:{}:d", phone.as_str()),
            window: chrono::Duration::days(1),
            limit: q.sms_per_phone_day,
        },
        Quota {
            key: format!("sms:user:{user_id}:h"),
            window: chrono::Duration::hours(1),
            limit: q.sms_per_account_hour,
        },
    ];
    let shared = shared_quotas(q, &region);
    let now = s.clock.now();
    let code = match fixed {
        Some(code) => code.to_owned(),
        None => otp::generate_code(&mut rand::rngs::OsRng, s.code_length),
    };
    let minutes = s.ttl.as_secs().div_ceil(60);
    // The text in every shipped language: the issue statement keeps the
    // account's own, so knowing the language costs no read of its own (a few
    // microseconds of rendering against a round trip to the database).
    let bodies = Locale::ALL.map(|locale| {
        (
            locale,
            s.templates.render(
                locale,
                purpose,
                &s.sender_name,
                &code,
                minutes,
                s.webotp_domain.as_deref(),
            ),
        )
    });
    let expires_at = now + chrono_of(s.ttl);
    let cooldown = chrono_of(s.cooldown);
    let mut detail = serde_json::json!({ "purpose": purpose.as_str() });
    if let Some(flow_id) = flow_id {
        detail["flowId"] = serde_json::json!(flow_id);
    }
    let outcome = s
        .store
        .issue_code(
            &s.keys,
            IssueRequest {
                user_id,
                purpose,
                flow_id,
                code: &code,
                sms_bodies: &bodies,
                phone,
                now,
                expires_at,
                max_attempts: i32::try_from(s.max_attempts).unwrap_or(i32::MAX),
                cooldown,
                quotas: &quotas,
                shared: &shared,
                audit: AuditEntry {
                    kind: AuditKind::CodeSent.as_str(),
                    client,
                    detail: &detail,
                },
            },
        )
        .await?;
    match outcome {
        IssueOutcome::Issued => {
            (s.on_enqueued)();
            Ok(Issued {
                expires_at,
                resend_after: now + cooldown,
            })
        }
        IssueOutcome::TooSoon { retry_after } => {
            s.metrics.quota_refused(QuotaRefusal::Cooldown);
            Err(AppError::TooManyRequests {
                retry_after: (retry_after - now)
                    .to_std()
                    .unwrap_or(Duration::from_secs(1)),
            })
        }
        IssueOutcome::Locked { until } => {
            s.metrics.quota_refused(QuotaRefusal::CodeLocked);
            Err(AppError::CodeEntryLocked {
                retry_after: (until - now).to_std().unwrap_or(Duration::from_secs(1)),
            })
        }
        IssueOutcome::QuotaExceeded { quota, retry_after } => {
            let (which, refusal) = match quota.split(':').nth(1) {
                Some("phone") => ("per-phone", QuotaRefusal::PerPhone),
                Some("user") => ("per-account", QuotaRefusal::PerAccount),
                Some("region") => ("per-region", QuotaRefusal::PerRegion),
                _ => ("global", QuotaRefusal::Global),
            };
            s.metrics.quota_refused(refusal);
            tracing::warn!(%user_id, quota = which, "SMS quota exceeded");
            Err(AppError::TooManyRequests {
                retry_after: (retry_after - now)
                    .to_std()
                    .unwrap_or(Duration::from_secs(1)),
            })
        }
    }
}

/// The handle routes and flows use: picks the shard of a key and calls it with a timeout.
#[derive(Clone)]
pub struct OtpService {
    shards: Arc<Vec<Slot<OtpMsg>>>,
}

impl OtpService {
    /// Starts `count` shards under the supervisor (restarted if they fail).
    pub async fn start(
        supervisor: &ActorRef<SupervisorMsg>,
        settings: OtpSettings,
        count: usize,
    ) -> Result<OtpService, String> {
        let mut shards = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let slot: Slot<OtpMsg> = Slot::default();
            let (settings, slot2) = (settings.clone(), slot.clone());
            let spec = ChildSpec::new(format!("otp-{i}"), move |sup| {
                let (settings, slot) = (settings.clone(), slot2.clone());
                async move {
                    let (actor, _) =
                        Actor::spawn_linked(None, OtpActor, (settings, i == 0), sup).await?;
                    slot.set(actor.clone());
                    Ok(actor.get_cell())
                }
            });
            start_child(supervisor, spec).await?;
            shards.push(slot);
        }
        Ok(OtpService {
            shards: Arc::new(shards),
        })
    }

    fn shard(&self, user_id: &Uuid, purpose: Purpose) -> Result<ActorRef<OtpMsg>, AppError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (user_id, purpose).hash(&mut h);
        let n = self.shards.len().max(1);
        let idx = usize::try_from(h.finish() % n as u64).unwrap_or(0);
        self.shards
            .get(idx)
            .and_then(Slot::get)
            .ok_or_else(|| AppError::Unavailable("OTP actor is down".into()))
    }

    /// Issues a code and queues its SMS.
    pub async fn issue(
        &self,
        user_id: Uuid,
        purpose: Purpose,
        flow_id: Option<Uuid>,
        phone: PhoneE164,
        client: ClientInfo,
    ) -> Result<Issued, AppError> {
        let actor = self.shard(&user_id, purpose)?;
        ractor::call_t!(
            actor,
            |reply| OtpMsg::Issue {
                user_id,
                purpose,
                flow_id,
                phone,
                client,
                reply
            },
            CALL_TIMEOUT_MS
        )
        .map_err(|e| AppError::Unavailable(format!("OTP actor: {e}").into()))?
    }

    /// Checks a code (the store decides atomically; a wrong code's audit
    /// events are written in the same statement).
    pub async fn check(
        &self,
        user_id: Uuid,
        purpose: Purpose,
        flow_id: Option<Uuid>,
        code: String,
        client: ClientInfo,
    ) -> Result<CheckOutcome, AppError> {
        let (outcome, _) = self
            .call_check(user_id, purpose, flow_id, code, client, None, None)
            .await?;
        Ok(outcome)
    }

    /// Checks an account code and, if right, applies the change it confirms and
    /// its audit event in the same statement. The user is returned as changed
    /// (`None` when the change's guard refused it).
    pub async fn confirm(
        &self,
        user_id: Uuid,
        purpose: Purpose,
        code: String,
        confirms: Confirms,
    ) -> Result<(CheckOutcome, Option<User>), AppError> {
        let client = confirms.client.clone();
        self.call_check(user_id, purpose, None, code, client, Some(confirms), None)
            .await
    }

    /// [`OtpService::confirm`] for a change that binds a value of its own
    /// (`AccountChange::PhoneChanged`: the phone the caller saw;
    /// `AccountChange::PasswordReset`: the new password's hash).
    pub async fn confirm_bound(
        &self,
        user_id: Uuid,
        purpose: Purpose,
        code: String,
        confirms: Confirms,
        bound: String,
    ) -> Result<(CheckOutcome, Option<User>), AppError> {
        let client = confirms.client.clone();
        self.call_check(
            user_id,
            purpose,
            None,
            code,
            client,
            Some(confirms),
            Some(bound),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_check(
        &self,
        user_id: Uuid,
        purpose: Purpose,
        flow_id: Option<Uuid>,
        code: String,
        client: ClientInfo,
        confirms: Option<Confirms>,
        bound: Option<String>,
    ) -> Result<(CheckOutcome, Option<User>), AppError> {
        let actor = self.shard(&user_id, purpose)?;
        ractor::call_t!(
            actor,
            |reply| OtpMsg::Check {
                user_id,
                purpose,
                flow_id,
                code,
                client,
                confirms,
                bound,
                reply
            },
            CALL_TIMEOUT_MS
        )
        .map_err(|e| AppError::Unavailable(format!("OTP actor: {e}").into()))?
    }
}
