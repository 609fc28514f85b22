//! `FlowActor`: one per *active* login flow waiting for its SMS code. It runs the
//! pure state machine (`domain::login_flow`), calls the OTP actors and the token
//! issuer, persists every transition with compare-and-set, and stops when the
//! flow completes, locks or expires, or when no request came for a while.
//!
//! Actors are a cache and a serialisation point, not the truth: the
//! `FlowRegistry` rebuilds a flow's actor from PostgreSQL when a request for it
//! arrives at a process where it does not live, and a transition that loses the
//! compare-and-set to another process reloads the flow and applies its event again.
//! So an idle actor is only a cache entry, and it is dropped: a pending flow costs
//! a row in PostgreSQL, not an actor, a task and a timer in memory (100,000
//! pending flows would otherwise hold 100,000 of each; see
//! `benches/pending_flows.rs`).
//!
//! Expiry does not need the flow's actor either: one `FlowSweeper` per process
//! (a supervised child) looks every [`SWEEP_EVERY`] for pending flows past their
//! deadline with one indexed query, moves them to `Expired` through the state
//! machine with compare-and-set, and writes their audit rows in the same
//! transaction (`FOR UPDATE SKIP LOCKED`, so several processes share the work and
//! each flow's expiry is recorded and counted once). Flows whose process died, or
//! whose actor is gone, expire on time all the same. The same tick stops idle
//! actors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;
use uuid::Uuid;

use super::supervisor::{start_child, ChildSpec};
use crate::audit::{AuditKind, ClientInfo};
use crate::domain::login_flow::{self, Effect, Event, FlowError, FlowState, Limits, Reply};
use crate::domain::otp::Purpose;
use crate::domain::phone::PhoneE164;
use crate::domain::recovery::RecoveryCode;
use crate::error::{AppError, GoneReason};
use crate::metrics::FlowEvent;
use crate::service::codes::{check_failure, code_lock_started};
use crate::service::session::{issue_tokens, TokensBody};
use crate::state::AppState;
use crate::store::flows::SweptState;
use crate::store::otp::CheckOutcome;

/// How long a caller waits for a flow actor before answering 503.
const CALL_TIMEOUT_MS: u64 = 15_000;
/// How long a finished flow's row stays, so late requests get a precise 410.
const KEEP_FINISHED: chrono::Duration = chrono::Duration::hours(1);
/// How often each process sweeps for due flows (and idle actors). A flow
/// expires at most about this long after its deadline, whichever process
/// started it and whether that process still runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Due flows expired per transaction of the sweep, and batches per sweep.
const SWEEP_BATCH: i64 = 1_000;
const MAX_SWEEP_BATCHES: usize = 100;
/// A flow actor with no request for this long stops; the next request rebuilds it.
const IDLE_STOP: Duration = Duration::from_secs(30);
/// With more than `BUSY_ACTORS` live, actors stop after `IDLE_STOP_BUSY` instead:
/// the cache stays small when many flows are pending at once.
const BUSY_ACTORS: usize = 1_000;
const IDLE_STOP_BUSY: Duration = Duration::from_secs(1);

/// What a resend answers.
#[derive(Debug, Clone, Copy)]
pub struct Resent {
    pub expires_at: DateTime<Utc>,
    pub resend_after: DateTime<Utc>,
}

/// What starting a flow answers (the login route's `otp_required` body).
#[derive(Debug, Clone)]
pub struct Started {
    pub flow_id: Uuid,
    /// The phone the code went to, all but the last two digits masked.
    pub phone_hint: String,
    /// Expiry of the code just sent.
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
    /// A recovery code instead of the SMS code.
    Recover {
        code: RecoveryCode,
        client: ClientInfo,
        reply: RpcReplyPort<Result<TokensBody, AppError>>,
    },
    /// From the sweeper: no request looked this flow up since `since`; stop
    /// unless one did meanwhile.
    Idle { since: Instant },
}

