//! The service's diagnostics: the `log` macros everywhere, and this one logger, which
//! writes a line per record to stderr.
//!
//! Under systemd (stderr is the journal: `JOURNAL_STREAM` names it) a line starts with its
//! syslog priority, `<3>` for an error, which journald keeps as the entry's level
//! (`journalctl -p warning`) and strips from the text, and has no timestamp (the journal
//! stamps every entry). Elsewhere a line starts with the UTC time and the level.
//!
//! Which records are written: `log` in the config ("info" by default), or `RUST_LOG`
//! when set, which wins: a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or
//! comma-separated `module=level` directives, e.g. `warn,upsell_appliance::http=debug`.
//! Command-line output meant for the operator (tables, JSON, progress) is not logging and
//! goes to stdout/stderr directly.

use std::io::Write;

use log::{Level, Log, Metadata, Record};

/// The filter when neither the config nor `RUST_LOG` names one.
pub const DEFAULT: &str = "info";

/// Checks a filter such as `info` or `warn,upsell_appliance::http=debug`. A bare word must
/// be a level: the filter's own syntax would take `inf` for a module name and quietly log
/// nothing of ours.
pub fn check(filter: &str) -> Result<(), String> {
    for part in filter.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !part.contains('=') && part.parse::<log::LevelFilter>().is_err() {
            return Err(format!(
                "{part:?} is not a level (error, warn, info, debug, trace or off); a module's own level is written module=level"
            ));
        }
    }
    env_filter::Builder::new()
        .try_parse(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Prints the error a command ends with to stderr (`error: ...`); under systemd with the
/// error priority, so that `journalctl -p err` shows why the service did not start.
pub fn print_fatal(message: &str) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let line = if journal {
        format_line(
            true,
            Level::Error,
            &format_args!("error: {message}"),
            String::new,
        )
    } else {
        format!("error: {message}\n")
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Installs the logger (once per process; later calls change nothing). `configured` is
/// the config's `log`; `RUST_LOG` overrides it, and a `RUST_LOG` that does not parse is
/// reported and ignored rather than silencing the service.
pub fn init(configured: &str) {
    let env = std::env::var("RUST_LOG").ok();
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let (logger, bad_env) = build(configured, env.as_deref(), journal);
    let max = logger.filter.filter();
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
        if let Some(why) = bad_env {
            log::warn!("{why}");
        }
    }
}

/// The logger for the filter in force (`RUST_LOG` when set and valid, else the config's
/// `log`), and why `RUST_LOG` was ignored.
fn build(configured: &str, env: Option<&str>, journal: bool) -> (Logger, Option<String>) {
    let (spec, bad_env) = match env.filter(|s| !s.trim().is_empty()) {
        Some(f) => match check(f) {
            Ok(()) => (f, None),
            Err(e) => (
                configured,
                Some(format!(
                    "RUST_LOG={f:?} ignored ({e}); using log = {configured:?}"
                )),
            ),
        },
        None => (configured, None),
    };
    let mut builder = env_filter::Builder::new();
    // tiny_http logs every failed accept at error level, also those our listener causes on
    // purpose to stop accepting; our listener reports the failures that matter itself. A
    // directive for tiny_http in the config or RUST_LOG wins over this one.
    builder.filter_module("tiny_http", log::LevelFilter::Off);
    builder.parse(spec);
    let client_trace = spec
        .split(',')
        .filter_map(|d| d.split_once('=').map(|(m, _)| m.trim()))
        .any(is_client);
    let logger = Logger {
        filter: builder.build(),
        client_trace,
        journal,
    };
    (logger, bad_env)
}

/// The HTTP client's crates: at trace level they dump requests as they are, provider API
/// keys included, so a plain `trace` leaves their trace records out.
const CLIENT: [&str; 3] = ["ureq", "ureq_proto", "rustls"];

fn is_client(target: &str) -> bool {
    CLIENT
        .iter()
        .any(|c| target == *c || target.starts_with(&format!("{c}::")))
}

struct Logger {
    filter: env_filter::Filter,
    /// The client's trace records are written (the filter names one of its crates).
    client_trace: bool,
    journal: bool,
}

impl Logger {
    /// What the filter alone would let through, less the client's trace dumps.
    fn client_allows(&self, metadata: &Metadata<'_>) -> bool {
        self.client_trace || metadata.level() < Level::Trace || !is_client(metadata.target())
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata) && self.client_allows(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.matches(record) || !self.client_allows(record.metadata()) {
            return;
        }
        // One write per line, so lines of different threads never interleave.
        let line = format_line(self.journal, record.level(), record.args(), now_utc);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

fn now_utc() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The syslog priority journald reads from a line's `<N>` prefix (sd-daemon(3)).
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

fn format_line(
    journal: bool,
    level: Level,
    message: &std::fmt::Arguments<'_>,
    now: impl Fn() -> String,
) -> String {
    if journal {
        // journald reads every line as an entry of its own: each carries the priority.
        let p = priority(level);
        message
            .to_string()
            .lines()
            .map(|l| format!("<{p}>{l}\n"))
            .collect()
    } else {
        format!("{} {level:<5} {message}\n", now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_the_priority_and_no_time() {
        let line = format_line(
            true,
            Level::Warn,
            &format_args!("scheduler: {}", 1),
            || unreachable!(),
        );
        assert_eq!(line, "<4>scheduler: 1\n");
        let line = format_line(true, Level::Error, &format_args!("x\ny"), || unreachable!());
        assert_eq!(line, "<3>x\n<3>y\n");
    }

    #[test]
    fn terminal_lines_carry_time_and_level() {
        let line = format_line(false, Level::Info, &format_args!("ready"), || {
            "2026-11-22T10:00:00.000Z".into()
        });
        assert_eq!(line, "2026-11-22T10:00:00.000Z INFO  ready\n");
    }

    #[test]
    fn rust_log_wins_and_tiny_http_is_quiet_unless_asked() {
        let on = |configured: &str, env: Option<&str>, target: &str, level: Level| {
            let (l, _) = build(configured, env, false);
            l.enabled(&log::Metadata::builder().target(target).level(level).build())
        };
        assert!(build("info", None, false).1.is_none());
        assert!(on("info", None, "upsell_appliance::app", Level::Info));
        assert!(!on("info", None, "upsell_appliance::app", Level::Debug));
        assert!(!on("info", None, "tiny_http", Level::Error));
        // The client's records follow the level asked for, but its trace dumps only when
        // named.
        assert!(!on(
            "info",
            None,
            "ureq::unversioned::transport",
            Level::Debug
        ));
        assert!(on("info", None, "ureq", Level::Info));
        assert!(on("trace", None, "upsell_appliance::app", Level::Trace));
        assert!(on("trace", None, "ureq_proto::client", Level::Debug));
        assert!(
            !on("trace", None, "ureq_proto::util", Level::Trace),
            "dumps carry API keys"
        );
        let named = Some("info,ureq_proto=trace");
        assert!(on("info", named, "ureq_proto::util", Level::Trace));
        let env = Some("warn,tiny_http=error");
        assert!(!on("info", env, "upsell_appliance::app", Level::Info));
        assert!(on("info", env, "tiny_http", Level::Error));
        let bad = Some("upsell_appliance=loud");
        assert!(build("debug", bad, false)
            .1
            .unwrap()
            .contains("using log = \"debug\""));
        assert!(on("debug", bad, "upsell_appliance::app", Level::Debug));
    }

    #[test]
    fn filters_are_checked() {
        assert!(check("info").is_ok());
        assert!(check("warn,upsell_appliance::http=debug").is_ok());
        assert!(check("").is_ok());
        let e = check("inf").unwrap_err();
        assert!(e.contains("\"inf\" is not a level"), "{e}");
        let e = check("info,upsell_appliance=loud").unwrap_err();
        assert!(e.contains("loud"), "{e}");
    }
}
