//! Arbitrary bytes as a sign-up request body: parsing and validation must never
//! panic, and must never echo a submitted value in the error message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(map) = authgate::routes::body::parse_object(data) else {
        return;
    };
    let password = map
        .get("password")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    if let Err(e) = authgate::routes::account::parse_signup(map) {
        let message = e.public_message();
        if let Some(pw) = password.filter(|p| p.len() >= 6) {
            assert!(!message.contains(&pw), "error message echoes the password");
        }
    }
});
