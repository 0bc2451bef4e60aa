//! The command line as an operator uses it: a subprocess of the real binary.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use upsell_appliance::ingest::shopify;

use crate::fixtures::*;
use crate::support::*;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_upsell-appliance"))
}

pub(crate) fn run(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = bin().args(args).current_dir(cwd).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `serve` as a subprocess and waits for its "listening on" line.
pub fn spawn_serve(args: &[&str], cwd: &Path) -> (Child, Vec<String>) {
    let mut child = bin()
        .arg("serve")
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve exited early: {lines:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ready = line.starts_with("ready");
        lines.push(line.trim_end().to_string());
        if ready {
            break;
        }
    }
    (child, lines)
}

fn write_config(dir: &Path, text: &str) -> String {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn check_config_fails(text: &str, expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_config(tmp.path(), text);
    let (code, _, err) = run(&["check-config", "--config", &path], tmp.path());
    assert_ne!(code, 0, "accepted: {text}");
    assert!(err.contains(expect), "expected {expect:?} in {err:?}");
    // `serve` refuses the same config before binding anything.
    let (code, _, err) = run(&["serve", "--config", &path], tmp.path());
    assert_ne!(code, 0);
    assert!(
        err.contains(expect),
        "serve: expected {expect:?} in {err:?}"
    );
}

#[test]
fn malformed_config_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let good = config_text(tmp.path(), "127.0.0.1:0", "127.0.0.1:0");
    let secrets = format!("[\"{SECRET}\", \"{OLD_SECRET}\"]");
    let cases: &[(&str, &str, &str)] = &[
        (
            "listen = \"127.0.0.1:0\"\nadmin",
            "listen = \"localhost\"\nadmin",
            "listen = \"localhost\" is not an address",
        ),
        (
            "max_body_kb",
            "max_body_kbb",
            "unknown field `max_body_kbb`",
        ),
        (
            "America/Toronto",
            "Mars/Olympus",
            "stores[0].timezone = \"Mars/Olympus\"",
        ),
        (
            "platform = \"shopify\"",
            "platform = \"magento\"",
            "stores[0].platform = \"magento\"",
        ),
        (&secrets, "[]", "stores[0].webhook_secrets is empty"),
        (
            "admin_token = ",
            "admin_token = \"short\"\n#",
            "admin_token is too short",
        ),
        (
            "max_body_kb = 256",
            "max_body_kb = 0",
            "max_body_kb = 0 is out of range",
        ),
        ("listen = ", "listen = [\n", "TOML parse error"),
        (
            "max_body_kb = 256",
            "max_body_kb = 256\nlog = \"inf\"",
            "log = \"inf\": \"inf\" is not a level",
        ),
        (
            "id = \"main\"",
            "id = \"Main Store\"",
            "stores[0].id = \"Main Store\"",
        ),
    ];
    for (from, to, expect) in cases {
        check_config_fails(&good.replace(from, to), expect);
    }
    // No stores yet is valid (the package installs such a config), and said.
    let path = write_config(
        tmp.path(),
        "listen = \"127.0.0.1:0\"\nadmin_token = \"0123456789abcdef0123\"\n",
    );
    let (code, out, err) = run(&["check-config", "--config", &path], tmp.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("no stores yet: add a [[stores]] table"),
        "{out}"
    );
    let (code, _, err) = run(&["status", "--store", "x", "--config", &path], tmp.path());
    assert_ne!(code, 0);
    assert!(err.contains("no store with id \"x\""), "{err}");
    check_config_fails(
        &format!("{good}\n[jobs]\npurge = \"17 3 * *\"\n"),
        "jobs.purge = \"17 3 * *\" has 4 fields; write minute hour day-of-month month day-of-week (UTC); e.g. \"17 3 * * *\"",
    );
    let (code, _, err) = run(
        &["check-config", "--config", "/nonexistent/x.toml"],
        tmp.path(),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("upsell-appliance init --config /nonexistent/x.toml"),
        "{err}"
    );
}

#[test]
fn secrets_file_is_merged_over_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(tmp.path(), "127.0.0.1:0", "127.0.0.1:0")
        .replace(
            &format!("[\"{SECRET}\", \"{OLD_SECRET}\"]"),
            "[\"REPLACE_ME later\"]",
        )
        .replace(
            "max_body_kb = 256",
            "max_body_kb = 256\nsecrets_file = \"secrets.toml\"",
        );
    let path = write_config(tmp.path(), &text);
    std::fs::write(
        tmp.path().join("secrets.toml"),
        "[[stores]]\nid = \"main\"\nwebhook_secrets = [\"from-the-secrets-file-123\"]\n",
    )
    .unwrap();
    let (code, out, err) = run(&["check-config", "--json", "--config", &path], tmp.path());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stores"][0]["secrets"], 1);
    assert_eq!(v["jobs"]["purge"]["schedule"], "17 3 * * *", "{v}");
    assert!(v["jobs"]["purge"]["next"]
        .as_str()
        .unwrap()
        .ends_with("T03:17:00Z"));
    assert_eq!(v["jobs"]["payload_retention_days"], 90);
    std::fs::write(
        tmp.path().join("secrets.toml"),
        "[[stores]]\nid = \"other\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", "--config", &path], tmp.path());
    assert_ne!(code, 0);
    assert!(
        err.contains("store \"other\" is not in the config"),
        "{err}"
    );
}

