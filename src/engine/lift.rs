//! The statistics of measured lift (issue 10, part): treated against holdout, each with a
//! 95% confidence interval and a verdict in plain words. Means are compared with Welch's
//! t interval (unequal variances), rates with Wilson score intervals and their difference
//! with Newcombe's hybrid score interval (method 10), which behave at 0% and 100% and with
//! small samples where the textbook normal interval does not.

/// Two-sided 95%.
const ALPHA_HALF: f64 = 0.025;
const Z_975: f64 = 1.959_963_984_540_054;

/// An estimate with its 95% confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// The interval lies wholly above or below zero.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// Count, mean and variance of a sample, built one value at a time (Welford).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub n: u64,
    pub mean: f64,
    m2: f64,
}

impl Summary {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    pub fn of(values: &[f64]) -> Summary {
        let mut s = Summary::default();
        values.iter().for_each(|&x| s.add(x));
        s
    }

    /// The sample variance (n - 1), if there are two values or more.
    pub fn variance(&self) -> Option<f64> {
        (self.n >= 2).then(|| self.m2 / (self.n - 1) as f64)
    }
}

/// Welch's interval for mean(a) - mean(b); none without two values on each side.
pub fn welch(a: &Summary, b: &Summary) -> Option<Interval> {
    let (va, vb) = (a.variance()? / a.n as f64, b.variance()? / b.n as f64);
    let estimate = a.mean - b.mean;
    let se2 = va + vb;
    if se2 == 0.0 {
        return Some(Interval {
            estimate,
            low: estimate,
            high: estimate,
        });
    }
    let df = se2 * se2 / (va * va / (a.n - 1) as f64 + vb * vb / (b.n - 1) as f64);
    let half = t_quantile_975(df) * se2.sqrt();
    Some(Interval {
        estimate,
        low: estimate - half,
        high: estimate + half,
    })
}

