//! Affinity counts: incremental updates (the processor, order by order, in any arrival
//! order, with repeats, edits and cancellations) agree exactly with `affinity rebuild`, and
//! small hand-computed cases come out as the textbook measures say.

use std::sync::Arc;

use upsell_appliance::config::{Config, Origin};
use upsell_appliance::engine::affinity::{Decay, Kind, Thresholds};
use upsell_appliance::engine::*;
use upsell_appliance::ops::{self, DecayChoice, Format};
use upsell_appliance::pipeline::processor::{self, Settings};
use upsell_appliance::storage::affinity::ReadSettings;
use upsell_appliance::storage::records::{EventHead, EventRecord, ParsedRecord};
use upsell_appliance::storage::{self, NewEvent, Storage};

const DAY: i64 = 86_400_000;
const T0: i64 = 1_767_225_600_000; // 2026-01-01

/// A tiny deterministic generator (xorshift), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone)]
struct Spec {
    id: u64,
    customer: Option<u64>,
    at: i64,
    products: Vec<u64>,
}

fn order(s: &Spec, version: i64, cancelled: bool) -> Order {
    Order {
        id: s.id.to_string(),
        name: format!("#{}", s.id),
        created_at: Timestamp(s.at),
        updated_at: Timestamp(s.at + version),
        currency: Currency::parse("USD").unwrap(),
        total: 1000,
        subtotal: 1000,
        financial_status: Some("paid".into()),
        cancelled_at: cancelled.then_some(Timestamp(s.at + version)),
        email: s.customer.map(|c| format!("c{c}@example.com")),
        phone: None,
        customer: None,
        lines: s
            .products
            .iter()
            .enumerate()
            .map(|(i, p)| LineItem {
                id: format!("{}-{i}", s.id),
                product_id: None,
                variant_id: None,
                sku: Some(format!("P{p}")),
                quantity: 1 + (*p as u32 % 2),
                unit_price: 500,
                title: format!("Product {p}"),
                variant_title: None,
                vendor: None,
                gift_card: false,
                requires_shipping: true,
            })
            .collect(),
        tags: vec![],
        discount_codes: vec![],
        shipping: None,
        billing: None,
        refunds: vec![],
    }
}

fn event(store: &str, key: String, o: Order) -> NewEvent {
    NewEvent::encode(&EventRecord {
        head: EventHead {
            store: store.into(),
            platform: Platform::Shopify,
            source: Source::Webhook,
            received_at: Timestamp(T0),
            topic: "orders/updated".into(),
            dedupe_key: key,
            headers: vec![],
            parsed: ParsedRecord::Event(Event::Order {
                topic: OrderTopic::Updated,
                order: Box::new(o),
            }),
        },
        body: b"{}".to_vec(),
    })
    .unwrap()
}

fn open() -> (tempfile::TempDir, Arc<Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path(), &storage::Options::default()).unwrap();
    (dir, s)
}

fn settings() -> Settings {
    Settings {
        next_order_window_ms: 90 * DAY,
        ..Settings::default()
    }
}

fn catch_up(s: &Storage) {
    processor::catch_up(s, &settings(), &|| true).unwrap();
}

