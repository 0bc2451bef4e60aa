//! Scheduled jobs in the running service on a test clock: the purge removes raw bodies
//! past the retention at its slot and keeps recent and quarantined ones (and every head),
//! and the nightly affinity check finds the demo store's incremental counts equal to a
//! recount.

use std::sync::Arc;
use std::time::{Duration, Instant};

use upsell_appliance::clock::TestClock;
use upsell_appliance::engine::Timestamp;
use upsell_appliance::pipeline::jobs::LastRun;
use upsell_appliance::storage::Error;

use crate::fixtures::*;
use crate::quarantine::unreadable;
use crate::support::*;

/// 2026-11-20T15:00:00Z
const T0: i64 = 1_795_186_800_000;
const DAY: i64 = 86_400_000;

fn at(rfc3339: &str) -> Timestamp {
    Timestamp(
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis(),
    )
}

/// Waits for a job's run at virtual time `when` (or later).
fn wait_run<T>(what: &str, when: Timestamp, last: impl Fn() -> Option<LastRun<T>>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(run) = last().filter(|r| r.at >= when) {
            return run.outcome.unwrap_or_else(|e| panic!("{what} failed: {e}"));
        }
        assert!(Instant::now() < deadline, "{what} did not run by {when:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_purge_removes_raw_bodies_past_the_retention_at_its_slot_and_keeps_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0)));
    let s = TestServer::start_demo(tmp.path(), clock.clone());
    let jobs = s.running().jobs.clone();
    let storage = s.running().storage.clone();
    let old_order = order_json(&OrderSpec::three_lines(8101));
    assert_eq!(s.webhook("orders/paid", "old-1", &old_order), 200);
    assert_eq!(s.webhook("orders/paid", "old-q", &unreadable()), 200);
    s.wait_processed();

    // Day 89.5: the purge slot passed while the clock jumped, so it runs once, now; at 89.5
    // days nothing is past the 90-day retention.
    let day89 = at("2027-02-18T03:00:00Z");
    clock.set(day89);
    let first = wait_run("purge", day89, || jobs.last_purge());
    assert_eq!(first.removed, 0, "{first:?}");
    assert_eq!(first.before, Timestamp(day89.0 - 90 * DAY));
    let new_order = order_json(&OrderSpec::three_lines(8102));
    assert_eq!(s.webhook("orders/paid", "new-1", &new_order), 200);
    s.wait_processed();
    let seq = |key: &str| {
        storage
            .event_by_key(STORE, &format!("event:{key}"))
            .unwrap()
            .unwrap()
            .0
    };
    let (old, quarantined, new) = (seq("old-1"), seq("old-q"), seq("new-1"));

    // The next daily slot, 03:17 UTC: the first delivery is now past 90 days.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(jobs.last_purge().unwrap().at, day89, "no slot yet");
    let slot = at("2027-02-19T03:17:00Z");
    clock.set(slot);
    let purged = wait_run("purge", slot, || jobs.last_purge());
    assert_eq!(purged.before.to_rfc3339(), "2026-11-21T03:17:00Z");
    assert_eq!(purged.removed, 1, "{purged:?}");
    assert_eq!((purged.kept, purged.quarantined), (2, 1), "{purged:?}");
    assert!(!purged.interrupted);

    // The old body is gone, its head (with the normalized order) stays.
    assert!(
        matches!(storage.event(old), Err(Error::Purged(n)) if n == old),
        "{:?}",
        storage.event(old)
    );
    let heads = storage.event_heads_after(0, usize::MAX).unwrap();
    assert_eq!(heads.len(), 3);
    let (code, body) = s.admin_get(&format!("/api/quarantine/{old}"));
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("no longer stored"), "{body}");
    // The recent one and the quarantined one keep theirs (a newer build re-parses it).
    assert_eq!(storage.event(new).unwrap().unwrap().body, new_order);
    assert_eq!(
        storage.event(quarantined).unwrap().unwrap().body,
        unreadable()
    );
    let (code, body) = s.admin_get(&format!("/api/quarantine/{quarantined}"));
    assert_eq!(code, 200, "{body}");
    // History is untouched: both orders are still known and explained.
    assert_eq!(s.explain("8101").0, 200);
    assert_eq!(s.explain("8102").0, 200);

    // The next run finds nothing more to remove.
    let later = at("2027-02-20T03:17:00Z");
    clock.set(later);
    let again = wait_run("purge", later, || jobs.last_purge());
    assert_eq!((again.removed, again.kept), (0, 2), "{again:?}");
}

