//! Issue 12: the help desk's tickets and a carrier's delivery events, end to end on a test
//! clock. A ticket opened on day 2 holds the touches until it closes; a good rating
//! resumes them at once; a poor one notifies the store's webhook (`customer.recovery_
//! needed`, signed) and holds marketing until `customer clear`. A carrier's delay moves the
//! review request; a failed delivery holds the review and the cross-sell until delivered.
//! Wrong credentials are a 401 that records nothing.

use std::sync::Arc;

use serde_json::{json, Value};
use upsell_appliance::clock::TestClock;
use upsell_appliance::engine::Timestamp;

use crate::cadence::{
    admin_post, assert_line_at, assert_not_sent, customer, lines_of, order, post_order, reason,
    timer, wait_line, wait_state,
};
use crate::outbound::routed::wait_seen;
use crate::outbound::Fake;
use crate::support::{TestServer, STORE};

/// 2026-11-20T15:00:00Z.
const T0: i64 = 1_795_186_800_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const HEADER_SECRET: &str = "helpdesk-secret-0123456789abcdef";
const BASIC: &str = "gorgias:0123456789abcdef0123";
const HMAC: &str = "carrier-hmac-key-0123456789abcdef";
const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// The demo store live (email to the outbox), its webhook at `hook`, a helpdesk intake
/// (secret header, basic auth, a signature) and a carrier intake.
fn start(dir: &std::path::Path, clock: Arc<TestClock>, hook: &str) -> TestServer {
    let extra = format!(
        "mode = \"live\"\n[stores.channels.webhook]\nurl = \"{hook}/hook\"\nsecrets = [\"{WHSEC}\"]\n\
         [stores.helpdesk]\nsecret = \"{HEADER_SECRET}\"\nbasic_auth = \"{BASIC}\"\nhmac_secrets = [\"{HMAC}\"]\n\
         [stores.carrier]\nhmac_secrets = [\"{HMAC}\"]\n"
    );
    TestServer::start_demo_with(dir, clock, &extra)
}

