//! WooCommerce webhooks end to end: the ping, verification, dedupe, refunds as updates.

use upsell_appliance::engine::Event;
use upsell_appliance::storage::records::ParsedRecord;
use upsell_appliance::storage::Lookup;

use crate::fixtures::*;
use crate::support::*;

#[test]
fn creation_ping_is_answered_200_without_a_signature_and_stores_nothing() {
    let s = TestServer::start();
    let (status, _) = s.post(
        &format!("/webhooks/{WOO_STORE}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"webhook_id=3",
    );
    assert_eq!(status, 200);
    assert_eq!(s.running().storage.event_count().unwrap(), 0);
    assert_eq!(s.woo_status()["webhooks"]["accepted"], 0);
    // Anything else unsigned is refused.
    let (status, msg) = s.post(&format!("/webhooks/{WOO_STORE}"), &[], b"webhook_id=3&x=1");
    assert_eq!(status, 401);
    assert!(msg.contains("missing X-WC-Webhook-Signature"), "{msg}");
}

#[test]
fn order_created_is_stored_and_normalized() {
    let s = TestServer::start();
    let body = woo_order_json(4711, "processing", "2026-11-21T15:00:05", &[]);
    assert_eq!(s.woo_webhook("order.created", Some("d-1"), &body), 200);
    assert_eq!(s.woo_webhook("order.created", Some("d-1"), &body), 200);
    s.wait_processed();
    let st = s.woo_status();
    assert_eq!(st["webhooks"]["accepted"], 1);
    assert_eq!(st["webhooks"]["duplicate"], 1);
    assert_eq!(st["orders"], 1);
    let storage = &s.running().storage;
    let (_, rec) = storage
        .event_by_key(WOO_STORE, "delivery:d-1")
        .unwrap()
        .unwrap();
    assert_eq!(rec.body, body);
    let ParsedRecord::Event(Event::Order { order, .. }) = &rec.head.parsed else {
        panic!("not normalized: {:?}", rec.head.parsed)
    };
    assert_eq!(order.total, 5719);
    assert_eq!(order.lines.len(), 2);
    assert_eq!(order.lines[1].unit_price, 550);
    assert_eq!(order.lines[1].variant_id.as_deref(), Some("23"));
    assert_eq!(order.lines[0].variant_id, None);
    assert_eq!(order.created_at.to_rfc3339(), "2026-11-21T15:00:00Z");
    let c = storage
        .customer_by(WOO_STORE, &Lookup::Email("anna.schmidt@example.de".into()))
        .unwrap()
        .unwrap();
    assert_eq!(c.order_count, 1);
    assert_eq!(c.platform_ids, vec!["12".to_string()]);
    // Stores are separate: the Shopify store saw nothing.
    assert_eq!(s.store_status()["webhooks"]["accepted"], 0);
}

#[test]
fn refund_arrives_as_order_updated_and_counts_once() {
    let s = TestServer::start();
    let created = woo_order_json(4712, "processing", "2026-11-21T15:00:05", &[]);
    let refunded = woo_order_json(4712, "processing", "2026-11-22T09:00:00", &[(88, "11.00")]);
    assert_eq!(s.woo_webhook("order.created", Some("r-1"), &created), 200);
    assert_eq!(s.woo_webhook("order.updated", Some("r-2"), &refunded), 200);
    // The same update again without a delivery id: deduped on (order id, date_modified_gmt).
    assert_eq!(s.woo_webhook("order.updated", None, &refunded), 200);
    assert_eq!(s.woo_webhook("order.updated", None, &refunded), 200);
    s.wait_processed();
    assert_eq!(s.woo_status()["webhooks"]["duplicate"], 1);
    let storage = &s.running().storage;
    let o = storage.order(WOO_STORE, "4712").unwrap().unwrap();
    assert_eq!(o.refunds, vec![("88".to_string(), 1100)]);
    let c = storage
        .customer_by(WOO_STORE, &Lookup::PlatformId("12".into()))
        .unwrap()
        .unwrap();
    assert_eq!(c.lifetime_value(), 5719 - 1100);
}

#[test]
fn wrong_signature_is_401_and_counted() {
    let s = TestServer::start();
    let body = woo_order_json(4713, "processing", "2026-11-21T15:00:05", &[]);
    let (status, _) = s.post(
        &format!("/webhooks/{WOO_STORE}"),
        &[
            ("X-WC-Webhook-Topic", "order.created"),
            ("X-WC-Webhook-Signature", "bm90IHRoZSBzaWduYXR1cmU="),
        ],
        &body,
    );
    assert_eq!(status, 401);
    assert_eq!(s.get("/healthz").0, 200);
    assert_eq!(s.woo_status()["webhooks"]["rejected"], 1);
    assert_eq!(s.running().storage.event_count().unwrap(), 0);
}