/// How a flow is named in logs: a flow id is a bearer secret until the flow
/// ends (with the code, it finishes the login), so logs carry only a short
/// hash of it, enough to follow one flow's lines and match a client's report.
pub fn flow_tag(id: &Uuid) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    hex::encode(digest.get(..6).unwrap_or_default())
}

/// The limits of the state machine, from configuration.
pub fn limits(config: &crate::config::Config) -> Limits {
    let d = crate::clock::span;
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
        _myself: ActorRef<Self::Msg>,
        args: FlowArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // No timer: the sweeper expires the flow, and stops this actor when idle.
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
            FlowMsg::Recover {
                code,
                client,
                reply,
            } => {
                s.client = client;
                let _ = reply.send(recover(s, code).await);
            }
            FlowMsg::Idle { since } => {
                if s.registry.unused_since(s.flow_id, &myself, since) {
                    myself.stop(Some("idle".into()));
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
        // Written by the code's own statements, in the same commit as the
        // code they describe (`store::otp`).
        if matches!(kind, Flow::CodeSent | Flow::CodeRejected) {
            continue;
        }
        tracing::info!(flow = %flow_tag(&s.flow_id), user_id = %s.user_id, event = ?kind, "login flow");
        let (kind, mut detail) = match kind {
            Flow::LoginSucceeded => {
                let amr = step
                    .effects
                    .iter()
                    .find_map(|e| match e {
                        Effect::IssueTokens(amr) => Some(*amr),
                        _ => None,
                    })
                    .unwrap_or(login_flow::Amr::PwdSms);
                (AuditKind::LoginSucceeded, json!({ "amr": amr.as_strs() }))
            }
            Flow::PasswordRejected => (
                AuditKind::LoginFailed,
                json!({ "reason": "wrong_password" }),
            ),
            Flow::CodeSent | Flow::CodeRejected => continue,
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
        .check(
            s.user_id,
            Purpose::Login2fa,
            Some(s.flow_id),
            code,
            s.client.clone(),
        )
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
        // The account's code entry is locked: the flow stays as it is (it
        // expires on its own), and every verify answers the lock.
        locked @ CheckOutcome::Locked { .. } => {
            code_lock_started(s.user_id, locked);
            return Err(check_failure(locked, s.app.clock().now()));
        }
        other => {
            let now = s.app.clock().now();
            return Err(check_failure(other, now));
        }
    };
    let step = apply(s, Event::CodeSubmitted { correct }).await?;
    match step.reply {
        Ok(Reply::Tokens(amr)) => {
            let mut tokens =
                issue_tokens(&s.app, s.user_id, amr.as_strs(), Uuid::new_v4(), &s.client).await?;
            tokens.device_token =
                Some(crate::service::login::issue_device_token(&s.app, s.user_id).await?);
            Ok(tokens)
        }
        Ok(_) => Err(AppError::internal("code step answered without tokens")),
        Err(e) => Err(flow_error(e, s.app.clock().now())),
    }
}

/// Finishes the login with a recovery code: the code is spent in one statement
/// (`service::recovery::use_code`), then the machine moves on as for an SMS
/// code, with amr `["pwd","otp"]`. A wrong one costs one of the flow's tries
/// (the answer's `attemptsLeft`) and counts toward the account's ceiling.
async fn recover(s: &mut FlowActorState, code: RecoveryCode) -> Result<TokensBody, AppError> {
    use crate::store::recovery::RecoveryUse;
    let tick = apply(s, Event::Tick).await?;
    if let Err(e) = tick.reply {
        return Err(flow_error(e, s.app.clock().now()));
    }
    // A flow that would refuse any code (no tries left) spends none.
    let now = s.app.clock().now();
    let preview = login_flow::transition(
        &s.state,
        Event::RecoveryCodeSubmitted { correct: true },
        now,
        &limits(s.app.config()),
    );
    if !matches!(preview.reply, Ok(Reply::Tokens(_))) {
        let step = apply(s, Event::RecoveryCodeSubmitted { correct: false }).await?;
        return Err(step.reply.err().map_or_else(
            || AppError::internal("refused recovery step answered"),
            |e| flow_error(e, s.app.clock().now()),
        ));
    }
    let used =
        crate::service::recovery::use_code(&s.app, s.user_id, s.flow_id, &code, &s.client).await?;
    let remaining = match used {
        RecoveryUse::Used { remaining } => remaining,
        RecoveryUse::Wrong => {
            let step = apply(s, Event::RecoveryCodeSubmitted { correct: false }).await?;
            return Err(match step.reply {
                Err(e) => flow_error(e, s.app.clock().now()),
                Ok(_) => AppError::internal("wrong recovery code answered"),
            });
        }
        // As with an SMS code: the flow stays as it is, every try answers the lock.
        RecoveryUse::Locked { until, by_this_try } => {
            let locked = CheckOutcome::Locked { until, by_this_try };
            code_lock_started(s.user_id, locked);
            return Err(check_failure(locked, s.app.clock().now()));
        }
    };
    let step = apply(s, Event::RecoveryCodeSubmitted { correct: true }).await?;
    match step.reply {
        Ok(Reply::Tokens(amr)) => {
            let mut tokens =
                issue_tokens(&s.app, s.user_id, amr.as_strs(), Uuid::new_v4(), &s.client).await?;
            tokens.device_token =
                Some(crate::service::login::issue_device_token(&s.app, s.user_id).await?);
            tokens.recovery_codes_left = Some(remaining);
            Ok(tokens)
        }
        Ok(_) => Err(AppError::internal("recovery step answered without tokens")),
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
            s.client.clone(),
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

/// A live flow actor and when a request last looked it up.
struct Entry {
    actor: ActorRef<FlowMsg>,
    used: Instant,
}

/// Where a flow's actor lives in this process: a cache of the flows requests are
/// using. Actors remove themselves when they stop; the sweeper stops idle ones,
/// so this holds the active flows, not every pending one.
#[derive(Clone, Default)]
pub struct FlowRegistry {
    live: Arc<Mutex<HashMap<Uuid, Entry>>>,
}

impl FlowRegistry {
    /// Live flow actors in this process.
    pub fn live(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        match self.live.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn forget(&self, id: Uuid, actor: &ActorRef<FlowMsg>) {
        let mut map = self.lock();
        if map
            .get(&id)
            .is_some_and(|e| e.actor.get_id() == actor.get_id())
        {
            map.remove(&id);
        }
    }

    /// The live actor of a flow, marked as just used.
    fn lookup(&self, id: Uuid) -> Option<ActorRef<FlowMsg>> {
        let mut map = self.lock();
        let entry = map.get_mut(&id)?;
        entry.used = Instant::now();
        Some(entry.actor.clone())
    }

    /// True when no request looked `actor` up since `since` (or it is no longer
    /// this flow's actor): it may stop.
    fn unused_since(&self, id: Uuid, actor: &ActorRef<FlowMsg>, since: Instant) -> bool {
        match self.lock().get(&id) {
            Some(e) if e.actor.get_id() == actor.get_id() => e.used <= since,
            _ => true,
        }
    }

    /// Asks the actors nobody used lately to stop: after [`IDLE_STOP`], or after
    /// [`IDLE_STOP_BUSY`] when more than [`BUSY_ACTORS`] are live.
    fn stop_idle(&self) -> usize {
        let now = Instant::now();
        let idle: Vec<(ActorRef<FlowMsg>, Instant)> = {
            let map = self.lock();
            let limit = if map.len() > BUSY_ACTORS {
                IDLE_STOP_BUSY
            } else {
                IDLE_STOP
            };
            map.values()
                .filter(|e| now.saturating_duration_since(e.used) >= limit)
                .map(|e| (e.actor.clone(), e.used))
                .collect()
        };
        for (actor, since) in &idle {
            let _ = actor.send_message(FlowMsg::Idle { since: *since });
        }
        idle.len()
    }

    /// Stops the local actor of a flow that ended elsewhere (its state is stale).
    fn stop_ended(&self, id: Uuid) {
        if let Some(e) = self.lock().get(&id) {
            e.actor.stop(Some("flow ended".into()));
        }
    }

    /// Starts a 2FA login flow once the password was right: issues the first code
    /// (into the SMS outbox), persists the flow in `state` (what the machine
    /// answered to `PasswordChecked`), gives it an actor here, counts and audits
    /// it. The login route's path after the password check, and the bench's.
    pub async fn start(
        &self,
        app: &AppState,
        user_id: Uuid,
        phone: String,
        state: FlowState,
        now: DateTime<Utc>,
        client: &ClientInfo,
    ) -> Result<Started, AppError> {
        let flow_id = Uuid::new_v4();
        let phone_e164 = PhoneE164::from_trusted(phone.clone());
        let issued = app
            .otp()
            .issue(
                user_id,
                Purpose::Login2fa,
                Some(flow_id),
                phone_e164.clone(),
                client.clone(),
            )
            .await?;
        let purge = purge_after(&state, now);
        app.store()
            .insert_flow(flow_id, user_id, &state, now, purge)
            .await?;
        let stored = crate::store::flows::StoredFlow {
            user_id,
            phone,
            state,
            version: 0,
        };
        self.spawn(app, flow_id, stored).await?;
        app.metrics().flow(FlowEvent::Started);
        tracing::info!(%user_id, flow = %flow_tag(&flow_id), "login needs an SMS code");
        Ok(Started {
            flow_id,
            phone_hint: phone_e164.masked(),
            expires_at: issued.expires_at,
            resend_after: issued.resend_after,
        })
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
        if let Some(existing) = map.get_mut(&flow_id) {
            // Another request rebuilt it first: keep one actor per flow.
            actor.stop(None);
            existing.used = Instant::now();
            return Ok(existing.actor.clone());
        }
        map.insert(
            flow_id,
            Entry {
                actor: actor.clone(),
                used: Instant::now(),
            },
        );
        Ok(actor)
    }

    /// The flow's actor, rebuilt from PostgreSQL if it does not live here.
    /// A finished or unknown flow answers its 410 without an actor.
    async fn actor_for(
        &self,
        app: &AppState,
        flow_id: Uuid,
    ) -> Result<ActorRef<FlowMsg>, AppError> {
        if let Some(a) = self.lookup(flow_id) {
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
        self.call(app, flow_id, |reply| FlowMsg::Verify {
            code: code.clone(),
            client: client.clone(),
            reply,
        })
        .await
    }

    /// Submits a recovery code to a flow.
    pub async fn verify_recovery(
        &self,
        app: &AppState,
        flow_id: Uuid,
        code: RecoveryCode,
        client: ClientInfo,
    ) -> Result<TokensBody, AppError> {
        self.call(app, flow_id, |reply| FlowMsg::Recover {
            code: code.clone(),
            client: client.clone(),
            reply,
        })
        .await
    }

    /// Asks a flow for a new code.
    pub async fn resend(
        &self,
        app: &AppState,
        flow_id: Uuid,
        client: ClientInfo,
    ) -> Result<Resent, AppError> {
        self.call(app, flow_id, |reply| FlowMsg::Resend {
            client: client.clone(),
            reply,
        })
        .await
    }

    /// Sends the message `make` builds to the flow's actor and waits for its
    /// answer. A message queued to an actor that stopped (its flow just ended)
    /// gets no answer: the flow is looked up again, which then answers from the
    /// database (up to three times).
    async fn call<R: Send + 'static>(
        &self,
        app: &AppState,
        flow_id: Uuid,
        make: impl Fn(RpcReplyPort<Result<R, AppError>>) -> FlowMsg,
    ) -> Result<R, AppError> {
        for _ in 0..3 {
            let actor = self.actor_for(app, flow_id).await?;
            match ractor::call_t!(actor, make, CALL_TIMEOUT_MS) {
                Ok(r) => return r,
                Err(ractor::RactorErr::Timeout) => break,
                Err(_) => self.forget(flow_id, &actor),
            }
        }
        Err(AppError::Unavailable("login flow did not answer".into()))
    }
}

/// The next state of a due flow, through the state machine: what the sweep
/// writes, with the audit event the transition asks for. None when the machine
/// changes nothing (not due by this clock).
fn expire_step(
    flow_id: Uuid,
    state: &FlowState,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Option<SweptState> {
    use crate::domain::login_flow::AuditKind as Flow;
    let step = login_flow::transition(state, Event::Tick, now, limits);
    if step.state == *state {
        return None;
    }
    let audit = step.effects.iter().find_map(|e| match e {
        Effect::Audit(Flow::FlowExpired) => Some(AuditKind::LoginFailed.as_str()),
        _ => None,
    });
    Some(SweptState {
        purge_after: purge_after(&step.state, now),
        state: step.state,
        audit: audit.map(|kind| (kind, json!({ "reason": "flow_expired", "flowId": flow_id }))),
    })
}

pub enum SweepMsg {
    /// Expire the due flows and stop idle actors, then schedule the next sweep.
    Sweep,
}

/// One per process: expires due flows (this process's or any other's, alive or
/// not) and stops idle flow actors, every [`SWEEP_EVERY`].
pub struct FlowSweeper;

pub struct SweeperArgs {
    pub app: AppState,
}

impl Actor for FlowSweeper {
    type Msg = SweepMsg;
    type State = AppState;
    type Arguments = SweeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SweeperArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Right away: flows may have come due while no process was running.
        myself.send_message(SweepMsg::Sweep)?;
        Ok(args.app)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        app: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SweepMsg::Sweep => {
                app.flows().stop_idle();
                if let Err(e) = sweep(app).await {
                    tracing::warn!(error = %e, "login flow expiry sweep failed; retrying");
                }
                // One timer at a time: a slow sweep delays the next, never piles up.
                myself.send_after(SWEEP_EVERY, || SweepMsg::Sweep);
            }
        }
        Ok(())
    }
}

/// Expires every flow due now, a batch per transaction; returns how many.
pub async fn sweep(app: &AppState) -> Result<usize, AppError> {
    let limits = limits(app.config());
    let mut total = 0;
    // Bounded, in case rows the machine leaves unchanged keep filling batches.
    for _ in 0..MAX_SWEEP_BATCHES {
        let now = app.clock().now();
        let (swept, seen) = app
            .store()
            .sweep_due_flows(now, SWEEP_BATCH, |id, state| {
                expire_step(id, state, now, &limits)
            })
            .await?;
        for flow in &swept {
            // Counted after the commit, once per flow across every process: the
            // rows were locked and written with compare-and-set.
            if matches!(flow.state, FlowState::Expired { .. }) {
                app.metrics().flow(FlowEvent::Expired);
                tracing::info!(flow = %flow_tag(&flow.id), user_id = %flow.user_id, "login flow expired");
            }
            app.flows().stop_ended(flow.id);
        }
        total += swept.len();
        if seen < usize::try_from(SWEEP_BATCH).unwrap_or(usize::MAX) {
            break;
        }
    }
    Ok(total)
}

/// Starts this process's `FlowSweeper` under the supervisor (restarted if it fails).
pub async fn start_sweeper(app: &AppState) -> Result<(), String> {
    let app_for_spec = app.clone();
    let spec = ChildSpec::new("flow-sweeper", move |sup: ActorCell| {
        let app = app_for_spec.clone();
        async move {
            let (actor, _) =
                Actor::spawn_linked(None, FlowSweeper, SweeperArgs { app }, sup).await?;
            Ok(actor.get_cell())
        }
    });
    start_child(app.supervisor(), spec).await
}
