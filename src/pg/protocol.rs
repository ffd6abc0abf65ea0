//! PostgreSQL wire protocol v3 as pure functions: startup packets, message
//! framing, the frontend and backend messages the broker looks at, the few
//! messages it writes itself, and an incremental [`Scanner`] that observes a
//! byte stream without buffering more than a bounded prefix of a message.
//!
//! No I/O and nothing but `std`: `fuzz/fuzz_targets/frontend.rs` includes
//! this file as it is.

use std::fmt;

/// `SSLRequest` code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// `GSSENCRequest` code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// `CancelRequest` code.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Protocol 3.0 in a `StartupMessage`.
pub const PROTOCOL_3_0: i32 = 196_608;
/// Largest startup packet accepted (PostgreSQL's own limit).
pub const MAX_STARTUP: usize = 10_000;
/// Largest message accepted (PostgreSQL's own limit is 1 GiB).
pub const MAX_MESSAGE: usize = 1 << 30;

/// A protocol violation: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field below its minimum or above the limit.
    BadLength(i64),
    /// An unknown request code in the startup phase.
    UnknownRequest(i32),
    /// A message whose body does not match its type.
    Malformed(&'static str),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadLength(n) => write!(f, "invalid message length {n}"),
            ProtocolError::UnknownRequest(code) => write!(f, "unsupported request code {code}"),
            ProtocolError::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A packet of the startup phase (no type byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    /// `key` is 4 bytes in protocol 3.0, up to 256 in 3.2.
    Cancel {
        pid: i32,
        key: Vec<u8>,
    },
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Parses one startup packet at the start of `buf`: `Ok(None)` when more
/// bytes are needed, else the packet and how many bytes it took.
pub fn parse_startup(buf: &[u8]) -> Result<Option<(Startup, usize)>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 || len as usize > MAX_STARTUP {
        return Err(ProtocolError::BadLength(i64::from(len)));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[4..len];
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    let packet = match code {
        SSL_REQUEST if rest.is_empty() => Startup::Ssl,
        GSSENC_REQUEST if rest.is_empty() => Startup::GssEnc,
        CANCEL_REQUEST => {
            if rest.len() < 8 || rest.len() > 4 + 256 {
                return Err(ProtocolError::Malformed("CancelRequest"));
            }
            Startup::Cancel {
                pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
                key: rest[4..].to_vec(),
            }
        }
        code if code >> 16 == 3 => {
            let mut params = Vec::new();
            let mut fields = rest;
            loop {
                let (key, after) =
                    cstr(fields).ok_or(ProtocolError::Malformed("StartupMessage"))?;
                if key.is_empty() {
                    if !after.is_empty() {
                        return Err(ProtocolError::Malformed("StartupMessage"));
                    }
                    break;
                }
                let (value, after) =
                    cstr(after).ok_or(ProtocolError::Malformed("StartupMessage"))?;
                let key = std::str::from_utf8(key)
                    .map_err(|_| ProtocolError::Malformed("StartupMessage"))?;
                let value = std::str::from_utf8(value)
                    .map_err(|_| ProtocolError::Malformed("StartupMessage"))?;
                if params.len() >= 64 {
                    return Err(ProtocolError::Malformed("StartupMessage"));
                }
                params.push((key.to_owned(), value.to_owned()));
                fields = after;
            }
            Startup::Startup {
                major: (code >> 16) as u16,
                minor: (code & 0xffff) as u16,
                params,
            }
        }
        other => return Err(ProtocolError::UnknownRequest(other)),
    };
    Ok(Some((packet, len)))
}

/// A typed message split off a buffer: tag, body and the bytes it took.
pub type Split<'a> = (u8, &'a [u8], usize);

/// One complete typed message at the start of `buf`; `Ok(None)` when more
/// bytes are needed.
pub fn split_message(buf: &[u8], max: usize) -> Result<Option<Split<'_>>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > max {
        return Err(ProtocolError::BadLength(i64::from(len)));
    }
    let total = len as usize + 1;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((buf[0], &buf[5..total], total)))
}

