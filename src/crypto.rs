//! Server-side keys, all derived from the one server secret (`JWT_SECRET` or the
//! generated one), so several processes sharing that secret agree on every key.
//!
//! - `otp`: HMAC-SHA256 key for one-time codes (codes are stored only as keyed hashes);
//! - `outbox`: ChaCha20-Poly1305 key sealing SMS bodies at rest (they carry codes),
//!   each bound to its row (id and recipient) so it opens nowhere else;
//! - `jwt`: the HS256 key of access tokens;
//! - `refresh`: HMAC-SHA256 key deriving a refresh token's successor from it;
//! - `recovery`: HMAC-SHA256 key for recovery codes (stored only as keyed
//!   hashes, bound to their user), apart from `otp` so neither kind of hash
//!   can ever stand in for the other.

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

#[derive(Clone)]
pub struct Keys {
    otp: [u8; 32],
    outbox: [u8; 32],
    jwt: Vec<u8>,
    refresh: [u8; 32],
    recovery: [u8; 32],
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

impl Keys {
    pub fn derive(secret: &SecretString) -> Keys {
        let s = secret.expose_secret().as_bytes();
        Keys {
            otp: hmac(s, &[b"authgate/otp/v1"]),
            outbox: hmac(s, &[b"authgate/outbox/v1"]),
            jwt: s.to_vec(),
            refresh: hmac(s, &[b"authgate/refresh-successor/v1"]),
            recovery: hmac(s, &[b"authgate/recovery-code/v1"]),
        }
    }

    /// The stored form of a code: bound to its user and purpose, so a hash copied
    /// to another row or purpose never matches.
    pub fn otp_hash(&self, user_id: &uuid::Uuid, purpose: &str, code: &str) -> [u8; 32] {
        hmac(
            &self.otp,
            &[user_id.as_bytes(), purpose.as_bytes(), code.as_bytes()],
        )
    }

    /// The stored form of a recovery code (canonical form): bound to its user,
    /// so a hash copied to another account never matches.
    pub fn recovery_hash(&self, user_id: &uuid::Uuid, code: &str) -> [u8; 32] {
        hmac(&self.recovery, &[user_id.as_bytes(), code.as_bytes()])
    }

    /// Encrypts an outbox body with a fresh random nonce: `nonce (12 bytes) ||
    /// ciphertext+tag`. The row id and recipient are authenticated with it, so
    /// a body copied into another row (another recipient, another id) fails to
    /// open instead of sending someone else's code to an attacker's phone.
    pub fn seal(&self, plaintext: &str, row: OutboxRow<'_>) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.outbox));
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        let aad = row.associated_data();
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: &aad,
        };
        // Encryption with a valid key and in-memory buffer does not fail.
        if let Ok(ct) = cipher.encrypt(Nonce::from_slice(&nonce), payload) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Decrypts what `seal` produced for the same row; None when tampered,
    /// sealed by another key, or sealed for another row (or before bodies were
    /// bound to their rows).
    pub fn open(&self, sealed: &[u8], row: OutboxRow<'_>) -> Option<String> {
        if sealed.len() < 12 + 16 {
            return None;
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.outbox));
        let (nonce, ct) = sealed.split_at(12);
        let aad = row.associated_data();
        let payload = Payload { msg: ct, aad: &aad };
        let pt = cipher.decrypt(Nonce::from_slice(nonce), payload).ok()?;
        String::from_utf8(pt).ok()
    }

    /// The successor of a refresh token: the same for every process sharing the
    /// secret, so a retried refresh gets the same answer without the database
    /// ever holding a usable token; unpredictable without the key.
    pub fn refresh_successor(&self, token: &str) -> [u8; 32] {
        hmac(&self.refresh, &[token.as_bytes()])
    }

    pub fn jwt_secret(&self) -> &[u8] {
        &self.jwt
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
}
