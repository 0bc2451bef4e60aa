//! Issue 12: privacy requests end to end. Shopify's `customers/data_request` writes an
//! export of everything held and the status page lists it; `customers/redact` (and
//! `customer erase`) leaves no API able to return the customer, keeps the affinity model
//! byte for byte, keeps them unsubscribed; `compact` then leaves none of their bytes in
//! the database file. `shop/redact` removes the store's rows and nothing of other stores.

use std::sync::Arc;

use serde_json::{json, Value};
use upsell_appliance::clock::TestClock;
use upsell_appliance::engine::Timestamp;
use upsell_appliance::storage::Storage;

use crate::cadence::{order, post_order};
use crate::support::{TestServer, STORE, WOO_STORE};

/// 2026-11-20T15:00:00Z.
const T0: i64 = 1_795_186_800_000;
const EMAIL: &str = "erase.me.9001@example.com";
const PHONE: &str = "+15550009001";
const OTHER: &str = "keep.me.9002@example.com";

fn person(id: u64, email: &str, phone: Option<&str>) -> Value {
    let mut c = json!({"id": id, "email": email,
        "email_marketing_consent": {"state": "subscribed"}});
    if let Some(p) = phone {
        c["phone"] = json!(p);
    }
    c
}

fn start(dir: &std::path::Path) -> TestServer {
    let clock = Arc::new(TestClock::at(Timestamp(T0 + 60_000)));
    TestServer::start_demo_with(dir, clock, "")
}

/// The digests of the tables the affinity model and the lift report count from.
fn affinity_digest(s: &TestServer) -> Vec<(String, u64, String)> {
    s.running()
        .storage
        .digest()
        .unwrap()
        .into_iter()
        .filter(|(t, _, _)| {
            t.starts_with("aff_")
                || ["timeline", "order_values", "product_nos"].contains(&t.as_str())
        })
        .collect()
}

