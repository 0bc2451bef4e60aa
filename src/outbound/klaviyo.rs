//! Klaviyo Events API: one event per touch, whose metric the store's Klaviyo flow listens
//! for and sends the message from. `unique_id` = the touch id, so Klaviyo drops a resend of
//! the same touch: exactly once.

use std::collections::BTreeMap;

use super::{exchange, Channel, Message, Outcome, Secret};
use crate::engine::plan::TouchKind;

/// The API revision we speak (the JSON:API shape; older revisions used a flat one).
pub const REVISION: &str = "2024-10-15";
pub const BASE_URL: &str = "https://a.klaviyo.com";

pub struct Klaviyo {
    /// `https://a.klaviyo.com` (a fake provider's address in tests).
    pub base_url: String,
    pub api_key: Secret,
    /// Metric name per touch kind (`metrics` in config), else [`metric_name`].
    pub metrics: BTreeMap<String, String>,
    pub limit: super::RateLimit,
    pub agent: ureq::Agent,
}

/// The default metric name of a touch kind.
pub fn metric_name(kind: TouchKind) -> &'static str {
    match kind {
        TouchKind::Page => "Upsell Page Offer",
        TouchKind::Touch1 => "Upsell Touch 1",
        TouchKind::Sms => "Upsell SMS",
        TouchKind::Touch2 => "Upsell Touch 2",
        TouchKind::Review => "Upsell Review Request",
        TouchKind::Touch3 => "Upsell Touch 3",
        TouchKind::Winback => "Upsell Win-back",
        TouchKind::Anticipation => "Upsell Delivery Anticipation",
        TouchKind::Recovery => "Upsell Recovery Needed",
    }
}

impl Klaviyo {
    /// The event body (JSON:API) for a touch.
    pub fn body(&self, m: &Message) -> serde_json::Value {
        let metric = self
            .metrics
            .get(m.kind.as_str())
            .map_or(metric_name(m.kind), String::as_str);
        let mut properties = serde_json::json!({
            "touch": m.kind.as_str(), "order_name": m.order_name, "order_id": m.order_id,
            "recipe": m.recipe.map(|r| r.as_str()),
            "tracked_url": m.links.click, "unsubscribe_url": m.links.unsubscribe,
        });
        let mut attributes = serde_json::json!({
            "time": m.at.to_rfc3339(),
            "unique_id": m.touch_id.to_string(),
            "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
            "profile": {"data": {"type": "profile", "attributes": profile(m)}},
        });
        if let Some(o) = &m.offer {
            let p = properties.as_object_mut().expect("an object");
            p.insert("product_title".into(), o.title.clone().into());
            p.insert("product".into(), o.product.clone().into());
            p.insert("sku".into(), o.sku.clone().into());
            p.insert("variant_id".into(), o.variant_id.clone().into());
            p.insert("price".into(), o.currency.format_minor(o.price).into());
            p.insert("currency".into(), o.currency.as_str().into());
            p.insert("discount_code".into(), o.discount_code.clone().into());
            p.insert("image_url".into(), m.image_url.clone().into());
            let a = attributes.as_object_mut().expect("an object");
            // `value` is a number in the currency's major unit.
            let value: f64 = o.currency.format_minor(o.price).parse().unwrap_or(0.0);
            a.insert("value".into(), value.into());
            a.insert("value_currency".into(), o.currency.as_str().into());
        }
        attributes["properties"] = properties;
        serde_json::json!({"data": {"type": "event", "attributes": attributes}})
    }
}

/// The profile Klaviyo matches: email and/or phone (E.164).
fn profile(m: &Message) -> serde_json::Value {
    let mut p = serde_json::Map::new();
    if let Some(e) = &m.email {
        p.insert("email".into(), e.clone().into());
    }
    // Klaviyo refuses a phone number that is not E.164 (a WooCommerce phone is free text).
    if let Some(ph) = m.phone.as_ref().filter(|p| super::twilio::is_e164(p)) {
        p.insert("phone_number".into(), ph.clone().into());
    }
    p.into()
}

impl Channel for Klaviyo {
    fn name(&self) -> &'static str {
        "klaviyo"
    }

    fn send(&self, m: &Message) -> Outcome {
        if m.email.is_none() && !m.phone.as_deref().is_some_and(super::twilio::is_e164) {
            return Outcome::Dead {
                reason: "no email or phone for the Klaviyo profile".into(),
            };
        }
        let body = serde_json::to_vec(&self.body(m)).expect("JSON values serialize");
        self.limit.acquire();
        let result = self
            .agent
            .post(&format!(
                "{}/api/events/",
                self.base_url.trim_end_matches('/')
            ))
            .header(
                "authorization",
                &format!("Klaviyo-API-Key {}", self.api_key.expose()),
            )
            .header("revision", REVISION)
            .header("content-type", "application/vnd.api+json")
            .header("accept", "application/vnd.api+json")
            .send(&body[..]);
        // 202 Accepted carries no body and no id: the touch id is the key.
        exchange("klaviyo", result, |_| None)
    }
}
