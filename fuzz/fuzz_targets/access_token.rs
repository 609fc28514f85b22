//! Arbitrary strings as access tokens and refresh tokens: verification never
//! panics and never accepts what it did not sign.
#![no_main]

use authgate::crypto::Keys;
use authgate::tokens::{looks_like_refresh_token, refresh_token_hash, TokenIssuer};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let keys = Keys::derive(&SecretString::from("fuzz-secret-fuzz-secret-fuzz-secret-0".to_owned()));
    let issuer = TokenIssuer::new(&keys, "authgate", &["authgate".to_owned()], std::time::Duration::from_secs(900));
    assert!(issuer.verify(s, chrono::Utc::now()).is_err(), "accepted an unsigned token");
    if looks_like_refresh_token(s) {
        assert_eq!(refresh_token_hash(s).len(), 32);
    }
});
