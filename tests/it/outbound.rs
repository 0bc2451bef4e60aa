//! Provider adapters against fake providers (tiny_http on 127.0.0.1:0): the exact method,
//! path, headers and body of each request, and what each kind of answer means.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use upsell_appliance::engine::plan::{Channel as Medium, Offer, Recipe, TouchKind};
use upsell_appliance::engine::{Currency, Timestamp};
use upsell_appliance::outbound::klaviyo::Klaviyo;
use upsell_appliance::outbound::postmark::Postmark;
use upsell_appliance::outbound::templates::Templates;
use upsell_appliance::outbound::twilio::Twilio;
use upsell_appliance::outbound::webhook::{self, Webhook};
use upsell_appliance::outbound::{agent, Channel, Links, Message, Outcome, RateLimit, Secret};

/// One request as the fake provider saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// A scripted answer: status, headers, body; `None` never answers.
pub type Answer = Option<(u16, Vec<(&'static str, String)>, String)>;

/// A fake provider: answers each request with the next scripted (status, headers, body),
/// the last one over and over; `None` never answers (holds the request).
pub struct Fake {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    pub fn start(script: Vec<Answer>) -> Fake {
        Fake::start_delayed(script, Duration::ZERO)
    }

    /// [`Fake::start`], taking `delay` over each answer (one request at a time).
    pub fn start_delayed(script: Vec<Answer>, delay: Duration) -> Fake {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for (n, mut rq) in server.incoming_requests().enumerate() {
                let mut body = String::new();
                std::io::Read::read_to_string(rq.as_reader(), &mut body).unwrap();
                log.lock().unwrap().push(Seen {
                    method: rq.method().to_string(),
                    path: rq.url().to_string(),
                    headers: rq
                        .headers()
                        .iter()
                        .map(|h| {
                            (
                                h.field.as_str().as_str().to_ascii_lowercase(),
                                h.value.as_str().to_string(),
                            )
                        })
                        .collect(),
                    body,
                });
                let step = script[n.min(script.len() - 1)].clone();
                std::thread::sleep(delay);
                match step {
                    None => held.push(rq),
                    Some((status, headers, body)) => {
                        let mut resp =
                            tiny_http::Response::from_string(body).with_status_code(status);
                        for (k, v) in headers {
                            resp.add_header(tiny_http::Header::from_bytes(k, v).unwrap());
                        }
                        let _ = rq.respond(resp);
                    }
                }
            }
        });
        Fake { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn message() -> Message {
    Message {
        touch_id: 42,
        store: "demo".into(),
        kind: TouchKind::Touch1,
        medium: Medium::Email,
        order_id: "9001".into(),
        order_name: "#9001".into(),
        customer: Some(7),
        email: Some("jane@example.com".into()),
        phone: Some("+16175550100".into()),
        recipe: Some(Recipe::Welcome),
        offer: Some(Offer {
            product: "sku:SCALE-MINI".into(),
            sku: Some("SCALE-MINI".into()),
            variant_id: Some("41".into()),
            title: "Coffee Scale".into(),
            price: 1900,
            currency: Currency::parse("USD").unwrap(),
            discount_code: Some("HI10".into()),
            trust: false,
            urgency: false,
        }),
        image_url: Some("https://cdn.example.com/scale.jpg".into()),
        due_at: Timestamp(1_795_186_800_000),
        at: Timestamp(1_795_186_801_000),
        ticket: None,
        links: Links {
            click: Some("https://u.example.com/r/demo/42.sig".into()),
            unsubscribe: "https://u.example.com/u/demo/42.sig2".into(),
        },
    }
}

/// The Shopify store, live, sending email through Klaviyo at `url`.
pub(crate) fn klaviyo_channels(url: &str) -> String {
    format!("mode = \"live\"\n{}", klaviyo_routes(url))
}

/// The Shopify store's `[stores.channels]` routing email to Klaviyo at `url` (without a
/// `mode`: a dry run).
pub(crate) fn klaviyo_routes(url: &str) -> String {
    format!(
        "[stores.channels]\nemail = \"klaviyo\"\n[stores.channels.klaviyo]\napi_key = \"pk_test_0123456789\"\nbase_url = \"{url}\"\n"
    )
}

fn klaviyo(fake: &Fake, timeout: Duration) -> Klaviyo {
    Klaviyo {
        base_url: fake.url.clone(),
        api_key: Secret::new("pk_test_0123456789"),
        metrics: BTreeMap::new(),
        limit: RateLimit::new(1000.0),
        agent: agent(Duration::from_secs(5), timeout),
    }
}

#[test]
fn klaviyo_gets_a_jsonapi_event_keyed_by_the_touch_id() {
    let fake = Fake::start(vec![Some((202, vec![], String::new()))]);
    let k = klaviyo(&fake, Duration::from_secs(20));
    assert_eq!(k.send(&message()), Outcome::Sent { message_id: None });
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/api/events/")
    );
    assert_eq!(
        r.headers["authorization"],
        "Klaviyo-API-Key pk_test_0123456789"
    );
    assert_eq!(r.headers["revision"], "2024-10-15");
    assert_eq!(r.headers["content-type"], "application/vnd.api+json");
    assert_eq!(r.headers["accept"], "application/vnd.api+json");
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body,
        json!({"data": {"type": "event", "attributes": {
            "time": "2026-11-20T15:00:01Z",
            "unique_id": "42",
            "value": 19.0,
            "value_currency": "USD",
            "metric": {"data": {"type": "metric", "attributes": {"name": "Upsell Touch 1"}}},
            "profile": {"data": {"type": "profile", "attributes":
                {"email": "jane@example.com", "phone_number": "+16175550100"}}},
            "properties": {
                "touch": "touch1", "order_name": "#9001", "order_id": "9001",
                "recipe": "welcome", "product_title": "Coffee Scale",
                "product": "sku:SCALE-MINI", "sku": "SCALE-MINI", "variant_id": "41",
                "price": "19.00", "currency": "USD", "discount_code": "HI10",
                "image_url": "https://cdn.example.com/scale.jpg",
                "tracked_url": "https://u.example.com/r/demo/42.sig",
                "unsubscribe_url": "https://u.example.com/u/demo/42.sig2"
            }
        }}})
    );
}

#[test]
fn klaviyo_failures_retry_with_the_same_key_and_refusals_are_dead() {
    // Three failures, then accepted: four attempts, all with the same unique_id.
    let fake = Fake::start(vec![
        Some((503, vec![], "down".into())),
        Some((500, vec![], "oops".into())),
        Some((429, vec![("Retry-After", "3".into())], "slow down".into())),
        Some((202, vec![], String::new())),
    ]);
    let k = klaviyo(&fake, Duration::from_secs(20));
    let outcomes: Vec<Outcome> = (0..4).map(|_| k.send(&message())).collect();
    assert!(matches!(outcomes[0], Outcome::Retry { after: None, .. }));
    assert!(matches!(outcomes[1], Outcome::Retry { .. }));
    assert_eq!(
        outcomes[2],
        Outcome::Retry {
            after: Some(Duration::from_secs(3)),
            reason: "klaviyo answered 429: slow down".into()
        }
    );
    assert_eq!(outcomes[3], Outcome::Sent { message_id: None });
    let keys: Vec<String> = fake
        .seen()
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.body).unwrap()["data"]["attributes"]["unique_id"]
                .to_string()
        })
        .collect();
    assert_eq!(keys, ["\"42\""; 4]);

    // A 400 is dead at once, with the provider's reason.
    let fake = Fake::start(vec![Some((
        400,
        vec![],
        r#"{"errors":[{"detail":"bad metric"}]}"#.into(),
    ))]);
    match klaviyo(&fake, Duration::from_secs(20)).send(&message()) {
        Outcome::Dead { reason } => assert!(
            reason.contains("400") && reason.contains("bad metric"),
            "{reason}"
        ),
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_provider_that_never_answers_frees_the_sender_after_the_timeout() {
    let fake = Fake::start(vec![None]);
    let k = klaviyo(&fake, Duration::from_millis(700));
    let t = Instant::now();
    let o = k.send(&message());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        matches!(o, Outcome::Retry { ref reason, .. } if reason.contains("no answer")),
        "{o:?}"
    );
}