fn file_holds(path: &std::path::Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Everything the admin API can say about the customer and their orders, less the echo
/// of the question.
fn every_answer(s: &TestServer, orders: &[&str]) -> String {
    let q = |c: &str| format!("store={STORE}&contact={}", c.replace('+', "%2B"));
    let mut out = String::new();
    for path in [
        "/api/status".to_string(),
        format!("/api/customer/show?{}", q(EMAIL)),
        format!("/api/customer/show?{}", q(PHONE)),
        format!("/api/customer/export?{}", q(EMAIL)),
        format!("/api/customer/export?{}", q(PHONE)),
        format!("/api/customer/export?{}", q("9001")),
        format!("/api/deadletters?store={STORE}"),
        format!("/api/quarantine?store={STORE}"),
    ]
    .into_iter()
    .chain(
        orders
            .iter()
            .map(|o| format!("/api/explain?store={STORE}&order={o}")),
    ) {
        let (code, body) = s.admin_get(&path);
        // What the question itself named is echoed back; the rest is what is held.
        let mut v: Value = serde_json::from_str(&body).unwrap();
        if let Some(o) = v.as_object_mut() {
            o.remove("contact");
            o.remove("looked_up_by");
        }
        let asked = path.split('?').next().unwrap_or("");
        out += &format!("{asked} -> {code}\n{v}\n");
    }
    out
}

#[test]
fn a_data_request_is_exported_and_a_redact_leaves_nothing_an_api_or_the_compacted_file_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + 60_000)));
    let mut s = TestServer::start_demo_with(dir, clock.clone(), "");
    let me = person(9001, EMAIL, Some(PHONE));
    post_order(&s, &order(9101, &me, T0, &[("KIT-POUR", 1, "54.00")]));
    let other = person(9002, OTHER, None);
    post_order(&s, &order(9102, &other, T0, &[("KIT-POUR", 1, "54.00")]));
    post_order(
        &s,
        &order(
            9103,
            &me,
            T0,
            &[("KIT-POUR", 1, "54.00"), ("FLT-PAPER", 2, "8.00")],
        ),
    );
    // 9103's first email went out (9101's plan gave way to it), then they took its offer.
    clock.set(Timestamp(T0 + 25 * 60_000));
    crate::cadence::wait_line(dir, "9103", "touch1");
    let (code, body) = s.admin_post(&format!("/api/offer/accept?store={STORE}&order=9103"));
    assert_eq!(code, 200, "{body}");
    // A support ticket and an unsubscribe, both kept by the customer's contact.
    let (code, body) = s.admin_post(&format!(
        "/api/customer/ticket-open?store={STORE}&contact={EMAIL}&ticket=T-77"
    ));
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.admin_post(&format!(
        "/api/customer/suppress?store={STORE}&contact={EMAIL}&reason=unsubscribed"
    ));
    assert_eq!(code, 200, "{body}");
    // A fulfillment of an order never received: only its body names them.
    let stray = json!({"id": 5501, "order_id": 9199, "status": "success",
        "created_at": "2026-11-20T15:00:00Z", "email": EMAIL,
        "destination": {"phone": PHONE, "city": "Springfield"}});
    let bytes = serde_json::to_vec(&stray).unwrap();
    assert_eq!(s.webhook("fulfillments/create", "ev-stray", &bytes), 200);
    // Another's fulfillment of an unknown order is not theirs.
    let theirs = json!({"id": 5502, "order_id": 9198, "status": "success",
        "created_at": "2026-11-20T15:00:00Z", "email": OTHER});
    let bytes = serde_json::to_vec(&theirs).unwrap();
    assert_eq!(s.webhook("fulfillments/create", "ev-other", &bytes), 200);
    s.wait_processed();
    let affinity = affinity_digest(&s);

    // customers/data_request: the export is written, listed, and holds everything.
    let request = json!({"shop_id": 954889, "shop_domain": "test-store.myshopify.com",
        "orders_requested": [9101, 9103], "customer": {"id": 9001, "email": EMAIL, "phone": PHONE},
        "data_request": {"id": 9999}});
    let bytes = serde_json::to_vec(&request).unwrap();
    assert_eq!(s.webhook("customers/data_request", "ev-dr", &bytes), 200);
    s.wait_processed();
    let file = dir
        .join("exports")
        .join(format!("{STORE}-data-request-9999.json"));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the export is the service user's only");
    }
    let export: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(export["found"], true);
    let orders: Vec<&str> = export["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(orders, ["9101", "9103"], "theirs, not the other customer's");
    assert_eq!(export["customers"][0]["email"], EMAIL);
    assert_eq!(
        export["customers"][0]["currency"], "USD",
        "codes, not bytes"
    );
    assert_eq!(export["tickets"][0]["ticket"], "T-77");
    assert_eq!(export["suppression"][0]["key"], format!("email:{EMAIL}"));
    let raw: Vec<&str> = export["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["body"]["text"].as_str())
        .collect();
    assert!(raw.iter().any(|b| b.contains("\"id\":9101")), "{raw:?}");
    assert!(
        raw.iter().any(|b| b.contains("\"order_id\":9199")),
        "{raw:?}"
    );
    assert!(!raw.iter().any(|b| b.contains(OTHER)));
    // What they did and what they were sent is theirs too.
    assert_eq!(
        export["orders"][1]["offer_response"]["accepted"], true,
        "{export}"
    );
    assert_eq!(export["messages_sent"][0]["channel"], "email", "{export}");
    let sent: Vec<&Value> = export["touches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| !t["sent_through"].is_null())
        .collect();
    assert_eq!(sent.len(), 1, "{export}");
    let st = s.store_status();
    assert_eq!(st["privacy"]["exported"], 1, "{st}");
    assert_eq!(
        st["privacy"]["exports"][0]["path"],
        file.display().to_string()
    );
    assert!(
        s.status()["notices"]
            .to_string()
            .contains("privacy export is waiting"),
        "the status page says where it is"
    );
    let (_, page) = s.admin_get("/");
    assert!(page.contains(&file.display().to_string()), "{page}");

    // `customer erase` without --yes says what would go and changes nothing.
    let (code, body) = s.admin_post(&format!(
        "/api/customer/erase?store={STORE}&contact={EMAIL}&yes=false"
    ));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, &v["erased"]), (200, &Value::Null), "{v}");
    assert_eq!(v["found"]["orders"], 2);
    assert!(every_answer(&s, &["9101", "9103"]).contains(EMAIL));

    // customers/redact.
    let redact = json!({"shop_id": 954889, "shop_domain": "test-store.myshopify.com",
        "customer": {"id": 9001, "email": EMAIL, "phone": PHONE}, "orders_to_redact": [9101, 9103]});
    let bytes = serde_json::to_vec(&redact).unwrap();
    assert_eq!(s.webhook("customers/redact", "ev-rd", &bytes), 200);
    s.wait_processed();
    let answers = every_answer(&s, &["9101", "9103"]);
    for needle in [EMAIL, "erase.me", "5550009001", "T-77"] {
        assert!(!answers.contains(needle), "{needle} in:\n{answers}");
    }
    assert!(!file.exists(), "the export holding them is gone");
    let st = s.store_status();
    assert_eq!(st["privacy"]["erased"], 1, "{st}");
    let (_, body) = s.admin_get(&format!(
        "/api/customer/export?store={STORE}&contact={EMAIL}"
    ));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["found"], false, "{v}");
    // Still unsubscribed (under a hash of the address), and the other customer untouched.
    let (_, body) = s.admin_get(&format!("/api/customer/show?store={STORE}&contact={EMAIL}"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["suppressed"]["reason"], "unsubscribed", "{v}");
    assert!(v["customer"].is_null(), "{v}");
    let (_, body) = s.admin_get(&format!("/api/customer/show?store={STORE}&contact={OTHER}"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["customer"]["orders"], 1, "{v}");
    // The orders stay counted: the affinity model did not change by a byte.
    assert_eq!(affinity_digest(&s), affinity);
    let (_, explain) = s.explain("9103");
    assert_eq!(explain["name"], "#9103", "{explain}");
    // An erase again finds nothing.
    let (_, body) = s.admin_post(&format!(
        "/api/customer/erase?store={STORE}&contact={EMAIL}&yes=true"
    ));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&v["held"], &v["erased"]),
        (&json!(false), &Value::Null),
        "{v}"
    );

    // Erased by the phone number alone: the customer record (with its address) goes too.
    let third = person(9003, "by.phone.9003@example.com", Some("+15550009003"));
    post_order(&s, &order(9104, &third, T0, &[("KIT-POUR", 1, "54.00")]));
    let (_, body) = s.admin_post(&format!(
        "/api/customer/erase?store={STORE}&contact=%2B15550009003&yes=true"
    ));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["erased"]["customers"], 1, "{v}");
    let (_, body) = s.admin_get(&format!(
        "/api/customer/show?store={STORE}&contact=by.phone.9003@example.com"
    ));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["customer"].is_null(), "{v}");

    // The file: redb is copy-on-write, so freed pages may still hold the old bytes until
    // `compact` rewrites it; after that none are left. The other customer's are (the
    // search finds what is there).
    s.stop();
    let db = dir.join(Storage::FILE_NAME);
    eprintln!(
        "before compact the file {} the erased address",
        if file_holds(&db, EMAIL) {
            "still holds"
        } else {
            "no longer holds"
        }
    );
    Storage::compact(dir, &Default::default()).unwrap();
    for needle in [EMAIL, "erase.me", "5550009001", "by.phone", "5550009003"] {
        assert!(!file_holds(&db, needle), "{needle} is still in the file");
    }
    assert!(file_holds(&db, OTHER));
    // And the compacted database is whole: the service starts on it and still knows B.
    let s = start(dir);
    let (_, body) = s.admin_get(&format!("/api/customer/show?store={STORE}&contact={OTHER}"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["customer"]["orders"], 1, "{v}");
}

