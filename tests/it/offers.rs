//! The thank-you page offer over HTTP: the offer API and who may read it (order tokens,
//! Shopify session tokens), CORS, accept and decline with their feedback counters, the
//! hosted offer page that offer messages link to, expired offers, the widget asset.

use std::sync::Arc;

use base64::Engine as _;
use hmac::Mac as _;
use serde_json::{json, Value};
use upsell_appliance::clock::TestClock;
use upsell_appliance::engine::Timestamp;

use crate::scheduler::{explain, outbox, touch, wait_state};
use crate::support::{no_redirects, TestServer, SECRET, STORE};

const T0: i64 = 1_790_000_000_000;
const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;
const CLIENT_ID: &str = "client-123";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The demo store with its app's client id, one paid first order (a welcome offer), the
/// clock a minute after it.
pub(crate) fn start(dir: &std::path::Path) -> (TestServer, Arc<TestClock>) {
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = TestServer::start_demo_with(
        dir,
        clock.clone(),
        &format!("shopify_client_id = \"{CLIENT_ID}\""),
    );
    place(&s, 9901, 8901, T0, &[("KIT-POUR", "54.00")]);
    wait_state(&s, "9901", "touch1", "scheduled");
    (s, clock)
}

/// Posts a paid order `id` of customer `customer` (Lin, with a phone, subscribed to
/// email) placed at `at` with `(sku, price)` lines.
pub(crate) fn place(s: &TestServer, id: u64, customer: u64, at: i64, lines: &[(&str, &str)]) {
    let total: f64 = lines.iter().map(|(_, p)| p.parse::<f64>().unwrap()).sum();
    let items: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, (sku, price))| {
            json!({"id": i + 1, "sku": sku, "quantity": 1, "price": price, "title": sku,
                "requires_shipping": false})
        })
        .collect();
    let email = format!("c{customer}@example.com");
    let body = serde_json::to_vec(&json!({
        "id": id, "name": format!("#{id}"), "email": email, "phone": "+16175550100",
        "created_at": Timestamp(at).to_rfc3339(), "updated_at": Timestamp(at).to_rfc3339(),
        "currency": "USD", "total_price": format!("{total:.2}"), "financial_status": "paid",
        "line_items": items,
        "customer": {"id": customer, "email": email, "first_name": "Lin",
            "email_marketing_consent": {"state": "subscribed"}}
    }))
    .unwrap();
    assert_eq!(s.webhook("orders/paid", &format!("o{id}"), &body), 200);
}

/// The store's order-token key, as `offer widget` gives it.
pub(crate) fn key(s: &TestServer) -> String {
    let (code, body) = s.admin_get(&format!("/api/offer/widget?store={STORE}"));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["snippet"]
        .as_str()
        .unwrap()
        .contains(v["key"].as_str().unwrap()));
    v["key"].as_str().unwrap().to_string()
}

pub(crate) fn token(key: &str, order: &str) -> String {
    upsell_appliance::engine::offer::order_token(key, STORE, order)
}

/// GET with headers: (status, headers we look at, body).
pub(crate) fn get(
    s: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let mut rq = no_redirects().get(&s.url(path));
    for (k, v) in headers {
        rq = rq.header(*k, *v);
    }
    let mut r = rq.call().unwrap();
    let cors = r
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_string());
    (
        r.status().as_u16(),
        cors,
        r.body_mut().read_to_string().unwrap(),
    )
}

fn session_token(secret: &str, claims: Value) -> String {
    let head = B64.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string());
    let body = B64.encode(claims.to_string());
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", B64.encode(m.finalize().into_bytes()))
}

fn claims(now_ms: i64) -> Value {
    json!({"iss": "https://test-store.myshopify.com/checkouts", "dest": "https://test-store.myshopify.com",
        "aud": CLIENT_ID, "exp": now_ms / 1000 + 300, "nbf": now_ms / 1000 - 5,
        "iat": now_ms / 1000 - 5, "jti": "j1"})
}

