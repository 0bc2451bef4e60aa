//! The private admin listener (loopback by default): `/api/*` for the CLI and scripts and
//! `/metrics` for Prometheus, everything behind `Authorization: Bearer <admin_token>`.
//!
//! The contract for every admin endpoint: request bodies are read as streams straight from
//! the socket (no `max_body_kb` cap: imports can be hundreds of MB) and large responses
//! are streamed with chunked encoding, so the CLI gives the same results whether it talks
//! to a running service or opens the database itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tiny_http::{Method, Request};

use super::{header, headers_of, json, page, respond, text};
use crate::clock::Clock;
use crate::config::Config;
use crate::engine::{Platform, Timestamp};
use crate::pipeline::writer::Health;
use crate::storage::records::{EventHead, ParsedRecord};
use crate::storage::{Storage, StoreStatus};

pub struct AdminCtx {
    pub config: Arc<Config>,
    pub storage: Arc<Storage>,
    pub health: Arc<Health>,
    /// The writer's group commits, for `/metrics`.
    pub commits: Arc<crate::metrics::Commits>,
    pub started: Instant,
    pub clock: Arc<dyn Clock>,
    /// What the scheduler reports (start-up catch-up, rounds, its last error).
    pub scheduler: crate::pipeline::scheduler::SharedReport,
    /// Each store's pause, as the scheduler reads it before every send.
    pub pauses: Arc<crate::pipeline::pause::Pauses>,
    /// Each store's lift section of the status page, and when it was made: the report
    /// reads the period's orders, so the page (which reloads every 30 s) makes it at most
    /// every few minutes.
    pub lift: std::sync::Mutex<std::collections::HashMap<String, (Instant, String)>>,
    /// The stores' platform APIs (`POST /api/sync`).
    pub apis: crate::pipeline::sync::Apis,
}

