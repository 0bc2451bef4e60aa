//! Signed webhooks (Standard Webhooks v1), for Zapier, n8n or the store's own systems:
//! `webhook-id` = the touch id (stable across retries: the receiver's idempotency key),
//! `webhook-timestamp` (Unix seconds), `webhook-signature` with one `v1,<base64>` entry per
//! active secret, over `{id}.{timestamp}.{body}` with HMAC-SHA256 keyed by the secret's
//! base64 after `whsec_`.

use base64::Engine as _;
use hmac::Mac as _;

use super::{classify, Channel, Message, Outcome, Secret};

/// A webhook endpoint.
pub struct Webhook {
    pub url: String,
    /// Signing secrets, `whsec_<base64 of 24-64 bytes>`; several while rotating.
    pub secrets: Vec<Secret>,
    pub limit: super::RateLimit,
    pub agent: ureq::Agent,
}

/// Checks a signing secret's form; the message says what is wrong without showing it.
pub fn check_secret(s: &str) -> Result<(), String> {
    let Some(b64) = s.strip_prefix("whsec_") else {
        return Err("must start with whsec_ (a Standard Webhooks secret)".into());
    };
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(k) if (24..=64).contains(&k.len()) => Ok(()),
        Ok(k) => Err(format!(
            "holds {} bytes after whsec_; use 24 to 64 (e.g. `openssl rand -base64 32`)",
            k.len()
        )),
        Err(_) => Err("is not base64 after whsec_".into()),
    }
}

/// The `webhook-signature` header value: a `v1,<base64>` entry per secret.
pub fn signature(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = Vec::new();
    for s in secrets {
        let key = s
            .expose()
            .strip_prefix("whsec_")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key)
            .expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        out.push(format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        ));
    }
    out.join(" ")
}

/// The JSON the endpoint receives: the outbox line's fields plus the contact, which the
/// store's own systems need to reach the customer.
pub fn body(m: &Message) -> serde_json::Value {
    if m.kind == crate::engine::plan::TouchKind::Recovery {
        // Not a message for the customer: the store's people should follow up.
        return serde_json::json!({
            "type": "customer.recovery_needed",
            "notice_id": m.touch_id.to_string(), "store": m.store, "customer": m.customer,
            "email": m.email, "phone": m.phone, "ticket": m.ticket,
            "latest_order": (!m.order_id.is_empty()).then_some(&m.order_id),
            "sent_at": m.at.to_rfc3339(),
        });
    }
    serde_json::json!({
        "type": "touch.due",
        "touch_id": m.touch_id.to_string(), "store": m.store, "order": m.order_id,
        "order_name": m.order_name, "customer": m.customer, "email": m.email, "phone": m.phone,
        "kind": m.kind.as_str(), "channel": m.medium.as_str(),
        "recipe": m.recipe.map(|r| r.as_str()),
        "due_at": m.due_at.to_rfc3339(), "sent_at": m.at.to_rfc3339(),
        "offer": m.offer.as_ref().map(super::offer_json),
        "links": m.links,
    })
}

impl Channel for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send(&self, m: &Message) -> Outcome {
        let body = serde_json::to_vec(&body(m)).expect("JSON values serialize");
        let id = m.touch_id.to_string();
        let ts = m.at.0.div_euclid(1000);
        self.limit.acquire();
        let result = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header(
                "webhook-signature",
                signature(&self.secrets, &id, ts, &body),
            )
            .send(&body[..]);
        let (status, retry_after, body) = match super::read_answer("webhook", result) {
            Ok(a) => a,
            Err(o) => return o,
        };
        match classify("webhook", status, retry_after.as_deref(), &body, None) {
            // Standard Webhooks: 410 says the endpoint is gone for good.
            Outcome::Dead { reason } if status == 410 => Outcome::Gone { reason },
            o => o,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_reference_vector_signs_alike() {
        let s = Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        assert_eq!(
            signature(
                &[s],
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn each_secret_signs_while_rotating() {
        let a = Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let b = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sig = signature(&[a, b], "1", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|e| e.starts_with("v1,")));
    }

    #[test]
    fn secrets_are_checked_without_being_shown() {
        assert!(check_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_ok());
        let e = check_secret("whsec_c2hvcnQ=").unwrap_err();
        assert!(e.contains("5 bytes") && !e.contains("c2hvcnQ"), "{e}");
        assert!(check_secret("plain").unwrap_err().contains("whsec_"));
    }
}