#[test]
fn webhooks_are_signed_per_standard_webhooks_and_410_disables() {
    let fake = Fake::start(vec![
        Some((204, vec![], String::new())),
        Some((410, vec![], "gone".into())),
    ]);
    let secret = Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
    let w = Webhook {
        url: format!("{}/hooks/upsell", fake.url),
        secrets: vec![secret.clone()],
        limit: RateLimit::new(1000.0),
        agent: agent(Duration::from_secs(5), Duration::from_secs(20)),
    };
    let m = message();
    assert_eq!(w.send(&m), Outcome::Sent { message_id: None });
    assert!(matches!(w.send(&m), Outcome::Gone { .. }));
    let seen = fake.seen();
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/hooks/upsell")
    );
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["webhook-id"], "42");
    assert_eq!(r.headers["webhook-timestamp"], "1795186801");
    // The receiver's check: the signature over id.timestamp.body with the shared secret.
    assert_eq!(
        r.headers["webhook-signature"],
        webhook::signature(&[secret], "42", 1_795_186_801, r.body.as_bytes())
    );
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["touch_id"], "42");
    assert_eq!(body["email"], "jane@example.com");
    assert_eq!(body["offer"]["price"], "19.00");
    assert_eq!(
        body["links"]["unsubscribe"],
        "https://u.example.com/u/demo/42.sig2"
    );
    // The retry carries the same webhook-id: the receiver drops a duplicate.
    assert_eq!(seen[1].headers["webhook-id"], "42");
}