/// The frontend messages the broker looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend<'a> {
    Query {
        sql: &'a [u8],
    },
    Parse {
        name: &'a [u8],
        sql: &'a [u8],
        param_types: usize,
    },
    Bind {
        portal: &'a [u8],
        statement: &'a [u8],
        formats: Vec<i16>,
        params: Vec<Option<&'a [u8]>>,
    },
    Execute {
        portal: &'a [u8],
        max_rows: i32,
    },
    Describe {
        kind: u8,
        name: &'a [u8],
    },
    Close {
        kind: u8,
        name: &'a [u8],
    },
    Sync,
    Flush,
    Terminate,
    CopyData(usize),
    CopyDone,
    CopyFail {
        message: &'a [u8],
    },
    FunctionCall {
        oid: i32,
        args: usize,
    },
    /// `PasswordMessage`, `SASLInitialResponse` or `SASLResponse`: which one
    /// depends on the authentication request it answers.
    Password(&'a [u8]),
    Other(u8),
}

/// Decodes a frontend message body.
pub fn parse_frontend(tag: u8, body: &[u8]) -> Result<Frontend<'_>, ProtocolError> {
    let malformed = |what| ProtocolError::Malformed(what);
    Ok(match tag {
        b'Q' => {
            let (sql, rest) = cstr(body).ok_or(malformed("Query"))?;
            if !rest.is_empty() {
                return Err(malformed("Query"));
            }
            Frontend::Query { sql }
        }
        b'P' => {
            let (name, rest) = cstr(body).ok_or(malformed("Parse"))?;
            let (sql, rest) = cstr(rest).ok_or(malformed("Parse"))?;
            let (count, rest) = i16_at(rest).ok_or(malformed("Parse"))?;
            if count < 0 || rest.len() != count as usize * 4 {
                return Err(malformed("Parse"));
            }
            Frontend::Parse {
                name,
                sql,
                param_types: count as usize,
            }
        }
        b'B' => {
            let (portal, rest) = cstr(body).ok_or(malformed("Bind"))?;
            let (statement, rest) = cstr(rest).ok_or(malformed("Bind"))?;
            let (nformats, mut rest) = i16_at(rest).ok_or(malformed("Bind"))?;
            if nformats < 0 {
                return Err(malformed("Bind"));
            }
            let mut formats = Vec::with_capacity((nformats as usize).min(64));
            for _ in 0..nformats {
                let (format, after) = i16_at(rest).ok_or(malformed("Bind"))?;
                formats.push(format);
                rest = after;
            }
            let (nparams, mut rest) = i16_at(rest).ok_or(malformed("Bind"))?;
            if nparams < 0 {
                return Err(malformed("Bind"));
            }
            let mut params = Vec::with_capacity((nparams as usize).min(64));
            for _ in 0..nparams {
                let (len, after) = i32_at(rest).ok_or(malformed("Bind"))?;
                if len == -1 {
                    params.push(None);
                    rest = after;
                } else if len < 0 || after.len() < len as usize {
                    return Err(malformed("Bind"));
                } else {
                    params.push(Some(&after[..len as usize]));
                    rest = &after[len as usize..];
                }
            }
            let (nresults, rest) = i16_at(rest).ok_or(malformed("Bind"))?;
            if nresults < 0 || rest.len() != nresults as usize * 2 {
                return Err(malformed("Bind"));
            }
            Frontend::Bind {
                portal,
                statement,
                formats,
                params,
            }
        }
        b'E' => {
            let (portal, rest) = cstr(body).ok_or(malformed("Execute"))?;
            let (max_rows, rest) = i32_at(rest).ok_or(malformed("Execute"))?;
            if !rest.is_empty() {
                return Err(malformed("Execute"));
            }
            Frontend::Execute { portal, max_rows }
        }
        b'D' | b'C' => {
            let what = if tag == b'D' { "Describe" } else { "Close" };
            let (&kind, rest) = body.split_first().ok_or(malformed(what))?;
            if kind != b'S' && kind != b'P' {
                return Err(malformed(what));
            }
            let (name, rest) = cstr(rest).ok_or(malformed(what))?;
            if !rest.is_empty() {
                return Err(malformed(what));
            }
            if tag == b'D' {
                Frontend::Describe { kind, name }
            } else {
                Frontend::Close { kind, name }
            }
        }
        b'S' => Frontend::Sync,
        b'H' => Frontend::Flush,
        b'X' => Frontend::Terminate,
        b'd' => Frontend::CopyData(body.len()),
        b'c' => Frontend::CopyDone,
        b'f' => {
            let (message, _) = cstr(body).ok_or(malformed("CopyFail"))?;
            Frontend::CopyFail { message }
        }
        b'F' => {
            let (oid, rest) = i32_at(body).ok_or(malformed("FunctionCall"))?;
            let (nformats, mut rest) = i16_at(rest).ok_or(malformed("FunctionCall"))?;
            if nformats < 0 || rest.len() < nformats as usize * 2 {
                return Err(malformed("FunctionCall"));
            }
            rest = &rest[nformats as usize * 2..];
            let (args, _) = i16_at(rest).ok_or(malformed("FunctionCall"))?;
            if args < 0 {
                return Err(malformed("FunctionCall"));
            }
            Frontend::FunctionCall {
                oid,
                args: args as usize,
            }
        }
        b'p' => Frontend::Password(body),
        other => Frontend::Other(other),
    })
}

