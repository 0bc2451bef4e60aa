//! Twilio's inbound messages (the number's messaging webhook): a customer's STOP reply.
//! Twilio signs each request: `X-Twilio-Signature` = base64 of HMAC-SHA1, keyed by the
//! account's auth token, over the full URL Twilio called followed by every POST parameter
//! name and value, sorted by name.

use base64::Engine as _;
use hmac::Mac as _;

/// The signature Twilio sends for `url` and the form `params`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `given` is Twilio's signature of this request.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], given: &str) -> bool {
    super::constant_time_eq(
        signature(auth_token, url, params).as_bytes(),
        given.trim().as_bytes(),
    )
}

/// The number that opted out, when the message is an opt-out (Twilio's standard keywords,
/// or its Advanced Opt-Out's `OptOutType=STOP`).
pub fn opt_out(params: &[(String, String)]) -> Option<String> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let body = get("Body").unwrap_or("").trim().to_ascii_uppercase();
    let keyword = matches!(
        body.as_str(),
        "STOP" | "STOPALL" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" | "OPTOUT" | "REVOKE"
    );
    (keyword || get("OptOutType") == Some("STOP"))
        .then(|| get("From").map(str::to_string))
        .flatten()
}

/// `application/x-www-form-urlencoded` into pairs.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    let dec = |s: &str| -> String {
        let s = s.replace('+', " ");
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn twilios_documented_example_signs_alike() {
        // Twilio's security docs: auth token 12345, this URL and these parameters.
        let params = p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            signature("12345", url, &params),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
        assert!(verify(
            "12345",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!verify(
            "12345",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezd="
        ));
    }

    #[test]
    fn stop_replies_are_opt_outs() {
        assert_eq!(
            opt_out(&p(&[("From", "+1617"), ("Body", " stop ")])).as_deref(),
            Some("+1617")
        );
        assert_eq!(
            opt_out(&p(&[
                ("From", "+1617"),
                ("Body", "x"),
                ("OptOutType", "STOP")
            ]))
            .as_deref(),
            Some("+1617")
        );
        assert_eq!(opt_out(&p(&[("From", "+1617"), ("Body", "thanks!")])), None);
        assert_eq!(
            parse_form("a=%€".as_bytes()),
            p(&[("a", "%€")]),
            "no panic on bytes"
        );
        assert_eq!(
            parse_form(b"From=%2B16175550100&Body=STOP+now&x"),
            p(&[("From", "+16175550100"), ("Body", "STOP now"), ("x", "")])
        );
    }
}
