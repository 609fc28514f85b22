//! `FlowActor`: one per login flow waiting for its SMS code. It runs the pure
//! state machine (`domain::login_flow`), calls the OTP actors and the token
//! issuer, persists every transition with compare-and-set, and stops when the flow
//! completes, locks or expires (a timer fires at the flow's expiry).
//!
//! Actors are a cache and a serialisation point, not the truth: the
//! `FlowRegistry` rebuilds a flow's actor from PostgreSQL when a request for it
//! arrives at a process where it does not live, and a transition that loses the
//! compare-and-set to another process reloads the flow and applies its event again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;
use uuid::Uuid;

use crate::audit::{AuditKind, ClientInfo};
use crate::domain::login_flow::{self, Effect, Event, FlowError, FlowState, Limits, Reply};
use crate::domain::otp::Purpose;
use crate::domain::phone::PhoneE164;
use crate::error::{AppError, GoneReason};
use crate::metrics::FlowEvent;
use crate::routes::auth::{issue_tokens, TokensBody};
use crate::state::AppState;
use crate::store::otp::CheckOutcome;

/// How long a caller waits for a flow actor before answering 503.
const CALL_TIMEOUT_MS: u64 = 15_000;
/// How long a finished flow's row stays, so late requests get a precise 410.
const KEEP_FINISHED: chrono::Duration = chrono::Duration::hours(1);

/// What a resend answers.
#[derive(Debug, Clone, Copy)]
pub struct Resent {
    pub expires_at: DateTime<Utc>,
    pub resend_after: DateTime<Utc>,
}

pub enum FlowMsg {
    Verify {
        code: String,
        client: ClientInfo,
        reply: RpcReplyPort<Result<TokensBody, AppError>>,
    },
    Resend {
        client: ClientInfo,
        reply: RpcReplyPort<Result<Resent, AppError>>,
    },
    /// The flow's expiry timer.
    Tick,
}

/// The limits of the state machine, from configuration.
pub fn limits(config: &crate::config::Config) -> Limits {
    let d = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    Limits {
        max_code_attempts: config.otp_max_attempts,
        max_resends: config.login_max_resends,
        resend_cooldown: d(config.otp_resend_cooldown),
        code_ttl: d(config.otp_expiration),
        flow_ttl: d(config.login_flow_ttl),
    }
}

/// When a flow row may be deleted.
pub fn purge_after(state: &FlowState, now: DateTime<Utc>) -> DateTime<Utc> {
    state.expires_at().unwrap_or(now) + KEEP_FINISHED
}

/// The 4xx a refused step answers.
pub fn flow_error(e: FlowError, now: DateTime<Utc>) -> AppError {
    match e {
        FlowError::InvalidCredentials => AppError::InvalidCredentials,
        FlowError::InvalidCode { attempts_left } => AppError::InvalidCode { attempts_left },
        FlowError::CodeExpired => AppError::Gone(GoneReason::CodeExpired),
        FlowError::Locked => AppError::Gone(GoneReason::FlowLocked),
        FlowError::Expired => AppError::Gone(GoneReason::FlowExpired),
        FlowError::Finished | FlowError::Rejected | FlowError::OutOfOrder => {
            AppError::Gone(GoneReason::FlowFinished)
        }
        FlowError::ResendTooSoon { retry_after } => AppError::TooManyRequests {
            retry_after: (retry_after - now)
                .to_std()
                .unwrap_or(Duration::from_secs(1)),
        },
        FlowError::ResendLimit => AppError::ResendLimit,
    }
}

pub struct FlowArgs {
    pub app: AppState,
    pub registry: FlowRegistry,
    pub flow_id: Uuid,
    pub stored: crate::store::flows::StoredFlow,
}

pub struct FlowActor;

pub struct FlowActorState {
    app: AppState,
    registry: FlowRegistry,
    flow_id: Uuid,
    user_id: Uuid,
    phone: PhoneE164,
    state: FlowState,
    version: i32,
    /// Who sent the latest request, for the audit trail.
    client: ClientInfo,
}

