//! `cargo bench --bench deliver [-- --touches N | --smoke]`: sending through a provider.
//!
//! 100,000 touches (distinct customers, each with an email) fall due at once, routed to a
//! local fake Klaviyo (tiny_http, 4 threads, answering 202 at once) with the rate limit
//! raised for the benchmark; the service (`app::start`, real clock, default
//! `touch_workers`) runs in a child process. Printed: sends/s until every touch is recorded
//! sent, the provider exchange time per send (p50/p99, from the receipts), and our
//! per-send overhead beyond it. Baseline in the same run: the same requests (same body
//! size) posted straight at the fake from as many threads as there are workers, with no
//! decisions and no database.
//!
//! Target (issue 7): >= 2,000 sends/s on loopback.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use upsell_appliance::engine::history::Customer;
use upsell_appliance::engine::lifecycle::{PlanRecord, Status};
use upsell_appliance::engine::plan::{Channel, Offer, Plan, Recipe, Touch, TouchKind};
use upsell_appliance::engine::{Currency, Timestamp};
use upsell_appliance::storage::plans::PlanWrites;
use upsell_appliance::storage::{self, Changes, Storage};

const STORE: &str = "bench";
const DAY: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A fake Klaviyo: answers every request 202 at once; counts them.
fn fake(threads: usize) -> (String, Arc<AtomicU64>) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let count = Arc::new(AtomicU64::new(0));
    for _ in 0..threads {
        let (server, count) = (server.clone(), count.clone());
        std::thread::spawn(move || {
            for mut rq in server.incoming_requests() {
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(rq.as_reader(), &mut sink);
                count.fetch_add(1, Ordering::Relaxed);
                let _ = rq.respond(tiny_http::Response::empty(202));
            }
        });
    }
    (url, count)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(&args[i + 1..]);
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let touches: usize = args
        .iter()
        .position(|a| a == "--touches")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 3_000 } else { 100_000 });
    let workers = 2; // touch_workers' default
    let tmp = tempfile::tempdir().unwrap();
    let (url, seen) = fake(4);
    println!("deliver benchmark: {touches} touches due at once to a local fake Klaviyo (202), {workers} touch workers");

    // Baseline: the same POSTs straight at the fake, `workers` threads.
    let body = vec![b'x'; 1100];
    let base = baseline(&url, workers, touches.min(20_000), &body);

    let dir = tmp.path().join("svc");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--child",
            "populate",
            dir.to_str().unwrap(),
            &touches.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let due: i64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let before = seen.load(Ordering::Relaxed);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--child", "serve", dir.to_str().unwrap(), &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // From the first request the fake sees to the child's report that every touch is
    // recorded sent.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next().unwrap().unwrap();
        tx.send((Instant::now(), line)).unwrap();
    });
    while seen.load(Ordering::Relaxed) == before {
        std::thread::sleep(Duration::from_micros(200));
    }
    let first = Instant::now();
    let (done_at, line) = rx.recv().unwrap();
    let secs = done_at.duration_since(first).as_secs_f64();
    let exchange = parse_done(&line);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "stop").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let sent = seen.load(Ordering::Relaxed) - before;
    let rate = touches as f64 / secs;
    let per_send_us = workers as f64 * 1e6 / rate;
    let overhead_us = per_send_us - exchange.0;
    println!(
        "appliance: {touches} sent in {secs:.2} s from the first request to the last recorded sent: {rate:.0} sends/s; the fake saw {sent} requests (due at {due})"
    );
    println!(
        "provider exchange per send (receipts): mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs; worker time per send {per_send_us:.0} µs, so our overhead beyond the exchange {overhead_us:.0} µs",
        exchange.0, exchange.1, exchange.2
    );
    println!(
        "baseline (bare POSTs, {workers} threads): {:.0} requests/s, p50 {:.0} µs, p99 {:.0} µs; ratio {:.2}",
        base.0,
        base.1,
        base.2,
        rate / base.0
    );
    println!();
    println!("| figure | value | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| sends/s, {touches} due at once | {rate:.0} | bare POSTs {:.0}/s | {:.2} |",
        base.0,
        rate / base.0
    );
    println!(
        "| exchange per send | p50 {:.0} µs, p99 {:.0} µs | bare POST p50 {:.0} µs, p99 {:.0} µs | |",
        exchange.1, exchange.2, base.1, base.2
    );
    println!("| our overhead per send (worker time − exchange) | {overhead_us:.0} µs | | |");
    let ok = rate >= 2000.0;
    println!(
        "target sends/s >= 2000: {}",
        if ok { "met" } else { "MISSED" }
    );
    if sent < touches as u64 {
        eprintln!("only {sent} of {touches} requests reached the fake");
        std::process::exit(1);
    }
}

