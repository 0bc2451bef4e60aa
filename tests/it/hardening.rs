//! The listener under hostile and slow clients, and the process limits it starts with.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::fixtures::*;
use crate::support::*;

/// Opens `n` connections that each send half a request and then stall: every other one
/// stops inside the headers (held by tiny_http's connection thread), the rest inside a
/// 6 KB body (held by whichever of our HTTP workers took the request).
fn stall(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let head = "POST /webhooks/main HTTP/1.1\r\nHost: upsell.example.com\r\nContent-Type: application/json\r\nContent-Length: 6000\r\n";
    let in_body = format!(
        "{head}X-Shopify-Topic: orders/paid\r\n\r\n{{\"id\":{}",
        " ".repeat(3000)
    );
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("stalled connection {i}: {e}"));
            let half = if i % 2 == 0 { head } else { in_body.as_str() };
            s.write_all(half.as_bytes()).unwrap();
            s
        })
        .collect()
}

/// Connections that send half a request and stall each hold one of tiny_http's connection
/// threads until the socket read timeout closes them. 1,000 of them, then 1,000 more while
/// the first ones time out, must not keep a platform's signed webhooks on fresh
/// connections from being answered within a second. (The read timeout is 2 s here instead
/// of 10 s so that the timing-out happens during the test.)
#[test]
fn a_thousand_stalled_connections_do_not_delay_signed_webhooks() {
    upsell_appliance::app::raise_open_file_limit(); // 2,000 sockets on each side
    let tmp = tempfile::tempdir().unwrap();
    let io_timeout = Duration::from_secs(2);
    let server = TestServer::start_with(
        tmp.path(),
        upsell_appliance::app::Options {
            io_timeout,
            ..Default::default()
        },
    );
    let addr = server.running().public_addr;
    let opened = Instant::now();
    let first = stall(addr, 1000);
    eprintln!("1000 half-sent connections open in {:?}", opened.elapsed());
    let second = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        stall(addr, 1000)
    });

    // A platform posting on fresh connections while they hang there.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .max_idle_connections(0)
        .build()
        .into();
    let mut worst = Duration::ZERO;
    let mut answered = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(4500) {
        answered += 1;
        let body = order_json(&OrderSpec::by_customer(answered));
        let sig = upsell_appliance::ingest::shopify::sign(&body, SECRET);
        let t = Instant::now();
        let resp = agent
            .post(&server.url(&format!("/webhooks/{STORE}")))
            .header("X-Shopify-Topic", "orders/paid")
            .header("X-Shopify-Hmac-Sha256", &sig)
            .header("X-Shopify-Event-Id", &format!("slow-{answered}"))
            .send(&body[..])
            .unwrap_or_else(|e| panic!("webhook {answered} failed after {:?}: {e}", t.elapsed()));
        assert_eq!(resp.status().as_u16(), 200);
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{answered} webhooks answered beside 2000 stalled connections, slowest {worst:?}");
    let proc_status = std::fs::read_to_string("/proc/self/status").unwrap();
    for l in proc_status.lines() {
        if l.starts_with("Threads") || l.starts_with("VmRSS") {
            eprintln!("  {l}");
        }
    }
    assert!(answered >= 20, "only {answered} webhooks answered");
    assert!(worst < Duration::from_secs(1), "a webhook took {worst:?}");

    // The read timeout is what bounds the threads: the server closes every stalled
    // connection by itself, a stall in the headers after one timeout, one in the body
    // after three (the body read, answered 408; tiny_http's skip of the rest; its wait
    // for a next request).
    let closed_by = opened + io_timeout * 3 + Duration::from_secs(3);
    for (i, mut s) in first.into_iter().enumerate() {
        let left = closed_by.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .unwrap();
        let mut answer = Vec::new();
        match std::io::Read::read_to_end(&mut s, &mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "stalled connection {i} still open after {:?}: {e}",
                opened.elapsed()
            ),
        }
        // tiny_http closes a stall in the headers without a word (it answers 408 only to
        // a TimedOut error, and Linux reports the socket timeout as WouldBlock).
        let answer = String::from_utf8_lossy(&answer);
        if i % 2 == 1 {
            assert!(
                answer.starts_with("HTTP/1.1 408"),
                "connection {i}: {answer}"
            );
        }
    }
    drop(second.join().unwrap());
    server.wait_processed();
    assert_eq!(server.store_status()["orders"], answered);
}

/// A client that trickles its body one byte a second (never idle long enough for the
/// socket timeout; the body is over 1 KB, as tiny_http reads smaller ones itself before
/// handing the request over) keeps an HTTP worker busy; SIGTERM still ends the service with exit
/// status 0 within 15 s, leaving that request unanswered.
#[test]
fn sigterm_with_a_trickling_client_still_stops_within_15_s() {
    let (tmp, _data, config) = crate::crash::temp_config();
    let (mut child, addr) = crate::crash::start(&config, tmp.path());
    let mut trickle = TcpStream::connect(&addr).unwrap();
    trickle
        .write_all(b"POST /webhooks/main HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        .unwrap();
    let feeder = std::thread::spawn(move || {
        for _ in 0..30 {
            std::thread::sleep(Duration::from_secs(1));
            if trickle.write_all(b" ").is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    crate::crash::sigterm(&child);
    let status = child.wait().unwrap();
    let took = asked.elapsed();
    eprintln!("stopped in {took:?} with a trickling client");
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    feeder.join().unwrap();
}

/// systemd starts services with a soft open-file limit of 1,024; serve raises it to the
/// hard limit so that connections, not the limit, are what run out last.
#[test]
fn serve_raises_the_open_file_soft_limit() {
    let (tmp, _data, config) = crate::crash::temp_config();
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -Sn 256 && exec \"$0\" serve --config \"$1\"",
        env!("CARGO_BIN_EXE_upsell-appliance"),
        &config,
    ])
    .current_dir(tmp.path());
    let (mut child, _) = crate::crash::start_cmd(cmd);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    crate::crash::sigterm(&child);
    assert!(child.wait().unwrap().success());
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    eprintln!("{line}");
    assert_eq!(soft, hard, "soft limit not raised: {line}");
    assert_ne!(soft, "256");
}

/// A client that hangs up before sending the whole body it announced sent no complete
/// delivery: answered 400, stored nothing, and not counted as a signature refusal (the
/// status page would blame the store's secret).
#[test]
fn a_body_cut_short_is_400_and_not_a_signature_refusal() {
    let server = TestServer::start();
    let body = order_json(&OrderSpec::three_lines(1));
    let sig = upsell_appliance::ingest::shopify::sign(&body, SECRET);
    let mut s = TcpStream::connect(server.running().public_addr).unwrap();
    let head = format!(
        "POST /webhooks/{STORE} HTTP/1.1\r\nHost: x\r\nX-Shopify-Topic: orders/paid\r\nX-Shopify-Hmac-Sha256: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("ended before"), "{answer}");
    assert_eq!(server.get("/healthz").0, 200); // a commit, which would carry a refusal
    let st = server.store_status();
    assert_eq!(st["webhooks"]["rejected"], 0, "{st}");
    assert_eq!(st["webhooks"]["accepted"], 0, "{st}");
}
