//! Manual pairings CSV import: the store's own "offer this after that" rules, read whole
//! (the file is small) into [`ManualPairing`]s plus the rows that could not be used.
//!
//! Parses only: no storage, no I/O beyond the `Read` it is given. It does not check that
//! the SKUs or product keys exist in the catalog; the caller does, against its catalog.

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::{FileError, RowError, Rows};

/// How a manual pairing combines with what the engine learned from order history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairingMode {
    /// Offered ahead of learned pairings.
    Override,
    /// Offered only when history has nothing better (the default).
    Fallback,
}

/// One row of the pairings file: after `antecedent`, offer `consequent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualPairing {
    pub line: u64,
    /// A SKU or product key.
    pub antecedent: String,
    /// A SKU or product key.
    pub consequent: String,
    /// Higher first; 0 when the file does not say.
    pub priority: i32,
    pub mode: PairingMode,
}

/// The pairings columns: `antecedent` and `consequent` required, the rest optional.
pub const COLUMNS: &[&str] = &["antecedent", "consequent", "priority", "mode"];

/// Reads a whole pairings file: the usable pairings and the rows that were not.
pub fn read_pairings(r: impl Read) -> Result<(Vec<ManualPairing>, Vec<RowError>), FileError> {
    let rows = Rows::open(r)?;
    let h = &rows.header;
    let antecedent = h.require("antecedent")?;
    let consequent = h.require("consequent")?;
    let priority = h.col("priority");
    let mode = h.col("mode");
    Ok(rows.read_all(|row| {
        let a = row
            .text(Some(&antecedent))
            .ok_or_else(|| row.err(&antecedent, "", "is empty: name a SKU or product key"))?;
        let c = row
            .text(Some(&consequent))
            .ok_or_else(|| row.err(&consequent, "", "is empty: name a SKU or product key"))?;
        if a == c {
            return Err(row.err(
                &consequent,
                &c,
                "is the same as the antecedent: a product cannot be paired with itself",
            ));
        }
        let priority = row.parse(priority.as_ref(), |s| {
            s.parse::<i32>()
                .map_err(|_| "not a whole number such as \"10\" or \"-1\"".to_string())
        })?;
        let mode = row.parse(mode.as_ref(), |s| match s.to_ascii_lowercase().as_str() {
            "override" => Ok(PairingMode::Override),
            "fallback" => Ok(PairingMode::Fallback),
            _ => Err("not \"override\" or \"fallback\"".to_string()),
        })?;
        Ok(ManualPairing {
            line: row.line,
            antecedent: a,
            consequent: c,
            priority: priority.unwrap_or(0),
            mode: mode.unwrap_or(PairingMode::Fallback),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairing(line: u64, a: &str, c: &str, priority: i32, mode: PairingMode) -> ManualPairing {
        ManualPairing {
            line,
            antecedent: a.into(),
            consequent: c.into(),
            priority,
            mode,
        }
    }

    #[test]
    fn reads_pairings_and_collects_bad_rows() {
        let csv = "\u{feff}Antecedent,Consequent,Priority,Mode,note\r\n\
                   COFFEE-250,FILTERS,10,override,best seller\r\n\
                   classic-tee,MUG-1,,,\r\n\
                   MUG-1,COFFEE-250,-1,Fallback,\r\n\
                   MUG-1,MUG-1,,,\r\n\
                   ,MUG-1,,,\r\n\
                   MUG-1,TEE,high,,\r\n\
                   MUG-1,TEE,,always,\r\n";
        let (ok, bad) = read_pairings(csv.as_bytes()).unwrap();
        assert_eq!(
            ok,
            vec![
                pairing(2, "COFFEE-250", "FILTERS", 10, PairingMode::Override),
                pairing(3, "classic-tee", "MUG-1", 0, PairingMode::Fallback),
                pairing(4, "MUG-1", "COFFEE-250", -1, PairingMode::Fallback),
            ]
        );
        assert_eq!(
            bad,
            vec![
                RowError::new(
                    5,
                    "Consequent",
                    "MUG-1",
                    "is the same as the antecedent: a product cannot be paired with itself"
                ),
                RowError::new(6, "Antecedent", "", "is empty: name a SKU or product key"),
                RowError::new(
                    7,
                    "Priority",
                    "high",
                    "not a whole number such as \"10\" or \"-1\""
                ),
                RowError::new(8, "Mode", "always", "not \"override\" or \"fallback\""),
            ]
        );
    }

    #[test]
    fn required_columns() {
        let err = read_pairings("antecedent,priority\nA,1\n".as_bytes())
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "missing required column \"consequent\" (the header has: antecedent, priority); \
             see README \"Import\" for the columns"
        );
        let (ok, bad) = read_pairings("antecedent,consequent\n".as_bytes()).unwrap();
        assert!(ok.is_empty() && bad.is_empty());
        assert_eq!(
            serde_json::to_string(&PairingMode::Override).unwrap(),
            "\"override\""
        );
    }
}
