//! Arbitrary bytes as Twilio's status-callback form, decoded the way the route's
//! `warp::body::form` decodes it, then through the `X-Twilio-Signature` check:
//! decoding and checking never panic; the signature Twilio would send always
//! verifies, whatever the parameter order; an arbitrary header, a changed URL
//! or a changed auth token never does (unless it happens to be that signature).
#![no_main]

use authgate::sms::signature::{compute, verify};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-auth-token-0123456789abcdef";
const URL: &str = "https://auth.example.com/api/v1/webhooks/twilio/status";

fuzz_target!(|data: &[u8]| {
    // First line: a candidate header; the rest: the form body.
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) else {
        return;
    };
    let expected = compute(TOKEN, URL, &form);
    assert!(!expected.is_empty());
    assert!(
        verify(TOKEN, URL, &form, Some(&expected)),
        "own signature refused"
    );
    // Twilio sorts the parameters, so the order on the wire does not matter.
    let mut reversed = form.clone();
    reversed.reverse();
    assert!(
        verify(TOKEN, URL, &reversed, Some(&expected)),
        "order changed the signature"
    );
    // Surrounding whitespace on the header is tolerated, as the route trims it.
    assert!(verify(TOKEN, URL, &form, Some(&format!(" {expected}\t"))));
    assert!(
        !verify(TOKEN, URL, &form, None),
        "a missing header verified"
    );
    assert!(
        !verify(TOKEN, &format!("{URL}?x=1"), &form, Some(&expected)),
        "URL not covered"
    );
    assert!(
        !verify("another-token", URL, &form, Some(&expected)),
        "key not covered"
    );
    if let Ok(h) = std::str::from_utf8(header) {
        if h.trim() != expected {
            assert!(
                !verify(TOKEN, URL, &form, Some(h)),
                "a forged header verified"
            );
        }
    }
    // One more parameter is a different request.
    let mut extended = form.clone();
    extended.push(("MessageStatus".to_owned(), "delivered".to_owned()));
    assert!(
        !verify(TOKEN, URL, &extended, Some(&expected)),
        "extra parameter not covered"
    );
});
