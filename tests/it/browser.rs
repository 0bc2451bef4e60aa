//! The thank-you offer in a real browser (headless Chromium), behind `RUN_BROWSER_TESTS=1`
//! (`.ci/run` installs Debian's chromium and sets it): a WooCommerce-style thank-you page
//! with the README's widget markup, served from another origin than the service, shows the
//! card without moving the page, and a click on its button records the acceptance and
//! leads to the store's checkout; the hosted offer page of a touch-1 email does the same
//! from the keyboard. Screenshots at phone and desktop widths go to `target/browser/`.
//!
//! Chromium is driven over its DevTools protocol on `--remote-debugging-pipe` (JSON
//! messages ending in a NUL on fds 3 and 4, which `sh` maps from the child's stdin and
//! stdout), so no WebDriver or websocket client is needed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use upsell_appliance::clock::TestClock;
use upsell_appliance::config::{self, Origin};
use upsell_appliance::engine::Timestamp;

use crate::support::{TestServer, TOKEN, WOO_SECRET};

const T0: i64 = 1_790_000_000_000;
const MIN: i64 = 60_000;

/// A headless Chromium and one page's DevTools session.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: mpsc::Receiver<Value>,
    next: u64,
    session: String,
    /// Events seen while waiting for answers.
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let exe = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--remote-debugging-pipe",
        ];
        let script = format!(
            "exec \"$0\" {} --user-data-dir=\"$1\" about:blank 3<&0 4>&1 </dev/null >/dev/null",
            flags.join(" ")
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&exe)
            .arg(profile.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
        let to = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut msg = Vec::new();
            match out.read_until(0, &mut msg) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    msg.pop();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to,
            from,
            next: 0,
            session: String::new(),
            events: Vec::new(),
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        for m in ["Page.enable", "Network.enable", "Runtime.enable"] {
            b.call(m, json!({}));
        }
        b
    }

    /// Sends a command (to the page once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        self.to.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method}"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    fn wait_for(&mut self, js: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.eval(js) != json!(true) {
            if Instant::now() > deadline {
                let page = self.eval("location.href + ' ' + document.body.outerHTML");
                let net: Vec<String> = self
                    .events
                    .iter()
                    .filter(|e| {
                        e["method"].as_str().is_some_and(|m| {
                            m.starts_with("Network.")
                                || m.starts_with("Runtime.console")
                                || m.starts_with("Runtime.exception")
                        })
                    })
                    .map(|e| e.to_string().chars().take(400).collect())
                    .collect();
                panic!("never: {what}\npage: {page}\nevents:\n{}", net.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn size(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    fn go(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// A real mouse click at the middle of the element `selector`.
    fn click(&mut self, selector: &str) {
        let r = self.eval(&format!(
            "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (r[0].as_f64().unwrap(), r[1].as_f64().unwrap());
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// A key press: what a keyboard user does.
    fn key(&mut self, key: &str, code: u32) {
        for kind in ["keyDown", "keyUp"] {
            let mut p =
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code});
            if kind == "keyDown" && key == "Enter" {
                p["text"] = "\r".into();
            }
            self.call("Input.dispatchKeyEvent", p);
        }
    }

    /// Waits for the browser to request a URL starting with `prefix` (a redirect's target
    /// counts; the request itself may fail: the store's host is not reachable here).
    fn wait_request(&mut self, prefix: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = self.events.iter().find(|e| {
                e["method"] == "Network.requestWillBeSent"
                    && e["params"]["request"]["url"]
                        .as_str()
                        .is_some_and(|u| u.starts_with(prefix))
            });
            if let Some(e) = seen {
                return e["params"].clone();
            }
            assert!(Instant::now() < deadline, "no request to {prefix}");
            // Any command collects the events that came before its answer.
            self.call("Runtime.evaluate", json!({"expression": "1"}));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WooCommerce-style "order received" page carrying the README snippet's markup, served
/// from its own origin. Layout shifts are summed into `window.__cls`.
fn serve_thank_you_page(html: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    format!("http://{addr}/checkout/order-received/")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn woo_order(id: u64, email: &str) -> Vec<u8> {
    let at = Timestamp(T0).to_rfc3339();
    let at = at.trim_end_matches('Z');
    serde_json::to_vec(&json!({
        "id": id, "number": id.to_string(), "status": "processing", "currency": "USD",
        "date_created_gmt": at, "date_modified_gmt": at, "total": "54.00",
        "customer_id": id + 100,
        "billing": {"email": email, "phone": "", "country": "US", "state": "NY", "postcode": "10001"},
        "shipping": {"country": "US", "state": "NY", "postcode": "10001"},
        "line_items": [{"id": 1, "name": "Pour-over Kit", "product_id": 632910392, "variation_id": 0,
            "quantity": 1, "sku": "KIT-POUR", "price": 54.0}],
        "refunds": [], "meta_data": []
    }))
    .unwrap()
}

fn shots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser")
}

#[test]
fn a_customer_takes_the_offer_in_a_real_browser() {
    if std::env::var("RUN_BROWSER_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set RUN_BROWSER_TESTS=1 (needs chromium) to run the browser test");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let text = format!(
        r#"
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"
public_url = "{public}"
data_dir = "{}"
admin_token = "{TOKEN}"

[[stores]]
id = "woo"
platform = "woocommerce"
domain = "shop.example.com"
webhook_secrets = ["{WOO_SECRET}"]
currency = "USD"
timezone = "America/New_York"
[stores.offers]
holdout_percent = 0
"#,
        tmp.path().display()
    );
    let cfg = config::parse(&text, Path::new("/"), Origin::Demo).unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = TestServer::start_config(
        cfg.clone(),
        tmp.path(),
        upsell_appliance::app::Options {
            clock: clock.clone(),
            ..Default::default()
        },
    );
    crate::support::import_demo(&s.running().storage, &cfg, "woo");
    for (id, email) in [(7001, "ana@example.com"), (7002, "bo@example.com")] {
        assert_eq!(
            s.woo_webhook(
                "order.created",
                Some(&format!("d{id}")),
                &woo_order(id, email)
            ),
            200
        );
    }
    let explain = |order: u64| -> Value {
        let (code, body) = s.admin_get(&format!("/api/explain?store=woo&order={order}"));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let planned = |order: u64| {
        let (code, body) = s.admin_get(&format!("/api/explain?store=woo&order={order}"));
        code == 200 && !serde_json::from_str::<Value>(&body).unwrap()["touches"][0].is_null()
    };
    while !(planned(7001) && planned(7002)) {
        assert!(Instant::now() < deadline, "order 7002 never planned");
        std::thread::sleep(Duration::from_millis(50));
    }
    let plan = explain(7001);
    assert!(plan["offer"].is_object(), "{plan:#}");
    let title = plan["offer"]["title"].as_str().unwrap().to_string();

    // The README's snippet, as PHP prints it for order 7001.
    let (code, body) = s.admin_get("/api/offer/widget?store=woo");
    assert_eq!(code, 200);
    let key = serde_json::from_str::<Value>(&body).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let t = upsell_appliance::engine::offer::order_token(&key, "woo", "7001");
    let page = serve_thank_you_page(format!(
        r#"<!doctype html><html lang="en-US"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Order received</title>
<script>window.__cls = 0; new PerformanceObserver(l => {{ for (const e of l.getEntries()) if (!e.hadRecentInput) window.__cls += e.value; }}).observe({{type: "layout-shift", buffered: true}});</script>
<style>body{{font-family:sans-serif;margin:0 auto;max-width:60rem;padding:1rem}} footer{{margin-top:2rem;padding:1rem;background:#eee}}</style></head>
<body><h1>Order received</h1><p class="woocommerce-notice">Thank you. Your order has been received.</p>
<ul class="woocommerce-order-overview"><li>Order number: <strong>7001</strong></li><li>Total: <strong>$54.00</strong></li></ul>
<div data-upsell-offer="{public}/v1/offers/woo/7001?t={t}" style="min-height:18.5rem"></div>
<script>/* The widget arrives late, after the page was painted, as on a slow network. */
window.addEventListener("load", () => setTimeout(() => {{ const s = document.createElement("script"); s.src = "{public}/thank-you.js"; document.body.appendChild(s); }}, 400));</script>
<section><h2>Order details</h2><p>Pour-over Kit × 1</p></section><footer>Demo WooCommerce store</footer></body></html>"#
    ));

    let mut b = Browser::start();
    // At a small phone, a phone and a desktop: the card fills the reserved box exactly,
    // so its late arrival moves nothing.
    for (w, h, mobile, shot) in [
        (320, 640, true, None),
        (390, 844, true, Some("thank-you-phone.png")),
        (1280, 800, false, Some("thank-you-desktop.png")),
    ] {
        b.size(w, h, mobile);
        b.go(&page);
        b.wait_for("!!document.querySelector('.upsell-card h2')", "the card");
        std::thread::sleep(Duration::from_millis(300));
        let cls = b.eval("window.__cls").as_f64().unwrap();
        assert!(
            cls < 0.001,
            "at {w} px the card moved the page: layout shift {cls}"
        );
        let heights = b.eval(
            "[document.querySelector('[data-upsell-offer]').getBoundingClientRect().height, document.querySelector('.upsell-card').getBoundingClientRect().height, document.querySelector('.upsell-card').scrollHeight]",
        );
        assert_eq!(heights[0], heights[1], "at {w} px: box and card {heights}");
        assert!(
            heights[2].as_f64() <= heights[1].as_f64(),
            "at {w} px the card's content overflows it: {heights}"
        );
        let fits = b.eval("document.querySelector('.upsell-card').getBoundingClientRect().right <= window.innerWidth");
        assert_eq!(fits, json!(true), "the card fits {w} px");
        eprintln!("{w} px: layout shift {cls}, card {heights}");
        if let Some(name) = shot {
            b.screenshot(&shots().join(name));
        }
    }
    assert_eq!(
        b.eval("document.querySelector('.upsell-card h2').textContent"),
        json!(title)
    );
    // The demo catalog has no images: a plain box holds the image's place.
    assert_eq!(
        b.eval("document.querySelector('.upsell-img').getAttribute('role')"),
        json!("presentation")
    );
    // Accessible: a real link and button with their names.
    assert_eq!(
        b.eval("document.querySelector('.upsell-accept').tagName + '|' + document.querySelector('.upsell-accept').textContent"),
        json!("A|Buy now \u{2014} new checkout")
    );
    assert_eq!(
        b.eval("document.querySelector('.upsell-decline').tagName"),
        json!("BUTTON")
    );

    b.click(".upsell-accept");
    let accept = b.wait_request(&format!("{public}/v1/offers/woo/7001/accept"));
    assert!(accept["request"]["url"].as_str().unwrap().contains(&t));
    let to = b.wait_request("https://shop.example.com/checkout/");
    let url = to["request"]["url"].as_str().unwrap().to_string();
    assert!(
        url.contains("add-to-cart=") && url.contains("quantity=1"),
        "{url}"
    );
    assert_eq!(to["redirectResponse"]["status"], 303, "{to:#}");
    let e = explain(7001);
    assert_eq!(e["offer_response"]["accepted"], true, "{e:#}");

    // The hosted offer page of order 7002's touch-1 email, from the keyboard.
    clock.set(Timestamp(T0 + 21 * MIN));
    let deadline = Instant::now() + Duration::from_secs(20);
    let link = loop {
        let lines = crate::scheduler::outbox(tmp.path());
        if let Some(l) = lines
            .iter()
            .find(|l| l["order"] == "7002" && l["kind"] == "touch1")
        {
            break l["links"]["click"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "order 7002's touch-1 never went out"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(link.starts_with(&format!("{public}/o/woo/")), "{link}");
    b.events.clear();
    b.size(390, 844, true);
    b.go(&link);
    b.wait_for(
        "!!document.querySelector('.upsell-card h2')",
        "the offer page",
    );
    b.screenshot(&shots().join("offer-page-phone.png"));
    b.size(1280, 800, false);
    std::thread::sleep(Duration::from_millis(200));
    b.screenshot(&shots().join("offer-page-desktop.png"));
    // Tab to the button, then Enter.
    let mut tabs = 0;
    while b.eval(
        "document.activeElement && document.activeElement.classList.contains('upsell-accept')",
    ) != json!(true)
    {
        b.key("Tab", 9);
        tabs += 1;
        assert!(tabs < 10, "the button is not reachable with Tab");
    }
    b.key("Enter", 13);
    let to = b.wait_request("https://shop.example.com/checkout/");
    assert_eq!(to["redirectResponse"]["status"], 303, "{to:#}");
    let e = explain(7002);
    assert_eq!(e["offer_response"]["accepted"], true, "{e:#}");
    eprintln!("screenshots in {}", shots().display());
}

#[test]
fn the_status_page_draws_the_lift_charts() {
    if std::env::var("RUN_BROWSER_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set RUN_BROWSER_TESTS=1 (needs chromium) to run the browser test");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (s, clock, _) = crate::report::history(tmp.path());
    // A month on: the page's twelve weeks hold the first orders and what followed.
    clock.set(Timestamp(T0 + 30 * 86_400_000));
    let admin = format!("http://{}/", s.running().admin_addr);
    let mut b = Browser::start();
    b.size(1100, 900, false);
    b.go(&admin);
    b.wait_for("!!document.querySelector('#token')", "the sign-in form");
    b.eval(&format!(
        "document.querySelector('#token').value = {TOKEN:?}; document.querySelector('form').submit(); true"
    ));
    b.wait_for(
        "document.querySelectorAll('.chart svg').length >= 3",
        "the lift charts",
    );
    // The Shopify store's three charts are drawn at a real size, with their marks.
    let drawn = b.eval(
        "[...document.querySelector('section.store').querySelectorAll('.chart svg')].map(s => { const r = s.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height), s.querySelectorAll('rect, circle').length]; })",
    );
    assert_eq!(drawn.as_array().unwrap().len(), 3, "{drawn}");
    for c in drawn.as_array().unwrap() {
        assert!(
            c[0].as_f64().unwrap() > 300.0 && c[1].as_f64().unwrap() > 40.0,
            "{drawn}"
        );
        assert!(c[2].as_u64().unwrap() >= 4, "marks in {drawn}");
    }
    let table = b.eval("document.querySelector('table.lift').innerText");
    assert!(
        table.as_str().unwrap().contains("not enough data yet"),
        "{table}"
    );
    // No scripts and nothing external: the page's policy allowed everything it drew.
    assert!(
        !b.events
            .iter()
            .any(|e| e.to_string().contains("Content Security Policy")),
        "a CSP violation"
    );
    b.eval("document.querySelector('h3 + p').scrollIntoView(); true");
    let full = b
        .eval("document.documentElement.scrollHeight")
        .as_u64()
        .unwrap();
    b.size(1100, full.min(4000) as u32, false);
    b.screenshot(&shots().join("status-lift-desktop.png"));
    b.size(390, 844, true);
    b.eval("[...document.querySelectorAll('h3')].find(h => h.textContent.startsWith('Lift')).scrollIntoView(); true");
    b.screenshot(&shots().join("status-lift-phone.png"));
}
