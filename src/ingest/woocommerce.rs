//! WooCommerce webhooks: the creation ping, HMAC verification, delivery identity, and
//! normalization of `order.created|updated|deleted|restored`.
//!
//! Wire facts: `X-WC-Webhook-Signature` is base64 HMAC-SHA256 of the raw body with the
//! webhook's secret. On creation WooCommerce sends a ping (form body `webhook_id=N`, no
//! signature) and wants exactly 200. It never retries, so answer fast. Refunds arrive as
//! `order.updated` with `refunds[]`. Dedupe on `X-WC-Webhook-Delivery-ID`, else (order id,
//! `date_modified_gmt`). Times are GMT without an offset; prices are numbers or strings.

use serde::Deserialize;

use super::wire::{non_empty, null_default, parse_gmt, Decimal, Id};
use super::{Headers, Inbound, Parsed, VerifyError};
use crate::engine::*;

pub const SIGNATURE_HEADER: &str = "x-wc-webhook-signature";
pub const TOPIC_HEADER: &str = "x-wc-webhook-topic";
pub const DELIVERY_HEADER: &str = "x-wc-webhook-delivery-id";

/// What a WooCommerce request turned out to be.
#[derive(Debug)]
pub enum Received {
    /// The unsigned creation ping: answer 200, store nothing.
    Ping,
    Delivery(Inbound),
}

/// Recognises the ping before any verification, then verifies and normalizes.
pub fn receive(
    headers: Headers,
    body: Vec<u8>,
    secrets: &[String],
) -> Result<Received, VerifyError> {
    if headers.get(SIGNATURE_HEADER).is_none() && is_ping(&body) {
        return Ok(Received::Ping);
    }
    verify(&headers, &body, secrets)?;
    let topic = headers
        .get(TOPIC_HEADER)
        .ok_or(VerifyError::MissingHeader("X-WC-Webhook-Topic"))?
        .trim()
        .to_ascii_lowercase();
    let parsed = normalize(&topic, &body);
    let dedupe_key = match headers
        .get(DELIVERY_HEADER)
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        Some(d) => format!("delivery:{d}"),
        None => fallback_key(&body, &topic),
    };
    let kept = headers.keep(|k| k.starts_with("x-wc-webhook-") && k != SIGNATURE_HEADER);
    Ok(Received::Delivery(Inbound {
        topic,
        dedupe_key,
        headers: kept,
        body,
        parsed,
    }))
}

/// `webhook_id=N` and nothing else.
fn is_ping(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    text.trim()
        .strip_prefix("webhook_id=")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
}

pub fn verify(headers: &Headers, body: &[u8], secrets: &[String]) -> Result<(), VerifyError> {
    super::verify_hmac(headers, "X-WC-Webhook-Signature", body, secrets)
}

/// Without a delivery id: the order and the moment it was modified.
fn fallback_key(body: &[u8], topic: &str) -> String {
    #[derive(Deserialize)]
    struct Key {
        id: Option<Id>,
        date_modified_gmt: Option<String>,
    }
    match serde_json::from_slice::<Key>(body) {
        Ok(Key {
            id: Some(id),
            date_modified_gmt: Some(m),
        }) => format!("order:{}:{m}", id.0),
        _ => super::body_key(topic, body),
    }
}

pub fn normalize(topic: &str, body: &[u8]) -> Parsed {
    let order_topic = match topic {
        "order.created" => OrderTopic::Created,
        "order.updated" | "order.restored" => OrderTopic::Updated,
        "order.deleted" => OrderTopic::Cancelled,
        _ => return Parsed::Ignored,
    };
    match parse_order(body, order_topic == OrderTopic::Cancelled) {
        Ok(order) => Parsed::Event(Event::Order {
            topic: order_topic,
            order: Box::new(order),
        }),
        Err(why) => Parsed::Unparseable(format!("{topic}: {why}")),
    }
}

#[derive(Deserialize)]
struct WireOrder {
    id: Id,
    number: Option<String>,
    status: Option<String>,
    currency: String,
    date_created_gmt: String,
    date_modified_gmt: Option<String>,
    total: Decimal,
    #[serde(default, deserialize_with = "null_default")]
    customer_id: u64,
    billing: Option<WireAddress>,
    shipping: Option<WireAddress>,
    #[serde(default, deserialize_with = "null_default")]
    line_items: Vec<WireLine>,
    #[serde(default, deserialize_with = "null_default")]
    refunds: Vec<WireRefund>,
    #[serde(default, deserialize_with = "null_default")]
    coupon_lines: Vec<WireCoupon>,
}

#[derive(Deserialize)]
struct WireAddress {
    email: Option<String>,
    phone: Option<String>,
    country: Option<String>,
    state: Option<String>,
    postcode: Option<String>,
}

