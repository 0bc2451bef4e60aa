//! The engagement intake (issue 10, part): Postmark's webhooks (and the generic JSON) with
//! basic auth or a secret path; wrong credentials record nothing; a spam complaint
//! suppresses the customer before the next due touch.

use std::sync::Arc;

use serde_json::{json, Value};
use upsell_appliance::clock::TestClock;
use upsell_appliance::engine::Timestamp;

use crate::scheduler::{outbox, touch, wait_state};
use crate::support::{TestServer, STORE};

/// As `outbound::routed::order` places its order: 2026-11-20T15:00:00Z.
const T0: i64 = 1_795_186_800_000;
const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;
const BASIC: &str = "postmark:0123456789abcdef0123";
const PATH_SECRET: &str = "s3cr3t-path-0123456789abcdef";

/// The demo store with an engagement intake, one order whose touch-1 has gone out.
fn start(dir: &std::path::Path) -> (TestServer, Arc<TestClock>, u64) {
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = TestServer::start_demo_with(
        dir,
        clock.clone(),
        &format!(
            "[stores.engagement]\nbasic_auth = \"{BASIC}\"\npath_secret = \"{PATH_SECRET}\"\n"
        ),
    );
    crate::outbound::routed::order(&s, 9901);
    clock.set(Timestamp(T0 + 21 * MIN));
    wait_state(&s, "9901", "touch1", "sent");
    let line = outbox(dir).pop().unwrap();
    let id = line["touch_id"].as_str().unwrap().parse().unwrap();
    (s, clock, id)
}

fn post(s: &TestServer, path: &str, auth: Option<&str>, body: &Value) -> (u16, String) {
    use base64::Engine as _;
    let basic = auth.map(|a| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(a)
        )
    });
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &basic {
        headers.push(("Authorization", b));
    }
    s.post(path, &headers, body.to_string().as_bytes())
}

fn postmark_open(id: u64) -> Value {
    json!({"RecordType": "Open", "MessageStream": "outbound", "FirstOpen": true,
        "Recipient": "c9901@example.com", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "ReceivedAt": Timestamp(T0 + 30 * MIN).to_rfc3339(), "Tag": "touch1",
        "Metadata": {"touch_id": id.to_string(), "order": "#9901"}})
}

#[test]
fn wrong_credentials_record_nothing_and_right_ones_record_opens_and_clicks() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _clock, id) = start(tmp.path());
    let path = format!("/webhooks/{STORE}/engagement");
    let opened = || s.running().storage.snapshot().unwrap().opened(id).unwrap();
    for (p, auth) in [
        (path.clone(), None),
        (path.clone(), Some("postmark:wrong-password-0000000")),
        (path.clone(), Some("someone:0123456789abcdef0123")),
        (format!("{path}/not-the-secret-0123456789abcdef"), None),
        (format!("{path}/{PATH_SECRET}x"), Some(BASIC)),
    ] {
        let (code, body) = post(&s, &p, auth, &postmark_open(id));
        assert_eq!(code, 401, "{p} {auth:?}: {body}");
    }
    assert_eq!(opened(), None, "nothing recorded");
    // A store without the intake, and a body that is not an engagement.
    let (code, _) = post(
        &s,
        "/webhooks/woo/engagement",
        Some(BASIC),
        &postmark_open(id),
    );
    assert_eq!(code, 404);
    let (code, body) = post(&s, &path, Some(BASIC), &json!({"type": "open"}));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("touch_id"), "{body}");
    assert_eq!(opened(), None);

    // Basic auth: the open is recorded at Postmark's time.
    let (code, body) = post(&s, &path, Some(BASIC), &postmark_open(id));
    assert_eq!(code, 200, "{body}");
    assert_eq!(opened(), Some(Timestamp(T0 + 30 * MIN)));
    // The secret path: a click, reported twice (a retry), is one click.
    let click = json!({"RecordType": "Click", "Recipient": "c9901@example.com",
        "OriginalLink": "https://example.com", "ReceivedAt": Timestamp(T0 + 31 * MIN).to_rfc3339(),
        "Metadata": {"touch_id": id.to_string()}});
    for _ in 0..2 {
        let (code, body) = post(&s, &format!("{path}/{PATH_SECRET}"), None, &click);
        assert_eq!(code, 200, "{body}");
    }
    let clicks = s.running().storage.snapshot().unwrap().clicks(id).unwrap();
    assert_eq!(clicks.len(), 1, "{clicks:?}");
    // Another store's touch id is not this store's to record.
    let (code, body) = post(
        &s,
        &path,
        Some(BASIC),
        &json!({"type": "open", "touch_id": 999_999}),
    );
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ignored"], 1);
}

#[test]
fn a_spam_complaint_suppresses_before_the_next_due_touch() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, clock, id) = start(tmp.path());
    let complaint = json!({"RecordType": "SpamComplaint", "MessageStream": "outbound",
        "Email": "c9901@example.com", "BouncedAt": Timestamp(T0 + 40 * MIN).to_rfc3339(),
        "Metadata": {"touch_id": id.to_string()}});
    let (code, body) = post(
        &s,
        &format!("/webhooks/{STORE}/engagement"),
        Some(BASIC),
        &complaint,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["suppressed"],
        1
    );
    clock.set(Timestamp(T0 + 4 * DAY + MIN));
    let v = wait_state(&s, "9901", "touch2", "skipped");
    assert_eq!(
        touch(&v, "touch2")["state_reason"],
        "the customer complained (marked as spam)",
        "{v:#}"
    );
}
