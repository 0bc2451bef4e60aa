//! The lift report (issue 10) over a fixed history: twelve first orders split by a seeded
//! holdout salt, clicks, conversions (one of them an add-on, one refunded), an organic
//! purchase of the offer in the holdout group, repeat orders and an unsubscribe. The
//! admin API's JSON is compared with `tests/it/golden/report.json` (`UPDATE_GOLDEN=1`
//! rewrites it), and `report --json` with the service stopped prints the same.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use upsell_appliance::app::Options;
use upsell_appliance::clock::TestClock;
use upsell_appliance::config::{self, Origin};
use upsell_appliance::engine::Timestamp;

use crate::attribution::refund;
use crate::cadence::wait_planned;
use crate::offers::{get, place};
use crate::scheduler::{explain, outbox};
use crate::support::{config_text_with, import_demo, TestServer, STORE};

/// 2026-09-21T14:13:20Z.
const T0: i64 = 1_790_000_000_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const PERIOD: &str = "since=2026-09-01&until=2026-12-31";

fn config_text(dir: &Path) -> String {
    config_text_with(dir, "127.0.0.1:0", "127.0.0.1:0", "")
        .replace("holdout_percent = 0", "holdout_percent = 50")
}

/// Builds the history; returns the server, its clock and the report's JSON from the
/// admin API.
pub(crate) fn history(dir: &Path) -> (TestServer, Arc<TestClock>, Value) {
    let clock = Arc::new(TestClock::at(Timestamp(T0)));
    let config = config::parse(&config_text(dir), Path::new("/"), Origin::Demo).unwrap();
    let s = TestServer::start_config(
        config.clone(),
        dir,
        Options {
            clock: clock.clone(),
            ..Options::default()
        },
    );
    s.running()
        .storage
        .seed_salt(STORE, b"report fixture salt")
        .unwrap();
    import_demo(&s.running().storage, &config, STORE);

    // Twelve first orders, a minute apart; every third with a mug too.
    let mut treated = Vec::new();
    let mut holdout = Vec::new();
    for i in 0..12u64 {
        let mut lines = vec![("KIT-POUR", "54.00")];
        if i % 3 == 0 {
            lines.push(("MUG-CER", "14.00"));
        }
        place(&s, 9901 + i, 8901 + i, T0 + i as i64 * MIN, &lines);
        let v = wait_planned(&s, &(9901 + i).to_string());
        if v["holdout"] == true {
            holdout.push(9901 + i);
        } else {
            treated.push(9901 + i);
        }
    }
    assert!(
        treated.len() >= 6 && holdout.len() >= 3,
        "the fixture needs both groups: {treated:?} {holdout:?}"
    );
    let (sku, price) = {
        let v = explain(&s, &treated[0].to_string());
        (
            v["offer"]["sku"].as_str().unwrap().to_string(),
            v["offer"]["price"].as_str().unwrap().to_string(),
        )
    };

    // Touch-1 goes out to the treated; four open their offer page, one unsubscribes.
    clock.set(Timestamp(T0 + 40 * MIN));
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = outbox(dir);
        if lines.len() >= treated.len() {
            break lines;
        }
        assert!(Instant::now() < deadline, "{} of {treated:?}", lines.len());
        std::thread::sleep(Duration::from_millis(20));
    };
    let line_of = |order: u64| {
        lines
            .iter()
            .find(|l| l["order"].as_str() == Some(order.to_string().as_str()))
            .unwrap_or_else(|| panic!("touch-1 of {order} in {lines:#?}"))
    };
    let path = |url: &Value| {
        url.as_str()
            .unwrap()
            .strip_prefix("https://upsell.example.com")
            .unwrap()
            .to_string()
    };
    for &o in &treated[..4] {
        assert_eq!(get(&s, &path(&line_of(o)["links"]["click"]), &[]).0, 200);
    }
    let r = crate::support::agent()
        .post(&s.url(&path(&line_of(treated[5])["links"]["unsubscribe"])))
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Later orders (ids 9951 on): conversions two days on, an add-on an hour on, one
    // outside the click window, one refunded; an organic purchase of the offer by a
    // holdout customer; repeat orders.
    let c = |o: u64| 8901 + (o - 9901);
    let later = [
        (treated[0], 2 * DAY, vec![(sku.as_str(), price.as_str())]),
        (treated[1], 2 * DAY, vec![(sku.as_str(), price.as_str())]),
        (treated[2], 10 * DAY, vec![(sku.as_str(), price.as_str())]),
        (treated[3], HOUR, vec![(sku.as_str(), price.as_str())]),
        (treated[4], 45 * DAY, vec![("KIT-POUR", "54.00")]),
        (holdout[0], 3 * DAY, vec![(sku.as_str(), price.as_str())]),
        (holdout[1], 70 * DAY, vec![("KIT-POUR", "54.00")]),
    ];
    for (i, (o, after, lines)) in later.iter().enumerate() {
        let id = 9951 + i as u64;
        place(&s, id, c(*o), T0 + after, lines);
        wait_planned(&s, &id.to_string());
    }
    refund(&s, 801, 9952, &price, T0 + 3 * DAY);
    let deadline = Instant::now() + Duration::from_secs(10);
    while explain(&s, &treated[1].to_string())["conversion"]["reversed"].is_null() {
        assert!(
            Instant::now() < deadline,
            "the refund never took the credit back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let (code, body) = s.admin_get(&format!("/api/report?store={STORE}&{PERIOD}"));
    assert_eq!(code, 200, "{body}");
    (s, clock, serde_json::from_str(&body).unwrap())
}

#[test]
fn report_json_matches_its_snapshot_from_the_api_and_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _, v) = history(tmp.path());

    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/golden/report.json");
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(
        text, want,
        "the report changed; if on purpose, UPDATE_GOLDEN=1 and read the diff"
    );

    // The service stopped: the command opens the file and prints the same.
    s.stop();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, config_text(tmp.path())).unwrap();
    let report = |args: &[&str]| {
        crate::cli::bin()
            .args([
                "report",
                "--config",
                config.to_str().unwrap(),
                "--store",
                STORE,
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let (from, to) = ("2026-09-01", "2026-12-31");
    let out = report(&["--since", from, "--until", to, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli, v);
    // And for a person.
    let out = report(&["--since", from, "--until", to]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "All orders",
        "AOV",
        "Repeat within 90 days",
        "not enough data yet",
        "Touch funnel",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    // Bad spans say what is expected.
    let out = report(&["--since", "soon"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("30d, 12w or 48h"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