#[derive(Deserialize)]
struct WireLine {
    id: Id,
    #[serde(default, deserialize_with = "null_default")]
    product_id: u64,
    #[serde(default, deserialize_with = "null_default")]
    variation_id: u64,
    sku: Option<String>,
    quantity: u32,
    price: Decimal,
    name: Option<String>,
}

#[derive(Deserialize)]
struct WireRefund {
    id: Id,
    total: Decimal,
}

#[derive(Deserialize)]
struct WireCoupon {
    code: Option<String>,
}

fn region(a: &Option<WireAddress>) -> Option<Region> {
    a.as_ref().map(|a| Region {
        country: non_empty(a.country.clone()),
        province: non_empty(a.state.clone()),
        zip: non_empty(a.postcode.clone()),
    })
}

fn parse_order(body: &[u8], deleted: bool) -> Result<Order, String> {
    let w: WireOrder = serde_json::from_slice(body).map_err(|e| format!("order JSON: {e}"))?;
    let currency = super::wire::currency(&w.currency)?;
    let money = |field: &str, d: &Decimal| super::wire::minor(currency, field, d);
    let created_at = parse_gmt("date_created_gmt", &w.date_created_gmt)?;
    let updated_at = match &w.date_modified_gmt {
        Some(t) => parse_gmt("date_modified_gmt", t)?,
        None => created_at,
    };
    let status = non_empty(w.status);
    let gone = matches!(status.as_deref(), Some("cancelled" | "failed" | "trash"));
    let mut lines = Vec::with_capacity(w.line_items.len());
    for (i, l) in w.line_items.into_iter().enumerate() {
        let price = money(&format!("line_items[{i}].price"), &l.price)?;
        lines.push(super::wire::plain_line(
            l.id.0,
            l.product_id,
            l.variation_id,
            l.sku,
            l.quantity,
            price,
            l.name,
        ));
    }
    let mut refunds = Vec::with_capacity(w.refunds.len());
    for (i, r) in w.refunds.iter().enumerate() {
        // WooCommerce lists refund totals as negative amounts.
        let amount = money(&format!("refunds[{i}].total"), &r.total)?.abs();
        refunds.push((r.id.0.clone(), amount));
    }
    let total = money("total", &w.total)?;
    let email = w.billing.as_ref().and_then(|b| non_empty(b.email.clone()));
    let phone = w.billing.as_ref().and_then(|b| non_empty(b.phone.clone()));
    let customer = (w.customer_id != 0 || email.is_some()).then(|| CustomerRef {
        platform_id: (w.customer_id != 0).then(|| w.customer_id.to_string()),
        email: email.clone(),
        phone: phone.clone(),
        ..CustomerRef::default()
    });
    let subtotal = lines
        .iter()
        .map(|l| l.unit_price * i64::from(l.quantity))
        .sum();
    Ok(Order {
        name: format!("#{}", w.number.unwrap_or_else(|| w.id.0.clone())),
        id: w.id.0,
        created_at,
        updated_at,
        currency,
        total,
        subtotal,
        financial_status: status,
        cancelled_at: (gone || deleted).then_some(updated_at),
        email,
        phone,
        customer,
        lines,
        tags: vec![],
        discount_codes: w
            .coupon_lines
            .into_iter()
            .filter_map(|c| non_empty(c.code))
            .collect(),
        shipping: region(&w.shipping),
        billing: region(&w.billing),
        refunds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_the_bare_ping() {
        assert!(is_ping(b"webhook_id=12"));
        assert!(!is_ping(b"webhook_id="));
        assert!(!is_ping(b"webhook_id=12&x=1"));
        assert!(!is_ping(br#"{"id":1}"#));
    }

    #[test]
    fn dedupe_falls_back_to_order_and_modification_time() {
        let body = br#"{"id": 77, "date_modified_gmt": "2026-11-21T15:00:00"}"#;
        assert_eq!(
            fallback_key(body, "order.updated"),
            "order:77:2026-11-21T15:00:00"
        );
        assert!(fallback_key(b"{}", "order.updated").starts_with("body:"));
    }

    #[test]
    fn a_trashed_or_deleted_order_is_cancelled() {
        let body = br#"{"id":5,"status":"processing","currency":"EUR","date_created_gmt":"2026-11-21T10:00:00",
            "date_modified_gmt":"2026-11-21T11:00:00","total":"10.00","customer_id":0,"line_items":[]}"#;
        let Parsed::Event(Event::Order { order, .. }) = normalize("order.deleted", body) else {
            panic!()
        };
        assert!(order.cancelled_at.is_some());
        assert!(
            order.customer.is_none(),
            "a guest without email has no customer"
        );
        let Parsed::Event(Event::Order { order, .. }) = normalize("order.restored", body) else {
            panic!()
        };
        assert!(order.cancelled_at.is_none());
        assert_eq!(normalize("coupon.created", body), Parsed::Ignored);
    }
}
