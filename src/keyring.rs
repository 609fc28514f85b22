//! The key ring: every key of the server, one ring per purpose, kept in
//! PostgreSQL (`store::keyring`) so several processes agree on them, with the
//! secret parts sealed under a key-encryption key (KEK) that only the
//! processes hold: HKDF-SHA256 of `AUTHGATE_MASTER_KEY`. Room: between the
//! routes and `store`, like `revocation`; it imports `store` and `crypto`.
//!
//! Each purpose (`signing`, `codes`, `outbox`, `refresh`, `recovery`) has an
//! active key, which makes new material, a next key and retired keys. A
//! rotation, one transaction, retires the active key, promotes the next one
//! and makes a new next one. Because every process loaded the next key (and
//! every JWKS reader could fetch it) before it became active, a process that
//! has not yet seen a rotation still accepts what the new key makes, and what
//! it still makes with the old key is accepted everywhere until that key's
//! acceptance ends: tokens outlive their key by the access-token lifetime,
//! codes by their validity, queued SMS by the outbox retention, refresh
//! successors by the grace window; recovery codes keep their key for good.
//!
//! Processes reload the ring every `AUTHGATE_KEY_RELOAD` and at once when a
//! token names a key they do not know (`reload_for_unknown_kid`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::RngCore;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use secrecy::{ExposeSecret, SecretString};

use crate::clock::Clock;
use crate::crypto::{
    aead_open, aead_seal, hkdf_key, legacy_key, Jwk, KeySet, Keys, Signing, SigningKey,
    SymmetricKeys,
};
use crate::store::keyring::{KeyRow, NewKey, Rotation};
use crate::store::Store;

/// What a key is for. Each has keys of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    Signing,
    Codes,
    Outbox,
    Refresh,
    Recovery,
}

impl Purpose {
    pub const ALL: [Purpose; 5] = [
        Purpose::Signing,
        Purpose::Codes,
        Purpose::Outbox,
        Purpose::Refresh,
        Purpose::Recovery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Signing => "signing",
            Purpose::Codes => "codes",
            Purpose::Outbox => "outbox",
            Purpose::Refresh => "refresh",
            Purpose::Recovery => "recovery",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Rotated by the schedule. Recovery keys are not: a recovery code is
    /// stored for good, so its key must be kept for good, and a rotation
    /// would only grow the list of keys every check tries.
    pub fn scheduled(self) -> bool {
        self != Purpose::Recovery
    }
}

/// The access tokens' signature algorithm (`JWT_ALGORITHM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// Ed25519: the default.
    EdDSA,
    /// ECDSA P-256 with SHA-256, for verifiers without EdDSA.
    ES256,
    /// HMAC-SHA256 over `JWT_SECRET`: only when asked for (anyone who can
    /// verify can also mint tokens).
    HS256,
}

impl SigningAlg {
    pub fn parse(s: &str) -> Option<SigningAlg> {
        match s {
            "EdDSA" | "eddsa" | "Ed25519" | "ed25519" => Some(SigningAlg::EdDSA),
            "ES256" | "es256" => Some(SigningAlg::ES256),
            "HS256" | "hs256" => Some(SigningAlg::HS256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::EdDSA => "EdDSA",
            SigningAlg::ES256 => "ES256",
            SigningAlg::HS256 => "HS256",
        }
    }

    pub fn jwt(self) -> Algorithm {
        match self {
            SigningAlg::EdDSA => Algorithm::EdDSA,
            SigningAlg::ES256 => Algorithm::ES256,
            SigningAlg::HS256 => Algorithm::HS256,
        }
    }
}

/// Everything the key ring needs from the configuration.
#[derive(Clone)]
pub struct KeyringSettings {
    pub alg: SigningAlg,
    /// `JWT_SECRET`: the HS256 key (HS256 only).
    pub hs256_secret: Option<SecretString>,
    /// The master key the KEK is derived from.
    pub master: SecretString,
    /// The master key before a change: keys sealed under it are resealed.
    pub master_previous: Option<SecretString>,
    /// The one secret earlier versions derived every key from: its keys are
    /// imported (retired) into a ring that is made on an existing database.
    pub legacy_secret: Option<SecretString>,
    /// The schedule; None: only `authgate keys rotate`.
    pub rotation: Option<Duration>,
    /// How often each process reloads the ring.
    pub reload_every: Duration,
    /// How long a retired key stays accepted, per purpose (before the margin).
    pub access_ttl: Duration,
    pub code_ttl: Duration,
    pub outbox_retention: Duration,
    pub refresh_grace: Duration,
}

impl KeyringSettings {
    /// Longer than any process can go without seeing a rotation (two reloads)
    /// plus clock skew between hosts.
    fn margin(&self) -> Duration {
        self.reload_every * 2 + Duration::from_secs(5)
    }

