//! Attribution (issue 10): a later order of the same customer with the offered product
//! converts the offer within 7 days of a click or 24 hours of an acceptance (both edges
//! in, a second past out); the last engagement has the credit; a refund of at least
//! the product takes it back; the feedback counters follow.

use serde_json::json;
use upsell_appliance::engine::Timestamp;

use crate::cadence::{wait_plan, wait_planned};
use crate::offers::{feedback, get, key, place, start, token};
use crate::scheduler::{explain, outbox, wait_state};
use crate::support::{no_redirects, TestServer, STORE};

const T0: i64 = 1_790_000_000_000;
/// Platforms send whole seconds: the first instant past a window's edge.
const SEC: i64 = 1_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// The offered product's SKU and price of `order`'s plan.
fn offered(s: &TestServer, order: &str) -> (String, String, String) {
    let v = explain(s, order);
    let o = &v["offer"];
    (
        o["product"].as_str().unwrap().to_string(),
        o["sku"]
            .as_str()
            .expect("demo offers have SKUs")
            .to_string(),
        o["price"].as_str().unwrap().to_string(),
    )
}

pub(crate) fn refund(s: &TestServer, id: u64, order: u64, amount: &str, at: i64) {
    let body = json!({"id": id, "order_id": order, "created_at": Timestamp(at).to_rfc3339(),
        "transactions": [{"amount": amount, "kind": "refund", "status": "success", "currency": "USD"}]});
    let code = s.webhook(
        "refunds/create",
        &format!("r{id}"),
        &serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(code, 200);
}

#[test]
fn a_click_earns_orders_up_to_seven_days_on_and_a_refund_takes_the_credit_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, clock) = start(tmp.path());
    place(&s, 9911, 8911, T0, &[("KIT-POUR", "54.00")]);
    let (product, sku, price) = offered(&s, "9901");
    assert_eq!(
        offered(&s, "9911").1,
        sku,
        "the same basket, the same offer"
    );

    // Both touch-1 emails go out; each customer opens its offer page at C.
    let c = T0 + 21 * MIN;
    clock.set(Timestamp(c));
    wait_state(&s, "9901", "touch1", "sent");
    wait_state(&s, "9911", "touch1", "sent");
    let mut ids = Vec::new();
    for line in outbox(tmp.path()) {
        let link = line["links"]["click"].as_str().unwrap();
        let path = link.strip_prefix("https://upsell.example.com").unwrap();
        assert_eq!(get(&s, path, &[]).0, 200);
        ids.push((
            line["order"].as_str().unwrap_or("").to_string(),
            line["touch_id"].as_str().unwrap().parse::<u64>().unwrap(),
        ));
    }
    let before = feedback(&s, &product);

    // 9902 buys the offered product exactly 7 days after the click: converted.
    clock.set(Timestamp(c + 7 * DAY));
    place(
        &s,
        9902,
        8901,
        c + 7 * DAY,
        &[(&sku, &price), ("MUG-CER", "14.00")],
    );
    let v = wait_plan(&s, "9901", |v| !v["conversion"].is_null());
    let conv = &v["conversion"];
    assert_eq!(conv["order"], "9902", "{v:#}");
    assert_eq!(conv["credited"]["what"], "click");
    assert_eq!(conv["credited"]["kind"], "touch1");
    assert_eq!(conv["credited"]["channel"], "email");
    assert!(
        ids.iter()
            .any(|(_, id)| conv["credited"]["touch_id"] == *id),
        "{ids:?} {conv:#}"
    );
    let minor = (price.parse::<f64>().unwrap() * 100.0).round() as i64;
    assert_eq!(conv["revenue_minor"], minor);
    assert!(conv["reversed"].is_null());
    assert!(
        v["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_str().unwrap().contains("converted: order 9902")),
        "{v:#}"
    );
    let converted = feedback(&s, &product);
    assert_eq!(
        converted.accepted,
        before.accepted + 1,
        "a conversion counts"
    );

    // 9912 comes a second later for the other customer: nothing.
    clock.set(Timestamp(c + 7 * DAY + SEC));
    place(&s, 9912, 8911, c + 7 * DAY + SEC, &[(&sku, &price)]);
    wait_planned(&s, "9912");
    assert!(explain(&s, "9911")["conversion"].is_null());

    // A refund smaller than the product keeps the credit; the rest takes it back.
    refund(&s, 501, 9902, "1.00", c + 8 * DAY);
    wait_plan(&s, "9902", |v| !v["refunded_at"].is_null());
    assert!(explain(&s, "9901")["conversion"]["reversed"].is_null());
    let rest = format!("{:.2}", price.parse::<f64>().unwrap() - 1.0);
    refund(&s, 502, 9902, &rest, c + 9 * DAY);
    let v = wait_plan(&s, "9901", |v| !v["conversion"]["reversed"].is_null());
    assert_eq!(
        v["conversion"]["reversed"]["why"],
        "the converting order was refunded"
    );
    let refunded = feedback(&s, &product);
    assert_eq!(refunded.refunded, converted.refunded + 1);
    assert_eq!(refunded.accepted, converted.accepted);
}

