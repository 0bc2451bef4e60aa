//! The go-live switch and pause/resume, end to end on a test clock: a dry run writes the
//! outbox only (send-test still sends), a pause stops every send at once and survives a
//! restart, and what fell due while paused follows the misfire policy after `resume`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use upsell_appliance::app::Options;
use upsell_appliance::clock::TestClock;
use upsell_appliance::config::{self, Origin};
use upsell_appliance::engine::history::Customer;
use upsell_appliance::engine::lifecycle::{PlanRecord, Status};
use upsell_appliance::engine::plan::{Channel, Plan, Touch, TouchKind};
use upsell_appliance::engine::Timestamp;
use upsell_appliance::storage::plans::PlanWrites;
use upsell_appliance::storage::{Changes, Storage};

use crate::outbound::routed::order;
use crate::outbound::{klaviyo_channels, klaviyo_routes, Fake};
use crate::scheduler::{explain, outbox, touch, wait_outbox, wait_state};
use crate::support::{config_text_with, TestServer, STORE};

/// 2026-11-20T15:00:00Z
const T0: i64 = 1_795_186_800_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 86_400_000;

fn pause(s: &TestServer, pause: bool) -> Value {
    let verb = if pause { "pause" } else { "resume" };
    let (code, body) = s.admin_post(&format!("/api/{verb}?store={STORE}"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The status page, opened with the bearer token.
fn page(s: &TestServer) -> String {
    let (code, body) = s.admin_get("/");
    assert_eq!(code, 200, "{body}");
    body
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Klaviyo's `unique_id` (the touch id) of each request the fake saw.
fn keys(fake: &Fake) -> Vec<String> {
    fake.seen()
        .iter()
        .map(|r| {
            let b: Value = serde_json::from_str(&r.body).unwrap();
            b["data"]["attributes"]["unique_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// `n` customers with one touch-1 each, all due at `due`, written straight into the
/// database (as the deliver benchmark does): a burst without `n` webhooks.
fn populate(dir: &Path, n: u64, due: i64) {
    let s = Storage::open(dir, &Default::default()).unwrap();
    let mut changes = Changes::new(0);
    for c in 1..=n {
        let mut cust = Customer::new(c);
        cust.email = Some(format!("c{c}@example.com"));
        changes.put_customer(STORE, &cust).unwrap();
    }
    s.apply_changes(&changes).unwrap();
    let plans = (1..=n)
        .map(|c| {
            let rec = PlanRecord {
                order_id: c.to_string(),
                order_name: format!("#{c}"),
                customer: Some(c),
                order_at: Timestamp(due - DAY),
                first_planned_at: Timestamp(due - DAY),
                revision: 1,
                plan: Plan {
                    recipe: None,
                    offer: None,
                    holdout: false,
                    variants: vec![],
                    touches: vec![Touch {
                        kind: TouchKind::Touch1,
                        channel: Channel::Email,
                        due_at: Timestamp(due),
                        after_delivery: false,
                    }],
                    reasons: vec![],
                },
                sent: vec![],
                status: Status::Active,
                refunded_at: None,
                history: vec![],
            };
            (STORE.to_string(), rec)
        })
        .collect();
    s.write_plans(&PlanWrites {
        plans,
        ..Default::default()
    })
    .unwrap();
    s.sync().unwrap();
}

/// The test: a pause during a burst of sends to a provider stops them at once (the
/// count when `pause` returns does not move), and after `resume` every touch has gone out
/// exactly once.
#[test]
fn pause_during_a_burst_sends_nothing_while_paused_and_each_touch_once_after_resume() {
    const N: u64 = 3_000;
    // A millisecond per answer: the burst lasts seconds, so the pause lands inside it.
    let fake = Fake::start_delayed(
        vec![Some((202, vec![], String::new()))],
        Duration::from_millis(1),
    );
    let tmp = tempfile::tempdir().unwrap();
    populate(tmp.path(), N, T0 + MIN);
    let extra = format!("{}rate_per_second = 10000\n", klaviyo_channels(&fake.url));
    let config = config::parse(
        &config_text_with(tmp.path(), "127.0.0.1:0", "127.0.0.1:0", &extra),
        Path::new("/"),
        Origin::Demo,
    )
    .unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0)));
    let s = TestServer::start_config(
        config,
        tmp.path(),
        Options {
            clock: clock.clone(),
            ..Default::default()
        },
    );
    clock.set(Timestamp(T0 + MIN));
    wait_until("200 sent", || fake.seen().len() >= 200);
    let v = pause(&s, true);
    let at_pause = fake.seen().len();
    assert_eq!(
        (&v["paused"], &v["changed"], &v["still_sending"]),
        (&json!(true), &json!(true), &json!(0)),
        "{v}"
    );
    assert!(at_pause < N as usize, "the burst was over before the pause");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fake.seen().len(), at_pause, "sent while paused");
    let st = s.status();
    assert!(st["stores"][0]["paused_since"].is_string(), "{st}");
    assert!(st["notices"].as_array().unwrap().iter().any(|n| n["text"]
        .as_str()
        .unwrap()
        .contains(" — nothing is sent (paused through the admin API)")));
    let page = page(&s);
    assert!(page.contains("Store main: PAUSED since "), "{page}");
    assert!(page.contains("<dt>Sending</dt><dd>paused<small>since just now</small></dd>"));

    let v = pause(&s, false);
    assert_eq!((&v["paused"], &v["changed"]), (&json!(false), &json!(true)));
    wait_until("every touch sent", || fake.seen().len() >= N as usize);
    wait_until("every touch recorded sent", || {
        s.status()["stores"][0]["touches"]["sent"]["touch1"] == N
    });
    std::thread::sleep(Duration::from_millis(300));
    let keys = keys(&fake);
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), N as usize, "no touch twice");
    assert_eq!(distinct.len(), N as usize);
    let st = s.status();
    assert_eq!(st["stores"][0]["paused_since"], Value::Null);
    assert_eq!(st["stores"][0]["touches"]["pending"], 0, "{st}");
    // Touches caught between their decision and their send were put back, and counted.
    let deferred = &st["stores"][0]["touches"]["deferred"];
    assert!(
        deferred.as_object().unwrap().keys().all(|k| k == "paused"),
        "{deferred}"
    );
}

/// A pause is durable: the service restarted (by systemd after a crash, say) still sends
/// nothing; `resume` sends what fell due meanwhile, within its grace. It holds the outbox
/// of a dry run as well.
#[test]
fn a_pause_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let mut s = TestServer::start_demo(tmp.path(), clock.clone());
    order(&s, 9501);
    let v = pause(&s, true);
    assert_eq!(v["paused_since"], Timestamp(T0 + MIN).to_rfc3339(), "{v}");
    assert_eq!(v["paused_by"], "the admin API");
    // Pausing again changes nothing, and says so.
    let v = pause(&s, true);
    assert_eq!((&v["changed"], &v["paused"]), (&json!(false), &json!(true)));
    assert_eq!(v["paused_since"], Timestamp(T0 + MIN).to_rfc3339());
    s.stop();

    let s = TestServer::start_with(
        tmp.path(),
        Options {
            clock: clock.clone(),
            ..Default::default()
        },
    );
    assert_eq!(
        s.status()["stores"][0]["paused_since"],
        Timestamp(T0 + MIN).to_rfc3339()
    );
    clock.set(Timestamp(T0 + 21 * MIN));
    std::thread::sleep(Duration::from_millis(500));
    assert!(outbox(tmp.path()).is_empty(), "sent after the restart");
    let t1 = touch(&explain(&s, "9501"), "touch1").clone();
    assert_eq!(t1["state"], "scheduled", "{t1}");
    assert_eq!(t1["due_at"], Timestamp(T0 + 20 * MIN).to_rfc3339());

    pause(&s, false);
    let lines = wait_outbox(tmp.path(), 1);
    assert_eq!(lines[0]["kind"], "touch1");
    assert_eq!(lines[0]["due_at"], Timestamp(T0 + 20 * MIN).to_rfc3339());
    wait_state(&s, "9501", "touch1", "sent");
}

/// The misfire policy after a pause: a touch that fell due while paused and is resumed
/// past its kind's grace (2 h for touch-1) is skipped as stale, not sent late.
#[test]
fn a_touch_due_while_paused_and_resumed_after_its_grace_is_skipped_as_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0 + MIN)));
    let s = TestServer::start_demo(tmp.path(), clock.clone());
    order(&s, 9601);
    pause(&s, true);
    clock.set(Timestamp(T0 + 21 * MIN));
    std::thread::sleep(Duration::from_millis(300));
    clock.set(Timestamp(T0 + 20 * MIN + 3 * HOUR));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        touch(&explain(&s, "9601"), "touch1")["state"],
        "scheduled",
        "held, not decided, while paused"
    );
    pause(&s, false);
    let v = wait_state(&s, "9601", "touch1", "skipped");
    let reason = touch(&v, "touch1")["state_reason"].as_str().unwrap();
    assert!(reason.starts_with("stale"), "{reason}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(outbox(tmp.path()).is_empty());
    let t = &s.status()["stores"][0]["touches"];
    assert_eq!(t["skipped"]["stale"], 1, "{t}");
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
    let page = page(&s);
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
