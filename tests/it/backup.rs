//! Backup and restore as an operator runs them: `backup` while the service takes webhooks (a
//! consistent snapshot streamed through the admin API), `restore` and `compact` refused
//! while it runs, and each backup restored into a database that holds every delivery
//! acknowledged before the backup began, all of a delivery's rows or none.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use upsell_appliance::storage::{Options, Storage};

use crate::cli::{free_port, run};
use crate::crash::{assert_all_stored, sigterm, start};
use crate::fixtures::*;
use crate::support::*;

fn write_config(dir: &Path, name: &str, data: &Path, admin_port: u16) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        config_text(data, "127.0.0.1:0", &format!("127.0.0.1:{admin_port}")),
    )
    .unwrap();
    path.display().to_string()
}

/// Posts orders until stopped; the event ids of those answered 200.
fn post_orders(addr: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<HashSet<String>>>) {
    let agent = agent();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let event = format!("bk-{n}");
        let body = order_json(&OrderSpec::by_customer(n));
        if post_paid(&agent, &addr, &event, &body) == Some(200) {
            acked.lock().unwrap().insert(event);
        }
    }
}

/// Entries per table, by name.
fn counts(data: &Path) -> std::collections::HashMap<String, u64> {
    let s = Storage::open(data, &Options::default()).unwrap();
    s.digest()
        .unwrap()
        .into_iter()
        .map(|(name, n, _)| (name, n))
        .collect()
}

#[test]
fn backups_under_load_restore_consistent_databases() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let config = write_config(tmp.path(), "config.toml", &data, port);
    let (child, addr) = start(&config, tmp.path());

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (addr, stop, acked) = (addr.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || post_orders(addr, stop, acked))
        })
        .collect();

    let mut backups = Vec::new();
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let before: HashSet<String> = acked.lock().unwrap().clone();
        let file = tmp.path().join(format!("b{i}.backup"));
        let (code, out, err) = run(
            &[
                "backup",
                file.to_str().unwrap(),
                "--json",
                "--config",
                &config,
            ],
            tmp.path(),
        );
        assert_eq!(code, 0, "{err}");
        // Asking the service leaves the operator's terminal clean (no client log records).
        assert_eq!(err, "", "a command through the admin API wrote to stderr");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(
            v["source"].as_str().unwrap().contains("running service"),
            "{v}"
        );
        assert_eq!(
            v["bytes"].as_u64().unwrap(),
            std::fs::metadata(&file).unwrap().len()
        );
        backups.push((file, before));
    }
    // Nothing but the backups was left beside them.
    let stray: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".upsell-backup-"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    // While the service runs, restore and compact refuse and say how to stop it.
    let before = std::fs::metadata(data.join(Storage::FILE_NAME)).unwrap();
    for args in [
        vec!["restore", backups[0].0.to_str().unwrap()],
        vec!["compact"],
    ] {
        let (code, _, err) = run(&[&args[..], &["--config", &config]].concat(), tmp.path());
        assert_ne!(code, 0, "{args:?}");
        assert!(
            err.contains("needs the database to itself")
                && err.contains("sudo systemctl stop upsell-appliance"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::metadata(data.join(Storage::FILE_NAME))
            .unwrap()
            .ino(),
        before.ino()
    );

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    sigterm(&child);
    assert!(child.wait_with_output().unwrap().status.success());
    let all = acked.lock().unwrap().clone();
    assert!(all.len() > 20, "only {} orders acknowledged", all.len());

    for (i, (file, acked_before)) in backups.iter().enumerate() {
        let target = tmp.path().join(format!("restored-{i}"));
        let cfg = write_config(tmp.path(), &format!("r{i}.toml"), &target, free_port());
        let (code, out, err) = run(
            &[
                "restore",
                file.to_str().unwrap(),
                "--json",
                "--config",
                &cfg,
            ],
            tmp.path(),
        );
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["previous"].is_null(), "{v}");
        // A snapshot: each delivery's head, body and dedupe key together, or none of them.
        let c = counts(&target);
        assert_eq!(c["events"], c["bodies"], "backup {i}");
        assert_eq!(c["events"], c["dedupe"], "backup {i}");
        // Every delivery acknowledged before the backup began is in it.
        assert_all_stored(&target, acked_before, i);
        let storage = Storage::open(&target, &Options::default()).unwrap();
        let status = storage.status(&[STORE]).unwrap();
        assert_eq!(
            status[0].webhooks.accepted as u64, c["events"],
            "backup {i}"
        );
    }

    // Stopped: a backup reads the file itself, and restoring it over the data directory
    // keeps the database it replaces.
    let full = counts(&data);
    let file = tmp.path().join("stopped.backup");
    let (code, out, err) = run(
        &["backup", file.to_str().unwrap(), "--config", &config],
        tmp.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from the database in"), "{out}");
    let (code, out, err) = run(
        &["restore", file.to_str().unwrap(), "--config", &config],
        tmp.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("store main: ") && out.contains("is kept as"),
        "{out}"
    );
    assert_eq!(counts(&data), full);
    assert!(
        counts(&data)["events"] as usize >= all.len(),
        "every acknowledged order is in the restored database"
    );

    // A damaged backup is refused and changes nothing.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) = run(
        &["restore", file.to_str().unwrap(), "--config", &config],
        tmp.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("it was cut short"), "{err}");
    assert_eq!(counts(&data), full);
}