fn twilio(fake: &Fake, templates: Templates) -> Twilio {
    Twilio {
        base_url: fake.url.clone(),
        account_sid: "AC0123456789abcdef0123456789abcdef".into(),
        auth_token: Secret::new("tok_0123456789"),
        from: "+16175550199".into(),
        store_name: "Coffee Co".into(),
        templates: Arc::new(templates),
        limit: RateLimit::new(1000.0),
        agent: agent(Duration::from_secs(5), Duration::from_secs(20)),
    }
}

#[test]
fn twilio_gets_a_form_with_basic_auth_and_a_one_segment_body() {
    let fake = Fake::start(vec![Some((
        201,
        vec![],
        r#"{"sid":"SM123","status":"queued"}"#.into(),
    ))]);
    let t = twilio(&fake, Templates::load(None).unwrap());
    let mut m = message();
    m.kind = TouchKind::Sms;
    m.medium = Medium::Sms;
    assert_eq!(
        t.send(&m),
        Outcome::Sent {
            message_id: Some("SM123".into())
        }
    );
    let r = &fake.seen()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        (
            "POST",
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
        )
    );
    use base64::Engine as _;
    let want_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode("AC0123456789abcdef0123456789abcdef:tok_0123456789")
    );
    assert_eq!(r.headers["authorization"], want_auth);
    assert_eq!(
        r.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let text =
        "Coffee Co: Coffee Scale 19.00 USD code HI10 https://u.example.com/r/demo/42.sig STOP=stop";
    assert!(text.chars().count() <= 160);
    let enc: String = text
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    assert_eq!(
        r.body,
        format!("To=%2B16175550100&From=%2B16175550199&Body={enc}")
    );
}

#[test]
fn twilio_refuses_a_long_sms_and_a_stop_suppresses() {
    // A template override that renders over 160 characters: refused, nothing sent.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sms.txt"),
        format!("{}{{{{ offer.title }}}}", "x".repeat(150)),
    )
    .unwrap();
    let fake = Fake::start(vec![Some((
        400,
        vec![],
        r#"{"code":21610,"message":"Attempt to send to unsubscribed recipient","status":400}"#
            .into(),
    ))]);
    let mut m = message();
    m.kind = TouchKind::Sms;
    m.medium = Medium::Sms;
    match twilio(&fake, Templates::load(Some(dir.path())).unwrap()).send(&m) {
        Outcome::Dead { reason } => {
            assert!(reason.contains("162 characters, over the 160"), "{reason}")
        }
        o => panic!("{o:?}"),
    }
    assert!(fake.seen().is_empty());
    // Twilio's 21610 (the recipient replied STOP): unsubscribed, not a dead letter.
    let o = twilio(&fake, Templates::load(None).unwrap()).send(&m);
    assert!(
        matches!(o, Outcome::Unsubscribed { ref reason } if reason.contains("21610")),
        "{o:?}"
    );
    // Not E.164: dead without a request.
    m.phone = Some("6175550100".into());
    assert!(matches!(
        twilio(&fake, Templates::load(None).unwrap()).send(&m),
        Outcome::Dead { .. }
    ));
    assert_eq!(fake.seen().len(), 1);
}

