//! Delivery events from a carrier or 3PL, in the documented generic JSON:
//! `{"order_id": "...", "status": "shipped"|"delayed"|"delivered"|"failed",
//! "estimated_at": RFC 3339|null, "occurred_at": RFC 3339}`, signed (HMAC-SHA256 of the
//! body in `X-Upsell-Signature`). They feed the same delivery state as Shopify's
//! `fulfillment_events/create`.

use serde_json::Value;

use super::{Headers, Inbound, Parsed};
use crate::engine::{DeliveryEvent, DeliveryStatus, Event, Timestamp};

/// The topic carrier deliveries are stored under; `reparse` knows it by this prefix.
pub const TOPIC_PREFIX: &str = "carrier/";

/// A verified carrier delivery, ready for the durable commit. A body that cannot be read
/// is an error (answered 400: the sender is ours to fix, unlike a platform that would drop
/// its subscription after failures).
pub fn receive(headers: Headers, body: Vec<u8>) -> Result<Inbound, String> {
    let event = parse(&body)?;
    let status = STATUSES
        .iter()
        .find(|(_, st)| *st == event.status)
        .map_or("other", |(name, _)| name);
    let topic = format!("{TOPIC_PREFIX}{status}");
    Ok(Inbound {
        dedupe_key: super::body_key(&topic, &body),
        topic,
        headers: headers.keep(|k| k == "content-type" || k == "user-agent"),
        body,
        parsed: Parsed::Event(Event::Delivery(event)),
    })
}

/// This build's reading of a stored carrier body (quarantine replay).
pub fn normalize(body: &[u8]) -> Parsed {
    match parse(body) {
        Ok(d) => Parsed::Event(Event::Delivery(d)),
        Err(e) => Parsed::Unparseable(e),
    }
}

/// The statuses a carrier sends, by their names in the body (and the topic).
const STATUSES: [(&str, DeliveryStatus); 5] = [
    ("shipped", DeliveryStatus::Shipped),
    ("in_transit", DeliveryStatus::InTransit),
    ("delayed", DeliveryStatus::Delayed),
    ("delivered", DeliveryStatus::Delivered),
    ("failed", DeliveryStatus::Failed),
];

const SHAPE: &str = "send {\"order_id\", \"status\": \"shipped\"|\"delayed\"|\"delivered\"|\"failed\", \"estimated_at\", \"occurred_at\"} (README \"Delivery tracking\")";

fn parse(body: &[u8]) -> Result<DeliveryEvent, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e}); {SHAPE}"))?;
    let text = |k: &str| super::wire::text(v.get(k));
    let order_id = text("order_id").ok_or_else(|| {
        format!("order_id is missing: the platform's order id (Shopify's numeric id, WooCommerce's or BigCommerce's order number); {SHAPE}")
    })?;
    let status = match text("status") {
        Some(given) => STATUSES
            .iter()
            .find(|(name, _)| *name == given)
            .map(|(_, st)| *st)
            .ok_or_else(|| {
                format!("status {given:?} is not shipped, delayed, delivered or failed")
            })?,
        None => return Err(format!("status is missing; {SHAPE}")),
    };
    let time = |k: &str| -> Result<Option<Timestamp>, String> {
        text(k).map(|s| super::wire::parse_time(k, &s)).transpose()
    };
    let at = time("occurred_at")?
        .ok_or_else(|| format!("occurred_at is missing: when the carrier saw it; {SHAPE}"))?;
    Ok(DeliveryEvent {
        order_id,
        fulfillment_id: None,
        status,
        at,
        estimated_at: time("estimated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carrier_event_reads_and_is_keyed_by_its_body() {
        let body = br#"{"order_id":1001,"status":"delayed","estimated_at":"2026-11-30T12:00:00Z","occurred_at":"2026-11-24T08:00:00Z"}"#;
        let i = receive(Headers::default(), body.to_vec()).unwrap();
        assert_eq!(i.topic, "carrier/delayed");
        let Parsed::Event(Event::Delivery(d)) = &i.parsed else {
            panic!("{:?}", i.parsed)
        };
        assert_eq!(d.order_id, "1001");
        assert_eq!(d.status, DeliveryStatus::Delayed);
        assert_eq!(d.estimated_at, Some(Timestamp(1_796_040_000_000)));
        let again = receive(Headers::default(), body.to_vec()).unwrap();
        assert_eq!(
            i.dedupe_key, again.dedupe_key,
            "a retry is the same delivery"
        );
    }

    #[test]
    fn what_is_wrong_is_said() {
        let e = |b: &[u8]| receive(Headers::default(), b.to_vec()).unwrap_err();
        assert!(e(b"{").contains("not JSON"));
        assert!(
            e(br#"{"status":"delivered","occurred_at":"2026-11-24T08:00:00Z"}"#)
                .contains("order_id is missing")
        );
        assert!(
            e(br#"{"order_id":"1","status":"lost","occurred_at":"2026-11-24T08:00:00Z"}"#)
                .contains("\"lost\" is not shipped")
        );
        assert!(e(br#"{"order_id":"1","status":"delivered"}"#).contains("occurred_at is missing"));
        assert!(
            e(br#"{"order_id":"1","status":"delivered","occurred_at":"yesterday"}"#)
                .contains("not an RFC 3339 time")
        );
    }
}
