//! The `upsell-appliance` binary: parse the command line, run, print errors with their
//! causes, map to an exit code. Everything else lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    match upsell_appliance::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
