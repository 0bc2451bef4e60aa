//! Shopify webhooks end to end: verify, store durably, dedupe, normalize, count history.

use std::sync::atomic::Ordering;

use upsell_appliance::engine::{Consent, Event};
use upsell_appliance::ingest::shopify;
use upsell_appliance::storage::records::ParsedRecord;
use upsell_appliance::storage::{Faults, Lookup, Storage};

use crate::fixtures::*;
use crate::support::*;

#[test]
fn realistic_paid_order_is_stored_raw_and_normalized() {
    let s = TestServer::start();
    let body = order_json(&OrderSpec::three_lines(820982911946154508));
    assert!(
        body.len() > 11_000 && body.len() < 14_000,
        "fixture is {} bytes",
        body.len()
    );
    assert_eq!(s.webhook("orders/paid", "evt-1", &body), 200);
    s.wait_processed();

    let st = s.store_status();
    assert_eq!(st["webhooks"]["accepted"], 1);
    assert_eq!(st["orders"], 1);
    assert_eq!(st["customers"], 1);
    assert!(st["last_webhook_at"].is_string());

    let storage = &s.running().storage;
    let (_, rec) = storage.event_by_key(STORE, "event:evt-1").unwrap().unwrap();
    assert_eq!(rec.body, body, "raw body kept byte for byte");
    assert_eq!(rec.head.topic, "orders/paid");
    assert!(rec
        .head
        .headers
        .iter()
        .any(|(k, v)| k == "x-shopify-event-id" && v == "evt-1"));
    assert!(!rec
        .head
        .headers
        .iter()
        .any(|(k, _)| k == "x-shopify-hmac-sha256"));
    let ParsedRecord::Event(Event::Order { order, .. }) = &rec.head.parsed else {
        panic!("not normalized: {:?}", rec.head.parsed)
    };
    assert_eq!(order.lines.len(), 3);
    assert_eq!(order.subtotal, 5400 + 3300 + 1800);
    assert_eq!(order.total, 10500 + 1000);
    assert_eq!(order.lines[1].unit_price, 1650);
    assert_eq!(order.lines[1].quantity, 2);
    assert_eq!(order.lines[0].product_id.as_deref(), Some("632910392"));
    let cust = order.customer.as_ref().unwrap();
    assert_eq!(cust.email_consent, Consent::Subscribed);
    assert_eq!(cust.sms_consent, Consent::NotSubscribed);
    assert_eq!(cust.tags, vec!["newsletter", "coffee-club"]);
    assert_eq!(
        order.shipping.as_ref().unwrap().country.as_deref(),
        Some("CA")
    );

    let c = storage
        .customer_by(STORE, &Lookup::Email("jane.doe@example.com".into()))
        .unwrap()
        .unwrap();
    assert_eq!(c.order_count, 1);
    assert_eq!(c.lifetime_value(), 11500);
    assert_eq!(c.product_ids.len(), 3);
}

#[test]
fn guest_then_account_is_one_customer() {
    let s = TestServer::start();
    assert_eq!(
        s.webhook("orders/paid", "g1", &guest_order(1, "Guest@Example.com ")),
        200
    );
    let mut second = OrderSpec::three_lines(2);
    second.email = "guest@example.com".into();
    second.customer_id = Some(4242);
    assert_eq!(s.webhook("orders/paid", "g2", &order_json(&second)), 200);
    s.wait_processed();
    assert_eq!(s.store_status()["customers"], 1);
    let storage = &s.running().storage;
    let by_email = storage
        .customer_by(STORE, &Lookup::Email("guest@example.com".into()))
        .unwrap()
        .unwrap();
    let by_id = storage
        .customer_by(STORE, &Lookup::PlatformId("4242".into()))
        .unwrap()
        .unwrap();
    assert_eq!(by_email.id, by_id.id);
    assert_eq!(by_email.order_count, 2);
}

