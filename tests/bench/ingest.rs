//! `cargo bench --bench ingest [-- --seconds N | --smoke]`
//!
//! 64 keep-alive clients post signed ~12 KB Shopify `orders/paid` webhooks with distinct
//! event ids for a fixed time, against, in the same run:
//!   (a) a bare tiny_http server that reads the body and answers 200 with no work,
//!   (b) the verify + parse work alone, on one core and on all cores (no HTTP),
//!   (c) the appliance (durable group commit before every 2xx),
//!   (d) the appliance on a disk whose every sync sleeps 10 ms (a cheap VPS disk).
//! Servers run as child processes of this program so their peak RSS is their own.
//! Prints accepted/s, p50/p99/max latency, peak RSS and the ratios.

#![recursion_limit = "512"]

#[path = "../it/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use upsell_appliance::ingest::{shopify, Headers};

const SECRET: &str = "shpss_bench_secret_0123456789abcdef";
const CLIENTS: usize = 64;
const DISTINCT_BODIES: usize = 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(&args[i + 1..]);
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let secs = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 1.0 } else { 10.0 });
    let run = Duration::from_secs_f64(secs);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    eprintln!("building {DISTINCT_BODIES} signed bodies...");
    let bodies = Arc::new(make_bodies());
    let size = bodies[0].0.len();
    println!("ingest benchmark: {CLIENTS} keep-alive clients, {size}-byte orders/paid bodies, {secs} s per phase, {cores} cores");

    // The machine is shared and its speed drifts over a run: each baseline is measured
    // right before and right after the appliance phases, and the mean is used.
    let vp = |ours| {
        (
            verify_parse(&bodies, 1, run / 4, ours),
            verify_parse(&bodies, cores, run / 4, ours),
        )
    };
    let bare1 = load_phase("bare tiny_http (no work)", &["bare"], &bodies, run / 2);
    let (value1_a, value_a) = vp(false);
    let (ours1_a, ours_a) = vp(true);
    let ours = load_phase("appliance (durable)", &["app", "0"], &bodies, run);
    let slow = load_phase("appliance, 10 ms sync", &["app", "10"], &bodies, run);
    let (value1_b, value_b) = vp(false);
    let (ours1_b, ours_b) = vp(true);
    let bare2 = load_phase("bare tiny_http (no work)", &["bare"], &bodies, run / 2);
    let bare = Result {
        rate: (bare1.rate + bare2.rate) / 2.0,
        p50_ms: (bare1.p50_ms + bare2.p50_ms) / 2.0,
        p99_ms: (bare1.p99_ms + bare2.p99_ms) / 2.0,
        max_ms: bare1.max_ms.max(bare2.max_ms),
        rss_mb: bare1.rss_mb.max(bare2.rss_mb),
        errors: bare1.errors + bare2.errors,
        ..bare1
    };
    let (vp_value_1, vp_value_n) = ((value1_a + value1_b) / 2.0, (value_a + value_b) / 2.0);
    let (vp_ours_1, vp_ours_n) = ((ours1_a + ours1_b) / 2.0, (ours_a + ours_b) / 2.0);
    println!(
        "verify + parse into serde_json::Value: {vp_value_1:.0}/s on 1 core, {vp_value_n:.0}/s on {cores} (before {value_a:.0}, after {value_b:.0})"
    );
    println!(
        "verify + normalize (our ingest path): {vp_ours_1:.0}/s on 1 core, {vp_ours_n:.0}/s on {cores} (before {ours_a:.0}, after {ours_b:.0})"
    );
    println!();
    println!("| run | acks/s | p50 ms | p99 ms | max ms | peak RSS MB | errors |");
    println!("|---|---|---|---|---|---|---|");
    for r in [&bare, &ours, &slow] {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            r.name, r.rate, r.p50_ms, r.p99_ms, r.max_ms, r.rss_mb, r.errors
        );
    }
    println!();
    println!("appliance / bare server: {:.2}", ours.rate / bare.rate);
    println!(
        "appliance / verify+parse ceiling ({cores} cores, serde_json::Value): {:.2}",
        ours.rate / vp_value_n
    );
    println!(
        "appliance / verify+normalize ceiling ({cores} cores, our parser): {:.2}",
        ours.rate / vp_ours_n
    );
    println!(
        "verify+parse (Value) / bare server: {:.2}",
        vp_value_n / bare.rate
    );
    println!("10 ms sync / fast disk: {:.2}", slow.rate / ours.rate);
    let targets = [
        ("acks/s >= 5000", ours.rate >= 5000.0),
        (
            "ratio to verify+parse ceiling >= 0.4",
            ours.rate / vp_value_n >= 0.4,
        ),
        ("10 ms sync acks/s >= 2000", slow.rate >= 2000.0),
        ("p99 <= 50 ms", ours.p99_ms <= 50.0 && slow.p99_ms <= 50.0),
        ("RSS <= 48 MB", ours.rss_mb <= 48.0 && slow.rss_mb <= 48.0),
        ("no errors", ours.errors == 0 && slow.errors == 0),
    ];
    for (what, ok) in targets {
        println!("target {what}: {}", if ok { "met" } else { "MISSED" });
    }
    if smoke && (ours.errors > 0 || slow.errors > 0 || ours.rate == 0.0) {
        eprintln!("smoke run had errors");
        std::process::exit(1);
    }
}

