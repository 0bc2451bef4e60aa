//! The scheduler end to end on a test clock: a live order's touches go to the outbox at
//! their times, each exactly once, with the deferrals and skips `explain` shows.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use upsell_appliance::app::Options;
use upsell_appliance::clock::TestClock;
use upsell_appliance::engine::Timestamp;

use crate::support::{test_config, TestServer, STORE};

/// 2026-11-20T15:00:00Z
const T0: i64 = 1_795_186_800_000;
const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;

fn start(dir: &Path, clock: Arc<TestClock>) -> TestServer {
    let s = TestServer::start_with(
        dir,
        Options {
            clock,
            ..Options::default()
        },
    );
    let config = test_config(dir);
    let assets = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo"));
    let storage = &s.running().storage;
    upsell_appliance::ops::import_catalog(storage, &config, STORE, &assets.join("catalog.csv"))
        .unwrap();
    upsell_appliance::ops::import_orders(
        storage,
        &config,
        STORE,
        &assets.join("orders.csv"),
        false,
        &mut |_| {},
    )
    .unwrap();
    s
}

fn outbox(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("outbox.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_outbox(dir: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = outbox(dir);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "outbox has {lines:?}, want {n} lines"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn explain(s: &TestServer, order: &str) -> Value {
    let (code, body) = s.admin_get(&format!("/api/explain?store={STORE}&order={order}"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn wait_state(s: &TestServer, order: &str, kind: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = s.admin_get(&format!("/api/explain?store={STORE}&order={order}"));
        let v: Value = serde_json::from_str(&body).unwrap();
        if code == 200 && touch(&v, kind)["state"] == state {
            return v;
        }
        assert!(Instant::now() < deadline, "{kind} never {state}: {v:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn touch<'a>(v: &'a Value, kind: &str) -> &'a Value {
    v["touches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {v:#}"))
}

#[test]
fn a_durable_orders_cadence_goes_out_on_time_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = start(tmp.path(), clock.clone());
    let body = serde_json::to_vec(&json!({
        "id": 9301, "name": "#9301", "email": "lee@example.com",
        "created_at": Timestamp(T0).to_rfc3339(), "updated_at": Timestamp(T0).to_rfc3339(),
        "currency": "USD", "total_price": "54.00", "financial_status": "paid",
        "line_items": [{"id": 1, "sku": "KIT-POUR", "quantity": 1, "price": "54.00",
            "title": "Pour-over Kit", "requires_shipping": true}],
        "customer": {"id": 8801, "email": "lee@example.com",
            "email_marketing_consent": {"state": "subscribed"}}
    }))
    .unwrap();
    assert_eq!(s.webhook("orders/paid", "l1", &body), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s
        .admin_get(&format!("/api/explain?store={STORE}&order=9301"))
        .0
        != 200
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(outbox(tmp.path()).is_empty(), "nothing is due yet");

    // +21 min: touch-1, with the offer.
    clock.set(Timestamp(T0 + 21 * MIN));
    let lines = wait_outbox(tmp.path(), 1);
    let l = &lines[0];
    assert_eq!(l["kind"], "touch1");
    assert_eq!(l["channel"], "email");
    assert_eq!(l["order"], "9301");
    assert_eq!(l["store"], STORE);
    assert!(
        l["customer"].is_u64(),
        "the opaque customer id, no email: {l}"
    );
    assert!(
        !l.to_string().contains("lee@"),
        "no personal data in the outbox: {l}"
    );
    assert_eq!(l["due_at"], Timestamp(T0 + 20 * MIN).to_rfc3339());
    assert_eq!(l["sent_at"], Timestamp(T0 + 21 * MIN).to_rfc3339());
    assert_eq!(l["offer"]["sku"], "SCALE-MINI");
    assert_eq!(l["offer"]["price"], "19.00");
    let v = wait_state(&s, "9301", "touch1", "sent");
    assert_eq!(touch(&v, "touch1")["sent"], true);

    // Day 4: touch-2 (2 emails in 7 days: within the caps).
    clock.set(Timestamp(T0 + 4 * DAY + MIN));
    let lines = wait_outbox(tmp.path(), 2);
    assert_eq!(lines[1]["kind"], "touch2");

    // Day 15: the review waits for a delivery event.
    clock.set(Timestamp(T0 + 15 * DAY + MIN));
    let v = wait_state(&s, "9301", "review", "deferred");
    assert!(
        touch(&v, "review")["state_reason"]
            .as_str()
            .unwrap()
            .contains("waits for a delivery event"),
        "{v:#}"
    );

    // Day 35: touch-3. Nothing was sent twice, nothing was held by the caps.
    clock.set(Timestamp(T0 + 35 * DAY + MIN));
    let lines = wait_outbox(tmp.path(), 3);
    assert_eq!(lines[2]["kind"], "touch3");
    std::thread::sleep(Duration::from_millis(300));
    let lines = outbox(tmp.path());
    let ids: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|l| l["touch_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), lines.len(), "each touch once: {lines:?}");
    let v = explain(&s, "9301");
    for t in v["touches"].as_array().unwrap() {
        let reason = t["state_reason"].as_str().unwrap_or("");
        assert!(!reason.contains("frequency cap"), "{t}");
    }
}

#[test]
fn page_offers_tickets_and_deliveries_told_by_hand_steer_the_touches() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = start(tmp.path(), clock.clone());
    let body = serde_json::to_vec(&json!({
        "id": 9401, "name": "#9401", "email": "max@example.com",
        "created_at": Timestamp(T0).to_rfc3339(), "updated_at": Timestamp(T0).to_rfc3339(),
        "currency": "USD", "total_price": "54.00", "financial_status": "paid",
        "line_items": [{"id": 1, "sku": "KIT-POUR", "quantity": 1, "price": "54.00",
            "title": "Pour-over Kit", "requires_shipping": true}],
        "customer": {"id": 8802, "email": "max@example.com",
            "email_marketing_consent": {"state": "subscribed"}}
    }))
    .unwrap();
    assert_eq!(s.webhook("orders/paid", "m1", &body), 200);
    wait_state(&s, "9401", "touch1", "scheduled");
    let post = |path: &str| {
        let (code, body) = s.admin_post(path);
        assert_eq!(code, 200, "{path}: {body}");
    };
    // The page offer was taken: touch-1 is not sent.
    post(&format!("/api/offer/accept?store={STORE}&order=%239401"));
    clock.set(Timestamp(T0 + 21 * MIN));
    let v = wait_state(&s, "9401", "touch1", "skipped");
    assert_eq!(
        touch(&v, "touch1")["state_reason"],
        "the thank-you page offer was accepted"
    );
    // A ticket opened on day 3 holds touch-2; closing it well lets it go.
    post(&format!(
        "/api/customer/ticket-open?store={STORE}&contact=max%40example.com&ticket=T-9"
    ));
    clock.set(Timestamp(T0 + 4 * DAY + MIN));
    let v = wait_state(&s, "9401", "touch2", "deferred");
    assert!(
        touch(&v, "touch2")["state_reason"]
            .as_str()
            .unwrap()
            .contains("ticket T-9 is open"),
        "{v:#}"
    );
    post(&format!(
        "/api/customer/ticket-close?store={STORE}&contact=max%40example.com&ticket=T-9&csat=5"
    ));
    clock.set(Timestamp(T0 + 4 * DAY + 7 * 60 * MIN));
    wait_state(&s, "9401", "touch2", "sent");
    // Delivered on day 5 (told by hand): the review goes out on day 15.
    post(&format!(
        "/api/order/delivered?store={STORE}&order=9401&at=2026-11-25T15:00:00Z"
    ));
    clock.set(Timestamp(T0 + 15 * DAY + MIN));
    wait_state(&s, "9401", "review", "sent");
    let kinds: Vec<String> = outbox(tmp.path())
        .iter()
        .map(|l| l["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["touch2", "review"]);
    // Bad input is refused with what to do.
    let (code, body) = s.admin_post(&format!(
        "/api/customer/ticket-close?store={STORE}&contact=max%40example.com&ticket=T-9&csat=9"
    ));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("from 1 to 5"), "{body}");
    let (code, body) = s.admin_post(&format!("/api/order/delivered?store={STORE}&order=nope"));
    assert_eq!(code, 400);
    assert!(body.contains("no order"), "{body}");
}
