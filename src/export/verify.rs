//! Checks an exported copy (JSON lines, native or OCSF with `raw_data`)
//! against the chain: every exported event's hash recomputes from its own
//! content and equals the store's event at that `seq`; duplicates (the
//! same event delivered twice) are fine; events missing from the copy up to
//! its last `seq`, events the store does not have, and lines that are not
//! exported events are problems.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;

use crate::audit::chain;
use crate::domain::audit::EventRecord;
use crate::store::{self, Db};

/// Store events read per query.
const PAGE: u32 = 20_000;

/// What `pam audit verify --against` found.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// Lines that hold an event.
    pub lines: u64,
    /// Distinct events (by `seq`).
    pub events: u64,
    /// Lines repeating an event already seen (at-least-once delivery).
    pub duplicates: u64,
    /// Stand-ins for events too large for the sink (checked by hash only).
    pub truncated: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The store's head when the check ran.
    pub head_seq: i64,
    pub problems: Vec<CopyProblem>,
}

#[derive(Debug, Clone)]
pub struct CopyProblem {
    /// The event concerned (the first of a range).
    pub seq: Option<i64>,
    /// The line of the copy concerned (1-based), if one.
    pub line: Option<u64>,
    pub message: String,
}

impl CopyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One event of the copy.
struct Entry {
    hash: Vec<u8>,
    line: u64,
    /// The store has an event at this `seq`.
    in_store: bool,
}

/// Reads the copy from `input` (plain or gzipped JSON lines) and checks it
/// against the store.
pub async fn verify_copy(db: &Db, input: impl BufRead) -> Result<CopyReport, store::Error> {
    let mut report = CopyReport::default();
    let mut entries: BTreeMap<i64, Entry> = BTreeMap::new();
    for (index, line) in input.lines().enumerate() {
        let number = index as u64 + 1;
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                report.problems.push(CopyProblem {
                    seq: None,
                    line: Some(number),
                    message: format!("line {number}: cannot be read ({e})"),
                });
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let parsed = match parse_line(&line) {
            Ok(parsed) => parsed,
            Err(why) => {
                report.problems.push(CopyProblem {
                    seq: None,
                    line: Some(number),
                    message: format!("line {number}: {why}"),
                });
                continue;
            }
        };
        report.lines += 1;
        let (seq, hash) = match parsed {
            Parsed::Event(record) => {
                if chain::hash(&record).as_slice() != record.hash.as_slice() {
                    report.problems.push(CopyProblem {
                        seq: Some(record.seq),
                        line: Some(number),
                        message: format!(
                            "event at seq {} (line {number}) was changed in the copy: its content no longer matches its hash",
                            record.seq
                        ),
                    });
                }
                (record.seq, record.hash)
            }
            Parsed::Stub { seq, hash } => {
                report.truncated += 1;
                (seq, hash)
            }
        };
        match entries.get(&seq) {
            Some(seen) if seen.hash == hash => report.duplicates += 1,
            Some(seen) => report.problems.push(CopyProblem {
                seq: Some(seq),
                line: Some(number),
                message: format!(
                    "seq {seq} appears twice with different hashes (lines {} and {number})",
                    seen.line
                ),
            }),
            None => {
                entries.insert(
                    seq,
                    Entry {
                        hash,
                        line: number,
                        in_store: false,
                    },
                );
            }
        }
    }
    report.events = entries.len() as u64;
    report.first_seq = entries.keys().next().copied();
    report.last_seq = entries.keys().next_back().copied();
    report.head_seq = store::audit::head(db).await?.seq;

    // Walk the store from the start up to the copy's last event.
    let Some(last) = report.last_seq else {
        report.problems.push(CopyProblem {
            seq: None,
            line: None,
            message: "the copy holds no exported event".into(),
        });
        return Ok(report);
    };
    let mut missing: Vec<(i64, i64)> = Vec::new();
    let note_missing = |seq: i64, missing: &mut Vec<(i64, i64)>| match missing.last_mut() {
        Some((_, end)) if *end + 1 == seq => *end = seq,
        _ => missing.push((seq, seq)),
    };
    let mut from = 1i64;
    'walk: loop {
        let page = store::audit::range(db, from, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            if event.seq > last {
                break 'walk;
            }
            match entries.get_mut(&event.seq) {
                None => note_missing(event.seq, &mut missing),
                Some(entry) => {
                    entry.in_store = true;
                    if entry.hash != event.hash {
                        report.problems.push(CopyProblem {
                            seq: Some(event.seq),
                            line: Some(entry.line),
                            message: format!(
                                "exported event at seq {} (line {}) differs from the store's: hash {} in the copy, {} in the store",
                                event.seq,
                                entry.line,
                                short(&entry.hash),
                                short(&event.hash)
                            ),
                        });
                    }
                }
            }
        }
        if page.len() < PAGE as usize {
            break;
        }
        from = page[page.len() - 1].seq + 1;
    }
    for (start, end) in missing {
        report.problems.push(CopyProblem {
            seq: Some(start),
            line: None,
            message: if start == end {
                format!("event at seq {start} is missing from the copy")
            } else {
                format!("events at seq {start}..={end} are missing from the copy")
            },
        });
    }
    for (seq, entry) in entries.iter().filter(|(_, e)| !e.in_store) {
        report.problems.push(CopyProblem {
            seq: Some(*seq),
            line: Some(entry.line),
            message: format!(
                "exported event at seq {seq} (line {}) is not in the store (the store's head is at seq {})",
                entry.line, report.head_seq
            ),
        });
    }
    report
        .problems
        .sort_by_key(|p| (p.seq.unwrap_or(0), p.line.unwrap_or(0)));
    Ok(report)
}