type Bodies = Vec<(Vec<u8>, String)>;

fn make_bodies() -> Bodies {
    (0..DISTINCT_BODIES)
        .map(|i| {
            let body =
                fixtures::order_json(&fixtures::OrderSpec::by_customer(5_000_000 + i as u64));
            let sig = shopify::sign(&body, SECRET);
            (body, sig)
        })
        .collect()
}

struct Result {
    name: &'static str,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    rss_mb: f64,
    errors: u64,
}

fn load_phase(
    name: &'static str,
    child_args: &[&str],
    bodies: &Arc<Bodies>,
    run: Duration,
) -> Result {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_child(child_args, tmp.path());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (bodies, stop, start, addr) =
                (bodies.clone(), stop.clone(), start.clone(), addr.clone());
            std::thread::spawn(move || client(c, &addr, &bodies, &stop, &start))
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let cpu0 = cpu_seconds(child.id());
    std::thread::sleep(run);
    let cpu = cpu_seconds(child.id()) - cpu0;
    stop.store(true, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let mut lat: Vec<u32> = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().unwrap();
        lat.extend(l);
        errors += e;
    }
    let rss_mb = peak_rss_mb(child.id());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    println!(
        "{name}: server CPU {:.0} µs per acknowledged delivery ({:.2} cores busy)",
        cpu * 1e6 / lat.len().max(1) as f64,
        cpu / elapsed
    );
    let db = tmp.path().join("data").join("upsell.redb");
    if let Ok(meta) = std::fs::metadata(&db) {
        println!(
            "{name}: database file {:.1} MB, {:.0} bytes per acknowledged delivery",
            meta.len() as f64 / 1e6,
            meta.len() as f64 / lat.len().max(1) as f64
        );
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let r = Result {
        name,
        rate: lat.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        rss_mb,
        errors,
    };
    println!(
        "{name}: {:.0} acks/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, peak RSS {:.1} MB, {} errors",
        r.rate, r.p50_ms, r.p99_ms, r.max_ms, r.rss_mb, r.errors
    );
    r
}

/// One keep-alive client: posts until told to stop; returns latencies (µs) and errors.
fn client(
    c: usize,
    addr: &str,
    bodies: &Bodies,
    stop: &AtomicBool,
    start: &Barrier,
) -> (Vec<u32>, u64) {
    let mut conn = connect(addr);
    let mut lat = Vec::with_capacity(100_000);
    let mut errors = 0u64;
    let mut n = 0usize;
    let mut req = Vec::with_capacity(16 * 1024);
    start.wait();
    while !stop.load(Ordering::Relaxed) {
        let (body, sig) = &bodies[(c * 7919 + n) % bodies.len()];
        req.clear();
        write!(
            req,
            "POST /webhooks/bench HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             X-Shopify-Topic: orders/paid\r\nX-Shopify-Hmac-Sha256: {sig}\r\n\
             X-Shopify-Shop-Domain: bench.myshopify.com\r\nX-Shopify-API-Version: 2026-10\r\n\
             X-Shopify-Event-Id: bench-{c}-{n}\r\nX-Shopify-Webhook-Id: wh-{c}-{n}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        req.extend_from_slice(body);
        n += 1;
        let t = Instant::now();
        match roundtrip(&mut conn, &req) {
            Ok(200) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                conn = connect(addr);
            }
        }
    }
    (lat, errors)
}

fn connect(addr: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    BufReader::new(s)
}

fn roundtrip(conn: &mut BufReader<TcpStream>, req: &[u8]) -> std::io::Result<u16> {
    conn.get_mut().write_all(req)?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut sink = vec![0u8; len];
    conn.read_exact(&mut sink)?;
    Ok(status)
}

/// Verify + parse throughput with no HTTP: `ours` runs our real ingest path (HMAC,
/// headers, typed normalization); otherwise HMAC + `serde_json::Value`, the reference
/// figure in architecture.md.
fn verify_parse(bodies: &Arc<Bodies>, threads: usize, run: Duration, ours: bool) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (bodies, stop) = (bodies.clone(), stop.clone());
            std::thread::spawn(move || {
                let secrets = vec![SECRET.to_string()];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (body, sig) = &bodies[(t * 131 + n as usize) % bodies.len()];
                    let headers = Headers(vec![
                        ("x-shopify-topic".into(), "orders/paid".into()),
                        ("x-shopify-hmac-sha256".into(), sig.clone()),
                        ("x-shopify-event-id".into(), format!("e-{n}")),
                    ]);
                    if ours {
                        let inbound = shopify::receive(
                            headers,
                            body.clone(),
                            &secrets,
                            "bench.myshopify.com",
                        )
                        .unwrap();
                        assert!(matches!(
                            inbound.parsed,
                            upsell_appliance::ingest::Parsed::Event(_)
                        ));
                    } else {
                        shopify::verify(&headers, body, &secrets).unwrap();
                        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                        assert!(v.is_object());
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / t0.elapsed().as_secs_f64()
}

fn spawn_child(args: &[&str], dir: &Path) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--child")
        .args(args)
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("child address")
        .to_string();
    (child, addr)
}

/// User + system CPU time of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ is 100 on Linux
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The server side, in a child process: `bare DIR` or `app SYNC_DELAY_MS DIR`.
fn child(args: &[String]) {
    match args[0].as_str() {
        "bare" => {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
            println!("listening on {}", server.server_addr().to_ip().unwrap());
            std::io::stdout().flush().unwrap();
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let server = server.clone();
                    std::thread::spawn(move || loop {
                        let Ok(mut rq) = server.recv() else { return };
                        let mut body = Vec::new();
                        let _ = rq.as_reader().read_to_end(&mut body);
                        let _ = rq.respond(tiny_http::Response::empty(200));
                    })
                })
                .collect();
            wait_for_term();
            drop(workers);
        }
        "app" => {
            let delay: u64 = args[1].parse().unwrap();
            let dir = Path::new(&args[2]);
            let config = format!(
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
                 admin_token = \"bench-admin-token-0123456789\"\n\
                 [[stores]]\nid = \"bench\"\nplatform = \"shopify\"\ndomain = \"bench.myshopify.com\"\n\
                 webhook_secrets = [\"{SECRET}\"]\n",
                dir.join("data").display()
            );
            let config = upsell_appliance::config::parse(
                &config,
                dir,
                upsell_appliance::config::Origin::Demo,
            )
            .unwrap();
            let faults = upsell_appliance::storage::Faults {
                sync_delay: (delay > 0).then(|| Duration::from_millis(delay)),
                ..Default::default()
            };
            let running = upsell_appliance::app::start(
                config,
                upsell_appliance::app::Options {
                    faults,
                    ..Default::default()
                },
            )
            .unwrap();
            println!("listening on {}", running.public_addr);
            std::io::stdout().flush().unwrap();
            wait_for_term();
            running.shutdown().unwrap();
        }
        other => panic!("unknown child {other}"),
    }
}

fn wait_for_term() {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]).unwrap();
    signals.forever().next();
}
