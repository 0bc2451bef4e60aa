//! What the affinity and plan benchmarks' synthetic stores are made of: a fixed random
//! source, Zipf-like product popularity, the time span of the orders, and percentiles.
//! Included by each benchmark with `#[path]` (benchmarks are separate crates).

use std::io::Write;

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(s = 1) over `n` products by inverse CDF on a table.
pub struct Zipf(Vec<f64>);

impl Zipf {
    pub fn new(n: usize) -> Zipf {
        let mut c = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / k as f64;
            c.push(sum);
        }
        for x in &mut c {
            *x /= sum;
        }
        Zipf(c)
    }

    pub fn draw(&self, r: &mut Rng) -> usize {
        let u = r.unit();
        self.0.partition_point(|&x| x < u).min(self.0.len() - 1)
    }
}

/// The orders' first day (2025-01-01) and how many days they span.
pub const START_MS: i64 = 1_735_689_600_000;
pub const SPAN_DAYS: i64 = 690;

/// The `p` quantile of sorted figures.
#[allow(dead_code)]
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// An order's products: 1-8 items, mean ~3, Zipf-like popularity.
#[allow(dead_code)] // not every benchmark uses every piece
pub fn basket(r: &mut Rng, z: &Zipf) -> Vec<usize> {
    // 1-8 items, mean ~3.
    let n = match r.next() % 100 {
        0..=24 => 1,
        25..=44 => 2,
        45..=62 => 3,
        63..=76 => 4,
        77..=86 => 5,
        87..=93 => 6,
        94..=97 => 7,
        _ => 8,
    };
    let mut items: Vec<usize> = (0..n).map(|_| z.draw(r)).collect();
    items.sort_unstable();
    items.dedup();
    items
}

/// The affinity benchmark's native orders CSV: `orders` orders over [`SPAN_DAYS`] from
/// [`START_MS`], customers who come back (a skewed draw of `customers`), products
/// `SKU-0`.. with Zipf-like popularity priced 5-64 dollars. Returns the line count.
#[allow(dead_code)]
pub fn generate(path: &std::path::Path, orders: usize, customers: u64, products: usize) -> usize {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let z = Zipf::new(products);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        f,
        "order_id,created_at,customer_id,email,sku,quantity,unit_price"
    )
    .unwrap();
    let mut lines = 0;
    for i in 0..orders {
        // Customers repeat: a skewed draw makes some come back often.
        let c = ((r.unit().powf(1.6)) * customers as f64) as u64;
        let at = START_MS + (i as i64 * SPAN_DAYS * 86_400_000) / orders as i64;
        let day = chrono::DateTime::from_timestamp_millis(at)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S");
        for p in basket(&mut r, &z) {
            writeln!(
                f,
                "{i},{day},c{c},c{c}@example.com,SKU-{p},{},{}.{:02}",
                1 + r.next() % 2,
                5 + p % 60,
                r.next() % 100
            )
            .unwrap();
            lines += 1;
        }
    }
    f.flush().unwrap();
    lines
}

/// A one-store config (`store`, Shopify, USD, the defaults) with its data in `dir/data`,
/// and that database opened with the config's cache size.
#[allow(dead_code)]
pub fn bench_store(
    dir: &std::path::Path,
    store: &str,
) -> (
    upsell_appliance::config::Config,
    std::sync::Arc<upsell_appliance::storage::Storage>,
) {
    use upsell_appliance::config::{self, Origin};
    use upsell_appliance::storage::{self, Storage};
    let data = dir.join("data");
    let cfg = config::parse(
        &format!(
            "data_dir = {:?}\nadmin_token = \"0123456789abcdef0123\"\n[[stores]]\nid = \"{store}\"\nplatform = \"shopify\"\ndomain = \"bench.myshopify.com\"\nwebhook_secrets = [\"s\"]\ncurrency = \"USD\"\n",
            data.display()
        ),
        dir,
        Origin::Demo,
    )
    .unwrap();
    let storage = Storage::open(
        &data,
        &storage::Options {
            cache_size_mb: cfg.cache_size_mb,
            ..Default::default()
        },
    )
    .unwrap();
    (cfg, storage)
}
