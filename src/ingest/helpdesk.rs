//! Support tickets from the store's help desk: Gorgias HTTP-integration payloads and a
//! documented generic JSON, one object or a list.
//!
//! - Generic: `{"customer_email": "...", "ticket_id": "T-1", "status": "open"|"closed",
//!   "csat": 1-5|null, "updated_at": RFC 3339}`.
//! - Gorgias: its HTTP integration posts the form the store writes with its template
//!   variables (README "Helpdesk" gives one that yields the generic shape: every value
//!   arrives as a string, an empty one for what the ticket lacks), or a ticket object
//!   `{"ticket": {"id", "status", "customer": {"email"}, "satisfaction_survey": {"score"},
//!   "updated_datetime"}}` (Gorgias's own field names; its times carry no offset and are
//!   UTC).
//!
//! A rating without a status is a closed ticket's (a survey is answered after the close).

use serde_json::Value;

use super::wire::text;
use crate::engine::Timestamp;

/// One ticket as the help desk reports it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketUpdate {
    pub ticket: String,
    /// Lower-cased.
    pub email: String,
    pub open: bool,
    /// 1-5, once rated.
    pub csat: Option<u8>,
    /// When the help desk says the ticket last changed: an older report than one already
    /// applied changes nothing (deliveries come out of order).
    pub at: Option<Timestamp>,
}

const SHAPE: &str = "send the generic shape {\"customer_email\", \"ticket_id\", \"status\": \"open\"|\"closed\", \"csat\": 1-5|null} or Gorgias's ticket (README \"Helpdesk\")";

/// The ticket reports in a delivery, or what is wrong with it.
pub fn parse(body: &[u8]) -> Result<Vec<TicketUpdate>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e}); {SHAPE}"))?;
    let items = match v {
        Value::Array(items) => items,
        one @ Value::Object(_) => vec![one],
        _ => {
            return Err(format!(
                "the body must be a JSON object or a list of them; {SHAPE}"
            ))
        }
    };
    if items.is_empty() {
        return Err(format!("the list is empty; {SHAPE}"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let r = match item.get("ticket").filter(|t| t.is_object()) {
                Some(t) => gorgias(t),
                None => generic(item),
            };
            r.map_err(|e| format!("item {i}: {e}"))
        })
        .collect()
}

fn generic(v: &Value) -> Result<TicketUpdate, String> {
    update(
        text(v.get("ticket_id")),
        text(v.get("customer_email")),
        text(v.get("status")),
        v.get("csat"),
        text(v.get("updated_at")),
        ("ticket_id", "customer_email", "updated_at"),
    )
}

fn gorgias(t: &Value) -> Result<TicketUpdate, String> {
    let email = text(t.pointer("/customer/email")).or_else(|| text(t.get("customer_email")));
    let when = text(t.get("updated_datetime")).or_else(|| text(t.get("closed_datetime")));
    update(
        text(t.get("id")),
        email,
        text(t.get("status")),
        t.pointer("/satisfaction_survey/score"),
        when,
        (
            "ticket.id",
            "ticket.customer.email",
            "ticket.updated_datetime",
        ),
    )
}

