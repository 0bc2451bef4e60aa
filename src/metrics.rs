//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4): the only
//! module that knows the `prometheus` crate. What the database already counts (webhooks,
//! pending touches, sends, dead letters) is read at scrape time from one read snapshot
//! (`Storage::status`) and never counted a second time in memory; only what exists in the
//! process alone is kept here: the writer's group commits ([`Commits`]) and the resident
//! memory. It never opens the database or answers a request itself (`http::admin` does).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::config::{Config, StoreConfig};
use crate::storage::StoreStatus;

/// What `/metrics` answers with (`TextEncoder` writes this format).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct Error(#[from] prometheus::Error);

/// The writer's group commits, recorded by the writer thread and read by each scrape.
pub struct Commits {
    batch_size: Histogram,
    duration: Histogram,
}

impl Default for Commits {
    fn default() -> Commits {
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("constant histogram options are valid")
        };
        Commits {
            batch_size: histogram(
                "upsell_commit_batch_size",
                "Requests (webhook deliveries and health probes) answered by one group commit of the writer.",
                // 1 to the writer's largest batch (1,024).
                (0..=10).map(|i| f64::from(1u32 << i)).collect(),
            ),
            duration: histogram(
                "upsell_commit_duration_seconds",
                "How long one group commit of the writer took, its fsync included.",
                vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5,
                ],
            ),
        }
    }
}

impl Commits {
    /// One group commit of `requests` jobs that took `took`, whether it succeeded or not.
    pub fn record(&self, requests: usize, took: Duration) {
        self.batch_size.observe(requests as f64);
        self.duration.observe(took.as_secs_f64());
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// A family read from each store's status at scrape time: labelled `store`, then
/// `labels`; `figures` gives one store's samples (label values in `labels`' order).
struct PerStore {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: Labels,
    figures: Figures,
}

type Labels = &'static [&'static str];
type Samples = Vec<(Vec<String>, u64)>;
type Figures = fn(&StoreConfig, &StoreStatus) -> Samples;

const fn counter(name: &'static str, help: &'static str, labels: Labels, f: Figures) -> PerStore {
    PerStore {
        name,
        help,
        kind: Kind::Counter,
        labels,
        figures: f,
    }
}

const fn gauge(name: &'static str, help: &'static str, labels: Labels, f: Figures) -> PerStore {
    PerStore {
        name,
        help,
        kind: Kind::Gauge,
        labels,
        figures: f,
    }
}

/// One sample without labels beyond `store`.
fn one(n: u64) -> Samples {
    vec![(Vec::new(), n)]
}

/// A count the database keeps as `i64` (never negative).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Every per-store family. A figure `StoreStatus` holds becomes a metric by one more entry
/// here.
const PER_STORE: &[PerStore] = &[
    counter(
        "upsell_webhooks_total",
        "Webhook deliveries by result: accepted, duplicate, rejected (bad signature), quarantined (signed but unparseable), ignored (a topic not acted on).",
        &["platform", "result"],
        |c, s| {
            let w = &s.webhooks;
            [
                ("accepted", w.accepted),
                ("duplicate", w.duplicate),
                ("rejected", w.rejected),
                ("quarantined", w.quarantined),
                ("ignored", w.ignored),
            ]
            .into_iter()
            .map(|(result, n)| (vec![c.platform.as_str().into(), result.into()], count(n)))
            .collect()
        },
    ),
    gauge(
        "upsell_touches_pending",
        "Touches scheduled or deferred and not yet decided.",
        &[],
        |_, s| one(s.touches.pending),
    ),
    counter(
        "upsell_sends_total",
        "Provider exchanges by channel and result: sent, retried (a failed attempt to be tried again), dead (a dead letter).",
        &["channel", "result"],
        |_, s| {
            let mut out = Vec::new();
            for (channel, c) in &s.touches.channels {
                for (result, n) in [("sent", c.sent), ("retried", c.retried), ("dead", c.dead)] {
                    out.push((vec![channel.clone(), result.into()], n));
                }
            }
            out
        },
    ),
    counter(
        "upsell_dead_letters_total",
        "Touches given up as dead letters, by rule.",
        &["rule"],
        |_, s| {
            let dead = &s.touches.dead;
            dead.iter().map(|(rule, n)| (vec![rule.clone()], *n)).collect()
        },
    ),
    counter(
        "upsell_reconciled_orders_total",
        "Orders (or newer versions of them) the platform sync found that the webhooks had not brought, fed in marked reconciled.",
        &[],
        |_, s| one(count(s.reconciled)),
    ),
    counter(
        "upsell_fetched_orders_total",
        "Orders fetched through the platform API after a thin webhook (BigCommerce).",
        &[],
        |_, s| one(count(s.fetched)),
    ),
];

/// The exposition: the stores' figures (`stores` in the order of `config.stores`, as
/// `Storage::status` returns them), the writer's commits and the resident memory.
pub fn render(
    config: &Config,
    stores: &[StoreStatus],
    commits: &Commits,
    resident_bytes: Option<u64>,
) -> Result<String, Error> {
    let registry = Registry::new();
    for f in PER_STORE {
        let opts = Opts::new(f.name, f.help);
        let labels: Vec<&str> = std::iter::once("store")
            .chain(f.labels.iter().copied())
            .collect();
        let samples = config.stores.iter().zip(stores).flat_map(|(cfg, st)| {
            (f.figures)(cfg, st).into_iter().map(|(values, n)| {
                let all: Vec<String> = std::iter::once(st.id.clone()).chain(values).collect();
                (all, n)
            })
        });
        match f.kind {
            Kind::Counter => {
                let family = IntCounterVec::new(opts, &labels)?;
                for (values, n) in samples {
                    family.with_label_values(&values).inc_by(n);
                }
                registry.register(Box::new(family))?;
            }
            Kind::Gauge => {
                let family = IntGaugeVec::new(opts, &labels)?;
                for (values, n) in samples {
                    family
                        .with_label_values(&values)
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                registry.register(Box::new(family))?;
            }
        }
    }
    registry.register(Box::new(commits.batch_size.clone()))?;
    registry.register(Box::new(commits.duration.clone()))?;
    if let Some(bytes) = resident_bytes {
        let rss = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )?;
        rss.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        registry.register(Box::new(rss))?;
    }
    let mut out = String::new();
    prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out)?;
    Ok(out)
}

