//! Privacy requests: a customer's data export, their erasure and a store's removal, asked by
//! the platform (Shopify's mandatory topics, which the processor applies in their turn) or
//! on the command line (`customer export|erase`). `storage::privacy` finds and removes the
//! rows; this shapes the export and keeps its file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::engine::{PrivacyRequest, Timestamp};
use crate::storage::privacy::{exports, Footprint, Identity};
use crate::storage::records::EventHead;
use crate::storage::{Error, Snapshot, Storage};

/// Everything held about the customer `fp` describes, as one JSON document: the customer
/// records, their orders (with the thank-you page answer, the conversion an offer earned,
/// a delivery told by hand) with plans and touches (how each went out, and what the
/// customer did with it), the messages sent them, support tickets, suppression entries,
/// and every raw request that named them as received.
/// `snap` is the snapshot the footprint was taken from.
pub fn export_json(snap: &Snapshot, fp: &Footprint, now: Timestamp) -> Result<Value, Error> {
    let mut touches = Vec::new();
    for (id, t) in &fp.touches {
        touches.push(json!({
            "id": id, "touch": t,
            "opened_at": snap.opened(*id)?.map(|t| t.to_rfc3339()),
            "clicks": snap.clicks(*id)?.into_iter()
                .map(|(at, device)| json!({"at": at.to_rfc3339(), "device": device}))
                .collect::<Vec<_>>(),
            "sent_through": snap.receipt(*id)?,
        }));
    }
    let mut orders = Vec::new();
    for (id, state) in &fp.orders {
        orders.push(json!({
            "id": id, "state": state,
            "offer_response": snap.offer_response(&fp.store, id)?,
            "conversion": snap.conversion(&fp.store, id)?,
            "delivered_by_hand_at": snap.delivered_by_hand(&fp.store, id)?.map(|t| t.to_rfc3339()),
        }));
    }
    // Every message sent them, for the frequency caps.
    let mut messages = Vec::new();
    for c in &fp.customers {
        for (at, channel) in snap.sent_messages(&fp.store, c.id, Timestamp(i64::MIN))? {
            messages.push(json!({"at": at.to_rfc3339(), "channel": channel.as_str()}));
        }
    }
    let tickets: Vec<Value> = fp
        .tickets
        .iter()
        .map(|(contact, t)| {
            let mut v = t.json();
            v["contact"] = json!(contact);
            v
        })
        .collect();
    let events: Vec<Value> = fp
        .events
        .iter()
        .map(|(seq, h, body)| {
            let body = body.as_ref().map(|b| match std::str::from_utf8(b) {
                Ok(text) => json!({"text": text}),
                Err(_) => {
                    use base64::Engine as _;
                    json!({"base64": base64::engine::general_purpose::STANDARD.encode(b)})
                }
            });
            json!({
                "seq": seq, "topic": h.topic, "platform": h.platform.as_str(),
                "received_at": h.received_at.to_rfc3339(), "headers": h.headers,
                "body": body,
                "body_note": if body.is_none() { Some("purged after [jobs] payload_retention_days") } else { None },
            })
        })
        .collect();
    let mut doc = json!({
        "store": fp.store,
        "exported_at": now.to_rfc3339(),
        "looked_up_by": {
            "emails": fp.identity.emails, "phones": fp.identity.phones,
            "platform_ids": fp.identity.platform_ids, "orders": fp.identity.orders,
        },
        "found": !fp.is_empty(),
        "customers": fp.customers,
        "orders": orders,
        "plans": fp.plans,
        "touches": touches,
        "messages_sent": messages,
        "tickets": tickets,
        "suppression": fp.suppressions.iter()
            .map(|(key, row)| json!({"key": key, "entry": row}))
            .collect::<Vec<_>>(),
        "events": events,
    });
    readable_currencies(&mut doc);
    Ok(doc)
}

