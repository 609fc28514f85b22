//! Cryptographic primitives and the per-process view of the server's keys.
//!
//! Every purpose has keys of its own, never the master key itself
//! (`crate::keyring` keeps them in PostgreSQL, sealed under a key-encryption
//! key derived from `AUTHGATE_MASTER_KEY` with HKDF):
//!
//! - `codes`: HMAC-SHA256 key for one-time codes (stored only as keyed hashes);
//! - `outbox`: ChaCha20-Poly1305 key sealing SMS bodies at rest (they carry
//!   codes), each bound to its row (id and recipient) so it opens nowhere else;
//! - `refresh`: HMAC-SHA256 key deriving a refresh token's successor from it;
//! - `recovery`: HMAC-SHA256 key for recovery codes (keyed hashes bound to
//!   their user), apart from `codes` so neither hash can stand in for the other;
//! - `signing`: the access tokens' signing keys (`crate::tokens`).
//!
//! Each purpose has one active key, which makes new material, and the keys it
//! still accepts (the next key, already known to every process before it
//! becomes active, and retired keys until what they made has expired): a
//! rotation never fails a code, a queued SMS, a refresh retry or a token that
//! is still within its lifetime. `Keys` is a cheap handle on the current set;
//! the key ring swaps in a new set when a rotation is seen.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The outbox row a sealed body belongs to: its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxRow<'a> {
    pub id: i64,
    /// E.164, exactly as stored.
    pub recipient: &'a str,
}

impl OutboxRow<'_> {
    fn associated_data(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(48);
        // Versioned and length-prefixed, so no (id, recipient) pair reads as another.
        aad.extend_from_slice(b"authgate/outbox-row/v1");
        aad.extend_from_slice(&self.id.to_be_bytes());
        aad.extend_from_slice(&(self.recipient.len() as u32).to_be_bytes());
        aad.extend_from_slice(self.recipient.as_bytes());
        aad
    }
}

/// HKDF-SHA256 of `master` for one purpose: distinct labels give independent
/// keys, and none of them is the master key.
pub fn hkdf_key(master: &[u8], label: &str) -> [u8; 32] {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"authgate"), master);
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit (8160); this cannot fail.
    let _ = hk.expand(label.as_bytes(), &mut out);
    out
}

/// ChaCha20-Poly1305 with a fresh random nonce: `nonce (12 bytes) ||
/// ciphertext+tag`, `aad` authenticated with it.
pub fn aead_seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    // Encryption with a valid key and in-memory buffer does not fail.
    if let Ok(ct) = cipher.encrypt(
        Nonce::from_slice(&nonce),
        Payload {
            msg: plaintext,
            aad,
        },
    ) {
        out.extend_from_slice(&ct);
    }
    out
}