/// This process's resident memory (`VmRSS` of `/proc/self/status`); `None` where there is
/// no such file (not Linux).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss(&status)
}

fn vm_rss(status: &str) -> Option<u64> {
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = kb.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ChannelCounts, WebhookCounts};

    fn config() -> Config {
        let text = "admin_token = \"0123456789abcdef0123\"\n\
            [[stores]]\nid = \"a\"\nplatform = \"shopify\"\ndomain = \"a.myshopify.com\"\nwebhook_secrets = [\"x\"]\n\
            [[stores]]\nid = \"b\"\nplatform = \"woocommerce\"\ndomain = \"b.example.com\"\nwebhook_secrets = [\"y\"]\n";
        crate::config::parse(text, std::path::Path::new("/"), crate::config::Origin::Demo).unwrap()
    }

    fn status(id: &str) -> StoreStatus {
        StoreStatus {
            id: id.into(),
            ..StoreStatus::default()
        }
    }

    /// The exposition's lines about `family` (its HELP and TYPE lines left out).
    fn lines(text: &str, family: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(family) || l.starts_with(&format!("# TYPE {family} ")))
            .filter(|l| !l.starts_with("# HELP"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn store_figures_become_labelled_families() {
        let mut a = status("a");
        a.webhooks = WebhookCounts {
            accepted: 5,
            duplicate: 2,
            rejected: 1,
            quarantined: 0,
            ignored: 3,
        };
        a.touches.pending = 7;
        a.touches.dead.insert("refused".into(), 2);
        a.touches.channels.insert(
            "klaviyo".into(),
            ChannelCounts {
                sent: 9,
                retried: 4,
                dead: 2,
            },
        );
        let b = status("b");
        let commits = Commits::default();
        commits.record(3, Duration::from_millis(2));
        let text = render(&config(), &[a, b], &commits, Some(10 << 20)).unwrap();
        let expect = |family: &str, want: &str| {
            assert_eq!(lines(&text, family).join("\n"), want.trim(), "in:\n{text}")
        };
        expect(
            "upsell_webhooks_total",
            r#"
# TYPE upsell_webhooks_total counter
upsell_webhooks_total{platform="shopify",result="accepted",store="a"} 5
upsell_webhooks_total{platform="shopify",result="duplicate",store="a"} 2
upsell_webhooks_total{platform="shopify",result="ignored",store="a"} 3
upsell_webhooks_total{platform="shopify",result="quarantined",store="a"} 0
upsell_webhooks_total{platform="shopify",result="rejected",store="a"} 1
upsell_webhooks_total{platform="woocommerce",result="accepted",store="b"} 0
upsell_webhooks_total{platform="woocommerce",result="duplicate",store="b"} 0
upsell_webhooks_total{platform="woocommerce",result="ignored",store="b"} 0
upsell_webhooks_total{platform="woocommerce",result="quarantined",store="b"} 0
upsell_webhooks_total{platform="woocommerce",result="rejected",store="b"} 0
"#,
        );
        expect(
            "upsell_touches_pending",
            r#"
# TYPE upsell_touches_pending gauge
upsell_touches_pending{store="a"} 7
upsell_touches_pending{store="b"} 0
"#,
        );
        expect(
            "upsell_sends_total",
            r#"
# TYPE upsell_sends_total counter
upsell_sends_total{channel="klaviyo",result="dead",store="a"} 2
upsell_sends_total{channel="klaviyo",result="retried",store="a"} 4
upsell_sends_total{channel="klaviyo",result="sent",store="a"} 9
"#,
        );
        expect(
            "upsell_dead_letters_total",
            r#"
# TYPE upsell_dead_letters_total counter
upsell_dead_letters_total{rule="refused",store="a"} 2
"#,
        );
        expect(
            "upsell_commit_batch_size_count",
            "upsell_commit_batch_size_count 1",
        );
        expect(
            "upsell_commit_batch_size_sum",
            "upsell_commit_batch_size_sum 3",
        );
        expect(
            "upsell_commit_batch_size_bucket{le=\"4\"}",
            "upsell_commit_batch_size_bucket{le=\"4\"} 1",
        );
        expect(
            "upsell_commit_batch_size_bucket{le=\"2\"}",
            "upsell_commit_batch_size_bucket{le=\"2\"} 0",
        );
        expect(
            "upsell_commit_duration_seconds_bucket{le=\"0.0025\"}",
            "upsell_commit_duration_seconds_bucket{le=\"0.0025\"} 1",
        );
        expect(
            "process_resident_memory_bytes",
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 10485760",
        );
    }

    #[test]
    fn resident_memory_is_read_from_vm_rss() {
        assert_eq!(
            vm_rss("Name:\tx\nVmHWM:\t  9000 kB\nVmRSS:\t  8192 kB\n"),
            Some(8 << 20)
        );
        assert_eq!(vm_rss("Name:\tx\n"), None);
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