#[test]
fn shop_redact_removes_every_row_of_the_store_and_nothing_of_another() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = start(dir);
    post_order(
        &s,
        &order(
            9201,
            &person(9201, EMAIL, None),
            T0,
            &[("KIT-POUR", 1, "54.00")],
        ),
    );
    let woo = crate::fixtures::woo_order_json(4711, "processing", "2026-11-21T15:00:05", &[]);
    assert_eq!(s.woo_webhook("order.created", Some("d-1"), &woo), 200);
    s.wait_processed();
    let body = br#"{"shop_id": 954889, "shop_domain": "test-store.myshopify.com"}"#;
    assert_eq!(s.webhook("shop/redact", "ev-sr", body), 200);
    s.wait_processed();
    let st = s.store_status();
    assert_eq!(
        (&st["orders"], &st["customers"]),
        (&json!(0), &json!(0)),
        "{st}"
    );
    assert_eq!(st["webhooks"]["accepted"], 0, "its counters went too: {st}");
    assert_eq!(
        s.woo_status()["orders"],
        1,
        "the other store keeps its data"
    );
    let (code, v) = s.explain("9201");
    assert_ne!(code, 200, "{v}");
    // A new delivery after the removal gets a number never used before.
    post_order(
        &s,
        &order(
            9202,
            &person(9202, OTHER, None),
            T0,
            &[("KIT-POUR", 1, "54.00")],
        ),
    );
    assert_eq!(s.store_status()["orders"], 1);
    s.stop();
    Storage::compact(dir, &Default::default()).unwrap();
    let db = dir.join(Storage::FILE_NAME);
    assert!(!file_holds(&db, EMAIL));
    // The demo catalog imported into the store went with it.
    assert!(!file_holds(&db, "Pour-over Kit"), "catalog rows are gone");
    let s = Storage::open(dir, &Default::default()).unwrap();
    assert_eq!(s.status(&[WOO_STORE]).unwrap()[0].orders, 1);
}