#[test]
fn gift_card_and_custom_line_items_parse() {
    let s = TestServer::start();
    let spec = OrderSpec {
        lines: vec![
            LineSpec {
                product_id: None,
                title: "Custom engraving",
                price: "12.00",
                quantity: 1,
                gift_card: false,
            },
            LineSpec {
                product_id: Some(555),
                title: "Gift Card $50",
                price: "50.00",
                quantity: 1,
                gift_card: true,
            },
        ],
        ..OrderSpec::three_lines(77)
    };
    assert_eq!(s.webhook("orders/paid", "gc", &order_json(&spec)), 200);
    let (_, rec) = s
        .running()
        .storage
        .event_by_key(STORE, "event:gc")
        .unwrap()
        .unwrap();
    let ParsedRecord::Event(Event::Order { order, .. }) = rec.head.parsed else {
        panic!("not normalized")
    };
    assert_eq!(order.lines[0].product_id, None);
    assert!(!order.lines[0].gift_card);
    assert!(order.lines[1].gift_card);
    assert!(!order.lines[1].requires_shipping);
    assert_eq!(s.store_status()["webhooks"]["quarantined"], 0);
}

#[test]
fn same_delivery_three_times_is_one_order() {
    let s = TestServer::start();
    let body = order_json(&OrderSpec::three_lines(9));
    for _ in 0..3 {
        assert_eq!(s.webhook("orders/paid", "dup-1", &body), 200);
    }
    s.wait_processed();
    let st = s.store_status();
    assert_eq!(st["webhooks"]["accepted"], 1);
    assert_eq!(st["webhooks"]["duplicate"], 2);
    assert_eq!(st["orders"], 1);
    assert_eq!(s.running().storage.event_count().unwrap(), 1);
    let c = s
        .running()
        .storage
        .customer_by(STORE, &Lookup::Email("jane.doe@example.com".into()))
        .unwrap()
        .unwrap();
    assert_eq!(c.order_count, 1);
}

