//! Unit tests of the PostgreSQL wire parser: startup packets, framing, message bodies and the scanner.

use super::*;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    message(tag, body)
}

#[test]
fn startup_packets() {
    let ssl = ssl_request();
    assert_eq!(parse_startup(&ssl).unwrap(), Some((Startup::Ssl, 8)));
    assert_eq!(parse_startup(&ssl[..7]).unwrap(), None);
    let startup = startup_message(&[("user", "alice@example.test"), ("database", "orders/x")]);
    let (packet, used) = parse_startup(&startup).unwrap().unwrap();
    assert_eq!(used, startup.len());
    assert_eq!(
        packet,
        Startup::Startup {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "alice@example.test".into()),
                ("database".into(), "orders/x".into())
            ]
        }
    );
    let cancel = cancel_request(42, &[1, 2, 3, 4]);
    assert_eq!(
        parse_startup(&cancel).unwrap().unwrap().0,
        Startup::Cancel {
            pid: 42,
            key: vec![1, 2, 3, 4]
        }
    );
    assert!(parse_startup(&[0, 0, 0, 3, 0, 0, 0, 0]).is_err());
    assert!(parse_startup(&[0, 0, 0x40, 0, 0, 0, 0, 0]).is_err());
    let mut unknown = 8i32.to_be_bytes().to_vec();
    unknown.extend_from_slice(&1234i32.to_be_bytes());
    assert_eq!(
        parse_startup(&unknown),
        Err(ProtocolError::UnknownRequest(1234))
    );
}

#[test]
fn frontend_messages() {
    let check = |bytes: Vec<u8>, expect: Frontend<'_>| {
        let (tag, body, used) = split_message(&bytes, MAX_MESSAGE).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(parse_frontend(tag, body).unwrap(), expect);
    };
    check(query("select 1"), Frontend::Query { sql: b"select 1" });
    let mut parse = b"s1\0select $1\0".to_vec();
    parse.extend_from_slice(&1i16.to_be_bytes());
    parse.extend_from_slice(&23i32.to_be_bytes());
    check(
        frame(b'P', &parse),
        Frontend::Parse {
            name: b"s1",
            sql: b"select $1",
            param_types: 1,
        },
    );
    let mut bind = b"\0s1\0".to_vec();
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&2i16.to_be_bytes());
    bind.extend_from_slice(&2i32.to_be_bytes());
    bind.extend_from_slice(b"42");
    bind.extend_from_slice(&(-1i32).to_be_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes());
    check(
        frame(b'B', &bind),
        Frontend::Bind {
            portal: b"",
            statement: b"s1",
            formats: vec![],
            params: vec![Some(b"42".as_slice()), None],
        },
    );
    let mut execute = b"\0".to_vec();
    execute.extend_from_slice(&0i32.to_be_bytes());
    check(
        frame(b'E', &execute),
        Frontend::Execute {
            portal: b"",
            max_rows: 0,
        },
    );
    check(frame(b'S', &[]), Frontend::Sync);
    check(
        frame(b'C', b"Ss1\0"),
        Frontend::Close {
            kind: b'S',
            name: b"s1",
        },
    );
    assert!(parse_frontend(b'Q', b"no terminator").is_err());
    assert!(parse_frontend(b'B', b"\0\0\xff\xff").is_err());
    assert!(split_message(&[b'Q', 0, 0, 0, 3], MAX_MESSAGE).is_err());
}

#[test]
fn backend_messages() {
    let error = error_response(
        Severity::Fatal,
        "28P01",
        "bad token",
        None,
        Some("run pam login"),
    );
    let (tag, body, _) = split_message(&error, MAX_MESSAGE).unwrap().unwrap();
    let Backend::Error(fields) = parse_backend(tag, body).unwrap() else {
        panic!("error")
    };
    assert_eq!(fields.code, b"28P01");
    assert_eq!(fields.severity, b"FATAL");
    assert_eq!(fields.message, b"bad token");
    assert_eq!(fields.hint, Some(b"run pam login".as_slice()));
    assert_eq!(
        parse_backend(b'R', &authentication(3)[5..]).unwrap(),
        Backend::Authentication(Auth::Cleartext)
    );
    let mut sasl = 10i32.to_be_bytes().to_vec();
    sasl.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
    assert_eq!(
        parse_backend(b'R', &sasl).unwrap(),
        Backend::Authentication(Auth::Sasl(vec![b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]))
    );
    assert_eq!(command_rows(b"SELECT 5"), Some(5));
    assert_eq!(command_rows(b"INSERT 0 12"), Some(12));
    assert_eq!(command_rows(b"BEGIN"), None);
}

fn scan_all(stream: &[u8], pieces: &[usize], cap: usize) -> Vec<String> {
    let mut scanner = Scanner::new(b"QP", cap);
    let mut seen = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = pieces[i % pieces.len()].clamp(1, rest.len());
        i += 1;
        scanner
            .feed(&rest[..n], &mut |s| seen.push(format!("{s:?}")))
            .unwrap();
        rest = &rest[n..];
    }
    assert!(scanner.at_boundary());
    // Chunks depend on the pieces; join them per message.
    let mut joined = Vec::new();
    for s in seen {
        if s.starts_with("Chunk") {
            continue;
        }
        joined.push(s);
    }
    joined
}

#[test]
fn the_scanner_sees_the_same_messages_however_the_stream_is_cut() {
    let mut stream = query("select 1");
    stream.extend(frame(b'D', &[7; 300]));
    stream.extend(query(&"x".repeat(100)));
    stream.extend(frame(b'S', &[]));
    let whole = scan_all(&stream, &[stream.len()], 64);
    assert_eq!(whole.len(), 4);
    for pieces in [&[1][..], &[2, 3], &[7, 1, 50], &[5]] {
        assert_eq!(scan_all(&stream, pieces, 64), whole);
    }
    // A long message: a bounded prefix and every byte in chunks.
    let mut scanner = Scanner::new(b"Q", 16);
    let long = query(&"y".repeat(1000));
    let mut chunked = Vec::new();
    let mut kept = None;
    for piece in long.chunks(33) {
        scanner
            .feed(piece, &mut |s| match s {
                Seen::Chunk { data, .. } => chunked.extend_from_slice(data),
                Seen::Message { body, len, .. } => kept = Some((body.to_vec(), len)),
                Seen::Skipped { .. } => {}
            })
            .unwrap();
    }
    assert_eq!(chunked, &long[5..]);
    let (body, len) = kept.unwrap();
    assert_eq!(len, 1001);
    assert_eq!(body, vec![b'y'; 16]);
}
