//! Quarantine: signed deliveries this build cannot parse are kept, listed, shown, and
//! replayed through a newer parser.

use upsell_appliance::engine::Event;
use upsell_appliance::ingest::{shopify, Parsed};
use upsell_appliance::storage::records::ParsedRecord;
use upsell_appliance::storage::{Faults, Storage};

use crate::cli::bin;
use crate::fixtures::*;
use crate::support::*;

/// An orders/paid body that this build cannot read: total_price is an object.
pub fn unreadable() -> Vec<u8> {
    let good = String::from_utf8(order_json(&OrderSpec::three_lines(900))).unwrap();
    let bad = good.replacen(
        "\"total_price\":\"115.00\"",
        "\"total_price\":{\"amount\":\"115.00\"}",
        1,
    );
    assert_ne!(
        good, bad,
        "fixture changed: the replacement no longer applies"
    );
    bad.into_bytes()
}

#[test]
fn quarantined_delivery_is_listed_shown_and_released_by_a_newer_parser() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(tmp.path(), Faults::default());
    let body = unreadable();
    assert_eq!(s.webhook("orders/paid", "q-1", &body), 200);
    assert_eq!(s.store_status()["webhooks"]["quarantined"], 1);
    s.wait_processed();
    assert_eq!(s.store_status()["orders"], 0);
    let storage = &s.running().storage;
    let q = storage.quarantined(Some(STORE)).unwrap();
    assert_eq!(q.len(), 1);
    let (seq, head) = &q[0];
    let ParsedRecord::Unparseable(why) = &head.parsed else {
        panic!()
    };
    assert!(why.contains("expected a decimal amount"), "{why}");
    assert_eq!(storage.event(*seq).unwrap().unwrap().body, body);
    // Replaying with this build's parser changes nothing.
    let same =
        upsell_appliance::http::admin::quarantine_replay(storage, &test_config(tmp.path()), None)
            .unwrap();
    assert_eq!(same["replayed"][0]["new_seq"], serde_json::Value::Null);
    assert_eq!(storage.quarantined(None).unwrap().len(), 1);
    s.stop();

    // A newer parser that reads `total_price` objects (stood in for by a closure here).
    let storage = Storage::open(tmp.path(), &Default::default()).unwrap();
    let fixed = |_: &upsell_appliance::storage::records::EventHead, b: &[u8]| {
        let text = String::from_utf8(b.to_vec()).unwrap();
        let text = text.replacen("{\"amount\":\"115.00\"}", "\"115.00\"", 1);
        match shopify::normalize("orders/paid", text.as_bytes(), None) {
            Parsed::Event(e) => ParsedRecord::Event(e),
            other => panic!("{other:?}"),
        }
    };
    let out = storage.replay_quarantined(Some(STORE), fixed).unwrap();
    assert_eq!(out.len(), 1);
    let (old, new, parsed) = &out[0];
    assert!(new.unwrap() > *old);
    assert!(matches!(parsed, ParsedRecord::Event(Event::Order { .. })));
    assert!(storage.quarantined(None).unwrap().is_empty());
    assert!(storage.event(*old).unwrap().is_none());
    let (seq, rec) = storage.event_by_key(STORE, "event:q-1").unwrap().unwrap();
    assert_eq!((seq, rec.body), (new.unwrap(), body.clone()));
    drop(storage);

    // The service applies the released delivery like a new one; a redelivery is a duplicate.
    let s = TestServer::start_in(tmp.path(), Faults::default());
    s.wait_processed();
    let st = s.store_status();
    assert_eq!(
        (st["orders"].clone(), st["webhooks"]["quarantined"].clone()),
        (1.into(), 0.into())
    );
    assert_eq!(st["webhooks"]["accepted"], 1);
    assert_eq!(s.webhook("orders/paid", "q-1", &body), 200);
    assert_eq!(s.store_status()["webhooks"]["duplicate"], 1);
}

#[test]
fn quarantine_cli_works_with_and_without_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", crate::cli::free_port());
    let admin = format!("127.0.0.1:{}", crate::cli::free_port());
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        config_text(&tmp.path().join("data"), &listen, &admin),
    )
    .unwrap();
    let config = config.display().to_string();
    let run = |args: &[&str]| {
        let out = bin()
            .args(args)
            .args(["--config", &config])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (mut child, _) = crate::cli::spawn_serve(&["--config", &config], tmp.path());
    let body = unreadable();
    assert_eq!(post_paid(&agent(), &listen, "cli-q", &body), Some(200));
    let live: serde_json::Value =
        serde_json::from_str(&run(&["quarantine", "list", "--json"])).unwrap();
    let seq = live["quarantined"][0]["seq"].as_u64().unwrap();
    let shown = run(&["quarantine", "show", &seq.to_string()]);
    assert!(
        shown.contains("parse error: orders/paid: order JSON"),
        "{shown}"
    );
    assert!(shown.contains("x-shopify-event-id: cli-q"), "{shown}");
    let replayed = run(&["quarantine", "replay", "--store", STORE]);
    assert!(
        replayed.contains("0 of 1 released (from the running service"),
        "{replayed}"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let offline = run(&["quarantine", "list"]);
    assert!(
        offline.contains("1 quarantined (from the database in"),
        "{offline}"
    );
}
