//! Twilio's request signature (`X-Twilio-Signature`), which proves a webhook
//! came from Twilio: HMAC-SHA1, keyed with the auth token, over the full URL
//! Twilio called followed by every POST parameter, sorted by name, as name then
//! value with no separators; base64-encoded. Checked in constant time.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;

/// The signature Twilio would send for this URL and these form parameters.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // By name; a repeated name keeps its values in a fixed (sorted) order.
    sorted.sort();
    // HMAC takes keys of any length; the error branch cannot happen, and an
    // empty signature never matches a real header.
    let Ok(mut mac) = <HmacSha1 as Mac>::new_from_slice(auth_token.as_bytes()) else {
        return String::new();
    };
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// True when `header` is the signature of this request. A missing header is
/// simply `None`: false.
pub fn verify(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: Option<&str>,
) -> bool {
    let Some(header) = header else {
        return false;
    };
    let expected = compute(auth_token, url, params);
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(header.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twilio's documented example (docs "Security" / "Validating requests"):
    /// auth token 12345, this URL and these parameters give this signature.
    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const SIGNATURE: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";

    fn params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn twilios_own_example_validates() {
        assert_eq!(compute(TOKEN, URL, &params()), SIGNATURE);
        assert!(verify(TOKEN, URL, &params(), Some(SIGNATURE)));
        // Parameter order on the wire does not matter: Twilio sorts them.
        let mut reversed = params();
        reversed.reverse();
        assert!(verify(TOKEN, URL, &reversed, Some(SIGNATURE)));
    }

    #[test]
    fn tampering_is_rejected() {
        let mut p = params();
        p[2].1 = "1235".into();
        assert!(!verify(TOKEN, URL, &p, Some(SIGNATURE)));
        assert!(!verify(
            TOKEN,
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params(),
            Some(SIGNATURE)
        ));
        assert!(!verify("12346", URL, &params(), Some(SIGNATURE)));
        let mut p = params();
        p.push(("Extra".into(), "1".into()));
        assert!(!verify(TOKEN, URL, &p, Some(SIGNATURE)));
        assert!(!verify(
            TOKEN,
            URL,
            &params(),
            Some("RSOYDt4T1cUTdK1PDd93/VVr8B9=")
        ));
        assert!(!verify(TOKEN, URL, &params(), Some("")));
        assert!(!verify(TOKEN, URL, &params(), None));
    }
}