#[test]
fn init_writes_a_config_once_and_it_asks_for_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("etc/config.toml");
    let p = path.display().to_string();
    let (code, out, err) = run(&["init", "--config", &p], tmp.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("fresh admin_token"), "{out}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("{ADMIN_TOKEN}"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, _, err) = run(&["init", "--config", &p], tmp.path());
    assert_ne!(code, 0);
    assert!(err.contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let (code, _, err) = run(&["check-config", "--config", &p], tmp.path());
    assert_ne!(code, 0);
    assert!(
        err.contains("stores[0].webhook_secrets[0] still holds the placeholder"),
        "{err}"
    );
    // Replacing the placeholder is all it takes.
    std::fs::write(
        &path,
        text.replace(
            "REPLACE_ME with the Shopify app's client secret",
            "shpss_real",
        ),
    )
    .unwrap();
    let (code, out, err) = run(&["check-config", "--config", &p], tmp.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("webhooks at https://upsell.example.com/webhooks/main"),
        "{out}"
    );
}

#[test]
fn status_works_with_and_without_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let path = write_config(
        tmp.path(),
        &config_text(&tmp.path().join("data"), &listen, &admin),
    );
    // Nothing yet: a clear message, not a crash.
    let (code, _, err) = run(&["status", "--config", &path], tmp.path());
    assert_ne!(code, 0);
    assert!(
        err.contains("start `upsell-appliance serve` first"),
        "{err}"
    );

    let (mut child, _) = spawn_serve(&["--config", &path], tmp.path());
    let body = order_json(&OrderSpec::three_lines(31));
    let sig = shopify::sign(&body, SECRET);
    let resp = agent()
        .post(&format!("http://{listen}/webhooks/{STORE}"))
        .header("X-Shopify-Topic", "orders/paid")
        .header("X-Shopify-Hmac-Sha256", &sig)
        .header("X-Shopify-Event-Id", "cli-1")
        .send(&body[..])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let live = loop {
        let (code, out, err) = run(
            &["status", "--json", "--store", STORE, "--config", &path],
            tmp.path(),
        );
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if v["stores"][0]["orders"] == 1 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(live["stores"][0]["webhooks"]["accepted"], 1);
    assert_eq!(live["stores"][0]["orders"], 1);
    assert!(
        live["uptime_seconds"].is_number(),
        "answered by the service: {live}"
    );
    let (code, out, _) = run(&["status", "--config", &path], tmp.path());
    assert_eq!(code, 0);
    assert!(out.contains("from the running service"), "{out}");
    let (code, _, err) = run(
        &["status", "--store", "nope", "--config", &path],
        tmp.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("no store with id \"nope\""), "{err}");

    // A bad signature right before the stop is still counted.
    let resp = agent()
        .post(&format!("http://{listen}/webhooks/{STORE}"))
        .header("X-Shopify-Topic", "orders/paid")
        .header("X-Shopify-Hmac-Sha256", "AAAA")
        .send(&body[..])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // SIGTERM: a clean stop with exit 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // The same figures straight from the file.
    let (code, out, err) = run(
        &["status", "--json", "--store", STORE, "--config", &path],
        tmp.path(),
    );
    assert_eq!(code, 0, "{err}");
    let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stores"][0]["webhooks"]["rejected"], 1);
    v["stores"][0]["webhooks"]["rejected"] = 0.into();
    assert!(v["stores"][0]["last_rejected_at"].is_string());
    v["stores"][0]["last_rejected_at"] = serde_json::Value::Null;
    // The touch figures move on their own (the scheduler decides due touches between the
    // two looks); both have them.
    let mut live = live.clone();
    for s in [&mut v, &mut live] {
        let t = s["stores"][0].as_object_mut().unwrap().remove("touches");
        assert!(t.is_some_and(|t| t["pending"].is_u64()), "{s}");
    }
    assert_eq!(v["stores"], live["stores"]);
    assert!(v.get("uptime_seconds").is_none());
}

/// A store without `mode` is a dry run, and `check-config` and `serve` say so; `live` is
/// shown as such.
#[test]
fn check_config_and_serve_say_which_stores_are_a_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let text = config_text(&data, "127.0.0.1:0", "127.0.0.1:0")
        .replace("id = \"woo\"\n", "id = \"woo\"\nmode = \"live\"\n");
    let path = write_config(tmp.path(), &text);
    let (code, out, _) = run(&["check-config", "--config", &path], tmp.path());
    assert_eq!(code, 0);
    assert!(out.contains("  store main (dry_run, shopify,"), "{out}");
    assert!(out.contains("  store woo (live, woocommerce,"), "{out}");
    let (code, out, _) = run(&["check-config", "--json", "--config", &path], tmp.path());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stores"][0]["mode"], "dry_run");
    assert_eq!(v["stores"][1]["mode"], "live");
    let (mut child, lines) = spawn_serve(&["--config", &path], tmp.path());
    let _ = child.kill();
    let _ = child.wait();
    let dry: Vec<&String> = lines.iter().filter(|l| l.contains("dry_run")).collect();
    assert_eq!(
        dry.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
        [
            format!("store main: dry_run — touches go to the outbox only, nothing reaches customers; set mode = \"live\" in {path} to send"),
            format!("store bc: dry_run — touches go to the outbox only, nothing reaches customers; set mode = \"live\" in {path} to send"),
        ],
        "{lines:?}"
    );
}

