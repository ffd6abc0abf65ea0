//! A finished statement as the query audit records it: its text, bounded
//! (a prefix and the SHA-256 of the whole), and the [`Completed`] record
//! that becomes a `db.query` event.

use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Statement text kept in an event; longer text is truncated and hashed.
pub const TEXT_MAX: usize = 16 * 1024;

/// The text of a statement, bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The text, or its first [`TEXT_MAX`] bytes.
    pub text: String,
    /// Length of the whole text in bytes.
    pub bytes: usize,
    /// SHA-256 of the whole text, when `text` is only a prefix.
    pub sha256: Option<String>,
    /// The prepared statement's name (extended protocol, named).
    pub name: Option<String>,
}

impl Statement {
    pub(super) fn from_sql(sql: &[u8], name: Option<&[u8]>) -> Self {
        let (text, sha256) = if sql.len() <= TEXT_MAX {
            (String::from_utf8_lossy(sql).into_owned(), None)
        } else {
            (
                prefix_text(&sql[..TEXT_MAX]),
                Some(hex::encode(Sha256::digest(sql))),
            )
        };
        Statement {
            text,
            bytes: sql.len(),
            sha256,
            name: name
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8_lossy(n).into_owned()),
        }
    }

    pub(super) fn unknown(name: &[u8]) -> Self {
        Statement {
            text: String::new(),
            bytes: 0,
            sha256: None,
            name: Some(String::from_utf8_lossy(name).into_owned()),
        }
    }
}

/// UTF-8 text of a byte prefix, cut at a character boundary.
pub(super) fn prefix_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// An error the server reported for a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementError {
    pub severity: String,
    pub sqlstate: String,
    pub message: String,
}

/// One finished statement, ready to become a `db.query` event.
#[derive(Debug, Clone)]
pub struct Completed {
    /// `simple`, `extended`, `function` or `parse`.
    pub protocol: &'static str,
    pub statement: Option<Arc<Statement>>,
    pub function_oid: Option<i32>,
    pub params: usize,
    pub values: Option<Vec<Value>>,
    pub commands: Vec<String>,
    /// Sum of the row counts of the command tags.
    pub rows: Option<u64>,
    /// `DataRow` messages sent to the client.
    pub rows_sent: u64,
    pub duration_us: u64,
    pub error: Option<StatementError>,
    /// `in` or `out`, and the bytes of COPY data.
    pub copy: Option<(&'static str, u64)>,
    /// Never ran: an earlier statement of the same pipeline failed.
    pub skipped: bool,
    /// The portal was suspended (row limit), not finished.
    pub suspended: bool,
}

impl Completed {
    /// The `details` of the `db.query` event.
    pub fn details(&self) -> Value {
        let mut details = json!({
            "protocol": self.protocol,
            "params": self.params,
            "duration_us": self.duration_us,
            "rows": self.rows,
            "rows_sent": self.rows_sent,
        });
        let map = details
            .as_object_mut()
            .expect("a json! object literal is an object");
        if let Some(statement) = &self.statement {
            map.insert("statement".into(), Value::String(statement.text.clone()));
            map.insert("statement_bytes".into(), json!(statement.bytes));
            if let Some(sha) = &statement.sha256 {
                map.insert("truncated".into(), Value::Bool(true));
                map.insert("statement_sha256".into(), Value::String(sha.clone()));
            }
            if let Some(name) = &statement.name {
                map.insert("prepared".into(), Value::String(name.clone()));
            }
        }
        if let Some(oid) = self.function_oid {
            map.insert("function_oid".into(), json!(oid));
        }
        if let Some(values) = &self.values {
            map.insert("param_values".into(), Value::Array(values.clone()));
        }
        if !self.commands.is_empty() {
            map.insert("commands".into(), json!(self.commands));
        }
        if let Some(error) = &self.error {
            map.insert(
                "error".into(),
                json!({
                    "severity": error.severity,
                    "sqlstate": error.sqlstate,
                    "message": error.message,
                }),
            );
        }
        if let Some((direction, bytes)) = self.copy {
            map.insert(
                "copy".into(),
                json!({"direction": direction, "bytes": bytes}),
            );
        }
        if self.skipped {
            map.insert("skipped".into(), Value::Bool(true));
        }
        if self.suspended {
            map.insert("suspended".into(), Value::Bool(true));
        }
        details
    }

    pub fn failed(&self) -> bool {
        self.error.is_some() || self.skipped
    }
}