impl Actor for FlowActor {
    type Msg = FlowMsg;
    type State = FlowActorState;
    type Arguments = FlowArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: FlowArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let now = args.app.clock().now();
        if let Some(expires) = args.stored.state.expires_at() {
            let wait = (expires - now).to_std().unwrap_or(Duration::ZERO);
            // A little after expiry, so the machine sees `now >= expires_at`.
            myself.send_after(wait + Duration::from_millis(50), || FlowMsg::Tick);
        }
        Ok(FlowActorState {
            app: args.app,
            registry: args.registry,
            flow_id: args.flow_id,
            user_id: args.stored.user_id,
            phone: PhoneE164::from_trusted(args.stored.phone),
            state: args.stored.state,
            version: args.stored.version,
            client: ClientInfo::default(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.registry.forget(state.flow_id, &myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FlowMsg::Verify {
                code,
                client,
                reply,
            } => {
                s.client = client;
                let _ = reply.send(verify(s, code).await);
            }
            FlowMsg::Resend { client, reply } => {
                s.client = client;
                let _ = reply.send(resend(s).await);
            }
            FlowMsg::Tick => {
                let now = s.app.clock().now();
                match s.state.expires_at() {
                    // The app clock may lag the timer; look again shortly.
                    Some(expires) if now < expires => {
                        let wait = (expires - now).to_std().unwrap_or(Duration::ZERO);
                        myself.send_after(wait + Duration::from_millis(50), || FlowMsg::Tick);
                    }
                    _ => {
                        if let Err(e) = apply(s, Event::Tick).await {
                            tracing::warn!(flow_id = %s.flow_id, error = %e, "could not record flow expiry");
                        }
                    }
                }
            }
        }
        if s.state.is_terminal() {
            myself.stop(None);
        }
        Ok(())
    }
}

/// Runs one event through the machine and persists the result with
/// compare-and-set; on a lost race, reloads and applies the event again.
async fn apply(s: &mut FlowActorState, event: Event) -> Result<login_flow::Step, AppError> {
    let limits = limits(s.app.config());
    for _ in 0..3 {
        let now = s.app.clock().now();
        let step = login_flow::transition(&s.state, event, now, &limits);
        if step.state == s.state {
            return Ok(step);
        }
        let purge = purge_after(&step.state, now);
        match s
            .app
            .store()
            .update_flow(s.flow_id, s.version, &step.state, now, purge)
            .await?
        {
            Some(version) => {
                s.version = version;
                s.state = step.state.clone();
                audit(s, &step).await;
                return Ok(step);
            }
            None => reload(s).await?,
        }
    }
    Err(AppError::Unavailable(
        "login flow is contended; retry".into(),
    ))
}

async fn reload(s: &mut FlowActorState) -> Result<(), AppError> {
    match s.app.store().load_flow(s.flow_id).await? {
        Some(stored) => {
            s.state = stored.state;
            s.version = stored.version;
            Ok(())
        }
        None => Err(AppError::Gone(GoneReason::FlowExpired)),
    }
}

async fn audit(s: &FlowActorState, step: &login_flow::Step) {
    use crate::domain::login_flow::AuditKind as Flow;
    for effect in &step.effects {
        let Effect::Audit(kind) = effect else {
            continue;
        };
        // Counted here, after the compare-and-set persisted the transition, so
        // each flow's end is counted once across every process.
        match kind {
            Flow::LoginSucceeded => s.app.metrics().flow(FlowEvent::Completed),
            Flow::FlowLocked => s.app.metrics().flow(FlowEvent::Locked),
            Flow::FlowExpired => s.app.metrics().flow(FlowEvent::Expired),
            Flow::PasswordRejected | Flow::CodeSent | Flow::CodeRejected => {}
        }
        tracing::info!(flow_id = %s.flow_id, user_id = %s.user_id, event = ?kind, "login flow");
        let (kind, mut detail) = match kind {
            Flow::LoginSucceeded => (AuditKind::LoginSucceeded, json!({ "amr": ["pwd", "sms"] })),
            Flow::PasswordRejected => (
                AuditKind::LoginFailed,
                json!({ "reason": "wrong_password" }),
            ),
            Flow::CodeSent => (AuditKind::CodeSent, json!({ "purpose": "login_2fa" })),
            Flow::CodeRejected => (AuditKind::CodeFailed, json!({ "purpose": "login_2fa" })),
            Flow::FlowLocked => (AuditKind::LoginFailed, json!({ "reason": "flow_locked" })),
            Flow::FlowExpired => (AuditKind::LoginFailed, json!({ "reason": "flow_expired" })),
        };
        detail["flowId"] = json!(s.flow_id);
        crate::audit::record(&s.app, Some(s.user_id), kind, &s.client, detail).await;
    }
}

async fn verify(s: &mut FlowActorState, code: String) -> Result<TokensBody, AppError> {
    // Expired or finished flows answer before any code is looked at.
    let tick = apply(s, Event::Tick).await?;
    if let Err(e) = tick.reply {
        return Err(flow_error(e, s.app.clock().now()));
    }
    if let FlowState::OtpPending {
        code_expires_at, ..
    } = s.state
    {
        if s.app.clock().now() >= code_expires_at {
            return Err(AppError::Gone(GoneReason::CodeExpired));
        }
    }
    let outcome = s
        .app
        .otp()
        .check(s.user_id, Purpose::Login2fa, Some(s.flow_id), code)
        .await?;
    let correct = match outcome {
        CheckOutcome::Accepted => true,
        CheckOutcome::Rejected { .. } => false,
        // Another request (perhaps on another process) used this flow's code.
        CheckOutcome::Unusable(f) if f.state == crate::domain::otp::CodeState::Used => {
            return Err(AppError::Gone(GoneReason::FlowFinished))
        }
        CheckOutcome::Unusable(f) if f.state == crate::domain::otp::CodeState::Dead => {
            return Err(AppError::Gone(GoneReason::FlowLocked))
        }
        other => {
            let now = s.app.clock().now();
            return Err(crate::routes::account::check_failure(other, now));
        }
    };
    let step = apply(s, Event::CodeSubmitted { correct }).await?;
    match step.reply {
        Ok(Reply::Tokens(amr)) => {
            issue_tokens(&s.app, s.user_id, amr.as_strs(), Uuid::new_v4()).await
        }
        Ok(_) => Err(AppError::internal("code step answered without tokens")),
        Err(e) => Err(flow_error(e, s.app.clock().now())),
    }
}

async fn resend(s: &mut FlowActorState) -> Result<Resent, AppError> {
    let now = s.app.clock().now();
    let limits = limits(s.app.config());
    // Ask the machine first without persisting: the SMS must go out before the
    // state says it did, and a refused resend changes nothing.
    let preview = login_flow::transition(&s.state, Event::ResendRequested, now, &limits);
    if let Err(e) = preview.reply {
        // Persist what the refusal may have changed (an expiry).
        let _ = apply(s, Event::Tick).await;
        return Err(flow_error(e, s.app.clock().now()));
    }
    let issued = s
        .app
        .otp()
        .issue(
            s.user_id,
            Purpose::Login2fa,
            Some(s.flow_id),
            s.phone.clone(),
        )
        .await?;
    let step = apply(s, Event::ResendRequested).await?;
    match step.reply {
        Ok(Reply::CodeResent { resend_after, .. }) => Ok(Resent {
            expires_at: issued.expires_at,
            resend_after,
        }),
        Ok(_) => Err(AppError::internal("resend answered without a code")),
        Err(e) => Err(flow_error(e, s.app.clock().now())),
    }
}

/// Where a flow's actor lives in this process. Bounded by the number of pending
/// flows: actors remove themselves when they stop.
#[derive(Clone, Default)]
pub struct FlowRegistry {
    live: Arc<Mutex<HashMap<Uuid, ActorRef<FlowMsg>>>>,
}

impl FlowRegistry {
    /// Live flow actors in this process.
    pub fn live(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, ActorRef<FlowMsg>>> {
        match self.live.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn forget(&self, id: Uuid, actor: &ActorRef<FlowMsg>) {
        let mut map = self.lock();
        if map.get(&id).is_some_and(|a| a.get_id() == actor.get_id()) {
            map.remove(&id);
        }
    }

    /// Spawns the actor of a pending flow (just created, or loaded from the database).
    pub async fn spawn(
        &self,
        app: &AppState,
        flow_id: Uuid,
        stored: crate::store::flows::StoredFlow,
    ) -> Result<ActorRef<FlowMsg>, AppError> {
        let args = FlowArgs {
            app: app.clone(),
            registry: self.clone(),
            flow_id,
            stored,
        };
        let (actor, _) = Actor::spawn_linked(None, FlowActor, args, app.supervisor().get_cell())
            .await
            .map_err(|e| AppError::Unavailable(format!("flow actor: {e}").into()))?;
        let mut map = self.lock();
        if let Some(existing) = map.get(&flow_id) {
            // Another request rebuilt it first: keep one actor per flow.
            actor.stop(None);
            return Ok(existing.clone());
        }
        map.insert(flow_id, actor.clone());
        Ok(actor)
    }

    /// The flow's actor, rebuilt from PostgreSQL if it does not live here.
    /// A finished or unknown flow answers its 410 without an actor.
    async fn actor_for(
        &self,
        app: &AppState,
        flow_id: Uuid,
    ) -> Result<ActorRef<FlowMsg>, AppError> {
        if let Some(a) = self.lock().get(&flow_id).cloned() {
            return Ok(a);
        }
        let stored = app
            .store()
            .load_flow(flow_id)
            .await?
            .ok_or(AppError::Gone(GoneReason::FlowExpired))?;
        if stored.state.is_terminal() {
            let now = app.clock().now();
            let step =
                login_flow::transition(&stored.state, Event::Tick, now, &limits(app.config()));
            return Err(step
                .reply
                .err()
                .map_or(AppError::Gone(GoneReason::FlowFinished), |e| {
                    flow_error(e, now)
                }));
        }
        self.spawn(app, flow_id, stored).await
    }

    /// Submits a code to a flow.
    pub async fn verify(
        &self,
        app: &AppState,
        flow_id: Uuid,
        code: String,
        client: ClientInfo,
    ) -> Result<TokensBody, AppError> {
        // A message queued to an actor that stopped (its flow just ended) gets no
        // answer: look the flow up again, which then answers from the database.
        for _ in 0..3 {
            let actor = self.actor_for(app, flow_id).await?;
            let (code, client) = (code.clone(), client.clone());
            match ractor::call_t!(
                actor,
                |reply| FlowMsg::Verify {
                    code,
                    client,
                    reply
                },
                CALL_TIMEOUT_MS
            ) {
                Ok(r) => return r,
                Err(ractor::RactorErr::Timeout) => break,
                Err(_) => self.forget(flow_id, &actor),
            }
        }
        Err(AppError::Unavailable("login flow did not answer".into()))
    }

    /// Asks a flow for a new code.
    pub async fn resend(
        &self,
        app: &AppState,
        flow_id: Uuid,
        client: ClientInfo,
    ) -> Result<Resent, AppError> {
        for _ in 0..3 {
            let actor = self.actor_for(app, flow_id).await?;
            let client = client.clone();
            match ractor::call_t!(
                actor,
                |reply| FlowMsg::Resend { client, reply },
                CALL_TIMEOUT_MS
            ) {
                Ok(r) => return r,
                Err(ractor::RactorErr::Timeout) => break,
                Err(_) => self.forget(flow_id, &actor),
            }
        }
        Err(AppError::Unavailable("login flow did not answer".into()))
    }
}
