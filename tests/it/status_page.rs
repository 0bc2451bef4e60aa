//! The status page on the admin listener, as a browser sees it: sign in with the admin
//! token, a cookie, the figures per store, and plain words when something needs the
//! operator.

use std::sync::atomic::Ordering;
use std::time::Duration;

use upsell_appliance::storage::Faults;

use crate::fixtures::*;
use crate::support::*;

/// A browser that does not follow redirects, so the test sees the login's 303.
fn browser() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

pub(crate) struct Got {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) fn got(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Got {
    let mut resp = resp.expect("request completes");
    Got {
        status: resp.status().as_u16(),
        headers: resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn admin_url(s: &TestServer, path: &str) -> String {
    format!("http://{}{}", s.running().admin_addr, path)
}

pub(crate) fn page(s: &TestServer, cookie: Option<&str>) -> Got {
    let mut rq = browser().get(&admin_url(s, "/"));
    if let Some(c) = cookie {
        rq = rq.header("Cookie", c);
    }
    got(rq.call())
}

pub(crate) fn sign_in(s: &TestServer, token: &str) -> Got {
    let form = format!("token={}", token.replace('-', "%2D"));
    got(browser()
        .post(&admin_url(s, "/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(form.as_bytes()))
}

/// The cookie a successful sign-in sets, as a browser would send it back.
pub(crate) fn cookie_of(g: &Got) -> String {
    let set = g.header("set-cookie").expect("sign-in sets a cookie");
    set.split(';').next().unwrap().to_string()
}

/// A cookie value as the service signs it, for a given issue time.
fn session(issued: i64) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(format!("upsell-appliance status page session v1:{issued}").as_bytes());
    let tag: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{issued}.{tag}")
}

/// The page is the operator's: self-contained, no scripts, nothing fetched from outside.
fn assert_self_contained(g: &Got) {
    assert!(g.header("content-type").unwrap().starts_with("text/html"));
    let csp = g.header("content-security-policy").expect("CSP header");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let lower = g.body.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "a script in the page");
    assert!(!lower.contains("src=\"http"), "an external resource");
    assert!(!lower.contains("href=\"http"), "an external link");
    assert!(lower.contains("href=\"/admin.css\""));
}

#[test]
fn sign_in_with_the_token_then_see_each_store() {
    let s = TestServer::start();
    // Not signed in: the form, with 401.
    let g = page(&s, None);
    assert_eq!(g.status, 401);
    assert!(g.body.contains("action=\"/login\""), "{}", g.body);
    assert_self_contained(&g);

    // A wrong token: the form again, saying so.
    let g = sign_in(&s, "not-the-token-at-all-0000");
    assert_eq!(g.status, 401);
    assert!(
        g.body.contains("not this service&#39;s admin_token"),
        "{}",
        g.body
    );
    assert!(g.header("set-cookie").is_none());

    // The right one: a cookie, and back to the page.
    let g = sign_in(&s, TOKEN);
    assert_eq!(g.status, 303);
    assert_eq!(g.header("location"), Some("/"));
    let set = g.header("set-cookie").unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = cookie_of(&g);
    assert!(
        !cookie.contains(TOKEN),
        "the cookie must not hold the token itself"
    );

    assert_eq!(
        s.webhook(
            "orders/paid",
            "page-1",
            &order_json(&OrderSpec::three_lines(1))
        ),
        200
    );
    s.wait_processed();
    let g = page(&s, Some(&cookie));
    assert_eq!(g.status, 200, "{}", g.body);
    assert_self_contained(&g);
    for store in [STORE, WOO_STORE, BC_STORE] {
        assert!(
            g.body.contains(&format!("<h2>{store} ")),
            "store {store} missing"
        );
    }
    assert!(g.body.contains("test-store.myshopify.com"));
    assert!(g.body.contains("<dt>Accepted</dt><dd>1</dd>"), "{}", g.body);
    assert!(g.body.contains("<dt>Orders</dt><dd>1</dd>"));
    assert!(g.body.contains("just now"));
    // The two stores that never got a webhook are named, with what to do.
    assert!(
        g.body.contains("Store woo: no webhook has arrived yet"),
        "{}",
        g.body
    );
    assert!(g.body.contains("https://upsell.example.com/webhooks/bc"));
    assert!(!g.body.contains("Store main: no webhook"));

    // The bearer header opens the page too; the cookie does not open the API.
    let g = got(browser()
        .get(&admin_url(&s, "/"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .call());
    assert_eq!(g.status, 200);
    let g = got(browser()
        .get(&admin_url(&s, "/api/status"))
        .header("Cookie", &cookie)
        .call());
    assert_eq!(g.status, 401);

    // The stylesheet needs no sign-in and is served from assets/.
    let g = got(browser().get(&admin_url(&s, "/admin.css")).call());
    assert_eq!(g.status, 200);
    assert!(g.header("content-type").unwrap().starts_with("text/css"));
    assert!(g.body.contains(".store"));

    // The server, not only the browser, decides a cookie's age: a changed issue time
    // fails its HMAC, and a correctly signed one older than 7 days is refused.
    let (issued, tag) = cookie.split_once('=').unwrap().1.split_once('.').unwrap();
    let issued: i64 = issued.parse().unwrap();
    let tampered = format!("upsell_admin={}.{tag}", issued + 1);
    assert_eq!(page(&s, Some(&tampered)).status, 401);
    let old = issued - 8 * 86_400;
    assert_eq!(
        page(&s, Some(&format!("upsell_admin={}", session(old)))).status,
        401
    );
    let recent = issued - 6 * 86_400;
    assert_eq!(
        page(&s, Some(&format!("upsell_admin={}", session(recent)))).status,
        200
    );

    // Signing out clears the cookie.
    let g = got(browser()
        .post(&admin_url(&s, "/logout"))
        .header("Cookie", &cookie)
        .send(&b""[..]));
    assert_eq!(g.status, 303);
    assert!(g.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[test]
fn the_page_says_what_needs_the_operator() {
    let tmp = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let mut s = TestServer::start_in(tmp.path(), faults.clone());
    let cookie = cookie_of(&sign_in(&s, TOKEN));

    // Wrong signatures, and a signed delivery this build cannot parse.
    let body = order_json(&OrderSpec::three_lines(1));
    let (status, _) = s.post(
        &format!("/webhooks/{STORE}"),
        &[
            ("X-Shopify-Topic", "orders/paid"),
            ("X-Shopify-Hmac-Sha256", "d3Jvbmc="),
            ("X-Shopify-Event-Id", "forged-1"),
        ],
        &body,
    );
    assert_eq!(status, 401);
    assert_eq!(
        s.webhook("orders/paid", "q-1", &crate::quarantine::unreadable()),
        200
    );
    s.wait_processed(); // the refusal is counted with this commit
    let g = page(&s, Some(&cookie));
    assert!(
        g.body.contains("Store main: deliveries are being refused for a missing or wrong signature (1 in all, the last just now)"),
        "{}",
        g.body
    );
    assert!(g.body.contains("the app&#39;s client secret"));
    assert!(g.body.contains(
        "Store main: signed deliveries that could not be parsed or applied wait in quarantine (1)"
    ));
    assert!(g
        .body
        .contains("<code>upsell-appliance quarantine list --store main</code>"));
    assert!(g.body.contains("<dt>In quarantine</dt><dd>1</dd>"));
    // A store whose every delivery fails its signature: that is the news (bad), not "no
    // webhook has arrived yet" (subscribing again would not help).
    assert_eq!(
        s.post(
            &format!("/webhooks/{WOO_STORE}"),
            &[
                ("X-WC-Webhook-Topic", "order.created"),
                ("X-WC-Webhook-Signature", "d3Jvbmc=")
            ],
            b"{\"id\":1}",
        )
        .0,
        401
    );
    assert_eq!(s.get("/healthz").0, 200); // its commit carries the refusal count
    let g = page(&s, Some(&cookie));
    let bad = g
        .body
        .find("<li class=\"bad\">Store woo: deliveries are being refused");
    assert!(bad.is_some(), "{}", g.body);
    assert!(g.body.contains("none has been accepted yet"));
    assert!(!g.body.contains("Store woo: no webhook has arrived yet"));
    assert!(
        bad.unwrap() < g.body.find("<li class=\"warn\">").unwrap(),
        "worst first"
    );

    // The same notices are in /api/status for scripts.
    let notices = s.status()["notices"].clone();
    assert!(notices
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["level"] == "warn" && n["text"].as_str().unwrap().contains("quarantine")));

    // A disk that refuses writes is the worst news, on top.
    faults.disk_full.store(true, Ordering::SeqCst);
    assert_eq!(s.webhook("orders/paid", "full-1", &body), 503);
    let g = page(&s, Some(&cookie));
    let first = g.body.find("<li class=\"bad\">").expect("a bad notice");
    assert!(g.body[first..].contains("The database refused the last write"));
    assert!(first < g.body.find("<li class=\"warn\">").unwrap());
    assert!(g.body.contains("database refusing writes"));
    if let Some(r) = s.running.take() {
        let _ = r.shutdown(); // its final sync fails on the full disk
    }
}