/// Wilson's score interval for `x` successes in `n`; none for `n` = 0.
pub fn wilson(x: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 || x > n {
        return None;
    }
    let (n, p, z2) = (n as f64, x as f64 / n as f64, Z_975 * Z_975);
    let d = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / d;
    let half = Z_975 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / d;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// Newcombe's hybrid score interval for x1/n1 - x2/n2.
pub fn newcombe(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<Interval> {
    let (l1, u1) = wilson(x1, n1)?;
    let (l2, u2) = wilson(x2, n2)?;
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let d = p1 - p2;
    Some(Interval {
        estimate: d,
        low: d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(),
        high: d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt(),
    })
}

/// Student's t quantile at 97.5% for `df` degrees of freedom (any real df > 0), by
/// bisection on the distribution function.
pub fn t_quantile_975(df: f64) -> f64 {
    if !df.is_finite() || df > 1e7 {
        return Z_975;
    }
    // Upper tail beyond t: I_{df/(df+t²)}(df/2, 1/2) / 2.
    let tail = |t: f64| 0.5 * inc_beta(df / (df + t * t), df / 2.0, 0.5);
    let (mut lo, mut hi) = (0.0_f64, 1.0e4_f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if tail(mid) > ALPHA_HALF {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz).
fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The fraction converges fast below the mean; use the symmetry above it.
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - inc_beta(1.0 - x, b, a);
    }
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    d = 1.0 / if d.abs() < tiny { tiny } else { d };
    let mut f = d;
    for m in 1..=300 {
        let m = m as f64;
        for num in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + num * d;
            d = 1.0 / if d.abs() < tiny { tiny } else { d };
            c = 1.0 + num / c;
            if c.abs() < tiny {
                c = tiny;
            }
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-15 {
            break;
        }
    }
    ln_front.exp() * f / a
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut s = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        s += g / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

/// What a comparison says, in plain words. `holdout` is the holdout group's sample size
/// and `min_holdout` the least that allows a verdict; `show` formats the metric's values.
pub fn verdict(
    interval: Option<Interval>,
    holdout: u64,
    min_holdout: u64,
    show: impl Fn(f64) -> String,
) -> String {
    if holdout < min_holdout {
        let more = min_holdout - holdout;
        return format!(
            "not enough data yet: {more} more holdout order{} needed",
            if more == 1 { "" } else { "s" }
        );
    }
    let Some(i) = interval else {
        return "not enough data yet: no spread to measure".into();
    };
    let range = format!("95% CI {} to {}", show(i.low), show(i.high));
    if i.excludes_zero() {
        let dir = if i.estimate > 0.0 { "higher" } else { "lower" };
        format!("treated is {dir} by {} ({range})", show(i.estimate.abs()))
    } else {
        format!("no difference shown yet ({range} includes zero)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Reference values from scipy.stats.t.ppf(0.975, df).
    #[test]
    fn t_quantiles_match_the_tables() {
        for (df, want) in [
            (1.0, 12.706_204_736_174_694),
            (2.0, 4.302_652_729_749_462),
            (3.0, 3.182_446_305_283_708),
            (5.0, 2.570_581_835_636_315),
            (5.882_352_941_176_471, 2.458_823_709_699_146),
            (10.0, 2.228_138_851_986_274),
            (30.0, 2.042_272_456_301_238),
            (100.0, 1.983_971_518_523_552),
        ] {
            let got = t_quantile_975(df);
            assert!(close(got, want, 1e-6), "df {df}: {got} vs {want}");
        }
        assert!(close(t_quantile_975(f64::INFINITY), Z_975, 1e-12));
    }

    /// Hand-checked (and against scipy): a = 1..5, b = 2, 4, ..., 10.
    #[test]
    fn welch_interval_of_two_small_samples() {
        let a = Summary::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let b = Summary::of(&[2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(a.variance(), Some(2.5));
        assert_eq!(b.variance(), Some(10.0));
        let i = welch(&a, &b).unwrap();
        assert!(close(i.estimate, -3.0, 1e-12));
        assert!(close(i.low, -6.887_741_643_736_975, 1e-6), "{i:?}");
        assert!(close(i.high, 0.887_741_643_736_975, 1e-6), "{i:?}");
        assert!(!i.excludes_zero());
        // One value: no spread to measure.
        assert_eq!(welch(&Summary::of(&[3.0]), &b), None);
        // Equal groups, no spread: exactly zero.
        let same = Summary::of(&[4.0, 4.0, 4.0]);
        assert_eq!(welch(&same, &same).unwrap().high, 0.0);
    }

    #[test]
    fn wilson_and_newcombe_at_the_edges() {
        let (l, u) = wilson(0, 10).unwrap();
        assert!(close(l, 0.0, 1e-12) && close(u, 0.277_532_799_862_889_2, 1e-9));
        let (l, u) = wilson(5, 10).unwrap();
        assert!(close(l, 0.236_593_090_512_564, 1e-9) && close(u, 0.763_406_909_487_436_1, 1e-9));
        assert_eq!(wilson(0, 0), None);
        assert_eq!(wilson(3, 2), None);
        // Newcombe's own example (1998, 56/70 against 48/80): 0.0524 to 0.3339.
        let i = newcombe(56, 70, 48, 80).unwrap();
        assert!(close(i.estimate, 0.2, 1e-12));
        assert!(close(i.low, 0.052_431_472_402_364_98, 1e-9), "{i:?}");
        assert!(close(i.high, 0.333_872_654_036_906, 1e-9), "{i:?}");
        assert!(i.excludes_zero());
        // Zero conversions on both sides: an interval around zero, not a division by zero.
        let z = newcombe(0, 50, 0, 40).unwrap();
        assert_eq!(z.estimate, 0.0);
        assert!(z.low < 0.0 && z.high > 0.0);
    }

    #[test]
    fn verdicts_say_what_the_data_allows() {
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        assert_eq!(
            verdict(newcombe(56, 70, 48, 80), 80, 100, pct),
            "not enough data yet: 20 more holdout orders needed"
        );
        assert_eq!(
            verdict(newcombe(56, 70, 48, 80), 80, 50, pct),
            "treated is higher by 20.0% (95% CI 5.2% to 33.4%)"
        );
        assert_eq!(
            verdict(newcombe(10, 100, 11, 100), 100, 50, pct),
            "no difference shown yet (95% CI -9.8% to 7.8% includes zero)"
        );
        assert_eq!(
            verdict(None, 99, 100, pct),
            "not enough data yet: 1 more holdout order needed"
        );
    }
}