#[test]
fn dedupe_falls_back_to_webhook_id() {
    let s = TestServer::start();
    let body = order_json(&OrderSpec::three_lines(10));
    let sig = shopify::sign(&body, SECRET);
    let headers = [
        ("X-Shopify-Topic", "orders/create"),
        ("X-Shopify-Hmac-Sha256", sig.as_str()),
        (
            "X-Shopify-Webhook-Id",
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        ),
    ];
    let path = format!("/webhooks/{STORE}");
    assert_eq!(s.post(&path, &headers, &body).0, 200);
    assert_eq!(s.post(&path, &headers, &body).0, 200);
    assert_eq!(s.store_status()["webhooks"]["duplicate"], 1);
    assert!(s
        .running()
        .storage
        .event_by_key(STORE, "webhook:b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
        .unwrap()
        .is_some());
}

#[test]
fn old_secret_still_verifies_during_rotation() {
    let s = TestServer::start();
    let body = order_json(&OrderSpec::three_lines(11));
    let sig = shopify::sign(&body, OLD_SECRET);
    let (status, _) = s.post(
        &format!("/webhooks/{STORE}"),
        &[
            ("X-Shopify-Topic", "orders/paid"),
            ("X-Shopify-Hmac-Sha256", &sig),
        ],
        &body,
    );
    assert_eq!(status, 200);
}

#[test]
fn missing_or_wrong_signature_is_401_and_stores_nothing() {
    let s = TestServer::start();
    let body = order_json(&OrderSpec::three_lines(12));
    let path = format!("/webhooks/{STORE}");
    let (status, msg) = s.post(&path, &[("X-Shopify-Topic", "orders/paid")], &body);
    assert_eq!(status, 401);
    assert!(msg.contains("missing X-Shopify-Hmac-Sha256"), "{msg}");
    let wrong = shopify::sign(&body, "not-the-secret");
    let (status, msg) = s.post(
        &path,
        &[
            ("X-Shopify-Topic", "orders/paid"),
            ("X-Shopify-Hmac-Sha256", &wrong),
        ],
        &body,
    );
    assert_eq!(status, 401);
    assert!(msg.contains("does not match"), "{msg}");
    // A body changed after signing fails too.
    let sig = shopify::sign(&body, SECRET);
    let mut tampered = body.clone();
    tampered[20] ^= 1;
    let (status, _) = s.post(
        &path,
        &[
            ("X-Shopify-Topic", "orders/paid"),
            ("X-Shopify-Hmac-Sha256", &sig),
        ],
        &tampered,
    );
    assert_eq!(status, 401);
    assert_eq!(s.running().storage.event_count().unwrap(), 0);
    // Rejections are counted with the next commit.
    assert_eq!(s.get("/healthz").0, 200);
    assert_eq!(s.store_status()["webhooks"]["rejected"], 3);
    assert_eq!(s.store_status()["webhooks"]["accepted"], 0);
}

#[test]
fn unknown_store_is_404_and_other_paths_are_not_found() {
    let s = TestServer::start();
    let body = order_json(&OrderSpec::three_lines(13));
    let sig = shopify::sign(&body, SECRET);
    let (status, msg) = s.post(
        "/webhooks/nope",
        &[
            ("X-Shopify-Topic", "orders/paid"),
            ("X-Shopify-Hmac-Sha256", &sig),
        ],
        &body,
    );
    assert_eq!(status, 404);
    assert!(msg.contains("no store \"nope\""), "{msg}");
    assert_eq!(s.get("/nothing-here").0, 404);
    assert_eq!(s.get(&format!("/webhooks/{STORE}")).0, 405);
    assert_eq!(s.running().storage.event_count().unwrap(), 0);
}

#[test]
fn body_over_the_cap_is_413() {
    let s = TestServer::start();
    let body = vec![b'x'; 300 * 1024]; // the test config caps at 256 KiB
    let sig = shopify::sign(&body, SECRET);
    let (status, msg) = s.post(
        &format!("/webhooks/{STORE}"),
        &[
            ("X-Shopify-Topic", "orders/paid"),
            ("X-Shopify-Hmac-Sha256", &sig),
        ],
        &body,
    );
    assert_eq!(status, 413);
    assert!(msg.contains("max_body_kb = 256"), "{msg}");
}

#[test]
fn other_verified_topics_are_stored_and_ignored() {
    let s = TestServer::start();
    assert_eq!(
        s.webhook(
            "customers/update",
            "p1",
            br#"{"id":1,"email":"a@example.com"}"#
        ),
        200
    );
    let st = s.store_status();
    assert_eq!(st["webhooks"]["ignored"], 1);
    assert_eq!(st["webhooks"]["accepted"], 0);
    let (_, rec) = s
        .running()
        .storage
        .event_by_key(STORE, "event:p1")
        .unwrap()
        .unwrap();
    assert_eq!(rec.head.parsed, ParsedRecord::Ignored);
}

#[test]
fn signed_but_unparseable_is_quarantined_and_answered_200() {
    let s = TestServer::start();
    assert_eq!(
        s.webhook(
            "orders/paid",
            "bad-1",
            br#"{"id": 5, "total_price": "1.00"}"#
        ),
        200
    );
    let st = s.store_status();
    assert_eq!(st["webhooks"]["quarantined"], 1);
    let (_, rec) = s
        .running()
        .storage
        .event_by_key(STORE, "event:bad-1")
        .unwrap()
        .unwrap();
    let ParsedRecord::Unparseable(why) = rec.head.parsed else {
        panic!("not quarantined")
    };
    assert!(
        why.contains("orders/paid: order JSON: missing field"),
        "{why}"
    );
}

#[test]
fn refunds_and_deliveries_update_history_in_any_order() {
    let s = TestServer::start();
    // The refund overtakes its order.
    assert_eq!(
        s.webhook("refunds/create", "r1", &refund_json(1, 500, "16.50")),
        200
    );
    assert_eq!(
        s.webhook(
            "orders/paid",
            "o1",
            &order_json(&OrderSpec::three_lines(500))
        ),
        200
    );
    assert_eq!(
        s.webhook("fulfillment_events/create", "d1", &delivered_json(500)),
        200
    );
    // A stale version of the order arrives last and must not replace the newer one.
    let mut stale = OrderSpec::three_lines(500);
    stale.updated_at = "2026-11-20T10:00:00-05:00";
    stale.lines.pop();
    assert_eq!(s.webhook("orders/updated", "o0", &order_json(&stale)), 200);
    s.wait_processed();
    assert_eq!(s.store_status()["orders"], 1);
    let storage = &s.running().storage;
    let o = storage.order(STORE, "500").unwrap().unwrap();
    assert_eq!(
        o.order.as_ref().unwrap().lines.len(),
        3,
        "stale version ignored"
    );
    assert_eq!(o.refunds, vec![("1".to_string(), 1650)]);
    assert!(o.delivered_at.is_some());
    let c = storage
        .customer_by(STORE, &Lookup::Email("jane.doe@example.com".into()))
        .unwrap()
        .unwrap();
    assert_eq!(c.order_count, 1);
    assert_eq!(c.lifetime_value(), 11500 - 1650);

    // Cancelling takes the order out of the customer's history.
    let mut cancelled = OrderSpec::three_lines(500);
    cancelled.updated_at = "2026-11-21T08:00:00-05:00";
    cancelled.cancelled = true;
    assert_eq!(
        s.webhook("orders/cancelled", "c1", &order_json(&cancelled)),
        200
    );
    s.wait_processed();
    let c = storage
        .customer_by(STORE, &Lookup::Email("jane.doe@example.com".into()))
        .unwrap()
        .unwrap();
    assert_eq!(c.order_count, 0);
    assert_eq!(c.lifetime_value(), 0);
}

#[test]
fn everything_is_still_there_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(tmp.path(), Faults::default());
    for i in 0..20 {
        let body = order_json(&OrderSpec::three_lines(1000 + i));
        assert_eq!(s.webhook("orders/paid", &format!("r-{i}"), &body), 200);
    }
    s.wait_processed();
    let before = s.store_status();
    s.stop();
    let s = TestServer::start_in(tmp.path(), Faults::default());
    let after = s.store_status();
    assert_eq!(before, after);
    assert_eq!(after["orders"], 20);
    // A redelivery after the restart is still recognised.
    let body = order_json(&OrderSpec::three_lines(1000));
    assert_eq!(s.webhook("orders/paid", "r-0", &body), 200);
    assert_eq!(s.store_status()["webhooks"]["duplicate"], 1);
}

