//! Postmark email: HTML and text from the templates, `List-Unsubscribe` with the one-click
//! header (RFC 8058), `Tag` = the touch kind. Postmark has no idempotency key: a touch is
//! sent once per attempt, and the window between Postmark's answer and our commit is kept
//! to one local transaction.

use super::templates::Templates;
use super::{exchange, Channel, Message, Outcome, Secret};

pub const BASE_URL: &str = "https://api.postmarkapp.com";

pub struct Postmark {
    pub base_url: String,
    pub server_token: Secret,
    /// The sender, e.g. `Coffee Co <hello@coffee.example>` (a confirmed sender signature).
    pub from: String,
    pub message_stream: String,
    pub store_name: String,
    pub templates: std::sync::Arc<Templates>,
    pub limit: super::RateLimit,
    pub agent: ureq::Agent,
}

impl Postmark {
    pub fn body(&self, m: &Message, to: &str) -> Result<serde_json::Value, String> {
        let e = self.templates.email(m, &self.store_name)?;
        Ok(serde_json::json!({
            "From": self.from, "To": to, "Subject": e.subject,
            "HtmlBody": e.html, "TextBody": e.text,
            "MessageStream": self.message_stream, "Tag": m.kind.as_str(),
            "Headers": [
                {"Name": "List-Unsubscribe", "Value": format!("<{}>", m.links.unsubscribe)},
                {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
            ],
            "Metadata": {"touch_id": m.touch_id.to_string(), "order": m.order_name},
        }))
    }
}

impl Channel for Postmark {
    fn name(&self) -> &'static str {
        "postmark"
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn send(&self, m: &Message) -> Outcome {
        let Some(to) = m.email.as_deref() else {
            return Outcome::Dead {
                reason: "no email address for the message".into(),
            };
        };
        let body = match self.body(m, to) {
            Ok(b) => serde_json::to_vec(&b).expect("JSON values serialize"),
            Err(reason) => return Outcome::Dead { reason },
        };
        self.limit.acquire();
        let result = self
            .agent
            .post(&format!("{}/email", self.base_url.trim_end_matches('/')))
            .header("x-postmark-server-token", self.server_token.expose())
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .send(&body[..]);
        exchange("postmark", result, |b| {
            serde_json::from_str::<serde_json::Value>(b)
                .ok()
                .and_then(|v| v["MessageID"].as_str().map(str::to_string))
        })
    }
}