fn update(
    ticket: Option<String>,
    email: Option<String>,
    status: Option<String>,
    csat: Option<&Value>,
    at: Option<String>,
    names: (&str, &str, &str),
) -> Result<TicketUpdate, String> {
    let ticket = ticket.ok_or_else(|| format!("{} is missing; {SHAPE}", names.0))?;
    let email = email
        .ok_or_else(|| {
            format!(
                "{} is missing: a ticket is matched to its customer by email",
                names.1
            )
        })?
        .to_lowercase();
    if !email.contains('@') {
        return Err(format!("{} {email:?} is not an email address", names.1));
    }
    let csat = match text(csat) {
        None => None,
        Some(s) => match s.parse::<f64>() {
            Ok(n) if (1.0..=5.0).contains(&n) && n.fract() == 0.0 => Some(n as u8),
            _ => return Err(format!("csat {s:?} is not a rating from 1 to 5")),
        },
    };
    let open = match status.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("open" | "new" | "pending" | "snoozed") => true,
        Some("closed" | "solved" | "resolved") => false,
        // A satisfaction survey answered: the ticket was closed.
        None if csat.is_some() => false,
        None => return Err(format!("status is missing; {SHAPE}")),
        Some(other) => {
            return Err(format!(
                "status {other:?} is not open or closed (Gorgias: open, closed, snoozed)"
            ))
        }
    };
    let at = at
        .map(|s| super::wire::parse_gmt(names.2, &s))
        .transpose()?;
    Ok(TicketUpdate {
        ticket,
        email,
        open,
        csat,
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generic_shape_and_gorgias_template_strings_read_alike() {
        let generic = br#"{"customer_email":"Jane@Example.com","ticket_id":"T-1","status":"closed","csat":2,"updated_at":"2026-11-21T10:00:00Z"}"#;
        let template = br#"{"customer_email":"jane@example.com","ticket_id":"T-1","status":"closed","csat":"2","updated_at":"2026-11-21T10:00:00Z"}"#;
        let a = parse(generic).unwrap();
        assert_eq!(a, parse(template).unwrap());
        assert_eq!(
            a[0],
            TicketUpdate {
                ticket: "T-1".into(),
                email: "jane@example.com".into(),
                open: false,
                csat: Some(2),
                at: Some(Timestamp(1_795_255_200_000)),
            }
        );
        // An empty rating (the survey not answered) is none.
        let open = br#"[{"customer_email":"a@b.co","ticket_id":7,"status":"open","csat":""}]"#;
        let u = &parse(open).unwrap()[0];
        assert!(u.open && u.csat.is_none() && u.ticket == "7");
    }

    #[test]
    fn a_gorgias_ticket_object_reads() {
        let body = br#"{"ticket":{"id":4242,"status":"closed","customer":{"id":9,"email":"jane@example.com"},"satisfaction_survey":{"score":5},"updated_datetime":"2026-11-21T10:00:00.123456"}}"#;
        let u = &parse(body).unwrap()[0];
        assert_eq!(
            (u.ticket.as_str(), u.open, u.csat, u.at),
            ("4242", false, Some(5), Some(Timestamp(1_795_255_200_123)))
        );
        let snoozed = br#"{"ticket":{"id":1,"status":"snoozed","customer":{"email":"a@b.co"}}}"#;
        assert!(parse(snoozed).unwrap()[0].open);
    }

    #[test]
    fn what_is_wrong_is_said() {
        let e = |b: &[u8]| parse(b).unwrap_err();
        assert!(e(b"nope").contains("not JSON"));
        assert!(e(br#"{"ticket_id":"1","status":"open"}"#).contains("customer_email is missing"));
        assert!(
            e(br#"{"customer_email":"a@b.co","status":"open"}"#).contains("ticket_id is missing")
        );
        assert!(
            e(br#"{"customer_email":"a@b.co","ticket_id":"1","status":"lost"}"#)
                .contains("\"lost\" is not open or closed")
        );
        assert!(
            e(br#"{"customer_email":"a@b.co","ticket_id":"1","status":"closed","csat":9}"#)
                .contains("not a rating from 1 to 5")
        );
        // A reopened ticket still carries its survey's score (Gorgias keeps one per ticket).
        let reopened = br#"{"customer_email":"a@b.co","ticket_id":"1","status":"open","csat":1}"#;
        assert!(parse(reopened).unwrap()[0].open);
        assert!(e(
            br#"[{"customer_email":"a@b.co","ticket_id":"1","status":"open"},{"ticket_id":"2"}]"#
        )
        .starts_with("item 1:"));
        // A rating alone closes.
        let rated = br#"{"customer_email":"a@b.co","ticket_id":"1","csat":1}"#;
        assert!(!parse(rated).unwrap()[0].open);
    }
}
