//! Crash test: `kill -9` the real server at random moments while clients post webhooks.
//! After every restart, every delivery that got a 2xx is stored, and none is stored twice.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use upsell_appliance::ingest::shopify;
use upsell_appliance::storage::{Options, Storage};

use crate::cli::bin;
use crate::fixtures::*;
use crate::support::*;

/// Starts `serve` and returns it with its webhook address.
fn start(config: &str, cwd: &Path) -> (std::process::Child, String) {
    let mut child = bin()
        .args(["serve", "--config", config])
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "serve exited early"
        );
        if let Some(a) = line.strip_prefix("listening on ") {
            addr = Some(a.split(' ').next().unwrap().to_string());
        }
        if line.starts_with("ready") {
            break;
        }
    }
    // Keep reading stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, addr.unwrap())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, config_text(&data, "127.0.0.1:0", "127.0.0.1:0")).unwrap();
    let config = config.display().to_string();

    let addr: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let acked: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u64)
        .map(|t| {
            let (addr, acked, stop) = (addr.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(5)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut n = 0u64;
                let mut attempts = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = t * 1_000_000 + n;
                    let event = format!("crash-{id}");
                    let body = order_json(&OrderSpec::by_customer(id + 1));
                    let Some(a) = addr.lock().unwrap().clone() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    attempts += 1;
                    let resp = agent
                        .post(&format!("http://{a}/webhooks/{STORE}"))
                        .header("X-Shopify-Topic", "orders/paid")
                        .header("X-Shopify-Hmac-Sha256", &shopify::sign(&body, SECRET))
                        .header("X-Shopify-Event-Id", &event)
                        .send(&body[..]);
                    match resp {
                        Ok(r) if r.status().as_u16() == 200 => {
                            acked.lock().unwrap().insert(event);
                            n += 1;
                        }
                        // No answer or not 2xx: the platform retries the same delivery.
                        _ => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                attempts
            })
        })
        .collect();

    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng(seed | 1);
    eprintln!("crash test seed {seed}");
    for round in 0..20 {
        let (mut child, a) = start(&config, tmp.path());
        *addr.lock().unwrap() = Some(a);
        std::thread::sleep(Duration::from_millis(50 + rng.next(300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        *addr.lock().unwrap() = None;
        let so_far = acked.lock().unwrap().len();
        eprintln!("round {round}: {so_far} acknowledged so far");

        // Check after every restart: open the file as the next start would.
        let storage = Storage::open(&data, &Options::default()).unwrap();
        for key in acked.lock().unwrap().iter() {
            assert!(
                storage
                    .event_by_key(STORE, &format!("event:{key}"))
                    .unwrap()
                    .is_some(),
                "round {round}: acknowledged delivery {key} is missing"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let attempts: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();

    // A last clean run lets the processor apply everything.
    let (mut child, _) = start(&config, tmp.path());
    std::thread::sleep(Duration::from_millis(500));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

    let storage = Storage::open(&data, &Options::default()).unwrap();
    let acked = acked.lock().unwrap();
    assert!(
        acked.len() > 20,
        "too few deliveries to mean anything: {}",
        acked.len()
    );
    let events = storage.events_after(0, usize::MAX).unwrap();
    let keys: HashSet<&str> = events
        .iter()
        .map(|(_, e)| e.head.dedupe_key.as_str())
        .collect();
    assert_eq!(keys.len(), events.len(), "a delivery was stored twice");
    for key in acked.iter() {
        assert!(keys.contains(format!("event:{key}").as_str()), "{key} lost");
    }
    assert_eq!(
        storage.processed_seq().unwrap(),
        storage.last_seq().unwrap()
    );
    let st = &storage.status(&[STORE]).unwrap()[0];
    assert_eq!(
        st.orders as usize,
        events.len(),
        "each stored delivery is one order"
    );
    eprintln!(
        "{} acknowledged, {} stored, {} attempts across 20 kills",
        acked.len(),
        events.len(),
        attempts
    );
}
