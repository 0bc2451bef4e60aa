//! CSV imports: streaming parsers that turn a store's exported files (catalog, orders,
//! manual pairings) into engine values, with errors that name the line, the column and
//! the value so a store owner can fix the file.
//!
//! Parsing only: these modules read the `Read` they are given and nothing else. They never
//! touch storage, open files, read a clock or print; the caller decides what to do with
//! each value and each error. One bad row never stops a file: it becomes a [`RowError`]
//! and the reader moves on. Only a file that cannot be read as a whole is a [`FileError`].

pub mod catalog;
pub mod orders;
pub mod pairings;
pub mod suppressions;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;

use csv::{ByteRecord, StringRecord};

use crate::engine::{Currency, MoneyError, Timestamp};

pub use catalog::{CatalogFormat, CatalogPatch, CatalogReader};
pub use orders::{ImportedOrder, OrdersFormat, OrdersReader};
pub use pairings::{read_pairings, ManualPairing, PairingMode};

/// The file as a whole cannot be read: nothing was imported.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(
        "missing required column {column:?} (the header has: {}); see README \"Import\" for the columns",
        .found.join(", ")
    )]
    MissingColumn { column: String, found: Vec<String> },
    /// `what` names the kind of file and the columns that identify each format.
    #[error(
        "the header matches no known {what} (the header has: {}); see README \"Import\"",
        .found.join(", ")
    )]
    UnknownFormat {
        what: &'static str,
        found: Vec<String>,
    },
    /// The header row itself cannot be read; the message names the line.
    #[error("{0}")]
    Csv(String),
    #[error("the file is empty: expected a header row")]
    Empty,
}

/// One row (or one order's rows) cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    /// 1-based physical line where the record starts (the header is line 1).
    pub line: u64,
    /// The column as the file's header spells it; empty when the problem is the whole row.
    pub column: String,
    /// The offending cell; empty when the cell is empty or there is no single cell.
    pub value: String,
    pub message: String,
}

impl RowError {
    pub fn new(
        line: u64,
        column: impl Into<String>,
        value: impl Into<String>,
        message: impl Into<String>,
    ) -> RowError {
        RowError {
            line,
            column: column.into(),
            value: value.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.column.is_empty() {
            return write!(f, "line {}: {}", self.line, self.message);
        }
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )?;
        if !self.value.is_empty() {
            write!(f, " (value {:?})", self.value)?;
        }
        Ok(())
    }
}

impl std::error::Error for RowError {}

/// A column found in the header: its index and its name as the file spells it.
#[derive(Clone, Debug)]
struct Col {
    idx: usize,
    name: String,
}

/// The header row, looked up by case-insensitive trimmed name (first occurrence wins).
struct Header {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Header {
    fn new(rec: &StringRecord) -> Header {
        let names: Vec<String> = rec
            .iter()
            .map(|n| n.trim_start_matches('\u{feff}').trim().to_string())
            .collect();
        let mut index = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            if !n.is_empty() {
                index.entry(n.to_lowercase()).or_insert(i);
            }
        }
        Header { names, index }
    }

    fn col(&self, name: &str) -> Option<Col> {
        self.index.get(&name.to_lowercase()).map(|&idx| Col {
            idx,
            name: self.names[idx].clone(),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(&name.to_lowercase())
    }

    fn require(&self, name: &str) -> Result<Col, FileError> {
        self.col(name).ok_or_else(|| FileError::MissingColumn {
            column: name.to_string(),
            found: self.found(),
        })
    }

    /// The non-empty header names, for error messages.
    fn found(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect()
    }

    /// Header names not in `known` (compared case-insensitively).
    fn unknown(&self, known: &[&str]) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| !n.is_empty() && !known.iter().any(|k| k.eq_ignore_ascii_case(n)))
            .cloned()
            .collect()
    }

    fn name(&self, idx: usize) -> String {
        self.names.get(idx).cloned().unwrap_or_default()
    }
}

/// What reading the next record produced.
enum Next {
    Row(StringRecord),
    /// A record that is not valid UTF-8: the bytes (for a lossy key) and the error.
    BadUtf8(ByteRecord, RowError),
    /// The input failed; nothing more can be read.
    Fatal(RowError),
}

/// A CSV reader past its header: yields non-blank records with their line numbers.
struct Rows<R: Read> {
    rdr: csv::Reader<Tail<R>>,
    header: Header,
    done: bool,
}

