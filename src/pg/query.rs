//! Statement audit: follows both directions of a relayed session and turns
//! every simple `Query`, every extended-protocol `Execute` (with the text of
//! the statement its portal was bound from), every `FunctionCall` and every
//! failed `Parse` into a [`Completed`] statement with its command tags, row
//! counts, duration, COPY traffic and error.
//!
//! Responses arrive in the order requests were sent, so one FIFO of
//! requests awaiting an answer is enough; an `ErrorResponse` in the
//! extended protocol skips everything up to the next `Sync`, as the server
//! does. Memory is bounded: statement text beyond [`TEXT_MAX`] is kept as a
//! prefix with the SHA-256 of the whole text, and the number of prepared
//! statements, portals and requests in flight is capped.
//!
//! The whole text of every `Query` and `Parse` also goes, as it streams by,
//! into the session's query log ([`Tracker::take_log`]): the event is
//! bounded, the log is not, and its SHA-256 is in `session.end`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::protocol::{self, Backend, Frontend, ProtocolError, Scanner, Seen};
use super::statement::prefix_text;
pub use super::statement::{Completed, Statement, StatementError, TEXT_MAX};

/// Messages kept whole for inspection; longer ones are streamed.
const SCAN_CAP: usize = 64 * 1024;
/// Prepared statements and portals tracked per session.
const MAX_NAMED: usize = 10_000;
/// Requests awaiting an answer (pipelining depth).
const MAX_PENDING: usize = 100_000;
/// Bind values recorded per statement (with `audit.db_params`).
const MAX_VALUES: usize = 64;
const VALUE_MAX: usize = 256;
const MAX_COMMANDS: usize = 100;

/// Why the tracker gave up on a session.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Limit(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Query,
    Execute,
    Function,
    Parse,
    Sync,
}

/// A request awaiting its answer.
struct Pending {
    kind: Kind,
    statement: Option<Arc<Statement>>,
    function_oid: Option<i32>,
    params: usize,
    values: Option<Vec<Value>>,
    started: Instant,
    commands: Vec<String>,
    rows: Option<u64>,
    rows_sent: u64,
    error: Option<StatementError>,
    copy: Option<(&'static str, u64)>,
    suspended: bool,
}

impl Pending {
    fn new(kind: Kind) -> Self {
        Pending {
            kind,
            statement: None,
            function_oid: None,
            params: 0,
            values: None,
            started: Instant::now(),
            commands: Vec::new(),
            rows: None,
            rows_sent: 0,
            error: None,
            copy: None,
            suspended: false,
        }
    }

    fn complete(self, skipped: bool) -> Completed {
        let protocol = match self.kind {
            Kind::Query => "simple",
            Kind::Execute => "extended",
            Kind::Function => "function",
            Kind::Parse | Kind::Sync => "parse",
        };
        Completed {
            protocol,
            statement: self.statement,
            function_oid: self.function_oid,
            params: self.params,
            values: self.values,
            commands: self.commands,
            rows: self.rows,
            rows_sent: self.rows_sent,
            duration_us: self.started.elapsed().as_micros() as u64,
            error: self.error,
            copy: self.copy,
            skipped,
            suspended: self.suspended,
        }
    }
}

struct Portal {
    statement: Arc<Statement>,
    params: usize,
    values: Option<Vec<Value>>,
}

/// Hashes the text of a `Query`/`Parse` too long to keep whole.
struct Streaming {
    hasher: Sha256,
    /// Parse only: still inside the statement name.
    in_name: bool,
    done: bool,
    bytes: usize,
}

/// Follows one session in both directions.
pub struct Tracker {
    client: Scanner,
    server: Scanner,
    state: State,
}

struct State {
    record_values: bool,
    statements: HashMap<Vec<u8>, Arc<Statement>>,
    portals: HashMap<Vec<u8>, Portal>,
    pending: VecDeque<Pending>,
    streaming: Option<Streaming>,
    /// After an error in the extended protocol: skipping to the next Sync.
    ready: bool,
    terminated: bool,
    /// Query log bytes not yet taken.
    log: Vec<u8>,
    logging: bool,
}

/// What a piece of server output held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerSeen {
    /// A `ReadyForQuery`: the client will consider its statements done.
    pub ready: bool,
}