pub fn handle(ctx: &AdminCtx, rq: Request) {
    // The status page signs in with a form and a cookie, so a browser can open it.
    match (rq.method(), rq.url()) {
        (Method::Get | Method::Head, "/") => return page::status(ctx, rq),
        (Method::Get, "/admin.css") => return page::css(rq),
        (Method::Post, "/login") => return page::login(ctx, rq),
        (Method::Post, "/logout") => return page::logout(rq),
        _ => {}
    }
    if !bearer_ok(ctx, &rq) {
        let resp = text(401, "missing or wrong admin token: send Authorization: Bearer <admin_token from the config>\n")
            .with_header(header("WWW-Authenticate", "Bearer"));
        respond(rq, resp);
        return;
    }
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    let query = rq
        .url()
        .split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default();
    let store = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("store="))
        .map(str::to_string);
    let result = match (rq.method(), path.as_str()) {
        (Method::Get, "/api/status") => return status(ctx, rq),
        (Method::Get, "/metrics") => return metrics(ctx, rq),
        (Method::Get, "/api/quarantine") => {
            quarantine_list(&ctx.storage, store.as_deref()).map_err(Into::into)
        }
        (Method::Post, "/api/quarantine/replay") => {
            quarantine_replay(&ctx.storage, &ctx.config, store.as_deref()).map_err(Into::into)
        }
        (Method::Get, p) if p.starts_with("/api/quarantine/") => {
            match p["/api/quarantine/".len()..].parse::<u64>() {
                Ok(seq) => match quarantine_show(&ctx.storage, seq) {
                    Ok(None) => {
                        return respond(rq, json(404, &json!({"error": format!("no event {seq}")})))
                    }
                    Ok(Some(v)) => Ok(v),
                    Err(e) => Err(e.into()),
                },
                Err(_) => {
                    return respond(
                        rq,
                        json(
                            400,
                            &json!({"error": "the event number must be an integer"}),
                        ),
                    )
                }
            }
        }
        (Method::Get, "/api/affinity/export") => return affinity_export(ctx, rq, &query),
        (Method::Get, "/api/backup") => return backup(ctx, rq),
        (Method::Get, "/api/affinity/show") => match pick(ctx, &query) {
            Ok(store) => {
                let product =
                    super::page::form_value(query.as_bytes(), "product").unwrap_or_default();
                crate::ops::affinity_show(
                    &ctx.storage,
                    &ctx.config,
                    &store,
                    &product,
                    ctx.clock.now(),
                )
            }
            Err(e) => Err(e),
        },
        (Method::Post, "/api/affinity/rebuild") => match pick(ctx, &query) {
            Ok(store) => crate::ops::affinity_rebuild(&ctx.storage, &ctx.config, &store),
            Err(e) => Err(e),
        },
        (Method::Get, "/api/explain") => pick(ctx, &query).and_then(|store| {
            let order = super::page::form_value(query.as_bytes(), "order").unwrap_or_default();
            crate::ops::explain(&ctx.storage, &store, &order)
        }),
        (Method::Get | Method::Post, p) if p.starts_with("/api/customer/") => {
            let action = &p["/api/customer/".len()..];
            let arg = |k: &str| super::page::form_value(query.as_bytes(), k);
            let contact = arg("contact").unwrap_or_default();
            pick(ctx, &query).and_then(|store| match (rq.method(), action) {
                (Method::Get, "show") => crate::ops::customer_show(&ctx.storage, &store, &contact),
                (Method::Post, "suppress") => crate::ops::customer_suppress(
                    &ctx.storage,
                    &store,
                    &contact,
                    arg("reason").as_deref(),
                    ctx.clock.now(),
                ),
                (Method::Post, "unsuppress") => {
                    crate::ops::customer_unsuppress(&ctx.storage, &store, &contact)
                }
                (Method::Post, "clear") => {
                    crate::ops::customer_clear(&ctx.storage, &store, &contact, ctx.clock.now())
                }
                (Method::Get, "export") => {
                    crate::ops::customer_export(&ctx.storage, &store, &contact, ctx.clock.now())
                }
                (Method::Post, "erase") => match arg("yes").as_deref() {
                    None | Some("false") => Ok(false),
                    Some("true") => Ok(true),
                    Some(other) => Err(crate::ops::OpsError::Invalid(format!(
                        "yes={other:?}: give yes=true to erase, or leave it out to see what would go"
                    ))),
                }
                .and_then(|yes| {
                    crate::ops::customer_erase(&ctx.storage, &store, &contact, yes, ctx.clock.now())
                }),
                (Method::Post, "ticket-open" | "ticket-close") => {
                    let csat = match arg("csat").map(|c| c.parse::<u8>()) {
                        None => Ok(None),
                        Some(Ok(c)) => Ok(Some(c)),
                        Some(Err(_)) => Err(crate::ops::OpsError::Invalid(
                            "csat must be a rating from 1 to 5".into(),
                        )),
                    };
                    csat.and_then(|csat| {
                        crate::ops::customer_ticket(
                            &ctx.storage,
                            &store,
                            &contact,
                            &arg("ticket").unwrap_or_default(),
                            action == "ticket-open",
                            csat,
                            ctx.clock.now(),
                        )
                    })
                }
                _ => Err(crate::ops::OpsError::Invalid(
                    "use GET /api/customer/show or export, or POST /api/customer/suppress, unsuppress, ticket-open, ticket-close, clear or erase".into(),
                )),
            })
        }
        (Method::Post, "/api/offer/accept" | "/api/offer/decline") => {
            let accepted = path == "/api/offer/accept";
            pick(ctx, &query).and_then(|store| {
                let order = super::page::form_value(query.as_bytes(), "order").unwrap_or_default();
                crate::ops::offer_response(&ctx.storage, &store, &order, accepted, ctx.clock.now())
            })
        }
        (Method::Get, "/api/offer/widget") => pick(ctx, &query)
            .and_then(|store| crate::ops::offer_widget(&ctx.storage, &ctx.config, &store)),
        (Method::Get, "/api/deadletters") => {
            pick(ctx, &query).and_then(|store| crate::ops::dead_letters(&ctx.storage, &store))
        }
        (Method::Get, "/api/deadletters/show") => pick(ctx, &query).and_then(|store| {
            let touch = super::page::form_value(query.as_bytes(), "touch").unwrap_or_default();
            crate::ops::dead_letter(&ctx.storage, &store, &touch)
        }),
        (Method::Post, "/api/deadletters/retry" | "/api/deadletters/drop") => {
            let retry = path == "/api/deadletters/retry";
            pick(ctx, &query).and_then(|store| {
                let touch = super::page::form_value(query.as_bytes(), "touch").unwrap_or_default();
                crate::ops::settle_dead_letter(&ctx.storage, &store, &touch, retry, ctx.clock.now())
            })
        }
        (Method::Post, "/api/sync") => pick(ctx, &query).and_then(|store| {
            crate::ops::sync(
                &ctx.storage,
                &ctx.config,
                &store,
                &ctx.apis,
                ctx.clock.as_ref(),
            )
        }),
        (Method::Post, "/api/pause" | "/api/resume") => pick(ctx, &query).and_then(|store| {
            let pause = path == "/api/pause";
            // Durable first, so a restart from here on keeps it; then the scheduler's flag,
            // waiting for the sends in flight: when this answers, nothing more is sent.
            let (mut v, left) =
                ctx.pauses
                    .set(&store, pause, crate::pipeline::pause::WAIT, || {
                        crate::ops::set_paused(
                            &ctx.storage,
                            &store,
                            pause,
                            "the admin API",
                            ctx.clock.now(),
                        )
                    })?;
            v["still_sending"] = json!(left);
            Ok(v)
        }),
        (Method::Get, "/api/replay") => pick_config(ctx, &query).and_then(|cfg| {
            let arg = |k: &str| super::page::form_value(query.as_bytes(), k);
            crate::ops::replay(
                &ctx.storage,
                &ctx.config,
                cfg,
                arg("from").as_deref(),
                arg("to").as_deref(),
                ctx.clock.now(),
            )
        }),
        (Method::Get, "/api/report") => pick_config(ctx, &query).and_then(|cfg| {
            let arg = |k: &str| super::page::form_value(query.as_bytes(), k);
            crate::ops::report(
                &ctx.storage,
                &ctx.config,
                cfg,
                arg("since").as_deref(),
                arg("until").as_deref(),
                ctx.clock.now(),
            )
        }),
        (Method::Post, "/api/send-test") => pick_config(ctx, &query).and_then(|cfg| {
            let arg = |k: &str| super::page::form_value(query.as_bytes(), k).unwrap_or_default();
            crate::ops::send_test(
                &ctx.storage,
                &ctx.config,
                cfg,
                &arg("touch"),
                &arg("to"),
                ctx.clock.now(),
            )
        }),
        (Method::Post, "/api/touch/opened" | "/api/touch/resend") => {
            let resend = path == "/api/touch/resend";
            pick(ctx, &query).and_then(|store| {
                let arg = |k: &str| super::page::form_value(query.as_bytes(), k);
                let touch = arg("touch").unwrap_or_default();
                if resend {
                    crate::ops::touch_resend(&ctx.storage, &store, &touch, ctx.clock.now())
                } else {
                    crate::ops::touch_opened(
                        &ctx.storage,
                        &store,
                        &touch,
                        arg("at").as_deref(),
                        ctx.clock.now(),
                    )
                }
            })
        }
        (Method::Post, "/api/order/delivered") => pick_config(ctx, &query).and_then(|cfg| {
            let arg = |k: &str| super::page::form_value(query.as_bytes(), k);
            crate::ops::order_delivered(
                &ctx.storage,
                cfg,
                &arg("order").unwrap_or_default(),
                arg("at").as_deref(),
                ctx.clock.now(),
            )
        }),
        (Method::Post, p) if p.starts_with("/api/import/") => {
            let kind = p["/api/import/".len()..].to_string();
            return import(ctx, rq, &kind, &query);
        }
        _ => return respond(rq, text(404, "no such admin endpoint\n")),
    };
    let result = result.map_err(|e| match e {
        crate::ops::OpsError::Invalid(m) => (400, m),
        e @ crate::ops::OpsError::Storage(crate::storage::Error::Purged(_)) => (410, e.to_string()),
        e => (500, e.to_string()),
    });
    match result {
        Ok(v) => respond(rq, json(200, &v)),
        Err((status, e)) => respond(rq, json(status, &json!({"error": e}))),
    }
}

