//! The platforms' APIs against fake servers on 127.0.0.1:0: Shopify's token exchange and
//! refresh, `connect` registering and repairing subscriptions, BigCommerce orders fetched
//! after their thin webhooks, and reconciliation of orders whose webhooks were lost.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use upsell_appliance::config::{self, Origin};
use upsell_appliance::engine::Source;
use upsell_appliance::outbound::platform::Api;

use crate::cli::run;
use crate::fixtures::*;
use crate::support::*;

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub url: String,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn FnMut(&Seen) -> (u16, Vec<(String, String)>, String) + Send;

/// A platform API: `handler` answers every request; every request is kept in `seen`.
pub struct FakeApi {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeApi {
    pub fn start(mut handler: Box<Handler>) -> FakeApi {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for mut rq in server.incoming_requests() {
                let mut body = String::new();
                std::io::Read::read_to_string(rq.as_reader(), &mut body).unwrap();
                let s = Seen {
                    method: rq.method().to_string(),
                    url: rq.url().to_string(),
                    body,
                    headers: rq
                        .headers()
                        .iter()
                        .map(|h| (h.field.to_string(), h.value.to_string()))
                        .collect(),
                };
                log.lock().unwrap().push(s.clone());
                let (status, headers, body) = handler(&s);
                let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
                for (k, v) in headers {
                    resp.add_header(
                        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap(),
                    );
                }
                let _ = rq.respond(resp);
            }
        });
        FakeApi { url, seen }
    }

    fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| pred(s)).count()
    }
}

fn ok(body: Value) -> (u16, Vec<(String, String)>, String) {
    (
        200,
        vec![("Content-Type".into(), "application/json".into())],
        body.to_string(),
    )
}

/// The test config with `[stores.api]` tables: `shopify_api` for the Shopify store, and
/// the BigCommerce store's pointing at `bc_url` when given.
fn config_with(dir: &Path, shopify_api: &str, bc_url: Option<&str>) -> config::Config {
    let mut text = config_text_with(dir, "127.0.0.1:0", "127.0.0.1:0", shopify_api);
    if let Some(url) = bc_url {
        text = text.replace(
            "webhook_secret_header = \"X-Upsell-Secret\"\n",
            &format!("webhook_secret_header = \"X-Upsell-Secret\"\n[stores.api]\nstore_hash = \"abc123\"\naccess_token = \"bc-token\"\nbase_url = \"{url}\"\n"),
        );
    }
    config::parse(&text, Path::new("/"), Origin::Demo).expect("test config is valid")
}

fn agent() -> ureq::Agent {
    upsell_appliance::outbound::agent(Duration::from_secs(2), Duration::from_secs(5))
}