fn sign(body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HMAC.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

enum Auth<'a> {
    Header(&'a str),
    Basic(&'a str),
    Signed,
    BadSignature,
    None,
}

fn post(s: &TestServer, intake: &str, auth: Auth<'_>, body: &Value) -> (u16, Value) {
    use base64::Engine as _;
    let bytes = body.to_string().into_bytes();
    let value;
    let mut headers = vec![("Content-Type", "application/json")];
    match auth {
        Auth::Header(v) => headers.push(("X-Upsell-Secret", v)),
        Auth::Basic(b) => {
            value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(b)
            );
            headers.push(("Authorization", &value));
        }
        Auth::Signed => {
            value = sign(&bytes);
            headers.push(("X-Upsell-Signature", &value));
        }
        Auth::BadSignature => {
            value = sign(b"another body");
            headers.push(("X-Upsell-Signature", &value));
        }
        Auth::None => {}
    }
    let (code, text) = s.post(&format!("/webhooks/{STORE}/{intake}"), &headers, &bytes);
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn ticket(email: &str, id: &str, status: &str, csat: Option<u8>, at: i64) -> Value {
    json!({"customer_email": email, "ticket_id": id, "status": status, "csat": csat,
        "updated_at": Timestamp(at).to_rfc3339()})
}

/// One order of a subscribed customer at T0 whose touch-1 went out.
fn ordered(s: &TestServer, dir: &std::path::Path, clock: &TestClock, o: u64, c: u64) {
    post_order(
        s,
        &order(o, &customer(c, false), T0, &[("KIT-POUR", 1, "54.00")]),
    );
    clock.set(Timestamp(T0 + 20 * MIN));
    wait_line(dir, &o.to_string(), "touch1");
}

#[test]
fn a_ticket_opened_on_day_2_holds_touches_until_the_last_closes_well_then_they_go_at_once() {
    let fake = Fake::start(vec![Some((204, vec![], String::new()))]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = start(dir, clock.clone(), &fake.url);
    ordered(&s, dir, &clock, 9961, 8961);
    let email = "c8961@example.com";

    // Day 2: two tickets open (by the secret header, and signed by a generic sender).
    clock.set(Timestamp(T0 + 2 * DAY));
    let (code, v) = post(
        &s,
        "helpdesk",
        Auth::Header(HEADER_SECRET),
        &ticket(email, "T-1", "open", None, T0 + 2 * DAY),
    );
    assert_eq!((code, v["changed"].clone()), (200, json!(1)), "{v}");
    let (code, v) = post(
        &s,
        "helpdesk",
        Auth::Signed,
        &ticket(email, "T-2", "open", None, T0 + 2 * DAY),
    );
    assert_eq!(code, 200, "{v}");

    // Day 4: touch-2 waits for the open tickets.
    clock.set(Timestamp(T0 + 4 * DAY));
    let t = wait_state(&s, "9961", "touch2", "deferred");
    assert!(reason(&t).starts_with("support ticket T-1 is open"), "{t}");
    // Day 5: T-1 closes well, T-2 is still open: nothing goes.
    clock.set(Timestamp(T0 + 5 * DAY));
    let (code, v) = post(
        &s,
        "helpdesk",
        Auth::Header(HEADER_SECRET),
        &ticket(email, "T-1", "closed", Some(5), T0 + 5 * DAY),
    );
    assert_eq!((code, v["resumed"].clone()), (200, json!(0)), "{v}");
    // An older report of T-1 (arriving late) changes nothing.
    let (code, v) = post(
        &s,
        "helpdesk",
        Auth::Header(HEADER_SECRET),
        &ticket(email, "T-1", "open", None, T0 + 3 * DAY),
    );
    assert_eq!((code, v["unchanged"].clone()), (200, json!(1)), "{v}");
    assert_not_sent(dir, "9961", "touch2");
    // Looked at again on day 5 (T-2 still open): its next look is in 6 h.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while timer(&s, "9961", "touch2").due_at != Timestamp(T0 + 5 * DAY + 6 * HOUR) {
        assert!(
            std::time::Instant::now() < deadline,
            "touch-2 not looked at on day 5"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Day 5 + 3 h: T-2 closes without a rating: touch-2 goes at once, not at its recheck.
    let closed = T0 + 5 * DAY + 3 * HOUR;
    clock.set(Timestamp(closed));
    let (code, v) = post(
        &s,
        "helpdesk",
        Auth::Signed,
        &ticket(email, "T-2", "closed", None, closed),
    );
    assert_eq!((code, v["resumed"].clone()), (200, json!(1)), "{v}");
    assert_line_at(&wait_line(dir, "9961", "touch2"), closed);
    assert_eq!(lines_of(dir, "9961", "touch2").len(), 1);
    assert!(
        fake.seen().is_empty(),
        "no recovery notice for good ratings"
    );
}

#[test]
fn a_poor_rating_notifies_the_store_signed_and_holds_marketing_until_cleared() {
    let fake = Fake::start(vec![Some((204, vec![], String::new()))]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = start(dir, clock.clone(), &fake.url);
    ordered(&s, dir, &clock, 9962, 8962);

    // Day 2: Gorgias posts the ticket, closed, then its satisfaction survey's score of 1.
    clock.set(Timestamp(T0 + 2 * DAY));
    let gorgias = |score: Value, at: &str| {
        json!({"ticket": {"id": 4242, "status": "closed", "customer": {"id": 1, "email": "C8962@example.com"},
            "satisfaction_survey": {"score": score}, "updated_datetime": at}})
    };
    let (code, v) = post(
        &s,
        "helpdesk",
        Auth::Basic(BASIC),
        &gorgias(json!(""), "2026-11-22T15:00:00"),
    );
    assert_eq!((code, v["recovery"].clone()), (200, json!(0)), "{v}");
    let (code, v) = post(
        &s,
        "helpdesk",
        Auth::Basic(BASIC),
        &gorgias(json!(1), "2026-11-22T16:00:00.5"),
    );
    assert_eq!((code, v["recovery"].clone()), (200, json!(1)), "{v}");
    // The same report again (a retry) notifies no one twice.
    let (code, v) = post(
        &s,
        "helpdesk",
        Auth::Basic(BASIC),
        &gorgias(json!(1), "2026-11-22T16:00:00.5"),
    );
    assert_eq!((code, v["recovery"].clone()), (200, json!(0)), "{v}");

    // Reopened (the survey's score still on it) and closed again: still one notice.
    let reopened = json!({"ticket": {"id": 4242, "status": "open", "customer": {"email": "c8962@example.com"},
        "satisfaction_survey": {"score": 1}, "updated_datetime": "2026-11-22T17:00:00"}});
    let (code, v) = post(&s, "helpdesk", Auth::Basic(BASIC), &reopened);
    assert_eq!((code, v["recovery"].clone()), (200, json!(0)), "{v}");
    let (code, v) = post(
        &s,
        "helpdesk",
        Auth::Basic(BASIC),
        &gorgias(json!(1), "2026-11-22T18:00:00"),
    );
    assert_eq!((code, v["recovery"].clone()), (200, json!(0)), "{v}");
    let seen = wait_seen(&fake, 1);
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["type"], "customer.recovery_needed", "{body}");
    assert_eq!(body["email"], "c8962@example.com");
    assert_eq!(body["ticket"], json!({"id": "4242", "csat": 1}));
    assert_eq!(body["latest_order"], "9962");
    // Signed as Standard Webhooks: id, timestamp and the body under the store's secret.
    let h = &seen[0].headers;
    let want = upsell_appliance::outbound::webhook::signature(
        &[upsell_appliance::outbound::Secret::new(WHSEC)],
        &h["webhook-id"],
        h["webhook-timestamp"].parse().unwrap(),
        seen[0].body.as_bytes(),
    );
    assert_eq!(h["webhook-signature"], want);

    // Day 4: no marketing: touch-2 is skipped for the poor rating.
    clock.set(Timestamp(T0 + 4 * DAY));
    let t = wait_state(&s, "9962", "touch2", "skipped");
    assert!(reason(&t).contains("poor rating (1/5)"), "{t}");
    let shown = s
        .admin_get(&format!(
            "/api/customer/show?store={STORE}&contact=c8962%40example.com"
        ))
        .1;
    assert!(shown.contains("\"needs_recovery\":true"), "{shown}");

    // A person follows up and clears it: the next touch goes out.
    admin_post(
        &s,
        &format!("/api/customer/clear?store={STORE}&contact=c8962%40example.com"),
    );
    let shown = s
        .admin_get(&format!(
            "/api/customer/show?store={STORE}&contact=c8962%40example.com"
        ))
        .1;
    assert!(shown.contains("\"needs_recovery\":false"), "{shown}");
    // The review waits for a delivery; the carrier reports one on day 5.
    let delivered = json!({"order_id": "9962", "status": "delivered", "occurred_at": Timestamp(T0 + 5 * DAY).to_rfc3339()});
    assert_eq!(post(&s, "delivery", Auth::Signed, &delivered).0, 200);
    // Applied before ten days pass (the clock jumps them at once): a review decided in the
    // very moment its delivery is applied waits one recheck of the delivery rule.
    s.wait_processed();
    clock.set(Timestamp(T0 + 15 * DAY));
    assert_line_at(&wait_line(dir, "9962", "review"), T0 + 15 * DAY);
    assert_eq!(wait_seen(&fake, 1).len(), 1, "one notice");
}

#[test]
fn wrong_intake_credentials_are_401_and_record_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = start(tmp.path(), clock.clone(), "http://127.0.0.1:9");
    post_order(
        &s,
        &order(
            9963,
            &customer(8963, false),
            T0,
            &[("KIT-POUR", 1, "54.00")],
        ),
    );
    let accepted = s.store_status()["webhooks"]["accepted"].clone();
    let t = ticket("c8963@example.com", "T-9", "open", None, T0);
    let d = json!({"order_id": "9963", "status": "failed", "occurred_at": Timestamp(T0 + DAY).to_rfc3339()});
    for (intake, auth, body) in [
        ("helpdesk", Auth::None, &t),
        (
            "helpdesk",
            Auth::Header("helpdesk-secret-0123456789abcdeX"),
            &t,
        ),
        (
            "helpdesk",
            Auth::Basic("gorgias:wrong-password-0000000"),
            &t,
        ),
        ("helpdesk", Auth::BadSignature, &t),
        ("delivery", Auth::None, &d),
        ("delivery", Auth::BadSignature, &d),
        // The carrier intake takes signatures only.
        ("delivery", Auth::Header(HEADER_SECRET), &d),
    ] {
        let (code, v) = post(&s, intake, auth, body);
        assert_eq!(code, 401, "{intake}: {v}");
    }
    let snap = s.running().storage.snapshot().unwrap();
    assert!(
        snap.store_tickets(STORE).unwrap().is_empty(),
        "no ticket recorded"
    );
    let state = snap.order(STORE, "9963").unwrap().unwrap();
    assert_eq!(state.delivery_failed_at, None, "no delivery event recorded");
    assert_eq!(s.store_status()["webhooks"]["accepted"], accepted);
    // A stranger is refused before the body is read: however large, it is a 401.
    let big = vec![b' '; 8 << 20];
    let (code, v) = s.post(&format!("/webhooks/{STORE}/helpdesk"), &[], &big);
    assert_eq!(code, 401, "{v}");
    // A store without the intake says how to set it up; a bad body says what is wrong.
    let (code, v) = s.post("/webhooks/woo/helpdesk", &[], b"{}");
    assert_eq!(code, 404, "{v}");
    assert!(v.contains("[stores.helpdesk]"), "{v}");
    let (code, v) = post(
        &s,
        "helpdesk",
        Auth::Header(HEADER_SECRET),
        &json!({"ticket_id": "1", "status": "open"}),
    );
    assert_eq!(code, 400);
    assert!(
        v.as_str().unwrap().contains("customer_email is missing"),
        "{v}"
    );
    let (code, v) = post(
        &s,
        "delivery",
        Auth::Signed,
        &json!({"order_id": "9963", "status": "lost", "occurred_at": "2026-11-21T00:00:00Z"}),
    );
    assert_eq!(code, 400);
    assert!(
        v.as_str()
            .unwrap()
            .contains("not shipped, delayed, delivered or failed"),
        "{v}"
    );
}

#[test]
fn a_carriers_delay_moves_the_review_and_a_failed_delivery_holds_review_and_cross_sell() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = start(dir, clock.clone(), "http://127.0.0.1:9");
    let carrier = |o: &str, status: &str, at: i64, eta: Option<i64>| {
        let body = json!({"order_id": o, "status": status, "occurred_at": Timestamp(at).to_rfc3339(),
            "estimated_at": eta.map(|e| Timestamp(e).to_rfc3339())});
        let (code, v) = post(&s, "delivery", Auth::Signed, &body);
        assert_eq!(code, 200, "{v}");
        s.wait_processed();
    };
    // Order 9964: shipped with an estimate of day 5, then delayed 5 days.
    ordered(&s, dir, &clock, 9964, 8964);
    carrier("9964", "shipped", T0 + DAY, Some(T0 + 5 * DAY));
    assert_eq!(timer(&s, "9964", "review").due_at, Timestamp(T0 + 15 * DAY));
    carrier("9964", "delayed", T0 + 4 * DAY, Some(T0 + 10 * DAY));
    assert_eq!(
        timer(&s, "9964", "review").due_at,
        Timestamp(T0 + 20 * DAY),
        "the review moves by the 5 days of the delay"
    );
    // The same delivery posted twice is one event.
    let before = s.store_status()["webhooks"]["duplicate"].as_u64().unwrap();
    carrier("9964", "delayed", T0 + 4 * DAY, Some(T0 + 10 * DAY));
    assert_eq!(
        s.store_status()["webhooks"]["duplicate"].as_u64().unwrap(),
        before + 1
    );

    // Order 9965: the delivery fails on day 3: the cross-sell (day 4) and the review wait.
    post_order(
        &s,
        &order(
            9965,
            &customer(8965, false),
            T0,
            &[("KIT-POUR", 1, "54.00")],
        ),
    );
    carrier("9965", "failed", T0 + 3 * DAY, None);
    clock.set(Timestamp(T0 + 4 * DAY));
    let t = wait_state(&s, "9965", "touch2", "deferred");
    assert!(
        reason(&t).starts_with("the delivery failed on 2026-11-23T15:00:00Z"),
        "{t}"
    );
    clock.set(Timestamp(T0 + 6 * DAY));
    assert_not_sent(dir, "9965", "touch2");
    // Delivered on day 7: touch-2 two days later, the review ten days later.
    carrier("9965", "delivered", T0 + 7 * DAY, None);
    assert_eq!(timer(&s, "9965", "touch2").due_at, Timestamp(T0 + 9 * DAY));
    assert_eq!(timer(&s, "9965", "review").due_at, Timestamp(T0 + 17 * DAY));
    clock.set(Timestamp(T0 + 9 * DAY));
    assert_line_at(&wait_line(dir, "9965", "touch2"), T0 + 9 * DAY);
}

#[test]
fn clearing_a_poor_rating_brings_forward_the_touches_that_waited_for_a_ticket() {
    let fake = Fake::start(vec![Some((204, vec![], String::new()))]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = start(dir, clock.clone(), &fake.url);
    ordered(&s, dir, &clock, 9965, 8965);
    let email = "c8965@example.com";
    // Day 3: T-1 opens; day 4: touch-2 waits for it.
    clock.set(Timestamp(T0 + 3 * DAY));
    let t1 = ticket(email, "T-1", "open", None, T0 + 3 * DAY);
    assert_eq!(post(&s, "helpdesk", Auth::Signed, &t1).0, 200);
    clock.set(Timestamp(T0 + 4 * DAY));
    let t = wait_state(&s, "9965", "touch2", "deferred");
    assert!(reason(&t).starts_with("support ticket T-1 is open"), "{t}");
    // T-1 closes with a poor rating: the customer is on the recovery path, and touch-2
    // keeps waiting.
    let closed = T0 + 4 * DAY + HOUR;
    clock.set(Timestamp(closed));
    let t1 = ticket(email, "T-1", "closed", Some(1), closed);
    let (code, v) = post(&s, "helpdesk", Auth::Signed, &t1);
    assert_eq!((code, v["resumed"].clone()), (200, json!(0)), "{v}");
    assert_not_sent(dir, "9965", "touch2");
    // A person follows up an hour later: touch-2 goes then, not at its next look.
    let cleared = closed + HOUR;
    clock.set(Timestamp(cleared));
    let (code, body) = s.admin_post(&format!(
        "/api/customer/clear?store={STORE}&contact=c8965%40example.com"
    ));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, &v["resumed"]), (200, &json!(1)), "{v}");
    assert_line_at(&wait_line(dir, "9965", "touch2"), cleared);
}
