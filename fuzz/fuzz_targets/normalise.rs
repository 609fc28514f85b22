//! Phone and e-mail normalisation: never panics, and normalising a normalised
//! value gives it back unchanged.
#![no_main]

use authgate::domain::email::Email;
use authgate::domain::phone::PhoneE164;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = PhoneE164::parse(s) {
        assert_eq!(PhoneE164::parse(p.as_str()).ok(), Some(p.clone()));
        assert!(p.as_str().starts_with('+') && p.as_str().len() <= 16);
    }
    if let Ok(e) = Email::parse(s) {
        assert_eq!(Email::parse(e.as_str()).ok(), Some(e.clone()));
    }
});
