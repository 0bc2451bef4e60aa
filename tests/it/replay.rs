//! `replay`: the store owner's dry run over a small history built by hand, through the
//! command line as an operator runs it.

use std::path::Path;

use serde_json::{json, Value};
use upsell_appliance::storage::{self, Storage};

use crate::cli::{free_port, run, spawn_serve};

const CATALOG: &str = "sku,title,product_type,price,inventory
MUG,Stoneware Mug,Kitchen,20.00,100
SPOON,Tasting Spoon,Kitchen,8.00,100
KETTLE,Steel Kettle,Kitchen,40.00,100
";

/// Alice (customer 1) falls in the holdout group at 50%; Bob (customer 2) buys a kettle,
/// then another two days later.
const ORDERS: &str = "order_id,created_at,customer_id,email,sku,quantity,unit_price
1001,2026-03-02 10:00:00,c01,alice@example.com,MUG,1,20.00
1002,2026-03-09 10:00:00,c02,bob@example.com,KETTLE,1,40.00
1003,2026-03-11 10:00:00,c02,bob@example.com,KETTLE,1,40.00
";

fn setup(dir: &Path, admin_port: u16) -> String {
    let config = format!(
        "listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nadmin_token = \"0123456789abcdef0123\"\ndata_dir = \"data\"\n\
         [[stores]]\nid = \"shop\"\nplatform = \"shopify\"\ndomain = \"shop.myshopify.com\"\nwebhook_secrets = [\"s3cret\"]\n\
         [stores.offers]\nholdout_percent = 50\n",
        free_port()
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    std::fs::write(dir.join("catalog.csv"), CATALOG).unwrap();
    std::fs::write(dir.join("orders.csv"), ORDERS).unwrap();
    for what in ["catalog", "orders"] {
        let file = format!("{what}.csv");
        let (code, out, err) = run(&["import", what, &file, "--config", "config.toml"], dir);
        assert_eq!(code, 0, "import {what}: {out} {err}");
    }
    "config.toml".into()
}

fn replay_json(dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["replay", "--config", "config.toml", "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = run(&args, dir);
    assert_eq!(code, 0, "replay: {out} {err}");
    serde_json::from_str(&out).unwrap()
}

fn digest(dir: &Path) -> Vec<(String, u64, String)> {
    let s = Storage::open(&dir.join("data"), &storage::Options::default()).unwrap();
    s.digest().unwrap()
}

/// What the history gives, worked out by hand:
/// - Alice's order: no offer (under the store's median of 40.00, and nothing else she
///   has not bought is in the price window); she is held out anyway: no touches.
/// - Bob's 1002: the welcome upsell (first order at the median): the mug at 50% of the
///   kettle. Page and touch-1 go out on the day; touch-2, touch-3 and the review are
///   skipped when his second order ends the sequence (`bought_again`: 3).
/// - Bob's 1003: a cross-sell of the mug. Page and touch-1 (his second email in 7 days);
///   touch-2 on day 4 meets the cap of 2 emails a week and waits until day 5, when the
///   first email leaves the window (`frequency_cap`); touch-3 on day 35; the review waits
///   for a delivery the history never reports.
/// - Money at the default rates: 2 page views x 20.00 x 6.5% = 2.60; 4 emails x 20.00 x
///   15% x 6% = 0.72; on 80.00 of treated orders: 4.15%.
fn expected() -> Value {
    json!({
        "from": null,
        "to": null,
        "store": "shop",
        "orders": {"seen": 3, "customers": 2, "with_offer": 2, "holdout": 1,
                   "before_window": 0, "after_window": 0},
        "offers": {"welcome": 1, "cross_sell": 1, "none": 1},
        "no_touches": {"holdout": 1},
        "no_email": {},
        "no_sms": {"no_phone": 2},
        "touches": {
            "planned": {"page": 2, "touch1": 2, "touch2": 2, "touch3": 2, "review": 2},
            "sent": {"page": 2, "touch1": 2, "touch2": 1, "touch3": 1},
            "by_channel_day": {"email": {"0": 2, "5": 1, "35": 1}, "page": {"0": 2}},
            "skipped": {"bought_again": 3},
            "deferred": {"frequency_cap": 1, "awaiting_delivery": 1},
            "deferrals": {"frequency_cap": 1, "awaiting_delivery": 1},
            "pending_at_end": 0,
            "waiting_at_end": {"awaiting_delivery": 1}
        },
        "top_products": [{"product": "MUG", "title": "Stoneware Mug", "offers": 2, "sent": 6}],
        "projection": [{"currency": "USD", "treated_orders": 2, "treated_value": "80.00",
                        "upsell_revenue": "3.32", "page_revenue": "2.60",
                        "email_revenue": "0.72", "sms_revenue": "0.00", "aov_lift": 0.0415}]
    })
}

/// The report without what changes run to run (its end is the clock's now) and the
/// assumptions (checked apart).
fn counts(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    assert!(o.remove("until").is_some());
    assert!(o.remove("assumptions").unwrap().as_array().unwrap().len() >= 5);
    v
}

#[test]
fn replay_of_a_hand_built_history_gives_the_expected_counts_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, free_port());
    let before = digest(dir);
    let first = replay_json(dir, &[]);
    let second = replay_json(dir, &[]);
    assert_eq!(counts(first.clone()), expected());
    assert_eq!(counts(second), counts(first.clone()), "two replays differ");
    assert_eq!(
        digest(dir),
        before,
        "replay changed the database (per table: name, entries, SHA-256)"
    );
    assert!(before.iter().any(|(t, n, _)| t == "orders" && *n == 3));
    let text = first["assumptions"].to_string();
    assert!(text.contains("no holdout salt yet"), "{text}");

    // A window: only Bob's second order is planned; his first is history (it makes him a
    // repeat customer, so no welcome), Alice's too.
    let v = replay_json(dir, &["--from", "2026-03-10", "--to", "2026-03-11"]);
    assert_eq!(v["orders"]["seen"], 1);
    assert_eq!(v["orders"]["before_window"], 2);
    assert_eq!(v["offers"], json!({"cross_sell": 1}));
    assert_eq!(v["touches"]["sent"]["touch2"], 1, "{v}");

    // The report for a person says what it is and what is projected.
    let (code, out, err) = run(&["replay", "--config", "config.toml"], dir);
    assert_eq!(code, 0, "{err}");
    for want in [
        "Nothing was sent and nothing was written",
        "3 placed in the window, 2 customers",
        "frequency_cap 1",
        "bought_again 3",
        "PROJECTION (at assumed rates, not a measurement",
        "projected AOV lift 4.2%",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }

    // Bad input: a clear error, exit 1.
    for (args, want) in [
        (vec!["--from", "March"], "--from \"March\" is not a date"),
        (
            vec!["--from", "2026-04-01", "--to", "2026-03-01"],
            "is not before --to",
        ),
        (vec!["--store", "nope"], "no store with id \"nope\""),
    ] {
        let mut a = vec!["replay", "--config", "config.toml"];
        a.extend(args);
        let (code, _, err) = run(&a, dir);
        assert_ne!(code, 0);
        assert!(err.contains(want), "{want:?} not in {err:?}");
    }
}