/// An authentication request from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth<'a> {
    Ok,
    Cleartext,
    Md5([u8; 4]),
    /// Mechanism names offered.
    Sasl(Vec<&'a [u8]>),
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Other(i32),
}

/// The fields of an `ErrorResponse` or `NoticeResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    /// Localized severity (`S`); `V` when present is preferred.
    pub severity: &'a [u8],
    pub code: &'a [u8],
    pub message: &'a [u8],
    pub detail: Option<&'a [u8]>,
    pub hint: Option<&'a [u8]>,
}

/// The backend messages the broker looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend<'a> {
    Authentication(Auth<'a>),
    ParameterStatus { name: &'a [u8], value: &'a [u8] },
    BackendKeyData { pid: i32, key: &'a [u8] },
    ReadyForQuery(u8),
    CommandComplete(&'a [u8]),
    EmptyQuery,
    PortalSuspended,
    ParseComplete,
    Error(Fields<'a>),
    Notice(Fields<'a>),
    CopyIn,
    CopyOut,
    CopyBoth,
    NegotiateProtocolVersion { minor: i32 },
    Other(u8),
}

/// Decodes a backend message body.
pub fn parse_backend(tag: u8, body: &[u8]) -> Result<Backend<'_>, ProtocolError> {
    let malformed = |what| ProtocolError::Malformed(what);
    Ok(match tag {
        b'R' => {
            let (code, rest) = i32_at(body).ok_or(malformed("Authentication"))?;
            Backend::Authentication(match code {
                0 => Auth::Ok,
                3 => Auth::Cleartext,
                5 => {
                    let salt: [u8; 4] = rest
                        .try_into()
                        .map_err(|_| malformed("AuthenticationMD5Password"))?;
                    Auth::Md5(salt)
                }
                10 => {
                    let mut mechanisms = Vec::new();
                    let mut rest = rest;
                    loop {
                        let (name, after) = cstr(rest).ok_or(malformed("AuthenticationSASL"))?;
                        if name.is_empty() {
                            break;
                        }
                        mechanisms.push(name);
                        rest = after;
                    }
                    Auth::Sasl(mechanisms)
                }
                11 => Auth::SaslContinue(rest),
                12 => Auth::SaslFinal(rest),
                other => Auth::Other(other),
            })
        }
        b'S' => {
            let (name, rest) = cstr(body).ok_or(malformed("ParameterStatus"))?;
            let (value, _) = cstr(rest).ok_or(malformed("ParameterStatus"))?;
            Backend::ParameterStatus { name, value }
        }
        b'K' => {
            let (pid, key) = i32_at(body).ok_or(malformed("BackendKeyData"))?;
            if key.len() < 4 || key.len() > 256 {
                return Err(malformed("BackendKeyData"));
            }
            Backend::BackendKeyData { pid, key }
        }
        b'Z' => match body {
            [status] => Backend::ReadyForQuery(*status),
            _ => return Err(malformed("ReadyForQuery")),
        },
        b'C' => Backend::CommandComplete(cstr(body).ok_or(malformed("CommandComplete"))?.0),
        b'I' => Backend::EmptyQuery,
        b's' => Backend::PortalSuspended,
        b'1' => Backend::ParseComplete,
        b'E' => Backend::Error(fields(body).ok_or(malformed("ErrorResponse"))?),
        b'N' => Backend::Notice(fields(body).ok_or(malformed("NoticeResponse"))?),
        b'G' => Backend::CopyIn,
        b'H' => Backend::CopyOut,
        b'W' => Backend::CopyBoth,
        b'v' => {
            let (minor, _) = i32_at(body).ok_or(malformed("NegotiateProtocolVersion"))?;
            Backend::NegotiateProtocolVersion { minor }
        }
        other => Backend::Other(other),
    })
}

fn fields(body: &[u8]) -> Option<Fields<'_>> {
    let mut out = Fields::default();
    let mut rest = body;
    let mut localized = None;
    loop {
        let (&kind, after) = rest.split_first()?;
        if kind == 0 {
            break;
        }
        let (value, after) = cstr(after)?;
        match kind {
            b'S' => localized = Some(value),
            b'V' => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            b'D' => out.detail = Some(value),
            b'H' => out.hint = Some(value),
            _ => {}
        }
        rest = after;
    }
    if out.severity.is_empty() {
        out.severity = localized.unwrap_or_default();
    }
    Some(out)
}

/// The row count of a `CommandComplete` tag (`SELECT 5`, `INSERT 0 1`,
/// `COPY 10`), if it carries one.
pub fn command_rows(tag: &[u8]) -> Option<u64> {
    let last = tag.rsplit(|&b| b == b' ').next()?;
    if last.is_empty() || tag.len() == last.len() {
        return None;
    }
    std::str::from_utf8(last).ok()?.parse().ok()
}

// ---- encoders -------------------------------------------------------------

/// Severity of a message the broker writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Notice,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
        }
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn push_cstr(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().filter(|&b| b != 0));
    out.push(0);
}

