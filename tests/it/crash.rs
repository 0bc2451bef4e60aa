//! Crash test: `kill -9` the real server at random moments while clients post webhooks.
//! After every restart, every delivery that got a 2xx is stored, and none is stored twice.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use upsell_appliance::storage::{Options, Storage};

use crate::cli::bin;
use crate::fixtures::*;
use crate::support::*;

/// Starts `serve` and returns it with its webhook address.
pub fn start(config: &str, cwd: &Path) -> (std::process::Child, String) {
    let mut cmd = bin();
    cmd.args(["serve", "--config", config]).current_dir(cwd);
    start_cmd(cmd)
}

/// Runs a command that ends up as `serve` and waits until it is ready.
pub fn start_cmd(cmd: std::process::Command) -> (std::process::Child, String) {
    start_with_stderr(cmd, Stdio::null())
}

/// [`start_cmd`] with its standard error going to `stderr` (`Stdio::piped()` to read the log).
pub fn start_with_stderr(
    mut cmd: std::process::Command,
    stderr: Stdio,
) -> (std::process::Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
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

/// Clients posting signed orders as fast as the server takes them, to whichever server
/// is up; they remember every delivery that got a 200.
struct Load {
    addr: Arc<Mutex<Option<String>>>,
    acked: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start(clients: u64) -> Load {
        let addr: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let acked: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|t| {
                let (addr, acked, stop) = (addr.clone(), acked.clone(), stop.clone());
                std::thread::spawn(move || client(t, &addr, &acked, &stop))
            })
            .collect();
        Load {
            addr,
            acked,
            stop,
            clients,
        }
    }

    fn target(&self, addr: Option<String>) {
        *self.addr.lock().unwrap() = addr;
    }

    fn acked(&self) -> HashSet<String> {
        self.acked.lock().unwrap().clone()
    }

    /// Stops the clients; returns how many requests they made.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.clients.into_iter().map(|c| c.join().unwrap()).sum()
    }
}

fn client(
    t: u64,
    addr: &Mutex<Option<String>>,
    acked: &Mutex<HashSet<String>>,
    stop: &AtomicBool,
) -> u64 {
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
        match post_paid(&agent, &a, &event, &body) {
            Some(200) => {
                acked.lock().unwrap().insert(event);
                n += 1;
            }
            // No answer or not 2xx: the platform retries the same delivery.
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    attempts
}

/// Opens the database as the next start would and checks every acknowledged delivery.
pub fn assert_all_stored(data: &Path, acked: &HashSet<String>, round: usize) {
    let storage = Storage::open(data, &Options::default()).unwrap();
    for key in acked {
        assert!(
            storage
                .event_by_key(STORE, &format!("event:{key}"))
                .unwrap()
                .is_some(),
            "round {round}: acknowledged delivery {key} is missing"
        );
    }
}

pub fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn temp_config() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, config_text(&data, "127.0.0.1:0", "127.0.0.1:0")).unwrap();
    let config = config.display().to_string();
    (tmp, data, config)
}

#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let (tmp, data, config) = temp_config();
    let load = Load::start(4);

    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng(seed | 1);
    eprintln!("crash test seed {seed}");
    for round in 0..20 {
        let (mut child, a) = start(&config, tmp.path());
        load.target(Some(a));
        std::thread::sleep(Duration::from_millis(50 + rng.next(300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        load.target(None);
        let acked = load.acked();
        eprintln!("round {round}: {} acknowledged so far", acked.len());
        assert_all_stored(&data, &acked, round);
    }
    let acked = load.acked();
    let attempts = load.finish();

    // A last clean run lets the processor apply everything.
    let (mut child, _) = start(&config, tmp.path());
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&child);
    assert!(child.wait().unwrap().success());

    let storage = Storage::open(&data, &Options::default()).unwrap();
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

/// SIGTERM while clients post as fast as they can: the service stops within 15 s with
/// exit status 0, and every delivery it answered 200 is there at the next start.
#[test]
fn sigterm_under_load_stops_in_time_and_keeps_everything_acknowledged() {
    let (tmp, data, config) = temp_config();
    let load = Load::start(8);
    let mut slowest = Duration::ZERO;
    for round in 0..5 {
        let (mut child, a) = start(&config, tmp.path());
        load.target(Some(a));
        std::thread::sleep(Duration::from_millis(400 + 150 * round as u64));
        let before = load.acked().len();
        let asked = Instant::now();
        sigterm(&child);
        let status = child.wait().unwrap();
        let took = asked.elapsed();
        load.target(None);
        slowest = slowest.max(took);
        assert!(status.success(), "round {round}: exit status {status}");
        assert!(
            took < Duration::from_secs(15),
            "round {round}: took {took:?}"
        );
        let acked = load.acked();
        eprintln!(
            "round {round}: stopped in {took:?}; {} acknowledged, {} of them while stopping",
            acked.len(),
            acked.len() - before
        );
        assert_all_stored(&data, &acked, round);
    }
    let acked = load.acked();
    load.finish();
    assert!(acked.len() > 50, "too little load: {}", acked.len());
    eprintln!("slowest stop under load: {slowest:?}");
}
