//! The go-live switch, end to end on a test clock: a dry run writes the outbox only
//! (send-test still sends).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use upsell_appliance::clock::TestClock;
use upsell_appliance::engine::Timestamp;

use crate::outbound::{klaviyo_routes, Fake};
use crate::scheduler::{outbox, wait_outbox, wait_state};
use crate::support::{TestServer, STORE};

/// 2026-11-20T15:00:00Z
const T0: i64 = 1_795_186_800_000;
const MIN: i64 = 60_000;

/// A paid order at T0 of the demo's kit: touch-1 due at T0 + 20 min.
fn order(s: &TestServer, id: u64) {
    let body = serde_json::to_vec(&json!({
        "id": id, "name": format!("#{id}"), "email": format!("c{id}@example.com"),
        "created_at": Timestamp(T0).to_rfc3339(), "updated_at": Timestamp(T0).to_rfc3339(),
        "currency": "USD", "total_price": "54.00", "financial_status": "paid",
        "line_items": [{"id": 1, "sku": "KIT-POUR", "quantity": 1, "price": "54.00",
            "title": "Pour-over Kit", "requires_shipping": false}],
        "customer": {"id": id + 1000, "email": format!("c{id}@example.com"),
            "email_marketing_consent": {"state": "subscribed"}}
    }))
    .unwrap();
    assert_eq!(s.webhook("orders/paid", &format!("o{id}"), &body), 200);
    wait_state(s, &id.to_string(), "touch1", "scheduled");
}

/// A store without `mode` is a dry run: its touches go to the outbox even where Klaviyo
/// and an `also_webhook` copy are configured, the status says so, and `send-test` still
/// reaches Klaviyo (it goes to the operator, not a customer).
#[test]
fn a_dry_run_writes_the_outbox_only_and_send_test_still_sends() {
    let fake = Fake::start(vec![Some((202, vec![], String::new()))]);
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let extra = format!(
        "{}[stores.channels.webhook]\nurl = \"{}/hook\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\n",
        klaviyo_routes(&fake.url).replace(
            "email = \"klaviyo\"\n",
            "email = \"klaviyo\"\nalso_webhook = true\n"
        ),
        fake.url
    );
    let s = TestServer::start_demo_with(tmp.path(), clock.clone(), &extra);
    order(&s, 9701);
    clock.set(Timestamp(T0 + 21 * MIN));
    let lines = wait_outbox(tmp.path(), 1);
    assert_eq!(lines[0]["kind"], "touch1");
    wait_state(&s, "9701", "touch1", "sent");
    std::thread::sleep(Duration::from_millis(300));
    assert!(fake.seen().is_empty(), "a dry run reached a provider");
    assert_eq!(outbox(tmp.path()).len(), 1, "no webhook copy either");
    let st = s.status();
    assert_eq!(st["stores"][0]["mode"], "dry_run");
    assert_eq!(
        st["stores"][0]["touches"]["channels"],
        json!({"outbox": {"sent": 1, "retried": 0, "dead": 0}})
    );
    assert!(st["notices"].as_array().unwrap().iter().any(|n| n["text"]
        .as_str()
        .unwrap()
        .contains(
            "Store main: DRY RUN: touches go to the outbox only; nothing reaches customers"
        )));
    let (code, page) = {
        let url = format!("http://{}/", s.running().admin_addr);
        let mut r = s
            .agent
            .get(&url)
            .header(
                "Authorization",
                &format!("Bearer {}", crate::support::TOKEN),
            )
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!(code, 200);
    assert!(page.contains("DRY RUN: touches go to the outbox only; nothing reaches customers"));
    assert!(page.contains("<dt>Sending</dt><dd>dry run<small>outbox only</small></dd>"));

    let (code, body) = s.admin_post(&format!(
        "/api/send-test?store={STORE}&touch=touch1&to=me%40example.com"
    ));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&v["sent"], &v["channel"]),
        (&json!(true), &json!("klaviyo")),
        "{v}"
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let b: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        b["data"]["attributes"]["profile"]["data"]["attributes"]["email"],
        "me@example.com"
    );
}