fn fields_message(
    tag: u8,
    severity: Severity,
    code: &str,
    text: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + text.len());
    for kind in [b'S', b'V'] {
        body.push(kind);
        push_cstr(&mut body, severity.as_str());
    }
    body.push(b'C');
    push_cstr(&mut body, code);
    body.push(b'M');
    push_cstr(&mut body, text);
    if let Some(detail) = detail {
        body.push(b'D');
        push_cstr(&mut body, detail);
    }
    if let Some(hint) = hint {
        body.push(b'H');
        push_cstr(&mut body, hint);
    }
    body.push(0);
    message(tag, &body)
}

/// An `ErrorResponse`.
pub fn error_response(
    severity: Severity,
    code: &str,
    text: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Vec<u8> {
    fields_message(b'E', severity, code, text, detail, hint)
}

/// A `NoticeResponse`.
pub fn notice_response(severity: Severity, code: &str, text: &str) -> Vec<u8> {
    fields_message(b'N', severity, code, text, None, None)
}

/// An `Authentication*` request (0 = ok, 3 = cleartext password).
pub fn authentication(code: i32) -> Vec<u8> {
    message(b'R', &code.to_be_bytes())
}

pub fn backend_key_data(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(key);
    message(b'K', &body)
}

pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut body = Vec::new();
    push_cstr(&mut body, name);
    push_cstr(&mut body, value);
    message(b'S', &body)
}

pub fn ready_for_query(status: u8) -> Vec<u8> {
    message(b'Z', &[status])
}

/// `NegotiateProtocolVersion`: the newest minor version supported and the
/// protocol options not recognized.
pub fn negotiate_protocol_version(minor: i32, unrecognized: &[&str]) -> Vec<u8> {
    let mut body = minor.to_be_bytes().to_vec();
    body.extend_from_slice(&(unrecognized.len() as i32).to_be_bytes());
    for option in unrecognized {
        push_cstr(&mut body, option);
    }
    message(b'v', &body)
}

pub fn ssl_request() -> Vec<u8> {
    let mut out = 8i32.to_be_bytes().to_vec();
    out.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    out
}

pub fn cancel_request(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut out = ((12 + key.len()) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// A protocol 3.0 `StartupMessage`.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (key, value) in params {
        push_cstr(&mut body, key);
        push_cstr(&mut body, value);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A `PasswordMessage` (a NUL-terminated password).
pub fn password_message(password: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(password.len() + 1);
    body.extend_from_slice(password);
    body.push(0);
    message(b'p', &body)
}

pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    push_cstr(&mut body, mechanism);
    body.extend_from_slice(&(data.len() as i32).to_be_bytes());
    body.extend_from_slice(data);
    message(b'p', &body)
}

pub fn sasl_response(data: &[u8]) -> Vec<u8> {
    message(b'p', data)
}

pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// The text of a `Query`.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(sql.len() + 1);
    push_cstr(&mut body, sql);
    message(b'Q', &body)
}

