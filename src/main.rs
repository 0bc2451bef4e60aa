//! The `upsell-appliance` binary: parse the command line, run, print errors with their
//! causes, map to an exit code. Everything else lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    match upsell_appliance::cli::run() {
        Ok(code) => code,
        Err(e) => {
            upsell_appliance::logging::print_fatal(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

/// `upsell-appliance explain 9001 | head` closes our standard output early: end quietly,
/// with the status a program killed by SIGPIPE has, instead of a panic and its backtrace.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("Broken pipe") && std::thread::current().name() == Some("main") {
            std::process::exit(141);
        }
        default(info)
    }));
}