/// Everything stored about affinity, exact, in a canonical text form: every rule with its
/// exact counts and mean gap, every product's leaders.
fn dump(s: &Storage, store: &str) -> String {
    let snap = s.snapshot().unwrap();
    let rs = ReadSettings {
        decay: Decay::None,
        now: 700,
        thresholds: Thresholds::default(),
    };
    let mut out = Vec::new();
    snap.export_rules(store, &rs, |r| {
        out.push(format!(
            "{} {}>{} pair={} a={} c={} t={} gap={:?}",
            r.rule.kind.as_str(),
            r.antecedent,
            r.consequent,
            r.rule.pair_orders,
            r.rule.antecedent_orders,
            r.rule.consequent_orders,
            r.rule.total_orders,
            r.rule.mean_gap_days.map(|g| (g * 1e6).round())
        ));
        Ok(())
    })
    .unwrap();
    out.sort();
    for kind in Kind::ALL {
        let mut rows = snap.item_rows(store, kind).unwrap();
        rows.sort_by_key(|r| snap.product_key_of(store, r.0).unwrap());
        for (p, row) in rows {
            let key = snap.product_key_of(store, p).unwrap().unwrap();
            // Ties among leaders go by product number, which depends on which product
            // was seen first: compare them by key.
            let mut leaders: Vec<(u64, String)> = row
                .leaders
                .0
                .iter()
                .map(|(b, n)| (*n, snap.product_key_of(store, *b).unwrap().unwrap()))
                .collect();
            leaders.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
            out.push(format!(
                "item {} {key} a={:?} c={:?} leaders={leaders:?}",
                kind.as_str(),
                row.antecedent.0,
                row.consequent.0
            ));
        }
        let total = snap.item_row(store, kind, u32::MAX).unwrap();
        let mut popular: Vec<(u64, String)> = total
            .leaders
            .0
            .iter()
            .map(|(b, n)| (*n, snap.product_key_of(store, *b).unwrap().unwrap()))
            .collect();
        popular.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
        out.push(format!(
            "total {} {:?} popular={popular:?}",
            kind.as_str(),
            total.antecedent.0
        ));
    }
    out.join("\n")
}

/// Random history: orders with customers, repeats, edits (a later version with other
/// lines) and cancellations, delivered in a shuffled order in random chunks.
fn history(seed: u64) -> (Vec<NewEvent>, usize) {
    let mut rng = Rng(seed * 2_654_435_761 + 1);
    let customers = 12;
    let products = 9;
    let mut specs = Vec::new();
    for id in 1..=60u64 {
        let n = 1 + rng.below(4) as usize;
        let mut ps: Vec<u64> = (0..n).map(|_| rng.below(products)).collect();
        ps.dedup();
        specs.push(Spec {
            id,
            customer: (rng.below(8) != 0).then(|| rng.below(customers)),
            at: T0 + rng.below(300) as i64 * DAY / 2 + (id as i64 % 3) * 1000,
            products: ps,
        });
    }
    // Two orders of one customer at the same instant: ties break by order id.
    specs[1].customer = specs[0].customer.or(Some(0));
    specs[0].customer = specs[1].customer;
    specs[1].at = specs[0].at;
    let mut events = Vec::new();
    let mut key = 0;
    for s in &specs {
        key += 1;
        events.push(event("demo", format!("k{key}"), order(s, 0, false)));
        match rng.below(6) {
            0 => {
                key += 1;
                events.push(event("demo", format!("k{key}"), order(s, 10, true)));
            }
            1 => {
                let mut edited = s.clone();
                edited.products = vec![rng.below(products), rng.below(products)];
                key += 1;
                events.push(event("demo", format!("k{key}"), order(&edited, 20, false)));
            }
            2 => events.push(event("demo", format!("k{key}"), order(s, 0, false))),
            _ => {}
        }
    }
    for i in (1..events.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        events.swap(i, j);
    }
    let chunk = 1 + rng.below(9) as usize;
    (events, chunk)
}

#[test]
fn incremental_counts_equal_a_rebuild_whatever_the_arrival_order() {
    for seed in 1..=12 {
        let (events, chunk) = history(seed);
        let (_d1, a) = open();
        for part in events.chunks(chunk) {
            a.commit_deliveries(part, &[], Timestamp(T0)).unwrap();
            catch_up(&a);
        }
        let incremental = dump(&a, "demo");
        assert!(
            incremental.contains("next_order"),
            "seed {seed}: no next-order evidence"
        );

        // The same events in another order, all at once.
        let (_d2, b) = open();
        let mut reversed = events.clone();
        reversed.reverse();
        b.commit_deliveries(&reversed, &[], Timestamp(T0)).unwrap();
        catch_up(&b);
        assert_eq!(
            dump(&b, "demo"),
            incremental,
            "seed {seed}: arrival order changed counts"
        );

        // The rebuild compares every row it computes with the stored one: none differs.
        let r = a.rebuild_affinity("demo", 90 * DAY).unwrap();
        assert_eq!(r.changed, 0, "seed {seed}: rebuild computed other rows");
        let rebuilt = dump(&a, "demo");
        assert_eq!(rebuilt, incremental, "seed {seed}: rebuild differs");
    }
}