#[test]
fn the_offer_api_opens_only_to_its_token_or_the_shops_checkout() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, clock) = start(tmp.path());
    let key = key(&s);
    let t = token(&key, "9901");

    let (code, cors, body) = get(&s, &format!("/v1/offers/{STORE}/9901?t={t}"), &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(cors.as_deref(), Some("*"));
    let v: Value = serde_json::from_str(&body).unwrap();
    let offer = &v["offer"];
    for f in [
        "title",
        "image_url",
        "price",
        "compare_at_price",
        "currency",
        "discount_code",
        "saving",
    ] {
        assert!(offer.get(f).is_some(), "{f} in {v:#}");
    }
    assert_eq!(offer["currency"], "USD");
    assert_eq!(
        v["expires_at"],
        Timestamp(T0 + 7 * DAY).to_rfc3339(),
        "7 days after the order by default"
    );
    assert_eq!(
        v["accept_url"],
        format!("https://upsell.example.com/v1/offers/{STORE}/9901/accept?t={t}")
    );
    assert_eq!(
        v["decline_url"],
        format!("https://upsell.example.com/v1/offers/{STORE}/9901/decline?t={t}")
    );
    // Nothing personal in it.
    for personal in ["c8901@example.com", "Lin", "6175550100", "8901", "#9901"] {
        assert!(!body.contains(personal), "{personal} in {body}");
    }
    // The page showed it: it counts as sent, so a later edit keeps this offer.
    let e = explain(&s, "9901");
    assert_eq!(touch(&e, "page")["sent"], true, "{e:#}");

    // Everything else is the same 404, CORS included.
    let (_, _, nothing) = get(&s, &format!("/v1/offers/{STORE}/9901"), &[]);
    let other_order = token(&key, "9902");
    let mut tampered = t.clone().into_bytes();
    tampered[3] ^= 1;
    let tampered = String::from_utf8(tampered).unwrap();
    for path in [
        format!("/v1/offers/{STORE}/9901"),
        format!("/v1/offers/{STORE}/9901?t="),
        format!("/v1/offers/{STORE}/9901?t={tampered}"),
        format!("/v1/offers/{STORE}/9901?t={other_order}"),
        format!("/v1/offers/{STORE}/9902?t={other_order}"),
        format!("/v1/offers/woo/9901?t={t}"),
        format!("/v1/offers/nowhere/9901?t={t}"),
        format!("/v1/offers/{STORE}/9901/extra/parts?t={t}"),
    ] {
        let (code, cors, body) = get(&s, &path, &[]);
        assert_eq!((code, cors.as_deref()), (404, Some("*")), "{path}");
        assert_eq!(body, nothing, "{path}: the same answer whatever the reason");
    }

    // The Shopify checkout extension: a session token of the store's app.
    let now = T0 + MIN;
    let bearer = |jwt: String| format!("Bearer {jwt}");
    let path = format!("/v1/offers/{STORE}/9901");
    let ok = bearer(session_token(SECRET, claims(now)));
    let (code, _, body) = get(&s, &path, &[("Authorization", &ok), ("Origin", "null")]);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    // Links that take it with our token, for an hour only (the session token proves a
    // checkout of the shop, not of this order).
    let accept = v["accept_url"].as_str().unwrap().to_string();
    let until = (now / 1000 + 3600).to_string();
    assert!(accept.ends_with(&format!("&e={until}")), "{accept}");
    assert!(!accept.contains(&t), "not the lasting token: {accept}");
    // The signed-in buyer of this order; another customer's session sees nothing.
    let mut c = claims(now);
    c["sub"] = "gid://shopify/Customer/8901".into();
    let (code, _, _) = get(
        &s,
        &path,
        &[("Authorization", &bearer(session_token(SECRET, c)))],
    );
    assert_eq!(code, 200);
    let mut refused = Vec::new();
    let mut c = claims(now);
    c["sub"] = "gid://shopify/Customer/777".into();
    refused.push(("another customer", session_token(SECRET, c)));
    refused.push(("wrong secret", session_token("shpss_wrong", claims(now))));
    let mut c = claims(now);
    c["exp"] = (now / 1000 - 60).into();
    refused.push(("expired", session_token(SECRET, c)));
    let mut c = claims(now);
    c["dest"] = "https://another-shop.myshopify.com".into();
    refused.push(("another shop", session_token(SECRET, c)));
    let mut c = claims(now);
    c["aud"] = "another-app".into();
    refused.push(("another app", session_token(SECRET, c)));
    for (why, jwt) in refused {
        let (code, _, body) = get(&s, &path, &[("Authorization", &bearer(jwt))]);
        assert_eq!((code, body.as_str()), (404, nothing.as_str()), "{why}");
    }
    // A session token cannot take the offer: accept needs our token.
    let (code, _, _) = get(&s, &format!("{path}/accept"), &[("Authorization", &ok)]);
    assert_eq!(code, 404);
    // The hour's link with another time, or after its hour: refused.
    let local = accept.strip_prefix("https://upsell.example.com").unwrap();
    let (code, _, _) = get(
        &s,
        &local.replace(&until, &(now / 1000 + 7200).to_string()),
        &[],
    );
    assert_eq!(code, 404, "a link's time cannot be extended");
    clock.set(Timestamp(T0 + 2 * 60 * MIN));
    let (code, _, _) = get(&s, local, &[]);
    assert_eq!(code, 404, "the hour's link has expired");
    // Two hours after the order a session token opens it no more; our token still does.
    let late = bearer(session_token(SECRET, claims(T0 + 2 * 60 * MIN)));
    let (code, _, body) = get(&s, &path, &[("Authorization", &late)]);
    assert_eq!((code, body.as_str()), (404, nothing.as_str()));
    let (code, _, _) = get(&s, &format!("{path}?t={t}"), &[]);
    assert_eq!(code, 200);

    // CORS preflight, as the extension's worker (origin null) sends it.
    let r = no_redirects()
        .options(&s.url(&path))
        .header("Origin", "null")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let h = |n: &str| r.headers()[n].to_str().unwrap().to_string();
    assert_eq!(h("access-control-allow-origin"), "*");
    assert!(h("access-control-allow-headers").contains("Authorization"));
    assert!(h("access-control-allow-methods").contains("POST"));

    // The widget carries the card's style.
    let (code, cors, js) = get(&s, "/thank-you.js", &[]);
    assert_eq!((code, cors.as_deref()), (200, Some("*")));
    assert!(
        !js.contains("__CARD_CSS__") && js.contains(".upsell-card{"),
        "{js}"
    );
}

