//! Email engagement reported back (issue 10, part): opens, clicks, bounces, spam complaints
//! and unsubscribes, in Postmark's webhook shapes (`RecordType` Open, Click, Bounce,
//! SpamComplaint, SubscriptionChange; the touch comes from the `Metadata.touch_id` our
//! sends carry) or a documented generic JSON: one object or a list of
//! `{"type": "open"|"click"|"bounce"|"complaint"|"unsubscribe", "touch_id": "123",
//! "email": "...", "at": RFC 3339, "hard": true}` (`touch_id` or `email` as the event needs).

use serde_json::Value;

use crate::engine::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Open,
    Click,
    /// A hard bounce: the address does not take mail.
    Bounce,
    Complaint,
    Unsubscribe,
}

/// One reported engagement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Engagement {
    pub kind: Kind,
    pub touch: Option<u64>,
    pub email: Option<String>,
    pub at: Option<Timestamp>,
}

/// The engagements in a delivery: none for what we do not act on (a delivery receipt, a
/// soft bounce), an error that says what is wrong for what we cannot read.
pub fn parse(body: &[u8]) -> Result<Vec<Engagement>, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not JSON ({e}); send Postmark's webhook JSON or the generic shape in README \"Engagement\""))?;
    let items = match v {
        Value::Array(items) => items,
        one @ Value::Object(_) => vec![one],
        _ => return Err("the body must be a JSON object or a list of them".into()),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let e = if item.get("RecordType").is_some() {
            postmark(item)
        } else {
            generic(item)
        }
        .map_err(|e| format!("item {i}: {e}"))?;
        out.extend(e);
    }
    Ok(out)
}

fn time(v: &Value, keys: &[&str]) -> Result<Option<Timestamp>, String> {
    for k in keys {
        if let Some(s) = v.get(*k).and_then(Value::as_str).filter(|s| !s.is_empty()) {
            return super::wire::parse_time(k, s).map(Some);
        }
    }
    Ok(None)
}

fn touch_of(v: Option<&Value>) -> Result<Option<u64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("touch_id {n} is not a touch id")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("touch_id {s:?} is not a touch id")),
        Some(other) => Err(format!("touch_id {other} is not a touch id")),
    }
}

fn email(v: &Value, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|s| s.contains('@'))
        .map(str::to_string)
}

fn postmark(v: &Value) -> Result<Option<Engagement>, String> {
    let touch = touch_of(v.get("Metadata").and_then(|m| m.get("touch_id")))?;
    let kind = match v["RecordType"].as_str().unwrap_or("") {
        "Open" => Kind::Open,
        "Click" => Kind::Click,
        "Bounce" if v["Type"] == "HardBounce" => Kind::Bounce,
        "SpamComplaint" => Kind::Complaint,
        "SubscriptionChange" if v["SuppressSending"] == true => Kind::Unsubscribe,
        // Delivery, soft bounces, a resubscription: nothing to act on.
        _ => return Ok(None),
    };
    Ok(Some(Engagement {
        kind,
        touch,
        email: email(v, &["Recipient", "Email"]),
        at: time(v, &["ReceivedAt", "BouncedAt", "ChangedAt", "DeliveredAt"])?,
    }))
}

fn generic(v: &Value) -> Result<Option<Engagement>, String> {
    let kind = match v.get("type").and_then(Value::as_str) {
        Some("open") => Kind::Open,
        Some("click") => Kind::Click,
        Some("bounce") if v.get("hard") != Some(&Value::Bool(false)) => Kind::Bounce,
        Some("bounce") => return Ok(None),
        Some("complaint") => Kind::Complaint,
        Some("unsubscribe") => Kind::Unsubscribe,
        Some(t) => {
            return Err(format!(
                "type {t:?} is not one of open, click, bounce, complaint, unsubscribe"
            ))
        }
        None => return Err(
            "no \"type\" (open, click, bounce, complaint, unsubscribe), and no Postmark RecordType"
                .into(),
        ),
    };
    let e = Engagement {
        kind,
        touch: touch_of(v.get("touch_id"))?,
        email: email(v, &["email"]),
        at: time(v, &["at"])?,
    };
    match kind {
        Kind::Open | Kind::Click if e.touch.is_none() => {
            Err("an open or a click needs the touch_id of the message".into())
        }
        Kind::Bounce | Kind::Complaint | Kind::Unsubscribe if e.email.is_none() && e.touch.is_none() => {
            Err("a bounce, complaint or unsubscribe needs the email (or the touch_id of the message)".into())
        }
        _ => Ok(Some(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmark_shapes_are_read() {
        let open = br##"{"RecordType":"Open","MessageStream":"outbound","FirstOpen":true,"Recipient":"lin@example.com","MessageID":"883953f4","ReceivedAt":"2026-11-22T10:00:00Z","Tag":"touch1","Metadata":{"touch_id":"42","order":"#1001"}}"##;
        assert_eq!(
            parse(open).unwrap(),
            [Engagement {
                kind: Kind::Open,
                touch: Some(42),
                email: Some("lin@example.com".into()),
                at: Some(Timestamp(1_795_341_600_000)),
            }]
        );
        let spam = br#"{"RecordType":"SpamComplaint","Email":"lin@example.com","BouncedAt":"2026-11-22T10:00:00Z","Metadata":{"touch_id":"42"}}"#;
        assert_eq!(parse(spam).unwrap()[0].kind, Kind::Complaint);
        let hard = br#"{"RecordType":"Bounce","Type":"HardBounce","Email":"x@example.com","BouncedAt":"2026-11-22T10:00:00Z"}"#;
        assert_eq!(parse(hard).unwrap()[0].kind, Kind::Bounce);
        let soft = br#"{"RecordType":"Bounce","Type":"SoftBounce","Email":"x@example.com"}"#;
        assert_eq!(parse(soft).unwrap(), []);
        let delivery = br#"{"RecordType":"Delivery","Recipient":"x@example.com"}"#;
        assert_eq!(parse(delivery).unwrap(), []);
        let unsub = br#"{"RecordType":"SubscriptionChange","Recipient":"x@example.com","SuppressSending":true,"ChangedAt":"2026-11-22T10:00:00Z"}"#;
        assert_eq!(parse(unsub).unwrap()[0].kind, Kind::Unsubscribe);
    }

    #[test]
    fn the_generic_shape_and_its_errors() {
        let list = br#"[{"type":"click","touch_id":7},{"type":"bounce","email":"a@example.com","hard":false},{"type":"complaint","email":"b@example.com","at":"2026-11-22T10:00:00Z"}]"#;
        let got = parse(list).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].kind, got[0].touch), (Kind::Click, Some(7)));
        assert_eq!(got[1].kind, Kind::Complaint);
        for (body, why) in [
            (&b"nope"[..], "not JSON"),
            (br#"{"type":"open"}"#, "needs the touch_id"),
            (br#"{"type":"complaint"}"#, "needs the email"),
            (br#"{"type":"poke","touch_id":1}"#, "not one of"),
            (br#"{"type":"open","touch_id":"x"}"#, "not a touch id"),
            (
                br#"{"type":"open","touch_id":1,"at":"yesterday"}"#,
                "RFC 3339",
            ),
            (br#"3"#, "object or a list"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }
}