#[test]
fn the_nightly_affinity_check_finds_the_demo_stores_counts_equal_to_a_recount() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::at(Timestamp(T0)));
    let s = TestServer::start_demo(tmp.path(), clock.clone());
    let jobs = s.running().jobs.clone();
    // Live orders on top of the imported history, counted incrementally.
    for id in 8201..8206 {
        let body = order_json(&OrderSpec::by_customer(id));
        assert_eq!(s.webhook("orders/paid", &format!("a-{id}"), &body), 200);
    }
    s.wait_processed();
    assert!(jobs.last_affinity_check().is_none(), "not before its slot");

    let slot = at("2026-11-21T02:43:00Z");
    clock.set(slot);
    let stores = wait_run("affinity check", slot, || jobs.last_affinity_check());
    let ids: Vec<&str> = stores.iter().map(|c| c.store.as_str()).collect();
    assert_eq!(ids, [STORE, WOO_STORE, BC_STORE]);
    let main = stores[0].checked.as_ref().unwrap();
    assert_eq!(main.mismatched, 0, "{main:?}");
    assert!(
        main.orders > 566,
        "the demo history and the live orders: {main:?}"
    );
    assert!(main.pair_rows > 300 && main.item_rows > 40, "{main:?}");
    assert!(main.examples.is_empty());
    assert_eq!(stores[1].checked.as_ref().unwrap().pair_rows, 0);
    // Once a night.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(jobs.last_affinity_check().unwrap().at, slot);
}

/// Purge batches look at a bounded number of bodies, resume after the last one looked at,
/// skip quarantined ones, and end at the first body young enough to keep.
#[test]
fn purge_batches_resume_where_they_stopped_and_end_at_the_first_young_body() {
    use upsell_appliance::storage::records::{EventHead, EventRecord, ParsedRecord};
    use upsell_appliance::storage::{NewEvent, Storage};
    let tmp = tempfile::tempdir().unwrap();
    let storage = Storage::open(tmp.path(), &Default::default()).unwrap();
    let cutoff = Timestamp(T0 + DAY);
    // seq: 1-5 old, 6 old and quarantined, 7-8 old, 9 young, 10 old (behind a young one).
    let events: Vec<NewEvent> = (1..=10)
        .map(|seq| {
            let received_at = if seq == 9 { cutoff } else { Timestamp(T0) };
            NewEvent::encode(&EventRecord {
                head: EventHead {
                    store: STORE.into(),
                    platform: upsell_appliance::engine::Platform::Shopify,
                    source: upsell_appliance::engine::Source::Webhook,
                    received_at,
                    topic: "orders/paid".into(),
                    dedupe_key: format!("k{seq}"),
                    headers: vec![],
                    parsed: if seq == 6 {
                        ParsedRecord::Unparseable("a newer build may read it".into())
                    } else {
                        ParsedRecord::Ignored
                    },
                },
                body: format!("body {seq}").into_bytes(),
            })
            .unwrap()
        })
        .collect();
    storage
        .commit_deliveries(&events, &[], Timestamp(T0))
        .unwrap();
    let batch = |after| {
        let b = storage.purge_bodies(cutoff, after, 3).unwrap();
        (b.removed, b.last, b.done)
    };
    assert_eq!(batch(0), (3, 3, false));
    assert_eq!(batch(3), (2, 6, false), "6 is quarantined: looked at, kept");
    assert_eq!(batch(6), (2, 8, true), "9 is young: the end");
    assert_eq!(batch(8), (0, 8, true));
    assert_eq!(storage.stored_bodies().unwrap(), (3, 1));
    for (seq, kept) in [(1, false), (6, true), (8, false), (9, true), (10, true)] {
        assert_eq!(storage.event(seq).is_ok(), kept, "{seq}");
    }
    assert_eq!(storage.event_heads_after(0, usize::MAX).unwrap().len(), 10);
}