/// Sums the feedback counters of every antecedent → `offered`.
pub(crate) fn feedback(
    s: &TestServer,
    offered: &str,
) -> upsell_appliance::engine::affinity::Feedback {
    let snap = s.running().storage.snapshot().unwrap();
    let b = snap
        .product_no(STORE, offered)
        .unwrap()
        .expect("offered product is numbered");
    let mut sum = upsell_appliance::engine::affinity::Feedback::default();
    for a in 0..500 {
        if let Some(f) = snap.feedback_from(STORE, a).unwrap().get(&b) {
            sum.offered += f.offered;
            sum.accepted += f.accepted;
            sum.declined += f.declined;
            sum.refunded += f.refunded;
        }
    }
    sum
}

#[test]
fn taking_the_offer_cancels_touch1_counts_feedback_and_leads_to_a_new_checkout() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, clock) = start(tmp.path());
    let t = token(&key(&s), "9901");
    let e = explain(&s, "9901");
    let product = e["offer"]["product"].as_str().unwrap().to_string();
    let before = feedback(&s, &product);

    let (code, _, _) = get(&s, &format!("/v1/offers/{STORE}/9901?t={t}"), &[]);
    assert_eq!(code, 200);
    let (code, _, _) = get(&s, &format!("/v1/offers/{STORE}/9901?t={t}"), &[]);
    assert_eq!(code, 200);
    let viewed = feedback(&s, &product);
    assert!(
        viewed.offered > before.offered,
        "shown: {before:?} -> {viewed:?}"
    );

    // A decline, then a change of mind.
    let r = no_redirects()
        .post(&s.url(&format!("/v1/offers/{STORE}/9901/decline?t={t}")))
        .header("Origin", "https://shop.example.com")
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let declined = feedback(&s, &product);
    assert!(declined.declined > viewed.declined);

    let r = no_redirects()
        .get(&s.url(&format!("/v1/offers/{STORE}/9901/accept?t={t}")))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    let variant = e["offer"]["variant_id"].as_str().unwrap_or("");
    assert!(
        to == format!("https://test-store.myshopify.com/cart/{variant}:1")
            || to.starts_with(&format!(
                "https://test-store.myshopify.com/cart/{variant}:1?discount="
            )),
        "a cart permalink: {to} ({e:#})"
    );
    let accepted = feedback(&s, &product);
    assert!(accepted.accepted > declined.accepted);
    assert_eq!(accepted.declined, declined.declined);
    // Again: nothing more is counted, and a decline now does not undo it.
    no_redirects()
        .get(&s.url(&format!("/v1/offers/{STORE}/9901/accept?t={t}")))
        .call()
        .unwrap();
    no_redirects()
        .post(&s.url(&format!("/v1/offers/{STORE}/9901/decline?t={t}")))
        .send_empty()
        .unwrap();
    assert_eq!(feedback(&s, &product), accepted);
    // Answered: the thank-you page shows it no more.
    let (code, _, _) = get(&s, &format!("/v1/offers/{STORE}/9901?t={t}"), &[]);
    assert_eq!(code, 404);
    let (code, body) = s.admin_post(&format!("/api/offer/decline?store={STORE}&order=9901"));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["accepted"].as_bool(), v["changed"].as_bool()),
        (Some(true), Some(false))
    );

    // Touch-1 is not sent: the offer was taken on the page.
    clock.set(Timestamp(T0 + 21 * MIN));
    let v = wait_state(&s, "9901", "touch1", "skipped");
    assert_eq!(
        touch(&v, "touch1")["state_reason"],
        "the thank-you page offer was accepted"
    );
}