/// `pause` and `resume` through the running service and straight into the file; a pause
/// written while the service is stopped holds at the next start, which says so.
#[test]
fn pause_and_resume_work_with_and_without_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let path = write_config(
        tmp.path(),
        &config_text(&tmp.path().join("data"), &listen, &admin),
    );
    let (mut child, _) = spawn_serve(&["--config", &path], tmp.path());
    let cli = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--store", STORE, "--config", &path]);
        let (code, out, err) = run(&a, tmp.path());
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    let out = cli(&["pause"]);
    assert!(
        out.starts_with("store main paused at ")
            && out.contains("nothing is sent until `upsell-appliance resume --store main`; touches falling due meanwhile wait and then follow the misfire policy (from the running service"),
        "{out}"
    );
    assert!(cli(&["pause"]).starts_with("store main was already paused (since "));
    let out = cli(&["status"]);
    assert!(
        out.starts_with("store main (dry_run, PAUSED since "),
        "{out}"
    );
    assert!(out.contains("warn: Store main: PAUSED since "), "{out}");
    let v: serde_json::Value = serde_json::from_str(&cli(&["status", "--json"])).unwrap();
    assert_eq!(v["stores"][0]["mode"], "dry_run");
    assert!(v["stores"][0]["paused_since"].is_string(), "{v}");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());

    // Without the service: the file.
    let v: serde_json::Value = serde_json::from_str(&cli(&["resume", "--json"])).unwrap();
    assert_eq!(
        (&v["paused"], &v["changed"]),
        (&false.into(), &true.into()),
        "{v}"
    );
    assert_eq!(
        cli(&["resume"]).trim(),
        format!(
            "store main was not paused; nothing changed (from the database in {})",
            tmp.path().join("data").display()
        )
    );
    assert!(cli(&["pause"]).contains("(from the database in "));
    let (mut child, lines) = spawn_serve(&["--config", &path], tmp.path());
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("store main: PAUSED since ")),
        "{lines:?}"
    );
    let out = cli(&["resume"]);
    assert!(
        out.starts_with("store main resumed (paused since ")
            && out.contains("(from the running service"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&cli(&["status", "--json"])).unwrap();
    assert_eq!(v["stores"][0]["paused_since"], serde_json::Value::Null);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn demo_default_serves_a_signed_test_order() {
    let tmp = tempfile::tempdir().unwrap();
    // Without --config a machine's real /etc config wins over the demo: nothing to test.
    if Path::new(upsell_appliance::config::SYSTEM_CONFIG).exists() {
        eprintln!(
            "{} exists; the demo default is not reachable here",
            upsell_appliance::config::SYSTEM_CONFIG
        );
        return;
    }
    let (mut child, lines) = spawn_serve(&[], tmp.path());
    let secret_line = lines
        .iter()
        .find(|l| l.contains("webhook secret:"))
        .expect("secret printed");
    let secret = secret_line.rsplit(' ').next().unwrap().to_string();
    assert!(
        lines.iter().any(|l| l.starts_with("demo admin token: ")),
        "{lines:?}"
    );
    assert!(
        lines[0].starts_with("demo: loaded 25 products and 566 orders"),
        "{lines:?}"
    );
    // README "Try it": the newcomer's first order, placed now.
    let body = serde_json::to_vec(&serde_json::json!({
        "id": 9001, "name": "#9001", "email": "jane@example.com",
        "created_at": chrono::Utc::now().to_rfc3339(), "currency": "USD", "total_price": "54.00",
        "line_items": [{"id": 1, "product_id": 632910392, "variant_id": 1, "sku": "KIT-POUR",
            "quantity": 1, "price": "54.00", "title": "Pour-over Kit"}]
    }))
    .unwrap();
    let resp = agent()
        .post("http://127.0.0.1:8080/webhooks/demo")
        .header("X-Shopify-Topic", "orders/paid")
        .header("X-Shopify-Hmac-Sha256", &shopify::sign(&body, &secret))
        .send(&body[..])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // CLI commands without --config find the same demo (token kept in ./upsell-data).
    let (code, out, err) = run(&["status", "--json"], tmp.path());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stores"][0]["webhooks"]["accepted"], 1);
    // The first order gets a real offer, explained by the running service.
    let deadline = Instant::now() + Duration::from_secs(10);
    let live = loop {
        let (code, out, err) = run(&["explain", "#9001", "--json"], tmp.path());
        if code == 0 {
            break serde_json::from_str::<serde_json::Value>(&out).unwrap();
        }
        assert!(Instant::now() < deadline, "{err}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(live["order"], "9001");
    assert_eq!(live["offer"]["sku"], "SCALE-MINI", "{live:#}");
    assert_eq!(live["offer"]["price"], "19.00");
    // One customer in ten is held out (the salt is random per installation).
    let touches = live["touches"].as_array().unwrap().len();
    assert_eq!(touches == 0, live["holdout"] == true, "{live:#}");
    // Imports through the service name the operator's file, not the service's copy.
    std::fs::write(tmp.path().join("bad.csv"), "email\nbad-one\n").unwrap();
    let (code, _, err) = run(&["import", "suppressions", "bad.csv"], tmp.path());
    assert_ne!(code, 0);
    assert!(
        err.contains("bad.csv: 1 row rejected; nothing was imported"),
        "{err}"
    );
    assert!(
        !err.contains("upload-") && !err.contains("--skip-bad-rows"),
        "{err}"
    );
    let (code, out, _) = run(&["explain", "9001"], tmp.path());
    assert_eq!(code, 0);
    assert!(out.contains("from the running service"), "{out}");
    assert!(
        out.contains("offer: SCALE-MINI \"Coffee Scale\" at 19.00 USD"),
        "{out}"
    );
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(child.wait().unwrap().success());
    // The same plan from the file; a customer suppressed from the file.
    let (code, out, err) = run(&["explain", "9001", "--json"], tmp.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        live
    );
    let (code, out, err) = run(
        &[
            "customer",
            "suppress",
            "Jane@Example.com",
            "--reason",
            "complained",
        ],
        tmp.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("email:jane@example.com is on the suppression list"),
        "{out}"
    );
    let (code, out, err) = run(
        &["customer", "show", "jane@example.com", "--json"],
        tmp.path(),
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["suppressed"]["reason"], "complained", "{v:#}");
    assert_eq!(v["customer"]["plans"][0]["order"], "9001", "{v:#}");
    let (code, _, err) = run(&["customer", "show", "not a contact"], tmp.path());
    assert_ne!(code, 0);
    assert!(
        err.contains("neither an email address nor a phone number"),
        "{err}"
    );
    // A second start reuses the generated secrets and does not load the demo data again.
    let (mut child, lines2) = spawn_serve(&[], tmp.path());
    assert!(lines2.contains(secret_line), "{lines2:?}");
    assert!(!lines2[0].starts_with("demo: loaded"), "{lines2:?}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// `compact` gives the database's free pages back, and only with the service stopped. The
/// service runs on a fast clock with a one-day retention, so the purge frees the bodies
/// of the deliveries posted (and says so) within seconds.
#[test]
fn compact_refuses_while_the_service_runs_and_gives_space_back_once_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let text = config_text(&tmp.path().join("data"), &listen, &admin);
    let path = write_config(
        tmp.path(),
        &format!("{text}\n[jobs]\npayload_retention_days = 1\n"),
    );
    let (code, _, err) = run(&["compact", "--config", &path], tmp.path());
    assert_ne!(code, 0);
    assert!(err.contains("no database in"), "{err}");

    let (child, _) = spawn_serve(&["--config", &path, "--time-scale", "86400"], tmp.path());
    for i in 0..200 {
        let body = order_json(&OrderSpec::by_customer(10_000 + i));
        assert_eq!(
            post_paid(&agent(), &listen, &format!("c-{i}"), &body),
            Some(200)
        );
    }
    let (code, _, err) = run(&["compact", "--config", &path], tmp.path());
    assert_ne!(code, 0);
    assert!(
        err.contains("compact needs the database to itself: stop it with `sudo systemctl stop upsell-appliance`"),
        "{err}"
    );
    // A virtual day a second: the first body is purged within a few seconds, and asking
    // for it through the service says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    let gone = loop {
        let (code, _, err) = run(&["quarantine", "show", "1", "--config", &path], tmp.path());
        if code != 0 || Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        gone.contains("event 1: its raw body is no longer stored"),
        "{gone}"
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("jobs: purge removed "), "{log}");
    assert!(
        log.contains("jobs: affinity check of store main: 0 of "),
        "{log}"
    );

    // Stopped: the purged bodies' pages go back to the disk (2.6 MB -> 1.2 MB when written).
    let (code, out, err) = run(&["compact", "--json", "--config", &path], tmp.path());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let before = v["bytes_before"].as_u64().unwrap();
    assert!(v["bytes_after"].as_u64().unwrap() < before, "{v}");
    assert!(v["file"].as_str().unwrap().ends_with("upsell.redb"), "{v}");
    let (code, out, err) = run(&["compact", "--config", &path], tmp.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("upsell.redb: ") && out.contains(" MB given back"),
        "{out}"
    );
}