    /// How long a key retired now stays accepted; None for good.
    pub fn retention(&self, purpose: Purpose) -> Option<Duration> {
        let base = match purpose {
            Purpose::Signing => self.access_ttl,
            Purpose::Codes => self.code_ttl,
            Purpose::Outbox => self.outbox_retention,
            Purpose::Refresh => self.refresh_grace,
            Purpose::Recovery => return None,
        };
        Some(base.saturating_add(self.margin()))
    }

    /// A next key younger than this may be unknown to some process; the ring
    /// does not promote it unless forced.
    pub fn min_next_age(&self) -> Duration {
        self.reload_every * 2 + Duration::from_secs(1)
    }

    /// `Cache-Control: max-age` of the JWKS: a new signing key is published
    /// one rotation period before it signs, so a cache may keep the set for
    /// up to that long; an hour at most, so a key withdrawn in an emergency
    /// leaves caches soon.
    pub fn jwks_max_age(&self) -> Duration {
        let hour = Duration::from_secs(3600);
        match self.rotation {
            Some(r) => (r / 2).min(hour).max(Duration::from_secs(60)),
            None => hour,
        }
    }
}

/// A key as `authgate keys list` shows it (no secret part).
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub purpose: String,
    pub kid: String,
    pub alg: String,
    pub state: &'static str,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
    pub verify_until: Option<DateTime<Utc>>,
}

/// The key ring of one process. Cheap to share (`Arc`).
pub struct Keyring {
    store: Store,
    clock: Clock,
    settings: KeyringSettings,
    kek: [u8; 32],
    kek_previous: Option<[u8; 32]>,
    keys: Keys,
    /// When each purpose's active key was activated (for the schedule).
    activated: Mutex<HashMap<Purpose, DateTime<Utc>>>,
    /// The last reload asked for by an unknown `kid` (the throttle's clock).
    last_unknown_kid_reload: tokio::sync::Mutex<Option<Instant>>,
}

/// The key-encryption key: derived, so the master key itself seals nothing.
pub fn kek_of(master: &SecretString) -> [u8; 32] {
    hkdf_key(master.expose_secret().as_bytes(), "authgate/v1/keyring-kek")
}

/// The associated data of a sealed key: it opens only as the key it was
/// sealed as (same purpose, id and algorithm).
fn aad(purpose: &str, kid: &str, alg: &str) -> Vec<u8> {
    let mut a = b"authgate/keyring/v1".to_vec();
    for part in [purpose, kid, alg] {
        a.extend_from_slice(&(part.len() as u32).to_be_bytes());
        a.extend_from_slice(part.as_bytes());
    }
    a
}

fn seal_key(kek: &[u8; 32], purpose: &str, kid: &str, alg: &str, secret: &[u8]) -> Vec<u8> {
    aead_seal(kek, secret, &aad(purpose, kid, alg))
}