/// How many bytes csv reads ahead of what it has parsed (set explicitly on the builder).
const CSV_BUFFER: usize = 8 * 1024;
/// Twice the read-ahead, so the last parsed byte is always still here.
const TAIL: usize = 2 * CSV_BUFFER;

/// The input, remembering the bytes most recently read. csv stamps a record with the
/// position *before* any line breaks and blank lines that precede it; to report the line
/// the record really starts on, the reader needs to know whether the last byte csv parsed
/// was a line feed.
struct Tail<R> {
    inner: R,
    ring: Vec<u8>,
    total: u64,
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            self.ring[(self.total % TAIL as u64) as usize] = b;
            self.total += 1;
        }
        Ok(n)
    }
}

impl<R> Tail<R> {
    fn byte_at(&self, pos: u64) -> Option<u8> {
        (pos < self.total && self.total - pos <= TAIL as u64)
            .then(|| self.ring[(pos % TAIL as u64) as usize])
    }
}

impl<R: Read> Rows<R> {
    /// Reads the header: the first record that has a non-empty cell.
    fn open(r: R) -> Result<Rows<R>, FileError> {
        // Fields are trimmed when read (`Row::get`), not by csv, so that line breaks
        // inside quoted fields can be counted.
        let rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(CSV_BUFFER)
            .from_reader(Tail {
                inner: r,
                ring: vec![0; TAIL],
                total: 0,
            });
        let mut rows = Rows {
            rdr,
            header: Header {
                names: Vec::new(),
                index: HashMap::new(),
            },
            done: false,
        };
        let rec = match rows.next_record() {
            None => return Err(FileError::Empty),
            Some(Next::Row(rec)) => rec,
            Some(Next::BadUtf8(_, e)) => {
                return Err(FileError::Csv(format!(
                    "line {}: the header is not valid UTF-8; save the file as CSV UTF-8",
                    e.line
                )))
            }
            Some(Next::Fatal(e)) => return Err(FileError::Csv(e.to_string())),
        };
        rows.header = Header::new(&rec);
        Ok(rows)
    }

    fn position(&self) -> u64 {
        self.rdr.position().byte()
    }

    /// The line `rec` (just read) starts on: csv's line count after it, less the line
    /// feeds inside its quoted fields and the one that ended it, if one did.
    fn start_line(&self, rec: &ByteRecord) -> u64 {
        let end = self.rdr.position();
        let inside: usize = rec
            .iter()
            .map(|f| f.iter().filter(|&&b| b == b'\n').count())
            .sum();
        let last = end
            .byte()
            .checked_sub(1)
            .and_then(|p| self.rdr.get_ref().byte_at(p));
        let ended_by_lf = u64::from(last == Some(b'\n'));
        end.line()
            .saturating_sub(inside as u64)
            .saturating_sub(ended_by_lf)
            .max(1)
    }

    /// Reads the rest of a small file whole: what `each` makes of every row, and every row
    /// it refused or that could not be read.
    fn read_all<T>(
        mut self,
        mut each: impl FnMut(&Row<'_>) -> Result<T, RowError>,
    ) -> (Vec<T>, Vec<RowError>) {
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        while let Some(next) = self.next_record() {
            match next {
                Next::Row(rec) => match each(&Row::new(&rec)) {
                    Ok(t) => ok.push(t),
                    Err(e) => bad.push(e),
                },
                Next::BadUtf8(_, e) | Next::Fatal(e) => bad.push(e),
            }
        }
        (ok, bad)
    }

    fn next_record(&mut self) -> Option<Next> {
        if self.done {
            return None;
        }
        let mut rec = ByteRecord::new();
        loop {
            match self.rdr.read_byte_record(&mut rec) {
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Ok(true) => {}
                Err(e) => {
                    self.done = true;
                    let line = e
                        .position()
                        .or(rec.position())
                        .map_or(0, |p| p.line())
                        .max(1);
                    let message = match e.into_kind() {
                        csv::ErrorKind::Io(io) => format!("cannot read the file: {io}"),
                        other => format!("cannot read the file: {other:?}"),
                    };
                    return Some(Next::Fatal(RowError {
                        line,
                        column: String::new(),
                        value: String::new(),
                        message,
                    }));
                }
            }
            if rec.iter().all(|f| f.trim_ascii().is_empty()) {
                continue;
            }
            let line = self.start_line(&rec);
            let mut pos = csv::Position::new();
            pos.set_line(line);
            rec.set_position(Some(pos));
            return Some(match StringRecord::from_byte_record(rec) {
                Ok(s) => Next::Row(s),
                Err(e) => {
                    let field = e.utf8_error().field();
                    let bytes = e.into_byte_record();
                    let value = String::from_utf8_lossy(&bytes[field]).trim().to_string();
                    let err = RowError {
                        line,
                        column: self.header.name(field),
                        value,
                        message: "not valid UTF-8; save the file as CSV UTF-8".to_string(),
                    };
                    Next::BadUtf8(bytes, err)
                }
            });
        }
    }
}

/// One record with its line, read through the header's columns.
struct Row<'a> {
    rec: &'a StringRecord,
    line: u64,
}