#[test]
fn a_request_for_another_shop_or_one_that_keeps_failing_is_set_aside_and_the_rest_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = start(dir);
    let demo = s.store_status()["orders"].as_i64().unwrap();
    post_order(
        &s,
        &order(
            9301,
            &person(9301, EMAIL, None),
            T0,
            &[("KIT-POUR", 1, "54.00")],
        ),
    );
    // One app serving two shops: a shop/redact for the other one removes nothing here.
    let body = br#"{"shop_id": 1, "shop_domain": "another-shop.myshopify.com"}"#;
    assert_eq!(s.webhook("shop/redact", "ev-sr-other", body), 200);
    s.wait_processed();
    let st = s.store_status();
    assert_eq!(
        (&st["orders"], &st["in_quarantine"]),
        (&json!(demo + 1), &json!(1)),
        "{st}"
    );
    let (_, q) = s.admin_get(&format!("/api/quarantine?store={STORE}"));
    assert!(q.contains("another-shop.myshopify.com"), "{q}");

    // An export it cannot write (the directory's place is taken by a file) is tried a few
    // times, then set aside; the orders behind it are applied meanwhile.
    std::fs::write(dir.join("exports"), b"not a directory").unwrap();
    let request = json!({"shop_domain": "test-store.myshopify.com",
        "customer": {"id": 9301, "email": EMAIL}, "data_request": {"id": 77}});
    let bytes = serde_json::to_vec(&request).unwrap();
    assert_eq!(
        s.webhook("customers/data_request", "ev-dr-fail", &bytes),
        200
    );
    post_order(
        &s,
        &order(
            9302,
            &person(9302, OTHER, None),
            T0,
            &[("KIT-POUR", 1, "54.00")],
        ),
    );
    let st = s.store_status();
    assert_eq!(
        (&st["orders"], &st["in_quarantine"]),
        (&json!(demo + 2), &json!(2)),
        "{st}"
    );
    let (_, q) = s.admin_get(&format!("/api/quarantine?store={STORE}"));
    assert!(q.contains("not applied after 5 tries"), "{q}");
    assert!(
        s.status()["notices"]
            .to_string()
            .contains("could not be parsed or applied"),
        "the status page says so"
    );
    // Once the cause is gone, a replay applies it; the other shop's request stays put.
    std::fs::remove_file(dir.join("exports")).unwrap();
    let (code, body) = s.admin_post(&format!("/api/quarantine/replay?store={STORE}"));
    assert_eq!(code, 200, "{body}");
    s.wait_processed();
    let file = dir
        .join("exports")
        .join(format!("{STORE}-data-request-77.json"));
    let export: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(export["found"], true);
    let st = s.store_status();
    assert_eq!(
        (&st["orders"], &st["in_quarantine"]),
        (&json!(demo + 2), &json!(1)),
        "{st}"
    );
    assert_eq!(st["privacy"]["exported"], 1, "{st}");
}

