//! The outbox channel: a due touch is "sent" by appending one JSON line to
//! `outbox.jsonl` in the data dir and syncing it. The scheduler records a touch as sent
//! only after the line is durable, and on start reconciles touches left in `sending`
//! against the file's tail, so each touch appears exactly once across crashes.
//!
//! The line is a contract (README "Outbox"): `touch_id, store, order` (the platform order
//! id), `customer` (the opaque customer id: no email or phone), `kind`, `channel`,
//! `due_at`, `sent_at` (RFC 3339 UTC, the scheduler's clock) and `offer`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxLine {
    pub touch_id: String,
    pub store: String,
    pub order: String,
    pub customer: Option<u64>,
    pub kind: String,
    pub channel: String,
    pub due_at: String,
    pub sent_at: String,
    /// `{"product","sku","variant_id","title","price","currency","discount_code"}` or null.
    pub offer: Option<serde_json::Value>,
    /// `{"click","unsubscribe"}`: the signed links the message would carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<super::Links>,
    /// A `recovery` notice's ticket: `{"id","csat"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<serde_json::Value>,
}

pub struct Outbox {
    path: PathBuf,
    file: File,
}

impl Outbox {
    pub const FILE: &'static str = "outbox.jsonl";

    /// Opens the outbox for appending. A last line cut short by a crash mid-write is
    /// removed: it was never recorded as sent, so its touch goes out again.
    pub fn open(data_dir: &Path) -> io::Result<Outbox> {
        let path = data_dir.join(Self::FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            let keep = complete_prefix(&mut file, len)?;
            if keep < len {
                file.set_len(keep)?;
                file.sync_all()?;
            }
        }
        Ok(Outbox { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the lines and syncs them once: when this returns `Ok`, every line is
    /// durable. On an error (a short write on a full disk, a failed sync) the file is cut
    /// back to where it was, so none of the lines counts as sent and no fragment is left
    /// for the next batch to glue onto; if even the cut fails, the caller reconciles with
    /// [`Outbox::recent_ids`] before sending any of them again.
    pub fn send(&mut self, lines: &[OutboxLine]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(lines.len() * 300);
        for l in lines {
            serde_json::to_writer(&mut buf, l).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let before = self.file.metadata()?.len();
        let written = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            if let Err(cut) = self
                .file
                .set_len(before)
                .and_then(|_| self.file.sync_data())
            {
                log::error!(
                    "outbox: cutting {} back after a failed write: {cut}",
                    self.path.display()
                );
            }
            return Err(e);
        }
        Ok(())
    }

    /// The touch ids in the last `max_bytes` of the outbox (whole lines only).
    pub fn recent_ids(&mut self, max_bytes: u64) -> io::Result<HashSet<String>> {
        let len = self.file.metadata()?.len();
        let from = len.saturating_sub(max_bytes);
        self.file.seek(SeekFrom::Start(from))?;
        let mut text = Vec::new();
        (&self.file).take(len - from).read_to_end(&mut text)?;
        let mut lines = text.split(|&b| b == b'\n');
        if from > 0 {
            lines.next(); // the first line may start before `from`
        }
        #[derive(Deserialize)]
        struct Id {
            touch_id: String,
        }
        Ok(lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice::<Id>(l).ok())
            .map(|i| i.touch_id)
            .collect())
    }
}

/// The length of the file up to and including its last newline.
fn complete_prefix(file: &mut File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str) -> OutboxLine {
        OutboxLine {
            touch_id: id.into(),
            store: "demo".into(),
            order: "9001".into(),
            customer: Some(7),
            kind: "touch1".into(),
            channel: "email".into(),
            due_at: "2026-11-22T04:26:34Z".into(),
            sent_at: "2026-11-22T04:26:35Z".into(),
            offer: None,
            links: None,
            ticket: None,
        }
    }

    #[test]
    fn lines_are_durable_and_a_torn_tail_is_cut_at_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        o.send(&[line("a"), line("b")]).unwrap();
        drop(o);
        // A crash in the middle of the next write.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(Outbox::FILE))
            .unwrap();
        f.write_all(br#"{"touch_id":"c","sto"#).unwrap();
        drop(f);
        let mut o = Outbox::open(dir.path()).unwrap();
        let ids = o.recent_ids(1 << 20).unwrap();
        assert_eq!(ids, HashSet::from(["a".to_string(), "b".to_string()]));
        o.send(&[line("c")]).unwrap();
        let text = std::fs::read_to_string(o.path()).unwrap();
        assert_eq!(text.lines().count(), 3);
        let parsed: Vec<OutboxLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed[2], line("c"));
    }

    #[test]
    fn recent_ids_reads_whole_lines_of_the_tail_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        let lines: Vec<OutboxLine> = (0..100).map(|i| line(&format!("t{i}"))).collect();
        o.send(&lines).unwrap();
        let one = serde_json::to_vec(&line("t99")).unwrap().len() as u64 + 1;
        let ids = o.recent_ids(one * 3 + 5).unwrap();
        assert_eq!(
            ids,
            HashSet::from(["t97".to_string(), "t98".to_string(), "t99".to_string()])
        );
    }
}