#[test]
fn the_offer_page_of_a_message_records_the_click_and_takes_the_offer_by_post() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, clock) = start(tmp.path());
    clock.set(Timestamp(T0 + 21 * MIN));
    wait_state(&s, "9901", "touch1", "sent");
    let line = outbox(tmp.path()).pop().unwrap();
    let link = line["links"]["click"].as_str().unwrap().to_string();
    let path = link
        .strip_prefix("https://upsell.example.com")
        .unwrap()
        .to_string();
    assert!(path.starts_with(&format!("/o/{STORE}/")), "{link}");
    let id: u64 = line["touch_id"].as_str().unwrap().parse().unwrap();

    let (code, _, page) = get(&s, &path, &[("User-Agent", "Mozilla/5.0 (iPhone) Mobile")]);
    assert_eq!(code, 200, "{page}");
    let title = line["offer"]["title"].as_str().unwrap();
    assert!(page.contains(title), "{title} in {page}");
    assert!(
        page.contains("new checkout") && page.contains("A separate order"),
        "the button says what it does"
    );
    let clicks = s.running().storage.snapshot().unwrap().clicks(id).unwrap();
    assert_eq!(clicks.len(), 1);
    assert_eq!(clicks[0].1, "mobile");
    // The forms post to our accept and decline.
    let t = token(&key(&s), "9901");
    // They name the message they came from, so the answer is credited to it.
    let accept =
        format!("https://upsell.example.com/v1/offers/{STORE}/9901/accept?t={t}&amp;via={id}");
    assert!(
        page.contains(&format!("<form method=\"post\" action=\"{accept}\"")),
        "{page}"
    );
    let r = no_redirects()
        .post(&s.url(&format!("/v1/offers/{STORE}/9901/accept?t={t}&via={id}")))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send("")
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let v = explain(&s, "9901");
    assert_eq!(v["offer_response"]["accepted"], true, "{v:#}");
    assert_eq!(v["offer_response"]["via_touch"], id, "{v:#}");

    // Forged, altered, or another store's: a 404 page; nothing recorded.
    for bad in [
        format!("{path}x"),
        format!("/o/{STORE}/{id}.AAAAAAAAAAAAAAAAAAAAAA"),
        "/o/woo/1.abc".to_string(),
        format!("/o/{STORE}"),
    ] {
        let (code, _, _) = get(&s, &bad, &[]);
        assert_eq!(code, 404, "{bad}");
    }
    assert_eq!(
        s.running()
            .storage
            .snapshot()
            .unwrap()
            .clicks(id)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn an_offer_that_has_ended_gets_a_polite_page() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, clock) = start(tmp.path());
    let t = token(&key(&s), "9901");
    clock.set(Timestamp(T0 + 7 * DAY + MIN));
    let (code, _, _) = get(&s, &format!("/v1/offers/{STORE}/9901?t={t}"), &[]);
    assert_eq!(code, 404, "the API shows nothing once it ends");
    let r = no_redirects()
        .get(&s.url(&format!("/v1/offers/{STORE}/9901/accept?t={t}")))
        .header("Accept", "text/html")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 410);
    let page = r.into_body().read_to_string().unwrap();
    assert!(
        page.contains("no longer available: it has expired"),
        "{page}"
    );
    assert!(
        page.contains("https://test-store.myshopify.com/products/"),
        "a way to the product: {page}"
    );
    let v = explain(&s, "9901");
    assert!(v["offer_response"].is_null(), "nothing recorded: {v:#}");
}