/// Bare POSTs: (requests/s, p50 µs, p99 µs).
fn baseline(url: &str, threads: usize, n: usize, body: &[u8]) -> (f64, f64, f64) {
    let t = Instant::now();
    let per = n / threads;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (url, body) = (format!("{url}/api/events/"), body.to_vec());
            std::thread::spawn(move || {
                let agent = upsell_appliance::outbound::agent(
                    Duration::from_secs(5),
                    Duration::from_secs(20),
                );
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let s = Instant::now();
                    let r = agent
                        .post(&url)
                        .header("content-type", "application/vnd.api+json")
                        .send(&body[..])
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 202);
                    lat.push(s.elapsed().as_micros() as f64);
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let rate = lat.len() as f64 / t.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    (rate, p(0.5), p(0.99))
}

/// The child's `done MEAN P50 P99` (exchange µs).
fn parse_done(line: &str) -> (f64, f64, f64) {
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1], v[2])
}

fn config_text(dir: &Path, url: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
         admin_token = \"bench-admin-token-0123456789\"\n\
         [[stores]]\nid = \"{STORE}\"\nplatform = \"shopify\"\ndomain = \"bench.myshopify.com\"\n\
         webhook_secrets = [\"shpss_bench_secret_0123456789abcdef\"]\nmode = \"live\"\n\
         [stores.channels]\nemail = \"klaviyo\"\n[stores.channels.klaviyo]\napi_key = \"pk_bench\"\n\
         base_url = \"{url}\"\nrate_per_second = 10000\n",
        dir.join("data").display()
    )
}

fn record(n: u64, due: i64) -> PlanRecord {
    PlanRecord {
        order_id: n.to_string(),
        order_name: format!("#{n}"),
        customer: Some(n),
        order_at: Timestamp(due - DAY),
        first_planned_at: Timestamp(due - DAY),
        revision: 1,
        plan: Plan {
            recipe: Some(Recipe::CrossSell),
            offer: Some(Offer {
                product: "sku:SCALE".into(),
                sku: Some("SCALE".into()),
                variant_id: None,
                title: "Scale".into(),
                price: 1900,
                currency: Currency::parse("USD").unwrap(),
                discount_code: None,
                trust: false,
                urgency: false,
            }),
            holdout: false,
            variants: vec![],
            touches: vec![Touch {
                kind: TouchKind::Touch1,
                channel: Channel::Email,
                due_at: Timestamp(due),
                after_delivery: false,
            }],
            reasons: vec![],
        },
        sent: vec![],
        status: Status::Active,
        refunded_at: None,
        history: vec![],
    }
}

fn child(args: &[String]) {
    match args[0].as_str() {
        "populate" => {
            let dir = Path::new(&args[1]);
            let n: u64 = args[2].parse().unwrap();
            let s = Storage::open(&dir.join("data"), &storage::Options::default()).unwrap();
            let mut changes = Changes::new(0);
            for c in 1..=n {
                let mut cust = Customer::new(c);
                cust.email = Some(format!("c{c}@example.com"));
                changes.put_customer(STORE, &cust).unwrap();
            }
            s.apply_changes(&changes).unwrap();
            // Due a few seconds after the service starts.
            let due = now_ms() + 3_000;
            let mut o = 1;
            while o <= n {
                let upto = (o + 2_500).min(n + 1);
                s.write_plans(&PlanWrites {
                    plans: (o..upto)
                        .map(|i| (STORE.to_string(), record(i, due)))
                        .collect(),
                    ..Default::default()
                })
                .unwrap();
                o = upto;
            }
            s.sync().unwrap();
            println!("{due}");
        }
        "serve" => {
            let dir = Path::new(&args[1]);
            let config = upsell_appliance::config::parse(
                &config_text(dir, &args[2]),
                dir,
                upsell_appliance::config::Origin::Demo,
            )
            .unwrap();
            let running =
                upsell_appliance::app::start(config, upsell_appliance::app::Options::default())
                    .unwrap();
            // Report once every touch is recorded sent (the parent times it).
            let total = running
                .storage
                .snapshot()
                .unwrap()
                .pending_touches()
                .unwrap();
            while (running.scheduler_report.lock().unwrap().decided.sent as u64) < total {
                std::thread::sleep(Duration::from_millis(2));
            }
            let snap = running.storage.snapshot().unwrap();
            let mut lat: Vec<f64> = (1..=total)
                .filter_map(|id| snap.receipt(id).unwrap())
                .map(|r| r.latency_us as f64)
                .collect();
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let mean = lat.iter().sum::<f64>() / lat.len() as f64;
            let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
            println!("done {mean} {} {}", p(0.5), p(0.99));
            std::io::stdout().flush().unwrap();
            let mut l = String::new();
            let _ = std::io::stdin().read_line(&mut l);
            running.shutdown().unwrap();
        }
        other => panic!("unknown child {other}"),
    }
}
