//! Twilio SMS: one form-encoded request per message, the body rendered from `sms.txt` and
//! refused when it is over one 160-character segment; the recipient in E.164. Twilio has
//! no idempotency key: a touch is sent once per attempt, and the window between Twilio's
//! answer and our commit is kept to one local transaction.

use super::templates::Templates;
use super::{classify, Channel, Message, Outcome, Secret};

pub const BASE_URL: &str = "https://api.twilio.com";

pub struct Twilio {
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: Secret,
    /// `From` (an E.164 number) or a `MessagingServiceSid` (starts with `MG`).
    pub from: String,
    pub store_name: String,
    pub templates: std::sync::Arc<Templates>,
    pub limit: super::RateLimit,
    pub agent: ureq::Agent,
}

/// Twilio's error for a recipient who replied STOP: the number is suppressed.
pub const UNSUBSCRIBED_RECIPIENT: i64 = 21610;

/// Whether a phone number is E.164: `+`, 8 to 15 digits, no leading zero.
pub fn is_e164(p: &str) -> bool {
    let Some(d) = p.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

fn form(pairs: &[(&str, &str)]) -> String {
    use crate::engine::percent_encode as enc;
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Twilio {
    /// The form body of a message to `to`.
    pub fn body(&self, to: &str, text: &str) -> String {
        let from = if self.from.starts_with("MG") {
            "MessagingServiceSid"
        } else {
            "From"
        };
        form(&[("To", to), (from, &self.from), ("Body", text)])
    }
}

impl Channel for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn send(&self, m: &Message) -> Outcome {
        let Some(to) = m.phone.as_deref().filter(|p| is_e164(p)) else {
            return Outcome::Dead {
                reason: format!(
                    "no E.164 phone number for the SMS (have {:?})",
                    m.phone.as_deref().map(|p| p.chars().count())
                ),
            };
        };
        let text = match self.templates.sms(m, &self.store_name) {
            Ok(t) => t,
            Err(reason) => return Outcome::Dead { reason },
        };
        use base64::Engine as _;
        self.limit.acquire();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.account_sid,
            self.auth_token.expose()
        ));
        let result = self
            .agent
            .post(&format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                self.base_url.trim_end_matches('/'),
                self.account_sid
            ))
            .header("authorization", &format!("Basic {auth}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .send(self.body(to, &text).as_bytes());
        let (status, retry_after, body) = match super::read_answer("twilio", result) {
            Ok(a) => a,
            Err(o) => return o,
        };
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if json["code"].as_i64() == Some(UNSUBSCRIBED_RECIPIENT) {
            return Outcome::Unsubscribed {
                reason: format!(
                    "twilio: the recipient replied STOP (error {UNSUBSCRIBED_RECIPIENT})"
                ),
            };
        }
        let id = json["sid"].as_str().map(str::to_string);
        classify("twilio", status, retry_after.as_deref(), &body, id)
    }
}