/// Opens `path` for [`verify_copy`]: gzip (S3 objects) is detected by its
/// magic bytes.
pub fn open(path: &std::path::Path) -> std::io::Result<Box<dyn BufRead>> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic)?;
    let file = std::fs::File::open(path)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(std::io::BufReader::new(
            flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file)),
        )))
    } else {
        Ok(Box::new(std::io::BufReader::new(file)))
    }
}

enum Parsed {
    Event(Box<EventRecord>),
    /// A CloudWatch stand-in for an oversized event: only its hash.
    Stub {
        seq: i64,
        hash: Vec<u8>,
    },
}

fn parse_line(line: &str) -> Result<Parsed, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    // OCSF: the native event is in raw_data.
    if value.get("class_uid").is_some() {
        let raw = value
            .get("raw_data")
            .and_then(Value::as_str)
            .ok_or("an OCSF event without raw_data (the native event) cannot be verified")?;
        let native: Value =
            serde_json::from_str(raw).map_err(|e| format!("raw_data is not JSON ({e})"))?;
        return native_event(&native);
    }
    native_event(&value)
}

fn native_event(value: &Value) -> Result<Parsed, String> {
    let seq = value
        .get("seq")
        .and_then(Value::as_i64)
        .ok_or("not an exported event (no seq)")?;
    let hex_field = |key: &str| -> Result<Vec<u8>, String> {
        value
            .get(key)
            .and_then(Value::as_str)
            .and_then(|h| hex::decode(h).ok())
            .filter(|h| h.len() == 32)
            .ok_or_else(|| format!("event at seq {seq}: {key} is missing or not a SHA-256 in hex"))
    };
    let hash = hex_field("hash")?;
    if value.get("truncated").and_then(Value::as_bool) == Some(true) {
        return Ok(Parsed::Stub { seq, hash });
    }
    let prev_hash = hex_field("prev_hash")?;
    let text = |key: &str| -> Result<String, String> {
        value
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("event at seq {seq}: {key} is missing"))
    };
    let optional = |key: &str| -> Result<Option<String>, String> {
        match value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("event at seq {seq}: {key} is not a string")),
        }
    };
    let time = text("time")?;
    let time = time::OffsetDateTime::parse(&time, &Rfc3339)
        .map_err(|_| format!("event at seq {seq}: time {time:?} is not RFC 3339"))?;
    let details = value
        .get("details")
        .ok_or_else(|| format!("event at seq {seq}: details is missing"))?;
    Ok(Parsed::Event(Box::new(EventRecord {
        seq,
        id: text("id")?,
        time_us: (time.unix_timestamp_nanos() / 1000) as i64,
        kind: text("kind")?,
        actor: optional("actor")?,
        source_ip: optional("source_ip")?,
        target: optional("target")?,
        session_id: optional("session_id")?,
        outcome: text("outcome")?,
        details: chain::canonical_json(details),
        prev_hash,
        hash,
    })))
}

fn short(hash: &[u8]) -> String {
    hex::encode(&hash[..hash.len().min(8)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::{AuditEvent, EventKind, Outcome};

    #[test]
    fn a_native_line_parses_back_to_the_record_that_was_hashed() {
        let event = AuditEvent::new(EventKind::PolicyDecision, Outcome::Denied)
            .actor("bob@example.test")
            .target("orders-prod")
            .details(
                serde_json::json!({"action": "ssh", "n": 1.5, "z": [null, "é\n"], "a": {"b": -3}}),
            );
        let record = chain::chain(&event, 7, &[3; 32]);
        let line = record.to_json().to_string();
        let Parsed::Event(back) = parse_line(&line).unwrap() else {
            panic!("stub")
        };
        assert_eq!(*back, record);
        let ocsf = super::super::ocsf::event(&record, &line).to_string();
        let Parsed::Event(back) = parse_line(&ocsf).unwrap() else {
            panic!("stub")
        };
        assert_eq!(*back, record);
    }
}
