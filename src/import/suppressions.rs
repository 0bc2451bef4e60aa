//! Suppression list CSV import: an existing list of people never to message (exported from
//! Klaviyo, Mailchimp or a spreadsheet), read whole into contacts plus the rows that could
//! not be used. Parses only; the caller stores the list.

use std::io::Read;

use super::{FileError, RowError, Rows};

/// One usable row: a contact (email or phone, as written) and its reason, if given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuppressionEntry {
    pub line: u64,
    pub contact: String,
    /// The suppression-list key (`email:...` or `phone:...`).
    pub key: String,
    pub reason: Option<String>,
}

/// Reads a suppression file: columns `email` and/or `phone` (at least one), optional
/// `reason` (`unsubscribed`, `complained`, or any text for a manual entry). A row with
/// both gives two entries.
pub fn read_suppressions(
    r: impl Read,
) -> Result<(Vec<SuppressionEntry>, Vec<RowError>), FileError> {
    let rows = Rows::open(r)?;
    let h = &rows.header;
    let email = h.col("email");
    let phone = h.col("phone");
    if email.is_none() && phone.is_none() {
        return Err(FileError::MissingColumn {
            column: "email (or phone)".into(),
            found: h.found(),
        });
    }
    let reason = h.col("reason");
    let (found, bad) = rows.read_all(|row| {
        let why = row.text(reason.as_ref());
        let mut found = Vec::new();
        let mut failed = None;
        for col in [&email, &phone].into_iter().flatten() {
            let Some(v) = row.text(Some(col)) else {
                continue;
            };
            match crate::storage::plans::suppression_key(&v) {
                Ok(key) => found.push(SuppressionEntry {
                    line: row.line,
                    contact: v,
                    key,
                    reason: why.clone(),
                }),
                Err(e) => failed = Some(row.err(col, &v, &e)),
            }
        }
        match (failed, found.is_empty()) {
            (Some(e), _) => Err(e),
            (None, true) => Err(RowError {
                line: row.line,
                column: String::new(),
                value: String::new(),
                message: "has neither an email nor a phone number".into(),
            }),
            (None, false) => Ok(found),
        }
    });
    Ok((found.into_iter().flatten().collect(), bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_emails_phones_and_reasons_and_names_bad_rows() {
        let csv = "Email,Phone,Reason\nAnn@Example.com,,unsubscribed\n,+1 555 010 9999,\nbob@example.com,+15550100000,asked by phone\nnot-an-email,,\n,,just a note\n";
        let (ok, bad) = read_suppressions(csv.as_bytes()).unwrap();
        let keys: Vec<(&str, Option<&str>)> = ok
            .iter()
            .map(|e| (e.key.as_str(), e.reason.as_deref()))
            .collect();
        assert_eq!(
            keys,
            [
                ("email:ann@example.com", Some("unsubscribed")),
                ("phone:+15550109999", None),
                ("email:bob@example.com", Some("asked by phone")),
                ("phone:+15550100000", Some("asked by phone")),
            ]
        );
        assert_eq!(bad.len(), 2);
        assert_eq!((bad[0].line, bad[0].value.as_str()), (5, "not-an-email"));
        assert!(bad[1].message.contains("neither"), "{}", bad[1].message);
    }

    #[test]
    fn a_file_without_contact_columns_is_refused() {
        let err = read_suppressions("name\nann\n".as_bytes()).unwrap_err();
        assert!(err.to_string().contains("email (or phone)"), "{err}");
    }
}
