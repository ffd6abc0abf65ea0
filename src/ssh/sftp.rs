//! Reads both directions of an SFTP (version 3) stream to audit every file
//! operation (`ssh.file_transfer`): opens, byte totals read and written per
//! file (told when the file is closed), removals, renames, links, directory
//! changes and listings, attribute changes, server-side copies, and any
//! other extension by name.
//!
//! The client's side is parsed completely and strictly: every packet up to
//! OpenSSH sftp-server's own limit ([`MAX_PACKET`]) is read whole, except
//! WRITE data, which streams past and is only counted. A packet that is
//! larger, of an unknown type, or whose fields do not parse is refused:
//! the caller closes the channel. Nothing reaches the server that this
//! parser did not understand, so no file operation goes unaudited. The
//! server's side is read to learn handles, byte counts and results.
//!
//! Untrusted input, so this file is `std`-only and fuzzed as it is
//! (`fuzz/fuzz_targets/sftp.rs`); memory is bounded by [`MAX_PACKET`] per
//! direction and by the handle and request tables' caps.

use std::collections::{BTreeMap, HashMap};

/// OpenSSH sftp-server's `SFTP_MAX_MSG_LENGTH`: it refuses larger packets too.
pub const MAX_PACKET: usize = 256 * 1024;
/// Open handles and unanswered requests followed at most (beyond them a
/// close is still audited, without its path or byte counts).
const MAX_HANDLES: usize = 1024;
const MAX_PENDING: usize = 4096;
/// A handle is at most 256 bytes (draft-ietf-secsh-filexfer-02).
const MAX_HANDLE: usize = 256;

/// A file operation, with what is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `direction` is `upload` (write/create/truncate/append), `download`
    /// (read only) or `open` (neither flag).
    Open {
        path: String,
        direction: &'static str,
    },
    /// A file opened earlier was closed (`closed`: the server confirmed;
    /// false when the channel ended first): its byte totals.
    Close {
        path: Option<String>,
        direction: Option<&'static str>,
        bytes_read: u64,
        bytes_written: u64,
        closed: bool,
    },
    Remove {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    /// SETSTAT / LSETSTAT by path, FSETSTAT by handle (its path if known).
    Setstat {
        path: Option<String>,
        changes: Vec<&'static str>,
    },
    /// OpenSSH's argument order: the link's contents, then its name.
    Symlink {
        target: String,
        link: String,
    },
    Hardlink {
        target: String,
        link: String,
    },
    /// A directory listing (OPENDIR).
    List {
        path: String,
    },
    /// The `copy-data` extension: a copy inside the server.
    Copy {
        from: Option<String>,
        to: Option<String>,
        length: u64,
    },
    /// An extension this parser does not name an operation for.
    Extended {
        name: String,
    },
}

/// Why a client packet was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// Both directions of one SFTP channel.
#[derive(Default)]
pub struct Auditor {
    client: Framer,
    server: Framer,
    /// Open file handles and what they are.
    handles: HashMap<Vec<u8>, File>,
    /// Directory handles (listed when opened; closes are not file events).
    dirs: HashMap<Vec<u8>, ()>,
    /// Requests whose answer matters, by request id.
    pending: BTreeMap<u32, Pending>,
    /// The protocol version the server chose (3 is the only one parsed).
    version: Option<u32>,
    /// Set once a client packet was refused: nothing more is parsed.
    refused: bool,
}

struct File {
    path: String,
    direction: &'static str,
    read: u64,
    written: u64,
}

