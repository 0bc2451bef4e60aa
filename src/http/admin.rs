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
use crate::storage::records::{EventHead, ParsedRecord};
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
        (Method::Get, "/api/quarantine") => quarantine_list(&ctx.storage, store.as_deref()),
        (Method::Post, "/api/quarantine/replay") => {
            quarantine_replay(&ctx.storage, store.as_deref())
        }
        (Method::Get, p) if p.starts_with("/api/quarantine/") => {
            match p["/api/quarantine/".len()..].parse::<u64>() {
                Ok(seq) => match quarantine_show(&ctx.storage, seq) {
                    Ok(None) => {
                        return respond(rq, json(404, &json!({"error": format!("no event {seq}")})))
                    }
                    Ok(Some(v)) => Ok(v),
                    Err(e) => Err(e),
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
        _ => return respond(rq, text(404, "no such admin endpoint\n")),
    };
    match result {
        Ok(v) => respond(rq, json(200, &v)),
        Err(e) => respond(rq, json(500, &json!({"error": e.to_string()}))),
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
    crate::ingest::constant_time_eq(given.trim().as_bytes(), ctx.config.admin_token.as_bytes())
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
    store: Option<&str>,
) -> Result<serde_json::Value, crate::storage::Error> {
    let results = storage.replay_quarantined(store, |head, body| {
        crate::pipeline::record_of(crate::ingest::reparse(head.platform, &head.topic, body))
    })?;
    let items: Vec<_> = results
        .into_iter()
        .map(|(seq, new_seq, parsed)| {
            json!({
                "seq": seq,
                "new_seq": new_seq,
                "result": match parsed {
                    ParsedRecord::Event(_) => "accepted".to_string(),
                    ParsedRecord::Ignored => "ignored".to_string(),
                    ParsedRecord::Unparseable(why) => format!("still unparseable: {why}"),
                },
            })
        })
        .collect();
    Ok(json!({ "replayed": items }))
}