/// The store a request is about: `store=` or the only one.
fn pick(ctx: &AdminCtx, query: &str) -> Result<String, crate::ops::OpsError> {
    pick_config(ctx, query).map(|s| s.id.clone())
}

/// The configuration of the store `?store=` names (or the only one).
fn pick_config<'c>(
    ctx: &'c AdminCtx,
    query: &str,
) -> Result<&'c crate::config::StoreConfig, crate::ops::OpsError> {
    let store = super::page::form_value(query.as_bytes(), "store");
    ctx.config
        .pick_store(store.as_deref())
        .map_err(|e| crate::ops::OpsError::Invalid(e.message))
}

/// Streams the export through a pipe: a thread writes rows as it reads them.
fn affinity_export(ctx: &AdminCtx, rq: Request, query: &str) {
    let q = |k: &str| super::page::form_value(query.as_bytes(), k);
    let parsed = (|| {
        let store = pick(ctx, query)?;
        let format = crate::ops::Format::parse(q("format").as_deref().unwrap_or("csv"))?;
        let decay = crate::ops::DecayChoice::parse(q("decay").as_deref().unwrap_or("none"))?;
        Ok::<_, crate::ops::OpsError>((store, format, decay))
    })();
    let (store, format, decay) = match parsed {
        Ok(x) => x,
        Err(e) => return respond(rq, json(400, &json!({"error": e.to_string()}))),
    };
    let (storage, config, now) = (ctx.storage.clone(), ctx.config.clone(), ctx.clock.now());
    let content_type = match format {
        crate::ops::Format::Csv => "text/csv; charset=utf-8",
        crate::ops::Format::Json => "application/x-ndjson",
    };
    stream(rq, "affinity export", content_type, move |w| {
        crate::ops::affinity_export(&storage, &config, &store, format, decay, now, w)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

/// A consistent snapshot of the whole database (`storage::backup`), streamed as it is read:
/// the service cannot write outside its state directory, so the CLI writes the file.
fn backup(ctx: &AdminCtx, rq: Request) {
    let (storage, now) = (ctx.storage.clone(), ctx.clock.now());
    stream(rq, "backup", "application/octet-stream", move |w| {
        storage
            .backup(w, now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

/// Answers 200 with a body that `write` produces on its own thread, through a pipe, so
/// nothing is held in memory. A failure part way ends the body early and is logged; the
/// formats streamed this way let the reader tell (a backup's end mark and checksum).
fn stream(
    rq: Request,
    what: &'static str,
    content_type: &str,
    write: impl FnOnce(&mut dyn std::io::Write) -> Result<(), String> + Send + 'static,
) {
    let (reader, mut writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return respond(rq, json(500, &json!({"error": e.to_string()}))),
    };
    let spawned = std::thread::Builder::new()
        .name(what.into())
        .spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, &mut writer);
            if let Err(e) = write(&mut out)
                .and_then(|()| std::io::Write::flush(&mut out).map_err(|e| e.to_string()))
            {
                log::error!("{what}: {e}");
            }
        });
    if let Err(e) = spawned {
        return respond(rq, json(500, &json!({"error": e.to_string()})));
    }
    let resp = tiny_http::Response::new(
        tiny_http::StatusCode(200),
        vec![header("Content-Type", content_type)],
        reader,
        None,
        None,
    );
    respond(rq, resp);
}

/// Spools an uploaded CSV into the data directory, then imports it like the CLI does
/// against the file (two passes need a file to read twice).
fn import(ctx: &AdminCtx, mut rq: Request, kind: &str, query: &str) {
    let store = match pick(ctx, query) {
        Ok(s) => s,
        Err(e) => return respond(rq, json(400, &json!({"error": e.to_string()}))),
    };
    if !matches!(kind, "orders" | "catalog" | "pairings" | "suppressions") {
        return respond(
            rq,
            text(
                404,
                "no such import: use orders, catalog, pairings or suppressions\n",
            ),
        );
    }
    let skip = super::page::form_value(query.as_bytes(), "skip_bad_rows").as_deref() == Some("1");
    let spool = ctx
        .config
        .data_dir
        .join(format!("upload-{}.csv", crate::config::random_token()));
    let copied = std::fs::File::create(&spool)
        .and_then(|mut f| std::io::copy(rq.as_reader(), &mut f).and_then(|_| f.sync_all()));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&spool);
        return respond(
            rq,
            json(
                500,
                &json!({"error": format!("could not receive the file into {}: {e}", ctx.config.data_dir.display())}),
            ),
        );
    }
    let (storage, config) = (&ctx.storage, &ctx.config);
    // Messages and records name the operator's file, not the spool copy.
    let name = super::page::form_value(query.as_bytes(), "name").unwrap_or_else(|| "upload".into());
    let spool_name = spool.display().to_string();
    let result = match kind {
        "orders" => crate::ops::import_orders(storage, config, &store, &spool, skip, &mut |_| {}),
        "catalog" => crate::ops::import_catalog(storage, config, &store, &spool),
        "suppressions" => {
            crate::ops::import_suppressions(storage, &store, &spool, &name, ctx.clock.now())
        }
        _ => crate::ops::import_pairings(storage, &store, &spool),
    };
    let _ = std::fs::remove_file(&spool);
    let named = |m: String| m.replace(&spool_name, &name);
    match result {
        Ok(mut v) => {
            if v.get("file").is_some() {
                v["file"] = json!(name);
            }
            respond(rq, json(200, &v))
        }
        Err(crate::ops::OpsError::Invalid(m)) => {
            respond(rq, json(400, &json!({"error": named(m)})))
        }
        Err(e) => respond(rq, json(500, &json!({"error": named(e.to_string())}))),
    }
}

/// Whether the request carries `Authorization: Bearer <admin_token>`.
pub fn bearer_ok(ctx: &AdminCtx, rq: &Request) -> bool {
    let headers = headers_of(rq);
    let Some(given) = headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    crate::ingest::constant_time_eq(given.trim().as_bytes(), ctx.config.admin_token.as_bytes())
}

/// What `/api/status`, the status page and `status` show, read in one go.
pub struct Report {
    pub stores: Vec<StoreStatus>,
    pub stored: u64,
    pub processed: u64,
    pub notices: Vec<Notice>,
}

/// Reads the report. `writable` is the writer's health (unknown without the service).
pub fn report(
    config: &Config,
    storage: &Storage,
    writable: Option<bool>,
    now: Timestamp,
) -> Result<Report, crate::storage::Error> {
    let ids: Vec<&str> = config.stores.iter().map(|s| s.id.as_str()).collect();
    let mut stores = storage.status(&ids)?;
    for (st, cfg) in stores.iter_mut().zip(&config.stores) {
        st.mode = cfg.mode.as_str().to_string();
    }
    let (stored, processed) = (storage.last_seq()?, storage.processed_seq()?);
    let notices = notices(
        config,
        &stores,
        stored.saturating_sub(processed),
        writable,
        now,
    );
    Ok(Report {
        stores,
        stored,
        processed,
        notices,
    })
}

/// The body of `GET /api/status`, shared with the CLI when it opens the database itself.
pub fn status_json(
    config: &Config,
    storage: &Storage,
    writable: Option<bool>,
    now: Timestamp,
) -> Result<serde_json::Value, crate::storage::Error> {
    let r = report(config, storage, writable, now)?;
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": now.to_rfc3339(),
        "stores": r.stores,
        "events": {
            "stored": r.stored,
            "processed": r.processed,
        },
        "storage_writable": writable,
        "notices": r.notices,
    }))
}

