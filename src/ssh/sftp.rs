//! Reads the client's side of an SFTP stream to audit file operations
//! (`ssh.file_transfer`): opens for reading (download) or writing (upload),
//! removals, renames, directory changes. It never buffers file contents:
//! WRITE payloads are skipped as they stream past.

/// A file operation the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `direction` is `upload` (write/create/truncate) or `download` (read).
    Open {
        path: String,
        direction: &'static str,
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
    Setstat {
        path: String,
    },
    Symlink {
        link: String,
        target: String,
    },
}

const FXP_OPEN: u8 = 3;
const FXP_SETSTAT: u8 = 9;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_SYMLINK: u8 = 20;
const FXP_EXTENDED: u8 = 200;

const FXF_READ: u32 = 0x01;
const FXF_WRITE: u32 = 0x02;
const FXF_APPEND: u32 = 0x04;
const FXF_CREAT: u32 = 0x08;
const FXF_TRUNC: u32 = 0x10;

/// Packets larger than this are skipped, not parsed (a WRITE, typically).
const MAX_PARSED: usize = 64 * 1024;

/// Incremental parser over the client→server byte stream.
#[derive(Default)]
pub struct Parser {
    buffer: Vec<u8>,
    /// Bytes of the current packet still to skip.
    skip: usize,
}

impl Parser {
    /// Feeds bytes; returns the operations completed by them.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<Operation> {
        let mut out = Vec::new();
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                if self.skip > 0 {
                    return out;
                }
            }
            if data.is_empty() && self.buffer.len() < 5 {
                return out;
            }
            // Complete the 5-byte header (length + type) from the buffer.
            let need_header = 5usize.saturating_sub(self.buffer.len());
            if need_header > 0 {
                let n = need_header.min(data.len());
                self.buffer.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.buffer.len() < 5 {
                    return out;
                }
            }
            let length = u32::from_be_bytes([
                self.buffer[0],
                self.buffer[1],
                self.buffer[2],
                self.buffer[3],
            ]) as usize;
            let kind = self.buffer[4];
            let body = length.saturating_sub(1);
            let wanted = matches!(
                kind,
                FXP_OPEN
                    | FXP_SETSTAT
                    | FXP_REMOVE
                    | FXP_MKDIR
                    | FXP_RMDIR
                    | FXP_RENAME
                    | FXP_SYMLINK
                    | FXP_EXTENDED
            );
            if !wanted || body > MAX_PARSED {
                self.buffer.clear();
                self.skip = body;
                continue;
            }
            let have = self.buffer.len() - 5;
            let n = (body - have).min(data.len());
            self.buffer.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buffer.len() - 5 < body {
                return out;
            }
            if let Some(op) = parse(kind, &self.buffer[5..]) {
                out.push(op);
            }
            self.buffer.clear();
        }
    }
}

fn parse(kind: u8, body: &[u8]) -> Option<Operation> {
    let mut r = Reader(body);
    let _request_id = r.u32()?;
    Some(match kind {
        FXP_OPEN => {
            let path = r.string()?;
            let flags = r.u32()?;
            let writes = flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC) != 0;
            let direction = if writes {
                "upload"
            } else if flags & FXF_READ != 0 {
                "download"
            } else {
                "open"
            };
            Operation::Open { path, direction }
        }
        FXP_REMOVE => Operation::Remove { path: r.string()? },
        FXP_MKDIR => Operation::Mkdir { path: r.string()? },
        FXP_RMDIR => Operation::Rmdir { path: r.string()? },
        FXP_SETSTAT => Operation::Setstat { path: r.string()? },
        FXP_RENAME => Operation::Rename {
            from: r.string()?,
            to: r.string()?,
        },
        FXP_SYMLINK => Operation::Symlink {
            link: r.string()?,
            target: r.string()?,
        },
        // OpenSSH's sftp renames with this extension when the server has it.
        FXP_EXTENDED => match r.string()?.as_str() {
            "posix-rename@openssh.com" => Operation::Rename {
                from: r.string()?,
                to: r.string()?,
            },
            "hardlink@openssh.com" => Operation::Symlink {
                link: r.string()?,
                target: r.string()?,
            },
            _ => return None,
        },
        _ => return None,
    })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> Option<u32> {
        let bytes: [u8; 4] = self.0.get(..4)?.try_into().ok()?;
        self.0 = &self.0[4..];
        Some(u32::from_be_bytes(bytes))
    }

    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        let bytes = self.0.get(..len)?;
        self.0 = &self.0[len..];
        Some(String::from_utf8_lossy(bytes).into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(kind);
        out.extend_from_slice(body);
        out
    }

    fn string(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    }

    #[test]
    fn opens_and_renames_are_seen_across_chunk_boundaries_and_writes_skipped() {
        let mut stream = Vec::new();
        let mut open = 1u32.to_be_bytes().to_vec();
        open.extend(string("/tmp/up.bin"));
        open.extend((FXF_WRITE | FXF_CREAT | FXF_TRUNC).to_be_bytes());
        open.extend(0u32.to_be_bytes());
        stream.extend(packet(FXP_OPEN, &open));
        // a big WRITE whose payload must not be buffered
        let mut write = 2u32.to_be_bytes().to_vec();
        write.extend(string("handle"));
        write.extend(0u64.to_be_bytes());
        write.extend((200_000u32).to_be_bytes());
        write.extend(vec![0xAB; 200_000]);
        stream.extend(packet(6, &write));
        let mut read_open = 3u32.to_be_bytes().to_vec();
        read_open.extend(string("/etc/hostname"));
        read_open.extend(FXF_READ.to_be_bytes());
        read_open.extend(0u32.to_be_bytes());
        stream.extend(packet(FXP_OPEN, &read_open));
        let mut rename = 4u32.to_be_bytes().to_vec();
        rename.extend(string("/a"));
        rename.extend(string("/b"));
        stream.extend(packet(FXP_RENAME, &rename));
        for chunk_size in [1, 7, 4096, stream.len()] {
            let mut parser = Parser::default();
            let mut ops = Vec::new();
            for chunk in stream.chunks(chunk_size) {
                ops.extend(parser.feed(chunk));
                assert!(parser.buffer.len() <= MAX_PARSED + 5);
            }
            assert_eq!(
                ops,
                [
                    Operation::Open {
                        path: "/tmp/up.bin".into(),
                        direction: "upload"
                    },
                    Operation::Open {
                        path: "/etc/hostname".into(),
                        direction: "download"
                    },
                    Operation::Rename {
                        from: "/a".into(),
                        to: "/b".into()
                    },
                ],
                "chunk size {chunk_size}"
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut parser = Parser::default();
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..64)
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) as u8)
                .collect();
            let _ = parser.feed(&bytes);
        }
    }

    #[test]
    fn scp_commands_are_recognised() {
        assert_eq!(
            scp_command("scp -t /tmp/x"),
            Some(("upload", "/tmp/x".into()))
        );
        assert_eq!(
            scp_command("scp -v -f -- /etc/passwd"),
            Some(("download", "/etc/passwd".into()))
        );
        assert_eq!(scp_command("ls -l"), None);
    }
}