#[test]
fn shopify_tokens_are_exchanged_then_refreshed_before_expiry_and_after_a_401() {
    let tokens = Arc::new(Mutex::new(0u32));
    let issued = tokens.clone();
    let fake = FakeApi::start(Box::new(move |s| {
        if s.url == "/admin/oauth/access_token" {
            assert_eq!(s.method, "POST");
            assert!(
                s.body.contains("grant_type=client_credentials"),
                "{}",
                s.body
            );
            assert!(s.body.contains("client_id=app-client-id"), "{}", s.body);
            assert!(
                s.body.contains("client_secret=app-client-secret"),
                "{}",
                s.body
            );
            let mut n = issued.lock().unwrap();
            *n += 1;
            // Short-lived, so the test sees a refresh: a tenth of it before expiry.
            return ok(
                json!({"access_token": format!("shpat_tok{n}"), "scope": "read_orders", "expires_in": 2}),
            );
        }
        match s.header("x-shopify-access-token") {
            // The second token is revoked at once: the client exchanges again, once.
            Some("shpat_tok2") => (
                401,
                vec![],
                r#"{"errors":"[API] Invalid API key or access token"}"#.into(),
            ),
            Some(t) if t.starts_with("shpat_tok") => ok(json!({"shop": {"name": "Test Store"}})),
            other => panic!("unexpected token {other:?}"),
        }
    }));
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!(
        "[stores.api]\nclient_id = \"app-client-id\"\nclient_secret = \"app-client-secret\"\nbase_url = \"{}\"\n",
        fake.url
    );
    let config = config_with(tmp.path(), &extra, None);
    let api = Api::of(config.store(STORE).unwrap(), agent()).unwrap();
    assert_eq!(api.check().unwrap(), "Test Store");
    assert_eq!(api.check().unwrap(), "Test Store");
    assert_eq!(
        *tokens.lock().unwrap(),
        1,
        "one exchange while the token is fresh"
    );
    std::thread::sleep(Duration::from_millis(2_000));
    // Expired: exchanged again (tok2), which the shop refuses, so once more (tok3).
    assert_eq!(api.check().unwrap(), "Test Store");
    assert_eq!(*tokens.lock().unwrap(), 3);
    let calls: Vec<Option<String>> = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.url.ends_with("/shop.json"))
        .map(|s| s.header("x-shopify-access-token").map(str::to_string))
        .collect();
    assert_eq!(
        calls,
        ["shpat_tok1", "shpat_tok1", "shpat_tok2", "shpat_tok3"].map(|t| Some(t.to_string()))
    );
    assert!(fake.seen.lock().unwrap()[1]
        .url
        .starts_with("/admin/api/2026-10/"));

    // Refused credentials are an error that says where to look, not a retry loop.
    let bad = FakeApi::start(Box::new(|_| {
        (400, vec![], r#"{"error":"invalid_client"}"#.into())
    }));
    let extra = format!(
        "[stores.api]\nclient_id = \"x\"\nclient_secret = \"y\"\nbase_url = \"{}\"\n",
        bad.url
    );
    let config = config_with(tmp.path(), &extra, None);
    let e = Api::of(config.store(STORE).unwrap(), agent())
        .unwrap()
        .check()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refused the credentials (400)") && e.contains("[stores.api] of store main"),
        "{e}"
    );
    assert_eq!(bad.count(|_| true), 1);

    // An app made in the admin before 2026: its static token, no exchange.
    let fixed = FakeApi::start(Box::new(|s| {
        assert_eq!(s.header("x-shopify-access-token"), Some("shpat_static"));
        ok(json!({"shop": {"name": "Old App Store"}}))
    }));
    let extra = format!(
        "[stores.api]\naccess_token = \"shpat_static\"\nbase_url = \"{}\"\n",
        fixed.url
    );
    let config = config_with(tmp.path(), &extra, None);
    let api = Api::of(config.store(STORE).unwrap(), agent()).unwrap();
    assert_eq!(api.check().unwrap(), "Old App Store");
}

/// What a fake Shopify shop holds, in memory: its webhook subscriptions, orders, products
/// (their variants with an `inventory_item_id` and per-location `levels`) and discount
/// codes. A test keeps clones of the parts it changes or reads.
#[derive(Clone, Default)]
struct Shop {
    hooks: Arc<Mutex<Vec<Value>>>,
    orders: Arc<Mutex<Vec<Value>>>,
    products: Arc<Mutex<Vec<Value>>>,
    codes: Arc<Mutex<Vec<String>>>,
}

