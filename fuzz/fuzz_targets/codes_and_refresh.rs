//! Arbitrary bytes as the body of a code check (`{"code": …}`) and of
//! `/auth/refresh` (`{"refreshToken": …}`): parsing never panics; an accepted
//! code is exactly the configured number of ASCII digits; a code's keyed hash
//! is bound to its user and purpose; whatever passes the refresh-token shape
//! check is 43 URL-safe characters and hashes to 32 bytes.
#![no_main]

use authgate::crypto::Keys;
use authgate::domain::otp::parse_code;
use authgate::routes::account::parse_code_body;
use authgate::routes::body::parse_object;
use authgate::tokens::{looks_like_refresh_token, refresh_token_hash};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

fuzz_target!(|data: &[u8]| {
    let length = 4 + data.first().copied().unwrap_or(0) % 7; // OTP_LENGTH: 4 to 10
    let body = data.get(1..).unwrap_or_default();
    if let Ok(s) = std::str::from_utf8(body) {
        check_code(parse_code(s, length).ok(), length);
        if looks_like_refresh_token(s) {
            assert_eq!(s.len(), 43);
            assert_eq!(refresh_token_hash(s).len(), 32);
        }
    }
    let Ok(map) = parse_object(body) else {
        return;
    };
    if let Some(token) = map.get("refreshToken").and_then(|v| v.as_str()) {
        let token = token.trim();
        if looks_like_refresh_token(token) {
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }
    match parse_code_body(map, length) {
        Ok(code) => check_code(Some(code), length),
        Err(e) => {
            let _ = e.public_message();
        }
    }
});

fn check_code(code: Option<String>, length: u8) {
    let Some(code) = code else {
        return;
    };
    assert_eq!(
        code.len(),
        usize::from(length),
        "code of the wrong length accepted"
    );
    assert!(
        code.bytes().all(|b| b.is_ascii_digit()),
        "non-digit code accepted"
    );
    let keys = Keys::derive(&SecretString::from(
        "fuzz-secret-fuzz-secret-fuzz-secret-0".to_owned(),
    ));
    let user = uuid::Uuid::from_u128(7);
    let stored = keys.otp_hash(&user, "login_2fa", &code);
    // The check statement compares these hashes for equality: the same code
    // must give the same hash, and another purpose or user a different one.
    assert_eq!(stored, keys.otp_hash(&user, "login_2fa", &code));
    assert_ne!(stored, keys.otp_hash(&user, "phone_verify", &code));
    assert_ne!(
        stored,
        keys.otp_hash(&uuid::Uuid::from_u128(8), "login_2fa", &code)
    );
}
