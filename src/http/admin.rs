//! The private admin listener (loopback by default): `/api/*` for the CLI and scripts,
//! everything behind `Authorization: Bearer <admin_token>`.
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

use super::{header, headers_of, json, respond, text};
use crate::config::Config;
use crate::pipeline::writer::Health;
use crate::storage::Storage;

pub struct AdminCtx {
    pub config: Arc<Config>,
    pub storage: Arc<Storage>,
    pub health: Arc<Health>,
    pub started: Instant,
}

pub fn handle(ctx: &AdminCtx, rq: Request) {
    if !authorized(ctx, &rq) {
        let resp = text(401, "missing or wrong admin token: send Authorization: Bearer <admin_token from the config>\n")
            .with_header(header("WWW-Authenticate", "Bearer"));
        respond(rq, resp);
        return;
    }
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    match (rq.method(), path.as_str()) {
        (Method::Get, "/api/status") => status(ctx, rq),
        _ => respond(rq, text(404, "no such admin endpoint\n")),
    }
}

fn authorized(ctx: &AdminCtx, rq: &Request) -> bool {
    let headers = headers_of(rq);
    let Some(given) = headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), ctx.config.admin_token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body of `GET /api/status`, shared with the CLI when it opens the database itself.
pub fn status_json(
    config: &Config,
    storage: &Storage,
    writable: Option<bool>,
) -> Result<serde_json::Value, crate::storage::Error> {
    let ids: Vec<&str> = config.stores.iter().map(|s| s.id.as_str()).collect();
    let stores = storage.status(&ids)?;
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "stores": stores,
        "events": {
            "stored": storage.last_seq()?,
            "processed": storage.processed_seq()?,
        },
        "storage_writable": writable,
    }))
}

fn status(ctx: &AdminCtx, rq: Request) {
    let writable = ctx.health.writable.load(Ordering::Relaxed);
    match status_json(&ctx.config, &ctx.storage, Some(writable)) {
        Ok(mut v) => {
            v["uptime_seconds"] = json!(ctx.started.elapsed().as_secs());
            respond(rq, json(200, &v))
        }
        Err(e) => respond(rq, json(500, &json!({"error": e.to_string()}))),
    }
}