impl<'a> Row<'a> {
    fn new(rec: &'a StringRecord) -> Row<'a> {
        Row {
            rec,
            line: rec.position().map_or(0, |p| p.line()),
        }
    }

    /// The cell, trimmed; `None` when the column is absent or the cell empty.
    fn get(&self, col: Option<&Col>) -> Option<&'a str> {
        let c = col?;
        self.rec.get(c.idx).map(str::trim).filter(|s| !s.is_empty())
    }

    fn text(&self, col: Option<&Col>) -> Option<String> {
        self.get(col).map(str::to_string)
    }

    fn err(&self, col: &Col, value: &str, message: impl Into<String>) -> RowError {
        RowError::new(self.line, col.name.clone(), value, message)
    }

    /// A row-wide problem, not tied to one cell.
    fn row_err(&self, message: impl Into<String>) -> RowError {
        RowError::new(self.line, "", "", message)
    }

    /// Parses the cell with `parse`, which says what the value should have been.
    fn parse<T>(
        &self,
        col: Option<&Col>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, RowError> {
        match (col, self.get(col)) {
            (Some(c), Some(s)) => parse(s).map(Some).map_err(|m| self.err(c, s, m)),
            _ => Ok(None),
        }
    }

    fn money(&self, col: Option<&Col>, currency: Currency) -> Result<Option<i64>, RowError> {
        self.parse(col, |s| parse_money(s, currency))
    }

    fn boolean(&self, col: Option<&Col>) -> Result<Option<bool>, RowError> {
        self.parse(col, parse_bool)
    }

    /// Comma- (and, with `semicolons`, semicolon-) separated list; `None` when empty.
    fn list(&self, col: Option<&Col>, semicolons: bool) -> Option<Vec<String>> {
        self.get(col).map(|s| split_list(s, semicolons))
    }
}

fn split_list(s: &str, semicolons: bool) -> Vec<String> {
    s.split(|c| c == ',' || (semicolons && c == ';'))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_money(s: &str, currency: Currency) -> Result<i64, String> {
    currency.parse_minor(s).map_err(|e| match e {
        MoneyError::BadAmount(_) | MoneyError::BadCurrency(_) => {
            "not a decimal number such as \"19.99\"".to_string()
        }
        MoneyError::TooPrecise {
            currency, exponent, ..
        } => format!("has more decimals than {currency} allows ({exponent})"),
        MoneyError::Overflow(_) => "amount is too large".to_string(),
    })
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err("not true or false (yes/no and 1/0 also work)".to_string()),
    }
}

fn parse_int(s: &str) -> Result<i64, String> {
    s.parse()
        .map_err(|_| "not a whole number such as \"12\"".to_string())
}

fn parse_positive(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("not a positive whole number such as \"3\"".to_string()),
    }
}

fn parse_currency(s: &str) -> Result<Currency, String> {
    Currency::parse(s)
        .map_err(|_| "not a three-letter ISO 4217 currency code such as \"USD\"".to_string())
}

