//! `cargo bench --bench replay [-- --smoke]`: `replay` over the affinity benchmark's store.
//!
//! Generates the affinity benchmark's orders (1,000,000 by default; `--orders N` for
//! another size, `--smoke` 20,000 for CI) and a catalog for its products (prices, stock,
//! 25 categories, some consumables, premium tiers and bundles), imports both, then times
//! `replay` over all of it (the whole decision path for every order and touch, on the
//! service's default of up to two threads). Baseline in the same run: reading every
//! order record of the store once (`Snapshot::each_order`), which replay cannot do
//! without. Prints orders/s, the ratio to the baseline, the replay's counts and its
//! memory (peak RSS before and after).

use std::io::Write;
use std::time::Instant;

use upsell_appliance::engine::Timestamp;
use upsell_appliance::ops;

#[path = "synthetic.rs"]
mod synthetic;
use synthetic::{generate, SPAN_DAYS, START_MS};

const DAY: i64 = 86_400_000;
const TARGET_S: f64 = 60.0;

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A fixed hash of a product number, for its attributes.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The products' catalog (native CSV): the generator's SKUs and prices, 25 categories,
/// stock mostly plenty (1 in 20 low), ~8% consumables, ~10% with a premium tier, ~7% in
/// bundles.
fn catalog(path: &std::path::Path, products: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        f,
        "sku,title,product_type,price,inventory,consumable_days,upgrade_to,bundles,rating"
    )
    .unwrap();
    for p in 0..products {
        let h = mix(p as u64);
        let pick = |shift: u32, n: u64| (h >> shift) % n;
        let inventory = if pick(0, 20) == 0 {
            pick(8, 10)
        } else {
            20 + pick(8, 480)
        };
        let consumable = if pick(28, 12) == 0 {
            (20 + pick(32, 60)).to_string()
        } else {
            String::new()
        };
        let upgrade = if pick(36, 10) == 0 && p + 25 < products {
            format!("SKU-{}", p + 25)
        } else {
            String::new()
        };
        let bundle = if pick(44, 15) == 0 {
            format!("bundle-{}", pick(48, (products as u64 / 45).max(1)))
        } else {
            String::new()
        };
        writeln!(
            f,
            "SKU-{p},Product {p},Category {},{}.00,{inventory},{consumable},{upgrade},{bundle},{}.{}",
            p % 25,
            5 + p % 60,
            3 + pick(52, 2),
            pick(56, 10)
        )
        .unwrap();
    }
    f.flush().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let scaled = args
        .iter()
        .position(|a| a == "--orders")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>().expect("--orders takes a number"));
    let (orders, customers, products) = match (smoke, scaled) {
        (true, _) => (20_000, 6_000, 1_000),
        (false, Some(n)) => (n, (n as u64 * 3 / 10).max(1), 5_000),
        (false, None) => (1_000_000, 300_000, 5_000),
    };
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("orders.csv");
    let cat = dir.path().join("catalog.csv");
    let t = Instant::now();
    let lines = generate(&csv, orders, customers, products);
    catalog(&cat, products);
    eprintln!(
        "generated {orders} orders ({lines} lines) and {products} products in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let (cfg, storage) = synthetic::bench_store(dir.path(), "bench");
    let t = Instant::now();
    ops::import_catalog(&storage, &cfg, "bench", &cat).unwrap();
    ops::import_orders(&storage, &cfg, "bench", &csv, false, &mut |_| {}).unwrap();
    eprintln!("imported in {:.1} s", t.elapsed().as_secs_f64());
    let store = cfg.store("bench").unwrap();
    // The replay's end: 120 days after the last order, so every touch but the win-backs
    // of the last months falls due.
    let now = Timestamp(START_MS + (SPAN_DAYS + 120) * DAY);

    // Baseline: every order record read once.
    let t = Instant::now();
    let snap = storage.snapshot().unwrap();
    let mut read = 0usize;
    snap.each_order("bench", |_, s| read += usize::from(s.order.is_some()))
        .unwrap();
    drop(snap);
    let read_s = t.elapsed().as_secs_f64();
    assert_eq!(read, orders);

    let rss_before = peak_rss_mb();
    let t = Instant::now();
    let report = ops::replay(&storage, &cfg, store, None, None, now).unwrap();
    let replay_s = t.elapsed().as_secs_f64();
    let rss_after = peak_rss_mb();
    assert_eq!(report["orders"]["seen"].as_u64(), Some(orders as u64));

    let sent: u64 = report["touches"]["sent"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let decided = sent
        + report["touches"]["skipped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>();
    println!("replay over {orders} orders ({customers} customers drawn, {products} products)");
    println!(
        "read every order once (baseline): {read_s:.2} s ({:.0} orders/s)",
        orders as f64 / read_s
    );
    println!(
        "replay: {replay_s:.2} s ({:.0} orders/s, {decided} touches decided or shown)",
        orders as f64 / replay_s
    );
    println!("replay / read-once: {:.1}x", replay_s / read_s);
    println!(
        "peak RSS: {rss_before:.1} MB before the replay, {rss_after:.1} MB after (the import's peak counts in both)"
    );
    println!(
        "counts: offers {}, no touches {}, sent {}, skipped {}, deferred {}, pending at the end {}, waiting {}",
        report["offers"],
        report["no_touches"],
        report["touches"]["sent"],
        report["touches"]["skipped"],
        report["touches"]["deferred"],
        report["touches"]["pending_at_end"],
        report["touches"]["waiting_at_end"]
    );
    println!("projection: {}", report["projection"]);
    if !smoke && scaled.is_none() {
        println!(
            "target replay of 1,000,000 orders <= {TARGET_S:.0} s: {}",
            if replay_s <= TARGET_S {
                "met"
            } else {
                "MISSED"
            }
        );
    }
}