/// Currencies are stored as their three code bytes: in an export, the code.
fn readable_currencies(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                let code = x
                    .as_array()
                    .filter(|a| k.ends_with("currency") && a.len() == 3);
                let code = code.and_then(|a| {
                    a.iter()
                        .map(|b| b.as_u64().and_then(|b| char::from_u32(b as u32)))
                        .collect::<Option<String>>()
                });
                match code {
                    Some(code) => *x = Value::String(code),
                    None => readable_currencies(x),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(readable_currencies),
        _ => {}
    }
}

/// Writes an export into `dir` as `name`, readable by the service's user only, whole or
/// not at all (a temporary file renamed into place after it is synced).
pub fn write_export(dir: &Path, name: &str, doc: &Value) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = serde_json::to_writer_pretty(&mut f, doc)
        .map_err(std::io::Error::other)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// Removes a store's export files that hold one of `who`'s contacts (all of them when
/// `who` is `None`: the store is being removed). Returns how many went.
fn remove_exports(dir: &Path, store: &str, who: Option<&Identity>) -> usize {
    let mut n = 0;
    for f in exports(dir, store) {
        let theirs = match who {
            None => true,
            Some(id) => std::fs::read(&f.path).is_ok_and(|b| id.in_bytes(&b)),
        };
        if theirs && std::fs::remove_file(&f.path).is_ok() {
            n += 1;
        }
    }
    n
}

/// Erases a customer's personal data (see `Storage::erase`) and any export file holding
/// it. The caller holds the apply lock.
pub fn erase(
    storage: &Storage,
    fp: &Footprint,
    now: Timestamp,
    processed: Option<u64>,
) -> Result<crate::storage::privacy::Erased, Error> {
    let done = storage.erase(fp, now, processed)?;
    remove_exports(&storage.exports_dir(), &fp.store, Some(&fp.identity));
    Ok(done)
}

/// Applies a platform's privacy request stored at `seq`, moving the processor's cursor
/// past it in the same durable commit. The caller holds the apply lock.
pub fn apply(
    storage: &Storage,
    seq: u64,
    head: &EventHead,
    request: &PrivacyRequest,
    now: Timestamp,
) -> Result<(), Error> {
    let store = head.store.as_str();
    match request {
        PrivacyRequest::Export {
            person,
            orders,
            request,
        } => {
            let snap = storage.snapshot()?;
            let fp = snap.footprint(store, &Identity::of(person, orders))?;
            let doc = export_json(&snap, &fp, now)?;
            // Named by the request, so applying it again writes the same file.
            // The platform's id, kept to what a file name can safely hold.
            let id: String = request
                .as_deref()
                .unwrap_or("")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .take(64)
                .collect();
            let id = if id.is_empty() {
                format!("seq{seq}")
            } else {
                id
            };
            let name = format!("{store}-data-request-{id}.json");
            let path =
                write_export(&storage.exports_dir(), &name, &doc).map_err(|e| Error::Export {
                    path: storage.exports_dir().join(&name),
                    source: e,
                })?;
            storage.exported(store, now, Some(seq))?;
            log::info!(
                "store {store}: data request {}: export written to {} ({})",
                request.as_deref().unwrap_or("without id"),
                path.display(),
                if fp.is_empty() {
                    "nothing is held about this customer"
                } else {
                    "send it to the store's owner for the customer"
                }
            );
        }
        PrivacyRequest::Erase { person, orders } => {
            let fp = storage
                .snapshot()?
                .footprint(store, &Identity::of(person, orders))?;
            let done = erase(storage, &fp, now, Some(seq))?;
            log::info!(
                "store {store}: customer data erased on the platform's request: {} customer record(s), {} order(s), {} raw request(s); `upsell-appliance compact` (service stopped) removes the old bytes from the database file",
                done.customers, done.orders, done.events
            );
        }
        PrivacyRequest::EraseStore => {
            let rows = storage.erase_store(store, Some(seq))?;
            remove_exports(&storage.exports_dir(), store, None);
            log::warn!(
                "store {store}: the platform asked to remove the store's data (shop/redact): {rows} rows removed; remove the store from the configuration too"
            );
        }
    }
    Ok(())
}