/// A signing key from its PKCS#8 document.
pub fn signing_key_from_pkcs8(
    kid: &str,
    alg: Algorithm,
    pkcs8: &[u8],
) -> Result<SigningKey, String> {
    let (jwk, decoding) = match alg {
        Algorithm::EdDSA => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                .map_err(|e| format!("Ed25519 key {kid}: {e}"))?;
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            let decoding = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
            (jwk("OKP", "Ed25519", x, None, kid, "EdDSA"), decoding)
        }
        Algorithm::ES256 => {
            let rng = ring::rand::SystemRandom::new();
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|e| format!("P-256 key {kid}: {e}"))?;
            let point = pair.public_key().as_ref();
            if point.len() != 65 {
                return Err(format!("P-256 key {kid}: unexpected public key"));
            }
            let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
            let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
            let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
            (jwk("EC", "P-256", x, Some(y), kid, "ES256"), decoding)
        }
        other => {
            return Err(format!(
                "key {kid}: {other:?} is not an asymmetric algorithm"
            ))
        }
    };
    let encoding = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_der(pkcs8),
        _ => EncodingKey::from_ec_der(pkcs8),
    };
    Ok(SigningKey {
        kid: kid.to_owned(),
        alg,
        encoding,
        decoding,
        jwk: Some(jwk),
    })
}

fn jwk(kty: &str, crv: &str, x: String, y: Option<String>, kid: &str, alg: &str) -> Jwk {
    Jwk {
        kty: kty.to_owned(),
        crv: crv.to_owned(),
        x,
        y,
        kid: kid.to_owned(),
        alg: alg.to_owned(),
        use_: "sig".to_owned(),
    }
}

impl Keyring {
    /// A ring whose `keys` hold a placeholder set until `load` has read the
    /// real one (the handle must exist before, as it is shared by clones).
    fn unloaded(store: Store, clock: Clock, settings: KeyringSettings) -> Keyring {
        Keyring {
            store,
            clock,
            kek: kek_of(&settings.master),
            kek_previous: settings.master_previous.as_ref().map(kek_of),
            keys: Keys::derive(&SecretString::from(
                "placeholder: replaced before use".to_owned(),
            )),
            activated: Mutex::new(HashMap::new()),
            last_unknown_kid_reload: tokio::sync::Mutex::new(None),
            settings,
        }
    }

    /// Makes sure every purpose has its keys (the first process on a database
    /// makes them), then loads them.
    pub async fn open(
        store: Store,
        clock: Clock,
        settings: KeyringSettings,
    ) -> Result<Keyring, String> {
        let ring = Keyring::unloaded(store, clock, settings);
        ring.bootstrap().await?;
        let set = ring.load().await?;
        ring.keys.install(set);
        Ok(ring)
    }

    /// The keys of a ring a server made, for tools that seed rows as the
    /// server would (the load tool, fault tests): reads, never writes.
    pub async fn read(store: Store, master: SecretString) -> Result<Keys, String> {
        let defaults = crate::config::Config::default();
        let settings = KeyringSettings {
            alg: defaults.jwt_algorithm,
            hs256_secret: None,
            master,
            master_previous: None,
            legacy_secret: None,
            rotation: None,
            reload_every: defaults.key_reload,
            access_ttl: defaults.jwt_expiration,
            code_ttl: defaults.otp_expiration,
            outbox_retention: defaults.purge.outbox_retention,
            refresh_grace: defaults.refresh_grace,
        };
        let ring = Keyring::unloaded(store, Clock::system(), settings);
        let set = ring.load().await?;
        ring.keys.install(set);
        Ok(ring.keys)
    }

