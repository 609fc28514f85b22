//! The keys actor: reloads the key ring every `AUTHGATE_KEY_RELOAD` (so a
//! rotation made by any process, or by `authgate keys rotate`, reaches this
//! one without a restart) and rotates keys whose period has passed.
//!
//! One per process, supervised. Several processes asking for the same
//! scheduled rotation at once is fine: the store rotates a purpose once
//! (`Store::keyring_rotate` with `due_before`, under a transaction lock).

use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};

use super::supervisor::{start_child, ChildSpec, SupervisorMsg};
use crate::keyring::Keyring;
use crate::store::keyring::Rotation;

pub enum KeysMsg {
    /// Reload the ring, then rotate what is due.
    Tick,
}

pub struct KeysActor;

impl Actor for KeysActor {
    type Msg = KeysMsg;
    type State = Arc<Keyring>;
    type Arguments = Arc<Keyring>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ring: Arc<Keyring>,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A process started after a long pause rotates what fell due meanwhile.
        let _ = myself.cast(KeysMsg::Tick);
        myself.send_interval(ring.settings().reload_every, || KeysMsg::Tick);
        Ok(ring)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        ring: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            KeysMsg::Tick => {
                // A failed reload keeps the keys this process has: they stay
                // right until the next rotation, which waits for reloads.
                if let Err(e) = ring.reload().await {
                    tracing::warn!(error = %e, "key ring reload failed; will retry");
                    return Ok(());
                }
                match ring.rotate_due().await {
                    Ok(done) => {
                        for (purpose, outcome) in done {
                            if let Rotation::Rotated { active } = outcome {
                                tracing::info!(
                                    purpose = purpose.as_str(),
                                    kid = %active,
                                    "scheduled key rotation"
                                );
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduled key rotation failed; will retry")
                    }
                }
            }
        }
        Ok(())
    }
}

/// Starts the keys actor under the supervisor.
pub async fn start(supervisor: &ActorRef<SupervisorMsg>, ring: Arc<Keyring>) -> Result<(), String> {
    let spec = ChildSpec::new("keys", move |sup: ActorCell| {
        let ring = ring.clone();
        async move {
            let (actor, _) = Actor::spawn_linked(None, KeysActor, ring, sup).await?;
            Ok(actor.get_cell())
        }
    });
    start_child(supervisor, spec).await
}
