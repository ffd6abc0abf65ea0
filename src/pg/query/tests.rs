//! Unit tests of the query tracker: statements, portals and completions as the relay sees them.

use super::*;
use serde_json::json;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = format!("{name}\0{sql}\0").into_bytes();
    body.extend_from_slice(&0i16.to_be_bytes());
    frame(b'P', &body)
}

fn bind(portal: &str, statement: &str, values: &[&str]) -> Vec<u8> {
    let mut body = format!("{portal}\0{statement}\0").into_bytes();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
        body.extend_from_slice(v.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    frame(b'B', &body)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut body = format!("{portal}\0").into_bytes();
    body.extend_from_slice(&0i32.to_be_bytes());
    frame(b'E', &body)
}

fn complete(tag: &str) -> Vec<u8> {
    frame(b'C', format!("{tag}\0").as_bytes())
}

fn run(tracker: &mut Tracker, client: &[Vec<u8>], server: &[Vec<u8>]) -> Vec<Completed> {
    tracker.client(&client.concat()).unwrap();
    let mut done = Vec::new();
    // Byte by byte: the tracker must not care how the stream is cut.
    for byte in server.concat() {
        tracker.server(&[byte], &mut done).unwrap();
    }
    done
}

#[test]
fn simple_queries_with_several_commands_and_errors() {
    let mut tracker = Tracker::new(false);
    let done = run(
        &mut tracker,
        &[protocol::query("insert into t values (1); select * from t")],
        &[
            complete("INSERT 0 1"),
            frame(b'D', b"\0\x01\0\0\0\x011"),
            complete("SELECT 1"),
            protocol::ready_for_query(b'I'),
        ],
    );
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].commands, vec!["INSERT 0 1", "SELECT 1"]);
    assert_eq!(done[0].rows, Some(2));
    assert_eq!(done[0].rows_sent, 1);
    let done = run(
        &mut tracker,
        &[protocol::query("selec 1")],
        &[
            protocol::error_response(
                protocol::Severity::Error,
                "42601",
                "syntax error",
                None,
                None,
            ),
            protocol::ready_for_query(b'I'),
        ],
    );
    assert_eq!(done[0].error.as_ref().unwrap().sqlstate, "42601");
    assert_eq!(done[0].details()["statement"], "selec 1");
}

#[test]
fn prepared_statements_are_audited_per_execute_with_their_text() {
    let mut tracker = Tracker::new(true);
    let sync = frame(b'S', &[]);
    let done = run(
        &mut tracker,
        &[
            parse("s1", "select $1::int"),
            bind("", "s1", &["7"]),
            execute(""),
            sync.clone(),
            bind("", "s1", &["8"]),
            execute(""),
            sync.clone(),
        ],
        &[
            frame(b'1', &[]),
            frame(b'2', &[]),
            complete("SELECT 1"),
            protocol::ready_for_query(b'I'),
            frame(b'2', &[]),
            complete("SELECT 1"),
            protocol::ready_for_query(b'I'),
        ],
    );
    assert_eq!(done.len(), 2);
    for (d, v) in done.iter().zip(["7", "8"]) {
        let details = d.details();
        assert_eq!(details["statement"], "select $1::int");
        assert_eq!(details["prepared"], "s1");
        assert_eq!(details["params"], 1);
        assert_eq!(details["param_values"], json!([v]));
        assert_eq!(details["protocol"], "extended");
    }
}

#[test]
fn an_error_skips_the_rest_of_the_pipeline() {
    let mut tracker = Tracker::new(false);
    let sync = frame(b'S', &[]);
    let done = run(
        &mut tracker,
        &[
            parse("", "select 1/0"),
            bind("", "", &[]),
            execute(""),
            parse("", "select 2"),
            bind("", "", &[]),
            execute(""),
            sync,
        ],
        &[
            frame(b'1', &[]),
            frame(b'2', &[]),
            protocol::error_response(
                protocol::Severity::Error,
                "22012",
                "division by zero",
                None,
                None,
            ),
            protocol::ready_for_query(b'I'),
        ],
    );
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].error.as_ref().unwrap().sqlstate, "22012");
    assert_eq!(done[0].details()["statement"], "select 1/0");
    assert!(done[1].skipped);
    assert_eq!(done[1].details()["statement"], "select 2");
    assert!(tracker.state.pending.is_empty());
}

#[test]
fn a_failed_parse_is_recorded() {
    let mut tracker = Tracker::new(false);
    let done = run(
        &mut tracker,
        &[parse("bad", "selec"), frame(b'S', &[])],
        &[
            protocol::error_response(
                protocol::Severity::Error,
                "42601",
                "syntax error",
                None,
                None,
            ),
            protocol::ready_for_query(b'I'),
        ],
    );
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].protocol, "parse");
    assert_eq!(done[0].details()["statement"], "selec");
}

#[test]
fn copy_traffic_is_counted() {
    let mut tracker = Tracker::new(false);
    tracker
        .client(&protocol::query("copy t from stdin"))
        .unwrap();
    let mut done = Vec::new();
    tracker.server(&frame(b'G', &[0, 0, 0]), &mut done).unwrap();
    tracker.client(&frame(b'd', b"1\n2\n")).unwrap();
    tracker.client(&frame(b'c', &[])).unwrap();
    tracker.server(&complete("COPY 2"), &mut done).unwrap();
    let seen = tracker
        .server(&protocol::ready_for_query(b'I'), &mut done)
        .unwrap();
    assert!(seen.ready);
    assert_eq!(done[0].copy, Some(("in", 4)));
    assert_eq!(done[0].rows, Some(2));
}

#[test]
fn the_log_holds_every_statement_whole() {
    let long = format!("select '{}'", "z".repeat(SCAN_CAP * 2));
    let mut tracker = Tracker::new(false).with_log();
    let mut stream = protocol::query("select 1");
    stream.extend(parse("s1", "select $1"));
    stream.extend(protocol::query(&long));
    let mut log = Vec::new();
    for piece in stream.chunks(777) {
        tracker.client(piece).unwrap();
        log.extend(tracker.take_log());
    }
    let expected = format!("select 1\r\n-- parse s1\r\nselect $1\r\n{long}\r\n");
    assert!(log == expected.as_bytes(), "the log differs");
}

#[test]
fn long_statements_are_bounded_and_hashed_whatever_their_size() {
    for size in [TEXT_MAX + 10, SCAN_CAP * 3] {
        let sql = format!("select '{}'", "é".repeat(size / 2));
        let mut tracker = Tracker::new(false);
        for piece in protocol::query(&sql).chunks(1000) {
            tracker.client(piece).unwrap();
        }
        let mut done = Vec::new();
        tracker.server(&complete("SELECT 1"), &mut done).unwrap();
        tracker
            .server(&protocol::ready_for_query(b'I'), &mut done)
            .unwrap();
        let details = done[0].details();
        assert_eq!(details["truncated"], true);
        assert_eq!(details["statement_bytes"], sql.len());
        assert_eq!(
            details["statement_sha256"],
            hex::encode(Sha256::digest(sql.as_bytes()))
        );
        let text = details["statement"].as_str().unwrap();
        assert!(text.len() <= TEXT_MAX && sql.starts_with(text), "{size}");
    }
}
