//! The one integration-test binary: the real service over HTTP, the CLI as a subprocess,
#![recursion_limit = "512"]
//! and the crash test.

mod affinity;
mod attribution;
mod backup;
mod bigcommerce;
mod browser;
mod cadence;
mod cli;
mod crash;
mod engagement;
mod fixtures;
mod hardening;
mod intake;
mod jobs;
mod live;
mod metrics;
mod offers;
mod outbound;
mod plans;
mod platform;
mod privacy;
mod quarantine;
mod replay;
mod report;
mod scheduler;
mod status_page;
mod support;
mod systemd;
mod webhooks;
mod woocommerce;
