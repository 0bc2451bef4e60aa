//! Channels that deliver due touches. So far the outbox file, the default for the demo and
//! dry runs (issue 6); Klaviyo, Twilio, Postmark and signed webhooks come next (issue 7).

pub mod outbox;

use crate::engine::plan::Offer;

/// An offer as messages carry it and `explain` shows it: the price a decimal string in
/// the offer's (the order's) currency.
pub fn offer_json(o: &Offer) -> serde_json::Value {
    serde_json::json!({
        "product": o.product, "sku": o.sku, "variant_id": o.variant_id, "title": o.title,
        "price": o.currency.format_minor(o.price), "currency": o.currency.as_str(),
        "discount_code": o.discount_code,
    })
}