#[test]
fn postmark_gets_the_rendered_email_with_one_click_unsubscribe_headers() {
    let fake = Fake::start(vec![Some((
        200,
        vec![],
        r#"{"To":"jane@example.com","MessageID":"b7bc2f4a-e38e-4336-af7d-e6c392c2f817","ErrorCode":0,"Message":"OK"}"#.into(),
    ))]);
    let p = Postmark {
        base_url: fake.url.clone(),
        server_token: Secret::new("POSTMARK_API_TEST"),
        from: "Coffee Co <hello@coffee.example>".into(),
        message_stream: "outbound".into(),
        store_name: "Coffee Co".into(),
        templates: Arc::new(Templates::load(None).unwrap()),
        limit: RateLimit::new(1000.0),
        agent: agent(Duration::from_secs(5), Duration::from_secs(20)),
    };
    assert_eq!(
        p.send(&message()),
        Outcome::Sent {
            message_id: Some("b7bc2f4a-e38e-4336-af7d-e6c392c2f817".into())
        }
    );
    let r = &fake.seen()[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/email"));
    assert_eq!(r.headers["x-postmark-server-token"], "POSTMARK_API_TEST");
    assert_eq!(r.headers["content-type"], "application/json");
    let b: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(b["From"], "Coffee Co <hello@coffee.example>");
    assert_eq!(b["To"], "jane@example.com");
    assert_eq!(b["Subject"], "Complete your Coffee Scale setup");
    assert_eq!(b["MessageStream"], "outbound");
    assert_eq!(b["Tag"], "touch1");
    assert_eq!(
        b["Headers"],
        json!([
            {"Name": "List-Unsubscribe", "Value": "<https://u.example.com/u/demo/42.sig2>"},
            {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}
        ])
    );
    let html = b["HtmlBody"].as_str().unwrap();
    for want in [
        "Complete your Coffee Scale setup",
        "19.00 USD",
        "HI10",
        "href=\"https://u.example.com/r/demo/42.sig\"",
        "src=\"https:&#x2f;&#x2f;cdn.example.com&#x2f;scale.jpg\"",
        "Unsubscribe",
    ] {
        assert!(html.contains(want), "{want} in {html}");
    }
    assert!(b["TextBody"]
        .as_str()
        .unwrap()
        .contains("See it: https://u.example.com/r/demo/42.sig"));
}

pub(crate) mod routed {
    //! Touches routed to a provider by `[stores.channels]`, end to end on a test clock.

    use super::*;
    use crate::scheduler::{explain, outbox, touch};
    use crate::support::{TestServer, STORE};
    use upsell_appliance::clock::TestClock;

    /// 2026-11-20T15:00:00Z
    const T0: i64 = 1_795_186_800_000;
    const MIN: i64 = 60_000;
    const DAY: i64 = 86_400_000;

    fn start(dir: &std::path::Path, clock: Arc<TestClock>, fake: &Fake) -> TestServer {
        let extra = klaviyo_channels(&fake.url);
        TestServer::start_demo_with(dir, clock, &extra)
    }

    /// A paid order at T0 of the demo's kit: touch-1 due at T0 + 20 min.
    pub(crate) fn order(s: &TestServer, id: u64) {
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
        crate::scheduler::wait_state(s, &id.to_string(), "touch1", "scheduled");
    }

    pub(crate) fn wait_seen(fake: &Fake, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = fake.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{} requests, want {n}",
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn state(s: &TestServer, order: &str, kind: &str) -> (String, String) {
        let v = explain(s, order);
        let t = touch(&v, kind);
        (
            t["state"].as_str().unwrap_or("").to_string(),
            t["state_reason"].as_str().unwrap_or("").to_string(),
        )
    }

    fn wait_for(s: &TestServer, order: &str, kind: &str, want: &str) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = state(s, order, kind);
            if st.0 == want {
                return st;
            }
            assert!(Instant::now() < deadline, "{kind} is {st:?}, want {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn three_failures_then_accepted_is_one_delivery_of_four_attempts_with_one_key() {
        let fake = Fake::start(vec![
            Some((503, vec![], "down".into())),
            Some((500, vec![], "oops".into())),
            Some((
                429,
                vec![("Retry-After", "3600".into())],
                "slow down".into(),
            )),
            Some((202, vec![], String::new())),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
        let s = start(tmp.path(), clock.clone(), &fake);
        order(&s, 9801);
        clock.set(Timestamp(T0 + 21 * MIN));
        wait_seen(&fake, 1);
        let (st, why) = wait_for(&s, "9801", "touch1", "deferred");
        assert!(
            why.contains("attempt 1 failed: klaviyo answered 503"),
            "{st} {why}"
        );
        // The schedule: about 5 s, then about 5 min, then Retry-After's hour (longer than
        // the 30 min step).
        clock.set(Timestamp(T0 + 21 * MIN + 6_000));
        wait_seen(&fake, 2);
        wait_for(&s, "9801", "touch1", "deferred");
        clock.set(Timestamp(T0 + 27 * MIN + 6_000));
        wait_seen(&fake, 3);
        clock.set(Timestamp(T0 + 60 * MIN));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(fake.seen().len(), 3, "Retry-After: 3600 is respected");
        clock.set(Timestamp(T0 + 90 * MIN));
        wait_seen(&fake, 4);
        wait_for(&s, "9801", "touch1", "sent");
        let keys: Vec<Value> = fake
            .seen()
            .iter()
            .map(|r| {
                serde_json::from_str::<Value>(&r.body).unwrap()["data"]["attributes"]["unique_id"]
                    .clone()
            })
            .collect();
        let touch_id = touch(&explain(&s, "9801"), "touch1")["touch_id"].to_string();
        assert_eq!(keys, vec![json!(touch_id.trim_matches('"')); 4]);
        // Sent through Klaviyo, not the outbox; counted by channel.
        assert!(outbox(tmp.path()).is_empty());
        let st = s.status();
        assert_eq!(
            st["stores"][0]["touches"]["deferred"]["provider_retry"], 3,
            "{st}"
        );
    }

    #[test]
    fn a_stop_while_sending_waits_for_the_request_in_flight_only_and_resumes_at_start() {
        let fake = Fake::start_delayed(
            vec![Some((202, vec![], String::new()))],
            Duration::from_millis(150),
        );
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
        let mut s = start(tmp.path(), clock.clone(), &fake);
        let orders: Vec<u64> = (9810..9830).collect();
        for &o in &orders {
            order(&s, o);
        }
        clock.set(Timestamp(T0 + 21 * MIN));
        wait_seen(&fake, 2);
        // 20 touches at 150 ms each would take 3 s; the stop takes one request's time.
        let t = Instant::now();
        s.stop();
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        let sent_before = fake.seen().len();
        assert!(sent_before < orders.len(), "{sent_before}");
        // At the next start the rest go out, each once, with its own key.
        let config = upsell_appliance::config::parse(
            &crate::support::config_text_with(
                tmp.path(),
                "127.0.0.1:0",
                "127.0.0.1:0",
                &klaviyo_channels(&fake.url),
            ),
            std::path::Path::new("/"),
            upsell_appliance::config::Origin::Demo,
        )
        .unwrap();
        let s = TestServer::start_config(
            config,
            tmp.path(),
            upsell_appliance::app::Options {
                clock: clock.clone(),
                ..Default::default()
            },
        );
        for &o in &orders {
            wait_for(&s, &o.to_string(), "touch1", "sent");
        }
        let keys: std::collections::BTreeSet<String> = fake
            .seen()
            .iter()
            .map(|r| {
                serde_json::from_str::<Value>(&r.body).unwrap()["data"]["attributes"]["unique_id"]
                    .to_string()
            })
            .collect();
        assert_eq!(keys.len(), orders.len(), "one key per touch");
        assert!(
            fake.seen().len() <= orders.len() + 2,
            "{} requests",
            fake.seen().len()
        );
    }

    #[test]
    fn also_webhook_copies_each_message_sent_to_the_stores_webhook() {
        let fake = Fake::start(vec![Some((204, vec![], String::new()))]);
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
        let extra = format!(
            "mode = \"live\"\n[stores.channels]\nalso_webhook = true\n[stores.channels.webhook]\nurl = \"{}/hook\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\n",
            fake.url
        );
        let s = TestServer::start_demo_with(tmp.path(), clock.clone(), &extra);
        order(&s, 9841);
        clock.set(Timestamp(T0 + 21 * MIN));
        // Email goes to the outbox (the default route); its copy to the webhook.
        let seen = wait_seen(&fake, 1);
        let body: Value = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(body["kind"], "touch1");
        assert_eq!(body["order"], "9841");
        assert_eq!(body["email"], "c9841@example.com");
        assert_eq!(outbox(tmp.path()).len(), 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(fake.seen().len(), 1, "one copy, not a copy of the copy");
        // Counted per channel.
        let st = s.status();
        assert_eq!(
            st["stores"][0]["touches"]["channels"],
            json!({"outbox": {"sent": 1, "retried": 0, "dead": 0},
                   "webhook": {"sent": 1, "retried": 0, "dead": 0}}),
            "{st}"
        );
    }

    #[test]
    fn a_stop_waits_at_most_10_s_for_a_provider_that_does_not_answer() {
        let fake = Fake::start(vec![None, Some((202, vec![], String::new()))]);
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
        let mut s = start(tmp.path(), clock.clone(), &fake);
        order(&s, 9861);
        clock.set(Timestamp(T0 + 21 * MIN));
        wait_seen(&fake, 1);
        let t = Instant::now();
        s.stop();
        let took = t.elapsed();
        assert!(took < Duration::from_secs(12), "{took:?}");
        assert!(
            took >= Duration::from_secs(9),
            "it waited for the request: {took:?}"
        );
    }

    #[test]
    fn a_refusal_is_a_dead_letter_at_once_with_the_providers_reason() {
        let fake = Fake::start(vec![
            Some((
                400,
                vec![],
                r#"{"errors":[{"detail":"profile email is invalid"}]}"#.into(),
            )),
            Some((202, vec![], String::new())),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
        let s = start(tmp.path(), clock.clone(), &fake);
        order(&s, 9802);
        clock.set(Timestamp(T0 + 21 * MIN));
        let (_, why) = wait_for(&s, "9802", "touch1", "dead");
        assert!(
            why.contains("400") && why.contains("profile email is invalid"),
            "{why}"
        );
        assert_eq!(fake.seen().len(), 1, "not retried");
        assert_eq!(s.status()["stores"][0]["touches"]["dead"]["refused"], 1);
        // Listed with the reason; retried by the operator, it goes out.
        let (code, body) = s.admin_get(&format!("/api/deadletters?store={STORE}"));
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let d = &v["dead_letters"][0];
        assert_eq!(d["order"], "9802");
        assert_eq!(d["kind"], "touch1");
        assert!(
            d["reason"]
                .as_str()
                .unwrap()
                .contains("profile email is invalid"),
            "{v}"
        );
        let id = d["touch_id"].as_u64().unwrap();
        let (code, body) =
            s.admin_post(&format!("/api/deadletters/retry?store={STORE}&touch={id}"));
        assert_eq!(code, 200, "{body}");
        wait_for(&s, "9802", "touch1", "sent");
        assert_eq!(fake.seen().len(), 2);
        let (_, body) = s.admin_get(&format!("/api/deadletters?store={STORE}"));
        assert!(body.contains("\"dead_letters\":[]"), "{body}");
        // The API key shows nowhere: status, dead letters, explain, the status page.
        let page = {
            use crate::status_page::{cookie_of, page, sign_in};
            let g = page(&s, Some(&cookie_of(&sign_in(&s, crate::support::TOKEN))));
            assert_eq!(g.status, 200);
            assert!(g.body.contains("Touches"), "{}", g.body);
            g.body
        };
        for text in [
            s.status().to_string(),
            s.admin_get(&format!("/api/deadletters?store={STORE}")).1,
            explain(&s, "9802").to_string(),
            page,
        ] {
            assert!(!text.contains("pk_test_0123456789"), "{text}");
        }
        // Not a dead letter any more: refused with what to do.
        let (code, body) = s.admin_post(&format!("/api/deadletters/drop?store={STORE}&touch={id}"));
        assert_eq!(code, 400);
        assert!(body.contains("is not a dead letter (it is sent)"), "{body}");
    }

    #[test]
    fn a_provider_down_for_6_hours_delivers_a_day_n_touch_after_recovery() {
        // Touch-2 (day 4, 2 days' grace): five failures over about 7.5 hours, then taken.
        let mut script = vec![Some((202, vec![], String::new()))]; // touch-1
        script.extend((0..5).map(|_| Some((503, vec![], "maintenance".into()))));
        script.push(Some((202, vec![], String::new())));
        let fake = Fake::start(script);
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
        let s = start(tmp.path(), clock.clone(), &fake);
        order(&s, 9803);
        clock.set(Timestamp(T0 + 21 * MIN));
        wait_for(&s, "9803", "touch1", "sent");
        let mut now = T0 + 4 * DAY;
        // Each step is past the jittered wait (+10% at most) of the attempt before.
        for (i, step) in [0, 6_000, 6 * MIN, 35 * MIN, 135 * MIN, 335 * MIN]
            .into_iter()
            .enumerate()
        {
            now += step;
            clock.set(Timestamp(now));
            wait_seen(&fake, 2 + i);
        }
        wait_for(&s, "9803", "touch2", "sent");
        assert_eq!(fake.seen().len(), 7, "touch-1, five failures, the delivery");
        assert!(now - (T0 + 4 * DAY) > 6 * 60 * MIN, "over 6 hours down");
    }
}

mod links {
    //! The links in messages, end to end: the outbox line carries them, the public
    //! listener answers them.

    use super::*;
    use crate::scheduler::{outbox, wait_state};
    use crate::support::{no_redirects, TestServer};
    use upsell_appliance::clock::TestClock;

    const T0: i64 = 1_795_186_800_000;
    const MIN: i64 = 60_000;
    const DAY: i64 = 86_400_000;

    /// The link as the local server answers it (the config's public_url is a placeholder).
    fn local(s: &TestServer, url: &str) -> String {
        let path = url.strip_prefix("https://upsell.example.com").expect(url);
        s.url(path)
    }

    #[test]
    fn a_tracked_link_redirects_with_utm_and_an_unsubscribe_stops_the_next_touch() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
        let s = TestServer::start_demo(tmp.path(), clock.clone());
        let body = serde_json::to_vec(&json!({
            "id": 9901, "name": "#9901", "email": "lin@example.com",
            "created_at": Timestamp(T0).to_rfc3339(), "updated_at": Timestamp(T0).to_rfc3339(),
            "currency": "USD", "total_price": "54.00", "financial_status": "paid",
            "line_items": [{"id": 1, "sku": "KIT-POUR", "quantity": 1, "price": "54.00",
                "title": "Pour-over Kit", "requires_shipping": false}],
            "customer": {"id": 8901, "email": "lin@example.com",
                "email_marketing_consent": {"state": "subscribed"}}
        }))
        .unwrap();
        assert_eq!(s.webhook("orders/paid", "l9901", &body), 200);
        wait_state(&s, "9901", "touch1", "scheduled");
        clock.set(Timestamp(T0 + 21 * MIN));
        wait_state(&s, "9901", "touch1", "sent");
        let line = outbox(tmp.path()).pop().unwrap();
        let unsub = line["links"]["unsubscribe"].as_str().unwrap().to_string();
        let id: u64 = line["touch_id"].as_str().unwrap().parse().unwrap();
        // Messages link to the offer page now (tests/it/offers.rs); the tracked product
        // link of messages sent before it still works.
        let key = s.running().storage.link_key("main").unwrap();
        let click = upsell_appliance::engine::links::url(
            "https://upsell.example.com",
            &key,
            upsell_appliance::engine::links::Link::Redirect,
            "main",
            id,
        );

        // The tracked link: 302 to the product with UTM.
        let agent = no_redirects();
        let resp = agent
            .get(&local(&s, &click))
            .header("User-Agent", "Mozilla/5.0 (iPhone) Mobile")
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 302);
        let to = resp.headers()["location"].to_str().unwrap().to_string();
        assert!(
            to.starts_with("https://test-store.myshopify.com/products/"),
            "{to}"
        );
        for p in [
            "utm_source=upsell-appliance",
            "utm_medium=email",
            "utm_campaign=welcome",
            "utm_content=touch1",
        ] {
            assert!(to.contains(p), "{p} in {to}");
        }
        let clicks = s.running().storage.snapshot().unwrap().clicks(id).unwrap();
        assert_eq!(clicks.len(), 1);
        assert_eq!(clicks[0].1, "mobile");

        // Forged and altered tokens: a 404 page, nothing recorded.
        let altered = format!("{}x", local(&s, &click));
        let forged = s.url(&format!("/r/main/{id}.AAAAAAAAAAAAAAAAAAAAAA"));
        for u in [
            altered,
            forged,
            s.url("/r/main/nonsense"),
            s.url("/u/other/1.abc"),
        ] {
            let r = agent.get(&u).call().unwrap();
            assert_eq!(r.status().as_u16(), 404, "{u}");
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

        // Unsubscribe: GET asks, the one-click POST does it, at once and idempotently.
        let r = agent.get(&local(&s, &unsub)).call().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let page = r.into_body().read_to_string().unwrap();
        assert!(page.contains("<form method=\"post\""), "{page}");
        for _ in 0..2 {
            let mut r = agent
                .post(&local(&s, &unsub))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send("List-Unsubscribe=One-Click")
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let page = r.body_mut().read_to_string().unwrap();
            assert!(page.contains("l***@example.com"), "{page}");
        }
        // The very next due touch is skipped.
        clock.set(Timestamp(T0 + 4 * DAY + MIN));
        let v = wait_state(&s, "9901", "touch2", "skipped");
        let t2 = crate::scheduler::touch(&v, "touch2");
        assert_eq!(t2["state_reason"], "the customer unsubscribed", "{v:#}");
    }
}

/// `send-test` from the command line with the service stopped: a real offer rendered and
/// sent through the store's channel to the address given; with the outbox route, shown.
#[test]
fn send_test_sends_a_real_offer_through_the_configured_channel() {
    let fake = Fake::start(vec![Some((202, vec![], String::new()))]);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        let storage = upsell_appliance::storage::Storage::open(&data, &Default::default()).unwrap();
        let cfg = crate::support::test_config(&data);
        crate::support::import_demo(&storage, &cfg, crate::support::STORE);
    }
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        crate::support::config_text_with(
            &data,
            "127.0.0.1:0",
            "127.0.0.1:0",
            &klaviyo_channels(&fake.url),
        ),
    )
    .unwrap();
    let run = |args: &[&str]| crate::cli::run(args, tmp.path());
    let cfg = config.to_str().unwrap();
    let (code, out, err) = run(&[
        "send-test",
        "--config",
        cfg,
        "--store",
        "main",
        "--touch",
        "touch1",
        "--to",
        "me@example.com",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["sent"].as_bool(), v["channel"].as_str()),
        (Some(true), Some("klaviyo")),
        "{v}"
    );
    let body: Value = serde_json::from_str(&fake.seen()[0].body).unwrap();
    let a = &body["data"]["attributes"];
    assert_eq!(
        a["profile"]["data"]["attributes"]["email"],
        "me@example.com"
    );
    assert!(
        a["properties"]["product_title"].is_string(),
        "a real offer: {body}"
    );
    // SMS goes to the outbox in this config: rendered, not sent.
    let (code, out, err) = run(&[
        "send-test",
        "--config",
        cfg,
        "--store",
        "main",
        "--touch",
        "sms",
        "--to",
        "+16175550100",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sent"], false);
    assert!(
        v["rendered"]["sms"]
            .as_str()
            .unwrap()
            .ends_with("STOP=stop"),
        "{v}"
    );
    // Bad input says what to do.
    let (code, _, err) = run(&[
        "send-test",
        "--config",
        cfg,
        "--store",
        "main",
        "--touch",
        "touch9",
        "--to",
        "me@example.com",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a touch kind"), "{err}");
    let (code, _, err) = run(&[
        "send-test",
        "--config",
        cfg,
        "--store",
        "main",
        "--touch",
        "sms",
        "--to",
        "me@example.com",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("E.164"), "{err}");
    assert_eq!(fake.seen().len(), 1);
}

/// kill -9 after the provider has the request and before our commit: at the next start
/// the touch goes again with the same idempotency key (Klaviyo drops the repeat), and is
/// then recorded sent once.
#[test]
fn kill_9_between_the_providers_answer_and_our_commit_resends_with_the_same_key() {
    use std::sync::atomic::{AtomicU32, Ordering};
    // The fake kills the service when the first request arrives, before answering: the
    // provider has it, we never learn. Later requests get 202.
    let victim = Arc::new(AtomicU32::new(0));
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (victim, seen) = (victim.clone(), seen.clone());
        std::thread::spawn(move || {
            for mut rq in server.incoming_requests() {
                let mut body = String::new();
                std::io::Read::read_to_string(rq.as_reader(), &mut body).unwrap();
                let first = {
                    let mut s = seen.lock().unwrap();
                    s.push(body);
                    s.len() == 1
                };
                if first {
                    let pid = victim.load(Ordering::SeqCst);
                    std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status()
                        .unwrap();
                    drop(rq);
                } else {
                    let _ = rq.respond(tiny_http::Response::empty(202));
                }
            }
        });
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        let storage = upsell_appliance::storage::Storage::open(&data, &Default::default()).unwrap();
        crate::support::import_demo(
            &storage,
            &crate::support::test_config(&data),
            crate::support::STORE,
        );
    }
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        crate::support::config_text_with(
            &data,
            "127.0.0.1:0",
            "127.0.0.1:0",
            &klaviyo_channels(&url),
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap().to_string();
    // 600x: touch-1's 20 minutes pass in 2 seconds.
    let serve = || {
        let mut cmd = crate::cli::bin();
        cmd.args(["serve", "--config", &cfg, "--time-scale", "600"]);
        crate::crash::start_cmd(cmd)
    };
    let (mut child, addr) = serve();
    victim.store(child.id(), Ordering::SeqCst);
    let created = chrono::Utc::now().to_rfc3339();
    let body = serde_json::to_vec(&json!({
        "id": 9951, "name": "#9951", "email": "kit@example.com",
        "created_at": created, "currency": "USD", "total_price": "54.00", "financial_status": "paid",
        "line_items": [{"id": 1, "sku": "KIT-POUR", "quantity": 1, "price": "54.00",
            "title": "Pour-over Kit", "requires_shipping": false}],
        "customer": {"id": 89951, "email": "kit@example.com",
            "email_marketing_consent": {"state": "subscribed"}}
    }))
    .unwrap();
    let sig = upsell_appliance::ingest::shopify::sign(&body, crate::support::SECRET);
    let resp = crate::support::agent()
        .post(&format!("http://{addr}/webhooks/{}", crate::support::STORE))
        .header("X-Shopify-Topic", "orders/paid")
        .header("X-Shopify-Hmac-Sha256", &sig)
        .header("X-Shopify-Event-Id", "k9951")
        .send(&body[..])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The first send kills it.
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    let (mut child, _) = serve();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "never sent again");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    crate::crash::sigterm(&child);
    assert!(child.wait().unwrap().success());
    let bodies = seen.lock().unwrap().clone();
    let key = |b: &str| {
        serde_json::from_str::<Value>(b).unwrap()["data"]["attributes"]["unique_id"].clone()
    };
    let touch1: Vec<&String> = bodies
        .iter()
        .filter(|b| {
            serde_json::from_str::<Value>(b).unwrap()["data"]["attributes"]["properties"]["touch"]
                == "touch1"
        })
        .collect();
    assert_eq!(touch1.len(), 2, "sent, interrupted, sent again: {bodies:?}");
    assert_eq!(key(touch1[0]), key(touch1[1]), "the same idempotency key");
    // Recorded sent once, through Klaviyo.
    let out = crate::cli::bin()
        .args([
            "explain",
            "#9951",
            "--config",
            &cfg,
            "--store",
            crate::support::STORE,
            "--json",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = crate::scheduler::touch(&v, "touch1");
    assert_eq!(t["state"], "sent", "{v:#}");
}

/// A STOP reply to the store's Twilio number (signed by Twilio) suppresses the number at
/// once; an unsigned or altered one is refused.
#[test]
fn a_signed_sms_stop_reply_suppresses_the_number() {
    use upsell_appliance::clock::TestClock;
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(1_795_186_800_000)));
    let extra = "mode = \"live\"\n[stores.channels]\nsms = \"twilio\"\n[stores.channels.twilio]\naccount_sid = \"AC0123456789abcdef0123456789abcdef\"\nauth_token = \"tok_0123456789\"\nfrom = \"+16175550199\"\n";
    let s = crate::support::TestServer::start_demo_with(tmp.path(), clock, extra);
    let params = vec![
        ("From".to_string(), "+16175550100".to_string()),
        ("To".to_string(), "+16175550199".to_string()),
        ("Body".to_string(), "Stop".to_string()),
    ];
    let form = "From=%2B16175550100&To=%2B16175550199&Body=Stop";
    let url = "https://upsell.example.com/sms/main/inbound";
    let sig = upsell_appliance::ingest::twilio::signature("tok_0123456789", url, &params);
    let post = |sig: &str, form: &str| {
        crate::support::agent()
            .post(&s.url("/sms/main/inbound"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", sig)
            .send(form)
            .unwrap()
            .status()
            .as_u16()
    };
    let suppressed = || {
        s.running()
            .storage
            .snapshot()
            .unwrap()
            .suppression("main", "phone:+16175550100")
            .unwrap()
    };
    assert_eq!(post("forged", form), 403);
    assert_eq!(post(&sig, &form.replace("0100", "0101")), 403, "altered");
    assert!(suppressed().is_none());
    assert_eq!(post(&sig, form), 200);
    let row = suppressed().expect("suppressed");
    assert_eq!(row.source, "SMS STOP reply");
}