#[test]
fn replay_through_the_running_service_gives_the_same_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let admin = free_port();
    setup(dir, admin);
    let from_file = replay_json(dir, &[]);
    let (mut child, _) = spawn_serve(&["--config", "config.toml"], dir);
    let (code, out, err) = run(&["replay", "--config", "config.toml"], dir);
    let through = replay_json(dir, &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("from the running service at 127.0.0.1:{admin}")),
        "{out}"
    );
    assert_eq!(counts(through), counts(from_file));
}

/// Orders outside `--from` still send (for the caps) and end sequences; they are just not
/// reported. Bob's first order is before the window: its touch-1 still holds his second
/// order's touch-2 to day 5.
#[test]
fn a_window_keeps_the_caps_of_messages_sent_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, free_port());
    let v = replay_json(dir, &["--from", "2026-03-10"]);
    assert_eq!(v["orders"]["seen"], 1, "{}", v["orders"]);
    assert_eq!(v["orders"]["customers"], 1, "{}", v["orders"]);
    assert_eq!(v["orders"]["before_window"], 2, "{}", v["orders"]);
    assert_eq!(
        v["touches"]["deferred"]["frequency_cap"], 1,
        "{}",
        v["touches"]
    );
    assert_eq!(
        v["touches"]["by_channel_day"],
        json!({"email": {"0": 1, "5": 1, "35": 1}, "page": {"0": 1}}),
        "only 1003's touches are reported"
    );
}

/// An order dated after the replay's end is neither seen nor makes a customer.
#[test]
fn an_order_after_the_end_is_not_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, free_port());
    let extra = "order_id,created_at,customer_id,email,sku,quantity,unit_price\n\
                 9001,2999-01-01 10:00:00,c77,future@example.com,MUG,1,20.00\n";
    std::fs::write(dir.join("future.csv"), extra).unwrap();
    let (code, out, err) = run(
        &["import", "orders", "future.csv", "--config", "config.toml"],
        dir,
    );
    assert_eq!(code, 0, "{out} {err}");
    let v = replay_json(dir, &[]);
    assert_eq!(v["orders"]["seen"], 3, "{}", v["orders"]);
    assert_eq!(v["orders"]["customers"], 2, "{}", v["orders"]);
}

/// The suppression list applies as it stands today: an imported list (dated at its
/// import, after the history) still stops Bob's touches.
#[test]
fn an_imported_suppression_list_applies_in_the_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, free_port());
    std::fs::write(
        dir.join("supp.csv"),
        "email,reason\nbob@example.com,unsubscribed\n",
    )
    .unwrap();
    let (code, out, err) = run(
        &[
            "import",
            "suppressions",
            "supp.csv",
            "--config",
            "config.toml",
        ],
        dir,
    );
    assert_eq!(code, 0, "{out} {err}");
    let v = replay_json(dir, &[]);
    assert_eq!(v["no_touches"], json!({"holdout": 1, "unsubscribed": 2}));
    assert_eq!(v["touches"]["sent"], json!({}), "{}", v["touches"]);
}
