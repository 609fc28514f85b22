//! `AppState`: the handles every route handler can reach. Built once in
//! `startup`, cloned cheaply (an `Arc`) into each request.

use std::sync::Arc;

use ractor::ActorRef;

use crate::actors::supervisor::SupervisorMsg;
use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::Keys;
use crate::hasher::Hasher;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Store,
    hasher: Hasher,
    keys: Keys,
    clock: Clock,
    supervisor: ActorRef<SupervisorMsg>,
}

impl AppState {
    pub fn new(
        config: Config,
        store: Store,
        keys: Keys,
        clock: Clock,
        supervisor: ActorRef<SupervisorMsg>,
    ) -> AppState {
        let hasher = Hasher::new(config.hash_concurrency);
        AppState {
            inner: Arc::new(Inner {
                config,
                store,
                hasher,
                keys,
                clock,
                supervisor,
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn hasher(&self) -> &Hasher {
        &self.inner.hasher
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.inner.supervisor
    }
}
