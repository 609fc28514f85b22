//! The root of the actor tree. Long-lived children (the SMS actor, the OTP shards)
//! are registered with a `ChildSpec` and restarted when they fail or are killed
//! (not when they stop normally, as at shutdown), at a bounded rate; short-lived children (one `FlowActor` per login flow) are linked for
//! visibility and shutdown but never restarted: their state is in PostgreSQL and
//! the next request for the flow rebuilds them.
//!
//! Callers never hold an `ActorRef` to a restartable child directly; they read it
//! from its [`Slot`], which the restart updates.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};

/// Where the current incarnation of a restartable child is found.
pub struct Slot<M: ractor::Message> {
    inner: Arc<RwLock<Option<ActorRef<M>>>>,
}

impl<M: ractor::Message> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Slot {
            inner: self.inner.clone(),
        }
    }
}

impl<M: ractor::Message> Default for Slot<M> {
    fn default() -> Self {
        Slot {
            inner: Arc::new(RwLock::new(None)),
        }
    }
}

impl<M: ractor::Message> Slot<M> {
    /// The live actor, if any. A poisoned lock still holds a valid ref.
    pub fn get(&self) -> Option<ActorRef<M>> {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set(&self, actor: ActorRef<M>) {
        match self.inner.write() {
            Ok(mut g) => *g = Some(actor),
            Err(p) => *p.into_inner() = Some(actor),
        }
    }
}

type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

/// How to (re)start one restartable child, linked to the given supervisor. The
/// function must also store the new ref in the child's `Slot`.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    pub start: Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>,
}

impl ChildSpec {
    pub fn new<F, Fut>(name: impl Into<String>, start: F) -> ChildSpec
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        ChildSpec {
            name: name.into(),
            start: Arc::new(move |sup| Box::pin(start(sup))),
        }
    }
}

/// At most this many restarts of one child within `RESTART_WINDOW`; past it the
/// child stays down and readiness reports it.
const MAX_RESTARTS: usize = 10;
const RESTART_WINDOW: Duration = Duration::from_secs(10);

pub enum SupervisorMsg {
    /// Start a child and restart it whenever it fails.
    Start(ChildSpec, RpcReplyPort<Result<(), String>>),
    /// Names of the restartable children currently down (for readiness).
    Down(RpcReplyPort<Vec<String>>),
}

pub struct Supervisor;

pub struct SupervisorState {
    children: HashMap<ActorId, (ChildSpec, VecDeque<Instant>)>,
    /// Children that exceeded the restart budget.
    down: Vec<String>,
}

impl Supervisor {
    pub async fn start() -> Result<ActorRef<SupervisorMsg>, SpawnErr> {
        let (actor, _handle) = Actor::spawn(None, Supervisor, ()).await?;
        Ok(actor)
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            children: HashMap::new(),
            down: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start(spec, reply) => {
                let result = match (spec.start)(myself.get_cell()).await {
                    Ok(cell) => {
                        state
                            .children
                            .insert(cell.get_id(), (spec, VecDeque::new()));
                        Ok(())
                    }
                    Err(e) => Err(format!("could not start {}: {e}", spec.name)),
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::Down(reply) => {
                let _ = reply.send(state.down.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            // Killed (ractor's reason "killed"), or cancelled mid-message (no state
            // left behind): it did not stop by choice.
            SupervisionEvent::ActorTerminated(cell, state_left, reason)
                if state_left.is_none() || reason.as_deref() == Some("killed") =>
            {
                (cell, format!("killed: {}", reason.unwrap_or_default()))
            }
            // A normal stop (shutdown, or an actor ending by design) is final.
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.children.remove(&cell.get_id());
                return Ok(());
            }
            _ => return Ok(()),
        };
        // Unregistered children (login flows) end by design; nothing to restart.
        let Some((spec, mut history)) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        let now = Instant::now();
        while history
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            history.pop_front();
        }
        if history.len() >= MAX_RESTARTS {
            tracing::error!(child = %spec.name, %why, "child restarting too often; leaving it down");
            state.down.push(spec.name);
            return Ok(());
        }
        history.push_back(now);
        tracing::warn!(child = %spec.name, %why, "restarting child actor");
        match (spec.start)(myself.get_cell()).await {
            Ok(new_cell) => {
                state.children.insert(new_cell.get_id(), (spec, history));
            }
            Err(e) => {
                tracing::error!(child = %spec.name, error = %e, "child could not be restarted");
                state.down.push(spec.name);
            }
        }
        Ok(())
    }
}

/// Registers and starts a restartable child under the supervisor.
pub async fn start_child(
    supervisor: &ActorRef<SupervisorMsg>,
    spec: ChildSpec,
) -> Result<(), String> {
    let name = spec.name.clone();
    match ractor::call_t!(supervisor, SupervisorMsg::Start, 30_000, spec) {
        Ok(r) => r,
        Err(e) => Err(format!("supervisor did not start {name}: {e}")),
    }
}

/// Restartable children that are down; empty when the tree is healthy.
pub async fn down_children(supervisor: &ActorRef<SupervisorMsg>) -> Result<Vec<String>, String> {
    ractor::call_t!(supervisor, SupervisorMsg::Down, 2_000).map_err(|e| e.to_string())
}