impl Tracker {
    /// `record_values`: `audit.db_params`.
    pub fn new(record_values: bool) -> Self {
        Tracker {
            client: Scanner::new(b"QPBECSFXf", SCAN_CAP),
            server: Scanner::new(b"CEZIs1GHW", SCAN_CAP),
            state: State {
                record_values,
                statements: HashMap::new(),
                portals: HashMap::new(),
                pending: VecDeque::new(),
                streaming: None,
                ready: false,
                terminated: false,
                log: Vec::new(),
                logging: false,
            },
        }
    }

    /// Keeps the text of every statement for [`Tracker::take_log`].
    pub fn with_log(mut self) -> Self {
        self.state.logging = true;
        self
    }

    /// The query log written since the last call: each statement's whole
    /// text followed by CR LF; `-- parse NAME` before a prepared one.
    pub fn take_log(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.state.log)
    }

    /// Query log bytes waiting for [`Tracker::take_log`].
    pub fn log_len(&self) -> usize {
        self.state.log.len()
    }

    /// Bytes the client sent (before they are relayed).
    pub fn client(&mut self, data: &[u8]) -> Result<(), TrackError> {
        let state = &mut self.state;
        let mut failure = None;
        self.client.feed(data, &mut |seen| {
            if failure.is_none()
                && let Err(e) = state.on_client(seen)
            {
                failure = Some(e);
            }
        })?;
        failure.map_or(Ok(()), Err)
    }

    /// Bytes the server sent; finished statements are appended to `done`.
    pub fn server(
        &mut self,
        data: &[u8],
        done: &mut Vec<Completed>,
    ) -> Result<ServerSeen, TrackError> {
        let state = &mut self.state;
        state.ready = false;
        let mut failure = None;
        self.server.feed(data, &mut |seen| {
            if failure.is_none()
                && let Err(e) = state.on_server(seen, done)
            {
                failure = Some(e);
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(ServerSeen { ready: state.ready })
    }

    /// True when the server stream is between messages (the broker may
    /// write its own message to the client there).
    pub fn server_at_boundary(&self) -> bool {
        self.server.at_boundary()
    }

    /// The client sent `Terminate`.
    pub fn terminated(&self) -> bool {
        self.state.terminated
    }

    /// Requests still unanswered when the session ends.
    pub fn unanswered(&mut self) -> Vec<Completed> {
        let mut out = Vec::new();
        while let Some(pending) = self.state.pending.pop_front() {
            if matches!(pending.kind, Kind::Query | Kind::Execute | Kind::Function) {
                let mut done = pending.complete(false);
                if done.error.is_none() {
                    done.error = Some(StatementError {
                        severity: "FATAL".into(),
                        sqlstate: "08006".into(),
                        message: "the session ended before the statement finished".into(),
                    });
                }
                out.push(done);
            }
        }
        out
    }
}

impl State {
    fn push(&mut self, pending: Pending) -> Result<(), TrackError> {
        if self.pending.len() >= MAX_PENDING {
            return Err(TrackError::Limit("too many pipelined requests"));
        }
        self.pending.push_back(pending);
        Ok(())
    }

    fn on_client(&mut self, seen: Seen<'_>) -> Result<(), TrackError> {
        let (tag, body, len) = match seen {
            Seen::Skipped { tag: b'd', len } => {
                if let Some(front) = self.pending.front_mut()
                    && let Some((_, bytes)) = front.copy.as_mut()
                {
                    *bytes += len as u64;
                }
                return Ok(());
            }
            Seen::Skipped { .. } => return Ok(()),
            Seen::Chunk { tag, data } => {
                self.stream_text(tag, data);
                return Ok(());
            }
            Seen::Message { tag, body, len } => (tag, body, len),
        };
        if len > SCAN_CAP {
            // Only Query and Parse carry text long enough to matter; the
            // rest of an overlong message is not needed.
            let streamed = self.streaming.take();
            if self.logging && matches!(tag, b'Q' | b'P') {
                self.log.extend_from_slice(b"\r\n");
            }
            return match tag {
                b'Q' | b'P' => {
                    let statement = Arc::new(streamed_statement(tag, body, streamed));
                    if tag == b'Q' {
                        let mut pending = Pending::new(Kind::Query);
                        pending.statement = Some(statement);
                        self.push(pending)
                    } else {
                        let name = protocol::cstr(body)
                            .map(|(n, _)| n.to_vec())
                            .unwrap_or_default();
                        self.prepare(name, statement.clone())?;
                        let mut pending = Pending::new(Kind::Parse);
                        pending.statement = Some(statement);
                        self.push(pending)
                    }
                }
                b'B' => {
                    // A Bind too long to inspect: its portal runs an unknown statement.
                    let portal = protocol::cstr(body)
                        .map(|(p, _)| p.to_vec())
                        .unwrap_or_default();
                    let statement = protocol::cstr(body)
                        .and_then(|(_, rest)| protocol::cstr(rest))
                        .map(|(s, _)| s.to_vec())
                        .unwrap_or_default();
                    let statement = self
                        .statements
                        .get(&statement)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Statement::unknown(&statement)));
                    self.bind(
                        portal,
                        Portal {
                            statement,
                            params: 0,
                            values: None,
                        },
                    )
                }
                _ => Ok(()),
            };
        }
        match protocol::parse_frontend(tag, body)? {
            Frontend::Query { sql } => {
                self.log_statement(None, sql);
                let mut pending = Pending::new(Kind::Query);
                pending.statement = Some(Arc::new(Statement::from_sql(sql, None)));
                self.push(pending)?;
            }
            Frontend::Parse { name, sql, .. } => {
                self.log_statement(Some(name), sql);
                let statement = Arc::new(Statement::from_sql(sql, Some(name)));
                self.prepare(name.to_vec(), statement.clone())?;
                let mut pending = Pending::new(Kind::Parse);
                pending.statement = Some(statement);
                self.push(pending)?;
            }
            Frontend::Bind {
                portal,
                statement,
                formats,
                params,
            } => {
                let prepared = self
                    .statements
                    .get(statement)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Statement::unknown(statement)));
                let values = self.record_values.then(|| bind_values(&formats, &params));
                self.bind(
                    portal.to_vec(),
                    Portal {
                        statement: prepared,
                        params: params.len(),
                        values,
                    },
                )?;
            }
            Frontend::Execute { portal, .. } => {
                let mut pending = Pending::new(Kind::Execute);
                match self.portals.get(portal) {
                    Some(bound) => {
                        pending.statement = Some(bound.statement.clone());
                        pending.params = bound.params;
                        pending.values = bound.values.clone();
                    }
                    None => pending.statement = Some(Arc::new(Statement::unknown(portal))),
                }
                self.push(pending)?;
            }
            Frontend::Close { kind, name } => {
                if kind == b'S' {
                    self.statements.remove(name);
                } else {
                    self.portals.remove(name);
                }
            }
            Frontend::Sync => self.push(Pending::new(Kind::Sync))?,
            Frontend::FunctionCall { oid, args } => {
                let mut pending = Pending::new(Kind::Function);
                pending.function_oid = Some(oid);
                pending.params = args;
                self.push(pending)?;
            }
            Frontend::Terminate => self.terminated = true,
            _ => {}
        }
        Ok(())
    }

    fn prepare(&mut self, name: Vec<u8>, statement: Arc<Statement>) -> Result<(), TrackError> {
        if self.statements.len() >= MAX_NAMED && !self.statements.contains_key(&name) {
            return Err(TrackError::Limit("too many prepared statements"));
        }
        self.statements.insert(name, statement);
        Ok(())
    }

    fn bind(&mut self, name: Vec<u8>, portal: Portal) -> Result<(), TrackError> {
        if self.portals.len() >= MAX_NAMED && !self.portals.contains_key(&name) {
            return Err(TrackError::Limit("too many open portals"));
        }
        self.portals.insert(name, portal);
        Ok(())
    }

    fn log_statement(&mut self, name: Option<&[u8]>, sql: &[u8]) {
        if !self.logging {
            return;
        }
        if let Some(name) = name {
            self.log.extend_from_slice(b"-- parse ");
            self.log.extend_from_slice(name);
            self.log.extend_from_slice(b"\r\n");
        }
        self.log.extend_from_slice(sql);
        self.log.extend_from_slice(b"\r\n");
    }

    fn stream_text(&mut self, tag: u8, data: &[u8]) {
        if tag != b'Q' && tag != b'P' {
            return;
        }
        if self.streaming.is_none() && self.logging && tag == b'P' {
            self.log.extend_from_slice(b"-- parse\r\n");
        }
        let streaming = self.streaming.get_or_insert_with(|| Streaming {
            hasher: Sha256::new(),
            in_name: tag == b'P',
            done: false,
            bytes: 0,
        });
        let mut data = data;
        if streaming.in_name {
            match data.iter().position(|&b| b == 0) {
                Some(end) => {
                    streaming.in_name = false;
                    data = &data[end + 1..];
                }
                None => return,
            }
        }
        if streaming.done {
            return;
        }
        let text = match data.iter().position(|&b| b == 0) {
            Some(end) => {
                streaming.done = true;
                &data[..end]
            }
            None => data,
        };
        streaming.hasher.update(text);
        streaming.bytes += text.len();
        if self.logging {
            self.log.extend_from_slice(text);
        }
    }

    fn on_server(&mut self, seen: Seen<'_>, done: &mut Vec<Completed>) -> Result<(), TrackError> {
        let (tag, body) = match seen {
            Seen::Skipped { tag: b'D', .. } => {
                if let Some(front) = self.front_statement() {
                    front.rows_sent += 1;
                }
                return Ok(());
            }
            Seen::Skipped { tag: b'd', len } => {
                if let Some(front) = self.front_statement()
                    && let Some((_, bytes)) = front.copy.as_mut()
                {
                    *bytes += len as u64;
                }
                return Ok(());
            }
            Seen::Skipped { .. } | Seen::Chunk { .. } => return Ok(()),
            Seen::Message { tag, body, .. } => (tag, body),
        };
        match protocol::parse_backend(tag, body)? {
            Backend::ParseComplete
                if self.pending.front().is_some_and(|p| p.kind == Kind::Parse) =>
            {
                self.pending.pop_front();
            }
            Backend::CommandComplete(command) => {
                let rows = protocol::command_rows(command);
                if let Some(front) = self.front_statement() {
                    if front.commands.len() < MAX_COMMANDS {
                        front
                            .commands
                            .push(String::from_utf8_lossy(command).into_owned());
                    }
                    if let Some(rows) = rows {
                        front.rows = Some(front.rows.unwrap_or(0) + rows);
                    }
                    if front.kind == Kind::Execute {
                        self.finish_front(done, false);
                    }
                }
            }
            Backend::EmptyQuery
                if self
                    .front_statement()
                    .is_some_and(|p| p.kind == Kind::Execute) =>
            {
                self.finish_front(done, false);
            }
            Backend::PortalSuspended => {
                if let Some(front) = self.front_statement()
                    && front.kind == Kind::Execute
                {
                    front.suspended = true;
                    self.finish_front(done, false);
                }
            }
            Backend::CopyIn | Backend::CopyOut | Backend::CopyBoth => {
                let direction = match tag {
                    b'G' => "in",
                    b'H' => "out",
                    _ => "both",
                };
                if let Some(front) = self.front_statement() {
                    front.copy = Some((direction, 0));
                }
            }
            Backend::Error(fields) => {
                let error = StatementError {
                    severity: String::from_utf8_lossy(fields.severity).into_owned(),
                    sqlstate: String::from_utf8_lossy(fields.code).into_owned(),
                    message: String::from_utf8_lossy(fields.message).into_owned(),
                };
                self.on_error(error, done);
            }
            Backend::ReadyForQuery(_) => {
                self.ready = true;
                // Everything up to the Sync or Query this answers is done.
                while let Some(front) = self.pending.pop_front() {
                    match front.kind {
                        Kind::Sync => break,
                        Kind::Query | Kind::Function => {
                            done.push(front.complete(false));
                            break;
                        }
                        Kind::Execute => done.push(front.complete(true)),
                        Kind::Parse => {}
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The request a statement-level answer belongs to (Parse requests
    /// already answered are gone).
    fn front_statement(&mut self) -> Option<&mut Pending> {
        self.pending
            .front_mut()
            .filter(|p| matches!(p.kind, Kind::Query | Kind::Execute | Kind::Function))
    }

    fn finish_front(&mut self, done: &mut Vec<Completed>, skipped: bool) {
        if let Some(front) = self.pending.pop_front() {
            done.push(front.complete(skipped));
        }
    }

    fn on_error(&mut self, error: StatementError, done: &mut Vec<Completed>) {
        let Some(front) = self.pending.front_mut() else {
            return;
        };
        match front.kind {
            // Simple protocol: the statement ends at ReadyForQuery.
            Kind::Query | Kind::Function => front.error = Some(error),
            // Extended protocol: the failed request, then everything up to
            // Sync is skipped by the server.
            Kind::Execute | Kind::Parse => {
                front.error = Some(error);
                self.finish_front(done, false);
                while let Some(next) = self.pending.front() {
                    if next.kind == Kind::Sync {
                        break;
                    }
                    if let Some(next) = self.pending.pop_front()
                        && next.kind == Kind::Execute
                    {
                        done.push(next.complete(true));
                    }
                }
            }
            Kind::Sync => {}
        }
    }
}

fn streamed_statement(tag: u8, prefix: &[u8], streamed: Option<Streaming>) -> Statement {
    let (name, text) = if tag == b'P' {
        match protocol::cstr(prefix) {
            Some((name, rest)) => (Some(name), rest),
            None => (None, &[][..]),
        }
    } else {
        (None, prefix)
    };
    let text = &text[..text.len().min(TEXT_MAX)];
    let text = match text.iter().position(|&b| b == 0) {
        Some(end) => &text[..end],
        None => text,
    };
    let (sha256, bytes) = match streamed {
        Some(s) => (hex::encode(s.hasher.finalize()), s.bytes),
        None => (String::new(), text.len()),
    };
    Statement {
        text: prefix_text(text),
        bytes,
        sha256: Some(sha256),
        name: name
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned()),
    }
}

/// Bind values as JSON: text as text, binary as `\x` hex, NULL as null,
/// each bounded.
fn bind_values(formats: &[i16], params: &[Option<&[u8]>]) -> Vec<Value> {
    params
        .iter()
        .take(MAX_VALUES)
        .enumerate()
        .map(|(i, value)| {
            let binary = match formats {
                [] => false,
                [one] => *one == 1,
                many => many.get(i).copied() == Some(1),
            };
            match value {
                None => Value::Null,
                Some(bytes) if binary => {
                    let shown = &bytes[..bytes.len().min(VALUE_MAX / 2)];
                    Value::String(format!("\\x{}", hex::encode(shown)))
                }
                Some(bytes) => Value::String(prefix_text(&bytes[..bytes.len().min(VALUE_MAX)])),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