/// The nightly check recounts without writing: after incremental updates it finds every
/// row equal, whether it compares all pair rows or a sample; counted with another window it
/// finds the next-order rows that differ, names a few, and leaves the stored rows alone.
#[test]
fn the_affinity_check_agrees_with_incremental_counts_and_names_rows_that_differ() {
    for seed in 1..=4 {
        let (events, chunk) = history(seed);
        let (_d, a) = open();
        for part in events.chunks(chunk) {
            a.commit_deliveries(part, &[], Timestamp(T0)).unwrap();
            catch_up(&a);
        }
        let before = dump(&a, "demo");
        let all = a
            .check_affinity("demo", 90 * DAY, seed, usize::MAX)
            .unwrap();
        assert_eq!(all.mismatched, 0, "seed {seed}: {all:?}");
        assert!(all.pair_rows > 20 && all.item_rows > 0, "{all:?}");
        let sample = a.check_affinity("demo", 90 * DAY, seed, 20).unwrap();
        assert_eq!(sample.mismatched, 0, "seed {seed}: {sample:?}");
        assert!(
            sample.pair_rows >= 20 && sample.pair_rows < all.pair_rows,
            "seed {seed}: {sample:?} of {all:?}"
        );
        assert_eq!(sample.item_rows, all.item_rows, "every product's counts");
        assert!(sample.sampled_products < all.sampled_products);

        let other = a.check_affinity("demo", DAY, seed, usize::MAX).unwrap();
        assert!(other.mismatched > 0, "seed {seed}: {other:?}");
        assert!(other.examples.len() <= 5, "{other:?}");
        assert!(
            other.examples.iter().all(|e| e.starts_with("next_order ")),
            "only next-order counts depend on the window: {other:?}"
        );
        assert!(
            other.examples.iter().any(|e| e.contains(" pair P")),
            "{other:?}"
        );
        assert_eq!(dump(&a, "demo"), before, "a check writes nothing");
    }
}

fn config(dir: &std::path::Path) -> Config {
    upsell_appliance::config::parse(
        &format!(
            "data_dir = {:?}\nadmin_token = \"0123456789abcdef0123\"\n[[stores]]\nid = \"demo\"\nplatform = \"shopify\"\ndomain = \"demo.myshopify.com\"\nwebhook_secrets = [\"s\"]\ncurrency = \"USD\"\n[affinity]\nmin_pair_orders = 1\n",
            dir.display()
        ),
        dir,
        Origin::Demo,
    )
    .unwrap()
}

fn export(s: &Storage, c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    ops::affinity_export(
        s,
        c,
        "demo",
        Format::Csv,
        DecayChoice::None,
        Timestamp(T0),
        &mut out,
    )
    .unwrap();
    let mut rows: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // Rows come in product-number order, which depends on which product was seen first.
    rows[1..].sort();
    rows
}

fn spec(id: u64, customer: Option<u64>, day: i64, products: &[u64]) -> Spec {
    Spec {
        id,
        customer,
        at: T0 + day * DAY,
        products: products.to_vec(),
    }
}

/// 10 orders (guests, so no next-order evidence): A (P1) in 5, B (P2) in 4, both in 2.
/// support 0.2; confidence(A→B) 0.4, (B→A) 0.5; lift 1.0 either way.
#[test]
fn hand_computed_same_order_measures() {
    let (dir, s) = open();
    let c = config(dir.path());
    let baskets: [&[u64]; 10] = [
        &[1, 2],
        &[1, 2],
        &[1],
        &[1],
        &[1],
        &[2],
        &[2],
        &[3],
        &[3],
        &[3],
    ];
    let events: Vec<NewEvent> = baskets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            event(
                "demo",
                format!("k{i}"),
                order(&spec(i as u64 + 1, None, 0, b), 0, false),
            )
        })
        .collect();
    s.commit_deliveries(&events, &[], Timestamp(T0)).unwrap();
    catch_up(&s);
    let rows = export(&s, &c);
    assert_eq!(rows[0], ops::EXPORT_COLUMNS.join(","));
    assert_eq!(
        &rows[1..],
        [
            "P1,Product 1,P2,Product 2,same_order,2,5,4,10,0.200000,0.400000,1.0000,strong",
            "P2,Product 2,P1,Product 1,same_order,2,4,5,10,0.200000,0.500000,1.0000,strong",
        ]
    );
}