/// Something the operator should know or do, in plain words.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Notice {
    /// `"bad"` (webhooks are being lost or refused now), `"warn"` (look into it soon) or
    /// `"info"`.
    pub level: String,
    pub text: String,
}

/// Events waiting for the processor beyond which the status says so.
const BEHIND: u64 = 10_000;
/// A store quiet for longer than this may have lost its webhook subscription.
const QUIET_MS: i64 = 3 * 86_400_000;
/// Signature refusals are reported for this long after the last one.
const REJECTED_MS: i64 = 86_400_000;
/// Orders the sync found missing are reported for this long.
const FOUND_MS: i64 = 7 * 86_400_000;

/// What needs the operator's attention, worst first; empty when all is well.
pub fn notices(
    config: &Config,
    stores: &[StoreStatus],
    behind: u64,
    writable: Option<bool>,
    now: Timestamp,
) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut say = |level: &str, text: String| {
        out.push(Notice {
            level: level.to_string(),
            text,
        })
    };
    if writable == Some(false) {
        say("bad", format!(
            "The database refused the last write (is the disk full?), so webhooks are answered 503 and the platforms retry them for now. Free space on the disk holding {}, then restart the service (systemctl restart upsell-appliance).",
            config.data_dir.display()
        ));
    }
    if behind > BEHIND {
        say("warn", format!(
            "{behind} received events wait to be processed. If the number does not shrink from one look to the next, read the log (journalctl -u upsell-appliance)."
        ));
    }
    for (cfg, st) in config.stores.iter().zip(stores) {
        let id = &cfg.id;
        let platform = cfg.platform.name();
        for f in &st.privacy.exports {
            say("info", format!(
                "Store {id}: a privacy export is waiting in {} (written {}): send it to whoever asked (the platform's data request reaches the store's owner), then delete the file.",
                f.path, f.written_at
            ));
        }
        // Whether anything reaches the store's customers comes first.
        if let Some(since) = &st.paused_since {
            say("warn", format!(
                "Store {id}: PAUSED since {since} — nothing is sent{}. Touches falling due meanwhile wait; `upsell-appliance resume --store {id}` sends again, and they then follow the misfire policy (within their grace they go, later ones are skipped as stale).",
                st.paused_by.as_deref().map_or(String::new(), |by| format!(" (paused through {by})"))
            ));
        }
        if cfg.mode == crate::config::Mode::DryRun {
            say("warn", format!(
                "Store {id}: DRY RUN: touches go to the outbox only; nothing reaches customers. {}",
                match &config.origin {
                    crate::config::Origin::File(p) => format!("Set mode = \"live\" for this store in {} and restart to send.", p.display()),
                    crate::config::Origin::Demo => "The built-in demo always is; `upsell-appliance init` writes a configuration of your own.".to_string(),
                }
            ));
        }
        let last_rejected = st
            .last_rejected_at
            .as_deref()
            .and_then(millis_of)
            .filter(|at| now.0 - at <= REJECTED_MS);
        let last_accepted = st.last_webhook_at.as_deref().and_then(millis_of);
        if let Some(at) = last_rejected {
            // Deliveries that fail their signature say more than silence: subscribing
            // again would only add a second subscription signed with the same secret.
            say(if last_accepted.is_none() { "bad" } else { "warn" }, format!(
                "Store {id}: deliveries are being refused for a missing or wrong signature ({} in all, the last {}{}). If they come from your store, webhook_secrets does not hold the secret it signs with: {}.",
                st.webhooks.rejected,
                ago(now, at),
                if last_accepted.is_none() { "; none has been accepted yet" } else { "" },
                match cfg.platform {
                    Platform::Shopify => "the app's client secret".to_string(),
                    Platform::WooCommerce => "the webhook's secret under Settings > Advanced > Webhooks".to_string(),
                    Platform::BigCommerce => format!("the value of the {} header given when the webhook was created", cfg.webhook_secret_header),
                }
            ));
        }
        match last_accepted {
            _ if last_rejected.is_some() => {}
            None => say("warn", format!(
                "Store {id}: no webhook has arrived yet. {}",
                if cfg.api.is_some() {
                    format!("`upsell-appliance connect --store {id}` subscribes {}/webhooks/{id} to the order topics.", config.public_url)
                } else {
                    format!("In the {platform} admin, subscribe {}/webhooks/{id} to the order topics, or give the store [stores.api] credentials and run `upsell-appliance connect --store {id}` (README, \"Connect a store\").", config.public_url)
                }
            )),
            Some(at) if now.0 - at > QUIET_MS => say("warn", format!(
                "Store {id}: the last webhook arrived {}. If the store has had orders since, {}",
                ago(now, at),
                match cfg.platform {
                    Platform::Shopify => "Shopify may have deleted the subscription (it does after 8 failed retries over 4 hours); check it under Settings > Notifications > Webhooks or in the app.",
                    Platform::WooCommerce => "WooCommerce may have disabled the webhook (it does after 5 failed deliveries in a row); check its status under Settings > Advanced > Webhooks.",
                    Platform::BigCommerce => "BigCommerce may have deactivated the webhook (it does after about 48 hours of failed retries); check it through the Webhooks API.",
                }
            )),
            Some(_) => {}
        }
        if let Some(sync) = &st.sync {
            if !sync.missing_subscriptions.is_empty() {
                say("bad", format!(
                    "Store {id}: {platform} holds no active webhook subscription to this appliance for {} (checked {}): {}. Until `upsell-appliance connect --store {id}` repairs it, what they would bring arrives only through the sync (`[jobs] sync` = {}).",
                    sync.missing_subscriptions.join(", "),
                    sync.subscriptions_checked_at.as_deref().and_then(millis_of).map_or("at the last sync".into(), |at| ago(now, at)),
                    match cfg.platform {
                        Platform::Shopify => "Shopify deletes a subscription after 8 failed retries over 4 hours",
                        Platform::WooCommerce => "WooCommerce disables a webhook after 5 failed deliveries in a row",
                        Platform::BigCommerce => "BigCommerce deactivates a webhook after about 48 hours of failed retries",
                    },
                    config.jobs.sync.as_str()
                ));
            }
            if let (Some(at), Some(why)) = (
                sync.last_error_at.as_deref().and_then(millis_of),
                &sync.last_error,
            ) {
                say("warn", format!(
                    "Store {id}: the last sync with {platform}'s API failed {}: {why}. Orders whose webhooks were lost are not found meanwhile; `upsell-appliance sync --store {id}` tries again.",
                    ago(now, at)
                ));
            }
            if let Some(at) = sync
                .last_found_at
                .as_deref()
                .and_then(millis_of)
                .filter(|at| now.0 - at <= FOUND_MS)
            {
                say("warn", format!(
                    "Store {id}: the sync found {} order(s) whose webhooks never arrived ({}; {} in all); they were processed, marked reconciled. If it keeps happening, check that {} reaches this appliance and run `upsell-appliance connect --store {id}`.",
                    sync.last_found,
                    ago(now, at),
                    sync.found_total,
                    config.public_url
                ));
            }
        }
        if st.in_quarantine > 0 {
            say("warn", format!(
                "Store {id}: signed deliveries that could not be parsed or applied wait in quarantine ({}). `upsell-appliance quarantine list --store {id}` shows them and why; once the cause is fixed (an upgrade, a directory it could not write), `upsell-appliance quarantine replay --store {id}` tries them again.",
                st.in_quarantine
            ));
        }
    }
    if config.origin == crate::config::Origin::Demo {
        say("info", format!(
            "This is the built-in demo configuration (data in {}): nothing here is a real store. `upsell-appliance init` writes a real configuration.",
            config.data_dir.display()
        ));
    }
    out.sort_by_key(|n| match n.level.as_str() {
        "bad" => 0,
        "warn" => 1,
        _ => 2,
    });
    out
}