#[test]
fn a_page_acceptance_earns_an_order_within_a_day_without_any_click() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, clock) = start(tmp.path());
    place(&s, 9911, 8911, T0, &[("KIT-POUR", "54.00")]);
    let (product, sku, price) = offered(&s, "9901");
    let k = key(&s);
    // Both take the offer on the thank-you page at A; nobody clicks a message.
    let a = T0 + MIN;
    for order in ["9901", "9911"] {
        let t = token(&k, order);
        assert_eq!(
            get(&s, &format!("/v1/offers/{STORE}/{order}?t={t}"), &[]).0,
            200
        );
        let r = no_redirects()
            .get(&s.url(&format!("/v1/offers/{STORE}/{order}/accept?t={t}")))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 303);
    }
    let accepted = feedback(&s, &product);

    clock.set(Timestamp(a + DAY));
    place(&s, 9902, 8901, a + DAY, &[(&sku, &price)]);
    let v = wait_plan(&s, "9901", |v| !v["conversion"].is_null());
    let conv = &v["conversion"];
    assert_eq!(conv["order"], "9902");
    assert_eq!(conv["credited"]["what"], "accept", "{conv:#}");
    assert_eq!(conv["credited"]["channel"], "page");
    assert!(conv["credited"]["touch_id"].is_null());
    assert_eq!(conv["contributing"].as_array().unwrap().len(), 1);
    assert_eq!(
        feedback(&s, &product).accepted,
        accepted.accepted,
        "the page's acceptance was counted already"
    );

    clock.set(Timestamp(a + DAY + SEC));
    place(&s, 9912, 8911, a + DAY + SEC, &[(&sku, &price)]);
    wait_planned(&s, "9912");
    assert!(
        explain(&s, "9911")["conversion"].is_null(),
        "a day and a second after the acceptance"
    );
    // An order without the offered product converts nothing either.
    place(&s, 9903, 8901, a + DAY + 2 * SEC, &[("MUG-CER", "14.00")]);
    wait_planned(&s, "9903");
    assert_eq!(explain(&s, "9901")["conversion"]["order"], "9902");
}

#[test]
fn an_acceptance_on_a_messages_offer_page_is_credited_to_that_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, clock) = start(tmp.path());
    let (_, sku, price) = offered(&s, "9901");
    clock.set(Timestamp(T0 + 21 * MIN));
    wait_state(&s, "9901", "touch1", "sent");
    let line = outbox(tmp.path()).pop().unwrap();
    let id: u64 = line["touch_id"].as_str().unwrap().parse().unwrap();
    let link = line["links"]["click"].as_str().unwrap();
    let (code, _, page) = get(
        &s,
        link.strip_prefix("https://upsell.example.com").unwrap(),
        &[],
    );
    assert_eq!(code, 200);
    let start = page.find("action=\"").unwrap() + 8;
    let action = page[start..][..page[start..].find('"').unwrap()].replace("&amp;", "&");
    let r = no_redirects()
        .post(&s.url(action.strip_prefix("https://upsell.example.com").unwrap()))
        .send("")
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "{action}");

    clock.set(Timestamp(T0 + HOUR));
    place(&s, 9902, 8901, T0 + HOUR, &[(&sku, &price)]);
    let v = wait_plan(&s, "9901", |v| !v["conversion"].is_null());
    let conv = &v["conversion"];
    assert_eq!(conv["credited"]["what"], "accept", "{conv:#}");
    assert_eq!(conv["credited"]["touch_id"], id);
    assert_eq!(conv["credited"]["kind"], "touch1");
    let kinds: Vec<&str> = conv["contributing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["click", "accept"],
        "the page view, then the acceptance"
    );
}