/// One customer: [P1] on day 0, [P2, P3] on day 10, [P1] on day 200 (outside the 90-day
/// window). The first move counts (P1→P2, P1→P3, gap 10 days); the second does not.
/// Cancelling the day-10 order takes its evidence back and joins day 0 to day 200 (too far
/// apart to count).
#[test]
fn next_order_evidence_and_cancelling_takes_it_back() {
    let (dir, s) = open();
    let c = config(dir.path());
    let specs = [
        spec(1, Some(7), 0, &[1]),
        spec(2, Some(7), 10, &[2, 3]),
        spec(3, Some(7), 200, &[1]),
    ];
    let events: Vec<NewEvent> = specs
        .iter()
        .map(|o| event("demo", format!("k{}", o.id), order(o, 0, false)))
        .collect();
    s.commit_deliveries(&events, &[], Timestamp(T0)).unwrap();
    catch_up(&s);
    let rows = export(&s, &c);
    let next: Vec<&String> = rows.iter().filter(|r| r.contains("next_order")).collect();
    assert_eq!(
        next,
        [
            "P1,Product 1,P2,Product 2,next_order,1,1,1,1,1.000000,1.000000,1.0000,strong",
            "P1,Product 1,P3,Product 3,next_order,1,1,1,1,1.000000,1.000000,1.0000,strong",
        ]
    );
    let snap = s.snapshot().unwrap();
    let rs = ReadSettings {
        decay: Decay::None,
        now: 0,
        thresholds: c.affinity.thresholds,
    };
    let rules = snap.rules_from("demo", "P1", &rs).unwrap();
    let gap = rules
        .iter()
        .find(|r| r.rule.kind == Kind::NextOrder)
        .unwrap();
    assert_eq!(gap.rule.mean_gap_days, Some(10.0));
    drop(snap);

    s.commit_deliveries(
        &[event("demo", "cancel".into(), order(&specs[1], 5, true))],
        &[],
        Timestamp(T0),
    )
    .unwrap();
    catch_up(&s);
    assert_eq!(
        export(&s, &c),
        [ops::EXPORT_COLUMNS.join(",")],
        "all evidence gone"
    );
    let dumped = dump(&s, "demo");
    s.rebuild_affinity("demo", 90 * DAY).unwrap();
    assert_eq!(dump(&s, "demo"), dumped);
}

/// A catalog that folds two SKUs into one product (same handle) changes the keys counts
/// were kept under: the import rebuilds affinity, and importing it again does not.
#[test]
fn a_catalog_that_folds_variants_rebuilds_affinity() {
    let (dir, s) = open();
    let c = config(dir.path());
    let events: Vec<NewEvent> = [&[1u64, 2, 3][..], &[1, 3], &[2, 3]]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let o = order(&spec(i as u64 + 1, None, 0, b), 0, false);
            event("demo", format!("k{i}"), o)
        })
        .collect();
    s.commit_deliveries(&events, &[], Timestamp(T0)).unwrap();
    catch_up(&s);
    assert!(export(&s, &c)
        .iter()
        .any(|r| r.starts_with("P1,Product 1,P3,")));

    let csv = dir.path().join("catalog.csv");
    std::fs::write(&csv, "sku,handle,title\nP1,tee,Tee\nP2,tee,Tee\n").unwrap();
    let v = ops::import_catalog(&s, &c, "demo", &csv).unwrap();
    assert!(!v["affinity_rebuilt"].is_null(), "{v}");
    let rows = export(&s, &c);
    assert_eq!(
        &rows[1..],
        [
            "P3,Product 3,tee,Tee,same_order,3,3,3,3,1.000000,1.000000,1.0000,strong",
            "tee,Tee,P3,Product 3,same_order,3,3,3,3,1.000000,1.000000,1.0000,strong",
        ]
    );
    let again = ops::import_catalog(&s, &c, "demo", &csv).unwrap();
    assert!(again["affinity_rebuilt"].is_null(), "{again}");
    assert_eq!(export(&s, &c), rows);
}