/// Milliseconds since the epoch of an RFC 3339 time from the status.
pub fn millis_of(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// "just now", "5 minutes ago", "3 hours ago", "2 days ago".
pub fn ago(now: Timestamp, at_ms: i64) -> String {
    let secs = (now.0 - at_ms).max(0) / 1000;
    let (n, unit) = match secs {
        0..=59 => return "just now".to_string(),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

fn status(ctx: &AdminCtx, rq: Request) {
    let writable = ctx.health.writable.load(Ordering::Relaxed);
    match status_json(&ctx.config, &ctx.storage, Some(writable), ctx.clock.now()) {
        Ok(mut v) => {
            v["uptime_seconds"] = json!(ctx.started.elapsed().as_secs());
            v["scheduler"] = json!(*ctx.scheduler.lock().unwrap_or_else(|p| p.into_inner()));
            respond(rq, json(200, &v))
        }
        Err(e) => respond(rq, json(500, &json!({"error": e.to_string()}))),
    }
}

/// `GET /metrics`: the stores' figures from one read snapshot, in Prometheus's format.
fn metrics(ctx: &AdminCtx, rq: Request) {
    let ids: Vec<&str> = ctx.config.stores.iter().map(|s| s.id.as_str()).collect();
    let body = ctx
        .storage
        .status(&ids)
        .map_err(|e| e.to_string())
        .and_then(|stores| {
            crate::metrics::render(
                &ctx.config,
                &stores,
                &ctx.commits,
                crate::metrics::resident_bytes(),
            )
            .map_err(|e| e.to_string())
        });
    match body {
        Ok(body) => respond(
            rq,
            text(200, &body).with_header(header("Content-Type", crate::metrics::CONTENT_TYPE)),
        ),
        Err(e) => respond(rq, text(500, &format!("{e}\n"))),
    }
}

fn head_json(seq: u64, h: &EventHead) -> serde_json::Value {
    json!({
        "seq": seq,
        "store": h.store,
        "platform": h.platform.as_str(),
        "topic": h.topic,
        "dedupe_key": h.dedupe_key,
        "received_at": h.received_at.to_rfc3339(),
        "reason": match &h.parsed {
            ParsedRecord::Unparseable(why) => Some(why.as_str()),
            _ => None,
        },
    })
}

/// `GET /api/quarantine`: the quarantined deliveries, oldest first.
pub fn quarantine_list(
    storage: &Storage,
    store: Option<&str>,
) -> Result<serde_json::Value, crate::storage::Error> {
    let items: Vec<_> = storage
        .quarantined(store)?
        .iter()
        .map(|(seq, h)| head_json(*seq, h))
        .collect();
    Ok(json!({ "quarantined": items }))
}

/// `GET /api/quarantine/{seq}`: one stored delivery with its headers and raw body.
pub fn quarantine_show(
    storage: &Storage,
    seq: u64,
) -> Result<Option<serde_json::Value>, crate::storage::Error> {
    Ok(storage.event(seq)?.map(|rec| {
        let mut v = head_json(seq, &rec.head);
        v["headers"] = json!(rec.head.headers);
        v["body"] = json!(String::from_utf8_lossy(&rec.body));
        v
    }))
}

/// `POST /api/quarantine/replay`: runs this build's parsers on the quarantined deliveries.
pub fn quarantine_replay(
    storage: &Storage,
    config: &Config,
    store: Option<&str>,
) -> Result<serde_json::Value, crate::storage::Error> {
    let results = storage.replay_quarantined(store, |head, body| {
        let shop = config.store(&head.store).map(|s| s.domain.as_str());
        crate::pipeline::record_of(crate::ingest::reparse(
            head.platform,
            &head.topic,
            body,
            shop,
        ))
    })?;
    let items: Vec<_> = results
        .into_iter()
        .map(|(seq, new_seq, parsed)| {
            json!({
                "seq": seq,
                "new_seq": new_seq,
                "result": match parsed {
                    ParsedRecord::Event(_) | ParsedRecord::Privacy(_) => "accepted".to_string(),
                    ParsedRecord::Ignored => "ignored".to_string(),
                    ParsedRecord::Unparseable(why) => format!("still unparseable: {why}"),
                },
            })
        })
        .collect();
    Ok(json!({ "replayed": items }))
}
