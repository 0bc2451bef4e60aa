//! What the affinity and plan benchmarks' synthetic stores are made of: a fixed random
//! source, Zipf-like product popularity, the time span of the orders, and percentiles.
//! Included by each benchmark with `#[path]` (benchmarks are separate crates).

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
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
