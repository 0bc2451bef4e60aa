//! `GET /metrics` on the admin listener: the admin token, Prometheus's text format as a
//! parser reads it, and the figures of a few real deliveries and touches.

use std::sync::Arc;

use prometheus_parse::{Scrape, Value};
use serde_json::json;
use upsell_appliance::clock::TestClock;
use upsell_appliance::engine::Timestamp;

use crate::scheduler::wait_state;
use crate::support::*;

/// 2026-11-20T15:00:00Z
const T0: i64 = 1_795_186_800_000;
const MIN: i64 = 60_000;

/// `GET /metrics` with `auth` as the `Authorization` header: status, Content-Type, body.
fn get(s: &TestServer, auth: Option<&str>) -> (u16, String, String) {
    let mut rq = s
        .agent
        .get(&format!("http://{}/metrics", s.running().admin_addr));
    if let Some(a) = auth {
        rq = rq.header("Authorization", a);
    }
    let mut resp = rq.call().expect("request completes");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.body_mut().read_to_string().unwrap();
    (resp.status().as_u16(), content_type, body)
}

fn scrape(s: &TestServer) -> (String, Scrape) {
    let (code, content_type, body) = get(s, Some(&format!("Bearer {TOKEN}")));
    assert_eq!(code, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let parsed = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    (body, parsed)
}

/// The value of the counter or gauge `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{name} is not a single value: {other:?}"),
        })
}

fn webhooks(scrape: &Scrape, store: &str, platform: &str, result: &str) -> Option<f64> {
    let labels = [("store", store), ("platform", platform), ("result", result)];
    value(scrape, "upsell_webhooks_total", &labels)
}

#[test]
fn metrics_count_webhooks_by_result_touches_sends_and_commits_behind_the_admin_token() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = TestServer::start_demo(tmp.path(), clock.clone());

    // Refused without the token, as the rest of the admin API is.
    let (code, _, body) = get(&s, None);
    assert_eq!(code, 401, "{body}");
    let (code, _, _) = get(&s, Some("Bearer not-the-admin-token-at-all"));
    assert_eq!(code, 401);

    // One delivery of each result: an order (accepted, it plans four touches), the same
    // delivery again (duplicate), a bad signature (rejected), a body this build cannot
    // parse (quarantined) and a topic not acted on (ignored).
    let body = serde_json::to_vec(&json!({
        "id": 9501, "name": "#9501", "email": "ana@example.com",
        "created_at": Timestamp(T0).to_rfc3339(), "updated_at": Timestamp(T0).to_rfc3339(),
        "currency": "USD", "total_price": "54.00", "financial_status": "paid",
        "line_items": [{"id": 1, "sku": "KIT-POUR", "quantity": 1, "price": "54.00",
            "title": "Pour-over Kit", "requires_shipping": true}],
        "customer": {"id": 8901, "email": "ana@example.com",
            "email_marketing_consent": {"state": "subscribed"}}
    }))
    .unwrap();
    assert_eq!(s.webhook("orders/paid", "m-1", &body), 200);
    assert_eq!(s.webhook("orders/paid", "m-1", &body), 200);
    let (code, _) = s.post(
        &format!("/webhooks/{STORE}"),
        &[
            ("X-Shopify-Topic", "orders/paid"),
            ("X-Shopify-Hmac-Sha256", "bm90IHRoZSBzaWduYXR1cmU="),
        ],
        &body,
    );
    assert_eq!(code, 401);
    let unreadable = crate::quarantine::unreadable();
    assert_eq!(s.webhook("orders/paid", "m-2", &unreadable), 200);
    assert_eq!(s.webhook("app/uninstalled", "m-3", b"{}"), 200);
    // A health probe commits, and the rejection is counted with it.
    assert_eq!(s.get("/healthz").0, 200);
    s.wait_processed();
    wait_state(&s, "9501", "touch1", "scheduled");

    let (text, m) = scrape(&s);
    for (result, n) in [
        ("accepted", 1.0),
        ("duplicate", 1.0),
        ("rejected", 1.0),
        ("quarantined", 1.0),
        ("ignored", 1.0),
    ] {
        assert_eq!(
            webhooks(&m, STORE, "shopify", result),
            Some(n),
            "{result}:\n{text}"
        );
        assert_eq!(
            webhooks(&m, WOO_STORE, "woocommerce", result),
            Some(0.0),
            "{text}"
        );
    }
    let pending = |m: &Scrape| value(m, "upsell_touches_pending", &[("store", STORE)]);
    assert_eq!(
        pending(&m),
        Some(4.0),
        "touch-1, touch-2, review, touch-3:\n{text}"
    );
    assert_eq!(
        value(&m, "upsell_touches_pending", &[("store", WOO_STORE)]),
        Some(0.0)
    );
    let rss = value(&m, "process_resident_memory_bytes", &[]);
    assert!(rss.is_some_and(|b| b > 1e6), "{text}");
    // Four deliveries and the probe, each answered after a commit of its own (each
    // request waited for its answer before the next was sent).
    assert_eq!(
        value(&m, "upsell_commit_batch_size_count", &[]),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        value(&m, "upsell_commit_batch_size_sum", &[]),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        value(&m, "upsell_commit_duration_seconds_count", &[]),
        Some(5.0)
    );
    let histogram = m
        .samples
        .iter()
        .find(|s| s.metric == "upsell_commit_duration_seconds")
        .map(|s| s.value.clone());
    let Some(Value::Histogram(buckets)) = histogram else {
        panic!("no commit latency histogram in\n{text}")
    };
    let all = buckets.iter().find(|b| b.less_than == f64::INFINITY);
    assert_eq!(all.map(|b| b.count), Some(5.0), "{buckets:?}");
    assert_eq!(
        value(&m, "upsell_sends_total", &[]),
        None,
        "nothing sent yet"
    );

    // +21 min: touch-1 goes out (to the outbox: a dry run) and is counted as a send.
    clock.set(Timestamp(T0 + 21 * MIN));
    wait_state(&s, "9501", "touch1", "sent");
    let (text, m) = scrape(&s);
    let sends = |result| {
        let labels = [("store", STORE), ("channel", "outbox"), ("result", result)];
        value(&m, "upsell_sends_total", &labels)
    };
    assert_eq!(sends("sent"), Some(1.0), "{text}");
    assert_eq!(sends("retried"), Some(0.0), "{text}");
    assert_eq!(sends("dead"), Some(0.0), "{text}");
    assert_eq!(pending(&m), Some(3.0), "{text}");
    assert_eq!(value(&m, "upsell_dead_letters_total", &[]), None, "{text}");
}