enum Pending {
    Open(String, &'static str),
    Opendir,
    Read(Vec<u8>),
    Close(Vec<u8>),
}

/// Splits a stream into packets: the length and type, then either the
/// whole body or (WRITE, DATA) a header followed by streamed bytes.
#[derive(Default)]
struct Framer {
    head: Vec<u8>,
    body: Vec<u8>,
    /// Bytes of the current packet still to come (after the 5-byte head).
    left: usize,
    /// The current packet streams its tail: bytes to count, not keep.
    streaming: Option<Stream>,
    /// Out of step (server side only): everything else is ignored.
    lost: bool,
}

/// The streamed tail of a WRITE (client) or DATA (server) packet: `count`
/// of its `remaining` bytes are file data of `handle`.
#[derive(Clone)]
struct Stream {
    handle: Option<Vec<u8>>,
    remaining: usize,
    count: usize,
}

impl Stream {
    /// Passes `n` bytes; returns how many of them were file data.
    fn pass(&mut self, n: usize) -> u64 {
        self.remaining -= n;
        let counted = n.min(self.count);
        self.count -= counted;
        counted as u64
    }
}

const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_LSTAT: u8 = 7;
const FXP_FSTAT: u8 = 8;
const FXP_SETSTAT: u8 = 9;
const FXP_FSETSTAT: u8 = 10;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_REALPATH: u8 = 16;
const FXP_STAT: u8 = 17;
const FXP_RENAME: u8 = 18;
const FXP_READLINK: u8 = 19;
const FXP_SYMLINK: u8 = 20;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_EXTENDED: u8 = 200;

const FXF_READ: u32 = 0x01;
const FXF_WRITE: u32 = 0x02;
const FXF_APPEND: u32 = 0x04;
const FXF_CREAT: u32 = 0x08;
const FXF_TRUNC: u32 = 0x10;

const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// A WRITE's fixed part: id, handle (≤ 256), offset, data length.
const WRITE_HEAD: usize = 4 + 4 + MAX_HANDLE + 8 + 4;
/// A DATA's fixed part: id, data length.
const DATA_HEAD: usize = 4 + 4;

impl Auditor {
    /// Feeds client→server bytes; returns the operations they complete, to
    /// be recorded before the bytes are passed on. After an error, refuse
    /// the channel (the bytes must not be passed on).
    pub fn client(&mut self, mut data: &[u8]) -> Result<Vec<Operation>, Refused> {
        if self.refused {
            return Err(Refused("the channel was refused".into()));
        }
        let mut out = Vec::new();
        while !data.is_empty() {
            let step = self.client_step(&mut data, &mut out);
            if let Err(refused) = step {
                self.refused = true;
                return Err(refused);
            }
        }
        Ok(out)
    }

    /// Feeds server→client bytes; returns what they complete (closes with
    /// their byte totals). Never refuses: a server it cannot follow only
    /// costs the totals.
    pub fn server(&mut self, mut data: &[u8]) -> Vec<Operation> {
        let mut out = Vec::new();
        while !data.is_empty() && !self.server.lost {
            self.server_step(&mut data, &mut out);
        }
        out
    }

    /// The channel ended: files still open, with what they moved.
    pub fn finish(&mut self) -> Vec<Operation> {
        let mut files: Vec<File> = self.handles.drain().map(|(_, f)| f).collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
            .into_iter()
            .map(|f| Operation::Close {
                path: Some(f.path),
                direction: Some(f.direction),
                bytes_read: f.read,
                bytes_written: f.written,
                closed: false,
            })
            .collect()
    }

    fn client_step(&mut self, data: &mut &[u8], out: &mut Vec<Operation>) -> Result<(), Refused> {
        // The streamed tail of a WRITE: count it.
        if let Some(stream) = self.client.streaming.as_mut() {
            let n = stream.remaining.min(data.len());
            let counted = stream.pass(n);
            self.client.left -= n;
            *data = &data[n..];
            if let Some(file) = stream.handle.as_ref().and_then(|h| self.handles.get_mut(h)) {
                file.written += counted;
            }
            if self.client.left == 0 {
                self.client.reset();
            }
            return Ok(());
        }
        let Some((kind, length)) = self.client.head(data) else {
            return Ok(());
        };
        if length == 0 {
            return Err(Refused("an SFTP packet without a type".into()));
        }
        if length > MAX_PACKET {
            return Err(Refused(format!(
                "an SFTP packet of {length} bytes (more than the {MAX_PACKET} sftp-server accepts)"
            )));
        }
        let body_len = length - 1;
        if kind == FXP_WRITE {
            let want = WRITE_HEAD.min(body_len);
            if !self.client.fill(data, want) {
                return Ok(());
            }
            let mut stream = parse_write_head(&self.client.body, body_len)
                .ok_or_else(|| Refused("a malformed SFTP WRITE".into()))?;
            // Bytes after the fixed part already in the buffer.
            let buffered = self.client.body.len() - (body_len - stream.remaining);
            let counted = stream.pass(buffered);
            if let Some(file) = stream.handle.as_ref().and_then(|h| self.handles.get_mut(h)) {
                file.written += counted;
            }
            if self.client.left == 0 {
                self.client.reset();
            } else {
                self.client.streaming = Some(stream);
            }
            return Ok(());
        }
        if !self.client.fill(data, body_len) {
            return Ok(());
        }
        let body = std::mem::take(&mut self.client.body);
        self.client.reset();
        self.request(kind, &body, out)
            .ok_or_else(|| Refused(format!("a malformed or unknown SFTP request (type {kind})")))
    }

