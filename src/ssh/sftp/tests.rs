//! Unit tests of the SFTP auditor: uploads and downloads cut into reads at every place, oversized or unknown requests refused, every operation named.

use super::*;

fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

fn open(id: u32, path: &str, flags: u32, attrs: &[u8]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend(string(path.as_bytes()));
    body.extend(flags.to_be_bytes());
    body.extend_from_slice(attrs);
    packet(FXP_OPEN, &body)
}

fn write(id: u32, handle: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend(string(handle));
    body.extend(0u64.to_be_bytes());
    body.extend(string(data));
    packet(FXP_WRITE, &body)
}

fn handle_reply(id: u32, handle: &[u8]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend(string(handle));
    packet(FXP_HANDLE, &body)
}

fn status(id: u32) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend(0u32.to_be_bytes());
    body.extend(string(b""));
    body.extend(string(b""));
    packet(FXP_STATUS, &body)
}

fn feed_client(
    auditor: &mut Auditor,
    stream: &[u8],
    chunk: usize,
) -> Result<Vec<Operation>, Refused> {
    let mut ops = Vec::new();
    for part in stream.chunks(chunk) {
        ops.extend(auditor.client(part)?);
        assert!(auditor.client.body.len() <= MAX_PACKET);
    }
    Ok(ops)
}

#[test]
fn an_upload_is_seen_whole_however_the_stream_is_cut_and_data_is_not_kept() {
    let payload = vec![0xAB; 200_000];
    let mut client = open(
        1,
        "/tmp/up.bin",
        FXF_WRITE | FXF_CREAT | FXF_TRUNC,
        &0u32.to_be_bytes(),
    );
    let handle_first = client.len();
    client.extend(write(2, b"h1", &payload));
    let mut close = 3u32.to_be_bytes().to_vec();
    close.extend(string(b"h1"));
    client.extend(packet(FXP_CLOSE, &close));
    let mut rename = 4u32.to_be_bytes().to_vec();
    rename.extend(string(b"/a"));
    rename.extend(string(b"/b"));
    client.extend(packet(FXP_RENAME, &rename));
    for chunk in [1, 7, 4096, client.len()] {
        let mut auditor = Auditor::default();
        // The OPEN, then the server's handle, then the rest.
        let mut ops = feed_client(&mut auditor, &client[..handle_first], chunk).unwrap();
        assert!(auditor.server(&handle_reply(1, b"h1")).is_empty());
        ops.extend(feed_client(&mut auditor, &client[handle_first..], chunk).unwrap());
        let mut answers = status(2);
        answers.extend(status(3));
        ops.extend(auditor.server(&answers));
        assert_eq!(
            ops,
            [
                Operation::Open {
                    path: "/tmp/up.bin".into(),
                    direction: "upload"
                },
                Operation::Rename {
                    from: "/a".into(),
                    to: "/b".into()
                },
                Operation::Close {
                    path: Some("/tmp/up.bin".into()),
                    direction: Some("upload"),
                    bytes_read: 0,
                    bytes_written: 200_000,
                    closed: true,
                },
            ],
            "chunk size {chunk}"
        );
    }
}

#[test]
fn a_download_counts_the_data_the_server_sent() {
    let mut auditor = Auditor::default();
    auditor
        .client(&open(1, "/etc/hostname", FXF_READ, &0u32.to_be_bytes()))
        .unwrap();
    auditor.server(&handle_reply(1, b"h"));
    for id in [2u32, 3] {
        let mut read = id.to_be_bytes().to_vec();
        read.extend(string(b"h"));
        read.extend(0u64.to_be_bytes());
        read.extend(32768u32.to_be_bytes());
        auditor.client(&packet(FXP_READ, &read)).unwrap();
    }
    let mut data = 2u32.to_be_bytes().to_vec();
    data.extend(string(&[7u8; 5000]));
    let mut answers = packet(FXP_DATA, &data);
    let mut eof = 3u32.to_be_bytes().to_vec();
    eof.extend(1u32.to_be_bytes());
    eof.extend(string(b"EOF"));
    eof.extend(string(b""));
    answers.extend(packet(FXP_STATUS, &eof));
    for part in answers.chunks(3) {
        assert!(auditor.server(part).is_empty());
    }
    let mut close = 4u32.to_be_bytes().to_vec();
    close.extend(string(b"h"));
    auditor.client(&packet(FXP_CLOSE, &close)).unwrap();
    assert_eq!(
        auditor.server(&status(4)),
        [Operation::Close {
            path: Some("/etc/hostname".into()),
            direction: Some("download"),
            bytes_read: 5000,
            bytes_written: 0,
            closed: true,
        }]
    );
}