/// The WooCommerce snippet that `offer widget` prints computes the very token the service
/// checks, and prints the widget's markup (run by PHP itself, with WordPress's functions
/// stubbed). Needs `php`: CI installs it; elsewhere the test says it was skipped.
#[test]
fn the_woocommerce_snippet_mints_the_token_the_service_checks() {
    let have_php = std::process::Command::new("php")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_php {
        assert!(
            std::env::var("RUN_BROWSER_TESTS").as_deref() != Ok("1"),
            "CI must have php (`.ci/run` installs php-cli)"
        );
        eprintln!("skipped: no php here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(tmp.path(), Default::default());
    let (code, body) = s.admin_get("/api/offer/widget?store=woo");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let file = tmp.path().join("upsell-offer.php");
    std::fs::write(&file, v["snippet"].as_str().unwrap()).unwrap();
    let php = r#"
        $hooks = [];
        function add_action($hook, $fn, $priority = 10) { global $hooks; $hooks[] = [$hook, $fn, $priority]; }
        function esc_attr($s) { return htmlspecialchars($s, ENT_QUOTES); }
        function esc_url($s) { return $s; }
        require $argv[1];
        echo upsell_offer_token('7001'), "\n";
        foreach ($hooks as [$hook, $fn, $priority]) {
            if ($hook === 'woocommerce_thankyou') { $fn(7001); }
        }
    "#;
    let out = std::process::Command::new("php")
        .args(["-r", php])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    let key = v["key"].as_str().unwrap();
    let token = upsell_appliance::engine::offer::order_token(key, "woo", "7001");
    assert!(out.starts_with(&format!("{token}\n")), "{out}");
    let url = format!("https://upsell.example.com/v1/offers/woo/7001?t={token}");
    assert!(
        out.contains(&format!(
            "<div data-upsell-offer=\"{url}\" style=\"min-height:18.5rem\"></div>"
        )),
        "{out}"
    );
    assert!(
        out.contains("<script src=\"https://upsell.example.com/thank-you.js\" async></script>"),
        "{out}"
    );
}