    /// One whole client packet.
    fn request(&mut self, kind: u8, body: &[u8], out: &mut Vec<Operation>) -> Option<()> {
        let mut r = Reader(body);
        if kind == FXP_INIT {
            r.u32()?;
            while !r.0.is_empty() {
                r.bytes()?;
                r.bytes()?;
            }
            return Some(());
        }
        let id = r.u32()?;
        match kind {
            FXP_OPEN => {
                let path = r.string()?;
                let flags = r.u32()?;
                attrs(&mut r)?;
                let direction = if flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC) != 0 {
                    "upload"
                } else if flags & FXF_READ != 0 {
                    "download"
                } else {
                    "open"
                };
                self.expect(id, Pending::Open(path.clone(), direction));
                out.push(Operation::Open { path, direction });
            }
            FXP_CLOSE => {
                let handle = r.handle()?;
                self.expect(id, Pending::Close(handle));
            }
            FXP_READ => {
                let handle = r.handle()?;
                r.u64()?;
                r.u32()?;
                self.expect(id, Pending::Read(handle));
            }
            FXP_LSTAT | FXP_STAT | FXP_REALPATH | FXP_READLINK => {
                r.bytes()?;
            }
            FXP_FSTAT | FXP_READDIR => {
                r.handle()?;
            }
            FXP_SETSTAT => {
                let path = r.string()?;
                let changes = attrs(&mut r)?;
                out.push(Operation::Setstat {
                    path: Some(path),
                    changes,
                });
            }
            FXP_FSETSTAT => {
                let handle = r.handle()?;
                let changes = attrs(&mut r)?;
                out.push(Operation::Setstat {
                    path: self.path_of(&handle),
                    changes,
                });
            }
            FXP_OPENDIR => {
                let path = r.string()?;
                self.expect(id, Pending::Opendir);
                out.push(Operation::List { path });
            }
            FXP_REMOVE => out.push(Operation::Remove { path: r.string()? }),
            FXP_MKDIR => {
                let path = r.string()?;
                attrs(&mut r)?;
                out.push(Operation::Mkdir { path });
            }
            FXP_RMDIR => out.push(Operation::Rmdir { path: r.string()? }),
            FXP_RENAME => out.push(Operation::Rename {
                from: r.string()?,
                to: r.string()?,
            }),
            FXP_SYMLINK => out.push(Operation::Symlink {
                target: r.string()?,
                link: r.string()?,
            }),
            FXP_EXTENDED => out.extend(self.extended(&mut r)?),
            _ => return None,
        }
        Some(())
    }

    /// An EXTENDED request: OpenSSH's extensions are parsed; any other is
    /// recorded by name (the server answers it with "unsupported" or does
    /// what it does, but never unrecorded).
    fn extended(&mut self, r: &mut Reader<'_>) -> Option<Option<Operation>> {
        let name = r.string()?;
        Some(Some(match name.as_str() {
            "posix-rename@openssh.com" => Operation::Rename {
                from: r.string()?,
                to: r.string()?,
            },
            "hardlink@openssh.com" => Operation::Hardlink {
                target: r.string()?,
                link: r.string()?,
            },
            "lsetstat@openssh.com" => {
                let path = r.string()?;
                let changes = attrs(r)?;
                Operation::Setstat {
                    path: Some(path),
                    changes,
                }
            }
            "copy-data" => {
                let from = r.handle()?;
                r.u64()?;
                let length = r.u64()?;
                let to = r.handle()?;
                r.u64()?;
                Operation::Copy {
                    from: self.path_of(&from),
                    to: self.path_of(&to),
                    length,
                }
            }
            // Read-only queries about the server or a file: not file
            // operations (their arguments still had to be a string).
            "limits@openssh.com"
            | "statvfs@openssh.com"
            | "fstatvfs@openssh.com"
            | "fsync@openssh.com"
            | "expand-path@openssh.com"
            | "home-directory"
            | "users-groups-by-id@openssh.com" => return Some(None),
            _ => Operation::Extended { name },
        }))
    }

