//! `AppState`: the handles every route handler can reach. Built once in
//! `startup`, cloned cheaply (an `Arc`) into each request.

use std::sync::Arc;

use crate::config::Config;
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
}

impl AppState {
    pub fn new(config: Config, store: Store) -> AppState {
        let hasher = Hasher::new(config.hash_concurrency);
        AppState {
            inner: Arc::new(Inner {
                config,
                store,
                hasher,
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
}