#[test]
fn what_arrives_while_an_erase_looks_is_erased_too_and_a_later_unsubscribe_stays_hashed() {
    use upsell_appliance::storage::privacy::Identity;
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let me = person(9401, EMAIL, Some(PHONE));
    post_order(&s, &order(9401, &me, T0, &[("KIT-POUR", 1, "54.00")]));
    let (code, body) = s.admin_post(&format!(
        "/api/customer/suppress?store={STORE}&contact={EMAIL}&reason=unsubscribed"
    ));
    assert_eq!(code, 200, "{body}");
    let storage = s.running().storage.clone();
    let now = Timestamp(T0 + 120_000);
    {
        // The erase holds the apply lock, as `customer erase` does; the writer does not
        // wait for it, so an order of theirs is committed after the look and before the
        // erase.
        let _applying = storage.apply_lock();
        let fp = storage
            .snapshot()
            .unwrap()
            .footprint(STORE, &Identity::parse(EMAIL).unwrap())
            .unwrap();
        let late = order(9402, &me, T0, &[("FLT-PAPER", 1, "8.00")]);
        let bytes = serde_json::to_vec(&late).unwrap();
        assert_eq!(s.webhook("orders/paid", "ev-late", &bytes), 200);
        // And the intakes write by contact meanwhile: a ticket, an unsubscribe by phone.
        for path in [
            format!("/api/customer/ticket-open?store={STORE}&contact={EMAIL}&ticket=T-LATE"),
            format!(
                "/api/customer/suppress?store={STORE}&contact=%2B15550009001&reason=unsubscribed"
            ),
        ] {
            let (code, body) = s.admin_post(&path);
            assert_eq!(code, 200, "{body}");
        }
        let done = upsell_appliance::privacy::erase(&storage, &fp, now, None).unwrap();
        assert_eq!(done.events, 2, "the late order's delivery too: {done:?}");
        assert_eq!(done.tickets, 1, "{done:?}");
        assert_eq!(done.suppressions_hashed, 2, "email and phone: {done:?}");
    }
    let snap = storage.snapshot().unwrap();
    assert!(snap.store_tickets(STORE).unwrap().is_empty());
    drop(snap);
    s.wait_processed();
    let (_, body) = s.admin_get(&format!("/api/customer/show?store={STORE}&contact={EMAIL}"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["customer"].is_null(),
        "not made again from the late order: {v}"
    );
    let (_, explain) = s.explain("9402");
    assert!(!explain.to_string().contains("erase.me"), "{explain}");

    // An unsubscribe after the erase (a touch already on its way) is kept under the hash.
    let (code, body) = s.admin_post(&format!(
        "/api/customer/suppress?store={STORE}&contact={EMAIL}&reason=complained"
    ));
    assert_eq!(code, 200, "{body}");
    let list = storage.snapshot().unwrap().suppression_list(STORE).unwrap();
    let keys: Vec<&str> = list.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        !keys.contains(&format!("email:{EMAIL}").as_str()),
        "{keys:?}"
    );
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("erased:")).count(),
        2,
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.contains("5550009001")), "{keys:?}");
    let (_, body) = s.admin_get(&format!("/api/customer/show?store={STORE}&contact={EMAIL}"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["suppressed"]["reason"], "complained", "{v}");
}