/// Parses a time with an explicit offset: RFC 3339 or Shopify's "2024-03-05 14:22:10 -0500".
/// With `naive_utc`, also "YYYY-MM-DD HH:MM:SS" and "YYYY-MM-DD", read as UTC.
fn parse_time(s: &str, naive_utc: bool) -> Result<Timestamp, String> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let ms = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        Some(t.timestamp_millis())
    } else if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %z") {
        Some(t.timestamp_millis())
    } else if !naive_utc {
        None
    } else if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        Some(t.and_utc().timestamp_millis())
    } else if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis())
    } else {
        None
    };
    ms.map(Timestamp).ok_or_else(|| {
        if naive_utc {
            "not a date such as \"2024-03-05T14:22:10Z\", \"2024-03-05 14:22:10\" (UTC) or \"2024-03-05\"".to_string()
        } else {
            "not a date and time such as \"2024-03-05 14:22:10 -0500\" or \"2024-03-05T14:22:10-05:00\"".to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_errors_name_line_column_and_value() {
        let e = RowError {
            line: 12,
            column: "unit_price".into(),
            value: "abc".into(),
            message: "not a decimal number such as \"19.99\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "line 12, column unit_price: not a decimal number such as \"19.99\" (value \"abc\")"
        );
        let e = RowError {
            line: 3,
            column: String::new(),
            value: String::new(),
            message: "the row has neither a SKU nor a handle".into(),
        };
        assert_eq!(
            e.to_string(),
            "line 3: the row has neither a SKU nor a handle"
        );
        let e = RowError {
            line: 4,
            column: "sku".into(),
            value: String::new(),
            message: "is empty".into(),
        };
        assert_eq!(e.to_string(), "line 4, column sku: is empty");
    }

    #[test]
    fn file_errors_say_what_to_do() {
        let e = FileError::MissingColumn {
            column: "sku".into(),
            found: vec!["a".into(), "b".into(), "c".into()],
        };
        assert_eq!(
            e.to_string(),
            "missing required column \"sku\" (the header has: a, b, c); see README \"Import\" for the columns"
        );
        assert_eq!(
            FileError::Empty.to_string(),
            "the file is empty: expected a header row"
        );
    }

    #[test]
    fn parses_times() {
        let t = |s, naive| parse_time(s, naive).map(|t| t.to_rfc3339());
        assert_eq!(
            t("2024-03-05 14:22:10 -0500", false).as_deref(),
            Ok("2024-03-05T19:22:10Z")
        );
        assert_eq!(
            t("2024-03-05T14:22:10-05:00", false).as_deref(),
            Ok("2024-03-05T19:22:10Z")
        );
        assert_eq!(
            t("2024-03-05 14:22:10", true).as_deref(),
            Ok("2024-03-05T14:22:10Z")
        );
        assert_eq!(t("2024-03-05", true).as_deref(), Ok("2024-03-05T00:00:00Z"));
        assert!(t("2024-03-05", false).is_err());
        assert!(t("05/03/2024", true).is_err());
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_strips_a_bom() {
        let rows = Rows::open("\u{feff} SKU ,Price\r\nA,1\r\n".as_bytes()).unwrap();
        assert_eq!(rows.header.names, vec!["SKU", "Price"]);
        assert_eq!(rows.header.col("sku").map(|c| c.name), Some("SKU".into()));
        assert!(rows.header.has("PRICE"));
        assert!(matches!(
            Rows::open("\n\n".as_bytes()).err(),
            Some(FileError::Empty)
        ));
    }

    /// Reads one byte per call, like a slow pipe: csv's buffer then holds a single byte.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    fn lines_and_keys<R: Read>(r: R) -> Vec<(u64, String)> {
        let mut rows = Rows::open(r).unwrap();
        let mut out = Vec::new();
        while let Some(next) = rows.next_record() {
            let Next::Row(rec) = next else {
                panic!("unexpected error")
            };
            let row = Row::new(&rec);
            out.push((row.line, row.text(rows.header.col("sku").as_ref()).unwrap()));
        }
        out
    }

    #[test]
    fn line_numbers_survive_blank_lines_crlf_and_quoted_breaks_across_buffers() {
        // Longer than csv's buffer many times over, with every kind of line break.
        let mut csv = String::from("\u{feff}sku,title\r\n");
        let mut line = 2;
        let mut expected = Vec::new();
        for i in 0..3000u64 {
            let eol = if i % 3 == 0 { "\r\n" } else { "\n" };
            if i % 7 == 0 {
                csv.push_str(eol);
                line += 1;
            }
            if i % 11 == 0 {
                csv.push_str(" , \r\n");
                line += 1;
            }
            expected.push((line, format!("SKU-{i}")));
            if i % 5 == 0 {
                csv.push_str(&format!(
                    "SKU-{i},\"two\r\nline\nthree {}\"",
                    "x".repeat(40)
                ));
                line += 2;
            } else {
                csv.push_str(&format!("SKU-{i},plain {}", "y".repeat((i % 90) as usize)));
            }
            if i < 2999 {
                csv.push_str(eol);
                line += 1;
            }
        }
        assert!(csv.len() > 10 * CSV_BUFFER);
        assert_eq!(lines_and_keys(csv.as_bytes()), expected);
        assert_eq!(lines_and_keys(Trickle(csv.as_bytes())), expected);
    }
}