    /// The handle every part of the server signs, hashes and seals with.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn settings(&self) -> &KeyringSettings {
        &self.settings
    }

    fn signs_from_ring(&self) -> bool {
        self.settings.alg != SigningAlg::HS256
    }

    /// A new key for `purpose`.
    fn make(&self, purpose: Purpose) -> NewKey {
        if purpose == Purpose::Signing {
            return self.make_signing();
        }
        let mut secret = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        NewKey {
            kid_prefix: format!("{}-v", purpose.as_str()),
            alg: alg_of_symmetric(purpose).to_owned(),
            public_jwk: None,
            secret,
            kek: self.kek,
            seal: seal_key,
        }
    }

    fn make_signing(&self) -> NewKey {
        let rng = ring::rand::SystemRandom::new();
        let alg = match self.settings.alg {
            SigningAlg::ES256 => SigningAlg::ES256,
            _ => SigningAlg::EdDSA,
        };
        let pkcs8 = match alg {
            SigningAlg::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map(|d| d.as_ref().to_vec())
            }
            _ => Ed25519KeyPair::generate_pkcs8(&rng).map(|d| d.as_ref().to_vec()),
        }
        // Only a broken system random source fails here; the empty key then
        // fails to load with a message rather than signing with something weak.
        .unwrap_or_default();
        let mut tag = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut tag);
        // Stored for operators reading the table; the JWKS is built from the key.
        let public_jwk = signing_key_from_pkcs8("new", alg.jwt(), &pkcs8)
            .ok()
            .and_then(|k| k.jwk)
            .map(|j| serde_json::json!({"kty": j.kty, "crv": j.crv, "x": j.x, "y": j.y}));
        let family = match alg {
            SigningAlg::ES256 => "es256",
            _ => "ed25519",
        };
        NewKey {
            // A random part: kids stay unique across databases of one issuer.
            kid_prefix: format!("{family}-{}-v", hex::encode(tag)),
            alg: alg.as_str().to_owned(),
            public_jwk,
            secret: pkcs8,
            kek: self.kek,
            seal: seal_key,
        }
    }

    async fn bootstrap(&self) -> Result<(), String> {
        let now = self.clock.now();
        for purpose in Purpose::ALL {
            if purpose == Purpose::Signing && !self.signs_from_ring() {
                continue;
            }
            let legacy = self.legacy(purpose, now);
            self.store
                .keyring_ensure(purpose.as_str(), now, &|| self.make(purpose), legacy)
                .await
                .map_err(|e| format!("key ring: {e}"))?;
        }
        if self.signs_from_ring() {
            // A changed JWT_ALGORITHM: a next key of the new algorithm, made
            // active at once (verifiers fetch the JWKS again for a new kid).
            let alg = self.settings.alg.as_str();
            self.store
                .keyring_replace_next("signing", alg, now, &|| self.make(Purpose::Signing))
                .await
                .map_err(|e| format!("key ring: {e}"))?;
            let rows = self
                .store
                .keyring_rows(now)
                .await
                .map_err(|e| format!("key ring: {e}"))?;
            let active_alg = rows
                .iter()
                .find(|r| r.purpose == "signing" && r.is_active())
                .map(|r| r.alg.clone());
            if active_alg.is_some_and(|a| a != alg) {
                tracing::warn!(
                    alg,
                    "JWT_ALGORITHM changed: a new signing key takes over now; \
                     tokens signed before stay valid until they expire"
                );
                self.rotate(Purpose::Signing, true).await?;
            }
        }
        Ok(())
    }

    fn legacy(
        &self,
        purpose: Purpose,
        now: DateTime<Utc>,
    ) -> Option<(NewKey, Option<DateTime<Utc>>)> {
        let secret = self.settings.legacy_secret.as_ref()?;
        let key = legacy_key(secret.expose_secret().as_bytes(), purpose.as_str())?;
        let until = self
            .settings
            .retention(purpose)
            .map(|r| crate::clock::after(now, r));
        Some((
            NewKey {
                kid_prefix: format!("{}-legacy-v", purpose.as_str()),
                alg: alg_of_symmetric(purpose).to_owned(),
                public_jwk: None,
                secret: key.to_vec(),
                kek: self.kek,
                seal: seal_key,
            },
            until,
        ))
    }

    /// Reads the ring and builds the key set; keys sealed under the previous
    /// master key are resealed under the current one.
    async fn load(&self) -> Result<KeySet, String> {
        let now = self.clock.now();
        let rows = self
            .store
            .keyring_rows(now)
            .await
            .map_err(|e| format!("key ring: {e}"))?;
        let mut opened: Vec<(KeyRow, Vec<u8>)> = Vec::with_capacity(rows.len());
        for row in rows {
            let secret = self.unseal(&row).await?;
            opened.push((row, secret));
        }
        let mut activated = HashMap::new();
        // Per symmetric purpose: the active key, then the others in order.
        type Ring = (Option<[u8; 32]>, Vec<[u8; 32]>);
        let mut sym: HashMap<&str, Ring> = HashMap::new();
        let mut signing_active = None;
        let mut signing_others = Vec::new();
        // Newest first, so retired keys are tried after the next and recent ones.
        opened.sort_by_key(|(row, _)| std::cmp::Reverse(row.version));
        for (row, secret) in &opened {
            let Some(purpose) = Purpose::parse(&row.purpose) else {
                continue;
            };
            if row.is_active() {
                if let Some(at) = row.activated_at {
                    activated.insert(purpose, at);
                }
            }
            if purpose == Purpose::Signing {
                if !self.signs_from_ring() {
                    continue;
                }
                let alg = SigningAlg::parse(&row.alg)
                    .ok_or_else(|| format!("key {}: unknown algorithm {}", row.kid, row.alg))?;
                let key = Arc::new(signing_key_from_pkcs8(&row.kid, alg.jwt(), secret)?);
                if row.is_active() {
                    signing_active = Some(key);
                } else {
                    signing_others.push((row.is_next(), key));
                }
                continue;
            }
            let key: [u8; 32] = secret
                .as_slice()
                .try_into()
                .map_err(|_| format!("key {}: not 32 bytes", row.kid))?;
            let entry = sym.entry(purpose.as_str()).or_default();
            if row.is_active() {
                entry.0 = Some(key);
            } else if row.is_next() {
                entry.1.insert(0, key);
            } else {
                entry.1.push(key);
            }
        }
        let mut take = |p: &str| -> Result<SymmetricKeys, String> {
            let (active, others) = sym.remove(p).unwrap_or_default();
            let active = active.ok_or_else(|| format!("key ring: no active {p} key"))?;
            Ok(SymmetricKeys::new(active, others))
        };
        let signing = if self.signs_from_ring() {
            let active = signing_active.ok_or("key ring: no active signing key")?;
            // The next key (published ahead) after the active one, then retired ones.
            signing_others.sort_by_key(|(next, _)| !*next);
            let mut jwks = vec![];
            let mut by_kid = HashMap::new();
            for key in std::iter::once(&active).chain(signing_others.iter().map(|(_, k)| k)) {
                jwks.extend(key.jwk.iter().cloned());
                by_kid.insert(key.kid.clone(), key.clone());
            }
            Signing {
                active,
                by_kid,
                jwks,
                accept_no_kid: false,
            }
        } else {
            let secret = self
                .settings
                .hs256_secret
                .as_ref()
                .ok_or("JWT_ALGORITHM=HS256 needs JWT_SECRET")?;
            Signing::hs256(secret.expose_secret().as_bytes())
        };
        let set = KeySet {
            codes: take("codes")?,
            outbox: take("outbox")?,
            refresh: take("refresh")?,
            recovery: take("recovery")?,
            signing,
        };
        if let Ok(mut a) = self.activated.lock() {
            *a = activated;
        }
        Ok(set)
    }

    async fn unseal(&self, row: &KeyRow) -> Result<Vec<u8>, String> {
        let a = aad(&row.purpose, &row.kid, &row.alg);
        if let Some(secret) = aead_open(&self.kek, &row.sealed, &a) {
            return Ok(secret);
        }
        if let Some(prev) = &self.kek_previous {
            if let Some(secret) = aead_open(prev, &row.sealed, &a) {
                let resealed = aead_seal(&self.kek, &secret, &a);
                self.store
                    .keyring_reseal(&row.kid, &resealed)
                    .await
                    .map_err(|e| format!("key ring: {e}"))?;
                tracing::info!(kid = %row.kid, "key resealed under the new master key");
                return Ok(secret);
            }
        }
        Err(format!(
            "key {} of the key ring does not open with this AUTHGATE_MASTER_KEY: it was \
             sealed under another one. Set AUTHGATE_MASTER_KEY to the key the database was \
             started with (when changing it, the old one as AUTHGATE_MASTER_KEY_PREVIOUS)",
            row.kid
        ))
    }

    /// Reads the ring again and installs what it holds.
    pub async fn reload(&self) -> Result<(), String> {
        let set = self.load().await?;
        self.keys.install(set);
        Ok(())
    }

    /// A token named a key this process does not know: perhaps one made by a
    /// rotation it has not seen. Reloads, at most once a second (so junk
    /// `kid`s cannot turn into a query each); true if it did.
    pub async fn reload_for_unknown_kid(&self) -> bool {
        let mut last = self.last_unknown_kid_reload.lock().await;
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(Instant::now());
        drop(last);
        match self.load().await {
            Ok(set) => {
                self.keys.install(set);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "key ring reload failed");
                false
            }
        }
    }

    /// Rotates `purpose` now. Unless `force`, refuses while the next key is
    /// too new for every process to know it (`Rotation::TooSoon`).
    pub async fn rotate(&self, purpose: Purpose, force: bool) -> Result<Rotation, String> {
        self.rotate_inner(purpose, force, None).await
    }

    async fn rotate_inner(
        &self,
        purpose: Purpose,
        force: bool,
        due_before: Option<DateTime<Utc>>,
    ) -> Result<Rotation, String> {
        if purpose == Purpose::Signing && !self.signs_from_ring() {
            return Err(
                "JWT_ALGORITHM=HS256 signs with JWT_SECRET, which has no rotation: \
                        changing it signs everyone out; EdDSA or ES256 rotate with overlap"
                    .to_owned(),
            );
        }
        let now = self.clock.now();
        let min_age = if force {
            chrono::Duration::zero()
        } else {
            crate::clock::span(self.settings.min_next_age())
        };
        let outcome = self
            .store
            .keyring_rotate(
                purpose.as_str(),
                now,
                self.settings.retention(purpose).map(crate::clock::span),
                due_before,
                min_age,
                &self.make(purpose),
            )
            .await
            .map_err(|e| format!("key ring: {e}"))?;
        if let Rotation::Rotated { active } = &outcome {
            tracing::info!(purpose = purpose.as_str(), kid = %active, "key rotated");
            self.reload().await?;
        }
        Ok(outcome)
    }

    /// Rotates every scheduled purpose whose active key is older than the
    /// rotation period. Several processes may call this at once: the store
    /// rotates each purpose once.
    pub async fn rotate_due(&self) -> Result<Vec<(Purpose, Rotation)>, String> {
        let Some(period) = self.settings.rotation else {
            return Ok(vec![]);
        };
        let now = self.clock.now();
        let due_before = now - crate::clock::span(period);
        let activated = self.activated.lock().map(|a| a.clone()).unwrap_or_default();
        let mut done = vec![];
        for purpose in Purpose::ALL {
            if !purpose.scheduled() || (purpose == Purpose::Signing && !self.signs_from_ring()) {
                continue;
            }
            if activated.get(&purpose).is_some_and(|at| *at >= due_before) {
                continue;
            }
            let outcome = self.rotate_inner(purpose, false, Some(due_before)).await?;
            done.push((purpose, outcome));
        }
        Ok(done)
    }

    /// The published public keys, the active key first (none for HS256).
    pub fn jwks(&self) -> Vec<Jwk> {
        self.keys.snapshot().signing.jwks.clone()
    }

    /// The ring as stored (no secret parts), for `authgate keys list`.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, String> {
        let rows = self
            .store
            .keyring_rows(self.clock.now())
            .await
            .map_err(|e| format!("key ring: {e}"))?;
        Ok(rows
            .into_iter()
            .map(|r| KeyInfo {
                state: if r.is_next() {
                    "next"
                } else if r.is_active() {
                    "active"
                } else {
                    "retired"
                },
                purpose: r.purpose,
                kid: r.kid,
                alg: r.alg,
                created_at: r.created_at,
                activated_at: r.activated_at,
                retired_at: r.retired_at,
                verify_until: r.verify_until,
            })
            .collect())
    }
}