#[test]
fn disk_full_answers_503_and_never_2xx() {
    let tmp = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let mut s = TestServer::start_in(tmp.path(), faults.clone());
    assert_eq!(s.get("/healthz").0, 200);
    assert_eq!(
        s.webhook(
            "orders/paid",
            "before",
            &order_json(&OrderSpec::three_lines(1))
        ),
        200
    );
    faults.disk_full.store(true, Ordering::SeqCst);
    let body = order_json(&OrderSpec::three_lines(2));
    assert_eq!(s.webhook("orders/paid", "during", &body), 503);
    assert_eq!(s.get("/healthz").0, 503);
    assert_eq!(s.status()["storage_writable"], false);
    if let Some(r) = s.running.take() {
        let _ = r.shutdown(); // its final sync fails on the full disk, which is fine
    }
    faults.disk_full.store(false, Ordering::SeqCst);
    // After a restart on a disk with room, the platform's retry is taken.
    let s = TestServer::start_in(tmp.path(), Faults::default());
    assert_eq!(s.get("/healthz").0, 200);
    assert_eq!(s.webhook("orders/paid", "during", &body), 200);
    let storage = &s.running().storage;
    assert!(storage
        .event_by_key(STORE, "event:before")
        .unwrap()
        .is_some());
    assert!(storage
        .event_by_key(STORE, "event:during")
        .unwrap()
        .is_some());
    assert_eq!(s.store_status()["webhooks"]["accepted"], 2);
}

#[test]
fn second_process_cannot_open_the_database() {
    let s = TestServer::start();
    let err = Storage::open(&s.data_dir, &Default::default())
        .err()
        .expect("locked");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

#[test]
fn still_answers_after_idling_past_the_socket_timeout() {
    // An idle accept() times out like a read does (SO_RCVTIMEO on the listener), which
    // would end tiny_http's accept loop for good without the kicker and the restart.
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(
        tmp.path(),
        upsell_appliance::app::Options {
            io_timeout: std::time::Duration::from_millis(300),
            ..Default::default()
        },
    );
    assert_eq!(s.get("/healthz").0, 200);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let body = order_json(&OrderSpec::three_lines(3));
    assert_eq!(s.webhook("orders/paid", "after-idle", &body), 200);
    // A client that connects and says nothing is hung up on after the timeout.
    use std::io::Read;
    let mut idle = std::net::TcpStream::connect(s.running().public_addr).unwrap();
    idle.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the idle connection");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
