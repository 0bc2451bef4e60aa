//! The scheduler end to end on a test clock: a live order's touches go to the outbox at
//! their times, each exactly once, with the deferrals and skips `explain` shows.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use upsell_appliance::clock::TestClock;
use upsell_appliance::engine::Timestamp;

use crate::support::{TestServer, STORE};

/// 2026-11-20T15:00:00Z
const T0: i64 = 1_795_186_800_000;
const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;

fn start(dir: &Path, clock: Arc<TestClock>) -> TestServer {
    TestServer::start_demo(dir, clock)
}

pub(crate) fn outbox(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("outbox.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn wait_outbox(dir: &Path, n: usize) -> Vec<Value> {
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

pub(crate) fn explain(s: &TestServer, order: &str) -> Value {
    let (code, v) = s.explain(order);
    assert_eq!(code, 200, "{v}");
    v
}

pub(crate) fn wait_state(s: &TestServer, order: &str, kind: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, v) = s.explain(order);
        if code == 200 && touch(&v, kind)["state"] == state {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} of {order} never {state}: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn touch<'a>(v: &'a Value, kind: &str) -> &'a Value {
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
    wait_state(&s, "9301", "touch1", "scheduled");
    std::thread::sleep(Duration::from_millis(300));
    assert!(outbox(tmp.path()).is_empty(), "nothing is due yet");
    let (_, body) = s.admin_get("/api/status");
    let st: Value = serde_json::from_str(&body).unwrap();
    let t = &st["stores"][0]["touches"];
    assert_eq!(t["pending"], 4, "touch-1, touch-2, review, touch-3: {t}");
    assert_eq!(
        t["pending_by_day"][0],
        json!({"day": "2026-11-20", "total": 1, "kinds": {"touch1": 1}}),
        "{t}"
    );

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
    // The status counts them: sent by kind, deferred by rule, what is still pending.
    let (code, body) = s.admin_get("/api/status");
    assert_eq!(code, 200, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    let t = &st["stores"][0]["touches"];
    assert_eq!(
        t["sent"],
        json!({"touch1": 1, "touch2": 1, "touch3": 1}),
        "{t}"
    );
    assert!(
        t["deferred"]["awaiting_delivery"].as_u64() >= Some(1),
        "{t}"
    );
    // The review's recheck (day 15 + 6 h) was 20 days past when the clock jumped to day 35.
    assert_eq!(t["skipped"], json!({"stale": 1}), "{t}");
    assert_eq!(t["pending"], 0, "{t}");
    assert_eq!(t["pending_by_day"], json!([]), "{t}");
    assert_eq!(st["scheduler"]["late_at_start"], 0, "{st}");
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

/// Crash test (subprocess, fast real clock): `kill -9` while touches fire, 20 times;
/// afterwards every touch recorded sent is in the outbox exactly once, the outbox holds
/// nothing else, nothing is left half-sent, and nothing due is left behind.
#[test]
fn kill_9_while_touches_fire_sends_each_exactly_once() {
    use crate::cli::bin;
    use crate::crash::{start_cmd, temp_config};
    use crate::support::{agent, SECRET};
    use upsell_appliance::storage::touches::TouchState;
    use upsell_appliance::storage::{Options as StorageOptions, Storage};

    let (tmp, data, config) = temp_config();
    {
        // The demo catalog and history, so the orders get offers and a full cadence.
        let storage = Storage::open(&data, &StorageOptions::default()).unwrap();
        let cfg = upsell_appliance::config::load_file(Path::new(&config)).unwrap();
        crate::support::import_demo(&storage, &cfg, STORE);
    }
    // Two virtual days per real second: touch-3 (day 35) comes within the test.
    let serve = || {
        let mut cmd = bin();
        cmd.args(["serve", "--config", &config, "--time-scale", "172800"])
            .current_dir(tmp.path());
        start_cmd(cmd)
    };
    let orders: Vec<u64> = (9500..9520).collect();
    let (mut child, addr) = serve();
    let created = chrono::Utc::now().to_rfc3339();
    for &id in &orders {
        let body = serde_json::to_vec(&json!({
            "id": id, "name": format!("#{id}"), "email": format!("c{id}@example.com"),
            "created_at": created, "currency": "USD", "total_price": "54.00",
            "financial_status": "paid",
            "line_items": [{"id": 1, "sku": "KIT-POUR", "quantity": 1, "price": "54.00",
                "title": "Pour-over Kit", "requires_shipping": false}],
            "customer": {"id": 700_000 + id, "email": format!("c{id}@example.com"),
                "email_marketing_consent": {"state": "subscribed"}}
        }))
        .unwrap();
        let sig = upsell_appliance::ingest::shopify::sign(&body, SECRET);
        let resp = agent()
            .post(&format!("http://{addr}/webhooks/{STORE}"))
            .header("X-Shopify-Topic", "orders/paid")
            .header("X-Shopify-Hmac-Sha256", &sig)
            .header("X-Shopify-Event-Id", &format!("crash-{id}"))
            .send(&body[..])
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
    let mut seed = (chrono::Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64) | 1;
    eprintln!("scheduler crash test seed {seed}");
    for _ in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 600));
        child.kill().unwrap(); // SIGKILL, mid-firing or not
        child.wait().unwrap();
        (child, _) = serve();
    }
    // Run on until day 40 of the orders has passed, then stop cleanly.
    let clock_file = data.join("clock");
    let created_ms = chrono::DateTime::parse_from_rfc3339(&created)
        .unwrap()
        .timestamp_millis();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at: i64 = std::fs::read_to_string(&clock_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if at > created_ms + 40 * DAY {
            break;
        }
        assert!(Instant::now() < deadline, "virtual time stuck at {at}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    crate::crash::sigterm(&child);
    assert!(child.wait().unwrap().success());

    let lines = outbox(&data);
    let mut in_outbox = std::collections::BTreeMap::new();
    for l in &lines {
        *in_outbox
            .entry(l["touch_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let storage = Storage::open(&data, &StorageOptions::default()).unwrap();
    let snap = storage.snapshot().unwrap();
    let mut sent = std::collections::BTreeSet::new();
    let (mut skipped, mut pending) = (Vec::new(), 0);
    for &id in &orders {
        for (tid, t) in snap.touches_of(STORE, &id.to_string()).unwrap() {
            match &t.state {
                TouchState::Sent { .. } => {
                    sent.insert(tid.to_string());
                }
                TouchState::Sending => panic!("touch {tid} left in sending"),
                TouchState::Skipped { reason } => skipped.push(reason.clone()),
                s if s.pending() => {
                    assert!(
                        t.due_at.0 > created_ms + 40 * DAY,
                        "touch {tid} ({}) due {} left pending",
                        t.kind.as_str(),
                        t.due_at.to_rfc3339()
                    );
                    pending += 1;
                }
                _ => {}
            }
        }
    }
    let dup: Vec<_> = in_outbox.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "sent twice: {dup:?}");
    let outbox_ids: std::collections::BTreeSet<String> = in_outbox.keys().cloned().collect();
    assert_eq!(outbox_ids, sent, "the outbox and the recorded sends differ");
    eprintln!(
        "{} sent, {} skipped ({skipped:?}), {pending} pending after 20 kills",
        sent.len(),
        skipped.len()
    );
    // Each order: touch-1, touch-2, the review and touch-3 (no holdout in the test store).
    assert!(sent.len() >= 40, "only {} touches went out", sent.len());
}

/// Fulfillment events move the delivery-anchored touches: a delivery delayed 5 days moves
/// the review request 5 days; once delivered, touch-2 goes 2 days after and the review 10.
#[test]
fn delivery_events_move_the_review_request_and_touch_2() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = start(tmp.path(), clock.clone());
    let body = serde_json::to_vec(&json!({
        "id": 9601, "name": "#9601", "email": "ana@example.com",
        "created_at": Timestamp(T0).to_rfc3339(), "updated_at": Timestamp(T0).to_rfc3339(),
        "currency": "USD", "total_price": "54.00", "financial_status": "paid",
        "line_items": [{"id": 1, "sku": "KIT-POUR", "quantity": 1, "price": "54.00",
            "title": "Pour-over Kit", "requires_shipping": true}],
        "customer": {"id": 8803, "email": "ana@example.com",
            "email_marketing_consent": {"state": "subscribed"}}
    }))
    .unwrap();
    assert_eq!(s.webhook("orders/paid", "a1", &body), 200);
    let v = wait_state(&s, "9601", "review", "scheduled");
    // Provisional: 5 expected days of delivery plus 10.
    let day = |d: i64| Timestamp(T0 + d * DAY).to_rfc3339();
    assert_eq!(touch(&v, "review")["timer_due_at"], day(15));
    let event = |id: &str, status: &str, happened: i64, estimate: i64| {
        let body = serde_json::to_vec(&json!({
            "id": id, "fulfillment_id": 77, "order_id": 9601, "status": status,
            "happened_at": day(happened), "estimated_delivery_at": day(estimate)
        }))
        .unwrap();
        assert_eq!(s.webhook("fulfillment_events/create", id, &body), 200);
    };
    let wait_due = |kind: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = explain(&s, "9601");
            if touch(&v, kind)["timer_due_at"] == want {
                return v;
            }
            assert!(Instant::now() < deadline, "{kind} never due {want}: {v:#}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    clock.set(Timestamp(T0 + 21 * MIN));
    wait_state(&s, "9601", "touch1", "sent");
    event("e1", "in_transit", 1, 6);
    wait_due("review", &day(16));
    // The carrier slips 5 days: the review moves 5 days.
    event("e2", "delayed", 2, 11);
    wait_due("review", &day(21));
    assert_eq!(
        touch(&explain(&s, "9601"), "touch2")["timer_due_at"],
        day(4)
    );
    // Delivered on day 3 (early after all): touch-2 on day 5, the review on day 13.
    event("e3", "delivered", 3, 11);
    wait_due("review", &day(13));
    wait_due("touch2", &day(5));
    clock.set(Timestamp(T0 + 4 * DAY + MIN));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !outbox(tmp.path()).iter().any(|l| l["kind"] == "touch2"),
        "touch-2 waits for 2 days after delivery"
    );
    clock.set(Timestamp(T0 + 5 * DAY + MIN));
    wait_state(&s, "9601", "touch2", "sent");
    clock.set(Timestamp(T0 + 13 * DAY + MIN));
    wait_state(&s, "9601", "review", "sent");
    let kinds: Vec<String> = outbox(tmp.path())
        .iter()
        .map(|l| l["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["touch1", "touch2", "review"]);
}

/// A manual resend is a new touch due now, decided like any other: within the caps it goes
/// out at once; over them it is deferred to when they allow, never dropped. Opens are
/// recorded for sent emails only.
#[test]
fn a_manual_resend_goes_through_the_caps_and_opens_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = start(tmp.path(), clock.clone());
    let body = serde_json::to_vec(&json!({
        "id": 9701, "name": "#9701", "email": "kim@example.com",
        "created_at": Timestamp(T0).to_rfc3339(), "updated_at": Timestamp(T0).to_rfc3339(),
        "currency": "USD", "total_price": "54.00", "financial_status": "paid",
        "line_items": [{"id": 1, "sku": "KIT-POUR", "quantity": 1, "price": "54.00",
            "title": "Pour-over Kit", "requires_shipping": false}],
        "customer": {"id": 8804, "email": "kim@example.com",
            "email_marketing_consent": {"state": "subscribed"}}
    }))
    .unwrap();
    assert_eq!(s.webhook("orders/paid", "k1", &body), 200);
    clock.set(Timestamp(T0 + 21 * MIN));
    let v = wait_state(&s, "9701", "touch1", "sent");
    let id = touch(&v, "touch1")["touch_id"].as_u64().unwrap();
    let post = |path: &str| -> Value {
        let (code, body) = s.admin_post(path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    // Opened: recorded. A pending touch cannot be opened; an unknown one is named.
    let r = post(&format!("/api/touch/opened?store={STORE}&touch={id}"));
    assert_eq!(r["opened_at"], Timestamp(T0 + 21 * MIN).to_rfc3339());
    let touch2 = touch(&v, "touch2")["touch_id"].as_u64().unwrap();
    let (code, body) = s.admin_post(&format!("/api/touch/opened?store={STORE}&touch={touch2}"));
    assert_eq!(code, 400);
    assert!(body.contains("only a sent email can be opened"), "{body}");
    let (code, body) = s.admin_post(&format!("/api/touch/resend?store={STORE}&touch=x1"));
    assert_eq!(code, 400);
    assert!(body.contains("is not a touch id"), "{body}");
    // First resend: 2 emails in the week, within the caps: out at once.
    let r = post(&format!("/api/touch/resend?store={STORE}&touch={id}"));
    let first = r["resend_touch_id"].as_u64().unwrap().to_string();
    let lines = wait_outbox(tmp.path(), 2);
    assert_eq!(lines[1]["touch_id"], first);
    assert_eq!(lines[1]["kind"], "touch1");
    // Second resend: a third email in 7 days is over the cap; deferred, then sent once.
    let r = post(&format!("/api/touch/resend?store={STORE}&touch={id}"));
    let second = r["resend_touch_id"].as_u64().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(outbox(tmp.path()).len(), 2, "held by the cap");
    // A week after the first email the window allows it (touch-2, due on day 4, is 3 days
    // late at this jump: skipped as stale).
    clock.set(Timestamp(T0 + 7 * DAY + 22 * MIN));
    let lines = wait_outbox(tmp.path(), 3);
    assert_eq!(lines[2]["touch_id"], second, "{lines:?}");
    let (_, body) = s.admin_get("/api/status");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert!(
        st["stores"][0]["touches"]["deferred"]["frequency_cap"].as_u64() >= Some(1),
        "{st}"
    );
}
