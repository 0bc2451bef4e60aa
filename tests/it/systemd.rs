//! `serve` as the packaged unit runs it under systemd: it says when it is ready and when it
//! stops (`Type=notify`, through `NOTIFY_SOCKET`, a path or an abstract name), and it logs
//! to the journal as lines with a priority prefix and no timestamp, at the level that
//! `RUST_LOG` or the config's `log` sets.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::Stdio;
use std::time::Duration;

use crate::cli::bin;
use crate::crash::{sigterm, start_with_stderr, temp_config};

/// Starts serve with `env` added, stops it with SIGTERM; returns its log (stderr).
fn serve_once(env: &[(&str, &str)], between: impl FnOnce()) -> String {
    let (tmp, _data, config) = temp_config();
    let mut cmd = bin();
    cmd.args(["serve", "--config", &config])
        .current_dir(tmp.path())
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied());
    let (mut child, _addr) = start_with_stderr(cmd, Stdio::piped());
    between();
    sigterm(&child);
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(child.wait().unwrap().success(), "{log}");
    log
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn serve_tells_systemd_it_is_ready_and_logs_for_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = serve_once(
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("JOURNAL_STREAM", "8:4242"),
        ],
        // Ready is told once it listens: start_with_stderr returned at the "ready" line.
        || {
            let ready = receive(&socket);
            assert!(
                ready.starts_with("READY=1\nSTATUS=serving 3 store(s) on 127.0.0.1:"),
                "{ready}"
            );
        },
    );
    assert_eq!(receive(&socket), "STOPPING=1");
    assert!(
        log.contains("<6>stopping: answering what has arrived"),
        "{log}"
    );
    assert!(log.contains("<6>stopped cleanly"), "{log}");
    for line in log.lines() {
        let prio = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .map(|(p, _)| p);
        assert!(
            matches!(prio, Some("3" | "4" | "6" | "7")),
            "a journal line without its priority: {line:?}"
        );
    }

    // An abstract socket name, and RUST_LOG=warn over the config's "info": no info lines.
    let name = format!("upsell-test-{}", std::process::id());
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = serve_once(
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("JOURNAL_STREAM", "8:4242"),
            ("RUST_LOG", "warn"),
        ],
        || assert!(receive(&socket).starts_with("READY=1\n")),
    );
    assert_eq!(receive(&socket), "STOPPING=1");
    assert!(!log.contains("<6>"), "{log}");
}

#[test]
fn outside_systemd_log_lines_carry_time_and_level() {
    let log = serve_once(&[("RUST_LOG", "upsell_appliance=loud")], || {});
    // A RUST_LOG that does not parse is said, and the config's level is used.
    assert!(
        log.contains(" WARN  RUST_LOG=\"upsell_appliance=loud\" ignored"),
        "{log}"
    );
    let stopped = log
        .lines()
        .find(|l| l.ends_with("stopped cleanly"))
        .unwrap_or_else(|| panic!("{log}"));
    let (time, rest) = stopped.split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "{stopped}"
    );
    assert_eq!(rest, "INFO  stopped cleanly");
}

#[test]
fn a_fatal_error_reaches_the_journal_as_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.toml");
    let out = bin()
        .args(["serve", "--config", missing.to_str().unwrap()])
        .env("JOURNAL_STREAM", "8:4242")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("<3>error: config "), "{err}");
    assert!(err.lines().all(|l| l.starts_with("<3>")), "{err}");
}
