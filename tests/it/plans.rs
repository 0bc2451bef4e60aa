//! Offer plans end to end: the demo catalog and history imported, live Shopify orders
//! posted, and `explain` (the admin API the CLI uses) showing the decision; then the
//! plan's lifecycle: an edit before the first send, a suppressed customer, a second
//! purchase ending the first sequence, a cancellation, a refund; imports never plan.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use upsell_appliance::app::{self, Options};
use upsell_appliance::clock::Clock;
use upsell_appliance::engine::Timestamp;

use crate::support::{test_config, TestServer, STORE};

/// The service's clock for these tests: five minutes after the orders were placed, before
/// any touch after the page is due (the scheduler would send it, and a sent plan is only
/// adjusted).
struct Fixed;
impl Clock for Fixed {
    fn now(&self) -> Timestamp {
        Timestamp(T0 + 5 * 60_000)
    }
}

/// 2026-11-20T15:00:00Z
const T0: i64 = 1_795_186_800_000;

fn at(ms: i64) -> String {
    Timestamp(ms).to_rfc3339()
}

fn order(id: u64, email: &str, lines: &[(&str, &str)], updated: i64, extra: Value) -> Vec<u8> {
    let lines: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, (sku, price))| {
            json!({"id": id * 10 + i as u64, "sku": sku, "quantity": 1, "price": price,
                   "title": sku, "requires_shipping": true, "product_id": null})
        })
        .collect();
    let mut v = json!({
        "id": id, "name": format!("#{id}"), "email": email, "created_at": at(T0),
        "updated_at": at(T0 + updated), "currency": "USD", "total_price": "54.00",
        "financial_status": "paid", "line_items": lines,
        "customer": {"id": 880_000 + id % 100, "email": email,
            "email_marketing_consent": {"state": "subscribed"}},
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::to_vec(&v).unwrap()
}

fn start(dir: &Path) -> TestServer {
    TestServer::start_demo(dir, Arc::new(Fixed))
}

/// `GET /api/explain`, waiting (briefly) for the planner.
fn explain(s: &TestServer, order: &str, revision: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, v) = s.explain(order);
        if code == 200 && v["revision"].as_u64() >= Some(revision) {
            return v;
        }
        assert!(Instant::now() < deadline, "no plan for {order}: {code} {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kinds(v: &Value) -> Vec<String> {
    v["touches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} {}",
                t["kind"].as_str().unwrap(),
                t["channel"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_live_order_gets_an_explained_offer_and_its_plan_follows_the_order() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let kit = order(
        9001,
        "jane@example.com",
        &[("KIT-POUR", "54.00")],
        0,
        json!({}),
    );
    assert_eq!(s.webhook("orders/paid", "e1", &kit), 200);
    let v = explain(&s, "9001", 1);
    assert_eq!(v["order"], "9001");
    assert_eq!(v["recipe"], "welcome", "{v:#}");
    assert_eq!(v["offer"]["sku"], "SCALE-MINI", "{v:#}");
    assert_eq!(v["offer"]["title"], "Coffee Scale");
    assert_eq!(v["offer"]["price"], "19.00");
    assert_eq!(
        v["offer"]["variant_id"], "40001008",
        "the catalog's, for the cart permalink"
    );
    assert_eq!(v["holdout"], false);
    assert_eq!(
        kinds(&v),
        [
            "page page",
            "touch1 email",
            "touch2 email",
            "review email",
            "touch3 email"
        ]
    );
    assert_eq!(v["touches"][0]["due_at"], at(T0));
    // Durable timers for every touch but the page (served, not scheduled).
    assert_eq!(v["touches"][0]["state"], Value::Null);
    assert_eq!(v["touches"][1]["state"], "scheduled", "{v:#}");
    let first_touch1 = v["touches"][1]["touch_id"].as_u64().unwrap();
    assert_eq!(v["touches"][1]["due_at"], at(T0 + 20 * 60_000));
    assert_eq!(
        v["reasons"][0],
        "recipe welcome: first order of 54.00 USD is at or over the threshold 31.35 USD (the store's median order)"
    );
    assert!(
        v["reasons"][1].as_str().unwrap().ends_with(
            "at 19.00 USD: bought together with KIT-POUR: confidence 37%, lift 5.7, strong"
        ),
        "{v:#}"
    );
    // By name too, as a store owner types it.
    assert_eq!(explain(&s, "%239001", 1)["order"], "9001");

    // An upsell app adds the scale to the order before anything went out: the plan is
    // replaced, and the scale is no longer offered.
    let edited = order(
        9001,
        "jane@example.com",
        &[("KIT-POUR", "54.00"), ("SCALE-MINI", "19.00")],
        60_000,
        json!({}),
    );
    assert_eq!(s.webhook("orders/updated", "e2", &edited), 200);
    let v = explain(&s, "9001", 2);
    assert_eq!(v["offer"]["sku"], "GRINDER-HAND", "{v:#}");
    // Same touches at the same times: the timers stay (they read the offer when due).
    assert_eq!(v["touches"][1]["state"], "scheduled");
    assert_eq!(
        v["touches"][1]["touch_id"].as_u64(),
        Some(first_touch1),
        "{v:#}"
    );
    assert!(
        v["history"][1]
            .as_str()
            .unwrap()
            .contains("plan replaced (revision 2)"),
        "{v:#}"
    );

    // Jane buys again: her first sequence ends, the new one runs.
    let beans = order(
        9002,
        "jane@example.com",
        &[("BEANS-HOUSE", "16.00")],
        120_000,
        json!({}),
    );
    assert_eq!(s.webhook("orders/paid", "e3", &beans), 200);
    let second = explain(&s, "9002", 1);
    assert_eq!(second["status"], "active");
    assert_eq!(second["recipe"], "replenishment", "{second:#}");
    let first = explain(&s, "9001", 2);
    assert_eq!(
        (first["status"].as_str(), first["ended_by"].as_str()),
        (Some("ended"), Some("9002")),
        "{first:#}"
    );

    // A refund marks the plan; a cancellation cancels it.
    let refund = json!({"id": 77, "order_id": 9002, "created_at": at(T0 + 180_000),
        "transactions": [{"amount": "16.00", "kind": "refund", "status": "success", "currency": "USD"}]});
    assert_eq!(
        s.webhook(
            "refunds/create",
            "e4",
            &serde_json::to_vec(&refund).unwrap()
        ),
        200
    );
    let cancelled = order(
        9002,
        "jane@example.com",
        &[("BEANS-HOUSE", "16.00")],
        240_000,
        json!({"cancelled_at": at(T0 + 240_000)}),
    );
    assert_eq!(s.webhook("orders/cancelled", "e5", &cancelled), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = explain(&s, "9002", 1);
        if v["status"] == "cancelled" || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(v["status"], "cancelled", "{v:#}");
    assert_eq!(v["refunded_at"], at(T0 + 180_000), "{v:#}");

    // Imported history is never planned, and explain says why.
    let (code, body) = s.admin_get(&format!("/api/explain?store={STORE}&order=1001"));
    assert_eq!(code, 400);
    assert!(body.contains("imported"), "{body}");
    let (code, body) = s.admin_get(&format!("/api/explain?store={STORE}&order=nope"));
    assert_eq!(code, 400);
    assert!(body.contains("no order \\\"nope\\\""), "{body}");
}

#[test]
fn a_suppressed_customer_gets_a_plan_without_touches() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let (code, body) = s.admin_post(&format!(
        "/api/customer/suppress?store={STORE}&contact=Sam%40Example.com&reason=asked%20by%20phone"
    ));
    assert_eq!(code, 200, "{body}");
    let sam = order(
        9101,
        "sam@example.com",
        &[("KIT-POUR", "54.00")],
        0,
        json!({}),
    );
    assert_eq!(s.webhook("orders/paid", "s1", &sam), 200);
    let v = explain(&s, "9101", 1);
    assert_eq!(v["touches"], json!([]), "{v:#}");
    let last = v["reasons"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(last, "no touches: suppressed by the store: asked by phone");

    let (code, body) = s.admin_get(&format!(
        "/api/customer/show?store={STORE}&contact=sam@example.com"
    ));
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["suppressed"]["reason"], "manual", "{v:#}");
    assert_eq!(v["customer"]["plans"][0]["order"], "9101", "{v:#}");

    // A later note does not overwrite the customer's own complaint.
    for reason in ["complained", "just%20a%20note"] {
        let (code, body) = s.admin_post(&format!(
            "/api/customer/suppress?store={STORE}&contact=%2B15550100000&reason={reason}"
        ));
        assert_eq!(code, 200, "{body}");
    }
    let (_, body) = s.admin_get(&format!(
        "/api/customer/show?store={STORE}&contact=%2B1%20555%20010%200000"
    ));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["contact"], "phone:+15550100000");
    assert_eq!(v["suppressed"]["reason"], "complained", "{v:#}");
    let (code, _) = s.admin_post(&format!("/api/customer/suppress?store={STORE}&contact=12"));
    assert_eq!(
        code, 400,
        "a contact that is neither email nor phone is refused"
    );
}

#[test]
fn the_holdout_salt_is_kept_in_the_database_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let first = {
        let mut s = TestServer::start_in(tmp.path(), Default::default());
        let salt = s.running().storage.salt(STORE).unwrap();
        s.stop();
        salt
    };
    let s = app::start(test_config(tmp.path()), Options::default()).unwrap();
    assert_eq!(s.storage.salt(STORE).unwrap(), first);
    assert_eq!(first.len(), 32);
    s.shutdown().unwrap();
}

#[test]
fn a_pending_order_ends_nothing_until_it_is_paid() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let first = order(
        9201,
        "kim@example.com",
        &[("KIT-POUR", "54.00")],
        0,
        json!({}),
    );
    assert_eq!(s.webhook("orders/paid", "k1", &first), 200);
    assert_eq!(explain(&s, "9201", 1)["status"], "active");
    let pending = order(
        9202,
        "kim@example.com",
        &[("BEANS-HOUSE", "16.00")],
        60_000,
        json!({"financial_status": "pending"}),
    );
    assert_eq!(s.webhook("orders/create", "k2", &pending), 200);
    let v = explain(&s, "9202", 1);
    assert_eq!(v["offer"], Value::Null);
    assert_eq!(v["touches"], json!([]));
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("not paid (status pending)"),
        "{v:#}"
    );
    assert_eq!(
        explain(&s, "9201", 1)["status"],
        "active",
        "a pending order ends nothing"
    );
    // Paid: its plan replaces the "not paid" one, and Kim's first sequence ends.
    let paid = order(
        9202,
        "kim@example.com",
        &[("BEANS-HOUSE", "16.00")],
        120_000,
        json!({}),
    );
    assert_eq!(s.webhook("orders/paid", "k3", &paid), 200);
    let v = explain(&s, "9202", 2);
    assert_eq!(v["recipe"], "replenishment", "{v:#}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let first = explain(&s, "9201", 1);
        if first["status"] == "ended" {
            assert_eq!(first["ended_by"], "9202");
            break;
        }
        assert!(Instant::now() < deadline, "{first:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
