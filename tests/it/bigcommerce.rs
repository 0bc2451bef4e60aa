//! BigCommerce webhooks end to end: the secret header, thin payloads stored durably as a
//! pending order fetch, dedupe on `hash`.

use upsell_appliance::engine::Event;
use upsell_appliance::storage::records::ParsedRecord;

use crate::support::*;

fn thin(scope: &str, order_id: u64, hash: &str, at: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "store_id": "1025646", "producer": "stores/abc123", "scope": scope,
        "data": {"type": "order", "id": order_id, "status": {"previous_status_id": 0, "new_status_id": 11}},
        "hash": hash, "created_at": at
    }))
    .unwrap()
}

fn post(s: &TestServer, secret: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(v) = secret {
        headers.push(("X-Upsell-Secret", v));
    }
    s.post(&format!("/webhooks/{BC_STORE}"), &headers, body)
}

#[test]
fn thin_payload_is_stored_once_as_a_pending_fetch() {
    let s = TestServer::start();
    let body = thin(
        "store/order/created",
        250,
        "dd70c0976e06b67aaf671e73f49dcb79230ebf9d",
        1_763_650_800,
    );
    let (status, answer) = post(&s, Some(BC_SECRET), &body);
    assert_eq!((status, answer.as_str()), (200, ""), "200 with no body");
    assert_eq!(post(&s, Some(BC_SECRET), &body).0, 200);
    s.wait_processed();
    let st = &s.status()["stores"][2];
    assert_eq!(st["id"], BC_STORE);
    assert_eq!(st["webhooks"]["accepted"], 1);
    assert_eq!(st["webhooks"]["duplicate"], 1);
    assert_eq!(st["orders"], 0, "known only once fetched");
    let storage = &s.running().storage;
    let (_, rec) = storage
        .event_by_key(BC_STORE, "hash:dd70c0976e06b67aaf671e73f49dcb79230ebf9d")
        .unwrap()
        .unwrap();
    assert_eq!(rec.body, body);
    assert!(matches!(
        rec.head.parsed,
        ParsedRecord::Event(Event::Notice(_))
    ));
    assert!(!rec.head.headers.iter().any(|(k, _)| k == "x-upsell-secret"));
    let o = storage.order(BC_STORE, "250").unwrap().unwrap();
    assert_eq!(o.fetch_requested.map(|t| t.0), Some(1_763_650_800_000));
    assert!(o.order.is_none());
}

#[test]
fn missing_or_wrong_secret_header_is_401() {
    let s = TestServer::start();
    let body = thin("store/order/updated", 251, "h-251", 1_763_650_900);
    let (status, msg) = post(&s, None, &body);
    assert_eq!(status, 401);
    assert!(msg.contains("missing webhook secret header"), "{msg}");
    assert_eq!(post(&s, Some("wrong"), &body).0, 401);
    assert_eq!(s.running().storage.event_count().unwrap(), 0);
    let (status, _) = post(
        &s,
        Some(BC_SECRET),
        &thin("store/product/updated", 9, "h-p", 1),
    );
    assert_eq!(status, 200);
    assert_eq!(s.status()["stores"][2]["webhooks"]["ignored"], 1);
}