#[test]
fn an_open_padded_with_attributes_is_seen_and_an_oversized_one_refused() {
    // Extended attributes up to the server's limit: parsed, audited.
    let mut attrs = ATTR_EXTENDED.to_be_bytes().to_vec();
    attrs.extend(1u32.to_be_bytes());
    attrs.extend(string(b"pad"));
    attrs.extend(string(&vec![b'x'; 200 * 1024]));
    let big = open(1, "/etc/shadow", FXF_READ, &attrs);
    assert!(big.len() > 64 * 1024 && big.len() < MAX_PACKET);
    let mut auditor = Auditor::default();
    assert_eq!(
        feed_client(&mut auditor, &big, 1000).unwrap(),
        [Operation::Open {
            path: "/etc/shadow".into(),
            direction: "download"
        }]
    );
    // Past it: refused, and so is everything after.
    let mut attrs = ATTR_EXTENDED.to_be_bytes().to_vec();
    attrs.extend(1u32.to_be_bytes());
    attrs.extend(string(b"pad"));
    attrs.extend(string(&vec![b'x'; MAX_PACKET]));
    let huge = open(2, "/etc/shadow", FXF_READ, &attrs);
    let mut auditor = Auditor::default();
    assert!(auditor.client(&huge[..4096]).is_err());
    assert!(auditor.client(b"anything").is_err());
}

#[test]
fn unparsable_or_unknown_requests_are_refused() {
    for bad in [
        packet(FXP_OPEN, &[0, 0, 0, 1, 0, 0, 0, 99]),
        packet(99, &[0, 0, 0, 1]),
        packet(FXP_SETSTAT, &{
            let mut b = 1u32.to_be_bytes().to_vec();
            b.extend(string(b"/x"));
            b.extend(ATTR_SIZE.to_be_bytes());
            b
        }),
        vec![0, 0, 0, 0],
        write(1, &[b'h'; 300], b"data"),
    ] {
        let mut auditor = Auditor::default();
        let result = auditor.client(&bad);
        assert!(
            result.is_err() || auditor.client(&[0u8; 300]).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn every_file_operation_is_named() {
    let mut stream = Vec::new();
    let body = |id: u32, parts: &[&[u8]]| {
        let mut b = id.to_be_bytes().to_vec();
        for p in parts {
            b.extend_from_slice(p);
        }
        b
    };
    let s = |t: &str| string(t.as_bytes());
    let no_attrs = 0u32.to_be_bytes().to_vec();
    let mut perms = ATTR_PERMISSIONS.to_be_bytes().to_vec();
    perms.extend(0o600u32.to_be_bytes());
    stream.extend(packet(FXP_REMOVE, &body(1, &[&s("/r")])));
    stream.extend(packet(FXP_MKDIR, &body(2, &[&s("/d"), &no_attrs])));
    stream.extend(packet(FXP_RMDIR, &body(3, &[&s("/d")])));
    stream.extend(packet(FXP_SETSTAT, &body(4, &[&s("/f"), &perms])));
    stream.extend(packet(FXP_SYMLINK, &body(5, &[&s("/target"), &s("/link")])));
    stream.extend(packet(FXP_OPENDIR, &body(6, &[&s("/")])));
    stream.extend(packet(
        FXP_EXTENDED,
        &body(7, &[&s("posix-rename@openssh.com"), &s("/a"), &s("/b")]),
    ));
    stream.extend(packet(
        FXP_EXTENDED,
        &body(8, &[&s("hardlink@openssh.com"), &s("/t"), &s("/l")]),
    ));
    stream.extend(packet(
        FXP_EXTENDED,
        &body(9, &[&s("statvfs@openssh.com"), &s("/")]),
    ));
    stream.extend(packet(FXP_STAT, &body(10, &[&s("/quiet")])));
    stream.extend(packet(
        FXP_EXTENDED,
        &body(11, &[&s("evil@example.com"), &s("/")]),
    ));
    let ops = Auditor::default().client(&stream).unwrap();
    let names: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
    assert_eq!(ops.len(), 9, "{names:#?}");
    assert_eq!(
        ops[3],
        Operation::Setstat {
            path: Some("/f".into()),
            changes: vec!["permissions"]
        }
    );
    assert_eq!(
        ops[8],
        Operation::Extended {
            name: "evil@example.com".into()
        }
    );
}

#[test]
fn garbage_never_panics() {
    for seed in 0u32..2000 {
        let bytes: Vec<u8> = (0..64)
            .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) as u8)
            .collect();
        let mut auditor = Auditor::default();
        let _ = auditor.client(&bytes);
        let _ = auditor.server(&bytes);
        let _ = auditor.finish();
    }
}

#[test]
fn commands_are_recognised() {
    assert_eq!(
        scp_command("scp -t /tmp/x"),
        Some(("upload", "/tmp/x".into()))
    );
    assert_eq!(
        scp_command("scp -v -f -- /etc/passwd"),
        Some(("download", "/etc/passwd".into()))
    );
    assert_eq!(scp_command("ls -l"), None);
    assert!(runs_sftp_server("/usr/lib/openssh/sftp-server -e"));
    assert!(runs_sftp_server("sftp-server"));
    assert!(!runs_sftp_server("ls sftp-server"));
}