/// A fake Shopify Admin API over `shop`.
fn fake_shop(shop: &Shop) -> FakeApi {
    let Shop {
        hooks,
        orders,
        products,
        codes,
    } = shop.clone();
    let rules: Arc<Mutex<Vec<Value>>> = Arc::default();
    FakeApi::start(Box::new(move |s| {
        assert_eq!(s.header("x-shopify-access-token"), Some("shpat_test"));
        let path = s.url.split('?').next().unwrap().to_string();
        match (s.method.as_str(), path.as_str()) {
            ("GET", "/admin/api/2026-10/shop.json") => ok(json!({"shop": {"name": "Test Store"}})),
            ("GET", "/admin/api/2026-10/webhooks.json") => {
                ok(json!({"webhooks": *hooks.lock().unwrap()}))
            }
            ("POST", "/admin/api/2026-10/webhooks.json") => {
                let mut w: Value =
                    serde_json::from_str::<Value>(&s.body).unwrap()["webhook"].clone();
                let mut h = hooks.lock().unwrap();
                w["id"] = json!(1000 + h.len());
                h.push(w.clone());
                (201, vec![], json!({"webhook": w}).to_string())
            }
            ("PUT", p) if p.starts_with("/admin/api/2026-10/webhooks/") => {
                let w: Value = serde_json::from_str::<Value>(&s.body).unwrap()["webhook"].clone();
                let mut h = hooks.lock().unwrap();
                let found = h
                    .iter_mut()
                    .find(|x| {
                        x["id"].as_u64().map(|i| i.to_string()).as_deref() == w["id"].as_str()
                    })
                    .unwrap();
                found["address"] = w["address"].clone();
                ok(json!({"webhook": found.clone()}))
            }
            ("GET", "/admin/api/2026-10/orders.json") => {
                assert!(
                    s.url.contains("status=any") && s.url.contains("updated_at_min="),
                    "{}",
                    s.url
                );
                ok(json!({"orders": *orders.lock().unwrap()}))
            }
            ("POST", "/admin/api/2026-10/price_rules.json") => {
                let mut r: Value =
                    serde_json::from_str::<Value>(&s.body).unwrap()["price_rule"].clone();
                let mut rules = rules.lock().unwrap();
                r["id"] = json!(500 + rules.len());
                rules.push(r.clone());
                (201, vec![], json!({"price_rule": r}).to_string())
            }
            ("POST", p) if p.starts_with("/admin/api/2026-10/price_rules/") => {
                let c: Value =
                    serde_json::from_str::<Value>(&s.body).unwrap()["discount_code"].clone();
                let code = c["code"].as_str().unwrap().to_string();
                let mut codes = codes.lock().unwrap();
                if codes.contains(&code) {
                    return (
                        422,
                        vec![],
                        r#"{"errors":{"code":["must be unique"]}}"#.into(),
                    );
                }
                codes.push(code);
                (201, vec![], json!({"discount_code": c}).to_string())
            }
            // Shopify answers a lookup of an existing code with a redirect to it.
            ("GET", "/admin/api/2026-10/discount_codes/lookup.json") => {
                let code = s.url.split("code=").nth(1).unwrap().to_string();
                if code == "THANKS10" || codes.lock().unwrap().contains(&code) {
                    let to = "/admin/api/2026-10/price_rules/1/discount_codes/2.json";
                    (303, vec![("Location".into(), to.into())], String::new())
                } else {
                    (404, vec![], r#"{"errors":"Not Found"}"#.into())
                }
            }
            ("GET", "/admin/api/2026-10/products.json") => {
                ok(json!({"products": *products.lock().unwrap()}))
            }
            // Inventory items are the products' variants' (`inventory_item_id`), and their
            // levels per location are the test's `levels`.
            ("GET", p) if p.starts_with("/admin/api/2026-10/inventory_items/") => {
                let id = p.rsplit('/').next().unwrap().trim_end_matches(".json");
                let v = variant_of_item(&products.lock().unwrap(), id);
                ok(
                    json!({"inventory_item": {"id": v["inventory_item_id"], "sku": v["sku"], "tracked": true}}),
                )
            }
            ("GET", "/admin/api/2026-10/inventory_levels.json") => {
                let id = s.url.split("inventory_item_ids=").nth(1).unwrap();
                let v = variant_of_item(&products.lock().unwrap(), id);
                let levels: Vec<Value> = v["levels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(i, n)| json!({"inventory_item_id": v["inventory_item_id"], "location_id": i + 1, "available": n}))
                    .collect();
                ok(json!({"inventory_levels": levels}))
            }
            other => panic!("unexpected request {other:?}"),
        }
    }))
}

/// The variant whose inventory item is `id`.
fn variant_of_item(products: &[Value], id: &str) -> Value {
    products
        .iter()
        .flat_map(|p| p["variants"].as_array().unwrap().iter())
        .find(|v| {
            v["inventory_item_id"]
                .as_u64()
                .map(|i| i.to_string())
                .as_deref()
                == Some(id)
        })
        .expect("a known inventory item")
        .clone()
}

#[test]
fn connect_registers_missing_subscriptions_repairs_a_moved_one_and_is_idempotent() {
    let hooks = Arc::new(Mutex::new(vec![
        // Pointing at this store's path on an address the appliance no longer has.
        json!({"id": 7, "topic": "orders/paid", "address": "https://old-host.example.com/webhooks/main", "format": "json"}),
        // Someone else's: left alone.
        json!({"id": 8, "topic": "orders/create", "address": "https://other-app.example.com/hook", "format": "json"}),
    ]));
    let fake = fake_shop(&Shop {
        hooks: hooks.clone(),
        ..Shop::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text_with(
        tmp.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &format!(
            "[stores.api]\naccess_token = \"shpat_test\"\nbase_url = \"{}\"\n",
            fake.url
        ),
    );
    let path = tmp.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = path.to_str().unwrap();

    let (code, out, err) = run(
        &["connect", "--config", cfg, "--store", "main", "--json"],
        tmp.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["shop"], "Test Store");
    let actions: Vec<(String, String)> = v["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["topic"].as_str().unwrap().into(),
                s["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(actions.len(), 10);
    assert!(
        actions.contains(&("orders/paid".into(), "repaired".into())),
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| a.1 == "created").count(),
        9,
        "{actions:?}"
    );
    let h = hooks.lock().unwrap().clone();
    assert_eq!(h.len(), 11, "nine created, none twice");
    assert_eq!(h[0]["address"], "https://upsell.example.com/webhooks/main");
    assert_eq!(
        h[1]["address"], "https://other-app.example.com/hook",
        "another app's is untouched"
    );
    assert!(h[2..].iter().all(
        |w| w["address"] == "https://upsell.example.com/webhooks/main" && w["format"] == "json"
    ));

    // Again: nothing to do.
    let (code, out, err) = run(&["connect", "--config", cfg, "--store", "main"], tmp.path());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("already there").count(), 10, "{out}");
    assert!(out.contains("compliance webhooks"), "{out}");
    assert_eq!(hooks.lock().unwrap().len(), 11);
    assert_eq!(
        fake.count(|s| s.method != "GET"),
        10,
        "the second run changed nothing"
    );

    // A store without [stores.api] is told what to add.
    let (code, _, err) = run(&["connect", "--config", cfg, "--store", "woo"], tmp.path());
    assert_ne!(code, 0);
    assert!(err.contains("store woo has no [stores.api]"), "{err}");
}

#[test]
fn a_bigcommerce_thin_webhook_becomes_the_full_order_after_a_fetch_that_fails_once() {
    let failed = Arc::new(Mutex::new(false));
    let f = failed.clone();
    let fake = FakeApi::start(Box::new(move |s| {
        assert_eq!(s.header("x-auth-token"), Some("bc-token"));
        let path = s.url.split('?').next().unwrap();
        match path {
            "/v2/orders/250" => {
                let mut failed = f.lock().unwrap();
                if !*failed {
                    *failed = true;
                    return (503, vec![], "upstream timeout".into());
                }
                ok(
                    json!({"id": 250, "date_created": "Fri, 20 Nov 2026 15:00:00 +0000",
                    "date_modified": "Fri, 20 Nov 2026 15:00:30 +0000", "status_id": 11,
                    "currency_code": "USD", "total_inc_tax": "79.0000", "subtotal_inc_tax": "69.0000",
                    "customer_id": 42, "refunded_amount": "0.0000",
                    "billing_address": {"email": "pat@example.com", "phone": "", "country_iso2": "US", "state": "Texas", "zip": "78701"}}),
                )
            }
            "/v2/orders/250/products" => ok(json!([
                {"id": 1, "order_id": 250, "product_id": 77, "variant_id": 0, "sku": "MUG", "name": "Mug", "quantity": 1, "price_inc_tax": "19.0000"},
                {"id": 2, "order_id": 250, "product_id": 78, "variant_id": 5, "sku": "BEANS", "name": "Beans", "quantity": 2, "price_inc_tax": "25.0000"}
            ])),
            other => panic!("unexpected request {other}"),
        }
    }));
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_config(
        config_with(tmp.path(), "", Some(&fake.url)),
        tmp.path(),
        Default::default(),
    );
    let body = json!({"store_id": "1025646", "producer": "stores/abc123", "scope": "store/order/created",
        "data": {"type": "order", "id": 250}, "hash": "h-250", "created_at": 1_763_650_800});
    let (status, _) = s.post(
        &format!("/webhooks/{BC_STORE}"),
        &[
            ("Content-Type", "application/json"),
            ("X-Upsell-Secret", BC_SECRET),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let storage = &s.running().storage;
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = loop {
        let o = storage.order(BC_STORE, "250").unwrap();
        if let Some(o) = o.filter(|o| o.order.is_some()) {
            break o;
        }
        assert!(Instant::now() < deadline, "the order was never fetched");
        std::thread::sleep(Duration::from_millis(100));
    };
    let order = state.order.unwrap();
    assert_eq!((order.total, order.lines.len()), (7900, 2));
    assert_eq!(order.contact_email(), Some("pat@example.com"));
    assert_eq!(state.source, Some(Source::Fetched));
    assert_eq!(state.fetch_requested, None, "the fetch is done");
    assert!(state.customer.is_some());
    assert_eq!(
        fake.count(|s| s.url == "/v2/orders/250"),
        2,
        "failed once, then fetched"
    );
    let st = &s.status()["stores"][2];
    assert_eq!(
        (st["orders"].as_i64(), st["fetched"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(st["webhooks"]["accepted"], 1, "the fetch is not a webhook");

    // The same notice again changes nothing and fetches nothing.
    let (status, _) = s.post(
        &format!("/webhooks/{BC_STORE}"),
        &[
            ("Content-Type", "application/json"),
            ("X-Upsell-Secret", BC_SECRET),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    s.wait_processed();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(fake.count(|s| s.url == "/v2/orders/250"), 2);
}

fn paid(id: u64, email: &str) -> Value {
    let spec = OrderSpec {
        email: email.to_string(),
        customer_id: Some(8_000_000_000 + id),
        ..OrderSpec::three_lines(id)
    };
    serde_json::from_slice(&order_json(&spec)).unwrap()
}

#[test]
fn reconciliation_feeds_orders_whose_webhooks_were_lost_once_even_when_the_webhooks_come_later() {
    // The shop lists three orders the appliance never heard of, and holds only one of the
    // subscriptions it needs (the rest were deleted after failed retries).
    let orders = Arc::new(Mutex::new(vec![
        paid(5001, "a@example.com"),
        paid(5002, "b@example.com"),
        paid(5003, "c@example.com"),
    ]));
    let hooks = Arc::new(Mutex::new(vec![
        json!({"id": 1, "topic": "orders/paid", "address": "https://upsell.example.com/webhooks/main"}),
    ]));
    let fake = fake_shop(&Shop {
        hooks: hooks.clone(),
        orders: orders.clone(),
        ..Shop::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    // The job runs at its slot by the service's clock: every minute here, on a test clock.
    let extra = format!(
        "[stores.api]\naccess_token = \"shpat_test\"\nbase_url = \"{}\"\n",
        fake.url
    );
    let text = config_text_with(tmp.path(), "127.0.0.1:0", "127.0.0.1:0", &extra).replace(
        "max_body_kb = 256\n",
        "max_body_kb = 256\n[jobs]\nsync = \"* * * * *\"\n",
    );
    let config = config::parse(&text, Path::new("/"), Origin::Demo).unwrap();
    let now = upsell_appliance::engine::Timestamp(1_763_650_800_000 + 3_600_000); // 2026-11-20 16:00Z
    let clock = Arc::new(upsell_appliance::clock::TestClock::at(now));
    let s = TestServer::start_config(
        config,
        tmp.path(),
        upsell_appliance::app::Options {
            clock: clock.clone(),
            ..Default::default()
        },
    );
    let storage = s.running().storage.clone();
    assert!(storage.order(STORE, "5001").unwrap().is_none());
    let deadline = Instant::now() + Duration::from_secs(20);
    while storage.sync_state(STORE).unwrap().last_ok_at.is_none() {
        // A minute on: the job's next slot (the jobs thread may have started after a first
        // advance, so its first slot comes a minute later).
        clock.advance(60_000);
        assert!(
            Instant::now() < deadline,
            "the sync job never ran: {:?}",
            storage.sync_state(STORE).unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    s.wait_processed();
    let touches_of = |id: &str| {
        storage
            .snapshot()
            .unwrap()
            .touches_of(STORE, id)
            .unwrap()
            .len()
    };
    for id in ["5001", "5002", "5003"] {
        let o = storage.order(STORE, id).unwrap().unwrap();
        assert_eq!(o.source, Some(Source::Reconciled), "order {id}");
        assert!(o.order.is_some());
    }
    let planned: Vec<usize> = ["5001", "5002", "5003"]
        .iter()
        .map(|id| touches_of(id))
        .collect();
    assert!(
        planned.iter().all(|n| *n > 0),
        "reconciled orders are planned like any other: {planned:?}"
    );
    assert_eq!(s.explain("5001").1["source"], "reconciled");
    let st = s.store_status();
    assert_eq!(st["orders"], 3);
    assert_eq!(st["reconciled"], 3);
    assert_eq!(
        st["webhooks"]["accepted"], 0,
        "what the sync found is not a webhook"
    );
    assert_eq!(st["sync"]["last_found"], 3);
    assert_eq!(
        st["sync"]["missing_subscriptions"]
            .as_array()
            .unwrap()
            .len(),
        9
    );
    let notices = s.status()["notices"].to_string();
    assert!(
        notices.contains("found 3 order(s) whose webhooks never arrived"),
        "{notices}"
    );
    assert!(
        notices
            .contains("holds no active webhook subscription to this appliance for products/update, inventory_levels/update, orders/create"),
        "{notices}"
    );

    // The lost webhooks arrive after all: nothing is counted, planned or sent twice.
    for id in [5001u64, 5002, 5003] {
        let body = serde_json::to_vec(&orders.lock().unwrap()[(id - 5001) as usize]).unwrap();
        assert_eq!(s.webhook("orders/paid", &format!("late-{id}"), &body), 200);
    }
    s.wait_processed();
    let st = s.store_status();
    assert_eq!(
        (st["orders"].as_i64(), st["webhooks"]["accepted"].as_i64()),
        (Some(3), Some(3))
    );
    assert_eq!(st["customers"], 3);
    let again: Vec<usize> = ["5001", "5002", "5003"]
        .iter()
        .map(|id| touches_of(id))
        .collect();
    assert_eq!(again, planned);
    assert_eq!(
        storage.order(STORE, "5001").unwrap().unwrap().source,
        Some(Source::Reconciled)
    );

    // The next sync lists them again (the overlap) and finds nothing new.
    let (code, body) = s.admin_post(&format!("/api/sync?store={STORE}"));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            v["synced"]["listed"].as_u64(),
            v["synced"]["missed"].as_u64()
        ),
        (Some(3), Some(0))
    );
    assert_eq!(s.store_status()["reconciled"], 3);
    let lists = fake.count(|r| r.url.contains("/orders.json"));
    assert!(lists >= 2, "{lists}");
    let (code, metrics) = s.admin_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("upsell_reconciled_orders_total{store=\"main\"} 3"),
        "{metrics}"
    );
}

#[test]
fn stock_synced_to_zero_makes_the_next_due_touch_skip_its_offer() {
    use crate::cadence::{customer, order, post_order, reason, wait_state};
    const T0: i64 = 1_795_186_800_000; // 2026-11-20T15:00:00Z
    let products: Arc<Mutex<Vec<Value>>> = Arc::default();
    let fake = fake_shop(&Shop {
        products: products.clone(),
        ..Shop::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(upsell_appliance::clock::TestClock::at(
        upsell_appliance::engine::Timestamp(T0 + 60_000),
    ));
    let extra = format!(
        "[stores.api]\naccess_token = \"shpat_test\"\nbase_url = \"{}\"\n",
        fake.url
    );
    let s = TestServer::start_demo_with(tmp.path(), clock.clone(), &extra);
    post_order(
        &s,
        &order(
            9931,
            &customer(8931, false),
            T0,
            &[("KIT-POUR", 1, "54.00")],
        ),
    );
    let (_, plan) = s.explain("9931");
    let sku = plan["offer"]["sku"]
        .as_str()
        .expect("an offer with a SKU")
        .to_string();
    let storage = s.running().storage.clone();
    let key = format!("sku:{sku}");
    let before = storage
        .snapshot()
        .unwrap()
        .variant(STORE, &key)
        .unwrap()
        .unwrap();
    assert!(before.inventory.is_none_or(|n| n > 10), "{before:?}");

    // The shop sold out of the offered product: the sync brings its stock (and ids) in.
    *products.lock().unwrap() = vec![json!({
        "id": 4242, "title": before.title, "handle": before.handle, "status": "active",
        "product_type": "Brewing", "vendor": "Acme", "tags": "",
        "variants": [{"id": 4243, "sku": sku, "title": "Default Title", "price": "19.00",
            "compare_at_price": null, "inventory_quantity": 0, "inventory_management": "shopify",
            "inventory_item_id": 4244, "levels": [10, 20]}]
    })];
    let (code, body) = s.admin_post(&format!("/api/sync?store={STORE}"));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["synced"]["catalog_variants"], 1);
    let after = storage
        .snapshot()
        .unwrap()
        .variant(STORE, &key)
        .unwrap()
        .unwrap();
    assert_eq!((after.inventory, after.price), (Some(0), Some(1900)));
    assert_eq!(after.variant_id.as_deref(), Some("4243"));
    assert_eq!(
        after.consumable_days, before.consumable_days,
        "what only the store's catalog says stays"
    );

    // touch-1 carries the offer: at its due time it is skipped, not sent.
    clock.set(upsell_appliance::engine::Timestamp(T0 + 20 * 60_000));
    let t = wait_state(&s, "9931", "touch1", "skipped");
    assert!(reason(&t).contains("down to 0 in stock"), "{t}");

    // Restocked at two locations: Shopify's inventory_levels/update names only the item; the
    // levels are fetched and added up.
    let body = br#"{"inventory_item_id": 4244, "location_id": 2, "available": 20, "updated_at": "2026-11-20T15:30:00-05:00"}"#;
    assert_eq!(s.webhook("inventory_levels/update", "inv-1", body), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = storage
            .snapshot()
            .unwrap()
            .variant(STORE, &key)
            .unwrap()
            .unwrap();
        if v.inventory == Some(30) {
            break;
        }
        assert!(Instant::now() < deadline, "stock never refreshed: {v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fake.count(|r| r.url.contains("inventory_levels.json")), 1);
}

#[test]
fn connect_checks_that_each_recipes_static_discount_code_exists() {
    let fake = fake_shop(&Shop::default());
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text_with(
        tmp.path(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &format!(
            "[stores.api]\naccess_token = \"shpat_test\"\nbase_url = \"{}\"\n",
            fake.url
        ),
    )
    .replace(
        "holdout_percent = 0\n",
        "holdout_percent = 0\ndiscount_codes = { welcome = \"THANKS10\", bundle = \"NO SUCH\" }\n",
    );
    let path = tmp.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = path.to_str().unwrap();
    let (code, out, err) = run(&["connect", "--config", cfg, "--store", "main"], tmp.path());
    assert_eq!(code, 1, "a missing code fails the command: {out}{err}");
    assert!(
        out.contains("discount code THANKS10 (welcome): exists"),
        "{out}"
    );
    assert!(
        out.contains("discount code NO SUCH (bundle): MISSING in the store"),
        "{out}"
    );
    assert_eq!(
        fake.count(|r| r.url.contains("code=NO%20SUCH")),
        1,
        "the code is URL-encoded"
    );
    let (code, out, _) = run(
        &["connect", "--config", cfg, "--store", "main", "--json"],
        tmp.path(),
    );
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["discount_codes"][0],
        json!({"recipe": "welcome", "code": "THANKS10", "exists": true})
    );
}

#[test]
fn each_offer_gets_one_code_of_its_own_even_when_a_crash_lost_our_record_of_it() {
    use crate::cadence::{customer, order, post_order, wait_line};
    use upsell_appliance::pipeline::codes::code_name;
    const T0: i64 = 1_795_186_800_000; // 2026-11-20T15:00:00Z
    const MIN: i64 = 60_000;
    let codes: Arc<Mutex<Vec<String>>> = Arc::default();
    let fake = fake_shop(&Shop {
        codes: codes.clone(),
        ..Shop::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = Arc::new(upsell_appliance::clock::TestClock::at(
        upsell_appliance::engine::Timestamp(T0 + MIN),
    ));
    let extra = format!(
        "mode = \"live\"\n[stores.api]\naccess_token = \"shpat_test\"\nbase_url = \"{}\"\n",
        fake.url
    );
    let text = config_text_with(dir, "127.0.0.1:0", "127.0.0.1:0", &extra).replace(
        "holdout_percent = 0\n",
        "holdout_percent = 0\nunique_codes = { welcome = 10, replenishment = 10, upgrade = 10, bundle = 10, cross_sell = 10 }\n",
    );
    let config = config::parse(&text, Path::new("/"), Origin::Demo).unwrap();
    let options = || upsell_appliance::app::Options {
        clock: clock.clone(),
        ..Default::default()
    };
    let mut s = TestServer::start_config(config.clone(), dir, options());
    import_demo(&s.running().storage, &config, STORE);
    let key = s.running().storage.link_key(STORE).unwrap();
    let (a, b) = (code_name(&key, "9941"), code_name(&key, "9942"));
    // Order 9941's code was made before a crash kept the appliance from recording it.
    codes.lock().unwrap().push(a.clone());
    for (o, c) in [(9941, 8941), (9942, 8942)] {
        post_order(
            &s,
            &order(o, &customer(c, false), T0, &[("KIT-POUR", 1, "54.00")]),
        );
    }
    clock.set(upsell_appliance::engine::Timestamp(T0 + 20 * MIN));
    let l1 = wait_line(dir, "9941", "touch1");
    let l2 = wait_line(dir, "9942", "touch1");
    assert_eq!(l1["offer"]["discount_code"], a.as_str(), "{l1}");
    assert_eq!(l2["offer"]["discount_code"], b.as_str(), "{l2}");
    let posts = |f: &FakeApi, part: &str| f.count(|r| r.method == "POST" && r.url.contains(part));
    assert_eq!(
        posts(&fake, "/price_rules.json"),
        1,
        "9942's only: 9941's code was found made"
    );
    assert_eq!(posts(&fake, "/discount_codes.json"), 1);
    assert_eq!(*codes.lock().unwrap(), vec![a.clone(), b.clone()]);
    let rule: Value = {
        let seen = fake.seen.lock().unwrap();
        let r = seen
            .iter()
            .find(|r| r.url.ends_with("/price_rules.json"))
            .unwrap();
        serde_json::from_str::<Value>(&r.body).unwrap()["price_rule"].clone()
    };
    assert_eq!(
        (rule["value"].as_str(), rule["usage_limit"].as_u64()),
        (Some("-10.0"), Some(1))
    );
    assert_eq!(rule["value_type"], "percentage");
    assert_eq!(rule["title"], b.as_str());
    assert_eq!(
        rule["ends_at"], "2026-11-27T15:00:00Z",
        "valid as long as the offer: 7 days"
    );

    // After a restart, touch-2 carries the same code, read from the record: no API call.
    s.stop();
    let calls = fake.count(|_| true);
    let s = TestServer::start_config(config, dir, options());
    clock.set(upsell_appliance::engine::Timestamp(T0 + 4 * 24 * 60 * MIN));
    for (o, code) in [("9941", &a), ("9942", &b)] {
        let l = wait_line(dir, o, "touch2");
        assert_eq!(l["offer"]["discount_code"], code.as_str(), "{l}");
    }
    assert_eq!(
        fake.count(|_| true),
        calls,
        "nothing asked of the shop again"
    );
    drop(s);
}

/// A thin webhook's body for BigCommerce order `id`, made at `at` (seconds).
fn thin(id: u64, hash: &str, at: i64) -> Vec<u8> {
    json!({"store_id": "1025646", "producer": "stores/abc123", "scope": "store/order/updated",
        "data": {"type": "order", "id": id}, "hash": hash, "created_at": at})
    .to_string()
    .into_bytes()
}

fn post_thin(s: &TestServer, body: &[u8]) {
    let (status, _) = s.post(
        &format!("/webhooks/{BC_STORE}"),
        &[
            ("Content-Type", "application/json"),
            ("X-Upsell-Secret", BC_SECRET),
        ],
        body,
    );
    assert_eq!(status, 200);
}

#[test]
fn a_fetch_answers_only_the_requests_made_before_it_was_asked_for() {
    use upsell_appliance::outbound::platform::ApiOrder;
    use upsell_appliance::pipeline::sync::record;
    use upsell_appliance::storage::NewEvent;
    // No API for the store: the fetches are committed by hand, in the order a race makes.
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(tmp.path(), Default::default());
    let storage = s.running().storage.clone();
    post_thin(&s, &thin(260, "h-1", 1_763_650_800));
    s.wait_processed();
    let requested = |storage: &upsell_appliance::storage::Storage| {
        storage
            .order(BC_STORE, "260")
            .unwrap()
            .unwrap()
            .fetch_requested
            .map(|t| t.0)
    };
    assert_eq!(requested(&storage), Some(1_763_650_800_000));
    // A fetch for that request is under way when the order changes again.
    post_thin(&s, &thin(260, "h-2", 1_763_650_900));
    s.wait_processed();
    let body = json!({"order": {"id": 260, "date_created": "Thu, 20 Nov 2025 15:00:00 +0000",
        "date_modified": "Thu, 20 Nov 2025 15:00:30 +0000", "status_id": 11, "currency_code": "USD",
        "total_inc_tax": "10.00", "customer_id": 0, "billing_address": {"email": "r@example.com"}},
        "products": [], "refunds": []});
    let fetched = || ApiOrder {
        id: "260".into(),
        updated_at: upsell_appliance::engine::Timestamp(1_763_650_830_000),
        topic: upsell_appliance::ingest::bigcommerce::FETCHED,
        body: body.to_string().into_bytes(),
        complete: true,
    };
    let config = test_config(tmp.path());
    let store = config.store(BC_STORE).unwrap();
    let commit = |asked: i64| {
        let key = format!("fetched:260:{asked}");
        let now = upsell_appliance::engine::Timestamp(1_763_651_000_000);
        let rec = record(store, &fetched(), Source::Fetched, key, now);
        storage
            .commit_deliveries(&[NewEvent::encode(&rec).unwrap()], &[], now)
            .unwrap();
    };
    // The first fetch lands: the order is known, but the second request still stands.
    commit(1_763_650_800_000);
    s.wait_processed();
    let o = storage.order(BC_STORE, "260").unwrap().unwrap();
    assert!(o.order.is_some());
    assert_eq!(o.fetch_requested.map(|t| t.0), Some(1_763_650_900_000));
    // The fetch for the second request answers it, though the order did not change.
    commit(1_763_650_900_000);
    s.wait_processed();
    assert_eq!(requested(&storage), None);
}

#[test]
fn a_platform_that_keeps_failing_does_not_hold_up_a_stop() {
    // Every fetch fails at once: the API waits 1, 2, 4 and 8 s between its attempts.
    let fake = FakeApi::start(Box::new(|_| (503, vec![], "down for maintenance".into())));
    let tmp = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_config(
        config_with(tmp.path(), "", Some(&fake.url)),
        tmp.path(),
        Default::default(),
    );
    post_thin(&s, &thin(270, "h-270", 1_763_650_800));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.count(|_| true) < 2 {
        assert!(Instant::now() < deadline, "never fetched");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Between the second and the third attempt: stopping does not wait the 2 s out.
    let t = Instant::now();
    s.stop();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(fake.count(|_| true) <= 3);
}