    fn server_step(&mut self, data: &mut &[u8], out: &mut Vec<Operation>) {
        if let Some(stream) = self.server.streaming.as_mut() {
            let n = stream.remaining.min(data.len());
            let counted = stream.pass(n);
            self.server.left -= n;
            *data = &data[n..];
            if let Some(file) = stream.handle.as_ref().and_then(|h| self.handles.get_mut(h)) {
                file.read += counted;
            }
            if self.server.left == 0 {
                self.server.reset();
            }
            return;
        }
        let Some((kind, length)) = self.server.head(data) else {
            return;
        };
        if length == 0 {
            self.server.lost = true;
            return;
        }
        let body_len = length - 1;
        if kind == FXP_DATA {
            if !self.server.fill(data, DATA_HEAD.min(body_len)) {
                return;
            }
            let mut r = Reader(&self.server.body);
            let (Some(id), Some(len)) = (r.u32(), r.u32()) else {
                self.server.lost = true;
                return;
            };
            if DATA_HEAD + len as usize > body_len {
                self.server.lost = true;
                return;
            }
            let handle = match self.pending.remove(&id) {
                Some(Pending::Read(handle)) => Some(handle),
                _ => None,
            };
            let mut stream = Stream {
                handle,
                remaining: body_len - DATA_HEAD,
                count: len as usize,
            };
            let counted = stream.pass(self.server.body.len() - DATA_HEAD);
            if let Some(file) = stream.handle.as_ref().and_then(|h| self.handles.get_mut(h)) {
                file.read += counted;
            }
            if self.server.left == 0 {
                self.server.reset();
            } else {
                self.server.streaming = Some(stream);
            }
            return;
        }
        // Answers the auditor needs are small; others stream past unread.
        let wanted = matches!(kind, FXP_VERSION | FXP_STATUS | FXP_HANDLE);
        if !wanted || body_len > MAX_PACKET {
            if self.server.left == 0 {
                self.server.reset();
            } else {
                self.server.streaming = Some(Stream {
                    handle: None,
                    remaining: self.server.left,
                    count: 0,
                });
            }
            return;
        }
        if !self.server.fill(data, body_len) {
            return;
        }
        let body = std::mem::take(&mut self.server.body);
        self.server.reset();
        self.answer(kind, &body, out);
    }

    /// One whole answer of interest.
    fn answer(&mut self, kind: u8, body: &[u8], out: &mut Vec<Operation>) {
        let mut r = Reader(body);
        let Some(id) = r.u32() else {
            return;
        };
        match kind {
            FXP_VERSION => self.version = Some(id),
            FXP_HANDLE => {
                let Some(handle) = r.handle() else {
                    return;
                };
                match self.pending.remove(&id) {
                    Some(Pending::Open(path, direction)) if self.handles.len() < MAX_HANDLES => {
                        self.handles.insert(
                            handle,
                            File {
                                path,
                                direction,
                                read: 0,
                                written: 0,
                            },
                        );
                    }
                    Some(Pending::Opendir) if self.dirs.len() < MAX_HANDLES => {
                        self.dirs.insert(handle, ());
                    }
                    _ => {}
                }
            }
            // A close confirmed; a failed open or the end of a read has
            // nothing more to follow.
            FXP_STATUS => {
                if let Some(Pending::Close(handle)) = self.pending.remove(&id) {
                    if self.dirs.remove(&handle).is_some() {
                        return;
                    }
                    let file = self.handles.remove(&handle);
                    out.push(Operation::Close {
                        path: file.as_ref().map(|f| f.path.clone()),
                        direction: file.as_ref().map(|f| f.direction),
                        bytes_read: file.as_ref().map_or(0, |f| f.read),
                        bytes_written: file.as_ref().map_or(0, |f| f.written),
                        closed: true,
                    });
                }
            }
            _ => {}
        }
    }

    /// The server speaks another version than 3: its packets would be
    /// misread, so the caller refuses the channel.
    pub fn unsupported_version(&self) -> Option<u32> {
        self.version.filter(|v| *v != 3)
    }

    fn expect(&mut self, id: u32, pending: Pending) {
        if self.pending.len() >= MAX_PENDING
            && let Some(oldest) = self.pending.keys().next().copied()
        {
            self.pending.remove(&oldest);
        }
        self.pending.insert(id, pending);
    }

    fn path_of(&self, handle: &[u8]) -> Option<String> {
        self.handles.get(handle).map(|f| f.path.clone())
    }
}