fn alg_of_symmetric(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Outbox => "ChaCha20-Poly1305",
        _ => "HMAC-SHA256",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rotation: Option<Duration>) -> KeyringSettings {
        KeyringSettings {
            alg: SigningAlg::EdDSA,
            hs256_secret: None,
            master: SecretString::from("m".repeat(32)),
            master_previous: None,
            legacy_secret: None,
            rotation,
            reload_every: Duration::from_secs(30),
            access_ttl: Duration::from_secs(900),
            code_ttl: Duration::from_secs(600),
            outbox_retention: Duration::from_secs(7 * 86_400),
            refresh_grace: Duration::from_secs(10),
        }
    }

    #[test]
    fn retired_keys_outlive_what_they_made_by_two_reloads_and_recovery_keys_stay() {
        let s = settings(Some(Duration::from_secs(30 * 86_400)));
        let margin = Duration::from_secs(65);
        assert_eq!(
            s.retention(Purpose::Signing),
            Some(Duration::from_secs(900) + margin)
        );
        assert_eq!(
            s.retention(Purpose::Codes),
            Some(Duration::from_secs(600) + margin)
        );
        assert_eq!(
            s.retention(Purpose::Refresh),
            Some(Duration::from_secs(10) + margin)
        );
        assert_eq!(s.retention(Purpose::Recovery), None);
        assert!(!Purpose::Recovery.scheduled());
        assert_eq!(s.min_next_age(), Duration::from_secs(61));
    }

    #[test]
    fn the_jwks_cache_lifetime_follows_the_schedule_within_a_minute_and_an_hour() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            settings(Some(30 * day)).jwks_max_age(),
            Duration::from_secs(3600)
        );
        assert_eq!(
            settings(Some(Duration::from_secs(3600))).jwks_max_age(),
            Duration::from_secs(1800)
        );
        assert_eq!(settings(None).jwks_max_age(), Duration::from_secs(3600));
    }

    #[test]
    fn generated_keys_sign_what_their_published_jwk_verifies() {
        let rng = ring::rand::SystemRandom::new();
        let cases = [
            (
                Algorithm::EdDSA,
                Ed25519KeyPair::generate_pkcs8(&rng)
                    .unwrap()
                    .as_ref()
                    .to_vec(),
            ),
            (
                Algorithm::ES256,
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .unwrap()
                    .as_ref()
                    .to_vec(),
            ),
        ];
        for (alg, pkcs8) in cases {
            let key = signing_key_from_pkcs8("k1", alg, &pkcs8).unwrap();
            let jwk = key.jwk.clone().unwrap();
            assert_eq!(jwk.kid, "k1");
            assert_eq!(jwk.use_, "sig");
            let json = serde_json::to_value(&jwk).unwrap();
            assert!(json.get("d").is_none() && json.get("use").is_some());
            let sig = jsonwebtoken::crypto::sign(b"message", &key.encoding, alg).unwrap();
            assert!(jsonwebtoken::crypto::verify(&sig, b"message", &key.decoding, alg).unwrap());
            assert!(!jsonwebtoken::crypto::verify(&sig, b"massage", &key.decoding, alg).unwrap());
        }
        assert!(signing_key_from_pkcs8("k", Algorithm::HS256, b"x").is_err());
        assert!(signing_key_from_pkcs8("k", Algorithm::EdDSA, b"junk").is_err());
    }

    #[test]
    fn a_sealed_key_opens_only_as_the_key_it_was_sealed_as() {
        let kek = kek_of(&SecretString::from("m".repeat(32)));
        let sealed = seal_key(&kek, "codes", "codes-v1", "HMAC-SHA256", &[7u8; 32]);
        let open = |p, k, a| aead_open(&kek, &sealed, &aad(p, k, a));
        assert_eq!(
            open("codes", "codes-v1", "HMAC-SHA256"),
            Some(vec![7u8; 32])
        );
        assert_eq!(open("outbox", "codes-v1", "HMAC-SHA256"), None);
        assert_eq!(open("codes", "codes-v2", "HMAC-SHA256"), None);
        let other = kek_of(&SecretString::from("n".repeat(32)));
        assert_eq!(
            aead_open(&other, &sealed, &aad("codes", "codes-v1", "HMAC-SHA256")),
            None
        );
    }

    #[test]
    fn algorithms_parse_by_their_jose_names() {
        assert_eq!(SigningAlg::parse("EdDSA"), Some(SigningAlg::EdDSA));
        assert_eq!(SigningAlg::parse("ES256"), Some(SigningAlg::ES256));
        assert_eq!(SigningAlg::parse("HS256"), Some(SigningAlg::HS256));
        assert_eq!(SigningAlg::parse("RS256"), None);
        assert_eq!(SigningAlg::parse("none"), None);
    }
}