// ---- scanner ------------------------------------------------------------

/// What a [`Scanner`] saw in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen<'a> {
    /// A message of an interesting type, complete. `body` is all of it when
    /// `len <= cap`, else its first `cap` bytes.
    Message { tag: u8, body: &'a [u8], len: usize },
    /// Body bytes of an interesting message longer than `cap`, in order,
    /// all of them, before its `Message` (for hashing what is not kept).
    Chunk { tag: u8, data: &'a [u8] },
    /// The header of a message of another type (not kept).
    Skipped { tag: u8, len: usize },
}

/// Observes a message stream fed in arbitrary pieces. Messages of
/// interesting types are handed over whole (up to `cap` bytes); the others
/// are only counted. Memory stays below `cap` whatever the stream holds.
pub struct Scanner {
    interest: [bool; 256],
    cap: usize,
    head: [u8; 5],
    head_len: usize,
    body: Option<Body>,
    keep: Vec<u8>,
}

struct Body {
    tag: u8,
    len: usize,
    remaining: usize,
    keep: bool,
    over: bool,
}

impl Scanner {
    pub fn new(interesting: &[u8], cap: usize) -> Self {
        let mut interest = [false; 256];
        for &tag in interesting {
            interest[tag as usize] = true;
        }
        Self {
            interest,
            cap,
            head: [0; 5],
            head_len: 0,
            body: None,
            keep: Vec::new(),
        }
    }

    /// True between two messages: something else may be written into the
    /// stream here.
    pub fn at_boundary(&self) -> bool {
        self.body.is_none() && self.head_len == 0
    }

    /// Feeds the next bytes of the stream.
    pub fn feed<F>(&mut self, mut data: &[u8], on: &mut F) -> Result<(), ProtocolError>
    where
        F: FnMut(Seen<'_>),
    {
        while !data.is_empty() {
            let Some(body) = self.body.as_mut() else {
                let take = (5 - self.head_len).min(data.len());
                self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
                self.head_len += take;
                data = &data[take..];
                if self.head_len < 5 {
                    break;
                }
                self.head_len = 0;
                let tag = self.head[0];
                let len =
                    i32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]);
                if len < 4 || len as usize > MAX_MESSAGE {
                    return Err(ProtocolError::BadLength(i64::from(len)));
                }
                let len = len as usize - 4;
                let keep = self.interest[tag as usize];
                if !keep {
                    on(Seen::Skipped { tag, len });
                } else if len <= self.cap && data.len() >= len {
                    // Whole in this piece: no copy.
                    on(Seen::Message {
                        tag,
                        body: &data[..len],
                        len,
                    });
                    data = &data[len..];
                    continue;
                }
                if len == 0 {
                    continue;
                }
                self.keep.clear();
                self.body = Some(Body {
                    tag,
                    len,
                    remaining: len,
                    keep,
                    over: len > self.cap,
                });
                continue;
            };
            let take = body.remaining.min(data.len());
            let chunk = &data[..take];
            data = &data[take..];
            body.remaining -= take;
            if body.keep {
                if body.over {
                    on(Seen::Chunk {
                        tag: body.tag,
                        data: chunk,
                    });
                }
                let room = self.cap.saturating_sub(self.keep.len()).min(chunk.len());
                self.keep.extend_from_slice(&chunk[..room]);
            }
            if body.remaining == 0 {
                let (tag, len, keep) = (body.tag, body.len, body.keep);
                self.body = None;
                if keep {
                    let kept = std::mem::take(&mut self.keep);
                    on(Seen::Message {
                        tag,
                        body: &kept,
                        len,
                    });
                    self.keep = kept;
                    if self.keep.capacity() > 4 * self.cap.max(4096) {
                        self.keep = Vec::new();
                    }
                }
            }
        }
        Ok(())
    }
}

// ---- helpers ----------------------------------------------------------------

/// A NUL-terminated string and what follows it.
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

fn i16_at(buf: &[u8]) -> Option<(i16, &[u8])> {
    let bytes: [u8; 2] = buf.get(..2)?.try_into().ok()?;
    Some((i16::from_be_bytes(bytes), &buf[2..]))
}

fn i32_at(buf: &[u8]) -> Option<(i32, &[u8])> {
    let bytes: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some((i32::from_be_bytes(bytes), &buf[4..]))
}

#[cfg(test)]
mod tests;
