//! The command line: clap definitions and one function per subcommand. Every subcommand
//! takes `--config PATH` (the file `serve` uses); those about one store's data take
//! `--store ID`; each works whether or not the service is running.

use crate::engine::percent_encode;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::config::{self, Config, Origin};
use crate::storage::{self, Storage};

#[derive(Parser)]
#[command(
    name = "upsell-appliance",
    version,
    about = "Post-purchase upsell and follow-up for small online stores, in one process"
)]
pub struct Cli {
    /// Configuration file [default: /etc/upsell-appliance/config.toml if it exists, else the built-in demo]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: webhooks on `listen`, admin API on `admin_listen`
    Serve {
        /// Run virtual time N times faster than real time (86400: a day per second), to
        /// watch a cadence in minutes; it resumes where it stood, even after a crash
        #[arg(long, value_name = "N")]
        time_scale: Option<f64>,
    },
    /// Write a commented configuration with a fresh admin token (never overwrites)
    Init,
    /// Validate the configuration and say what it would do
    CheckConfig {
        #[arg(long)]
        json: bool,
    },
    /// Signed deliveries this build could not parse: list, show, replay after an upgrade
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Import a catalog, order history or manual pairings from a CSV file
    Import {
        #[command(subcommand)]
        what: ImportWhat,
    },
    /// Product affinity: rebuild it, show one product, export every rule
    Affinity {
        #[command(subcommand)]
        action: AffinityAction,
    },
    /// An order's offer plan and every reason behind it
    Explain {
        /// The platform order id, or the order name such as #1042
        order: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One customer: suppress or unsuppress them, or show what is known of them
    Customer {
        #[command(subcommand)]
        action: CustomerAction,
    },
    /// The thank-you page offer: an order's answer (accepted cancels touch-1), or the
    /// WooCommerce snippet that shows it
    Offer {
        #[command(subcommand)]
        action: OfferAction,
    },
    /// Facts about an order told by hand: its delivery
    Order {
        #[command(subcommand)]
        action: OrderAction,
    },
    /// What the appliance would have done with the store's history (sends and writes nothing)
    Replay {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        /// Plan orders placed from this date (2026-03-01, UTC) or time (RFC 3339)
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// Plan orders placed up to the end of this date, or before this time
        #[arg(long, value_name = "DATE")]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What the automation earned: treated against the holdout group, per recipe, with 95%
    /// confidence intervals
    Report {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        /// Orders placed in this span before --until (30d, 12w, 48h) or from this date
        #[arg(long, value_name = "SPAN_OR_DATE", default_value = "30d")]
        since: String,
        /// Up to the end of this date (or this RFC 3339 time); default: now
        #[arg(long, value_name = "DATE")]
        until: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Render a real offer as one touch and send it to you through the store's channel
    SendTest {
        /// touch1, sms, touch2, review, touch3, winback or anticipation
        #[arg(long, value_name = "KIND")]
        touch: String,
        /// Your email address (email touches) or phone number in E.164 (sms)
        #[arg(long, value_name = "EMAIL_OR_PHONE")]
        to: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop all sending of a store at once, without a restart (durable: a restart keeps it)
    Pause {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start sending again; touches that fell due meanwhile follow the misfire policy
    Resume {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Touches a provider refused for good: list, show, retry or drop them
    Deadletters {
        #[command(subcommand)]
        action: DeadAction,
    },
    /// One touch: the customer opened it, or send it again
    Touch {
        #[command(subcommand)]
        action: TouchAction,
    },
    /// Give the database file's free space back to the disk; needs the service stopped
    Compact {
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent snapshot of the whole database to a file, while the service runs
    /// (it streams the snapshot) or not
    Backup {
        /// The file to write (replaced only once the new backup is complete and checked)
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Replace the database with a backup; needs the service stopped (the replaced file is kept)
    Restore {
        /// A file `backup` wrote
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Webhook, order and customer figures per store
    Status {
        /// Only this store
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check the store's [stores.api] credentials and register (or repair) the webhook
    /// subscriptions the appliance needs at public_url
    Connect {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Sync the store with its platform's API now: orders whose webhooks were lost, and
    /// the webhook subscriptions' health (the `[jobs] sync` job does it hourly)
    Sync {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ImportWhat {
    /// A Shopify product export, or the native catalog CSV (README "Import"); upserts
    Catalog {
        file: PathBuf,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A Shopify orders export, or the native orders CSV; importing again changes nothing
    Orders {
        file: PathBuf,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        /// Import the good rows and list the bad ones, instead of importing nothing
        #[arg(long)]
        skip_bad_rows: bool,
        #[arg(long)]
        json: bool,
    },
    /// Manual pairings (antecedent, consequent, priority, mode); replaces the store's table
    Pairings {
        file: PathBuf,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A suppression list (columns email and/or phone, optional reason); adds to the list
    Suppressions {
        file: PathBuf,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OfferAction {
    /// The customer took the page offer
    Accept {
        /// The platform order id, or the order name such as #1042
        order: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The customer declined the page offer
    Decline {
        order: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print the PHP snippet that puts the offer on WooCommerce's thank-you page, with
    /// this store's URL and token key filled in
    Widget {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeadAction {
    /// The store's dead letters, oldest first, with the provider's reason
    List {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter
    Show {
        touch: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Send it again now (after fixing what refused it); enables the channel that refused it
    Retry {
        touch: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Give it up (recorded as skipped by the operator)
    Drop {
        touch: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TouchAction {
    /// The customer opened this email (for stores with `opens_reported = true`)
    Opened {
        /// The touch id (`explain ORDER` lists them; the outbox line has it)
        touch: String,
        /// When (RFC 3339), default now
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Send this touch again: a copy due now, decided like any other (caps may defer it)
    Resend {
        touch: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OrderAction {
    /// The order was delivered (for stores without delivery events); the review waits for it
    Delivered {
        order: String,
        /// When (RFC 3339), default now
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CustomerAction {
    /// Never message this email address or phone number again
    Suppress {
        /// An email address or a phone number
        contact: String,
        /// unsubscribed, complained, or any note (a manual suppression)
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Take an email address or phone number off the suppression list
    Unsuppress {
        contact: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A support ticket opened: the customer's touches wait until it closes
    TicketOpen {
        contact: String,
        #[arg(long, value_name = "ID")]
        ticket: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A support ticket closed, with its satisfaction rating (1-2 routes to a person)
    TicketClose {
        contact: String,
        #[arg(long, value_name = "ID")]
        ticket: String,
        #[arg(long, value_name = "1-5")]
        csat: Option<u8>,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A person has followed up on the customer's poorly rated tickets: marketing may resume
    Clear {
        contact: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Everything held about a customer, as JSON (a data request)
    Export {
        /// An email address, a phone number (+15551234567) or the platform's customer id
        who: String,
        /// Write it to this file (readable by you only) instead of standard output
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
    },
    /// Erase a customer's personal data (anonymous line items stay, so affinity counts do
    /// not change); without --yes, says what would go
    Erase {
        /// An email address, a phone number (+15551234567) or the platform's customer id
        who: String,
        /// Erase it: this cannot be undone
        #[arg(long)]
        yes: bool,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The suppression list entry, order history, consent and plans of a customer
    Show {
        contact: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AffinityAction {
    /// Recompute the store's affinity from its stored orders and the catalog
    Rebuild {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One product's rules (same-order and next-order) and its ranked candidates
    Show {
        /// A SKU, a product handle, or a product key from `affinity export`
        product: String,
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every rule of the store, to standard output (columns: README "Affinity")
    Export {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
        /// none: exact counts; config: weighted by the configured half-life
        #[arg(long, default_value = "none", value_parser = ["none", "config"])]
        decay: String,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// List quarantined deliveries, oldest first
    List {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one stored delivery: headers, the parse error, the raw body
    Show {
        /// The delivery's sequence number (from `list`)
        seq: u64,
        #[arg(long)]
        json: bool,
    },
    /// Run this build's parsers on the quarantined deliveries again; the ones that parse
    /// now are processed like new deliveries
    Replay {
        #[arg(long, value_name = "ID")]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { time_scale } => serve(load(&cli.config)?, time_scale),
        Command::Init => init(cli.config),
        Command::CheckConfig { json } => check_config(&load(&cli.config)?, json),
        Command::Status { store, json } => status(&load(&cli.config)?, store.as_deref(), json),
        Command::Connect { store, json } => connect(&load(&cli.config)?, store, json),
        Command::Sync { store, json } => sync(&load(&cli.config)?, store, json),
        Command::Quarantine { action } => quarantine(&load(&cli.config)?, action),
        Command::Import { what } => import(&load(&cli.config)?, what),
        Command::Affinity { action } => affinity(&load(&cli.config)?, action),
        Command::Explain { order, store, json } => {
            explain(&load(&cli.config)?, &order, &store, json)
        }
        Command::Customer { action } => customer(&load(&cli.config)?, action),
        Command::Offer { action } => offer(&load(&cli.config)?, action),
        Command::Order { action } => order(&load(&cli.config)?, action),
        Command::Touch { action } => touch(&load(&cli.config)?, action),
        Command::Deadletters { action } => deadletters(&load(&cli.config)?, action),
        Command::Replay {
            store,
            from,
            to,
            json,
        } => replay(&load(&cli.config)?, store, from, to, json),
        Command::Report {
            store,
            since,
            until,
            json,
        } => report(&load(&cli.config)?, store, since, until, json),
        Command::SendTest {
            touch,
            to,
            store,
            json,
        } => send_test(&load(&cli.config)?, &touch, &to, store, json),
        Command::Compact { json } => compact(&load(&cli.config)?, json),
        Command::Backup { path, json } => backup(&load(&cli.config)?, &path, json),
        Command::Restore { path, json } => restore(&load(&cli.config)?, &path, json),
        Command::Pause { store, json } => pause(&load(&cli.config)?, true, store, json),
        Command::Resume { store, json } => pause(&load(&cli.config)?, false, store, json),
    }
}

/// Loads the config and, from its `log`, sets up logging for the rest of the command.
fn load(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    let config = config::load(path.as_deref())?;
    crate::logging::init(&config.log);
    Ok(config)
}

fn serve(config: Config, time_scale: Option<f64>) -> anyhow::Result<ExitCode> {
    // Handlers first: a stop that arrives while starting (or as soon as we say ready) is
    // remembered and becomes a clean stop, not the default kill.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    let demo = config.origin == Origin::Demo;
    if demo {
        load_demo_data(&config)?;
    }
    let summary = config.clone();
    let mut options = crate::app::Options::default();
    if let Some(scale) = time_scale {
        if !(scale.is_finite() && scale >= 1.0) {
            bail!(
                "--time-scale {scale}: give a number of at least 1 (86400 runs a day per second)"
            );
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let path = config.data_dir.join("clock");
        let clock = crate::clock::ScaledClock::open(&path, scale)
            .with_context(|| format!("--time-scale: the clock position in {}", path.display()))?;
        println!(
            "virtual time {} running {scale}x real time (position kept in {})",
            crate::clock::Clock::now(&clock).to_rfc3339(),
            path.display()
        );
        options.clock = std::sync::Arc::new(clock);
    }
    let running = crate::app::start(config, options)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "upsell-appliance {} serving ({})",
        env!("CARGO_PKG_VERSION"),
        summary.origin
    )?;
    writeln!(out, "listening on {} (webhooks)", running.public_addr)?;
    writeln!(
        out,
        "admin on {} (status: http://{}/api/status)",
        running.admin_addr, running.admin_addr
    )?;
    let snap = running.storage.snapshot()?;
    if summary.stores.is_empty() {
        writeln!(out, "{} (webhooks are answered 404)", config::NO_STORES)?;
    }
    for s in &summary.stores {
        writeln!(
            out,
            "store {}: POST {}/webhooks/{}",
            s.id, summary.public_url, s.id
        )?;
        if s.mode == config::Mode::DryRun {
            writeln!(
                out,
                "store {}: dry_run — touches go to the outbox only, nothing reaches customers; {}",
                s.id,
                match &summary.origin {
                    Origin::File(p) => format!("set mode = \"live\" in {} to send", p.display()),
                    Origin::Demo => "the built-in demo always is (`upsell-appliance init` writes a config of your own)".into(),
                }
            )?;
        }
        if let Some(p) = snap.paused(&s.id)? {
            writeln!(
                out,
                "store {}: PAUSED since {} — nothing is sent until `upsell-appliance resume --store {}`",
                s.id,
                p.since.to_rfc3339(),
                s.id
            )?;
        }
    }
    drop(snap);
    if demo {
        let s = &summary.stores[0];
        writeln!(out, "demo admin token: {}", summary.admin_token)?;
        writeln!(
            out,
            "demo store {:?} webhook secret: {}",
            s.id, s.webhook_secrets[0]
        )?;
        writeln!(out, "post a signed test order: see README \"Try it\"")?;
    }
    writeln!(out, "ready: Ctrl-C or SIGTERM stops it cleanly")?;
    out.flush()?;
    drop(out);
    crate::app::notify_systemd(&format!(
        "READY=1\nSTATUS=serving {} store(s) on {}",
        summary.stores.len(),
        running.public_addr
    ));
    signals.forever().next();
    crate::app::notify_systemd("STOPPING=1");
    log::info!("stopping: answering what has arrived, draining the writer, joining threads");
    spawn_stop_watchdog(signals)?;
    running.shutdown()?;
    log::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// The demo store's catalog and order history, so that the first test order gets a real
/// offer. Loaded once, into an empty demo store, before the service opens the database.
fn load_demo_data(config: &Config) -> anyhow::Result<()> {
    const CATALOG: &str = include_str!("../assets/demo/catalog.csv");
    const ORDERS: &str = include_str!("../assets/demo/orders.csv");
    let store = &config.stores[0].id;
    let storage = open_db(config, true)?;
    if storage.status(&[store])?[0].orders > 0 {
        return Ok(());
    }
    let dir = tempfile::tempdir_in(&config.data_dir)?;
    let (catalog, orders) = (
        dir.path().join("catalog.csv"),
        dir.path().join("orders.csv"),
    );
    std::fs::write(&catalog, CATALOG)?;
    std::fs::write(&orders, ORDERS)?;
    let c = crate::ops::import_catalog(&storage, config, store, &catalog).map_err(ops_err)?;
    let o = crate::ops::import_orders(&storage, config, store, &orders, false, &mut |_| {})
        .map_err(ops_err)?;
    println!(
        "demo: loaded {} products and {} orders of history into store {store} (assets/demo)",
        c["rows"], o["orders"]
    );
    Ok(())
}

/// systemd waits 90 s for a stop and then kills; we promise 15 s. The shutdown bounds
/// each step, and this guards the promise against a step that hangs anyway (a disk that
/// stops answering). Exiting early loses nothing: every acknowledged webhook was durable
/// before its 2xx, and the processor resumes from the log at the next start. A second
/// signal exits at once.
fn spawn_stop_watchdog(mut signals: signal_hook::iterator::Signals) -> anyhow::Result<()> {
    const LIMIT: Duration = Duration::from_secs(14);
    let started = Instant::now();
    std::thread::Builder::new()
        .name("stop-watchdog".into())
        .spawn(move || loop {
            if signals.pending().next().is_some() {
                log::warn!("second stop signal: exiting now (everything acknowledged is on disk)");
                std::process::exit(1);
            }
            if started.elapsed() >= LIMIT {
                log::warn!(
                    "not stopped after {LIMIT:?}: exiting anyway (everything acknowledged is on disk; the rest is retried by its sender or resumed at the next start)"
                );
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(50));
        })?;
    Ok(())
}

fn init(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let path = path.unwrap_or_else(|| PathBuf::from(config::SYSTEM_CONFIG));
    if path.exists() {
        bail!(
            "{} already exists; init never overwrites a config (edit it, or pass another --config)",
            path.display()
        );
    }
    config::write_private(&path, &config::template())
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {} (mode 0600) with a fresh admin_token",
        path.display()
    );
    println!(
        "next: put your Shopify app's client secret in stores[0].webhook_secrets, set public_url,"
    );
    println!(
        "then: upsell-appliance check-config --config {}",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn check_config(config: &Config, as_json: bool) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let j = &config.jobs;
    let next = |c: &config::Cron| c.next_after(now).map(|t| t.to_rfc3339());
    if as_json {
        let stores: Vec<_> = config
            .stores
            .iter()
            .map(|s| {
                json!({"id": s.id, "mode": s.mode.as_str(), "platform": s.platform.as_str(), "domain": s.domain,
                "webhook_url": format!("{}/webhooks/{}", config.public_url, s.id),
                "secrets": s.webhook_secrets.len(), "currency": s.currency.as_str(),
                "timezone": s.timezone.name(), "thank_you_page": thank_you_page(s),
                "platform_api": platform_api(s)})
            })
            .collect();
        println!(
            "{}",
            json!({"ok": true, "origin": config.origin.to_string(),
            "listen": config.listen, "admin_listen": config.admin_listen,
            "public_url": config.public_url, "data_dir": config.data_dir, "stores": stores,
            "warnings": if config.stores.is_empty() { vec![config::NO_STORES] } else { vec![] },
            "jobs": {"purge": {"schedule": j.purge.as_str(), "next": next(&j.purge)},
                "affinity_check": {"schedule": j.affinity_check.as_str(), "next": next(&j.affinity_check)},
                "sync": {"schedule": j.sync.as_str(), "next": next(&j.sync)},
                "payload_retention_days": j.payload_retention_days}})
        );
    } else {
        println!("config {} is valid", config.origin);
        println!(
            "  listen {}  admin_listen {}  data_dir {}",
            config.listen,
            config.admin_listen,
            config.data_dir.display()
        );
        if config.stores.is_empty() {
            println!("  {}", config::NO_STORES);
        }
        for s in &config.stores {
            println!(
                "  store {} ({}, {}, {}): webhooks at {}/webhooks/{} ({} secret{})",
                s.id,
                s.mode.as_str(),
                s.platform.as_str(),
                s.domain,
                config.public_url,
                s.id,
                s.webhook_secrets.len(),
                if s.webhook_secrets.len() == 1 {
                    ""
                } else {
                    "s"
                }
            );
            println!("    thank-you page offer: {}", thank_you_page(s));
            println!("    platform API: {}", platform_api(s));
        }
        let next = |c: &config::Cron| next(c).unwrap_or_else(|| "never".into());
        println!(
            "  jobs (UTC): purge {:?} (next {}), affinity_check {:?} (next {}), sync {:?} (next {}), raw payloads kept {} days",
            j.purge.as_str(),
            next(&j.purge),
            j.affinity_check.as_str(),
            next(&j.affinity_check),
            j.sync.as_str(),
            next(&j.sync),
            j.payload_retention_days
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How the store's platform API is reached, or that it is not.
fn platform_api(s: &config::StoreConfig) -> String {
    use config::ApiAuth;
    let Some(api) = &s.api else {
        return "none (webhooks only; [stores.api] enables connect, the sync and BigCommerce's order fetches)".into();
    };
    let how = match &api.auth {
        ApiAuth::ShopifyToken(_) => format!("Admin API {}, static access token", api.version),
        ApiAuth::ShopifyClient { client_id, .. } => format!(
            "Admin API {}, client credentials of {client_id} (24 h tokens)",
            api.version
        ),
        ApiAuth::WooCommerce { .. } => "REST API v3, consumer key".into(),
        ApiAuth::BigCommerce(_) => "V2/V3 API, access token".into(),
    };
    format!("{} ({how}); `connect` checks the credentials", api.base_url)
}

/// How the store's thank-you page gets its offer, or what is missing for it.
fn thank_you_page(s: &config::StoreConfig) -> String {
    use crate::engine::Platform;
    match (s.platform, &s.shopify_client_id) {
        (Platform::Shopify, Some(_)) => {
            "the Shopify checkout extension (session tokens of shopify_client_id)".into()
        }
        (Platform::Shopify, None) => {
            "not set up: shopify_client_id is missing, so the checkout extension's requests are refused (README \"The thank-you page offer\")".into()
        }
        (Platform::WooCommerce, _) => {
            "the widget: `upsell-appliance offer widget` prints the PHP snippet".into()
        }
        (Platform::BigCommerce, _) => "the hosted offer page, from the offer emails".into(),
    }
}

/// Gets a JSON document from the running service, or computes it from the database file
/// when no service is running. `local` must give the same shape the admin API does.
fn via_service_or_file(
    config: &Config,
    method: &str,
    api_path: &str,
    local: impl FnOnce(&Storage) -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<(serde_json::Value, String)> {
    service_or_file(
        config,
        || crate::admin_client::call_json(config, method, api_path),
        local,
    )
}

/// Like [`via_service_or_file`] with any way of asking the service.
fn service_or_file(
    config: &Config,
    ask: impl FnOnce() -> anyhow::Result<Option<serde_json::Value>>,
    local: impl FnOnce(&Storage) -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<(serde_json::Value, String)> {
    match ask() {
        Ok(Some(v)) => {
            return Ok((
                v,
                format!("from the running service at {}", config.admin_listen),
            ))
        }
        Ok(None) => {}
        Err(e) if e.to_string().starts_with("admin API at") => {
            eprintln!("warning: {e:#}; reading the database file instead")
        }
        Err(e) => return Err(e),
    }
    let storage = open_file_db(config)?;
    Ok((
        local(&storage)?,
        format!("from the database in {}", config.data_dir.display()),
    ))
}

fn open_file_db(config: &Config) -> anyhow::Result<std::sync::Arc<Storage>> {
    open_db(config, false)
}

/// Opens the database file; `create` for imports, which may come before the first `serve`.
fn open_db(config: &Config, create: bool) -> anyhow::Result<std::sync::Arc<Storage>> {
    if !create && !Storage::exists(&config.data_dir) {
        bail!(
            "no database in {} yet and no service answering on {}: start `upsell-appliance serve` first",
            config.data_dir.display(),
            config.admin_listen
        );
    }
    let storage = Storage::open(&config.data_dir, &storage_options(config))
    .map_err(|e| match e {
        storage::Error::Locked(p) => anyhow!(
            "{} is open by a running service, but its admin API on {} did not answer; is admin_listen in {} the one that service uses?",
            p.display(),
            config.admin_listen,
            config.origin
        ),
        e => e.into(),
    })?;
    Ok(storage)
}

/// redb's file only grows (freed pages are reused, not returned), and it compacts only
/// with the file to itself: this is the one command that needs the service stopped.
fn compact(config: &Config, as_json: bool) -> anyhow::Result<ExitCode> {
    let file = config.data_dir.join(Storage::FILE_NAME);
    if !Storage::exists(&config.data_dir) {
        bail!("no database in {} to compact", config.data_dir.display());
    }
    refuse_while_serving(config, "compact")?;
    let started = Instant::now();
    let (before, after) =
        Storage::compact(&config.data_dir, &storage_options(config)).map_err(|e| match e {
            storage::Error::Locked(p) => in_use(&p, "compact"),
            e => anyhow::Error::from(e).context(format!("compacting {}", file.display())),
        })?;
    if as_json {
        println!(
            "{}",
            json!({"file": file, "bytes_before": before, "bytes_after": after,
                "seconds": started.elapsed().as_secs_f64()})
        );
    } else {
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "compacted {}: {:.1} MB -> {:.1} MB ({:.1} MB given back) in {:.1} s",
            file.display(),
            mb(before),
            mb(after),
            mb(before.saturating_sub(after)),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn storage_options(config: &Config) -> storage::Options {
    storage::Options {
        cache_size_mb: config.cache_size_mb,
        ..Default::default()
    }
}

/// `compact` and `restore` need the database to themselves: refuse, saying how, when the
/// service answers on the config's admin_listen.
fn refuse_while_serving(config: &Config, command: &str) -> anyhow::Result<()> {
    if let Ok(Some(_)) = crate::admin_client::get_json(config, "/api/status") {
        bail!(
            "the service is running (its admin API answers on {}), and {command} needs the database to itself: stop it with `sudo systemctl stop upsell-appliance` (or Ctrl-C where it runs in a terminal), run {command} again, then `sudo systemctl start upsell-appliance`",
            config.admin_listen
        );
    }
    Ok(())
}

/// The same refusal when another process has the file open (a service of another config).
fn in_use(path: &std::path::Path, command: &str) -> anyhow::Error {
    anyhow!(
        "{} is in use by another process (a running service?), and {command} needs it to itself: stop that service (`sudo systemctl stop upsell-appliance`), run {command} again, then start it",
        path.display()
    )
}

/// Writes beside `path` and gives the file its name only once it is complete and reads back
/// whole: an interrupted backup never leaves a file that looks like one.
fn backup(config: &Config, path: &std::path::Path, as_json: bool) -> anyhow::Result<ExitCode> {
    if path.is_dir() {
        bail!(
            "{} is a directory; give the file to write, e.g. {}",
            path.display(),
            path.join("upsell-appliance.backup").display()
        );
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let partial = tempfile::Builder::new()
        .prefix(".upsell-backup-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let started = Instant::now();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, partial.as_file());
    let via_service = match crate::admin_client::download(config, "/api/backup", &mut out) {
        Ok(true) => true,
        Ok(false) => {
            let s = open_file_db(config)?;
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            s.backup(&mut out, now)?;
            false
        }
        Err(e) => return Err(e.context("taking the backup through the running service")),
    };
    let source = if via_service {
        format!("through the running service at {}", config.admin_listen)
    } else {
        format!("from the database in {}", config.data_dir.display())
    };
    out.flush()
        .and_then(|()| partial.as_file().sync_all())
        .with_context(|| format!("writing in {} (is the disk full?)", dir.display()))?;
    drop(out);
    let summary = storage::backup::verify(&mut std::io::BufReader::new(std::fs::File::open(
        partial.path(),
    )?))
    .with_context(|| {
        if via_service {
            "the backup the service sent does not read back, so nothing was kept: the service stopped sending it part way; its log says why (`journalctl -u upsell-appliance`)"
        } else {
            "the backup just written does not read back, so nothing was kept"
        }
    })?;
    partial
        .persist(path)
        .with_context(|| format!("cannot name the backup {}", path.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    let taken = chrono::DateTime::from_timestamp_millis(summary.taken_at.0)
        .unwrap_or_default()
        .to_rfc3339();
    let seconds = started.elapsed().as_secs_f64();
    if as_json {
        println!(
            "{}",
            json!({"file": path, "bytes": summary.bytes, "tables": summary.tables,
                "entries": summary.entries, "taken_at": taken, "schema": summary.schema,
                "version": summary.version, "source": source, "seconds": seconds})
        );
    } else {
        println!(
            "backup {}: {} records in {} tables, {:.1} MB, as of {taken}, {source}, in {seconds:.1} s",
            path.display(),
            summary.entries,
            summary.tables,
            summary.bytes as f64 / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn restore(config: &Config, path: &std::path::Path, as_json: bool) -> anyhow::Result<ExitCode> {
    refuse_while_serving(config, "restore")?;
    // Read twice: checked whole first, then loaded.
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a regular file; restore reads a backup twice (once to check it whole, once to load it): copy it to a file first",
            path.display()
        );
    }
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let options = storage_options(config);
    let started = Instant::now();
    let r = Storage::restore(&config.data_dir, &options, path, now).map_err(|e| match e {
        storage::Error::Locked(p) => in_use(&p, "restore"),
        e => anyhow::Error::from(e).context(format!("restoring {}", path.display())),
    })?;
    // Opened once as the service will open it: the schema matches and the stores are there.
    let storage = Storage::open(&config.data_dir, &options)?;
    let ids = config.store_ids();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let stores: Vec<_> = storage
        .status(&refs)?
        .iter()
        .zip(&ids)
        .map(|(s, id)| (id.clone(), s.orders))
        .collect();
    drop(storage);
    let taken = chrono::DateTime::from_timestamp_millis(r.summary.taken_at.0)
        .unwrap_or_default()
        .to_rfc3339();
    if as_json {
        println!(
            "{}",
            json!({"file": r.file, "from": path, "previous": r.previous, "taken_at": taken,
                "version": r.summary.version, "tables": r.summary.tables,
                "entries": r.summary.entries,
                "orders": stores.iter().map(|(id, n)| (id.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "seconds": started.elapsed().as_secs_f64()})
        );
    } else {
        println!(
            "restored {} (taken {taken} by upsell-appliance {}, {} records) into {}",
            path.display(),
            r.summary.version,
            r.summary.entries,
            r.file.display()
        );
        for (id, orders) in &stores {
            println!("  store {id}: {orders} orders");
        }
        if let Some(p) = &r.previous {
            println!(
                "the database it replaced is kept as {} (delete it once the restored one is right)",
                p.display()
            );
        }
        println!("start the service again: `sudo systemctl start upsell-appliance`");
    }
    Ok(ExitCode::SUCCESS)
}

fn status(config: &Config, store: Option<&str>, as_json: bool) -> anyhow::Result<ExitCode> {
    if let Some(id) = store {
        config.pick_store(Some(id))?;
    }
    let (mut v, source) = via_service_or_file(config, "GET", "/api/status", |s| {
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        Ok(crate::http::admin::status_json(config, s, None, now)?)
    })?;
    if let (Some(id), Some(stores)) = (store, v.get_mut("stores").and_then(|s| s.as_array_mut())) {
        stores.retain(|s| s["id"] == id);
    }
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let parsed: Vec<storage::StoreStatus> = serde_json::from_value(v["stores"].clone())
        .context("status: unexpected shape of stores")?;
    for s in parsed {
        let w = &s.webhooks;
        println!(
            "store {} ({}{})",
            s.id,
            s.mode,
            s.paused_since
                .as_deref()
                .map_or(String::new(), |t| format!(", PAUSED since {t}"))
        );
        println!(
            "  webhooks: {} accepted, {} duplicate, {} rejected, {} quarantined, {} ignored",
            w.accepted, w.duplicate, w.rejected, w.quarantined, w.ignored
        );
        println!(
            "  orders: {}  customers: {}  last webhook: {}",
            s.orders,
            s.customers,
            s.last_webhook_at.as_deref().unwrap_or("never")
        );
        let t = &s.touches;
        let next: Vec<String> = t
            .pending_by_day
            .iter()
            .take(3)
            .map(|d| format!("{} {}", d.day, d.total))
            .collect();
        println!(
            "  touches: {} pending (next days: {})",
            t.pending,
            next.join(", ")
        );
        let by = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  sent: [{}]  deferred: [{}]  skipped: [{}]",
            by(&t.sent),
            by(&t.deferred),
            by(&t.skipped)
        );
        for (ch, c) in &t.channels {
            println!(
                "  through {ch}: {} sent, {} retried, {} dead",
                c.sent, c.retried, c.dead
            );
        }
        if let Some(sync) = &s.sync {
            println!(
                "  platform API: last sync {}{}; {} order(s) found missing in all ({} fetched after thin webhooks); catalog: {} entries refreshed{}",
                sync.last_ok_at.as_deref().unwrap_or("never succeeded"),
                sync.last_error.as_deref().map_or(String::new(), |e| format!(" (the last failed: {e})")),
                sync.found_total,
                s.fetched,
                sync.catalog_variants,
                if sync.missing_subscriptions.is_empty() {
                    String::new()
                } else {
                    format!("; MISSING webhook subscriptions: {}", sync.missing_subscriptions.join(", "))
                }
            );
        }
        let p = &s.privacy;
        if p.erased + p.exported > 0 || !p.exports.is_empty() {
            println!(
                "  privacy requests: {} exported, {} erased, last {}; {} export file(s) waiting",
                p.exported,
                p.erased,
                p.last_at.as_deref().unwrap_or("never"),
                p.exports.len()
            );
        }
    }
    if let Some(late) = v["scheduler"]["late_at_start"].as_u64().filter(|n| *n > 0) {
        let o = &v["scheduler"]["late_outcome"];
        println!(
            "at start-up {late} touches had fallen due while stopped: {} fired, {} deferred, {} skipped",
            o["sent"], o["deferred"], o["skipped"]
        );
    }
    println!(
        "events: {} stored, {} processed ({source})",
        v["events"]["stored"], v["events"]["processed"]
    );
    let notices: Vec<crate::http::admin::Notice> =
        serde_json::from_value(v["notices"].clone()).unwrap_or_default();
    for n in notices {
        println!("{}: {}", n.level, n.text);
    }
    Ok(ExitCode::SUCCESS)
}

fn quarantine(config: &Config, action: QuarantineAction) -> anyhow::Result<ExitCode> {
    use crate::http::admin;
    let store_query = |store: &Option<String>| -> anyhow::Result<String> {
        match store {
            Some(id) => Ok(format!("?store={}", config.pick_store(Some(id))?.id)),
            None => Ok(String::new()),
        }
    };
    match action {
        QuarantineAction::List { store, json } => {
            let path = format!("/api/quarantine{}", store_query(&store)?);
            let (v, source) = via_service_or_file(config, "GET", &path, |s| {
                Ok(admin::quarantine_list(s, store.as_deref())?)
            })?;
            if json {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            let items = v["quarantined"].as_array().cloned().unwrap_or_default();
            for i in &items {
                println!(
                    "{}  {}  {}  {}  {}",
                    i["seq"],
                    i["store"].as_str().unwrap_or(""),
                    i["received_at"].as_str().unwrap_or(""),
                    i["topic"].as_str().unwrap_or(""),
                    i["reason"].as_str().unwrap_or("")
                );
            }
            println!("{} quarantined ({source})", items.len());
        }
        QuarantineAction::Show { seq, json } => {
            let path = format!("/api/quarantine/{seq}");
            let (v, _) = via_service_or_file(config, "GET", &path, |s| {
                admin::quarantine_show(s, seq)?.ok_or_else(|| {
                    anyhow!("no stored delivery {seq}; `quarantine list` shows the numbers")
                })
            })?;
            if json {
                println!("{v}");
            } else {
                println!(
                    "delivery {seq}: store {}, topic {}, received {}",
                    v["store"], v["topic"], v["received_at"]
                );
                if let Some(r) = v["reason"].as_str() {
                    println!("parse error: {r}");
                }
                for h in v["headers"].as_array().into_iter().flatten() {
                    println!(
                        "{}: {}",
                        h[0].as_str().unwrap_or(""),
                        h[1].as_str().unwrap_or("")
                    );
                }
                println!();
                println!("{}", v["body"].as_str().unwrap_or(""));
            }
        }
        QuarantineAction::Replay { store, json } => {
            let path = format!("/api/quarantine/replay{}", store_query(&store)?);
            let (v, source) = via_service_or_file(config, "POST", &path, |s| {
                Ok(admin::quarantine_replay(s, config, store.as_deref())?)
            })?;
            if json {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            let items = v["replayed"].as_array().cloned().unwrap_or_default();
            let released = items.iter().filter(|i| !i["new_seq"].is_null()).count();
            for i in &items {
                println!("{}: {}", i["seq"], i["result"].as_str().unwrap_or(""));
            }
            println!("{released} of {} released ({source})", items.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The store's platform API, or what to do about its missing `[stores.api]`.
fn api_of(
    config: &Config,
    store: &config::StoreConfig,
) -> anyhow::Result<crate::outbound::platform::Api> {
    let agent = crate::outbound::agent(config.outbound.connect_timeout, config.outbound.timeout);
    crate::outbound::platform::Api::of(store, agent)
        .ok_or_else(|| anyhow!(crate::outbound::platform::no_api(store)))
}

fn connect(config: &Config, store: Option<String>, as_json: bool) -> anyhow::Result<ExitCode> {
    use crate::engine::Platform;
    let cfg = config.pick_store(store.as_deref())?;
    let api = api_of(config, cfg)?;
    let platform = cfg.platform.name();
    if !config.public_url.starts_with("https://") {
        eprintln!(
            "warning: public_url = {} is not an https:// address; {platform} delivers webhooks only to a public HTTPS address (README \"Install on a VPS\": Caddy)",
            config.public_url
        );
    }
    let shop = api
        .check()
        .with_context(|| format!("store {}: checking the credentials", cfg.id))?;
    let states =
        crate::outbound::platform::reconcile_subscriptions(&api, cfg, &config.public_url, true)
            .with_context(|| format!("store {}: registering the webhook subscriptions", cfg.id))?;
    let address = crate::outbound::platform::webhook_address(&config.public_url, &cfg.id);
    // Each recipe's static discount code must exist in the store, or the offer's link
    // leads to a checkout that refuses it.
    let mut codes = Vec::new();
    for (recipe, code) in &cfg.offers.discount_codes {
        let exists = api
            .code_exists(code)
            .with_context(|| format!("store {}: looking up the discount code {code:?}", cfg.id))?;
        codes.push(json!({"recipe": recipe.as_str(), "code": code, "exists": exists}));
    }
    let missing: Vec<&serde_json::Value> = codes.iter().filter(|c| c["exists"] == false).collect();
    let exit = if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if as_json {
        println!(
            "{}",
            json!({"store": cfg.id, "platform": cfg.platform.as_str(), "shop": shop,
                   "address": address, "subscriptions": states, "discount_codes": codes})
        );
        return Ok(exit);
    }
    println!(
        "store {}: the {platform} credentials work (shop {shop:?})",
        cfg.id
    );
    println!("webhook subscriptions to {address}:");
    for s in &states {
        let what = match s.action {
            "ok" => "already there",
            "created" => "created",
            "repaired" => "repaired (it pointed elsewhere or was disabled)",
            other => other,
        };
        println!(
            "  {:<28} {what}{}",
            s.topic,
            s.id.as_deref()
                .map_or(String::new(), |id| format!(" (id {id})"))
        );
    }
    if cfg.platform == Platform::Shopify {
        println!(
            "the privacy topics (customers/data_request, customers/redact, shop/redact) are the app's compliance webhooks: set them to {address} in the app's configuration"
        );
    }
    for c in &codes {
        println!(
            "discount code {} ({}): {}",
            c["code"].as_str().unwrap_or_default(),
            c["recipe"].as_str().unwrap_or_default(),
            if c["exists"] == true {
                "exists"
            } else {
                "MISSING in the store: create it there, or take it out of [stores.offers] discount_codes"
            }
        );
    }
    println!("the status page shows the subscriptions as of the next sync (`upsell-appliance sync --store {}`)", cfg.id);
    Ok(exit)
}

fn sync(config: &Config, store: Option<String>, as_json: bool) -> anyhow::Result<ExitCode> {
    let store = store_of(config, &store)?;
    let cfg = config.pick_store(Some(&store))?;
    api_of(config, cfg)?;
    let path = format!("/api/sync?store={store}");
    let (v, source) = service_or_file(
        config,
        || crate::admin_client::call_json_long(config, "POST", &path),
        |s| {
            let clock = crate::clock::SystemClock;
            let apis = crate::pipeline::sync::apis(config, None);
            let v = crate::ops::sync(s, config, &store, &apis, &clock).map_err(ops_err)?;
            // Apply what it found now, as the service would have.
            let settings = crate::pipeline::processor::Settings::service(
                std::sync::Arc::new(config.clone()),
                std::sync::Arc::new(clock),
            );
            crate::pipeline::processor::catch_up(s, &settings, &|| true)?;
            Ok(v)
        },
    )?;
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let d = &v["synced"];
    let since = match v["since"].as_str() {
        Some(t) => format!("since {t}"),
        None => "in the last 3 days (the first sync)".into(),
    };
    println!(
        "store {store}: {} order(s) changed {since}; {} the appliance had not seen (their webhooks never came) and {} newer version(s) fed in, marked reconciled; {} catalog entries refreshed ({source})",
        d["listed"], d["missed"], d["updated"], d["catalog_variants"]
    );
    match d["missing_subscriptions"].as_array().filter(|m| !m.is_empty()) {
        None => println!("webhook subscriptions: all there"),
        Some(m) => println!(
            "webhook subscriptions MISSING for {}: `upsell-appliance connect --store {store}` repairs them",
            m.iter().filter_map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn store_of(config: &Config, store: &Option<String>) -> anyhow::Result<String> {
    Ok(config.pick_store(store.as_deref())?.id.clone())
}

fn ops_err(e: crate::ops::OpsError) -> anyhow::Error {
    anyhow!("{e}")
}

/// Progress on a terminal as a bar, otherwise a line every few seconds.
fn progress_reporter() -> impl FnMut(crate::ops::Progress) {
    use std::io::IsTerminal;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>20} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut last = Instant::now();
    move |p: crate::ops::Progress| match &bar {
        Some(b) => {
            b.set_length(p.total_bytes);
            b.set_position(p.bytes);
            b.set_message(format!("{} {}", p.phase, p.orders));
            if p.phase == "rebuilding affinity" {
                b.finish_and_clear();
                eprintln!("rebuilding affinity from {} orders", p.orders);
            }
        }
        None => {
            if last.elapsed() >= Duration::from_secs(5) || p.phase == "rebuilding affinity" {
                last = Instant::now();
                let pct = (p.bytes * 100).checked_div(p.total_bytes).unwrap_or(100);
                eprintln!("{}: {} orders, {pct}% of the file", p.phase, p.orders);
            }
        }
    }
}

fn import(config: &Config, what: ImportWhat) -> anyhow::Result<ExitCode> {
    let (kind, file, store, skip, as_json) = match &what {
        ImportWhat::Catalog { file, store, json } => ("catalog", file, store, false, *json),
        ImportWhat::Orders {
            file,
            store,
            skip_bad_rows,
            json,
        } => ("orders", file, store, *skip_bad_rows, *json),
        ImportWhat::Pairings { file, store, json } => ("pairings", file, store, false, *json),
        ImportWhat::Suppressions { file, store, json } => {
            ("suppressions", file, store, false, *json)
        }
    };
    let store = store_of(config, store)?;
    if !file.is_file() {
        bail!("{}: no such file", file.display());
    }
    let name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let api = format!(
        "/api/import/{kind}?store={store}&name={}{}",
        percent_encode(&name),
        if skip { "&skip_bad_rows=1" } else { "" }
    );
    if !Storage::exists(&config.data_dir)
        && matches!(
            crate::admin_client::get_json(config, "/api/status"),
            Ok(None)
        )
    {
        // Nothing to ask and nothing yet on disk: an import may come before the first serve.
        drop(open_db(config, true)?);
    }
    let (v, source) = service_or_file(
        config,
        || {
            let r = crate::admin_client::upload_json(config, &api, file);
            if let Ok(Some(_)) = &r {
                eprintln!("imported by the running service at {}", config.admin_listen);
            }
            r
        },
        |s| {
            let mut progress = progress_reporter();
            match kind {
                "catalog" => crate::ops::import_catalog(s, config, &store, file),
                "orders" => crate::ops::import_orders(s, config, &store, file, skip, &mut progress),
                "suppressions" => crate::ops::import_suppressions(
                    s,
                    &store,
                    file,
                    &name,
                    crate::clock::Clock::now(&crate::clock::SystemClock),
                ),
                _ => crate::ops::import_pairings(s, &store, file),
            }
            .map_err(ops_err)
        },
    )?;
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    match kind {
        "orders" => {
            println!(
                "imported {} orders ({} new), {} line items, {} customers from {} ({} format)",
                v["orders"],
                v["new_orders"],
                v["line_items"],
                v["customers"],
                file.display(),
                v["format"].as_str().unwrap_or("")
            );
            println!(
                "unknown SKUs: {} ({} line items kept as uncatalogued products){}",
                v["unknown_skus"],
                v["uncatalogued_line_items"],
                match v["unknown_sku_examples"].as_array() {
                    Some(a) if !a.is_empty() => format!(
                        ", e.g. {}",
                        a.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => String::new(),
                }
            );
            println!("rows rejected: {}", v["rejected"]);
            for r in v["rejected_rows"].as_array().into_iter().flatten() {
                println!("  {}", r.as_str().unwrap_or(""));
            }
            println!(
                "affinity rebuilt: {} orders, {} next-order moves, {} pairs ({:.1} s, {source})",
                v["affinity"]["orders"],
                v["affinity"]["transitions"],
                v["affinity"]["pairs"],
                v["seconds"].as_f64().unwrap_or(0.0)
            );
        }
        "catalog" => {
            println!(
                "catalog: {} rows from {} ({} format): {} new, {} updated ({source})",
                v["rows"],
                file.display(),
                v["format"].as_str().unwrap_or(""),
                v["created"],
                v["updated"]
            );
            if !v["affinity_rebuilt"].is_null() {
                println!(
                    "product keys changed: affinity rebuilt ({} pairs)",
                    v["affinity_rebuilt"]["pairs"]
                );
            }
        }
        "suppressions" => println!(
            "suppression list: {} entries read from {}, {} new, in store {store} ({source})",
            v["rows"],
            file.display(),
            v["new"]
        ),
        _ => println!(
            "pairings: {} now in store {store} ({source})",
            v["pairings"]
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn affinity(config: &Config, action: AffinityAction) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    match action {
        AffinityAction::Rebuild { store, json } => {
            let store = store_of(config, &store)?;
            let api = format!("/api/affinity/rebuild?store={store}");
            let (v, source) = via_service_or_file(config, "POST", &api, |s| {
                crate::ops::affinity_rebuild(s, config, &store).map_err(ops_err)
            })?;
            if json {
                println!("{v}");
            } else {
                println!(
                    "rebuilt store {store}: {} orders, {} next-order moves, {} pairs in {:.2} s ({source})",
                    v["orders"], v["transitions"], v["pairs"], v["seconds"].as_f64().unwrap_or(0.0)
                );
            }
        }
        AffinityAction::Show {
            product,
            store,
            json,
        } => {
            let store = store_of(config, &store)?;
            let api = format!(
                "/api/affinity/show?store={store}&product={}",
                percent_encode(&product)
            );
            let (v, source) = via_service_or_file(config, "GET", &api, |s| {
                crate::ops::affinity_show(s, config, &store, &product, now).map_err(ops_err)
            })?;
            if json {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{} {} ({source})",
                v["product"].as_str().unwrap_or(""),
                v["title"].as_str().unwrap_or("")
            );
            let rules = v["rules"].as_array().cloned().unwrap_or_default();
            println!("rules ({}):", rules.len());
            println!(
                "  {:<10} {:<24} {:>6} {:>8} {:>8} {:>6} {:>8}  tier",
                "kind", "consequent", "pairs", "decayed", "conf", "lift", "gap d"
            );
            for r in rules.iter().take(30) {
                println!(
                    "  {:<10} {:<24} {:>6} {:>8.2} {:>7.1}% {:>6.2} {:>8}  {}",
                    r["kind"].as_str().unwrap_or(""),
                    r["consequent"].as_str().unwrap_or(""),
                    r["exact_pair_orders"].as_u64().unwrap_or(0),
                    r["pair_orders"].as_f64().unwrap_or(0.0),
                    r["confidence"].as_f64().unwrap_or(0.0) * 100.0,
                    r["lift"].as_f64().unwrap_or(0.0),
                    r["mean_gap_days"]
                        .as_f64()
                        .map_or(String::new(), |g| format!("{g:.1}")),
                    r["tier"].as_str().unwrap_or("below minimum count"),
                );
            }
            println!("candidates:");
            for c in v["candidates"].as_array().into_iter().flatten() {
                let why: Vec<String> = c["evidence"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| match e["source"].as_str().unwrap_or("") {
                        "affinity" => format!(
                            "{} {} {:.1}%",
                            e["rule"]["kind"].as_str().unwrap_or(""),
                            e["rule"]["tier"].as_str().unwrap_or(""),
                            e["rule"]["confidence"].as_f64().unwrap_or(0.0) * 100.0
                        ),
                        "manual" => format!("manual {}", e["mode"].as_str().unwrap_or("")),
                        "category" => format!("category {}", e["category"].as_str().unwrap_or("")),
                        other => other.to_string(),
                    })
                    .collect();
                println!(
                    "  {:<24} {}",
                    c["product"].as_str().unwrap_or(""),
                    why.join("; ")
                );
            }
        }
        AffinityAction::Export {
            store,
            format,
            decay,
        } => {
            let store = store_of(config, &store)?;
            let api = format!("/api/affinity/export?store={store}&format={format}&decay={decay}");
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match crate::admin_client::download(config, &api, &mut out) {
                Ok(true) => {}
                Ok(false) => {
                    let s = open_file_db(config)?;
                    let format = crate::ops::Format::parse(&format).map_err(ops_err)?;
                    let decay = crate::ops::DecayChoice::parse(&decay).map_err(ops_err)?;
                    crate::ops::affinity_export(&s, config, &store, format, decay, now, &mut out)
                        .map_err(ops_err)?;
                }
                Err(e) => return Err(e),
            }
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(
    config: &Config,
    order: &str,
    store: &Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let store = store_of(config, store)?;
    let api = format!("/api/explain?store={store}&order={}", percent_encode(order));
    let (v, source) = via_service_or_file(config, "GET", &api, |s| {
        crate::ops::explain(s, &store, order).map_err(ops_err)
    })?;
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    println!(
        "order {} ({}) in store {store}: plan revision {}, {}{} ({source})",
        s(&v["name"]),
        s(&v["order"]),
        v["revision"],
        s(&v["status"]),
        match (v["ended_by"].as_str(), v["status_at"].as_str()) {
            (Some(by), _) => format!(" by order {by}"),
            (None, Some(at)) => format!(" at {at}"),
            _ => String::new(),
        }
    );
    match v["source"].as_str() {
        Some("reconciled") => {
            println!("├─ arrived through the sync: its webhooks never came (reconciled)")
        }
        Some("fetched") => println!("├─ fetched through the platform's API after its webhook"),
        _ => {}
    }
    println!("├─ recipe: {}", v["recipe"].as_str().unwrap_or("none"));
    match v["offer"].as_object() {
        Some(o) => {
            let mut flags = Vec::new();
            for f in ["trust", "urgency"] {
                if o[f].as_bool() == Some(true) {
                    flags.push(f.to_string());
                }
            }
            if let Some(code) = o["discount_code"].as_str() {
                flags.push(format!("code {code}"));
            }
            println!(
                "├─ offer: {} \"{}\" at {} {}{}{}",
                s(&o["product"]),
                s(&o["title"]),
                s(&o["price"]),
                s(&o["currency"]),
                o["sku"]
                    .as_str()
                    .map_or(String::new(), |k| format!(", SKU {k}")),
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", flags.join(", "))
                }
            );
        }
        None => println!("├─ offer: none"),
    }
    if let Some(r) = v["offer_response"].as_object() {
        println!(
            "├─ page offer {} at {}",
            if r["accepted"] == true {
                "accepted"
            } else {
                "declined"
            },
            r["at"].as_str().unwrap_or("")
        );
    }
    if let Some(c) = v["conversion"].as_object() {
        let credited = &c["credited"];
        println!(
            "├─ converted by order {} at {} (credit: {} on {}){}",
            s(&c["order"]),
            s(&c["at"]),
            s(&credited["what"]),
            if credited["channel"] == "page" {
                "the thank-you page".to_string()
            } else {
                format!("{} {}", s(&credited["kind"]), s(&credited["channel"]))
            },
            c["reversed"].as_object().map_or(String::new(), |r| format!(
                "; taken back at {}: {}",
                s(&r["at"]),
                s(&r["why"])
            ))
        );
    }
    if v["holdout"].as_bool() == Some(true) {
        println!("├─ holdout: yes (control group: nothing is sent)");
    }
    for (e, variant) in v["variants"].as_object().into_iter().flatten() {
        println!("├─ experiment {e}: {}", variant.as_str().unwrap_or(""));
    }
    let touches = v["touches"].as_array().cloned().unwrap_or_default();
    println!("├─ touches ({})", touches.len());
    for (i, t) in touches.iter().enumerate() {
        println!(
            "│  {} {:<12} {:<7} {}{}{}",
            if i + 1 == touches.len() {
                "└─"
            } else {
                "├─"
            },
            s(&t["kind"]),
            s(&t["channel"]),
            s(&t["due_at"]),
            if t["after_delivery"].as_bool() == Some(true) {
                " (moves with delivery)"
            } else {
                ""
            },
            if t["sent"].as_bool() == Some(true) {
                " sent"
            } else {
                ""
            }
        );
    }
    let reasons = v["reasons"].as_array().cloned().unwrap_or_default();
    println!("├─ reasons");
    for (i, r) in reasons.iter().enumerate() {
        let last = i + 1 == reasons.len();
        println!("│  {} {}", if last { "└─" } else { "├─" }, s(r));
    }
    let history = v["history"].as_array().cloned().unwrap_or_default();
    println!("└─ history");
    for (i, h) in history.iter().enumerate() {
        let last = i + 1 == history.len();
        println!("   {} {}", if last { "└─" } else { "├─" }, s(h));
    }
    Ok(ExitCode::SUCCESS)
}

fn customer(config: &Config, action: CustomerAction) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let (method, verb, contact, store, as_json, reason) = match &action {
        CustomerAction::Suppress {
            contact,
            reason,
            store,
            json,
        } => ("POST", "suppress", contact, store, *json, reason.clone()),
        CustomerAction::Unsuppress {
            contact,
            store,
            json,
        } => ("POST", "unsuppress", contact, store, *json, None),
        CustomerAction::Show {
            contact,
            store,
            json,
        } => ("GET", "show", contact, store, *json, None),
        CustomerAction::Clear {
            contact,
            store,
            json,
        } => ("POST", "clear", contact, store, *json, None),
        CustomerAction::Export { who, out, store } => return export_cmd(config, who, out, store),
        CustomerAction::Erase {
            who,
            yes,
            store,
            json,
        } => return erase_cmd(config, who, *yes, store, *json),
        CustomerAction::TicketOpen {
            contact,
            ticket,
            store,
            json,
        } => return ticket_cmd(config, contact, ticket, None, true, store, *json),
        CustomerAction::TicketClose {
            contact,
            ticket,
            csat,
            store,
            json,
        } => return ticket_cmd(config, contact, ticket, *csat, false, store, *json),
    };
    let store = store_of(config, store)?;
    let mut api = format!(
        "/api/customer/{verb}?store={store}&contact={}",
        percent_encode(contact)
    );
    if let Some(r) = &reason {
        api += &format!("&reason={}", percent_encode(r));
    }
    let (v, source) = via_service_or_file(config, method, &api, |s| {
        match verb {
            "suppress" => crate::ops::customer_suppress(s, &store, contact, reason.as_deref(), now),
            "unsuppress" => crate::ops::customer_unsuppress(s, &store, contact),
            "clear" => crate::ops::customer_clear(s, &store, contact, now),
            _ => crate::ops::customer_show(s, &store, contact),
        }
        .map_err(ops_err)
    })?;
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let contact = v["contact"].as_str().unwrap_or("");
    match verb {
        "suppress" => println!(
            "{contact} is on the suppression list of store {store}{} ({source})",
            if v["new"].as_bool() == Some(true) {
                ""
            } else {
                " (it already was; the reason is updated)"
            }
        ),
        "unsuppress" => println!(
            "{contact} {} ({source})",
            if v["was_suppressed"].as_bool() == Some(true) {
                "is off the suppression list"
            } else {
                "was not on the suppression list; nothing changed"
            }
        ),
        "clear" => match v["cleared"].as_array().filter(|c| !c.is_empty()) {
            Some(c) => println!(
                "{contact}: poor rating of ticket(s) {} cleared; marketing may reach them again, {} waiting touch(es) decided now ({source})",
                c.iter().filter_map(|t| t.as_str()).collect::<Vec<_>>().join(", "),
                v["resumed"].as_u64().unwrap_or(0)
            ),
            None => println!(
                "{contact} has no poorly rated ticket waiting for a person; nothing changed ({source})"
            ),
        },
        _ => {
            println!("{contact} in store {store} ({source})");
            match v["suppressed"].as_object() {
                Some(sup) => println!(
                    "  suppressed: {}{} since {} ({})",
                    sup["reason"].as_str().unwrap_or(""),
                    sup.get("note")
                        .and_then(|n| n.as_str())
                        .map_or(String::new(), |n| format!(": {n}")),
                    sup["at"].as_str().unwrap_or(""),
                    sup["source"].as_str().unwrap_or("")
                ),
                None => println!("  suppressed: no"),
            }
            for t in v["tickets"].as_array().into_iter().flatten() {
                println!(
                    "  ticket {}: {}{}{}",
                    t["ticket"].as_str().unwrap_or(""),
                    if t["open"] == true { "open" } else { "closed" },
                    t["csat"].as_u64().map_or(String::new(), |c| format!(", rated {c}/5")),
                    if t["needs_recovery"] == true {
                        " — a person should follow up; no marketing until `customer clear`"
                    } else if !t["cleared_at"].is_null() {
                        " (cleared)"
                    } else {
                        ""
                    }
                );
            }
            let c = &v["customer"];
            if c.is_null() {
                println!("  no orders found for this contact (customers are looked up by email)");
            } else {
                let cur = c["currency"].as_str().unwrap_or("");
                println!(
                    "  orders: {}  spent: {} {cur}  refunded: {} {cur}  email consent: {}  sms consent: {}",
                    c["orders"],
                    c["spent"].as_str().unwrap_or("0"),
                    c["refunded"].as_str().unwrap_or("0"),
                    c["email_consent"].as_str().unwrap_or(""),
                    c["sms_consent"].as_str().unwrap_or("")
                );
                for p in c["plans"].as_array().into_iter().flatten() {
                    println!(
                        "  order {} {}: {} {}",
                        p["order"].as_str().unwrap_or(""),
                        p["at"].as_str().unwrap_or(""),
                        p["status"].as_str().unwrap_or("not planned"),
                        p["recipe"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `customer export`: to standard output, or to a file only its owner can read.
fn export_cmd(
    config: &Config,
    who: &str,
    out: &Option<PathBuf>,
    store: &Option<String>,
) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let store = store_of(config, store)?;
    let api = format!(
        "/api/customer/export?store={store}&contact={}",
        percent_encode(who)
    );
    let (v, source) = via_service_or_file(config, "GET", &api, |s| {
        crate::ops::customer_export(s, &store, who, now).map_err(ops_err)
    })?;
    match out {
        None => println!("{}", serde_json::to_string_pretty(&v)?),
        Some(path) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            let name = path
                .file_name()
                .ok_or_else(|| anyhow!("--out {}: give a file name", path.display()))?
                .to_string_lossy();
            let written = crate::privacy::write_export(dir, &name, &v)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{}: {} written to {} ({source})",
                who,
                if v["found"] == true {
                    "everything held"
                } else {
                    "nothing is held about them; an export saying so"
                },
                written.display()
            );
        }
    }
    if let Some(hint) = v["hint"].as_str() {
        eprintln!("  {hint}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `customer erase`: without `--yes`, what would go.
fn erase_cmd(
    config: &Config,
    who: &str,
    yes: bool,
    store: &Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let store = store_of(config, store)?;
    let api = format!(
        "/api/customer/erase?store={store}&contact={}&yes={yes}",
        percent_encode(who)
    );
    let (v, source) = via_service_or_file(config, "POST", &api, |s| {
        crate::ops::customer_erase(s, &store, who, yes, now).map_err(ops_err)
    })?;
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let f = &v["found"];
    let found = format!(
        "{} customer record(s), {} order(s), {} raw request(s), {} touch(es), {} ticket(s), {} suppression entr(ies)",
        f["customers"], f["orders"], f["events"], f["touches"], f["tickets"], f["suppressions"]
    );
    if v["held"] != true {
        println!(
            "nothing personal is held about {who} in store {store}; nothing to erase ({source})"
        );
        if let Some(hint) = v["hint"].as_str() {
            println!("  {hint}");
        }
    } else if v["erased"].is_null() {
        println!("{who} in store {store}: {found} would be erased ({source})");
        println!("  run again with --yes to erase it; this cannot be undone");
    } else {
        let e = &v["erased"];
        println!("{who} in store {store}: personal data erased ({source})");
        println!(
            "  {} customer record(s) and {} order(s) scrubbed, {} raw request(s) deleted, {} touch(es) cancelled, {} ticket(s) removed, {} suppression entr(ies) kept under a hash",
            e["customers"], e["orders"], e["events"], e["touches_cancelled"], e["tickets"], e["suppressions_hashed"]
        );
        println!("  the old bytes leave the database file at the next `upsell-appliance compact` (service stopped); backups taken before now still hold them");
    }
    Ok(ExitCode::SUCCESS)
}

fn ticket_cmd(
    config: &Config,
    contact: &str,
    ticket: &str,
    csat: Option<u8>,
    open: bool,
    store: &Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let store = store_of(config, store)?;
    let verb = if open { "ticket-open" } else { "ticket-close" };
    let mut api = format!(
        "/api/customer/{verb}?store={store}&contact={}&ticket={}",
        percent_encode(contact),
        percent_encode(ticket)
    );
    if let Some(c) = csat {
        api += &format!("&csat={c}");
    }
    let (v, source) = via_service_or_file(config, "POST", &api, |s| {
        crate::ops::customer_ticket(s, &store, contact, ticket, open, csat, now).map_err(ops_err)
    })?;
    if as_json {
        println!("{v}");
    } else {
        println!(
            "ticket {ticket} of {} {}: {} open ticket(s) now ({source})",
            v["contact"].as_str().unwrap_or(""),
            if open { "opened" } else { "closed" },
            v["open_tickets"]
        );
        if v["recovery"] == true {
            println!("  rated poorly: the store is notified (customer.recovery_needed) and the customer gets no marketing until `customer clear`");
        }
        if let Some(n) = v["resumed"].as_u64().filter(|n| *n > 0) {
            println!("  {n} touch(es) that waited for it are decided now");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn offer(config: &Config, action: OfferAction) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let (accepted, order, store, as_json) = match &action {
        OfferAction::Accept { order, store, json } => (true, order, store, *json),
        OfferAction::Decline { order, store, json } => (false, order, store, *json),
        OfferAction::Widget { store, json } => return offer_widget(config, store, *json),
    };
    let store = store_of(config, store)?;
    let api = format!(
        "/api/offer/{}?store={store}&order={}",
        if accepted { "accept" } else { "decline" },
        percent_encode(order)
    );
    let (v, source) = via_service_or_file(config, "POST", &api, |s| {
        crate::ops::offer_response(s, &store, order, accepted, now).map_err(ops_err)
    })?;
    if as_json {
        println!("{v}");
    } else {
        let answer = if v["accepted"] == true {
            "accepted"
        } else {
            "declined"
        };
        let how = if v["changed"] == true {
            "recorded"
        } else {
            "already recorded; an acceptance stands"
        };
        println!(
            "order {}: page offer {answer} ({how}; {source})",
            v["order"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn offer_widget(
    config: &Config,
    store: &Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let store = store_of(config, store)?;
    let api = format!("/api/offer/widget?store={store}");
    let (v, _) = via_service_or_file(config, "GET", &api, |s| {
        crate::ops::offer_widget(s, config, &store).map_err(ops_err)
    })?;
    if let Some(w) = v["warning"].as_str() {
        eprintln!("warning: {w}");
    }
    if as_json {
        println!("{v}");
    } else {
        print!("{}", v["snippet"].as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

fn replay(
    config: &Config,
    store: Option<String>,
    from: Option<String>,
    to: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let store = store_of(config, &store)?;
    let mut api = format!("/api/replay?store={store}");
    for (k, v) in [("from", &from), ("to", &to)] {
        if let Some(v) = v {
            api.push_str(&format!("&{k}={}", percent_encode(v)));
        }
    }
    let (v, source) = service_or_file(
        config,
        || crate::admin_client::call_json_long(config, "GET", &api),
        |s| {
            let cfg = config.pick_store(Some(&store))?;
            crate::ops::replay(s, config, cfg, from.as_deref(), to.as_deref(), now).map_err(ops_err)
        },
    )?;
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", replay_text(&v, &source));
    Ok(ExitCode::SUCCESS)
}

fn report(
    config: &Config,
    store: Option<String>,
    since: String,
    until: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let store = store_of(config, &store)?;
    let mut api = format!("/api/report?store={store}&since={}", percent_encode(&since));
    if let Some(u) = &until {
        api.push_str(&format!("&until={}", percent_encode(u)));
    }
    let (v, source) = service_or_file(
        config,
        || crate::admin_client::call_json_long(config, "GET", &api),
        |s| {
            let cfg = config.pick_store(Some(&store))?;
            crate::ops::report(s, config, cfg, Some(&since), until.as_deref(), now).map_err(ops_err)
        },
    )?;
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", report_text(&v, &source));
    Ok(ExitCode::SUCCESS)
}

/// The lift report for a person.
fn report_text(v: &serde_json::Value, source: &str) -> String {
    use std::fmt::Write as _;
    let s = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    let cur = s(&v["currency"]);
    let money = |x: &serde_json::Value| {
        x.as_f64()
            .map_or("-".to_string(), |m| format!("{cur} {m:.2}"))
    };
    let pct = |x: &serde_json::Value| {
        x.as_f64()
            .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0))
    };
    let o = &v["orders"];
    let mut out = format!(
        "Lift of store {} from {} to {} ({source}).\n{} treated and {} holdout orders ({} add-on orders folded into the orders they came from{}).\n",
        s(&v["store"]),
        &s(&v["since"])[..10.min(s(&v["since"]).len())],
        &s(&v["until"])[..10.min(s(&v["until"]).len())],
        n(&o["treated"]),
        n(&o["holdout"]),
        n(&o["add_ons"]),
        match n(&o["without_rate"]) {
            0 => String::new(),
            k => format!("; {k} in a currency without a rate left out of money figures"),
        }
    );
    for r in v["recipes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\n{} ({} treated, {} holdout orders)",
            if r["recipe"] == "all" {
                "All orders".to_string()
            } else {
                format!("Recipe {}", s(&r["recipe"]))
            },
            n(&r["treated_orders"]),
            n(&r["holdout_orders"])
        );
        for (name, m) in [
            ("AOV", &r["aov"]),
            ("Upsell revenue per order", &r["upsell_revenue"]),
        ] {
            let _ = writeln!(
                out,
                "  {name:<28} treated {:>12}  holdout {:>12}  {}",
                money(&m["treated"]["mean"]),
                money(&m["holdout"]["mean"]),
                s(&m["verdict"])
            );
        }
        let p = &r["revenue_per_message"];
        let _ = writeln!(
            out,
            "  {:<28} {} messages, attributed {} per message; beyond the holdout: {}",
            "Revenue per message",
            n(&p["messages"]),
            money(&p["attributed_per_message"]),
            s(&p["verdict"])
        );
        let rates = r["repeat"].as_array().cloned().unwrap_or_default();
        for (name, m) in rates
            .iter()
            .map(|m| (format!("Repeat within {} days", n(&m["days"])), m))
            .chain(std::iter::once((
                "Unsubscribed within 30 days".to_string(),
                &r["unsubscribe"],
            )))
        {
            let _ = writeln!(
                out,
                "  {name:<28} treated {:>12}  holdout {:>12}  {}",
                pct(&m["treated"]["rate"]),
                pct(&m["holdout"]["rate"]),
                s(&m["verdict"])
            );
        }
    }
    let funnel = v["funnel"].as_array().cloned().unwrap_or_default();
    if !funnel.is_empty() {
        out.push_str(
            "\nTouch funnel of the treated offers: planned -> sent -> clicked -> converted\n",
        );
        for f in &funnel {
            let _ = writeln!(
                out,
                "  {:<14} {} -> {} -> {} -> {} ({})",
                s(&f["recipe"]),
                n(&f["planned"]),
                n(&f["sent"]),
                n(&f["clicked"]),
                n(&f["converted"]),
                money(&f["converted_revenue"])
            );
        }
    }
    out
}

/// The replay report for a person.
fn replay_text(v: &serde_json::Value, source: &str) -> String {
    use std::fmt::Write;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    // "a 3, b 2" from a {code: count} object, largest first.
    let list = |v: &serde_json::Value| -> String {
        let mut items: Vec<(String, u64)> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, c)| (k.clone(), c.as_u64().unwrap_or(0)))
            .collect();
        items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if items.is_empty() {
            return "none".into();
        }
        items
            .iter()
            .map(|(k, c)| format!("{k} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let o = &v["orders"];
    let t = &v["touches"];
    let mut out = String::new();
    let window = match (v["from"].as_str(), v["to"].as_str()) {
        (None, None) => "all orders".to_string(),
        (f, t) => format!(
            "orders placed from {} to {}",
            f.unwrap_or("the first"),
            t.map_or("the last".to_string(), |t| format!("before {t}"))
        ),
    };
    let _ = writeln!(
        out,
        "Replay of store {} ({window}), decided up to {} ({source}).\nNothing was sent and nothing was written.\n",
        s(&v["store"]),
        s(&v["until"])
    );
    let _ = writeln!(
        out,
        "orders        {} placed in the window, {} customers ({} before it and {} after it read as history only)",
        n(&o["seen"]),
        n(&o["customers"]),
        n(&o["before_window"]),
        n(&o["after_window"])
    );
    let _ = writeln!(
        out,
        "offers        {} with an offer; per recipe: {}",
        n(&o["with_offer"]),
        list(&v["offers"])
    );
    let _ = writeln!(
        out,
        "holdout       {} orders of control-group customers (offers chosen, nothing sent)",
        n(&o["holdout"])
    );
    let _ = writeln!(out, "no touches    {}", list(&v["no_touches"]));
    let _ = writeln!(out, "no email      {}", list(&v["no_email"]));
    let _ = writeln!(out, "no SMS        {}", list(&v["no_sms"]));
    let _ = writeln!(out, "\ntouches planned   {}", list(&t["planned"]));
    let _ = writeln!(out, "        sent      {} (page: shown)", list(&t["sent"]));
    let _ = writeln!(out, "        skipped   {}", list(&t["skipped"]));
    let _ = writeln!(
        out,
        "        deferred  {} (touches; deferrals: {})",
        list(&t["deferred"]),
        list(&t["deferrals"])
    );
    let _ = writeln!(
        out,
        "        at the end {} still pending (due after {}); waiting for a fact history lacks: {}",
        n(&t["pending_at_end"]),
        s(&v["until"]),
        list(&t["waiting_at_end"])
    );
    let _ = writeln!(out, "\nsent per channel, by day after the order");
    for (channel, days) in t["by_channel_day"].as_object().into_iter().flatten() {
        let days: Vec<String> = days
            .as_object()
            .into_iter()
            .flatten()
            .map(|(d, c)| (d.parse::<i64>().unwrap_or(0), n(c)))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .map(|(d, c)| format!("day {d}: {c}"))
            .collect();
        let _ = writeln!(out, "  {channel:<8} {}", days.join(", "));
    }
    let _ = writeln!(out, "\ntop offered products");
    for (i, p) in v["top_products"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let _ = writeln!(
            out,
            "  {:>2}. {} ({}): offered on {} orders, shown or sent {} times",
            i + 1,
            s(&p["title"]),
            s(&p["product"]),
            n(&p["offers"]),
            n(&p["sent"])
        );
    }
    let _ = writeln!(
        out,
        "\nPROJECTION (at assumed rates, not a measurement; see the last line below)"
    );
    for p in v["projection"].as_array().into_iter().flatten() {
        let c = s(&p["currency"]);
        let _ = writeln!(
            out,
            "  {c}: projected upsell revenue {} {c} (page {}, email {}, SMS {}) on {} treated orders worth {} {c}: projected AOV lift {:.1}% (industry range 15-28%)",
            s(&p["upsell_revenue"]),
            s(&p["page_revenue"]),
            s(&p["email_revenue"]),
            s(&p["sms_revenue"]),
            n(&p["treated_orders"]),
            s(&p["treated_value"]),
            p["aov_lift"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    let _ = writeln!(out, "\nassumptions");
    for a in v["assumptions"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  - {}", s(a));
    }
    out
}

fn send_test(
    config: &Config,
    touch: &str,
    to: &str,
    store: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let store = store_of(config, &store)?;
    let api = format!(
        "/api/send-test?store={store}&touch={}&to={}",
        percent_encode(touch),
        percent_encode(to)
    );
    let (v, source) = via_service_or_file(config, "POST", &api, |s| {
        let cfg = config.pick_store(Some(&store))?;
        crate::ops::send_test(s, config, cfg, touch, to, now).map_err(ops_err)
    })?;
    if as_json {
        println!("{v}");
    } else if v["channel"] == "outbox" {
        println!("{} ({source})", v["note"].as_str().unwrap_or(""));
        println!("{:#}", v["rendered"]);
    } else if v["sent"] == true {
        println!(
            "sent {} to {} through {} ({source}): {}",
            v["touch"].as_str().unwrap_or(""),
            v["to"].as_str().unwrap_or(""),
            v["channel"].as_str().unwrap_or(""),
            v["result"]
        );
    } else {
        println!(
            "not sent through {}: {}",
            v["channel"].as_str().unwrap_or(""),
            v["result"]["error"].as_str().unwrap_or("")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `pause` / `resume`: through the service (which also stops or restarts its sending at
/// once), else into the database file (the next `serve` reads it).
fn pause(
    config: &Config,
    pause: bool,
    store: Option<String>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let store = store_of(config, &store)?;
    let verb = if pause { "pause" } else { "resume" };
    let api = format!("/api/{verb}?store={store}");
    let (v, source) = via_service_or_file(config, "POST", &api, |s| {
        let by = "the command line (service stopped)";
        crate::ops::set_paused(s, &store, pause, by, now).map_err(ops_err)
    })?;
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let since = v["paused_since"].as_str().unwrap_or("");
    let changed = v["changed"] == true;
    match (pause, changed) {
        (true, true) => println!(
            "store {store} paused at {since}: nothing is sent until `upsell-appliance resume --store {store}`; touches falling due meanwhile wait and then follow the misfire policy ({source})"
        ),
        (true, false) => println!(
            "store {store} was already paused (since {since}): nothing is sent until `upsell-appliance resume --store {store}` ({source})"
        ),
        (false, true) => println!(
            "store {store} resumed (paused since {since}): sending again; touches that fell due meanwhile are decided now by the misfire policy (within their grace they go, later ones are skipped as stale) ({source})"
        ),
        (false, false) => println!("store {store} was not paused; nothing changed ({source})"),
    }
    if let Some(n) = v["still_sending"].as_u64().filter(|n| *n > 0) {
        println!(
            "warning: {n} send(s) of store {store} already in flight had not finished after {} s (a provider slow to answer); they end within [outbound] timeout_secs, and no new one starts",
            crate::pipeline::pause::WAIT.as_secs()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn deadletters(config: &Config, action: DeadAction) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let (verb, touch, store, as_json) = match action {
        DeadAction::List { store, json } => ("list", String::new(), store, json),
        DeadAction::Show { touch, store, json } => ("show", touch, store, json),
        DeadAction::Retry { touch, store, json } => ("retry", touch, store, json),
        DeadAction::Drop { touch, store, json } => ("drop", touch, store, json),
    };
    let store = store_of(config, &store)?;
    let (method, api) = match verb {
        "list" => ("GET", format!("/api/deadletters?store={store}")),
        v => (
            if v == "show" { "GET" } else { "POST" },
            format!(
                "/api/deadletters/{v}?store={store}&touch={}",
                percent_encode(&touch)
            ),
        ),
    };
    let (v, source) = via_service_or_file(config, method, &api, |s| {
        match verb {
            "list" => crate::ops::dead_letters(s, &store),
            "show" => crate::ops::dead_letter(s, &store, &touch),
            v => crate::ops::settle_dead_letter(s, &store, &touch, v == "retry", now),
        }
        .map_err(ops_err)
    })?;
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let line = |d: &serde_json::Value| {
        format!(
            "{}  order {}  {} {}  {} attempts  {}",
            d["touch_id"],
            d["order"].as_str().unwrap_or(""),
            d["kind"].as_str().unwrap_or(""),
            d["channel"].as_str().unwrap_or(""),
            d["attempts"],
            d["reason"].as_str().unwrap_or("")
        )
    };
    match verb {
        "list" => {
            let items = v["dead_letters"].as_array().cloned().unwrap_or_default();
            for d in &items {
                println!("{}", line(d));
            }
            println!("{} dead letters in store {store} ({source})", items.len());
        }
        "show" => println!("{}", line(&v)),
        v => println!(
            "touch {touch}: {} ({source})",
            if v == "retry" {
                "due again now"
            } else {
                "dropped"
            }
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn touch(config: &Config, action: TouchAction) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let (resend, touch, at, store, as_json) = match action {
        TouchAction::Opened {
            touch,
            at,
            store,
            json,
        } => (false, touch, at, store, json),
        TouchAction::Resend { touch, store, json } => (true, touch, None, store, json),
    };
    let store = store_of(config, &store)?;
    let mut api = format!(
        "/api/touch/{}?store={store}&touch={}",
        if resend { "resend" } else { "opened" },
        percent_encode(&touch)
    );
    if let Some(at) = &at {
        api += &format!("&at={}", percent_encode(at));
    }
    let (v, source) = via_service_or_file(config, "POST", &api, |s| {
        if resend {
            crate::ops::touch_resend(s, &store, &touch, now).map_err(ops_err)
        } else {
            crate::ops::touch_opened(s, &store, &touch, at.as_deref(), now).map_err(ops_err)
        }
    })?;
    if as_json {
        println!("{v}");
    } else if resend {
        println!(
            "touch {}: sent again as touch {}, due now ({source})",
            v["touch_id"], v["resend_touch_id"]
        );
    } else {
        println!(
            "touch {}: opened at {} ({source})",
            v["touch_id"],
            v["opened_at"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn order(config: &Config, action: OrderAction) -> anyhow::Result<ExitCode> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let OrderAction::Delivered {
        order,
        at,
        store,
        json,
    } = action;
    let store = store_of(config, &store)?;
    let mut api = format!(
        "/api/order/delivered?store={store}&order={}",
        percent_encode(&order)
    );
    if let Some(at) = &at {
        api += &format!("&at={}", percent_encode(at));
    }
    let (v, source) = via_service_or_file(config, "POST", &api, |s| {
        let cfg = config.pick_store(Some(&store))?;
        crate::ops::order_delivered(s, cfg, &order, at.as_deref(), now).map_err(ops_err)
    })?;
    if json {
        println!("{v}");
    } else {
        println!(
            "order {}: delivered at {} ({source})",
            v["order"].as_str().unwrap_or(""),
            v["delivered_at"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}