/// Opens what `aead_seal` produced with the same key and `aad`; None otherwise.
pub fn aead_open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 + 16 {
        return None;
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let (nonce, ct) = sealed.split_at(12);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

/// One purpose's symmetric keys: the active one first, then every other key
/// still accepted (the next one, then retired ones, newest first).
#[derive(Clone)]
pub struct SymmetricKeys {
    accepted: Vec<[u8; 32]>,
}

impl SymmetricKeys {
    /// `active` first; `others` are tried after it.
    pub fn new(active: [u8; 32], others: impl IntoIterator<Item = [u8; 32]>) -> SymmetricKeys {
        let mut accepted = vec![active];
        accepted.extend(others);
        SymmetricKeys { accepted }
    }

    pub fn active(&self) -> &[u8; 32] {
        &self.accepted[0]
    }

    pub fn accepted(&self) -> &[[u8; 32]] {
        &self.accepted
    }
}

/// A public signing key as RFC 7517 writes it (`/.well-known/jwks.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed25519-3fa9c2d1-v1", "alg": "EdDSA", "use": "sig"}))]
pub struct Jwk {
    /// `OKP` (Ed25519) or `EC` (P-256).
    pub kty: String,
    /// `Ed25519` or `P-256`.
    pub crv: String,
    /// The public key (Ed25519) or its x coordinate (P-256), base64url.
    pub x: String,
    /// P-256 only: the y coordinate, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// The `kid` of the tokens this key signs.
    pub kid: String,
    /// `EdDSA` or `ES256`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// An access-token signing key: its id, algorithm and key material.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: jsonwebtoken::Algorithm,
    pub encoding: jsonwebtoken::EncodingKey,
    pub decoding: jsonwebtoken::DecodingKey,
    /// The public JWK; None for HS256 (a shared secret is never published).
    pub jwk: Option<Jwk>,
}

/// The signing side of a key set.
#[derive(Clone)]
pub struct Signing {
    /// Signs new tokens.
    pub active: Arc<SigningKey>,
    /// Every key a token may name by `kid` (the active, next and retired ones).
    pub by_kid: HashMap<String, Arc<SigningKey>>,
    /// Published in `/.well-known/jwks.json`, the active key first.
    pub jwks: Vec<Jwk>,
    /// HS256 only: tokens from before keys had ids carry no `kid`.
    pub accept_no_kid: bool,
}

/// A snapshot of every key of the server.
#[derive(Clone)]
pub struct KeySet {
    pub codes: SymmetricKeys,
    pub outbox: SymmetricKeys,
    pub refresh: SymmetricKeys,
    pub recovery: SymmetricKeys,
    pub signing: Signing,
}

/// A cheap, shared handle on the current key set: every clone sees the set
/// the key ring installed last.
#[derive(Clone)]
pub struct Keys {
    current: Arc<RwLock<Arc<KeySet>>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    for p in parts {
        // Length-prefix each part so ("ab","c") and ("a","bc") differ.
        mac.update(&(p.len() as u32).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The keys earlier versions derived from the one server secret, before keys
/// lived in the key ring: imported once as retired keys, so codes, queued SMS,
/// refresh retries and recovery codes made before an upgrade stay valid.
pub fn legacy_key(secret: &[u8], purpose: &str) -> Option<[u8; 32]> {
    let label: &[u8] = match purpose {
        "codes" => b"authgate/otp/v1",
        "outbox" => b"authgate/outbox/v1",
        "refresh" => b"authgate/refresh-successor/v1",
        "recovery" => b"authgate/recovery-code/v1",
        _ => return None,
    };
    Some(hmac(secret, &[label]))
}

/// The PKCS#8 v1 document of an Ed25519 key from its 32-byte seed.
pub fn ed25519_pkcs8_from_seed(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

impl Keys {
    pub fn new(set: KeySet) -> Keys {
        Keys {
            current: Arc::new(RwLock::new(Arc::new(set))),
        }
    }

    /// A fixed key set derived from one secret with HKDF (an Ed25519 signing
    /// key included), nothing rotated: for tools, benchmarks and fuzzing.
    pub fn derive(secret: &SecretString) -> Keys {
        let s = secret.expose_secret().as_bytes();
        let sym = |label: &str| SymmetricKeys::new(hkdf_key(s, label), []);
        let seed = hkdf_key(s, "authgate/v1/derived-signing");
        let pkcs8 = ed25519_pkcs8_from_seed(&seed);
        let key = crate::keyring::signing_key_from_pkcs8(
            "derived",
            jsonwebtoken::Algorithm::EdDSA,
            &pkcs8,
        );
        let signing = match key {
            Ok(k) => Signing::single(k),
            // A valid seed always makes a key; HS256 keeps the set usable if not.
            Err(_) => Signing::hs256(&hkdf_key(s, "authgate/v1/derived-hs256")),
        };
        Keys::new(KeySet {
            codes: sym("authgate/v1/codes"),
            outbox: sym("authgate/v1/outbox"),
            refresh: sym("authgate/v1/refresh"),
            recovery: sym("authgate/v1/recovery"),
            signing,
        })
    }

    /// The current set; cheap (one reference count).
    pub fn snapshot(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Installs a new set; every clone of this handle sees it from now on.
    pub fn install(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut g) => *g = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// The stored form of a new code, under the active key: bound to its user
    /// and purpose, so a hash copied to another row or purpose never matches.
    pub fn otp_hash(&self, user_id: &uuid::Uuid, purpose: &str, code: &str) -> [u8; 32] {
        let set = self.snapshot();
        otp_hash_with(set.codes.active(), user_id, purpose, code)
    }

    /// The forms a submitted code may be stored in: one per accepted key, so a
    /// code issued before a rotation (or by a process that has not seen it
    /// yet) still matches.
    pub fn otp_hashes(&self, user_id: &uuid::Uuid, purpose: &str, code: &str) -> Vec<Vec<u8>> {
        let set = self.snapshot();
        set.codes
            .accepted()
            .iter()
            .map(|k| otp_hash_with(k, user_id, purpose, code).to_vec())
            .collect()
    }

    /// The stored form of a new recovery code (canonical form), under the
    /// active key: bound to its user.
    pub fn recovery_hash(&self, user_id: &uuid::Uuid, code: &str) -> [u8; 32] {
        let set = self.snapshot();
        hmac(
            set.recovery.active(),
            &[user_id.as_bytes(), code.as_bytes()],
        )
    }

    /// Every form a submitted recovery code may be stored in (one per accepted key).
    pub fn recovery_hashes(&self, user_id: &uuid::Uuid, code: &str) -> Vec<Vec<u8>> {
        let set = self.snapshot();
        set.recovery
            .accepted()
            .iter()
            .map(|k| hmac(k, &[user_id.as_bytes(), code.as_bytes()]).to_vec())
            .collect()
    }

    /// Encrypts an outbox body under the active outbox key. The row id and
    /// recipient are authenticated with it, so a body copied into another row
    /// (another recipient, another id) fails to open instead of sending
    /// someone else's code to an attacker's phone.
    pub fn seal(&self, plaintext: &str, row: OutboxRow<'_>) -> Vec<u8> {
        let set = self.snapshot();
        aead_seal(
            set.outbox.active(),
            plaintext.as_bytes(),
            &row.associated_data(),
        )
    }

    /// Decrypts what `seal` produced for the same row, under any accepted
    /// outbox key; None when tampered, sealed by an unknown key, or sealed for
    /// another row.
    pub fn open(&self, sealed: &[u8], row: OutboxRow<'_>) -> Option<String> {
        let set = self.snapshot();
        let aad = row.associated_data();
        set.outbox
            .accepted()
            .iter()
            .find_map(|k| aead_open(k, sealed, &aad))
            .and_then(|pt| String::from_utf8(pt).ok())
    }

    /// The successor of a refresh token under the active key: the same for
    /// every process, so a retried refresh gets the same answer without the
    /// database ever holding a usable token; unpredictable without the key.
    pub fn refresh_successor(&self, token: &str) -> [u8; 32] {
        let set = self.snapshot();
        hmac(set.refresh.active(), &[token.as_bytes()])
    }

    /// The successors a retry may have been given: one per accepted key, the
    /// active key's first.
    pub fn refresh_successors(&self, token: &str) -> Vec<[u8; 32]> {
        let set = self.snapshot();
        set.refresh
            .accepted()
            .iter()
            .map(|k| hmac(k, &[token.as_bytes()]))
            .collect()
    }
}

fn otp_hash_with(key: &[u8; 32], user_id: &uuid::Uuid, purpose: &str, code: &str) -> [u8; 32] {
    hmac(
        key,
        &[user_id.as_bytes(), purpose.as_bytes(), code.as_bytes()],
    )
}

impl Signing {
    /// One key that signs and is the only one accepted.
    pub fn single(key: SigningKey) -> Signing {
        let key = Arc::new(key);
        Signing {
            jwks: key.jwk.iter().cloned().collect(),
            by_kid: HashMap::from([(key.kid.clone(), key.clone())]),
            active: key,
            accept_no_kid: false,
        }
    }

    /// HS256 over a shared secret: nothing is published, and tokens without a
    /// `kid` (from before keys had ids) are accepted.
    pub fn hs256(secret: &[u8]) -> Signing {
        let kid = format!(
            "hs256-{}",
            hex::encode(&hmac(secret, &[b"authgate/kid"])[..6])
        );
        let mut s = Signing::single(SigningKey {
            kid,
            alg: jsonwebtoken::Algorithm::HS256,
            encoding: jsonwebtoken::EncodingKey::from_secret(secret),
            decoding: jsonwebtoken::DecodingKey::from_secret(secret),
            jwk: None,
        });
        s.accept_no_kid = true;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &str) -> Keys {
        Keys::derive(&SecretString::from(s.to_owned()))
    }

    const ROW: OutboxRow<'static> = OutboxRow {
        id: 41,
        recipient: "+14155550100",
    };

    #[test]
    fn sealed_bodies_round_trip_and_detect_tampering() {
        let k = keys("a-secret-of-at-least-thirty-two-bytes!!");
        let sealed = k.seal("Your code is 123456", ROW);
        assert!(!String::from_utf8_lossy(&sealed).contains("123456"));
        assert_eq!(k.open(&sealed, ROW).as_deref(), Some("Your code is 123456"));
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(k.open(&bad, ROW), None);
        assert_eq!(
            keys("another-secret-of-thirty-two-bytes-long").open(&sealed, ROW),
            None
        );
    }

    #[test]
    fn a_sealed_body_moved_to_another_row_or_recipient_does_not_open() {
        let k = keys("a-secret-of-at-least-thirty-two-bytes!!");
        let sealed = k.seal("Your code is 123456", ROW);
        let other_id = OutboxRow { id: 42, ..ROW };
        let other_to = OutboxRow {
            recipient: "+14155550199",
            ..ROW
        };
        assert_eq!(k.open(&sealed, other_id), None);
        assert_eq!(k.open(&sealed, other_to), None);
        assert_eq!(k.open(&sealed, ROW).as_deref(), Some("Your code is 123456"));
    }

    #[test]
    fn recovery_hash_is_bound_to_user_and_key_and_apart_from_otp() {
        let k = keys("a-secret-of-at-least-thirty-two-bytes!!");
        let u = uuid::Uuid::new_v4();
        let h = k.recovery_hash(&u, "abcdefghjk");
        assert_eq!(h, k.recovery_hash(&u, "abcdefghjk"));
        assert_ne!(h, k.recovery_hash(&uuid::Uuid::new_v4(), "abcdefghjk"));
        assert_ne!(h, k.recovery_hash(&u, "abcdefghjm"));
        let other = keys("another-secret-of-thirty-two-bytes-long");
        assert_ne!(h, other.recovery_hash(&u, "abcdefghjk"));
        // Not the OTP key under another name, whatever the purpose string.
        assert_ne!(h, k.otp_hash(&u, "", "abcdefghjk"));
    }

    #[test]
    fn otp_hash_is_bound_to_user_purpose_and_key() {
        let k = keys("a-secret-of-at-least-thirty-two-bytes!!");
        let u = uuid::Uuid::new_v4();
        let h = k.otp_hash(&u, "phone_verify", "123456");
        assert_eq!(h, k.otp_hash(&u, "phone_verify", "123456"));
        assert_ne!(h, k.otp_hash(&u, "login_2fa", "123456"));
        assert_ne!(
            h,
            k.otp_hash(&uuid::Uuid::new_v4(), "phone_verify", "123456")
        );
        assert_ne!(h, k.otp_hash(&u, "phone_verify", "123457"));
        let other = keys("another-secret-of-thirty-two-bytes-long");
        assert_ne!(h, other.otp_hash(&u, "phone_verify", "123456"));
    }

    #[test]
    fn hkdf_keys_differ_per_label_and_are_never_the_master_key() {
        let master = b"a-master-key-of-at-least-thirty-two-bytes";
        let a = hkdf_key(master, "authgate/v1/codes");
        assert_eq!(a, hkdf_key(master, "authgate/v1/codes"));
        assert_ne!(a, hkdf_key(master, "authgate/v1/outbox"));
        assert_ne!(
            a,
            hkdf_key(
                b"another-master-key-of-thirty-two-bytes!!",
                "authgate/v1/codes"
            )
        );
        assert_ne!(&a[..], &master[..32]);
    }

    #[test]
    fn a_key_set_makes_with_its_active_key_and_accepts_what_the_others_made() {
        let base = keys("a-secret-of-at-least-thirty-two-bytes!!").snapshot();
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let with = |active: [u8; 32], others: Vec<[u8; 32]>| {
            let sym = SymmetricKeys::new(active, others);
            Keys::new(KeySet {
                codes: sym.clone(),
                outbox: sym.clone(),
                refresh: sym.clone(),
                recovery: sym,
                signing: base.signing.clone(),
            })
        };
        let old = with(k1, vec![]);
        let rotated = with(k2, vec![k1]);
        let dropped = with(k2, vec![]);
        let u = uuid::Uuid::new_v4();
        let stored = old.otp_hash(&u, "phone_verify", "123456");
        assert_ne!(stored, rotated.otp_hash(&u, "phone_verify", "123456"));
        assert!(rotated
            .otp_hashes(&u, "phone_verify", "123456")
            .contains(&stored.to_vec()));
        assert!(!dropped
            .otp_hashes(&u, "phone_verify", "123456")
            .contains(&stored.to_vec()));
        let sealed = old.seal("Your code is 123456", ROW);
        assert_eq!(
            rotated.open(&sealed, ROW).as_deref(),
            Some("Your code is 123456")
        );
        assert_eq!(dropped.open(&sealed, ROW), None);
        let rc = old.recovery_hash(&u, "abcdefghjk");
        assert!(rotated
            .recovery_hashes(&u, "abcdefghjk")
            .contains(&rc.to_vec()));
        let succ = old.refresh_successor("token");
        assert_eq!(rotated.refresh_successors("token")[1], succ);
        assert_ne!(rotated.refresh_successors("token")[0], succ);
        // Installing a set is seen by every clone of the handle.
        let handle = old.clone();
        old.install((*rotated.snapshot()).clone());
        assert_eq!(
            handle.refresh_successor("token"),
            rotated.refresh_successor("token")
        );
    }

    #[test]
    fn legacy_keys_are_what_earlier_versions_derived() {
        let secret = b"a-secret-of-at-least-thirty-two-bytes!!";
        assert_eq!(
            legacy_key(secret, "codes"),
            Some(hmac(secret, &[b"authgate/otp/v1"]))
        );
        assert_eq!(legacy_key(secret, "signing"), None);
    }
}