impl Framer {
    /// Completes the 5-byte head (length, type); then the packet's kind
    /// and length (type included), with `left` set to the body's length.
    fn head(&mut self, data: &mut &[u8]) -> Option<(u8, usize)> {
        let length =
            |head: &[u8]| u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if self.head.len() < 5 {
            let n = (5 - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            *data = &data[n..];
            if self.head.len() < 5 {
                return None;
            }
            self.left = length(&self.head).saturating_sub(1);
        }
        Some((self.head[4], length(&self.head)))
    }

    /// Buffers body bytes until `want` of them are there.
    fn fill(&mut self, data: &mut &[u8], want: usize) -> bool {
        let need = want.saturating_sub(self.body.len());
        let n = need.min(data.len());
        self.body.extend_from_slice(&data[..n]);
        self.left -= n;
        *data = &data[n..];
        self.body.len() >= want
    }

    fn reset(&mut self) {
        self.head.clear();
        self.body.clear();
        self.left = 0;
        self.streaming = None;
    }
}

/// The fixed part of a WRITE (in `head`, at most [`WRITE_HEAD`] bytes of a
/// body of `body_len`): its handle and the data still to stream.
fn parse_write_head(head: &[u8], body_len: usize) -> Option<Stream> {
    let mut r = Reader(head);
    r.u32()?;
    let handle = r.handle()?;
    r.u64()?;
    let len = r.u32()? as usize;
    let fixed = 4 + 4 + handle.len() + 8 + 4;
    // sftp-server reads the data as one string: the packet holds exactly it
    // (trailing bytes are skipped by the server, and by us).
    if fixed + len > body_len {
        return None;
    }
    Some(Stream {
        handle: Some(handle),
        remaining: body_len - fixed,
        count: len,
    })
}

/// Parses an ATTRS structure; returns which attributes it changes.
fn attrs(r: &mut Reader<'_>) -> Option<Vec<&'static str>> {
    let flags = r.u32()?;
    let mut changes = Vec::new();
    if flags & ATTR_SIZE != 0 {
        r.u64()?;
        changes.push("size");
    }
    if flags & ATTR_UIDGID != 0 {
        r.u32()?;
        r.u32()?;
        changes.push("owner");
    }
    if flags & ATTR_PERMISSIONS != 0 {
        r.u32()?;
        changes.push("permissions");
    }
    if flags & ATTR_ACMODTIME != 0 {
        r.u32()?;
        r.u32()?;
        changes.push("times");
    }
    if flags & ATTR_EXTENDED != 0 {
        let count = r.u32()?;
        for _ in 0..count {
            r.bytes()?;
            r.bytes()?;
        }
        changes.push("extended");
    }
    Some(changes)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> Option<u32> {
        let bytes: [u8; 4] = self.0.get(..4)?.try_into().ok()?;
        self.0 = &self.0[4..];
        Some(u32::from_be_bytes(bytes))
    }

    fn u64(&mut self) -> Option<u64> {
        let bytes: [u8; 8] = self.0.get(..8)?.try_into().ok()?;
        self.0 = &self.0[8..];
        Some(u64::from_be_bytes(bytes))
    }

    fn bytes(&mut self) -> Option<&[u8]> {
        let len = self.u32()? as usize;
        let bytes = self.0.get(..len)?;
        self.0 = &self.0[len..];
        Some(bytes)
    }

    fn string(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn handle(&mut self) -> Option<Vec<u8>> {
        self.bytes()
            .filter(|h| h.len() <= MAX_HANDLE)
            .map(<[u8]>::to_vec)
    }
}

/// What an `scp` command line (legacy protocol) transfers, if it is one.
pub fn scp_command(command: &str) -> Option<(&'static str, String)> {
    let mut words = command.split_whitespace();
    if words.next()? != "scp" {
        return None;
    }
    let mut direction = None;
    let mut path = None;
    for word in words {
        match word {
            "-t" => direction = Some("upload"),
            "-f" => direction = Some("download"),
            w if w.starts_with('-') => {}
            w => path = Some(w.to_owned()),
        }
    }
    Some((direction?, path.unwrap_or_default()))
}

/// Whether an exec command runs an SFTP server directly (`ssh host
/// /usr/lib/openssh/sftp-server`): its stream is audited like the `sftp`
/// subsystem's.
pub fn runs_sftp_server(command: &str) -> bool {
    command
        .split_whitespace()
        .next()
        .and_then(|program| program.rsplit('/').next())
        .is_some_and(|name| name == "sftp-server")
}

#[cfg(test)]
mod tests;
